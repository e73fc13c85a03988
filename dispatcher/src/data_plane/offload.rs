//! Loading the offload variant (`dispatch_hw`) bound to a NIC, for XDP
//! hardware mode. aya creates maps and loads programs for the host; binding
//! them to a device needs `map_ifindex` on every map the program uses (with
//! no BTF and no flags) and `prog_ifindex` on the program, which aya does
//! not set. This module does just that with aya-obj and the bpf syscall,
//! then hands the descriptors back to aya, so attaching, pinning and every
//! map access afterwards are aya's, as in the other modes.
//!
//! The maps the offloaded program does not use (the host variant's per-CPU
//! counters, the devmap) are created on the host as usual, so the pinned set
//! is the same in every mode and the CLI reads it the same way.

use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{Map, MapData};
use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_insn};
use dispatcher_common::maps::Geometry;

use crate::data_plane::{object, HW_PROGRAM};

/// A program bound to a device, and its maps (by pin name).
pub struct Bound {
    pub program: OwnedFd,
    pub maps: Vec<(String, Map)>,
}

/// What the maps may hold, as the operator tells it: on the host (skb and
/// drv modes) and on a NIC (hw mode).
#[derive(Clone, Copy, Debug)]
pub struct Device {
    /// Entries each map on the device may have (a NIC's map memory is
    /// small; netdevsim takes at most 2 per map). None: the host's sizes.
    pub max_entries: Option<u32>,
    /// The geometry in host memory (`dispatcher run --max-functions` and
    /// the other geometry flags; `Geometry::HOST` by default).
    pub host: Geometry,
}

impl Default for Device {
    fn default() -> Device {
        Device {
            max_entries: None,
            host: Geometry::HOST,
        }
    }
}

impl Device {
    /// The table sizes that fit the device (see `Geometry::fitting`).
    pub fn geometry(&self) -> Result<Geometry> {
        match self.max_entries {
            None => Ok(self.host),
            Some(n) => Geometry::fitting(n).ok_or_else(|| {
                anyhow!("--hw-map-entries {n} is too small: a function's ring needs two entries per map (its two generations); give 2 or more")
            }),
        }
    }
}

/// Creates the maps of the object, sized by `geometry` (those `dispatch_hw`
/// uses bound to `ifindex`, and within the device's limit), then loads
/// `dispatch_hw` bound to it.
pub fn load_bound(
    iface: &str,
    ifindex: u32,
    device: &Device,
    geometry: &Geometry,
    names: &[&str],
) -> Result<Bound> {
    let mut obj = aya_obj::Object::parse(object())
        .map_err(|e| anyhow!("cannot parse the eBPF object: {e}"))?;
    let used = crate::offload_check::check_object(object(), HW_PROGRAM, Default::default())?.maps;
    let mut created: Vec<(String, OwnedFd)> = Vec::new();
    for name in names {
        let map = obj.maps.get(*name).with_context(|| {
            format!("the eBPF object has no map {name}: rebuild the dispatcher")
        })?;
        let bound = used.iter().any(|u| u == name);
        let entries = geometry.map_entries(name).unwrap_or(map.max_entries());
        // Only the counters can outgrow the geometry (STATS_HW has one entry
        // per counter): a small device keeps the first ones.
        let entries = match (bound, device.max_entries) {
            (true, Some(most)) => entries.min(most),
            _ => entries,
        };
        let fd = create_map(name, map, entries, bound.then_some(ifindex))
            .map_err(|e| explain_map_error(e, name, iface, entries, bound))?;
        created.push((name.to_string(), fd));
    }
    // Maps of other programs (aya-log's, global data) are not created: the
    // relocation only needs a number for them, and their programs are not
    // loaded.
    crate::offload_check::link(&mut obj, |name| {
        created
            .iter()
            .find(|(n, _)| n == name)
            .map_or(-1, |(_, fd)| fd.as_raw_fd())
    })?;
    let program = obj
        .programs
        .get(HW_PROGRAM)
        .context("the eBPF object has no dispatch_hw: rebuild the dispatcher")?;
    let code = &obj
        .functions
        .get(&program.function_key())
        .context("dispatch_hw's code is missing")?
        .instructions;
    let license = obj.license.clone();
    let program =
        load_program(code, &license, ifindex).map_err(|e| explain_load_error(e, iface))?;

    let maps = created
        .into_iter()
        .map(|(name, fd)| {
            let data = MapData::from_fd(fd).with_context(|| format!("cannot open map {name}"))?;
            Ok((name, Map::from_map_data(data)?))
        })
        .collect::<Result<_>>()?;
    Ok(Bound { program, maps })
}

/// A bpf(2) error with the verifier's or the kernel's words, if any.
#[derive(Debug)]
struct BpfError {
    errno: i32,
    log: String,
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> Result<OwnedFd, BpfError> {
    // SAFETY: `attr` is a zero-initialised bpf_attr with the command's
    // members set; pointers in it reference buffers that outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>() as u32,
        )
    };
    if fd < 0 {
        return Err(BpfError {
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            log: String::new(),
        });
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a C union of integers and arrays: all-zero is
    // valid, and the kernel wants unused members zero.
    unsafe { std::mem::zeroed() }
}

