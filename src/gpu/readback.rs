//! Copying GPU buffers back to host memory, blocking or as a future, through the context's
//! pool of readback buffers. Futures are completed by map callbacks that the context's one
//! poller thread drives (started on the first async read, ended with the context), never
//! by a thread per call.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures::channel::oneshot;

use crate::error::{HotrowError, Result};
use crate::gpu::{GpuContext, TrackedBuffer};

/// Longest wait for a mapping before [`HotrowError::Timeout`].
pub(crate) const MAP_TIMEOUT: Duration = Duration::from_secs(120);

/// Maps `buffer` (which must have `MAP_READ`) for reading, waits, and copies the bytes out.
pub(crate) fn map_read_blocking(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<Vec<u8>> {
    map_read_with(ctx, buffer, offset, size, |bytes| bytes.to_vec())
}

/// Maps `buffer` (which must have `MAP_READ`) for reading, waits, runs `read` on the mapped
/// bytes and unmaps.
pub(crate) fn map_read_with<R>(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    offset: u64,
    size: u64,
    read: impl FnOnce(&[u8]) -> R,
) -> Result<R> {
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
    let out = {
        let view = buffer
            .get_mapped_range(offset..offset + size)
            .map_err(|e| HotrowError::Map(e.to_string()))?;
        read(&view)
    };
    buffer.unmap();
    Ok(out)
}

/// Copies `size` bytes of `src` from `offset` into a pooled readback buffer (after all work
/// submitted so far).
fn copy_out(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    offset: u64,
    size: u64,
) -> Result<(TrackedBuffer, wgpu::SubmissionIndex)> {
    ctx.check()?;
    let staging = ctx.take_readback(size)?;
    let mut enc = crate::gpu::encoder(ctx, "hotrow readback");
    enc.copy_buffer_to_buffer(src, offset, &staging, 0, size);
    let idx = crate::gpu::submit_encoder(ctx, enc)?;
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
    let size = len as u64 * 4;
    let (staging, _) = copy_out(ctx, src, offset, size)?;
    let bytes = map_read_blocking(ctx, &staging, 0, size)?;
    ctx.return_readback(staging);
    Ok(bytemuck::pod_collect_to_vec(&bytes))
}

/// Reads `len` u32 words from `src` at byte `offset` (after all work submitted so far).
pub(crate) fn read_u32(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    offset: u64,
    len: usize,
) -> Result<Vec<u32>> {
    Ok(bytemuck::cast_vec(read_f32(ctx, src, offset, len)?))
}

/// Async form of [`read_f32`]: the copy is submitted now; the context's poller drives the
/// device until the map callback completes the future, so the caller never polls wgpu.
pub(crate) fn read_f32_async(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    offset: u64,
    len: usize,
) -> impl std::future::Future<Output = Result<Vec<f32>>> + Send + 'static {
    let ctx = ctx.clone();
    let size = len as u64 * 4;
    let started = if len == 0 {
        Ok(None)
    } else {
        ctx.guarded(|| copy_out(&ctx, src, offset, size))
            .map(|(staging, _)| {
                let (tx, rx) = oneshot::channel();
                let poller = ctx.inner.poller.clone();
                poller.begin();
                staging.map_async(wgpu::MapMode::Read, 0..size, move |r| {
                    poller.end();
                    let _ = tx.send(r);
                });
                Some((staging, rx))
            })
    };
    async move {
        let Some((staging, rx)) = started? else {
            return Ok(Vec::new());
        };
        rx.await
            .map_err(|_| HotrowError::Map("map callback dropped (device lost?)".into()))??;
        ctx.check()?;
        let bytes = staging
            .get_mapped_range(0..size)
            .map_err(|e| HotrowError::Map(e.to_string()))?
            .to_vec();
        staging.unmap();
        ctx.return_readback(staging);
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}

/// The context's poller: one thread, started when the first async readback is pending,
/// that polls the device while any is pending and sleeps otherwise; it ends when the
/// context is dropped.
#[derive(Clone)]
pub(crate) struct Poller {
    shared: Arc<PollerShared>,
    device: wgpu::Device,
}

#[derive(Default)]
struct PollerShared {
    state: Mutex<PollerState>,
    wake: Condvar,
}

#[derive(Default)]
struct PollerState {
    pending: usize,
    started: bool,
    shutdown: bool,
}

impl Poller {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        Self {
            shared: Arc::default(),
            device: device.clone(),
        }
    }

    /// One more pending map: starts the thread if needed and wakes it.
    fn begin(&self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.pending += 1;
        if !st.started {
            st.started = true;
            let shared = self.shared.clone();
            let device = self.device.clone();
            let spawned = std::thread::Builder::new()
                .name("hotrow-poll".into())
                .spawn(move || poll_loop(&shared, &device));
            if spawned.is_err() {
                st.started = false; // the next read tries again; this one waits in vain
                log::error!("hotrow: could not start the poll thread");
            }
        }
        self.shared.wake.notify_all();
    }

    /// A pending map completed (its callback ran).
    fn end(&self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.pending = st.pending.saturating_sub(1);
    }

    pub(crate) fn shutdown(&self) {
        let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        st.shutdown = true;
        self.shared.wake.notify_all();
    }
}

fn poll_loop(shared: &PollerShared, device: &wgpu::Device) {
    loop {
        {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            while st.pending == 0 && !st.shutdown {
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.shutdown {
                return;
            }
        }
        // Bounded waits, so a shutdown or a lost device is noticed.
        let r = device.poll(wgpu::PollType::Wait {
            submission_index: None,
            timeout: Some(Duration::from_millis(50)),
        });
        if let Err(e) = r {
            if !matches!(e, wgpu::PollError::Timeout) {
                // Not a plain timeout: back off rather than spin on a failing device.
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}
