// elementwise.wgsl: ReLU (forward, and its gradient for the baselines), the target choice and
// relevance seed between the forward and backward passes, and the baselines' final step.
//
// Bindings (group 0):
//   0 P        uniform ElementwiseParams: n samples of len values, mode, flag
//   1 x        storage read        relu_*: the ReLU input; seed: the logits; finalize: the network input
//   2 y        storage read_write  relu_forward: the ReLU output
//   3 r_in     storage read        relu_gradient, finalize: the gradient at the layer output / input
//   4 r_out    storage read_write  relu_gradient: gradient at the ReLU input; seed: the seed at the
//                                  logits; finalize: the baseline relevance
//   5 targets  storage read_write  one target index per sample (read when P.flag = 1, else written)
// Dispatch: 1-D over invocations, 64 per workgroup, folded into (x, y) workgroups when there are
// more than the per-dimension limit; index = gid.x + gid.y * num_workgroups.x * 64.
//   relu_forward, relu_gradient, finalize: n * len invocations
//   seed: n invocations (one per sample; loops twice over the len logits, and the host refuses
//         more than 16,384 logits, far below llvmpipe's 65,535-iteration cap)
//
// seed: mode 0 (LRP) R = e_t * y_t, mode 1 (gradient) R = e_t; flag 1: t = targets[n], flag 0:
// t = arg-max of the logits (first on ties, NaN never wins), written to targets[n].
// finalize: mode 0 (sensitivity) R = g^2, mode 1 (gradient x input) R = x * g.

struct ElementwiseParams {
    n: u32,
    len: u32,
    mode: u32,
    flag: u32,
}

@group(0) @binding(0) var<uniform> P: ElementwiseParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read> r_in: array<f32>;
@group(0) @binding(4) var<storage, read_write> r_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> targets: array<u32>;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

@compute @workgroup_size(64)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= P.n * P.len) {
        return;
    }
    y[idx] = max(x[idx], 0.0);
}

@compute @workgroup_size(64)
fn relu_gradient(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= P.n * P.len) {
        return;
    }
    r_out[idx] = select(0.0, r_in[idx], x[idx] > 0.0);
}

@compute @workgroup_size(64)
fn seed(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = flat_index(gid, nwg);
    if (n >= P.n) {
        return;
    }
    let base = n * P.len;
    var t = 0u;
    if (P.flag == 1u) {
        t = min(targets[n], P.len - 1u);
    } else {
        // Start below every finite value so that the first non-NaN logit wins, as on the CPU.
        var best = -3.4028235e38;
        var found = false;
        for (var j = 0u; j < P.len; j++) {
            let v = x[base + j];
            if (v > best || (!found && v == best)) {
                best = v;
                t = j;
                found = true;
            }
        }
        targets[n] = t;
    }
    let yt = x[base + t];
    for (var j = 0u; j < P.len; j++) {
        r_out[base + j] = select(0.0, select(yt, 1.0, P.mode == 1u), j == t);
    }
}

@compute @workgroup_size(64)
fn finalize(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= P.n * P.len) {
        return;
    }
    let g = r_in[idx];
    r_out[idx] = select(x[idx] * g, g * g, P.mode == 0u);
}
