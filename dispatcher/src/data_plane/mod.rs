//! The XDP data plane seen from user space: the embedded object, loading and
//! attaching it, pinning its maps, and typed access to them.

pub mod bpffs;
mod error;
pub mod map_batch;
pub mod mapped;
pub mod offload;
pub mod privileges;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, DevMap, HashMap, IterableMap, Map, MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        ProgramError, Xdp, XdpMode,
    },
    Ebpf,
};
use dispatcher_common::{
    maps::{
        names, Endpoint, Function, FunctionSlot, Geometry, Load, ServiceSlot, Settings, TableChunk,
        Traffic, Worker, Workflow,
    },
    stats::Counter,
};
pub use error::Error;
use nix::fcntl::{Flock, FlockArg};
use tracing::{info, warn};

/// Name of the XDP program in the object.
pub const PROGRAM: &str = "dispatch";
/// A program that passes every frame (for veth testbeds; see its source).
pub const PASS_PROGRAM: &str = "pass";

/// The compiled data plane, embedded so that the binary runs on its own.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dispatcher-ebpf"))
}

/// Attach modes `dispatcher run --mode` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Generic XDP in the kernel's network stack: works on every interface.
    Skb,
    /// Native XDP in the driver (the default); falls back to skb with a
    /// warning when the driver has none.
    Drv,
    /// Offloaded to the NIC (Netronome NFP): the offload variant and its
    /// maps bound to the device (offload.rs).
    Hw,
    /// No XDP: the same protocol and policies served from user space
    /// (user_mode.rs), where XDP is unavailable, and as a baseline.
    User,
}

