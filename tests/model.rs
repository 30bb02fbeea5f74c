//! Model-based tests: random cache configurations (row count, dim, format, capacity, policy,
//! resolution, partitions, upload cap, shards, and the row source: f32 / f16 / bf16 host
//! tables, f32 / f16 `.npy` files, a host tier) each driven through a random sequence of
//! every public op, valid and invalid, and checked after every call against the CPU
//! reference on the table as the slots store it; an invalid call must fail with a typed
//! error and change nothing (counters, slot map). `proptest` shrinks a failing case to the
//! smallest configuration and shortest sequence that still fails, which a hand-written
//! random loop would leave to the reader.
//!
//! Cases per test: `HOTROW_MODEL_CASES` (default 12; software adapters are slow).

mod common;

use common::workload::{random_values, Rng};
use common::{assert_close_host, ctx, stored, two, Flaky};
use hotrow::{
    CacheConfig, Capacity, EmbeddingCache, Embeddings, EvictionPolicy, HostTable, HotrowError,
    Pooling, Queries, Resolution, RowBufferOptions, RowFormat, RowLayout, TableBags,
    TableBatchedCache,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::sync::atomic::Ordering;

fn cases() -> u32 {
    std::env::var("HOTROW_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

/// One cache configuration and the seed of its op sequence.
#[derive(Clone, Debug)]
struct Setup {
    rows: usize,
    dim: usize,
    format: RowFormat,
    shader_f16: bool,
    capacity: usize,
    policy: EvictionPolicy,
    device: bool,
    partitions: usize,
    upload_rows: Option<usize>,
    shard_rows: Option<usize>,
    staging: usize,
    /// The row source: see [`source`].
    source: u8,
    ops: usize,
    seed: u64,
}

/// The slots' row formats.
fn formats() -> impl Strategy<Value = RowFormat> {
    prop_oneof![
        Just(RowFormat::F32),
        Just(RowFormat::F16),
        Just(RowFormat::Int8)
    ]
}

fn setups() -> impl Strategy<Value = Setup> {
    let format = formats();
    let dim = prop_oneof![1usize..=9, Just(16usize), Just(33), Just(64)];
    (
        (
            prop_oneof![4 => 1usize..400, 1 => 400usize..20_000],
            dim,
            format,
            any::<bool>(),
            prop_oneof![4 => 1usize..500, 1 => 500usize..4000],
        ),
        (
            prop_oneof![
                Just(EvictionPolicy::Clock),
                Just(EvictionPolicy::Lru),
                Just(EvictionPolicy::TinyLfu)
            ],
            any::<bool>(),
            0usize..9,
        ),
        (
            proptest::option::of(1usize..40),
            proptest::option::of(1usize..60),
            1usize..4,
        ),
        (1usize..10, any::<u64>(), 0u8..6),
    )
        .prop_map(
            |(
                (rows, dim, format, shader_f16, capacity),
                (policy, device, partitions),
                (upload_rows, shard_rows, staging),
                (ops, seed, source),
            )| Setup {
                rows,
                dim,
                format,
                shader_f16,
                capacity,
                policy,
                // (TinyLFU's transient rows are not in the GPU's slot index: host only.)
                device: device && policy != EvictionPolicy::TinyLfu,
                partitions,
                upload_rows,
                shard_rows,
                staging,
                source,
                ops,
                seed,
            },
        )
}

/// Random bag offsets over `n` ids (empty bags included), starting at 0.
fn offsets(rng: &mut Rng, n: usize, bags: usize) -> Vec<u32> {
    let mut cuts: Vec<u32> = (0..bags.saturating_sub(1))
        .map(|_| rng.below(n as u64 + 1) as u32)
        .collect();
    cuts.push(0);
    cuts.sort_unstable();
    cuts
}

fn signed_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.unit() as f32 * 2.0 - 0.7).collect()
}

/// What a cache shows of its state: counters and every resident row's slot.
fn state<S: hotrow::RowSource>(cache: &EmbeddingCache<S>) -> (hotrow::CacheStats, Vec<(u32, u32)>) {
    (cache.stats(), common::resident(cache))
}

fn check_counters<S: hotrow::RowSource>(cache: &EmbeddingCache<S>) -> Result<(), TestCaseError> {
    let s = cache.stats();
    prop_assert_eq!(s.hits + s.misses, s.distinct, "{:?}", s);
    let resident = common::resident(cache).len();
    // (Rows served from a transient slot were uploaded and never resident.)
    prop_assert!(s.transient <= s.refused, "{:?}", s);
    prop_assert_eq!(
        s.rows_uploaded - s.transient - s.evictions,
        resident as u64,
        "{:?}",
        s
    );
    prop_assert!(resident <= cache.capacity());
    cache
        .slot_map()
        .check_invariants()
        .map_err(TestCaseError::fail)?;
    cache
        .check_device_table()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    Ok(())
}

/// Row source `kind` over `data` (`rows x dim`): 0 an f32 host table, 1 an f16 one, 2 a
/// bf16 one, 3 an f32 `.npy` file, 4 an f16 `.npy` file (both written into `dir`), 5 a host
/// tier of `tier` rows in front of an f32 host table. Returns it (able to fail on demand)
/// and the f32 values it serves (the storage's rounding applied).
fn source<'a>(
    kind: u8,
    data: &'a [f32],
    dim: usize,
    dir: &std::path::Path,
    tier: usize,
) -> (Flaky<'a>, Vec<f32>) {
    use hotrow::half::{bf16, f16};
    let halves = || -> Vec<f16> { data.iter().map(|&x| f16::from_f32(x)).collect() };
    let (inner, values): (Box<dyn hotrow::RowSource + 'a>, Vec<f32>) = match kind {
        0 => (
            Box::new(HostTable::borrowed(data, dim).unwrap()),
            data.to_vec(),
        ),
        1 => {
            let h = halves();
            let v = h.iter().map(|x| x.to_f32()).collect();
            (Box::new(HostTable::owned_f16(h, dim).unwrap()), v)
        }
        2 => {
            let b: Vec<bf16> = data.iter().map(|&x| bf16::from_f32(x)).collect();
            let v = b.iter().map(|x| x.to_f32()).collect();
            (Box::new(HostTable::owned_bf16(b, dim).unwrap()), v)
        }
        3 => {
            let path = dir.join("t32.npy");
            HostTable::borrowed(data, dim)
                .unwrap()
                .save_npy(&path)
                .unwrap();
            let t = hotrow::FileTable::open_npy(&path).unwrap();
            (Box::new(t), data.to_vec())
        }
        4 => {
            let path = dir.join("t16.npy");
            let h = halves();
            let v = h.iter().map(|x| x.to_f32()).collect();
            HostTable::owned_f16(h, dim)
                .unwrap()
                .save_npy(&path)
                .unwrap();
            (Box::new(hotrow::FileTable::open_npy(&path).unwrap()), v)
        }
        _ => {
            let t = HostTable::borrowed(data, dim).unwrap();
            let t = hotrow::HostTier::new(t, tier.max(1)).unwrap();
            (Box::new(t), data.to_vec())
        }
    };
    let flaky = Flaky {
        inner,
        mode: 0.into(),
        hide_memory: false,
    };
    (flaky, values)
}

