//! Copying GPU buffers back to host memory, blocking or as a future.

use futures::channel::oneshot;

use crate::error::{HotrowError, Result};
use crate::gpu::GpuContext;

/// Longest wait for a mapping before the device is reported lost.
pub(crate) const MAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Maps `buffer` (which must have `MAP_READ`) for reading, waits, and copies the bytes out.
pub(crate) fn map_read_blocking(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<Vec<u8>> {
    let (tx, mut rx) = oneshot::channel();
    buffer.map_async(wgpu::MapMode::Read, offset..offset + size, move |r| {
        let _ = tx.send(r);
    });
    let mut result = None;
    ctx.poll_until(None, MAP_TIMEOUT, || {
        if result.is_none() {
            result = rx.try_recv().ok().flatten();
        }
        result.is_some()
    })?;
    result.ok_or_else(|| HotrowError::Map("map callback dropped".into()))??;
    let bytes = buffer
        .get_mapped_range(offset..offset + size)
        .map_err(|e| HotrowError::Map(e.to_string()))?
        .to_vec();
    buffer.unmap();
    Ok(bytes)
}

fn staging_copy(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<(wgpu::Buffer, wgpu::SubmissionIndex)> {
    let staging = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("hotrow readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx
        .device()
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("hotrow readback"),
        });
    enc.copy_buffer_to_buffer(src, offset, &staging, 0, size);
    let idx = ctx.queue().submit([enc.finish()]);
    Ok((staging, idx))
}

/// Reads `len` f32 values from `src` at byte `offset` (after all work submitted so far).
pub(crate) fn read_f32(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    offset: u64,
    len: usize,
) -> Result<Vec<f32>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    ctx.check()?;
    let size = len as u64 * 4;
    let (staging, _) = staging_copy(ctx, src, offset, size)?;
    let bytes = map_read_blocking(ctx, &staging, 0, size)?;
    Ok(bytemuck::pod_collect_to_vec(&bytes))
}

/// Async form of [`read_f32`]: the copy is submitted now; a helper thread waits on the
/// device so the future completes without the caller polling wgpu.
pub(crate) fn read_f32_async(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    offset: u64,
    len: usize,
) -> impl std::future::Future<Output = Result<Vec<f32>>> + Send + 'static {
    let ctx = ctx.clone();
    let started = if len == 0 {
        Ok(None)
    } else {
        ctx.check()
            .and_then(|_| staging_copy(&ctx, src, offset, len as u64 * 4))
            .map(Some)
    };
    async move {
        let Some((staging, idx)) = started? else {
            return Ok(Vec::new());
        };
        let size = len as u64 * 4;
        let (tx, rx) = oneshot::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        let device = ctx.device().clone();
        std::thread::spawn(move || {
            let _ = device.poll(wgpu::PollType::Wait {
                submission_index: Some(idx),
                timeout: None,
            });
        });
        rx.await
            .map_err(|_| HotrowError::Map("map callback dropped (device lost?)".into()))??;
        ctx.check()?;
        let bytes = staging
            .get_mapped_range(0..size)
            .map_err(|e| HotrowError::Map(e.to_string()))?
            .to_vec();
        staging.unmap();
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}
