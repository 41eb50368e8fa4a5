// conv2d.wgsl: 2-D convolution (group 1, dilation 1, any stride and zero padding), forward and
// relevance (every LRP rule as modifier terms, and the gradient used by the baselines).
//
// Bindings (group 0):
//   0 P       uniform ConvParams: shapes, window, chunking, mode and the rule's modifier terms
//   1 x       storage read        layer input, [n, c, h, w]
//   2 wb      storage read        W [oc, c, kh, kw] row-major, b [oc] at P.bias_offset
//   3 y       storage read_write  layer output, [n, oc, oh, ow]                   (forward)
//   4 part    storage read_write  split-K partial sums, vec4 per (n, chunk, unit)  (long reductions)
//   5 r_in    storage read        upper relevance (or gradient), [n, oc, oh, ow]
//   6 s       storage read_write  s = R / stab(z') per pass, [n, oc, oh, ow] (two passes: the
//                                 pair per unit; see s_get); with KEEP_Z, first the forward's
//                                 sum of x w
//   7 r_out   storage read_write  lower relevance (or gradient), [n, c, h, w]
//   8 wv      storage read        the weights blocked by 4 channels (vec4, zero-padded), so each
//                                 blocked multiply-add loads its 4 weights at once: per output-
//                                 channel block ob [c, kh, kw] for the plain weights, then for
//                                 each term's modified weights; from P.rule.term_layout.w, per
//                                 term and input-channel block cb [oc, kh, kw] modified weights,
//                                 or, for a single input channel (c = 1), one block [oc, kh, kw]
//                                 whose lane t holds term t's modified weight; these (c_partial's)
//                                 carry their term's pass coefficient: coef_t sign_t g_t(W)
//   9 pool_arg storage read       with a fused max pooling (POOL_KH > 0): its arg-max, the flat
//                                 index within the sample of each window's winner, [n, oc,
//                                 pool_oh, pool_ow]; r_in is then the pooling's upper relevance
// Dispatch: 1-D over invocations, 64 per workgroup, folded into (x, y) workgroups when there are
// more than the per-dimension limit; index = gid.x + gid.y * num_workgroups.x * 64.
//   forward_partial, z_partial: n * chunks_in * ceil(oc/4) * oh * ceil(ow/4) invocations; each
//       computes 4 output channels of a strip of 4 pixels of one output row over the receptive
//       field of c_per_chunk input channels; chunks_in = 1: writes the result directly
//   forward_reduce, s_reduce:   n * (oc*oh*ow) invocations (only when chunks_in > 1; s_reduce
//                               also for the gradient and, instead of z_partial, for kept z')
//   c_partial:                  n * chunks_out * ceil(c/4) * h * ceil(w/4) invocations (stride_x
//       = 1; h * w otherwise); each gathers, for 4 input channels of a strip of 4 pixels of one
//       input row (of one pixel), over the kernel positions of oc_per_chunk output channels that
//       reach the pixels; chunks_out = 1: writes R directly
//   r_reduce:                   n * (c*h*w) invocations (only when chunks_out > 1)
// The host sizes the chunks so that every invocation loops over at most max(1024, kh*kw) kernel
// positions per term of the rule (kh*kw times the terms <= 16,384), or over the chunks, so no
// invocation comes near llvmpipe's 65,535-iteration cap. Padding positions are skipped: f(x) = 0 there for
// every modifier, so they take no part in z' and receive no relevance.
//
// Rule terms: as in dense.wgsl (up to four (pass, f, g, sign) terms over up to two passes).
// Modifiers are branch-free: linear combinations of v, max(0,v), min(0,v), v^2 and 1 with
// per-term coefficients from the uniform (e.g. zplus: f = max(0,x), g = max(0,w); gamma:
// g = w + G max(0,w)). The weight modifiers sign_k g_k(W) are precomputed by the host (blocked
// in wv); the kernels loop over the P.rule.term_layout.x terms in use only. Split-K partials hold the
// per-pass sums (z_partial: (z'_0, z'_1)) or the partial R (c_partial, in .x). A ReLU right
// after the layer is applied by the forward pass when RELU = 1.
// mode 0: LRP; mode 1: gradient (s = R, no division; the terms are set to (one, w)).
//
// Kept z' (KEEP_Z = 1, 2 or 3, LRP only): where the rule's one pass has a single data-dependent
// term and its input modifier is x itself, that term's share of z' is a sum over the same
// inputs as the forward pass's. The forward pass then keeps it (before bias and ReLU) as s, in
// an s buffer of the layer's own: with KEEP_Z = 1 (the term is the plain x w: z^B, LRP-0,
// epsilon) its own sum, with KEEP_Z = 2 (another weight: z+ and gamma on a ReLU output) a
// second sum with the term's weights from the same input loads. The relevance pass runs
// s_reduce, which adds the constant terms' share (P.z_const) and the bias modifier, instead
// of z_partial's second pass over the inputs. With KEEP_Z = 3 (alpha-beta on a ReLU output:
// x w+ in pass 0, x w- in pass 1, terms 0 and 1) the forward pass sums x w+ and x w- beside x w
// and keeps the two as the pair of s. (Not x w as their sum: with the positive and negative
// parts summed apart, the rounding of the larger part lands on x w, and the forward's output
// would depend on the rule.)
//
// Fused max pooling (POOL_KH > 0, LRP only): where a max pooling whose windows tile this layer's
// output follows it (after the fused ReLU, whose relevance is the identity), LRP gives each
// window's relevance to its winner and 0 to the other outputs. The s step (z_partial or s_reduce)
// then reads R_j of output j through the pooling's arg-max (`upper_r`) instead of a relevance
// buffer written by the pooling, which runs no relevance step: one pass over this layer's output
// fewer.

