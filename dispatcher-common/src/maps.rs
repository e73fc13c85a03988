//! Keys and values of the data plane's BPF maps, and the limits that size
//! them. See docs/data-plane.md for the layout as a whole.
//!
//! Addresses and ports are stored in network byte order, exactly as they
//! appear in packets, so the data plane compares and copies them without
//! conversion; ids, indices and counts are host order.
//!
//! Functions have a dense *index* (0..MAX_FUNCTIONS) besides their id: every
//! per-function and per-worker structure is an ARRAY addressed by it (the
//! NFP offloads only ARRAY and HASH maps, and arrays cost one lookup).

/// Map names, as pinned and as the loader looks them up.
pub mod names {
    pub const SERVICES: &str = "SERVICES";
    pub const SETTINGS: &str = "SETTINGS";
    pub const FUNCTIONS: &str = "FUNCTIONS";
    pub const WORKERS: &str = "WORKERS";
    pub const LOADS: &str = "LOADS";
    pub const RING: &str = "RING";
    pub const MAGLEV: &str = "MAGLEV";
    pub const RR_CURSORS: &str = "RR_CURSORS";
    pub const WORKFLOWS: &str = "WORKFLOWS";
    pub const REGISTERED: &str = "REGISTERED";
    pub const EGRESS: &str = "EGRESS";
    pub const STATS: &str = "STATS";
    pub const FUNCTION_STATS: &str = "FUNCTION_STATS";
    pub const WORKER_STATS: &str = "WORKER_STATS";
    /// Offload variant's statistics: plain arrays updated with XADD.
    pub const STATS_HW: &str = "STATS_HW";
    pub const FUNCTION_STATS_HW: &str = "FUNCTION_STATS_HW";
    pub const WORKER_STATS_HW: &str = "WORKER_STATS_HW";
}

/// Up to this many service address:port pairs (VIPs) per interface.
pub const MAX_SERVICES: u32 = 64;
/// SERVICES is a two-choice hash table in an ARRAY of this many slots: two
/// inlined array lookups per packet instead of a hash-map call (which cost
/// ~50 ns here). 16 slots per VIP make a placement failure vanishingly rare.
pub const SERVICE_SLOTS: u32 = 1024;

/// The two SERVICES slots where `e` may live.
#[inline(always)]
pub fn service_slots(e: &Endpoint) -> (u32, u32) {
    let h = crate::hash::fmix32(crate::hash::fold_address(&e.addr) ^ u16::from_be_bytes(e.port) as u32);
    (h & (SERVICE_SLOTS - 1), (h >> 10) & (SERVICE_SLOTS - 1))
}
/// Up to this many functions per interface (the issue asks for 1,024).
pub const MAX_FUNCTIONS: u32 = 1024;
/// Up to this many workers per function: a slot index fits a byte, and a
/// Maglev table of MAGLEV_SIZE entries is > 250 x this.
pub const MAX_WORKERS_PER_FUNCTION: u32 = 64;
/// Worker slots in all: WORKERS, LOADS and WORKER_STATS are this long.
pub const MAX_WORKER_SLOTS: u32 = MAX_FUNCTIONS * MAX_WORKERS_PER_FUNCTION;
/// Up to this many workflows, of up to MAX_WORKFLOW_STEPS steps.
pub const MAX_WORKFLOWS: u32 = 1024;
pub const MAX_WORKFLOW_STEPS: usize = 8;

