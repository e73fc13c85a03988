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
    pub const FUNCTION_SLOTS: &str = "FUNCTION_SLOTS";
    pub const FUNCTION_ROWS: &str = "FUNCTION_ROWS";
    pub const WORKERS: &str = "WORKERS";
    pub const LOADS: &str = "LOADS";
    pub const RING: &str = "RING";
    pub const MAGLEV: &str = "MAGLEV";
    pub const RR_CURSORS: &str = "RR_CURSORS";
    pub const RR_TURNS: &str = "RR_TURNS";
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
    /// `dispatcher trace`: the sampled decisions, and those lost.
    pub const TRACE: &str = "TRACE";
    pub const TRACE_CONTROL: &str = "TRACE_CONTROL";
    pub const TRACE_COUNTDOWN: &str = "TRACE_COUNTDOWN";
    pub const TRACE_LOST: &str = "TRACE_LOST";
}

/// Up to this many service address:port pairs (VIPs) per interface.
pub const MAX_SERVICES: u32 = 64;
/// The most functions a geometry may hold (the host's default is 1,024).
pub const MAX_FUNCTIONS: u32 = 65_536;
/// The most workers per function a geometry may hold (the host's default
/// is 64): a slot index fits a byte.
pub const MAX_WORKERS_PER_FUNCTION: u32 = 256;
const _: () = assert!(MAX_WORKERS_PER_FUNCTION <= 256, "slots are bytes");
/// The most workflows a geometry may hold, of up to MAX_WORKFLOW_STEPS
/// steps each (the host's default is 1,024).
pub const MAX_WORKFLOWS: u32 = 65_536;
/// The longest ring and Maglev table a geometry may have (their masks are
/// 16-bit).
pub const MAX_RING_SIZE: u32 = 1024;
pub const MAX_MAGLEV_SIZE: u32 = 65_536;
/// The shortest Maglev table a function has; longer ones grow by 4x
/// (`Geometry::maglev_size_for`).
pub const MIN_MAGLEV_TABLE: u32 = 256;
/// The largest MAGLEV pool, in chunks: every function of the largest
/// geometry holding two generations of the longest table.
pub const MAX_MAGLEV_POOL_CHUNKS: u32 = MAX_FUNCTIONS * maglev_extent_chunks(MAX_MAGLEV_SIZE);

/// Chunks of the MAGLEV extent that holds both generations of a
/// `size`-slot Maglev table.
pub const fn maglev_extent_chunks(size: u32) -> u32 {
    2 * size / TABLE_CHUNK
}
pub const MAX_WORKFLOW_STEPS: usize = 8;

/// Selection tables are arrays of chunks of this many slot bytes (a map
/// value of 32 bytes keeps key + value within the NFP's 64-byte entries).
pub const TABLE_CHUNK: u32 = 32;
/// Least-loaded compares this many candidates, ranked by user space.
pub const LL_CANDIDATES: usize = 4;
/// BUSY re-steering tries this many ring positions to find another worker.
pub const RESTEER_TRIES: u32 = 4;
/// Re-steers after which a BUSY is answered with ERROR 7 (overloaded).
pub const MAX_RESTEERS: u8 = 3;

