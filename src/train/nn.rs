//! Batched forward and backward passes for the trainer: Dense, Conv2d (im2col), ReLU, MaxPool2d,
//! Avg/SumPool2d (unpadded) and Flatten, generic over f32 (training) and f64 (gradient checks).
//!
//! Image activations are kept channel-major, `(C, N, H, W)`, so that a convolution over a whole
//! batch is one matrix product: `W (OC, C*KH*KW) . cols (C*KH*KW, N*OH*OW)` gives the output as
//! `(OC, N, OH, OW)` without transposes. `cols` (im2col) is filled one kernel tap at a time by
//! copying a strided slice of the input, and the input gradient is scattered back the same way.

use ndarray::{
    s, Array1, Array2, Array4, ArrayView2, ArrayView4, ArrayViewD, Axis, Ix2, Ix4, NdFloat, Zip,
};

use crate::model::Window;
use crate::{Error, Layer, Network, Result};

/// The float types the trainer runs in, with exact conversions to and from f64.
pub(crate) trait Real: NdFloat {
    /// From f64 (rounding for f32).
    fn of(v: f64) -> Self;
    /// To f64.
    fn f64(self) -> f64;
}

impl Real for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Real for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn f64(self) -> f64 {
        self
    }
}

/// A batch of activations: `(N, D)` vectors or `(C, N, H, W)` feature maps.
#[derive(Clone, Debug)]
pub(crate) enum Act<F> {
    Flat(Array2<F>),
    Maps(Array4<F>),
}

impl<F: Real> Act<F> {
    /// Converts a batch in the network's input layout, `(N, D)` or `(N, C, H, W)`.
    pub(crate) fn from_input(x: ArrayViewD<f32>) -> Result<Self> {
        let shape = x.shape().to_vec();
        match shape.len() {
            2 => Ok(Act::Flat(
                x.into_dimensionality::<Ix2>()
                    .map_err(|e| shape_error("input", "an (N, D) batch", e))?
                    .mapv(|v| F::of(v as f64)),
            )),
            4 => {
                let x = x
                    .into_dimensionality::<Ix4>()
                    .map_err(|e| shape_error("input", "an (N, C, H, W) batch", e))?;
                Ok(Act::Maps(
                    x.permuted_axes([1, 0, 2, 3])
                        .as_standard_layout()
                        .mapv(|v| F::of(v as f64)),
                ))
            }
            _ => Err(Error::Shape {
                layer: "input".into(),
                expected: "a batch of shape (N, D) or (N, C, H, W)".into(),
                got: format!("{shape:?}"),
            }),
        }
    }
}

fn shape_error(layer: &str, expected: &str, got: impl std::fmt::Display) -> Error {
    Error::Shape {
        layer: layer.into(),
        expected: expected.into(),
        got: got.to_string(),
    }
}

/// One layer in trainer form. Conv2d weights are flattened to `(OC, C*KH*KW)`.
#[derive(Clone, Debug)]
pub(crate) enum Op<F> {
    Dense {
        w: Array2<F>,
        b: Array1<F>,
    },
    Conv {
        w: Array2<F>,
        b: Array1<F>,
        in_c: usize,
        window: Window,
    },
    Relu,
    MaxPool {
        window: Window,
    },
    /// Average pooling without padding; `scale` is 1 / window size, or 1 for sum pooling.
    AvgPool {
        window: Window,
        scale: F,
    },
    Flatten,
}

/// Gradient of the loss with respect to one layer's weight and bias (trainer layouts).
#[derive(Clone, Debug)]
pub(crate) struct Grad<F> {
    pub(crate) w: Array2<F>,
    pub(crate) b: Array1<F>,
}

/// What the backward pass needs from the forward pass, one entry per layer.
enum Cache<F> {
    Dense { x: Array2<F> },
    Conv { cols: Array2<F>, padded: [usize; 4] },
    Relu { y: Act<F> },
    MaxPool { arg: Array4<u8>, input: [usize; 4] },
    AvgPool { input: [usize; 4] },
    Flatten { input: [usize; 4] },
}

/// Activations kept by [`Model::forward_train`] for [`Model::backward`].
pub(crate) struct Tape<F> {
    caches: Vec<Cache<F>>,
}

