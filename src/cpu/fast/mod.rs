//! The fast CPU engine: f32, every core, planned once per (network, method).
//!
//! It computes what the reference backend computes (SPEC sections 2 to 4), with the kernels a
//! production engine uses instead of the paper-literal form: batches stored channel-major,
//! (c, m, h, w), so that a convolution over m samples is one im2col and one matrix product
//! (matrixmultiply's SIMD kernels through ndarray), rule modifiers applied to the weights once at
//! planning time, and the batch split over threads in chunks that stay in cache. The f64
//! reference stays the oracle: the parity suite holds this engine to it at the GPU's tolerance.

mod linear;
mod window;

use ndarray::ArrayViewD;

use crate::lrp::{self, argmax, Backend, BatchOutput, Method};
use crate::model::{Layer, Network};
use crate::{Error, Result};
use linear::{Forward, Linear};
use window::Geom;

/// Most samples per chunk: enough for efficient matrix products.
const CHUNK: usize = 16;

/// Bytes of the largest im2col matrix of a chunk (the operand every convolution streams through
/// its matrix product, and copies once more into the product's packed panels): fewer samples per
/// chunk where [`CHUNK`] would take it past this, so that it stays in a core's L2 cache (1 MiB
/// and up on current x86 server cores; 2 MiB on some). On the bundled model (57.6 kB a sample) a
/// chunk is 9 samples instead of 16: 1.1x to 1.3x the heatmaps/s on this project's 2-core
/// machine, where chunks of 4 to 12 ran alike and 16 fell off (BENCHMARKS.md, tenth run).
const CACHE_BUDGET: usize = 512 << 10;

/// Scratch memory one worker may use for a chunk, in f32 values (64 MiB): a network with large
/// activations or im2col matrices gets smaller chunks (down to one sample).
const SCRATCH_BUDGET: usize = 16 << 20;

/// Buffers a worker reuses from chunk to chunk, so that the steady state allocates nothing.
#[derive(Default)]
struct Scratch {
    /// Each at the largest length it had: handing out a shorter part of it and then a longer
    /// one again writes nothing (a `Vec` truncated and grown again would be zero-filled anew).
    free: Vec<Vec<f32>>,
    /// The arg-max indices of each max-pooling step (empty for other steps).
    argmax: Vec<Vec<u32>>,
}

/// A scratch buffer: the first `len` values of a buffer of the worker's [`Scratch`].
struct Buf {
    v: Vec<f32>,
    len: usize,
}

impl std::ops::Deref for Buf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.v[..self.len]
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.v[..self.len]
    }
}

impl<'a> IntoIterator for &'a Buf {
    type Item = &'a f32;
    type IntoIter = std::slice::Iter<'a, f32>;
    fn into_iter(self) -> Self::IntoIter {
        self[..].iter()
    }
}

impl Scratch {
    /// A buffer of `len` values whose contents are left over from an earlier use: for outputs
    /// that are written in full.
    fn take(&mut self, len: usize) -> Buf {
        // the smallest free buffer that is long enough, else the longest one (it grows)
        let fits = (0..self.free.len())
            .filter(|&i| self.free[i].len() >= len)
            .min_by_key(|&i| self.free[i].len());
        let longest = (0..self.free.len()).max_by_key(|&i| self.free[i].len());
        let mut v = fits
            .or(longest)
            .map(|i| self.free.swap_remove(i))
            .unwrap_or_default();
        if v.len() < len {
            v.resize(len, 0.0);
        }
        Buf { v, len }
    }

    /// A buffer of `len` zeros.
    fn zeroed(&mut self, len: usize) -> Buf {
        let mut v = self.take(len);
        v.fill(0.0);
        v
    }

    /// Returns a buffer for reuse.
    fn give(&mut self, b: Buf) {
        self.free.push(b.v);
    }
}

/// One layer prepared for the engine.
enum Step {
    Linear(Box<Linear>),
    Relu,
    MaxPool(Geom),
    AvgPool {
        geom: Geom,
        /// Per output position.
        divisor: Vec<f32>,
    },
    Flatten,
}

/// What a method asks of the backward pass.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backward {
    Lrp,
    Sensitivity,
    GradientXInput,
}

