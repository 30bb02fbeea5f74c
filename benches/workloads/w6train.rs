//! W6 training (issue 20): W6's 26 tables behind one training TableBatchedCache (10% of all
//! rows, row-wise Adagrad lr 0.01, eps 1e-8, on the path `--path` names); one step = W6's
//! forward (2,048 bags of 8 ids per table, sum), the gradient of `sum(out * G)` (G a fixed
//! random 2,048 x 1,664) back to every table's rows, fused with the update. Wall ms per
//! step: the median of steps each waited for and a stream's mean, after 20 warm-up steps.
//! A flush at the end leaves every table equal to a CPU reference training, checked on a
//! sample of rows of every table (a row's update depends on its own positions only).

use std::collections::HashMap;
use std::time::Instant;

use hotrow::{
    CacheConfig, Capacity, Embeddings, GpuContext, HostTable, Optimizer, Pooling, TableBags,
    TableBatchedCache,
};

use crate::gen::Rng;
use crate::harness::{self, Args, Report, Result};
use crate::w6::{id_streams, shapes};

const LR: f32 = 0.01;
const EPS: f32 = 1e-8;

/// A sampled row's reference: its values and Adagrad accumulator, in f64.
type Sampled = HashMap<(usize, u32), (Vec<f64>, f64)>;

