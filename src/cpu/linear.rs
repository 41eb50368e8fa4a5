//! Dense and Conv2d as one "linear op" (z = op(x, W) + b and its transpose op^T(W, s)), and the
//! LRP mechanism of [`Rule::passes`] written once on top of it for both layer kinds.

use ndarray::{Array1, Array2, Array4, ArrayD, ArrayView2, ArrayViewD, Ix2, Ix4, IxDyn, Zip};

use super::window::Geometry;
use super::{internal, Result};
use crate::lrp::{stabilize, Rule};
use crate::model::Window;

/// Which linear layer an op is.
#[derive(Clone, Debug)]
enum Kind {
    /// z_j = sum_i x_i W[i, j] + b_j.
    Dense,
    /// 2-D convolution over a (c, h, w) input.
    Conv { geometry: Geometry, channels: usize },
}

/// A Dense or Conv2d layer with f64 parameters.
///
/// `weight` is a matrix in both cases: Dense keeps ONNX's `[in, out]`; Conv2d flattens
/// `[out_c, in_c, kh, kw]` to `[out_c, in_c * kh * kw]`, matching the columns of im2col.
#[derive(Clone, Debug)]
pub(crate) struct LinearOp {
    kind: Kind,
    weight: Array2<f64>,
    bias: Array1<f64>,
}

impl LinearOp {
    /// A Dense layer, W `[in, out]`.
    pub fn dense(weight: &Array2<f32>, bias: &Array1<f32>) -> Self {
        LinearOp {
            kind: Kind::Dense,
            weight: weight.mapv(f64::from),
            bias: bias.mapv(f64::from),
        }
    }

    /// A Conv2d layer, W `[out_c, in_c, kh, kw]`, on a per-sample input of shape `(c, h, w)`.
    pub fn conv(
        weight: &Array4<f32>,
        bias: &Array1<f32>,
        window: Window,
        input: &[usize],
    ) -> Result<Self> {
        let (oc, ic, kh, kw) = weight.dim();
        let geometry = match input {
            [c, h, w] if *c == ic => Geometry::new(window, *h, *w),
            _ => None,
        }
        .ok_or_else(|| internal(format!("Conv2d on input {input:?}")))?;
        let weight = weight
            .mapv(f64::from)
            .into_shape_with_order((oc, ic * kh * kw))
            .map_err(|e| internal(format!("Conv2d weight: {e}")))?;
        Ok(LinearOp {
            kind: Kind::Conv {
                geometry,
                channels: ic,
            },
            weight,
            bias: bias.mapv(f64::from),
        })
    }