/// The channel-major shape (c, h, w) of a per-sample shape; a vector of d values is (d, 1, 1).
fn chw(shape: &[usize]) -> (usize, usize, usize) {
    match shape {
        [c, h, w] => (*c, *h, *w),
        [d] => (*d, 1, 1),
        _ => (shape.iter().product(), 1, 1),
    }
}

/// The fast CPU backend behind the [`Backend`] interface.
pub struct FastBackend {
    steps: Vec<Step>,
    /// Per-sample (c, h, w) of every activation, `shapes[0]` the input.
    shapes: Vec<(usize, usize, usize)>,
    input_shape: Vec<usize>,
    outputs: usize,
    backward: Backward,
    threads: usize,
    /// Most samples per chunk: [`CHUNK`], or fewer when a chunk would need more than
    /// [`SCRATCH_BUDGET`] of scratch.
    max_chunk: usize,
    /// Most workers whose scratch of one sample each fits in the memory available.
    max_workers: usize,
    /// One per worker thread, kept between batches.
    scratch: Vec<Scratch>,
}

impl FastBackend {
    /// Plans `net` for `method` on every core.
    pub fn new(net: &Network, method: &Method) -> Result<Self> {
        net.validate()?;
        let shapes = net.shapes()?;
        let linear = net.linear_layers().len();
        if let Method::Lrp { rules } = method {
            if rules.len() != linear {
                return Err(Error::usage(
                    "--rule",
                    format!(
                        "the method has {} rule(s) but the network has {linear} Dense/Conv2d \
                         layer(s); give one rule per Dense/Conv2d layer",
                        rules.len()
                    ),
                ));
            }
        }
        let backward = match method {
            Method::Lrp { .. } => Backward::Lrp,
            Method::Sensitivity => Backward::Sensitivity,
            Method::GradientXInput => Backward::GradientXInput,
        };
        let bad = |k: usize| Error::Shape {
            layer: net
                .names
                .get(k)
                .cloned()
                .unwrap_or_else(|| format!("layer {k}")),
            expected: "a layer that fits its input".into(),
            got: format!("input {:?}", shapes[k]),
        };
        let mut rule = 0;
        let mut prepare = |mut op: Linear, nonnegative: bool| {
            if let Method::Lrp { rules } = method {
                op.set_rule(&rules[rule], nonnegative);
            }
            rule += 1;
            Step::Linear(Box::new(op))
        };
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        // Scratch per sample, in values: every activation, the relevance above and below a
        // layer and a modified input, plus the largest layer's im2col matrix and z'.
        let activations: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
        let largest = shapes.iter().map(|s| s.iter().product::<usize>()).max();
        let cols = net.largest_im2col()?;
        // (with a forward pass that also keeps x g(w): its stacked products, up to three, kept)
        let per_sample = activations + 7 * largest.unwrap_or(0) + cols;
        let cols_bytes = 4 * cols;
        // Each worker needs the scratch of one sample at the least: refused, before any plan is
        // made, where even one worker's would not fit in memory (it used to abort the process),
        // and fewer workers where all of them would not.
        let sample_bytes = 4 * per_sample as u64;
        let max_workers = match crate::available_memory() {
            Some(available) if sample_bytes > available => {
                return Err(crate::too_large_for_memory(
                    net,
                    "CPU engine scratch (activations, relevance and im2col, f32)",
                    sample_bytes,
                    available,
                ))
            }
            Some(available) => (available / sample_bytes.max(1)).max(1) as usize,
            None => usize::MAX,
        };
        let max_chunk = (SCRATCH_BUDGET / per_sample.max(1))
            .min(CACHE_BUDGET / cols_bytes.max(1))
            .clamp(1, CHUNK);
        let mut steps = Vec::with_capacity(net.layers.len());
        // Layers whose input is a ReLU output (possibly pooled or flattened).
        let nonnegative = net.nonnegative_inputs();
        for (k, layer) in net.layers.iter().enumerate() {
            let (c, h, w) = chw(&shapes[k]);
            let geom = |window| Geom::new(window, c, h, w).ok_or_else(|| bad(k));
            let step = match layer {
                Layer::Dense { weight, bias } => {
                    prepare(Linear::dense(weight, bias), nonnegative[k])
                }
                Layer::Conv2d {
                    weight,
                    bias,
                    window,
                } => {
                    let op = Linear::conv(weight, bias, window, (c, h, w)).ok_or_else(|| bad(k))?;
                    prepare(op, nonnegative[k])
                }
                Layer::Relu => Step::Relu,
                Layer::MaxPool2d { window } => Step::MaxPool(geom(window)?),
                Layer::AvgPool2d {
                    window,
                    count_include_pad,
                    sum,
                } => {
                    let geom = geom(window)?;
                    Step::AvgPool {
                        divisor: geom.divisor(*count_include_pad, *sum),
                        geom,
                    }
                }
                Layer::Flatten => Step::Flatten,
            };
            steps.push(step);
        }
        Ok(FastBackend {
            steps,
            shapes: shapes.iter().map(|s| chw(s)).collect(),
            input_shape: net.input_shape.clone(),
            outputs: net.num_outputs(),
            backward,
            threads,
            max_workers,
            max_chunk,
            scratch: Vec::new(),
        })
    }

