//! Max and average/sum pooling: forward pass, relevance (SPEC section 2) and gradient.

use ndarray::{Array4, ArrayView4, Zip};

use super::window::Geometry;
use crate::lrp::{stabilize, DEFAULT_EPS};

/// Marks an output position whose window has not met a real input yet.
const NONE: usize = usize::MAX;

/// Max pooling: the window maxima and, for each output position, the row-major kernel offset of
/// the arg-max (the first one on ties). Padded positions never win.
pub(crate) fn max_pool(g: &Geometry, x: ArrayView4<'_, f64>) -> (Array4<f64>, Array4<usize>) {
    let (n, c, _, _) = x.dim();
    let out = (n, c, g.output.0, g.output.1);
    let padded = g.pad(x, f64::NEG_INFINITY);
    let mut best = Array4::from_elem(out, f64::NEG_INFINITY);
    let mut arg = Array4::from_elem(out, NONE);
    for (o, ((ki, kj), real)) in g.offset_iter().zip(g.real_masks()).enumerate() {
        Zip::indexed(&mut best)
            .and(&mut arg)
            .and(g.tap(&padded, ki, kj))
            .for_each(|(_, _, oi, oj), b, a, &v| {
                // Strictly greater keeps the first maximum in row-major order.
                if real[[oi, oj]] && (*a == NONE || v > *b) {
                    *b = v;
                    *a = o;
                }
            });
    }
    (best, arg)
}

/// Max-pooling backward (relevance and gradient alike): the whole upper value of each output
/// position goes to the arg-max of its window; overlapping windows accumulate.
pub(crate) fn route_to_argmax(
    g: &Geometry,
    upper: ArrayView4<'_, f64>,
    arg: &Array4<usize>,
) -> Array4<f64> {
    let (n, c, _, _) = upper.dim();
    // Scatter per offset into the padded input, then crop: the arg-max is always real.
    let mut padded = g.padded_zeros(n, c);
    for (o, (ki, kj)) in g.offset_iter().enumerate() {
        Zip::from(g.tap_mut(&mut padded, ki, kj))
            .and(&upper)
            .and(arg)
            .for_each(|dst, &u, &a| {
                if a == o {
                    *dst += u;
                }
            });
    }
    g.crop(&padded)
}

/// The divisor of average pooling at every output position, (oh, ow) broadcast over (n, c):
/// the window size (count_include_pad), the number of real positions, or 1 for sum pooling.
fn divisor(g: &Geometry, count_include_pad: bool, sum: bool) -> ndarray::Array2<f64> {
    if sum {
        ndarray::Array2::ones(g.output)
    } else if count_include_pad {
        ndarray::Array2::from_elem(g.output, g.offsets() as f64)
    } else {
        g.real_counts()
    }
}

/// Average (or sum) pooling forward: sum_i x_i over the window divided by the divisor.
pub(crate) fn avg_pool(
    g: &Geometry,
    x: ArrayView4<'_, f64>,
    count_include_pad: bool,
    sum: bool,
) -> Array4<f64> {
    g.window_sum(x) / &divisor(g, count_include_pad, sum)
}

/// Average/sum pooling relevance, proportional to the inputs:
///
/// ```text
/// R_i = x_i * sum_j R_j / stab(sum_i' x_i'),   stab with eps = 1e-9
/// ```
///
/// over the real positions i' of window j (the divisor cancels, so average and sum pooling
/// redistribute alike).
pub(crate) fn avg_relevance(
    g: &Geometry,
    x: ArrayView4<'_, f64>,
    r: ArrayView4<'_, f64>,
) -> Array4<f64> {
    let z = g.window_sum(x);
    let s = Zip::from(&r)
        .and(&z)
        .map_collect(|&r, &z| r / stabilize(z, DEFAULT_EPS));
    g.window_spread(s.view()) * x
}

/// Average/sum pooling gradient: each input gets dL/dy_j / divisor_j from every window j holding it.
pub(crate) fn avg_gradient(
    g: &Geometry,
    upper: ArrayView4<'_, f64>,
    count_include_pad: bool,
    sum: bool,
) -> Array4<f64> {
    let scaled = &upper / &divisor(g, count_include_pad, sum);
    g.window_spread(scaled.view())
}
