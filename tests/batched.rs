//! Many tables in one cache (TableBatchedCache): random steps of bags over tables of
//! different sizes and widths, against the CPU reference per table; bad input names the
//! table and changes nothing.

mod common;

use common::workload::{random_values, Rng, ZipfIds};
use common::{assert_close, ctx, seed};
use hotrow::{
    BatchPath, CacheConfig, Capacity, Embeddings, HostTable, HotrowError, Pooling, RowFormat,
    TableBags, TableBatchedCache,
};

struct Step {
    ids: Vec<Vec<u32>>,
    offsets: Vec<Vec<u32>>,
    weights: Vec<Option<Vec<f32>>>,
}

impl Step {
    fn parts(&self) -> Vec<TableBags<'_>> {
        (0..self.ids.len())
            .map(|t| TableBags {
                ids: &self.ids[t],
                offsets: &self.offsets[t],
                weights: self.weights[t].as_deref(),
            })
            .collect()
    }
}

/// `bags` bags per table, of 0-9 Zipf ids each; weights for some tables.
fn step(rng: &mut Rng, zipf: &[ZipfIds], bags: usize, weighted: bool) -> Step {
    let mut s = Step {
        ids: vec![],
        offsets: vec![],
        weights: vec![],
    };
    for (t, z) in zipf.iter().enumerate() {
        let mut ids = Vec::new();
        let mut offsets = Vec::new();
        for _ in 0..bags {
            offsets.push(ids.len() as u32);
            let n = rng.below(10) as usize;
            ids.extend(z.batch(n, rng));
        }
        let w = (weighted && t % 2 == 0)
            .then(|| (0..ids.len()).map(|_| rng.unit() as f32 - 0.3).collect());
        s.ids.push(ids);
        s.offsets.push(offsets);
        s.weights.push(w);
    }
    s
}

/// Host tables over `data`, one per `(rows, dim)` of `shapes`.
fn host_tables<'a>(shapes: &[(usize, usize)], data: &'a [Vec<f32>]) -> Vec<HostTable<'a>> {
    shapes
        .iter()
        .zip(data)
        .map(|(&(_, d), v)| HostTable::borrowed(v, d).unwrap())
        .collect()
}

/// The expected output: each table's reference bags, side by side.
fn reference(data: &[Vec<f32>], dims: &[usize], s: &Step, mode: u32) -> (Vec<f64>, Vec<f64>) {
    let width: usize = dims.iter().sum();
    let bags = s.offsets[0].len();
    let (mut want, mut scale) = (vec![0.0; bags * width], vec![0.0; bags * width]);
    let mut col = 0;
    for t in 0..dims.len() {
        let d = dims[t];
        let (w, sc) = common::bags_ref(
            &data[t],
            d,
            &s.ids[t],
            &s.offsets[t],
            mode,
            s.weights[t].as_deref(),
        );
        for b in 0..bags {
            want[b * width + col..b * width + col + d].copy_from_slice(&w[b * d..(b + 1) * d]);
            scale[b * width + col..b * width + col + d].copy_from_slice(&sc[b * d..(b + 1) * d]);
        }
        col += d;
    }
    (want, scale)
}