/// The map set, declared once: each map's field, handle type and name in
/// the object (dispatcher-common's `maps::names`, which the kernel's maps.rs
/// declares). `Maps`, `Maps::build` and `MAP_NAMES` are made from it, so a
/// map added here is pinned, opened, adopted and bound to a NIC alike.
macro_rules! map_set {
    ($($(#[$doc:meta])* $field:ident: $handle:ty = $name:ident,)*) => {
        /// Typed handles on every map of one data plane (see dispatcher-ebpf's
        /// maps.rs for what each holds and who writes it).
        pub struct Maps {
            $($(#[$doc])* pub $field: $handle,)*
            /// SETTINGS' geometry, read once: it never changes after the load.
            geometry: std::cell::OnceCell<Geometry>,
            /// Function rows in use while a bulk change runs (control's
            /// `apply`): found once instead of by a scan of FUNCTIONS per
            /// new function. None outside one.
            pub(crate) rows_in_use: std::cell::RefCell<Option<crate::control::RowsInUse>>,
            /// MAGLEV's values mapped into this process, where the map is
            /// mmap-able (the host's): control writes tables there.
            pub(crate) maglev_mapped: Option<mapped::Mapping>,
            /// WORKERS' and LOADS' values mapped likewise: control reads
            /// a function's slots there.
            workers_mapped: Option<mapped::Mapping>,
            loads_mapped: Option<mapped::Mapping>,
        }

        /// Every map the daemon pins and the CLI reads.
        pub const MAP_NAMES: &[&str] = &[$(names::$name),*];

        impl Maps {
            /// Builds the handles from a function that yields each map by name.
            fn build(mut get: impl FnMut(&str) -> Result<Map>) -> Result<Maps> {
                let mut maps = Maps {
                    $($field: <$handle>::try_from(get(names::$name)?)?,)*
                    geometry: std::cell::OnceCell::new(),
                    rows_in_use: std::cell::RefCell::new(None),
                    maglev_mapped: None,
                    workers_mapped: None,
                    loads_mapped: None,
                };
                maps.maglev_mapped = mapped::Mapping::of(IterableMap::map(&maps.maglev));
                maps.workers_mapped = mapped::Mapping::of(IterableMap::map(&maps.workers));
                maps.loads_mapped = mapped::Mapping::of(IterableMap::map(&maps.loads));
                Ok(maps)
            }

            /// WORKERS entries `first .. first + count`: from the mapping
            /// where there is one, else by a batched lookup.
            pub fn read_workers(&self, first: u32, count: u32) -> Result<Vec<Worker>> {
                read_array(&self.workers, self.workers_mapped.as_ref(), first, count)
            }

            /// LOADS entries `first .. first + count`, likewise.
            pub fn read_loads(&self, first: u32, count: u32) -> Result<Vec<Load>> {
                read_array(&self.loads, self.loads_mapped.as_ref(), first, count)
            }

            /// Whether control writes MAGLEV through a mapping of its values
            /// (the host's mmap-able map) rather than by batched updates.
            pub fn tables_mapped(&self) -> bool {
                self.maglev_mapped.is_some()
            }

            /// The kernel map named `name`, for tools that read maps raw
            /// (the test suite's interpreter).
            pub fn map_data(&self, name: &str) -> Option<&MapData> {
                $(if name == names::$name {
                    return Some(AsMapData::map_data(&self.$field));
                })*
                None
            }
        }
    };
}

/// The kernel map under a typed handle (for `Maps::map_data`).
trait AsMapData {
    fn map_data(&self) -> &MapData;
}

impl<V: aya::Pod> AsMapData for Array<MapData, V> {
    fn map_data(&self) -> &MapData {
        IterableMap::map(self)
    }
}

impl<V: aya::Pod> AsMapData for PerCpuArray<MapData, V> {
    fn map_data(&self) -> &MapData {
        IterableMap::map(self)
    }
}

impl<K: aya::Pod, V: aya::Pod> AsMapData for HashMap<MapData, K, V> {
    fn map_data(&self) -> &MapData {
        IterableMap::map(self)
    }
}

impl AsMapData for DevMap<MapData> {
    fn map_data(&self) -> &MapData {
        IterableMap::map(self)
    }
}

/// TRACE, held only to be pinned and adopted with the rest: `dispatcher
/// trace` opens it from its pin as an `aya::maps::RingBuf` to read it
/// (control/trace.rs).
pub struct TraceRing(MapData);

impl TryFrom<Map> for TraceRing {
    type Error = anyhow::Error;
    fn try_from(map: Map) -> Result<TraceRing> {
        match map {
            Map::RingBuf(data) => Ok(TraceRing(data)),
            _ => bail!("the object's TRACE map is not a ring buffer: rebuild the dispatcher"),
        }
    }
}

impl AsMapData for TraceRing {
    fn map_data(&self) -> &MapData {
        &self.0
    }
}

map_set! {
    services: Array<MapData, ServiceSlot> = SERVICES,
    settings: Array<MapData, Settings> = SETTINGS,
    functions: HashMap<MapData, u32, Function> = FUNCTIONS,
    /// The host variant's direct table of functions (`FunctionSlot`).
    function_slots: Array<MapData, FunctionSlot> = FUNCTION_SLOTS,
    function_rows: Array<MapData, Function> = FUNCTION_ROWS,
    workers: Array<MapData, Worker> = WORKERS,
    loads: Array<MapData, Load> = LOADS,
    ring: Array<MapData, TableChunk> = RING,
    maglev: Array<MapData, TableChunk> = MAGLEV,
    rr_cursors: Array<MapData, u64> = RR_CURSORS,
    rr_turns: PerCpuArray<MapData, u32> = RR_TURNS,
    workflows: HashMap<MapData, u32, Workflow> = WORKFLOWS,
    registered: HashMap<MapData, Endpoint, u32> = REGISTERED,
    egress: DevMap<MapData> = EGRESS,
    stats: PerCpuArray<MapData, u64> = STATS,
    function_stats: PerCpuArray<MapData, Traffic> = FUNCTION_STATS,
    worker_stats: PerCpuArray<MapData, Traffic> = WORKER_STATS,
    /// The offload variant's counters (plain arrays).
    stats_hw: Array<MapData, u64> = STATS_HW,
    function_stats_hw: Array<MapData, Traffic> = FUNCTION_STATS_HW,
    worker_stats_hw: Array<MapData, Traffic> = WORKER_STATS_HW,
    /// `dispatcher trace`'s sampled decisions (host variant).
    trace: TraceRing = TRACE,
    trace_control: Array<MapData, dispatcher_common::trace::TraceControl> = TRACE_CONTROL,
    trace_countdown: PerCpuArray<MapData, u32> = TRACE_COUNTDOWN,
    trace_lost: PerCpuArray<MapData, u64> = TRACE_LOST,
}

impl Maps {
    /// Takes the maps out of a loaded object, pinning each under `pin_dir`
    /// when given.
    fn take(ebpf: &mut Ebpf, pin_dir: Option<&Path>) -> Result<Maps> {
        Maps::build(|name| {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| Error::MissingMap(name.to_string()))?;
            if let Some(dir) = pin_dir {
                let path = dir.join(name);
                map.pin(&path)
                    .with_context(|| format!("cannot pin map {name} at {}", path.display()))?;
            }
            Ok(map)
        })
    }

    /// Opens the maps a running data plane pinned in `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> Result<Maps> {
        Maps::build(|name| {
            let path = pin_dir.join(name);
            let data = MapData::from_pin(&path)
                .with_context(|| format!("cannot open pinned map {}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        })
    }

    /// Writes the per-interface settings: the MAC of the attached
    /// interface, the source MAC of every dispatched frame and how frames
    /// leave (the geometry stays).
    pub fn set_settings(
        &mut self,
        iface_mac: [u8; 6],
        src_mac: [u8; 6],
        egress_mode: u8,
    ) -> Result<()> {
        let settings = Settings {
            src_mac,
            egress: egress_mode,
            iface_mac,
            ..self.settings.get(&0, 0)?
        };
        self.settings.set(0, settings, 0)?;
        Ok(())
    }

    /// Records who owns the membership (`managed::LOCAL` or `CLUSTER`).
    pub fn set_managed(&mut self, managed: u8) -> Result<()> {
        let settings = Settings {
            managed,
            ..self.settings.get(&0, 0)?
        };
        self.settings.set(0, settings, 0)?;
        Ok(())
    }

    /// Who owns the membership in these maps.
    pub fn managed(&self) -> Result<u8> {
        Ok(self.settings.get(&0, 0)?.managed)
    }

    /// Records the geometry the maps were created with (once, at load).
    fn set_geometry(&mut self, geometry: Geometry) -> Result<()> {
        let settings = Settings {
            geometry,
            function_slot_mask: geometry.function_slots() - 1,
            ..self.settings.get(&0, 0)?
        };
        self.settings.set(0, settings, 0)?;
        self.geometry = geometry.into();
        Ok(())
    }

    /// Writes zero into every entry of the offload variant's XADD counters
    /// (STATS_HW, FUNCTION_STATS_HW, WORKER_STATS_HW). On the NFP an atomic
    /// add works only on a word the host created with a map update (the
    /// driver then byte-swaps those words between the card's big-endian
    /// counters and the host). The offload variant reads LOADS and
    /// RR_CURSORS as plain values (variant.rs), so they need nothing here.
    fn create_counters_hw(&mut self) -> Result<()> {
        fn zero_all<V: aya::Pod + Default>(map: &mut Array<MapData, V>) -> Result<()> {
            let keys: Vec<u32> = (0..map.len()).collect();
            let zeros: Vec<V> = keys.iter().map(|_| V::default()).collect();
            crate::data_plane::map_batch::write(map, &keys, &zeros)
        }
        zero_all(&mut self.stats_hw).context("cannot create the counters of STATS_HW")?;
        zero_all(&mut self.function_stats_hw)
            .context("cannot create the counters of FUNCTION_STATS_HW")?;
        zero_all(&mut self.worker_stats_hw).context("cannot create the counters of WORKER_STATS_HW")
    }

    /// The sizes of this data plane's tables, as its loader chose them
    /// (read from SETTINGS on first use).
    pub fn geometry(&self) -> Result<Geometry> {
        if let Some(g) = self.geometry.get() {
            return Ok(*g);
        }
        let g = self
            .settings
            .get(&0, 0)
            .context("cannot read SETTINGS")?
            .geometry;
        if let Some(problem) = g.problem() {
            bail!("the data plane's SETTINGS hold no usable geometry ({problem}): it was pinned by another version of the dispatcher; stop it and start this one");
        }
        Ok(*self.geometry.get_or_init(|| g))
    }

    /// Every counter, in `Counter` order, whichever variant counts: the
    /// host program's per-CPU STATS plus the offloaded program's STATS_HW
    /// (a data plane runs one of them; the other's stay zero).
    pub fn counters(&self) -> Result<Vec<(Counter, u64)>> {
        let hw = self.counters_hw()?;
        Ok(self
            .counters_host()?
            .into_iter()
            .map(|(c, n)| {
                (
                    c,
                    n + hw.iter().find(|(h, _)| *h == c).map_or(0, |(_, m)| *m),
                )
            })
            .collect())
    }

    /// The host variant's counters, summed over CPUs, in `Counter` order.
    pub fn counters_host(&self) -> Result<Vec<(Counter, u64)>> {
        Counter::ALL
            .iter()
            .map(|&c| {
                let per_cpu = self.stats.get(&(c as u32), 0)?;
                Ok((c, per_cpu.iter().sum()))
            })
            .collect()
    }

    /// The offload variant's counters, in `Counter` order. A device whose
    /// maps hold fewer entries than there are counters (`--hw-map-entries`)
    /// keeps only the first ones; the others are left out.
    pub fn counters_hw(&self) -> Result<Vec<(Counter, u64)>> {
        Counter::ALL
            .iter()
            .filter(|&&c| (c as u32) < self.stats_hw.len())
            .map(|&c| Ok((c, self.stats_hw.get(&(c as u32), 0)?)))
            .collect()
    }

    /// Packets and bytes dispatched to the function at row `index`, by
    /// either variant.
    pub fn function_traffic(&self, index: u32) -> Result<Traffic> {
        Ok(add(
            per_cpu_traffic(&self.function_stats, index)?,
            self.function_stats_hw.get(&index, 0).unwrap_or_default(),
        ))
    }

    /// Packets and bytes dispatched to the worker at WORKERS `index`, by
    /// either variant.
    pub fn worker_traffic(&self, index: u32) -> Result<Traffic> {
        Ok(add(
            per_cpu_traffic(&self.worker_stats, index)?,
            self.worker_stats_hw.get(&index, 0).unwrap_or_default(),
        ))
    }
}

fn add(a: Traffic, b: Traffic) -> Traffic {
    Traffic {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
    }
}

/// Packets and bytes at `index` of a per-CPU traffic map, summed.
fn per_cpu_traffic(map: &PerCpuArray<MapData, Traffic>, index: u32) -> Result<Traffic> {
    Ok(map
        .get(&index, 0)?
        .iter()
        .fold(Traffic::default(), |a, t| add(a, *t)))
}

/// XDP programs in the object.
pub const PROGRAMS: [&str; 6] = [
    PROGRAM,
    HW_PROGRAM,
    PASS_PROGRAM,
    YARDSTICK_FLOOR,
    YARDSTICK_ONE_LOOKUP,
    YARDSTICK_ONE_ARRAY_LOOKUP,
];
/// The variant that obeys the NFP's offload rules (same behaviour).
pub const HW_PROGRAM: &str = "dispatch_hw";
/// Benchmark yardsticks: a minimal L3 forwarder and a one-lookup dispatcher
/// (its function found by a hash lookup, or through the direct table).
pub const YARDSTICK_FLOOR: &str = "yardstick_floor";
pub const YARDSTICK_ONE_LOOKUP: &str = "yardstick_one_lookup";
pub const YARDSTICK_ONE_ARRAY_LOOKUP: &str = "yardstick_one_array_lookup";

/// Loads the object, its maps sized by `geometry`, and the named programs
/// into the kernel (verifying them) without attaching anything.
pub fn load(programs: &[&str], geometry: &Geometry) -> Result<Ebpf> {
    let mut loader = aya::EbpfLoader::new();
    for name in MAP_NAMES {
        if let Some(entries) = geometry.map_entries(name) {
            loader.map_max_entries(name, entries);
        }
    }
    let mut ebpf = loader
        .load(object())
        .context("cannot load the eBPF object")?;
    for name in programs {
        let program: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or_else(|| Error::MissingProgram(name.to_string()))?
            .try_into()?;
        program.load().map_err(|e| Error::of_load(e, name))?;
    }
    Ok(ebpf)
}

/// Every program loaded but not attached, with the maps: for
/// BPF_PROG_TEST_RUN tests and `cargo xtask bench-xdp`.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub maps: Maps,
}

impl Loaded {
    /// With the host's geometry.
    pub fn new() -> Result<Loaded> {
        Loaded::with_geometry(Geometry::HOST)
    }

    /// With maps sized by `geometry` (a NIC's, say), recorded in SETTINGS.
    pub fn with_geometry(geometry: Geometry) -> Result<Loaded> {
        let mut ebpf = load(&PROGRAMS, &geometry)?;
        let mut maps = Maps::take(&mut ebpf, None)?;
        maps.set_geometry(geometry)?;
        Ok(Loaded { ebpf, maps })
    }

    pub fn named(&self, name: &str) -> &Xdp {
        self.ebpf
            .program(name)
            .expect("loaded with every program")
            .try_into()
            .expect("an XDP program")
    }
}

/// Name of the pinned XDP link, beside the maps.
pub const LINK_PIN: &str = "link";

/// The name of the program the data plane pinned at `pin_dir` runs
/// (`PROGRAM`, or `HW_PROGRAM` when offloaded), from its pinned link.
pub fn attached_program(pin_dir: &Path) -> Result<String> {
    let link = FdLink::from(
        PinnedLink::from_pin(pin_dir.join(LINK_PIN)).context("cannot open the pinned link")?,
    );
    let id = link
        .info()
        .context("cannot read the link's info")?
        .program_id();
    for info in aya::programs::loaded_programs() {
        let info = info.context("cannot list the loaded programs")?;
        if info.id() == id {
            return Ok(info.name_as_str().unwrap_or_default().to_string());
        }
    }
    bail!("the data plane's program {id} is not loaded")
}
/// Name of the pinned offload program (hw mode only: aya opens it from
/// there to attach it).
pub const PROGRAM_PIN: &str = "program";

/// Turns an attached program's link into a bpf_link pinned in `dir`, so
/// the data plane outlives this process.
fn pin_link(
    program: &mut Xdp,
    link: aya::programs::xdp::XdpLinkId,
    iface: &str,
    dir: &Path,
) -> Result<()> {
    let link = FdLink::try_from(program.take_link(link)?).map_err(|_| {
        anyhow!("the kernel attached {iface} without a bpf_link (kernel older than 5.9?): the data plane could not outlive the daemon")
    })?;
    link.pin(dir.join(LINK_PIN))
        .context("cannot pin the XDP link")?;
    Ok(())
}

/// A data plane attached to an interface, its maps and its XDP link pinned
/// under `pin_dir`: it keeps running when the daemon exits or dies, and a
/// new daemon adopts it. Only `detach` takes it down.
pub struct Attached {
    link: PinnedLink,
    pub maps: Maps,
    pub iface: String,
    /// The attach mode, when this process attached it (None: adopted).
    pub mode: Option<XdpMode>,
    pub pin_dir: PathBuf,
    /// Held while this process manages the data plane (flock on pin_dir).
    _lock: Flock<std::fs::File>,
}

impl Attached {
    /// Loads the program, lets `configure` fill its maps (the caller's
    /// config: this layer knows none), attaches it to `iface` in `mode`, and
    /// pins the maps and the link in `pin_dir`.
    ///
    /// Everything is pinned into a staging directory first and renamed to
    /// `pin_dir` once the program is configured and attached, so the pin
    /// directory appears complete in one step: its existence means "running".
    pub fn attach(
        iface: &str,
        mode: Mode,
        pin_dir: &Path,
        device: offload::Device,
        configure: impl FnOnce(&mut Maps) -> Result<()>,
    ) -> Result<Attached> {
        if pin_dir.exists() {
            bail!(
                "a data plane is already pinned at {}: adopt it instead",
                pin_dir.display()
            );
        }
        let parent = pin_dir.parent().context("pin directory has no parent")?;
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
        // A sibling of `dispatcher/` (bpffs reserves names with dots, and an
        // interface could be called anything), on the same bpffs for rename.
        let staging = parent
            .with_file_name("dispatcher-staging")
            .join(format!("{iface}-{}", std::process::id()));
        std::fs::create_dir_all(&staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;

        let staged = Self::attach_staged(iface, mode, &staging, device, configure).and_then(
            |(maps, mode)| {
                std::fs::rename(&staging, pin_dir)
                    .with_context(|| format!("cannot move pins to {}", pin_dir.display()))?;
                Ok((maps, mode))
            },
        );
        if let Some(staging_root) = staging.parent() {
            if staged.is_err() {
                // Removing the link's pin (its last reference) detaches it.
                let _ = std::fs::remove_dir_all(&staging);
            }
            let _ = std::fs::remove_dir(staging_root); // only if empty
        }
        let (maps, mode) = staged?;
        let link =
            PinnedLink::from_pin(pin_dir.join(LINK_PIN)).context("cannot open the pinned link")?;
        info!(iface, mode = ?mode, pins = %pin_dir.display(), "data plane attached");
        Ok(Attached {
            link,
            maps,
            iface: iface.to_string(),
            mode: Some(mode),
            pin_dir: pin_dir.to_path_buf(),
            _lock: lock(pin_dir)?,
        })
    }

    /// The kernel's id of the attached program (through the pinned link).
    pub fn program_id(&self) -> Result<u32> {
        let link = FdLink::from(
            PinnedLink::from_pin(self.pin_dir.join(LINK_PIN))
                .context("cannot open the pinned link")?,
        );
        Ok(link
            .info()
            .context("cannot read the link's info")?
            .program_id())
    }

    fn attach_staged(
        iface: &str,
        mode: Mode,
        staging: &Path,
        device: offload::Device,
        configure: impl FnOnce(&mut Maps) -> Result<()>,
    ) -> Result<(Maps, XdpMode)> {
        if mode == Mode::Hw {
            return Self::attach_staged_hw(iface, staging, device, configure);
        }
        let geometry = device.host;
        info!(?geometry, "sizing the maps");
        let mut ebpf = load(&[PROGRAM], &geometry)?;
        let mut maps = Maps::take(&mut ebpf, Some(staging))?;
        maps.set_geometry(geometry)?;
        configure(&mut maps)?;

        let program: &mut Xdp = ebpf.program_mut(PROGRAM).expect("loaded").try_into()?;
        let (link, mode) = match mode {
            Mode::Hw => unreachable!("hw mode is attached by attach_staged_hw"),
            Mode::User => bail!("--mode user attaches nothing: it dispatches from user space"),
            Mode::Skb => (program.attach(iface, XdpMode::Skb), XdpMode::Skb),
            Mode::Drv => match program.attach(iface, XdpMode::Driver) {
                Ok(link) => (Ok(link), XdpMode::Driver),
                Err(e) => {
                    warn!("native XDP is not available on {iface} ({e}); falling back to skb mode");
                    (program.attach(iface, XdpMode::Skb), XdpMode::Skb)
                }
            },
        };
        let link = link.map_err(|e| explain_attach_error(e, iface))?;
        pin_link(program, link, iface, staging)?;
        Ok((maps, mode))
    }

    /// `--mode hw`: the offload variant and the maps it uses bound to the
    /// NIC (offload.rs), configured, attached in hardware mode. (The caller
    /// checks that its config fits `device.geometry()` before this touches
    /// the device.)
    fn attach_staged_hw(
        iface: &str,
        staging: &Path,
        device: offload::Device,
        configure: impl FnOnce(&mut Maps) -> Result<()>,
    ) -> Result<(Maps, XdpMode)> {
        let ifindex = ifindex(iface)?;
        let geometry = device.geometry()?;
        info!(iface, ?geometry, "sizing the maps for the device");
        let bound = offload::load_bound(iface, ifindex, &device, &geometry, MAP_NAMES)?;
        let mut by_name: std::collections::HashMap<String, Map> = bound.maps.into_iter().collect();
        let mut maps = Maps::build(|name| {
            let map = by_name
                .remove(name)
                .ok_or_else(|| anyhow!("map {name} was not created"))?;
            let path = staging.join(name);
            map.pin(&path)
                .with_context(|| format!("cannot pin map {name} at {}", path.display()))?;
            Ok(map)
        })?;
        maps.set_geometry(geometry)?;
        maps.create_counters_hw()?;
        configure(&mut maps)?;
        let program_pin = staging.join(PROGRAM_PIN);
        offload::pin_program(&bound.program, &program_pin)?;
        let mut program = Xdp::from_pin(&program_pin, aya_obj::programs::XdpAttachType::Interface)
            .context("cannot open the pinned offload program")?;
        let link = program.attach(iface, XdpMode::Hardware).map_err(|e| {
            anyhow!(e).context(format!("{iface} refused to run {HW_PROGRAM} in hardware mode (its maps and program were bound to it)"))
        })?;
        pin_link(&mut program, link, iface, staging)?;
        Ok((maps, XdpMode::Hardware))
    }

    /// Takes over a data plane a previous daemon left pinned at `pin_dir`.
    pub fn adopt(iface: &str, pin_dir: &Path) -> Result<Attached> {
        let lock = lock(pin_dir)?;
        let link = PinnedLink::from_pin(pin_dir.join(LINK_PIN)).map_err(|e| {
            anyhow!(
                "cannot adopt the data plane at {}: its link is not there ({e}). If no dispatcher runs for {iface}, remove that directory and start again",
                pin_dir.display()
            )
        })?;
        let maps = Maps::from_pins(pin_dir).map_err(|e| {
            anyhow!(
                "cannot adopt the data plane at {}: {e:#} (pinned by another version of the dispatcher?). Stop it with `dispatcher run` of that version, or remove the directory",
                pin_dir.display()
            )
        })?;
        info!(iface, pins = %pin_dir.display(), "adopted the running data plane");
        Ok(Attached {
            link,
            maps,
            iface: iface.to_string(),
            mode: None,
            pin_dir: pin_dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// Another handle on the same maps (for a task of its own).
    pub fn maps_handle(&self) -> Result<Maps> {
        Maps::from_pins(&self.pin_dir)
    }

    /// Detaches the program and removes the pins.
    pub fn detach(self) -> Result<()> {
        let Attached {
            link,
            pin_dir,
            iface,
            maps,
            _lock,
            ..
        } = self;
        drop(maps);
        // The pin and this fd were the link's last references: dropping both
        // detaches the program.
        let link = link
            .unpin()
            .with_context(|| format!("cannot unpin the link at {}", pin_dir.display()))?;
        drop(link);
        std::fs::remove_dir_all(&pin_dir)
            .with_context(|| format!("cannot remove pins at {}", pin_dir.display()))?;
        info!(iface = %iface, "data plane detached, pins removed");
        Ok(())
    }
}

/// Only one daemon manages a data plane: an exclusive flock on its pin
/// directory, held for the daemon's life.
fn lock(pin_dir: &Path) -> Result<Flock<std::fs::File>> {
    let dir = std::fs::File::open(pin_dir)
        .with_context(|| format!("cannot open {}", pin_dir.display()))?;
    Flock::lock(dir, FlockArg::LockExclusiveNonblock)
        .map_err(|_| Error::Managed(pin_dir.to_path_buf()).into())
}

/// The interface index of `iface`.
pub fn ifindex(iface: &str) -> Result<u32> {
    nix::net::if_::if_nametoindex(iface)
        .map_err(|_| Error::UnknownInterface(iface.to_string()).into())
}

/// The MAC address of `iface`, which also proves it exists.
pub fn interface_mac(iface: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{iface}/address");
    let text =
        std::fs::read_to_string(&path).map_err(|_| Error::UnknownInterface(iface.to_string()))?;
    let mac: macaddr::MacAddr6 = text.trim().parse().with_context(|| {
        format!(
            "interface {iface} has no Ethernet address ({})",
            text.trim()
        )
    })?;
    Ok(mac.into_array())
}

fn explain_attach_error(e: ProgramError, iface: &str) -> anyhow::Error {
    match e {
        ProgramError::UnknownInterface { .. } => Error::UnknownInterface(iface.to_string()).into(),
        e => anyhow!(e).context(format!(
            "cannot attach to {iface}: is another XDP program attached? (`ip link show {iface}` shows it)"
        )),
    }
}

/// The maps with round-robin turns taken elsewhere: the slow path keeps
/// its own (it must not move the kernel's), a test takes the offload
/// variant's. Everything else reads the maps.
pub struct WithTurns<'a, F: Fn(u32) -> u32> {
    pub maps: &'a Maps,
    pub turn: F,
}

impl<F: Fn(u32) -> u32> dispatcher_common::model::View for WithTurns<'_, F> {
    fn is_service(&self, e: &Endpoint) -> bool {
        self.maps.is_service(e)
    }
    fn is_registered(&self, e: &Endpoint) -> bool {
        self.maps.is_registered(e)
    }
    fn function(&self, id: u32) -> Option<Function> {
        self.maps.function(id)
    }
    fn workflow(&self, id: u32) -> Option<Workflow> {
        self.maps.workflow(id)
    }
    fn worker(&self, index: u32) -> Option<Worker> {
        self.maps.worker(index)
    }
    fn ring_slot(&self, f: &Function, position: u32) -> Option<u8> {
        self.maps.ring_slot(f, position)
    }
    fn maglev_slot(&self, f: &Function, position: u32) -> Option<u8> {
        self.maps.maglev_slot(f, position)
    }
    fn load(&self, index: u32) -> Option<u32> {
        self.maps.load(index)
    }
    fn settings(&self) -> Option<Settings> {
        self.maps.settings()
    }
    fn turn(&self, function_index: u32) -> u32 {
        (self.turn)(function_index)
    }
}

/// The reference model reads the same maps the kernel program does.
impl dispatcher_common::model::View for Maps {
    fn is_service(&self, e: &Endpoint) -> bool {
        let Ok(geometry) = self.geometry() else {
            return false;
        };
        let (a, b) = geometry.service_slots(e);
        [a, b].iter().any(|i| {
            self.services
                .get(i, 0)
                .is_ok_and(|s| s.in_use != 0 && s.endpoint == *e)
        })
    }
    fn is_registered(&self, e: &Endpoint) -> bool {
        self.registered.get(e, 0).is_ok()
    }
    fn function(&self, id: u32) -> Option<Function> {
        self.functions.get(&id, 0).ok()
    }
    fn workflow(&self, id: u32) -> Option<Workflow> {
        self.workflows.get(&id, 0).ok()
    }
    fn worker(&self, index: u32) -> Option<Worker> {
        self.workers.get(&index, 0).ok()
    }
    fn ring_slot(&self, f: &Function, position: u32) -> Option<u8> {
        let (chunk, offset) = f.ring_position(position);
        Some(self.ring.get(&chunk, 0).ok()?[offset])
    }
    fn maglev_slot(&self, f: &Function, position: u32) -> Option<u8> {
        let (chunk, offset) = f.maglev_position(position);
        Some(self.maglev.get(&chunk, 0).ok()?[offset])
    }
    fn load(&self, worker_index: u32) -> Option<u32> {
        self.loads.get(&worker_index, 0).ok().map(|l| l.rank())
    }
    fn settings(&self) -> Option<Settings> {
        self.settings.get(&0, 0).ok()
    }
    /// The turn the host variant takes on the CPU this thread runs on
    /// (RR_TURNS is per CPU; a test pins itself to compare).
    fn turn(&self, function_index: u32) -> u32 {
        // SAFETY: no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        self.rr_turns
            .get(&function_index, 0)
            .ok()
            .and_then(|per_cpu| per_cpu.get(usize::try_from(cpu).ok()?).copied())
            .unwrap_or(0)
    }
}

/// Entries `first .. first + count` of an array map: from its mapping where
/// there is one (a memcpy), else by a batched lookup.
fn read_array<V: aya::Pod>(
    map: &Array<MapData, V>,
    mapping: Option<&mapped::Mapping>,
    first: u32,
    count: u32,
) -> Result<Vec<V>> {
    match mapping {
        Some(m) => m.read(first, count),
        None => map_batch::read_range(map, first, count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused load is told apart by its errno, whatever the message says.
    #[test]
    fn a_load_refused_with_eperm_names_the_privileges() {
        let refused = |errno| ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(errno),
            verifier_log: aya_obj::VerifierLog::new("some log".into()),
        };
        let eperm = Error::of_load(refused(libc::EPERM), PROGRAM);
        assert!(matches!(eperm, Error::PermissionDenied { .. }), "{eperm:?}");
        assert!(eperm.to_string().contains("CAP_BPF"), "{eperm}");
        let einval = Error::of_load(refused(libc::EINVAL), PROGRAM);
        assert!(matches!(einval, Error::Rejected { .. }), "{einval:?}");
        assert!(einval.to_string().contains("verifier log"), "{einval}");
    }
}