struct RuleParams {
    // Input modifier of term k (component k): f(x) = x_lin x + x_pos max(0,x) + x_neg min(0,x) + x_one
    x_lin: vec4<f32>,
    x_pos: vec4<f32>,
    x_neg: vec4<f32>,
    x_one: vec4<f32>,
    // Weight modifier of term k times its sign:
    // g(w) = w_lin w + w_pos max(0,w) + w_neg min(0,w) + w_sq w^2 + w_one
    w_lin: vec4<f32>,
    w_pos: vec4<f32>,
    w_neg: vec4<f32>,
    w_sq: vec4<f32>,
    w_one: vec4<f32>,
    // Coefficient of the pass of term k
    term_coef: vec4<f32>,
    // 1 where term k belongs to pass 1, 0 for pass 0
    term_pass1: vec4<f32>,
    // Bias modifier of pass 0 and of pass 1: (lin, pos, neg, sq)
    bias0: vec4<f32>,
    bias1: vec4<f32>,
    // x: bias constant of pass 0, y: of pass 1, z: eps, w: number of passes
    extra: vec4<f32>,
    // x: number of terms in use; y, z: unused here (Dense's weight layout); w: offset in wv
    // (vec4s) of the input-channel-blocked modified weights
    term_layout: vec4<u32>,
}

struct ConvParams {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    oc: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride_y: u32,
    stride_x: u32,
    pad_top: u32,
    pad_left: u32,
    // input channels per chunk of the receptive field, output channels per chunk of the
    // transposed reduction
    c_per_chunk: u32,
    oc_per_chunk: u32,
    chunks_in: u32,
    chunks_out: u32,
    bias_offset: u32,
    mode: u32,
    // 1: the forward pass applies the following ReLU layer (fused; the plan skips that layer)
    relu: u32,
    // 0, or 1 + the offset in wv of the constant-input terms' share of z' (their f is a constant,
    // so it is the same for every sample): per (output-channel block, output pixel), the vec4 of
    // pass 0 then that of pass 1. z_partial then skips those terms.
    z_const: u32,
    // 1, 2 or 3: kept z' (the kernels read the KEEP_Z override)
    keep_z: u32,
    // window and output size of the fused max pooling (0 without; the kernels read the
    // POOL_* overrides)
    pool_kh: u32,
    pool_kw: u32,
    pool_oh: u32,
    pool_ow: u32,
    pad1: u32,
    pad2: u32,
    rule: RuleParams,
}

// Specialisation: the layer's geometry, chunking, mode, fused ReLU, numbers of rule terms and
// passes, and kept z' mode are pipeline-overridable constants, set per layer by the plan from the
// same values as the uniform (src/gpu/shader.rs `ConvSpec`), so loop bounds, strides and the
// divisions of the index arithmetic are constants that the driver's compiler unrolls and folds.
// The kernels read them here, never from P's copies of them; P.n (the batch), the bias offset,
// z_const and the rule's coefficients stay in the uniform.
override C: u32;
override H: u32;
override W: u32;
override OC: u32;
override OH: u32;
override OW: u32;
override KH: u32;
override KW: u32;
override STRIDE_Y: u32;
override STRIDE_X: u32;
override PAD_TOP: u32;
override PAD_LEFT: u32;
override C_PER_CHUNK: u32;
override OC_PER_CHUNK: u32;
override CHUNKS_IN: u32;
override CHUNKS_OUT: u32;
override MODE: u32;
override RELU: u32;
override TERMS: u32;
override PASSES: u32;
override KEEP_Z: u32;
override POOL_KH: u32;
override POOL_KW: u32;
override POOL_OH: u32;
override POOL_OW: u32;

@group(0) @binding(0) var<uniform> P: ConvParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wb: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> r_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> s: array<f32>;
@group(0) @binding(7) var<storage, read_write> r_out: array<f32>;
@group(0) @binding(8) var<storage, read> wv: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> pool_arg: array<u32>;

// s of output unit nj (flat over samples): pass 0's and, with two passes, pass 1's. A single-
// pass rule (all but alpha-beta) stores one value per unit, so its s moves half the bytes.
fn s_get(nj: u32) -> vec2<f32> {
    if (PASSES > 1u) {
        return vec2<f32>(s[2u * nj], s[2u * nj + 1u]);
    }
    return vec2<f32>(s[nj], 0.0);
}

