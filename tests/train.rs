//! Training (`CacheConfig::training`): the backward of lookups and bags fused with SGD or
//! row-wise Adagrad on the cached rows, changed rows written back to the table when they
//! leave the cache and to the row source at `flush`, checked against the f64 CPU trainer
//! (`hotrow::reference::Trainer`) through streams with evictions, repeats, empty bags and
//! batches bigger than the cache. Training runs on both paths: the host path on every
//! adapter (GL included: changed rows leave the slots through readback copies), the
//! GPU-driven path where the context has host-visible storage; each test runs on each
//! path this adapter has.

mod common;

use common::workload::{random_values, Rng};
use common::{assert_close_host, seed};
use hotrow::reference::{bags, bags_grads, lookup_grads, Trainer};
use hotrow::{
    BatchPath, CacheConfig, Capacity, EmbeddingCache, Embeddings, GpuContext, HostTable,
    HotrowError, Optimizer, Pooling, RowFormat, RowSource, WritableRowSource,
};

/// A host table whose writes fail while `fail` is set (a full disk, a lost connection).
struct Flaky {
    table: HostTable<'static>,
    fail: std::sync::atomic::AtomicBool,
}

impl RowSource for Flaky {
    fn rows(&self) -> usize {
        self.table.rows()
    }
    fn dim(&self) -> usize {
        self.table.dim()
    }
    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> hotrow::Result<()> {
        self.table.read_rows(ids, out)
    }
}

impl WritableRowSource for Flaky {
    fn write_rows(&mut self, ids: &[u32], rows: &[f32]) -> hotrow::Result<()> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(HotrowError::RowSource("the disk is full".into()));
        }
        self.table.write_rows(ids, rows)
    }
}

/// `got` (f32) within `tol * (1 + |want|)` of the f64 reference, each value; returns the
/// largest error seen.
fn assert_rows_near(got: &[f32], want: &[f64], tol: f64, what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f64;
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{what}: value {k}: got {g}, want {w} (error {err:e})"
        );
        worst = worst.max(err);
    }
    worst
}

/// Random bags over `rows` rows: 1-12 bags of 0-`max_len` ids, repeats within and across
/// bags (two thirds from the first `hot` rows, the rest from the whole table), PyTorch's
/// offsets.
fn random_bags(rng: &mut Rng, rows: usize, max_len: u64, hot: u64) -> (Vec<u32>, Vec<u32>) {
    let n_bags = 1 + rng.below(12) as usize;
    let mut ids = Vec::new();
    let mut offsets = Vec::with_capacity(n_bags);
    for _ in 0..n_bags {
        offsets.push(ids.len() as u32);
        for _ in 0..rng.below(max_len + 1) {
            let id = if rng.below(3) != 0 {
                rng.below(hot)
            } else {
                rng.below(rows as u64)
            };
            ids.push(id as u32);
        }
    }
    (ids, offsets)
}

/// A stream of forward + backward steps (lookups and every pooling, weighted and not) on a
/// cache much smaller than the table: every forward output against the reference
/// trainer's rows, a flush midway and at the end against its table, for both optimizers
/// and a row width read as vec4 and one read as scalars.
#[test]
fn training_matches_the_cpu_trainer_through_evictions() {
    let _serial = common::serial();
    for (ctx, path) in common::paths() {
        train_stream(ctx, path);
    }
}

fn train_stream(ctx: &GpuContext, path: BatchPath) {
    let mut rng = Rng::new(seed("train_stream"));
    let rows = 300;
    for dim in [8usize, 3] {
        for optimizer in [
            Optimizer::Sgd { lr: 0.2 },
            Optimizer::RowWiseAdagrad {
                lr: 0.05,
                eps: 1e-8,
            },
            Optimizer::Adam {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
        ] {
            let data = random_values(rows * dim, rng.next_u64());
            let mut reference = Trainer::new(&data, dim, optimizer);
            let table = HostTable::owned(data.clone(), dim).unwrap();
            let config = CacheConfig::default()
                .capacity(Capacity::Rows(40))
                .training(optimizer)
                .path(path);
            let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
            assert_eq!(cache.config().path, path);
            let mut worst = 0f64;
            for step in 0..200 {
                let what = format!("{path:?} {optimizer:?} dim {dim} step {step}");
                let current = reference.rows_f32();
                // every 6th step a lookup; now and then bags with more rows than the cache,
                // some of whose rows are read so often their gradients are summed in chunks
                let max_len = if step % 5 == 4 { 40 } else { 8 };
                let hot = if step % 10 == 9 { 2 } else { 20 };
                let (ids, offsets) = random_bags(&mut rng, rows, max_len, hot);
                if step % 6 == 5 {
                    let out = cache.lookup(&ids).unwrap().to_host().unwrap();
                    let want: Vec<f64> = ids
                        .iter()
                        .flat_map(|&id| reference.rows[id as usize * dim..][..dim].to_vec())
                        .collect();
                    assert_rows_near(&out, &want, 2e-5, &format!("{what}: lookup"));
                    let g = random_values(ids.len() * dim, rng.next_u64());
                    let grad = Embeddings::from_host(ctx, &g, dim).unwrap();
                    cache.backward_lookup(&ids, &grad).unwrap();
                    reference.apply(&lookup_grads(dim, &ids, &g));
                    continue;
                }
                let (pooling, mode) = match step % 3 {
                    0 => (Pooling::Sum, 0),
                    1 => (Pooling::Mean, 1),
                    _ => (Pooling::Max, 2),
                };
                let w: Vec<f32> = (0..ids.len()).map(|_| rng.unit() as f32 + 0.5).collect();
                let weights = (mode != 2 && step % 2 == 0).then_some(&w[..]);
                let out = cache
                    .lookup_bags(&ids, &offsets, pooling, weights)
                    .unwrap()
                    .to_host()
                    .unwrap();
                let want = bags(&current, dim, &ids, &offsets, mode, weights);
                let abs: Vec<f32> = current.iter().map(|v| v.abs()).collect();
                let abs_w: Option<Vec<f32>> = weights.map(|w| w.iter().map(|v| v.abs()).collect());
                let scale = bags(&abs, dim, &ids, &offsets, mode, abs_w.as_deref());
                assert_close_host(&out, &want, &scale, &format!("{what}: forward {pooling:?}"));
                let g = random_values(offsets.len() * dim, rng.next_u64());
                let grad = Embeddings::from_host(ctx, &g, dim).unwrap();
                cache
                    .backward_bags(&ids, &offsets, pooling, weights, &grad)
                    .unwrap();
                let grads = bags_grads(&reference.rows, dim, &ids, &offsets, mode, weights, &g);
                reference.apply(&grads);
                if step == 100 {
                    cache.flush().unwrap();
                    let table = cache.source().data().unwrap();
                    worst = worst.max(assert_rows_near(table, &reference.rows, 2e-5, &what));
                }
            }
            let written = cache.flush().unwrap();
            assert!(written > 0, "the last flush wrote nothing");
            let what = format!("{path:?} {optimizer:?} dim {dim}: flushed table");
            let table = cache.source().data().unwrap();
            worst = worst.max(assert_rows_near(table, &reference.rows, 2e-5, &what));
            eprintln!(
                "{path:?} {optimizer:?} dim {dim}: max abs error {worst:e} against the f64 trainer"
            );
            // nothing changed since: a second flush writes nothing
            assert_eq!(cache.flush().unwrap(), 0);
            let s = cache.stats();
            assert!(s.evictions > 0, "the stream evicted nothing");
        }
    }
}

/// A failing write keeps the rows: the flush says so, and the next one writes them.
#[test]
fn a_failed_flush_loses_nothing() {
    let _serial = common::serial();
    for (ctx, path) in common::paths() {
        failed_flush(ctx, path);
    }
}

fn failed_flush(ctx: &GpuContext, path: BatchPath) {
    let (rows, dim) = (100, 4);
    let data = random_values(rows * dim, seed("train_flaky"));
    let optimizer = Optimizer::Sgd { lr: 0.5 };
    let mut reference = Trainer::new(&data, dim, optimizer);
    let source = Flaky {
        table: HostTable::owned(data.clone(), dim).unwrap(),
        fail: true.into(),
    };
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(10))
        .training(optimizer)
        .path(path);
    let mut cache = EmbeddingCache::new(ctx, source, config).unwrap();
    for step in 0..6u32 {
        // 15 distinct rows a step through 10 slots: rows leave the cache changed
        let ids: Vec<u32> = (0..15).map(|k| (k * 7 + step * 3) % rows as u32).collect();
        let g = vec![0.25f32; ids.len() * dim];
        let grad = Embeddings::from_host(ctx, &g, dim).unwrap();
        cache.lookup(&ids).unwrap();
        cache.backward_lookup(&ids, &grad).unwrap();
        reference.apply(&lookup_grads(dim, &ids, &g));
    }
    let err = cache.flush().unwrap_err();
    assert!(matches!(err, HotrowError::RowSource(_)), "{err:?}");
    assert_eq!(
        cache.source().table.data().unwrap(),
        &data[..],
        "nothing written"
    );
    // more training after the failure, then a flush that works: everything arrives
    let ids = [1u32, 2, 3];
    let g = vec![1.0f32; 3 * dim];
    cache.lookup(&ids).unwrap();
    cache
        .backward_lookup(&ids, &Embeddings::from_host(ctx, &g, dim).unwrap())
        .unwrap();
    reference.apply(&lookup_grads(dim, &ids, &g));
    cache
        .source()
        .fail
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let written = cache.flush().unwrap();
    assert!(written >= 15, "{path:?}: {written} rows written");
    let table = cache.source().table.data().unwrap();
    let what = format!("{path:?}: after the retried flush");
    assert_rows_near(table, &reference.rows, 1e-6, &what);
}

