//! Properties of the CPU backends on random networks: Deep Taylor conservation and positivity and
//! max-pool winner-take-all (for the f64 reference and the f32 engine), LRP-0 = gradient x input
//! without biases, target selection, and errors (never panics) for bad shapes, targets and
//! methods.

mod common;

use common::{random_cnn, random_input, random_mlp, rel_l2, rng};
use ndarray::{Array1, ArrayD, Axis, IxDyn};
use rand::rngs::StdRng;
use rand::Rng;
use taylormap::lrp::{argmax, Bounds, Composite, Method, Rule};
use taylormap::model::Window;
use taylormap::{cpu, Backend, Error, Layer, Network};

/// LRP-0 divides by stab(z_j) = z_j + 1e-9 sign(z_j), not z_j, so it equals the exact gradient
/// (and conserves y_t) only up to the stabiliser: per neuron a relative 1e-9 / |z_j|, amplified
/// where relevance of both signs cancels. A wrong rule or seeding is off by order 1, so the
/// SPEC's own conservation threshold still separates the two.
const STAB_TOL: f64 = 1e-4;

/// sum_i R_i = y_t up to the stabiliser (relative, or absolute for scores below 1).
fn conserved(stats: &taylormap::SampleStats) -> bool {
    (stats.relevance_sum - stats.score).abs() <= STAB_TOL * stats.score.abs().max(1.0)
}

/// A CPU backend under test.
#[derive(Clone, Copy, Debug)]
enum Engine {
    /// The f64 reference: exact up to the stabiliser.
    Reference,
    /// The f32 engine: f32 rounding on top.
    Fast,
}

impl Engine {
    const ALL: [Engine; 2] = [Engine::Reference, Engine::Fast];

    /// Explains `x` (whose values are f32 numbers) with relevance widened to f64.
    fn explain(self, net: &Network, method: &Method, x: &ArrayD<f64>) -> taylormap::BatchOutput {
        match self {
            Engine::Reference => cpu::explain(net, method, x.view(), None).unwrap(),
            Engine::Fast => {
                let mut backend = cpu::FastBackend::new(net, method).unwrap().with_threads(2);
                let out = backend.run(x.mapv(|v| v as f32).view(), None).unwrap();
                taylormap::BatchOutput {
                    relevance: out.relevance.mapv(f64::from),
                    logits: out.logits,
                    targets: out.targets,
                }
            }
        }
    }

    /// Largest |sum R - y| / max(y, 1e-3) accepted under Deep Taylor on b <= 0 networks.
    fn conservation_tol(self) -> f64 {
        match self {
            Engine::Reference => 1e-6,
            Engine::Fast => 1e-5,
        }
    }

    /// Smallest relevance accepted from a positive rule, relative to the score: exactly 0 in
    /// f64; in f32 zbox's terms x w - L w+ - H w- cancel up to rounding.
    fn negative_tol(self) -> f64 {
        match self {
            Engine::Reference => 0.0,
            Engine::Fast => 1e-6,
        }
    }
}

fn input(rng: &mut StdRng, net: &Network, n: usize, lo: f64, hi: f64) -> ArrayD<f64> {
    random_input(rng, net, n, lo, hi).mapv(f64::from)
}

/// `count` random ReLU CNNs and as many MLPs, optionally with all biases <= 0.
fn networks(rng: &mut StdRng, nonpositive_bias: bool, count: usize) -> Vec<(String, Network)> {
    let mut nets = vec![];
    for k in 0..count {
        let c = rng.random_range(1..3);
        let (h, w) = (rng.random_range(7..11), rng.random_range(7..11));
        nets.push((
            format!("cnn {k}"),
            random_cnn(rng, c, h, w, nonpositive_bias),
        ));
        let d = rng.random_range(4..10);
        let hidden = rng.random_range(5..12);
        let classes = rng.random_range(2..5);
        nets.push((
            format!("mlp {k}"),
            random_mlp(rng, &[d, hidden, hidden, classes], nonpositive_bias),
        ));
    }
    nets
}

