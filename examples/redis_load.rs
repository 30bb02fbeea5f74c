//! Loads a table file into Redis (with a progress bar), then serves a few lookups from it
//! through GPU cache -> host tier -> Redis and checks them against the file.
//!
//!     cargo run --release --features redis --example redis_load -- \
//!         emb.npy redis://127.0.0.1:6379/ emb:user [f32|f16]
//!     cargo run --release --features redis --example redis_load -- \
//!         model.safetensors:emb.weight cluster:redis://10.0.0.1:7000/,redis://10.0.0.2:7000/ emb:user
//!
//! The first argument is a `.npy` file, or `file.safetensors:tensor`; the second a server
//! URL, or `cluster:` and some nodes' URLs separated by commas.

use hotrow::{
    CacheConfig, Capacity, EmbeddingCache, FileTable, GpuContext, HostTier, HotrowError,
    RedisOptions, RedisTable, RedisTarget, RowSource, ValueType,
};

fn main() -> Result<(), HotrowError> {
    env_logger::init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, target, prefix, rest @ ..] = args.as_slice() else {
        eprintln!("usage: redis_load <file.npy | file.safetensors:tensor> <redis URL | cluster:URL,URL,...> <key prefix> [f32|f16]");
        std::process::exit(2);
    };
    let table = match file.rsplit_once(".safetensors:") {
        Some((stem, tensor)) => FileTable::open_safetensors(format!("{stem}.safetensors"), tensor)?,
        None => FileTable::open_npy(file)?,
    };
    let target = match target.strip_prefix("cluster:") {
        Some(nodes) => RedisTarget::Cluster(nodes.split(',').map(str::to_string).collect()),
        None => RedisTarget::Standalone(target.clone()),
    };
    let value_type = match rest.first().map(String::as_str) {
        None | Some("f32") => ValueType::F32,
        Some("f16") => ValueType::F16,
        Some(other) => {
            eprintln!("value type f32 or f16, not {other}");
            std::process::exit(2);
        }
    };
    let t = std::time::Instant::now();
    let redis = RedisTable::load(
        &table,
        &target,
        prefix,
        RedisOptions::default(),
        value_type,
        true,
    )?;
    println!(
        "{} rows x {} loaded under {prefix}:* in {:.2} s",
        redis.rows(),
        redis.dim(),
        t.elapsed().as_secs_f64()
    );
    // Serve a few rows back through the GPU and compare them with the file.
    let ctx = GpuContext::new()?;
    let rows = redis.rows();
    let tier = HostTier::new(redis, (rows / 5).max(1))?;
    let config = CacheConfig::default().capacity(Capacity::Rows((rows / 10).max(1)));
    let mut cache = EmbeddingCache::new(&ctx, tier, config)?;
    let ids: Vec<u32> = (0..64u64)
        .map(|k| (k.wrapping_mul(2_654_435_761) % rows as u64) as u32)
        .collect();
    let got = cache.lookup(&ids)?.to_host()?;
    let mut want = vec![0.0; ids.len() * table.dim()];
    table.read_rows(&ids, &mut want)?;
    let tolerance = if value_type == ValueType::F16 {
        1e-3
    } else {
        0.0
    };
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1e-3))
        .fold(0.0f32, f32::max);
    if worst > tolerance {
        eprintln!("rows read back differ from the file (relative error {worst:e})");
        std::process::exit(1);
    }
    println!("64 rows read back through GPU cache -> host tier -> Redis: match the file");
    Ok(())
}
