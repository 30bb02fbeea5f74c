//! [`HostTier`]: a bounded host-memory tier of rows in front of a slower row source (a
//! remote store, a file on a slow disk), so the chain is GPU cache -> host tier -> source.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lru::LruCache;

use super::RowSource;
use crate::error::{HotrowError, Result};

/// Rows served so far by a [`HostTier`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierStats {
    /// `read_rows` calls.
    pub calls: u64,
    /// Rows asked for.
    pub rows_requested: u64,
    /// Rows served from the host tier.
    pub host_hits: u64,
    /// Rows read from the source behind it.
    pub source_rows: u64,
    /// Calls that went to the source (one per tier call with a miss).
    pub source_calls: u64,
}

/// The tier's rows: an exact LRU of ids over a fixed arena of `capacity` rows.
struct Rows {
    order: LruCache<u32, u32>,
    arena: Vec<f32>,
    /// Arena slots never used yet.
    fresh: u32,
}

/// A bounded host-memory cache of rows (exact LRU, `capacity` rows) in front of `source`.
/// A call copies the rows it holds and reads the rest from `source` in **one** call, then
/// keeps them (evicting the least recently used). A failing source fails the call and
/// the tier keeps none of its rows. It is itself a [`RowSource`], so an
/// [`crate::EmbeddingCache`] over it makes the chain GPU slots -> host tier -> source.
///
/// ```
/// # fn main() -> Result<(), hotrow::HotrowError> {
/// use hotrow::{HostTable, HostTier, RowSource};
/// let data: Vec<f32> = (0..100 * 4).map(|i| i as f32).collect();
/// let tier = HostTier::new(HostTable::borrowed(&data, 4)?, 10)?;
/// let mut out = vec![0.0; 2 * 4];
/// tier.read_rows(&[7, 3], &mut out)?;     // both from the source
/// tier.read_rows(&[3, 9], &mut out)?;     // 3 from the tier
/// assert_eq!(&out[..4], &data[12..16]);
/// assert_eq!(tier.stats().host_hits, 1);
/// # Ok(()) }
/// ```
pub struct HostTier<S: RowSource> {
    source: S,
    capacity: usize,
    rows: Mutex<Rows>,
    calls: AtomicU64,
    requested: AtomicU64,
    hits: AtomicU64,
    source_rows: AtomicU64,
    source_calls: AtomicU64,
}