/// What training refuses, with a typed error and nothing changed.
#[test]
fn training_refusals() {
    let _serial = common::serial();
    let data = random_values(50 * 4, seed("train_refusals"));
    let table = || HostTable::owned(data.clone(), 4).unwrap();
    let sgd = Optimizer::Sgd { lr: 0.1 };
    let plain = common::ctx();
    // bad optimizer settings, compact rows
    for config in [
        CacheConfig::default().training(Optimizer::Sgd { lr: f32::NAN }),
        CacheConfig::default().training(Optimizer::RowWiseAdagrad { lr: 0.1, eps: 0.0 }),
        CacheConfig::default().training(Optimizer::Adam {
            lr: 0.1,
            beta1: 1.0,
            beta2: 0.999,
            eps: 1e-8,
        }),
        CacheConfig::default().training(Optimizer::Adam {
            lr: 0.1,
            beta1: 0.9,
            beta2: f32::NAN,
            eps: 1e-8,
        }),
        CacheConfig::default()
            .training(sgd)
            .row_format(RowFormat::F16),
        CacheConfig::default()
            .training(sgd)
            .row_format(RowFormat::Int8),
    ] {
        let err = EmbeddingCache::new(plain, table(), config).unwrap_err();
        assert!(matches!(err, HotrowError::InvalidArgument(_)), "{err:?}");
    }
    // without host-visible storage (GL) a training cache takes the host path
    if !plain.adapter().host_visible_storage {
        let cache = EmbeddingCache::new(plain, table(), CacheConfig::default().training(sgd));
        assert_eq!(cache.unwrap().config().path, BatchPath::Host);
    }
    let ctx = common::ctx();
    // caches that cannot train: multi-GPU
    let rep = hotrow::ReplicatedCache::new(
        std::slice::from_ref(ctx),
        table(),
        CacheConfig::default().training(sgd),
    );
    assert!(matches!(rep.unwrap_err(), HotrowError::InvalidArgument(_)));
    // a cache that does not train
    let mut cache = EmbeddingCache::new(ctx, table(), CacheConfig::default()).unwrap();
    let grad = Embeddings::from_host(ctx, &[0.0; 4], 4).unwrap();
    let err = cache.backward_lookup(&[1], &grad).unwrap_err();
    assert!(matches!(err, HotrowError::InvalidArgument(_)), "{err:?}");
    assert_eq!(cache.flush().unwrap(), 0);
    let err = cache.set_train_steps(3).unwrap_err();
    assert!(matches!(err, HotrowError::InvalidArgument(_)), "{err:?}");
    assert_eq!(cache.train_steps(), 0);
    // bad gradients and ids: refused before any work, nothing written by a flush
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(8))
        .training(sgd);
    let mut cache = EmbeddingCache::new(ctx, table(), config).unwrap();
    let two = Embeddings::from_host(ctx, &[1.0; 8], 4).unwrap();
    let wide = Embeddings::from_host(ctx, &[1.0; 10], 5).unwrap();
    let other = common::ctx();
    let cases: Vec<(&str, hotrow::Result<()>)> = vec![
        ("rows", cache.backward_lookup(&[1, 2, 3], &two)),
        ("dim", cache.backward_lookup(&[1, 2], &wide)),
        ("id", cache.backward_lookup(&[1, 50], &two)),
        (
            "bags",
            cache.backward_bags(&[1, 2], &[0], Pooling::Sum, None, &two),
        ),
        (
            "offsets",
            cache.backward_bags(&[1, 2], &[1, 0], Pooling::Sum, None, &two),
        ),
        (
            "weights",
            cache.backward_bags(&[1, 2], &[0, 1], Pooling::Max, Some(&[1.0, 1.0]), &two),
        ),
    ];
    for (what, r) in cases {
        assert!(r.is_err(), "{what}: accepted");
    }
    if !other.same_as(ctx) {
        let foreign = Embeddings::from_host(other, &[1.0; 8], 4).unwrap();
        let err = cache.backward_lookup(&[1, 2], &foreign).unwrap_err();
        assert!(matches!(err, HotrowError::ForeignContext { .. }), "{err:?}");
    }
    // after a forward whose batch was grouped ahead (and checked), a backward whose input
    // differs from it by one bad value is still refused: its checks are skipped only for
    // the very batch the forward checked
    let w = [1.0f32, 1.0];
    cache
        .lookup_bags(&[1, 2], &[0, 1], Pooling::Sum, Some(&w))
        .unwrap();
    let bad = [
        cache.backward_bags(&[1, 50], &[0, 1], Pooling::Sum, Some(&w), &two),
        cache.backward_bags(&[1, 2], &[0, 3], Pooling::Sum, Some(&w), &two),
        cache.backward_bags(&[1, 2], &[0, 1], Pooling::Sum, Some(&[1.0, f32::NAN]), &two),
    ];
    let [id, offsets, weight] = bad.map(|r| r.unwrap_err());
    assert!(
        matches!(id, HotrowError::IdOutOfRange { position: 1, .. }),
        "{id:?}"
    );
    assert!(
        matches!(offsets, HotrowError::BadOffsets { .. }),
        "{offsets:?}"
    );
    assert!(
        matches!(weight, HotrowError::NonFinite { position: 1, .. }),
        "{weight:?}"
    );
    assert_eq!(cache.flush().unwrap(), 0, "a refused call changed rows");
    assert_eq!(cache.source().data().unwrap(), &data[..]);
    // empty input is served: nothing to do
    let none = Embeddings::from_host(ctx, &[], 4).unwrap();
    cache.backward_lookup(&[], &none).unwrap();
    assert_eq!(cache.flush().unwrap(), 0);
}

