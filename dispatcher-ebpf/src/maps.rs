//! The data plane's maps. Each says what its key means, who writes it and
//! who reads it. Names are the pin names (dispatcher_common::maps::names).
//!
//! Only legacy (non-BTF) ARRAY and HASH maps with flags 0 are shared by both
//! variants, so the offload variant can use them; the host variant adds
//! per-CPU statistics and a devmap (see `variant.rs`).
//!
//! The sizes here are the object's defaults, for host memory
//! (`Geometry::HOST`); the loader gives every map the size of the geometry
//! it chose (smaller on a NIC) and writes that geometry into SETTINGS.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMap, HashMap, PerCpuArray},
};
use dispatcher_common::{
    maps::{
        Endpoint, Function, FunctionSlot, Geometry, Load, ServiceSlot, Settings, TableChunk,
        Traffic, Worker, Workflow, TABLE_CHUNK,
    },
    stats::Counter,
};

use crate::parse::Destination;

const HOST: Geometry = Geometry::HOST;

/// Service addresses and ports (VIPs), IPv4-mapped or IPv6: a two-choice
/// hash table in an array (see `Geometry::service_slots`). Written by user space from
/// the config; read per packet.
#[map]
pub static SERVICES: Array<ServiceSlot> = Array::with_max_entries(HOST.service_slots, 0);

/// Per-interface settings (one entry): source MAC, egress mode, geometry.
/// Written by the loader; read per UDP packet (the SERVICES mask).
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Functions by id: dense index, row bases and masks of the live tables,
/// policy, up count, least-loaded candidates. Replaced whole by user space; read per request.
#[map]
pub static FUNCTIONS: HashMap<u32, Function> = HashMap::with_max_entries(HOST.functions, 0);

/// The host variant's direct table of functions: slot `id &
/// Settings::function_slot_mask` names the FUNCTION_ROWS entry holding the
/// function's current value (see `FunctionSlot` for why two maps and
/// how a reader never sees half a value). Written by user space beside
/// FUNCTIONS; read per request, two array lookups in place of a hash
/// lookup.
#[map]
pub static FUNCTION_SLOTS: Array<FunctionSlot> =
    Array::with_max_entries(HOST.functions.next_power_of_two(), 0);
#[map]
pub static FUNCTION_ROWS: Array<Function> = Array::with_max_entries(HOST.functions * 2, 0);

