//! The shader registry: one WGSL file per layer family (`shaders/*.wgsl`, compiled in with
//! `include_str!`), the typed entry points of each, their binding lists, and the `#[repr(C)]`
//! twins of the WGSL uniform structs that carry shapes and rule modifiers.

use bytemuck::{Pod, Zeroable};

use crate::lrp::{ForwardZ, InputMod, ParamMod, Rule};
use crate::{Error, Result};

/// Longest run of a reduction one invocation performs (split-K chunk). Longer reductions are cut
/// into chunks of this size, summed by a reduce kernel, so no invocation loops more than a few
/// thousand times (llvmpipe stops any invocation after 65,535 loop iterations).
pub const CHUNK: u32 = 1024;

/// Most chunks a reduce kernel sums (so reductions up to `CHUNK * MAX_CHUNKS` values).
pub const MAX_CHUNKS: u32 = 16_384;

/// Most positions in a pooling window, and most logits per sample (per-invocation loop bounds).
pub const MAX_WINDOW: u32 = 16_384;

/// Channels one invocation of the Conv2d partial kernels computes (`BLOCK` in conv2d.wgsl):
/// forward_partial and z_partial take a block of output channels, c_partial of input channels.
pub const CONV_BLOCK: u32 = 4;

/// Pixels of one row that one invocation of the Conv2d forward_partial and z_partial kernels
/// computes (`STRIP` in conv2d.wgsl), for its block of output channels; c_partial too, for its
/// block of input channels, where the horizontal stride is 1.
pub const CONV_STRIP: u32 = 4;

// The single-channel c_partial gather puts the rule's terms (at most 4, `RuleParams`) in the
// lanes of a block.
const _: () = assert!(CONV_BLOCK == 4);

/// Samples one invocation of the Dense partial kernels computes (`BLOCK` in dense.wgsl), so
/// each weight is loaded once per block of samples.
pub const DENSE_BLOCK: u32 = 4;

/// Invocations per workgroup of every kernel (the WGSL files hard-code 64 too).
pub const WORKGROUP: u32 = 64;

/// One WGSL source file: a layer family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    Dense,
    Conv2d,
    Pooling,
    Elementwise,
    Input,
}

/// How a binding is declared (all in group 0, visible to compute).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingKind {
    Uniform,
    StorageRead,
    StorageReadWrite,
}

impl Shader {
    /// Every shader.
    pub const ALL: [Shader; 5] = [
        Shader::Dense,
        Shader::Conv2d,
        Shader::Pooling,
        Shader::Elementwise,
        Shader::Input,
    ];

