//! Trains a table through a cache a tenth of its size: pooled bags of random rows should
//! come out equal to the same bags over a hidden target table. Each step runs the forward
//! (`lookup_bags`), the loss `0.5 * ||out - target||^2` and its gradient `out - target` on
//! the host, and the backward fused with row-wise Adagrad on the cached rows
//! (`backward_bags`); rows leaving the cache go back to the table, and `flush` writes the
//! trained rows into the `HostTable` at the end. The loss printed every 50 steps goes down.
//!
//! `cargo run --release --example train_bags`: on the GPU-driven path where the adapter
//! has host-visible storage (Vulkan, Metal, DX12), else on the host path (GL).
//! `HOTROW_PATH=host` asks for the host path.

use hotrow::reference::bags;
use hotrow::{
    CacheConfig, Capacity, EmbeddingCache, Embeddings, GpuContext, GpuOptions, HostTable,
    HotrowError, Optimizer, Pooling,
};

fn main() -> Result<(), HotrowError> {
    let host = std::env::var("HOTROW_PATH").is_ok_and(|p| p == "host");
    let ctx = GpuContext::with_options(GpuOptions {
        host_visible_storage: !host,
        ..Default::default()
    })?;
    println!("adapter: {}", ctx.adapter());
    let (rows, dim, bags_per_step, bag_len) = (20_000usize, 16usize, 256usize, 8usize);
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut uniform = || (next() >> 11) as f32 / (1u64 << 53) as f32;
    let target: Vec<f32> = (0..rows * dim).map(|_| uniform() * 2.0 - 1.0).collect();
    let start: Vec<f32> = (0..rows * dim).map(|_| uniform() * 0.2 - 0.1).collect();
    let config = CacheConfig::default()
        .capacity(Capacity::Fraction(0.1))
        .training(Optimizer::RowWiseAdagrad { lr: 0.5, eps: 1e-8 });
    let mut cache = EmbeddingCache::new(&ctx, HostTable::owned(start, dim)?, config)?;
    let c = cache.config();
    println!("path: {:?} ({})", c.path, c.path_reason);
    let offsets: Vec<u32> = (0..bags_per_step as u32)
        .map(|b| b * bag_len as u32)
        .collect();
    let mut first_loss = None;
    let mut loss = 0.0;
    for step in 0..=400 {
        // Skewed ids: a hot set most bags draw from, the rest of the table now and then.
        let ids: Vec<u32> = (0..bags_per_step * bag_len)
            .map(|_| {
                let u = uniform();
                let hot = (rows / 50) as f32;
                if u < 0.8 {
                    (u / 0.8 * hot) as u32
                } else {
                    (uniform() * rows as f32) as u32
                }
            })
            .map(|id| id.min(rows as u32 - 1))
            .collect();
        let out = cache
            .lookup_bags(&ids, &offsets, Pooling::Mean, None)?
            .to_host()?;
        let want = bags(&target, dim, &ids, &offsets, 1, None);
        let grad: Vec<f32> = out.iter().zip(&want).map(|(&o, &w)| o - w as f32).collect();
        loss = 0.5 * grad.iter().map(|g| (*g as f64).powi(2)).sum::<f64>() / bags_per_step as f64;
        first_loss.get_or_insert(loss);
        if step % 50 == 0 {
            println!("step {step:3}: loss {loss:.5}");
        }
        let grad = Embeddings::from_host(&ctx, &grad, dim)?;
        cache.backward_bags(&ids, &offsets, Pooling::Mean, None, &grad)?;
    }
    let written = cache.flush()?;
    let s = cache.stats();
    println!(
        "flushed {written} trained rows into the table; hit rate {:.1}%, {} evictions",
        100.0 * s.hit_rate(),
        s.evictions
    );
    let first = first_loss.unwrap_or(loss);
    if loss >= first {
        return Err(HotrowError::InvalidArgument(format!(
            "the loss did not go down ({first:.5} -> {loss:.5})"
        )));
    }
    println!("loss {first:.5} -> {loss:.5}");
    Ok(())
}