#[test]
fn table_batched_bags_match_the_reference() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("batched"));
    // mixed widths (one pool per width, scalar reads), then one width (vec4), then f16
    let setups: [(&[(usize, usize)], RowFormat); 3] = [
        (
            &[(3000, 8), (500, 8), (12000, 3), (40, 8), (800, 5)],
            RowFormat::F32,
        ),
        (&[(5000, 16), (300, 16), (2000, 16)], RowFormat::F32),
        (&[(4000, 8), (900, 12)], RowFormat::F16),
    ];
    for (shapes, format) in setups {
        let dims: Vec<usize> = shapes.iter().map(|s| s.1).collect();
        let mut data: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(r, d)| random_values(r * d, rng.next_u64()))
            .collect();
        if format == RowFormat::F16 {
            // the reference reads the rows as the slots store them
            for v in &mut data {
                for x in v.iter_mut() {
                    *x = hotrow::half::f16::from_f32(*x).to_f32();
                }
            }
        }
        let tables = host_tables(shapes, &data);
        // the one-width setup finds its hits on the GPU
        let resolution = if dims.iter().all(|&d| d == dims[0]) {
            hotrow::Resolution::Device
        } else {
            hotrow::Resolution::Host
        };
        let config = CacheConfig::default()
            .capacity(Capacity::Fraction(0.08))
            .row_format(format)
            .resolution(resolution);
        let mut cache = TableBatchedCache::new(ctx(), tables, config).unwrap();
        assert_eq!(cache.width(), dims.iter().sum::<usize>());
        let zipf: Vec<ZipfIds> = shapes
            .iter()
            .map(|&(r, _)| ZipfIds::new(r, 1.05, rng.next_u64()))
            .collect();
        let mut out = Embeddings::new(ctx(), 1, 1).unwrap();
        for k in 0..12 {
            let (mode, pooling) =
                [(0u32, Pooling::Sum), (1, Pooling::Mean), (2, Pooling::Max)][k % 3];
            let bags = if k == 5 {
                0
            } else {
                1 + rng.below(120) as usize
            };
            let s = step(&mut rng, &zipf, bags, mode != 2);
            out.fill(f32::NAN).unwrap();
            cache
                .lookup_bags_into(&s.parts(), pooling, &mut out)
                .unwrap();
            assert_eq!((out.rows(), out.dim()), (bags, cache.width()));
            if bags > 0 {
                let (want, scale) = reference(&data, &dims, &s, mode);
                assert_close(
                    &out,
                    &want,
                    &scale,
                    &format!("{dims:?} {format:?} step {k}"),
                );
            }
        }
        // per-table counters add up to the whole
        let all = cache.stats();
        let per: Vec<_> = (0..cache.tables())
            .map(|t| cache.table_stats(t).unwrap().clone())
            .collect();
        assert_eq!(per.iter().map(|s| s.requests).sum::<u64>(), all.requests);
        assert_eq!(
            per.iter().map(|s| s.rows_uploaded).sum::<u64>(),
            all.rows_uploaded
        );
        assert!(all.evictions > 0 && all.hits > 0, "{all:?}");
        if resolution == hotrow::Resolution::Device {
            assert!(all.device_passes > 0, "the GPU resolved: {all:?}");
        }
        for (t, shape) in shapes.iter().enumerate() {
            assert!(cache.resident(t).unwrap() <= shape.0);
        }
        // Uploads are counted against the right table: from empty, with room for every
        // row, a step uploads exactly each table's distinct ids.
        let tables = host_tables(shapes, &data);
        let whole = CacheConfig::default()
            .capacity(Capacity::Fraction(1.0))
            .row_format(format)
            .resolution(resolution);
        let mut fresh = TableBatchedCache::new(ctx(), tables, whole).unwrap();
        let s = step(&mut rng, &zipf, 200, false);
        fresh.lookup_bags(&s.parts(), Pooling::Sum).unwrap();
        for (t, ids) in s.ids.iter().enumerate() {
            let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len();
            let got = fresh.table_stats(t).unwrap().rows_uploaded;
            assert_eq!(got, distinct as u64, "{dims:?} table {t}");
        }
    }
}

