//! The selection tables user space computes for the data plane, so that no
//! policy scans workers per packet:
//!
//! - the *ring*: `ring_size` slots in smooth weighted round-robin order
//!   (nginx's algorithm), walked by round-robin and sampled by p2c;
//! - the *hash table* of the hash policy (the MAGLEV map): a key's entry is
//!   its hash masked by the table's length, and the entry names the worker.
//!   Two constructions, both pure functions of the up workers (their
//!   endpoints and weights), so every dispatcher of a cluster and a
//!   restarted daemon build the same table:
//!   - a *rendezvous table* (highest random weight per entry): each entry
//!     belongs to the worker whose own permutation of the entries ranks it
//!     first. A worker that comes or goes moves exactly its own entries
//!     (no others), and a change is an incremental pass over the table
//!     (`HashTables`), not a rebuild. Its balance is statistical: a
//!     worker's share has a standard deviation of about sqrt(N / 2M), 4.4%
//!     of its share at 256 entries per worker, 2.2% at 1,024, which is why
//!     the host sizes tables at 256 to 1,024 entries per worker
//!     (`Geometry::maglev_size_for`);
//!   - a *Maglev table* (Eisenbud et al., NSDI'16) where the table is
//!     shorter than that (a NIC's, or a capped `--maglev-size`): exactly
//!     balanced at any length, at the price of moving somewhat more than
//!     1/N of the keys and of a rebuild on every change;
//! - the *least-loaded candidates*: the LL_CANDIDATES least loaded workers.

use std::{collections::HashMap, net::SocketAddr, sync::Mutex};

use dispatcher_common::maps::LL_CANDIDATES;

/// An up worker as the tables see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub slot: u8,
    pub weight: u16,
    /// A stable identity (a hash of the worker's address and port,
    /// `Member::key_of`): its permutations depend only on this, not on the
    /// slot or the others.
    pub key: u64,
}

impl Member {
    /// The key of the worker at `addr`: the same on every machine.
    pub fn key_of(addr: SocketAddr) -> u64 {
        // The address's bytes, then the port's (big-endian).
        let mut bytes = [0u8; 18];
        let len = match addr.ip() {
            std::net::IpAddr::V4(ip) => {
                bytes[..4].copy_from_slice(&ip.octets());
                4
            }
            std::net::IpAddr::V6(ip) => {
                bytes[..16].copy_from_slice(&ip.octets());
                16
            }
        };
        bytes[len..len + 2].copy_from_slice(&addr.port().to_be_bytes());
        fnv1a(0x5eed_0000, &bytes[..len + 2])
    }
}

/// Smooth weighted round-robin over `members`, `size` long. Each member
/// appears about size * weight / total times, spread out.
pub fn ring(members: &[Member], size: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    if members.is_empty() {
        out.resize(size as usize, 0);
        return out;
    }
    if members.iter().all(|m| m.weight == members[0].weight) {
        // Equal weights: smooth weighted round-robin is plain rotation in
        // member order; skip its size x members steps.
        out.extend(members.iter().map(|m| m.slot).cycle().take(size as usize));
        return out;
    }
    smooth_weighted(members, size)
}

fn smooth_weighted(members: &[Member], size: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    let total: i64 = members.iter().map(|m| m.weight as i64).sum();
    let mut current = vec![0i64; members.len()];
    for _ in 0..size {
        for (c, m) in current.iter_mut().zip(members) {
            *c += m.weight as i64;
        }
        let best = (0..members.len())
            .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
            .expect("non-empty");
        current[best] -= total;
        out.push(members[best].slot);
    }
    out
}

/// 64-bit FNV-1a with a seed: stable across runs and machines, so a
/// restarted daemon computes the same tables.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A 64-bit finaliser (splitmix64's): turns a key and a seed into
/// independent-looking parameters.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Entries at or above which a table of `workers` workers is a rendezvous
/// table: 256 per worker (below it its balance would be worse than 4.4%).
const RENDEZVOUS_ENTRIES_PER_WORKER: u32 = 256;

/// Whether the hash table of `workers` up workers, `size` long, is built as
/// a rendezvous table (else Maglev).
fn is_rendezvous(workers: usize, size: u32) -> bool {
    size as u64 >= RENDEZVOUS_ENTRIES_PER_WORKER as u64 * workers as u64
}