#[test]
fn deep_taylor_is_conservative_and_positive_on_nonpositive_bias_networks() {
    let mut rng = rng("deep_taylor_is_conservative_and_positive_on_nonpositive_bias_networks");
    let mut checked = 0;
    let mut total = 0;
    for (name, net) in networks(&mut rng, true, 4) {
        // Inputs inside the bounds; L <= 0 <= H as zbox's conservation argument needs.
        let low = -rng.random_range(0.0..0.5);
        let high = rng.random_range(1.0..3.0);
        let bounds = Bounds { low, high };
        let n = 24;
        let x = input(&mut rng, &net, n, low, high);
        for (composite, engine) in [Composite::DeepTaylor, Composite::DeepTaylorBounded]
            .into_iter()
            .flat_map(|c| Engine::ALL.map(|e| (c, e)))
        {
            let method = composite.resolve(&net, bounds, &[]).unwrap();
            let out = engine.explain(&net, &method, &x);
            for i in 0..n {
                total += 1;
                let stats = out.stats(i);
                if stats.score <= 0.0 {
                    continue;
                }
                checked += 1;
                // conservation error measured against a score of at least 1e-3: the stabiliser
                // (eps = 1e-9 per neuron) is not negligible next to tinier scores.
                let error = (stats.relevance_sum - stats.score).abs() / stats.score.max(1e-3);
                assert!(
                    error <= engine.conservation_tol(),
                    "{name}, {}, {engine:?}: sample {i}: conservation error {:e} (score {}, sum {})",
                    composite.name(),
                    stats.conservation_error,
                    stats.score,
                    stats.relevance_sum
                );
                let row = out.relevance.index_axis(Axis(0), i);
                let min = row.iter().copied().fold(f64::INFINITY, f64::min);
                assert!(
                    min >= -engine.negative_tol() * stats.score,
                    "{name}, {}, {engine:?}: sample {i}: negative relevance {min}",
                    composite.name()
                );
                assert!(row.iter().any(|&r| r > 0.0), "{name}: sample {i}: all zero");
            }
        }
    }
    assert!(
        checked >= 80,
        "only {checked} of {total} explanations had a positive score; the test proves little"
    );
}

/// The first (row-major) arg-max of every window of a max-pooling layer, by plain loops.
fn arg_maxes(x: &ArrayD<f64>, window: &Window) -> Vec<Vec<usize>> {
    let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (oh, ow) = window.output_hw(h, w).unwrap();
    let mut winners = vec![vec![]; n];
    for (s, list) in winners.iter_mut().enumerate() {
        for ch in 0..c {
            for oi in 0..oh {
                for oj in 0..ow {
                    let mut best: Option<(usize, f64)> = None;
                    for ki in 0..window.kernel[0] {
                        for kj in 0..window.kernel[1] {
                            let r = (oi * window.stride[0] + ki) as isize - window.pad[0] as isize;
                            let q = (oj * window.stride[1] + kj) as isize - window.pad[1] as isize;
                            if r < 0 || q < 0 || r as usize >= h || q as usize >= w {
                                continue;
                            }
                            let v = x[[s, ch, r as usize, q as usize]];
                            if best.is_none_or(|(_, b)| v > b) {
                                best = Some(((ch * h + r as usize) * w + q as usize, v));
                            }
                        }
                    }
                    list.push(best.unwrap().0);
                }
            }
        }
    }
    winners
}

