//! W2 on several GPUs: the same stream served by one GPU (`EmbeddingCache`), by
//! `ReplicatedCache` and by `PartitionedCache` over the first `--devices` GPUs (real GPUs
//! first; software adapters only where there are no others), each with `--cache-frac` of
//! the table's rows per device. Pipelined: every batch is submitted without waiting, all
//! devices are waited for at the end. The first batch of each is checked against the CPU.
//!
//! `ReplicatedCache` is timed twice: each W2 batch split over the devices (a fixed global
//! batch: strong scaling, `replicated`), and each device given a whole W2 batch of its own
//! per call, `devices` W2 batches a call (a fixed batch per device, as data-parallel
//! training runs: weak scaling, `replicated_per_device_batch`). Both count W2 batches of
//! 65,536 ids per second.

use std::sync::Arc;
use std::time::Instant;

use hotrow::{
    CacheConfig, Capacity, EmbeddingCache, Embeddings, GpuContext, GpuOptions, HostTable,
    PartitionedCache, ReplicatedCache, RowLayout, RowSource,
};

use crate::gen::{Rng, ZipfIds};
use crate::harness::{self, Args, Heater, Report, Result, S};

/// The devices: the first `want` real GPUs, else (CI) the first `want` adapters.
fn devices(want: usize) -> Result<Vec<GpuContext>> {
    let all = GpuContext::every(GpuOptions::default())?;
    let real: Vec<GpuContext> = all
        .iter()
        .filter(|c| !c.adapter().software)
        .cloned()
        .collect();
    let mut pick = if real.len() >= want { real } else { all };
    if pick.len() < want {
        eprintln!("w2multi: {want} devices wanted, {} found", pick.len());
        std::process::exit(2);
    }
    pick.truncate(want);
    for (d, c) in pick.iter().enumerate() {
        println!("w2multi device {d}: {}", c.adapter());
    }
    Ok(pick)
}

/// Back-to-back GPU work on every device at once for `secs` (clocks up before timing).
fn heat(ctxs: &[GpuContext], secs: f64) -> Result<()> {
    if secs <= 0.0 {
        return Ok(());
    }
    std::thread::scope(|s| {
        let hs: Vec<_> = ctxs
            .iter()
            .map(|c| s.spawn(move || Heater::new(c)?.run(c, secs)))
            .collect();
        hs.into_iter()
            .try_for_each(|h| h.join().expect("heater thread"))
    })
}

fn wait_all(ctxs: &[GpuContext]) -> Result<()> {
    ctxs.iter().try_for_each(GpuContext::wait_idle)
}

/// The largest GPU memory of the devices' caches.
fn largest_cache<'c, S: RowSource + 'c>(
    caches: impl Iterator<Item = Option<&'c EmbeddingCache<S>>>,
) -> u64 {
    caches
        .map(|c| c.map_or(0, |c| c.memory().total()))
        .max()
        .unwrap_or(0)
}

/// Exits with WRONG RESULT unless `parts` (a replicated call's outputs, device by device)
/// are the rows of `ids`, bit for bit.
fn verify_parts(
    what: &str,
    parts: &[Embeddings],
    data: &[f32],
    d: usize,
    ids: &[u32],
) -> Result<()> {
    let got = ReplicatedCache::<HostTable>::to_host(parts)?;
    let want = hotrow::reference::gather(data, d, ids);
    if got
        .iter()
        .zip(&want)
        .any(|(x, y)| x.to_bits() != y.to_bits())
    {
        eprintln!("{what}: WRONG RESULT");
        std::process::exit(1);
    }
    Ok(())
}

