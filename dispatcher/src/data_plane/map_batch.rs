//! Batched reads and writes of BPF array maps: one `bpf(2)` call for a run
//! of entries (BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH, kernel 5.6+),
//! where aya offers one call per entry. A worker set change touches up to
//! 64 worker slots and 8 (or 512) table chunks; one call each is what makes
//! tens of thousands of changes per second possible.
//!
//! Maps that refuse batches (offloaded maps have no batch operations) are
//! read and written entry by entry instead, with the same result.

use std::{
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, IterableMap, MapData},
    Pod,
};
use aya_obj::generated::{bpf_attr__bindgen_ty_3, bpf_cmd};

/// The `batch` member of `union bpf_attr`, as aya-obj's bindings have it.
type BatchAttr = bpf_attr__bindgen_ty_3;

fn batch_attr(map_fd: u32, keys: u64, values: u64, count: u32) -> BatchAttr {
    BatchAttr {
        in_batch: 0,
        out_batch: 0,
        keys,
        values,
        count,
        map_fd,
        elem_flags: 0,
        flags: 0,
    }
}

/// Runs one batch command; `Ok(count)` is how many entries it handled.
fn batch(cmd: bpf_cmd, attr: &mut BatchAttr) -> std::io::Result<u32> {
    // SAFETY: `attr` is a valid, fully initialised bpf_attr prefix of the
    // size passed, and the pointers in it (set by the callers) point at
    // buffers of `count` keys and values that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(attr.count)
}

/// The kernel's internal "not supported" (524), which bpf(2) can return.
const ENOTSUPP: i32 = 524;

fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// Entries `first .. first + count` of an array map, in key order.
pub fn read_range<V: Pod>(map: &Array<MapData, V>, first: u32, count: u32) -> Result<Vec<V>> {
    let mut keys = vec![0u32; count as usize];
    // SAFETY: V is Pod (plain bytes, any bit pattern valid): zeroed is a
    // valid V, and the kernel writes whole values over it.
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; count as usize];
    // For arrays the batch token is the key *before* the first one wanted.
    let before = first.wrapping_sub(1);
    let mut out_batch = 0u32;
    let mut attr = batch_attr(
        map.map().fd().as_fd().as_raw_fd() as u32,
        keys.as_mut_ptr() as u64,
        values.as_mut_ptr() as u64,
        count,
    );
    attr.in_batch = if first == 0 {
        0
    } else {
        &before as *const u32 as u64
    };
    attr.out_batch = &mut out_batch as *mut u32 as u64;
    match batch(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(n) if n == count => Ok(values),
        Ok(n) => anyhow::bail!("batch read of {count} entries from {first} returned {n}"),
        Err(e) if unsupported(&e) => (first..first + count)
            .map(|k| map.get(&k, 0).map_err(Into::into))
            .collect(),
        Err(e) => Err(e)
            .with_context(|| format!("cannot read entries {first}..{} of a map", first + count)),
    }
}

/// Writes `values[i]` at `keys[i]`, all in one call.
pub fn write<V: Pod>(map: &mut Array<MapData, V>, keys: &[u32], values: &[V]) -> Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = batch_attr(
        map.map().fd().as_fd().as_raw_fd() as u32,
        keys.as_ptr() as u64,
        values.as_ptr() as u64,
        keys.len() as u32,
    );
    match batch(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr) {
        Ok(n) if n as usize == keys.len() => Ok(()),
        Ok(n) => anyhow::bail!("batch write of {} entries wrote {n}", keys.len()),
        Err(e) if unsupported(&e) => {
            for (k, v) in keys.iter().zip(values) {
                map.set(*k, *v, 0)?;
            }
            Ok(())
        }
        Err(e) => Err(e).context("cannot write map entries"),
    }
}
