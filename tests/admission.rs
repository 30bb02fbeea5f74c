//! Frequency admission (`EvictionPolicy::TinyLfu`) in a cache, on the host path (the slot
//! map's W-TinyLFU) and on the GPU-driven path (evict.wgsl's admission) where the adapter has
//! host-visible storage: every output right though refused rows are served from transient
//! slots; the counters add up; it keeps more of a skewed stream than CLOCK and as much of a
//! moving one; the settings it cannot serve are refused with a typed error.

mod common;

use common::seed;
use common::workload::{random_values, Rng, ZipfIds};
use hotrow::reference::gather;
use hotrow::{
    BatchPath, CacheConfig, Capacity, EmbeddingCache, EvictionPolicy, GpuContext, HostTable,
    HotrowError, Optimizer, Resolution,
};

/// The paths admission runs on here, each with its context: the host path, and the
/// GPU-driven path where the adapter has host-visible storage (else skipped, with the
/// reason printed).
fn paths() -> Vec<(BatchPath, &'static GpuContext)> {
    let mut v = vec![(BatchPath::Host, common::ctx())];
    if let Some(ctx) = common::host_storage_ctx() {
        v.push((BatchPath::Gpu, ctx));
    }
    v
}

/// Skewed batches (with repeats), some bigger than the cache and some empty, through a
/// TinyLFU cache of one and of four slot-map partitions, on each path: every output equals
/// the gather
/// (into a poisoned output), rows are refused and served from transient slots, the
/// counters add up (uploads = resident + evicted + transient), nothing transient is
/// resident, and the transient slots are counted in the GPU memory.
#[test]
fn refused_rows_are_served_right_and_never_resident() {
    let _serial = common::serial();
    let (rows, dim) = (60_000usize, 5usize);
    let data = random_values(rows * dim, seed("admission_table"));
    let zipf = ZipfIds::new(rows, 1.05, seed("admission_zipf"));
    let mut rng = Rng::new(seed("admission_ids"));
    let cases = [(300usize, 1usize), (4_096, 4)];
    for ((cap, partitions), (path, ctx)) in cases
        .into_iter()
        .flat_map(|c| paths().into_iter().map(move |p| (c, p)))
    {
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(cap))
            .policy(EvictionPolicy::TinyLfu)
            .partitions(partitions)
            .path(path);
        let table = HostTable::borrowed(&data, dim).unwrap();
        let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
        assert_eq!(cache.config().path, path);
        assert_eq!(cache.config().policy, EvictionPolicy::TinyLfu);
        assert_eq!(cache.config().partitions, partitions);
        let row_bytes = (dim * 4) as u64;
        let slots = cache.memory().slots;
        let transient = cap.div_ceil(8) as u64;
        assert!(
            slots >= (cap as u64 + transient) * row_bytes
                && slots <= (cap as u64 + transient + partitions as u64) * row_bytes,
            "slots {slots} bytes for {cap} + ~{transient} rows"
        );
        for k in 0..40 {
            let n = match k % 10 {
                3 => 0,
                7 => 3 * cap,
                _ => cap + cap / 3,
            };
            let ids = zipf.batch(n, &mut rng);
            let mut out = common::poisoned(ctx, n, dim);
            cache.lookup_into(&ids, &mut out).unwrap();
            let got = out.to_host().unwrap();
            assert_eq!(
                got,
                gather(&data, dim, &ids),
                "{path:?} cap {cap} batch {k}"
            );
            let resident = common::resident(&cache);
            assert!(resident.len() <= cap);
            let s = cache.stats();
            assert_eq!(s.hits + s.misses, s.distinct, "{s:?}");
            assert_eq!(
                s.rows_uploaded - s.transient - s.evictions,
                resident.len() as u64,
                "{s:?}"
            );
        }
        let s = cache.stats();
        assert!(
            s.refused > 0 && s.transient > 0,
            "{path:?}: nothing refused: {s:?}"
        );
        assert!(s.transient <= s.refused, "{s:?}");
    }
}

/// The settings TinyLFU cannot serve are typed errors at construction: training (a
/// refused row's update would have no slot to live in) and the GPU's slot index; the
/// GPU-driven path serves it where the context has host-visible storage (`Auto` takes it
/// there), and is refused with a typed error where it has none.
#[test]
fn settings_admission_cannot_serve_are_refused() {
    let _serial = common::serial();
    let (rows, dim) = (500usize, 4usize);
    let data = random_values(rows * dim, seed("admission_refusals"));
    let base = || {
        CacheConfig::default()
            .capacity(Capacity::Rows(64))
            .policy(EvictionPolicy::TinyLfu)
    };
    let new =
        |ctx, config| EmbeddingCache::new(ctx, HostTable::borrowed(&data, dim).unwrap(), config);
    let ctx = common::ctx();
    let training = new(
        ctx,
        base()
            .training(Optimizer::Sgd { lr: 0.1 })
            .path(BatchPath::Host),
    );
    assert!(
        matches!(training, Err(HotrowError::InvalidArgument(ref m)) if m.contains("TinyLfu")),
        "{:?}",
        training.err()
    );
    let device = new(
        ctx,
        base().resolution(Resolution::Device).path(BatchPath::Host),
    );
    assert!(
        matches!(device, Err(HotrowError::InvalidArgument(ref m)) if m.contains("TinyLfu")),
        "{:?}",
        device.err()
    );
    if !ctx.adapter().host_visible_storage {
        let gpu = new(ctx, base().path(BatchPath::Gpu));
        assert!(
            matches!(gpu, Err(HotrowError::Unsupported { .. })),
            "{:?}",
            gpu.err()
        );
    }
    if let Some(ctx) = common::host_storage_ctx() {
        let gpu = new(ctx, base().path(BatchPath::Gpu)).unwrap();
        assert_eq!(gpu.config().policy, EvictionPolicy::TinyLfu);
        let auto = new(ctx, base().path(BatchPath::Auto)).unwrap();
        assert_eq!(auto.config().path, BatchPath::Gpu);
        let training = new(ctx, base().training(Optimizer::Sgd { lr: 0.1 }));
        assert!(
            matches!(training, Err(HotrowError::InvalidArgument(ref m)) if m.contains("TinyLfu")),
            "{:?}",
            training.err()
        );
    }
}