pub fn run(a: &Args, rep: &mut Report, table: HostTable<'static>) -> Result<HostTable<'static>> {
    let (n, b, d) = harness::cached_shapes(a);
    let ctxs = devices(a.devices)?;
    let table = Arc::new(table);
    let data = table.data().expect("f32 rows").to_vec();
    let zipf = ZipfIds::new(n, S, 22);
    let mut rng = Rng::new(23);
    let warm = 20;
    let batches = a.batches.max(40);
    let stream: Vec<Vec<u32>> = (0..warm + batches)
        .map(|_| zipf.batch(b, &mut rng))
        .collect();
    let per_device = ((n as f64 * a.cache_frac) as usize).max(1);
    let config = CacheConfig::default()
        .capacity(Capacity::Rows(per_device))
        .resolution(a.resolution);
    let layout = RowLayout::f32(d)?;
    rep.insert("W2M_devices".into(), ctxs.len() as f64);
    rep.insert("W2M_cache_frac_per_device".into(), a.cache_frac);
    let table_bytes = (n * d * 4) as f64;
    // The warm-up calls, then the GPUs warmed up (counters are read after this).
    let warm_up = |calls: &[Vec<u32>],
                   call: &mut dyn FnMut(&[u32]) -> Result<()>,
                   ctxs: &[GpuContext]|
     -> Result<()> {
        for ids in calls {
            call(ids)?;
        }
        wait_all(ctxs)?;
        heat(ctxs, a.warmup_secs)
    };
    // Times pipelined calls of `per_call` W2 batches each; returns ms per W2 batch.
    let timed = |calls: &[Vec<u32>],
                 per_call: usize,
                 call: &mut dyn FnMut(&[u32]) -> Result<()>,
                 ctxs: &[GpuContext]|
     -> Result<f64> {
        let t = Instant::now();
        for ids in calls {
            call(ids)?;
        }
        wait_all(ctxs)?;
        Ok(t.elapsed().as_secs_f64() * 1e3 / (calls.len() * per_call) as f64)
    };
    let (warm_calls, timed_calls) = stream.split_at(warm);
    let mut record = |mode: &str,
                      ms: f64,
                      s0: hotrow::CacheStats,
                      s1: hotrow::CacheStats,
                      mem: u64,
                      host: f64| {
        rep.insert(format!("W2M_{mode}_ms_per_batch"), ms);
        rep.insert(format!("W2M_{mode}_batches_per_s"), 1e3 / ms);
        let hits = (s1.hits - s0.hits) as f64;
        let distinct = (s1.distinct - s0.distinct) as f64;
        rep.insert(
            format!("W2M_{mode}_unique_row_hit_rate"),
            hits / distinct.max(1.0),
        );
        rep.insert(
            format!("W2M_{mode}_bytes_uploaded_per_batch"),
            (s1.bytes_uploaded - s0.bytes_uploaded) as f64 / batches as f64,
        );
        rep.insert(format!("W2M_{mode}_gpu_bytes_per_device"), mem as f64);
        rep.insert(
            format!("W2M_{mode}_gpu_frac_of_table_per_device"),
            mem as f64 / table_bytes,
        );
        rep.insert(format!("W2M_{mode}_bytes_crossing_host_per_batch"), host);
    };

    // One GPU.
    {
        let one = &ctxs[..1];
        let mut cache = EmbeddingCache::new(&one[0], table.clone(), config.clone())?;
        let mut out = Embeddings::new(&one[0], b, d)?;
        cache.lookup_into(&stream[0], &mut out)?;
        harness::verify_gather("w2multi one", &out, &data, layout, &stream[0])?;
        warm_up(warm_calls, &mut |ids| cache.lookup_into(ids, &mut out), one)?;
        let s0 = cache.stats().clone();
        let ms = timed(
            timed_calls,
            1,
            &mut |ids| cache.lookup_into(ids, &mut out),
            one,
        )?;
        record(
            "one",
            ms,
            s0,
            cache.stats().clone(),
            cache.memory().total(),
            0.0,
        );
    }
    // Replicated.
    {
        let mut cache = ReplicatedCache::new(&ctxs, table.clone(), config.clone())?;
        let mut outs = cache.outputs()?;
        cache.lookup_into(&stream[0], &mut outs)?;
        verify_parts("w2multi replicated", &outs, &data, d, &stream[0])?;
        warm_up(
            warm_calls,
            &mut |ids| cache.lookup_into(ids, &mut outs),
            &ctxs,
        )?;
        let s0 = cache.stats();
        let ms = timed(
            timed_calls,
            1,
            &mut |ids| cache.lookup_into(ids, &mut outs),
            &ctxs,
        )?;
        let mem = largest_cache((0..ctxs.len()).map(|k| cache.cache(k)));
        record("replicated", ms, s0, cache.stats(), mem, 0.0);
    }
    // Replicated, a whole W2 batch per device per call (the stream's batches taken
    // `devices` at a time, device k getting the k-th): ms per W2 batch is the call's time
    // over `devices`.
    {
        let k = ctxs.len();
        let mut cache = ReplicatedCache::new(&ctxs, table.clone(), config.clone())?;
        let mut outs = cache.outputs()?;
        let joined: Vec<Vec<u32>> = stream.chunks(k).map(|c| c.concat()).collect();
        cache.lookup_into(&joined[0], &mut outs)?;
        verify_parts(
            "w2multi replicated (a batch per device)",
            &outs,
            &data,
            d,
            &joined[0],
        )?;
        let (w, calls) = (warm / k, batches / k);
        warm_up(
            &joined[..w],
            &mut |ids| cache.lookup_into(ids, &mut outs),
            &ctxs,
        )?;
        let s0 = cache.stats();
        let ms = timed(
            &joined[w..w + calls],
            k,
            &mut |ids| cache.lookup_into(ids, &mut outs),
            &ctxs,
        )?;
        let mem = largest_cache((0..ctxs.len()).map(|k| cache.cache(k)));
        let mut s1 = cache.stats();
        // (per W2 batch: the record divides by `batches`, this mode timed calls * k)
        s1.bytes_uploaded = s0.bytes_uploaded
            + (s1.bytes_uploaded - s0.bytes_uploaded) * batches as u64 / (calls * k) as u64;
        record("replicated_per_device_batch", ms, s0, s1, mem, 0.0);
    }
    // Partitioned (results on device 0).
    {
        let mut cache = PartitionedCache::new(&ctxs, table.clone(), config)?;
        let mut out = Embeddings::new(&ctxs[0], b, d)?;
        cache.lookup_into(&stream[0], 0, &mut out)?;
        harness::verify_gather("w2multi partitioned", &out, &data, layout, &stream[0])?;
        warm_up(
            warm_calls,
            &mut |ids| cache.lookup_into(ids, 0, &mut out),
            &ctxs,
        )?;
        let (s0, t0) = (cache.stats(), cache.traffic());
        let ms = timed(
            timed_calls,
            1,
            &mut |ids| cache.lookup_into(ids, 0, &mut out),
            &ctxs,
        )?;
        let t1 = cache.traffic();
        let host = (t1.bytes_to_host + t1.bytes_from_host - t0.bytes_to_host - t0.bytes_from_host)
            as f64
            / batches as f64;
        let mem = largest_cache((0..ctxs.len()).map(|k| cache.cache(k)));
        record("partitioned", ms, s0, cache.stats(), mem, host);
    }
    let one = rep["W2M_one_ms_per_batch"];
    rep.insert(
        "W2M_replicated_speedup".into(),
        one / rep["W2M_replicated_ms_per_batch"],
    );
    rep.insert(
        "W2M_replicated_per_device_batch_speedup".into(),
        one / rep["W2M_replicated_per_device_batch_ms_per_batch"],
    );
    rep.insert(
        "W2M_partitioned_speedup".into(),
        one / rep["W2M_partitioned_ms_per_batch"],
    );
    drop(data);
    Ok(Arc::try_unwrap(table).unwrap_or_else(|t| (*t).clone()))
}