/// The backward of scores (host and GPU queries) and of combine, through a small cache,
/// against the f64 trainer, for both optimizers (SGD first: row-wise Adagrad is blind to a
/// gradient's scale on a row's first step); a flush at the end.
#[test]
fn products_train_their_rows() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("train_products"));
    let (rows, dim) = (120, 4);
    for (ctx, path) in common::paths() {
        for optimizer in [
            Optimizer::Sgd { lr: 0.1 },
            Optimizer::RowWiseAdagrad { lr: 0.1, eps: 1e-8 },
        ] {
            products_on(ctx, path, &mut rng, (rows, dim), optimizer);
        }
    }
}

fn products_on(
    ctx: &GpuContext,
    path: BatchPath,
    rng: &mut Rng,
    (rows, dim): (usize, usize),
    optimizer: Optimizer,
) {
    {
        let mut cache = train_products(ctx, path, rng, (rows, dim), optimizer);
        // a gradient of the wrong shape is refused
        let bad = Embeddings::from_host(ctx, &[0.0; 6], 3).unwrap();
        let q = [0.0f32; 8];
        let err = cache
            .backward_scores(hotrow::Queries::Host { data: &q, dim }, &[1, 2], &bad)
            .unwrap_err();
        assert!(
            matches!(
                err,
                HotrowError::LengthMismatch { .. } | HotrowError::DimMismatch { .. }
            ),
            "{err:?}"
        );
    }
}

/// Twelve steps of scores and combine backwards with `optimizer`, each followed by a
/// lookup of the whole table (more rows than the cache) against the f64 trainer, then a
/// flush against it; returns the cache.
fn train_products(
    ctx: &GpuContext,
    path: BatchPath,
    rng: &mut Rng,
    (rows, dim): (usize, usize),
    optimizer: Optimizer,
) -> EmbeddingCache<HostTable<'static>> {
    let data = random_values(rows * dim, rng.next_u64());
    let mut reference = Trainer::new(&data, dim, optimizer);
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(16))
        .training(optimizer)
        .path(path);
    let mut cache = EmbeddingCache::new(ctx, HostTable::owned(data, dim).unwrap(), config).unwrap();
    for step in 0..12 {
        let what = format!("{path:?} {optimizer:?} step {step}");
        let n = 1 + rng.below(30) as usize;
        let ids: Vec<u32> = (0..n).map(|_| rng.below(rows as u64) as u32).collect();
        let m = 1 + rng.below(5) as usize;
        if step % 2 == 0 {
            let q = random_values(m * dim, rng.next_u64());
            let g = random_values(m * n, rng.next_u64());
            let grad = Embeddings::from_host(ctx, &g, n).unwrap();
            let gpu_q = Embeddings::from_host(ctx, &q, dim).unwrap();
            let queries = if step % 4 == 0 {
                hotrow::Queries::Host { data: &q, dim }
            } else {
                hotrow::Queries::Gpu(&gpu_q)
            };
            cache.backward_scores(queries, &ids, &grad).unwrap();
            reference.apply(&hotrow::reference::scores_grads(dim, &q, &ids, &g));
        } else {
            let x = random_values(m * n, rng.next_u64());
            let g = random_values(m * dim, rng.next_u64());
            let grad = Embeddings::from_host(ctx, &g, dim).unwrap();
            cache.backward_combine(&x, &ids, &grad).unwrap();
            reference.apply(&hotrow::reference::combine_grads(dim, &x, &ids, &g));
        }
        // the trained rows as the cache serves them now
        let all: Vec<u32> = (0..rows as u32).collect();
        let out = cache.lookup(&all).unwrap().to_host().unwrap();
        assert_rows_near(&out, &reference.rows, 2e-5, &what);
    }
    cache.flush().unwrap();
    let table = cache.source().data().unwrap();
    assert_rows_near(
        table,
        &reference.rows,
        2e-5,
        &format!("{path:?} {optimizer:?}: flushed"),
    );
    cache
}

/// Training over a table in hotrow's own imported host memory (its rows read back by the
/// host directly at a flush, not through a mapping).
#[test]
fn training_on_imported_host_memory() {
    let _serial = common::serial();
    if common::host_storage_ctx().is_none() {
        return;
    }
    let ctx = common::host_storage_ctx_with(true);
    eprintln!("imported: {}", ctx.adapter().host_memory_import);
    let mut rng = Rng::new(seed("train_imported"));
    let (rows, dim) = (200, 8);
    let data = random_values(rows * dim, rng.next_u64());
    let optimizer = Optimizer::RowWiseAdagrad {
        lr: 0.05,
        eps: 1e-8,
    };
    let mut reference = Trainer::new(&data, dim, optimizer);
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(24))
        .training(optimizer);
    let mut cache =
        EmbeddingCache::new(&ctx, HostTable::owned(data, dim).unwrap(), config).unwrap();
    for _ in 0..10 {
        let (ids, offsets) = random_bags(&mut rng, rows, 10, 20);
        cache
            .lookup_bags(&ids, &offsets, Pooling::Sum, None)
            .unwrap();
        let g = random_values(offsets.len() * dim, rng.next_u64());
        let grad = Embeddings::from_host(&ctx, &g, dim).unwrap();
        cache
            .backward_bags(&ids, &offsets, Pooling::Sum, None, &grad)
            .unwrap();
        reference.apply(&bags_grads(
            &reference.rows,
            dim,
            &ids,
            &offsets,
            0,
            None,
            &g,
        ));
    }
    assert!(cache.flush().unwrap() > 0);
    let table = cache.source().data().unwrap();
    assert_rows_near(table, &reference.rows, 2e-5, "imported table, flushed");
}

