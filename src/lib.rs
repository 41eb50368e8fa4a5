//! taylormap: Deep Taylor Decomposition and LRP heatmaps for feed-forward networks.
//!
//! The vocabulary follows Zennit: a [`Network`] is a closed list of [`Layer`]s, a [`Rule`] is the
//! per-layer relevance math, a [`Composite`] says which rule each Dense/Conv2d layer gets, and an
//! explainer (a [`Backend`]) runs forward, seeds the target and propagates relevance backward.
//! The CPU backend ([`cpu`]) is the paper-literal f64 reference; the GPU backend ([`gpu`]) runs
//! the same math as WGSL compute shaders through wgpu.

pub mod bench;
pub mod cpu;
pub mod data;
pub mod error;
pub mod eval;
pub mod explain;
pub mod gpu;
pub mod lrp;
pub mod model;
pub mod render;
pub mod train;

pub use error::{Error, Result};
pub use lrp::{
    Backend, BatchOutput, Bounds, Composite, LayerSelector, Method, Rule, SampleStats, Samples,
    StreamBatch, TargetChoice,
};
pub use model::{Layer, Network};

/// The memory available for new allocations (Linux's `MemAvailable`), where the system says.
pub(crate) fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// An error for a model whose working memory per sample, `need` bytes of `what`, exceeds the
/// `available` memory; it names the (first) layer with the largest output.
pub(crate) fn too_large_for_memory(net: &Network, what: &str, need: u64, available: u64) -> Error {
    let shapes = net.shapes().unwrap_or_default();
    let mut largest = (0, 0);
    for (k, s) in shapes.iter().skip(1).enumerate() {
        let values = s.iter().product::<usize>();
        if values > largest.1 {
            largest = (k, values);
        }
    }
    let (k, values) = largest;
    Error::Shape {
        layer: format!("{k} ('{}')", net.names.get(k).map_or("?", |n| n.as_str())),
        expected: format!(
            "a network whose {what} fits in the {:.1} GB of memory available; it needs {:.1} GB \
             a sample",
            available as f64 * 1e-9,
            need as f64 * 1e-9
        ),
        got: format!("an output of {values} values a sample, the network's largest"),
    }
}