fn s_set(nj: u32, v: vec2<f32>) {
    if (PASSES > 1u) {
        s[2u * nj] = v.x;
        s[2u * nj + 1u] = v.y;
    } else {
        s[nj] = v.x;
    }
}

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

// The forward output, with the fused ReLU when RELU = 1.
fn activation(v: f32) -> f32 {
    return select(v, max(v, 0.0), RELU == 1u);
}

fn stab(d: f32, eps: f32) -> f32 {
    return select(d - eps, d + eps, d >= 0.0);
}

// Number of terms the rule uses; the relevance kernels loop over exactly these.
fn terms() -> u32 {
    return min(TERMS, 4u);
}

// Whether term t's input modifier is a constant (no data): its share of z' is in P.z_const.
fn precomputed(t: u32) -> bool {
    let r = P.rule;
    return P.z_const != 0u && r.x_lin[t] == 0.0 && r.x_pos[t] == 0.0 && r.x_neg[t] == 0.0;
}

// h_p(b) for the two passes.
fn bmods(v: f32) -> vec2<f32> {
    let r = P.rule;
    let m = vec4<f32>(v, max(v, 0.0), min(v, 0.0), v * v);
    return vec2<f32>(dot(r.bias0, m), dot(r.bias1, m)) + r.extra.xy;
}

fn out_len() -> u32 {
    return OC * OH * OW;
}

fn in_len() -> u32 {
    return C * H * W;
}

// The kernel rows (or columns) that reach input row n = iy + pad through a real output row:
// ky = first, first + stride, ... < end, with output row (n - ky) / stride, counting down.
struct Reach {
    first: u32,
    end: u32,
    out_first: u32,
}

fn reach(n: i32, stride: u32, outs: u32, k: u32) -> Reach {
    let lo = max(n - i32((outs - 1u) * stride), 0);
    let first = u32(lo) + u32(n - lo) % stride;
    let end = u32(clamp(n + 1, 0, i32(k)));
    return Reach(first, end, u32(max(n - i32(first), 0)) / stride);
}

// The upper relevance R_j of output unit j of sample n: r_in's, or with a fused max pooling
// (POOL_KH > 0) that of j's window where j is its winner, else 0 (also past the last window).
fn upper_r(n: u32, j: u32) -> f32 {
    if (POOL_KH == 0u) {
        return r_in[n * out_len() + j];
    }
    // (max: the constants are folded where POOL_KH = 0 too, and must not divide by 0)
    let ohw = OH * OW;
    let py = (j % ohw) / OW / max(POOL_KH, 1u);
    let px = j % OW / max(POOL_KW, 1u);
    if (py >= POOL_OH || px >= POOL_OW) {
        return 0.0;
    }
    let win = (n * OC + j / ohw) * POOL_OH * POOL_OW + py * POOL_OW + px;
    return select(0.0, r_in[win], pool_arg[win] == j);
}

// s from the per-pass sums z of output unit j of sample n.
fn finish_s(n: u32, j: u32, z: vec2<f32>) {
    let r = P.rule;
    let nj = n * out_len() + j;
    let rj = upper_r(n, j);
    if (MODE == 1u) {
        s_set(nj, vec2<f32>(rj, 0.0));
        return;
    }
    let b = wb[P.bias_offset + j / (OH * OW)];
    let zb = z + bmods(b);
    let s0 = rj / stab(zb.x, r.extra.z);
    var s1 = 0.0;
    if (PASSES > 1u) {
        s1 = rj / stab(zb.y, r.extra.z);
    }
    s_set(nj, vec2<f32>(s0, s1));
}

// Channel blocking: forward_partial and z_partial compute BLOCK (4) output channels per
// invocation (for a strip of pixels, below), so each input value (and its modified value) is
// loaded once per block rather than once per channel; c_partial computes BLOCK input channels
// (of a strip or of one pixel), so each s value is loaded once per block (with a single input
// channel the lanes hold the strip's pixels instead, or, for one pixel, the rule's terms).
// Lanes past the last channel read a clamped channel and write nothing.
const BLOCK: u32 = 4u;

fn blocks(channels: u32) -> u32 {
    return (channels + BLOCK - 1u) / BLOCK;
}

// The flat offsets of channels first .. first + 3 (clamped to the last of `count`), times `step`.
fn lane_offsets(first: u32, count: u32, step: u32) -> vec4<u32> {
    let last = count - 1u;
    return vec4<u32>(
        min(first, last),
        min(first + 1u, last),
        min(first + 2u, last),
        min(first + 3u, last),
    ) * step;
}

// Start in wv of the weights of output-channel block ob, [c, kh, kw] vec4s: g = 0 the plain
// weights (forward), g = 1 + t the modified weights of term t (z_partial).
fn out_weights(g: u32, ob: u32) -> u32 {
    return (g * blocks(OC) + ob) * C * KH * KW;
}