/// A device lost mid-stream: the rows that left the cache before the loss are saved by the
/// flush (on the host path from the cache's own host memory, on the GPU-driven path from
/// hotrow's own table memory), which then reports the loss. Each path on a context of its
/// own (the loss is for good).
#[test]
fn a_lost_device_keeps_the_rows_written_back_before_it() {
    let _serial = common::serial();
    let base = common::ctx();
    let own = GpuContext::with_options(hotrow::GpuOptions {
        backends: Some(base.adapter().backend.into()),
        adapter_name: Some(base.adapter().name.clone()),
        ..Default::default()
    })
    .unwrap();
    lost_device(&own, BatchPath::Host);
    if common::host_storage_ctx().is_none() {
        return;
    }
    let ctx = common::host_storage_ctx_with(true);
    if !ctx.adapter().host_memory_import {
        eprintln!("skipped: no host memory import on {}", ctx.adapter());
        return;
    }
    lost_device(&ctx, BatchPath::Gpu);
}

fn lost_device(ctx: &GpuContext, path: BatchPath) {
    let (rows, dim) = (400, 4);
    let data = random_values(rows * dim, seed("train_lost"));
    let optimizer = Optimizer::Sgd { lr: 0.5 };
    let mut reference = Trainer::new(&data, dim, optimizer);
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(16))
        .training(optimizer)
        .path(path);
    let mut cache =
        EmbeddingCache::new(ctx, HostTable::owned(data.clone(), dim).unwrap(), config).unwrap();
    // train ten rows, then read 300 others: every trained row leaves the cache (written back)
    let trained: Vec<u32> = (0..10).map(|k| k * 3).collect();
    for step in 0..3 {
        let g = vec![0.1 * (step + 1) as f32; trained.len() * dim];
        cache.lookup(&trained).unwrap();
        let grad = Embeddings::from_host(ctx, &g, dim).unwrap();
        cache.backward_lookup(&trained, &grad).unwrap();
        reference.apply(&lookup_grads(dim, &trained, &g));
    }
    for k in 0..30u32 {
        let other: Vec<u32> = (0..10).map(|j| 100 + k * 10 + j).collect();
        cache.lookup(&other).unwrap();
    }
    // train one more row, still in the cache when the device goes
    let last = [1u32];
    cache.lookup(&last).unwrap();
    let grad = Embeddings::from_host(ctx, &[1.0; 4], dim).unwrap();
    cache.backward_lookup(&last, &grad).unwrap();
    ctx.wait_idle().unwrap();
    ctx.device_lost("the test pulled the card");
    let err = cache.flush().unwrap_err();
    let HotrowError::DeviceLost(msg) = err else {
        panic!("not a device loss: {err:?}");
    };
    assert!(msg.contains("wrote the 10 rows"), "{path:?}: {msg}");
    assert!(msg.contains("are lost"), "{path:?}: {msg}");
    if path == BatchPath::Host {
        assert!(msg.contains("(1 rows)"), "{path:?}: {msg}");
    }
    let table = cache.source().data().unwrap();
    for id in 0..rows {
        let got = &table[id * dim..][..dim];
        if trained.contains(&(id as u32)) {
            let want = &reference.rows[id * dim..][..dim];
            assert_rows_near(got, want, 1e-6, &format!("written-back row {id}"));
        } else {
            // untouched rows, and row 1 (lost with the device) as they were
            assert_eq!(got, &data[id * dim..][..dim], "row {id}");
        }
    }
}

/// A table bigger than one storage binding (two shards in host memory on lavapipe's 128
/// MiB limit): rows trained in both shards leave the cache, are written back into their
/// own shard, and flush to the source; rows not trained stay as they were.
#[test]
fn training_writes_back_across_table_shards() {
    let _serial = common::serial();
    let Some(ctx) = common::host_storage_ctx() else {
        return;
    };
    let dim = 64;
    // rows of 64 values and 4 words of state: two shards where the binding is 128 MiB
    let row_bytes = (dim as u64 + 4) * 4;
    let rows = (ctx.adapter().max_storage_buffer_binding_size / row_bytes + 1000) as usize;
    if rows > 1_000_000 {
        eprintln!("skipped: two table shards take {rows} rows here (a test for small bindings)");
        return;
    }
    let mut rng = Rng::new(seed("train_shards"));
    let data = random_values(rows * dim, rng.next_u64());
    // the rows trained: spread over the whole table (both shards), in a compact reference
    let trained: Vec<u32> = (0..120u64)
        .map(|k| (k * rows as u64 / 120) as u32 + 7)
        .collect();
    let compact: Vec<f32> = trained
        .iter()
        .flat_map(|&id| data[id as usize * dim..][..dim].to_vec())
        .collect();
    let optimizer = Optimizer::RowWiseAdagrad {
        lr: 0.05,
        eps: 1e-8,
    };
    let mut reference = Trainer::new(&compact, dim, optimizer);
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(32))
        .training(optimizer);
    let mut cache =
        EmbeddingCache::new(ctx, HostTable::owned(data.clone(), dim).unwrap(), config).unwrap();
    assert!(
        cache.memory().host_table > ctx.adapter().max_storage_buffer_binding_size,
        "one shard only"
    );
    for _ in 0..20 {
        let picks: Vec<u32> = (0..40)
            .map(|_| rng.below(trained.len() as u64) as u32)
            .collect();
        let ids: Vec<u32> = picks.iter().map(|&k| trained[k as usize]).collect();
        cache.lookup(&ids).unwrap();
        let g = random_values(ids.len() * dim, rng.next_u64());
        let grad = Embeddings::from_host(ctx, &g, dim).unwrap();
        cache.backward_lookup(&ids, &grad).unwrap();
        reference.apply(&lookup_grads(dim, &picks, &g));
    }
    cache.flush().unwrap();
    let table = cache.source().data().unwrap();
    for (k, &id) in trained.iter().enumerate() {
        let got = &table[id as usize * dim..][..dim];
        let want = &reference.rows[k * dim..][..dim];
        assert_rows_near(got, want, 2e-5, &format!("trained row {id}"));
    }
    for id in [0usize, rows / 2 + 1, rows - 1] {
        assert_eq!(
            &table[id * dim..][..dim],
            &data[id * dim..][..dim],
            "row {id}"
        );
    }
}

