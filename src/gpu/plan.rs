//! The batch plan, built once per (network, method, batch size): weights uploaded once, one
//! activation buffer per layer kept for the backward pass, ping-pong relevance buffers, shared
//! scratch, one uniform buffer and one bind group per layer, pipelines from the cache. Running a
//! batch writes the inputs, encodes forward, seed and backward into one command encoder, copies
//! relevance, logits and targets into one of two staging buffers, submits once and maps once;
//! the host reads one staging buffer back while the GPU runs the next batch.

use wgpu::util::DeviceExt;

use super::context::GpuContext;
use super::shader::{
    kept_z, ConvParams, ConvSpec, DenseParams, ElementwiseEntry, ElementwiseParams, InputEntry,
    InputParams, Kernel, LinearEntry, PoolEntry, PoolParams, RuleParams, Shader, Specialisation,
    CHUNK, CONV_BLOCK, CONV_STRIP, MAX_CHUNKS, MAX_WINDOW, WORKGROUP,
};
use crate::{Error, Layer, Method, Network, Result};

/// Bytes per f32 / u32.
const F: u64 = 4;

/// Timestamps per batch timed by stage: start, after the upload copy, after the forward
/// dispatches (with the seed), after the relevance dispatches, after the read-back copies.
const TIMESTAMPS: u32 = 5;

/// Timestamps per batch timed by kernel, for a plan of `steps` dispatches: start, after the
/// upload copy, after the byte unpack (an empty pass for f32 inputs), after each dispatch,
/// after the read-back copies.
fn kernel_timestamps(steps: usize) -> u32 {
    steps as u32 + 4
}

/// Bytes `count` timestamps take.
fn timestamp_bytes(count: u32) -> u64 {
    u64::from(count) * wgpu::QUERY_SIZE as u64
}

/// Where the timestamps lie in a staging buffer whose results take `bytes`.
fn timestamp_offset(bytes: u64) -> u64 {
    bytes.next_multiple_of(8)
}

/// GPU time per stage summed over the timed batches (see [`Plan::enable_timing`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct StageTotals {
    /// Nanoseconds: upload, forward, relevance, read-back.
    pub ns: [f64; 4],
    /// Submissions timed.
    pub batches: usize,
}

/// GPU time per dispatch summed over the batches timed by kernel (see [`Plan::enable_timing`]):
/// the byte unpack first, then every dispatch of the plan in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct KernelTotals {
    /// Per dispatch: what it is (layer label and entry point) and its nanoseconds.
    pub kernels: Vec<(String, f64)>,
    /// Submissions timed.
    pub batches: usize,
}

/// What timing a batch needs: a query set (one range per staging slot), a buffer to resolve it
/// into, and per slot a host-visible upload buffer, so that the input upload is a copy inside
/// the batch's own command buffer (queue writes run before it, where no timestamp reaches).
struct Timing {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    upload: [wgpu::Buffer; 2],
    /// Per slot: the pending re-map of its upload buffer after the batch that used it.
    remap: [Option<Remap>; 2],
    /// Per slot: whether its upload buffer is mapped now.
    mapped: [bool; 2],
    /// Nanoseconds per timestamp tick.
    period: f64,
    totals: StageTotals,
    /// Timed by kernel (every dispatch in its own pass), not only by stage.
    kernels: bool,
    /// Timestamps per batch: [`TIMESTAMPS`] or [`kernel_timestamps`].
    per_slot: u32,
    /// Nanoseconds per dispatch (the unpack, then each step), when timed by kernel.
    kernel_ns: Vec<f64>,
}

type MapReceiver = std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

struct Remap {
    /// The submission that used the buffer (None: wait for everything).
    index: Option<wgpu::SubmissionIndex>,
    mapped: MapReceiver,
}

/// Maps an upload buffer for writing once `index` is done.
fn remap(upload: &wgpu::Buffer, index: Option<wgpu::SubmissionIndex>) -> Remap {
    let (tx, rx) = std::sync::mpsc::channel();
    upload.map_async(wgpu::MapMode::Write, .., move |r| {
        let _ = tx.send(r);
    });
    Remap { index, mapped: rx }
}

/// What the plan computes after the forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Lrp,
    Sensitivity,
    GradientXInput,
}

impl Mode {
    fn gradient(self) -> bool {
        self != Mode::Lrp
    }
}

/// Per-sample sizes (in values) of one layer, and its kernel parameters.
#[derive(Clone, Debug)]
enum LayerPlan {
    Dense(DenseParams),
    Conv(ConvParams),
    /// `fused`: the preceding Dense/Conv2d applies it in its forward pass (no dispatch, its
    /// output buffer is shared); the gradient still masks by it (output > 0 iff input > 0).
    Relu {
        len: u32,
        fused: bool,
    },
    /// `true`: the Conv2d right before it (or before its fused ReLU) takes over its relevance
    /// step (`ConvParams::pool_kh`; LRP only, windows tiling the input).
    MaxPool(PoolParams, bool),
    AvgPool(PoolParams),
    Flatten,
}

/// Per-sample sizes of the shared buffers, used to size them and to clamp the batch size.
#[derive(Clone, Debug, Default)]
pub(crate) struct Footprint {
    /// Largest activation (values per sample): relevance buffers and activations.
    pub activation: u64,
    /// Values of the `s` scratch per sample.
    pub s: u64,
    /// vec4 partial sums per sample (0 when no layer needs split-K).
    pub partial: u64,
    /// Largest max-pooling arg-max buffer per sample.
    pub argmax: u64,
    /// Staging bytes per sample.
    pub staging: u64,
}

impl Footprint {
    /// Bytes per sample of each per-batch storage buffer, with a name for messages.
    pub fn bindings(&self) -> [(&'static str, u64); 4] {
        [
            ("activations/relevance", self.activation * F),
            ("s scratch", self.s * F),
            ("split-K partial sums", self.partial * 4 * F),
            ("max-pool arg-max", self.argmax * F),
        ]
    }
}

fn u32_of(v: usize, what: &str, layer: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Shape {
        layer: layer.to_string(),
        expected: format!("{what} below 2^32 for the GPU backend"),
        got: v.to_string(),
    })
}

fn layer_name(net: &Network, k: usize) -> String {
    format!("{k} ('{}', {})", net.names[k], net.layers[k].kind())
}

