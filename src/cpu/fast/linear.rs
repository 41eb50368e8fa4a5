//! Dense and Conv2d for the fast engine: one im2col + matrix-product formulation for both (a
//! Dense layer is a 1 x 1 convolution over a 1 x 1 input), and the LRP mechanism of
//! [`Rule::passes`] on top of it with every weight modifier applied once, at planning time.
//!
//! Per pass the mechanism is the reference's (see `cpu::linear`):
//!
//! ```text
//! z'_j = sum_terms sign * sum_i f(x_i) g(w_ij) + h(b_j),  s_j = R_j / stab(z'_j),
//! R_i += coefficient * sum_terms sign * f(x_i) * sum_j g(w_ij) s_j
//! ```
//!
//! with four exact shortcuts: a term whose input modifier is constant (zbox's L and H, w^2's and
//! flat's 1) contributes to z' a per-position constant computed once per plan, and all such terms
//! of a pass share one transposed product, with c * sign * g(W) summed into a single matrix; a
//! pass whose only data-dependent term is the plain x w (zero, epsilon, zbox) takes z' from the
//! forward pre-activation (plus a per-position constant where it has constant terms or another
//! bias); the single pass of a rule whose only data term is x g(w) with other weights (z+ and
//! gamma on a ReLU output) has x g(w) computed by the forward pass, in the same matrix product
//! as x w (one im2col matrix, packed once), and so do alpha-beta's two passes on a ReLU output,
//! x w+ and x w-; on a layer whose input is known to be non-negative (after a ReLU), x+ is x and
//! x- terms vanish.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, Array4, ArrayView2, ArrayViewMut2};

use super::window::{stabilize, Geom};
use super::{Buf, Scratch};
use crate::lrp::{ForwardZ, InputMod, ParamMod, Rule};
use crate::model::Window;

/// What a layer's forward pass leaves for its relevance step.
pub(super) struct Forward<'a> {
    /// The pre-activation z = W x + b, (oc, m, oh, ow).
    pub z: &'a [f32],
    /// The stacked products of the forward pass, (1, 2 or 3, oc, m, oh, ow), whose parts the
    /// [`ZFrom::Kept`] passes index: [`Linear::forward`]'s return.
    pub kept: Option<&'a [f32]>,
}

/// A term whose input modifier depends on the data.
struct DataTerm {
    input: InputMod,
    /// sign * g(W), (oc, patch).
    weight: Array2<f32>,
}

/// Where a pass's z' comes from.
enum ZFrom {
    /// Its terms' products (and `z_constant`).
    Terms,
    /// The layer's forward pre-activation z itself (one term x w, bias b: zero, epsilon).
    Forward,
    /// One of the sums the forward pass keeps (`Linear::stacked`, from the same im2col matrix as
    /// x w), plus `z_constant`: 0, x w itself before the bias, where the pass's only data term is
    /// x w beside constant terms or another bias modifier (zbox); 1 (or 1 + the pass, for
    /// alpha-beta), x g(w) with other weights (z+ and gamma on a ReLU output, each pass of
    /// alpha-beta there). (Not z - b + z_constant: where |b| is much larger than z', the bias
    /// added and taken off again costs the f32 sum its low bits.)
    Kept(usize),
}

/// One pass of a rule, prepared for this layer.
struct PreparedPass {
    coefficient: f32,
    z_from: ZFrom,
    data: Vec<DataTerm>,
    /// sum over constant-input terms of c * sign * g(W), (oc, patch), if any.
    constant: Option<Array2<f32>>,
    /// The constant part of z' per output position: the constant terms' response plus h(b),
    /// (oc, oh * ow), the same for every sample; `None` when it is 0 (z+, w^2 without bias).
    z_constant: Option<Array2<f32>>,
}

