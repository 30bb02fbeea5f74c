//! Compact rows in the cache (f16 with and without `shader-f16`, row-wise int8): lookups,
//! bags, scores and combinations through caches much smaller than the table, against a CPU
//! reference that applies the same conversion; f16 lookups bit for bit, int8 within half a
//! quantization step of the original values.

mod common;

use common::workload::{random_values, Rng, ZipfIds};
use common::{assert_close, assert_rows_eq, ctx, seed, stored};
use hotrow::{
    reference, CacheConfig, Capacity, EmbeddingCache, Embeddings, HostTable, Pooling, Queries,
    Resolution, RowFormat, RowLayout,
};

#[test]
fn compact_rows_serve_every_op() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("compact"));
    eprintln!("adapter shader-f16: {}", ctx().adapter().shader_f16);
    let cases = [
        (RowFormat::F16, true),
        (RowFormat::F16, false),
        (RowFormat::Int8, false),
    ];
    for (format, shader_f16) in cases {
        for dim in [3usize, 6, 16, 130] {
            let what = format!("{format:?} (shader-f16 {shader_f16}) dim {dim}");
            let rows = 3000;
            let data = random_values(rows * dim, rng.next_u64());
            let (decoded, scales) = stored(&data, dim, format);
            let table = HostTable::borrowed(&data, dim).unwrap();
            let resolution = if dim % 2 == 0 {
                Resolution::Device
            } else {
                Resolution::Host
            };
            let config = CacheConfig::default()
                .capacity(Capacity::Rows(300))
                .row_format(format)
                .shader_f16(shader_f16)
                .resolution(resolution);
            let mut cache = EmbeddingCache::new(ctx(), table, config).unwrap();
            let layout = cache.layout();
            assert_eq!(layout.format(), format, "{what}");
            assert_eq!(
                cache.config().shader_f16,
                shader_f16 && ctx().adapter().shader_f16 && format == RowFormat::F16,
                "{what}: the f16 path in force"
            );
            assert_eq!(cache.memory().slots, 300 * layout.row_bytes(), "{what}");
            let mut zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
            let mut out = Embeddings::new(ctx(), 1, dim).unwrap();
            for b in 0..10 {
                if b == 5 {
                    zipf.reshuffle(rng.next_u64());
                }
                // one batch with more distinct ids than slots: served in passes
                let n = if b == 7 {
                    2000
                } else {
                    100 + rng.below(400) as usize
                };
                let ids = zipf.batch(n, &mut rng);
                out.fill(f32::NAN).unwrap();
                cache.lookup_into(&ids, &mut out).unwrap();
                let got = out.to_host().unwrap();
                let what = format!("{what}, batch {b}");
                match format {
                    RowFormat::F16 => {
                        // bit for bit the reference conversion
                        assert_rows_eq(&got, &reference::gather(&decoded, dim, &ids), dim, &what)
                    }
                    _ => {
                        for (k, &id) in ids.iter().enumerate() {
                            let id = id as usize;
                            let step = scales[id];
                            for c in 0..dim {
                                let (g, x) = (got[k * dim + c], data[id * dim + c]);
                                let d = decoded[id * dim + c];
                                assert!(
                                    (g - d).abs() <= 1e-6 * d.abs().max(1.0),
                                    "{what}: row {id} col {c}: {g} against decoded {d}"
                                );
                                assert!(
                                    (g - x).abs() <= step / 2.0 + 1e-6 * x.abs().max(1.0),
                                    "{what}: row {id} col {c}: {g} against {x} (step {step})"
                                );
                            }
                        }
                    }
                }
            }
            // bags (weighted sum, mean, max), scores and combinations over the decoded rows
            let ids = zipf.batch(200, &mut rng);
            let offsets: Vec<u32> = (0..200u32).step_by(9).collect();
            let w: Vec<f32> = (0..200).map(|_| rng.unit() as f32 - 0.4).collect();
            for (mode, pooling) in [(0u32, Pooling::Sum), (1, Pooling::Mean), (2, Pooling::Max)] {
                let weights = (mode != 2).then_some(&w[..]);
                let got = cache.lookup_bags(&ids, &offsets, pooling, weights).unwrap();
                let (want, scale) = common::bags_ref(&decoded, dim, &ids, &offsets, mode, weights);
                assert_close(&got, &want, &scale, &format!("{what}: bags {pooling:?}"));
            }
            let q = random_values(5 * dim, rng.next_u64());
            let got = cache.scores(Queries::Host { data: &q, dim }, &ids).unwrap();
            let (want, scale) = common::scores_ref(&decoded, dim, &q, &ids);
            assert_close(&got, &want, &scale, &format!("{what}: scores"));
            let x = random_values(3 * ids.len(), rng.next_u64());
            let got = cache.combine(&x, &ids).unwrap();
            let (want, scale) = common::combine_ref(&decoded, dim, &x, &ids);
            assert_close(&got, &want, &scale, &format!("{what}: combine"));
            let st = cache.stats();
            assert_eq!(
                st.bytes_uploaded,
                st.rows_uploaded * layout.row_bytes(),
                "{what}"
            );
            cache.check_device_table().unwrap();
        }
    }
}

