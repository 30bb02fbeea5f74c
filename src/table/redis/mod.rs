//! [`RedisTable`]: a table's rows in Redis (one server or a Cluster), read with pipelined
//! requests over parallel connections; [`RedisTable::load`] writes a table there.
//!
//! **Key scheme** (`prefix` chosen by the user, e.g. `emb:user`):
//! - `{prefix}:meta`: `hotrow-table v1 rows=<rows> dim=<dim> dtype=<f32|f16>` (ASCII);
//! - `{prefix}:{id}` for `id` in `0..rows`: the row's `dim` values, little-endian, 4 bytes
//!   each (f32) or 2 (f16), nothing else.
//!
//! The loader deletes the description first and writes it last, so a table whose load was
//! interrupted cannot be opened.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

mod keys;
mod load;

use super::{RowSource, ValueType};
use crate::error::{HotrowError, RemoteProblem, Result};
use keys::{meta_key, parse_description, row_key};

/// Where a [`RedisTable`] lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// One server, by URL (`redis://127.0.0.1:6379/0`).
    Standalone(String),
    /// A Redis Cluster, by the URLs of some of its nodes (the client finds the rest).
    Cluster(Vec<String>),
}

/// How a [`RedisTable`] talks to Redis.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Connections a call may use in parallel (each carries one pipelined request per
    /// call, so a call costs one round trip whatever its size). Default 4.
    pub connections: usize,
    /// Keys per `MGET` command inside a pipeline (standalone). Default 256.
    pub keys_per_command: usize,
    /// Fewest keys a connection is given before the next connection is used. Default 512.
    pub min_keys_per_connection: usize,
    /// Connect, read and write timeout. Default 2 s.
    pub timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            connections: 4,
            keys_per_command: 256,
            min_keys_per_connection: 512,
            timeout: Duration::from_secs(2),
        }
    }
}

/// What a [`RedisTable`] has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedisStats {
    /// `read_rows` calls.
    pub calls: u64,
    /// Pipelined requests sent (at most `connections` per call, all at once).
    pub round_trips: u64,
    /// Rows read.
    pub rows: u64,
    /// Value bytes read.
    pub bytes: u64,
    /// Connections opened (the first of each, and again after a failure).
    pub connects: u64,
}

enum Conn {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

/// A [`RowSource`] over rows stored in Redis (see the module's key scheme). A call reads
/// its rows with one pipelined request per connection, the connections in parallel: one
/// round trip per batch, not one per row (a cache reads a pass's misses in one call for a
/// source like this, see [`RowSource::remote`]). Put a [`crate::HostTier`] in front to
/// keep recently used rows in host memory.
///
/// Integrity: a missing key, a value of the wrong length, a timeout or a dropped
/// connection fail the call with [`HotrowError::Remote`] naming the row (the cache keeps
/// none of the batch's missed rows); a failed connection is dropped and opened again by
/// the next call, and a pooled connection that died while idle (a restarted server) is
/// replaced within the call, once.
///
/// ```no_run
/// # fn main() -> Result<(), hotrow::HotrowError> {
/// use hotrow::{CacheConfig, EmbeddingCache, FileTable, GpuContext, HostTier, RedisOptions,
///              RedisTable, RedisTarget};
/// let target = RedisTarget::Standalone("redis://127.0.0.1:6379/".into());
/// // once: copy a trained table into Redis (with a progress bar)
/// let file = FileTable::open_npy("user_emb.npy")?;
/// RedisTable::load(&file, &target, "emb:user", RedisOptions::default(), hotrow::ValueType::F32, true)?;
/// // then, on every server: GPU cache -> host tier (1M rows) -> Redis
/// let redis = RedisTable::open(&target, "emb:user", RedisOptions::default())?;
/// let tier = HostTier::new(redis, 1_000_000)?;
/// let mut cache = EmbeddingCache::new(&GpuContext::new()?, tier, CacheConfig::default())?;
/// let rows = cache.lookup(&[3, 14, 15])?;
/// # Ok(()) }
/// ```
pub struct RedisTable {
    target: RedisTarget,
    prefix: String,
    rows: usize,
    dim: usize,
    value_type: ValueType,
    options: RedisOptions,
    pool: Vec<Mutex<Option<Conn>>>,
    calls: AtomicU64,
    round_trips: AtomicU64,
    rows_read: AtomicU64,
    bytes: AtomicU64,
    connects: AtomicU64,
}

impl std::fmt::Debug for RedisTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTable")
            .field("target", &self.target)
            .field("prefix", &self.prefix)
            .field("rows", &self.rows)
            .field("dim", &self.dim)
            .field("value_type", &self.value_type)
            .finish()
    }
}

