//! `taylormap bench`: relevance throughput per backend and batch size (SPEC section 6).
//!
//! For each backend and batch size: build the plan once, warm up with one batch, then stream
//! batches (inputs cycled from the dataset) through the backend as `explain` does, until at
//! least `min_seconds` have passed. The time covers upload, forward, relevance and reading
//! relevance and scores back to the host; PNG encoding is excluded. On the GPU, where the
//! adapter has timestamp queries, a shorter timed phase follows (a quarter of `min_seconds`)
//! and gives the GPU time per stage (upload, forward, relevance, read-back copy), or with
//! `--kernel-times` per dispatch, per batch: timing costs some throughput, so the throughput
//! figure comes from the untimed phase.

use std::path::PathBuf;
use std::time::Instant;

use ndarray::{ArrayD, Axis, IxDyn};
use serde::Serialize;

use crate::data;
use crate::explain::{select_backend, BackendChoice};
use crate::gpu::{GpuBackend, GpuContext, HostTimes, KernelTimes, StageTimes};
use crate::lrp::{Composite, Method};
use crate::{Backend, Error, Network, Result, Samples, StreamBatch};

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
    /// Upload f32 values even where the input is 8-bit and the backend prefers bytes (to measure
    /// what the byte upload gains).
    pub f32_upload: bool,
    /// Threads of the CPU engine (`None`: one per core).
    pub threads: Option<usize>,
    /// Submissions a GPU batch is split into (`None`: the backend's default).
    pub submissions: Option<usize>,
    /// Time every GPU dispatch (each in its own compute pass), not only the stages.
    pub kernel_times: bool,
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
    /// Relevance-pass floating-point operations per sample, as the engines run the composite
    /// (2 x `Method::relevance_macs`): with the forward ones, the work behind one heatmap.
    pub relevance_flops_per_sample: usize,
    /// Bytes moved between host and device per sample: the input up (one byte per value for
    /// 8-bit inputs given to a backend that uploads bytes, else four), f32 relevance and logits
    /// down.
    pub transfer_bytes_per_sample: usize,
    /// Device-memory bytes per sample that any engine must move, weights aside
    /// (`Network::compulsory_traffic`): with the FLOPs, the roofline of the work.
    pub memory_bytes_per_sample: usize,
    /// How the inputs went to the backend: "u8" (bytes, expanded by the backend) or "f32".
    pub input: &'static str,
    /// GPU time per stage per batch, from timestamp queries (GPU backend only, where the adapter
    /// has them; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage_seconds: Option<StageSeconds>,
    /// Host time per batch in each step of the GPU backend's run (GPU backend only): with the
    /// stage times it shows where the wall time of a batch goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_seconds: Option<HostSeconds>,
    /// GPU time per batch of each dispatch, in plan order (GPU backend with `--kernel-times`,
    /// where the adapter has timestamp queries; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_seconds: Option<Vec<KernelSeconds>>,
}

/// One dispatch's GPU seconds per batch (an element of `kernel_seconds`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelSeconds {
    /// The layer's label and the kernel's entry point, e.g. "layer.0.conv1 c_partial".
    pub kernel: String,
    pub seconds: f64,
}

impl KernelSeconds {
    /// The per-batch averages between `before` and `after` (`before` None: since the start)
    /// over `batches` batches, without the byte unpack when the inputs were f32.
    fn between(
        before: Option<&KernelTimes>,
        after: &KernelTimes,
        batches: usize,
        bytes: bool,
    ) -> Vec<Self> {
        after
            .kernels
            .iter()
            .enumerate()
            .skip(usize::from(!bytes))
            .map(|(i, (kernel, s))| KernelSeconds {
                kernel: kernel.clone(),
                seconds: (s - before.map_or(0.0, |b| b.kernels[i].1)) / batches.max(1) as f64,
            })
            .collect()
    }
}

/// Host seconds per batch in each step of the GPU backend (the `host_seconds` of a JSON line).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct HostSeconds {
    /// Checking the input and the targets.
    pub check: f64,
    /// Queue writes, encoding and submitting.
    pub submit: f64,
    /// Waiting for the GPU (the host idles).
    pub wait: f64,
    /// Copying the results out of the mapped staging buffer.
    pub copy: f64,
}