#[test]
fn compact_formats_use_less_memory() {
    let _serial = common::serial();
    let (rows, dim) = (4000, 128);
    let data = random_values(rows * dim, 5);
    let memory = |format| {
        let table = HostTable::borrowed(&data, dim).unwrap();
        let config = CacheConfig::default()
            .capacity(Capacity::Fraction(0.1))
            .row_format(format);
        EmbeddingCache::new(ctx(), table, config)
            .unwrap()
            .memory()
            .slots
    };
    let (f32_bytes, f16_bytes, int8_bytes) = (
        memory(RowFormat::F32),
        memory(RowFormat::F16),
        memory(RowFormat::Int8),
    );
    assert_eq!(f32_bytes, 400 * 512);
    assert_eq!(f16_bytes, 400 * 256);
    assert_eq!(int8_bytes, 400 * (128 + 8));
}

/// Compact rows copied by many rayon threads at once (partitions copying while others
/// resolve, the row source itself parallel): a thread that waits inside a copy may run
/// another partition's copy (work stealing), which must not disturb the first.
#[test]
fn compact_uploads_from_many_threads() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("compact_threads"));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(8)
        .build()
        .unwrap();
    let (rows, dim) = (200_000, 8);
    let data = random_values(rows * dim, rng.next_u64());
    let (decoded, _) = stored(&data, dim, RowFormat::F16);
    pool.install(|| {
        let table = Forking(HostTable::borrowed(&data, dim).unwrap());
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(40_000))
            .partitions(8)
            .row_format(RowFormat::F16);
        let mut cache = EmbeddingCache::new(ctx(), table, config).unwrap();
        assert_eq!(cache.slot_map().partitions(), 8);
        let zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
        let mut out = Embeddings::new(ctx(), 1, dim).unwrap();
        for b in 0..12 {
            let ids = zipf.batch(30_000, &mut rng);
            out.fill(f32::NAN).unwrap();
            cache.lookup_into(&ids, &mut out).unwrap();
            let want = reference::gather(&decoded, dim, &ids);
            assert_rows_eq(&out.to_host().unwrap(), &want, dim, &format!("batch {b}"));
        }
        assert!(cache.stats().misses > 10_000);
    });
}

/// A row source that reads in two halves on two rayon tasks, one of them slow: the caller
/// waits in the join and steals other work meanwhile.
struct Forking<'a>(HostTable<'a>);

impl hotrow::RowSource for Forking<'_> {
    fn rows(&self) -> usize {
        self.0.rows()
    }
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> hotrow::Result<()> {
        let half = ids.len() / 2;
        let (a, b) = out.split_at_mut(half * self.dim());
        let (x, y) = rayon::join(
            || self.0.read_rows(&ids[..half], a),
            || {
                std::thread::sleep(std::time::Duration::from_millis(2));
                self.0.read_rows(&ids[half..], b)
            },
        );
        x.and(y)
    }
}

/// A table stored in f16 that counts how it is read.
struct Halves {
    table: HostTable<'static>,
    f32_reads: std::sync::atomic::AtomicUsize,
    f16_reads: std::sync::atomic::AtomicUsize,
}

impl hotrow::RowSource for Halves {
    fn rows(&self) -> usize {
        self.table.rows()
    }
    fn dim(&self) -> usize {
        self.table.dim()
    }
    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> hotrow::Result<()> {
        self.f32_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.table.read_rows(ids, out)
    }
    fn read_rows_f16(&self, ids: &[u32], out: &mut [hotrow::half::f16]) -> hotrow::Result<bool> {
        self.f16_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.table.read_rows_f16(ids, out)
    }
}

/// f16 rows go into f16 slots as stored (no f32 read, no conversion) when the width is even,
/// and through f32 otherwise; either way the lookups equal the stored values bit for bit.
#[test]
fn f16_tables_upload_as_stored() {
    use hotrow::half::f16;
    use std::sync::atomic::Ordering::Relaxed;
    let _serial = common::serial();
    let mut rng = Rng::new(seed("compact_as_stored"));
    for dim in [8usize, 5] {
        let rows = 2000;
        let values: Vec<f16> = random_values(rows * dim, rng.next_u64())
            .iter()
            .map(|&x| f16::from_f32(x))
            .collect();
        let want_table: Vec<f32> = values.iter().map(|x| x.to_f32()).collect();
        let source = Halves {
            table: HostTable::owned_f16(values, dim).unwrap(),
            f32_reads: 0.into(),
            f16_reads: 0.into(),
        };
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(200))
            .row_format(RowFormat::F16);
        let mut cache = EmbeddingCache::new(ctx(), source, config).unwrap();
        let zipf = ZipfIds::new(rows, 1.05, rng.next_u64());
        for b in 0..8 {
            let ids = zipf.batch(300, &mut rng);
            let out = cache.lookup(&ids).unwrap();
            let want = reference::gather(&want_table, dim, &ids);
            assert_rows_eq(
                &out.to_host().unwrap(),
                &want,
                dim,
                &format!("dim {dim} batch {b}"),
            );
        }
        let (f32_reads, f16_reads) = (
            cache.source().f32_reads.load(Relaxed),
            cache.source().f16_reads.load(Relaxed),
        );
        if dim % 2 == 0 {
            assert!(
                f16_reads > 0 && f32_reads == 0,
                "{f16_reads} f16 / {f32_reads} f32 reads"
            );
        } else {
            assert!(f32_reads > 0, "an odd width converts");
        }
    }
}

