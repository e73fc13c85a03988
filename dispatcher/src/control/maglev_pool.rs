//! The MAGLEV pool's allocator: which chunks of MAGLEV hold which hash
//! function's table.
//!
//! A function with the hash policy holds one *extent*: both generations of
//! its table side by side, a power of two of chunks long (tables are
//! powers of two, `Geometry::maglev_size_for`). Extents are allocated
//! buddy-style (Knuth's buddy system, as in the kernel's page allocator):
//! every extent is aligned to its length, so freed neighbours merge back
//! and a pool of small tables can later hold a large one.
//!
//! The maps are the only record (the CLI, the daemon and a restarted
//! daemon share them), so the allocator keeps no state of its own between
//! changes: it is rebuilt from the extents the FUNCTIONS entries name.

use std::collections::BTreeSet;

/// Free extents of a pool of `len` chunks, by order (an extent of order
/// `k` is `1 << k` chunks long and starts at a multiple of that).
#[derive(Debug)]
pub struct MaglevPool {
    free: Vec<BTreeSet<u32>>,
}

impl MaglevPool {
    /// The pool of `len` chunks with `used` extents (first chunk, chunks:
    /// powers of two aligned to their length, not overlapping) taken.
    pub fn new(len: u32, used: impl IntoIterator<Item = (u32, u32)>) -> MaglevPool {
        let mut used: Vec<(u32, u32)> = used.into_iter().collect();
        used.sort_unstable();
        // Orders 0 to 32: every length a u32 pool can have.
        let mut pool = MaglevPool {
            free: vec![BTreeSet::new(); 33],
        };
        // Cover the pool with the largest aligned blocks that fit (a pool
        // need not be a power of two long), then split them around the
        // used extents.
        let mut start = 0u64;
        while start < len as u64 {
            let mut order = 32;
            while !start.is_multiple_of(1u64 << order) || start + (1u64 << order) > len as u64 {
                order -= 1;
            }
            pool.add_free(start as u32, order, &used);
            start += 1u64 << order;
        }
        pool
    }

    /// Frees what of block (`start`, order) no used extent overlaps.
    fn add_free(&mut self, start: u32, order: u32, used: &[(u32, u32)]) {
        let end = start as u64 + (1u64 << order);
        // Extents are disjoint and sorted, so the last one starting
        // before the block's end has the greatest end of those.
        let last = used[..used.partition_point(|&(s, _)| (s as u64) < end)].last();
        match last {
            Some(&(s, l)) if s as u64 + l as u64 > start as u64 => {
                // Overlapped: used whole, or split around what is used.
                if (s, l as u64) != (start, 1u64 << order) && order > 0 {
                    let half = 1u32 << (order - 1);
                    self.add_free(start, order - 1, used);
                    self.add_free(start + half, order - 1, used);
                }
            }
            _ => {
                self.free[order as usize].insert(start);
            }
        }
    }

    /// Takes an extent of `len` chunks (a power of two): the lowest of the
    /// smallest free blocks that hold it, split down to it.
    pub fn take(&mut self, len: u32) -> Option<u32> {
        debug_assert!(len.is_power_of_two());
        let want = len.trailing_zeros();
        let order = (want..=32).find(|&k| !self.free[k as usize].is_empty())?;
        let start = self.free[order as usize].pop_first()?;
        for k in (want..order).rev() {
            self.free[k as usize].insert(start + (1 << k));
        }
        Some(start)
    }

    /// Returns extent (`start`, `len` chunks), merging it with its free
    /// buddies.
    pub fn give_back(&mut self, start: u32, len: u32) {
        let (mut start, mut order) = (start, len.trailing_zeros());
        while order < 32 {
            let buddy = start ^ (1 << order);
            if !self.free[order as usize].remove(&buddy) {
                break;
            }
            start = start.min(buddy);
            order += 1;
        }
        self.free[order as usize].insert(start);
    }

    /// Free chunks in all.
    pub fn free_chunks(&self) -> u64 {
        self.free
            .iter()
            .enumerate()
            .map(|(k, starts)| starts.len() as u64 * (1u64 << k))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_are_aligned_disjoint_and_fill_the_pool() {
        // 100 chunks: not a power of two.
        let mut pool = MaglevPool::new(100, []);
        let mut taken = Vec::new();
        while let Some(s) = pool.take(8) {
            assert_eq!(s % 8, 0);
            taken.push(s);
        }
        assert_eq!(taken.len(), 12, "{taken:?}");
        assert!(taken.iter().all(|s| s + 8 <= 100));
        assert_eq!(pool.free_chunks(), 4);
        assert_eq!(pool.take(4), Some(96));
        assert_eq!(pool.take(2), None);
    }

    #[test]
    fn freed_buddies_merge_into_a_larger_extent() {
        let mut pool = MaglevPool::new(64, []);
        let small: Vec<u32> = (0..32).map(|_| pool.take(2).unwrap()).collect();
        assert_eq!(pool.take(2), None);
        for s in &small {
            pool.give_back(*s, 2);
        }
        assert_eq!(pool.take(64), Some(0));
    }

    #[test]
    fn a_pool_rebuilt_from_its_extents_gives_the_same_free_space() {
        let mut pool = MaglevPool::new(1000, []);
        let mut used = Vec::new();
        for len in [2, 8, 2, 32, 2, 128, 8, 2] {
            used.push((pool.take(len).unwrap(), len));
        }
        pool.give_back(used[1].0, used[1].1);
        used.remove(1);
        let rebuilt = MaglevPool::new(1000, used.iter().copied());
        assert_eq!(rebuilt.free_chunks(), pool.free_chunks());
        assert_eq!(rebuilt.free_chunks(), 1000 - (2 + 2 + 32 + 2 + 128 + 8 + 2));
        // Every free block of the rebuilt pool is clear of the used ones.
        for (k, starts) in rebuilt.free.iter().enumerate() {
            for &s in starts {
                let e = s + (1 << k);
                assert!(used.iter().all(|&(u, l)| u + l <= s || u >= e), "{s}+{k}");
                assert!(e <= 1000);
            }
        }
    }
}
