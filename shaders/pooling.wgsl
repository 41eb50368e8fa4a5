// pooling.wgsl: 2-D max, average and sum pooling (any kernel, stride and padding), forward and
// relevance (LRP: winner-take-all for max, proportional for average/sum; gradient for the baselines).
//
// Bindings (group 0):
//   0 P       uniform PoolParams: shapes, window, divisor and mode
//   1 x       storage read        layer input, [n, c, h, w]
//   2 y       storage read_write  layer output, [n, c, oh, ow]                    (forward)
//   3 arg     storage read_write  max pooling: flat input index (within the sample) of each
//                                 window's winner, [n, c, oh, ow]; kept for the backward pass
//   4 r_in    storage read        upper relevance (or gradient), [n, c, oh, ow]
//   5 s       storage read_write  average pooling: R_j / stab(sum of the window) (LRP) or
//                                 R_j / divisor (gradient), [n, c, oh, ow]
//   6 r_out   storage read_write  lower relevance (or gradient), [n, c, h, w]
// Dispatch: 1-D over invocations, 64 per workgroup, folded into (x, y) workgroups when there are
// more than the per-dimension limit; index = gid.x + gid.y * num_workgroups.x * 64.
//   max_forward, avg_forward, avg_s:  n * c * oh * ow invocations (one per window)
//   max_relevance, avg_relevance:     n * c * h * w invocations (one per input value; each gathers
//                                     over the windows that contain it, no atomics)
// Each invocation loops over kh * kw window positions; the host refuses windows of more than
// 16,384 positions, far below llvmpipe's 65,535-iteration cap.
//
// divisor: 0 number of real (non-padding) positions, 1 kernel area (count_include_pad), 2 none
// (sum pooling). mode 0: LRP, mode 1: gradient.