    /// Uses `threads` threads (at least 1) instead of one per core.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Threads a large batch is split over.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Backend for FastBackend {
    fn kind(&self) -> &'static str {
        "cpu"
    }

    fn adapter(&self) -> String {
        match self.threads {
            1 => "CPU engine (f32, 1 thread)".into(),
            t => format!("CPU engine (f32, {t} threads)"),
        }
    }

    fn run(
        &mut self,
        x: ArrayViewD<'_, f32>,
        targets: Option<&[usize]>,
    ) -> Result<BatchOutput<f32>> {
        self.run_batch(x, targets, true)
    }

    fn logits(&mut self, x: ArrayViewD<'_, f32>) -> Result<ndarray::Array2<f64>> {
        Ok(self.run_batch(x, None, false)?.logits)
    }
}

impl FastBackend {
    /// [`Backend::run`]; with `with_relevance` false only the forward pass runs (the relevance
    /// returned is then all zeros).
    fn run_batch(
        &mut self,
        x: ArrayViewD<'_, f32>,
        targets: Option<&[usize]>,
        with_relevance: bool,
    ) -> Result<BatchOutput<f32>> {
        let n = lrp::check_batch(x.shape(), &self.input_shape)?;
        lrp::check_finite(x.view())?;
        if let Some(t) = targets {
            lrp::check_targets(t, n, self.outputs)?;
        }
        let x = x.as_standard_layout();
        let x = x.as_slice().expect("standard layout");
        let (in_len, outputs) = (self.input_shape.iter().product::<usize>(), self.outputs);
        let mut relevance = vec![0f32; n * in_len];
        let mut logits = vec![0f64; n * outputs];
        let mut chosen = vec![0usize; n];
        let workers = self.threads.min(self.max_workers);
        let chunk = chunk_size(n, self.max_chunk, workers);
        let threads = workers.min(n.div_ceil(chunk)).max(1);
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize_with(threads.max(scratch.len()), Scratch::default);
        let this = &*self;
        // Chunks go to whichever thread is free next; each writes only its own output slices.
        let work = std::sync::Mutex::new(
            relevance
                .chunks_mut(chunk * in_len.max(1))
                .zip(logits.chunks_mut(chunk * outputs))
                .zip(chosen.chunks_mut(chunk))
                .enumerate(),
        );
        let worker = |scratch: &mut Scratch| loop {
            let next = work.lock().expect("work queue").next();
            let Some((i, ((relevance, logits), targets_out))) = next else {
                return;
            };
            let (start, m) = (i * chunk, targets_out.len());
            this.run_chunk(
                m,
                &x[start * in_len..(start + m) * in_len],
                targets.map(|t| &t[start..start + m]),
                ChunkOut {
                    relevance,
                    logits,
                    targets: targets_out,
                },
                scratch,
                with_relevance,
            );
        };
        std::thread::scope(|scope| {
            let (first, others) = scratch.split_first_mut().expect("at least one");
            for s in others.iter_mut().take(threads - 1) {
                scope.spawn(|| worker(s));
            }
            worker(first);
        });
        self.scratch = scratch;
        let mut shape = vec![n];
        shape.extend(&self.input_shape);
        Ok(BatchOutput {
            relevance: ndarray::ArrayD::from_shape_vec(shape, relevance)
                .expect("sized from the shape"),
            logits: ndarray::Array2::from_shape_vec((n, outputs), logits)
                .expect("sized from the shape"),
            targets: chosen,
        })
    }
}