#[test]
fn max_pool_relevance_is_zero_except_at_window_arg_maxes() {
    let mut rng = rng("max_pool_relevance_is_zero_except_at_window_arg_maxes");
    // Rows with some relevance, out of all: a dead network would pass vacuously.
    let (mut nonzero, mut rows) = (0, 0);
    for case in 0..5 {
        let k = rng.random_range(2..4);
        let stride = rng.random_range(1..3);
        let window = if case == 0 {
            // the usual 2 x 2 pooling of stride 2 (the CPU engine's fast path), every time
            Window {
                kernel: [2, 2],
                stride: [2, 2],
                pad: [0; 4],
            }
        } else {
            Window {
                kernel: [k, k],
                stride: [stride, stride],
                pad: [0; 4].map(|_| rng.random_range(0..k)),
            }
        };
        let (c, h, w) = (
            rng.random_range(1..3),
            rng.random_range(4..8),
            rng.random_range(4..8),
        );
        let pooled = Network::new(
            vec![c, h, w],
            vec![Layer::MaxPool2d { window }, Layer::Flatten],
            vec![],
        )
        .unwrap()
        .output_shape()[0];
        let layers = vec![
            Layer::MaxPool2d { window },
            Layer::Flatten,
            common::dense(&mut rng, pooled, 6, false),
            Layer::Relu,
            common::dense(&mut rng, 6, 3, false),
        ];
        let net = Network::new(vec![c, h, w], layers, vec![]).unwrap();
        // Quantised values make ties common, so first-index tie-breaking is exercised too.
        let x = input(&mut rng, &net, 4, -1.0, 1.0).mapv(|v| (v * 3.0).round() / 3.0);
        let winners = arg_maxes(&x, &window);
        let bounds = Bounds {
            low: -1.0,
            high: 1.0,
        };
        let methods = [
            Composite::DeepTaylor.resolve(&net, bounds, &[]).unwrap(),
            Composite::EpsilonAlpha2Beta1
                .resolve(&net, bounds, &[])
                .unwrap(),
            Composite::LrpZero.resolve(&net, bounds, &[]).unwrap(),
            Method::Sensitivity,
        ];
        for (method, engine) in methods.iter().flat_map(|m| Engine::ALL.map(|e| (m, e))) {
            let out = engine.explain(&net, method, &x);
            for (s, win) in winners.iter().enumerate() {
                let row: Vec<f64> = out
                    .relevance
                    .index_axis(Axis(0), s)
                    .iter()
                    .copied()
                    .collect();
                for (i, &r) in row.iter().enumerate() {
                    if !win.contains(&i) {
                        assert_eq!(
                            r, 0.0,
                            "case {case} {window:?}, {method:?}, {engine:?}: sample {s}, position {i}"
                        );
                    }
                }
                rows += 1;
                nonzero += usize::from(row.iter().any(|&r| r != 0.0));
            }
        }
    }
    assert!(
        nonzero * 2 >= rows,
        "only {nonzero} of {rows} explanations were not all zero"
    );
}

/// The same network with every bias set to 0.
fn without_bias(net: &Network) -> Network {
    let layers = net
        .layers
        .iter()
        .map(|layer| match layer {
            Layer::Dense { weight, bias } => Layer::Dense {
                weight: weight.clone(),
                bias: Array1::zeros(bias.len()),
            },
            Layer::Conv2d {
                weight,
                bias,
                window,
            } => Layer::Conv2d {
                weight: weight.clone(),
                bias: Array1::zeros(bias.len()),
                window: *window,
            },
            other => other.clone(),
        })
        .collect();
    Network::new(net.input_shape.clone(), layers, vec![]).unwrap()
}