fn remote(id: Option<u32>, problem: RemoteProblem) -> HotrowError {
    HotrowError::Remote { id, problem }
}

/// The problem a client error is.
fn classify(e: &redis::RedisError) -> RemoteProblem {
    if e.is_timeout() {
        RemoteProblem::Timeout(e.to_string())
    } else if e.is_connection_dropped() || e.is_io_error() || e.is_connection_refusal() {
        RemoteProblem::Connection(e.to_string())
    } else {
        RemoteProblem::Other(e.to_string())
    }
}

impl RedisTable {
    /// Opens the table stored under `prefix` at `target` (reads its description).
    pub fn open(target: &RedisTarget, prefix: &str, options: RedisOptions) -> Result<Self> {
        let options = RedisOptions {
            connections: options.connections.max(1),
            keys_per_command: options.keys_per_command.max(1),
            min_keys_per_connection: options.min_keys_per_connection.max(1),
            ..options
        };
        let mut conn = connect(target, options.timeout)?;
        let key = meta_key(prefix);
        let text: Option<String> = match &mut conn {
            Conn::Single(c) => redis::cmd("GET").arg(&key).query(c),
            Conn::Cluster(c) => redis::cmd("GET").arg(&key).query(c),
        }
        .map_err(|e| remote(None, classify(&e)))?;
        let text = text.ok_or_else(|| {
            remote(
                None,
                RemoteProblem::BadTable(format!(
                    "no key {key} (not loaded, or the load did not finish)"
                )),
            )
        })?;
        let (rows, dim, value_type) = parse_description(&text).ok_or_else(|| {
            remote(
                None,
                RemoteProblem::BadTable(format!("{key} holds {text:?}")),
            )
        })?;
        let pool: Vec<Mutex<Option<Conn>>> =
            (0..options.connections).map(|_| Mutex::new(None)).collect();
        *pool[0].lock().unwrap_or_else(|e| e.into_inner()) = Some(conn);
        Ok(Self {
            target: target.clone(),
            prefix: prefix.to_string(),
            rows,
            dim,
            value_type,
            options,
            pool,
            calls: AtomicU64::new(0),
            round_trips: AtomicU64::new(0),
            rows_read: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            connects: AtomicU64::new(1),
        })
    }

    /// Where the table lives.
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The key of row `id`.
    pub fn key(&self, id: u32) -> String {
        row_key(&self.prefix, id)
    }

    /// How the values are stored.
    pub fn value_type(&self) -> ValueType {
        self.value_type
    }

    /// Counters since it was opened.
    pub fn stats(&self) -> RedisStats {
        RedisStats {
            calls: self.calls.load(Ordering::Relaxed),
            round_trips: self.round_trips.load(Ordering::Relaxed),
            rows: self.rows_read.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
        }
    }

    fn row_bytes(&self) -> usize {
        self.dim * self.value_type.bytes()
    }