/// Samples per chunk for a batch of `n` on `threads` threads: up to `max_chunk`, fewer when that
/// keeps every thread busy, and as even as the count of chunks allows (64 samples by at most 9:
/// 8 chunks of 8, not 7 of 9 and one of 1).
fn chunk_size(n: usize, max_chunk: usize, threads: usize) -> usize {
    let most = max_chunk.min(n.div_ceil(threads.max(1))).max(1);
    n.div_ceil(n.div_ceil(most).max(1)).max(1)
}

/// Where one chunk of samples writes its results.
struct ChunkOut<'a> {
    relevance: &'a mut [f32],
    logits: &'a mut [f64],
    targets: &'a mut [usize],
}

/// (c, m, h, w) -> (c * h * w, m): the row-major flattening of every sample, channel-major.
fn flatten(m: usize, plane: usize, src: &[f32], dst: &mut [f32]) {
    for (p, chunk) in src.chunks_exact(plane).enumerate() {
        let (c, n) = (p / m, p % m);
        for (i, v) in chunk.iter().enumerate() {
            dst[(c * plane + i) * m + n] = *v;
        }
    }
}

/// The inverse of [`flatten`].
fn unflatten(m: usize, plane: usize, src: &[f32], dst: &mut [f32]) {
    for (p, chunk) in dst.chunks_exact_mut(plane).enumerate() {
        let (c, n) = (p / m, p % m);
        for (i, v) in chunk.iter_mut().enumerate() {
            *v = src[(c * plane + i) * m + n];
        }
    }
}

/// (m, c, plane) sample-major <-> (c, m, plane) channel-major, either way round: element
/// (a, b, i) of `src`, shaped (outer, inner, plane), goes to (b, a, i) of `dst`.
fn swap_outer(outer: usize, inner: usize, plane: usize, src: &[f32], dst: &mut [f32]) {
    for a in 0..outer {
        for b in 0..inner {
            dst[(b * outer + a) * plane..][..plane]
                .copy_from_slice(&src[(a * inner + b) * plane..][..plane]);
        }
    }
}