#[test]
fn lrp_zero_equals_gradient_times_input_without_biases() {
    let mut rng = rng("lrp_zero_equals_gradient_times_input_without_biases");
    let (mut compared, mut total) = (0, 0);
    for (name, net) in networks(&mut rng, false, 3) {
        let net = without_bias(&net);
        let n = 5;
        let x = input(&mut rng, &net, n, -1.0, 1.0);
        let bounds = Bounds::unit_normalized(None);
        let zero = Composite::LrpZero.resolve(&net, bounds, &[]).unwrap();
        // LRP-0 with a vanishing stabiliser: the identity R = x * dy/dx holds to rounding.
        let bare = Method::Lrp {
            rules: vec![Rule::Epsilon(f64::MIN_POSITIVE); net.linear_layers().len()],
        };
        let targets: Vec<usize> = (0..n)
            .map(|_| rng.random_range(0..net.num_outputs()))
            .collect();
        let lrp = cpu::explain(&net, &zero, x.view(), Some(&targets)).unwrap();
        let exact = cpu::explain(&net, &bare, x.view(), Some(&targets)).unwrap();
        let gxi = cpu::explain(&net, &Method::GradientXInput, x.view(), Some(&targets)).unwrap();
        let acts = cpu::forward(&net, x.view()).unwrap();
        for s in 0..n {
            let row =
                |a: &ArrayD<f64>| a.index_axis(Axis(0), s).iter().copied().collect::<Vec<_>>();
            let b = row(&gxi.relevance);
            let err = rel_l2(row(&exact.relevance), b.iter().copied());
            assert!(
                err <= 1e-5,
                "{name}: sample {s}: epsilon(0+) vs gradient x input: {err:e}"
            );
            // The lrp-zero composite (stabiliser 1e-9) agrees wherever no pre-activation is
            // near 0, where 1e-9 / |z_j| is no longer negligible.
            let min_z = net
                .linear_layers()
                .iter()
                .flat_map(|&k| row(&acts[k + 1]))
                .fold(f64::INFINITY, |m, z| m.min(z.abs()));
            total += 1;
            if min_z >= 1e-3 {
                compared += 1;
                let err = rel_l2(row(&lrp.relevance), b.iter().copied());
                assert!(
                    err <= STAB_TOL,
                    "{name}: sample {s}: lrp-zero vs gradient x input: {err:e}"
                );
            }
            // Without biases LRP-0 also conserves y_t (up to the stabiliser).
            let stats = lrp.stats(s);
            assert!(conserved(&stats), "{name}: sample {s}: {stats:?}");
        }
    }
    assert!(
        compared * 3 >= total,
        "only {compared} of {total} samples compared"
    );
}

#[test]
fn targets_are_predicted_or_explicit() {
    let mut rng = rng("targets_are_predicted_or_explicit");
    for (name, net) in networks(&mut rng, false, 3) {
        let net = without_bias(&net);
        let n = 6;
        let x = input(&mut rng, &net, n, -1.0, 1.0);
        let method = Composite::LrpZero
            .resolve(&net, Bounds::unit_normalized(None), &[])
            .unwrap();
        // Predicted: the arg-max of each row of the logits, and the relevance starts from it.
        let out = cpu::explain(&net, &method, x.view(), None).unwrap();
        let logits = cpu::logits(&net, x.view()).unwrap();
        assert_eq!(out.logits, logits, "{name}");
        for i in 0..n {
            let best = argmax(logits.row(i).iter().copied());
            assert_eq!(out.targets[i], best, "{name}: sample {i}");
            assert_eq!(out.predicted(i), best, "{name}: sample {i}");
            assert_eq!(out.score(i), logits[[i, best]]);
            assert!(conserved(&out.stats(i)), "{name}: sample {i}");
        }
        // Explicit: each sample starts from its own class.
        let targets: Vec<usize> = (0..n)
            .map(|_| rng.random_range(0..net.num_outputs()))
            .collect();
        let out = cpu::explain(&net, &method, x.view(), Some(&targets)).unwrap();
        assert_eq!(out.targets, targets, "{name}");
        for (i, &t) in targets.iter().enumerate() {
            let stats = out.stats(i);
            assert_eq!(stats.score, logits[[i, t]], "{name}: sample {i}");
            assert!(conserved(&stats), "{name}: sample {i}: {stats:?}");
        }
    }
}