    /// Reads `ids` over the pool: contiguous shares, one per connection, in parallel; each
    /// share's values go to `decode(share index, position in share, bytes)`.
    fn read_values<T: Send>(
        &self,
        ids: &[u32],
        out: &mut [T],
        decode: impl Fn(&[u8], &mut [T]) + Sync,
    ) -> Result<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if ids.is_empty() {
            return Ok(());
        }
        let per = self.options.min_keys_per_connection;
        let parts = ids.len().div_ceil(per).clamp(1, self.pool.len());
        let chunk = ids.len().div_ceil(parts);
        let dim = self.dim;
        let decode = &decode;
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let mut handles = Vec::new();
            let mut shares = ids
                .chunks(chunk)
                .zip(out.chunks_mut(chunk * dim))
                .enumerate();
            let first = shares.next();
            for (k, (ids, out)) in shares {
                handles.push(s.spawn(move || self.fetch(k, ids, out, decode)));
            }
            let mut results = Vec::new();
            if let Some((k, (ids, out))) = first {
                results.push(self.fetch(k, ids, out, decode));
            }
            for h in handles {
                results.push(h.join().unwrap_or_else(|_| {
                    Err(remote(
                        None,
                        RemoteProblem::Other("a reading thread panicked".into()),
                    ))
                }));
            }
            results
        });
        results.into_iter().collect()
    }

    /// One pipelined request for `keys`: `MGET`s on one server, `GET`s to each node of a
    /// cluster (`MGET` cannot cross hash slots).
    fn request(
        &self,
        conn: &mut Conn,
        keys: &[String],
    ) -> redis::RedisResult<Vec<Option<Vec<u8>>>> {
        match conn {
            Conn::Single(c) => {
                let mut p = redis::pipe();
                for group in keys.chunks(self.options.keys_per_command) {
                    p.cmd("MGET").arg(group);
                }
                p.query::<Vec<Vec<Option<Vec<u8>>>>>(c)
                    .map(|v| v.into_iter().flatten().collect())
            }
            Conn::Cluster(c) => {
                let mut p = redis::cluster::cluster_pipe();
                for key in keys {
                    p.cmd("GET").arg(key);
                }
                p.query(c)
            }
        }
    }

    /// One pipelined request on connection `k` for `ids`.
    fn fetch<T>(
        &self,
        k: usize,
        ids: &[u32],
        out: &mut [T],
        decode: &(impl Fn(&[u8], &mut [T]) + Sync),
    ) -> Result<()> {
        let first = Some(ids[0]);
        let keys: Vec<String> = ids.iter().map(|&id| self.key(id)).collect();
        let mut slot = self.pool[k].lock().unwrap_or_else(|e| e.into_inner());
        // A pooled connection may have died while idle (a server restart): such a failure
        // gets one retry on a fresh connection (reads are idempotent); a fresh one's does not.
        let values = loop {
            let fresh = slot.is_none();
            if fresh {
                *slot = Some(
                    connect(&self.target, self.options.timeout).map_err(|e| match e {
                        HotrowError::Remote { problem, .. } => remote(first, problem),
                        e => e,
                    })?,
                );
                self.connects.fetch_add(1, Ordering::Relaxed);
            }
            let conn = slot.as_mut().expect("connected");
            let result = self.request(conn, &keys);
            self.round_trips.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(v) => break v,
                Err(e) => {
                    *slot = None; // the next attempt, or call, connects again
                    let problem = classify(&e);
                    if fresh || !matches!(problem, RemoteProblem::Connection(_)) {
                        return Err(remote(first, problem));
                    }
                }
            }
        };
        drop(slot);
        if values.len() != ids.len() {
            return Err(remote(
                first,
                RemoteProblem::Other(format!("{} values for {} keys", values.len(), ids.len())),
            ));
        }
        let want = self.row_bytes();
        let dim = self.dim;
        let mut bytes = 0;
        for ((value, &id), row) in values.iter().zip(ids).zip(out.chunks_exact_mut(dim)) {
            let key = || self.key(id);
            let v = value
                .as_deref()
                .ok_or_else(|| remote(Some(id), RemoteProblem::MissingKey { key: key() }))?;
            if v.len() != want {
                return Err(remote(
                    Some(id),
                    RemoteProblem::WrongLength {
                        key: key(),
                        got: v.len(),
                        want,
                    },
                ));
            }
            decode(v, row);
            bytes += v.len();
        }
        self.rows_read
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn connect(target: &RedisTarget, timeout: Duration) -> Result<Conn> {
    let fail = |e: redis::RedisError| remote(None, classify(&e));
    match target {
        RedisTarget::Standalone(url) => {
            let client = redis::Client::open(url.as_str()).map_err(fail)?;
            let c = client.get_connection_with_timeout(timeout).map_err(fail)?;
            c.set_read_timeout(Some(timeout)).map_err(fail)?;
            c.set_write_timeout(Some(timeout)).map_err(fail)?;
            Ok(Conn::Single(c))
        }
        RedisTarget::Cluster(nodes) => {
            let client = redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .build()
                .map_err(fail)?;
            Ok(Conn::Cluster(Box::new(
                client.get_connection().map_err(fail)?,
            )))
        }
    }
}

impl RowSource for RedisTable {
    fn rows(&self) -> usize {
        self.rows
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn read_rows(&self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        let ty = self.value_type;
        self.read_values(ids, out, |bytes, row: &mut [f32]| match ty {
            ValueType::F16 => {
                for (d, b) in row.iter_mut().zip(bytes.chunks_exact(2)) {
                    *d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            _ => {
                for (d, b) in row.iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        })
    }

    fn read_rows_f16(&self, ids: &[u32], out: &mut [half::f16]) -> Result<bool> {
        if self.value_type != ValueType::F16 {
            return Ok(false);
        }
        self.read_values(ids, out, |bytes, row: &mut [half::f16]| {
            for (d, b) in row.iter_mut().zip(bytes.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([b[0], b[1]]);
            }
        })?;
        Ok(true)
    }

    fn remote(&self) -> bool {
        true
    }
}