impl FastBackend {
    /// Explains m samples (`x` sample-major, as given) into `out`.
    fn run_chunk(
        &self,
        m: usize,
        x: &[f32],
        targets: Option<&[usize]>,
        out: ChunkOut<'_>,
        scratch: &mut Scratch,
        relevance: bool,
    ) {
        let (c0, h0, w0) = self.shapes[0];
        let mut input = scratch.take(x.len());
        swap_outer(m, c0, h0 * w0, x, &mut input);
        // Forward, keeping every activation (and the arg-max of every max pooling).
        let mut acts = vec![input];
        // What each Dense/Conv2d layer's forward pass keeps for its z' (`Linear::forward`).
        let mut kept_of: Vec<Option<Buf>> = Vec::with_capacity(self.steps.len());
        let mut argmax_of = std::mem::take(&mut scratch.argmax);
        argmax_of.resize_with(self.steps.len(), Vec::new);
        for (k, step) in self.steps.iter().enumerate() {
            let a = &acts[k];
            let (c, h, w) = self.shapes[k];
            let (oc, oh, ow) = self.shapes[k + 1];
            let mut next = scratch.take(oc * m * oh * ow);
            let mut kept = None;
            match step {
                Step::Linear(op) => kept = op.forward(m, a, &mut next, scratch),
                Step::Relu => {
                    for (d, v) in next.iter_mut().zip(a) {
                        *d = v.max(0.0);
                    }
                }
                Step::MaxPool(geom) => {
                    // every index is written by max_pool
                    let arg = &mut argmax_of[k];
                    arg.resize(next.len(), 0);
                    geom.max_pool(c * m, a, &mut next, arg);
                }
                Step::AvgPool { geom, divisor } => {
                    geom.window_sum(c * m, a, &mut next);
                    for plane in next.chunks_exact_mut(oh * ow) {
                        for (v, d) in plane.iter_mut().zip(divisor) {
                            *v /= d;
                        }
                    }
                }
                Step::Flatten => flatten(m, h * w, a, &mut next),
            }
            acts.push(next);
            kept_of.push(kept);
        }
        // Logits, targets and the seed at the output.
        let last = acts.last().expect("the input at least");
        let outputs = self.outputs;
        let mut seed = scratch.zeroed(outputs * m);
        for n in 0..m {
            let row = (0..outputs).map(|j| f64::from(last[j * m + n]));
            for (j, v) in row.clone().enumerate() {
                out.logits[n * outputs + j] = v;
            }
            let t = match targets {
                _ if outputs == 1 => 0,
                Some(t) => t[n],
                None => argmax(row),
            };
            out.targets[n] = t;
            seed[t * m + n] = match self.backward {
                Backward::Lrp => last[t * m + n],
                Backward::Sensitivity | Backward::GradientXInput => 1.0,
            };
        }
        if !relevance {
            scratch.give(seed);
            for a in acts.into_iter().chain(kept_of.into_iter().flatten()) {
                scratch.give(a);
            }
            scratch.argmax = argmax_of;
            return;
        }
        // Backward: LRP relevance or the exact gradient.
        let lrp = self.backward == Backward::Lrp;
        let mut r = seed;
        for (k, step) in self.steps.iter().enumerate().rev() {
            let a = &acts[k];
            let (c, h, w) = self.shapes[k];
            let mut below = scratch.take(a.len());
            match step {
                Step::Linear(op) if lrp => {
                    let forward = Forward {
                        z: &acts[k + 1],
                        kept: kept_of[k].as_deref(),
                    };
                    op.relevance(m, a, forward, &r, &mut below, scratch)
                }
                Step::Linear(op) => op.gradient(m, &r, &mut below, scratch),
                // ReLU passes relevance unchanged; the gradient only where the input is > 0.
                Step::Relu if lrp => std::mem::swap(&mut below, &mut r),
                Step::Relu => {
                    for ((d, g), z) in below.iter_mut().zip(&r).zip(a) {
                        *d = if *z > 0.0 { *g } else { 0.0 };
                    }
                }
                Step::MaxPool(geom) => {
                    below.fill(0.0);
                    geom.route_to_argmax(c * m, &r, &argmax_of[k], &mut below)
                }
                Step::AvgPool { geom, .. } if lrp => geom.avg_relevance(c * m, a, &r, &mut below),
                Step::AvgPool { geom, divisor } => {
                    for plane in r.chunks_exact_mut(geom.plane_out()) {
                        for (g, d) in plane.iter_mut().zip(divisor) {
                            *g /= d;
                        }
                    }
                    below.fill(0.0);
                    geom.window_spread_add(c * m, &r, &mut below);
                }
                Step::Flatten => unflatten(m, h * w, &r, &mut below),
            }
            scratch.give(std::mem::replace(&mut r, below));
        }
        match self.backward {
            Backward::Lrp => {}
            // R_i = (dy_t/dx_i)^2
            Backward::Sensitivity => r.iter_mut().for_each(|g| *g *= *g),
            // R_i = x_i dy_t/dx_i
            Backward::GradientXInput => {
                for (g, x) in r.iter_mut().zip(&acts[0]) {
                    *g *= x;
                }
            }
        }
        swap_outer(c0, m, h0 * w0, &r, out.relevance);
        scratch.give(r);
        for a in acts.into_iter().chain(kept_of.into_iter().flatten()) {
            scratch.give(a);
        }
        scratch.argmax = argmax_of;
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array1, Array2, Array4, ArrayD, IxDyn};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::lrp::Rule;
    use crate::model::Window;

    /// A network whose chunk of 16 samples would need over 256 MiB of scratch: conv 3x3 to 16
    /// channels on a 200 x 200 image, global average pooling, dense; random weights.
    fn large(rng: &mut StdRng) -> Network {
        let conv = Layer::Conv2d {
            weight: Array4::from_shape_fn((16, 1, 3, 3), |_| rng.random_range(-0.5..0.5)),
            bias: Array1::from_shape_fn(16, |_| rng.random_range(-0.2..0.0)),
            window: Window {
                kernel: [3, 3],
                stride: [1, 1],
                pad: [0; 4],
            },
        };
        let pool = Layer::AvgPool2d {
            window: Window {
                kernel: [198, 198],
                stride: [1, 1],
                pad: [0; 4],
            },
            count_include_pad: false,
            sum: false,
        };
        // Positive dense weights: the logits are sums of positive terms. With mixed signs a draw
        // could cancel to a logit near 0, whose f32 z' is then off by more than the 1e-4 this
        // test holds the chunking to (a seed gave logits of 0.0077 from terms near 0.3).
        let dense = Layer::Dense {
            weight: Array2::from_shape_fn((16, 2), |_| rng.random_range(0.1..1.0)),
            bias: Array1::from_shape_fn(2, |_| rng.random_range(-0.2..0.2)),
        };
        let layers = vec![conv, Layer::Relu, pool, Layer::Flatten, dense];
        Network::new(vec![1, 200, 200], layers, vec![]).unwrap()
    }