/// Workers at `Function::worker_index(slot)`: address, MAC, port.
/// Written by user space; read per dispatch. Mmap-able so that user space
/// reads a function's slots as memory (dispatcher/src/data_plane/mapped.rs).
#[map]
pub static WORKERS: Array<Worker> =
    Array::with_max_entries(HOST.worker_slots(), aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Estimated in-flight requests per worker slot and the worker's cost per
/// request (`Load`): user space writes the reported value and the cost of
/// its weight; the data plane adds 1 per request it sends there under
/// least-loaded and p2c, so bursts between reports spread out (the host
/// variant only: see `Variant::charge`).
/// Mmap-able, like WORKERS, for user space to read.
#[map]
pub static LOADS: Array<Load> =
    Array::with_max_entries(HOST.worker_slots(), aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Rings: per function and generation, `ring_size` worker slots in smooth
/// weighted round-robin order. Written by user space (the idle generation,
/// then a FUNCTIONS flip); read by round-robin, p2c and BUSY re-steering.
#[map]
pub static RING: Array<TableChunk> =
    Array::with_max_entries(HOST.functions * 2 * HOST.ring_size / TABLE_CHUNK, 0);

/// The hash policy's tables (rendezvous on the host, Maglev where short;
/// the map keeps the name of the scheme it held first): per function and
/// generation, `maglev_size_for` its workers slots. Written like RING, but
/// through a mapping of the map's values (mmap-able: a 512-chunk batched
/// update cost more than the table's computation;
/// dispatcher/src/data_plane/mapped.rs); read by the hash policy (32 MiB
/// on the host). Bound to a NIC it is created without flags.
#[map]
pub static MAGLEV: Array<TableChunk> =
    Array::with_max_entries(HOST.maglev_pool_chunks, aya_ebpf::bindings::BPF_F_MMAPABLE);

/// Round-robin turn counter per function index, for the offload variant:
/// read and updated by the data plane (the NFP has no fetch-add and no
/// per-CPU maps: `Variant::next_turn`); user space only zeroes the entries.
#[map]
pub static RR_CURSORS: Array<u64> = Array::with_max_entries(HOST.functions, 0);

/// Round-robin turns per function index and CPU, for the host variant:
/// each CPU walks the ring on its own, without a locked instruction. User
/// space starts the CPUs at evenly spaced ring positions when it creates
/// a function, so two CPUs do not send their first requests to the same
/// workers.
#[map]
pub static RR_TURNS: PerCpuArray<u32> = PerCpuArray::with_max_entries(HOST.functions, 0);

/// Workflows by id: the function of each step. Written by user space; read
/// per workflow REQUEST and STEP.
#[map]
pub static WORKFLOWS: HashMap<u32, Workflow> = HashMap::with_max_entries(HOST.workflows, 0);

/// Registered workers by address and port (value: how many function slots
/// use that endpoint). Only they may send STEP and BUSY. Written by user
/// space; read per STEP and BUSY.
#[map]
pub static REGISTERED: HashMap<Endpoint, u32> = HashMap::with_max_entries(HOST.worker_slots(), 0);

/// Two-arm egress: slot 0 holds the interface to redirect to. Written by
/// the loader; host variant only (the NFP has no devmaps).
#[map]
pub static EGRESS: DevMap = DevMap::with_max_entries(1, 0);

/// Host variant statistics: per-CPU, so incremented without atomics.
/// Packets by `Counter`; packets and bytes per function index and per
/// worker slot. Read and summed by user space.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);
#[map]
pub static FUNCTION_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(HOST.functions, 0);
#[map]
pub static WORKER_STATS: PerCpuArray<Traffic> =
    PerCpuArray::with_max_entries(HOST.worker_slots(), 0);

/// Offload variant statistics: the same, in plain arrays updated with XADD
/// (the NFP offloads no per-CPU maps).
#[map]
pub static STATS_HW: Array<u64> = Array::with_max_entries(Counter::COUNT, 0);
#[map]
pub static FUNCTION_STATS_HW: Array<Traffic> = Array::with_max_entries(HOST.functions, 0);
#[map]
pub static WORKER_STATS_HW: Array<Traffic> = Array::with_max_entries(HOST.worker_slots(), 0);

// SAFETY (all getters below): map values live as long as the program runs;
// user space replaces whole values, and only plain integers and byte arrays
// are read from them.

#[inline(always)]
pub fn is_service(settings: &Settings, d: &Destination) -> bool {
    let w = &d.words;
    // `hash::fold_address` of the address: the XOR of its big-endian
    // words is the byte-swapped XOR of its native-order ones.
    let folded = u32::from_be(w[0] ^ w[1] ^ w[2] ^ w[3]);
    let (a, b) = settings
        .geometry
        .service_slots_of(folded, u16::from_be_bytes(d.port));
    let holds = |i: u32| {
        SERVICES
            .get(i)
            .is_some_and(|s| s.in_use != 0 && s.endpoint.is(w, d.port))
    };
    holds(a) || holds(b)
}

#[inline(always)]
pub fn is_registered(key: &Endpoint) -> bool {
    unsafe { REGISTERED.get(key) }.is_some()
}

/// Function `function_id`: through its direct slot when `direct` (the host
/// variant) and the slot holds it, else from FUNCTIONS.
#[inline(always)]
pub fn function(settings: &Settings, function_id: u32, direct: bool) -> Option<&'static Function> {
    // One pointer, set on either path and returned once: two returns of
    // `Some` made LLVM spill an undefined register, which the verifier
    // rejects.
    let mut found: *const Function = core::ptr::null();
    let mut ask_functions = true;
    if direct {
        if let Some(slot) = FUNCTION_SLOTS.get(function_id & settings.function_slot_mask) {
            if slot.id == function_id {
                if let Some(f) = FUNCTION_ROWS.get(slot.row()) {
                    if f.id == function_id {
                        found = f;
                    }
                }
            }
            // Not this slot's, and no id of this slot lives in FUNCTIONS
            // alone: there is no such function (no hash lookup).
            ask_functions = slot.hashed != 0 || slot.id == function_id;
        }
    }
    if found.is_null() && ask_functions {
        found = function_by_hash(function_id).map_or(core::ptr::null(), |f| f as *const Function);
    }
    // SAFETY: null or a map value (see above).
    unsafe { found.as_ref() }
}

/// Function `function_id` from FUNCTIONS: one hash lookup.
#[inline(always)]
pub fn function_by_hash(function_id: u32) -> Option<&'static Function> {
    unsafe { FUNCTIONS.get(&function_id) }
}

#[inline(always)]
pub fn workflow(workflow_id: u32) -> Option<&'static Workflow> {
    unsafe { WORKFLOWS.get(&workflow_id) }
}

#[inline(always)]
pub fn worker(index: u32) -> Option<&'static Worker> {
    WORKERS.get(index)
}

#[inline(always)]
pub fn settings() -> Result<&'static Settings, Counter> {
    SETTINGS.get(0).ok_or(Counter::PassNotConfigured)
}

/// SETTINGS' value, to write (the trace's lapse: `trace.rs`).
#[inline(always)]
pub fn settings_mut() -> Option<*mut Settings> {
    SETTINGS.get_ptr_mut(0)
}
