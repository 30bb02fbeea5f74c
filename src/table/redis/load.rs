//! [`RedisTable::load`]: writes a table's rows to Redis, with a progress bar.

use super::keys::{describe, meta_key, row_key};
use super::{classify, connect, remote, Conn, RedisOptions, RedisTable, RedisTarget};
use crate::error::{HotrowError, Result};
use crate::table::{RowSource, ValueType};

impl RedisTable {
    /// Writes every row of `source` to `target` under `prefix` as `value_type` (f32 or
    /// f16; bf16 is refused), with a progress bar on stderr when `progress`, then opens
    /// it. Rows go in pipelined batches of 1,024; the description is removed first and
    /// written last.
    pub fn load<S: RowSource + ?Sized>(
        source: &S,
        target: &RedisTarget,
        prefix: &str,
        options: RedisOptions,
        value_type: ValueType,
        progress: bool,
    ) -> Result<Self> {
        if value_type == ValueType::BF16 {
            return Err(HotrowError::InvalidArgument(
                "a Redis table stores f32 or f16 rows".into(),
            ));
        }
        let (rows, dim) = (source.rows(), source.dim());
        let mut conn = connect(target, options.timeout)?;
        let meta = meta_key(prefix);
        match &mut conn {
            Conn::Single(c) => redis::cmd("DEL").arg(&meta).query::<()>(c),
            Conn::Cluster(c) => redis::cmd("DEL").arg(&meta).query::<()>(c),
        }
        .map_err(|e| remote(None, classify(&e)))?;
        let bar = if progress {
            indicatif::ProgressBar::new(rows as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {pos}/{len} rows, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(format!("loading {prefix}"));
        const BATCH: usize = 1024;
        let mut buf = vec![0.0f32; BATCH * dim];
        for start in (0..rows).step_by(BATCH) {
            let n = BATCH.min(rows - start);
            let ids: Vec<u32> = (start as u32..(start + n) as u32).collect();
            source.read_rows(&ids, &mut buf[..n * dim])?;
            let keys: Vec<String> = ids.iter().map(|&id| row_key(prefix, id)).collect();
            let values: Vec<Vec<u8>> = buf[..n * dim]
                .chunks_exact(dim)
                .map(|row| match value_type {
                    ValueType::F16 => row
                        .iter()
                        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                        .collect(),
                    _ => row.iter().flat_map(|v| v.to_le_bytes()).collect(),
                })
                .collect();
            set_all(&mut conn, &keys, &values)?;
            bar.inc(n as u64);
        }
        let text = describe(rows, dim, value_type);
        match &mut conn {
            Conn::Single(c) => redis::cmd("SET").arg(&meta).arg(&text).query::<()>(c),
            Conn::Cluster(c) => redis::cmd("SET").arg(&meta).arg(&text).query::<()>(c),
        }
        .map_err(|e| remote(None, classify(&e)))?;
        bar.finish_with_message(format!("loaded {prefix}"));
        Self::open(target, prefix, options)
    }
}

/// `SET keys[i] values[i]` for every `i`, in one pipeline.
fn set_all(conn: &mut Conn, keys: &[String], values: &[Vec<u8>]) -> Result<()> {
    match conn {
        Conn::Single(c) => {
            let mut p = redis::pipe();
            for (k, v) in keys.iter().zip(values) {
                p.cmd("SET").arg(k).arg(v.as_slice()).ignore();
            }
            p.query::<()>(c)
        }
        Conn::Cluster(c) => {
            let mut p = redis::cluster::cluster_pipe();
            for (k, v) in keys.iter().zip(values) {
                p.cmd("SET").arg(k).arg(v.as_slice()).ignore();
            }
            p.query::<()>(c)
        }
    }
    .map_err(|e| remote(None, classify(&e)))
}
