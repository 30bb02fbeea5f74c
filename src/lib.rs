//! # hotrow
//!
//! Fast embedding lookups on any GPU that wgpu reaches (Vulkan, Metal, DX12, GL), with a
//! software fallback so the same code runs where there is no GPU at all.
//!
//! * [`EmbeddingCache`]: the hot rows of a table that lives in host memory (or any
//!   [`RowSource`]) cached in GPU slots; each batch is compacted, only missed rows are
//!   uploaded, and [`EmbeddingCache::lookup`], [`EmbeddingCache::lookup_bags`],
//!   [`EmbeddingCache::scores`] and [`EmbeddingCache::combine`] compute on the cache.
//! * [`TableBatchedCache`]: many tables (a recommender's features) in one cache, every
//!   table's bags pooled in one call per step.
//! * [`HostTable`] (f32, f16, bf16 rows in memory) and [`FileTable`] (a memory-mapped
//!   `.npy` or `.safetensors` table) are the built-in [`RowSource`]s; [`RowFormat`] stores
//!   cached rows as f32, f16 or row-wise int8.
//! * [`GpuContext`]: adapter and device, built once (real GPU first, software adapter
//!   otherwise; `WGPU_BACKEND` / `WGPU_ADAPTER_NAME` honoured; or wrap your own device).
//! * [`RowBuffer`]: rows resident on the GPU, split over binding limits transparently;
//!   [`RowBuffer::gather`] looks rows up into [`Embeddings`] that stay on the GPU.
//! * [`CompactBatch`]: distinct ids + inverse map of a batch.
//! * [`reference`](mod@reference): plain CPU implementations, the test oracle.
//!
//! ```no_run
//! # fn main() -> Result<(), hotrow::HotrowError> {
//! use hotrow::{CacheConfig, Capacity, EmbeddingCache, GpuContext, HostTable};
//! let ctx = GpuContext::new()?;
//! let dim = 4;
//! let table: Vec<f32> = (0..100 * dim).map(|i| (i as f32).sin()).collect();
//! let config = CacheConfig::default().capacity(Capacity::Rows(10));
//! let mut cache = EmbeddingCache::new(&ctx, HostTable::borrowed(&table, dim)?, config)?;
//! let out = cache.lookup(&[42, 7, 42])?;          // GPU buffer, bindable by later passes
//! let host = out.to_host()?;                      // or out.to_host_async().await
//! assert_eq!(&host[..dim], &table[42 * dim..43 * dim]);
//! # Ok(()) }
//! ```
//!
//! Layers point one way: `gpu` (device, memory, pipelines, launches, readback, timing) <-
//! `ops` (each kernel's params and launch over plain buffer views) <- `cache` (policy, the
//! pass engine and the public API); `table` holds row sources.

#![warn(missing_docs)]

mod batch;
mod cache;
mod error;
mod gpu;
mod ops;
pub mod reference;
pub mod sizing;
mod table;
mod util;

pub use batch::CompactBatch;
pub use cache::{
    BatchPath, CacheConfig, CacheMemory, CacheStats, Capacity, DrivenState, EmbeddingCache,
    EvictionPolicy, HostTraffic, OwnedRows, PartitionedCache, PartitionedSlotMap, PassPlan,
    Queries, ReplicatedCache, Resolution, SlotMap, TableBags, TableBatchedCache, TableStats,
};
pub use error::{FileProblem, HotrowError, RemoteProblem, Result};
pub use gpu::{
    AdapterSummary, Embeddings, GpuContext, GpuOptions, MemoryStats, PassTiming, Placement,
    RowBuffer, RowBufferOptions, RowFormat, RowLayout,
};
/// The `half` crate, whose `f16` and `bf16` types [`HostTable`] takes.
pub use half;
pub use ops::bag::Pooling;
pub use ops::update::Optimizer;
pub use ops::{params_layouts, shader_files, shader_modules};
pub use table::{
    FileTable, HostTable, HostTier, MemoryRows, RowSource, TierStats, ValueType, WritableRowSource,
};
#[cfg(feature = "redis")]
pub use table::{RedisOptions, RedisStats, RedisTable, RedisTarget};

/// The README's examples, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