// Start in wv of the modified weights of term t for input-channel block cb, [oc, kh, kw] vec4s
// (c_partial).
fn in_weights(t: u32, cb: u32) -> u32 {
    return P.rule.term_layout.w + (t * blocks(C) + cb) * OC * KH * KW;
}

// Output strips: forward_partial and z_partial compute STRIP (4) consecutive output pixels of
// one output row for a block of BLOCK (4) output channels per invocation, so each weight vec4
// is loaded once per strip and each input value feeds the block's 4 channels: 16 multiply-adds
// per 5 loads, or per 2 with stride 1, where the strip's inputs slide along the row. Pixels past
// the row's end compute on clamped inputs and write nothing.
const STRIP: u32 = 4u;

fn strips(width: u32) -> u32 {
    return (width + STRIP - 1u) / STRIP;
}

// An invocation of forward_partial / z_partial: sample, chunk of the receptive field, first
// output channel of the block, output row and first output column of the strip.
struct OutStrip {
    n: u32,
    k: u32,
    o0: u32,
    oy: u32,
    ox0: u32,
}

fn out_strip(idx: u32) -> OutStrip {
    let per_block = OH * strips(OW);
    let q = idx % per_block;
    let rest = idx / per_block;
    let nb = blocks(OC);
    let nk = rest / nb;
    let sw = strips(OW);
    return OutStrip(nk / CHUNKS_IN, nk % CHUNKS_IN, (rest % nb) * BLOCK, q / sw, (q % sw) * STRIP);
}

fn out_strip_count() -> u32 {
    return P.n * CHUNKS_IN * blocks(OC) * OH * strips(OW);
}

// An input modifier as slopes: v m.y + m.z for v > 0, v m.x + m.z otherwise (m = (1, 1, 0, 0):
// v itself); one compare, select and multiply-add per input in the inner loops.
fn modified(v: f32, m: vec4<f32>) -> f32 {
    return v * select(m.x, m.y, v > 0.0) + m.z;
}

// Term t's input modifier f(v) = x_lin v + x_pos max(v, 0) + x_neg min(v, 0) + x_one as the
// slopes of `modified`.
fn term_mod(t: u32) -> vec4<f32> {
    let r = P.rule;
    return vec4<f32>(r.x_lin[t] + r.x_neg[t], r.x_lin[t] + r.x_pos[t], r.x_one[t], 0.0);
}

// The modified input at column xi of the input row starting at xr; 0 in the padding (where
// the receptive field has no input, for every modifier).
fn input_at(xr: u32, xi: i32, m: vec4<f32>) -> f32 {
    let v = x[xr + u32(clamp(xi, 0, i32(W) - 1))];
    return select(0.0, modified(v, m), xi >= 0 && xi < i32(W));
}

// Sums of modified(x, m) * W over the chunk's receptive field for each pixel of strip `o` (one
// vec4 over the block's channels per pixel): `a` with the output-channel block's [c, kh, kw]
// weight vec4s from `wbase` in wv and, for `extra` = 1 or 2, `b` with those from `wbase2` and
// `c` with those from `wbase3`, from the same input loads (the forward pass of a layer whose z'
// is kept with other weights, KEEP_Z = 2 and 3).
struct StripSums {
    a: array<vec4<f32>, 4>,
    b: array<vec4<f32>, 4>,
    c: array<vec4<f32>, 4>,
}

