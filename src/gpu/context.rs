//! The GPU context: lists adapters, picks the best one (hardware before software, Vulkan before
//! GL), opens a device and queue, and holds the pipeline cache that every plan on it shares.

use std::sync::Arc;

use super::pipeline::PipelineCache;
use crate::{Error, Result};

/// What `taylormap adapters` prints about one adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    /// Adapter name, e.g. "NVIDIA H100" or "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// Graphics API: "Vulkan", "Metal", "Dx12" or "Gl".
    pub backend: String,
    /// "DiscreteGpu", "IntegratedGpu", "VirtualGpu", "Cpu" or "Other".
    pub device_type: String,
    /// True for a software rasteriser (llvmpipe, SwiftShader, WARP), where the CPU backend is faster.
    pub software: bool,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}, {}{})",
            self.name,
            self.backend,
            self.device_type,
            if self.software { ", software" } else { "" }
        )
    }
}

/// What to do when no adapter exists.
const INSTALL_HINT: &str = "install a GPU driver with Vulkan support, or Mesa's software Vulkan \
     driver (Debian/Ubuntu: apt-get install mesa-vulkan-drivers libvulkan1), or use --backend cpu";

/// An instance for `backends`, unless `WGPU_BACKEND` chooses.
fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    if std::env::var_os("WGPU_BACKEND").is_none() {
        desc.backends = backends;
    }
    wgpu::Instance::new(desc)
}

fn is_software(info: &wgpu::AdapterInfo) -> bool {
    software(&info.name, info.device_type)
}

/// A software rasteriser: device type Cpu, or a name that gives one away.
fn software(name: &str, device_type: wgpu::DeviceType) -> bool {
    let name = name.to_lowercase();
    device_type == wgpu::DeviceType::Cpu
        || [
            "llvmpipe",
            "lavapipe",
            "softpipe",
            "swiftshader",
            "microsoft basic render",
        ]
        .iter()
        .any(|s| name.contains(s))
}

fn summarize(info: &wgpu::AdapterInfo) -> AdapterSummary {
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        software: is_software(info),
    }
}

fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    rank_of(is_software(info), info.device_type, info.backend)
}

/// Preference order: lower is better. Hardware (discrete, integrated, virtual, other) before
/// software; within a type, Vulkan/Metal before DX12 before GL.
fn rank_of(software: bool, device_type: wgpu::DeviceType, backend: wgpu::Backend) -> (u8, u8) {
    let ty = if software {
        4
    } else {
        match device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        }
    };
    let api = match backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal => 0,
        wgpu::Backend::Dx12 => 1,
        wgpu::Backend::Gl => 2,
        _ => 3,
    };
    (ty, api)
}

/// Every adapter of `backends`, best first.
fn ranked_adapters(instance: &wgpu::Instance, backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    let mut all = pollster::block_on(instance.enumerate_adapters(backends));
    all.sort_by_key(|a| rank(&a.get_info()));
    all
}

/// Every adapter wgpu finds (Vulkan, Metal, DX12 and GL), best first.
pub fn adapters() -> Vec<AdapterSummary> {
    let all = wgpu::Backends::PRIMARY | wgpu::Backends::GL;
    ranked_adapters(&instance(all), all)
        .iter()
        .map(|a| summarize(&a.get_info()))
        .collect()
}

/// An open device and queue on the best adapter, with the pipeline cache. Cheap to clone (the
/// clones share the device, queue and cache).
#[derive(Clone)]
pub struct GpuContext {
    inner: Arc<Inner>,
}

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    pipelines: PipelineCache,
    timestamps: bool,
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.summary())
            .finish()
    }
}

impl GpuContext {
    /// Opens the best adapter: hardware (discrete > integrated > virtual) before software,
    /// Vulkan preferred over GL. Errors, saying what to install, when there is none.
    pub fn new() -> Result<GpuContext> {
        Self::open_best(None)
    }

    /// Opens the best adapter, as [`GpuContext::new`] does, with a device that allows at most
    /// `max` workgroups per dimension of a dispatch instead of the adapter's limit (65,535 on
    /// most). The plan then folds every dispatch of more than `max` workgroups into two
    /// dimensions, the path that otherwise only dispatches of more than 65,535 x 64 invocations
    /// take (from a batch of 911 on the bundled model, of about 21 on a 224 x 224 network with
    /// 64 channels): for tests on small networks.
    pub fn with_workgroup_limit(max: u32) -> Result<GpuContext> {
        Self::open_best(Some(max))
    }

