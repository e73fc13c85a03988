//! Choosing a worker slot for a function, by its policy. Every policy costs
//! a bounded, worker-count-independent number of lookups: user space keeps
//! the tables (the ring, the Maglev table, the least-loaded candidates)
//! so the data plane never scans workers.

use dispatcher_common::{
    hash,
    maps::{policy, Endpoint, Function, LL_CANDIDATES, RESTEER_TRIES},
    stats::Counter,
};

use crate::{
    maps::{
        LOADS, MAGLEV, RING, {self},
    },
    parse::Packet,
    variant::Variant,
};

/// Slot at `position` (wrapped) of a function's live ring.
#[inline(always)]
fn ring_slot<V: Variant>(function: &Function, position: u32) -> Option<u32> {
    let (chunk, offset) = function.ring_position(position);
    Some(V::table_slot(RING.get(chunk)?, offset) as u32)
}

/// Slot at `position` (wrapped) of a function's live Maglev table.
#[inline(always)]
fn maglev_slot<V: Variant>(function: &Function, position: u32) -> Option<u32> {
    let (chunk, offset) = function.maglev_position(position);
    Some(V::table_slot(MAGLEV.get(chunk)?, offset) as u32)
}

/// A worker's load relative to its weight (`Load::rank`).
#[inline(always)]
fn load(function: &Function, slot: u32) -> u32 {
    LOADS
        .get(function.worker_index(slot))
        .map_or(u32::MAX, |l| l.rank())
}

/// Counts a request sent to `slot` into its load estimate, for the
/// policies that read loads (see `Variant::charge`).
#[inline(always)]
pub fn charge<V: Variant>(function: &Function, slot: u32) {
    if function.policy == policy::LEAST_LOADED || function.policy == policy::P2C {
        if let Some(p) = LOADS.get_ptr_mut(function.worker_index(slot)) {
            // SAFETY: a map value, valid and aligned.
            V::charge(unsafe { core::ptr::addr_of_mut!((*p).in_flight) });
        }
    }
}

/// The affinity hash of a packet: its key, or its client address and port.
#[inline(always)]
pub fn affinity_hash(key: u64, pkt: &Packet) -> u32 {
    if key != 0 {
        hash::key_hash(key)
    } else {
        let src = pkt.source();
        hash::client_hash(hash::fold_address(&src.addr), u16::from_be_bytes(src.port))
    }
}

/// The slot the function's policy picks for this packet.
#[inline(always)]
pub fn by_policy<V: Variant>(function: &Function, key: u64, pkt: &Packet) -> Result<u32, Counter> {
    if function.up_count == 0 {
        return Err(Counter::PassNoWorker);
    }
    let slot = match function.policy {
        policy::HASH => maglev_slot::<V>(function, affinity_hash(key, pkt)),
        policy::P2C => {
            let r = V::sample(function.index);
            match (
                ring_slot::<V>(function, r),
                ring_slot::<V>(function, r >> 8),
            ) {
                (Some(a), Some(b)) => Some(if load(function, b) < load(function, a) {
                    b
                } else {
                    a
                }),
                _ => None,
            }
        }
        policy::LEAST_LOADED => least_loaded(function),
        _ => ring_slot::<V>(function, V::next_turn(function.index)),
    };
    slot.ok_or(Counter::PassNoWorker)
}

/// The least loaded, relative to weight, of the (up to four) candidates
/// user space ranked; the first on a tie.
#[inline(always)]
fn least_loaded(function: &Function) -> Option<u32> {
    let count = function.ll_count as usize;
    if count == 0 {
        return None;
    }
    let mut best = function.ll_slots[0] as u32;
    let mut best_load = load(function, best);
    for i in 1..LL_CANDIDATES {
        if i < count {
            let slot = function.ll_slots[i] as u32;
            let l = load(function, slot);
            if l < best_load {
                best = slot;
                best_load = l;
            }
        }
    }
    Some(best)
}

/// For a BUSY: the next ring positions from a round-robin turn, until one
/// holds a worker other than `busy` (RESTEER_TRIES at most); then, as
/// heavily skewed weights can fill those positions with the busy worker,
/// the least-loaded candidates user space ranked (distinct workers).
#[inline(always)]
pub fn other_than<V: Variant>(function: &Function, busy: &Endpoint) -> Result<u32, Counter> {
    if function.up_count == 0 {
        return Err(Counter::PassBusyExhausted);
    }
    let turn = V::next_turn(function.index);
    for i in 0..RESTEER_TRIES {
        let slot =
            ring_slot::<V>(function, turn.wrapping_add(i)).ok_or(Counter::PassBusyExhausted)?;
        if is_other(function, slot, busy) {
            return Ok(slot);
        }
    }
    for i in 0..LL_CANDIDATES {
        let slot = function.ll_slots[i] as u32;
        if i < function.ll_count as usize && is_other(function, slot, busy) {
            return Ok(slot);
        }
    }
    Err(Counter::PassBusyExhausted)
}

/// Whether `slot` holds a worker other than the one at `busy`. Not
/// inlined: its eight call sites would cost the offload variant ~200
/// instructions of the NFP's budget (`dispatcher offload check`).
#[inline(never)]
fn is_other(function: &Function, slot: u32, busy: &Endpoint) -> bool {
    maps::worker(function.worker_index(slot))
        .is_some_and(|w| !(w.port == busy.port && same_address(w.family, &w.addr, &busy.addr)))
}

/// Does a worker's address (IPv4 in 4 bytes, or IPv6) equal an endpoint's
/// (IPv4-mapped, or IPv6)? Compared in 32-bit words: an array `==`
/// compiles to a memcmp call in BPF.
#[inline(always)]
fn same_address(family: u8, worker: &[u8; 16], endpoint: &[u8; 16]) -> bool {
    let word = |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    if family == dispatcher_common::maps::family::IPV4 {
        word(endpoint, 0) == 0
            && word(endpoint, 4) == 0
            && word(endpoint, 8) == u32::from_be(0xffff)
            && word(endpoint, 12) == word(worker, 0)
    } else {
        word(endpoint, 0) == word(worker, 0)
            && word(endpoint, 4) == word(worker, 4)
            && word(endpoint, 8) == word(worker, 8)
            && word(endpoint, 12) == word(worker, 12)
    }
}