/// The hash policy's table over `members`, `size` long (a power of two):
/// rendezvous or Maglev by its length (module comment).
pub fn hash_table(members: &[Member], size: u32) -> Vec<u8> {
    if is_rendezvous(members.len(), size) {
        Rendezvous::build(members, size).table
    } else {
        maglev(members, size)
    }
}

/// The Maglev lookup table over `members`, `size` long (a power of two).
/// Weighted: in every round each member claims `weight` positions.
///
/// The paper takes a prime length so that any skip visits every position;
/// here the length is a power of two (the data plane indexes by a mask, as
/// the NFP has no modulo) and skips are odd, which visits every position
/// just the same (an odd skip is coprime with a power of two). Members
/// take their turns in the order of their keys, not of their slots, which
/// dispatchers assign by their own histories.
fn maglev(members: &[Member], size: u32) -> Vec<u8> {
    debug_assert!(size.is_power_of_two());
    let mut table = vec![u8::MAX; size as usize];
    if members.is_empty() {
        table.fill(0);
        return table;
    }
    let mut members = members.to_vec();
    members.sort_by_key(|m| (m.key, m.slot));
    // Positions wrap by a mask (the length is a power of two): a 64-bit
    // modulo per probe was most of a rebuild's time.
    let mask = size as u64 - 1;
    let mut perms: Vec<(u64, u64, u64)> = members
        .iter()
        .map(|w| {
            let offset = mix(w.key ^ 0x5eed_0001) & mask;
            let skip = (mix(w.key ^ 0x5eed_0002) & mask) | 1;
            // (next position, skip, claims per round)
            (offset, skip, w.weight.max(1) as u64)
        })
        .collect();
    let mut filled = 0u64;
    let m = size as u64;
    'fill: loop {
        for (i, (pos, skip, claims)) in perms.iter_mut().enumerate() {
            for _ in 0..*claims {
                while table[*pos as usize] != u8::MAX {
                    *pos = (*pos + *skip) & mask;
                }
                table[*pos as usize] = members[i].slot;
                *pos = (*pos + *skip) & mask;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
    }
    table
}

/// A member's permutation of a table's entries, as the rank it gives each
/// entry: a keyed bijection on the table's index bits (xor, an odd
/// multiplier, a xorshift, again), cheap enough to evaluate for every
/// entry on every change.
#[derive(Clone, Copy, Debug)]
struct Ranks {
    k0: u32,
    a: u32,
    c: u32,
    d: u32,
    mask: u32,
    shift: u32,
}

impl Ranks {
    fn new(key: u64, size: u32) -> Ranks {
        let (h1, h2) = (mix(key ^ 0x5eed_0003), mix(key ^ 0x5eed_0004));
        let bits = size.trailing_zeros();
        Ranks {
            k0: h1 as u32,
            a: (h1 >> 32) as u32 | 1,
            c: h2 as u32 | 1,
            d: (h2 >> 32) as u32,
            mask: size - 1,
            shift: bits.div_ceil(2).max(1),
        }
    }

    #[inline(always)]
    fn of(&self, entry: u32) -> u32 {
        let mut x = ((entry ^ self.k0).wrapping_mul(self.a)) & self.mask;
        x ^= x >> self.shift;
        x = (x.wrapping_mul(self.c).wrapping_add(self.d)) & self.mask;
        x ^ (x >> self.shift)
    }
}

/// How members' ranks compare. With equal weights the lowest rank wins.
/// With weights, a rank r of M is read as an exponential variable,
/// -ln(1 - (r + 1/2) / M), divided by the weight (weighted rendezvous
/// hashing: member m then wins an entry with probability weight_m / total),
/// in fixed point.
#[derive(Clone, Debug)]
enum Scoring {
    Equal,
    Weighted(std::sync::Arc<Exponential>),
}

/// An exponential rank per possible rank: as long as the longest table,
/// so that a (16-bit) rank indexes it without a bounds check, which lets
/// the weighted passes vectorise (a gather).
type Exponential = [u32; 1 << 16];

/// One member as a rendezvous table scores it. A score is one u64 whose
/// order is the entry's preference and whose low byte is the member's
/// slot: [rank: 16 | key: 40 | slot: 8] with equal weights,
/// [exponential rank x 65,535 / weight: 40 | key: 16 | slot: 8] with
/// weights. The key bits break ties between members that rank an entry
/// alike; only two members whose keys agree in those bits as well fall
/// back to the slot (which dispatchers assign by their own histories): a
/// one-in-2^40 chance per pair of members with equal weights, one in
/// 2^16 with weights, and then only at the entries both rank alike (one
/// in the table's length). Keeping the slot inside makes "who owns this
/// entry" a minimum over plain integers, which the compiler vectorises.
#[derive(Clone, Copy, Debug)]
struct Scorer {
    ranks: Ranks,
    /// 65,535 / weight (weighted scoring).
    per_weight: u64,
    /// The key's tie-breaking bits and the slot, in place.
    low: u64,
    low_weighted: u64,
}

impl Scorer {
    fn new(m: &Member, size: u32) -> Scorer {
        Scorer {
            ranks: Ranks::new(m.key, size),
            per_weight: 65_535 / m.weight.max(1) as u64,
            low: (m.key & 0xff_ffff_ffff) << 8 | m.slot as u64,
            low_weighted: (m.key & 0xffff) << 8 | m.slot as u64,
        }
    }

    #[inline(always)]
    fn equal(&self, entry: u32) -> u64 {
        (self.ranks.of(entry) as u64) << 48 | self.low
    }

    #[inline(always)]
    fn weighted(&self, exp: &Exponential, entry: u32) -> u64 {
        (exp[self.ranks.of(entry) as u16 as usize] as u64 * self.per_weight) << 24
            | self.low_weighted
    }
}

/// The slot a score names.
fn slot_of(score: u64) -> u8 {
    score as u8
}

/// -ln(1 - (r + 1/2) / size) in fixed point (2^20) for every rank r of a
/// `size`-entry table: below 2^24 for the tables' lengths (at most 2^16
/// entries), strictly increasing in r (zeros beyond `size`). Computed once
/// per length.
fn exponential_ranks(size: u32) -> std::sync::Arc<Exponential> {
    static BY_SIZE: Mutex<Vec<(u32, std::sync::Arc<Exponential>)>> = Mutex::new(Vec::new());
    let mut known = BY_SIZE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, t)) = known.iter().find(|(s, _)| *s == size) {
        return t.clone();
    }
    let m = size as f64;
    // (Built on the heap: the array is 256 KiB, too much for a stack.)
    let mut ranks = vec![0u32; 1 << 16];
    for (r, x) in ranks.iter_mut().enumerate().take(size as usize) {
        *x = (-ln((m - r as f64 - 0.5) / m) * (1u64 << 20) as f64) as u32;
    }
    let ranks: Box<Exponential> = ranks.into_boxed_slice().try_into().expect("2^16 ranks");
    let t: std::sync::Arc<Exponential> = ranks.into();
    known.push((size, t.clone()));
    t
}