    /// [`GpuContext::new`], with the workgroup limit of [`GpuContext::with_workgroup_limit`].
    fn open_best(max_workgroups: Option<u32>) -> Result<GpuContext> {
        // GL only when Vulkan/Metal/DX12 find nothing: it is slower, and probing EGL is noisy.
        let mut candidates =
            ranked_adapters(&instance(wgpu::Backends::PRIMARY), wgpu::Backends::PRIMARY);
        if candidates.is_empty() {
            candidates = ranked_adapters(&instance(wgpu::Backends::GL), wgpu::Backends::GL);
        }
        if candidates.is_empty() {
            let chosen = match std::env::var("WGPU_BACKEND") {
                Ok(b) => format!(" on WGPU_BACKEND={b}, the APIs it allows"),
                Err(_) => String::new(),
            };
            return Err(Error::Gpu(format!(
                "no GPU adapter found{chosen}; {INSTALL_HINT}"
            )));
        }
        Self::open_first(candidates, max_workgroups)
    }

    /// Opens the best adapter of `backends` only, whatever `WGPU_BACKEND` says (e.g.
    /// `wgpu::Backends::GL`: the WGSL then runs as naga's GLSL, a path of its own through the
    /// shader compilers, which the parity tests hold to the reference too).
    pub fn with_backends(backends: wgpu::Backends) -> Result<GpuContext> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = backends;
        let candidates = ranked_adapters(&wgpu::Instance::new(desc), backends);
        if candidates.is_empty() {
            return Err(Error::Gpu(format!(
                "no GPU adapter found on {backends:?}; {INSTALL_HINT}"
            )));
        }
        Self::open_first(candidates, None)
    }

    /// Opens a device on the first of `candidates` that gives one, with every limit the adapter
    /// offers (at most `max_workgroups` workgroups per dispatch dimension where given).
    fn open_first(
        candidates: Vec<wgpu::Adapter>,
        max_workgroups: Option<u32>,
    ) -> Result<GpuContext> {
        let mut failures = vec![];
        for adapter in candidates {
            let info = adapter.get_info();
            let mut limits = adapter.limits();
            if let Some(max) = max_workgroups {
                limits.max_compute_workgroups_per_dimension =
                    max.clamp(1, limits.max_compute_workgroups_per_dimension);
            }
            // Timestamp queries, when offered, for `bench`'s per-stage times; nothing else uses
            // them and requesting them costs nothing.
            let features = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
            let request = adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("taylormap"),
                required_features: features,
                required_limits: limits.clone(),
                ..Default::default()
            });
            match pollster::block_on(request) {
                Ok((device, queue)) => {
                    let limits = device.limits();
                    let pipelines = PipelineCache::new(&device);
                    return Ok(GpuContext {
                        inner: Arc::new(Inner {
                            device,
                            queue,
                            info,
                            limits,
                            pipelines,
                            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
                        }),
                    });
                }
                Err(e) => failures.push(format!("{}: {e}", summarize(&info))),
            }
        }
        Err(Error::Gpu(format!(
            "no GPU adapter could open a device ({}); {INSTALL_HINT}",
            failures.join("; ")
        )))
    }

    /// The adapter in use.
    pub fn summary(&self) -> AdapterSummary {
        summarize(&self.inner.info)
    }

    /// The device.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// The device's limits (everything the adapter offers).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// Whether the device has timestamp queries (per-stage times in `bench`).
    pub fn timestamps(&self) -> bool {
        self.inner.timestamps
    }

    /// The shared pipeline cache.
    pub(crate) fn pipelines(&self) -> &PipelineCache {
        &self.inner.pipelines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wgpu::{Backend as B, DeviceType as T};

    #[test]
    fn hardware_before_software_and_vulkan_before_gl() {
        let mut adapters = [
            ("llvmpipe (LLVM 15.0.6, 256 bits)", T::Cpu, B::Gl),
            ("llvmpipe (LLVM 15.0.6, 256 bits)", T::Cpu, B::Vulkan),
            ("Intel(R) UHD Graphics", T::IntegratedGpu, B::Vulkan),
            ("NVIDIA H100", T::DiscreteGpu, B::Gl),
            ("NVIDIA H100", T::DiscreteGpu, B::Vulkan),
            ("virtio-gpu", T::VirtualGpu, B::Vulkan),
            ("SwiftShader Device", T::Other, B::Vulkan),
        ];
        adapters.sort_by_key(|(name, ty, api)| rank_of(software(name, *ty), *ty, *api));
        let order: Vec<(&str, B)> = adapters.iter().map(|(n, _, b)| (*n, *b)).collect();
        assert_eq!(
            order,
            [
                ("NVIDIA H100", B::Vulkan),
                ("NVIDIA H100", B::Gl),
                ("Intel(R) UHD Graphics", B::Vulkan),
                ("virtio-gpu", B::Vulkan),
                ("llvmpipe (LLVM 15.0.6, 256 bits)", B::Vulkan),
                ("SwiftShader Device", B::Vulkan),
                ("llvmpipe (LLVM 15.0.6, 256 bits)", B::Gl),
            ]
        );
        assert!(software("SwiftShader Device", T::Other));
        assert!(!software("NVIDIA H100", T::DiscreteGpu));
    }

    #[test]
    fn contexts_and_backends_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<GpuContext>();
        send::<super::super::GpuBackend>();
    }
}
