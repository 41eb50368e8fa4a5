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
//   6 s       storage read_write  s = R / stab(z') per pass (x: pass 0, y: pass 1), [n, oc, oh, ow]
//   7 r_out   storage read_write  lower relevance (or gradient), [n, c, h, w]
//   8 wv      storage read        the weights blocked by 4 channels (vec4, zero-padded), so each
//                                 blocked multiply-add loads its 4 weights at once: per output-
//                                 channel block ob [c, kh, kw] for the plain weights, then for
//                                 each term's modified weights; from P.rule.term_layout.w, per
//                                 term and input-channel block cb [oc, kh, kw] modified weights,
//                                 or, for a single input channel (c = 1), one block [oc, kh, kw]
//                                 whose lane t holds term t's modified weight
// Dispatch: 1-D over invocations, 64 per workgroup, folded into (x, y) workgroups when there are
// more than the per-dimension limit; index = gid.x + gid.y * num_workgroups.x * 64.
//   forward_partial, z_partial: n * chunks_in * ceil(oc/4) * (oh*ow) invocations; each computes
//       4 output channels of one pixel over the receptive field of c_per_chunk input channels;
//       chunks_in = 1: writes the result directly
//   forward_reduce, s_reduce:   n * (oc*oh*ow) invocations (only when chunks_in > 1; s_reduce
//                               also for the gradient)
//   c_partial:                  n * chunks_out * ceil(c/4) * (h*w) invocations; each gathers, for
//       4 input channels of one pixel, over the kernel positions of oc_per_chunk output channels
//       that reach the pixel; chunks_out = 1: writes R directly
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
// after the layer is applied by the forward pass when P.relu = 1.
// mode 0: LRP; mode 1: gradient (s = R, no division; the terms are set to (one, w)).

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
    pad0: u32,
    pad1: u32,
    pad2: u32,
    rule: RuleParams,
}

@group(0) @binding(0) var<uniform> P: ConvParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> wb: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> r_in: array<f32>;
@group(0) @binding(6) var<storage, read_write> s: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> r_out: array<f32>;
@group(0) @binding(8) var<storage, read> wv: array<vec4<f32>>;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

// The forward output, with the fused ReLU when P.relu = 1.
fn activation(v: f32) -> f32 {
    return select(v, max(v, 0.0), P.relu == 1u);
}

fn stab(d: f32, eps: f32) -> f32 {
    return select(d - eps, d + eps, d >= 0.0);
}

// Number of terms the rule uses; the relevance kernels loop over exactly these.
fn terms() -> u32 {
    return min(P.rule.term_layout.x, 4u);
}

// f_t(v) of term t.
fn xmod(v: f32, t: u32) -> f32 {
    let r = P.rule;
    return r.x_lin[t] * v + r.x_pos[t] * max(v, 0.0) + r.x_neg[t] * min(v, 0.0) + r.x_one[t];
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
    return P.oc * P.oh * P.ow;
}

fn in_len() -> u32 {
    return P.c * P.h * P.w;
}

// The receptive field of output pixel (oy, ox) clipped to the image: its first input row and
// column (negative inside the padding) and the kernel rows [ky0, ky1) and columns [kx0, kx1)
// that fall on real pixels.
struct Field {
    y0: i32,
    x0: i32,
    ky0: u32,
    ky1: u32,
    kx0: u32,
    kx1: u32,
}

fn field(oy: u32, ox: u32) -> Field {
    let y0 = i32(oy * P.stride_y) - i32(P.pad_top);
    let x0 = i32(ox * P.stride_x) - i32(P.pad_left);
    return Field(
        y0,
        x0,
        u32(max(0, -y0)),
        u32(clamp(i32(P.h) - y0, 0, i32(P.kh))),
        u32(max(0, -x0)),
        u32(clamp(i32(P.w) - x0, 0, i32(P.kw))),
    );
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

// s from the per-pass sums z of output unit j of sample n.
fn finish_s(n: u32, j: u32, z: vec2<f32>) {
    let r = P.rule;
    let nj = n * out_len() + j;
    let rj = r_in[nj];
    if (P.mode == 1u) {
        s[nj] = vec2<f32>(rj, 0.0);
        return;
    }
    let b = wb[P.bias_offset + j / (P.oh * P.ow)];
    let zb = z + bmods(b);
    let s0 = rj / stab(zb.x, r.extra.z);
    let s1 = select(0.0, rj / stab(zb.y, r.extra.z), r.extra.w > 1.5);
    s[nj] = vec2<f32>(s0, s1);
}

// Channel blocking: forward_partial and z_partial compute BLOCK (4) output channels of one output
// pixel per invocation, so each input value (and its modified value) is loaded once per block
// rather than once per channel; c_partial computes BLOCK input channels of one input pixel, so
// each s value is loaded once per block. Lanes past the last channel read a clamped channel and
// write nothing.
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
    return (g * blocks(P.oc) + ob) * P.c * P.kh * P.kw;
}