/// A Dense or Conv2d layer with f32 parameters and, for LRP, its rule's passes.
pub(super) struct Linear {
    pub geom: Geom,
    /// Output channels (or Dense outputs).
    pub oc: usize,
    /// (oc, patch): Conv2d's [oc, ic, kh, kw] flattened, Dense's [in, out] transposed.
    weight: Array2<f32>,
    bias: Array1<f32>,
    passes: Vec<PreparedPass>,
    /// For a rule whose z' is [`ZFrom::Kept`], the weights of the forward pass's one matrix
    /// product: W alone (x w kept before the bias, [`ForwardZ::Plain`] beside constant terms,
    /// (oc, patch)), W over the data term's sign * g(W) ([`ForwardZ::Other`], (2 oc, patch)), or
    /// W over the two passes' W+ and W- ([`ForwardZ::Split`], `split`, (3 oc, patch)). (Not x w as
    /// the sum of x w+ and x w-: the rounding of the larger part would land on x w, and the
    /// forward's output would depend on the rule.)
    stacked: Option<Array2<f32>>,
    split: bool,
    eps: f32,
}

fn input_constant(m: InputMod) -> Option<f32> {
    match m {
        InputMod::Ones => Some(1.0),
        InputMod::Constant(c) => Some(c as f32),
        _ => None,
    }
}

/// c = alpha * a . b + beta * c.
fn gemm(
    alpha: f32,
    a: ArrayView2<'_, f32>,
    b: ArrayView2<'_, f32>,
    beta: f32,
    c: ArrayViewMut2<'_, f32>,
) {
    let mut c = c;
    general_mat_mul(alpha, &a, &b, beta, &mut c);
}

fn view(rows: usize, cols: usize, data: &[f32]) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), data).expect("buffer sized by the plan")
}

fn view_mut(rows: usize, cols: usize, data: &mut [f32]) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), data).expect("buffer sized by the plan")
}

impl Linear {
    /// A Dense layer, W [in, out].
    pub fn dense(weight: &Array2<f32>, bias: &Array1<f32>) -> Self {
        Self::prepared(
            Geom::pointwise(weight.nrows()),
            weight.t().as_standard_layout().into_owned(),
            bias.clone(),
        )
    }

    /// A Conv2d layer, W [oc, ic, kh, kw], on a (c, h, w) input; `None` when the window does not
    /// fit (the network's validation rules that out).
    pub fn conv(
        weight: &Array4<f32>,
        bias: &Array1<f32>,
        window: &Window,
        input: (usize, usize, usize),
    ) -> Option<Self> {
        let (oc, ic, kh, kw) = weight.dim();
        let geom = Geom::new(window, input.0, input.1, input.2)?;
        let weight = weight
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((oc, ic * kh * kw))
            .ok()?;
        Some(Self::prepared(geom, weight, bias.clone()))
    }

    fn prepared(geom: Geom, weight: Array2<f32>, bias: Array1<f32>) -> Self {
        Linear {
            geom,
            oc: weight.nrows(),
            weight,
            bias,
            passes: Vec::new(),
            stacked: None,
            split: false,
            eps: 0.0,
        }
    }

