//! The typed pipeline cache: explicit bind-group and pipeline layouts per shader, built once
//! with the device; shader modules and compute pipelines compiled on first use and keyed by
//! [`Kernel`] (shader file + entry point) and [`Specialisation`] (its overridable constants),
//! shared by every plan on the device.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::shader::{BindingKind, Kernel, Shader, Specialisation};
use crate::{Error, Result};

/// The runtime checks wgpu compiles into our shaders: its bounds checks on every buffer access
/// stay; its loop bounding and integer-division guards go.
///
/// - Loop bounding adds a counter to every loop, decremented and tested on each iteration, so
///   that a loop that would never end does end. Every loop of `shaders/` ends: each runs from
///   a start to an end bound that do not change inside it (shapes, chunk sizes, rule terms),
///   with its counter stepping towards the end by at least 1, and the host sizes the chunks so
///   that no loop runs more than a few thousand times (llvmpipe's 65,535-iteration cap).
/// - The division guards replace a zero divisor, and the divisor -1 of a signed division, before
///   every `/` and `%` on integers. Our divisors are the layers' shapes, strides, window sizes
///   and chunk counts, all at least 1 (`Network::validate` refuses a layer with an empty
///   output), and constants written `max(v, 1u)` where a kernel divides by a pooling size that
///   is 0 when no pooling is fused; no signed division divides by -1.
///
/// Both cost instructions in the innermost loops (a loop over the 5 columns of a kernel carries
/// a second counter): without them the shaders of `explain` on the bundled model ran 15 % fewer
/// instructions on llvmpipe (BENCHMARKS.md, tenth run). The parity suite runs every kernel as
/// compiled here.
const RUNTIME_CHECKS: wgpu::ShaderRuntimeChecks = wgpu::ShaderRuntimeChecks {
    bounds_checks: true,
    force_loop_bounding: false,
    int_div_checks: false,
    ray_query_initialization_tracking: true,
    task_shader_dispatch_tracking: true,
    mesh_shader_primitive_indices_clamp: true,
};

/// Layouts per shader and lazily compiled pipelines per kernel.
pub(crate) struct PipelineCache {
    layouts: HashMap<Shader, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    modules: Mutex<HashMap<Shader, wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<(Kernel, Specialisation), wgpu::ComputePipeline>>,
}

fn layout_entry(binding: u32, kind: BindingKind) -> wgpu::BindGroupLayoutEntry {
    let ty = match kind {
        BindingKind::Uniform => wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        BindingKind::StorageRead | BindingKind::StorageReadWrite => wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage {
                read_only: kind == BindingKind::StorageRead,
            },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
    };
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty,
        count: None,
    }
}

impl PipelineCache {
    /// Builds the bind-group and pipeline layouts of every shader.
    pub(crate) fn new(device: &wgpu::Device) -> Self {
        let mut layouts = HashMap::new();
        for shader in Shader::ALL {
            let entries: Vec<_> = shader
                .bindings()
                .iter()
                .enumerate()
                .map(|(i, k)| layout_entry(i as u32, *k))
                .collect();
            let label = format!("{}.bind_group_layout", shader.label());
            let bgl = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some(&label),
                entries: &entries,
            });
            let label = format!("{}.pipeline_layout", shader.label());
            let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(&label),
                bind_group_layouts: &[Some(&bgl)],
                immediate_size: 0,
            });
            layouts.insert(shader, (bgl, pl));
        }
        PipelineCache {
            layouts,
            modules: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
        }
    }

    /// The bind-group layout every kernel of `shader` uses.
    pub(crate) fn bind_group_layout(&self, shader: Shader) -> &wgpu::BindGroupLayout {
        &self.layouts[&shader].0
    }

    /// Compiles the pipelines of `wanted` that are not compiled yet, on up to one thread per
    /// core: the driver's compiler takes nearly all of the time a plan takes to build (a plan
    /// whose pipelines are cached builds in a few milliseconds), and the pipelines do not depend
    /// on each other. wgpu's error scopes are per thread, so each compile still reports its own
    /// failure. Returns the first failure.
    pub(crate) fn compile_all(
        &self,
        device: &wgpu::Device,
        wanted: &[(Kernel, Specialisation)],
    ) -> Result<()> {
        let missing: Vec<(Kernel, Specialisation)> = {
            let compiled = self.pipelines.lock().unwrap();
            let mut listed = HashSet::new();
            wanted
                .iter()
                .filter(|key| !compiled.contains_key(key) && listed.insert(**key))
                .copied()
                .collect()
        };
        let threads = std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .min(missing.len());
        let next = AtomicUsize::new(0);
        let compile = || -> Result<()> {
            loop {
                let Some(&(kernel, spec)) = missing.get(next.fetch_add(1, Ordering::Relaxed))
                else {
                    return Ok(());
                };
                self.get(device, kernel, spec)?;
            }
        };
        if threads <= 1 {
            return compile();
        }
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads).map(|_| scope.spawn(compile)).collect();
            crate::error::join_all(workers)
        })
    }

    /// The compute pipeline of `kernel` with the constants of `spec`, compiled on first use.
    pub(crate) fn get(
        &self,
        device: &wgpu::Device,
        kernel: Kernel,
        spec: Specialisation,
    ) -> Result<wgpu::ComputePipeline> {
        if let Some(p) = self.pipelines.lock().unwrap().get(&(kernel, spec)) {
            return Ok(p.clone());
        }
        let shader = kernel.shader();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = {
            let mut modules = self.modules.lock().unwrap();
            modules
                .entry(shader)
                .or_insert_with(|| {
                    let desc = wgpu::ShaderModuleDescriptor {
                        label: Some(shader.file_name()),
                        source: wgpu::ShaderSource::Wgsl(shader.source().into()),
                    };
                    // SAFETY: see RUNTIME_CHECKS: every loop of these shaders ends and no
                    // integer division or modulo has a zero divisor; buffer accesses keep
                    // their bounds checks.
                    unsafe { device.create_shader_module_trusted(desc, RUNTIME_CHECKS) }
                })
                .clone()
        };
        let label = kernel.label();
        let constants = spec.constants();
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&self.layouts[&shader].1),
            module: &module,
            entry_point: Some(kernel.entry_point()),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                ..Default::default()
            },
            cache: None,
        });
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "shaders/{} entry point '{}' failed to build: {err}",
                shader.file_name(),
                kernel.entry_point()
            )));
        }
        self.pipelines
            .lock()
            .unwrap()
            .insert((kernel, spec), pipeline.clone());
        Ok(pipeline)
    }
}