    /// The file name under `shaders/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Shader::Dense => "dense.wgsl",
            Shader::Conv2d => "conv2d.wgsl",
            Shader::Pooling => "pooling.wgsl",
            Shader::Elementwise => "elementwise.wgsl",
            Shader::Input => "input.wgsl",
        }
    }

    /// Short label used for wgpu objects.
    pub fn label(self) -> &'static str {
        match self {
            Shader::Dense => "dense",
            Shader::Conv2d => "conv2d",
            Shader::Pooling => "pooling",
            Shader::Elementwise => "elementwise",
            Shader::Input => "input",
        }
    }

    /// The WGSL source.
    pub fn source(self) -> &'static str {
        match self {
            Shader::Dense => include_str!("../../shaders/dense.wgsl"),
            Shader::Conv2d => include_str!("../../shaders/conv2d.wgsl"),
            Shader::Pooling => include_str!("../../shaders/pooling.wgsl"),
            Shader::Elementwise => include_str!("../../shaders/elementwise.wgsl"),
            Shader::Input => include_str!("../../shaders/input.wgsl"),
        }
    }

    /// The bindings of group 0, in binding order (see the comment atop each file).
    pub fn bindings(self) -> &'static [BindingKind] {
        use BindingKind::{StorageRead as R, StorageReadWrite as W, Uniform as U};
        match self {
            // P, x, wb, y, part, r_in, s, r_out
            Shader::Dense => &[U, R, R, W, W, R, W, W],
            // P, x, wb, y, part, r_in, s, r_out, wv (the weights blocked by CONV_BLOCK channels),
            // pool_arg (the arg-max of a max pooling whose relevance step is fused)
            Shader::Conv2d => &[U, R, R, W, W, R, W, W, R, R],
            // P, x, y, arg, r_in, s, r_out
            Shader::Pooling => &[U, R, W, W, R, W, W],
            // P, x, y, r_in, r_out, targets
            Shader::Elementwise => &[U, R, W, R, W, W],
            // P, pixels, lut, x
            Shader::Input => &[U, R, R, W],
        }
    }

    /// The uniform params struct of the file: its WGSL name and the size of its Rust twin.
    pub fn params(self) -> (&'static str, usize) {
        match self {
            Shader::Dense => ("DenseParams", std::mem::size_of::<DenseParams>()),
            Shader::Conv2d => ("ConvParams", std::mem::size_of::<ConvParams>()),
            Shader::Pooling => ("PoolParams", std::mem::size_of::<PoolParams>()),
            Shader::Elementwise => (
                "ElementwiseParams",
                std::mem::size_of::<ElementwiseParams>(),
            ),
            Shader::Input => ("InputParams", std::mem::size_of::<InputParams>()),
        }
    }

    /// Every (WGSL struct name, Rust size) pair the file shares with Rust.
    pub fn structs(self) -> Vec<(&'static str, usize)> {
        let mut v = vec![self.params()];
        if matches!(self, Shader::Dense | Shader::Conv2d) {
            v.push(("RuleParams", std::mem::size_of::<RuleParams>()));
        }
        v
    }
}

/// Entry points of dense.wgsl and conv2d.wgsl (same names in both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinearEntry {
    ForwardPartial,
    ForwardReduce,
    ZPartial,
    SReduce,
    CPartial,
    RReduce,
}

/// Entry points of pooling.wgsl.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolEntry {
    MaxForward,
    MaxRelevance,
    MaxRelevanceTiled,
    AvgForward,
    AvgS,
    AvgRelevance,
    AvgRelevanceTiled,
}

/// Entry points of elementwise.wgsl.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ElementwiseEntry {
    ReluForward,
    ReluGradient,
    Seed,
    Finalize,
}

/// Entry points of input.wgsl.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputEntry {
    UnpackU8,
}

/// One compute pipeline: a shader file and one of its entry points (the pipeline cache key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    Dense(LinearEntry),
    Conv2d(LinearEntry),
    Pooling(PoolEntry),
    Elementwise(ElementwiseEntry),
    Input(InputEntry),
}

impl LinearEntry {
    /// Every entry point.
    pub const ALL: [LinearEntry; 6] = [
        LinearEntry::ForwardPartial,
        LinearEntry::ForwardReduce,
        LinearEntry::ZPartial,
        LinearEntry::SReduce,
        LinearEntry::CPartial,
        LinearEntry::RReduce,
    ];

    fn name(self) -> &'static str {
        match self {
            LinearEntry::ForwardPartial => "forward_partial",
            LinearEntry::ForwardReduce => "forward_reduce",
            LinearEntry::ZPartial => "z_partial",
            LinearEntry::SReduce => "s_reduce",
            LinearEntry::CPartial => "c_partial",
            LinearEntry::RReduce => "r_reduce",
        }
    }
}

impl Kernel {
    /// Every kernel of every shader.
    pub fn all() -> Vec<Kernel> {
        let mut v = vec![];
        for e in LinearEntry::ALL {
            v.push(Kernel::Dense(e));
            v.push(Kernel::Conv2d(e));
        }
        for e in [
            PoolEntry::MaxForward,
            PoolEntry::MaxRelevance,
            PoolEntry::MaxRelevanceTiled,
            PoolEntry::AvgForward,
            PoolEntry::AvgS,
            PoolEntry::AvgRelevance,
            PoolEntry::AvgRelevanceTiled,
        ] {
            v.push(Kernel::Pooling(e));
        }
        for e in [
            ElementwiseEntry::ReluForward,
            ElementwiseEntry::ReluGradient,
            ElementwiseEntry::Seed,
            ElementwiseEntry::Finalize,
        ] {
            v.push(Kernel::Elementwise(e));
        }
        v.push(Kernel::Input(InputEntry::UnpackU8));
        v
    }

