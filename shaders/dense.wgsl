// dense.wgsl: Dense layer z = x W + b (W stored [inputs, outputs], bias after it), forward and
// relevance (every LRP rule as modifier terms, and the gradient used by the baselines).
//
// Bindings (group 0):
//   0 P       uniform DenseParams: shapes, chunking, mode and the rule's modifier terms
//   1 x       storage read        layer input, [n, inputs]
//   2 wb      storage read        W [inputs, outputs] row-major, then b [outputs] at P.bias_offset
//   3 y       storage read_write  layer output, [n, outputs]                      (forward)
//   4 part    storage read_write  split-K partial sums, vec4 per (n, chunk, unit)  (long reductions)
//   5 r_in    storage read        upper relevance (or gradient) R_j, [n, outputs]
//   6 s       storage read_write  s_j = R_j / stab(z'_j) per pass (x: pass 0, y: pass 1), [n, outputs]
//   7 r_out   storage read_write  lower relevance (or gradient) R_i, [n, inputs]
// Dispatch: 1-D over invocations, 64 per workgroup, folded into (x, y) workgroups when there are
// more than the per-dimension limit; index = gid.x + gid.y * num_workgroups.x * 64.
//   forward_partial, z_partial: n * chunks_in * outputs invocations (chunks_in = 1: writes the result)
//   forward_reduce, s_reduce:   n * outputs invocations (only when chunks_in > 1; s_reduce also
//                               for the gradient)
//   c_partial:                  n * chunks_out * inputs invocations (chunks_out = 1: writes R_i)
//   r_reduce:                   n * inputs invocations (only when chunks_out > 1)
// Every invocation loops over at most P.chunk inputs (or outputs), or over the chunks, so no
// invocation comes near llvmpipe's 65,535-iteration cap.
//
// Rule terms: up to four (pass, input modifier f, weight modifier g, sign) terms over up to two
// passes; z'_p = sum_{k in p} sign_k sum_i f_k(x_i) g_k(w_ij) + h_p(b_j), s_p = R / stab(z'_p),
// R_i = sum_k coef_{p(k)} sign_k f_k(x_i) sum_j g_k(w_ij) s_{p(k), j}.
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

struct DenseParams {
    n: u32,
    inputs: u32,
    outputs: u32,
    chunk: u32,
    chunks_in: u32,
    chunks_out: u32,
    bias_offset: u32,
    mode: u32,
    rule: RuleParams,
}

@group(0) @binding(0) var<uniform> P: DenseParams;
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

// s_j from the per-term sums T_k of output unit j (flat index nj = n * outputs + j).
fn finish_s(nj: u32, t: vec4<f32>) {
    let r = P.rule;
    let rj = r_in[nj];
    if (P.mode == 1u) {
        s[nj] = vec2<f32>(rj, 0.0);
        return;
    }
    let b = wb[P.bias_offset + nj % P.outputs];
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

// R_i from the per-term back-projections c_k of input unit i (flat index ni = n * inputs + i).
fn finish_r(ni: u32, c: vec4<f32>) {
    let r = P.rule;
    let coef = select(vec4<f32>(r.pass_const.x), vec4<f32>(r.pass_const.y), r.pass_of == vec4<u32>(1u));
    r_out[ni] = dot(coef * r.sign * xmods(x[ni]), c);
}

// Forward, split-K: one invocation per (sample, chunk of inputs, output).
@compute @workgroup_size(64)
fn forward_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= P.n * P.chunks_in * P.outputs) {
        return;
    }
    let j = idx % P.outputs;
    let nk = idx / P.outputs;
    let k = nk % P.chunks_in;
    let n = nk / P.chunks_in;
    let start = k * P.chunk;
    let end = min(start + P.chunk, P.inputs);
    var acc = 0.0;
    for (var i = start; i < end; i++) {
        acc += x[n * P.inputs + i] * wb[i * P.outputs + j];
    }
    if (P.chunks_in == 1u) {
        y[n * P.outputs + j] = acc + wb[P.bias_offset + j];
    } else {
        part[idx] = vec4<f32>(acc, 0.0, 0.0, 0.0);
    }
}

// Forward, sum of the partials plus bias: one invocation per (sample, output).
@compute @workgroup_size(64)
fn forward_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= P.n * P.outputs) {
        return;
    }
    let j = idx % P.outputs;
    let n = idx / P.outputs;
    var acc = 0.0;
    for (var k = 0u; k < P.chunks_in; k++) {
        acc += part[(n * P.chunks_in + k) * P.outputs + j].x;
    }
    y[idx] = acc + wb[P.bias_offset + j];
}

// Relevance step 1, modified forward per term: one invocation per (sample, chunk of inputs, output).
@compute @workgroup_size(64)
fn z_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= P.n * P.chunks_in * P.outputs) {
        return;
    }
    let j = idx % P.outputs;
    let nk = idx / P.outputs;
    let k = nk % P.chunks_in;
    let n = nk / P.chunks_in;
    let start = k * P.chunk;
    let end = min(start + P.chunk, P.inputs);
    var acc = vec4<f32>(0.0);
    for (var i = start; i < end; i++) {
        acc += xmods(x[n * P.inputs + i]) * wmods(wb[i * P.outputs + j]);
    }
    if (P.chunks_in == 1u) {
        finish_s(n * P.outputs + j, acc);
    } else {
        part[idx] = acc;
    }
}

// Relevance step 2 (long reductions, and the gradient): sum the partials, s = R / stab(z').
@compute @workgroup_size(64)
fn s_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= P.n * P.outputs) {
        return;
    }
    let j = idx % P.outputs;
    let n = idx / P.outputs;
    var acc = vec4<f32>(0.0);
    if (P.mode == 0u) {
        for (var k = 0u; k < P.chunks_in; k++) {
            acc += part[(n * P.chunks_in + k) * P.outputs + j];
        }
    }
    finish_s(idx, acc);
}

// Relevance step 3, back-projection per term: one invocation per (sample, chunk of outputs, input).
@compute @workgroup_size(64)
fn c_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= P.n * P.chunks_out * P.inputs) {
        return;
    }
    let i = idx % P.inputs;
    let nk = idx / P.inputs;
    let k = nk % P.chunks_out;
    let n = nk / P.chunks_out;
    let start = k * P.chunk;
    let end = min(start + P.chunk, P.outputs);
    let pass1 = P.rule.pass_of == vec4<u32>(1u);
    var acc = vec4<f32>(0.0);
    for (var j = start; j < end; j++) {
        let sj = s[n * P.outputs + j];
        acc += wmods(wb[i * P.outputs + j]) * select(vec4<f32>(sj.x), vec4<f32>(sj.y), pass1);
    }
    if (P.chunks_out == 1u) {
        finish_r(n * P.inputs + i, acc);
    } else {
        part[idx] = acc;
    }
}

// Relevance step 4 (long reductions only): sum the back-projection partials into R_i.
@compute @workgroup_size(64)
fn r_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= P.n * P.inputs) {
        return;
    }
    let i = idx % P.inputs;
    let n = idx / P.inputs;
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < P.chunks_out; k++) {
        acc += part[(n * P.chunks_out + k) * P.inputs + i];
    }
    finish_r(idx, acc);
}