fn run_setup(s: &Setup) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(s.seed);
    let (rows, dim) = (s.rows, s.dim);
    let raw = random_values(rows * dim, rng.next_u64());
    let dir = tempfile::tempdir().unwrap();
    let tier = 1 + rng.below(rows as u64) as usize;
    let (table, data) = source(s.source, &raw, dim, dir.path(), tier);
    let (decoded, steps) = stored(&data, dim, s.format);
    let layout = RowLayout::new(dim, s.format).unwrap();
    let mut config = CacheConfig::default()
        .capacity(Capacity::Rows(s.capacity))
        .row_format(s.format)
        .shader_f16(s.shader_f16)
        .policy(s.policy)
        .resolution(if s.device {
            Resolution::Device
        } else {
            Resolution::Host
        })
        .partitions(s.partitions)
        .staging_buffers(s.staging);
    if let Some(n) = s.upload_rows {
        config = config.max_upload_bytes_per_pass((n * layout.row_bytes() as usize) as u64);
    }
    if let Some(n) = s.shard_rows {
        // The slots' shards, and the GPU-driven path's table in shards of 16n rows (the fetch
        // binds them four at a time: tables of more than 64n rows take several groups).
        config = config
            .slot_buffer(RowBufferOptions {
                max_shard_bytes: Some((n * layout.row_bytes() as usize) as u64),
            })
            .table_buffer(RowBufferOptions {
                max_shard_bytes: Some((16 * n * layout.row_bytes() as usize) as u64),
            });
    }
    let mut cache = EmbeddingCache::new(ctx(), table, config)
        .map_err(|e| TestCaseError::fail(format!("construction: {e}")))?;
    prop_assert_eq!(cache.capacity(), s.capacity.min(rows));
    let hot: Vec<u32> = (0..(rows / 4).max(1))
        .map(|_| rng.below(rows as u64) as u32)
        .collect();
    let big = 3 * cache.capacity() + 5;
    for op in 0..s.ops {
        let before = state(&cache);
        let what = format!("op {op}");
        match rng.below(8) {
            0 => {
                let n = if rng.below(5) == 0 {
                    0
                } else {
                    rng.below(big as u64) as usize
                };
                let ids = rng.hot_ids(n, rows, &hot);
                let mut out = common::poisoned(ctx(), 1, dim);
                cache
                    .lookup_into(&ids, &mut out)
                    .map_err(|e| TestCaseError::fail(format!("{what} lookup: {e}")))?;
                prop_assert_eq!((out.rows(), out.dim()), (n, dim));
                let got = out.to_host().unwrap();
                for (k, &id) in ids.iter().enumerate() {
                    for c in 0..dim {
                        let (g, d) = (got[k * dim + c], decoded[id as usize * dim + c]);
                        let ok = match s.format {
                            RowFormat::Int8 => {
                                let x = data[id as usize * dim + c];
                                (g - d).abs() <= 1e-6 * d.abs().max(1.0)
                                    && (g - x).abs()
                                        <= steps[id as usize] / 2.0 + 1e-6 * x.abs().max(1.0)
                            }
                            _ => g.to_bits() == d.to_bits(),
                        };
                        prop_assert!(
                            ok,
                            "{} lookup: id {} col {}: {} against {}",
                            what,
                            id,
                            c,
                            g,
                            d
                        );
                    }
                }
            }
            1 | 2 => {
                let n = rng.below(big as u64) as usize;
                let ids = rng.hot_ids(n, rows, &hot);
                let bags = rng.below(12) as usize + usize::from(n > 0);
                let offs = offsets(&mut rng, n, bags);
                let mode = rng.below(3) as u32;
                let pooling = [Pooling::Sum, Pooling::Mean, Pooling::Max][mode as usize];
                let w = signed_values(&mut rng, n);
                let weights = (mode != 2 && rng.below(2) == 0).then_some(&w[..]);
                let mut out = common::poisoned(ctx(), 2, dim);
                cache
                    .lookup_bags_into(&ids, &offs, pooling, weights, &mut out)
                    .map_err(|e| TestCaseError::fail(format!("{what} bags: {e}")))?;
                let (want, scale) = common::bags_ref(&decoded, dim, &ids, &offs, mode, weights);
                assert_close_host(&out.to_host().unwrap(), &want, &scale, &what);
            }
            3 => {
                let m = rng.below(4) as usize;
                let q = signed_values(&mut rng, m * dim);
                let k = 1 + rng.below(big as u64) as usize;
                let cand = rng.hot_ids(k, rows, &hot);
                let mut out = common::poisoned(ctx(), 1, 1);
                cache
                    .scores_into(Queries::Host { data: &q, dim }, &cand, &mut out)
                    .map_err(|e| TestCaseError::fail(format!("{what} scores: {e}")))?;
                let (want, scale) = common::scores_ref(&decoded, dim, &q, &cand);
                assert_close_host(&out.to_host().unwrap(), &want, &scale, &what);
            }
            4 => {
                let k = 1 + rng.below(big as u64) as usize;
                let ids = rng.hot_ids(k, rows, &hot);
                let m = rng.below(4) as usize;
                let x = signed_values(&mut rng, m * k);
                let mut out = common::poisoned(ctx(), 1, 1);
                cache
                    .combine_into(&x, &ids, &mut out)
                    .map_err(|e| TestCaseError::fail(format!("{what} combine: {e}")))?;
                let (want, scale) = common::combine_ref(&decoded, dim, &x, &ids);
                assert_close_host(&out.to_host().unwrap(), &want, &scale, &what);
            }
            5 => {
                // preload, or a prefetch (its rows held on the host path until the next
                // batch: later ops check they are still served right)
                let n = rng.below(big as u64) as usize;
                let ids = rng.hot_ids(n, rows, &hot);
                let result = if rng.below(2) == 0 {
                    cache.preload(&ids)
                } else {
                    cache.prefetch(&ids)
                };
                result.map_err(|e| TestCaseError::fail(format!("{what} preload/prefetch: {e}")))?;
            }
            6 => {
                // The row source fails or panics: a typed error (or success, when nothing
                // had to be read), the map still true; later ops check the rows.
                let panic = rng.below(2) == 0;
                cache
                    .source()
                    .mode
                    .store(1 + u8::from(panic), Ordering::Relaxed);
                let n = 1 + rng.below(big as u64) as usize;
                let ids = rng.hot_ids(n, rows, &hot);
                let mut out = common::poisoned(ctx(), 1, dim);
                let result = match rng.below(4) {
                    0 => cache.lookup_into(&ids, &mut out),
                    1 => cache.lookup_bags_into(&ids, &[0], Pooling::Sum, None, &mut out),
                    2 => cache.prefetch(&ids),
                    _ => cache.preload(&ids),
                };
                cache.source().mode.store(0, Ordering::Relaxed);
                let ok = matches!(
                    result,
                    Ok(()) | Err(HotrowError::RowSource(_) | HotrowError::RowSourcePanicked(_))
                );
                prop_assert!(ok, "{} failing source: {:?}", what, result);
            }
            _ => {
                // Invalid input: a typed error, and nothing changes.
                let n = 1 + rng.below(big as u64) as usize;
                let mut ids = rng.hot_ids(n, rows, &hot);
                let at = rng.below(n as u64) as usize;
                let mut out = common::poisoned(ctx(), 1, dim);
                let kind = rng.below(8);
                let err = match kind {
                    0 => {
                        ids[at] = [rows as u32, rows as u32 + 7, u32::MAX][at % 3];
                        cache.lookup_into(&ids, &mut out)
                    }
                    1 => {
                        ids[at] = rows as u32;
                        if at.is_multiple_of(2) {
                            cache.preload(&ids)
                        } else {
                            cache.prefetch(&ids)
                        }
                    }
                    2 => {
                        // offsets that decrease, or run past the ids
                        let mut offs = vec![0, n as u32 / 2 + 1, n as u32 / 2];
                        if at.is_multiple_of(2) {
                            offs = vec![0, n as u32 + 1];
                        }
                        cache.lookup_bags_into(&ids, &offs, Pooling::Sum, None, &mut out)
                    }
                    3 => {
                        let mut w = signed_values(&mut rng, n);
                        w[at] = [f32::NAN, f32::INFINITY][at % 2];
                        cache.lookup_bags_into(&ids, &[0], Pooling::Sum, Some(&w), &mut out)
                    }
                    4 => {
                        let w = signed_values(&mut rng, n + 1);
                        cache.lookup_bags_into(&ids, &[0], Pooling::Mean, Some(&w), &mut out)
                    }
                    5 => {
                        let q = signed_values(&mut rng, 2 * (dim + 1));
                        cache.scores_into(
                            Queries::Host {
                                data: &q,
                                dim: dim + 1,
                            },
                            &ids,
                            &mut out,
                        )
                    }
                    6 => {
                        let mut x = signed_values(&mut rng, 2 * n);
                        x[at] = f32::NAN;
                        cache.combine_into(&x, &ids, &mut out)
                    }
                    _ => {
                        // x not whole rows of one weight per id (with one id, any length
                        // is: that case takes two)
                        if ids.len() == 1 {
                            ids.push(ids[0]);
                        }
                        let x = signed_values(&mut rng, 2 * ids.len() + 1);
                        cache.combine_into(&x, &ids, &mut out)
                    }
                };
                let ok = matches!(
                    err,
                    Err(HotrowError::IdOutOfRange { .. }
                        | HotrowError::BadOffsets { .. }
                        | HotrowError::NonFinite { .. }
                        | HotrowError::LengthMismatch { .. }
                        | HotrowError::DimMismatch { .. })
                );
                prop_assert!(ok, "{} bad input {}: {:?}", what, kind, err);
                prop_assert!(
                    state(&cache) == before,
                    "{} bad input {} changed the cache",
                    what,
                    kind
                );
            }
        }
        check_counters(&cache)?;
    }
    Ok(())
}