/// Whole-table lookups through a cache of exactly one step's rows, after every step: a
/// pass may evict a row it then loads again (the slot map pins a row only when it reaches
/// its position), so a changed row leaving and coming back in one pass must keep its
/// training. One and two slot-map partitions; on the host path also with resolution on
/// the GPU (`Resolution::Device`) and exact LRU.
#[test]
fn a_row_evicted_and_loaded_again_in_one_pass_keeps_its_training() {
    let _serial = common::serial();
    let (rows, dim) = (40usize, 4usize);
    let data = random_values(rows * dim, seed("train_reload"));
    let mut runs: Vec<(&GpuContext, BatchPath, usize, u8)> = Vec::new();
    for (ctx, path) in common::paths() {
        runs.extend([(ctx, path, 1, 0), (ctx, path, 2, 0)]);
        if path == BatchPath::Host {
            runs.extend([(ctx, path, 2, 1), (ctx, path, 2, 2)]);
        }
    }
    for (ctx, path, partitions, variant) in runs {
        {
            let optimizer = Optimizer::Sgd { lr: 1.0 };
            let mut config = CacheConfig::default()
                .capacity(Capacity::Rows(4))
                .training(optimizer)
                .path(path)
                .partitions(partitions);
            if variant == 1 {
                config = config.resolution(hotrow::Resolution::Device);
            } else if variant == 2 {
                config = config.policy(hotrow::EvictionPolicy::Lru);
            }
            let table = HostTable::owned(data.clone(), dim).unwrap();
            let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
            let mut reference = Trainer::new(&data, dim, optimizer);
            let mut rng = Rng::new(seed("train_reload_ids"));
            let all: Vec<u32> = (0..rows as u32).collect();
            for step in 0..30 {
                let n = 1 + step % 5;
                let ids: Vec<u32> = (0..n).map(|_| rng.below(rows as u64) as u32).collect();
                cache.lookup(&ids).unwrap();
                let g = random_values(ids.len() * dim, rng.next_u64());
                let grad = Embeddings::from_host(ctx, &g, dim).unwrap();
                cache.backward_lookup(&ids, &grad).unwrap();
                reference.apply(&lookup_grads(dim, &ids, &g));
                let out = cache.lookup(&all).unwrap().to_host().unwrap();
                let what = format!(
                    "{path:?} partitions {partitions} variant {variant} step {step} ids {ids:?}"
                );
                assert_rows_near(&out, &reference.rows, 1e-6, &what);
            }
            cache.flush().unwrap();
            let table = cache.source().data().unwrap();
            let what = format!("{path:?} partitions {partitions}: flushed");
            assert_rows_near(table, &reference.rows, 1e-6, &what);
        }
    }
}

/// Training into a `.npy` file opened writable (f32 and f16 files): flushed rows land in
/// the file (read again by a fresh open), a read-only file table and a file changed behind
/// the table's back are refused with typed errors, and the refusal keeps the rows for the
/// next flush.
#[test]
fn training_writes_into_a_memory_mapped_file() {
    let _serial = common::serial();
    let (rows, dim) = (60usize, 4usize);
    let data = random_values(rows * dim, seed("train_file"));
    let dir = tempfile::Builder::new()
        .prefix("hotrow-train-file")
        .tempdir()
        .unwrap();
    for (ctx, path) in common::paths() {
        for f16 in [false, true] {
            let file = dir.path().join(format!("{path:?}-{f16}.npy"));
            let stored: Vec<f32> = if f16 {
                let halves: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
                let t = HostTable::owned_f16(halves.clone(), dim).unwrap();
                t.save_npy(&file).unwrap();
                halves.iter().map(|h| h.to_f32()).collect()
            } else {
                HostTable::owned(data.clone(), dim)
                    .unwrap()
                    .save_npy(&file)
                    .unwrap();
                data.clone()
            };
            let optimizer = Optimizer::Sgd { lr: 0.5 };
            let config = CacheConfig::default()
                .capacity(Capacity::Rows(8))
                .training(optimizer)
                .path(path);
            // read-only: the flush is refused, and the rows stay for the next one
            let table = hotrow::FileTable::open_npy(&file).unwrap();
            let mut cache = EmbeddingCache::new(ctx, table, config.clone()).unwrap();
            let ids: Vec<u32> = (0..20).map(|k| (k * 7 % rows) as u32).collect();
            let g = random_values(ids.len() * dim, seed("train_file_grad"));
            cache.lookup(&ids).unwrap();
            let grad = Embeddings::from_host(ctx, &g, dim).unwrap();
            cache.backward_lookup(&ids, &grad).unwrap();
            let err = cache.flush().unwrap_err();
            assert!(matches!(err, HotrowError::InvalidArgument(_)), "{err:?}");
            drop(cache);
            // writable: everything reaches the file
            let table = hotrow::FileTable::open_npy(&file)
                .unwrap()
                .writable()
                .unwrap();
            let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
            cache.lookup(&ids).unwrap();
            cache.backward_lookup(&ids, &grad).unwrap();
            let written = cache.flush().unwrap();
            assert!(written >= 15, "{written} rows written");
            let mut once = Trainer::new(&stored, dim, optimizer);
            once.apply(&lookup_grads(dim, &ids, &g));
            let fresh = hotrow::FileTable::open_npy(&file).unwrap();
            let all: Vec<u32> = (0..rows as u32).collect();
            let mut got = vec![0f32; rows * dim];
            fresh.read_rows(&all, &mut got).unwrap();
            // f16 files round each written value once (half an f16 ulp)
            let tol = if f16 { 1e-3 } else { 1e-6 };
            let what = format!("{path:?} f16 {f16}: the file after the flush");
            assert_rows_near(&got, &once.rows, tol, &what);
            // the file changed behind the table's back: refused, rows kept
            cache.lookup(&ids).unwrap();
            cache.backward_lookup(&ids, &grad).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
            let mut bytes = std::fs::read(&file).unwrap();
            bytes.push(0);
            std::fs::write(&file, &bytes).unwrap();
            let err = cache.flush().unwrap_err();
            assert!(
                matches!(
                    err,
                    HotrowError::File {
                        problem: hotrow::FileProblem::Changed,
                        ..
                    }
                ),
                "{err:?}"
            );
        }
    }
}

/// One table's share of a step: ids, offsets, weights.
type TablePart = (Vec<u32>, Vec<u32>, Option<Vec<f32>>);