    /// The shader file the kernel lives in.
    pub fn shader(self) -> Shader {
        match self {
            Kernel::Dense(_) => Shader::Dense,
            Kernel::Conv2d(_) => Shader::Conv2d,
            Kernel::Pooling(_) => Shader::Pooling,
            Kernel::Elementwise(_) => Shader::Elementwise,
            Kernel::Input(_) => Shader::Input,
        }
    }

    /// The WGSL entry point name.
    pub fn entry_point(self) -> &'static str {
        match self {
            Kernel::Dense(e) | Kernel::Conv2d(e) => e.name(),
            Kernel::Pooling(e) => match e {
                PoolEntry::MaxForward => "max_forward",
                PoolEntry::MaxRelevance => "max_relevance",
                PoolEntry::MaxRelevanceTiled => "max_relevance_tiled",
                PoolEntry::AvgForward => "avg_forward",
                PoolEntry::AvgS => "avg_s",
                PoolEntry::AvgRelevance => "avg_relevance",
                PoolEntry::AvgRelevanceTiled => "avg_relevance_tiled",
            },
            Kernel::Elementwise(e) => match e {
                ElementwiseEntry::ReluForward => "relu_forward",
                ElementwiseEntry::ReluGradient => "relu_gradient",
                ElementwiseEntry::Seed => "seed",
                ElementwiseEntry::Finalize => "finalize",
            },
            Kernel::Input(InputEntry::UnpackU8) => "unpack_u8",
        }
    }

    /// Samples one invocation handles (the dispatch covers ceil(n / this) blocks of samples).
    pub fn sample_block(self) -> u32 {
        match self {
            Kernel::Dense(
                LinearEntry::ForwardPartial | LinearEntry::ZPartial | LinearEntry::CPartial,
            ) => DENSE_BLOCK,
            // one invocation expands one word of four bytes
            Kernel::Input(InputEntry::UnpackU8) => 4,
            _ => 1,
        }
    }

    /// Label for the pipeline, e.g. "conv2d.z_partial".
    pub fn label(self) -> String {
        format!("{}.{}", self.shader().label(), self.entry_point())
    }
}

/// Values of a kernel's pipeline-overridable constants (WGSL `override`): with the kernel, the
/// key of a compute pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Specialisation {
    /// The kernel has no overridable constants.
    #[default]
    None,
    /// conv2d.wgsl: the layer's geometry (see [`ConvSpec`]).
    Conv(ConvSpec),
}

impl Specialisation {
    /// The constants by WGSL name, as wgpu takes them.
    pub fn constants(&self) -> Vec<(&'static str, f64)> {
        match self {
            Specialisation::None => vec![],
            Specialisation::Conv(c) => c.constants(),
        }
    }
}

/// The overridable constants of conv2d.wgsl: every field of [`ConvParams`] that is fixed for a
/// layer of a plan (all but the batch size, the bias offset, `z_const` and the rule's
/// coefficients), the numbers of rule terms and passes, whether z' is kept, and the window of a
/// max pooling whose relevance step is fused, in the order of
/// [`ConvSpec::NAMES`]. The kernels read these instead of the uniform's copies, so their loops
/// and index arithmetic compile to constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConvSpec([u32; 25]);

impl ConvSpec {
    /// The WGSL names of the constants, in order.
    pub const NAMES: [&'static str; 25] = [
        "C",
        "H",
        "W",
        "OC",
        "OH",
        "OW",
        "KH",
        "KW",
        "STRIDE_Y",
        "STRIDE_X",
        "PAD_TOP",
        "PAD_LEFT",
        "C_PER_CHUNK",
        "OC_PER_CHUNK",
        "CHUNKS_IN",
        "CHUNKS_OUT",
        "MODE",
        "RELU",
        "TERMS",
        "PASSES",
        "KEEP_Z",
        "POOL_KH",
        "POOL_KW",
        "POOL_OH",
        "POOL_OW",
    ];

