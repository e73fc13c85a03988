//! Packet counters: one per-CPU slot per `Counter`.

use dispatcher_common::stats::Counter;

use crate::maps::STATS;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = STATS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, so no other CPU writes it; XDP programs
        // do not preempt each other on one CPU.
        unsafe { *slot += 1 };
    }
}
