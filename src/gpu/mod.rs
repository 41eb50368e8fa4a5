//! The GPU backend: the same LRP/DTD math as the CPU reference, as WGSL compute shaders run
//! through wgpu.
//!
//! - [`context`]: adapters, the best-adapter choice, device and queue ([`GpuContext`]).
//! - [`shader`]: the WGSL files in `shaders/` (one per layer family), their typed entry points
//!   and the `#[repr(C)]` twins of their uniform structs.
//! - `pipeline`: the typed pipeline cache and the bind-group layouts, built once per device.
//! - `plan`: the batch plan for one (network, method, batch size): buffers, bind groups and the
//!   dispatch list; one submission and one read-back per batch.
//! - [`backend`]: [`GpuBackend`], the streaming orchestrator implementing [`crate::Backend`].
//!
//! Rules are the modifier passes of [`crate::Rule::passes`], flattened into at most four terms
//! over two passes and passed in uniforms as branch-free modifier coefficients; no shader text
//! is generated. The weight modifiers are precomputed once per plan (weights are constant) and
//! the kernels loop over the terms a rule uses only.
//!
//! Behaviour worth knowing:
//! - Everything runs in f32; results are converted to f64. Against the f64 reference the
//!   relevance agrees to about 1e-6 relative, except where f32 rounding is amplified by the
//!   map itself (a target score near 0, or a denominator z' near 0 that makes relevance cancel
//!   itself); the parity tests document this.
//! - Shader modules keep wgpu's bounds checks on buffer accesses but not its loop counters and
//!   integer-division guards, which the kernels do not need (every loop ends, no divisor is 0;
//!   see `pipeline::RUNTIME_CHECKS`). The parity suite runs them on Vulkan and on GL.
//! - No invocation loops more than a few thousand times (llvmpipe silently stops an invocation
//!   after 65,535 loop iterations): long reductions are split into chunks (split-K) and summed by
//!   a reduce kernel. The GPU backend refuses, with an error naming the layer, pooling windows
//!   of more than 16,384 positions, convolution kernels of more than 16,384 positions over the
//!   terms of their rule (e.g. 8,192 for the two-term z+), more than 16,384 logits, and
//!   reductions longer than 16,384 chunks; the CPU backend takes those.
//! - The batch size is clamped so that every per-batch buffer fits the adapter's storage
//!   binding and buffer limits; [`GpuBackend::notes`] says so.
//! - Device memory is allocated once per backend; streaming any number of samples reuses it.
//! - Host and GPU work overlap: results are read back from one of two staging buffers while the
//!   GPU runs the next submission, and a single batch of at least 512 samples is run as two
//!   halves for that purpose.
//! - `bench` turns on per-stage timing ([`GpuBackend::enable_stage_timing`]) where the device
//!   has timestamp queries: timestamps after the input upload, forward, relevance and read-back
//!   copies of each submission are resolved into its staging buffer and read back with it (no
//!   extra submission); the input then goes up through a mapped buffer per staging slot. Other
//!   commands never enable it. `bench --kernel-times` ([`GpuBackend::enable_kernel_timing`])
//!   also times every dispatch, each in its own compute pass, named by layer and entry point.

pub mod backend;
pub mod context;
mod pipeline;
mod plan;
pub mod shader;

pub use backend::{GpuBackend, HostTimes, KernelTimes, StageTimes};
pub use context::{adapters, AdapterSummary, GpuContext};
/// The wgpu this crate is built on, whose types [`GpuContext`] hands out (its device and queue)
/// and takes ([`GpuContext::with_backends`]).
pub use wgpu;