    /// The constants of the layer whose uniform is `p`.
    pub fn of(p: &ConvParams) -> ConvSpec {
        ConvSpec([
            p.c,
            p.h,
            p.w,
            p.oc,
            p.oh,
            p.ow,
            p.kh,
            p.kw,
            p.stride_y,
            p.stride_x,
            p.pad_top,
            p.pad_left,
            p.c_per_chunk,
            p.oc_per_chunk,
            p.chunks_in,
            p.chunks_out,
            p.mode,
            p.relu,
            p.rule.term_layout[0],
            p.rule.extra[3] as u32,
            p.keep_z,
            p.pool_kh,
            p.pool_kw,
            p.pool_oh,
            p.pool_ow,
        ])
    }

    /// The constants by their WGSL names.
    pub fn constants(&self) -> Vec<(&'static str, f64)> {
        Self::NAMES
            .iter()
            .zip(self.0)
            .map(|(name, v)| (*name, f64::from(v)))
            .collect()
    }
}

/// The rule's modifier terms as the linear kernels read them (WGSL `RuleParams`): up to four
/// terms (vector components) over up to two passes, each modifier a linear combination of v,
/// max(0,v), min(0,v), v^2 and 1, so the kernels never branch on the rule. The kernels loop over
/// the `term_layout[0]` terms in use only, and read the weight modifiers precomputed at plan time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct RuleParams {
    /// f(x) = x_lin x + x_pos max(0,x) + x_neg min(0,x) + x_one, per term
    pub x_lin: [f32; 4],
    pub x_pos: [f32; 4],
    pub x_neg: [f32; 4],
    pub x_one: [f32; 4],
    /// sign * g(w) = w_lin w + w_pos max(0,w) + w_neg min(0,w) + w_sq w^2 + w_one, per term
    pub w_lin: [f32; 4],
    pub w_pos: [f32; 4],
    pub w_neg: [f32; 4],
    pub w_sq: [f32; 4],
    pub w_one: [f32; 4],
    /// coefficient of each term's pass
    pub term_coef: [f32; 4],
    /// 1 where the term belongs to pass 1
    pub term_pass1: [f32; 4],
    /// bias modifier (lin, pos, neg, sq) of pass 0 and of pass 1
    pub bias0: [f32; 4],
    pub bias1: [f32; 4],
    /// bias constant of pass 0 and 1, eps, number of passes
    pub extra: [f32; 4],
    /// number of terms (the kernels loop over exactly these), then where the plan put the
    /// precomputed modified weights sign_k g_k(W) in the weight buffer: offset of term 0, values
    /// per term (term k starts at offset + k * stride), and offset of the transposed copies
    /// (Dense only; 0 for Conv2d)
    pub term_layout: [u32; 4],
}

/// Coefficients (v, max(0,v), min(0,v), 1) of an input modifier.
fn input_coefficients(m: InputMod) -> [f32; 4] {
    match m {
        InputMod::Identity => [1.0, 0.0, 0.0, 0.0],
        InputMod::Positive => [0.0, 1.0, 0.0, 0.0],
        InputMod::Negative => [0.0, 0.0, 1.0, 0.0],
        InputMod::Ones => [0.0, 0.0, 0.0, 1.0],
        InputMod::Constant(c) => [0.0, 0.0, 0.0, c as f32],
    }
}

/// Coefficients (v, max(0,v), min(0,v), v^2, 1) of a weight or bias modifier.
fn param_coefficients(m: ParamMod) -> [f32; 5] {
    match m {
        ParamMod::Identity => [1.0, 0.0, 0.0, 0.0, 0.0],
        ParamMod::Positive => [0.0, 1.0, 0.0, 0.0, 0.0],
        ParamMod::Negative => [0.0, 0.0, 1.0, 0.0, 0.0],
        ParamMod::Square => [0.0, 0.0, 0.0, 1.0, 0.0],
        ParamMod::Ones => [0.0, 0.0, 0.0, 0.0, 1.0],
        ParamMod::Gamma(g) => [1.0, g as f32, 0.0, 0.0, 0.0],
        ParamMod::Zero => [0.0; 5],
    }
}