/// A network in trainer form.
#[derive(Clone, Debug)]
pub(crate) struct Model<F> {
    pub(crate) input_shape: Vec<usize>,
    pub(crate) ops: Vec<Op<F>>,
    pub(crate) names: Vec<String>,
}

/// The trainer's pooling layers take no padding and windows of at most 256 positions.
fn check_pool(window: &Window, name: &str, kind: &str) -> Result<()> {
    let layer = format!("'{name}' ({kind})");
    if window.pad != [0; 4] {
        return Err(Error::Shape {
            layer,
            expected: "a pooling window without padding (the trainer supports no pooling padding)"
                .into(),
            got: format!("padding {:?}", window.pad),
        });
    }
    if window.kernel[0] * window.kernel[1] > 256 {
        return Err(Error::Shape {
            layer,
            expected: "a pooling window of at most 256 positions".into(),
            got: format!("kernel {:?}", window.kernel),
        });
    }
    Ok(())
}

impl<F: Real> Model<F> {
    /// Converts (and validates) a network.
    pub(crate) fn from_network(net: &Network) -> Result<Self> {
        net.validate()?;
        let shapes = net.shapes()?;
        let mut ops = Vec::with_capacity(net.layers.len());
        for (k, (layer, name)) in net.layers.iter().zip(&net.names).enumerate() {
            let cast1 = |a: &Array1<f32>| a.mapv(|v| F::of(v as f64));
            ops.push(match layer {
                Layer::Dense { weight, bias } => Op::Dense {
                    w: weight.mapv(|v| F::of(v as f64)),
                    b: cast1(bias),
                },
                Layer::Conv2d {
                    weight,
                    bias,
                    window,
                } => {
                    let (oc, ic, kh, kw) = weight.dim();
                    let w = weight
                        .mapv(|v| F::of(v as f64))
                        .into_shape_with_order((oc, ic * kh * kw))
                        .map_err(|e| shape_error(name, "a contiguous conv weight", e))?;
                    Op::Conv {
                        w,
                        b: cast1(bias),
                        in_c: shapes[k][0],
                        window: *window,
                    }
                }
                Layer::Relu => Op::Relu,
                Layer::MaxPool2d { window } => {
                    check_pool(window, name, "MaxPool2d")?;
                    Op::MaxPool { window: *window }
                }
                Layer::AvgPool2d { window, sum, .. } => {
                    check_pool(window, name, layer.kind())?;
                    let size = (window.kernel[0] * window.kernel[1]) as f64;
                    Op::AvgPool {
                        window: *window,
                        scale: F::of(if *sum { 1.0 } else { 1.0 / size }),
                    }
                }
                Layer::Flatten => Op::Flatten,
            });
        }
        Ok(Model {
            input_shape: net.input_shape.clone(),
            ops,
            names: net.names.clone(),
        })
    }

    /// Converts back to a validated f32 network.
    pub(crate) fn to_network(&self) -> Result<Network> {
        let to32_2 = |a: &Array2<F>| a.mapv(|v| v.f64() as f32);
        let to32_1 = |a: &Array1<F>| a.mapv(|v| v.f64() as f32);
        let mut layers = Vec::with_capacity(self.ops.len());
        for (op, name) in self.ops.iter().zip(&self.names) {
            layers.push(match op {
                Op::Dense { w, b } => Layer::Dense {
                    weight: to32_2(w),
                    bias: to32_1(b),
                },
                Op::Conv { w, b, in_c, window } => Layer::Conv2d {
                    weight: to32_2(w)
                        .into_shape_with_order((
                            w.nrows(),
                            *in_c,
                            window.kernel[0],
                            window.kernel[1],
                        ))
                        .map_err(|e| shape_error(name, "a conv weight", e))?,
                    bias: to32_1(b),
                    window: *window,
                },
                Op::Relu => Layer::Relu,
                Op::MaxPool { window } => Layer::MaxPool2d { window: *window },
                Op::AvgPool { window, scale } => Layer::AvgPool2d {
                    window: *window,
                    count_include_pad: false,
                    sum: scale.f64() == 1.0 && window.kernel != [1, 1],
                },
                Op::Flatten => Layer::Flatten,
            });
        }
        Network::new(self.input_shape.clone(), layers, self.names.clone())
    }