fn strip_sum(o: OutStrip, wbase: u32, m: vec4<f32>, wbase2: u32, wbase3: u32, extra: u32) -> StripSums {
    let y0 = i32(o.oy * STRIDE_Y) - i32(PAD_TOP);
    let ky0 = u32(max(0, -y0));
    let ky1 = u32(clamp(i32(H) - y0, 0, i32(KH)));
    let x0 = i32(o.ox0 * STRIDE_X) - i32(PAD_LEFT);
    let sx = i32(STRIDE_X);
    let c0 = o.k * C_PER_CHUNK;
    let c1 = min(c0 + C_PER_CHUNK, C);
    let xbase = o.n * in_len();
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var acc2 = acc;
    var acc3 = acc;
    for (var ch = c0; ch < c1; ch++) {
        let xc = xbase + ch * H * W;
        let wc = ch * KH * KW;
        for (var ky = ky0; ky < ky1; ky++) {
            let xr = xc + u32(y0 + i32(ky)) * W;
            let wr = wc + ky * KW;
            if (sx == 1) {
                // Stride 1: pixel j's input at kernel column kx + 1 is pixel j + 1's at kx, so
                // the four slide along the row and each step loads one new input.
                var v0 = input_at(xr, x0, m);
                var v1 = input_at(xr, x0 + 1, m);
                var v2 = input_at(xr, x0 + 2, m);
                for (var kx = 0u; kx < KW; kx++) {
                    let v3 = input_at(xr, x0 + i32(kx) + 3, m);
                    let wk = wv[wbase + wr + kx];
                    acc[0] += v0 * wk;
                    acc[1] += v1 * wk;
                    acc[2] += v2 * wk;
                    acc[3] += v3 * wk;
                    if (extra >= 1u) {
                        let wk2 = wv[wbase2 + wr + kx];
                        acc2[0] += v0 * wk2;
                        acc2[1] += v1 * wk2;
                        acc2[2] += v2 * wk2;
                        acc2[3] += v3 * wk2;
                    }
                    if (extra >= 2u) {
                        let wk3 = wv[wbase3 + wr + kx];
                        acc3[0] += v0 * wk3;
                        acc3[1] += v1 * wk3;
                        acc3[2] += v2 * wk3;
                        acc3[3] += v3 * wk3;
                    }
                    v0 = v1;
                    v1 = v2;
                    v2 = v3;
                }
                continue;
            }
            for (var kx = 0u; kx < KW; kx++) {
                let xi = x0 + i32(kx);
                let v = vec4<f32>(
                    input_at(xr, xi, m),
                    input_at(xr, xi + sx, m),
                    input_at(xr, xi + 2 * sx, m),
                    input_at(xr, xi + 3 * sx, m),
                );
                let wk = wv[wbase + wr + kx];
                for (var j = 0u; j < STRIP; j++) {
                    acc[j] += v[j] * wk;
                }
                if (extra >= 1u) {
                    let wk2 = wv[wbase2 + wr + kx];
                    for (var j = 0u; j < STRIP; j++) {
                        acc2[j] += v[j] * wk2;
                    }
                }
                if (extra >= 2u) {
                    let wk3 = wv[wbase3 + wr + kx];
                    for (var j = 0u; j < STRIP; j++) {
                        acc3[j] += v[j] * wk3;
                    }
                }
            }
        }
    }
    return StripSums(acc, acc2, acc3);
}

// Forward, split-K: one invocation per (sample, chunk of the receptive field, block of output
// channels, output strip).
@compute @workgroup_size(64)
fn forward_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= out_strip_count()) {
        return;
    }
    let o = out_strip(idx);
    // KEEP_Z = 2: also z' of the rule's data term (term 0, input x) with its modified weights;
    // KEEP_Z = 3: also x w+ and x w- (terms 0 and 1).
    let ob = o.o0 / BLOCK;
    let plain = vec4<f32>(1.0, 1.0, 0.0, 0.0);
    let extra = select(0u, KEEP_Z - 1u, KEEP_Z >= 2u);
    let sums = strip_sum(o, out_weights(0u, ob), plain, out_weights(1u, ob), out_weights(2u, ob), extra);
    let acc = sums.a;
    // the kept z' of pass 0 (KEEP_Z = 1: the forward's own sum) and of pass 1
    var kept = sums.a;
    let kept1 = sums.c;
    if (KEEP_Z >= 2u) {
        kept = sums.b;
    }
    let olen = out_len();
    let ohw = OH * OW;
    for (var j = 0u; j < STRIP; j++) {
        let ox = o.ox0 + j;
        for (var l = 0u; l < BLOCK; l++) {
            let oc = o.o0 + l;
            if (ox < OW && oc < OC) {
                let i = oc * ohw + o.oy * OW + ox;
                if (CHUNKS_IN == 1u) {
                    y[o.n * olen + i] = activation(acc[j][l] + wb[P.bias_offset + oc]);
                    if (KEEP_Z != 0u) {
                        s_set(o.n * olen + i, vec2<f32>(kept[j][l], kept1[j][l]));
                    }
                } else {
                    part[(o.n * CHUNKS_IN + o.k) * olen + i] =
                        vec4<f32>(acc[j][l], kept[j][l], kept1[j][l], 0.0);
                }
            }
        }
    }
}

// Forward, sum of the partials plus bias: one invocation per (sample, output value).
@compute @workgroup_size(64)
fn forward_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let olen = out_len();
    if (idx >= P.n * olen) {
        return;
    }
    let j = idx % olen;
    let n = idx / olen;
    var acc = vec3<f32>(0.0);
    for (var k = 0u; k < CHUNKS_IN; k++) {
        acc += part[(n * CHUNKS_IN + k) * olen + j].xyz;
    }
    y[idx] = activation(acc.x + wb[P.bias_offset + j / (OH * OW)]);
    if (KEEP_Z != 0u) {
        s_set(idx, acc.yz);
    }
}