/// Runs `case` on `cases()` values of `strategy` (one GPU test at a time), panicking with
/// the smallest failing value proptest finds.
fn run_cases<T: Strategy>(strategy: T, case: impl Fn(&T::Value) -> Result<(), TestCaseError>)
where
    T::Value: std::fmt::Debug,
{
    let _serial = common::serial();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, |v| case(&v)) {
        panic!("{e}");
    }
}

#[test]
fn random_configurations_serve_random_ops() {
    run_cases(setups(), run_setup);
}

/// A table-batched configuration: tables of mixed widths and sizes.
#[derive(Clone, Debug)]
struct Tables {
    shapes: Vec<(usize, usize)>,
    fraction: f64,
    format: RowFormat,
    device: bool,
    upload_rows: Option<usize>,
    steps: usize,
    seed: u64,
}

fn table_setups() -> impl Strategy<Value = Tables> {
    let shape = (
        1usize..300,
        prop_oneof![Just(1usize), Just(4), Just(5), Just(16)],
    );
    (
        proptest::collection::vec(shape, 1..6),
        0.01f64..1.5,
        formats(),
        any::<bool>(),
        proptest::option::of(1usize..30),
        1usize..6,
        any::<u64>(),
    )
        .prop_map(
            |(shapes, fraction, format, device, upload_rows, steps, seed)| Tables {
                shapes,
                fraction,
                format,
                device,
                upload_rows,
                steps,
                seed,
            },
        )
}