/// A step that fits the cache is one submission for all its row widths (every width's pass
/// and bags together), plus a probe per width with device resolution; the results stay
/// right.
#[test]
fn one_submission_per_step() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("batched submissions"));
    let setups: [(&[(usize, usize)], usize); 2] = [
        (&[(900, 8), (300, 8), (2000, 8)], 1),
        (&[(900, 8), (300, 4), (2000, 8), (50, 4)], 2),
    ];
    for (shapes, widths) in setups {
        for resolution in [hotrow::Resolution::Host, hotrow::Resolution::Device] {
            let dims: Vec<usize> = shapes.iter().map(|s| s.1).collect();
            let data: Vec<Vec<f32>> = shapes
                .iter()
                .map(|&(r, d)| random_values(r * d, rng.next_u64()))
                .collect();
            let tables = host_tables(shapes, &data);
            let config = CacheConfig::default()
                .capacity(Capacity::Fraction(0.6))
                .resolution(resolution);
            let mut cache = TableBatchedCache::new(ctx(), tables, config).unwrap();
            let zipf: Vec<ZipfIds> = shapes
                .iter()
                .map(|&(r, _)| ZipfIds::new(r, 1.05, rng.next_u64()))
                .collect();
            let mut out = Embeddings::new(ctx(), 1, 1).unwrap();
            // one submission for every width's pass and bags, plus a probe per width with
            // resolution on the GPU
            let probes = u64::from(resolution == hotrow::Resolution::Device);
            for k in 0..6 {
                let bags = 1 + rng.below(40) as usize;
                let s = step(&mut rng, &zipf, bags, k % 2 == 0);
                let before = cache.stats();
                out.fill(f32::NAN).unwrap();
                cache
                    .lookup_bags_into(&s.parts(), Pooling::Sum, &mut out)
                    .unwrap();
                let after = cache.stats();
                let (want, scale) = reference(&data, &dims, &s, 0);
                let what = format!("{dims:?} {resolution:?} step {k}");
                assert_close(&out, &want, &scale, &what);
                // A width whose bags are all empty this step has no pass (few bags of 0-9
                // ids each can leave both 4-wide tables without ids).
                let mut busy: Vec<usize> = (0..dims.len())
                    .filter(|&t| !s.ids[t].is_empty())
                    .map(|t| dims[t])
                    .collect();
                busy.sort_unstable();
                busy.dedup();
                assert!(busy.len() <= widths);
                let busy = busy.len() as u64;
                if common::on_gpu_path() && resolution == hotrow::Resolution::Host {
                    // The GPU-driven path: a pass takes at most the width's slots in
                    // positions (repeats included), so a long width may take several.
                    assert!(after.passes - before.passes >= busy, "{what}");
                    assert!(after.submissions > before.submissions, "{what}");
                    continue;
                }
                assert_eq!(after.passes - before.passes, busy, "{what}");
                assert_eq!(
                    after.submissions - before.submissions,
                    u64::from(busy > 0) + busy * probes,
                    "{what}: {after:?}"
                );
            }
        }
    }
}

#[test]
fn bad_input_names_the_table_and_changes_nothing() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("batched_bad"));
    let data: Vec<Vec<f32>> = (0..3)
        .map(|_| random_values(200 * 4, rng.next_u64()))
        .collect();
    let tables: Vec<HostTable<'_>> = data
        .iter()
        .map(|v| HostTable::borrowed(v, 4).unwrap())
        .collect();
    let mut cache = TableBatchedCache::new(ctx(), tables, CacheConfig::default()).unwrap();
    let ok = TableBags {
        ids: &[1, 2, 3],
        offsets: &[0, 1],
        weights: None,
    };
    cache.lookup_bags(&[ok, ok, ok], Pooling::Sum).unwrap();
    let stats = cache.stats();
    let table = |r: hotrow::Result<Embeddings>| match r {
        Err(HotrowError::InTable { table, source }) => (table, *source),
        other => panic!("expected InTable, got {other:?}"),
    };
    // an id past table 2's rows
    let far = TableBags {
        ids: &[1, 200],
        offsets: &[0, 1],
        weights: None,
    };
    let (t, e) = table(cache.lookup_bags(&[ok, ok, far], Pooling::Sum));
    assert_eq!(t, 2);
    assert!(matches!(
        e,
        HotrowError::IdOutOfRange {
            id: 200,
            position: 1,
            rows: 200
        }
    ));
    // another number of bags in table 1
    let three = TableBags {
        ids: &[1, 2, 3],
        offsets: &[0, 1, 2],
        weights: None,
    };
    assert_eq!(
        table(cache.lookup_bags(&[ok, three, ok], Pooling::Sum)).0,
        1
    );
    // a NaN weight, and weights with max, in table 0
    let nan = TableBags {
        ids: &[1, 2, 3],
        offsets: &[0, 1],
        weights: Some(&[1.0, f32::NAN, 1.0]),
    };
    assert_eq!(table(cache.lookup_bags(&[nan, ok, ok], Pooling::Sum)).0, 0);
    let (t, e) = table(cache.lookup_bags(&[nan, ok, ok], Pooling::Max));
    assert_eq!(t, 0);
    assert!(matches!(e, HotrowError::WeightsUnsupported { .. }));
    // decreasing offsets in table 2
    let back = TableBags {
        ids: &[1, 2, 3],
        offsets: &[2, 1],
        weights: None,
    };
    assert_eq!(table(cache.lookup_bags(&[ok, ok, back], Pooling::Sum)).0, 2);
    // bad input in several tables (checked in parallel): the first table's error, always
    for _ in 0..20 {
        let (t, e) = table(cache.lookup_bags(&[ok, far, back], Pooling::Sum));
        assert_eq!(t, 1);
        assert!(matches!(e, HotrowError::IdOutOfRange { id: 200, .. }));
    }
    // the wrong number of tables
    assert!(matches!(
        cache.lookup_bags(&[ok, ok], Pooling::Sum),
        Err(HotrowError::LengthMismatch { .. })
    ));
    assert_eq!(cache.stats(), stats, "nothing changed");
    // a foreign output
    let other = hotrow::GpuContext::new().unwrap();
    let mut foreign = Embeddings::new(&other, 2, 12).unwrap();
    assert!(matches!(
        cache.lookup_bags_into(&[ok, ok, ok], Pooling::Sum, &mut foreign),
        Err(HotrowError::ForeignContext { .. })
    ));
    assert_eq!(cache.stats(), stats, "nothing changed");
    assert!(
        TableBatchedCache::new(ctx(), Vec::<HostTable<'_>>::new(), CacheConfig::default()).is_err()
    );
}