// Relevance step 1, modified forward per term: one invocation per (sample, chunk of the receptive
// field, block of output channels, output strip); loops over the rule's terms, skipping those
// whose share of z' is precomputed (P.z_const).
@compute @workgroup_size(64)
fn z_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= out_strip_count()) {
        return;
    }
    let o = out_strip(idx);
    let ob = o.o0 / BLOCK;
    let ohw = OH * OW;
    let row = o.oy * OW;
    var z0 = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    var z1 = z0;
    if (P.z_const != 0u && o.k == 0u) {
        for (var j = 0u; j < STRIP; j++) {
            let zc = P.z_const - 1u + (ob * ohw + row + min(o.ox0 + j, OW - 1u)) * 2u;
            z0[j] = wv[zc];
            z1[j] = wv[zc + 1u];
        }
    }
    for (var t = 0u; t < terms(); t++) {
        if (precomputed(t)) {
            continue;
        }
        let acc = strip_sum(o, out_weights(t + 1u, ob), term_mod(t), 0u, 0u, 0u).a;
        let pass1 = P.rule.term_pass1[t] > 0.5;
        for (var j = 0u; j < STRIP; j++) {
            z0[j] += select(acc[j], vec4<f32>(0.0), pass1);
            z1[j] += select(vec4<f32>(0.0), acc[j], pass1);
        }
    }
    let olen = out_len();
    for (var j = 0u; j < STRIP; j++) {
        let ox = o.ox0 + j;
        for (var l = 0u; l < BLOCK; l++) {
            let oc = o.o0 + l;
            if (ox < OW && oc < OC) {
                let i = oc * ohw + row + ox;
                let z = vec2<f32>(z0[j][l], z1[j][l]);
                if (CHUNKS_IN == 1u) {
                    finish_s(o.n, i, z);
                } else {
                    part[(o.n * CHUNKS_IN + o.k) * olen + i] = vec4<f32>(z, 0.0, 0.0);
                }
            }
        }
    }
}

// The constant-input terms' share of z' of output unit j, 0 without such terms (pass 0 only:
// a rule whose z' is kept has one pass, or two without constant terms).
fn kept_const_z(j: u32) -> f32 {
    if (P.z_const == 0u) {
        return 0.0;
    }
    let ohw = OH * OW;
    let oc = j / ohw;
    return wv[P.z_const - 1u + ((oc / BLOCK) * ohw + j % ohw) * 2u][oc % BLOCK];
}

// Relevance step 2 (long reductions, the gradient, and kept z'): sum the partials (or take the
// kept z' and the constant terms' share), s = R / stab(z').
@compute @workgroup_size(64)
fn s_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let olen = out_len();
    if (idx >= P.n * olen) {
        return;
    }
    let j = idx % olen;
    let n = idx / olen;
    var acc = vec2<f32>(0.0);
    if (MODE == 0u && KEEP_Z != 0u) {
        acc = s_get(idx) + vec2<f32>(kept_const_z(j), 0.0);
    } else if (MODE == 0u) {
        for (var k = 0u; k < CHUNKS_IN; k++) {
            acc += part[(n * CHUNKS_IN + k) * olen + j].xy;
        }
    }
    finish_s(n, j, acc);
}

// Relevance step 3, gather of the back-projection per term: one invocation per (sample, chunk of
// the transposed reduction, block of input channels, input strip or pixel); R = sum_t f_t(x) c_t
// with c_t = (coef_t g_t(W))^T s_t is formed per channel (split-K partials hold R); terms with
// the same input modifier f (alpha-beta's two on a ReLU output) share one gather. With stride_x = 1 an invocation
// gathers a strip of STRIP input pixels of one row (`c_strip`), so each weight vec4 is loaded
// once per strip; otherwise one pixel (`c_pixel`), over the kernel positions that reach it.
@compute @workgroup_size(64)
fn c_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let cols = select(W, strips(W), STRIDE_X == 1u);
    let per_block = H * cols;
    let nb = blocks(C);
    if (idx >= P.n * CHUNKS_OUT * nb * per_block) {
        return;
    }
    let q = idx % per_block;
    let rest = idx / per_block;
    let ch0 = (rest % nb) * BLOCK;
    let nk = rest / nb;
    if (STRIDE_X == 1u) {
        c_strip(nk, ch0, q / cols, (q % cols) * STRIP);
    } else {
        c_pixel(nk, ch0, q / cols, q % cols);
    }
}

// Whether every term of the rule has term 0's input modifier (alpha-beta on a ReLU output: x and
// x; the gradient's one term): then R = f(x) sum_t c_t, one gather for all.
fn same_input() -> bool {
    let r = P.rule;
    let x = transpose(mat4x4<f32>(r.x_lin, r.x_pos, r.x_neg, r.x_one));
    var same = true;
    for (var t = 1u; t < terms(); t++) {
        same = same && all(x[t] == x[0]);
    }
    return same;
}

// f_t(v) of every term t (lane t), for one input value v.
fn every_term(v: f32) -> vec4<f32> {
    let r = P.rule;
    return r.x_lin * v + r.x_pos * max(v, 0.0) + r.x_neg * min(v, 0.0) + r.x_one;
}

// f_t of term t for four input values (lanes: the channels of a block).
fn term_of(t: u32, xv: vec4<f32>) -> vec4<f32> {
    let r = P.rule;
    return r.x_lin[t] * xv + r.x_pos[t] * max(xv, vec4<f32>(0.0)) + r.x_neg[t] * min(xv, vec4<f32>(0.0))
        + r.x_one[t];
}