/// A kernel object name: at most 15 characters of [A-Za-z0-9_], NUL-ended.
fn c_name(name: &str) -> [std::ffi::c_char; 16] {
    let mut out = [0 as std::ffi::c_char; 16];
    for (o, b) in out.iter_mut().zip(
        name.bytes()
            .filter(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .take(15),
    ) {
        *o = b as std::ffi::c_char;
    }
    out
}

/// BPF_MAP_CREATE: the object's type and sizes, no flags, no BTF; bound to
/// `ifindex` when given.
fn create_map(
    name: &str,
    map: &aya_obj::Map,
    entries: u32,
    ifindex: Option<u32>,
) -> Result<OwnedFd, BpfError> {
    let mut attr = zeroed_attr();
    // SAFETY: writing the map-create member of the union.
    let u = unsafe { &mut attr.__bindgen_anon_1 };
    u.map_type = map.map_type();
    u.key_size = map.key_size();
    u.value_size = map.value_size();
    u.max_entries = entries;
    u.map_flags = if ifindex.is_some() {
        0
    } else {
        map.map_flags()
    };
    u.map_name = c_name(name);
    u.map_ifindex = ifindex.unwrap_or(0);
    bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)
}

/// BPF_PROG_LOAD of an XDP program bound to `ifindex`, with the verifier's
/// log kept for errors.
fn load_program(code: &[bpf_insn], license: &CString, ifindex: u32) -> Result<OwnedFd, BpfError> {
    let mut log = vec![0u8; 1 << 20];
    let mut attr = zeroed_attr();
    // SAFETY: writing the prog-load member of the union.
    let u = unsafe { &mut attr.__bindgen_anon_3 };
    u.prog_type = aya_obj::generated::bpf_prog_type::BPF_PROG_TYPE_XDP as u32;
    u.insn_cnt = code.len() as u32;
    u.insns = code.as_ptr() as u64;
    u.license = license.as_ptr() as u64;
    u.log_level = 1;
    u.log_size = log.len() as u32;
    u.log_buf = log.as_mut_ptr() as u64;
    u.prog_name = c_name(HW_PROGRAM);
    u.prog_ifindex = ifindex;
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map_err(|mut e| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(0);
        e.log = String::from_utf8_lossy(&log[..end]).trim().to_string();
        e
    })
}

const ENOTSUPP: i32 = 524;

fn explain_map_error(
    e: BpfError,
    name: &str,
    iface: &str,
    entries: u32,
    bound: bool,
) -> anyhow::Error {
    let why = std::io::Error::from_raw_os_error(e.errno);
    if !bound {
        return anyhow!("cannot create map {name} on the host: {why}");
    }
    match e.errno {
        libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP => anyhow!(
            "{iface} refused to hold map {name} ({why}): --mode hw needs a NIC that offloads eBPF \
             (a Netronome NFP running its eBPF firmware; `ethtool -i {iface}` shows the driver and firmware); \
             use --mode drv or skb on this interface"
        ),
        libc::E2BIG | libc::ENOMEM | libc::ENOSPC => anyhow!(
            "{iface} has no room for map {name} with {entries} entries ({why}): give a smaller --hw-map-entries"
        ),
        _ => anyhow!("{iface} refused map {name} ({why})"),
    }
}

fn explain_load_error(e: BpfError, iface: &str) -> anyhow::Error {
    let why = std::io::Error::from_raw_os_error(e.errno);
    // A refusal before verification leaves only the statistics line.
    let log = if e.log.is_empty() || e.log.starts_with("processed 0 insns") {
        String::new()
    } else {
        format!("\nthe verifier said:\n{}", e.log)
    };
    match e.errno {
        libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP => anyhow!(
            "{iface} refused to take {HW_PROGRAM} ({why}): the device does not offload eBPF, or its firmware does not \
             accept this program (`dispatcher offload check` lists the NFP's rules){log}"
        ),
        libc::EACCES | libc::EPERM => anyhow!("the kernel refused to load {HW_PROGRAM} ({why}): run as root, or with CAP_BPF and CAP_NET_ADMIN{log}"),
        _ => anyhow!("cannot load {HW_PROGRAM} bound to {iface} ({why}){log}"),
    }
}

/// Pins a program descriptor at `path` (BPF_OBJ_PIN), so aya can open it
/// (`Xdp::from_pin`) and attach it like any program.
pub fn pin_program(program: &OwnedFd, path: &std::path::Path) -> Result<()> {
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .context("a pin path without NUL bytes")?;
    let mut attr = zeroed_attr();
    // SAFETY: writing the obj-pin member of the union.
    let u = unsafe { &mut attr.__bindgen_anon_4 };
    u.pathname = c_path.as_ptr() as u64;
    u.bpf_fd = program.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop).map_err(|e| {
        anyhow!(
            "cannot pin the program at {}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(e.errno)
        )
    })
}