/// A table-batched cache trains every table: tables of two widths (one read as vec4, one
/// as scalars) sharing pools a fifth of their rows, steps of every pooling (weights on
/// some tables only), each step's output against the f64 trainers' tables and its
/// backward from a random gradient of the whole `B x width` output; then a flush writes
/// each table's rows into that table.
#[test]
fn a_table_batched_cache_trains_every_table() {
    let _serial = common::serial();
    let dims = [8usize, 3, 8, 3];
    let rows = [120usize, 40, 70, 200];
    let optimizers = [
        Optimizer::RowWiseAdagrad {
            lr: 0.05,
            eps: 1e-8,
        },
        Optimizer::Adam {
            lr: 0.02,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
        },
    ];
    for ((ctx, path), optimizer) in common::paths()
        .into_iter()
        .flat_map(|p| optimizers.map(|o| (p, o)))
    {
        let mut rng = Rng::new(seed("train_batched"));
        let data: Vec<Vec<f32>> = dims
            .iter()
            .zip(rows)
            .map(|(&d, r)| random_values(r * d, rng.next_u64()))
            .collect();
        let mut reference: Vec<Trainer> = data
            .iter()
            .zip(dims)
            .map(|(v, d)| Trainer::new(v, d, optimizer))
            .collect();
        let tables: Vec<HostTable<'static>> = data
            .iter()
            .zip(dims)
            .map(|(v, d)| HostTable::owned(v.clone(), d).unwrap())
            .collect();
        let config = CacheConfig::default()
            .capacity(Capacity::Fraction(0.2))
            .training(optimizer)
            .path(path);
        let mut cache = hotrow::TableBatchedCache::new(ctx, tables, config).unwrap();
        let width: usize = dims.iter().sum();
        for step in 0..40u64 {
            let what = format!("{path:?} {optimizer:?} step {step}");
            let n_bags = 1 + rng.below(6) as usize;
            let (pooling, mode) = match step % 3 {
                0 => (Pooling::Sum, 0),
                1 => (Pooling::Mean, 1),
                _ => (Pooling::Max, 2),
            };
            let mut parts: Vec<TablePart> = Vec::new();
            for (t, &r) in rows.iter().enumerate() {
                let mut ids = Vec::new();
                let mut offsets = Vec::new();
                for _ in 0..n_bags {
                    offsets.push(ids.len() as u32);
                    for _ in 0..rng.below(9) {
                        let hot = rng.below(2) == 0;
                        let id = if hot {
                            rng.below(10)
                        } else {
                            rng.below(r as u64)
                        };
                        ids.push(id as u32);
                    }
                }
                let weights = (mode != 2 && t % 2 == 0)
                    .then(|| (0..ids.len()).map(|_| rng.unit() as f32 + 0.5).collect());
                parts.push((ids, offsets, weights));
            }
            let batch: Vec<hotrow::TableBags<'_>> = parts
                .iter()
                .map(|(ids, offsets, w)| hotrow::TableBags {
                    ids,
                    offsets,
                    weights: w.as_deref(),
                })
                .collect();
            let out = cache
                .lookup_bags(&batch, pooling)
                .unwrap()
                .to_host()
                .unwrap();
            let g = random_values(n_bags * width, rng.next_u64());
            let grad = Embeddings::from_host(ctx, &g, width).unwrap();
            cache.backward_bags(&batch, pooling, &grad).unwrap();
            let mut col = 0;
            for (t, (ids, offsets, w)) in parts.iter().enumerate() {
                let d = dims[t];
                let current = reference[t].rows_f32();
                let want = bags(&current, d, ids, offsets, mode, w.as_deref());
                let got: Vec<f32> = (0..n_bags)
                    .flat_map(|b| out[b * width + col..][..d].to_vec())
                    .collect();
                assert_rows_near(&got, &want, 2e-5, &format!("{what}: table {t} forward"));
                let gt: Vec<f32> = (0..n_bags)
                    .flat_map(|b| g[b * width + col..][..d].to_vec())
                    .collect();
                let grads =
                    bags_grads(&reference[t].rows, d, ids, offsets, mode, w.as_deref(), &gt);
                // (Adam's t is the step's, shared by every table.)
                reference[t].steps = step;
                reference[t].apply(&grads);
                col += d;
            }
        }
        assert!(cache.flush().unwrap() > 0, "{path:?}: nothing flushed");
        for (t, table) in cache.sources().iter().enumerate() {
            let what = format!("{path:?} table {t}: flushed");
            assert_rows_near(table.data().unwrap(), &reference[t].rows, 2e-5, &what);
        }
        assert!(cache.stats().evictions > 0, "{path:?}: nothing evicted");
        assert_eq!(cache.flush().unwrap(), 0, "{path:?}: a second flush");
        // a gradient of the wrong shape is refused before any work
        let step = [
            hotrow::TableBags {
                ids: &[1],
                offsets: &[0],
                weights: None,
            },
            hotrow::TableBags {
                ids: &[1],
                offsets: &[0],
                weights: None,
            },
            hotrow::TableBags {
                ids: &[1],
                offsets: &[0],
                weights: None,
            },
            hotrow::TableBags {
                ids: &[1],
                offsets: &[0],
                weights: None,
            },
        ];
        let narrow = Embeddings::from_host(ctx, &vec![1.0; width - 1], width - 1).unwrap();
        let err = cache
            .backward_bags(&step, Pooling::Sum, &narrow)
            .unwrap_err();
        assert!(matches!(err, HotrowError::DimMismatch { .. }), "{err:?}");
        assert_eq!(
            cache.flush().unwrap(),
            0,
            "{path:?}: a refused step changed rows"
        );
    }
}

/// Optimizer state goes to the row source with the rows (`write_state`) and comes back
/// from it (`read_state`): row-wise Adagrad and Adam trained through one cache, flushed,
/// then resumed through a new cache over the same table (and over a table rebuilt from the
/// saved rows and state; Adam's step count carried over with `set_train_steps`) equals one
/// uninterrupted reference training. A source that keeps no state (the default) restarts
/// the state at zero, as the reference says.
#[test]
fn optimizer_state_travels_with_the_rows() {
    let _serial = common::serial();
    for optimizer in [
        Optimizer::RowWiseAdagrad { lr: 0.1, eps: 1e-8 },
        Optimizer::Adam {
            lr: 0.05,
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-8,
        },
    ] {
        state_travels(optimizer);
    }
}

