// dense.wgsl: Dense layer z = x W + b (W stored [inputs, outputs], bias after it), forward and
// relevance (every LRP rule as modifier terms, and the gradient used by the baselines).
//
// Bindings (group 0):
//   0 P       uniform DenseParams: shapes, chunking, mode and the rule's modifier terms
//   1 x       storage read        layer input, [n, inputs]
//   2 wb      storage read        W [inputs, outputs] row-major, b [outputs] at P.bias_offset, then
//                                 the modified weights per term (P.rule.term_layout)
//   3 y       storage read_write  layer output, [n, outputs]                      (forward)
//   4 part    storage read_write  split-K partial sums, vec4 per (n, chunk, unit)  (long reductions)
//   5 r_in    storage read        upper relevance (or gradient) R_j, [n, outputs]
//   6 s       storage read_write  s_j = R_j / stab(z'_j) per pass (x: pass 0, y: pass 1), [n, outputs]
//   7 r_out   storage read_write  lower relevance (or gradient) R_i, [n, inputs]
// Dispatch: 1-D over invocations, 64 per workgroup, folded into (x, y) workgroups when there are
// more than the per-dimension limit; index = gid.x + gid.y * num_workgroups.x * 64.
//   forward_partial, z_partial: ceil(n/4) * chunks_in * outputs invocations, 4 samples each
//                               (chunks_in = 1: writes the result)
//   forward_reduce, s_reduce:   n * outputs invocations (only when chunks_in > 1; s_reduce also
//                               for the gradient and, instead of z_partial, for kept z')
//   c_partial:                  ceil(n/4) * chunks_out * inputs invocations, 4 samples each
//                               (chunks_out = 1: writes R_i)
//   r_reduce:                   n * inputs invocations (only when chunks_out > 1)
// Every invocation loops over at most P.chunk inputs (or outputs), or over the chunks, so no
// invocation comes near llvmpipe's 65,535-iteration cap.
//
// Rule terms: up to four (pass, input modifier f, weight modifier g, sign) terms over up to two
// passes; z'_p = sum_{k in p} sign_k sum_i f_k(x_i) g_k(w_ij) + h_p(b_j), s_p = R / stab(z'_p),
// R_i = sum_k coef_{p(k)} sign_k f_k(x_i) sum_j g_k(w_ij) s_{p(k), j}.
// Modifiers are branch-free: linear combinations of v, max(0,v), min(0,v), v^2 and 1 with
// per-term coefficients from the uniform (e.g. zplus: f = max(0,x), g = max(0,w); gamma:
// g = w + G max(0,w)). The weight modifiers sign_k g_k(W) are precomputed by the host (weights
// are constant) and stored in wb after the bias, once per term and once more transposed, so the
// back-projection reads them coalesced; the kernels loop over the P.rule.term_layout.x terms
// in use only (one-term rules do a quarter of the work of four-term ones). A ReLU right after
// the layer is applied by the forward pass when P.relu = 1. Split-K partials hold the
// per-pass sums (z_partial: (z'_0, z'_1)) or the partial R_i (c_partial, in .x).
// mode 0: LRP; mode 1: gradient (s = R, no division; the terms are set to (one, w)).
//
// Kept z' (P.keep_z = 1, 2 or 3, LRP only), as in conv2d.wgsl: where the rule's one pass has a
// single data-dependent term (term 0) whose input modifier is x itself, the forward pass keeps
// that term's share of z' (before bias and ReLU) in s.x, in an s buffer of the layer's own: its
// own sum when the term is the plain x w (keep_z = 1: LRP-0, epsilon, z^B), a second sum with
// the term's weights from the same input loads otherwise (keep_z = 2: z+ and gamma on a ReLU
// output). With keep_z = 3 (alpha-beta on a ReLU output: x w+ in pass 0, x w- in pass 1, terms 0
// and 1) it sums x w+ and x w- beside x w and keeps them as s.x and s.y.
// The relevance pass runs s_reduce, which adds the constant terms' share and the bias modifier,
// instead of z_partial.

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
    // x: number of terms in use; y: offset in wb of the precomputed sign_k g_k(W) of term 0
    // ([inputs, outputs], term k at y + k * z); z: values per term; w: offset of the transposed
    // copies ([outputs, inputs] per term)
    term_layout: vec4<u32>,
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
    // 1: the forward pass applies the following ReLU layer (fused; the plan skips that layer)
    relu: u32,
    // 0, or 1 + the offset in wb of the constant-input terms' share of z' (their f is a constant,
    // so it is the same for every sample): per output, pass 0 then pass 1. z_partial then skips
    // those terms.
    z_const: u32,
    // 1, 2 or 3: kept z' (see "Kept z'" above); 0 otherwise
    keep_z: u32,
    pad2: u32,
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

