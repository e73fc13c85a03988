//! Array maps created with BPF_F_MMAPABLE, written through a shared
//! mapping of their values: a selection table of 16,384 slots is 512
//! chunks, and one batched `bpf(2)` update of 512 entries is per-element
//! work in the kernel: writing through the mapping instead took a change
//! at that size from 374 to 181 us here (docs/benchmarks/bench-control.md),
//! the copy of 16 KiB being a memcpy. Readers of the data plane see no
//! difference: it is the same array.
//!
//! WORKERS and LOADS carry the flag too, to be *read* this way: a change
//! reads its function's worker slots and loads, and a batched lookup of
//! 64 entries is per-element work in the kernel as well (about half of a
//! 64-worker change's time before).
//!
//! Only the host's maps carry the flag: maps bound to a NIC are created
//! without flags (offload.rs), and a map without it is written by batches
//! as before (`Mapping::of` answers None).

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use anyhow::{bail, Result};
use aya::{maps::MapData, Pod};
use aya_obj::generated::BPF_F_MMAPABLE;

/// A read-write shared mapping of an array map's values (entry `i` at
/// `i * value_size` bytes, value sizes being multiples of 8 here).
pub struct Mapping {
    base: NonNull<u8>,
    len: usize,
    value_size: usize,
}

// SAFETY: the mapping is plain shared memory, not tied to a thread; every
// access goes through `&mut self` or copies bytes.
unsafe impl Send for Mapping {}

impl Mapping {
    /// The mapping of `map`'s values, or None when the map was not created
    /// mmap-able (offloaded, or pinned by a build without the flag) or the
    /// kernel refuses.
    pub fn of(map: &MapData) -> Option<Mapping> {
        let info = map.info().ok()?;
        if info.map_flags() & BPF_F_MMAPABLE == 0 || info.value_size() % 8 != 0 {
            return None;
        }
        let len = info.max_entries() as usize * info.value_size() as usize;
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks
        // the length against the map's value area.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot mmap an array map; writing it by batches");
            return None;
        }
        Some(Mapping {
            base: NonNull::new(ptr.cast())?,
            len,
            value_size: info.value_size() as usize,
        })
    }

    /// Copies out entries `first .. first + count`.
    pub fn read<V: Pod>(&self, first: u32, count: u32) -> Result<Vec<V>> {
        if size_of::<V>() != self.value_size {
            bail!(
                "reading {}-byte values from a map of {}-byte values",
                size_of::<V>(),
                self.value_size
            );
        }
        let (offset, bytes) = (
            first as usize * self.value_size,
            count as usize * self.value_size,
        );
        if offset.checked_add(bytes).is_none_or(|end| end > self.len) {
            bail!(
                "entries {first}..{} fall outside the map's {} entries",
                first as u64 + count as u64,
                self.len / self.value_size
            );
        }
        // SAFETY: V is Pod (any bit pattern is a valid V) and as large as
        // the map's values; the range is within the mapping (checked above);
        // read_unaligned copies whatever a concurrent writer left, as a
        // lookup would.
        Ok((0..count as usize)
            .map(|i| unsafe {
                std::ptr::read_unaligned(
                    self.base
                        .as_ptr()
                        .add(offset + i * self.value_size)
                        .cast::<V>(),
                )
            })
            .collect())
    }

    /// Copies `bytes` to byte `offset` of the values.
    pub fn write(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        if offset
            .checked_add(bytes.len())
            .is_none_or(|end| end > self.len)
        {
            bail!(
                "a write of {} bytes at {offset} falls outside the map's {} bytes",
                bytes.len(),
                self.len
            );
        }
        // SAFETY: within the mapping (checked above); the source is a
        // separate buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.base.as_ptr().add(offset),
                bytes.len(),
            )
        };
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `of`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
