//! `taylormap bench`: relevance throughput per backend and batch size (SPEC section 6).
//!
//! For each backend and batch size: build the plan once, warm up with one batch, then explain
//! batches (inputs cycled from the dataset) until at least `min_seconds` have passed. The time
//! covers upload, forward, relevance and reading relevance and scores back to the host; PNG
//! encoding is excluded.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{ArrayD, Axis, IxDyn};
use serde::Serialize;

use crate::data;
use crate::explain::{select_backend, BackendChoice};
use crate::lrp::{Composite, Method};
use crate::{Error, Network, Result};

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub model: PathBuf,
    pub input: PathBuf,
    pub composite: Composite,
    /// Backends to measure, in order.
    pub backends: Vec<BackendChoice>,
    pub batch_sizes: Vec<usize>,
    /// Keep explaining batches for at least this long per measurement.
    pub min_seconds: f64,
}

/// One measurement: one line of `bench --json`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub backend: String,
    pub adapter: String,
    pub model: String,
    pub composite: String,
    pub batch_size: usize,
    pub samples: usize,
    pub seconds: f64,
    pub heatmaps_per_second: f64,
    /// Forward-pass floating-point operations per sample (2 x multiply-accumulates).
    pub forward_flops_per_sample: usize,
    /// Bytes moved between host and device per sample: f32 input up, relevance and logits down.
    pub transfer_bytes_per_sample: usize,
}

/// A batch of `batch` samples cycled from `x` (so any batch size can be measured).
fn cycled_batch(x: &ArrayD<f32>, batch: usize) -> ArrayD<f32> {
    let n = x.len_of(Axis(0));
    let mut shape = x.shape().to_vec();
    shape[0] = batch;
    let per = x.len() / n;
    let flat = x.as_slice().expect("datasets are contiguous");
    let data: Vec<f32> = (0..batch)
        .flat_map(|i| flat[(i % n) * per..(i % n + 1) * per].iter().copied())
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape matches")
}

/// Runs the measurements, calling `report` after each one.
pub fn run(cfg: &BenchConfig, report: &mut dyn FnMut(&BenchResult)) -> Result<Vec<BenchResult>> {
    if cfg.batch_sizes.is_empty() || cfg.batch_sizes.contains(&0) {
        return Err(Error::usage(
            "--batch-sizes",
            "expected positive batch sizes, e.g. 1,64,1024",
        ));
    }
    let net: Network = crate::model::onnx::load(&cfg.model)?;
    let mut dataset = data::load_for_model(&cfg.input, &cfg.model, None, None)?;
    dataset.check_against(&net.input_shape)?;
    if dataset.is_empty() {
        return Err(Error::input(&cfg.input, "holds no samples"));
    }
    let method: Method = cfg.composite.resolve(&net, dataset.bounds, &[])?;
    let mut results = vec![];
    for &choice in &cfg.backends {
        for &batch in &cfg.batch_sizes {
            let (mut backend, notes) = select_backend(choice, &net, &method, batch)?;
            for note in notes.iter().skip(1) {
                eprintln!("{note}");
            }
            let x = cycled_batch(&dataset.x, batch);
            backend.run(x.view(), None)?; // warm-up: pipelines compiled, buffers touched
            let (mut samples, start) = (0, Instant::now());
            while samples == 0 || start.elapsed().as_secs_f64() < cfg.min_seconds {
                let out = backend.run(x.view(), None)?;
                std::hint::black_box(&out);
                samples += batch;
            }
            let seconds = start.elapsed().as_secs_f64();
            let r = BenchResult {
                backend: backend.kind().into(),
                adapter: backend.adapter(),
                model: cfg.model.display().to_string(),
                composite: cfg.composite.name().into(),
                batch_size: batch,
                samples,
                seconds,
                heatmaps_per_second: samples as f64 / seconds,
                forward_flops_per_sample: 2 * net.forward_macs(),
                transfer_bytes_per_sample: 4 * (2 * net.input_len() + net.num_outputs()),
            };
            report(&r);
            results.push(r);
        }
    }
    Ok(results)
}
