//! The one way work reaches the queue: [`submit`] takes a call's command buffers and the
//! staging entries they copy from, unmaps the entries, submits, has each entry mapped again
//! once the GPU is done with it, and reports any error wgpu raised meanwhile.

use crate::error::Result;
use crate::gpu::{GpuContext, StagingEntry};

/// Submits `commands` (in order, one submission) reading `staged`; returns the submission.
pub(crate) fn submit(
    ctx: &GpuContext,
    commands: impl IntoIterator<Item = wgpu::CommandBuffer>,
    staged: impl IntoIterator<Item = StagingEntry>,
) -> Result<wgpu::SubmissionIndex> {
    let staged: Vec<StagingEntry> = staged.into_iter().collect();
    for entry in &staged {
        entry.close();
    }
    let sub = ctx.queue().submit(commands);
    for entry in staged {
        entry.submitted(sub.clone());
    }
    ctx.check()?;
    Ok(sub)
}

/// [`submit`] of one encoder that reads no staging entry.
pub(crate) fn submit_encoder(
    ctx: &GpuContext,
    enc: wgpu::CommandEncoder,
) -> Result<wgpu::SubmissionIndex> {
    submit(ctx, [enc.finish()], [])
}
