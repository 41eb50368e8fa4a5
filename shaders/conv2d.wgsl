// conv2d.wgsl: 2-D convolution (group 1, dilation 1, any stride and zero padding), forward and
// relevance (every LRP rule as modifier terms, and the gradient used by the baselines).
//
// Bindings (group 0):
//   0 P       uniform ConvParams: shapes, window, chunking, mode and the rule's modifier terms
//   1 x       storage read        layer input, [n, c, h, w]
//   2 wb      storage read        W [oc, c, kh, kw] row-major, then b [oc] at P.bias_offset
//   3 y       storage read_write  layer output, [n, oc, oh, ow]                   (forward)
//   4 part    storage read_write  split-K partial sums, vec4 per (n, chunk, unit)  (long reductions)
//   5 r_in    storage read        upper relevance (or gradient), [n, oc, oh, ow]
//   6 s       storage read_write  s = R / stab(z') per pass (x: pass 0, y: pass 1), [n, oc, oh, ow]
//   7 r_out   storage read_write  lower relevance (or gradient), [n, c, h, w]
// Dispatch: 1-D over invocations, 64 per workgroup, folded into (x, y) workgroups when there are
// more than the per-dimension limit; index = gid.x + gid.y * num_workgroups.x * 64.
//   forward_partial, z_partial: n * chunks_in * (oc*oh*ow) invocations; each loops over one chunk
//       of the receptive field (c*kh*kw); chunks_in = 1: writes the result directly
//   forward_reduce, s_reduce:   n * (oc*oh*ow) invocations (only when chunks_in > 1; s_reduce
//                               also for the gradient)
//   c_partial:                  n * chunks_out * (c*h*w) invocations; each gathers over one chunk
//       of the transposed reduction (oc*kh*kw); chunks_out = 1: writes R directly
//   r_reduce:                   n * (c*h*w) invocations (only when chunks_out > 1)
// Every invocation loops over at most P.chunk positions, or over the chunks, so no invocation
// comes near llvmpipe's 65,535-iteration cap. Padding positions are skipped: f(x) = 0 there for
// every modifier, so they take no part in z' and receive no relevance.
//
// Rule terms: as in dense.wgsl (up to four (pass, f, g, sign) terms over up to two passes).
// Input modifier ids: 0 x, 1 max(0,x), 2 min(0,x), 3 one, 4 constant, 5 zero.
// Weight modifier ids: 0 w, 1 max(0,w), 2 min(0,w), 3 w^2, 4 one, 5 w + g max(0,w), 6 zero.
// mode 0: LRP; mode 1: gradient (s = R, no division; the terms are set to (one, w)).