#[test]
fn single_output_networks_always_explain_their_output() {
    let mut rng = rng("single_output_networks_always_explain_their_output");
    let d = rng.random_range(3..8);
    let net = without_bias(&random_mlp(&mut rng, &[d, 6, 1], false));
    let x = input(&mut rng, &net, 4, -1.0, 1.0);
    let method = Method::Lrp {
        rules: vec![Rule::Zero; 2],
    };
    let by_default = cpu::explain(&net, &method, x.view(), None).unwrap();
    // A dataset label (here 3, 1, 7, 0) does not select anything on a one-output network.
    let labelled = cpu::explain(&net, &method, x.view(), Some(&[3, 1, 7, 0])).unwrap();
    for out in [&by_default, &labelled] {
        assert_eq!(out.targets, vec![0; 4]);
        for i in 0..4 {
            assert_eq!(out.score(i), out.logits[[i, 0]]);
            assert!(conserved(&out.stats(i)), "sample {i}");
        }
    }
    assert_eq!(by_default.relevance, labelled.relevance);
}

#[test]
fn the_backend_converts_f32_input_and_reports_itself() {
    let mut rng = rng("the_backend_converts_f32_input_and_reports_itself");
    let net = random_cnn(&mut rng, 2, 8, 8, false);
    let method = Composite::EpsilonGammaBox
        .resolve(&net, Bounds::unit_normalized(None), &[])
        .unwrap();
    let x32 = random_input(&mut rng, &net, 3, 0.0, 1.0);
    let mut backend = cpu::ReferenceBackend::new(net.clone(), method.clone());
    assert_eq!(backend.kind(), "reference");
    assert!(!backend.adapter().is_empty());
    for _ in 0..2 {
        // The plan is reused on the second batch.
        let out = backend.run(x32.view(), None).unwrap();
        let direct = cpu::explain(&net, &method, x32.mapv(f64::from).view(), None).unwrap();
        assert_eq!(out.relevance, direct.to_f32().relevance);
        assert_eq!(out.targets, direct.targets);
    }
}

#[test]
fn an_empty_batch_gives_empty_outputs() {
    let mut rng = rng("an_empty_batch_gives_empty_outputs");
    let net = random_cnn(&mut rng, 1, 8, 8, false);
    let x = ArrayD::<f64>::zeros(IxDyn(&[0, 1, 8, 8]));
    let method = Composite::DeepTaylor
        .resolve(&net, Bounds::unit_normalized(None), &[])
        .unwrap();
    for engine in Engine::ALL {
        let out = engine.explain(&net, &method, &x);
        assert_eq!(out.relevance.shape(), &[0, 1, 8, 8], "{engine:?}");
        assert_eq!(out.logits.dim(), (0, net.num_outputs()), "{engine:?}");
        assert!(out.targets.is_empty(), "{engine:?}");
    }
}