impl RuleParams {
    /// Flattens a rule's passes into at most four terms over at most two passes; on a layer
    /// whose input is a ReLU output (`nonnegative_input`), without the terms that vanish there
    /// ([`Rule::passes_on`]). Within a pass, the terms whose input modifier is a constant c (z^B's
    /// L and H, the 1 of w^2 and flat) become one term with f = 1 and the weight modifier
    /// sum_t c_t sign_t g_t(w): the same z' and relevance with fewer terms to loop over (z^B
    /// goes from three to two).
    pub fn from_rule(rule: &Rule, nonnegative_input: bool) -> Result<Self> {
        let passes = rule.passes_on(nonnegative_input);
        let mut p = RuleParams::default();
        let mut k = 0;
        for (pi, pass) in passes.iter().enumerate() {
            // Terms with a data-dependent input, then at most one merged constant-input term.
            let mut merged: Option<[f32; 5]> = None;
            let mut slots: Vec<([f32; 4], [f32; 5])> = vec![];
            for t in &pass.terms {
                let sign = t.sign as f32;
                let g = param_coefficients(t.weight).map(|v| v * sign);
                match t.input {
                    InputMod::Ones | InputMod::Constant(_) => {
                        let c = input_coefficients(t.input)[3];
                        let acc = merged.get_or_insert([0.0; 5]);
                        for (a, v) in acc.iter_mut().zip(g) {
                            *a += c * v;
                        }
                    }
                    input => slots.push((input_coefficients(input), g)),
                }
            }
            slots.extend(merged.map(|g| ([0.0, 0.0, 0.0, 1.0], g)));
            for (f, g) in slots {
                if k == 4 {
                    return Err(Error::Gpu(format!(
                        "rule {rule} needs more than 4 terms; the GPU kernels take at most 4"
                    )));
                }
                (p.x_lin[k], p.x_pos[k], p.x_neg[k], p.x_one[k]) = (f[0], f[1], f[2], f[3]);
                (p.w_lin[k], p.w_pos[k], p.w_neg[k], p.w_sq[k], p.w_one[k]) =
                    (g[0], g[1], g[2], g[3], g[4]);
                p.term_coef[k] = pass.coefficient as f32;
                p.term_pass1[k] = pi as f32;
                k += 1;
            }
            let [a, b, c, d, e] = param_coefficients(pass.bias);
            let bias = if pi == 0 { &mut p.bias0 } else { &mut p.bias1 };
            *bias = [a, b, c, d];
            p.extra[pi] = e;
        }
        if passes.is_empty() || passes.len() > 2 {
            return Err(Error::Gpu(format!(
                "rule {rule} has {} passes; the GPU kernels take 1 or 2",
                passes.len()
            )));
        }
        p.extra[2] = rule.eps() as f32;
        p.extra[3] = passes.len() as f32;
        p.term_layout[0] = k as u32;
        Ok(p)
    }

    /// The terms of the plain gradient: R_i = sum_j w_ij R_j (one term (1, w), no division).
    pub fn gradient() -> Self {
        let mut p = RuleParams::default();
        p.x_one[0] = 1.0;
        p.w_lin[0] = 1.0;
        p.term_coef[0] = 1.0;
        p.extra[3] = 1.0;
        p.term_layout[0] = 1;
        p
    }

    /// The terms whose input modifier is a constant (f = x_one): their share of z' does not
    /// depend on the data, so the plan precomputes it.
    pub fn constant_terms(&self) -> Vec<usize> {
        (0..self.term_layout[0] as usize)
            .filter(|&t| self.x_lin[t] == 0.0 && self.x_pos[t] == 0.0 && self.x_neg[t] == 0.0)
            .collect()
    }