    /// Index of the first Dense/Conv2d layer: no input gradient is needed below it.
    fn first_linear(&self) -> usize {
        self.ops
            .iter()
            .position(|op| matches!(op, Op::Dense { .. } | Op::Conv { .. }))
            .unwrap_or(0)
    }

    /// Forward pass to the logits `(N, K)`, keeping nothing.
    pub(crate) fn forward(&self, x: Act<F>) -> Result<Array2<F>> {
        self.run(x, None)
    }

    /// Forward pass that records what [`Model::backward`] needs.
    pub(crate) fn forward_train(&self, x: Act<F>) -> Result<(Array2<F>, Tape<F>)> {
        let mut tape = Tape {
            caches: Vec::with_capacity(self.ops.len()),
        };
        let y = self.run(x, Some(&mut tape))?;
        Ok((y, tape))
    }

    fn run(&self, mut x: Act<F>, mut tape: Option<&mut Tape<F>>) -> Result<Array2<F>> {
        for (op, name) in self.ops.iter().zip(&self.names) {
            let keep = tape.is_some();
            let (y, cache) = match (op, x) {
                (Op::Dense { w, b }, Act::Flat(x)) => {
                    let z = x.dot(w) + b;
                    (Act::Flat(z), keep.then_some(Cache::Dense { x }))
                }
                (Op::Conv { w, b, window, .. }, Act::Maps(x)) => {
                    let (cols, padded, (oh, ow)) = im2col(&x, window);
                    let n = x.dim().1;
                    let mut z = w.dot(&cols);
                    z += &b.view().insert_axis(Axis(1));
                    let z = z
                        .into_shape_with_order((w.nrows(), n, oh, ow))
                        .map_err(|e| shape_error(name, "a conv output", e))?;
                    (Act::Maps(z), keep.then_some(Cache::Conv { cols, padded }))
                }
                (Op::Relu, x) => {
                    let y = match x {
                        Act::Flat(a) => Act::Flat(a.mapv_into(relu)),
                        Act::Maps(a) => Act::Maps(a.mapv_into(relu)),
                    };
                    let cache = keep.then(|| Cache::Relu { y: y.clone() });
                    (y, cache)
                }
                (Op::MaxPool { window }, Act::Maps(x)) => {
                    let (y, arg) = maxpool(x.view(), window);
                    let input = dims(&x);
                    (Act::Maps(y), keep.then_some(Cache::MaxPool { arg, input }))
                }
                (Op::AvgPool { window, scale }, Act::Maps(x)) => {
                    let y = avgpool(x.view(), window, *scale);
                    let input = dims(&x);
                    (Act::Maps(y), keep.then_some(Cache::AvgPool { input }))
                }
                (Op::Flatten, Act::Maps(x)) => {
                    let [c, n, h, w] = dims(&x);
                    let flat = x
                        .permuted_axes([1, 0, 2, 3])
                        .as_standard_layout()
                        .into_owned()
                        .into_shape_with_order((n, c * h * w))
                        .map_err(|e| shape_error(name, "a flattenable batch", e))?;
                    let input = [c, n, h, w];
                    (Act::Flat(flat), keep.then_some(Cache::Flatten { input }))
                }
                (Op::Flatten, Act::Flat(x)) => (Act::Flat(x), None),
                (_, got) => {
                    return Err(Error::Shape {
                        layer: format!("'{name}'"),
                        expected: "an activation of the kind this layer takes".into(),
                        got: match got {
                            Act::Flat(_) => "a flat (N, D) batch".into(),
                            Act::Maps(_) => "feature maps".into(),
                        },
                    })
                }
            };
            if let Some(tape) = tape.as_deref_mut() {
                // Flatten of an already flat batch needs nothing; record an identity.
                tape.caches
                    .push(cache.unwrap_or(Cache::Flatten { input: [0; 4] }));
            }
            x = y;
        }
        match x {
            Act::Flat(y) => Ok(y),
            Act::Maps(_) => Err(Error::Shape {
                layer: "output".into(),
                expected: "a vector of logits per sample".into(),
                got: "feature maps".into(),
            }),
        }
    }