// Index in wb of sign_t g_t(w_ij), precomputed by the host: [inputs, outputs] per term, and the
// transposed copy [outputs, inputs] per term for the back-projection.
fn wmod_index(t: u32, i: u32, j: u32) -> u32 {
    return P.rule.term_layout.y + t * P.rule.term_layout.z + i * P.outputs + j;
}

fn wmod_t_index(t: u32, i: u32, j: u32) -> u32 {
    return P.rule.term_layout.w + t * P.rule.term_layout.z + j * P.inputs + i;
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

// s_j from the per-pass sums z of output unit j (flat index nj = n * outputs + j).
fn finish_s(nj: u32, z: vec2<f32>) {
    let r = P.rule;
    let rj = r_in[nj];
    if (P.mode == 1u) {
        s[nj] = vec2<f32>(rj, 0.0);
        return;
    }
    let b = wb[P.bias_offset + nj % P.outputs];
    let zb = z + bmods(b);
    let s0 = rj / stab(zb.x, r.extra.z);
    let s1 = select(0.0, rj / stab(zb.y, r.extra.z), r.extra.w > 1.5);
    s[nj] = vec2<f32>(s0, s1);
}

// Sample blocking: forward_partial, z_partial and c_partial compute 4 samples per invocation,
// so each weight (plain, or modified per term) is loaded once per 4 samples. Lanes past the
// last sample read a clamped sample and write nothing.
const BLOCK: u32 = 4u;

fn sample_blocks() -> u32 {
    return (P.n + BLOCK - 1u) / BLOCK;
}

// The flat offsets of rows n0 .. n0 + 3 (clamped to the last sample) of a [n, len] array.
fn rows(n0: u32, len: u32) -> vec4<u32> {
    let last = P.n - 1u;
    return vec4<u32>(min(n0, last), min(n0 + 1u, last), min(n0 + 2u, last), min(n0 + 3u, last)) * len;
}

fn x4(r: vec4<u32>, i: u32) -> vec4<f32> {
    return vec4<f32>(x[r.x + i], x[r.y + i], x[r.z + i], x[r.w + i]);
}

// f_t(v) of term t for 4 values.
fn xmod4(v: vec4<f32>, t: u32) -> vec4<f32> {
    let r = P.rule;
    return r.x_lin[t] * v + r.x_pos[t] * max(v, vec4<f32>(0.0)) + r.x_neg[t] * min(v, vec4<f32>(0.0))
        + r.x_one[t];
}

// Forward, split-K: one invocation per (block of 4 samples, chunk of inputs, output).
@compute @workgroup_size(64)
fn forward_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= sample_blocks() * P.chunks_in * P.outputs) {
        return;
    }
    let j = idx % P.outputs;
    let nk = idx / P.outputs;
    let k = nk % P.chunks_in;
    let n0 = (nk / P.chunks_in) * BLOCK;
    let start = k * P.chunk;
    let end = min(start + P.chunk, P.inputs);
    let xr = rows(n0, P.inputs);
    var acc = vec4<f32>(0.0);
    // keep_z = 2: the data term's sum as well, from the same input loads; keep_z = 3: the sums
    // with terms 0 and 1's weights (x w+ and x w-) as well
    var kept = vec4<f32>(0.0);
    var kept1 = vec4<f32>(0.0);
    if (P.keep_z == 3u) {
        for (var i = start; i < end; i++) {
            let v = x4(xr, i);
            acc += v * wb[i * P.outputs + j];
            kept += v * wb[wmod_index(0u, i, j)];
            kept1 += v * wb[wmod_index(1u, i, j)];
        }
    } else if (P.keep_z == 2u) {
        for (var i = start; i < end; i++) {
            let v = x4(xr, i);
            acc += v * wb[i * P.outputs + j];
            kept += v * wb[wmod_index(0u, i, j)];
        }
    } else {
        for (var i = start; i < end; i++) {
            acc += x4(xr, i) * wb[i * P.outputs + j];
        }
        kept = acc;
    }
    for (var l = 0u; l < BLOCK; l++) {
        let n = n0 + l;
        if (n < P.n) {
            let nj = n * P.outputs + j;
            if (P.chunks_in == 1u) {
                y[nj] = activation(acc[l] + wb[P.bias_offset + j]);
                if (P.keep_z != 0u) {
                    s[nj] = vec2<f32>(kept[l], kept1[l]);
                }
            } else {
                part[(n * P.chunks_in + k) * P.outputs + j] = vec4<f32>(acc[l], kept[l], kept1[l], 0.0);
            }
        }
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
    var acc = vec3<f32>(0.0);
    for (var k = 0u; k < P.chunks_in; k++) {
        acc += part[(n * P.chunks_in + k) * P.outputs + j].xyz;
    }
    y[idx] = activation(acc.x + wb[P.bias_offset + j]);
    if (P.keep_z != 0u) {
        s[idx] = acc.yz;
    }
}