fn state_travels(optimizer: Optimizer) {
    let (rows, dim) = (80usize, 4usize);
    let data = random_values(rows * dim, seed("train_state"));
    for (ctx, path) in common::paths() {
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(10))
            .training(optimizer)
            .path(path);
        let mut reference = Trainer::new(&data, dim, optimizer);
        let mut rng = Rng::new(seed("train_state_ids"));
        let train = |cache: &mut EmbeddingCache<HostTable<'static>>,
                     reference: &mut Trainer,
                     rng: &mut Rng| {
            for _ in 0..8 {
                let ids: Vec<u32> = (0..24).map(|_| rng.below(rows as u64) as u32).collect();
                cache.lookup(&ids).unwrap();
                let g = random_values(ids.len() * dim, rng.next_u64());
                let grad = Embeddings::from_host(ctx, &g, dim).unwrap();
                cache.backward_lookup(&ids, &grad).unwrap();
                reference.apply(&lookup_grads(dim, &ids, &g));
            }
        };
        let table = HostTable::owned(data.clone(), dim).unwrap();
        let mut cache = EmbeddingCache::new(ctx, table, config.clone()).unwrap();
        train(&mut cache, &mut reference, &mut rng);
        cache.flush().unwrap();
        let table = cache.into_source();
        let (per_row, state) = table.state().expect("the flush kept the state");
        assert_eq!(per_row, optimizer.state_per_row(dim));
        for (k, (&got, &want)) in state.iter().zip(&reference.state).enumerate() {
            let err = (got as f64 - want).abs();
            assert!(
                err <= 1e-5 * (1.0 + want.abs()),
                "{path:?} {optimizer:?}: row {} state {got} vs {want}",
                k / per_row
            );
        }
        // saved and rebuilt: the values and the state, as a user would store them
        let rebuilt = HostTable::owned(table.data().unwrap().to_vec(), dim)
            .unwrap()
            .with_state(per_row, state.to_vec())
            .unwrap();
        for table in [table, rebuilt] {
            let mut cache = EmbeddingCache::new(ctx, table, config.clone()).unwrap();
            assert_eq!(cache.train_steps(), 0);
            cache.set_train_steps(reference.steps).unwrap();
            let mut resumed = Trainer {
                rows: reference.rows.clone(),
                state: reference.state.clone(),
                dim,
                optimizer,
                steps: reference.steps,
            };
            let mut r = Rng::new(seed("train_state_resume"));
            train(&mut cache, &mut resumed, &mut r);
            cache.flush().unwrap();
            let what = format!("{path:?} {optimizer:?}: resumed training");
            assert_rows_near(cache.source().data().unwrap(), &resumed.rows, 2e-5, &what);
        }
        // a source keeping no state (the trait's default): the accumulators restart at 0
        let mut plain = Flaky {
            table: HostTable::owned(data.clone(), dim).unwrap(),
            fail: false.into(),
        };
        for round in 0..2 {
            let mut cache = EmbeddingCache::new(ctx, plain, config.clone()).unwrap();
            let values = cache.source().table.data().unwrap().to_vec();
            let mut fresh = Trainer::new(&values, dim, optimizer);
            let ids: Vec<u32> = (0..20).collect();
            let g = random_values(ids.len() * dim, seed("train_state_plain"));
            cache.lookup(&ids).unwrap();
            let grad = Embeddings::from_host(ctx, &g, dim).unwrap();
            cache.backward_lookup(&ids, &grad).unwrap();
            fresh.apply(&lookup_grads(dim, &ids, &g));
            cache.flush().unwrap();
            let what = format!("{path:?}: round {round} over a source without state");
            assert_rows_near(
                cache.source().table.data().unwrap(),
                &fresh.rows,
                2e-5,
                &what,
            );
            plain = cache.into_source();
        }
        let mut table = HostTable::owned(data.clone(), dim).unwrap();
        // a state of another shape is refused, nothing kept
        let err = table.write_state(&[1, 2], &[1.0; 3]).unwrap_err();
        assert!(matches!(err, HotrowError::LengthMismatch { .. }), "{err:?}");
        let err = HostTable::owned(data.clone(), dim)
            .unwrap()
            .with_state(1, vec![0.0; 5]);
        assert!(matches!(err, Err(HotrowError::LengthMismatch { .. })));
    }
}

/// Skewed batches of 40,000 ids (grouped in parallel shards on the host; the hottest rows
/// read thousands of times, their gradients summed in chunks) through a cache smaller than
/// a batch's distinct rows, for both optimizers: the flushed table against the reference.
#[test]
fn large_skewed_batches_train_like_the_reference() {
    let _serial = common::serial();
    let (rows, dim, bags_n, per_bag) = (3_000usize, 4usize, 1_000usize, 40usize);
    let mut rng = Rng::new(seed("train_large"));
    for (ctx, path) in common::paths() {
        for optimizer in [
            Optimizer::Sgd { lr: 0.05 },
            Optimizer::RowWiseAdagrad {
                lr: 0.05,
                eps: 1e-8,
            },
        ] {
            let data = random_values(rows * dim, rng.next_u64());
            let mut reference = Trainer::new(&data, dim, optimizer);
            let config = CacheConfig::default()
                .capacity(Capacity::Rows(300))
                .training(optimizer)
                .path(path);
            let table = HostTable::owned(data, dim).unwrap();
            let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
            let zipf = common::workload::ZipfIds::new(rows, 1.05, rng.next_u64());
            let offsets: Vec<u32> = (0..bags_n as u32).map(|b| b * per_bag as u32).collect();
            for step in 0..3 {
                let ids = zipf.batch(bags_n * per_bag, &mut rng);
                let w: Vec<f32> = (0..ids.len()).map(|_| rng.unit() as f32 + 0.5).collect();
                let g = random_values(bags_n * dim, rng.next_u64());
                weighted_sum_step(ctx, &mut cache, (&ids, &offsets, &w), &g);
                let grads = bags_grads(&reference.rows, dim, &ids, &offsets, 0, Some(&w), &g);
                reference.apply(&grads);
                let _ = step;
            }
            cache.flush().unwrap();
            let what = format!("{path:?} {optimizer:?}: flushed after large batches");
            let worst =
                assert_rows_near(cache.source().data().unwrap(), &reference.rows, 1e-4, &what);
            eprintln!("{what}: max abs error {worst:e}");
        }
    }
}

/// One training step of weighted sum bags: the forward, then the backward of gradient `g`
/// (one row per bag).
fn weighted_sum_step(
    ctx: &GpuContext,
    cache: &mut EmbeddingCache<HostTable<'static>>,
    (ids, offsets, w): (&[u32], &[u32], &[f32]),
    g: &[f32],
) {
    let grad = Embeddings::from_host(ctx, g, cache.dim()).unwrap();
    cache
        .lookup_bags(ids, offsets, Pooling::Sum, Some(w))
        .unwrap();
    cache
        .backward_bags(ids, offsets, Pooling::Sum, Some(w), &grad)
        .unwrap();
}

/// Distance in f32 steps (units in the last place) between `a` and `b`.
fn ulps(a: f32, b: f32) -> u64 {
    let key = |x: f32| {
        let i = x.to_bits() as i64;
        if i & (1 << 31) != 0 {
            (1i64 << 31) - i
        } else {
            i
        }
    };
    (key(a) - key(b)).unsigned_abs()
}

