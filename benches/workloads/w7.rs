//! W7: a training step (WORKLOADS.md): W2's table behind a 10% training cache (row-wise
//! Adagrad, lr 0.01, eps 1e-8, on the path `--path` names), W3's bags forward (4,096 x 32,
//! weighted sum), the gradient of `sum(out * G)` (G a fixed random 4,096 x 128: the
//! gradient with respect to the output is G itself) back to the rows, fused with the
//! update. Wall ms per step: the median of synchronous steps and a stream's mean, after 20
//! warm-up steps. After every step (warm-up included) a flush at the end leaves the table
//! equal to a CPU reference training; checked on a sample of rows (each row's update
//! depends on its own positions only, so a sample is exact), max abs and rel error: against
//! a reference that stores its rows and accumulators in f32 between steps as the table
//! does (each step computed in f64), and against one that keeps them in f64 for all the
//! steps (a table no one holds: that gap is the f32 storage's own rounding, not hotrow's).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hotrow::{
    BatchPath, CacheConfig, Capacity, EmbeddingCache, Embeddings, GpuContext, HostTable, Optimizer,
    Pooling,
};

use crate::gen::{Rng, ZipfIds};
use crate::harness::{self, Args, Report, Result, S};

const LR: f32 = 0.01;
const EPS: f32 = 1e-8;