/// A width whose tables have only empty bags this step gets zeros, the others their bags;
/// zero capacity is refused.
#[test]
fn empty_tables_pool_to_zeros() {
    let _serial = common::serial();
    let mut rng = Rng::new(seed("batched_empty"));
    let (a, b) = (
        random_values(300 * 4, rng.next_u64()),
        random_values(50 * 3, rng.next_u64()),
    );
    let tables = vec![
        HostTable::borrowed(&a, 4).unwrap(),
        HostTable::borrowed(&b, 3).unwrap(),
    ];
    let mut cache = TableBatchedCache::new(ctx(), tables.clone(), CacheConfig::default()).unwrap();
    let full = TableBags {
        ids: &[7, 299, 7],
        offsets: &[0, 2],
        weights: None,
    };
    let empty = TableBags {
        ids: &[],
        offsets: &[0, 0],
        weights: None,
    };
    let out = cache.lookup_bags(&[full, empty], Pooling::Mean).unwrap();
    let got = out.to_host().unwrap();
    let want = hotrow::reference::bags(&a, 4, &[7, 299, 7], &[0, 2], 1, None);
    for r in 0..2 {
        for c in 0..4 {
            assert!((got[r * 7 + c] as f64 - want[r * 4 + c]).abs() < 1e-6);
        }
        assert_eq!(&got[r * 7 + 4..r * 7 + 7], &[0.0; 3]);
    }
    let zero = CacheConfig::default().capacity(Capacity::Rows(0));
    assert!(matches!(
        TableBatchedCache::new(ctx(), tables, zero),
        Err(HotrowError::InvalidArgument(_))
    ));
}

