//! Compiled compute pipelines, one per kernel entry point, built on first use and kept by
//! the context: each op call only writes buffers, binds and dispatches.

use std::sync::OnceLock;

/// Every WGSL source of the crate, by file name (also used by the naga validation test).
pub const SHADERS: &[(&str, &str)] = &[
    ("gather.wgsl", include_str!("../../shaders/gather.wgsl")),
    (
        "scatter_rows.wgsl",
        include_str!("../../shaders/scatter_rows.wgsl"),
    ),
    ("bag.wgsl", include_str!("../../shaders/bag.wgsl")),
    (
        "block_matmul.wgsl",
        include_str!("../../shaders/block_matmul.wgsl"),
    ),
];

/// Pipelines by kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    GatherScalar,
    GatherVec4,
    ScatterScalar,
    ScatterVec4,
    BagScalar,
    BagVec4,
    BlockMatmul,
}

impl Kernel {
    const ALL: [Kernel; 7] = [
        Kernel::GatherScalar,
        Kernel::GatherVec4,
        Kernel::ScatterScalar,
        Kernel::ScatterVec4,
        Kernel::BagScalar,
        Kernel::BagVec4,
        Kernel::BlockMatmul,
    ];

    fn source(self) -> (&'static str, &'static str) {
        let file = match self {
            Kernel::GatherScalar | Kernel::GatherVec4 => "gather.wgsl",
            Kernel::ScatterScalar | Kernel::ScatterVec4 => "scatter_rows.wgsl",
            Kernel::BagScalar | Kernel::BagVec4 => "bag.wgsl",
            Kernel::BlockMatmul => "block_matmul.wgsl",
        };
        let src = SHADERS.iter().find(|(n, _)| *n == file).map(|(_, s)| *s);
        (file, src.expect("shader listed in SHADERS"))
    }

    fn entry(self) -> &'static str {
        match self {
            Kernel::GatherScalar => "gather_scalar",
            Kernel::GatherVec4 => "gather_vec4",
            Kernel::ScatterScalar => "scatter_scalar",
            Kernel::ScatterVec4 => "scatter_vec4",
            Kernel::BagScalar => "bag_scalar",
            Kernel::BagVec4 => "bag_vec4",
            Kernel::BlockMatmul => "block_matmul",
        }
    }

    fn index(self) -> usize {
        Kernel::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

pub(crate) struct Kernels {
    device: wgpu::Device,
    modules: std::sync::Mutex<Vec<(&'static str, wgpu::ShaderModule)>>,
    pipelines: Vec<OnceLock<wgpu::ComputePipeline>>,
}

impl Kernels {
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        Self {
            device: device.clone(),
            modules: std::sync::Mutex::new(Vec::new()),
            pipelines: Kernel::ALL.iter().map(|_| OnceLock::new()).collect(),
        }
    }

    pub(crate) fn get(&self, k: Kernel) -> &wgpu::ComputePipeline {
        self.pipelines[k.index()].get_or_init(|| {
            let (file, src) = k.source();
            let module = {
                let mut mods = self.modules.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((_, m)) = mods.iter().find(|(f, _)| *f == file) {
                    m.clone()
                } else {
                    let m = self
                        .device
                        .create_shader_module(wgpu::ShaderModuleDescriptor {
                            label: Some(file),
                            source: wgpu::ShaderSource::Wgsl(src.into()),
                        });
                    mods.push((file, m.clone()));
                    m
                }
            };
            self.device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(k.entry()),
                    layout: None,
                    module: &module,
                    entry_point: Some(k.entry()),
                    compilation_options: Default::default(),
                    cache: None,
                })
        })
    }
}