impl HostSeconds {
    /// The per-batch average between `before` and `after`.
    fn between(before: &HostTimes, after: &HostTimes) -> HostSeconds {
        let runs = after.runs.saturating_sub(before.runs).max(1) as f64;
        HostSeconds {
            check: (after.check_s - before.check_s) / runs,
            submit: (after.submit_s - before.submit_s) / runs,
            wait: (after.wait_s - before.wait_s) / runs,
            copy: (after.copy_s - before.copy_s) / runs,
        }
    }
}

/// GPU seconds per batch of `batch_size` in each stage (the `stage_seconds` of a JSON line).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct StageSeconds {
    /// Copying the inputs to the device.
    pub upload: f64,
    /// Forward pass, with the choice of target and the seed.
    pub forward: f64,
    /// Relevance (backward) pass.
    pub relevance: f64,
    /// Copying relevance, logits and targets back to host-visible memory.
    pub readback: f64,
}

impl StageSeconds {
    /// The per-batch average of the stage times between `before` and `after`, over `batches`
    /// batches.
    fn between(before: &StageTimes, after: &StageTimes, batches: usize) -> StageSeconds {
        let per = |a: f64, b: f64| (b - a) / batches.max(1) as f64;
        StageSeconds {
            upload: per(before.upload_s, after.upload_s),
            forward: per(before.forward_s, after.forward_s),
            relevance: per(before.relevance_s, after.relevance_s),
            readback: per(before.readback_s, after.readback_s),
        }
    }
}

/// The backend being measured: the GPU one is kept by type for its stage times.
enum Measured {
    Gpu(Box<GpuBackend>),
    Other(Box<dyn Backend>),
}

impl Measured {
    fn backend(&mut self) -> &mut dyn Backend {
        match self {
            Measured::Gpu(b) => b.as_mut(),
            Measured::Other(b) => b.as_mut(),
        }
    }

    fn host_times(&self) -> Option<HostTimes> {
        match self {
            Measured::Gpu(b) => Some(b.host_times()),
            Measured::Other(_) => None,
        }
    }
}

/// A batch of `batch` samples cycled from `x` (so any batch size can be measured).
fn cycled_batch<T: Copy>(x: &ArrayD<T>, batch: usize) -> ArrayD<T> {
    let n = x.len_of(Axis(0));
    let mut shape = x.shape().to_vec();
    shape[0] = batch;
    let per = x.len() / n;
    let flat = x.as_slice().expect("datasets are contiguous");
    let data: Vec<T> = (0..batch)
        .flat_map(|i| flat[(i % n) * per..(i % n + 1) * per].iter().copied())
        .collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape matches")
}

/// The timed phase's length, as a share of `--min-seconds` (at least one batch).
const TIMED_SHARE: f64 = 0.25;

/// Streams copies of one batch through `backend`, as `explain` streams its batches (on the GPU
/// the next one is in flight while one is read back), until at least `min_seconds` have passed
/// and at least one batch is done. Returns the batches done and the seconds they took.
fn stream_for<'a>(
    backend: &mut dyn Backend,
    one: &dyn Fn() -> StreamBatch<'a>,
    min_seconds: f64,
) -> Result<(usize, f64)> {
    let (mut pulled, start) = (0, Instant::now());
    let mut stream = std::iter::from_fn(|| {
        let more = pulled == 0 || start.elapsed().as_secs_f64() < min_seconds;
        pulled += usize::from(more);
        more.then(one)
    });
    let mut batches = 0;
    backend.run_stream(&mut stream, &mut |out| {
        std::hint::black_box(&out);
        batches += 1;
        Ok(true)
    })?;
    Ok((batches, start.elapsed().as_secs_f64()))
}