    /// sign_k g_k(w) of term k (the kernels read these precomputed, see `term_layout`).
    pub fn weight_mod(&self, k: usize, w: f32) -> f32 {
        self.w_lin[k] * w
            + self.w_pos[k] * w.max(0.0)
            + self.w_neg[k] * w.min(0.0)
            + self.w_sq[k] * (w * w)
            + self.w_one[k]
    }
}

/// The shaders' `keep_z` for a layer under `rule` (see "Kept z'" in dense.wgsl and conv2d.wgsl):
/// 1 for [`ForwardZ::Plain`] (the forward's own sum), 2 for [`ForwardZ::Other`] (a second sum
/// with the data term's weights, term 0 of [`RuleParams::from_rule`], which puts data terms
/// first), 3 for [`ForwardZ::Split`] (two more sums, with terms 0 and 1's weights, w+ and w-; a
/// pair per output, one per pass), 0 otherwise.
pub fn kept_z(rule: &Rule, nonnegative_input: bool) -> u32 {
    match rule.forward_z(nonnegative_input) {
        ForwardZ::None => 0,
        ForwardZ::Plain => 1,
        ForwardZ::Other => 2,
        ForwardZ::Split => 3,
    }
}

/// WGSL `DenseParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct DenseParams {
    pub n: u32,
    pub inputs: u32,
    pub outputs: u32,
    pub chunk: u32,
    pub chunks_in: u32,
    pub chunks_out: u32,
    pub bias_offset: u32,
    /// 0 LRP, 1 gradient
    pub mode: u32,
    /// 1: the forward pass applies the following ReLU layer (fused)
    pub relu: u32,
    /// 0, or 1 + the offset in the weight buffer of the constant-input terms' share of z',
    /// precomputed per (output, pass)
    pub z_const: u32,
    /// 1, 2 or 3: the forward pass keeps the data terms' shares of z' for the relevance pass
    /// (dense.wgsl "Kept z'"; [`kept_z`])
    pub keep_z: u32,
    pub pad2: u32,
    pub rule: RuleParams,
}

/// WGSL `ConvParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct ConvParams {
    pub n: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub oc: u32,
    pub oh: u32,
    pub ow: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride_y: u32,
    pub stride_x: u32,
    pub pad_top: u32,
    pub pad_left: u32,
    /// input channels per chunk of the receptive field
    pub c_per_chunk: u32,
    /// output channels per chunk of the transposed reduction
    pub oc_per_chunk: u32,
    pub chunks_in: u32,
    pub chunks_out: u32,
    pub bias_offset: u32,
    /// 0 LRP, 1 gradient
    pub mode: u32,
    /// 1: the forward pass applies the following ReLU layer (fused)
    pub relu: u32,
    /// 0, or 1 + the offset in the blocked weights (vec4s) of the constant-input terms' share
    /// of z', precomputed per (output-channel block, output pixel, pass)
    pub z_const: u32,
    /// 1, 2 or 3: the forward pass keeps the data terms' shares of z' for the relevance pass
    /// (conv2d.wgsl "Kept z'"; [`kept_z`])
    pub keep_z: u32,
    /// The window (kh, kw) and output size (oh, ow) of the max pooling right after the layer
    /// (after its fused ReLU) whose relevance step the layer's relevance pass takes over, its
    /// windows tiling the layer's output; all 0 without (conv2d.wgsl "Fused max pooling")
    pub pool_kh: u32,
    pub pool_kw: u32,
    pub pool_oh: u32,
    pub pool_ow: u32,
    pub pad1: u32,
    pub pad2: u32,
    pub rule: RuleParams,
}

/// WGSL `PoolParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct PoolParams {
    pub n: u32,
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub oh: u32,
    pub ow: u32,
    pub kh: u32,
    pub kw: u32,
    pub stride_y: u32,
    pub stride_x: u32,
    pub pad_top: u32,
    pub pad_left: u32,
    /// 0 real positions, 1 kernel area, 2 none (sum pooling)
    pub divisor: u32,
    /// 0 LRP, 1 gradient
    pub mode: u32,
    pub pad0: u32,
    pub pad1: u32,
}