/// The kernel parameters of every layer (n = 0; set per run) and the buffer footprint.
fn layer_plans(net: &Network, method: &Method) -> Result<(Vec<LayerPlan>, Footprint)> {
    let shapes = net.shapes()?;
    let linear = net.linear_layers();
    let mode = match method {
        Method::Lrp { rules } => {
            if rules.len() != linear.len() {
                return Err(Error::usage(
                    "--rule",
                    format!(
                        "the method has {} rules but the network has {} Dense/Conv2d layers",
                        rules.len(),
                        linear.len()
                    ),
                ));
            }
            Mode::Lrp
        }
        Method::Sensitivity => Mode::Sensitivity,
        Method::GradientXInput => Mode::GradientXInput,
    };
    let mut fp = Footprint {
        activation: shapes
            .iter()
            .map(|s| s.iter().product::<usize>() as u64)
            .max()
            .unwrap_or(1),
        ..Default::default()
    };
    let classes = net.num_outputs();
    if classes as u32 > MAX_WINDOW {
        return Err(Error::Gpu(format!(
            "the network has {classes} outputs; the GPU backend handles at most {MAX_WINDOW} \
             (use --backend cpu)"
        )));
    }
    let input_len = net.input_len() as u64;
    fp.staging = (input_len + classes as u64 + 1) * F;
    let mut plans = vec![];
    // Layers whose input is a ReLU output: the rule's x- terms vanish there (`Rule::passes_on`).
    let nonnegative = net.nonnegative_inputs();
    for (k, layer) in net.layers.iter().enumerate() {
        let name = layer_name(net, k);
        let nonnegative_input = nonnegative[k];
        let inp = &shapes[k];
        let out = &shapes[k + 1];
        let in_len = inp.iter().product::<usize>() as u64;
        let out_len = out.iter().product::<usize>() as u64;
        // The layer's rule (LRP only).
        let lrp_rule = match method {
            Method::Lrp { rules } => linear.iter().position(|&l| l == k).map(|i| &rules[i]),
            _ => None,
        };
        let rule = || -> Result<RuleParams> {
            match lrp_rule {
                Some(r) => RuleParams::from_rule(r, nonnegative_input),
                None => Ok(RuleParams::gradient()),
            }
        };
        // Whether the forward pass keeps z' for the relevance pass ("Kept z'" in the shaders).
        let keep_z = lrp_rule.map_or(0, |r| kept_z(r, nonnegative_input));
        // `units` values in chunks of `per_chunk`: the number of chunks a reduce kernel sums.
        let chunks = |units: usize, per_chunk: usize, what: &str| -> Result<u32> {
            let c = units.div_ceil(per_chunk);
            if c > MAX_CHUNKS as usize {
                return Err(Error::Gpu(format!(
                    "layer {name}: its {what} ({units} in chunks of {per_chunk}) is longer than the \
                     GPU kernels handle ({MAX_CHUNKS} chunks; use --backend cpu)"
                )));
            }
            Ok(c as u32)
        };
        let plan = match layer {
            Layer::Dense { weight, .. } => {
                let (i, o) = weight.dim();
                let rule = rule()?;
                let p = DenseParams {
                    n: 0,
                    inputs: u32_of(i, "inputs", &name)?,
                    outputs: u32_of(o, "outputs", &name)?,
                    chunk: CHUNK,
                    chunks_in: chunks(i, CHUNK as usize, "reduction over inputs")?,
                    chunks_out: chunks(o, CHUNK as usize, "reduction over outputs")?,
                    bias_offset: u32_of(i * o, "weights", &name)?,
                    mode: mode.gradient() as u32,
                    relu: 0,
                    z_const: 0,
                    keep_z,
                    pad2: 0,
                    rule,
                };
                fp.s = fp.s.max(2 * out_len);
                if p.chunks_in > 1 {
                    fp.partial = fp.partial.max(p.chunks_in as u64 * out_len);
                }
                if p.chunks_out > 1 {
                    fp.partial = fp.partial.max(p.chunks_out as u64 * in_len);
                }
                LayerPlan::Dense(p)
            }
            Layer::Conv2d { weight, window, .. } => {
                let (oc, c, kh, kw) = weight.dim();
                let kk = kh * kw;
                let rule = rule()?;
                // The relevance kernels loop over the kernel once per term of the rule.
                let terms = (rule.term_layout[0] as usize).max(1);
                if kk * terms > MAX_WINDOW as usize {
                    return Err(Error::Gpu(format!(
                        "layer {name}: a {kh}x{kw} kernel is larger than the GPU kernels handle \
                         ({MAX_WINDOW} positions, over the {terms} term(s) of its rule; use \
                         --backend cpu)"
                    )));
                }
                // Whole channels per chunk, about CHUNK kernel positions per invocation.
                let per_chunk = (CHUNK as usize / kk).max(1);
                let p = ConvParams {
                    n: 0,
                    c: c as u32,
                    h: inp[1] as u32,
                    w: inp[2] as u32,
                    oc: u32_of(oc, "output channels", &name)?,
                    oh: out[1] as u32,
                    ow: out[2] as u32,
                    kh: kh as u32,
                    kw: kw as u32,
                    stride_y: window.stride[0] as u32,
                    stride_x: window.stride[1] as u32,
                    pad_top: window.pad[0] as u32,
                    pad_left: window.pad[1] as u32,
                    c_per_chunk: per_chunk as u32,
                    oc_per_chunk: per_chunk as u32,
                    chunks_in: chunks(c, per_chunk, "receptive field over input channels")?,
                    chunks_out: chunks(oc, per_chunk, "transposed reduction over output channels")?,
                    bias_offset: u32_of(weight.len(), "weights", &name)?,
                    mode: mode.gradient() as u32,
                    relu: 0,
                    z_const: 0,
                    keep_z,
                    pool_kh: 0,
                    pool_kw: 0,
                    pool_oh: 0,
                    pool_ow: 0,
                    pad1: 0,
                    pad2: 0,
                    rule,
                };
                u32_of(in_len as usize, "input values per sample", &name)?;
                u32_of(out_len as usize, "output values per sample", &name)?;
                fp.s = fp.s.max(2 * out_len);
                if p.chunks_in > 1 {
                    fp.partial = fp.partial.max(p.chunks_in as u64 * out_len);
                }
                if p.chunks_out > 1 {
                    fp.partial = fp.partial.max(p.chunks_out as u64 * in_len);
                }
                LayerPlan::Conv(p)
            }
            Layer::Relu => {
                let fused = match plans.last_mut() {
                    Some(LayerPlan::Dense(d)) => {
                        d.relu = 1;
                        true
                    }
                    Some(LayerPlan::Conv(c)) => {
                        c.relu = 1;
                        true
                    }
                    _ => false,
                };
                LayerPlan::Relu {
                    len: u32_of(in_len as usize, "values per sample", &name)?,
                    fused,
                }
            }
            Layer::Flatten => LayerPlan::Flatten,
            Layer::MaxPool2d { window } | Layer::AvgPool2d { window, .. } => {
                let area = window.kernel[0] * window.kernel[1];
                if area > MAX_WINDOW as usize {
                    return Err(Error::Gpu(format!(
                        "layer {name}: a pooling window of {area} positions is larger than the GPU \
                         kernels handle ({MAX_WINDOW}; use --backend cpu)"
                    )));
                }
                let divisor = match layer {
                    Layer::AvgPool2d { sum: true, .. } => 2,
                    Layer::AvgPool2d {
                        count_include_pad: true,
                        ..
                    } => 1,
                    _ => 0,
                };
                let p = PoolParams {
                    n: 0,
                    c: inp[0] as u32,
                    h: inp[1] as u32,
                    w: inp[2] as u32,
                    oh: out[1] as u32,
                    ow: out[2] as u32,
                    kh: window.kernel[0] as u32,
                    kw: window.kernel[1] as u32,
                    stride_y: window.stride[0] as u32,
                    stride_x: window.stride[1] as u32,
                    pad_top: window.pad[0] as u32,
                    pad_left: window.pad[1] as u32,
                    divisor,
                    mode: mode.gradient() as u32,
                    pad0: 0,
                    pad1: 0,
                };
                u32_of(in_len as usize, "input values per sample", &name)?;
                if matches!(layer, Layer::MaxPool2d { .. }) {
                    fp.argmax = fp.argmax.max(out_len);
                    // LRP passes max pooling's relevance to each window's winner; where the
                    // windows tile a convolution's output, the convolution's s step reads it
                    // from there through the arg-max, and the pooling needs no relevance step.
                    let conv = match &mut plans[..] {
                        [.., LayerPlan::Conv(c), LayerPlan::Relu { fused: true, .. }]
                        | [.., LayerPlan::Conv(c)] => Some(c),
                        _ => None,
                    };
                    let fused = match conv {
                        Some(c) if !mode.gradient() && p.tiles().is_some() => {
                            (c.pool_kh, c.pool_kw, c.pool_oh, c.pool_ow) = (p.kh, p.kw, p.oh, p.ow);
                            true
                        }
                        _ => false,
                    };
                    LayerPlan::MaxPool(p, fused)
                } else {
                    fp.s = fp.s.max(out_len);
                    LayerPlan::AvgPool(p)
                }
            }
        };
        plans.push(plan);
    }
    Ok((plans, fp))
}

