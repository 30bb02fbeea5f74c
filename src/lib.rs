//! # hotrow
//!
//! Fast embedding lookups on any GPU that wgpu reaches (Vulkan, Metal, DX12, GL), with a
//! software fallback so the same code runs where there is no GPU at all.
//!
//! * [`GpuContext`]: adapter and device, built once (real GPU first, software adapter
//!   otherwise; `WGPU_BACKEND` / `WGPU_ADAPTER_NAME` honoured; or wrap your own device).
//! * [`RowBuffer`]: rows resident on the GPU, split over binding limits transparently;
//!   [`RowBuffer::gather`] looks rows up into [`Embeddings`] that stay on the GPU.
//! * [`CompactBatch`]: distinct ids + inverse map of a batch.
//! * [`reference`]: plain CPU implementations, the test oracle.
//!
//! ```no_run
//! # fn main() -> Result<(), hotrow::HotrowError> {
//! use hotrow::{GpuContext, RowBuffer};
//! let ctx = GpuContext::new()?;
//! let dim = 4;
//! let table: Vec<f32> = (0..100 * dim).map(|i| (i as f32).sin()).collect();
//! let rows = RowBuffer::from_host(&ctx, &table, dim)?;
//! let out = rows.gather(&[42, 7, 42])?;          // GPU buffer, bindable by later passes
//! let host = out.to_host()?;                      // or out.to_host_async().await
//! assert_eq!(&host[..dim], &table[42 * dim..43 * dim]);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod batch;
mod cache;
mod error;
mod gpu;
mod ops;
pub mod reference;
mod table;
mod util;
pub mod workload;

pub use batch::CompactBatch;
pub use cache::{
    CacheConfig, CacheMemory, CacheStats, Capacity, EmbeddingCache, EvictionPolicy,
    PartitionedSlotMap, PassPlan, SlotMap,
};
pub use error::{HotrowError, Result};
pub use gpu::{
    AdapterSummary, Embeddings, GpuContext, GpuOptions, PassTiming, RowBuffer, RowBufferOptions,
    SHADERS,
};
pub use ops::bag::Pooling;
pub use ops::matmul::Queries;
pub use table::{HostTable, RowSource};

/// The README's example, compiled as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