/// Selection tables are arrays of chunks of this many slot bytes (a map
/// value of 32 bytes keeps key + value within the NFP's 64-byte entries).
pub const TABLE_CHUNK: u32 = 32;
/// The ring: RING_SIZE slots per function, each up worker appearing in
/// proportion to its weight. Round-robin walks it; p2c samples it.
pub const RING_SIZE: u32 = 256;
pub const RING_CHUNKS: u32 = RING_SIZE / TABLE_CHUNK;
/// The Maglev lookup table: a prime well above 100 x MAX_WORKERS_PER_FUNCTION.
pub const MAGLEV_SIZE: u32 = 16381;
pub const MAGLEV_CHUNKS: u32 = MAGLEV_SIZE.div_ceil(TABLE_CHUNK);
/// Least-loaded compares this many candidates, ranked by user space.
pub const LL_CANDIDATES: usize = 4;
/// BUSY re-steering tries this many ring positions to find another worker.
pub const RESTEER_TRIES: u32 = 4;
/// Re-steers after which a BUSY is answered with ERROR 7 (overloaded).
pub const MAX_RESTEERS: u8 = 3;

/// Index into WORKERS, LOADS and WORKER_STATS.
#[inline(always)]
pub const fn worker_index(function_index: u32, slot: u32) -> u32 {
    function_index * MAX_WORKERS_PER_FUNCTION + slot
}

/// Index into RING of chunk `chunk` of `generation` of a function's ring.
#[inline(always)]
pub const fn ring_chunk_index(function_index: u32, generation: u8, chunk: u32) -> u32 {
    (function_index * 2 + generation as u32) * RING_CHUNKS + chunk
}

/// Index into MAGLEV of chunk `chunk` of `generation` of a function's table.
#[inline(always)]
pub const fn maglev_chunk_index(function_index: u32, generation: u8, chunk: u32) -> u32 {
    (function_index * 2 + generation as u32) * MAGLEV_CHUNKS + chunk
}

/// Address family of a [`Worker`] or of a packet.
pub mod family {
    pub const IPV4: u8 = 4;
    pub const IPV6: u8 = 6;
}

/// Worker states. The data plane never reads this: a worker gets requests
/// exactly when it is in the live selection tables, which user space builds
/// from the UP workers. The state is kept for the CLI and the daemon.
pub mod worker_state {
    pub const DOWN: u8 = 0;
    pub const UP: u8 = 1;
    pub const DRAINING: u8 = 2;
}

/// Worker selection policies.
pub mod policy {
    pub const ROUND_ROBIN: u8 = 0;
    pub const LEAST_LOADED: u8 = 1;
    pub const P2C: u8 = 2;
    pub const HASH: u8 = 3;
}

/// Egress modes (`Settings::egress`).
pub mod egress {
    /// XDP_TX out of the receiving interface (one-arm).
    pub const TX: u8 = 0;
    /// XDP_REDIRECT through EGRESS (a devmap) to another interface (two-arm).
    pub const REDIRECT: u8 = 1;
}

/// An address and UDP port: a service (in `SERVICES`) or a worker's
/// source (key of `REGISTERED`). An IPv4
/// address is stored IPv4-mapped (`::ffff:a.b.c.d`), as in the FaaS header's
/// `reply_addr`, so one key type serves both families.
///
/// Aligned to 4 (its size, 20, needs no padding for that): with alignment
/// 1, every move of a struct holding endpoints compiled to byte-by-byte
/// copies in BPF.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}

/// A slot of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceSlot {
    pub endpoint: Endpoint,
    /// Non-zero when the slot holds a service.
    pub in_use: u32,
}

impl Endpoint {
    /// Equality in 32-bit words: an array `==` compiles to a memcmp call
    /// in BPF.
    #[inline(always)]
    pub fn same(&self, other: &Endpoint) -> bool {
        let w = |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        w(&self.addr, 0) == w(&other.addr, 0)
            && w(&self.addr, 4) == w(&other.addr, 4)
            && w(&self.addr, 8) == w(&other.addr, 8)
            && w(&self.addr, 12) == w(&other.addr, 12)
            && self.port[0] == other.port[0]
            && self.port[1] == other.port[1]
    }
}

/// The one entry of `SETTINGS`: per-interface facts written by the loader.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Source MAC of every transmitted frame: the MAC of the interface the
    /// frame leaves by (the attached one, or the redirect target).
    pub src_mac: [u8; 6],
    /// One of [`egress`].
    pub egress: u8,
    pub _pad: u8,
}

