//! The CPU backend against an independent, loop-based reimplementation of SPEC section 2.
//!
//! The reference below is written from the SPEC text alone: every layer becomes explicit index
//! lists (output j -> the real inputs i of its receptive field, with w_ij), every rule writes out
//! its q_ij and bias term, and relevance is R_i = sum_j q_ij / stab(sum_i' q_i'j + bias) R_j by
//! plain loops over one sample at a time. It does not use `Rule::passes`, im2col or ndarray
//! algebra, so agreement is evidence that the backend's generic mechanism is right.

mod common;

use common::{random_cnn, random_input, random_mlp, rel_l2, rng};
use ndarray::{Array1, Array4, ArrayD, Axis};
use rand::rngs::StdRng;
use rand::Rng;
use taylormap::lrp::{Bounds, Composite, LayerSelector, Method, Rule};
use taylormap::model::Window;
use taylormap::{cpu, Layer, Network};

const TOL: f64 = 1e-9;

/// Activations are of order 1, so their error is relative to max(||b||, 1): a lone logit near 0
/// would otherwise turn rounding into a large relative error.
fn forward_error(a: impl IntoIterator<Item = f64>, b: impl IntoIterator<Item = f64>) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in a.into_iter().zip(b) {
        num += (x - y) * (x - y);
        den += y * y;
    }
    num.sqrt() / den.sqrt().max(1.0)
}

/// stab(d) = d + eps * sign(d), sign(0) = +1.
fn stab(d: f64, eps: f64) -> f64 {
    if d >= 0.0 {
        d + eps
    } else {
        d - eps
    }
}

/// A layer as explicit per-sample index lists.
enum RefLayer {
    /// conns[j] = [(i, w_ij)] over the real receptive field of j; bias[j] = b_j.
    Linear {
        conns: Vec<Vec<(usize, f64)>>,
        bias: Vec<f64>,
    },
    Relu,
    /// windows[j] = real input positions of window j, in row-major order.
    MaxPool {
        windows: Vec<Vec<usize>>,
    },
    /// windows as above; divisor[j] of the forward average (1 for sum pooling).
    AvgPool {
        windows: Vec<Vec<usize>>,
        divisor: Vec<f64>,
    },
    Identity,
}

/// One output position of a window layer: its channel and its real taps (flat index, ki, kj).
type WindowTaps = (usize, Vec<(usize, usize, usize)>);

/// For a window layer on a (c, h, w) input: for each output (ch, oi, oj), in output order, the
/// real input positions as (flat index, ki, kj), plus the output spatial size.
fn windows(shape: &[usize], window: &Window) -> (Vec<WindowTaps>, usize) {
    let (c, h, w) = (shape[0], shape[1], shape[2]);
    let [kh, kw] = window.kernel;
    let [sh, sw] = window.stride;
    let [top, left, bottom, right] = window.pad;
    let oh = (h + top + bottom - kh) / sh + 1;
    let ow = (w + left + right - kw) / sw + 1;
    let mut out = vec![];
    for ch in 0..c {
        for oi in 0..oh {
            for oj in 0..ow {
                let mut list = vec![];
                for ki in 0..kh {
                    for kj in 0..kw {
                        let r = (oi * sh + ki) as isize - top as isize;
                        let q = (oj * sw + kj) as isize - left as isize;
                        if r >= 0 && q >= 0 && (r as usize) < h && (q as usize) < w {
                            list.push(((ch * h + r as usize) * w + q as usize, ki, kj));
                        }
                    }
                }
                out.push((ch, list));
            }
        }
    }
    (out, oh * ow)
}