/// One table's ids, offsets and optional weights.
type Part = (Vec<u32>, Vec<u32>, Option<Vec<f32>>);

fn run_tables(s: &Tables) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(s.seed);
    let data: Vec<Vec<f32>> = s
        .shapes
        .iter()
        .map(|&(rows, dim)| random_values(rows * dim, rng.next_u64()))
        .collect();
    let decoded: Vec<Vec<f32>> = data
        .iter()
        .zip(&s.shapes)
        .map(|(d, &(_, dim))| stored(d, dim, s.format).0)
        .collect();
    let tables: Vec<Flaky<'_>> = data
        .iter()
        .zip(&s.shapes)
        .map(|(d, &(_, dim))| Flaky::new(HostTable::borrowed(d, dim).unwrap()))
        .collect();
    let mut config = CacheConfig::default()
        .capacity(Capacity::Fraction(s.fraction))
        .row_format(s.format)
        .resolution(if s.device {
            Resolution::Device
        } else {
            Resolution::Host
        });
    if let Some(n) = s.upload_rows {
        config = config.max_upload_bytes_per_pass(n as u64 * 64);
    }
    let mut cache = TableBatchedCache::new(ctx(), tables, config)
        .map_err(|e| TestCaseError::fail(format!("construction: {e}")))?;
    let width: usize = s.shapes.iter().map(|&(_, d)| d).sum();
    prop_assert_eq!(cache.width(), width);
    for step in 0..s.steps {
        let bags = rng.below(9) as usize;
        let mode = rng.below(3) as u32;
        let pooling = [Pooling::Sum, Pooling::Mean, Pooling::Max][mode as usize];
        let parts: Vec<Part> = s
            .shapes
            .iter()
            .map(|&(rows, _)| {
                let n = if bags == 0 { 0 } else { rng.below(40) as usize };
                let ids: Vec<u32> = (0..n).map(|_| rng.below(rows as u64) as u32).collect();
                let offs = if bags == 0 {
                    Vec::new()
                } else {
                    offsets(&mut rng, n, bags)
                };
                let w = (mode != 2 && rng.below(2) == 0).then(|| signed_values(&mut rng, n));
                (ids, offs, w)
            })
            .collect();
        let batch: Vec<TableBags<'_>> = parts
            .iter()
            .map(|(ids, offsets, w)| TableBags {
                ids,
                offsets,
                weights: w.as_deref(),
            })
            .collect();
        // Now and then one table's part is bad: the step fails naming it, nothing changes.
        if rng.below(3) == 0 {
            let t = rng.below(batch.len() as u64) as usize;
            let rows = s.shapes[t].0 as u32;
            let bad_ids: Vec<u32> = batch[t].ids.iter().map(|_| rows).chain([rows]).collect();
            let bad_offsets: Vec<u32> = vec![1; bags];
            let before: Vec<_> = (0..batch.len()).map(|t| cache.table_stats(t)).collect();
            let stats = cache.stats();
            let mut bad = batch.clone();
            if bags == 0 || rng.below(2) == 0 {
                bad[t].ids = &bad_ids;
            } else {
                bad[t].offsets = &bad_offsets;
            }
            let mut out = common::poisoned(ctx(), 1, 1);
            let err = cache.lookup_bags_into(&bad, pooling, &mut out);
            let named = matches!(&err, Err(HotrowError::InTable { table, .. }) if *table == t);
            prop_assert!(named, "step {}: bad table {}: {:?}", step, t, err);
            prop_assert_eq!(cache.stats(), stats);
            let after: Vec<_> = (0..batch.len()).map(|t| cache.table_stats(t)).collect();
            prop_assert_eq!(after, before);
        }
        // Now and then one table's source fails or panics: a typed error naming it (or
        // success, when none of its rows had to be read); the next steps check the rows.
        if rng.below(4) == 0 {
            let t = rng.below(batch.len() as u64) as usize;
            let mode = 1 + rng.below(2) as u8;
            cache.sources()[t].mode.store(mode, Ordering::Relaxed);
            let mut out = common::poisoned(ctx(), 1, 1);
            let result = cache.lookup_bags_into(&batch, pooling, &mut out);
            cache.sources()[t].mode.store(0, Ordering::Relaxed);
            let ok = match &result {
                Ok(()) => true,
                Err(HotrowError::InTable { table, source }) => {
                    *table == t
                        && matches!(
                            **source,
                            HotrowError::RowSource(_) | HotrowError::RowSourcePanicked(_)
                        )
                }
                Err(_) => false,
            };
            prop_assert!(ok, "step {}: failing table {}: {:?}", step, t, result);
        }
        let mut out = common::poisoned(ctx(), 1, 1);
        cache
            .lookup_bags_into(&batch, pooling, &mut out)
            .map_err(|e| TestCaseError::fail(format!("step {step}: {e}")))?;
        prop_assert_eq!((out.rows(), out.dim()), (bags, width));
        let got = out.to_host().unwrap();
        for (t, part) in batch.iter().enumerate() {
            let dim = s.shapes[t].1;
            let col = cache.column(t).unwrap();
            let mine: Vec<f32> = (0..bags)
                .flat_map(|b| got[b * width + col..b * width + col + dim].iter().copied())
                .collect();
            let (want, scale) =
                common::bags_ref(&decoded[t], dim, part.ids, part.offsets, mode, part.weights);
            assert_close_host(&mine, &want, &scale, &format!("step {step} table {t}"));
        }
    }
    Ok(())
}