/// The per-sample buffer footprint of a (network, method), for clamping the batch size.
pub(crate) fn footprint(net: &Network, method: &Method) -> Result<Footprint> {
    layer_plans(net, method).map(|(_, fp)| fp)
}

/// Uniform contents, with `n` (and the seed's explicit-targets flag) filled in per run.
#[derive(Clone, Debug)]
enum Uniform {
    Dense(DenseParams),
    Conv(ConvParams),
    Pool(PoolParams),
    Elementwise(ElementwiseParams),
    Seed(ElementwiseParams),
    Input(InputParams),
}

impl Uniform {
    fn bytes(&self, n: u32, explicit: bool) -> Vec<u8> {
        match self {
            Uniform::Dense(p) => bytemuck::bytes_of(&DenseParams { n, ..*p }).to_vec(),
            Uniform::Conv(p) => bytemuck::bytes_of(&ConvParams { n, ..*p }).to_vec(),
            Uniform::Pool(p) => bytemuck::bytes_of(&PoolParams { n, ..*p }).to_vec(),
            Uniform::Elementwise(p) => bytemuck::bytes_of(&ElementwiseParams { n, ..*p }).to_vec(),
            Uniform::Input(p) => bytemuck::bytes_of(&InputParams { n, ..*p }).to_vec(),
            Uniform::Seed(p) => bytemuck::bytes_of(&ElementwiseParams {
                n,
                flag: explicit as u32,
                ..*p
            })
            .to_vec(),
        }
    }
}

/// A step before its pipeline is compiled: kernel, specialisation, bind group and invocations
/// per sample.
type PendingStep = (Kernel, Specialisation, usize, u64);

/// One dispatch: a pipeline, its bind group and the invocations per block of `sample_block`
/// samples.
struct Step {
    pipeline: wgpu::ComputePipeline,
    kernel: Kernel,
    bind_group: usize,
    per_sample: u64,
    sample_block: u64,
}

/// Which of the two relevance buffers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ping {
    A,
    B,
}

impl Ping {
    fn other(self) -> Ping {
        match self {
            Ping::A => Ping::B,
            Ping::B => Ping::A,
        }
    }
}

/// The inputs of one batch: f32 values, or bytes and the value of each byte.
#[derive(Clone, Copy)]
pub(crate) enum BatchInput<'a> {
    F32(&'a [f32]),
    U8(&'a [u8], &'a [f32; 256]),
}

impl BatchInput<'_> {
    /// The bytes that cross the bus: the f32 values, or the bytes zero-padded to a multiple of 4
    /// (buffer copies move whole words).
    fn upload_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            BatchInput::F32(x) => std::borrow::Cow::Borrowed(bytemuck::cast_slice(x)),
            BatchInput::U8(b, _) if b.len() % 4 == 0 => std::borrow::Cow::Borrowed(b),
            BatchInput::U8(b, _) => {
                let mut padded = b.to_vec();
                padded.resize(b.len().next_multiple_of(4), 0);
                std::borrow::Cow::Owned(padded)
            }
        }
    }

    /// Number of input values.
    fn len(&self) -> usize {
        match self {
            BatchInput::F32(x) => x.len(),
            BatchInput::U8(b, _) => b.len(),
        }
    }
}

/// A built plan; see the module docs.
pub(crate) struct Plan {
    ctx: GpuContext,
    capacity: usize,
    input_len: usize,
    classes: usize,
    input: wgpu::Buffer,
    /// 8-bit inputs: their bytes, the table of byte values last written, and the step that
    /// expands them into `input`.
    pixels: wgpu::Buffer,
    lut: wgpu::Buffer,
    lut_written: Option<[f32; 256]>,
    unpack: Step,
    logits: wgpu::Buffer,
    result: wgpu::Buffer,
    targets: wgpu::Buffer,
    staging: [wgpu::Buffer; 2],
    uniforms: Vec<(wgpu::Buffer, Uniform)>,
    bind_groups: Vec<wgpu::BindGroup>,
    /// The label of each bind group (the layer it serves), for naming dispatches.
    bind_labels: Vec<String>,
    steps: Vec<Step>,
    /// `steps[..forward_steps]` are the forward pass and the seed, the rest the relevance pass.
    forward_steps: usize,
    /// Per-stage timestamps, once [`Plan::enable_timing`] is called.
    timing: Option<Timing>,
    /// (n, explicit targets) the uniforms hold now.
    written: Option<(usize, bool)>,
    /// Every buffer of the plan (weights uploaded once, activations, scratch), kept with it; the
    /// bind groups reference them.
    _buffers: Vec<wgpu::Buffer>,
}

/// What one batch gives back: relevance appended as f32 straight from the mapped staging
/// buffer, logits widened to f64.
pub(crate) struct BatchResult<'a> {
    pub relevance: &'a mut Vec<f32>,
    pub logits: &'a mut [f64],
    pub targets: &'a mut [u32],
}

/// The share of z' of a convolution's constant-input terms (f = c, e.g. z^B's merged L and H
/// term): per (output-channel block, output pixel, pass), the vec4 over the block's channels of
/// sum_t c_t sum_{ch, ky, kx real} sign_t g_t(w). It is the same for every sample, so the plan
/// computes it once and z_partial reads it instead of looping over those terms. `None` when the
/// rule has no such term.
fn constant_z(p: &ConvParams, rp: &RuleParams, weight: &ndarray::Array4<f32>) -> Option<Vec<f32>> {
    let constant = rp.constant_terms();
    if constant.is_empty() {
        return None;
    }
    let (oc, c, kh, kw) = weight.dim();
    let cb = CONV_BLOCK as usize;
    let (oh, ow) = (p.oh as usize, p.ow as usize);
    // real kernel rows (columns) of output row (column) o
    let real = |o: usize, stride: u32, pad: u32, k: usize, size: u32| {
        (0..k).filter(move |&kk| {
            let i = (o * stride as usize + kk) as i64 - pad as i64;
            i >= 0 && i < size as i64
        })
    };
    // z of output channel o at output pixel (oy, ox) in pass `pass`
    let z = |o: usize, oy: usize, ox: usize, pass: usize| {
        let mut z = 0.0f64;
        for &t in constant
            .iter()
            .filter(|&&t| rp.term_pass1[t] as usize == pass)
        {
            for ch in 0..c {
                for ky in real(oy, p.stride_y, p.pad_top, kh, p.h) {
                    for kx in real(ox, p.stride_x, p.pad_left, kw, p.w) {
                        let g = rp.weight_mod(t, weight[[o, ch, ky, kx]]);
                        z += f64::from(rp.x_one[t]) * f64::from(g);
                    }
                }
            }
        }
        z as f32
    };
    let mut out = Vec::with_capacity(oc.div_ceil(cb) * oh * ow * 2 * cb);
    for ob in 0..oc.div_ceil(cb) {
        for pix in 0..oh * ow {
            for pass in 0..2 {
                // lanes past the last channel are never read; 0 keeps them defined
                out.extend((0..cb).map(|l| {
                    let o = ob * cb + l;
                    if o < oc {
                        z(o, pix / ow, pix % ow, pass)
                    } else {
                        0.0
                    }
                }));
            }
        }
    }
    Some(out)
}

fn storage(device: &wgpu::Device, label: &str, bytes: u64) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: bytes.max(16).next_multiple_of(16),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    })
}

