//! The selection tables user space computes for the data plane, so that no
//! policy scans workers per packet:
//!
//! - the *ring*: `ring_size` slots in smooth weighted round-robin order
//!   (nginx's algorithm), walked by round-robin and sampled by p2c;
//! - the *Maglev table* (Eisenbud et al., NSDI'16): `maglev_size` slots
//!   where every worker fills positions in the order of its own permutation,
//!   in proportion to its weight, so that adding or removing one worker
//!   moves only about 1/N of the keys;
//! - the *least-loaded candidates*: the LL_CANDIDATES least loaded workers.

use dispatcher_common::maps::LL_CANDIDATES;

/// An up worker as the tables see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub slot: u8,
    pub weight: u16,
    /// A stable name (the worker's address and port): its Maglev
    /// permutation depends only on this, not on the slot or the others.
    pub name: String,
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

/// The Maglev lookup table over `members`, `size` long (a power of two).
/// Weighted: in every round each member claims `weight` positions.
///
/// The paper takes a prime length so that any skip visits every position;
/// here the length is a power of two (the data plane indexes by a mask, as
/// the NFP has no modulo) and skips are odd, which visits every position
/// just the same (an odd skip is coprime with a power of two).
pub fn maglev(members: &[Member], size: u32) -> Vec<u8> {
    debug_assert!(size.is_power_of_two());
    let mut table = vec![u8::MAX; size as usize];
    if members.is_empty() {
        table.fill(0);
        return table;
    }
    // Positions wrap by a mask (the length is a power of two): a 64-bit
    // modulo per probe was most of a rebuild's time.
    let mask = size as u64 - 1;
    let mut perms: Vec<(u64, u64, u64)> = members
        .iter()
        .map(|w| {
            let offset = fnv1a(0x5eed_0001, w.name.as_bytes()) & mask;
            let skip = (fnv1a(0x5eed_0002, w.name.as_bytes()) & mask) | 1;
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
    fn maglev_size(n: u8) -> u32 {
        Geometry::HOST.maglev_size_for(n as u32)
    }

    fn members(n: u8) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                slot: i,
                weight: 1,
                name: format!("10.0.{}.{}:9000", i / 200, i % 200 + 1),
            })
            .collect()
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

    /// Removing or adding one of N workers moves about 1/N of the keys: the
    /// Maglev property the hash policy relies on, at the table length a
    /// function of N workers has (`Geometry::maglev_size_for`; a change
    /// that crosses a length remaps instead, README). Maglev trades some
    /// extra movement for balance, growing with N²/M; the lengths keep
    /// M >= 4N² so that it stays under 1.75x the ideal. The test prints
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
            grown.push(Member {
                slot: n,
                weight: 1,
                name: "10.9.9.9:9000".into(),
            });
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
}