/// A source that holds its rows in memory but does not say so: the cache reads it one
/// `read_rows` call per table.
struct Opaque(HostTable<'static>);

impl hotrow::RowSource for Opaque {
    fn rows(&self) -> usize {
        self.0.rows()
    }
    fn dim(&self) -> usize {
        self.0.dim()
    }
    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<(), HotrowError> {
        self.0.read_rows(ids, out)
    }
}

/// Tables of every kind in one cache: an f16 `.npy` file, an f32 `.npy` file, bf16 and f32
/// host tables (all in memory: the missed rows of all of them are read in one loop), then
/// the same with one opaque source among them (read table by table): the same rows.
#[test]
fn mixed_sources_read_the_same_rows() {
    use hotrow::half::{bf16, f16};
    use hotrow::RowSource;
    use std::sync::Arc;
    let _serial = common::serial();
    let mut rng = Rng::new(seed("mixed sources"));
    let dir = tempfile::tempdir().unwrap();
    let shapes = [(3000usize, 8usize), (700, 8), (5000, 8), (90, 8), (1200, 8)];
    let raw: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(r, d)| random_values(r * d, rng.next_u64()))
        .collect();
    // every table's values as its storage rounds them
    let f16_of = |v: &[f32]| -> Vec<f16> { v.iter().map(|&x| f16::from_f32(x)).collect() };
    let bf16_of = |v: &[f32]| -> Vec<bf16> { v.iter().map(|&x| bf16::from_f32(x)).collect() };
    let halves = f16_of(&raw[0]);
    let brains = bf16_of(&raw[2]);
    let data: Vec<Vec<f32>> = vec![
        halves.iter().map(|x| x.to_f32()).collect(),
        raw[1].clone(),
        brains.iter().map(|x| x.to_f32()).collect(),
        raw[3].clone(),
        raw[4].clone(),
    ];
    let npy16 = dir.path().join("t0.npy");
    HostTable::owned_f16(halves, 8)
        .unwrap()
        .save_npy(&npy16)
        .unwrap();
    let npy32 = dir.path().join("t1.npy");
    HostTable::borrowed(&raw[1], 8)
        .unwrap()
        .save_npy(&npy32)
        .unwrap();
    let sources = |opaque: bool| -> Vec<Arc<dyn RowSource>> {
        let last: Arc<dyn RowSource> = if opaque {
            Arc::new(Opaque(HostTable::owned(raw[4].clone(), 8).unwrap()))
        } else {
            Arc::new(HostTable::owned(raw[4].clone(), 8).unwrap())
        };
        vec![
            Arc::new(hotrow::FileTable::open_npy(&npy16).unwrap()),
            Arc::new(hotrow::FileTable::open_npy(&npy32).unwrap()),
            Arc::new(HostTable::owned_bf16(brains.clone(), 8).unwrap()),
            Arc::new(HostTable::owned(raw[3].clone(), 8).unwrap()),
            last,
        ]
    };
    let dims = vec![8; shapes.len()];
    let zipf: Vec<ZipfIds> = shapes
        .iter()
        .map(|&(r, _)| ZipfIds::new(r, 1.05, rng.next_u64()))
        .collect();
    for opaque in [false, true] {
        for resolution in [hotrow::Resolution::Host, hotrow::Resolution::Device] {
            let config = CacheConfig::default()
                .capacity(Capacity::Fraction(0.1))
                .resolution(resolution);
            let mut cache = TableBatchedCache::new(ctx(), sources(opaque), config).unwrap();
            for k in 0..6 {
                // many bags: a step's misses span several read tasks
                let bags = 150 + rng.below(300) as usize;
                let s = step(&mut rng, &zipf, bags, k % 2 == 0);
                let out = cache.lookup_bags(&s.parts(), Pooling::Sum).unwrap();
                let (want, scale) = reference(&data, &dims, &s, 0);
                let what = format!("opaque {opaque} {resolution:?} step {k}");
                assert_close(&out, &want, &scale, &what);
            }
            assert!(cache.stats().rows_uploaded > 1000, "{:?}", cache.stats());
        }
    }
}

/// A table file changed in place under a table-batched cache (whose reads go through
/// `memory_rows`): the step fails with `Changed` naming that table and file, and the cache keeps no
/// row of the failed step.
#[test]
fn a_changed_file_fails_the_step_cleanly() {
    use hotrow::{FileProblem, FileTable};
    use std::io::Write;
    let _serial = common::serial();
    let mut rng = Rng::new(seed("batched changed file"));
    let dir = tempfile::tempdir().unwrap();
    let shapes = [(600usize, 8usize), (900, 8)];
    let paths: Vec<std::path::PathBuf> = shapes
        .iter()
        .enumerate()
        .map(|(t, &(r, d))| {
            let path = dir.path().join(format!("t{t}.npy"));
            let v = random_values(r * d, rng.next_u64());
            HostTable::owned(v, d).unwrap().save_npy(&path).unwrap();
            path
        })
        .collect();
    let tables: Vec<FileTable> = paths
        .iter()
        .map(|p| FileTable::open_npy(p).unwrap())
        .collect();
    let config = CacheConfig::default()
        .path(BatchPath::Host)
        .capacity(Capacity::Fraction(0.3));
    let mut cache = TableBatchedCache::new(ctx(), tables, config).unwrap();
    let zipf: Vec<ZipfIds> = shapes
        .iter()
        .map(|&(r, _)| ZipfIds::new(r, 1.05, rng.next_u64()))
        .collect();
    let s = step(&mut rng, &zipf, 60, false);
    cache.lookup_bags(&s.parts(), Pooling::Sum).unwrap();
    let resident: Vec<usize> = (0..2).map(|t| cache.resident(t).unwrap()).collect();
    let uploaded = cache.stats().rows_uploaded;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&paths[1])
        .unwrap()
        .write_all(&[0u8; 64])
        .unwrap();
    // every id of table 1 not resident: the step must read that file
    let fresh = Step {
        ids: vec![s.ids[0].clone(), (0..shapes[1].0 as u32).collect()],
        offsets: vec![s.offsets[0].clone(), {
            let mut o = vec![0u32; s.offsets[0].len()];
            o[1..].iter_mut().for_each(|x| *x = shapes[1].0 as u32);
            o
        }],
        weights: vec![None, None],
    };
    match cache.lookup_bags(&fresh.parts(), Pooling::Sum) {
        Err(HotrowError::InTable { table: 1, source }) => match *source {
            HotrowError::File { path, problem } => {
                assert_eq!((path, problem), (paths[1].clone(), FileProblem::Changed))
            }
            other => panic!("expected Changed, got {other:?}"),
        },
        other => panic!("expected table 1's Changed, got {other:?}"),
    }
    // The failed step changed nothing (the rows it evicted went back: its rows never
    // reached the GPU), and nothing is counted as uploaded.
    let after: Vec<usize> = (0..2).map(|t| cache.resident(t).unwrap()).collect();
    assert_eq!(after, resident, "the failed step changed the cache");
    assert_eq!(cache.stats().rows_uploaded, uploaded);
    // The other table still serves, right.
    let mut only0 = step(&mut rng, &zipf, 40, false);
    only0.ids[1].clear();
    only0.offsets[1].iter_mut().for_each(|o| *o = 0);
    let data0 = FileTable::open_npy(&paths[0]).unwrap();
    let rows0: Vec<f32> = (0..shapes[0].0 as u32)
        .flat_map(|id| data0.read_row(id).unwrap())
        .collect();
    let out = cache.lookup_bags(&only0.parts(), Pooling::Sum).unwrap();
    let (want, scale) = reference(&[rows0, vec![0.0; 8]], &[8, 8], &only0, 0);
    assert_close(&out, &want, &scale, "after the failed step");
}