// Stores r, the lower relevance (or gradient) at flat index i (channel, row, column) of sample
// n, or its split-K partial of chunk k, for nk = n * chunks_out + k.
fn store_r(nk: u32, i: u32, r: f32) {
    let ilen = in_len();
    if (CHUNKS_OUT == 1u) {
        r_out[nk * ilen + i] = r;
    } else {
        part[nk * ilen + i] = vec4<f32>(r, 0.0, 0.0, 0.0);
    }
}

// s of both passes at column ox of the s row starting at sr; 0 outside the output.
fn s_pair(sr: u32, ox: i32) -> vec2<f32> {
    let sj = s_get(sr + u32(clamp(ox, 0, i32(OW) - 1)));
    return select(vec2<f32>(0.0), sj, ox >= 0 && ox < i32(OW));
}

// The gather of c_partial for the strip of STRIP input pixels from (iy, ix0) (stride_x = 1):
// over chunk k's output channels and the kernel positions reaching each pixel, the sums of
// s * W' with W' the [oc, kh, kw] vec4s from `wbase` in wv.
// - C > 1: acc[j], pixel j's vec4 over the block's 4 input channels, summed over terms t0 .. t1
//   - 1 (wbase: term t0's weights), each with the s of its pass.
// - C = 1 (e.g. grayscale images): acc[t], term t's vec4 over the strip's pixels, for every term
//   (W' holds term t's modified weight in lane t). The lanes are pixels, not terms, so none
//   idles whatever the number of terms (z^B has 2, the gradient 1).
// Per kernel position and term one weight vec4 and, per position, one new s value feed 16
// (C = 1: TERMS x 4) multiply-adds.
fn strip_gather(n: u32, k: u32, iy: u32, ix0: u32, wbase: u32, t0: u32, t1: u32) -> array<vec4<f32>, 4> {
    let ry = reach(i32(iy + PAD_TOP), STRIDE_Y, OH, KH);
    let o0 = k * OC_PER_CHUNK;
    let o1 = min(o0 + OC_PER_CHUNK, OC);
    let sbase = n * out_len();
    let pass1 = P.rule.term_pass1 > vec4<f32>(0.5);
    // the output column of pixel j at kernel column kx: nx0 + j - kx
    let nx0 = i32(ix0 + PAD_LEFT);
    // from one term's weights to the next's (C > 1)
    let tstride = blocks(C) * OC * KH * KW;
    var acc = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var o = o0; o < o1; o++) {
        let so = sbase + o * OH * OW;
        let wo = wbase + o * KH * KW;
        var oy = ry.out_first;
        for (var ky = ry.first; ky < ry.end; ky += STRIDE_Y) {
            let sr = so + oy * OW;
            let wr = wo + ky * KW;
            // Lane j holds pixel j's s (pass 0 in s0, pass 1 in s1). Pixel j's s at kernel
            // column kx + 1 is pixel j - 1's at kx, so each step shifts the lanes up by one and
            // loads one new s into lane 0; before the first, lanes 0 to 2 hold pixels 1 to 3's.
            let a = s_pair(sr, nx0 + 1);
            let b = s_pair(sr, nx0 + 2);
            let c = s_pair(sr, nx0 + 3);
            var s0 = vec4<f32>(a.x, b.x, c.x, 0.0);
            var s1 = vec4<f32>(a.y, b.y, c.y, 0.0);
            for (var kx = 0u; kx < KW; kx++) {
                let sn = s_pair(sr, nx0 - i32(kx));
                s0 = vec4<f32>(sn.x, s0.xyz);
                s1 = vec4<f32>(sn.y, s1.xyz);
                if (C == 1u) {
                    let wk = wv[wr + kx];
                    for (var u = 0u; u < terms(); u++) {
                        acc[u] += select(s0, s1, PASSES > 1u && pass1[u]) * wk[u];
                    }
                } else {
                    for (var u = t0; u < t1; u++) {
                        let sv = select(s0, s1, PASSES > 1u && pass1[u]);
                        let wk = wv[wr + kx + (u - t0) * tstride];
                        for (var j = 0u; j < STRIP; j++) {
                            acc[j] += sv[j] * wk;
                        }
                    }
                }
            }
            oy -= 1u;
        }
    }
    return acc;
}