struct PoolParams {
    n: u32,
    c: u32,
    h: u32,
    w: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride_y: u32,
    stride_x: u32,
    pad_top: u32,
    pad_left: u32,
    divisor: u32,
    mode: u32,
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> P: PoolParams;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> arg: array<u32>;
@group(0) @binding(4) var<storage, read> r_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> s: array<f32>;
@group(0) @binding(6) var<storage, read_write> r_out: array<f32>;

const NONE: u32 = 0xffffffffu;

fn flat_index(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

fn out_len() -> u32 {
    return P.c * P.oh * P.ow;
}

fn in_len() -> u32 {
    return P.c * P.h * P.w;
}

// Flat input index (within the sample) of window position (ky, kx) of window (ch, oy, ox), or
// NONE for a padding position.
fn window_input(ch: u32, oy: u32, ox: u32, ky: u32, kx: u32) -> u32 {
    let iy = i32(oy * P.stride_y + ky) - i32(P.pad_top);
    let ix = i32(ox * P.stride_x + kx) - i32(P.pad_left);
    if (iy < 0 || ix < 0 || iy >= i32(P.h) || ix >= i32(P.w)) {
        return NONE;
    }
    return (ch * P.h + u32(iy)) * P.w + u32(ix);
}

// Flat output index (within the sample) of the window that holds input pixel (iy, ix) at window
// position (ky, kx), or NONE when no window does.
fn window_output(ch: u32, iy: u32, ix: u32, ky: u32, kx: u32) -> u32 {
    let ny = i32(iy + P.pad_top) - i32(ky);
    let nx = i32(ix + P.pad_left) - i32(kx);
    if (ny < 0 || nx < 0) {
        return NONE;
    }
    let uy = u32(ny);
    let ux = u32(nx);
    if (uy % P.stride_y != 0u || ux % P.stride_x != 0u) {
        return NONE;
    }
    let oy = uy / P.stride_y;
    let ox = ux / P.stride_x;
    if (oy >= P.oh || ox >= P.ow) {
        return NONE;
    }
    return (ch * P.oh + oy) * P.ow + ox;
}

// Max pooling forward: the first arg-max in row-major window order wins; padding never wins.
@compute @workgroup_size(64)
fn max_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let olen = out_len();
    if (idx >= P.n * olen) {
        return;
    }
    let j = idx % olen;
    let n = idx / olen;
    let ch = j / (P.oh * P.ow);
    let oy = (j / P.ow) % P.oh;
    let ox = j % P.ow;
    let xbase = n * in_len();
    var best = 0.0;
    var best_i = NONE;
    for (var ky = 0u; ky < P.kh; ky++) {
        for (var kx = 0u; kx < P.kw; kx++) {
            let i = window_input(ch, oy, ox, ky, kx);
            if (i != NONE) {
                let v = x[xbase + i];
                if (best_i == NONE || v > best) {
                    best = v;
                    best_i = i;
                }
            }
        }
    }
    y[idx] = best;
    arg[idx] = best_i;
}

// Max pooling relevance (LRP) and gradient alike: each input gathers R_j of every window it won.
@compute @workgroup_size(64)
fn max_relevance(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let ilen = in_len();
    if (idx >= P.n * ilen) {
        return;
    }
    let i = idx % ilen;
    let n = idx / ilen;
    let ch = i / (P.h * P.w);
    let iy = (i / P.w) % P.h;
    let ix = i % P.w;
    let obase = n * out_len();
    var acc = 0.0;
    for (var ky = 0u; ky < P.kh; ky++) {
        for (var kx = 0u; kx < P.kw; kx++) {
            let j = window_output(ch, iy, ix, ky, kx);
            if (j != NONE && arg[obase + j] == i) {
                acc += r_in[obase + j];
            }
        }
    }
    r_out[idx] = acc;
}

// Sum of the real inputs of output j's window in sample n, and their count (as f32).
fn window_sum(n: u32, j: u32) -> vec2<f32> {
    let ch = j / (P.oh * P.ow);
    let oy = (j / P.ow) % P.oh;
    let ox = j % P.ow;
    let xbase = n * in_len();
    var acc = 0.0;
    var count = 0u;
    for (var ky = 0u; ky < P.kh; ky++) {
        for (var kx = 0u; kx < P.kw; kx++) {
            let i = window_input(ch, oy, ox, ky, kx);
            if (i != NONE) {
                acc += x[xbase + i];
                count += 1u;
            }
        }
    }
    return vec2<f32>(acc, f32(count));
}

// Average pooling's divisor: the real positions (divisor 0, ONNX count_include_pad=0), the
// whole window (1), or 1 for sum pooling (2).
fn avg_divisor(count: f32) -> f32 {
    if (P.divisor == 0u) {
        return max(count, 1.0);
    } else if (P.divisor == 1u) {
        return f32(P.kh * P.kw);
    }
    return 1.0;
}

// Average/sum pooling forward: sum of the real positions over the divisor.
@compute @workgroup_size(64)
fn avg_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let olen = out_len();
    if (idx >= P.n * olen) {
        return;
    }
    let window = window_sum(idx / olen, idx % olen);
    let acc = window.x;
    y[idx] = acc / avg_divisor(window.y);
}

// Average/sum pooling backward step 1, per window: LRP s_j = R_j / stab(sum of the real inputs,
// 1e-9); gradient s_j = R_j / divisor.
@compute @workgroup_size(64)
fn avg_s(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let olen = out_len();
    if (idx >= P.n * olen) {
        return;
    }
    let window = window_sum(idx / olen, idx % olen);
    let acc = window.x;
    if (P.mode == 0u) {
        s[idx] = r_in[idx] / select(acc - 1e-9, acc + 1e-9, acc >= 0.0);
    } else {
        s[idx] = r_in[idx] / avg_divisor(window.y);
    }
}

// Average/sum pooling backward step 2, per input: gather s_j over the windows that contain it;
// LRP multiplies by x_i.
@compute @workgroup_size(64)
fn avg_relevance(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let ilen = in_len();
    if (idx >= P.n * ilen) {
        return;
    }
    let i = idx % ilen;
    let n = idx / ilen;
    let ch = i / (P.h * P.w);
    let iy = (i / P.w) % P.h;
    let ix = i % P.w;
    let obase = n * out_len();
    var acc = 0.0;
    for (var ky = 0u; ky < P.kh; ky++) {
        for (var kx = 0u; kx < P.kw; kx++) {
            let j = window_output(ch, iy, ix, ky, kx);
            if (j != NONE) {
                acc += s[obase + j];
            }
        }
    }
    r_out[idx] = select(acc, x[idx] * acc, P.mode == 0u);
}