/// A table's source that fails or panics while a step reads it fails the step with
/// `InTable` naming that table (of four, in three widths); the step changes nothing, not
/// even in the widths served before the failing one (their passes are taken back), and the
/// next step is right (with device resolution, that also checks the GPU's id -> slot
/// tables were left consistent).
#[test]
fn a_failing_table_is_named() {
    use std::sync::atomic::Ordering;
    let _serial = common::serial();
    let mut rng = Rng::new(seed("failing table"));
    // Widths in the order the cache groups them: 8 (tables 0, 2), 4 (table 1), 16 (table 3).
    let shapes = [(900usize, 8usize), (400, 4), (2000, 8), (300, 16)];
    let data: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(r, d)| random_values(r * d, rng.next_u64()))
        .collect();
    let dims: Vec<usize> = shapes.iter().map(|&(_, d)| d).collect();
    let zipf: Vec<ZipfIds> = shapes
        .iter()
        .map(|&(r, _)| ZipfIds::new(r, 1.05, rng.next_u64()))
        .collect();
    // The counters a failed step must leave as they were (its probe, with device
    // resolution, did reach the GPU, and the times spent are times spent).
    let counts = |s: hotrow::CacheStats| {
        [
            s.batches,
            s.passes,
            s.device_passes,
            s.requests,
            s.distinct,
            s.hits,
            s.misses,
            s.rows_uploaded,
            s.evictions,
            s.bytes_uploaded,
        ]
    };
    for in_memory in [true, false] {
        for resolution in [hotrow::Resolution::Host, hotrow::Resolution::Device] {
            let tables: Vec<common::Flaky<'_>> = data
                .iter()
                .zip(&dims)
                .map(|(v, &d)| common::Flaky {
                    hide_memory: !in_memory,
                    ..common::Flaky::new(HostTable::borrowed(v, d).unwrap())
                })
                .collect();
            let config = CacheConfig::default()
                .path(BatchPath::Host)
                .capacity(Capacity::Fraction(0.5))
                .resolution(resolution);
            let mut cache = TableBatchedCache::new(ctx(), tables, config).unwrap();
            let warm = step(&mut rng, &zipf, 20, false);
            cache.lookup_bags(&warm.parts(), Pooling::Sum).unwrap();
            // (mode, failing table): the last width fails after two were recorded, the
            // second after one, a table sharing the first width with another.
            for (round, (mode, failing)) in [(1u8, 3usize), (2, 1), (1, 2), (2, 3)]
                .into_iter()
                .enumerate()
            {
                let what =
                    format!("in memory {in_memory} {resolution:?} mode {mode} table {failing}");
                let resident: Vec<usize> = (0..4).map(|t| cache.resident(t).unwrap()).collect();
                let stats = cache.stats();
                let table_stats: Vec<_> = (0..4)
                    .map(|t| cache.table_stats(t).unwrap().clone())
                    .collect();
                // Every table asks for a third of its rows, mostly not resident (the pools
                // hold half): every width misses and evicts before the failing one is read,
                // and each width's ids fit one pass.
                let mut s = step(&mut rng, &zipf, 20, false);
                for (t, &(rows, _)) in shapes.iter().enumerate() {
                    let third = (rows / 3) as u32;
                    let first = third * (round as u32 % 3);
                    s.ids[t] = (first..first + third).rev().collect();
                    s.offsets[t] = (0..20).map(|b| b * third / 20).collect();
                }
                cache.sources()[failing].mode.store(mode, Ordering::Relaxed);
                let r = cache.lookup_bags(&s.parts(), Pooling::Sum);
                cache.sources()[failing].mode.store(0, Ordering::Relaxed);
                match r {
                    Err(HotrowError::InTable { table, source }) if table == failing => assert!(
                        matches!(
                            (mode, *source),
                            (1, HotrowError::RowSource(_)) | (2, HotrowError::RowSourcePanicked(_))
                        ),
                        "{what}"
                    ),
                    other => panic!("{what}: expected table {failing}'s failure, got {other:?}"),
                }
                let after: Vec<usize> = (0..4).map(|t| cache.resident(t).unwrap()).collect();
                assert_eq!(after, resident, "{what}: the failed step changed the cache");
                assert_eq!(
                    counts(cache.stats()),
                    counts(stats),
                    "{what}: the failed step changed the counters"
                );
                for (t, before) in table_stats.iter().enumerate() {
                    assert_eq!(
                        &cache.table_stats(t).unwrap(),
                        before,
                        "{what}: table {t}'s counters"
                    );
                }
                for _ in 0..2 {
                    let out = cache.lookup_bags(&s.parts(), Pooling::Sum).unwrap();
                    let (want, scale) = reference(&data, &dims, &s, 0);
                    assert_close(&out, &want, &scale, &format!("{what}: the next step"));
                }
                let next = step(&mut rng, &zipf, 20, false);
                let out = cache.lookup_bags(&next.parts(), Pooling::Sum).unwrap();
                let (want, scale) = reference(&data, &dims, &next, 0);
                assert_close(&out, &want, &scale, &format!("{what}: a Zipf step after"));
            }
        }
    }
}