/// How big the data plane's tables are, chosen when it is loaded: host
/// memory holds [`Geometry::HOST`], a NIC far less (netdevsim offloads two
/// entries per map). The loader sizes every map from it and writes it into
/// SETTINGS, where user space reads its limits and the data plane its
/// SERVICES mask; each FUNCTIONS entry carries its own table bases and
/// masks, so the data plane never multiplies or divides by a size (the NFP
/// cannot, by a register).
///
/// Rows: a function's worker slots are `workers_per_function` consecutive
/// entries of WORKERS, LOADS and WORKER_STATS from `index *
/// workers_per_function`; its ring is two generations of `ring_size`
/// slots in RING. MAGLEV is a pool of `maglev_pool_chunks` chunks: only
/// functions with the hash policy hold a table there, sized by their
/// worker count (`maglev_size_for`, at most `maglev_size`), two
/// generations side by side in one *extent* that control allocates
/// (dispatcher/src/control/maglev_pool.rs); the FUNCTIONS entry's
/// `maglev_base` and `maglev_mask` say where and how long.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Geometry {
    /// SERVICES slots: a two-choice hash table (a power of two).
    pub service_slots: u32,
    /// Function rows (FUNCTIONS entries, RR_CURSORS, RR_TURNS, FUNCTION_STATS).
    pub functions: u32,
    /// Worker slots per function (a power of two, at most 256).
    pub workers_per_function: u32,
    /// Ring length (a power of two, a multiple of TABLE_CHUNK, at most
    /// 1,024, at least `workers_per_function`).
    pub ring_size: u32,
    /// The longest Maglev table a function may have (a power of two, a
    /// multiple of TABLE_CHUNK, at most 65,536, at least
    /// `workers_per_function`; see tables.rs for why not a prime). Each
    /// function's own is `maglev_size_for` its workers.
    pub maglev_size: u32,
    /// WORKFLOWS entries.
    pub workflows: u32,
    /// MAGLEV entries: the pool the hash functions' tables are allocated
    /// from (at least two chunks of the smallest table, at most
    /// MAX_MAGLEV_POOL_CHUNKS).
    pub maglev_pool_chunks: u32,
}

impl Geometry {
    /// Host memory: 1,024 functions of up to 64 workers, 256-slot rings,
    /// Maglev tables of up to 16,384 slots in a pool where every function
    /// can hold the 16,384-slot table of 64 workers (MAGLEV is 32 MiB), 16
    /// SERVICES slots per VIP, which makes a placement failure vanishingly
    /// rare.
    pub const HOST: Geometry = Geometry {
        service_slots: 1024,
        functions: 1024,
        workers_per_function: 64,
        ring_size: 256,
        maglev_size: 16384,
        workflows: 1024,
        maglev_pool_chunks: 1024 * 2 * 16384 / TABLE_CHUNK,
    };

    /// The largest geometry whose every map holds at most `entries`
    /// entries (a NIC's limit): as many functions as fit with two
    /// generations of a one-chunk ring, then as many workers, ring and
    /// Maglev slots per function as fit. `None` below two entries (a
    /// function's ring needs two).
    pub fn fitting(entries: u32) -> Option<Geometry> {
        let h = Geometry::HOST;
        let functions = (entries / 2).min(h.functions);
        if functions == 0 {
            return None;
        }
        let per_function = |most: u32| prev_power_of_two((entries / functions).min(most));
        let chunks = |most_slots: u32| {
            prev_power_of_two((entries / (2 * functions)).min(most_slots / TABLE_CHUNK))
        };
        let g = Geometry {
            service_slots: prev_power_of_two(entries.min(h.service_slots)),
            functions,
            workers_per_function: per_function(h.workers_per_function),
            ring_size: chunks(h.ring_size) * TABLE_CHUNK,
            maglev_size: chunks(h.maglev_size) * TABLE_CHUNK,
            workflows: entries.min(h.workflows),
            maglev_pool_chunks: 0,
        };
        Some(Geometry {
            maglev_pool_chunks: g.full_maglev_pool(),
            ..g
        })
    }

