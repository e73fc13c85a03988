//! What differs between the host program (`dispatch`) and the one that can
//! be offloaded to a Netronome NFP (`dispatch_hw`): how counters are kept,
//! how a round-robin turn is taken (per CPU, or from a shared cursor), whether dispatches count into the load
//! estimates, how a byte or word is read out of a map value at a computed
//! offset, and how the frame leaves. Everything else is the same code,
//! monomorphised twice.
//!
//! Two NFP rules shape the offload variant (`dispatcher offload check`
//! checks both): it reads map values only at offsets known at verification,
//! and it keeps each 4-byte word of a map value either as a plain value or
//! as an atomic counter, never both.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{bindings::xdp_action, helpers::bpf_get_prandom_u32};
use dispatcher_common::{
    hash,
    maps::{egress, Settings, TableChunk, Traffic},
    stats::Counter,
};

use crate::maps::{
    EGRESS, FUNCTION_STATS, FUNCTION_STATS_HW, RR_CURSORS, RR_TURNS, STATS, STATS_HW, WORKER_STATS,
    WORKER_STATS_HW,
};

pub trait Variant {
    /// Whether this variant logs alarms through aya-log (the NFP cannot).
    const LOGS: bool;
    /// Whether this variant samples decisions for `dispatcher trace` (the
    /// NFP has no ring buffers).
    const TRACES: bool;
    /// Whether this variant finds functions through FUNCTION_SLOTS before
    /// FUNCTIONS (`maps::function`): the host, where a hash lookup is a
    /// helper call; the NFP looks hash maps up in hardware.
    const DIRECT_FUNCTIONS: bool;
    /// Whether a plain REQUEST takes a dispatch path of its own (a second
    /// copy of selection and rewrite, specialised: the host; the NFP's
    /// instruction budget has no room for it).
    const STRAIGHT_REQUESTS: bool;
    /// One more packet for `counter`; returns this CPU's count so far where
    /// the variant can tell (0 where it cannot).
    fn count(counter: Counter) -> u64;
    /// A dispatched packet of `bytes` for a function index and worker index.
    fn traffic(function_index: u32, worker_index: u32, bytes: u64);
    /// The next round-robin turn of a function.
    fn next_turn(function_index: u32) -> u32;
    /// 32 random-looking bits for p2c's two samples.
    fn sample(function_index: u32) -> u32;
    /// Counts a request sent to a worker into its in-flight estimate
    /// (`Load::in_flight` in LOADS).
    fn charge(in_flight: *mut u32);
    /// Word `index` (< 8) of eight u32 in a map value.
    fn word_of_eight(words: &[u32; 8], index: usize) -> u32;
    /// Byte `offset` (< 32) of a selection table chunk.
    #[inline(always)]
    fn table_slot(chunk: &TableChunk, offset: usize) -> u8 {
        // SAFETY: a 32-byte map value, 8-byte aligned like every map value:
        // eight u32 words. Byte k of a word is its k-th lowest (bpfel).
        let words = unsafe { &*(chunk as *const TableChunk as *const [u32; 8]) };
        (Self::word_of_eight(words, offset / 4) >> ((offset % 4) * 8)) as u8
    }
    /// Sends the rewritten frame; `Err` if it cannot leave.
    fn transmit(settings: &Settings) -> Result<u32, Counter>;
}

/// Adds `n` to `*p` atomically: an XADD, which the NFP also accepts.
#[inline(always)]
pub fn xadd(p: *mut u64, n: u64) {
    // SAFETY: `p` points into a map value, valid and aligned for u64.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, n) };
}

#[inline(always)]
fn add_traffic(p: *mut Traffic, bytes: u64) {
    // SAFETY: this CPU's slot of a per-CPU map value.
    unsafe {
        (*p).packets += 1;
        (*p).bytes += bytes;
    }
}

#[inline(always)]
fn xadd_traffic(p: *mut Traffic, bytes: u64) {
    // SAFETY: fields of a map value, valid and aligned for u64.
    unsafe {
        xadd(core::ptr::addr_of_mut!((*p).packets), 1);
        xadd(core::ptr::addr_of_mut!((*p).bytes), bytes);
    }
}

/// The host variant: per-CPU counters and turns, XDP_TX or XDP_REDIRECT.
pub struct Host;

impl Variant for Host {
    const LOGS: bool = true;
    const TRACES: bool = true;
    const DIRECT_FUNCTIONS: bool = true;
    const STRAIGHT_REQUESTS: bool = true;

    #[inline(always)]
    fn count(counter: Counter) -> u64 {
        match STATS.get_ptr_mut(counter as u32) {
            // SAFETY: this CPU's slot; XDP programs do not preempt each other.
            Some(p) => unsafe {
                *p += 1;
                *p
            },
            None => 0,
        }
    }

    #[inline(always)]
    fn traffic(function_index: u32, worker_index: u32, bytes: u64) {
        // Two separate lookups, each checked on its own: LLVM merges the
        // null checks of a loop over both into `p1 | p2`, which the
        // verifier rejects.
        if let Some(p) = FUNCTION_STATS.get_ptr_mut(function_index) {
            add_traffic(p, bytes);
        }
        if let Some(p) = WORKER_STATS.get_ptr_mut(worker_index) {
            add_traffic(p, bytes);
        }
    }