// Start in wv of the modified weights of term t for input-channel block cb, [oc, kh, kw] vec4s
// (c_partial).
fn in_weights(t: u32, cb: u32) -> u32 {
    return P.rule.term_layout.w + (t * blocks(P.c) + cb) * P.oc * P.kh * P.kw;
}

// A blocked invocation of forward_partial / z_partial: sample, chunk of the receptive field,
// first output channel of the block, and output pixel.
struct OutBlock {
    n: u32,
    k: u32,
    o0: u32,
    p: u32,
}

fn out_block(idx: u32) -> OutBlock {
    let ohw = P.oh * P.ow;
    let p = idx % ohw;
    let rest = idx / ohw;
    let nb = blocks(P.oc);
    let nk = rest / nb;
    return OutBlock(nk / P.chunks_in, nk % P.chunks_in, (rest % nb) * BLOCK, p);
}

// Forward, split-K: one invocation per (sample, chunk of the receptive field, block of output
// channels, output pixel).
@compute @workgroup_size(64)
fn forward_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let ohw = P.oh * P.ow;
    if (idx >= P.n * P.chunks_in * blocks(P.oc) * ohw) {
        return;
    }
    let b = out_block(idx);
    let f = field(b.p / P.ow, b.p % P.ow);
    let kk = P.kh * P.kw;
    let wbase = out_weights(0u, b.o0 / BLOCK);
    let c0 = b.k * P.c_per_chunk;
    let c1 = min(c0 + P.c_per_chunk, P.c);
    let xbase = b.n * in_len();
    var acc = vec4<f32>(0.0);
    for (var ch = c0; ch < c1; ch++) {
        let xc = i32(xbase + ch * P.h * P.w) + f.x0;
        let wc = wbase + ch * kk;
        for (var ky = f.ky0; ky < f.ky1; ky++) {
            let xr = xc + (f.y0 + i32(ky)) * i32(P.w);
            let wr = wc + ky * P.kw;
            for (var kx = f.kx0; kx < f.kx1; kx++) {
                acc += x[u32(xr + i32(kx))] * wv[wr + kx];
            }
        }
    }
    let olen = out_len();
    for (var l = 0u; l < BLOCK; l++) {
        let o = b.o0 + l;
        if (o < P.oc) {
            let j = o * ohw + b.p;
            if (P.chunks_in == 1u) {
                y[b.n * olen + j] = activation(acc[l] + wb[P.bias_offset + o]);
            } else {
                part[(b.n * P.chunks_in + b.k) * olen + j] = vec4<f32>(acc[l], 0.0, 0.0, 0.0);
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
    var acc = 0.0;
    for (var k = 0u; k < P.chunks_in; k++) {
        acc += part[(n * P.chunks_in + k) * olen + j].x;
    }
    y[idx] = activation(acc + wb[P.bias_offset + j / (P.oh * P.ow)]);
}

// Relevance step 1, modified forward per term: one invocation per (sample, chunk of the receptive
// field, block of output channels, output pixel); loops over the rule's terms, each input's
// modified value computed once per term and block.
@compute @workgroup_size(64)
fn z_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let ohw = P.oh * P.ow;
    if (idx >= P.n * P.chunks_in * blocks(P.oc) * ohw) {
        return;
    }
    let b = out_block(idx);
    let f = field(b.p / P.ow, b.p % P.ow);
    let kk = P.kh * P.kw;
    let ob = b.o0 / BLOCK;
    let c0 = b.k * P.c_per_chunk;
    let c1 = min(c0 + P.c_per_chunk, P.c);
    let xbase = b.n * in_len();
    var z0 = vec4<f32>(0.0);
    var z1 = vec4<f32>(0.0);
    if (P.z_const != 0u && b.k == 0u) {
        let zc = P.z_const - 1u + (ob * ohw + b.p) * 2u;
        z0 = wv[zc];
        z1 = wv[zc + 1u];
    }
    for (var t = 0u; t < terms(); t++) {
        if (precomputed(t)) {
            continue;
        }
        let wt = out_weights(t + 1u, ob);
        var acc = vec4<f32>(0.0);
        for (var ch = c0; ch < c1; ch++) {
            let xc = i32(xbase + ch * P.h * P.w) + f.x0;
            let wc = wt + ch * kk;
            for (var ky = f.ky0; ky < f.ky1; ky++) {
                let xr = xc + (f.y0 + i32(ky)) * i32(P.w);
                let wr = wc + ky * P.kw;
                for (var kx = f.kx0; kx < f.kx1; kx++) {
                    acc += xmod(x[u32(xr + i32(kx))], t) * wv[wr + kx];
                }
            }
        }
        if (P.rule.term_pass1[t] > 0.5) {
            z1 += acc;
        } else {
            z0 += acc;
        }
    }
    let olen = out_len();
    for (var l = 0u; l < BLOCK; l++) {
        let o = b.o0 + l;
        if (o < P.oc) {
            let j = o * ohw + b.p;
            let z = vec2<f32>(z0[l], z1[l]);
            if (P.chunks_in == 1u) {
                finish_s(b.n, j, z);
            } else {
                part[(b.n * P.chunks_in + b.k) * olen + j] = vec4<f32>(z, 0.0, 0.0);
            }
        }
    }
}

// Relevance step 2 (long reductions, and the gradient): sum the partials, s = R / stab(z').
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
    if (P.mode == 0u) {
        for (var k = 0u; k < P.chunks_in; k++) {
            acc += part[(n * P.chunks_in + k) * olen + j].xy;
        }
    }
    finish_s(n, j, acc);
}

