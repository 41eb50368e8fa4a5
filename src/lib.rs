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