    /// This CPU's turn: no atomic. A shared fetch-add cost a locked
    /// instruction per request and a cache line bouncing between CPUs;
    /// per CPU, each CPU's requests go round the ring exactly, and so do
    /// all of them together over a round (see RR_TURNS).
    #[inline(always)]
    fn next_turn(function_index: u32) -> u32 {
        match RR_TURNS.get_ptr_mut(function_index) {
            // SAFETY: this CPU's slot; XDP programs do not preempt each other.
            Some(p) => unsafe {
                let turn = *p;
                *p = turn.wrapping_add(1);
                turn
            },
            None => 0,
        }
    }

    /// This CPU's next turn, mixed (murmur3's finalizer): consecutive
    /// turns give unrelated samples, and no helper is called
    /// (`bpf_get_prandom_u32` is a call, which retpolines and Safe RET make
    /// costly). Predictable to one who knows the turn, which p2c does not
    /// mind: it spreads load, it keeps no secret.
    #[inline(always)]
    fn sample(function_index: u32) -> u32 {
        hash::fmix32(Self::next_turn(function_index) ^ 0x9e37_79b9)
    }

    #[inline(always)]
    fn charge(in_flight: *mut u32) {
        // SAFETY: a field of a map value, valid and aligned for u32.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(in_flight, 1) };
    }

    #[inline(always)]
    fn word_of_eight(words: &[u32; 8], index: usize) -> u32 {
        words[index & 7]
    }

    #[inline(always)]
    fn table_slot(chunk: &TableChunk, offset: usize) -> u8 {
        chunk[offset & 31]
    }

    #[inline(always)]
    fn transmit(settings: &Settings) -> Result<u32, Counter> {
        if settings.egress != egress::REDIRECT {
            return Ok(xdp_action::XDP_TX);
        }
        match EGRESS.redirect(0, 0) {
            Ok(action) => Ok(action),
            Err(_) => Err(Counter::DropEgressFailed),
        }
    }
}

/// The offload variant: plain arrays with XADD (no per-CPU maps, no fetch
/// atomics, no redirect on the NFP), map values read at constant offsets.
pub struct Hw;

impl Variant for Hw {
    const LOGS: bool = false;
    const TRACES: bool = false;
    const DIRECT_FUNCTIONS: bool = false;
    const STRAIGHT_REQUESTS: bool = false;

    #[inline(always)]
    fn count(counter: Counter) -> u64 {
        if let Some(p) = STATS_HW.get_ptr_mut(counter as u32) {
            xadd(p, 1);
        }
        0
    }

    #[inline(always)]
    fn traffic(function_index: u32, worker_index: u32, bytes: u64) {
        if let Some(p) = FUNCTION_STATS_HW.get_ptr_mut(function_index) {
            xadd_traffic(p, bytes);
        }
        if let Some(p) = WORKER_STATS_HW.get_ptr_mut(worker_index) {
            xadd_traffic(p, bytes);
        }
    }

    #[inline(always)]
    fn next_turn(function_index: u32) -> u32 {
        // No fetch-add on the NFP, and a cursor cannot be both read and
        // added to: read it, write the next turn with a map update.
        // Packets racing on other cores may share a turn.
        let turn = RR_CURSORS.get(function_index).copied().unwrap_or(0);
        let _ = RR_CURSORS.set(function_index, turn.wrapping_add(1), 0);
        turn as u32
    }

    /// The NFP's random helper: a turn there costs a map update.
    #[inline(always)]
    fn sample(_function_index: u32) -> u32 {
        // SAFETY: a helper without preconditions.
        unsafe { bpf_get_prandom_u32() }
    }

    /// No charging: least-loaded and p2c read LOADS, and a word cannot be
    /// both read and added to. Loads move only with the workers' reports.
    #[inline(always)]
    fn charge(_in_flight: *mut u32) {}

    /// All eight words read (volatile: at their constant offsets, as the
    /// NFP needs), the one wanted picked by value, without branches.
    ///
    /// The masks are arithmetic, and `index` passes through a volatile
    /// stack slot so that LLVM cannot see it is below 8: knowing that, it
    /// turns masked picks back into `index == k` selects, which BPF
    /// (having no conditional set) compiles to a branch each; eight of them
    /// per pick multiplied the states the verifier walks (182K instructions
    /// processed on 6.18 with them, 143K with this tree).
    #[inline(always)]
    fn word_of_eight(words: &[u32; 8], index: usize) -> u32 {
        let p = words.as_ptr();
        let mut cell = 0u32;
        // SAFETY: a local, written then read back.
        let index = unsafe {
            core::ptr::write_volatile(&mut cell, index as u32);
            core::ptr::read_volatile(&cell)
        };
        // A three-level selection tree: bit b of index picks between pairs,
        // with masks that are bit b spread over the word (shift it to the
        // top, shift arithmetically back): pure ALU, 7 picks of 3 ops.
        let spread = |bit: u32| ((index << (31 - bit)) as i32 >> 31) as u32;
        let (m0, m1, m2) = (spread(0), spread(1), spread(2));
        let pick = |a: u32, b: u32, mask: u32| a ^ ((a ^ b) & mask);
        // SAFETY: k < 8, within the array.
        let w = |k: usize| unsafe { core::ptr::read_volatile(p.add(k)) };
        let low = pick(pick(w(0), w(1), m0), pick(w(2), w(3), m0), m1);
        let high = pick(pick(w(4), w(5), m0), pick(w(6), w(7), m0), m1);
        pick(low, high, m2)
    }

    #[inline(always)]
    fn transmit(_settings: &Settings) -> Result<u32, Counter> {
        Ok(xdp_action::XDP_TX)
    }
}
