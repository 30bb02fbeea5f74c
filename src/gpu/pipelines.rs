//! Compiled compute pipelines, built on first use and kept by the context, keyed by
//! (shader file, entry point, element prefix): an op names its [`Shader`] and entry, and
//! each call only writes buffers, binds and dispatches. Adding a kernel is a one-place
//! change: a WGSL file under `shaders/` and the op module that names it.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::{HotrowError, Result};
use crate::gpu::GpuContext;

/// WGSL inverse of [`crate::gpu::grid`], prepended to every kernel: `grid_thread` is the
/// linear index of a thread of a 1-D kernel dispatched as a (groups_x, y) grid of
/// 256-thread workgroups; `grid_element` its (row, column) in a `rows x width` grid of
/// elements, one thread each, with row `0xffffffff` for threads past the end.
const GRID_WGSL: &str = "
fn grid_thread(wid: vec3<u32>, lid: u32, groups_x: u32) -> u32 {
    return (wid.y * groups_x + wid.x) * 256u + lid;
}

fn grid_element(wid: vec3<u32>, lid: u32, groups_x: u32, rows: u32, width: u32) -> vec2<u32> {
    let g = grid_thread(wid, lid, groups_x);
    if (g >= rows * width) {
        return vec2<u32>(0xffffffffu, 0u);
    }
    let r = g / width;
    return vec2<u32>(r, g - r * width);
}
";

/// One WGSL kernel family: a file of `shaders/`, written once, compiled with a short prefix
/// of declarations (the element type of the rows, see [`crate::RowLayout`]) prepended.
#[derive(Debug)]
pub struct Shader {
    /// File name under `shaders/`.
    pub file: &'static str,
    /// The file's text, as embedded in the crate.
    pub source: &'static str,
    /// Every prefix the crate compiles this file with (each is validated by the tests).
    pub prefixes: &'static [&'static str],
}

impl Shader {
    /// The complete WGSL module for `prefix`: the prefix, the grid helper every kernel
    /// shares, then the file.
    pub fn with_prefix(&self, prefix: &str) -> String {
        format!("{prefix}{GRID_WGSL}\n{}", self.source)
    }

    /// Storage buffers the module binds (each kernel family binds all of its bindings in
    /// its one entry point).
    fn storage_bindings(&self) -> u32 {
        self.source.matches("var<storage").count() as u32
    }
}

pub(crate) struct Pipelines {
    device: wgpu::Device,
    built: Mutex<HashMap<(&'static str, &'static str, &'static str), wgpu::ComputePipeline>>,
}

impl Pipelines {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        Self {
            device: device.clone(),
            built: Mutex::new(HashMap::new()),
        }
    }
}

impl GpuContext {
    /// The pipeline of `entry` in `shader` compiled with `prefix`, built on first use.
    /// A kernel that binds more storage buffers than the device allows per stage is
    /// [`HotrowError::ExceedsLimit`] naming `max_storage_buffers_per_shader_stage`.
    pub(crate) fn pipeline(
        &self,
        shader: &'static Shader,
        entry: &'static str,
        prefix: &'static str,
    ) -> Result<wgpu::ComputePipeline> {
        let p = &self.inner.pipelines;
        let key = (shader.file, entry, prefix);
        if let Some(found) = p.built.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(found.clone());
        }
        let need = shader.storage_bindings();
        let limit = self.limits().max_storage_buffers_per_shader_stage;
        if need > limit {
            return Err(HotrowError::ExceedsLimit {
                what: shader.file,
                bytes: need as u64,
                limit_name: "max_storage_buffers_per_shader_stage",
                limit: limit as u64,
            });
        }
        self.check()?;
        let scope = p.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = p.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(shader.file),
            source: wgpu::ShaderSource::Wgsl(shader.with_prefix(prefix).into()),
        });
        let pipeline = p
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(HotrowError::Gpu(format!(
                "building {}:{entry}: {e}",
                shader.file
            )));
        }
        p.built
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, pipeline.clone());
        Ok(pipeline)
    }
}