    /// Backward pass from `dlogits` (dLoss/dlogits, `(N, K)`): one gradient per layer that has
    /// parameters (`None` for the others), in layer order.
    pub(crate) fn backward(&self, tape: Tape<F>, dlogits: Array2<F>) -> Vec<Option<Grad<F>>> {
        let first = self.first_linear();
        let mut grads: Vec<Option<Grad<F>>> = (0..self.ops.len()).map(|_| None).collect();
        let mut g = Act::Flat(dlogits);
        for (k, cache) in tape.caches.into_iter().enumerate().rev() {
            if k < first {
                break;
            }
            let need_dx = k > first;
            g = match (&self.ops[k], cache, g) {
                (Op::Dense { w, .. }, Cache::Dense { x }, Act::Flat(g)) => {
                    grads[k] = Some(Grad {
                        w: x.t().dot(&g),
                        b: g.sum_axis(Axis(0)),
                    });
                    if !need_dx {
                        break;
                    }
                    Act::Flat(g.dot(&w.t()))
                }
                (Op::Conv { w, window, .. }, Cache::Conv { cols, padded }, Act::Maps(g)) => {
                    let (oc, n, oh, ow) = g.dim();
                    let g = to_standard(g)
                        .into_shape_with_order((oc, n * oh * ow))
                        .expect("a standard-layout array reshapes");
                    grads[k] = Some(Grad {
                        w: g.dot(&cols.t()),
                        b: g.sum_axis(Axis(1)),
                    });
                    if !need_dx {
                        break;
                    }
                    let dcols = w.t().dot(&g);
                    Act::Maps(col2im(dcols.view(), padded, window, (oh, ow)))
                }
                (Op::Relu, Cache::Relu { y }, g) => match (g, y) {
                    (Act::Flat(mut g), Act::Flat(y)) => {
                        relu_mask(&mut g, &y);
                        Act::Flat(g)
                    }
                    (Act::Maps(mut g), Act::Maps(y)) => {
                        relu_mask(&mut g, &y);
                        Act::Maps(g)
                    }
                    _ => unreachable!("ReLU keeps the activation kind"),
                },
                (Op::MaxPool { window }, Cache::MaxPool { arg, input }, Act::Maps(g)) => {
                    Act::Maps(maxpool_backward(g.view(), arg.view(), input, window))
                }
                (Op::AvgPool { window, scale }, Cache::AvgPool { input }, Act::Maps(g)) => {
                    Act::Maps(avgpool_backward(g.view(), input, window, *scale))
                }
                (
                    Op::Flatten,
                    Cache::Flatten {
                        input: [c, n, h, w],
                    },
                    Act::Flat(g),
                ) => {
                    if c == 0 {
                        Act::Flat(g)
                    } else {
                        let maps = g
                            .into_shape_with_order((n, c, h, w))
                            .expect("a standard-layout array reshapes")
                            .permuted_axes([1, 0, 2, 3]);
                        Act::Maps(to_standard(maps))
                    }
                }
                _ => unreachable!("the tape matches the forward pass of the same model"),
            };
        }
        grads
    }
}

fn relu<F: Real>(v: F) -> F {
    if v > F::zero() {
        v
    } else {
        F::zero()
    }
}

fn relu_mask<F: Real, D: ndarray::Dimension>(
    g: &mut ndarray::Array<F, D>,
    y: &ndarray::Array<F, D>,
) {
    Zip::from(g).and(y).for_each(|g, &y| {
        if y <= F::zero() {
            *g = F::zero();
        }
    });
}

fn dims<F>(x: &Array4<F>) -> [usize; 4] {
    let (a, b, c, d) = x.dim();
    [a, b, c, d]
}

fn to_standard<F: Real>(a: Array4<F>) -> Array4<F> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    }
}

/// Output size of a window (validated by `Network::validate`, so it fits).
fn out_hw(window: &Window, h: usize, w: usize) -> (usize, usize) {
    window
        .output_hw(h, w)
        .expect("the network's shapes were validated")
}