/// The natural logarithm of `y` > 0 from IEEE additions, multiplications
/// and divisions alone (exact the same on every machine, which a libm's
/// `ln` is not promised to be): y = m x 2^e with m in [1, 2), then
/// ln m = 2 atanh((m - 1) / (m + 1)) by its series, to double precision.
fn ln(y: f64) -> f64 {
    debug_assert!(y > 0.0 && y.is_finite());
    let bits = y.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & ((1u64 << 52) - 1)) | (1023u64 << 52));
    let z = (m - 1.0) / (m + 1.0);
    let (z2, mut term, mut sum) = (z * z, z, 0.0);
    for k in 0..30 {
        sum += term / (2 * k + 1) as f64;
        term *= z2;
    }
    exponent as f64 * std::f64::consts::LN_2 + 2.0 * sum
}

fn scoring(members: &[Member], size: u32) -> Scoring {
    if members.iter().all(|m| m.weight == members[0].weight) {
        Scoring::Equal
    } else {
        Scoring::Weighted(exponential_ranks(size))
    }
}

/// A rendezvous table with what a change needs: each entry's winning
/// score (its low byte the table's entry), and the members it was built
/// for.
#[derive(Clone, Debug)]
struct Rendezvous {
    scores: Vec<u64>,
    /// The scores' low bytes: the table.
    table: Vec<u8>,
    members: Vec<Member>,
    scoring: Scoring,
}

impl Rendezvous {
    /// Builds the table from nothing: every member scores every entry.
    fn build(members: &[Member], size: u32) -> Rendezvous {
        debug_assert!(size.is_power_of_two() && size <= 1 << 16);
        let scoring = scoring(members, size);
        let mut scores = vec![u64::MAX; size as usize];
        let mut table = vec![0; size as usize];
        for m in members {
            claim(&Scorer::new(m, size), &scoring, &mut scores, &mut table);
        }
        Rendezvous {
            scores,
            table,
            members: sorted(members),
            scoring,
        }
    }