/// A source with no rows, or rows of dim 0, among the tables is refused naming it; tables of
/// different kinds go in one cache as `Box<dyn RowSource>`.
#[test]
fn empty_tables_are_named_and_boxed_sources_serve() {
    use hotrow::RowSource;
    struct Shape(usize, usize);
    impl RowSource for Shape {
        fn rows(&self) -> usize {
            self.0
        }
        fn dim(&self) -> usize {
            self.1
        }
        fn read_rows(&self, _: &[u32], out: &mut [f32]) -> Result<(), HotrowError> {
            out.fill(0.25);
            Ok(())
        }
    }
    let _serial = common::serial();
    let data = random_values(50 * 4, 3);
    for (bad, what) in [(Shape(0, 4), "no rows"), (Shape(10, 0), "dim 0")] {
        let tables: Vec<Box<dyn RowSource>> = vec![
            Box::new(HostTable::borrowed(&data, 4).unwrap()),
            Box::new(Shape(20, 4)),
            Box::new(bad),
        ];
        match TableBatchedCache::new(ctx(), tables, CacheConfig::default()) {
            Err(HotrowError::InTable { table: 2, source }) => {
                assert!(matches!(*source, HotrowError::InvalidArgument(_)), "{what}")
            }
            other => panic!("{what}: expected table 2 refused, got {:?}", other.err()),
        }
    }
    let tables: Vec<Box<dyn RowSource>> = vec![
        Box::new(HostTable::borrowed(&data, 4).unwrap()),
        Box::new(Shape(20, 4)),
    ];
    let mut cache = TableBatchedCache::new(ctx(), tables, CacheConfig::default()).unwrap();
    let out = cache
        .lookup_bags(
            &[
                TableBags {
                    ids: &[3, 49],
                    offsets: &[0, 1],
                    weights: None,
                },
                TableBags {
                    ids: &[19, 0, 7],
                    offsets: &[0, 3],
                    weights: None,
                },
            ],
            Pooling::Sum,
        )
        .unwrap()
        .to_host()
        .unwrap();
    let want: Vec<f32> = [
        &data[12..16],
        &[0.75; 4][..],
        &data[196..200],
        &[0.0; 4][..],
    ]
    .concat();
    assert_eq!(out, want);
}