impl<S: RowSource> std::fmt::Debug for HostTier<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTier")
            .field("capacity", &self.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

impl<S: RowSource> HostTier<S> {
    /// A tier of `capacity` rows (at least 1; the arena is allocated as rows arrive,
    /// up to `capacity x dim` f32) in front of `source`.
    pub fn new(source: S, capacity: usize) -> Result<Self> {
        let cap = std::num::NonZeroUsize::new(capacity).ok_or_else(|| {
            HotrowError::InvalidArgument("a host tier needs room for at least one row".into())
        })?;
        if capacity > u32::MAX as usize || capacity.checked_mul(source.dim()).is_none() {
            return Err(HotrowError::InvalidArgument(format!(
                "host tier of {capacity} rows of {} values",
                source.dim()
            )));
        }
        Ok(Self {
            capacity,
            rows: Mutex::new(Rows {
                order: LruCache::new(cap),
                arena: Vec::new(),
                fresh: 0,
            }),
            source,
            calls: AtomicU64::new(0),
            requested: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            source_rows: AtomicU64::new(0),
            source_calls: AtomicU64::new(0),
        })
    }

    /// The source behind the tier.
    pub fn source(&self) -> &S {
        &self.source
    }

    /// Rows the tier may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rows it holds now.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// Whether it holds no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters since it was made.
    pub fn stats(&self) -> TierStats {
        TierStats {
            calls: self.calls.load(Ordering::Relaxed),
            rows_requested: self.requested.load(Ordering::Relaxed),
            host_hits: self.hits.load(Ordering::Relaxed),
            source_rows: self.source_rows.load(Ordering::Relaxed),
            source_calls: self.source_calls.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Rows> {
        // A panic while holding the lock leaves the LRU and arena consistent (every update
        // writes the arena row before the id enters the order), so the state is usable.
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S: RowSource> RowSource for HostTier<S> {
    fn rows(&self) -> usize {
        self.source.rows()
    }

    fn dim(&self) -> usize {
        self.source.dim()
    }

    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        let dim = self.dim();
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.requested
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        // Rows the tier holds, copied under the lock; the rest noted by position.
        let mut missing: Vec<(usize, u32)> = Vec::new();
        {
            let mut rows = self.lock();
            let Rows { order, arena, .. } = &mut *rows;
            for (k, &id) in ids.iter().enumerate() {
                match order.get(&id) {
                    Some(&slot) => {
                        let s = slot as usize * dim;
                        out[k * dim..(k + 1) * dim].copy_from_slice(&arena[s..s + dim]);
                    }
                    None => missing.push((k, id)),
                }
            }
        }
        self.hits
            .fetch_add((ids.len() - missing.len()) as u64, Ordering::Relaxed);
        if missing.is_empty() {
            return Ok(());
        }
        // One call to the source for all of them, outside the lock (it may be slow).
        let miss_ids: Vec<u32> = missing.iter().map(|&(_, id)| id).collect();
        let mut fetched = vec![0.0f32; miss_ids.len() * dim];
        self.source_calls.fetch_add(1, Ordering::Relaxed);
        self.source.read_rows(&miss_ids, &mut fetched)?;
        self.source_rows
            .fetch_add(miss_ids.len() as u64, Ordering::Relaxed);
        let mut rows = self.lock();
        for (&(k, id), row) in missing.iter().zip(fetched.chunks_exact(dim)) {
            out[k * dim..(k + 1) * dim].copy_from_slice(row);
            let Rows {
                order,
                arena,
                fresh,
            } = &mut *rows;
            if order.contains(&id) {
                continue; // another call brought it meanwhile
            }
            let slot = if (*fresh as usize) < self.capacity {
                *fresh += 1;
                arena.resize(*fresh as usize * dim, 0.0);
                *fresh - 1
            } else {
                match order.pop_lru() {
                    Some((_, slot)) => slot,
                    None => continue,
                }
            };
            let s = slot as usize * dim;
            arena[s..s + dim].copy_from_slice(row);
            order.put(id, slot);
        }
        Ok(())
    }

    fn remote(&self) -> bool {
        self.source.remote()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::HostTable;
    use std::sync::atomic::AtomicBool;

    /// A table that fails while `fail` is set.
    struct Flaky<'a> {
        table: HostTable<'a>,
        fail: AtomicBool,
    }

    impl RowSource for Flaky<'_> {
        fn rows(&self) -> usize {
            self.table.rows()
        }
        fn dim(&self) -> usize {
            self.table.dim()
        }
        fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(HotrowError::RowSource("flaky".into()));
            }
            self.table.read_rows(ids, out)
        }
    }

    #[test]
    fn serves_right_rows_keeps_the_most_recent_and_nothing_from_failures() {
        let (rows, dim, cap) = (200usize, 3usize, 16usize);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let data: Vec<f32> = (0..rows * dim)
            .map(|_| (next() % 1000) as f32 - 500.5)
            .collect();
        let tier = HostTier::new(
            Flaky {
                table: HostTable::borrowed(&data, dim).unwrap(),
                fail: AtomicBool::new(false),
            },
            cap,
        )
        .unwrap();
        // model: ids most recent last
        let mut model: Vec<u32> = Vec::new();
        for round in 0..300 {
            let n = 1 + (next() % 9) as usize;
            let ids: Vec<u32> = (0..n).map(|_| (next() % 40) as u32).collect();
            let fail = round % 17 == 5;
            tier.source().fail.store(fail, Ordering::SeqCst);
            let mut out = vec![f32::NAN; n * dim];
            let before = tier.stats();
            let r = tier.read_rows(&ids, &mut out);
            // The tier's order: its hits touched in batch order, then its misses kept in
            // batch order (a failed call keeps none).
            let pre = model.clone();
            for id in &ids {
                if pre.contains(id) {
                    let p = model.iter().position(|m| m == id).unwrap();
                    let id = model.remove(p);
                    model.push(id);
                }
            }
            if fail && !ids.iter().all(|id| pre.contains(id)) {
                assert!(r.is_err(), "seed {seed}");
            } else {
                r.unwrap();
                for (k, &id) in ids.iter().enumerate() {
                    let want = &data[id as usize * dim..(id as usize + 1) * dim];
                    assert_eq!(&out[k * dim..(k + 1) * dim], want, "seed {seed}");
                }
                let hits = ids.iter().filter(|id| pre.contains(id)).count() as u64;
                assert_eq!(
                    tier.stats().host_hits - before.host_hits,
                    hits,
                    "seed {seed}"
                );
                for &id in &ids {
                    if !pre.contains(&id) && !model.contains(&id) {
                        model.push(id);
                        if model.len() > cap {
                            model.remove(0);
                        }
                    }
                }
            }
            assert!(tier.len() <= cap);
            let mut held: Vec<u32> = tier.lock().order.iter().map(|(&id, _)| id).collect();
            let mut want = model.clone();
            held.sort_unstable();
            want.sort_unstable();
            assert_eq!(held, want, "seed {seed} round {round}");
        }
        assert!(HostTier::new(HostTable::borrowed(&data, dim).unwrap(), 0).is_err());
    }
}