/// Value of `FUNCTIONS`, keyed by the function id (host order u32).
/// Replaced whole by user space (one update is atomic for a reader), which
/// is how a new worker set goes live in one step: the tables of the other
/// `generation` are written first, then this entry flips to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Function {
    /// Dense index: the row of this function in every array.
    pub index: u32,
    /// One of [`policy`].
    pub policy: u8,
    /// Which half (0 or 1) of RING and MAGLEV is live.
    pub generation: u8,
    /// Up workers in the live tables; 0: none up.
    pub up_count: u8,
    /// Valid entries of `ll_slots`.
    pub ll_count: u8,
    /// Least-loaded candidates (worker slots), least loaded first.
    pub ll_slots: [u8; LL_CANDIDATES],
    /// One past the highest occupied worker slot. For user space, which
    /// reads WORKERS only up to here; the data plane never reads it.
    pub slot_end: u8,
    pub _pad: [u8; 3],
}

/// Value of `WORKERS` at `worker_index(function index, slot)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Worker {
    /// IPv4 in the first 4 bytes (rest zero) or IPv6; see `family`.
    pub addr: [u8; 16],
    /// Destination MAC: the worker's, or the gateway's toward it.
    pub mac: [u8; 6],
    /// UDP port, network byte order.
    pub port: [u8; 2],
    pub weight: u16,
    /// One of [`worker_state`] (for user space; see there).
    pub state: u8,
    /// One of [`family`].
    pub family: u8,
    pub _pad: [u8; 4],
}

/// Value of `WORKFLOWS`, keyed by workflow id: the function of each step.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Workflow {
    pub step_count: u32,
    pub functions: [u32; MAX_WORKFLOW_STEPS],
}

/// Packets and bytes: per-function and per-worker statistics.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// A chunk of a selection table: TABLE_CHUNK worker slots.
pub type TableChunk = [u8; TABLE_CHUNK as usize];

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and byte
    // arrays, with every padding byte spelled out as a field, so any bit
    // pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::ServiceSlot {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Function {}
    unsafe impl aya::Pod for super::Worker {}
    unsafe impl aya::Pod for super::Workflow {}
    unsafe impl aya::Pod for super::Traffic {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// The sizes both halves rely on; a change here changes the map ABI.
    /// Key + value stay within the NFP's 64-byte entries.
    #[test]
    fn map_types_have_no_implicit_padding() {
        assert_eq!(size_of::<Endpoint>(), 20);
        assert_eq!(size_of::<ServiceSlot>(), 24);
        assert_eq!(size_of::<Settings>(), 8);
        assert_eq!(size_of::<Function>(), 16);
        assert_eq!(size_of::<Worker>(), 32);
        assert_eq!(size_of::<Workflow>(), 36);
        assert_eq!(size_of::<Traffic>(), 16);
        assert_eq!(size_of::<TableChunk>(), 32);
        let round8 = |n: usize| n.div_ceil(8) * 8;
        assert!(round8(size_of::<Endpoint>()) + round8(4) <= 64);
        assert!(round8(4) + round8(size_of::<Workflow>()) <= 64);
    }

    #[test]
    fn table_sizes() {
        assert!(MAGLEV_SIZE > 100 * MAX_WORKERS_PER_FUNCTION);
        assert!((2..MAGLEV_SIZE).take_while(|d| d * d <= MAGLEV_SIZE).all(|d| MAGLEV_SIZE % d != 0), "prime");
        assert!(MAGLEV_CHUNKS * TABLE_CHUNK >= MAGLEV_SIZE);
        assert!(RING_SIZE.is_power_of_two() && RING_SIZE >= 4 * MAX_WORKERS_PER_FUNCTION);
        assert!(MAX_WORKERS_PER_FUNCTION <= 256, "slots are bytes");
    }
}