/// Shards capped at exactly one compact row (int8 rows of 24 bytes, f16 rows of 6: not
/// multiples of 16) are allowed, and serve every row right.
#[test]
fn shards_of_one_compact_row() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("compact_shards"));
    for (format, dim) in [(RowFormat::Int8, 16usize), (RowFormat::F16, 3)] {
        let rows = 50;
        let data = random_values(rows * dim, rng.next_u64());
        let (decoded, _) = stored(&data, dim, format);
        let layout = RowLayout::new(dim, format).unwrap();
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(7))
            .row_format(format)
            .slot_buffer(hotrow::RowBufferOptions {
                max_shard_bytes: Some(layout.row_bytes()),
            });
        let table = HostTable::borrowed(&data, dim).unwrap();
        let mut cache = EmbeddingCache::new(ctx(), table, config).unwrap();
        assert_eq!(
            cache.slots().shards().len(),
            7,
            "{format:?}: one row a shard"
        );
        let ids: Vec<u32> = (0..40).map(|_| rng.below(rows as u64) as u32).collect();
        let got = cache.lookup(&ids).unwrap().to_host().unwrap();
        let want = reference::gather(&decoded, dim, &ids);
        for (k, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "{format:?}: value {k}: {g} against {w}"
            );
        }
    }
}

/// int8 rows at the edges of f32 through a cache on the GPU: both ends of f32, mixed signs,
/// subnormals, a -0.0 constant row, infinities and NaN. The GPU decodes what the CPU
/// reference decodes (finite where the row is finite, NaN where it is not), within the
/// rounding of its own multiply-add, and no row decodes NaN or infinite unless it held one.
#[test]
fn int8_extreme_rows_through_the_cache() {
    let _serial = common::serial();
    let max = f32::MAX;
    let tiny = f32::from_bits(1);
    let dim = 4;
    let rows: Vec<[f32; 4]> = vec![
        [-3e38, 3e38, 0.0, 1.0],
        [-max, max, -max, max],
        [max, max / 2.0, 1e38, 3e38],
        [-1.5e38, 1.5e38, -7.0, 7.0],
        [0.0, tiny, 2.0 * tiny, -tiny],
        [3e-39, 1e-40, 2.5e-39, -1e-39],
        [-0.0, -0.0, -0.0, -0.0],
        [1.0, f32::INFINITY, 2.0, 3.0],
        [f32::NEG_INFINITY, 0.0, 0.0, 0.0],
        [f32::NAN, 1.0, -1.0, 0.5],
        [0.25, -0.5, 0.75, 1.0],
    ];
    let data: Vec<f32> = rows.iter().flatten().copied().collect();
    let (decoded, _) = stored(&data, dim, RowFormat::Int8);
    for resolution in [Resolution::Host, Resolution::Device] {
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(4))
            .row_format(RowFormat::Int8)
            .resolution(resolution);
        let table = HostTable::borrowed(&data, dim).unwrap();
        let mut cache = EmbeddingCache::new(ctx(), table, config).unwrap();
        let ids: Vec<u32> = (0..rows.len() as u32).chain([6, 0, 10, 3]).collect();
        let mut out = Embeddings::new(ctx(), ids.len(), dim).unwrap();
        out.fill(12345.0).unwrap(); // poisoned
        cache.lookup_into(&ids, &mut out).unwrap();
        let got = out.to_host().unwrap();
        for (k, &id) in ids.iter().enumerate() {
            let row = &rows[id as usize];
            let finite = row.iter().all(|v| v.is_finite());
            for c in 0..dim {
                let (g, want) = (got[k * dim + c], decoded[id as usize * dim + c]);
                let what = format!("{resolution:?}: row {id} {row:?} value {c}");
                if !finite {
                    assert!(g.is_nan(), "{what}: {g} (a row with a non-finite value)");
                    continue;
                }
                assert!(g.is_finite() && want.is_finite(), "{what}: {g} / {want}");
                // The decode's multiply-add rounds at the scale of its largest operand (the
                // bias, the row's minimum); a GPU may fuse it where the CPU does not, and
                // may flush subnormal values to zero (WGSL allows it; an H100 decoded the
                // subnormal rows above as zeros): up to f32::MIN_POSITIVE more.
                let bias = row.iter().fold(f32::INFINITY, |a, &b| a.min(b)).abs();
                let ulps = 4.0 * f32::EPSILON * (want.abs() + bias + row[c].abs());
                let tol = ulps + f32::MIN_POSITIVE + 2.0 * tiny;
                assert!((g - want).abs() <= tol, "{what}: GPU {g:e}, CPU {want:e}");
            }
        }
    }
}