/// Row-wise Adagrad computes each step in double-f32 and rounds a row and its accumulator
/// once: after 60 steps of weighted sum bags over a few hot rows (hundreds of terms each,
/// with cancellation; the hottest summed in chunks), every flushed value is within 2 ulp
/// of a reference that computes each step in f64 and stores rows and accumulators in f32,
/// as the table does. (In f32 arithmetic, Kahan-compensated sums included, values drifted
/// tens of ulp from it, the most where a row came close to 0.)
#[test]
fn adagrad_rounds_each_row_once_per_step() {
    let _serial = common::serial();
    let (rows, dim, bags_n, per_bag) = (40usize, 16usize, 256usize, 8usize);
    let (lr, eps) = (0.05f32, 1e-8f32);
    let optimizer = Optimizer::RowWiseAdagrad { lr, eps };
    let mut rng = Rng::new(seed("train_rounding"));
    for (ctx, path) in common::paths() {
        let data = random_values(rows * dim, rng.next_u64());
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(rows))
            .training(optimizer)
            .path(path);
        let table = HostTable::owned(data.clone(), dim).unwrap();
        let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
        let (mut want, mut acc) = (data, vec![0f32; rows]);
        let offsets: Vec<u32> = (0..bags_n as u32).map(|b| b * per_bag as u32).collect();
        for _ in 0..60 {
            // row r drawn with weight ~1/(r + 1): row 0 about 500 of the 2,048 positions
            let ids: Vec<u32> = (0..bags_n * per_bag)
                .map(|_| ((rows as f64).powf(rng.unit()) - 1.0) as u32)
                .collect();
            let w: Vec<f32> = (0..ids.len()).map(|_| rng.unit() as f32).collect();
            let g: Vec<f32> = (0..bags_n * dim).map(|_| rng.unit() as f32 - 0.5).collect();
            weighted_sum_step(ctx, &mut cache, (&ids, &offsets, &w), &g);
            let mut sums = vec![0f64; rows * dim];
            let mut seen = vec![false; rows];
            for (j, &id) in ids.iter().enumerate() {
                let b = j / per_bag;
                seen[id as usize] = true;
                for c in 0..dim {
                    sums[id as usize * dim + c] += w[j] as f64 * g[b * dim + c] as f64;
                }
            }
            for r in (0..rows).filter(|&r| seen[r]) {
                let gr = &sums[r * dim..][..dim];
                let mean_sq = gr.iter().map(|v| v * v).sum::<f64>() / dim as f64;
                acc[r] = (acc[r] as f64 + mean_sq) as f32;
                let step = lr as f64 / (acc[r] as f64 + eps as f64).sqrt();
                for (x, gv) in want[r * dim..][..dim].iter_mut().zip(gr) {
                    *x = (*x as f64 - step * gv) as f32;
                }
            }
        }
        cache.flush().unwrap();
        let got = cache.source().data().unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| ulps(a, b))
            .max()
            .unwrap();
        let k = (0..got.len())
            .max_by_key(|&k| ulps(got[k], want[k]))
            .unwrap();
        let rel = got
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as f64 - b as f64).abs() / (b.abs() as f64).max(1e-3))
            .fold(0f64, f64::max);
        let same = got.iter().zip(&want).filter(|(a, b)| a == b).count();
        eprintln!(
            "{path:?}: worst {worst} ulp from the f32-stored reference (value {k}: {} against {}); max rel {rel:e}; {same} of {} equal",
            got[k], want[k], got.len()
        );
        assert!(
            worst <= 2,
            "{path:?}: a value {worst} ulp from the reference"
        );
    }
}

/// A training cache's forward groups its batch for the backward (beside its own work); a
/// backward of any other batch must group its own. Each step here runs a forward, then a
/// backward of a batch that differs from it in one thing (an id, an offset, a weight, the
/// pooling, weights or none, a lookup's batch for bags), or of the same batch twice, or a
/// backward with no forward before it; in a third of the rounds another call runs between
/// the forward and the backward (a preload, prefetch, scores or lookup of as many other
/// ids: the forward's slot list is stale then): the flushed table against the f64
/// trainer.
#[test]
fn a_backward_takes_the_forwards_grouping_and_slots_for_its_batch_alone() {
    let _serial = common::serial();
    for (ctx, path) in common::paths() {
        let mut rng = Rng::new(seed("grouped_ahead"));
        let (rows, dim) = (200usize, 4usize);
        let optimizer = Optimizer::RowWiseAdagrad { lr: 0.1, eps: 1e-8 };
        let data = random_values(rows * dim, rng.next_u64());
        let mut reference = Trainer::new(&data, dim, optimizer);
        let table = HostTable::owned(data, dim).unwrap();
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(64))
            .training(optimizer)
            .path(path);
        let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
        for step in 0..48 {
            let what = format!("{path:?} step {step}");
            let (ids, offsets) = loop {
                let b = random_bags(&mut rng, rows, 8, 30);
                if b.0.len() >= 2 && b.1.len() >= 2 {
                    break b;
                }
            };
            let w: Vec<f32> = (0..ids.len()).map(|_| rng.unit() as f32 + 0.5).collect();
            let (mut b_ids, mut b_offsets, mut b_w) = (ids.clone(), offsets.clone(), w.clone());
            let (mut pooling, mut b_pooling) = (Pooling::Sum, Pooling::Sum);
            let (mut weighted, mut b_weighted) = (true, true);
            let mut lookup_first = false;
            let mut twice = false;
            let mut forward = true;
            match step % 8 {
                0 => b_ids[rng.below(ids.len() as u64) as usize] ^= 1,
                1 => {
                    // (offsets stay ascending, the last at most the batch's length)
                    let last = b_offsets.len() - 1;
                    if b_offsets[last] > b_offsets[last - 1] {
                        b_offsets[last] -= 1;
                    } else if (b_offsets[last] as usize) < ids.len() {
                        b_offsets[last] += 1;
                    } else {
                        b_ids[0] ^= 1;
                    }
                }
                2 => b_w[rng.below(ids.len() as u64) as usize] += 0.25,
                3 => b_pooling = Pooling::Mean,
                4 => b_weighted = false,
                5 => lookup_first = true,
                6 => twice = true,
                _ => forward = false,
            }
            if step % 16 >= 8 {
                // the same changes, with a max forward (its argmax room in the grouping)
                pooling = Pooling::Max;
                weighted = false;
                if b_pooling == Pooling::Sum {
                    b_pooling = Pooling::Max;
                    b_weighted = false;
                }
            }
            if forward && lookup_first {
                cache.lookup(&ids).unwrap();
            } else if forward {
                let weights = weighted.then_some(&w[..]);
                cache.lookup_bags(&ids, &offsets, pooling, weights).unwrap();
            }
            if (step / 8) % 3 == 2 {
                // another pass between them: the forward's slots are stale, its rows
                // mostly evicted (a cache of 64 rows); as long as the batch, so that only
                // the op's serial tells the slot lists apart
                let other: Vec<u32> = (0..ids.len())
                    .map(|_| rng.below(rows as u64) as u32)
                    .collect();
                match step % 4 {
                    0 => cache.preload(&other).unwrap(),
                    1 => cache.prefetch(&other).unwrap(),
                    2 => {
                        let q = random_values(2 * dim, rng.next_u64());
                        let queries = hotrow::Queries::Host { data: &q, dim };
                        cache.scores(queries, &other).unwrap();
                    }
                    _ => {
                        cache.lookup(&other).unwrap();
                    }
                }
            }
            for _ in 0..1 + usize::from(twice) {
                let g = random_values(b_offsets.len() * dim, rng.next_u64());
                let grad = Embeddings::from_host(ctx, &g, dim).unwrap();
                let weights = b_weighted.then_some(&b_w[..]);
                cache
                    .backward_bags(&b_ids, &b_offsets, b_pooling, weights, &grad)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let mode = match b_pooling {
                    Pooling::Sum => 0,
                    Pooling::Mean => 1,
                    Pooling::Max => 2,
                };
                let grads = bags_grads(&reference.rows, dim, &b_ids, &b_offsets, mode, weights, &g);
                reference.apply(&grads);
            }
        }
        cache.flush().unwrap();
        let table = cache.source().data().unwrap();
        assert_rows_near(
            table,
            &reference.rows,
            2e-5,
            &format!("{path:?}: flushed table"),
        );
        let s = cache.stats();
        assert!(
            s.group_time > std::time::Duration::ZERO,
            "{path:?}: no grouping counted"
        );
        assert!(s.group_wait_time <= s.group_time, "{path:?}: {s:?}");
    }
}