/// Host bytes a batch of `batch` samples takes in `bench`: its inputs as f32 and as bytes, and the
/// f32 relevance and f64 logits the backend returns.
fn batch_memory(net: &Network, batch: usize) -> u64 {
    let per_sample = 9 * net.input_len() + 8 * net.num_outputs();
    (batch as u64).saturating_mul(per_sample as u64)
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
    if let Some(available) = crate::available_memory() {
        let largest = cfg.batch_sizes.iter().copied().max().unwrap_or(1);
        let need = batch_memory(&net, largest);
        if need > available {
            return Err(Error::usage(
                "--batch-sizes",
                format!(
                    "a batch of {largest} needs about {:.1} GB of memory on the host (its inputs \
                     and their relevance, {} bytes a sample), more than the {:.1} GB available",
                    need as f64 * 1e-9,
                    batch_memory(&net, 1),
                    available as f64 * 1e-9
                ),
            ));
        }
    }
    let mut results = vec![];
    let mut said_untimed = false;
    for &choice in &cfg.backends {
        // The GPU backend (as `select_backend` would choose it), on one context for all batch
        // sizes; None: the CPU backend.
        let ctx = match choice {
            BackendChoice::Gpu => Some(GpuContext::new()?),
            BackendChoice::Auto => GpuContext::new().ok().filter(|c| !c.summary().software),
            BackendChoice::Cpu | BackendChoice::Reference => None,
        };
        for &batch in &cfg.batch_sizes {
            let mut measured = match &ctx {
                Some(ctx) => {
                    let mut b = GpuBackend::new(ctx, &net, &method, batch)?;
                    if let Some(k) = cfg.submissions {
                        b.set_submissions(k);
                    }
                    for note in b.notes() {
                        eprintln!("{note}");
                    }
                    Measured::Gpu(Box::new(b))
                }
                None => {
                    let cpu = match choice {
                        BackendChoice::Reference => BackendChoice::Reference,
                        _ => BackendChoice::Cpu,
                    };
                    let (b, notes) = select_backend(cpu, &net, &method, batch, cfg.threads)?;
                    for note in notes.iter().skip(1) {
                        eprintln!("{note}");
                    }
                    Measured::Other(b)
                }
            };
            let x = cycled_batch(&dataset.x, batch);
            let bytes = match &dataset.pixels {
                Some(p) if !cfg.f32_upload && measured.backend().prefers_bytes() => {
                    Some((cycled_batch(&p.bytes, batch), p.lut))
                }
                _ => None,
            };
            let one = || StreamBatch {
                samples: match &bytes {
                    Some((b, lut)) => Samples::U8(b.view(), lut),
                    None => Samples::F32(x.view()),
                },
                targets: None,
            };
            // warm-up: pipelines compiled, buffers touched
            measured.backend().run_samples(one().samples, None)?;
            // Throughput, untimed: timestamps and the mapped upload they need cost some.
            let host_before = measured.host_times();
            let (batches, seconds) = stream_for(measured.backend(), &one, cfg.min_seconds)?;
            let samples = batches * batch;
            let host_seconds = host_before
                .zip(measured.host_times())
                .map(|(b, a)| HostSeconds::between(&b, &a));
            // Then, on the GPU, a shorter timed phase for the stage (or kernel) times.
            let (mut stage_seconds, mut kernel_seconds) = (None, None);
            if let Measured::Gpu(gpu) = &mut measured {
                let timed = if cfg.kernel_times {
                    gpu.enable_kernel_timing()?
                } else {
                    gpu.enable_stage_timing()?
                };
                if timed {
                    gpu.run_samples(one().samples, None)?; // timing buffers touched
                    let (before, kernels_before) = (gpu.stage_times(), gpu.kernel_times());
                    let (timed_batches, _) =
                        stream_for(gpu.as_mut(), &one, cfg.min_seconds * TIMED_SHARE)?;
                    stage_seconds = before
                        .zip(gpu.stage_times())
                        .map(|(b, a)| StageSeconds::between(&b, &a, timed_batches));
                    kernel_seconds = gpu.kernel_times().map(|a| {
                        KernelSeconds::between(
                            kernels_before.as_ref(),
                            &a,
                            timed_batches,
                            bytes.is_some(),
                        )
                    });
                } else if !said_untimed {
                    eprintln!(
                        "note: the adapter '{}' has no timestamp queries; no per-stage times",
                        gpu.context().summary().name
                    );
                    said_untimed = true;
                }
            }
            let backend = measured.backend();
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
                relevance_flops_per_sample: 2 * method.relevance_macs(&net),
                transfer_bytes_per_sample: if bytes.is_some() { 1 } else { 4 } * net.input_len()
                    + 4 * (net.input_len() + net.num_outputs()),
                memory_bytes_per_sample: net.compulsory_traffic(if bytes.is_some() {
                    1
                } else {
                    4
                }),
                input: if bytes.is_some() { "u8" } else { "f32" },
                stage_seconds,
                host_seconds,
                kernel_seconds,
            };
            report(&r);
            results.push(r);
        }
    }
    Ok(results)
}