    /// The length of the hash table of a function of `workers` workers:
    /// the first of 256, 1,024, 4,096, 16,384, 65,536 slots that holds 256
    /// entries per worker, at most `maglev_size`. At that length the table
    /// is a rendezvous table (dispatcher/src/control/tables.rs): a worker
    /// that comes or goes moves exactly its own entries, and each worker's
    /// share is within a few percent of even (the standard deviation is
    /// about sqrt(N / 2M): 2.2-4.4% at 256 to 1,024 entries per worker).
    /// A pure function of the worker count, so that every dispatcher of a
    /// cluster builds the same table; a function changes length (and
    /// remaps its keys) only when its worker count crosses 1, 4, 16 or 64.
    pub const fn maglev_size_for(&self, workers: u32) -> u32 {
        let want = 256 * workers as u64;
        let mut size = MIN_MAGLEV_TABLE;
        while (size as u64) < want && size < MAX_MAGLEV_SIZE {
            size *= 4;
        }
        if size > self.maglev_size {
            self.maglev_size
        } else {
            size
        }
    }

    /// The pool in which every function can hold the table of a full
    /// worker set: the default `maglev_pool_chunks`.
    pub const fn full_maglev_pool(&self) -> u32 {
        self.functions * maglev_extent_chunks(self.maglev_size_for(self.workers_per_function))
    }

    /// Why this geometry cannot be used, if it cannot (a SETTINGS entry of
    /// zeros, or sizes the tables' masks cannot address).
    pub fn problem(&self) -> Option<&'static str> {
        let pow2_within = |n: u32, most: u32| n.is_power_of_two() && n <= most;
        if !pow2_within(self.service_slots, Geometry::HOST.service_slots) {
            Some("service slots must be a power of two up to 1024")
        } else if self.functions == 0 || self.functions > MAX_FUNCTIONS {
            Some("functions must be 1 to 65536")
        } else if !pow2_within(self.workers_per_function, MAX_WORKERS_PER_FUNCTION) {
            Some("workers per function must be a power of two up to 256")
        } else if !pow2_within(self.ring_size, MAX_RING_SIZE) || self.ring_size < TABLE_CHUNK {
            Some("the ring size must be a power of two from 32 to 1024")
        } else if !pow2_within(self.maglev_size, MAX_MAGLEV_SIZE) || self.maglev_size < TABLE_CHUNK
        {
            Some("the Maglev size must be a power of two from 32 to 65536")
        } else if self.ring_size < self.workers_per_function
            || self.maglev_size < self.workers_per_function
        {
            Some("the ring and the Maglev table need at least one slot per worker: make them at least the workers per function")
        } else if self.workflows == 0 || self.workflows > MAX_WORKFLOWS {
            Some("workflows must be 1 to 65536")
        } else if self.maglev_pool_chunks < maglev_extent_chunks(self.maglev_size_for(1))
            || self.maglev_pool_chunks > MAX_MAGLEV_POOL_CHUNKS
        {
            Some("the Maglev pool must hold at least one smallest table (two generations of 256 slots, or of the Maglev size when smaller) and at most 65,536 x 2 x 65,536 slots")
        } else {
            None
        }
    }

    /// Worker slots in all: WORKERS, LOADS, REGISTERED, WORKER_STATS.
    pub const fn worker_slots(&self) -> u32 {
        self.functions * self.workers_per_function
    }

    pub const fn ring_chunks(&self) -> u32 {
        self.ring_size / TABLE_CHUNK
    }

    /// FUNCTION_SLOTS entries: the function rows rounded up to a power of
    /// two, so that ids 1..=functions each have a slot of their own.
    pub const fn function_slots(&self) -> u32 {
        self.functions.next_power_of_two()
    }

    /// FUNCTION_ROWS index of copy `row` (0 or 1) of the function at `index`.
    pub const fn function_row(&self, index: u32, row: u8) -> u32 {
        index * 2 + row as u32
    }

    /// WORKERS index of slot 0 of the function at `index`.
    pub const fn worker_base(&self, index: u32) -> u32 {
        index * self.workers_per_function
    }

    /// RING chunk where `generation` of the function at `index` starts.
    pub const fn ring_base(&self, index: u32, generation: u8) -> u32 {
        (index * 2 + generation as u32) * self.ring_chunks()
    }

    /// The entries map `name` needs, for the maps this geometry sizes.
    pub fn map_entries(&self, name: &str) -> Option<u32> {
        use names::*;
        Some(match name {
            SERVICES => self.service_slots,
            FUNCTIONS | RR_CURSORS | RR_TURNS | FUNCTION_STATS | FUNCTION_STATS_HW => {
                self.functions
            }
            WORKERS | LOADS | REGISTERED | WORKER_STATS | WORKER_STATS_HW => self.worker_slots(),
            FUNCTION_SLOTS => self.function_slots(),
            FUNCTION_ROWS => self.functions * 2,
            RING => self.functions * 2 * self.ring_chunks(),
            MAGLEV => self.maglev_pool_chunks,
            WORKFLOWS => self.workflows,
            _ => return None,
        })
    }

    /// The two SERVICES slots where `e` may live.
    #[inline(always)]
    pub fn service_slots(&self, e: &Endpoint) -> (u32, u32) {
        self.service_slots_of(
            crate::hash::fold_address(&e.addr),
            u16::from_be_bytes(e.port),
        )
    }

    /// The same, from the address already folded (`hash::fold_address`)
    /// and the port in host order: what the data plane has at hand.
    #[inline(always)]
    pub fn service_slots_of(&self, folded_address: u32, port: u16) -> (u32, u32) {
        let h = crate::hash::fmix32(folded_address ^ port as u32);
        let mask = self.service_slots.wrapping_sub(1);
        (h & mask, (h >> 10) & mask)
    }
}

