//! Frequency admission (`EvictionPolicy::TinyLfu`) in a cache: every output right though
//! refused rows are served from transient slots; the counters add up; the settings it
//! cannot serve are refused with a typed error; the path choice says why.

mod common;

use common::seed;
use common::workload::{random_values, Rng, ZipfIds};
use hotrow::reference::gather;
use hotrow::{
    BatchPath, CacheConfig, Capacity, EmbeddingCache, EvictionPolicy, HostTable, HotrowError,
    Optimizer, Resolution,
};

/// Skewed batches (with repeats), some bigger than the cache and some empty, through a
/// TinyLFU cache of one and of four slot-map partitions: every output equals the gather
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
    let ctx = common::ctx();
    for (cap, partitions) in [(300usize, 1usize), (4_096, 4)] {
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(cap))
            .policy(EvictionPolicy::TinyLfu)
            .partitions(partitions)
            .path(BatchPath::Host);
        let table = HostTable::borrowed(&data, dim).unwrap();
        let mut cache = EmbeddingCache::new(ctx, table, config).unwrap();
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
            assert_eq!(got, gather(&data, dim, &ids), "cap {cap} batch {k}");
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
        assert!(s.refused > 0 && s.transient > 0, "nothing refused: {s:?}");
        assert!(s.transient <= s.refused, "{s:?}");
    }
}

/// The settings TinyLFU cannot serve are typed errors at construction: training (a
/// refused row's update would have no slot to live in), the GPU's slot index, and an
/// explicit GPU-driven path; `BatchPath::Auto` takes the host path and says why.
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
    let gpu = new(ctx, base().path(BatchPath::Gpu));
    assert!(gpu.is_err(), "BatchPath::Gpu with TinyLfu was accepted");
    if let Some(ctx) = common::host_storage_ctx() {
        let gpu = new(ctx, base().path(BatchPath::Gpu));
        assert!(
            matches!(gpu, Err(HotrowError::InvalidArgument(ref m)) if m.contains("TinyLfu")),
            "{:?}",
            gpu.err()
        );
        let auto = new(ctx, base().path(BatchPath::Auto)).unwrap();
        assert_eq!(auto.config().path, BatchPath::Host);
        assert!(auto.config().path_reason.contains("TinyLfu"));
    }
}

/// On a skewed stream with a cache of 2% of the table, TinyLFU serves more of each batch
/// from the cache than CLOCK and LRU do, through the whole cache (not only the slot map).
#[test]
fn admission_keeps_more_of_a_skewed_stream() {
    let _serial = common::serial();
    let (rows, dim) = (40_000usize, 2usize);
    let data = random_values(rows * dim, seed("admission_rate_table"));
    let zipf = ZipfIds::new(rows, 1.05, seed("admission_rate_zipf"));
    let mut rng = Rng::new(seed("admission_rate_ids"));
    let stream: Vec<Vec<u32>> = (0..60).map(|_| zipf.batch(1_000, &mut rng)).collect();
    let rate = |policy| {
        let config = CacheConfig::default()
            .capacity(Capacity::Rows(rows / 50))
            .policy(policy)
            .partitions(1)
            .path(BatchPath::Host);
        let table = HostTable::borrowed(&data, dim).unwrap();
        let mut cache = EmbeddingCache::new(common::ctx(), table, config).unwrap();
        for ids in &stream {
            cache.lookup(ids).unwrap();
        }
        cache.stats().hit_rate()
    };
    let (clock, lru, tiny) = (
        rate(EvictionPolicy::Clock),
        rate(EvictionPolicy::Lru),
        rate(EvictionPolicy::TinyLfu),
    );
    eprintln!("hit rate: clock {clock:.4}, lru {lru:.4}, tinylfu {tiny:.4}");
    assert!(
        tiny > clock + 0.03 && tiny > lru + 0.03,
        "{tiny} vs {clock} / {lru}"
    );
}
