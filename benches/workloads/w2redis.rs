//! W2 through the Redis row tier: GPU cache (10% of rows) -> host tier (20% of rows) ->
//! Redis on loopback, against W2 over the same rows in host memory, in one process. The
//! workload starts its own `redis-server` (`$HOTROW_REDIS_SERVER`, else `redis-server` on
//! PATH) on a free loopback port, loads the table with `RedisTable::load`, and stops it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hotrow::{
    EmbeddingCache, Embeddings, EvictionPolicy, HostTable, HostTier, RedisOptions, RedisTable,
    RedisTarget, RowSource, ValueType,
};

use crate::gen::{Rng, ZipfIds};
use crate::harness::{self, Args, Report, Result, S};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let bin = std::env::var("HOTROW_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let child = Command::new(&bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!("w2redis: cannot start {bin}: {e}");
            std::process::exit(2)
        });
    let server = Server(child);
    let url = format!("redis://127.0.0.1:{port}/");
    let t = Instant::now();
    loop {
        let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if up {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, url)
}

/// The W2 stream over `cache`: 20 warm-up batches, then `batches` pipelined; ms per batch.
fn stream<T: RowSource>(
    ctx: &hotrow::GpuContext,
    a: &Args,
    cache: &mut EmbeddingCache<T>,
    ids: &[Vec<u32>],
    out: &mut Embeddings,
) -> Result<f64> {
    let warm = 20;
    for b in &ids[..warm] {
        cache.lookup_into(b, out)?;
    }
    ctx.wait_idle()?;
    harness::warm_up(ctx, a, 0, |_| Ok(()))?;
    let (ms, _) = harness::stream(ctx, ids.len() - warm, |k| {
        cache.lookup_into(&ids[warm + k], out)
    })?;
    Ok(ms)
}

pub fn run(
    ctx: &hotrow::GpuContext,
    a: &Args,
    rep: &mut Report,
    table: HostTable<'static>,
) -> Result<HostTable<'static>> {
    let (n, b, d) = harness::cached_shapes(a);
    let zipf = ZipfIds::new(n, S, 22);
    let mut rng = Rng::new(23);
    let batches = a.batches.max(40);
    let ids: Vec<Vec<u32>> = (0..20 + batches).map(|_| zipf.batch(b, &mut rng)).collect();
    let mut out = Embeddings::new(ctx, b, d)?;
    let data = table.data().expect("f32 rows");

    // The same stream over the table in host memory, for the ratio.
    let mut cache = harness::tenth_cache(ctx, a, &table, n, EvictionPolicy::Clock)?;
    let ms_host = stream(ctx, a, &mut cache, &ids, &mut out)?;
    drop(cache);
    rep.insert("W2R_host_table_ms_per_batch".into(), ms_host);

    let (_server, url) = start_server();
    let target = RedisTarget::Standalone(url);
    let t = Instant::now();
    let options = RedisOptions::default();
    let redis = RedisTable::load(&table, &target, "w2", options, ValueType::F32, !a.small)?;
    rep.insert("W2R_load_s".into(), t.elapsed().as_secs_f64());
    let tier = HostTier::new(redis, n / 5)?;
    let mut cache = harness::tenth_cache(ctx, a, tier, n, EvictionPolicy::Clock)?;
    cache.lookup_into(&ids[0], &mut out)?;
    harness::verify_gather("w2redis", &out, data, cache.layout(), &ids[0])?;
    let (c0, t0, r0) = (
        cache.stats().clone(),
        cache.source().stats(),
        cache.source().source().stats(),
    );
    let ms = stream(ctx, a, &mut cache, &ids[1..], &mut out)?;
    let (c1, t1, r1) = (
        cache.stats().clone(),
        cache.source().stats(),
        cache.source().source().stats(),
    );
    let timed = (ids.len() - 1) as f64; // the warm-up batches count for the shares too
    rep.insert("W2R_ms_per_batch".into(), ms);
    rep.insert("W2R_batches_per_s".into(), 1e3 / ms);
    rep.insert("W2R_vs_host_table".into(), ms / ms_host);
    let distinct = (c1.distinct - c0.distinct) as f64;
    let gpu = (c1.hits - c0.hits) as f64;
    let host = (t1.host_hits - t0.host_hits) as f64;
    let remote = (r1.rows - r0.rows) as f64;
    rep.insert("W2R_share_gpu_cache".into(), gpu / distinct);
    rep.insert("W2R_share_host_tier".into(), host / distinct);
    rep.insert("W2R_share_redis".into(), remote / distinct);
    rep.insert(
        "W2R_redis_calls_per_batch".into(),
        (r1.calls - r0.calls) as f64 / timed,
    );
    rep.insert(
        "W2R_redis_round_trips_per_batch".into(),
        (r1.round_trips - r0.round_trips) as f64 / timed,
    );
    rep.insert("W2R_redis_rows_per_batch".into(), remote / timed);
    rep.insert(
        "W2R_host_resolve_and_copy_ms".into(),
        (c1.resolve_time + c1.copy_time - c0.resolve_time - c0.copy_time).as_secs_f64() * 1e3
            / timed,
    );
    Ok(table)
}