    /// The real weight matrix (see the type docs for its layout).
    pub fn weight(&self) -> ArrayView2<'_, f64> {
        self.weight.view()
    }

    /// z = op(x, W) + b: the layer's forward pass.
    pub fn forward(&self, x: ArrayViewD<'_, f64>) -> Result<ArrayD<f64>> {
        let mut z = self.apply(self.weight.view(), x)?;
        self.add_bias(&mut z, &self.bias);
        Ok(z)
    }

    /// z_j = sum_i x_i w_ij over the receptive field of j, without bias, for a batch:
    /// (n, input...) -> (n, output...). `w` has the shape of the layer's weight matrix.
    pub fn apply(&self, w: ArrayView2<'_, f64>, x: ArrayViewD<'_, f64>) -> Result<ArrayD<f64>> {
        match &self.kind {
            Kind::Dense => {
                let x = x
                    .into_dimensionality::<Ix2>()
                    .map_err(|e| internal(format!("Dense input: {e}")))?;
                Ok(x.dot(&w).into_dyn())
            }
            Kind::Conv { geometry, .. } => {
                let x = x
                    .into_dimensionality::<Ix4>()
                    .map_err(|e| internal(format!("Conv2d input: {e}")))?;
                let n = x.dim().0;
                let (oh, ow) = geometry.output;
                let cols = geometry.im2col(x);
                // (n * oh * ow, K) . (K, out_c) -> (n, oh, ow, out_c) -> (n, out_c, oh, ow)
                let z = cols.dot(&w.t());
                let oc = z.ncols();
                // `dot` may return column-major data (e.g. for a one-value receptive field)
                let z = z
                    .as_standard_layout()
                    .into_owned()
                    .into_shape_with_order((n, oh, ow, oc))
                    .map_err(|e| internal(format!("Conv2d output: {e}")))?
                    .permuted_axes([0, 3, 1, 2]);
                Ok(z.as_standard_layout().into_owned().into_dyn())
            }
        }
    }

    /// The transpose of [`LinearOp::apply`]: c_i = sum_j w_ij s_j over the outputs j whose
    /// receptive field holds i, for a batch: (n, output...) -> (n, input...). Padding positions
    /// of a convolution are dropped.
    pub fn transpose(&self, w: ArrayView2<'_, f64>, s: ArrayViewD<'_, f64>) -> Result<ArrayD<f64>> {
        match &self.kind {
            Kind::Dense => {
                let s = s
                    .into_dimensionality::<Ix2>()
                    .map_err(|e| internal(format!("Dense relevance: {e}")))?;
                Ok(s.dot(&w.t()).into_dyn())
            }
            Kind::Conv { geometry, channels } => {
                let s = s
                    .into_dimensionality::<Ix4>()
                    .map_err(|e| internal(format!("Conv2d relevance: {e}")))?;
                let (n, oc, oh, ow) = s.dim();
                // (n, out_c, oh, ow) -> (n * oh * ow, out_c) . (out_c, K) -> col2im
                let rows = s.permuted_axes([0, 2, 3, 1]);
                let rows = rows
                    .to_shape((n * oh * ow, oc))
                    .map_err(|e| internal(format!("Conv2d relevance: {e}")))?;
                let cols = rows.dot(&w);
                Ok(geometry.col2im(cols.view(), n, *channels).into_dyn())
            }
        }
    }

    /// z_j += b_j (per output channel for a convolution).
    fn add_bias(&self, z: &mut ArrayD<f64>, b: &Array1<f64>) {
        let shape: Vec<usize> = match self.kind {
            Kind::Dense => vec![b.len()],
            Kind::Conv { .. } => vec![b.len(), 1, 1],
        };
        let b = b.view().into_shape_with_order(IxDyn(&shape)).expect("1-D");
        *z += &b;
    }

    /// LRP through this layer: the relevance of the input `x` given the upper relevance `r`.
    ///
    /// Every rule of SPEC section 2 is a list of passes ([`Rule::passes`]) of one mechanism
    /// (Zennit's modified-gradient formulation), each pass with input modifiers f, weight
    /// modifiers g, a bias modifier h and a coefficient:
    ///
    /// ```text
    /// z'_j  = sum_terms sign * sum_i f(x_i) g(w_ij) + h(b_j)
    /// s_j   = R_j / stab(z'_j),          stab(d) = d + eps sign(d), sign(0) = +1
    /// R_i  += coefficient * sum_terms sign * f(x_i) * sum_j g(w_ij) s_j
    /// ```
    ///
    /// which is R_i = sum_j q_ij / stab(sum_i' q_i'j + bias term) R_j with
    /// q_ij = sum_terms sign f(x_i) g(w_ij):
    ///
    /// ```text
    /// zero            q = x w                      + b          Bach et al. 2015 (LRP-0)
    /// epsilon(E)      q = x w                      + b, eps = E Bach et al. 2015 (LRP-eps)
    /// zplus           q = x+ w+ + x- w-            (no bias)    Montavon et al. 2017 (z+)
    /// wsquare         q = w^2                      (no bias)    Montavon et al. 2017 (w^2)
    /// zbox(L,H)       q = x w - L w+ - H w-        (no bias)    Montavon et al. 2017 (z^B)
    /// flat            q = 1                        (no bias)    Lapuschkin et al. 2019
    /// gamma(G)        q = x (w + G w+)             + b + G b+   Montavon et al. 2019
    /// alphabeta(A,B)  A * [q = (x w)+, + b+]  -  B * [q = (x w)-, + b-]   (two passes)
    /// ```
    ///
    /// f is applied to real positions only: a convolution pads the modified input with 0, so
    /// padding neither receives relevance nor enters z' (for zbox and flat too).
    pub fn relevance(
        &self,
        rule: &Rule,
        x: ArrayViewD<'_, f64>,
        r: ArrayViewD<'_, f64>,
    ) -> Result<ArrayD<f64>> {
        let eps = rule.eps();
        let mut r_in = ArrayD::<f64>::zeros(x.raw_dim());
        for pass in rule.passes() {
            // f(x) and g(W) of every term.
            let terms: Vec<(f64, ArrayD<f64>, Array2<f64>)> = pass
                .terms
                .iter()
                .map(|t| {
                    (
                        t.sign,
                        x.mapv(|v| t.input.apply(v)),
                        self.weight.mapv(|w| t.weight.apply(w)),
                    )
                })
                .collect();
            // z'_j = sum_terms sign * op(f(x), g(W)) + h(b)
            let mut z = ArrayD::<f64>::zeros(r.raw_dim());
            for (sign, fx, gw) in &terms {
                z.scaled_add(*sign, &self.apply(gw.view(), fx.view())?);
            }
            self.add_bias(&mut z, &self.bias.mapv(|b| pass.bias.apply(b)));
            // s_j = R_j / stab(z'_j)
            let s = Zip::from(&r)
                .and(&z)
                .map_collect(|&r, &z| r / stabilize(z, eps));
            // R_i += coefficient * sum_terms sign * f(x_i) * (g(W)^T s)_i
            for (sign, fx, gw) in &terms {
                let c = self.transpose(gw.view(), s.view())?;
                let k = pass.coefficient * sign;
                Zip::from(&mut r_in)
                    .and(fx)
                    .and(&c)
                    .for_each(|ri, &f, &c| *ri += k * f * c);
            }
        }
        Ok(r_in)
    }
}