    /// Prepares `rule` for LRP; `nonnegative_input` when the layer's input is a ReLU output.
    pub fn set_rule(&mut self, rule: &Rule, nonnegative_input: bool) {
        self.eps = rule.eps() as f32;
        let pout = self.geom.plane_out();
        // The im2col matrix of one sample whose every real position is 1.
        let ones_in = vec![1.0; self.geom.c * self.geom.plane_in()];
        let mut ones_cols = vec![0.0; self.geom.patch() * pout];
        self.geom.im2col(1, &ones_in, &mut ones_cols);
        let modified =
            |g: ParamMod, scale: f32| self.weight.mapv(|w| scale * g.apply(w as f64) as f32);
        let forward_z = rule.forward_z(nonnegative_input);
        self.passes = rule
            .passes_on(nonnegative_input)
            .into_iter()
            .enumerate()
            .map(|(p, pass)| {
                let mut data = Vec::new();
                let mut constant: Option<Array2<f32>> = None;
                for t in &pass.terms {
                    let input = t.input;
                    match input_constant(input) {
                        Some(c) => {
                            let w = modified(t.weight, c * t.sign as f32);
                            constant = Some(match constant {
                                Some(acc) => acc + w,
                                None => w,
                            });
                        }
                        None => data.push(DataTerm {
                            input,
                            weight: modified(t.weight, t.sign as f32),
                        }),
                    }
                }
                let hb = self.bias.mapv(|b| pass.bias.apply(b as f64) as f32);
                let mut z_constant = Array2::from_shape_fn((self.oc, pout), |(o, _)| hb[o]);
                if let Some(wc) = &constant {
                    gemm(
                        1.0,
                        wc.view(),
                        view(self.geom.patch(), pout, &ones_cols),
                        1.0,
                        z_constant.view_mut(),
                    );
                }
                // (forward_z is Split for a rule of two passes, else not None only for a rule
                // of one pass: this one)
                let z_from = match forward_z {
                    ForwardZ::None => ZFrom::Terms,
                    // the second (third) of the stacked products
                    ForwardZ::Other => ZFrom::Kept(1),
                    ForwardZ::Split => ZFrom::Kept(1 + p),
                    ForwardZ::Plain if constant.is_none() && pass.bias == ParamMod::Identity => {
                        ZFrom::Forward
                    }
                    ForwardZ::Plain => ZFrom::Kept(0),
                };
                PreparedPass {
                    coefficient: pass.coefficient as f32,
                    z_from,
                    data,
                    constant,
                    z_constant: z_constant.iter().any(|&v| v != 0.0).then_some(z_constant),
                }
            })
            .collect();
        let stack = |parts: &[&Array2<f32>]| {
            let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
            Some(ndarray::concatenate(ndarray::Axis(0), &views).expect("same columns"))
        };
        self.split = forward_z == ForwardZ::Split;
        self.stacked = match (&self.passes[..], forward_z) {
            ([p], ForwardZ::Plain) if matches!(p.z_from, ZFrom::Kept(0)) => stack(&[&self.weight]),
            ([p], ForwardZ::Other) => stack(&[&self.weight, &p.data[0].weight]),
            ([p, q], ForwardZ::Split) => {
                stack(&[&self.weight, &p.data[0].weight, &q.data[0].weight])
            }
            _ => None,
        };
    }

    /// `dst` (rows of w, m, oh, ow) = w . im2col(x) (+ beta * dst); `x` is (c, m, h, w).
    fn apply(
        &self,
        w: ArrayView2<'_, f32>,
        m: usize,
        x: &[f32],
        beta: f32,
        dst: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let cols_n = m * self.geom.plane_out();
        let patch = self.geom.patch();
        let dst = view_mut(w.nrows(), cols_n, dst);
        if self.geom.is_pointwise() {
            gemm(1.0, w, view(patch, cols_n, x), beta, dst);
        } else {
            let mut cols = scratch.take(patch * cols_n);
            self.geom.im2col(m, x, &mut cols);
            gemm(1.0, w, view(patch, cols_n, &cols), beta, dst);
            scratch.give(cols);
        }
    }

    /// `dst` (c, m, h, w) = w^T . s mapped back onto the input (col2im); s has a row per row of w.
    fn transpose(
        &self,
        w: ArrayView2<'_, f32>,
        m: usize,
        s: &[f32],
        dst: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let cols_n = m * self.geom.plane_out();
        let patch = self.geom.patch();
        let s = view(w.nrows(), cols_n, s);
        if self.geom.is_pointwise() {
            gemm(1.0, w.t(), s, 0.0, view_mut(patch, cols_n, dst));
        } else {
            let mut cols = scratch.take(patch * cols_n);
            gemm(1.0, w.t(), s, 0.0, view_mut(patch, cols_n, &mut cols));
            dst.fill(0.0);
            self.geom.col2im_add(m, &cols, dst);
            scratch.give(cols);
        }
    }