/// The same tap over a `(C, N, H, W)` batch.
macro_rules! tap4 {
    ($ki:expr, $kj:expr, $window:expr, $oh:expr, $ow:expr) => {
        s![
            ..,
            ..,
            $ki..$ki + $window.stride[0] * ($oh - 1) + 1;$window.stride[0],
            $kj..$kj + $window.stride[1] * ($ow - 1) + 1;$window.stride[1]
        ]
    };
}

/// Copies `dst.len()` values from `src`, taking every `step`-th one.
fn gather<F: Copy>(dst: &mut [F], src: &[F], step: usize) {
    if step == 1 {
        dst.copy_from_slice(&src[..dst.len()]);
    } else {
        for (d, s) in dst.iter_mut().zip(src.iter().step_by(step)) {
            *d = *s;
        }
    }
}

/// Adds `src` onto every `step`-th value of `dst`.
fn scatter_add<F: Real>(dst: &mut [F], src: &[F], step: usize) {
    if step == 1 {
        for (d, &s) in dst[..src.len()].iter_mut().zip(src) {
            *d += s;
        }
    } else {
        for (d, &s) in dst.iter_mut().step_by(step).zip(src) {
            *d += s;
        }
    }
}

/// im2col of a `(C, N, H, W)` batch: `(C*KH*KW, N*OH*OW)`, row `(c*KH + ki)*KW + kj`, column
/// `(n*OH + oh)*OW + ow`, holding `x[c, n, oh*SH + ki - PT, ow*SW + kj - PL]` (0 in the padding).
/// Each output row `oh` of a tap is one strided run of the (padded) input, copied as a block.
/// Returns the columns, the padded input shape and the output size.
fn im2col<F: Real>(x: &Array4<F>, window: &Window) -> (Array2<F>, [usize; 4], (usize, usize)) {
    let (c, n, h, w) = x.dim();
    let [pt, pl, pb, pr] = window.pad;
    let xp = if window.pad == [0; 4] {
        x.as_standard_layout()
    } else {
        let mut p = Array4::zeros((c, n, h + pt + pb, w + pl + pr));
        p.slice_mut(s![.., .., pt..pt + h, pl..pl + w]).assign(x);
        p.into()
    };
    let (hp, wp) = (h + pt + pb, w + pl + pr);
    let (oh, ow) = out_hw(window, h, w);
    let ([kh, kw], [sh, sw]) = (window.kernel, window.stride);
    let xs = xp.as_slice().expect("standard layout");
    let mut cols = Array2::zeros((c * kh * kw, n * oh * ow));
    for (r, mut row) in cols.outer_iter_mut().enumerate() {
        let (ci, ki, kj) = (r / (kh * kw), r / kw % kh, r % kw);
        let row = row
            .as_slice_mut()
            .expect("rows of a standard matrix are contiguous");
        for (run, dst) in row.chunks_exact_mut(ow).enumerate() {
            let (ni, oi) = (run / oh, run % oh);
            let start = ((ci * n + ni) * hp + oi * sh + ki) * wp + kj;
            gather(dst, &xs[start..], sw);
        }
    }
    (cols, [c, n, hp, wp], (oh, ow))
}

/// Adjoint of [`im2col`]: scatters `(C*KH*KW, N*OH*OW)` column gradients back onto the input
/// and drops the padding.
fn col2im<F: Real>(
    dcols: ArrayView2<F>,
    padded: [usize; 4],
    window: &Window,
    (oh, ow): (usize, usize),
) -> Array4<F> {
    let [c, n, hp, wp] = padded;
    let ([kh, kw], [sh, sw]) = (window.kernel, window.stride);
    let mut dx = Array4::zeros((c, n, hp, wp));
    let dxs = dx.as_slice_mut().expect("standard layout");
    for (r, row) in dcols.outer_iter().enumerate() {
        let (ci, ki, kj) = (r / (kh * kw), r / kw % kh, r % kw);
        let row = row
            .to_slice()
            .expect("rows of a standard matrix are contiguous");
        for (run, src) in row.chunks_exact(ow).enumerate() {
            let (ni, oi) = (run / oh, run % oh);
            let start = ((ci * n + ni) * hp + oi * sh + ki) * wp + kj;
            scatter_add(&mut dxs[start..], src, sw);
        }
    }
    if window.pad == [0; 4] {
        dx
    } else {
        let [pt, pl, pb, pr] = window.pad;
        dx.slice(s![.., .., pt..hp - pb, pl..wp - pr]).to_owned()
    }
}