/// The largest power of two not above `n` (0 for 0).
const fn prev_power_of_two(n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        1 << (31 - n.leading_zeros())
    }
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
        self.is(&other.words(), other.port)
    }

    /// The address as four native-order words of its bytes.
    #[inline(always)]
    pub fn words(&self) -> [u32; 4] {
        let w = |i: usize| {
            let a = &self.addr;
            u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]])
        };
        [w(0), w(4), w(8), w(12)]
    }

    /// Whether this is the address of `words` (see `words`) and `port`.
    /// One branch: the differences are OR-ed together.
    #[inline(always)]
    pub fn is(&self, words: &[u32; 4], port: [u8; 2]) -> bool {
        let mine = self.words();
        let diff = (mine[0] ^ words[0])
            | (mine[1] ^ words[1])
            | (mine[2] ^ words[2])
            | (mine[3] ^ words[3])
            | (u16::from_ne_bytes(self.port) ^ u16::from_ne_bytes(port)) as u32;
        diff == 0
    }
}

/// Who owns the membership in a data plane's maps.
pub mod managed {
    /// The config file and the CLI (the default).
    pub const LOCAL: u8 = 0;
    /// A cluster in etcd (`dispatcher run --etcd`): changed through etcd.
    pub const CLUSTER: u8 = 1;
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
    /// One of [`managed`]: who owns the membership in the maps (the
    /// kernel ignores it; the CLI refuses to change a cluster's maps).
    pub managed: u8,
    /// The MAC of the interface the program is attached to: only frames
    /// addressed to it are dispatched (a flooded or promiscuously received
    /// frame for another host is passed, or two dispatchers would both
    /// dispatch it).
    pub iface_mac: [u8; 6],
    pub _pad2: [u8; 2],
    /// The sizes the maps were created with.
    pub geometry: Geometry,
    /// `Geometry::function_slots() - 1`, computed by the loader: the data
    /// plane masks a function id with it to find its FUNCTION_SLOTS entry.
    pub function_slot_mask: u32,
    /// `dispatcher trace`: describe every this-many-th FaaS packet of each
    /// CPU (0: off, nobody traces). Here because the host variant reads SETTINGS for
    /// every packet anyway; the rest of the trace's control is in
    /// TRACE_CONTROL, read only for sampled packets (trace.rs).
    pub trace_sample: u32,
}