// c_partial for a strip of input pixels (stride_x = 1).
fn c_strip(nk: u32, ch0: u32, iy: u32, ix0: u32) {
    let k = nk % CHUNKS_OUT;
    let n = nk / CHUNKS_OUT;
    let hw = H * W;
    let xrow = n * in_len() + iy * W;
    let rr = P.rule;
    if (C == 1u) {
        // One input channel: per term, the vec4 over the strip's pixels.
        let acc = strip_gather(n, k, iy, ix0, in_weights(0u, 0u), 0u, 0u);
        let xv = vec4<f32>(
            x[xrow + min(ix0, W - 1u)],
            x[xrow + min(ix0 + 1u, W - 1u)],
            x[xrow + min(ix0 + 2u, W - 1u)],
            x[xrow + min(ix0 + 3u, W - 1u)],
        );
        var r = vec4<f32>(0.0);
        for (var t = 0u; t < terms(); t++) {
            r += term_of(t, xv) * acc[t];
        }
        for (var j = 0u; j < STRIP; j++) {
            let ix = ix0 + j;
            if (ix < W) {
                store_r(nk, iy * W + ix, r[j]);
            }
        }
        return;
    }
    // The strip's inputs, per pixel the vec4 over the block's channels.
    var xs: array<vec4<f32>, 4>;
    for (var j = 0u; j < STRIP; j++) {
        let xl = lane_offsets(ch0, C, hw) + vec4<u32>(xrow + min(ix0 + j, W - 1u));
        xs[j] = vec4<f32>(x[xl.x], x[xl.y], x[xl.z], x[xl.w]);
    }
    var r = array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    // one gather for all terms where they share their input modifier, else one per term
    let per = select(1u, terms(), same_input());
    for (var t = 0u; t < terms(); t += per) {
        let acc = strip_gather(n, k, iy, ix0, in_weights(t, ch0 / BLOCK), t, t + per);
        for (var j = 0u; j < STRIP; j++) {
            r[j] += term_of(t, xs[j]) * acc[j];
        }
    }
    for (var j = 0u; j < STRIP; j++) {
        for (var l = 0u; l < BLOCK; l++) {
            let ix = ix0 + j;
            let ch = ch0 + l;
            if (ix < W && ch < C) {
                store_r(nk, ch * hw + iy * W + ix, r[j][l]);
            }
        }
    }
}

// For one input pixel (any stride): the sum over chunk k's output channels and the kernel
// positions that reach the pixel of s * W', per lane (pass 1's s in the lanes where pass1); W'
// are [oc, kh, kw] vec4s from `wbase` in wv.
fn pixel_gather(n: u32, k: u32, iy: u32, ix: u32, wbase: u32, pass1: vec4<bool>) -> vec4<f32> {
    let ry = reach(i32(iy + PAD_TOP), STRIDE_Y, OH, KH);
    let rx = reach(i32(ix + PAD_LEFT), STRIDE_X, OW, KW);
    let o0 = k * OC_PER_CHUNK;
    let o1 = min(o0 + OC_PER_CHUNK, OC);
    let sbase = n * out_len();
    var acc = vec4<f32>(0.0);
    for (var o = o0; o < o1; o++) {
        let wo = wbase + o * KH * KW;
        let so = sbase + o * OH * OW;
        var oy = ry.out_first;
        for (var ky = ry.first; ky < ry.end; ky += STRIDE_Y) {
            let wr = wo + ky * KW;
            let sr = so + oy * OW;
            var ox = rx.out_first;
            for (var kx = rx.first; kx < rx.end; kx += STRIDE_X) {
                let sj = s_get(sr + ox);
                acc += select(vec4<f32>(sj.x), vec4<f32>(sj.y), pass1) * wv[wr + kx];
                ox -= 1u;
            }
            oy -= 1u;
        }
    }
    return acc;
}

// c_partial for one input pixel (any stride): the gather runs over the kernel positions that
// reach the pixel only.
fn c_pixel(nk: u32, ch0: u32, iy: u32, ix: u32) {
    let k = nk % CHUNKS_OUT;
    let n = nk / CHUNKS_OUT;
    let hw = H * W;
    let p = iy * W + ix;
    let xbase = n * in_len();
    let rr = P.rule;
    if (C == 1u) {
        // One input channel (e.g. grayscale images): the gather's lanes are the rule's terms
        // (wv holds sign_t g_t(W) in lane t, zero past the last term), so each s value is
        // loaded once for all terms and no lane idles.
        let acc = pixel_gather(n, k, iy, ix, in_weights(0u, 0u), rr.term_pass1 > vec4<f32>(0.5));
        store_r(nk, p, dot(every_term(x[xbase + p]), acc));
        return;
    }
    let xl = lane_offsets(ch0, C, hw) + vec4<u32>(xbase + p);
    let xv = vec4<f32>(x[xl.x], x[xl.y], x[xl.z], x[xl.w]);
    var r = vec4<f32>(0.0);
    for (var t = 0u; t < terms(); t++) {
        let pass1 = vec4<bool>(rr.term_pass1[t] > 0.5);
        let acc = pixel_gather(n, k, iy, ix, in_weights(t, ch0 / BLOCK), pass1);
        r += term_of(t, xv) * acc;
    }
    for (var l = 0u; l < BLOCK; l++) {
        let ch = ch0 + l;
        if (ch < C) {
            store_r(nk, ch * hw + p, r[l]);
        }
    }
}

// Relevance step 4 (long reductions only): sum the back-projection partials into R.
@compute @workgroup_size(64)
fn r_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let ilen = in_len();
    if (idx >= P.n * ilen) {
        return;
    }
    let i = idx % ilen;
    let n = idx / ilen;
    var acc = 0.0;
    for (var k = 0u; k < CHUNKS_OUT; k++) {
        acc += part[(n * CHUNKS_OUT + k) * ilen + i].x;
    }
    r_out[idx] = acc;
}