impl Plan {
    /// Builds the plan for batches of up to `capacity` samples (already clamped to the limits).
    pub(crate) fn new(
        ctx: &GpuContext,
        net: &Network,
        method: &Method,
        capacity: usize,
    ) -> Result<Plan> {
        let device = ctx.device();
        let (plans, fp) = layer_plans(net, method)?;
        let mode = match method {
            Method::Lrp { .. } => Mode::Lrp,
            Method::Sensitivity => Mode::Sensitivity,
            Method::GradientXInput => Mode::GradientXInput,
        };
        let b = capacity as u64;
        let limits = ctx.limits();
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        for (what, per_sample) in fp.bindings() {
            if per_sample * b > max_binding {
                return Err(Error::Gpu(format!(
                    "the {what} buffer needs {} bytes for a batch of {capacity}, more than the \
                     adapter's {max_binding}-byte storage binding limit; use a smaller --batch-size",
                    per_sample * b
                )));
            }
        }
        let shapes = net.shapes()?;
        let lens: Vec<u64> = shapes
            .iter()
            .map(|s| s.iter().product::<usize>() as u64)
            .collect();
        let input_len = lens[0] as usize;
        let classes = net.num_outputs();
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let vscope = device.push_error_scope(wgpu::ErrorFilter::Validation);

        // Activations: acts[k] is the buffer holding the input of layer k (acts[L] the logits).
        let mut act_buffers = vec![storage(device, "activation.input", lens[0] * b * F)];
        let mut acts = vec![0usize];
        for (k, p) in plans.iter().enumerate() {
            if matches!(p, LayerPlan::Flatten | LayerPlan::Relu { fused: true, .. }) {
                acts.push(acts[k]);
            } else {
                let label = format!("activation.{k}.{}", net.names[k]);
                act_buffers.push(storage(device, &label, lens[k + 1] * b * F));
                acts.push(act_buffers.len() - 1);
            }
        }
        let rel_a = storage(device, "relevance.a", fp.activation * b * F);
        let rel_b = storage(device, "relevance.b", fp.activation * b * F);
        let s_buf = storage(device, "scratch.s", fp.s * b * F);
        let part = storage(device, "scratch.partial", fp.partial * 4 * b * F);
        let targets = storage(device, "targets", b * F);
        let dummy = storage(device, "unused", 16);
        let rel = |p: Ping| match p {
            Ping::A => &rel_a,
            Ping::B => &rel_b,
        };

        // Backward bookkeeping: which relevance buffer each layer reads (seed writes A).
        let mut reads = vec![Ping::A; plans.len()];
        let mut cur = Ping::A;
        for k in (0..plans.len()).rev() {
            reads[k] = cur;
            let swaps = match plans[k] {
                // (a fused max pooling's relevance is read by the convolution below it)
                LayerPlan::Flatten | LayerPlan::MaxPool(_, true) => false,
                LayerPlan::Relu { .. } => mode.gradient(),
                _ => true,
            };
            if swaps {
                cur = cur.other();
            }
        }
        let final_read = cur;
        let result_ping = if mode.gradient() { cur.other() } else { cur };

        let cache = ctx.pipelines();
        let mut uniforms = vec![];
        let mut bind_groups = vec![];
        let mut bind_labels = vec![];
        let mut forward = vec![];
        let mut backward = vec![];
        let mut bind = |shader: Shader,
                        label: String,
                        uniform: Uniform,
                        buffers: &[&wgpu::Buffer],
                        uniforms: &mut Vec<(wgpu::Buffer, Uniform)>|
         -> usize {
            let ubuf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(&format!("{label}.params")),
                contents: &uniform.bytes(capacity as u32, false),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            });
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: ubuf.as_entire_binding(),
            }];
            for (i, buf) in buffers.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: buf.as_entire_binding(),
                });
            }
            let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&label),
                layout: cache.bind_group_layout(shader),
                entries: &entries,
            });
            uniforms.push((ubuf, uniform));
            bind_groups.push(bg);
            bind_labels.push(label);
            bind_groups.len() - 1
        };
        // Steps are listed first and their pipelines compiled all at once at the end (in
        // parallel: see `PipelineCache::compile_all`).
        let step = |list: &mut Vec<PendingStep>, kernel: Kernel, bg: usize, per_sample: u64| {
            list.push((kernel, Specialisation::None, bg, per_sample))
        };

        // Weights and max-pool arg-max buffers, kept with the plan.
        let mut owned = vec![];
        // The arg-max of each max pooling (read by its relevance step, or by the convolution's
        // that takes it over).
        let pool_args: Vec<Option<wgpu::Buffer>> = plans
            .iter()
            .enumerate()
            .map(|(k, p)| {
                matches!(p, LayerPlan::MaxPool(..)).then(|| {
                    let label = format!("layer.{k}.{}.argmax", net.names[k]);
                    storage(device, &label, lens[k + 1] * b * F)
                })
            })
            .collect();
        let mut backward_layers: Vec<Vec<PendingStep>> = vec![];
        for (k, p) in plans.iter().enumerate() {
            let x = &act_buffers[acts[k]];
            let y = &act_buffers[acts[k + 1]];
            let r_in = rel(reads[k]);
            let r_out = rel(reads[k].other());
            let label = format!("layer.{k}.{}", net.names[k]);
            let mut back = vec![];
            match p {
                LayerPlan::Dense(_) | LayerPlan::Conv(_) => {
                    // Row-major order: Dense W [inputs, outputs], Conv2d W [oc, c, kh, kw].
                    let (mut data, bias, shader): (Vec<f32>, _, _) = match &net.layers[k] {
                        Layer::Dense { weight, bias } => {
                            (weight.iter().copied().collect(), bias, Shader::Dense)
                        }
                        Layer::Conv2d { weight, bias, .. } => {
                            (weight.iter().copied().collect(), bias, Shader::Conv2d)
                        }
                        _ => unreachable!("layer_plans keeps layer kinds"),
                    };
                    let weights = data.len();
                    data.extend(bias.iter().copied());
                    // The rule's weight modifiers sign_k g_k(W), precomputed once per term (the
                    // kernels read them instead of evaluating them per multiply-add): for Dense
                    // here, as laid out in W and transposed ([outputs, inputs]) for a coalesced
                    // back-projection; for Conv2d blocked by channels in `blocked` below.
                    let mut rp = match p {
                        LayerPlan::Dense(d) => d.rule,
                        LayerPlan::Conv(c) => c.rule,
                        _ => unreachable!(),
                    };
                    let terms = rp.term_layout[0] as usize;
                    let offset = data.len();
                    let mut transposed = 0;
                    let mut dense_z_const = 0;
                    if let Layer::Dense { weight, .. } = &net.layers[k] {
                        for t in 0..terms {
                            for i in 0..weights {
                                data.push(rp.weight_mod(t, data[i]));
                            }
                        }
                        transposed = data.len();
                        let (inputs, outputs) = weight.dim();
                        for t in 0..terms {
                            for j in 0..outputs {
                                for i in 0..inputs {
                                    data.push(rp.weight_mod(t, weight[[i, j]]));
                                }
                            }
                        }
                        // The constant-input terms' share of z', per (output, pass).
                        let constant = rp.constant_terms();
                        if !mode.gradient() && !constant.is_empty() {
                            dense_z_const = data.len() as u32 + 1;
                            for j in 0..outputs {
                                for pass in 0..2 {
                                    let mut z = 0.0f64;
                                    for &t in &constant {
                                        if rp.term_pass1[t] as usize != pass {
                                            continue;
                                        }
                                        for i in 0..inputs {
                                            let g = rp.weight_mod(t, weight[[i, j]]);
                                            z += f64::from(rp.x_one[t]) * f64::from(g);
                                        }
                                    }
                                    data.push(z as f32);
                                }
                            }
                        }
                    }
                    if data.len() as u64 * F > max_binding {
                        return Err(Error::Gpu(format!(
                            "layer {} has {} bytes of weights, more than the adapter's \
                             {max_binding}-byte storage binding limit",
                            layer_name(net, k),
                            data.len() as u64 * F
                        )));
                    }
                    let wbuf = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                        label: Some(&format!("{label}.weights")),
                        contents: bytemuck::cast_slice(&data),
                        usage: wgpu::BufferUsages::STORAGE,
                    });
                    // Conv2d: the plain and modified weights blocked by CONV_BLOCK channels
                    // (zero-padded vec4s), so a blocked multiply-add loads its weights at once.
                    let mut blocked: Vec<f32> = vec![];
                    let mut z_const = 0;
                    if let Layer::Conv2d { weight, .. } = &net.layers[k] {
                        let (oc, c, kh, kw) = weight.dim();
                        let cb = CONV_BLOCK as usize;
                        let value =
                            |g: Option<usize>, o: usize, ch: usize, ky: usize, kx: usize| {
                                if o >= oc || ch >= c {
                                    return 0.0;
                                }
                                let w = weight[[o, ch, ky, kx]];
                                g.map_or(w, |t| rp.weight_mod(t, w))
                            };
                        // Per output-channel block: g = plain, then each term; [c, kh, kw].
                        for g in std::iter::once(None).chain((0..terms).map(Some)) {
                            for ob in 0..oc.div_ceil(cb) {
                                for ch in 0..c {
                                    for ky in 0..kh {
                                        for kx in 0..kw {
                                            for l in 0..cb {
                                                blocked.push(value(g, ob * cb + l, ch, ky, kx));
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        transposed = blocked.len() / cb;
                        // c_partial's weights carry their term's pass coefficient (alpha-beta's
                        // alpha and -beta, else 1): R = sum_t f_t(x) (coef_t g_t(W))^T s_t.
                        if c == 1 {
                            // One input channel: c_partial's lanes are the terms instead,
                            // [oc, kh, kw] with term t's modified weight in lane t.
                            for o in 0..oc {
                                for ky in 0..kh {
                                    for kx in 0..kw {
                                        for l in 0..cb {
                                            blocked.push(if l < terms {
                                                rp.term_coef[l] * value(Some(l), o, 0, ky, kx)
                                            } else {
                                                0.0
                                            });
                                        }
                                    }
                                }
                            }
                        }
                        // Per term and input-channel block: [oc, kh, kw].
                        for t in (0..terms).filter(|_| c > 1) {
                            for ib in 0..c.div_ceil(cb) {
                                for o in 0..oc {
                                    for ky in 0..kh {
                                        for kx in 0..kw {
                                            for l in 0..cb {
                                                blocked.push(
                                                    rp.term_coef[t]
                                                        * value(Some(t), o, ib * cb + l, ky, kx),
                                                );
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        if let (LayerPlan::Conv(cp), false) = (p, mode.gradient()) {
                            if let Some(zc) = constant_z(cp, &rp, weight) {
                                z_const = (blocked.len() / cb + 1) as u32;
                                blocked.extend(zc);
                            }
                        }
                        if blocked.len() as u64 * F > max_binding {
                            return Err(Error::Gpu(format!(
                                "layer {} has {} bytes of blocked weights, more than the \
                                 adapter's {max_binding}-byte storage binding limit",
                                layer_name(net, k),
                                blocked.len() as u64 * F
                            )));
                        }
                    }
                    rp.term_layout[1] = offset as u32;
                    rp.term_layout[2] = weights as u32;
                    rp.term_layout[3] = transposed as u32;
                    let (uniform, chunks_in, chunks_out, kern): (
                        _,
                        u64,
                        u64,
                        fn(LinearEntry) -> Kernel,
                    ) = match p {
                        LayerPlan::Dense(d) => (
                            Uniform::Dense(DenseParams {
                                rule: rp,
                                z_const: dense_z_const,
                                ..*d
                            }),
                            d.chunks_in as u64,
                            d.chunks_out as u64,
                            Kernel::Dense,
                        ),
                        LayerPlan::Conv(c) => (
                            Uniform::Conv(ConvParams {
                                rule: rp,
                                z_const,
                                ..*c
                            }),
                            c.chunks_in as u64,
                            c.chunks_out as u64,
                            Kernel::Conv2d,
                        ),
                        _ => unreachable!(),
                    };
                    // A layer that keeps z' ("Kept z'" in the shaders) holds it in an s buffer of
                    // its own from its forward pass to its relevance step: for a convolution one
                    // value per output and pass (a pair for alpha-beta's, keep_z = 3), Dense's
                    // pair layout for a Dense layer.
                    let (keep_z, per_output) = match p {
                        LayerPlan::Conv(c) => (c.keep_z != 0, if c.keep_z == 3 { 2 } else { 1 }),
                        LayerPlan::Dense(d) => (d.keep_z != 0, 2),
                        _ => unreachable!(),
                    };
                    let kept_s = keep_z.then(|| {
                        let bytes = per_output * lens[k + 1] * b * F;
                        storage(device, &format!("{label}.kept_z"), bytes)
                    });
                    let s_of_layer = kept_s.as_ref().unwrap_or(&s_buf);
                    let mut buffers = vec![x, &wbuf, y, &part, r_in, s_of_layer, r_out];
                    let wvbuf = (shader == Shader::Conv2d).then(|| {
                        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                            label: Some(&format!("{label}.weights_blocked")),
                            contents: bytemuck::cast_slice(&blocked),
                            usage: wgpu::BufferUsages::STORAGE,
                        })
                    });
                    if let Some(wv) = &wvbuf {
                        buffers.push(wv);
                        // the arg-max of the max pooling whose relevance step this layer's s
                        // step takes over (after the fused ReLU, if any)
                        let takes_pool = matches!(p, LayerPlan::Conv(c) if c.pool_kh != 0);
                        let fused_pool = (k + 1..plans.len().min(k + 3)).find(|&j| {
                            takes_pool && matches!(plans[j], LayerPlan::MaxPool(_, true))
                        });
                        buffers.push(
                            fused_pool
                                .and_then(|j| pool_args[j].as_ref())
                                .unwrap_or(&dummy),
                        );
                    }
                    let spec = match &uniform {
                        Uniform::Conv(c) => Specialisation::Conv(ConvSpec::of(c)),
                        _ => Specialisation::None,
                    };
                    let bg = bind(shader, label, uniform, &buffers, &mut uniforms);
                    owned.push(wbuf);
                    owned.extend(wvbuf);
                    owned.extend(kept_s);
                    let (inl, outl) = (lens[k], lens[k + 1]);
                    // Conv2d partial kernels compute CONV_BLOCK channels per invocation, for a
                    // strip of CONV_STRIP pixels of a row (the back-projection: with a
                    // horizontal stride of 1, else for one pixel).
                    let (out_units, in_units) = match p {
                        LayerPlan::Conv(c) => (
                            (c.oc.div_ceil(CONV_BLOCK) * c.oh * c.ow.div_ceil(CONV_STRIP)) as u64,
                            (c.c.div_ceil(CONV_BLOCK)
                                * c.h
                                * if c.stride_x == 1 {
                                    c.w.div_ceil(CONV_STRIP)
                                } else {
                                    c.w
                                }) as u64,
                        ),
                        _ => (outl, inl),
                    };
                    let partial = kern(LinearEntry::ForwardPartial);
                    forward.push((partial, spec, bg, chunks_in * out_units));
                    if chunks_in > 1 {
                        forward.push((kern(LinearEntry::ForwardReduce), spec, bg, outl));
                    }
                    if mode.gradient() || keep_z {
                        back.push((kern(LinearEntry::SReduce), spec, bg, outl));
                    } else {
                        let units = chunks_in * out_units;
                        back.push((kern(LinearEntry::ZPartial), spec, bg, units));
                        if chunks_in > 1 {
                            back.push((kern(LinearEntry::SReduce), spec, bg, outl));
                        }
                    }
                    let units = chunks_out * in_units;
                    back.push((kern(LinearEntry::CPartial), spec, bg, units));
                    if chunks_out > 1 {
                        back.push((kern(LinearEntry::RReduce), spec, bg, inl));
                    }
                }
                LayerPlan::Relu { fused: true, .. } if !mode.gradient() => {}
                LayerPlan::Relu { len, fused } => {
                    let params = ElementwiseParams {
                        n: 0,
                        len: *len,
                        mode: 0,
                        flag: 0,
                    };
                    // Fused: x and y are the same buffer, which may not be bound twice.
                    let y = if *fused { &dummy } else { y };
                    let bg = bind(
                        Shader::Elementwise,
                        label,
                        Uniform::Elementwise(params),
                        &[x, y, r_in, r_out, &targets],
                        &mut uniforms,
                    );
                    if !*fused {
                        step(
                            &mut forward,
                            Kernel::Elementwise(ElementwiseEntry::ReluForward),
                            bg,
                            lens[k],
                        );
                    }
                    if mode.gradient() {
                        back.push((
                            Kernel::Elementwise(ElementwiseEntry::ReluGradient),
                            Specialisation::None,
                            bg,
                            lens[k],
                        ));
                    }
                }
                LayerPlan::MaxPool(pp, _) | LayerPlan::AvgPool(pp) => {
                    let is_max = matches!(p, LayerPlan::MaxPool(..));
                    let arg = pool_args[k].clone().unwrap_or_else(|| dummy.clone());
                    let bg = bind(
                        Shader::Pooling,
                        label,
                        Uniform::Pool(*pp),
                        &[x, y, &arg, r_in, &s_buf, r_out],
                        &mut uniforms,
                    );
                    owned.push(arg);
                    if is_max {
                        step(
                            &mut forward,
                            Kernel::Pooling(PoolEntry::MaxForward),
                            bg,
                            lens[k + 1],
                        );
                        let (entry, invocations) = match pp.tiles() {
                            Some(tiles) => (PoolEntry::MaxRelevanceTiled, tiles),
                            None => (PoolEntry::MaxRelevance, lens[k]),
                        };
                        let relevance = Kernel::Pooling(entry);
                        if !matches!(p, LayerPlan::MaxPool(_, true)) {
                            back.push((relevance, Specialisation::None, bg, invocations));
                        }
                    } else {
                        step(
                            &mut forward,
                            Kernel::Pooling(PoolEntry::AvgForward),
                            bg,
                            lens[k + 1],
                        );
                        let none = Specialisation::None;
                        if let Some(tiles) = pp.tiles() {
                            let relevance = Kernel::Pooling(PoolEntry::AvgRelevanceTiled);
                            back.push((relevance, none, bg, tiles));
                        } else {
                            back.push((Kernel::Pooling(PoolEntry::AvgS), none, bg, lens[k + 1]));
                            let relevance = Kernel::Pooling(PoolEntry::AvgRelevance);
                            back.push((relevance, none, bg, lens[k]));
                        }
                    }
                }
                LayerPlan::Flatten => {}
            }
            backward_layers.push(back);
        }

        // 8-bit inputs: bytes and their values, expanded into the input activation when a batch
        // comes as bytes (encoded ahead of the forward steps by `submit`).
        let pixels = storage(device, "input.pixels", (lens[0] * b).next_multiple_of(4));
        let lut = storage(device, "input.lut", 256 * F);
        let unpack_bg = bind(
            Shader::Input,
            "input.unpack".into(),
            Uniform::Input(InputParams {
                n: 0,
                len: input_len as u32,
                pad0: 0,
                pad1: 0,
            }),
            &[&pixels, &lut, &act_buffers[0]],
            &mut uniforms,
        );
        let unpack = (
            Kernel::Input(InputEntry::UnpackU8),
            Specialisation::None,
            unpack_bg,
            input_len as u64,
        );

        // Seed: target choice and R at the logits, into relevance buffer A.
        let logits = act_buffers[acts[plans.len()]].clone();
        let seed = ElementwiseParams {
            n: 0,
            len: classes as u32,
            mode: mode.gradient() as u32,
            flag: 0,
        };
        let bg = bind(
            Shader::Elementwise,
            "seed".into(),
            Uniform::Seed(seed),
            &[&logits, &dummy, &rel_b, &rel_a, &targets],
            &mut uniforms,
        );
        step(
            &mut forward,
            Kernel::Elementwise(ElementwiseEntry::Seed),
            bg,
            1,
        );
        backward.extend(backward_layers.into_iter().rev().flatten());
        if mode.gradient() {
            let params = ElementwiseParams {
                n: 0,
                len: input_len as u32,
                mode: (mode == Mode::GradientXInput) as u32,
                flag: 0,
            };
            let bg = bind(
                Shader::Elementwise,
                "finalize".into(),
                Uniform::Elementwise(params),
                &[
                    &act_buffers[0],
                    &dummy,
                    rel(final_read),
                    rel(final_read.other()),
                    &targets,
                ],
                &mut uniforms,
            );
            step(
                &mut backward,
                Kernel::Elementwise(ElementwiseEntry::Finalize),
                bg,
                input_len as u64,
            );
        }
        let forward_steps = forward.len();
        let mut pending = vec![unpack];
        pending.extend(forward);
        pending.extend(backward);
        let wanted: Vec<_> = pending.iter().map(|&(k, spec, _, _)| (k, spec)).collect();
        cache.compile_all(device, &wanted)?;
        let mut steps = pending
            .into_iter()
            .map(|(kernel, spec, bind_group, per_sample)| {
                Ok(Step {
                    pipeline: cache.get(device, kernel, spec)?,
                    kernel,
                    bind_group,
                    per_sample,
                    sample_block: kernel.sample_block() as u64,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let unpack = steps.remove(0);
        // Two staging buffers, so one batch can be read back while the next one runs; room at
        // the end for the timestamps of a timed batch.
        let stamps = kernel_timestamps(steps.len()).max(TIMESTAMPS);
        let staging = ["staging.0", "staging.1"].map(|label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: (timestamp_offset(fp.staging * b) + timestamp_bytes(stamps))
                    .next_multiple_of(16),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let result = rel(result_ping).clone();
        let input = act_buffers[0].clone();
        let mut buffers = owned;
        buffers.extend(act_buffers);
        buffers.extend([rel_a.clone(), rel_b.clone(), s_buf, part, dummy]);
        if let Some(err) = pollster::block_on(vscope.pop()) {
            return Err(Error::Gpu(format!("building the batch plan failed: {err}")));
        }
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "out of GPU memory building the batch plan for {capacity} samples: {err}; use a \
                 smaller --batch-size"
            )));
        }
        Ok(Plan {
            ctx: ctx.clone(),
            capacity,
            input_len,
            classes,
            input,
            pixels,
            lut,
            lut_written: None,
            unpack,
            logits,
            result,
            targets,
            staging,
            uniforms,
            bind_groups,
            bind_labels,
            steps,
            forward_steps,
            timing: None,
            written: Some((capacity, false)),
            _buffers: buffers,
        })
    }

    /// Number of samples a batch holds.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Workgroups (x, y) for `total` invocations.
    fn workgroups(&self, total: u64) -> Result<(u32, u32)> {
        let max = self
            .ctx
            .limits()
            .max_compute_workgroups_per_dimension
            .max(1) as u64;
        let groups = total.div_ceil(WORKGROUP as u64).max(1);
        let x = groups.min(max);
        let y = groups.div_ceil(x);
        if y > max {
            return Err(Error::Gpu(format!(
                "a dispatch of {total} invocations exceeds the adapter's workgroup limits; use a \
                 smaller --batch-size"
            )));
        }
        Ok((x as u32, y as u32))
    }

    /// Queues one batch of `n <= capacity` samples: `x` holds n * input_len values, `targets` one
    /// index per sample (None: the arg-max). Its relevance, logits and targets land in staging
    /// buffer `slot` (0 or 1), which must not be pending; collect them with [`Plan::finish`].
    /// Returns without waiting for the GPU, so the host can finish the other slot meanwhile.
    ///
    /// `forward_only`: encode the forward pass and the seed alone, and copy no relevance back
    /// ([`Plan::finish`] then gives zeros for it). Ignored while timing, which times every stage.
    pub(crate) fn submit(
        &mut self,
        x: BatchInput<'_>,
        n: usize,
        targets: Option<&[u32]>,
        slot: usize,
        forward_only: bool,
    ) -> Result<Pending> {
        let forward_only = forward_only && self.timing.is_none();
        assert!(n >= 1 && n <= self.capacity && x.len() == n * self.input_len);
        let device = self.ctx.device();
        let queue = self.ctx.queue();
        let explicit = targets.is_some();
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let vscope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        // Queue writes take effect after the work submitted before them, so rewriting the
        // uniforms, inputs or targets never disturbs a batch still running.
        if self.written != Some((n, explicit)) {
            for (buf, u) in &self.uniforms {
                queue.write_buffer(buf, 0, &u.bytes(n as u32, explicit));
            }
            self.written = Some((n, explicit));
        }
        // f32 inputs go straight to the input activation; bytes to their own buffer (the
        // unpack step expands them), with the table of byte values when it changed.
        let upload_data = x.upload_bytes();
        let destination = match x {
            BatchInput::F32(_) => &self.input,
            BatchInput::U8(_, lut) => {
                if self.lut_written.as_ref() != Some(lut) {
                    queue.write_buffer(&self.lut, 0, bytemuck::cast_slice(&lut[..]));
                    self.lut_written = Some(*lut);
                }
                &self.pixels
            }
        };
        if self.timing.is_none() {
            queue.write_buffer(destination, 0, &upload_data);
        }
        if let Some(t) = targets {
            queue.write_buffer(&self.targets, 0, bytemuck::cast_slice(t));
        }
        let mut enc = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("batch"),
        });
        let input_bytes = upload_data.len() as u64;
        let per_slot = self.timing.as_ref().map_or(TIMESTAMPS, |t| t.per_slot);
        let base = slot as u32 * per_slot;
        if let Some(t) = &mut self.timing {
            // The upload buffer of this slot was re-mapped after its last batch (or, after an
            // error between unmapping and submitting, is mapped again here).
            let upload = &t.upload[slot];
            if !t.mapped[slot] {
                let r = t.remap[slot].take().unwrap_or_else(|| remap(upload, None));
                wait_mapped(device, r.index, r.mapped, "the upload buffer")?;
                t.mapped[slot] = true;
            }
            {
                let mut view = upload
                    .get_mapped_range_mut(..input_bytes)
                    .map_err(|e| Error::Gpu(format!("writing the batch's inputs failed: {e}")))?;
                view.copy_from_slice(&upload_data);
            }
            upload.unmap();
            t.mapped[slot] = false;
            mark(&mut enc, &t.queries, base);
            enc.copy_buffer_to_buffer(upload, 0, destination, 0, input_bytes);
            mark(&mut enc, &t.queries, base + 1);
        }
        let stamp = |i: u32| {
            self.timing
                .as_ref()
                .map(|t| wgpu::ComputePassTimestampWrites {
                    query_set: &t.queries,
                    beginning_of_pass_write_index: None,
                    end_of_pass_write_index: Some(base + i),
                })
        };
        // Bytes are expanded into the input activation first (in the forward pass).
        let unpack = matches!(x, BatchInput::U8(..)).then_some(&self.unpack);
        // One compute pass; timed by stage, the forward and relevance passes apart; timed by
        // kernel, a pass per dispatch (the unpack's pass is empty for f32 inputs).
        let passes: Vec<(Vec<&Step>, Option<wgpu::ComputePassTimestampWrites>)> = match &self.timing
        {
            None => {
                let steps = if forward_only {
                    &self.steps[..self.forward_steps]
                } else {
                    &self.steps[..]
                };
                vec![(unpack.into_iter().chain(steps).collect(), None)]
            }
            Some(t) if !t.kernels => {
                let (fw, bw) = self.steps.split_at(self.forward_steps);
                vec![
                    (unpack.into_iter().chain(fw).collect(), stamp(2)),
                    (bw.iter().collect(), stamp(3)),
                ]
            }
            Some(_) => std::iter::once((unpack.into_iter().collect(), stamp(2)))
                .chain(
                    (self.steps.iter())
                        .zip(3..)
                        .map(|(st, i)| (vec![st], stamp(i))),
                )
                .collect(),
        };
        for (steps, timestamp_writes) in passes {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("batch.forward_backward"),
                timestamp_writes,
            });
            for st in steps {
                let blocks = (n as u64).div_ceil(st.sample_block);
                let (gx, gy) = self.workgroups(st.per_sample * blocks)?;
                pass.set_pipeline(&st.pipeline);
                pass.set_bind_group(0, &self.bind_groups[st.bind_group], &[]);
                pass.dispatch_workgroups(gx, gy, 1);
            }
        }
        let lay = self.staging_layout(n);
        let staging = &self.staging[slot];
        if !forward_only {
            enc.copy_buffer_to_buffer(&self.result, 0, staging, 0, lay.rel_bytes);
        }
        enc.copy_buffer_to_buffer(&self.logits, 0, staging, lay.logit_off, lay.logit_bytes);
        enc.copy_buffer_to_buffer(&self.targets, 0, staging, lay.target_off, n as u64 * F);
        if let Some(t) = &self.timing {
            mark(&mut enc, &t.queries, base + per_slot - 1);
            let at = slot as u64 * resolve_stride(per_slot);
            enc.resolve_query_set(&t.queries, base..base + per_slot, &t.resolve, at);
            let bytes = timestamp_bytes(per_slot);
            enc.copy_buffer_to_buffer(&t.resolve, at, staging, lay.ts_off, bytes);
        }
        let index = queue.submit([enc.finish()]);
        if let Some(t) = &mut self.timing {
            t.remap[slot] = Some(remap(&t.upload[slot], Some(index.clone())));
        }
        if let Some(err) = pollster::block_on(vscope.pop()) {
            return Err(Error::Gpu(format!("encoding the batch failed: {err}")));
        }
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "out of GPU memory running a batch of {n}: {err}; use a smaller --batch-size"
            )));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        Ok(Pending {
            slot,
            n,
            index,
            mapped: rx,
            timed: self.timing.is_some(),
            forward_only,
        })
    }

    /// Waits for a submitted batch and fills `out` (first n samples of each part); returns the
    /// seconds spent waiting for the GPU.
    pub(crate) fn finish(&mut self, pending: Pending, out: BatchResult<'_>) -> Result<f64> {
        let device = self.ctx.device();
        let n = pending.n;
        let waiting = std::time::Instant::now();
        device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(pending.index),
                timeout: None,
            })
            .map_err(|e| Error::Gpu(format!("waiting for the batch failed: {e}")))?;
        pending
            .mapped
            .recv()
            .map_err(|e| Error::Gpu(format!("reading the batch back failed: {e}")))?
            .map_err(|e| Error::Gpu(format!("reading the batch back failed: {e}")))?;
        let waited = waiting.elapsed().as_secs_f64();
        let lay = self.staging_layout(n);
        let staging = &self.staging[pending.slot];
        {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| Error::Gpu(format!("reading the batch back failed: {e}")))?;
            let bytes: &[u8] = &view;
            let rel = &bytes[..lay.rel_bytes as usize];
            if pending.forward_only {
                let len = out.relevance.len() + rel.len() / 4;
                out.relevance.resize(len, 0.0);
            } else {
                out.relevance.extend_from_slice(bytemuck::cast_slice(rel));
            }
            let lg = &bytes[lay.logit_off as usize..(lay.logit_off + lay.logit_bytes) as usize];
            let lg: &[f32] = bytemuck::cast_slice(lg);
            for (d, s) in out.logits[..n * self.classes].iter_mut().zip(lg) {
                *d = f64::from(*s);
            }
            let tg = &bytes[lay.target_off as usize..lay.target_off as usize + n * 4];
            out.targets[..n].copy_from_slice(bytemuck::cast_slice(tg));
            if let (true, Some(t)) = (pending.timed, &mut self.timing) {
                let end = lay.ts_off + timestamp_bytes(t.per_slot);
                let ns: Vec<f64> = bytes[lay.ts_off as usize..end as usize]
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect::<Vec<u64>>()
                    .windows(2)
                    .map(|w| w[1].saturating_sub(w[0]) as f64 * t.period)
                    .collect();
                if t.kernels {
                    // ns: upload, unpack, each step, read-back.
                    let fw = 1 + self.forward_steps;
                    let stages = [
                        ns[0],
                        ns[1..=fw].iter().sum(),
                        ns[fw + 1..ns.len() - 1].iter().sum(),
                        ns[ns.len() - 1],
                    ];
                    for (total, v) in t.totals.ns.iter_mut().zip(stages) {
                        *total += v;
                    }
                    for (total, v) in t.kernel_ns.iter_mut().zip(&ns[1..ns.len() - 1]) {
                        *total += v;
                    }
                } else {
                    for (total, v) in t.totals.ns.iter_mut().zip(&ns) {
                        *total += v;
                    }
                }
                t.totals.batches += 1;
            }
        }
        staging.unmap();
        Ok(waited)
    }

    /// Waits for a submitted batch and drops its results (after an error elsewhere), so that
    /// its staging buffer is free again.
    pub(crate) fn abandon(&mut self, pending: Pending) {
        let _ = self.ctx.device().poll(wgpu::PollType::Wait {
            submission_index: Some(pending.index),
            timeout: None,
        });
        if let Ok(Ok(())) = pending.mapped.recv() {
            self.staging[pending.slot].unmap();
        }
    }

    /// Where the parts of a batch of n lie in a staging buffer (bytes).
    fn staging_layout(&self, n: usize) -> StagingLayout {
        let cap = self.capacity as u64;
        let logit_off = cap * self.input_len as u64 * F;
        let target_off = logit_off + cap * self.classes as u64 * F;
        StagingLayout {
            rel_bytes: (n * self.input_len) as u64 * F,
            logit_off,
            logit_bytes: (n * self.classes) as u64 * F,
            target_off,
            ts_off: timestamp_offset(target_off + cap * F),
        }
    }

    /// Times the stages of every batch from now on: timestamps after the input upload, the
    /// forward dispatches (with the seed), the relevance dispatches and the read-back copies,
    /// resolved into the staging buffer and read back with the results. The input then goes
    /// through a mapped upload buffer per slot instead of a queue write, so that its copy lies
    /// inside the batch's command buffer. With `kernels`, every dispatch also runs in its own
    /// compute pass with a timestamp at its end, which times each kernel (the pass boundaries
    /// add some GPU time). Returns false (and changes nothing) when the device has no timestamp
    /// queries. Call it with no batch pending.
    pub(crate) fn enable_timing(&mut self, kernels: bool) -> Result<bool> {
        if self.timing.as_ref().is_some_and(|t| t.kernels == kernels) {
            return Ok(true);
        }
        if !self.ctx.timestamps() {
            return Ok(false);
        }
        let per_slot = if kernels {
            kernel_timestamps(self.steps.len())
        } else {
            TIMESTAMPS
        };
        if 2 * per_slot > wgpu::QUERY_SET_MAX_QUERIES {
            return Err(Error::Gpu(format!(
                "the plan has {} dispatches per batch, too many to time each ({} at most)",
                self.steps.len(),
                wgpu::QUERY_SET_MAX_QUERIES / 2 - 4
            )));
        }
        let device = self.ctx.device();
        let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let vscope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let queries = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("batch.timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2 * per_slot,
        });
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("batch.timestamps.resolve"),
            size: 2 * resolve_stride(per_slot),
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let bytes = (self.capacity * self.input_len) as u64 * F;
        let upload = ["upload.0", "upload.1"].map(|label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.max(16).next_multiple_of(16),
                usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: true,
            })
        });
        if let Some(err) = pollster::block_on(vscope.pop()) {
            return Err(Error::Gpu(format!("setting up stage timing failed: {err}")));
        }
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(format!(
                "out of GPU memory setting up stage timing: {err}"
            )));
        }
        self.timing = Some(Timing {
            queries,
            resolve,
            upload,
            remap: [None, None],
            mapped: [true, true],
            period: f64::from(self.ctx.queue().get_timestamp_period()),
            totals: StageTotals::default(),
            kernels,
            per_slot,
            kernel_ns: vec![0.0; 1 + self.steps.len()],
        });
        Ok(true)
    }

    /// The stage times summed since timing was enabled (None: not enabled).
    pub(crate) fn stage_totals(&self) -> Option<StageTotals> {
        self.timing.as_ref().map(|t| t.totals)
    }

    /// The time of each dispatch summed since timing by kernel was enabled (None: not enabled).
    pub(crate) fn kernel_totals(&self) -> Option<KernelTotals> {
        let t = self.timing.as_ref().filter(|t| t.kernels)?;
        let names = std::iter::once(&self.unpack).chain(&self.steps).map(|st| {
            format!(
                "{} {}",
                self.bind_labels[st.bind_group],
                st.kernel.entry_point()
            )
        });
        Some(KernelTotals {
            kernels: names.zip(t.kernel_ns.iter().copied()).collect(),
            batches: t.totals.batches,
        })
    }
}