    /// z = W . x + b for m samples into `dst` (oc, m, oh, ow); for a [`ZFrom::Kept`] rule also
    /// the stacked products, W x before the bias, then any x g(w) (alpha-beta: x w+ then x w-),
    /// returned (a scratch buffer) for [`Linear::relevance`].
    pub fn forward(
        &self,
        m: usize,
        x: &[f32],
        dst: &mut [f32],
        scratch: &mut Scratch,
    ) -> Option<Buf> {
        let per = m * self.geom.plane_out();
        let Some(stacked) = &self.stacked else {
            for (o, chunk) in dst.chunks_exact_mut(per).enumerate() {
                chunk.fill(self.bias[o]);
            }
            self.apply(self.weight.view(), m, x, 1.0, dst, scratch);
            return None;
        };
        // All products from one im2col matrix: z without its bias, then the kept x g(w) (split:
        // x w+ and x w-).
        let parts = stacked.nrows() / self.oc;
        let mut all = scratch.take(parts * dst.len());
        self.apply(stacked.view(), m, x, 0.0, &mut all, scratch);
        for (o, (d, z)) in dst
            .chunks_exact_mut(per)
            .zip(all.chunks_exact(per))
            .enumerate()
        {
            for (d, z) in d.iter_mut().zip(z) {
                *d = z + self.bias[o];
            }
        }
        Some(all)
    }

    /// The gradient: `dst` (c, m, h, w) = W^T . g.
    pub fn gradient(&self, m: usize, g: &[f32], dst: &mut [f32], scratch: &mut Scratch) {
        self.transpose(self.weight.view(), m, g, dst, scratch);
    }

    /// LRP through the layer: `dst` (c, m, h, w) receives the relevance of the input `x` given
    /// the upper relevance `r` and what the layer's forward pass left (all (oc, m, oh, ow)).
    pub fn relevance(
        &self,
        m: usize,
        x: &[f32],
        forward: Forward<'_>,
        r: &[f32],
        dst: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let Forward { z, kept } = forward;
        if self.split {
            let kept = kept.expect("the forward pass keeps x w+ and x w-");
            self.split_relevance(m, x, kept, r, dst, scratch);
            return;
        }
        dst.fill(0.0);
        let pout = self.geom.plane_out();
        let mut zp = scratch.take(z.len());
        let mut c = scratch.take(x.len());
        let mut fx = scratch.take(x.len());
        for pass in &self.passes {
            // z'
            match &pass.z_from {
                // s = R / stab(z') straight from where z' lies
                ZFrom::Forward => self.s_of(z, None, 1.0, r, m, &mut zp),
                ZFrom::Kept(h) => {
                    let kept = kept.expect("the forward pass keeps x g(w)");
                    let zh = &kept[h * z.len()..(h + 1) * z.len()];
                    self.s_of(zh, pass.z_constant.as_ref(), 1.0, r, m, &mut zp);
                }
                ZFrom::Terms => {
                    match &pass.z_constant {
                        Some(zc) => {
                            for (o, chunk) in zp.chunks_exact_mut(m * pout).enumerate() {
                                let row = zc.row(o);
                                let row = row.as_slice().expect("standard layout");
                                for plane in chunk.chunks_exact_mut(pout) {
                                    plane.copy_from_slice(row);
                                }
                            }
                        }
                        None if pass.data.is_empty() => zp.fill(0.0),
                        // the first product overwrites z'
                        None => {}
                    }
                    for (k, term) in pass.data.iter().enumerate() {
                        let f = modified_input(term.input, x, &mut fx);
                        let beta = if k == 0 && pass.z_constant.is_none() {
                            0.0
                        } else {
                            1.0
                        };
                        self.apply(term.weight.view(), m, f, beta, &mut zp, scratch);
                    }
                    // s = R / stab(z'), in place
                    for (s, r) in zp.iter_mut().zip(r) {
                        *s = r / stabilize(*s, self.eps);
                    }
                }
            }
            let k = pass.coefficient;
            if let Some(wc) = &pass.constant {
                self.transpose(wc.view(), m, &zp, &mut c, scratch);
                for (d, c) in dst.iter_mut().zip(&c) {
                    *d += k * c;
                }
            }
            for term in &pass.data {
                self.transpose(term.weight.view(), m, &zp, &mut c, scratch);
                let f = modified_input(term.input, x, &mut fx);
                for ((d, c), f) in dst.iter_mut().zip(&c).zip(f) {
                    *d += k * f * c;
                }
            }
        }
        scratch.give(zp);
        scratch.give(c);
        scratch.give(fx);
    }