/// Max pooling of `(C, N, H, W)` without padding; also returns, per output, the offset
/// `ki*KW + kj` of the winner in its window (the first in row-major order on ties).
fn maxpool<F: Real>(x: ArrayView4<F>, window: &Window) -> (Array4<F>, Array4<u8>) {
    let (c, n, h, w) = x.dim();
    let (oh, ow) = out_hw(window, h, w);
    let ([kh, kw], [sh, sw]) = (window.kernel, window.stride);
    let x = x.as_standard_layout();
    let xs = x.as_slice().expect("standard layout");
    let mut y = Array4::zeros((c, n, oh, ow));
    let mut arg = Array4::<u8>::zeros((c, n, oh, ow));
    let ys = y.as_slice_mut().expect("standard layout");
    let args = arg.as_slice_mut().expect("standard layout");
    for (plane, (yp, ap)) in xs.chunks_exact(h * w).zip(
        ys.chunks_exact_mut(oh * ow)
            .zip(args.chunks_exact_mut(oh * ow)),
    ) {
        for (o, (y, a)) in yp.iter_mut().zip(ap.iter_mut()).enumerate() {
            let base = (o / ow) * sh * w + (o % ow) * sw;
            let (mut best, mut at) = (plane[base], 0);
            for ki in 0..kh {
                for kj in 0..kw {
                    let v = plane[base + ki * w + kj];
                    if v > best {
                        best = v;
                        at = ki * kw + kj;
                    }
                }
            }
            *y = best;
            *a = at as u8;
        }
    }
    (y, arg)
}

/// Routes each output gradient to the winner of its window.
fn maxpool_backward<F: Real>(
    g: ArrayView4<F>,
    arg: ArrayView4<u8>,
    input: [usize; 4],
    window: &Window,
) -> Array4<F> {
    let [_, _, h, w] = input;
    let (_, _, oh, ow) = g.dim();
    let ([kw, sh, sw], g) = (
        [window.kernel[1], window.stride[0], window.stride[1]],
        g.as_standard_layout(),
    );
    let gs = g.as_slice().expect("standard layout");
    let args = arg.to_slice().expect("the pooling tape is standard");
    let mut dx = Array4::zeros(input);
    let dxs = dx.as_slice_mut().expect("standard layout");
    for (plane, (gp, ap)) in dxs
        .chunks_exact_mut(h * w)
        .zip(gs.chunks_exact(oh * ow).zip(args.chunks_exact(oh * ow)))
    {
        for (o, (&g, &a)) in gp.iter().zip(ap).enumerate() {
            let (ki, kj) = (a as usize / kw, a as usize % kw);
            plane[(o / ow * sh + ki) * w + o % ow * sw + kj] += g;
        }
    }
    dx
}

/// Average (or, with `scale` 1, sum) pooling of `(C, N, H, W)` without padding.
fn avgpool<F: Real>(x: ArrayView4<F>, window: &Window, scale: F) -> Array4<F> {
    let (c, n, h, w) = x.dim();
    let (oh, ow) = out_hw(window, h, w);
    let mut y = Array4::zeros((c, n, oh, ow));
    for ki in 0..window.kernel[0] {
        for kj in 0..window.kernel[1] {
            y += &x.slice(tap4!(ki, kj, window, oh, ow));
        }
    }
    y * scale
}

fn avgpool_backward<F: Real>(
    g: ArrayView4<F>,
    input: [usize; 4],
    window: &Window,
    scale: F,
) -> Array4<F> {
    let (_, _, oh, ow) = g.dim();
    let g = g.to_owned() * scale;
    let mut dx = Array4::zeros(input);
    for ki in 0..window.kernel[0] {
        for kj in 0..window.kernel[1] {
            let mut dst = dx.slice_mut(tap4!(ki, kj, window, oh, ow));
            dst += &g;
        }
    }
    dx
}