fn reference_layers(net: &Network) -> Vec<RefLayer> {
    let shapes = net.shapes().unwrap();
    net.layers
        .iter()
        .zip(&shapes)
        .map(|(layer, shape)| match layer {
            Layer::Dense { weight, bias } => {
                let (ni, no) = weight.dim();
                RefLayer::Linear {
                    conns: (0..no)
                        .map(|j| (0..ni).map(|i| (i, weight[[i, j]] as f64)).collect())
                        .collect(),
                    bias: bias.iter().map(|&b| b as f64).collect(),
                }
            }
            Layer::Conv2d {
                weight,
                bias,
                window,
            } => {
                let mut conns = vec![];
                let mut b = vec![];
                for oc in 0..weight.dim().0 {
                    // The receptive field of every output channel is the same across input
                    // channels: enumerate it with a one-channel window per input channel.
                    let (single, _) = windows(&[1, shape[1], shape[2]], window);
                    for (_, field) in single {
                        let mut list = vec![];
                        for ic in 0..shape[0] {
                            for &(pos, ki, kj) in &field {
                                let i = ic * shape[1] * shape[2] + pos;
                                list.push((i, weight[[oc, ic, ki, kj]] as f64));
                            }
                        }
                        conns.push(list);
                        b.push(bias[oc] as f64);
                    }
                }
                RefLayer::Linear { conns, bias: b }
            }
            Layer::Relu => RefLayer::Relu,
            Layer::MaxPool2d { window } => RefLayer::MaxPool {
                windows: windows(shape, window)
                    .0
                    .into_iter()
                    .map(|(_, l)| l.into_iter().map(|(i, _, _)| i).collect())
                    .collect(),
            },
            Layer::AvgPool2d {
                window,
                count_include_pad,
                sum,
            } => {
                let list: Vec<Vec<usize>> = windows(shape, window)
                    .0
                    .into_iter()
                    .map(|(_, l)| l.into_iter().map(|(i, _, _)| i).collect())
                    .collect();
                let divisor = list
                    .iter()
                    .map(|l| {
                        if *sum {
                            1.0
                        } else if *count_include_pad {
                            (window.kernel[0] * window.kernel[1]) as f64
                        } else {
                            l.len() as f64
                        }
                    })
                    .collect();
                RefLayer::AvgPool {
                    windows: list,
                    divisor,
                }
            }
            Layer::Flatten => RefLayer::Identity,
        })
        .collect()
}

/// Index of the first maximum of `x` over `window`.
fn first_argmax(x: &[f64], window: &[usize]) -> usize {
    let mut best = window[0];
    for &i in window {
        if x[i] > x[best] {
            best = i;
        }
    }
    best
}

/// Per-sample forward pass: every activation, flat.
fn ref_forward(layers: &[RefLayer], x: Vec<f64>) -> Vec<Vec<f64>> {
    let mut acts = vec![x];
    for layer in layers {
        let a = acts.last().unwrap();
        let next = match layer {
            RefLayer::Linear { conns, bias } => conns
                .iter()
                .zip(bias)
                .map(|(c, b)| c.iter().map(|&(i, w)| a[i] * w).sum::<f64>() + b)
                .collect(),
            RefLayer::Relu => a.iter().map(|&v| v.max(0.0)).collect(),
            RefLayer::MaxPool { windows } => {
                windows.iter().map(|w| a[first_argmax(a, w)]).collect()
            }
            RefLayer::AvgPool { windows, divisor } => windows
                .iter()
                .zip(divisor)
                .map(|(w, d)| w.iter().map(|&i| a[i]).sum::<f64>() / d)
                .collect(),
            RefLayer::Identity => a.clone(),
        };
        acts.push(next);
    }
    acts
}

/// R_i = sum_j q_ij / stab(sum_i' q_i'j + bias_j) R_j, for a q_ij written as a closure.
fn redistribute(
    conns: &[Vec<(usize, f64)>],
    n_in: usize,
    r: &[f64],
    eps: f64,
    q: impl Fn(usize, f64) -> f64,
    bias_term: impl Fn(usize) -> f64,
) -> Vec<f64> {
    let mut out = vec![0.0; n_in];
    for (j, c) in conns.iter().enumerate() {
        let d: f64 = c.iter().map(|&(i, w)| q(i, w)).sum::<f64>() + bias_term(j);
        for &(i, w) in c {
            out[i] += q(i, w) / stab(d, eps) * r[j];
        }
    }
    out
}