impl PoolParams {
    /// Where the windows tile the input (kernel = stride, no padding at the top or left, as
    /// pooling.wgsl's `max_relevance_tiled` and `avg_relevance_tiled` need): the tiles per sample, `c * ceil(h / kh) *
    /// ceil(w / kw)`.
    pub fn tiles(&self) -> Option<u64> {
        let tiles = self.kh == self.stride_y
            && self.kw == self.stride_x
            && self.pad_top == 0
            && self.pad_left == 0;
        tiles.then(|| {
            u64::from(self.c)
                * u64::from(self.h.div_ceil(self.kh))
                * u64::from(self.w.div_ceil(self.kw))
        })
    }
}

/// WGSL `ElementwiseParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct ElementwiseParams {
    pub n: u32,
    pub len: u32,
    pub mode: u32,
    pub flag: u32,
}

/// WGSL `InputParams`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct InputParams {
    pub n: u32,
    pub len: u32,
    pub pad0: u32,
    pub pad1: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_fits_the_kernels() {
        let rules = [
            Rule::Zero,
            Rule::Epsilon(0.25),
            Rule::ZPlus,
            Rule::WSquare,
            Rule::ZBox {
                low: -1.0,
                high: 2.0,
            },
            Rule::Flat,
            Rule::Gamma(0.25),
            Rule::AlphaBeta {
                alpha: 2.0,
                beta: 1.0,
            },
        ];
        for (rule, nonnegative) in rules.into_iter().flat_map(|r| [(r, false), (r, true)]) {
            let p = RuleParams::from_rule(&rule, nonnegative).unwrap();
            let passes = rule.passes_on(nonnegative);
            assert_eq!(p.extra[3] as usize, passes.len(), "{rule}");
            assert_eq!(p.extra[2], rule.eps() as f32);
            let k = p.term_layout[0] as usize;
            let constant =
                |t: &crate::lrp::Term| matches!(t.input, InputMod::Ones | InputMod::Constant(_));
            // At most one constant-input term per pass: z^B needs 2, not 3.
            let want_terms: usize = passes
                .iter()
                .map(|q| {
                    q.terms.iter().filter(|t| !constant(t)).count()
                        + usize::from(q.terms.iter().any(constant))
                })
                .sum();
            assert_eq!(k, want_terms, "{rule} {nonnegative}");
            // Per pass, the kernels' terms give the same sum_t sign f_t(x) g_t(w) as the rule's
            // for every x and w (so the same z' and relevance), with the pass's coefficient.
            let xs: &[f64] = if nonnegative {
                &[0.0, 0.5, 2.0]
            } else {
                &[-1.5, -0.25, 0.0, 0.5, 2.0]
            };
            for (pi, pass) in passes.iter().enumerate() {
                let in_pass: Vec<usize> =
                    (0..k).filter(|&j| p.term_pass1[j] as usize == pi).collect();
                for &x in xs {
                    for w in [-1.5f64, -0.25, 0.0, 0.5, 2.0] {
                        let want: f64 = pass
                            .terms
                            .iter()
                            .map(|t| t.sign * t.input.apply(x) * t.weight.apply(w))
                            .sum();
                        let got: f64 = in_pass
                            .iter()
                            .map(|&j| {
                                let f = p.x_lin[j] as f64 * x
                                    + p.x_pos[j] as f64 * x.max(0.0)
                                    + p.x_neg[j] as f64 * x.min(0.0)
                                    + p.x_one[j] as f64;
                                f * p.weight_mod(j, w as f32) as f64
                            })
                            .sum();
                        assert!(
                            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                            "{rule} pass {pi} at x {x}, w {w}: {got} vs {want}"
                        );
                    }
                }
                for &j in &in_pass {
                    assert_eq!(p.term_coef[j] as f64, pass.coefficient, "{rule}");
                }
            }
        }
    }

    #[test]
    fn kernels_are_distinct_and_labelled() {
        let all = Kernel::all();
        let labels: std::collections::HashSet<String> = all.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), all.len());
    }
}
