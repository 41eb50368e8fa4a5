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
//! over two passes and passed in uniforms; no shader text is generated.

pub mod backend;
pub mod context;
mod pipeline;
mod plan;
pub mod shader;

pub use backend::GpuBackend;
pub use context::{adapters, AdapterSummary, GpuContext};