#[test]
fn bad_inputs_targets_and_methods_are_errors_not_panics() {
    let mut rng = rng("bad_inputs_targets_and_methods_are_errors_not_panics");
    let net = random_cnn(&mut rng, 2, 8, 8, false);
    let classes = net.num_outputs();
    let method = Composite::DeepTaylor
        .resolve(&net, Bounds::unit_normalized(None), &[])
        .unwrap();
    let good = input(&mut rng, &net, 3, 0.0, 1.0);

    // Wrong per-sample shape and wrong rank: the message says expected and got.
    for shape in [
        vec![3, 2, 8, 7],
        vec![3, 1, 8, 8],
        vec![3, 128],
        vec![2, 8, 8],
    ] {
        let x = ArrayD::from_elem(IxDyn(&shape), 0.5);
        for result in [
            cpu::explain(&net, &method, x.view(), None).map(|_| ()),
            cpu::forward(&net, x.view()).map(|_| ()),
            cpu::logits(&net, x.view()).map(|_| ()),
        ] {
            match result {
                Err(e @ Error::Shape { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains("(n, 2, 8, 8)"), "{msg}");
                    let got = shape
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ");
                    assert!(msg.contains(&got), "{msg}");
                }
                other => panic!("shape {shape:?}: expected a shape error, got {other:?}"),
            }
        }
    }

    // A target out of range names the sample.
    let targets = [0, classes, 1];
    let err = cpu::explain(&net, &method, good.view(), Some(&targets)).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Usage { .. }) && msg.contains("sample 1"),
        "{msg}"
    );
    assert!(msg.contains(&classes.to_string()), "{msg}");

    // One target per sample.
    let err = cpu::explain(&net, &method, good.view(), Some(&[0])).unwrap_err();
    assert!(
        err.to_string().contains("1 targets for a batch of 3"),
        "{err}"
    );

    // One rule per Dense/Conv2d layer.
    let linear = net.linear_layers().len();
    for count in [linear - 1, linear + 1] {
        let short = Method::Lrp {
            rules: vec![Rule::ZPlus; count],
        };
        let err = cpu::explain(&net, &short, good.view(), None).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("{count} rule(s)")), "{msg}");
        assert!(msg.contains(&format!("{linear} Dense/Conv2d")), "{msg}");
    }

    // Non-finite input names the sample.
    let mut bad = good.clone();
    bad[[2, 1, 3, 4]] = f64::NAN;
    let err = cpu::explain(&net, &method, bad.view(), None).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    assert!(err.to_string().contains("sample 2"), "{err}");

    // The same checks behind the Backend interface.
    let mut backend = cpu::ReferenceBackend::new(net.clone(), method);
    let x32 = ArrayD::<f32>::from_elem(IxDyn(&[2, 2, 8, 9]), 0.5);
    assert!(matches!(
        backend.run(x32.view(), None),
        Err(Error::Shape { .. })
    ));
    let x32 = good.mapv(|v| v as f32);
    assert!(backend.run(x32.view(), Some(&[classes; 3])).is_err());
    assert!(backend.run(x32.view(), None).is_ok());
}

/// A convolution whose receptive field is a single value (1 channel, 1x1 kernel): `dot` then
/// returns column-major data, which the backend must handle.
#[test]
fn one_value_receptive_fields_work() {
    let mut rng = common::rng("one_value_receptive_fields_work");
    let conv = common::conv(&mut rng, 1, 3, 1, 1, 0, false);
    let net = taylormap::Network::new(
        vec![1, 4, 5],
        vec![conv, taylormap::Layer::Relu, taylormap::Layer::Flatten],
        vec![],
    )
    .unwrap();
    let x = common::random_input(&mut rng, &net, 3, -1.0, 1.0).mapv(f64::from);
    let logits = taylormap::cpu::logits(&net, x.view()).unwrap();
    let taylormap::Layer::Conv2d { weight, bias, .. } = &net.layers[0] else {
        unreachable!()
    };
    for ((i, j), v) in logits.indexed_iter() {
        let (ch, p) = (j / 20, j % 20);
        let want =
            (x[[i, 0, p / 5, p % 5]] * weight[[ch, 0, 0, 0]] as f64 + bias[ch] as f64).max(0.0);
        assert!((v - want).abs() < 1e-12, "{v} vs {want}");
    }
    let method = taylormap::Method::Lrp {
        rules: vec![taylormap::Rule::Zero],
    };
    taylormap::cpu::explain(&net, &method, x.view(), None).unwrap();
}

/// A layer with an empty output (a Dense layer of 0 units, a convolution to 0 channels) or an
/// empty window is refused when the network is built, naming the layer: no engine runs it.
#[test]
fn empty_layers_are_refused_naming_the_layer() {
    let window = |kernel: [usize; 2]| Window {
        kernel,
        stride: [1, 1],
        pad: [0; 4],
    };
    let dense = Layer::Dense {
        weight: ndarray::Array2::zeros((4, 0)),
        bias: Array1::zeros(0),
    };
    let conv = Layer::Conv2d {
        weight: ndarray::Array4::zeros((0, 1, 2, 2)),
        bias: Array1::zeros(0),
        window: window([2, 2]),
    };
    // A window of no positions: its output would have a size, but no value.
    let point = Layer::Conv2d {
        weight: ndarray::Array4::zeros((2, 1, 0, 2)),
        bias: Array1::zeros(2),
        window: window([0, 2]),
    };
    for (input, layers, says) in [
        (vec![4], vec![dense], "no zero dimension"),
        (
            vec![1, 3, 3],
            vec![conv, Layer::Flatten],
            "no zero dimension",
        ),
        (
            vec![1, 3, 3],
            vec![point, Layer::Flatten],
            "zero kernel size",
        ),
    ] {
        match Network::new(input, layers, vec![]) {
            Err(e @ Error::Shape { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("0 (") && msg.contains(says), "{msg}");
            }
            other => panic!("expected a shape error, got {other:?}"),
        }
    }
}