/// The unique-row hit rate of `stream` through a cache of `cap` slots under `policy` on
/// `path`, every output checked against the gather.
fn hit_rate(
    (path, ctx): (BatchPath, &GpuContext),
    data: &[f32],
    dim: usize,
    cap: usize,
    policy: EvictionPolicy,
    stream: &[Vec<u32>],
) -> f64 {
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(cap))
        .policy(policy)
        .partitions(1)
        .path(path);
    let table = HostTable::borrowed(data, dim).unwrap();
    let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
    for (k, ids) in stream.iter().enumerate() {
        let out = cache.lookup(ids).unwrap().to_host().unwrap();
        assert_eq!(out, gather(data, dim, ids), "{path:?} {policy:?} batch {k}");
    }
    cache.stats().hit_rate()
}

/// On a skewed stream with a cache of 2% of the table, TinyLFU serves more of each batch
/// from the cache than CLOCK (and than LRU, on the host path that has it), through the whole
/// cache (not only the slot map), on each path.
#[test]
fn admission_keeps_more_of_a_skewed_stream() {
    let _serial = common::serial();
    let (rows, dim) = (40_000usize, 2usize);
    let data = random_values(rows * dim, seed("admission_rate_table"));
    let zipf = ZipfIds::new(rows, 1.05, seed("admission_rate_zipf"));
    let mut rng = Rng::new(seed("admission_rate_ids"));
    let stream: Vec<Vec<u32>> = (0..60).map(|_| zipf.batch(1_000, &mut rng)).collect();
    for path in paths() {
        let rate = |policy| hit_rate(path, &data, dim, rows / 50, policy, &stream);
        let (clock, tiny) = (rate(EvictionPolicy::Clock), rate(EvictionPolicy::TinyLfu));
        eprintln!("{:?} hit rate: clock {clock:.4}, tinylfu {tiny:.4}", path.0);
        // (The GPU admits or refuses a pass's misses at once, against CLOCK's victims, with
        // no recency window to hold new rows while their counts grow: it gains less here,
        // where a batch's misses are half the cache.)
        let gain = if path.0 == BatchPath::Host {
            0.03
        } else {
            0.02
        };
        assert!(tiny > clock + gain, "{:?}: {tiny} vs {clock}", path.0);
        if path.0 == BatchPath::Host {
            let lru = rate(EvictionPolicy::Lru);
            assert!(tiny > lru + 0.03, "{tiny} vs LRU {lru}");
        }
    }
}

/// A hot set that moves every 15 batches (W5's shape, small): TinyLFU's window grows when
/// frequency keeps the new hot rows out, so it loses little to CLOCK's pure recency, on
/// each path. (Both see a move in the batch itself, from its share of hits, and forget the
/// sketch; the host path still loses about a point here (its window and segments take a
/// few batches to settle after each move), the GPU path under half a point. Without the adaptation, frequency
/// would keep each new hot set out until the old counts aged.)
#[test]
fn admission_follows_a_moving_hot_set() {
    let _serial = common::serial();
    let (rows, dim) = (40_000usize, 2usize);
    let data = random_values(rows * dim, seed("admission_moving_table"));
    let mut rng = Rng::new(seed("admission_moving_ids"));
    let mut stream = Vec::new();
    for phase in 0..6u64 {
        let zipf = ZipfIds::new(rows, 1.05, seed("admission_moving_zipf") ^ phase);
        stream.extend((0..15).map(|_| zipf.batch(1_000, &mut rng)));
    }
    for path in paths() {
        let rate = |policy| hit_rate(path, &data, dim, rows / 20, policy, &stream);
        let (clock, tiny) = (rate(EvictionPolicy::Clock), rate(EvictionPolicy::TinyLfu));
        eprintln!(
            "{:?} moving hit rate: clock {clock:.4}, tinylfu {tiny:.4}",
            path.0
        );
        let loss = if path.0 == BatchPath::Host {
            0.02
        } else {
            0.005
        };
        assert!(tiny > clock - loss, "{:?}: {tiny} vs {clock}", path.0);
    }
}