    #[test]
    fn chunks_are_even_and_keep_every_thread_busy() {
        for (n, max_chunk, threads, want) in [
            (64, 9, 2, 8),
            (256, 9, 2, 9),
            (256, 16, 1, 16),
            (5, 9, 2, 3),
            (1, 9, 2, 1),
            (0, 9, 2, 1),
            (17, 16, 1, 9),
        ] {
            assert_eq!(
                chunk_size(n, max_chunk, threads),
                want,
                "n {n}, max {max_chunk}"
            );
        }
    }

    #[test]
    fn a_chunk_im2col_matrix_stays_within_the_cache_budget() {
        // The bundled model's shape: conv 5x5 1->8 on 28 x 28, pool, conv 5x5 8->16, pool,
        // dense 256->64 and 64->10. Its largest im2col matrix is the first convolution's,
        // 25 x 576 values a sample (57.6 kB): 9 samples a chunk.
        let mut rng = StdRng::seed_from_u64(5);
        let mut conv = |oc: usize, c: usize| Layer::Conv2d {
            weight: Array4::from_shape_fn((oc, c, 5, 5), |_| rng.random_range(-0.5..0.5)),
            bias: Array1::zeros(oc),
            window: Window {
                kernel: [5, 5],
                stride: [1, 1],
                pad: [0; 4],
            },
        };
        let (conv1, conv2) = (conv(8, 1), conv(16, 8));
        let pool = || Layer::MaxPool2d {
            window: Window {
                kernel: [2, 2],
                stride: [2, 2],
                pad: [0; 4],
            },
        };
        let layers = vec![
            conv1,
            Layer::Relu,
            pool(),
            conv2,
            Layer::Relu,
            pool(),
            Layer::Flatten,
            Layer::Dense {
                weight: Array2::from_elem((256, 64), 0.01),
                bias: Array1::zeros(64),
            },
            Layer::Relu,
            Layer::Dense {
                weight: Array2::from_elem((64, 10), 0.01),
                bias: Array1::zeros(10),
            },
        ];
        let net = Network::new(vec![1, 28, 28], layers, vec![]).unwrap();
        let method = Method::Lrp {
            rules: vec![Rule::ZPlus; 4],
        };
        let engine = FastBackend::new(&net, &method).unwrap();
        assert_eq!(engine.max_chunk, 9);
        assert!(engine.max_chunk * 25 * 576 * 4 <= CACHE_BUDGET);
    }

    #[test]
    fn large_activations_get_smaller_chunks_with_the_same_result() {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        eprintln!("seed {seed}");
        let mut rng = StdRng::seed_from_u64(seed);
        let net = large(&mut rng);
        let method = Method::Lrp {
            rules: vec![Rule::ZPlus, Rule::Epsilon(0.1)],
        };
        let mut engine = FastBackend::new(&net, &method).unwrap().with_threads(2);
        assert!(engine.max_chunk < CHUNK, "max chunk {}", engine.max_chunk);
        assert!(engine.max_chunk >= 1);
        // 9 samples: several chunks of at most max_chunk
        let x = ArrayD::from_shape_fn(IxDyn(&[9, 1, 200, 200]), |_| rng.random_range(0.0..1.0));
        let got = engine.run(x.view(), None).unwrap();
        let want = crate::cpu::explain(&net, &method, x.mapv(f64::from).view(), None).unwrap();
        assert_eq!(got.targets, want.targets);
        for (i, (g, w)) in got
            .relevance
            .outer_iter()
            .zip(want.relevance.outer_iter())
            .enumerate()
        {
            let (mut num, mut den) = (0.0f64, 0.0f64);
            for (a, b) in g.iter().zip(w.iter()) {
                num += (f64::from(*a) - b).powi(2);
                den += b * b;
            }
            let err = (num / den.max(1e-300)).sqrt();
            assert!(err <= 1e-4, "sample {i}: relative L2 error {err:e}");
        }
    }
}