// Relevance step 1, modified forward per term: one invocation per (block of 4 samples, chunk of
// inputs, output).
@compute @workgroup_size(64)
fn z_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= sample_blocks() * P.chunks_in * P.outputs) {
        return;
    }
    let j = idx % P.outputs;
    let nk = idx / P.outputs;
    let k = nk % P.chunks_in;
    let n0 = (nk / P.chunks_in) * BLOCK;
    let start = k * P.chunk;
    let end = min(start + P.chunk, P.inputs);
    let xr = rows(n0, P.inputs);
    var z0 = vec4<f32>(0.0);
    var z1 = vec4<f32>(0.0);
    if (P.z_const != 0u && k == 0u) {
        let zc = P.z_const - 1u + j * 2u;
        z0 = vec4<f32>(wb[zc]);
        z1 = vec4<f32>(wb[zc + 1u]);
    }
    for (var t = 0u; t < terms(); t++) {
        if (precomputed(t)) {
            continue;
        }
        var acc = vec4<f32>(0.0);
        for (var i = start; i < end; i++) {
            acc += xmod4(x4(xr, i), t) * wb[wmod_index(t, i, j)];
        }
        if (P.rule.term_pass1[t] > 0.5) {
            z1 += acc;
        } else {
            z0 += acc;
        }
    }
    for (var l = 0u; l < BLOCK; l++) {
        let n = n0 + l;
        if (n < P.n) {
            let z = vec2<f32>(z0[l], z1[l]);
            if (P.chunks_in == 1u) {
                finish_s(n * P.outputs + j, z);
            } else {
                part[(n * P.chunks_in + k) * P.outputs + j] = vec4<f32>(z, 0.0, 0.0);
            }
        }
    }
}

// Relevance step 2 (long reductions, the gradient, and kept z'): sum the partials (or take the
// kept z' and the constant terms' share), s = R / stab(z').
@compute @workgroup_size(64)
fn s_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= P.n * P.outputs) {
        return;
    }
    let j = idx % P.outputs;
    let n = idx / P.outputs;
    var acc = vec2<f32>(0.0);
    if (P.mode == 0u && P.keep_z != 0u) {
        // (pass 1's share is 0 but with keep_z = 3)
        acc = s[idx];
        if (P.z_const != 0u) {
            let zc = P.z_const - 1u + j * 2u;
            acc += vec2<f32>(wb[zc], wb[zc + 1u]);
        }
    } else if (P.mode == 0u) {
        for (var k = 0u; k < P.chunks_in; k++) {
            acc += part[(n * P.chunks_in + k) * P.outputs + j].xy;
        }
    }
    finish_s(idx, acc);
}

// Relevance step 3, back-projection per term: one invocation per (block of 4 samples, chunk of
// outputs, input); reads the transposed modified weights, coalesced over inputs.
@compute @workgroup_size(64)
fn c_partial(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= sample_blocks() * P.chunks_out * P.inputs) {
        return;
    }
    let i = idx % P.inputs;
    let nk = idx / P.inputs;
    let k = nk % P.chunks_out;
    let n0 = (nk / P.chunks_out) * BLOCK;
    let start = k * P.chunk;
    let end = min(start + P.chunk, P.outputs);
    let sr = rows(n0, P.outputs);
    let v = x4(rows(n0, P.inputs), i);
    var r = vec4<f32>(0.0);
    for (var t = 0u; t < terms(); t++) {
        let pass1 = P.rule.term_pass1[t] > 0.5;
        var acc = vec4<f32>(0.0);
        for (var j = start; j < end; j++) {
            let s0 = s[sr.x + j];
            let s1 = s[sr.y + j];
            let s2 = s[sr.z + j];
            let s3 = s[sr.w + j];
            let sj = select(
                vec4<f32>(s0.x, s1.x, s2.x, s3.x),
                vec4<f32>(s0.y, s1.y, s2.y, s3.y),
                pass1,
            );
            acc += sj * wb[wmod_t_index(t, i, j)];
        }
        r += P.rule.term_coef[t] * xmod4(v, t) * acc;
    }
    for (var l = 0u; l < BLOCK; l++) {
        let n = n0 + l;
        if (n < P.n) {
            if (P.chunks_out == 1u) {
                r_out[n * P.inputs + i] = r[l];
            } else {
                part[(n * P.chunks_out + k) * P.inputs + i] = vec4<f32>(r[l], 0.0, 0.0, 0.0);
            }
        }
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
    var acc = 0.0;
    for (var k = 0u; k < P.chunks_out; k++) {
        acc += part[(n * P.chunks_out + k) * P.inputs + i].x;
    }
    r_out[idx] = acc;
}