struct RuleParams {
    in_mod: vec4<u32>,
    w_mod: vec4<u32>,
    pass_of: vec4<u32>,
    // x, y: bias modifier of pass 0 and 1; z: number of passes; w: unused
    bias_mod: vec4<u32>,
    sign: vec4<f32>,
    in_const: vec4<f32>,
    w_param: vec4<f32>,
    // x, y: coefficient of pass 0 and 1; z, w: bias modifier parameter of pass 0 and 1
    pass_const: vec4<f32>,
    // x: the stabiliser eps
    eps: vec4<f32>,
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
    chunk: u32,
    chunks_in: u32,
    chunks_out: u32,
    bias_offset: u32,
    mode: u32,
    pad0: u32,
    pad1: u32,
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

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

fn stab(d: f32, eps: f32) -> f32 {
    return select(d - eps, d + eps, d >= 0.0);
}

fn xmod(v: f32, m: u32, c: f32) -> f32 {
    switch m {
        case 0u: { return v; }
        case 1u: { return max(v, 0.0); }
        case 2u: { return min(v, 0.0); }
        case 3u: { return 1.0; }
        case 4u: { return c; }
        default: { return 0.0; }
    }
}

fn wmod(v: f32, m: u32, g: f32) -> f32 {
    switch m {
        case 0u: { return v; }
        case 1u: { return max(v, 0.0); }
        case 2u: { return min(v, 0.0); }
        case 3u: { return v * v; }
        case 4u: { return 1.0; }
        case 5u: { return v + g * max(v, 0.0); }
        default: { return 0.0; }
    }
}

fn xmods(v: f32) -> vec4<f32> {
    let r = P.rule;
    return vec4<f32>(
        xmod(v, r.in_mod.x, r.in_const.x),
        xmod(v, r.in_mod.y, r.in_const.y),
        xmod(v, r.in_mod.z, r.in_const.z),
        xmod(v, r.in_mod.w, r.in_const.w),
    );
}

fn wmods(v: f32) -> vec4<f32> {
    let r = P.rule;
    return vec4<f32>(
        wmod(v, r.w_mod.x, r.w_param.x),
        wmod(v, r.w_mod.y, r.w_param.y),
        wmod(v, r.w_mod.z, r.w_param.z),
        wmod(v, r.w_mod.w, r.w_param.w),
    );
}

fn out_len() -> u32 {
    return P.oc * P.oh * P.ow;
}

fn in_len() -> u32 {
    return P.c * P.h * P.w;
}

// Flat input index (within the sample) of receptive-field position r of output pixel (oy, ox),
// or -1 for a padding position.
fn field_input(r: u32, oy: u32, ox: u32) -> i32 {
    let kk = P.kh * P.kw;
    let ch = r / kk;
    let rem = r % kk;
    let iy = i32(oy * P.stride_y + rem / P.kw) - i32(P.pad_top);
    let ix = i32(ox * P.stride_x + rem % P.kw) - i32(P.pad_left);
    if (iy < 0 || ix < 0 || iy >= i32(P.h) || ix >= i32(P.w)) {
        return -1;
    }
    return i32((ch * P.h + u32(iy)) * P.w + u32(ix));
}

// Flat output index (within the sample) that reaches input pixel (iy, ix) through weight
// position t = (oc, ky, kx) of the transposed reduction, or -1 when none does.
fn field_output(t: u32, iy: u32, ix: u32) -> i32 {
    let kk = P.kh * P.kw;
    let o = t / kk;
    let rem = t % kk;
    let ny = i32(iy + P.pad_top) - i32(rem / P.kw);
    let nx = i32(ix + P.pad_left) - i32(rem % P.kw);
    if (ny < 0 || nx < 0) {
        return -1;
    }
    let uy = u32(ny);
    let ux = u32(nx);
    if (uy % P.stride_y != 0u || ux % P.stride_x != 0u) {
        return -1;
    }
    let oy = uy / P.stride_y;
    let ox = ux / P.stride_x;
    if (oy >= P.oh || ox >= P.ow) {
        return -1;
    }
    return i32((o * P.oh + oy) * P.ow + ox);
}

// s from the per-term sums T_k of output unit j of sample n.
fn finish_s(n: u32, j: u32, t: vec4<f32>) {
    let r = P.rule;
    let nj = n * out_len() + j;
    let rj = r_in[nj];
    if (P.mode == 1u) {
        s[nj] = vec2<f32>(rj, 0.0);
        return;
    }
    let b = wb[P.bias_offset + j / (P.oh * P.ow)];
    let st = r.sign * t;
    let zero = vec4<f32>(0.0);
    let z0 = dot(st, select(zero, vec4<f32>(1.0), r.pass_of == vec4<u32>(0u)))
        + wmod(b, r.bias_mod.x, r.pass_const.z);
    let z1 = dot(st, select(zero, vec4<f32>(1.0), r.pass_of == vec4<u32>(1u)))
        + wmod(b, r.bias_mod.y, r.pass_const.w);
    let s0 = rj / stab(z0, r.eps.x);
    let s1 = select(0.0, rj / stab(z1, r.eps.x), r.bias_mod.z > 1u);
    s[nj] = vec2<f32>(s0, s1);
}

// R from the per-term back-projections c_k of input unit i of sample n.
fn finish_r(n: u32, i: u32, c: vec4<f32>) {
    let r = P.rule;
    let ni = n * in_len() + i;
    let coef = select(vec4<f32>(r.pass_const.x), vec4<f32>(r.pass_const.y), r.pass_of == vec4<u32>(1u));
    r_out[ni] = dot(coef * r.sign * xmods(x[ni]), c);
}

// Forward, split-K: one invocation per (sample, chunk of the receptive field, output pixel).
@compute @workgroup_size(64)
fn forward_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let olen = out_len();
    if (idx >= P.n * P.chunks_in * olen) {
        return;
    }
    let j = idx % olen;
    let nk = idx / olen;
    let k = nk % P.chunks_in;
    let n = nk / P.chunks_in;
    let o = j / (P.oh * P.ow);
    let oy = (j / P.ow) % P.oh;
    let ox = j % P.ow;
    let field = P.c * P.kh * P.kw;
    let start = k * P.chunk;
    let end = min(start + P.chunk, field);
    let xbase = n * in_len();
    var acc = 0.0;
    for (var r = start; r < end; r++) {
        let i = field_input(r, oy, ox);
        if (i >= 0) {
            acc += x[xbase + u32(i)] * wb[o * field + r];
        }
    }
    if (P.chunks_in == 1u) {
        y[n * olen + j] = acc + wb[P.bias_offset + o];
    } else {
        part[idx] = vec4<f32>(acc, 0.0, 0.0, 0.0);
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
    y[idx] = acc + wb[P.bias_offset + j / (P.oh * P.ow)];
}

// Relevance step 1, modified forward per term: one invocation per (sample, chunk, output value).
@compute @workgroup_size(64)
fn z_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let olen = out_len();
    if (idx >= P.n * P.chunks_in * olen) {
        return;
    }
    let j = idx % olen;
    let nk = idx / olen;
    let k = nk % P.chunks_in;
    let n = nk / P.chunks_in;
    let o = j / (P.oh * P.ow);
    let oy = (j / P.ow) % P.oh;
    let ox = j % P.ow;
    let field = P.c * P.kh * P.kw;
    let start = k * P.chunk;
    let end = min(start + P.chunk, field);
    let xbase = n * in_len();
    var acc = vec4<f32>(0.0);
    for (var r = start; r < end; r++) {
        let i = field_input(r, oy, ox);
        if (i >= 0) {
            acc += xmods(x[xbase + u32(i)]) * wmods(wb[o * field + r]);
        }
    }
    if (P.chunks_in == 1u) {
        finish_s(n, j, acc);
    } else {
        part[idx] = acc;
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
    var acc = vec4<f32>(0.0);
    if (P.mode == 0u) {
        for (var k = 0u; k < P.chunks_in; k++) {
            acc += part[(n * P.chunks_in + k) * olen + j];
        }
    }
    finish_s(n, j, acc);
}

// Relevance step 3, gather of the back-projection per term: one invocation per (sample, chunk of
// the transposed reduction, input value).
@compute @workgroup_size(64)
fn c_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let ilen = in_len();
    if (idx >= P.n * P.chunks_out * ilen) {
        return;
    }
    let i = idx % ilen;
    let nk = idx / ilen;
    let k = nk % P.chunks_out;
    let n = nk / P.chunks_out;
    let ch = i / (P.h * P.w);
    let iy = (i / P.w) % P.h;
    let ix = i % P.w;
    let kk = P.kh * P.kw;
    let field = P.c * kk;
    let total = P.oc * kk;
    let start = k * P.chunk;
    let end = min(start + P.chunk, total);
    let sbase = n * out_len();
    let pass1 = P.rule.pass_of == vec4<u32>(1u);
    var acc = vec4<f32>(0.0);
    for (var t = start; t < end; t++) {
        let j = field_output(t, iy, ix);
        if (j >= 0) {
            let o = t / kk;
            let sj = s[sbase + u32(j)];
            let wv = wb[o * field + ch * kk + t % kk];
            acc += wmods(wv) * select(vec4<f32>(sj.x), vec4<f32>(sj.y), pass1);
        }
    }
    if (P.chunks_out == 1u) {
        finish_r(n, i, acc);
    } else {
        part[idx] = acc;
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
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < P.chunks_out; k++) {
        acc += part[(n * P.chunks_out + k) * ilen + i];
    }
    finish_r(n, i, acc);
}