/// One rule through one linear layer, each q_ij spelled out as in the SPEC table.
fn ref_rule(rule: &Rule, conns: &[Vec<(usize, f64)>], b: &[f64], x: &[f64], r: &[f64]) -> Vec<f64> {
    let pos = |v: f64| v.max(0.0);
    let neg = |v: f64| v.min(0.0);
    let n = x.len();
    match *rule {
        // q = x w, bias b
        Rule::Zero => redistribute(conns, n, r, 1e-9, |i, w| x[i] * w, |j| b[j]),
        // q = x w, bias b, eps = E
        Rule::Epsilon(e) => redistribute(conns, n, r, e, |i, w| x[i] * w, |j| b[j]),
        // q = x+ w+ + x- w-, no bias
        Rule::ZPlus => redistribute(
            conns,
            n,
            r,
            1e-9,
            |i, w| pos(x[i]) * pos(w) + neg(x[i]) * neg(w),
            |_| 0.0,
        ),
        // q = w^2, no bias
        Rule::WSquare => redistribute(conns, n, r, 1e-9, |_, w| w * w, |_| 0.0),
        // q = x w - L w+ - H w-, no bias
        Rule::ZBox { low, high } => redistribute(
            conns,
            n,
            r,
            1e-9,
            |i, w| x[i] * w - low * pos(w) - high * neg(w),
            |_| 0.0,
        ),
        // q = 1, no bias
        Rule::Flat => redistribute(conns, n, r, 1e-9, |_, _| 1.0, |_| 0.0),
        // q = x (w + G w+), bias b + G b+
        Rule::Gamma(g) => redistribute(
            conns,
            n,
            r,
            1e-9,
            |i, w| x[i] * (w + g * pos(w)),
            |j| b[j] + g * pos(b[j]),
        ),
        // R_i = sum_j [A z_ij+ / stab(sum z+ + b+) - B z_ij- / stab(sum z- + b-)] R_j
        Rule::AlphaBeta { alpha, beta } => {
            let mut out = vec![0.0; n];
            for (j, c) in conns.iter().enumerate() {
                let zp: f64 = c.iter().map(|&(i, w)| pos(x[i] * w)).sum::<f64>() + pos(b[j]);
                let zn: f64 = c.iter().map(|&(i, w)| neg(x[i] * w)).sum::<f64>() + neg(b[j]);
                for &(i, w) in c {
                    let z = x[i] * w;
                    out[i] +=
                        (alpha * pos(z) / stab(zp, 1e-9) - beta * neg(z) / stab(zn, 1e-9)) * r[j];
                }
            }
            out
        }
    }
}

/// Per-sample LRP from R = e_t y_t down to the input.
fn ref_lrp(layers: &[RefLayer], rules: &[Rule], x: Vec<f64>, target: usize) -> Vec<f64> {
    let acts = ref_forward(layers, x);
    let y = acts.last().unwrap();
    let mut r = vec![0.0; y.len()];
    r[target] = y[target];
    let mut k = rules.len();
    for (layer, a) in layers.iter().zip(&acts).rev() {
        r = match layer {
            RefLayer::Linear { conns, bias } => {
                k -= 1;
                ref_rule(&rules[k], conns, bias, a, &r)
            }
            RefLayer::Relu | RefLayer::Identity => r,
            // The whole R_j goes to the first arg-max of window j.
            RefLayer::MaxPool { windows } => {
                let mut out = vec![0.0; a.len()];
                for (j, w) in windows.iter().enumerate() {
                    out[first_argmax(a, w)] += r[j];
                }
                out
            }
            // R_i = sum_j x_i / stab(sum_i' x_i') R_j
            RefLayer::AvgPool { windows, .. } => {
                let mut out = vec![0.0; a.len()];
                for (j, w) in windows.iter().enumerate() {
                    let d: f64 = w.iter().map(|&i| a[i]).sum();
                    for &i in w {
                        out[i] += a[i] / stab(d, 1e-9) * r[j];
                    }
                }
                out
            }
        };
    }
    r
}

/// Per-sample gradient dy_t/dx by reverse-mode loops.
fn ref_gradient(layers: &[RefLayer], x: Vec<f64>, target: usize) -> Vec<f64> {
    let acts = ref_forward(layers, x);
    let mut g = vec![0.0; acts.last().unwrap().len()];
    g[target] = 1.0;
    for (layer, a) in layers.iter().zip(&acts).rev() {
        g = match layer {
            RefLayer::Linear { conns, .. } => {
                let mut out = vec![0.0; a.len()];
                for (j, c) in conns.iter().enumerate() {
                    for &(i, w) in c {
                        out[i] += w * g[j];
                    }
                }
                out
            }
            RefLayer::Relu => g
                .iter()
                .zip(a)
                .map(|(&g, &z)| if z > 0.0 { g } else { 0.0 })
                .collect(),
            RefLayer::Identity => g,
            RefLayer::MaxPool { windows } => {
                let mut out = vec![0.0; a.len()];
                for (j, w) in windows.iter().enumerate() {
                    out[first_argmax(a, w)] += g[j];
                }
                out
            }
            RefLayer::AvgPool { windows, divisor } => {
                let mut out = vec![0.0; a.len()];
                for (j, w) in windows.iter().enumerate() {
                    for &i in w {
                        out[i] += g[j] / divisor[j];
                    }
                }
                out
            }
        };
    }
    g
}