#[test]
fn random_table_batches_serve_random_steps() {
    run_cases(table_setups(), run_tables);
}

/// A group configuration (both modes are driven with the same ops).
#[derive(Clone, Debug)]
struct Group {
    rows: usize,
    dim: usize,
    format: RowFormat,
    capacity: usize,
    device: bool,
    ops: usize,
    seed: u64,
}

fn group_setups() -> impl Strategy<Value = Group> {
    (
        prop_oneof![3 => 1usize..300, 1 => 300usize..5000],
        prop_oneof![1usize..=6, Just(16usize)],
        formats(),
        1usize..400,
        any::<bool>(),
        1usize..8,
        any::<u64>(),
    )
        .prop_map(|(rows, dim, format, capacity, device, ops, seed)| Group {
            rows,
            dim,
            format,
            capacity,
            device,
            ops,
            seed,
        })
}

/// Checks `got` against `want` (a gather: bit for bit, int8 within a rounding of the
/// decoded values) or, for sums, against the reference with its error scale.
fn check_values(
    got: &[f32],
    want: &(Vec<f64>, Vec<f64>),
    exact: bool,
    what: &str,
) -> Result<(), TestCaseError> {
    if exact {
        prop_assert_eq!(got.len(), want.0.len(), "{}", what);
        for (k, (&g, &w)) in got.iter().zip(&want.0).enumerate() {
            prop_assert!(
                (g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{}: value {}: {} against {}",
                what,
                k,
                g,
                w
            );
        }
    } else {
        assert_close_host(got, &want.0, &want.1, what);
    }
    Ok(())
}

fn run_group(s: &Group) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(s.seed);
    let (rows, dim) = (s.rows, s.dim);
    let data = random_values(rows * dim, rng.next_u64());
    let decoded = stored(&data, dim, s.format).0;
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(s.capacity))
        .row_format(s.format)
        .resolution(if s.device {
            Resolution::Device
        } else {
            Resolution::Host
        });
    let ctxs = two();
    let source = Flaky::new(HostTable::borrowed(&data, dim).unwrap());
    let mut rep = hotrow::ReplicatedCache::new(ctxs, &source, config.clone())
        .map_err(|e| TestCaseError::fail(format!("replicated: {e}")))?;
    let mut part = hotrow::PartitionedCache::new(ctxs, &source, config)
        .map_err(|e| TestCaseError::fail(format!("partitioned: {e}")))?;
    let hot: Vec<u32> = (0..(rows / 4).max(1))
        .map(|_| rng.below(rows as u64) as u32)
        .collect();
    let gathered = |ids: &[u32]| {
        let g: Vec<f64> = hotrow::reference::gather(&decoded, dim, ids)
            .into_iter()
            .map(f64::from)
            .collect();
        (g.clone(), g)
    };
    for op in 0..s.ops {
        let on = rng.below(2) as usize;
        let n = rng.below(3 * s.capacity as u64 + 5) as usize;
        let ids = rng.hot_ids(n, rows, &hot);
        let what = format!("op {op} (on {on})");
        let mut outs = rep.outputs().unwrap();
        for o in &outs {
            o.fill(f32::NAN).unwrap();
        }
        // A fresh output on device `on` (not this test binary's default context).
        let mut out_on = Embeddings::new(&ctxs[on], 1, 1).unwrap();
        out_on.fill(f32::NAN).unwrap();
        let fail = |e: HotrowError| TestCaseError::fail(format!("{what}: {e}"));
        match rng.below(5) {
            0 => {
                rep.lookup_into(&ids, &mut outs).map_err(fail)?;
                let got = hotrow::ReplicatedCache::<&Flaky<'_>>::to_host(&outs).unwrap();
                check_values(
                    &got,
                    &gathered(&ids),
                    true,
                    &format!("{what} replicated lookup"),
                )?;
                part.lookup_into(&ids, on, &mut out_on).map_err(fail)?;
                check_values(
                    &out_on.to_host().unwrap(),
                    &gathered(&ids),
                    true,
                    &format!("{what} partitioned lookup"),
                )?;
            }
            1 => {
                let bags = rng.below(10) as usize + usize::from(n > 0);
                let offs = offsets(&mut rng, n, bags);
                let mode = rng.below(3) as u32;
                let pooling = [Pooling::Sum, Pooling::Mean, Pooling::Max][mode as usize];
                let w = signed_values(&mut rng, n);
                let weights = (mode != 2 && rng.below(2) == 0).then_some(&w[..]);
                let want = common::bags_ref(&decoded, dim, &ids, &offs, mode, weights);
                rep.lookup_bags_into(&ids, &offs, pooling, weights, &mut outs)
                    .map_err(fail)?;
                let got = hotrow::ReplicatedCache::<&Flaky<'_>>::to_host(&outs).unwrap();
                check_values(&got, &want, false, &format!("{what} replicated bags"))?;
                part.lookup_bags_into(&ids, &offs, pooling, weights, on, &mut out_on)
                    .map_err(fail)?;
                check_values(
                    &out_on.to_host().unwrap(),
                    &want,
                    false,
                    &format!("{what} partitioned bags"),
                )?;
            }
            2 => {
                let m = rng.below(4) as usize;
                let q = signed_values(&mut rng, m * dim);
                let mut cand = ids.clone();
                cand.push(hot[0]);
                let want = common::scores_ref(&decoded, dim, &q, &cand);
                part.scores_into(&q, &cand, on, &mut out_on).map_err(fail)?;
                check_values(
                    &out_on.to_host().unwrap(),
                    &want,
                    false,
                    &format!("{what} partitioned scores"),
                )?;
                rep.scores_into(&q, &cand, &mut outs).map_err(fail)?;
                // each device scored a contiguous share of the candidates
                let mut got = vec![f32::NAN; m * cand.len()];
                for (r, o) in rep.split(cand.len()).into_iter().zip(&outs) {
                    let host = o.to_host().unwrap();
                    for i in 0..m {
                        for (k, j) in r.clone().enumerate() {
                            got[i * cand.len() + j] = host[i * r.len() + k];
                        }
                    }
                }
                check_values(&got, &want, false, &format!("{what} replicated scores"))?;
            }
            3 => {
                let mut ids = ids;
                ids.push(hot[0]);
                let m = rng.below(4) as usize;
                let x = signed_values(&mut rng, m * ids.len());
                let want = common::combine_ref(&decoded, dim, &x, &ids);
                rep.combine_into(&x, &ids, &mut outs).map_err(fail)?;
                let got = hotrow::ReplicatedCache::<&Flaky<'_>>::to_host(&outs).unwrap();
                check_values(&got, &want, false, &format!("{what} replicated combine"))?;
                part.combine_into(&x, &ids, on, &mut out_on).map_err(fail)?;
                check_values(
                    &out_on.to_host().unwrap(),
                    &want,
                    false,
                    &format!("{what} partitioned combine"),
                )?;
            }
            _ => {
                // Misuse: a device that does not exist, an id out of range, an output of
                // another device (or of the test's own context), failing sources. Typed
                // errors, and later ops still right.
                let mut bad = ids.clone();
                bad.push(rows as u32);
                let stats = (rep.stats(), part.stats());
                let r = part.lookup_into(&ids, 2, &mut out_on);
                prop_assert!(
                    matches!(r, Err(HotrowError::InvalidArgument(_))),
                    "{}: device 2: {:?}",
                    what,
                    r
                );
                let r = part.lookup_into(&bad, on, &mut out_on);
                prop_assert!(
                    matches!(r, Err(HotrowError::IdOutOfRange { .. })),
                    "{}: {:?}",
                    what,
                    r
                );
                let r = rep.lookup_into(&bad, &mut outs);
                prop_assert!(
                    matches!(r, Err(HotrowError::IdOutOfRange { .. })),
                    "{}: {:?}",
                    what,
                    r
                );
                let mut other = Embeddings::new(&ctxs[1 - on], 1, 1).unwrap();
                let r = part.lookup_into(&ids, on, &mut other);
                prop_assert!(
                    matches!(r, Err(HotrowError::ForeignContext { .. })),
                    "{}: an output of the other device: {:?}",
                    what,
                    r
                );
                outs.swap(0, 1);
                let r = rep.lookup_into(&ids, &mut outs);
                prop_assert!(
                    matches!(
                        r,
                        Err(HotrowError::ForeignContext { .. } | HotrowError::OnDevice { .. })
                    ),
                    "{}: swapped outputs: {:?}",
                    what,
                    r
                );
                let r = rep.lookup_into(&ids, &mut outs[..1]);
                prop_assert!(r.is_err(), "{}: one output for two devices", what);
                prop_assert!(
                    (rep.stats(), part.stats()) == stats,
                    "{}: misuse changed the counters",
                    what
                );
                if !ids.is_empty() {
                    source.mode.store(1, Ordering::Relaxed);
                    let r = rep.lookup(&ids);
                    source.mode.store(0, Ordering::Relaxed);
                    prop_assert!(
                        r.is_ok() || matches!(r, Err(HotrowError::OnDevice { .. })),
                        "{}: failing source: {:?}",
                        what,
                        r.err()
                    );
                    source.mode.store(2, Ordering::Relaxed);
                    let r = part.lookup(&ids, on);
                    source.mode.store(0, Ordering::Relaxed);
                    prop_assert!(
                        r.is_ok() || matches!(r, Err(HotrowError::OnDevice { .. })),
                        "{}: panicking source: {:?}",
                        what,
                        r.err()
                    );
                }
            }
        }
        for d in 0..2 {
            for c in [
                rep.cache(d).unwrap().slot_map(),
                part.cache(d).unwrap().slot_map(),
            ] {
                c.check_invariants().map_err(TestCaseError::fail)?;
            }
        }
    }
    Ok(())
}

#[test]
fn random_groups_serve_random_ops() {
    run_cases(group_setups(), run_group);
}