/// Bytes between the timestamps of the two slots in the resolve buffer.
fn resolve_stride(per_slot: u32) -> u64 {
    timestamp_bytes(per_slot).next_multiple_of(wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT)
}

/// An empty compute pass whose end writes timestamp `index` (after all earlier work).
fn mark(enc: &mut wgpu::CommandEncoder, queries: &wgpu::QuerySet, index: u32) {
    enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some("batch.timestamp"),
        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
            query_set: queries,
            beginning_of_pass_write_index: None,
            end_of_pass_write_index: Some(index),
        }),
    });
}

/// Waits for submission `index` and the map callback it completes.
fn wait_mapped(
    device: &wgpu::Device,
    index: Option<wgpu::SubmissionIndex>,
    mapped: MapReceiver,
    what: &str,
) -> Result<()> {
    device
        .poll(wgpu::PollType::Wait {
            submission_index: index,
            timeout: None,
        })
        .map_err(|e| Error::Gpu(format!("waiting for {what} failed: {e}")))?;
    mapped
        .recv()
        .map_err(|e| Error::Gpu(format!("mapping {what} failed: {e}")))?
        .map_err(|e| Error::Gpu(format!("mapping {what} failed: {e}")))
}

struct StagingLayout {
    rel_bytes: u64,
    logit_off: u64,
    logit_bytes: u64,
    target_off: u64,
    /// Where a timed batch's timestamps lie.
    ts_off: u64,
}

/// A submitted batch whose results are not collected yet (see [`Plan::submit`]).
pub(crate) struct Pending {
    slot: usize,
    n: usize,
    index: wgpu::SubmissionIndex,
    mapped: MapReceiver,
    /// Whether the batch wrote timestamps.
    timed: bool,
    /// Whether it ran the forward pass alone (no relevance was copied back).
    forward_only: bool,
}

impl Pending {
    /// Samples in the batch.
    pub(crate) fn len(&self) -> usize {
        self.n
    }
}