/// The reference relevance of one sample under `method`.
fn reference(layers: &[RefLayer], method: &Method, x: Vec<f64>, target: usize) -> Vec<f64> {
    match method {
        Method::Lrp { rules } => ref_lrp(layers, rules, x, target),
        Method::Sensitivity => ref_gradient(layers, x, target)
            .iter()
            .map(|g| g * g)
            .collect(),
        Method::GradientXInput => {
            let g = ref_gradient(layers, x.clone(), target);
            g.iter().zip(&x).map(|(g, x)| g * x).collect()
        }
    }
}

/// Runs `method` on `x` through the backend and the reference; asserts per-sample agreement.
/// Explicit targets are used when `explicit`, else the predicted class.
fn check(
    net: &Network,
    method: &Method,
    x: &ArrayD<f64>,
    rng: &mut StdRng,
    explicit: bool,
    what: &str,
) {
    let layers = reference_layers(net);
    let n = x.shape()[0];
    let outputs = net.num_outputs();
    let targets: Vec<usize> = (0..n).map(|_| rng.random_range(0..outputs)).collect();
    let out = cpu::explain(net, method, x.view(), explicit.then_some(&targets[..])).unwrap();
    assert_eq!(out.relevance.shape(), x.shape(), "{what}");
    for (s, sample) in x.axis_iter(Axis(0)).enumerate() {
        let flat: Vec<f64> = sample.iter().copied().collect();
        let acts = ref_forward(&layers, flat.clone());
        let y = acts.last().unwrap();
        let t = if outputs == 1 {
            0
        } else if explicit {
            targets[s]
        } else {
            // predicted: first maximum
            let mut best = 0;
            for (k, &v) in y.iter().enumerate() {
                if v > y[best] {
                    best = k;
                }
            }
            best
        };
        assert_eq!(out.targets[s], t, "{what}: target of sample {s}");
        let logits: Vec<f64> = out.logits.row(s).to_vec();
        assert!(
            forward_error(logits, y.iter().copied()) <= 1e-12,
            "{what}: logits of sample {s}"
        );
        let expected = reference(&layers, method, flat, t);
        let got = out.relevance.index_axis(Axis(0), s);
        let err = rel_l2(got.iter().copied(), expected.iter().copied());
        assert!(
            err <= TOL,
            "{what}: sample {s} (target {t}) relative L2 error {err:e}\n got {:?}\n expected {expected:?}",
            got.iter().collect::<Vec<_>>()
        );
    }
}

fn input(rng: &mut StdRng, net: &Network, n: usize, lo: f64, hi: f64) -> ArrayD<f64> {
    random_input(rng, net, n, lo, hi).mapv(f64::from)
}

/// A CNN exercising what `random_cnn` does not: a non-square kernel with asymmetric padding and
/// stride 2, max pooling with padding and overlapping windows, average pooling that counts
/// padding, sum pooling, and a network that ends in a single output.
fn odd_cnn(rng: &mut StdRng, single_output: bool) -> Network {
    let s = 0.6;
    let mut u = |n| Array1::from_shape_fn(n, |_| common::uniform(rng, -0.5, 0.5));
    let b1 = u(3);
    let b2 = u(2);
    let w1 = Array4::from_shape_fn((3, 2, 3, 2), |_| common::uniform(rng, -s, s));
    let w2 = Array4::from_shape_fn((2, 3, 2, 3), |_| common::uniform(rng, -s, s));
    let count_include_pad = rng.random::<bool>();
    let outputs = if single_output { 1 } else { 3 };
    let layers = vec![
        Layer::Conv2d {
            weight: w1,
            bias: b1,
            window: Window {
                kernel: [3, 2],
                stride: [2, 1],
                pad: [1, 0, 2, 1],
            },
        },
        Layer::Relu,
        Layer::MaxPool2d {
            window: Window {
                kernel: [3, 3],
                stride: [1, 2],
                pad: [1, 1, 1, 0],
            },
        },
        Layer::Conv2d {
            weight: w2,
            bias: b2,
            window: Window {
                kernel: [2, 3],
                stride: [1, 1],
                pad: [0, 1, 1, 1],
            },
        },
        Layer::Relu,
        Layer::AvgPool2d {
            window: Window {
                kernel: [2, 2],
                stride: [1, 1],
                pad: [1, 0, 0, 1],
            },
            count_include_pad,
            sum: false,
        },
        Layer::AvgPool2d {
            window: Window {
                kernel: [2, 1],
                stride: [1, 1],
                pad: [0; 4],
            },
            count_include_pad: false,
            sum: true,
        },
        Layer::Flatten,
    ];
    let flat = Network::new(vec![2, 9, 8], layers.clone(), vec![])
        .unwrap()
        .output_shape()[0];
    let mut layers = layers;
    layers.push(common::dense(rng, flat, outputs, false));
    Network::new(vec![2, 9, 8], layers, vec![]).unwrap()
}