pub fn run(ctx: &GpuContext, a: &Args, rep: &mut Report) -> Result<()> {
    let (rows, dim, bags, per_bag) = shapes(a);
    let t = Instant::now();
    let tables: Vec<HostTable<'static>> = rows
        .iter()
        .enumerate()
        .map(|(k, &n)| HostTable::owned(harness::table_values(n * dim, 600 + k as u64), dim))
        .collect::<Result<_>>()?;
    rep.insert("W6T_table_build_s".into(), t.elapsed().as_secs_f64());
    let optimizer = Optimizer::RowWiseAdagrad { lr: LR, eps: EPS };
    let config = CacheConfig::default()
        .capacity(Capacity::Fraction(0.1))
        .path(a.path)
        .training(optimizer);
    let t = Instant::now();
    let mut cache = TableBatchedCache::new(ctx, tables, a.with_knobs(config))?;
    rep.insert("W6T_cache_build_s".into(), t.elapsed().as_secs_f64());
    let width = cache.width();
    let zipf = id_streams(&rows);
    let mut rng = Rng::new(62);
    let distinct_steps = if a.small { 10 } else { 40 };
    let ids: Vec<Vec<Vec<u32>>> = (0..distinct_steps)
        .map(|_| {
            zipf.iter()
                .map(|z| z.batch(bags * per_bag, &mut rng))
                .collect()
        })
        .collect();
    let offsets: Vec<u32> = (0..bags as u32).map(|b| b * per_bag as u32).collect();
    let g: Vec<f32> = (0..bags * width).map(|_| rng.unit() as f32 - 0.5).collect();
    let grad = Embeddings::from_host(ctx, &g, width)?;
    let mut out = Embeddings::new(ctx, bags, width)?;
    // The sample: every 53rd distinct id of each table's first step, and as many random
    // rows of each table (most never touched: they must stay as they were).
    let mut reference: Sampled = HashMap::new();
    for (t, first) in ids[0].iter().enumerate() {
        let mut d: Vec<u32> = first.clone();
        d.sort_unstable();
        d.dedup();
        let picks: Vec<u32> = d.iter().step_by(53).copied().collect();
        let extra: Vec<u32> = (0..picks.len())
            .map(|_| rng.below(rows[t] as u64) as u32)
            .collect();
        for id in picks.into_iter().chain(extra) {
            let row = cache.sources()[t].read_row(id)?;
            let row = row.iter().map(|&v| v as f64).collect();
            reference.insert((t, id), (row, 0.0));
        }
    }
    let cols: Vec<usize> = (0..rows.len())
        .map(|t| cache.column(t).expect("a table"))
        .collect();
    // The steps run, in order: the CPU reference follows them after the timing (its
    // hash lookups over every id of a step would otherwise be timed with the step).
    let mut done: Vec<usize> = Vec::new();
    let mut step = |cache: &mut TableBatchedCache<HostTable<'static>>,
                    out: &mut Embeddings,
                    k: usize|
     -> Result<()> {
        let step_ids = &ids[k % distinct_steps];
        let parts: Vec<TableBags<'_>> = step_ids
            .iter()
            .map(|ids| TableBags {
                ids,
                offsets: &offsets,
                weights: None,
            })
            .collect();
        cache.lookup_bags_into(&parts, Pooling::Sum, out)?;
        cache.backward_bags(&parts, Pooling::Sum, &grad)?;
        done.push(k % distinct_steps);
        Ok(())
    };
    let warm = if a.small { 5 } else { 20 };
    harness::warm_up(ctx, a, 0, |_| Ok(()))?;
    for k in 0..warm {
        step(&mut cache, &mut out, k)?;
    }
    ctx.wait_idle()?;
    let timed = if a.small { 10 } else { 40 };
    let mut waited = Vec::with_capacity(timed);
    for k in 0..timed {
        let t = Instant::now();
        step(&mut cache, &mut out, warm + k)?;
        ctx.wait_idle()?;
        waited.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let t = Instant::now();
    for k in 0..timed {
        step(&mut cache, &mut out, warm + timed + k)?;
    }
    ctx.wait_idle()?;
    let stream = t.elapsed().as_secs_f64() * 1e3 / timed as f64;
    rep.insert(
        "W6T_hotrow_step_waited_median_ms".into(),
        harness::median(&mut waited),
    );
    rep.insert("W6T_hotrow_step_stream_ms".into(), stream);
    let t = Instant::now();
    let written = cache.flush()?;
    rep.insert("W6T_flush_ms".into(), t.elapsed().as_secs_f64() * 1e3);
    rep.insert("W6T_flushed_rows".into(), written as f64);
    let mem = cache.memory();
    let table_bytes: usize = rows.iter().map(|n| n * dim * 4).sum();
    rep.insert(
        "W6T_gpu_bytes_frac_of_tables".into(),
        mem.total() as f64 / table_bytes as f64,
    );
    rep.insert("W6T_steps".into(), done.len() as f64);
    for &k in &done {
        train_sample(&mut reference, &ids[k], per_bag, &g, width, &cols, dim);
    }
    let (mut max_abs, mut max_rel) = (0f64, 0f64);
    for (&(t, id), (row, _)) in &reference {
        let got = cache.sources()[t].read_row(id)?;
        for (&g, &want) in got.iter().zip(row) {
            max_abs = max_abs.max((g as f64 - want).abs());
            max_rel = max_rel.max((g as f64 - want).abs() / want.abs().max(1e-3));
        }
    }
    rep.insert("W6T_sample_rows".into(), reference.len() as f64);
    rep.insert("W6T_max_abs_error".into(), max_abs);
    rep.insert("W6T_max_rel_error".into(), max_rel);
    if max_rel.is_nan() || max_rel > 1e-4 {
        eprintln!("w6train: WRONG RESULT: the flushed tables are {max_rel:e} from the CPU");
        std::process::exit(1);
    }
    Ok(())
}

/// One step of the CPU reference over the sampled rows: each row's gradient summed over
/// its positions (sum pooling, no weights: the bag's gradient row), then Adagrad.
fn train_sample(
    reference: &mut Sampled,
    step_ids: &[Vec<u32>],
    per_bag: usize,
    g: &[f32],
    width: usize,
    cols: &[usize],
    dim: usize,
) {
    let mut grads: HashMap<(usize, u32), Vec<f64>> = HashMap::new();
    for (t, ids) in step_ids.iter().enumerate() {
        for (p, &id) in ids.iter().enumerate() {
            if !reference.contains_key(&(t, id)) {
                continue;
            }
            let b = p / per_bag;
            let acc = grads.entry((t, id)).or_insert_with(|| vec![0.0; dim]);
            for (x, &gv) in acc.iter_mut().zip(&g[b * width + cols[t]..][..dim]) {
                *x += gv as f64;
            }
        }
    }
    for (key, gr) in grads {
        let (row, acc) = reference.get_mut(&key).expect("sampled");
        *acc += gr.iter().map(|v| v * v).sum::<f64>() / dim as f64;
        let s = LR as f64 / (*acc + EPS as f64).sqrt();
        for (x, gv) in row.iter_mut().zip(&gr) {
            *x -= s * gv;
        }
    }
}