    /// The table: each entry's slot.
    fn table(&self) -> &[u8] {
        &self.table
    }

    fn size(&self) -> u32 {
        self.scores.len() as u32
    }

    /// Turns this into the table for `members`: the entries of members
    /// that left go to their next choice among those that stayed, then each
    /// new member takes the entries it outscores. Exactly the table `build`
    /// makes (the scores are a total order), at a pass over the table per
    /// new member and a score per stayer for each orphan. False (and
    /// nothing changed) when building anew is as cheap or the scoring
    /// changes.
    fn change(&mut self, members: &[Member]) -> bool {
        let size = self.size();
        let scoring = scoring(members, size);
        if std::mem::discriminant(&scoring) != std::mem::discriminant(&self.scoring) {
            return false;
        }
        let id = |m: &Member| (m.key, m.slot, m.weight);
        // (self.members is kept in this order.)
        let before: Vec<_> = self.members.iter().map(id).collect();
        let mut after: Vec<_> = members.iter().map(id).collect();
        after.sort_unstable();
        let came: Vec<&Member> = members
            .iter()
            .filter(|m| before.binary_search(&id(m)).is_err())
            .collect();
        let left: Vec<u8> = self
            .members
            .iter()
            .filter(|m| after.binary_search(&id(m)).is_err())
            .map(|m| m.slot)
            .collect();
        let stayers: Vec<Scorer> = members
            .iter()
            .filter(|m| before.binary_search(&id(m)).is_ok())
            .map(|m| Scorer::new(m, size))
            .collect();
        if stayers.is_empty() || 2 * (left.len() + came.len()) > members.len().max(2) {
            return false;
        }
        if !left.is_empty() {
            // The orphans' next choices: each stayer scores them all (a
            // pass per stayer over a short list, which vectorises).
            let orphans: Vec<u32> = left
                .iter()
                .flat_map(|slot| memchr::memchr_iter(*slot, &self.table))
                .map(|e| e as u32)
                .collect();
            let mut best = vec![u64::MAX; orphans.len()];
            for s in &stayers {
                rescore(s, &scoring, &orphans, &mut best);
            }
            for (e, score) in orphans.iter().zip(best) {
                self.scores[*e as usize] = score;
                self.table[*e as usize] = slot_of(score);
            }
        }
        for m in came {
            claim(
                &Scorer::new(m, size),
                &scoring,
                &mut self.scores,
                &mut self.table,
            );
        }
        self.members = sorted(members);
        self.scoring = scoring;
        true
    }
}

/// `members` in the order `Rendezvous::change` compares them.
fn sorted(members: &[Member]) -> Vec<Member> {
    let mut m = members.to_vec();
    m.sort_unstable_by_key(|m| (m.key, m.slot, m.weight));
    m
}

/// Gives `s` every entry it outscores: one pass, a score and a minimum per
/// entry.
fn claim(s: &Scorer, scoring: &Scoring, scores: &mut [u64], table: &mut [u8]) {
    match scoring {
        Scoring::Equal => claim_equal(s, scores, table),
        Scoring::Weighted(exp) => claim_weighted(s, exp, scores, table),
    }
}

/// Lowers `best[i]` to `s`'s score of entry `entries[i]`.
fn rescore(s: &Scorer, scoring: &Scoring, entries: &[u32], best: &mut [u64]) {
    match scoring {
        Scoring::Equal => rescore_equal(s, entries, best),
        Scoring::Weighted(exp) => rescore_weighted(s, exp, entries, best),
    }
}

