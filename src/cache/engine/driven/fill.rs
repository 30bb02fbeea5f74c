//! The GPU-driven path's table: every row of a [`RowSource`], encoded as the slots store
//! rows, in host memory the GPU reads (`RowBuffer` with [`Placement::Host`]). Filled once,
//! in chunks read from the source (in parallel, panics caught) and written straight into it
//! where it is hotrow's own imported memory, else by the queue with at most a few chunks in
//! flight, so the fill needs little memory beyond the table.

use super::super::read::read_rows_encoded;
use crate::error::{HotrowError, Result};
use crate::gpu::{GpuContext, Placement, RowBuffer, RowBufferOptions, RowLayout};
use crate::table::RowSource;

/// Bytes read from the source and written per chunk.
const CHUNK_BYTES: u64 = 32 << 20;
/// Chunks written before the fill waits for the GPU (bounds wgpu's staging memory).
const CHUNKS_IN_FLIGHT: usize = 4;

/// A host-memory table of `source`'s rows stored as `layout`; `progress(rows done, rows)`
/// after each chunk. Errors: the context lacks host-visible storage
/// ([`HotrowError::Unsupported`]), the allocation is refused ([`HotrowError::OutOfMemory`],
/// [`HotrowError::ExceedsLimit`] naming the limit), or the source fails.
pub(crate) fn fill_host_table<S: RowSource>(
    ctx: &GpuContext,
    source: &S,
    (layout, options): (RowLayout, RowBufferOptions),
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RowBuffer> {
    if !ctx.adapter().host_visible_storage {
        return Err(HotrowError::Unsupported {
            what:
                "the GPU-driven path (its table in host memory: GpuOptions::host_visible_storage)",
            feature: "MAPPABLE_PRIMARY_BUFFERS",
        });
    }
    let rows = source.rows();
    let table = RowBuffer::with_layout(ctx, rows, layout, options, Placement::Host)?;
    let words = layout.words_per_row();
    if table.host_mapped() {
        // hotrow's own memory: rows read and encoded straight into it, chunk by chunk (no
        // submission has seen the table yet).
        let chunk = ((CHUNK_BYTES / layout.row_bytes()) as usize).max(1);
        let mut ids: Vec<u32> = Vec::with_capacity(chunk);
        progress(0, rows);
        for shard in 0..table.shards().len() {
            // SAFETY: the table is new; nothing has been submitted that uses it, and this
            // is the only slice of the shard alive.
            let Some(out) = (unsafe { table.host_words(shard) }) else {
                break;
            };
            let base = shard * table.shard_rows();
            for (k, out) in out.chunks_mut(chunk * words).enumerate() {
                let first = base + k * chunk;
                let n = out.len() / words;
                ids.clear();
                ids.extend(first as u32..(first + n) as u32);
                read_rows_encoded(source, layout, &ids, out)?;
                progress(first + n, rows);
            }
        }
        ctx.check()?;
        return Ok(table);
    }
    let chunk = ((CHUNK_BYTES / layout.row_bytes()) as usize).clamp(1, table.shard_rows());
    let mut ids: Vec<u32> = Vec::with_capacity(chunk);
    let mut encoded = vec![0u32; chunk * words];
    let shards: Vec<&wgpu::Buffer> = table.shards().collect();
    let mut first = 0;
    let mut written = 0;
    progress(0, rows);
    while first < rows {
        // A chunk never crosses a shard.
        let shard = first / table.shard_rows();
        let local = first % table.shard_rows();
        let n = chunk.min(rows - first).min(table.shard_rows() - local);
        ids.clear();
        ids.extend(first as u32..(first + n) as u32);
        let out = &mut encoded[..n * words];
        read_rows_encoded(source, layout, &ids, out)?;
        ctx.queue().write_buffer(
            shards[shard],
            layout.bytes(local),
            bytemuck::cast_slice(out),
        );
        ctx.queue().submit([]);
        written += 1;
        if written % CHUNKS_IN_FLIGHT == 0 {
            ctx.wait_idle()?;
        }
        first += n;
        progress(first, rows);
    }
    ctx.wait_idle()?;
    ctx.check()?;
    Ok(table)
}
