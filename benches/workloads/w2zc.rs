//! W2 with no cache (issue 19's baseline): W2's table in host memory that the gather reads
//! directly (`RowBuffer::in_host_memory`), every row of every batch read across the bus.
//! What a cache is worth is measured against this. Skipped, with a line saying so, on an
//! adapter without host-visible storage.

use std::time::Instant;

use hotrow::{Embeddings, GpuContext, HostTable, RowBuffer, RowLayout};

use crate::gen::{Rng, ZipfIds};
use crate::harness::{self, Args, Report, Result, S};

pub fn run(
    ctx: &GpuContext,
    a: &Args,
    rep: &mut Report,
    table: HostTable<'static>,
) -> Result<HostTable<'static>> {
    if !ctx.adapter().host_visible_storage {
        eprintln!("w2zc: skipped, this adapter has no host-visible storage");
        rep.insert("W2ZC_supported".into(), 0.0);
        return Ok(table);
    }
    let (n, b, d) = harness::cached_shapes(a);
    let data = table.data().expect("W2's f32 table");
    let t = Instant::now();
    let rows = RowBuffer::in_host_memory(ctx, n, d, Default::default())?;
    rows.write_rows(0, data)?;
    ctx.wait_idle()?;
    rep.insert("W2ZC_build_s".into(), t.elapsed().as_secs_f64());
    // The same stream as W2's (same seeds).
    let zipf = ZipfIds::new(n, S, 22);
    let mut rng = Rng::new(23);
    let batches = a.batches.max(40);
    let stream: Vec<Vec<u32>> = (0..batches).map(|_| zipf.batch(b, &mut rng)).collect();
    let mut out = Embeddings::new(ctx, b, d)?;
    let layout = RowLayout::f32(d)?;
    for ids in &stream[..3] {
        out.fill(f32::NAN)?;
        rows.gather_into(ids, &mut out)?;
        harness::verify_gather("w2zc", &out, data, layout, ids)?;
    }
    let timing = ctx.enable_timing(4 * batches as u32 + 64);
    harness::warm_up(ctx, a, 5, |k| rows.gather_into(&stream[k % 3], &mut out))?;
    let _ = ctx.take_timings()?;
    let (stream_ms, times) =
        harness::stream(ctx, batches, |k| rows.gather_into(&stream[k], &mut out))?;
    harness::verify_gather("w2zc", &out, data, layout, &stream[batches - 1])?;
    rep.insert("W2ZC_supported".into(), 1.0);
    rep.insert("W2ZC_stream_ms_per_batch".into(), stream_ms);
    if timing {
        let gpu_ms = harness::gpu_median(&times, "gather");
        rep.insert("W2ZC_gpu_gather_ms".into(), gpu_ms);
        // Bytes of rows read from host memory per batch (every position, repeats included).
        rep.insert(
            "W2ZC_host_read_GBps".into(),
            b as f64 * d as f64 * 4.0 / gpu_ms / 1e6,
        );
    }
    ctx.disable_timing();
    Ok(table)
}