/// Value of `FUNCTIONS`, keyed by the function id (host order u32).
/// Replaced whole by user space (one update is atomic for a reader), which
/// is how a new worker set goes live in one step: the tables of the other
/// `generation` are written first, then this entry flips to it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Function {
    /// Dense index: the row of this function in RR_CURSORS and
    /// FUNCTION_STATS.
    pub index: u32,
    /// WORKERS, LOADS and WORKER_STATS index of worker slot 0.
    pub worker_base: u32,
    /// RING chunk where the live ring starts.
    pub ring_base: u32,
    /// MAGLEV chunk where the live Maglev table starts.
    pub maglev_base: u32,
    /// Ring length - 1 (the length is a power of two).
    pub ring_mask: u16,
    /// Maglev table length - 1 (a power of two).
    pub maglev_mask: u16,
    /// One of [`policy`].
    pub policy: u8,
    /// Which half (0 or 1) of RING and MAGLEV the bases point into (for
    /// user space: the data plane follows the bases).
    pub generation: u8,
    /// Valid entries of `ll_slots`.
    pub ll_count: u8,
    /// Which of the function's two FUNCTION_ROWS this copy was written to
    /// (user space alternates them: see [`FunctionSlot`]).
    pub row: u8,
    /// Up workers in the live tables; 0: none up (up to 256).
    pub up_count: u16,
    /// One past the highest occupied worker slot (up to 256). For user
    /// space, which reads WORKERS only up to here; the data plane never
    /// reads it.
    pub slot_end: u16,
    /// Least-loaded candidates (worker slots), least loaded first.
    pub ll_slots: [u8; LL_CANDIDATES],
    /// The function's id (the FUNCTIONS key): in FUNCTION_ROWS, what the
    /// data plane checks a row against.
    pub id: u32,
}

/// Value of `FUNCTION_SLOTS` at `id & Settings::function_slot_mask`: the
/// host variant's direct table of functions, two array lookups instead of
/// FUNCTIONS' hash lookup (a helper call, the dearest step of a dispatch
/// on a machine with retpolines: docs/benchmarks/bench-xdp.md). Dense ids
/// (1..N, as platforms hand them out) each get a slot of their own; an id
/// whose slot another id holds is served from FUNCTIONS, as is every
/// function in the offload variant.
///
/// A FUNCTIONS entry is replaced atomically; an array entry is copied in
/// place, so a reader could see half of an old and half of a new value.
/// Hence the indirection: user space writes a function's new value into
/// the row it did not write last (`Function::row`), then points the slot
/// at it. The data plane checks the slot's id against the request's and
/// the row's own `id` again, so a slot read mid-write (or a row since
/// reused by another function) sends the request to FUNCTIONS instead,
/// never to another function's workers. Each field is a 4-byte word,
/// which a reader sees old or new, never half of each.
///
/// `hashed` counts the ids of this slot that live in FUNCTIONS alone, so
/// that a slot that does not hold the request's id and counts none
/// answers "no such function" at once (an unknown id, a workflow id)
/// without the hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FunctionSlot {
    pub id: u32,
    /// FUNCTION_ROWS index plus one (`Geometry::function_row`); 0: the
    /// slot is empty (as the loader creates it), and the index it gives,
    /// `u32::MAX`, is out of range for every id, even 0.
    pub row_plus_one: u32,
    /// Functions of this slot found through FUNCTIONS only.
    pub hashed: u32,
}

impl FunctionSlot {
    /// This slot held by function `id`, whose value is at FUNCTION_ROWS
    /// `row` (the count of hashed ids kept).
    pub const fn held(self, id: u32, row: u32) -> FunctionSlot {
        FunctionSlot {
            id,
            row_plus_one: row + 1,
            hashed: self.hashed,
        }
    }

    /// This slot held by nobody (the count of hashed ids kept).
    pub const fn vacated(self) -> FunctionSlot {
        FunctionSlot {
            id: 0,
            row_plus_one: 0,
            hashed: self.hashed,
        }
    }

