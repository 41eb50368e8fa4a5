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
//   max_relevance_tiled,              n * c * ceil(h / kh) * ceil(w / kw) invocations (one per
//   avg_relevance_tiled:              tile of the input; only where the windows tile it: kernel =
//                                     stride, no padding at the top or left)
// Each invocation loops over at most kh * kw window positions; the host refuses windows of more
// than 16,384 positions, far below llvmpipe's 65,535-iteration cap.
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

// The window rows (or columns) that hold input row n = iy + pad: ky = first, first + stride, ...
// < end, the window's output row (n - ky) / stride counting down from out_first. One modulo per
// input instead of one per window position.
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

// What the windows holding input value i of sample n send it: max pooling (is_max), the R_j
// of every window it won; average pooling, the sum of their s_j.
fn gathered(n: u32, i: u32, is_max: bool) -> f32 {
    let ch = i / (P.h * P.w);
    let iy = (i / P.w) % P.h;
    let ix = i % P.w;
    let obase = n * out_len() + ch * P.oh * P.ow;
    let ry = reach(i32(iy + P.pad_top), P.stride_y, P.oh, P.kh);
    let rx = reach(i32(ix + P.pad_left), P.stride_x, P.ow, P.kw);
    var acc = 0.0;
    var oy = ry.out_first;
    for (var ky = ry.first; ky < ry.end; ky += P.stride_y) {
        var ox = rx.out_first;
        for (var kx = rx.first; kx < rx.end; kx += P.stride_x) {
            let j = obase + oy * P.ow + ox;
            if (!is_max) {
                acc += s[j];
            } else if (arg[j] == i) {
                acc += r_in[j];
            }
            ox -= 1u;
        }
        oy -= 1u;
    }
    return acc;
}

// Max pooling relevance (LRP) and gradient alike: each input gathers R_j of every window it won.
@compute @workgroup_size(64)
fn max_relevance(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    let ilen = in_len();
    if (idx >= P.n * ilen) {
        return;
    }
    r_out[idx] = gathered(idx / ilen, idx % ilen, true);
}

// Where the windows tile the input (kernel = stride, no padding at the top or left, as with the
// usual 2 x 2 pooling of stride 2), each input lies in one window at most, and one invocation per
// tile of kh x kw inputs writes the relevance of all of them, without a gather: a quarter of the
// invocations of max_relevance / avg_relevance on 2 x 2 windows, the same values. Tiles past the
// last window (inputs no window holds) write 0.
struct Tile {
    n: u32,
    ch: u32,
    ty: u32,
    tx: u32,
    // the window's flat output index in the batch, or NONE past the last window
    j: u32,
    // the inputs of the tile that lie in the input: rows and columns
    rows: u32,
    cols: u32,
}

fn tile_of(idx: u32) -> Tile {
    let tiles_y = (P.h + P.kh - 1u) / P.kh;
    let tiles_x = (P.w + P.kw - 1u) / P.kw;
    let per_channel = tiles_y * tiles_x;
    let per_sample = P.c * per_channel;
    let n = idx / per_sample;
    let t = idx % per_sample;
    let ch = t / per_channel;
    let ty = (t / tiles_x) % tiles_y;
    let tx = t % tiles_x;
    var j = NONE;
    if (ty < P.oh && tx < P.ow) {
        j = n * out_len() + (ch * P.oh + ty) * P.ow + tx;
    }
    return Tile(n, ch, ty, tx, j, min(P.kh, P.h - ty * P.kh), min(P.kw, P.w - tx * P.kw));
}

fn tiles() -> u32 {
    return P.n * P.c * ((P.h + P.kh - 1u) / P.kh) * ((P.w + P.kw - 1u) / P.kw);
}

// Flat input index (within the batch) of position (ky, kx) of a tile.
fn tile_input(t: Tile, ky: u32, kx: u32) -> u32 {
    return t.n * in_len() + (t.ch * P.h + t.ty * P.kh + ky) * P.w + t.tx * P.kw + kx;
}

// Max pooling relevance by tiles: the window's R_j to its winner, 0 to the rest.
@compute @workgroup_size(64)
fn max_relevance_tiled(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= tiles()) {
        return;
    }
    let t = tile_of(idx);
    var winner = NONE;
    var r = 0.0;
    if (t.j != NONE) {
        // arg holds the winner's index within the sample
        winner = t.n * in_len() + arg[t.j];
        r = r_in[t.j];
    }
    for (var ky = 0u; ky < t.rows; ky++) {
        for (var kx = 0u; kx < t.cols; kx++) {
            let i = tile_input(t, ky, kx);
            r_out[i] = select(0.0, r, i == winner);
        }
    }
}

// Average/sum pooling relevance by tiles: avg_s and avg_relevance in one pass, s_j from the
// window's sum, then every input of the window gets x_i * s_j (LRP) or s_j (gradient).
@compute @workgroup_size(64)
fn avg_relevance_tiled(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= tiles()) {
        return;
    }
    let t = tile_of(idx);
    var s_j = 0.0;
    if (t.j != NONE) {
        s_j = window_s(t.j);
    }
    for (var ky = 0u; ky < t.rows; ky++) {
        for (var kx = 0u; kx < t.cols; kx++) {
            let i = tile_input(t, ky, kx);
            r_out[i] = select(s_j, x[i] * s_j, P.mode == 0u);
        }
    }
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

// s_j of window idx (flat over the batch's outputs): LRP R_j / stab(sum of the real inputs,
// 1e-9); gradient R_j / divisor.
fn window_s(idx: u32) -> f32 {
    let olen = out_len();
    let window = window_sum(idx / olen, idx % olen);
    let acc = window.x;
    if (P.mode == 0u) {
        return r_in[idx] / select(acc - 1e-9, acc + 1e-9, acc >= 0.0);
    }
    return r_in[idx] / avg_divisor(window.y);
}

// Average/sum pooling backward step 1, per window: s_j (window_s).
@compute @workgroup_size(64)
fn avg_s(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let idx = flat_index(gid, nwg);
    if (idx >= P.n * out_len()) {
        return;
    }
    s[idx] = window_s(idx);
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
    let acc = gathered(idx / ilen, idx % ilen, false);
    r_out[idx] = select(acc, x[idx] * acc, P.mode == 0u);
}