/// The passes are compiled for AVX-512 and
/// AVX2 too and take the best copy the CPU has: the rank's 32-bit
/// multiplies and the 64-bit minimum then go four or eight entries at a
/// time (64-worker changes: about 30,000/s with either copy here, 14,800/s
/// with the portable one, docs/benchmarks/bench-control.md; the benchmark
/// prints which copy ran).
macro_rules! with_vector_copies {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn portable($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn avx2($($arg: $ty),*) {
                portable($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            unsafe fn avx512($($arg: $ty),*) {
                portable($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F (checked just above).
                return unsafe { avx512($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2 (checked just above).
                return unsafe { avx2($($arg),*) };
            }
            portable($($arg),*)
        }
    };
}

/// Which copy of the vectorised passes this CPU runs: "AVX-512", "AVX2"
/// or "portable" (for the benchmark's record).
pub fn vector_code() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        return "AVX-512";
    } else if std::is_x86_feature_detected!("avx2") {
        return "AVX2";
    }
    "portable"
}

with_vector_copies! {
    /// Gives `s` every entry it outscores, equal weights.
    fn claim_equal(s: &Scorer, scores: &mut [u64], table: &mut [u8]) {
        for (e, (best, slot)) in scores.iter_mut().zip(table.iter_mut()).enumerate() {
            *best = (*best).min(s.equal(e as u32));
            *slot = slot_of(*best);
        }
    }
}

with_vector_copies! {
    /// Gives `s` every entry it outscores, with weights.
    fn claim_weighted(s: &Scorer, exp: &Exponential, scores: &mut [u64], table: &mut [u8]) {
        for (e, (best, slot)) in scores.iter_mut().zip(table.iter_mut()).enumerate() {
            *best = (*best).min(s.weighted(exp, e as u32));
            *slot = slot_of(*best);
        }
    }
}

with_vector_copies! {
    /// `rescore` with weights.
    fn rescore_weighted(s: &Scorer, exp: &Exponential, entries: &[u32], best: &mut [u64]) {
        for (e, b) in entries.iter().zip(best.iter_mut()) {
            *b = (*b).min(s.weighted(exp, *e));
        }
    }
}

with_vector_copies! {
    /// `rescore` with equal weights.
    fn rescore_equal(s: &Scorer, entries: &[u32], best: &mut [u64]) {
        for (e, b) in entries.iter().zip(best.iter_mut()) {
            *b = (*b).min(s.equal(*e));
        }
    }
}

/// The rendezvous tables last built, by function id, so that a change
/// starts from the table before it. A memo of (members -> table): an entry
/// that belongs to another data plane of the same process, or is stale,
/// is only a starting point farther away (or a rebuild), never a wrong
/// table. Held to a budget; over it, the memo starts afresh.
pub struct HashTables;

/// Bytes of memo (a score and a slot per entry: 9 bytes) at most.
const HASH_TABLES_BUDGET: usize = 64 << 20;

#[derive(Default)]
struct Memo {
    by_function: HashMap<u32, Rendezvous>,
    bytes: usize,
}

static MEMO: Mutex<Option<Memo>> = Mutex::new(None);

impl HashTables {
    /// Calls `write` with the hash table of function `id` over `members`,
    /// `size` long (and returns what it returns).
    pub fn with_table<R>(
        id: u32,
        members: &[Member],
        size: u32,
        write: impl FnOnce(&[u8]) -> R,
    ) -> R {
        if members.is_empty() || !is_rendezvous(members.len(), size) {
            return write(&maglev(members, size));
        }
        let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
        let memo = memo.get_or_insert_with(Memo::default);
        let next = match memo.by_function.remove(&id) {
            Some(r) => {
                memo.bytes -= r.scores.len() * 9;
                Some(r)
            }
            None => None,
        }
        .filter(|r| r.size() == size)
        .and_then(|mut r| r.change(members).then_some(r))
        .unwrap_or_else(|| Rendezvous::build(members, size));
        let written = write(next.table());
        if memo.bytes + size as usize * 9 > HASH_TABLES_BUDGET {
            memo.by_function.clear();
            memo.bytes = 0;
        }
        memo.bytes += size as usize * 9;
        memo.by_function.insert(id, next);
        written
    }

    /// Forgets function `id`'s table (it was deleted).
    pub fn forget(id: u32) {
        let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(memo) = memo.as_mut() {
            if let Some(r) = memo.by_function.remove(&id) {
                memo.bytes -= r.scores.len() * 9;
            }
        }
    }
}

/// The least loaded slots, least loaded first (slot order on ties), at
/// most LL_CANDIDATES of them.
pub fn least_loaded(loads: &[(u8, u64)]) -> Vec<u8> {
    let mut sorted = loads.to_vec();
    sorted.sort_by_key(|&(slot, load)| (load, slot));
    sorted
        .into_iter()
        .take(LL_CANDIDATES)
        .map(|(slot, _)| slot)
        .collect()
}

#[cfg(test)]
mod tests {
    use dispatcher_common::maps::Geometry;

    use super::*;

    const RING_SIZE: u32 = Geometry::HOST.ring_size;
    const MAGLEV_SIZE: u32 = Geometry::HOST.maglev_size;

    /// The table length a function of `n` workers has on the host.
    fn table_size(n: u32) -> u32 {
        Geometry {
            maglev_size: 65_536,
            ..Geometry::HOST
        }
        .maglev_size_for(n)
    }

    /// A Maglev table's length where it keeps its disruption under 1.75x
    /// the ideal: the first of 256, 1,024, ... at least 4 x n².
    fn maglev_size(n: u8) -> u32 {
        let mut size = 256;
        while size < 4 * n as u32 * n as u32 {
            size *= 4;
        }
        size
    }

    fn member(slot: u8, addr: &str) -> Member {
        Member {
            slot,
            weight: 1,
            key: Member::key_of(addr.parse().unwrap()),
        }
    }

    fn members(n: u8) -> Vec<Member> {
        (0..n)
            .map(|i| member(i, &format!("10.0.{}.{}:9000", i / 200, i % 200 + 1)))
            .collect()
    }

    /// Shares of the entries by slot.
    fn shares(table: &[u8]) -> [f64; 256] {
        let mut c = [0.0; 256];
        for &s in table {
            c[s as usize] += 1.0 / table.len() as f64;
        }
        c
    }

    fn share(table: &[u8], slot: u8) -> f64 {
        table.iter().filter(|&&s| s == slot).count() as f64 / table.len() as f64
    }

    #[test]
    fn ring_is_weighted_and_spread() {
        let mut m = members(3);
        m[2].weight = 2;
        let r = ring(&m, RING_SIZE);
        assert_eq!(r.len(), RING_SIZE as usize);
        assert!((share(&r, 2) - 0.5).abs() < 0.01, "{}", share(&r, 2));
        assert!((share(&r, 0) - 0.25).abs() < 0.01);
        // Spread: the heavy worker never takes three turns in a row.
        assert!(r.windows(3).all(|w| !(w[0] == 2 && w[1] == 2 && w[2] == 2)));
        // Equal weights: strict rotation, the same as the general algorithm.
        let r = ring(&members(4), RING_SIZE);
        assert_eq!(&r[..8], &[0, 1, 2, 3, 0, 1, 2, 3]);
        for n in [1, 3, 16, 64] {
            assert_eq!(
                ring(&members(n), RING_SIZE),
                smooth_weighted(&members(n), RING_SIZE),
                "{n} members"
            );
        }
    }

    #[test]
    fn maglev_is_balanced() {
        for n in [1u8, 2, 4, 7, 16, 64] {
            let t = maglev(&members(n), maglev_size(n));
            assert!(t.iter().all(|&s| s < n));
            for s in 0..n {
                let expected = 1.0 / n as f64;
                assert!(
                    (share(&t, s) - expected).abs() < expected * 0.1 + 0.002,
                    "n={n} slot {s}: {}",
                    share(&t, s)
                );
            }
        }
    }

    #[test]
    fn maglev_honours_weights() {
        let mut m = members(4);
        m[0].weight = 3;
        let t = maglev(&m, MAGLEV_SIZE);
        assert!((share(&t, 0) - 0.5).abs() < 0.02, "{}", share(&t, 0));
    }

    /// Removing or adding one of N workers moves about 1/N of the keys of
    /// a Maglev table: Maglev trades some extra movement for balance,
    /// growing with N²/M; at M >= 4N² it stays under 1.75x the ideal (what
    /// a NIC's short tables give up for their balance). The test prints
    /// what it measures.
    #[test]
    fn one_worker_change_moves_about_one_nth_of_the_keys() {
        for n in [3u8, 5, 10, 15, 20, 31, 40, 63] {
            let size = maglev_size(n);
            assert_eq!(size, maglev_size(n + 1), "n={n}: no resize on adding one");
            let all = members(n);
            let before = maglev(&all, size);
            // The share of keys that moved, and whether it is near `ideal`.
            let moved = |after: &[u8], what: &str, ideal: f64| {
                let moved = before.iter().zip(after).filter(|(a, b)| a != b).count() as f64
                    / before.len() as f64;
                println!(
                    "n={n}, {size} slots: {what} moved {:.2}% of keys (ideal {:.2}%, {:.2}x)",
                    moved * 100.0,
                    ideal * 100.0,
                    moved / ideal
                );
                assert!(
                    moved >= ideal * 0.95 && moved <= ideal * 1.75,
                    "n={n}, {what}: moved {moved}"
                );
            };
            // Remove the middle worker.
            let removed: Vec<Member> = all.iter().filter(|m| m.slot != n / 2).cloned().collect();
            moved(&maglev(&removed, size), "removing one", 1.0 / n as f64);
            // Adding it back restores the table exactly.
            assert_eq!(maglev(&all, size), before);
            // Adding a new worker: about 1/(N+1) move.
            let mut grown = all.clone();
            grown.push(member(n, "10.9.9.9:9000"));
            moved(&maglev(&grown, size), "adding one", 1.0 / (n as f64 + 1.0));
        }
    }

    /// The smallest tables (a NIC's): every position filled, every member
    /// present.
    #[test]
    fn small_tables_hold_every_member() {
        for n in [1u8, 2] {
            let t = maglev(&members(n), 32);
            assert_eq!(t.len(), 32);
            assert!((0..n).all(|s| t.contains(&s)) && t.iter().all(|&s| s < n));
            assert_eq!(ring(&members(n), 32).len(), 32);
        }
    }

    #[test]
    fn least_loaded_ranks_by_load_then_slot() {
        assert_eq!(
            least_loaded(&[(0, 5), (1, 2), (2, 9), (3, 2), (4, 0)]),
            vec![4, 1, 3, 0]
        );
        assert_eq!(least_loaded(&[(7, 1)]), vec![7]);
    }

    /// The rendezvous table at the host's lengths: every worker's share
    /// within 4 standard deviations (sqrt(N / 2M)) of even; a weighted
    /// worker's in proportion.
    #[test]
    fn rendezvous_is_balanced_within_its_deviation() {
        for n in [1u8, 2, 3, 4, 7, 16, 17, 40, 64, 200] {
            let size = table_size(n as u32);
            assert!(is_rendezvous(n as usize, size), "n={n}");
            let t = hash_table(&members(n), size);
            let expected = 1.0 / n as f64;
            let sd = (n as f64 / (2.0 * size as f64)).sqrt();
            let shares = shares(&t);
            let worst = (0..n)
                .map(|s| (shares[s as usize] / expected - 1.0).abs())
                .fold(0.0, f64::max);
            println!(
                "n={n}, {size} slots: worst share {:+.1}% of even (sd {:.1}%)",
                worst * 100.0,
                sd * 100.0
            );
            assert!(worst <= 4.0 * sd, "n={n}: {worst}");
            assert!(t.iter().all(|&s| s < n));
        }
        let mut m = members(8);
        m[0].weight = 3;
        m[1].weight = 2;
        let t = hash_table(&m, table_size(8));
        let total = 3.0 + 2.0 + 6.0;
        let shares = shares(&t);
        for (slot, weight) in [(0, 3.0), (1, 2.0), (2, 1.0)] {
            let expected = weight / total;
            assert!(
                (shares[slot] / expected - 1.0).abs() < 0.12,
                "slot {slot}: {} against {expected}",
                shares[slot]
            );
        }
    }

    /// The property the incremental update rests on: a worker that goes
    /// takes exactly its own entries with it, and one that comes takes
    /// entries only for itself, about 1/(N+1) of them.
    #[test]
    fn rendezvous_moves_only_the_entries_of_the_worker_that_changed() {
        for n in [2u8, 3, 5, 10, 15, 31, 63, 100] {
            let size = table_size(n as u32 + 1);
            assert_eq!(size, table_size(n as u32), "n={n}: no resize on adding one");
            let all = members(n);
            let before = hash_table(&all, size);
            let gone = n / 2;
            let removed: Vec<Member> = all.iter().filter(|m| m.slot != gone).cloned().collect();
            let after = hash_table(&removed, size);
            for (b, a) in before.iter().zip(&after) {
                assert!(b == a || *b == gone, "n={n}: an entry of {b} moved to {a}");
                assert_ne!(*a, gone);
            }
            let mut grown = all.clone();
            grown.push(member(n, "10.9.9.9:9000"));
            let after = hash_table(&grown, size);
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            assert!(before.iter().zip(&after).all(|(b, a)| b == a || *a == n));
            let ideal = size as f64 / (n as f64 + 1.0);
            let sd = (n as f64 + 1.0) / (2.0 * size as f64);
            println!(
                "n={n}, {size} slots: adding one moved {:.2}% of keys (ideal {:.2}%)",
                moved as f64 / size as f64 * 100.0,
                100.0 / (n as f64 + 1.0)
            );
            assert!(
                (moved as f64 / ideal - 1.0).abs() <= 4.0 * sd.sqrt(),
                "n={n}"
            );
        }
    }

    /// The portable logarithm agrees with the platform's to its last bits.
    #[test]
    fn portable_ln_is_the_logarithm() {
        for y in [1.0, 0.5, 1e-5, 0.999_99, 3.0, 1.0 / 131_072.0, 0.75] {
            assert!(
                (ln(y) - y.ln()).abs() <= 1e-15 * y.ln().abs().max(1.0),
                "{y}"
            );
        }
        let t = exponential_ranks(65_536);
        assert!(t.windows(2).all(|w| w[0] < w[1]) && *t.last().unwrap() < 1 << 24);
        let t = exponential_ranks(1024);
        assert!(t[..1024].windows(2).all(|w| w[0] < w[1]) && t[1024..].iter().all(|&x| x == 0));
    }

    /// A table is a function of the member set: the order members come in
    /// and the slots they sit in (dispatchers assign both by their own
    /// histories) change nothing.
    #[test]
    fn tables_do_not_depend_on_member_order() {
        let mut m = members(20);
        m[3].weight = 4;
        let mut reversed = m.clone();
        reversed.reverse();
        // Nor do the slots: the same workers in other slots (another
        // dispatcher's history) own the same entries.
        let mut reslotted = m.clone();
        for (i, w) in reslotted.iter_mut().enumerate() {
            w.slot = 19 - i as u8;
        }
        let key_of_slot =
            |members: &[Member], slot: u8| members.iter().find(|w| w.slot == slot).unwrap().key;
        for size in [1024, table_size(20)] {
            assert_eq!(hash_table(&m, size), hash_table(&reversed, size), "{size}");
            let (a, b) = (hash_table(&m, size), hash_table(&reslotted, size));
            assert!(
                a.iter()
                    .zip(&b)
                    .all(|(x, y)| key_of_slot(&m, *x) == key_of_slot(&reslotted, *y)),
                "{size}: the slots changed who owns an entry"
            );
        }
    }

    /// The incremental update gives exactly the table a fresh build does,
    /// over a random walk of changes: workers coming and going one or
    /// several at a time, weights changing, a worker moving slot.
    #[test]
    fn rendezvous_change_is_the_fresh_build() {
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = |n: u64| {
            rng = mix(rng);
            rng % n
        };
        let pool: Vec<Member> = (0..40u8)
            .map(|i| member(i, &format!("10.3.0.{}:{}", i + 1, 9000 + i as u16)))
            .collect();
        let size = 16_384;
        let mut current: Vec<Member> = pool[..20].to_vec();
        let mut table = Rendezvous::build(&current, size);
        let mut incremental = 0;
        for step in 0..300 {
            let mut wanted = current.clone();
            match next(7) {
                0 | 1 => {
                    if let Some(m) = pool
                        .iter()
                        .find(|m| !wanted.iter().any(|w| w.slot == m.slot || w.key == m.key))
                    {
                        wanted.push(m.clone());
                    }
                }
                2 | 3 if wanted.len() > 1 => {
                    wanted.remove(next(wanted.len() as u64) as usize);
                }
                4 => {
                    let i = next(wanted.len() as u64) as usize;
                    wanted[i].weight = 1 + next(3) as u16;
                }
                5 => {
                    // A worker moves to a slot nobody holds (40 to 59).
                    let i = next(wanted.len() as u64) as usize;
                    if let Some(free) = (40..60u8).find(|s| !wanted.iter().any(|w| w.slot == *s)) {
                        wanted[i].slot = free;
                    }
                }
                _ => {
                    for _ in 0..3 {
                        if wanted.len() > 2 {
                            wanted.remove(next(wanted.len() as u64) as usize);
                        }
                    }
                }
            }
            if table.change(&wanted) {
                incremental += 1;
            } else {
                table = Rendezvous::build(&wanted, size);
            }
            assert_eq!(
                table.table(),
                Rendezvous::build(&wanted, size).table(),
                "step {step}"
            );
            current = wanted;
        }
        assert!(
            incremental > 200,
            "{incremental} of 300 changes incremental"
        );
    }

    /// What the control plane calls: the memo gives the same tables as
    /// building them, function by function.
    #[test]
    fn memo_tables_are_the_built_ones() {
        let all = members(30);
        let size = table_size(30);
        for id in [70_001u32, 70_002] {
            let table = |m: &[Member]| HashTables::with_table(id, m, size, |t| t.to_vec());
            assert_eq!(table(&all[..29]), hash_table(&all[..29], size));
            assert_eq!(table(&all), hash_table(&all, size));
            assert_eq!(table(&all[1..]), hash_table(&all[1..], size));
            HashTables::forget(id);
        }
    }
}