    /// Whether function `id` is this slot's.
    pub const fn holds(&self, id: u32) -> bool {
        !self.is_empty() && self.id == id
    }

    pub const fn is_empty(&self) -> bool {
        self.row_plus_one == 0
    }

    /// The FUNCTION_ROWS index (`u32::MAX` for an empty slot).
    #[inline(always)]
    pub const fn row(&self) -> u32 {
        self.row_plus_one.wrapping_sub(1)
    }
}

impl Function {
    /// WORKERS, LOADS and WORKER_STATS index of worker slot `slot`.
    #[inline(always)]
    pub const fn worker_index(&self, slot: u32) -> u32 {
        self.worker_base + slot
    }

    /// RING chunk and offset of ring `position` (any u32: it wraps).
    #[inline(always)]
    pub const fn ring_position(&self, position: u32) -> (u32, usize) {
        let p = position & self.ring_mask as u32;
        (self.ring_base + p / TABLE_CHUNK, (p % TABLE_CHUNK) as usize)
    }

    /// Slots in this function's Maglev table (its length as `maglev_mask`
    /// says).
    pub const fn maglev_size(&self) -> u32 {
        self.maglev_mask as u32 + 1
    }

    /// The MAGLEV extent holding both generations of this function's
    /// table: (first chunk, chunks), aligned to its length.
    pub const fn maglev_extent(&self) -> (u32, u32) {
        let chunks = maglev_extent_chunks(self.maglev_size());
        (
            self.maglev_base - self.generation as u32 * (chunks / 2),
            chunks,
        )
    }

    /// MAGLEV chunk and offset of Maglev `position` (any u32: it wraps).
    #[inline(always)]
    pub const fn maglev_position(&self, position: u32) -> (u32, usize) {
        let p = position & self.maglev_mask as u32;
        (
            self.maglev_base + p / TABLE_CHUNK,
            (p % TABLE_CHUNK) as usize,
        )
    }
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

/// Value of `LOADS` at a worker's index: its in-flight estimate and what
/// each request costs it, so that least-loaded and p2c compare load
/// relative to weight (a worker of weight 2 may carry twice the in-flight
/// requests of one of weight 1 before it ranks as loaded).
///
/// Two words, not one: the host variant adds 1 to `in_flight` per request
/// it sends (an XADD on that word alone); `cost` is only read. The rank is
/// a 32-bit multiply, which the NFP can do.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Requests in flight: the worker's last report, plus the host
    /// variant's dispatches since.
    pub in_flight: u32,
    /// `Load::cost_of(weight)`.
    pub cost: u32,
}

impl Load {
    /// In-flight counts above this rank as this many (so the rank fits 32
    /// bits for any weight).
    pub const IN_FLIGHT_CAP: u32 = 0xffff;

    /// The cost of one request to a worker of `weight` (0 counts as 1):
    /// 65,535 / weight, so weights up to 65,535 keep a cost of at least 1.
    pub const fn cost_of(weight: u16) -> u32 {
        0xffff / if weight == 0 { 1 } else { weight as u32 }
    }

    pub const fn new(in_flight: u32, weight: u16) -> Load {
        Load {
            in_flight,
            cost: Load::cost_of(weight),
        }
    }