/// A network of a few weights whose padding makes an activation of `side`^2 values a sample.
fn padded_conv_net(rng: &mut StdRng, input_side: usize, pad: usize) -> Network {
    let conv = common::conv(rng, 1, 1, 3, 1, pad, false);
    let side = input_side + 2 * pad - 2;
    let pool = Layer::MaxPool2d {
        window: Window {
            kernel: [side, side],
            stride: [side, side],
            pad: [0; 4],
        },
    };
    let layers = vec![
        conv,
        Layer::Relu,
        pool,
        Layer::Flatten,
        common::dense(rng, 1, 3, false),
    ];
    let names = ["c", "r", "p", "f", "d"].map(String::from).to_vec();
    Network::new(vec![1, input_side, input_side], layers, names).unwrap()
}

/// A network whose working memory per sample is beyond any machine's (an activation of 2^36
/// values from a padded convolution: about 5 TB of f32 scratch) is refused by both CPU backends
/// before anything its size is allocated, naming the layer: it used to abort the process out of
/// memory. The reference, which holds a whole batch at once, refuses a batch too large for
/// memory naming --batch-size and the batch that would fit.
#[test]
fn networks_too_large_for_memory_are_refused_not_aborted() {
    let mut rng = rng("networks_too_large_for_memory");
    let net = padded_conv_net(&mut rng, 4, 1 << 17);
    let method = Method::Lrp {
        rules: vec![Rule::ZPlus, Rule::Epsilon(0.25)],
    };
    let x = ArrayD::from_elem(IxDyn(&[1, 1, 4, 4]), 0.5f32);
    let fast = cpu::FastBackend::new(&net, &method).err().expect("refused");
    let reference = cpu::ReferenceBackend::new(net.clone(), method.clone())
        .run(x.view(), None)
        .expect_err("refused");
    for e in [fast, reference] {
        let msg = e.to_string();
        assert!(
            msg.contains("layer 0 ('c')") && msg.contains("GB of memory available"),
            "{msg}"
        );
    }
    // 4.2 M values a sample, and a batch of 10^5: 33 GB for the activations alone in f64
    let net = padded_conv_net(&mut rng, 4, 1024);
    let x = ArrayD::from_elem(IxDyn(&[100_000, 1, 4, 4]), 0.5f32);
    let msg = cpu::ReferenceBackend::new(net.clone(), method.clone())
        .run(x.view(), None)
        .expect_err("refused")
        .to_string();
    assert!(
        msg.starts_with("--batch-size") && msg.contains("at most"),
        "{msg}"
    );
    // a smaller one of the kind explains on both backends, alike
    let net = padded_conv_net(&mut rng, 4, 64);
    let x = random_input(&mut rng, &net, 2, 0.0, 1.0);
    let mut reference = cpu::ReferenceBackend::new(net.clone(), method.clone());
    let want = reference.run(x.view(), None).unwrap();
    let got = cpu::FastBackend::new(&net, &method)
        .unwrap()
        .run(x.view(), None)
        .unwrap();
    let err = rel_l2(
        got.relevance.iter().map(|&v| v as f64),
        want.relevance.iter().map(|&v| v as f64),
    );
    assert!(err <= 1e-4, "relative L2 {err}");
}
