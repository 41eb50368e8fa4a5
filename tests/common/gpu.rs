//! GPU test helpers: one shared context per test binary (pipelines compile once), absent with a
//! message when no adapter exists, and a hard failure then when `TAYLORMAP_REQUIRE_GPU=1`.

use std::sync::OnceLock;

use taylormap::gpu::GpuContext;

/// The shared GPU context, or `None` (with a message) when this machine has no adapter.
///
/// Panics instead when the environment sets `TAYLORMAP_REQUIRE_GPU=1` (CI with Mesa's software
/// Vulkan driver), so that GPU tests fail rather than skip there.
pub fn context() -> Option<GpuContext> {
    static CONTEXT: OnceLock<Result<GpuContext, String>> = OnceLock::new();
    shared(&CONTEXT, "GPU", GpuContext::new)
}

/// A shared context on a GL adapter (the GL backend: naga's GLSL run by the GL driver), or
/// `None` (with a message) when this machine has none; like [`context`], a hard failure then
/// under `TAYLORMAP_REQUIRE_GPU=1` (CI installs Mesa's GL driver beside its Vulkan driver).
pub fn gl_context() -> Option<GpuContext> {
    static CONTEXT: OnceLock<Result<GpuContext, String>> = OnceLock::new();
    shared(&CONTEXT, "GL", || {
        GpuContext::with_backends(taylormap::gpu::wgpu::Backends::GL)
    })
}

fn shared(
    cell: &OnceLock<Result<GpuContext, String>>,
    what: &str,
    open: impl FnOnce() -> taylormap::Result<GpuContext>,
) -> Option<GpuContext> {
    let required = std::env::var("TAYLORMAP_REQUIRE_GPU").is_ok_and(|v| v.trim() == "1");
    let ctx = cell.get_or_init(|| {
        let ctx = open().map_err(|e| e.to_string());
        if let Ok(ctx) = &ctx {
            eprintln!("{what} tests run on {}", ctx.summary());
        }
        ctx
    });
    match ctx {
        Ok(ctx) => Some(ctx.clone()),
        Err(e) if required => panic!("TAYLORMAP_REQUIRE_GPU=1 but there is no {what} adapter: {e}"),
        Err(e) => {
            eprintln!("skipping {what} test: {e}");
            None
        }
    }
}