pub fn run(
    ctx: &GpuContext,
    a: &Args,
    rep: &mut Report,
    table: HostTable<'static>,
) -> Result<HostTable<'static>> {
    let (n, _, d) = harness::cached_shapes(a);
    let (bags, l) = if a.small { (256, 32) } else { (4096, 32) };
    let optimizer = Optimizer::RowWiseAdagrad { lr: LR, eps: EPS };
    let start = table.data().expect("W2's f32 table").to_vec();
    let config = a.with_knobs(
        CacheConfig::default()
            .capacity(Capacity::Rows(n / 10))
            .path(a.path)
            .training(optimizer),
    );
    let t = Instant::now();
    let mut cache = match EmbeddingCache::new(ctx, table, config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("w7: skipped, this cache cannot train here: {e}");
            rep.insert("W7_supported".into(), 0.0);
            return HostTable::owned(start, d);
        }
    };
    rep.insert("W7_build_s".into(), t.elapsed().as_secs_f64());
    let on_gpu = cache.config().path == BatchPath::Gpu;
    rep.insert("W7_path_gpu".into(), f64::from(u8::from(on_gpu)));
    let zipf = ZipfIds::new(n, S, 72);
    let mut rng = Rng::new(73);
    let steps = 40;
    let ids: Vec<Vec<u32>> = (0..steps).map(|_| zipf.batch(bags * l, &mut rng)).collect();
    let weights: Vec<Vec<f32>> = (0..steps)
        .map(|_| (0..bags * l).map(|_| rng.unit() as f32).collect())
        .collect();
    let offsets: Vec<u32> = (0..bags as u32).map(|b| b * l as u32).collect();
    let g: Vec<f32> = (0..bags * d).map(|_| rng.unit() as f32 - 0.5).collect();
    let grad = Embeddings::from_host(ctx, &g, d)?;
    let mut out = Embeddings::new(ctx, bags, d)?;
    // The CPU reference on a sample of rows: every 97th distinct id of the first step, and
    // as many random rows (most never touched: they must stay as they were).
    let mut sample: Vec<u32> = {
        let mut first: Vec<u32> = ids[0].clone();
        first.sort_unstable();
        first.dedup();
        first.into_iter().step_by(97).collect()
    };
    let extra: Vec<u32> = (0..sample.len())
        .map(|_| rng.below(n as u64) as u32)
        .collect();
    sample.extend(extra);
    sample.sort_unstable();
    sample.dedup();
    // (row and accumulator kept in f64; the same stored in f32 after each step)
    type Kept = ((Vec<f64>, f64), (Vec<f32>, f32));
    let mut reference: HashMap<u32, Kept> = sample
        .iter()
        .map(|&id| {
            let stored = start[id as usize * d..][..d].to_vec();
            let row = stored.iter().map(|&v| v as f64).collect();
            (id, ((row, 0.0), (stored, 0.0)))
        })
        .collect();
    // The steps run, in order: the CPU reference follows them after the timing (its hash
    // lookups over every id of a step would otherwise be timed with the step).
    // Beside them, the host time inside the forward and the backward calls (ms, summed),
    // wall and the process's CPU on any thread (the difference: time blocked, e.g. waiting for a
    // staging buffer the GPU still reads).
    let mut done: Vec<usize> = Vec::new();
    let mut in_calls = [0f64; 2];
    let mut cpu_in_calls = [Duration::ZERO; 2];
    let mut step = |cache: &mut EmbeddingCache<HostTable<'static>>,
                    out: &mut Embeddings,
                    k: usize|
     -> Result<([f64; 2], [Duration; 2])> {
        let (ids, w) = (&ids[k % steps], &weights[k % steps]);
        let t = Instant::now();
        let c0 = harness::process_cpu();
        cache.lookup_bags_into(ids, &offsets, Pooling::Sum, Some(w), out)?;
        let forward = t.elapsed().as_secs_f64() * 1e3;
        let c1 = harness::process_cpu();
        cache.backward_bags(ids, &offsets, Pooling::Sum, Some(w), &grad)?;
        let c2 = harness::process_cpu();
        done.push(k % steps);
        Ok((
            [forward, t.elapsed().as_secs_f64() * 1e3 - forward],
            [c1 - c0, c2 - c1],
        ))
    };
    // the reference: each sampled row's gradient over its positions, then Adagrad
    let mut reference_step = |k: usize| {
        let (ids, w) = (&ids[k], &weights[k]);
        let mut grads: HashMap<u32, Vec<f64>> = HashMap::new();
        for (p, &id) in ids.iter().enumerate() {
            if reference.contains_key(&id) {
                let b = p / l;
                let acc = grads.entry(id).or_insert_with(|| vec![0.0; d]);
                for (x, &gv) in acc.iter_mut().zip(&g[b * d..][..d]) {
                    *x += w[p] as f64 * gv as f64;
                }
            }
        }
        for (id, gr) in grads {
            let ((row, acc), (stored, stored_acc)) = reference.get_mut(&id).expect("sampled");
            let mean_sq = gr.iter().map(|v| v * v).sum::<f64>() / d as f64;
            *acc += mean_sq;
            let s = LR as f64 / (*acc + EPS as f64).sqrt();
            for (x, gv) in row.iter_mut().zip(&gr) {
                *x -= s * gv;
            }
            *stored_acc = (*stored_acc as f64 + mean_sq) as f32;
            let s = LR as f64 / (*stored_acc as f64 + EPS as f64).sqrt();
            for (x, gv) in stored.iter_mut().zip(&gr) {
                *x = (*x as f64 - s * gv) as f32;
            }
        }
    };
    let warm = if a.small { 5 } else { 20 };
    for k in 0..warm {
        step(&mut cache, &mut out, k)?;
    }
    let timed = if a.small { 20 } else { 200 };
    let mut sync_ms = Vec::with_capacity(timed / 2);
    for k in 0..timed / 2 {
        let t = Instant::now();
        step(&mut cache, &mut out, warm + k)?;
        ctx.wait_idle()?;
        sync_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    cache.reset_stats();
    let t = Instant::now();
    for k in timed / 2..timed {
        let ([f, b], [cf, cb]) = step(&mut cache, &mut out, warm + k)?;
        in_calls[0] += f;
        in_calls[1] += b;
        cpu_in_calls[0] += cf;
        cpu_in_calls[1] += cb;
    }
    ctx.wait_idle()?;
    let per = (timed - timed / 2) as f64;
    let stream_ms = t.elapsed().as_secs_f64() * 1e3 / per;
    for k in 0..2 {
        let name = ["forward", "backward"][k];
        rep.insert(format!("W7_hotrow_{name}_in_call_ms"), in_calls[k] / per);
        rep.insert(
            format!("W7_hotrow_{name}_cpu_ms"),
            cpu_in_calls[k].as_secs_f64() * 1e3 / per,
        );
    }
    // The stream's cache statistics a step (both calls): the waits for a staging buffer,
    // the submissions, the passes.
    let st = cache.stats();
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / per;
    rep.insert("W7_host_staging_wait_ms".into(), ms(st.staging_wait_time));
    rep.insert("W7_host_submit_ms".into(), ms(st.submit_time));
    rep.insert("W7_host_resolve_ms".into(), ms(st.resolve_time));
    // (the passes' staging and recording, both calls)
    rep.insert("W7_host_copy_ms".into(), ms(st.copy_time));
    // (grouping each batch by distinct row for the backward; with the forward's grouping
    // ahead, the part the forward waited for is what the step pays)
    rep.insert("W7_host_group_ms".into(), ms(st.group_time));
    rep.insert("W7_host_group_wait_ms".into(), ms(st.group_wait_time));
    rep.insert("W7_passes_per_step".into(), st.passes as f64 / per);
    rep.insert(
        "W7_staging_buffers".into(),
        cache.config().staging_buffers as f64,
    );
    rep.insert("W7_supported".into(), 1.0);
    rep.insert(
        "W7_hotrow_step_sync_median_ms".into(),
        harness::median(&mut sync_ms),
    );
    rep.insert("W7_hotrow_step_stream_ms".into(), stream_ms);
    let t = Instant::now();
    let written = cache.flush()?;
    rep.insert("W7_flush_ms".into(), t.elapsed().as_secs_f64() * 1e3);
    rep.insert("W7_flushed_rows".into(), written as f64);
    let mem = cache.memory();
    rep.insert(
        "W7_gpu_bytes_frac_of_table".into(),
        mem.total() as f64 / (n as f64 * d as f64 * 4.0),
    );
    rep.insert("W7_steps".into(), done.len() as f64);
    for &k in &done {
        reference_step(k);
    }
    let table = cache.into_source();
    let data = table.data().expect("f32");
    let (mut max_abs, mut max_rel) = (0f64, 0f64);
    let (mut f64_abs, mut f64_rel) = (0f64, 0f64);
    for (&id, ((row, _), (stored, _))) in &reference {
        for (c, (&kept, &want)) in row.iter().zip(stored).enumerate() {
            let got = data[id as usize * d + c] as f64;
            let want = want as f64;
            max_abs = max_abs.max((got - want).abs());
            max_rel = max_rel.max((got - want).abs() / want.abs().max(1e-3));
            f64_abs = f64_abs.max((got - kept).abs());
            f64_rel = f64_rel.max((got - kept).abs() / kept.abs().max(1e-3));
        }
    }
    rep.insert("W7_sample_rows".into(), reference.len() as f64);
    rep.insert("W7_max_abs_error".into(), max_abs);
    rep.insert("W7_max_rel_error".into(), max_rel);
    rep.insert("W7_max_abs_error_vs_f64_rows".into(), f64_abs);
    rep.insert("W7_max_rel_error_vs_f64_rows".into(), f64_rel);
    let max_rel = max_rel.max(f64_rel);
    if max_rel.is_nan() || max_rel > 1e-4 {
        eprintln!("w7: WRONG RESULT: the flushed table is {max_rel:e} from the CPU reference");
        std::process::exit(1);
    }
    Ok(table)
}