// Relevance step 3, gather of the back-projection per term: one invocation per (sample, chunk of
// the transposed reduction, block of input channels, input pixel); each s value is loaded once
// per block, and R = sum_t coef_t f_t(x) c_t is formed per channel (split-K partials hold R).
@compute @workgroup_size(64)
fn c_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let hw = P.h * P.w;
    let nb = blocks(P.c);
    if (idx >= P.n * P.chunks_out * nb * hw) {
        return;
    }
    let p = idx % hw;
    let rest = idx / hw;
    let ch0 = (rest % nb) * BLOCK;
    let nk = rest / nb;
    let k = nk % P.chunks_out;
    let n = nk / P.chunks_out;
    let iy = p / P.w;
    let ix = p % P.w;
    let kk = P.kh * P.kw;
    let ry = reach(i32(iy + P.pad_top), P.stride_y, P.oh, P.kh);
    let rx = reach(i32(ix + P.pad_left), P.stride_x, P.ow, P.kw);
    let o0 = k * P.oc_per_chunk;
    let o1 = min(o0 + P.oc_per_chunk, P.oc);
    let sbase = n * out_len();
    let ilen = in_len();
    if (P.c == 1u) {
        // One input channel (e.g. grayscale images): the gather's lanes are the rule's terms
        // (wv holds sign_t g_t(W) in lane t, zero past the last term), so each s value is
        // loaded once for all terms and no lane idles.
        let v = x[n * ilen + p];
        let rr = P.rule;
        let pass1 = rr.term_pass1 > vec4<f32>(0.5);
        let wt = in_weights(0u, 0u);
        var acc = vec4<f32>(0.0);
        for (var o = o0; o < o1; o++) {
            let wo = wt + o * kk;
            let so = sbase + o * P.oh * P.ow;
            var oy = ry.out_first;
            for (var ky = ry.first; ky < ry.end; ky += P.stride_y) {
                let wr = wo + ky * P.kw;
                let sr = so + oy * P.ow;
                var ox = rx.out_first;
                for (var kx = rx.first; kx < rx.end; kx += P.stride_x) {
                    let sj = s[sr + ox];
                    acc += select(vec4<f32>(sj.x), vec4<f32>(sj.y), pass1) * wv[wr + kx];
                    ox -= 1u;
                }
                oy -= 1u;
            }
        }
        let fx = rr.x_lin * v + rr.x_pos * max(v, 0.0) + rr.x_neg * min(v, 0.0) + rr.x_one;
        let r1 = dot(rr.term_coef * fx, acc);
        if (P.chunks_out == 1u) {
            r_out[n * ilen + p] = r1;
        } else {
            part[nk * ilen + p] = vec4<f32>(r1, 0.0, 0.0, 0.0);
        }
        return;
    }
    let cb = ch0 / BLOCK;
    let xl = lane_offsets(ch0, P.c, hw) + vec4<u32>(n * ilen + p);
    let xv = vec4<f32>(x[xl.x], x[xl.y], x[xl.z], x[xl.w]);
    var r = vec4<f32>(0.0);
    for (var t = 0u; t < terms(); t++) {
        let pass1 = P.rule.term_pass1[t] > 0.5;
        let wt = in_weights(t, cb);
        var acc = vec4<f32>(0.0);
        for (var o = o0; o < o1; o++) {
            let wo = wt + o * kk;
            let so = sbase + o * P.oh * P.ow;
            var oy = ry.out_first;
            for (var ky = ry.first; ky < ry.end; ky += P.stride_y) {
                let wr = wo + ky * P.kw;
                let sr = so + oy * P.ow;
                var ox = rx.out_first;
                for (var kx = rx.first; kx < rx.end; kx += P.stride_x) {
                    let sj = s[sr + ox];
                    acc += select(sj.x, sj.y, pass1) * wv[wr + kx];
                    ox -= 1u;
                }
                oy -= 1u;
            }
        }
        let rr = P.rule;
        let fx = rr.x_lin[t] * xv + rr.x_pos[t] * max(xv, vec4<f32>(0.0))
            + rr.x_neg[t] * min(xv, vec4<f32>(0.0)) + rr.x_one[t];
        r += rr.term_coef[t] * fx * acc;
    }
    for (var l = 0u; l < BLOCK; l++) {
        let ch = ch0 + l;
        if (ch < P.c) {
            let i = ch * hw + p;
            if (P.chunks_out == 1u) {
                r_out[n * ilen + i] = r[l];
            } else {
                part[(nk * ilen) + i] = vec4<f32>(r[l], 0.0, 0.0, 0.0);
            }
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
    for (var k = 0u; k < P.chunks_out; k++) {
        acc += part[(n * P.chunks_out + k) * ilen + i].x;
    }
    r_out[idx] = acc;
}