/// Every rule on every Dense/Conv2d layer.
fn all_rules() -> Vec<Rule> {
    vec![
        Rule::Zero,
        Rule::Epsilon(0.1),
        Rule::ZPlus,
        Rule::WSquare,
        Rule::ZBox {
            low: -1.0,
            high: 1.0,
        },
        Rule::Flat,
        Rule::Gamma(0.25),
        Rule::AlphaBeta {
            alpha: 2.0,
            beta: 1.0,
        },
        Rule::AlphaBeta {
            alpha: 1.0,
            beta: 0.0,
        },
    ]
}

fn networks(rng: &mut StdRng) -> Vec<(String, Network)> {
    let c = rng.random_range(1..3);
    let h = rng.random_range(8..12);
    let w = rng.random_range(8..12);
    let d = rng.random_range(3..9);
    vec![
        ("random_cnn".into(), random_cnn(rng, c, h, w, false)),
        ("random_mlp".into(), random_mlp(rng, &[d, 7, 5, 3], false)),
        ("odd_cnn".into(), odd_cnn(rng, false)),
        ("odd_cnn single output".into(), odd_cnn(rng, true)),
    ]
}

#[test]
fn forward_activations_match_the_reference() {
    let mut rng = rng("forward_activations_match_the_reference");
    for (name, net) in networks(&mut rng) {
        let x = input(&mut rng, &net, 3, -1.0, 1.0);
        let acts = cpu::forward(&net, x.view()).unwrap();
        assert_eq!(acts.len(), net.layers.len() + 1, "{name}");
        let layers = reference_layers(&net);
        for (s, sample) in x.axis_iter(Axis(0)).enumerate() {
            let expected = ref_forward(&layers, sample.iter().copied().collect());
            for (k, (a, e)) in acts.iter().zip(&expected).enumerate() {
                let got = a.index_axis(Axis(0), s);
                assert_eq!(got.len(), e.len(), "{name}: activation {k}");
                let err = forward_error(got.iter().copied(), e.iter().copied());
                assert!(
                    err <= 1e-12,
                    "{name}: activation {k} of sample {s}: error {err:e}"
                );
            }
        }
        let logits = cpu::logits(&net, x.view()).unwrap();
        assert_eq!(logits.dim(), (3, net.num_outputs()), "{name}");
        assert_eq!(
            logits.view().into_dyn(),
            acts.last().unwrap().view(),
            "{name}"
        );
    }
}

#[test]
fn every_rule_on_every_layer_matches_the_reference() {
    let mut rng = rng("every_rule_on_every_layer_matches_the_reference");
    for (name, net) in networks(&mut rng) {
        let x = input(&mut rng, &net, 3, -1.0, 1.0);
        let k = net.linear_layers().len();
        for rule in all_rules() {
            let method = Method::Lrp {
                rules: vec![rule; k],
            };
            let explicit = rng.random::<bool>();
            check(
                &net,
                &method,
                &x,
                &mut rng,
                explicit,
                &format!("{name}, {rule}"),
            );
        }
    }
}

#[test]
fn composites_and_rule_mixes_match_the_reference() {
    let mut rng = rng("composites_and_rule_mixes_match_the_reference");
    let bounds = Bounds {
        low: -1.0,
        high: 1.0,
    };
    let mixes: Vec<Vec<&str>> = vec![
        vec![],
        vec!["first=flat"],
        vec!["last=zero", "conv=gamma(0.5)"],
        vec!["dense=alphabeta(1,0)", "0=epsilon(0.01)"],
        vec!["*=zplus", "first=zbox(-1,1)", "1=wsquare"],
    ];
    for (name, net) in networks(&mut rng) {
        let x = input(&mut rng, &net, 2, -1.0, 1.0);
        for (cname, composite) in Composite::ALL {
            let is_baseline = matches!(
                composite,
                Composite::Sensitivity | Composite::GradientXInput
            );
            for mix in &mixes {
                if is_baseline && !mix.is_empty() {
                    continue;
                }
                let overrides: Vec<(LayerSelector, Rule)> = mix
                    .iter()
                    .map(|m| LayerSelector::parse_override(m, bounds).unwrap())
                    .collect();
                let method = composite.resolve(&net, bounds, &overrides).unwrap();
                let explicit = rng.random::<bool>();
                check(
                    &net,
                    &method,
                    &x,
                    &mut rng,
                    explicit,
                    &format!("{name}, {cname} {mix:?}"),
                );
            }
        }
    }
}
