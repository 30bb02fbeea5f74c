//! [`Devices`]: one cache and one pool of host threads per device, and the way a multi-GPU
//! call runs on all of them at once, each failure named by its device.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::batch::check_ids;
use crate::cache::caught::panic_message;
use crate::cache::{CacheConfig, CacheStats, EmbeddingCache};
use crate::error::{HotrowError, Result};
use crate::gpu::{Embeddings, GpuContext};
use crate::table::RowSource;

/// One cache per device (over `make(d)`, its view of the shared source), the shared
/// table's row count, and the way a call runs on all of them.
pub(super) struct Devices<R: RowSource> {
    pub(super) caches: Vec<EmbeddingCache<R>>,
    pub(super) rows: usize,
    /// Each device's host threads (its share of rayon's): a device's slot-map partitions
    /// and row copies run on its own pool, so the devices' host work does not interleave
    /// on one pool.
    pub(super) pools: Vec<rayon::ThreadPool>,
}

impl<R: RowSource> Devices<R> {
    pub(super) fn new(
        contexts: &[GpuContext],
        rows: usize,
        config: CacheConfig,
        make: impl Fn(usize) -> R,
    ) -> Result<Self> {
        if contexts.is_empty() {
            return Err(HotrowError::InvalidArgument(
                "a multi-GPU cache needs at least one GpuContext".into(),
            ));
        }
        if config.training.is_some() {
            return Err(HotrowError::InvalidArgument(
                "training a multi-GPU cache is not built yet".into(),
            ));
        }
        if rows == 0 {
            return Err(HotrowError::InvalidArgument(
                "row source must have rows and dim >= 1 (got 0 rows)".into(),
            ));
        }
        for (i, a) in contexts.iter().enumerate() {
            if let Some(j) = contexts[i + 1..].iter().position(|b| a.same_as(b)) {
                return Err(HotrowError::InvalidArgument(format!(
                    "contexts {i} and {} share one device (open one context per device)",
                    i + 1 + j
                )));
            }
        }
        let threads = (rayon::current_num_threads() / contexts.len()).max(1);
        // The default partitions follow the threads that resolve them: the device's pool.
        let partitions = config.partitions_for(threads);
        let config = config.partitions(partitions);
        let caches = contexts
            .iter()
            .enumerate()
            .map(|(d, ctx)| {
                EmbeddingCache::new(ctx, make(d), config.clone()).map_err(|e| on_device(d, ctx, e))
            })
            .collect::<Result<_>>()?;
        let pools = (0..contexts.len())
            .map(|d| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(move |i| format!("hotrow-device{d}-{i}"))
                    .build()
                    .map_err(|e| HotrowError::InvalidArgument(format!("host threads: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            caches,
            rows,
            pools,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.caches.len()
    }

    pub(super) fn ctx(&self, d: usize) -> &GpuContext {
        self.caches[d].context()
    }

    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    pub(super) fn dim(&self) -> usize {
        self.caches[0].dim()
    }

    /// An empty output on device `d` (its failure names the device).
    pub(super) fn output(&self, d: usize) -> Result<Embeddings> {
        Embeddings::new(self.ctx(d), 0, self.dim()).map_err(|e| on_device(d, self.ctx(d), e))
    }

    /// `ForeignContext` unless `out` is of device `d`.
    pub(super) fn check_output(&self, d: usize, out: &Embeddings) -> Result<()> {
        self.ctx(d)
            .check_same(out.context(), "output Embeddings (of the device named)")
    }

    /// `InvalidArgument` unless `d` names a device.
    pub(super) fn check_device(&self, d: usize) -> Result<()> {
        if d >= self.len() {
            return Err(HotrowError::InvalidArgument(format!(
                "device {d} of a multi-GPU cache of {}",
                self.len()
            )));
        }
        Ok(())
    }

    /// Runs `job` on every device that has one, each on its own pool, at once, and returns
    /// each device's result. A device that fails (or whose
    /// thread panics) fails the call: the lowest such device's error, as
    /// [`HotrowError::OnDevice`].
    pub(super) fn run<J: Send, T: Send>(
        &mut self,
        jobs: Vec<Option<J>>,
        job: impl Fn(&mut EmbeddingCache<R>, J) -> Result<T> + Sync,
    ) -> Result<Vec<Option<T>>> {
        let job = &job;
        let mut results: Vec<Result<Option<T>>> = (0..self.len()).map(|_| Ok(None)).collect();
        // Device d's job runs on its own pool (the first device's on the calling thread,
        // inside its pool), all at once; a panic is caught where it happens.
        let tasks: Vec<_> = self
            .caches
            .iter_mut()
            .zip(jobs)
            .zip(results.iter_mut())
            .map(|((cache, j), slot)| {
                move || {
                    let Some(j) = j else { return };
                    *slot = match catch_unwind(AssertUnwindSafe(|| job(cache, j))) {
                        Ok(r) => r.map(Some),
                        Err(p) => Err(HotrowError::Gpu(format!(
                            "the thread driving this device panicked: {}",
                            panic_message(p.as_ref())
                        ))),
                    };
                }
            })
            .collect();
        on_pools(&self.pools, tasks);
        results
            .into_iter()
            .enumerate()
            .map(|(d, r)| r.map_err(|e| on_device(d, self.ctx(d), e)))
            .collect()
    }

    pub(super) fn stats(&self) -> CacheStats {
        let mut all = CacheStats::default();
        for c in &self.caches {
            all += &c.stats();
        }
        all
    }

    /// Preloads `ids`, each on the device (and as the id) `route` gives, or on every
    /// device as it is (`None`).
    pub(super) fn preload(
        &mut self,
        ids: &[u32],
        route: impl Fn(u32) -> Option<(usize, u32)>,
    ) -> Result<()> {
        check_ids(ids, self.rows())?;
        let mut parts = vec![Vec::new(); self.len()];
        for &id in ids {
            match route(id) {
                Some((d, local)) => parts[d].push(local),
                None => parts.iter_mut().for_each(|p| p.push(id)),
            }
        }
        let jobs = parts
            .into_iter()
            .map(|p| (!p.is_empty()).then_some(p))
            .collect();
        self.run(jobs, |cache, ids| cache.preload(&ids))?;
        Ok(())
    }
}

/// Runs `tasks[d]` on `pools[d]`, all at once: the last task is spawned into its pool's
/// scope, the others recursively, the first runs inside its pool from the calling thread;
/// returns when all are done. (No thread is started per call.)
pub(super) fn on_pools<'t, F: FnOnce() + Send + 't>(
    pools: &[rayon::ThreadPool],
    mut tasks: Vec<F>,
) {
    let Some(last) = tasks.pop() else { return };
    let d = tasks.len();
    if d == 0 {
        pools[0].install(last);
        return;
    }
    pools[d].in_place_scope(|s| {
        s.spawn(move |_| last());
        on_pools(&pools[..d], tasks);
    });
}

pub(super) fn on_device(d: usize, ctx: &GpuContext, e: HotrowError) -> HotrowError {
    HotrowError::OnDevice {
        device: d,
        adapter: ctx.adapter().name.clone(),
        source: Box::new(e),
    }
}

/// Contiguous, balanced shares of `n` positions over `parts` devices.
pub(super) fn split(n: usize, parts: usize) -> Vec<Range<usize>> {
    (0..parts)
        .map(|d| n * d / parts..n * (d + 1) / parts)
        .collect()
}

/// The ids, rebased offsets and weights of bags `bags` of a checked bags call.
pub(super) fn bag_range<'a>(
    ids: &'a [u32],
    offsets: &[u32],
    weights: Option<&'a [f32]>,
    bags: Range<usize>,
) -> (&'a [u32], Vec<u32>, Option<&'a [f32]>) {
    let end_of = |b: usize| offsets.get(b).map_or(ids.len(), |&o| o as usize);
    let (lo, hi) = (end_of(bags.start), end_of(bags.end));
    let rebased = offsets[bags].iter().map(|&o| o - lo as u32).collect();
    (&ids[lo..hi], rebased, weights.map(|w| &w[lo..hi]))
}