    /// What least-loaded and p2c rank by: in-flight requests per unit of
    /// weight (scaled by 65,535), lower is better.
    #[inline(always)]
    pub fn rank(&self) -> u32 {
        let in_flight = if self.in_flight > Load::IN_FLIGHT_CAP {
            Load::IN_FLIGHT_CAP
        } else {
            self.in_flight
        };
        in_flight.wrapping_mul(self.cost)
    }
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
    unsafe impl aya::Pod for super::Geometry {}
    unsafe impl aya::Pod for super::Function {}
    unsafe impl aya::Pod for super::FunctionSlot {}
    unsafe impl aya::Pod for super::Worker {}
    unsafe impl aya::Pod for super::Workflow {}
    unsafe impl aya::Pod for super::Traffic {}
    unsafe impl aya::Pod for super::Load {}
    unsafe impl aya::Pod for crate::trace::TraceControl {}
    unsafe impl aya::Pod for crate::trace::TraceEvent {}
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    /// The sizes both halves rely on; a change here changes the map ABI.
    /// Key + value stay within the NFP's 64-byte entries.
    #[test]
    fn map_types_have_no_implicit_padding() {
        assert_eq!(size_of::<Endpoint>(), 20);
        assert_eq!(size_of::<ServiceSlot>(), 24);
        assert_eq!(size_of::<Settings>(), 52);
        assert_eq!(size_of::<crate::trace::TraceControl>(), 16);
        assert_eq!(size_of::<crate::trace::TraceEvent>(), 72);
        assert_eq!(size_of::<Function>(), 36);
        assert_eq!(size_of::<FunctionSlot>(), 12);
        assert_eq!(size_of::<Worker>(), 32);
        assert_eq!(size_of::<Workflow>(), 36);
        assert_eq!(size_of::<Traffic>(), 16);
        assert_eq!(size_of::<Load>(), 8);
        assert_eq!(size_of::<TableChunk>(), 32);
        let round8 = |n: usize| n.div_ceil(8) * 8;
        assert!(round8(size_of::<Endpoint>()) + round8(4) <= 64);
        assert!(round8(4) + round8(size_of::<Workflow>()) <= 64);
        assert!(round8(4) + round8(size_of::<Function>()) <= 64);
        assert!(round8(4) + round8(size_of::<Settings>()) <= 64);
    }

    /// Weighted least-loaded: load relative to weight.
    #[test]
    fn a_load_ranks_relative_to_its_weight() {
        // Weight 2 carrying 4 ranks with weight 1 carrying 2.
        assert_eq!(Load::new(4, 2).rank(), Load::new(2, 1).rank() - 2);
        assert!(Load::new(3, 2).rank() < Load::new(2, 1).rank());
        assert!(Load::new(5, 2).rank() > Load::new(2, 1).rank());
        assert_eq!(Load::cost_of(0), Load::cost_of(1));
        assert_eq!(Load::cost_of(u16::MAX), 1);
        // Capped: the largest rank still fits and orders above the rest.
        assert_eq!(Load::new(u32::MAX, 1).rank(), 0xffff * 0xffff);
        assert!(Load::new(70_000, 1).rank() >= Load::new(65_535, 1).rank());
    }

    #[test]
    fn host_geometry_is_valid() {
        let h = Geometry::HOST;
        assert_eq!(h.problem(), None);
        assert!(
            h.ring_size >= 4 * h.workers_per_function,
            "weights need room in the ring"
        );
        assert_eq!(h.maglev_pool_chunks, h.full_maglev_pool());
        assert_eq!(h.map_entries(names::MAGLEV), Some(1024 * 2 * 512));
        // The largest an operator may choose is valid too.
        let most = Geometry {
            functions: MAX_FUNCTIONS,
            workers_per_function: MAX_WORKERS_PER_FUNCTION,
            ring_size: MAX_RING_SIZE,
            maglev_size: MAX_MAGLEV_SIZE,
            workflows: MAX_WORKFLOWS,
            maglev_pool_chunks: MAX_MAGLEV_POOL_CHUNKS,
            ..h
        };
        assert_eq!(most.problem(), None);
        // Bases stay within u32 at that size.
        assert!(most.worker_slots() as u64 == 65_536 * 256);
        assert_eq!(most.full_maglev_pool(), MAX_MAGLEV_POOL_CHUNKS);
        for bad in [
            Geometry { functions: 0, ..h },
            Geometry {
                functions: MAX_FUNCTIONS + 1,
                ..h
            },
            Geometry {
                workers_per_function: 48,
                ..h
            },
            Geometry {
                workers_per_function: 512,
                ..h
            },
            Geometry {
                ring_size: 2048,
                ..h
            },
            Geometry {
                maglev_size: 1000,
                ..h
            },
            Geometry {
                maglev_pool_chunks: 8,
                ..h
            },
            Geometry {
                maglev_pool_chunks: u32::MAX,
                ..h
            },
            Geometry {
                ring_size: 32,
                workers_per_function: 64,
                ..h
            },
        ] {
            assert!(bad.problem().is_some(), "{bad:?}");
        }
    }

