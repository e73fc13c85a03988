//! The data plane's maps. Each says what its key means, who writes it and
//! who reads it. Names are the pin names (dispatcher_common::maps::names).
//!
//! All are legacy (non-BTF) ARRAY/HASH maps with flags 0, plus one per-CPU
//! array for statistics; the offload variant will swap that one out.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use dispatcher_common::{
    maps::{
        Function, ServiceKey, ServiceValue, Settings, Worker, WorkerKey, MAX_FUNCTIONS,
        MAX_SERVICES, MAX_WORKERS_PER_FUNCTION,
    },
    stats::Counter,
};

use crate::parse::{Ip, Packet};

/// Service addresses and ports (VIPs). Key: IPv4-mapped or IPv6 address and
/// UDP port as on the wire. Written by user space from the config; read per
/// packet. 64 VIPs are plenty for one interface.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

/// Per-interface settings (one entry, index 0): the interface's MAC.
/// Written by the loader at attach; read per dispatched packet.
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Functions by id (host order): policy and worker count. Written by user
/// space; read per REQUEST. 1,024 functions per interface.
#[map]
pub static FUNCTIONS: HashMap<u32, Function> = HashMap::with_max_entries(MAX_FUNCTIONS, 0);

/// Worker slots: (function id, slot) -> address, MAC, port, state. Written by
/// user space (config, CLI, health checks); read per REQUEST. Sized for every
/// function holding its 64 slots.
#[map]
pub static WORKERS: HashMap<WorkerKey, Worker> =
    HashMap::with_max_entries(MAX_FUNCTIONS * MAX_WORKERS_PER_FUNCTION, 0);

/// Packet counters by reason, indexed by `Counter`. Written per packet by
/// the kernel (per-CPU, so without atomics); summed and read by user space.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// Is the packet addressed to one of our service address:port pairs?
#[inline(always)]
pub fn service(pkt: &Packet) -> Result<(), Counter> {
    // Each byte written explicitly: a partial array fill compiles to a
    // memset call in BPF.
    let addr = match pkt.ip {
        Ip::V4(ip) => {
            // SAFETY: `ip` was bounds-checked by the parser.
            let d = unsafe { (*ip).dst_addr };
            // IPv4-mapped: ::ffff:a.b.c.d
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, d[0], d[1], d[2], d[3]]
        }
        // SAFETY: as above.
        Ip::V6(ip) => unsafe { (*ip).dst_addr },
    };
    let key = ServiceKey {
        addr,
        port: pkt.dst_port(),
        _pad: [0; 2],
    };
    // SAFETY: a lookup only; the value is not dereferenced.
    match unsafe { SERVICES.get(&key) } {
        Some(_) => Ok(()),
        None => Err(Counter::PassNotService),
    }
}

#[inline(always)]
pub fn function(function_id: u32) -> Result<&'static Function, Counter> {
    // SAFETY: map values live as long as the program runs; user space
    // replaces whole values, and the fields read are plain integers.
    unsafe { FUNCTIONS.get(&function_id) }.ok_or(Counter::PassUnknownFunction)
}

#[inline(always)]
pub fn worker(function_id: u32, slot: u32) -> Option<&'static Worker> {
    let key = WorkerKey { function_id, slot };
    // SAFETY: as for `function`.
    unsafe { WORKERS.get(&key) }
}

#[inline(always)]
pub fn settings() -> Result<&'static Settings, Counter> {
    SETTINGS.get(0).ok_or(Counter::PassNotConfigured)
}
