//! Sliding windows on channel-major batches, f32: im2col and col2im for Conv2d, and the max and
//! average/sum pooling kernels (forward, relevance, gradient).
//!
//! A batch of m samples with c channels of h x w is stored as (c, m, h, w), so that one matrix
//! product covers the whole batch: a convolution's im2col matrix is (c * kh * kw, m * oh * ow) and
//! its output (oc, m * oh * ow) is already the next layer's (c, m, h, w). Output position
//! (oi, oj) sees, at kernel offset (ki, kj), input position (oi * sh + ki - top, oj * sw + kj - left);
//! positions outside the input are padding (0 for convolutions, never a max-pool winner).

use crate::lrp::DEFAULT_EPS;
use crate::model::Window;

/// Marks a max-pool output whose window holds no real input position.
const NONE: u32 = u32::MAX;

/// One windowed layer on a (c, h, w) input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Geom {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    /// Padding above and to the left (below and to the right only shape the output size).
    pub top: usize,
    pub left: usize,
    pub oh: usize,
    pub ow: usize,
}

/// The output indices o in 0..out whose input index o * stride + k - pad lies in 0..input.
fn real_range(out: usize, input: usize, stride: usize, k: usize, pad: usize) -> (usize, usize) {
    let lo = if pad > k {
        (pad - k).div_ceil(stride)
    } else {
        0
    };
    let hi = if input + pad > k {
        ((input - 1 + pad - k) / stride + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

impl Geom {
    /// `window` on a (c, h, w) input, or `None` when it does not fit.
    pub fn new(window: &Window, c: usize, h: usize, w: usize) -> Option<Self> {
        let (oh, ow) = window.output_hw(h, w)?;
        Some(Geom {
            c,
            h,
            w,
            kh: window.kernel[0],
            kw: window.kernel[1],
            sh: window.stride[0],
            sw: window.stride[1],
            top: window.pad[0],
            left: window.pad[1],
            oh,
            ow,
        })
    }

    /// A Dense layer seen as a 1 x 1 convolution over a 1 x 1 input with `inputs` channels.
    pub fn pointwise(inputs: usize) -> Self {
        Geom {
            c: inputs,
            h: 1,
            w: 1,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            top: 0,
            left: 0,
            oh: 1,
            ow: 1,
        }
    }

    /// Whether im2col is the identity (a 1 x 1 kernel, stride 1, no padding).
    pub fn is_pointwise(&self) -> bool {
        (
            self.kh, self.kw, self.sh, self.sw, self.top, self.left, self.oh, self.ow,
        ) == (1, 1, 1, 1, 0, 0, self.h, self.w)
    }

    /// Values per input plane (h * w).
    pub fn plane_in(&self) -> usize {
        self.h * self.w
    }

    /// Values per output plane (oh * ow).
    pub fn plane_out(&self) -> usize {
        self.oh * self.ow
    }

    /// Rows of the im2col matrix: c * kh * kw.
    pub fn patch(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Output rows that see a real input row at kernel row `ki`.
    fn rows(&self, ki: usize) -> (usize, usize) {
        real_range(self.oh, self.h, self.sh, ki, self.top)
    }

    /// Output columns that see a real input column at kernel column `kj`.
    fn cols(&self, kj: usize) -> (usize, usize) {
        real_range(self.ow, self.w, self.sw, kj, self.left)
    }

    /// Calls `f(plane, ki, kj, oi, oj0..oj1, input row, first input column)` for every run of
    /// real positions: output row `oi` of `plane` sees, at offset (ki, kj), input row `ii` from
    /// column `jj0` on with step `sw`.
    fn for_each_run(
        &self,
        planes: usize,
        mut f: impl FnMut(usize, usize, usize, usize, (usize, usize), usize, usize),
    ) {
        for p in 0..planes {
            for ki in 0..self.kh {
                let (r0, r1) = self.rows(ki);
                for kj in 0..self.kw {
                    let (c0, c1) = self.cols(kj);
                    if c0 == c1 {
                        continue;
                    }
                    for oi in r0..r1 {
                        let ii = oi * self.sh + ki - self.top;
                        let jj0 = c0 * self.sw + kj - self.left;
                        f(p, ki, kj, oi, (c0, c1), ii, jj0);
                    }
                }
            }
        }
    }

    /// im2col of m samples: `src` (c, m, h, w) -> `dst` (c * kh * kw, m, oh, ow), padding as 0.
    /// Every value of `dst` is written.
    pub fn im2col(&self, m: usize, src: &[f32], dst: &mut [f32]) {
        let (pin, pout) = (self.plane_in(), self.plane_out());
        debug_assert_eq!(src.len(), self.c * m * pin);
        debug_assert_eq!(dst.len(), self.patch() * m * pout);
        let mut rows = dst.chunks_exact_mut(m * pout);
        for ch in 0..self.c {
            for ki in 0..self.kh {
                let (r0, r1) = self.rows(ki);
                for kj in 0..self.kw {
                    let (c0, c1) = self.cols(kj);
                    let row = rows.next().expect("c * kh * kw rows");
                    for (n, out) in row.chunks_exact_mut(pout).enumerate() {
                        let plane = &src[(ch * m + n) * pin..][..pin];
                        for (oi, line) in out.chunks_exact_mut(self.ow).enumerate() {
                            if oi < r0 || oi >= r1 || c0 == c1 {
                                line.fill(0.0);
                                continue;
                            }
                            let ii = oi * self.sh + ki - self.top;
                            let jj0 = c0 * self.sw + kj - self.left;
                            let input = &plane[ii * self.w..][..self.w];
                            line[..c0].fill(0.0);
                            line[c1..].fill(0.0);
                            let line = &mut line[c0..c1];
                            if self.sw == 1 {
                                line.copy_from_slice(&input[jj0..jj0 + line.len()]);
                            } else {
                                for (o, v) in
                                    line.iter_mut().zip(input[jj0..].iter().step_by(self.sw))
                                {
                                    *o = *v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// col2im, the transpose of [`Geom::im2col`]: adds `src` (c * kh * kw, m, oh, ow) into `dst`
    /// (c, m, h, w); overlapping windows accumulate and padding positions are dropped.
    pub fn col2im_add(&self, m: usize, src: &[f32], dst: &mut [f32]) {
        let (pin, pout, ow) = (self.plane_in(), self.plane_out(), self.ow);
        debug_assert_eq!(dst.len(), self.c * m * pin);
        debug_assert_eq!(src.len(), self.patch() * m * pout);
        // One row of the matrix per (channel, kernel position), as im2col writes them; per
        // sample, the output rows that see a real input row, each added from its real columns.
        let mut rows = src.chunks_exact(m * pout);
        for ch in 0..self.c {
            for ki in 0..self.kh {
                let (r0, r1) = self.rows(ki);
                for kj in 0..self.kw {
                    let (c0, c1) = self.cols(kj);
                    let row = rows.next().expect("c * kh * kw rows");
                    if c0 == c1 || r0 == r1 {
                        continue;
                    }
                    let jj0 = c0 * self.sw + kj - self.left;
                    for (n, from) in row.chunks_exact(pout).enumerate() {
                        let plane = &mut dst[(ch * m + n) * pin..][..pin];
                        let lines = from[r0 * ow..r1 * ow].chunks_exact(ow);
                        for (oi, from) in (r0..r1).zip(lines) {
                            let ii = oi * self.sh + ki - self.top;
                            let line = &mut plane[ii * self.w..][..self.w];
                            let from = &from[c0..c1];
                            if self.sw == 1 {
                                for (d, v) in line[jj0..jj0 + from.len()].iter_mut().zip(from) {
                                    *d += *v;
                                }
                            } else {
                                for (d, v) in line[jj0..].iter_mut().step_by(self.sw).zip(from) {
                                    *d += *v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Max pooling of `planes` planes: the window maxima into `dst` and, per output position,
    /// the input index within its plane of the arg-max (the first in row-major kernel order on
    /// ties) into `arg`. Padding never wins.
    pub fn max_pool(&self, planes: usize, src: &[f32], dst: &mut [f32], arg: &mut [u32]) {
        let (pin, pout) = (self.plane_in(), self.plane_out());
        // The real kernel rows (columns) of every output row (column).
        let span = |o: usize, stride: usize, pad: usize, k: usize, input: usize| {
            let first = (o * stride).max(pad) - pad;
            let last = (o * stride + k).saturating_sub(pad).min(input);
            (first, last.max(first))
        };
        let rows: Vec<_> = (0..self.oh)
            .map(|oi| span(oi, self.sh, self.top, self.kh, self.h))
            .collect();
        let cols: Vec<_> = (0..self.ow)
            .map(|oj| span(oj, self.sw, self.left, self.kw, self.w))
            .collect();
        // 2 x 2 windows of stride 2 from the top left (the usual pooling): those wholly inside
        // the input take the path below, without the per-window spans and loops.
        let pairs = (self.kh, self.kw, self.sh, self.sw, self.top, self.left) == (2, 2, 2, 2, 0, 0);
        let (full_rows, full_cols) = if pairs {
            ((self.h / 2).min(self.oh), (self.w / 2).min(self.ow))
        } else {
            (0, 0)
        };
        let w = self.w;
        for p in 0..planes {
            let plane = &src[p * pin..][..pin];
            let out = &mut dst[p * pout..][..pout];
            let out_arg = &mut arg[p * pout..][..pout];
            for oi in 0..full_rows {
                let (r0, r1) = (&plane[2 * oi * w..][..w], &plane[(2 * oi + 1) * w..][..w]);
                let o = &mut out[oi * self.ow..][..full_cols];
                let oa = &mut out_arg[oi * self.ow..][..full_cols];
                for (oj, (o, oa)) in o.iter_mut().zip(oa).enumerate() {
                    let j = 2 * oj;
                    // row-major order, strictly greater: the first maximum wins
                    let (mut best, mut at) = (r0[j], j);
                    for (v, i) in [(r0[j + 1], j + 1), (r1[j], w + j), (r1[j + 1], w + j + 1)] {
                        let better = v > best;
                        best = if better { v } else { best };
                        at = if better { i } else { at };
                    }
                    *o = best;
                    *oa = (2 * oi * w + at) as u32;
                }
            }
            for (oi, &(i0, i1)) in rows.iter().enumerate() {
                let first = if oi < full_rows { full_cols } else { 0 };
                for (oj, &(j0, j1)) in cols.iter().enumerate().skip(first) {
                    let (mut best, mut at) = (f32::NEG_INFINITY, NONE);
                    if i0 < i1 && j0 < j1 {
                        (best, at) = (plane[i0 * self.w + j0], (i0 * self.w + j0) as u32);
                        for ii in i0..i1 {
                            let line = &plane[ii * self.w..][j0..j1];
                            for (jj, &v) in line.iter().enumerate() {
                                // Strictly greater keeps the first maximum in row-major order
                                // (written as selects: the winner is data-dependent, a branch
                                // would mispredict).
                                let better = v > best;
                                best = if better { v } else { best };
                                at = if better {
                                    (ii * self.w + j0 + jj) as u32
                                } else {
                                    at
                                };
                            }
                        }
                    }
                    out[oi * self.ow + oj] = best;
                    out_arg[oi * self.ow + oj] = at;
                }
            }
        }
    }

    /// Max-pooling backward (relevance and gradient alike): adds each output value of `upper`
    /// to the arg-max of its window in `dst` (zeroed by the caller).
    pub fn route_to_argmax(&self, planes: usize, upper: &[f32], arg: &[u32], dst: &mut [f32]) {
        let (pin, pout) = (self.plane_in(), self.plane_out());
        for p in 0..planes {
            let plane = &mut dst[p * pin..][..pin];
            for (u, &a) in upper[p * pout..][..pout]
                .iter()
                .zip(&arg[p * pout..][..pout])
            {
                if a != NONE {
                    plane[a as usize] += *u;
                }
            }
        }
    }

    /// sum_i x_i over the real positions of every window: (planes, h, w) -> (planes, oh, ow).
    pub fn window_sum(&self, planes: usize, src: &[f32], dst: &mut [f32]) {
        let (pin, pout) = (self.plane_in(), self.plane_out());
        dst.fill(0.0);
        self.for_each_run(planes, |p, _, _, oi, (c0, c1), ii, jj0| {
            let line = &src[p * pin + ii * self.w..][..self.w];
            let out = &mut dst[p * pout + oi * self.ow..][c0..c1];
            for (o, v) in out.iter_mut().zip(line[jj0..].iter().step_by(self.sw)) {
                *o += *v;
            }
        });
    }

    /// The transpose of [`Geom::window_sum`]: adds to every input position of `dst` the sum of
    /// `upper` over the windows that contain it.
    pub fn window_spread_add(&self, planes: usize, upper: &[f32], dst: &mut [f32]) {
        let (pin, pout) = (self.plane_in(), self.plane_out());
        self.for_each_run(planes, |p, _, _, oi, (c0, c1), ii, jj0| {
            let from = &upper[p * pout + oi * self.ow..][c0..c1];
            let line = &mut dst[p * pin + ii * self.w..][..self.w];
            for (d, v) in line[jj0..].iter_mut().step_by(self.sw).zip(from) {
                *d += *v;
            }
        });
    }

    /// The divisor of average pooling per output position (oh * ow values): the window size
    /// (count_include_pad), the number of real positions, or 1 for sum pooling.
    pub fn divisor(&self, count_include_pad: bool, sum: bool) -> Vec<f32> {
        if sum {
            return vec![1.0; self.plane_out()];
        }
        if count_include_pad {
            return vec![(self.kh * self.kw) as f32; self.plane_out()];
        }
        let ones = vec![1.0; self.plane_in()];
        let mut counts = vec![0.0; self.plane_out()];
        self.window_sum(1, &ones, &mut counts);
        counts
    }

    /// Average/sum pooling relevance: R_i = x_i * sum_j R_j / stab(sum_i' x_i') over the real
    /// positions i' of window j (the divisor cancels). `dst` receives (planes, h, w).
    pub fn avg_relevance(&self, planes: usize, x: &[f32], r: &[f32], dst: &mut [f32]) {
        let mut s = vec![0.0; planes * self.plane_out()];
        self.window_sum(planes, x, &mut s);
        let eps = DEFAULT_EPS as f32;
        for (s, r) in s.iter_mut().zip(r) {
            *s = r / stabilize(*s, eps);
        }
        dst.fill(0.0);
        self.window_spread_add(planes, &s, dst);
        for (d, x) in dst.iter_mut().zip(x) {
            *d *= *x;
        }
    }
}

/// stab(d) = d + eps sign(d), sign(0) = +1 (SPEC section 2), in f32.
pub(super) fn stabilize(d: f32, eps: f32) -> f32 {
    if d >= 0.0 {
        d + eps
    } else {
        d - eps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_ranges_match_a_direct_scan() {
        for out in 1..6 {
            for input in 1..7 {
                for stride in 1..4 {
                    for k in 0..4 {
                        for pad in 0..4 {
                            let want: Vec<usize> = (0..out)
                                .filter(|&o| {
                                    let i = (o * stride + k) as isize - pad as isize;
                                    i >= 0 && (i as usize) < input
                                })
                                .collect();
                            let (lo, hi) = real_range(out, input, stride, k, pad);
                            // the real outputs are contiguous, so a range describes them
                            assert_eq!(
                                (lo..hi).collect::<Vec<_>>(),
                                want,
                                "out {out} input {input} stride {stride} k {k} pad {pad}"
                            );
                        }
                    }
                }
            }
        }
    }
}