    /// Every map of a fitting geometry holds at most the device's entries,
    /// and the geometry is one the data plane can address.
    #[test]
    fn fitting_geometries_fit() {
        assert_eq!(Geometry::fitting(0), None);
        assert_eq!(Geometry::fitting(1), None);
        for entries in [2, 3, 5, 16, 100, 1000, 4096, 65536, 1 << 20, u32::MAX] {
            let g = Geometry::fitting(entries).unwrap();
            assert_eq!(g.problem(), None, "{entries}: {g:?}");
            for name in [
                names::SERVICES,
                names::FUNCTIONS,
                names::WORKERS,
                names::RING,
                names::MAGLEV,
                names::WORKFLOWS,
            ] {
                let n = g.map_entries(name).unwrap();
                assert!(n >= 1 && n <= entries, "{entries}: {name} needs {n}");
            }
        }
        // netdevsim: one function of two workers, one-chunk tables.
        let g = Geometry::fitting(2).unwrap();
        assert_eq!(
            (
                g.functions,
                g.workers_per_function,
                g.ring_size,
                g.maglev_size,
                g.service_slots
            ),
            (1, 2, 32, 32, 2)
        );
        assert_eq!(Geometry::fitting(u32::MAX), Some(Geometry::HOST));
    }

    #[test]
    fn maglev_tables_grow_with_the_workers_in_steps_of_four() {
        let h = Geometry::HOST;
        let sizes = [0, 1, 2, 4, 5, 16, 17, 64, 65, 256].map(|n| h.maglev_size_for(n));
        assert_eq!(
            sizes,
            [256, 256, 1024, 1024, 4096, 4096, 16384, 16384, 16384, 16384]
        );
        let widest = Geometry {
            maglev_size: MAX_MAGLEV_SIZE,
            ..h
        };
        for n in 1..=256 {
            let m = widest.maglev_size_for(n);
            assert!(
                m.is_power_of_two() && m >= 256 * n && m <= 4 * 256 * n,
                "{n}: {m}"
            );
        }
        assert_eq!(widest.maglev_size_for(256), MAX_MAGLEV_SIZE);
        // Never beyond the geometry's longest table (a NIC's one chunk).
        let nic = Geometry::fitting(2).unwrap();
        assert_eq!(nic.maglev_size_for(2), 32);
        let capped = Geometry {
            maglev_size: 2048,
            ..h
        };
        assert_eq!(capped.maglev_size_for(32), 2048);
    }

    #[test]
    fn positions_wrap_within_the_live_table() {
        let g = Geometry::HOST;
        let f = Function {
            index: 3,
            worker_base: g.worker_base(3),
            ring_base: g.ring_base(3, 1),
            maglev_base: 7 * 512,
            ring_mask: (g.ring_size - 1) as u16,
            maglev_mask: (g.maglev_size - 1) as u16,
            generation: 1,
            ..Default::default()
        };
        assert_eq!(f.maglev_extent(), (6 * 512, 2 * 512));
        assert_eq!(f.worker_index(5), 3 * 64 + 5);
        assert_eq!(f.ring_position(0), (7 * 8, 0));
        assert_eq!(f.ring_position(256 + 33), (7 * 8 + 1, 1));
        assert_eq!(f.maglev_position(u32::MAX), (7 * 512 + 511, 31));
    }
}