    /// [`Linear::relevance`] for alpha-beta on a ReLU output ([`ForwardZ::Split`]): both passes'
    /// data term has input x, so R = x * (W+^T (alpha s+) + W-^T (-beta s-)), one transposed
    /// product of the stacked [W+; W-] over the stacked [alpha s+; -beta s-], whose z' are the
    /// forward's kept x w+ and x w- (plus h(b)).
    fn split_relevance(
        &self,
        m: usize,
        x: &[f32],
        kept: &[f32],
        r: &[f32],
        dst: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let len = r.len();
        let mut s = scratch.take(2 * len);
        // (the forward's x w+ and x w- follow its x w)
        let halves = s.chunks_exact_mut(len).zip(kept[len..].chunks_exact(len));
        for (pass, (s, z)) in self.passes.iter().zip(halves) {
            self.s_of(z, pass.z_constant.as_ref(), pass.coefficient, r, m, s);
        }
        let stacked = self
            .stacked
            .as_ref()
            .expect("a split rule stacks W, W+ and W-");
        let plus_minus = stacked.slice(ndarray::s![self.oc.., ..]);
        self.transpose(plus_minus, m, &s, dst, scratch);
        for (d, x) in dst.iter_mut().zip(x) {
            *d *= x;
        }
        scratch.give(s);
    }

    /// `dst` = k * R / stab(z + per_position) for m samples (all (oc, m, oh, ow); per_position
    /// (oc, oh * ow), the same for every sample): s from a z' that the forward pass left, in
    /// one pass over it.
    fn s_of(
        &self,
        z: &[f32],
        per_position: Option<&Array2<f32>>,
        k: f32,
        r: &[f32],
        m: usize,
        dst: &mut [f32],
    ) {
        let eps = self.eps;
        let Some(pp) = per_position else {
            for ((d, z), r) in dst.iter_mut().zip(z).zip(r) {
                *d = k * (r / stabilize(*z, eps));
            }
            return;
        };
        let row_len = m * self.geom.plane_out();
        let rows = dst.chunks_exact_mut(row_len).zip(z.chunks_exact(row_len));
        for (o, ((d, z), r)) in rows.zip(r.chunks_exact(row_len)).enumerate() {
            let add = pp.row(o);
            let add = add.as_slice().expect("standard layout");
            let n = add.len();
            let planes = d.chunks_exact_mut(n).zip(z.chunks_exact(n));
            for ((d, z), r) in planes.zip(r.chunks_exact(n)) {
                for (((d, z), r), a) in d.iter_mut().zip(z).zip(r).zip(add) {
                    *d = k * (r / stabilize(z + a, eps));
                }
            }
        }
    }
}

/// f(x) for a data-dependent input modifier: `x` itself for the identity, else written into
/// `buf`.
fn modified_input<'a>(m: InputMod, x: &'a [f32], buf: &'a mut [f32]) -> &'a [f32] {
    match m {
        InputMod::Identity => x,
        InputMod::Positive => {
            for (b, v) in buf.iter_mut().zip(x) {
                *b = v.max(0.0);
            }
            buf
        }
        InputMod::Negative => {
            for (b, v) in buf.iter_mut().zip(x) {
                *b = v.min(0.0);
            }
            buf
        }
        InputMod::Ones | InputMod::Constant(_) => {
            unreachable!("constant input modifiers are folded at planning time")
        }
    }
}
