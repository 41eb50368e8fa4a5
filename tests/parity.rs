//! The f32 engines (the fast CPU engine always; the GPU backend when there is an adapter, and
//! then required under TAYLORMAP_REQUIRE_GPU=1) vs the f64 CPU reference on random networks
//! and inputs: every rule, every composite,
//! both baselines, Dense and Conv2d (stride, padding), max/avg/sum pooling, batches of 1 and
//! batch sizes that do not divide the input count, predicted and explicit targets, and layers
//! whose reductions are longer than llvmpipe's 65,535-iteration cap for a naive kernel.
//! Per sample: relative L2 error of the relevance <= 1e-4, scores and logits equal to 1e-5
//! (relative; absolute below 1). Random maps are occasionally ill-conditioned (a target score
//! near 0, a denominator z' near 0 on a layer whose rule does not suit it): there the reference
//! itself moves by more than 1e-6 under f32-sized perturbations, and the tolerance follows that
//! measured sensitivity (see `f32_sensitivity`) instead of failing on f32 rounding.

mod common;

use common::{conv, dense, random_cnn, random_input, random_mlp, rel_l2, rng};
use ndarray::{ArrayD, Axis};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use taylormap::cpu::FastBackend;
use taylormap::gpu::{adapters, GpuBackend, GpuContext};
use taylormap::model::Window;
use taylormap::{Backend, Bounds, Composite, Error, Layer, Method, Network, Rule};

const REL_TOL: f64 = 1e-4;
const SCORE_TOL: f64 = 1e-5;
/// The tolerance is at least this multiple of the reference's own f32 sensitivity.
const CONDITIONING: f64 = 100.0;

fn every_rule(low: f64, high: f64) -> Vec<Rule> {
    vec![
        Rule::Zero,
        Rule::Epsilon(0.25),
        Rule::ZPlus,
        Rule::WSquare,
        Rule::ZBox { low, high },
        Rule::Flat,
        Rule::Gamma(0.25),
        Rule::AlphaBeta {
            alpha: 2.0,
            beta: 1.0,
        },
    ]
}

fn same_rule(net: &Network, rule: Rule) -> Method {
    Method::Lrp {
        rules: vec![rule; net.linear_layers().len()],
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= SCORE_TOL * b.abs().max(1.0)
}

/// An f32 engine held to the reference.
#[derive(Clone)]
enum Engine {
    /// The fast CPU engine, on 3 threads so that even a 2-core machine interleaves chunks.
    Fast,
    Gpu(GpuContext),
}

impl Engine {
    /// The backend's kind.
    fn kind(&self) -> &'static str {
        match self {
            Engine::Fast => "cpu",
            Engine::Gpu(_) => "gpu",
        }
    }

    /// For messages: the kind, and for the GPU its API (Vulkan, Gl, ...).
    fn name(&self) -> String {
        match self {
            Engine::Fast => "cpu".into(),
            Engine::Gpu(ctx) => format!("gpu ({})", ctx.summary().backend),
        }
    }

    /// The engine's backend; the GPU's with batches of `batch` (the CPU engine chunks by itself).
    fn backend(&self, net: &Network, method: &Method, batch: usize) -> Box<dyn Backend> {
        match self {
            Engine::Fast => Box::new(FastBackend::new(net, method).unwrap().with_threads(3)),
            Engine::Gpu(ctx) => {
                let backend = GpuBackend::new(ctx, net, method, batch).unwrap();
                assert_eq!(backend.batch_size(), batch, "unexpected clamp");
                Box::new(backend)
            }
        }
    }
}

/// Every engine this machine has: the CPU engine, and the GPU when there is an adapter (a hard
/// failure without one under TAYLORMAP_REQUIRE_GPU=1), on its best API and, where that is not
/// GL, on GL as well: the same WGSL through naga's GLSL and the GL driver's compiler.
fn engines() -> Vec<Engine> {
    let mut all = vec![Engine::Fast];
    let gpu = common::gpu::context();
    let on_gl = |ctx: &GpuContext| ctx.summary().backend == "Gl";
    let gl = match &gpu {
        Some(ctx) if on_gl(ctx) => None,
        _ => common::gpu::gl_context(),
    };
    all.extend(gpu.map(Engine::Gpu));
    all.extend(gl.map(Engine::Gpu));
    all
}

/// Runs `x` through every engine and the CPU reference and compares logits, targets, scores and
/// relevance per sample.
fn compare(
    engines: &[Engine],
    net: &Network,
    method: &Method,
    x: &ArrayD<f32>,
    targets: Option<&[usize]>,
    batch: usize,
    what: &str,
) {
    for engine in engines {
        let mut backend = engine.backend(net, method, batch);
        assert_eq!(backend.kind(), engine.kind());
        let out = backend.run(x.view(), targets).unwrap();
        compare_output(
            net,
            method,
            x,
            targets,
            &out,
            &format!("{}: {what}", engine.name()),
        );
    }
}

/// Compares one engine's output for `x` with the CPU reference.
fn compare_output(
    net: &Network,
    method: &Method,
    x: &ArrayD<f32>,
    targets: Option<&[usize]>,
    gpu: &taylormap::BatchOutput<f32>,
    what: &str,
) {
    let x64 = x.mapv(f64::from);
    let mut cpu = taylormap::cpu::explain(net, method, x64.view(), targets).unwrap();
    let n = x.shape()[0];
    assert_eq!(gpu.relevance.shape(), cpu.relevance.shape(), "{what}");
    assert_eq!(gpu.logits.shape(), cpu.logits.shape(), "{what}");
    for (i, (g, c)) in gpu.logits.iter().zip(cpu.logits.iter()).enumerate() {
        assert!(close(*g, *c), "{what}: logit {i}: engine {g} reference {c}");
    }
    if gpu.targets != cpu.targets {
        // Only a near tie of two logits may pick another class in f32; then compare relevance
        // for the class the engine chose.
        assert!(targets.is_none(), "{what}: explicit targets changed");
        for i in 0..n {
            let (g, c) = (gpu.targets[i], cpu.targets[i]);
            assert!(
                close(cpu.logits[[i, g]], cpu.logits[[i, c]]),
                "{what}: sample {i}: engine predicted {g}, reference {c}, logits {:?}",
                cpu.logits.row(i)
            );
        }
        cpu = taylormap::cpu::explain(net, method, x64.view(), Some(&gpu.targets)).unwrap();
    }
    let sensitivity = f32_sensitivity(net, method, &x64, &cpu);
    let mut worst = 0.0f64;
    for (i, sensitivity) in sensitivity.into_iter().enumerate() {
        assert!(
            close(gpu.score(i), cpu.score(i)),
            "{what}: sample {i}: score engine {} reference {}",
            gpu.score(i),
            cpu.score(i)
        );
        let g = gpu.relevance.index_axis(Axis(0), i);
        let c = cpu.relevance.index_axis(Axis(0), i);
        if c.iter().all(|v| *v == 0.0) {
            // No relevance reaches the input (every path dead): the GPU must agree.
            assert!(
                g.iter().all(|v| v.abs() <= 1e-12),
                "{what}: sample {i}: the reference relevance is zero, the engine's is not"
            );
            continue;
        }
        let err = rel_l2(g.iter().map(|&v| f64::from(v)), c.iter().copied());
        // Well-conditioned maps (sensitivity ~1e-7) get REL_TOL; on the rare ill-conditioned
        // ones the GPU's error has stayed within 25 times the sensitivity.
        let tol = REL_TOL.max(CONDITIONING * sensitivity);
        assert!(
            err <= tol,
            "{what}: sample {i}: relative L2 error {err:e}, tolerance {tol:e} (target {}, score \
             {}, f32 sensitivity of the reference {:.2e})",
            cpu.targets[i],
            cpu.score(i),
            sensitivity
        );
        worst = worst.max(err);
    }
    eprintln!("{what}: {n} samples, worst relative L2 error {worst:.2e}");
}

/// How much the reference itself moves under f32-sized rounding, per sample: the relative L2
/// change of its relevance when every weight and bias moves by one f32 ulp and every input by
/// about 1e-7, at random (same targets). An f32 backend cannot be expected to agree better than
/// a small multiple of this; for a well-conditioned map it is ~1e-7, far below REL_TOL, but a
/// target score near 0 or a denominator z' near 0 amplifies it.
fn f32_sensitivity(
    net: &Network,
    method: &Method,
    x64: &ArrayD<f64>,
    cpu: &taylormap::BatchOutput,
) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut ulp = |v: f32| {
        if v == 0.0 {
            v
        } else if rng.random::<bool>() {
            f32::from_bits(v.to_bits() + 1)
        } else {
            f32::from_bits(v.to_bits() - 1)
        }
    };
    let mut perturbed = net.clone();
    for layer in &mut perturbed.layers {
        match layer {
            Layer::Dense { weight, bias } => {
                weight.mapv_inplace(&mut ulp);
                bias.mapv_inplace(&mut ulp);
            }
            Layer::Conv2d { weight, bias, .. } => {
                weight.mapv_inplace(&mut ulp);
                bias.mapv_inplace(&mut ulp);
            }
            _ => {}
        }
    }
    let mut rng = StdRng::seed_from_u64(0x5eed + 1);
    let px = x64.mapv(|v| v * (1.0 + (rng.random::<f64>() - 0.5) * 2.4e-7));
    let p = taylormap::cpu::explain(&perturbed, method, px.view(), Some(&cpu.targets)).unwrap();
    (0..cpu.targets.len())
        .map(|i| {
            rel_l2(
                p.relevance.index_axis(Axis(0), i).iter().copied(),
                cpu.relevance.index_axis(Axis(0), i).iter().copied(),
            )
        })
        .collect()
}

/// Draws cases with `draw` until the reference relevance of every sample is nonzero (random
/// networks sometimes have every path dead), so that each comparison tests something.
fn useful(
    rng: &mut StdRng,
    what: &str,
    mut draw: impl FnMut(&mut StdRng) -> (Network, Method, ArrayD<f32>),
) -> (Network, Method, ArrayD<f32>) {
    for _ in 0..50 {
        let (net, method, x) = draw(rng);
        let out = taylormap::cpu::explain(&net, &method, x.mapv(f64::from).view(), None).unwrap();
        if out
            .relevance
            .outer_iter()
            .all(|r| r.iter().any(|v| *v != 0.0))
        {
            return (net, method, x);
        }
    }
    panic!("{what}: 50 random cases in a row had no relevance at the input");
}

#[test]
fn every_rule_on_dense_layers() {
    let engines = engines();
    let mut rng = rng("every_rule_on_dense_layers");
    for rule in every_rule(-1.0, 1.0) {
        let what = format!("mlp {rule}");
        let (net, method, x) = useful(&mut rng, &what, |rng| {
            let widths = [
                rng.random_range(10..40),
                rng.random_range(8..24),
                rng.random_range(6..16),
                rng.random_range(2..6),
            ];
            let net = random_mlp(rng, &widths, false);
            let x = random_input(rng, &net, 5, -1.0, 1.0);
            (net.clone(), same_rule(&net, rule), x)
        });
        let what = format!("{what} {:?}", net.input_shape);
        compare(&engines, &net, &method, &x, None, 2, &what);
    }
}

#[test]
fn every_rule_on_conv_layers() {
    let engines = engines();
    let mut rng = rng("every_rule_on_conv_layers");
    // Signed inputs, so that every term of a rule carries weight (alpha-beta's x- terms too),
    // on a single-channel input (the gather whose lanes are the terms) and on several channels.
    for rule in every_rule(-1.0, 1.0) {
        for single in [true, false] {
            let what = format!("cnn {rule}");
            let (net, method, x) = useful(&mut rng, &what, |rng| {
                let (c, h, w) = (
                    if single { 1 } else { rng.random_range(2..4) },
                    rng.random_range(7..12),
                    rng.random_range(7..12),
                );
                let net = random_cnn(rng, c, h, w, false);
                let x = random_input(rng, &net, 3, -1.0, 1.0);
                (net.clone(), same_rule(&net, rule), x)
            });
            let what = format!("{what} {:?}", net.input_shape);
            compare(&engines, &net, &method, &x, None, 2, &what);
        }
    }
}

#[test]
fn every_composite_and_baseline() {
    let engines = engines();
    let mut rng = rng("every_composite_and_baseline");
    let bounds = Bounds {
        low: 0.0,
        high: 1.0,
    };
    for (name, composite) in Composite::ALL {
        let (net, method, x) = useful(&mut rng, name, |rng| {
            let nonpositive_bias = rng.random::<bool>();
            let net = if rng.random::<bool>() {
                random_cnn(rng, 2, 8, 9, nonpositive_bias)
            } else {
                random_mlp(rng, &[24, 16, 10, 4], nonpositive_bias)
            };
            let method = composite.resolve(&net, bounds, &[]).unwrap();
            let x = random_input(rng, &net, 4, 0.0, 1.0);
            (net, method, x)
        });
        let classes = net.num_outputs();
        let explicit: Vec<usize> = (0..4).map(|_| rng.random_range(0..classes)).collect();
        compare(
            &engines,
            &net,
            &method,
            &x,
            None,
            3,
            &format!("{name}, predicted"),
        );
        compare(
            &engines,
            &net,
            &method,
            &x,
            Some(&explicit),
            3,
            &format!("{name}, explicit"),
        );
    }
}

#[test]
fn the_forward_pass_does_not_depend_on_the_rule() {
    // Each engine sums x w the same way under every rule: what a rule's z' takes from the
    // forward pass (x w itself, or x w+ and x w- summed beside it) must not change the logits,
    // bit for bit. (Taking x w as the sum of x w+ and x w- would: the rounding of the larger part
    // lands on it.)
    let engines = engines();
    let mut rng = rng("the_forward_pass_does_not_depend_on_the_rule");
    let net = random_cnn(&mut rng, 2, 10, 9, false);
    let x = random_input(&mut rng, &net, 5, 0.0, 1.0);
    let bounds = Bounds {
        low: 0.0,
        high: 1.0,
    };
    let ab = Rule::AlphaBeta {
        alpha: 2.0,
        beta: 1.0,
    };
    let mut methods = vec![
        Method::GradientXInput,
        same_rule(&net, ab),
        same_rule(&net, Rule::ZPlus),
    ];
    methods.extend(
        Composite::ALL
            .iter()
            .map(|(_, c)| c.resolve(&net, bounds, &[]).unwrap()),
    );
    for engine in &engines {
        let logits: Vec<_> = methods
            .iter()
            .map(|m| {
                engine
                    .backend(&net, m, 2)
                    .run(x.view(), None)
                    .unwrap()
                    .logits
            })
            .collect();
        for (m, l) in methods.iter().zip(&logits) {
            let bits = |a: &ndarray::Array2<f64>| a.mapv(f64::to_bits);
            assert_eq!(bits(l), bits(&logits[0]), "{}: {m:?}", engine.name());
        }
    }
}

fn window(k: usize, s: usize, p: usize) -> Window {
    Window {
        kernel: [k, k],
        stride: [s, s],
        pad: [p; 4],
    }
}

#[test]
fn pooling_layers() {
    let engines = engines();
    let mut rng = rng("pooling_layers");
    let pools = [
        (
            "max k3 s2 p1 (overlapping)",
            Layer::MaxPool2d {
                window: window(3, 2, 1),
            },
        ),
        (
            "max k2 s2 (tiles; inputs past the last window)",
            Layer::MaxPool2d {
                window: window(2, 2, 0),
            },
        ),
        (
            "max k3x2 s3x2, bottom and right padding (tiles; last windows padded)",
            Layer::MaxPool2d {
                window: Window {
                    kernel: [3, 2],
                    stride: [3, 2],
                    pad: [0, 0, 1, 1],
                },
            },
        ),
        (
            "max k2 s2, top padding (windows do not tile)",
            Layer::MaxPool2d {
                window: Window {
                    kernel: [2, 2],
                    stride: [2, 2],
                    pad: [1, 0, 0, 0],
                },
            },
        ),
        (
            "avg k3 s2 p1 count_include_pad",
            Layer::AvgPool2d {
                window: window(3, 2, 1),
                count_include_pad: true,
                sum: false,
            },
        ),
        (
            "avg k3 s1 p1 real positions",
            Layer::AvgPool2d {
                window: window(3, 1, 1),
                count_include_pad: false,
                sum: false,
            },
        ),
        (
            "avg k2 s2 real positions (tiles; inputs past the last window)",
            Layer::AvgPool2d {
                window: window(2, 2, 0),
                count_include_pad: false,
                sum: false,
            },
        ),
        (
            "avg k2x3 s2x3 count_include_pad, bottom and right padding (tiles; last windows padded)",
            Layer::AvgPool2d {
                window: Window {
                    kernel: [2, 3],
                    stride: [2, 3],
                    pad: [0, 0, 1, 2],
                },
                count_include_pad: true,
                sum: false,
            },
        ),
        (
            "sum k3 s3, left padding (windows do not tile)",
            Layer::AvgPool2d {
                window: Window {
                    kernel: [3, 3],
                    stride: [3, 3],
                    pad: [0, 1, 0, 0],
                },
                count_include_pad: false,
                sum: true,
            },
        ),
        (
            "sum k2 s1 (overlapping)",
            Layer::AvgPool2d {
                window: window(2, 1, 0),
                count_include_pad: false,
                sum: true,
            },
        ),
    ];
    for (name, pool) in pools {
        let (net, _, x) = useful(&mut rng, name, |rng| {
            let stride = rng.random_range(1..3);
            let layers = vec![
                conv(rng, 2, 3, 3, stride, 1, false),
                Layer::Relu,
                pool.clone(),
                Layer::Flatten,
            ];
            let flat = Network::new(vec![2, 9, 10], layers.clone(), vec![])
                .unwrap()
                .output_shape()[0];
            let mut layers = layers;
            layers.push(dense(rng, flat, 4, false));
            let net = Network::new(vec![2, 9, 10], layers, vec![]).unwrap();
            let x = random_input(rng, &net, 3, 0.0, 1.0);
            (
                net,
                Method::Lrp {
                    rules: vec![Rule::ZPlus, Rule::Epsilon(0.25)],
                },
                x,
            )
        });
        // (a max pooling that tiles the convolution's output hands its relevance step to the
        // convolution's s step: z_partial under z+ on a signed input, s_reduce under epsilon,
        // whose z' the forward pass keeps)
        let methods = [
            (
                "zplus/epsilon",
                Method::Lrp {
                    rules: vec![Rule::ZPlus, Rule::Epsilon(0.25)],
                },
            ),
            (
                "epsilon/epsilon",
                Method::Lrp {
                    rules: vec![Rule::Epsilon(0.25), Rule::Epsilon(0.25)],
                },
            ),
            ("sensitivity", Method::Sensitivity),
            ("gradient-x-input", Method::GradientXInput),
        ];
        for (mname, method) in methods {
            compare(
                &engines,
                &net,
                &method,
                &x,
                None,
                2,
                &format!("{name}, {mname}"),
            );
        }
    }
    // Max pooling straight after a convolution without a ReLU between (its relevance step still
    // goes into the convolution's s step), on signed outputs.
    let layers = vec![
        conv(&mut rng, 2, 3, 3, 1, 1, false),
        Layer::MaxPool2d {
            window: window(2, 2, 0),
        },
        Layer::Flatten,
        dense(&mut rng, 3 * 4 * 5, 3, false),
    ];
    let net = Network::new(vec![2, 9, 10], layers, vec![]).unwrap();
    let x = random_input(&mut rng, &net, 3, -1.0, 1.0);
    for method in [
        same_rule(&net, Rule::Epsilon(0.25)),
        same_rule(&net, Rule::ZPlus),
    ] {
        compare(
            &engines,
            &net,
            &method,
            &x,
            None,
            2,
            "conv then max pool, no ReLU",
        );
    }
    // Max pooling straight on negative inputs: padding (0) must never win.
    let layers = vec![
        Layer::MaxPool2d {
            window: window(3, 2, 1),
        },
        Layer::Flatten,
        dense(&mut rng, 2 * 4 * 4, 3, false),
    ];
    let net = Network::new(vec![2, 7, 7], layers, vec![]).unwrap();
    let x = random_input(&mut rng, &net, 3, -1.0, -0.1);
    for method in [same_rule(&net, Rule::Zero), Method::GradientXInput] {
        compare(
            &engines,
            &net,
            &method,
            &x,
            None,
            3,
            "max pool on negative inputs with padding",
        );
    }
}

/// A random window: kernel 1..=4 by 1..=4, stride 1..=3 each way, each pad below the kernel.
fn random_window(rng: &mut StdRng) -> Window {
    let kernel = [rng.random_range(1..5), rng.random_range(1..5)];
    Window {
        kernel,
        stride: [rng.random_range(1..4), rng.random_range(1..4)],
        pad: [
            rng.random_range(0..kernel[0]),
            rng.random_range(0..kernel[1]),
            rng.random_range(0..kernel[0]),
            rng.random_range(0..kernel[1]),
        ],
    }
}

#[test]
fn random_window_geometries() {
    let engines = engines();
    let mut rng = rng("random_window_geometries");
    // Non-square kernels, unequal strides, asymmetric padding, every pooling kind.
    for case in 0..12 {
        let (net, method, x) = useful(&mut rng, "random geometry", |rng| loop {
            let (c, h, w) = (
                rng.random_range(1..4),
                rng.random_range(4..11),
                rng.random_range(4..11),
            );
            let cw = random_window(rng);
            let oc = rng.random_range(1..5);
            let s = (6.0 / (c * cw.kernel[0] * cw.kernel[1]) as f64).sqrt();
            let conv = Layer::Conv2d {
                weight: ndarray::Array4::from_shape_fn((oc, c, cw.kernel[0], cw.kernel[1]), |_| {
                    common::uniform(rng, -s, s)
                }),
                bias: ndarray::Array1::from_shape_fn(oc, |_| common::uniform(rng, -0.2, 0.5)),
                window: cw,
            };
            let pw = random_window(rng);
            let pool = match rng.random_range(0..4) {
                0 => Layer::MaxPool2d { window: pw },
                k => Layer::AvgPool2d {
                    window: pw,
                    count_include_pad: k == 1,
                    sum: k == 3,
                },
            };
            let layers = vec![conv, Layer::Relu, pool, Layer::Flatten];
            let Ok(body) = Network::new(vec![c, h, w], layers.clone(), vec![]) else {
                continue;
            };
            let flat = body.output_shape()[0];
            let classes = rng.random_range(2..5);
            let mut layers = layers;
            layers.push(dense(rng, flat, classes, false));
            let net = Network::new(vec![c, h, w], layers, vec![]).unwrap();
            let rules = every_rule(0.0, 1.0);
            let method = match rng.random_range(0..rules.len() + 2) {
                k if k < rules.len() => Method::Lrp {
                    rules: vec![rules[k], Rule::Epsilon(0.25)],
                },
                k if k == rules.len() => Method::Sensitivity,
                _ => Method::GradientXInput,
            };
            let x = random_input(rng, &net, 3, 0.0, 1.0);
            break (net, method, x);
        });
        let geometry = |l: &Layer| match l {
            Layer::Conv2d { window, .. }
            | Layer::MaxPool2d { window }
            | Layer::AvgPool2d { window, .. } => format!("{} {window:?}", l.kind()),
            other => other.kind().to_string(),
        };
        let what = format!(
            "case {case}: input {:?}, {}, {}, {method:?}",
            net.input_shape,
            geometry(&net.layers[0]),
            geometry(&net.layers[2])
        );
        compare(&engines, &net, &method, &x, None, 2, &what);
    }
}

#[test]
fn long_reductions_beyond_the_loop_cap() {
    let engines = engines();
    let mut rng = rng("long_reductions_beyond_the_loop_cap");
    // A Dense layer with 70,000 inputs: a naive kernel loops 70,000 times per output.
    let net = random_mlp(&mut rng, &[70_000, 3], false);
    let x = random_input(&mut rng, &net, 2, 0.0, 1.0);
    for method in [
        same_rule(&net, Rule::Epsilon(0.25)),
        same_rule(
            &net,
            Rule::ZBox {
                low: 0.0,
                high: 1.0,
            },
        ),
        // z' of x (w + G w+) summed by the split forward pass beside x w (kept z', keep_z = 2)
        same_rule(&net, Rule::Gamma(0.25)),
        Method::GradientXInput,
    ] {
        compare(&engines, &net, &method, &x, None, 2, "dense 70000 -> 3");
    }
    // Wide Dense layers: 2,000 outputs (long back-projection), then 2,000 inputs.
    let net = random_mlp(&mut rng, &[8, 2000, 3], false);
    let x = random_input(&mut rng, &net, 3, 0.0, 1.0);
    for method in [
        same_rule(
            &net,
            Rule::AlphaBeta {
                alpha: 2.0,
                beta: 1.0,
            },
        ),
        Method::Sensitivity,
    ] {
        compare(&engines, &net, &method, &x, None, 2, "dense 8 -> 2000 -> 3");
    }
    // A convolution whose transposed reduction is 260 * 16 * 16 = 66,560 long per input pixel.
    let layers = vec![
        conv(&mut rng, 1, 260, 16, 1, 0, false),
        Layer::Relu,
        Layer::Flatten,
        dense(&mut rng, 260, 3, false),
    ];
    let net = Network::new(vec![1, 16, 16], layers, vec![]).unwrap();
    let x = random_input(&mut rng, &net, 2, 0.0, 1.0);
    for method in [
        same_rule(&net, Rule::ZPlus),
        Method::Lrp {
            rules: vec![Rule::WSquare, Rule::Epsilon(0.25)],
        },
        Method::GradientXInput,
    ] {
        compare(&engines, &net, &method, &x, None, 2, "conv 1->260 k16");
    }
    // A convolution with a receptive field of 20 * 8 * 8 = 1,280 (split forward), strided, padded.
    let layers = vec![
        conv(&mut rng, 20, 4, 8, 2, 1, false),
        Layer::Relu,
        Layer::Flatten,
    ];
    let flat = Network::new(vec![20, 11, 11], layers.clone(), vec![])
        .unwrap()
        .output_shape()[0];
    let mut layers = layers;
    layers.push(dense(&mut rng, flat, 3, false));
    let net = Network::new(vec![20, 11, 11], layers, vec![]).unwrap();
    let x = random_input(&mut rng, &net, 2, 0.0, 1.0);
    for method in [
        Method::Lrp {
            rules: vec![Rule::Gamma(0.25), Rule::Zero],
        },
        // constant-input terms (z^B's L and H, w^2's 1) over a split receptive field
        Method::Lrp {
            rules: vec![
                Rule::ZBox {
                    low: -0.5,
                    high: 1.5,
                },
                Rule::Zero,
            ],
        },
        Method::Lrp {
            rules: vec![Rule::WSquare, Rule::Zero],
        },
        Method::Sensitivity,
    ] {
        compare(&engines, &net, &method, &x, None, 1, "conv 20->4 k8 s2 p1");
    }
    // Alpha-beta on ReLU outputs, whose x w+ and x w- the forward pass sums instead of x w and
    // keeps (keep_z = 3): a convolution over a split receptive field (24 channels of 7 x 7,
    // 1,176 per term), strided and padded, then a Dense layer.
    let ab = Rule::AlphaBeta {
        alpha: 2.0,
        beta: 1.0,
    };
    let layers = vec![
        conv(&mut rng, 3, 24, 3, 1, 1, false),
        Layer::Relu,
        conv(&mut rng, 24, 4, 7, 2, 1, false),
        Layer::Relu,
        Layer::Flatten,
        dense(&mut rng, 36, 3, false),
    ];
    let net = Network::new(vec![3, 9, 9], layers, vec![]).unwrap();
    let x = random_input(&mut rng, &net, 3, -1.0, 1.0);
    let method = Method::Lrp {
        rules: vec![Rule::Epsilon(0.25), ab, ab],
    };
    compare(
        &engines,
        &net,
        &method,
        &x,
        None,
        3,
        "conv 3->24 k3, conv 24->4 k7 s2 p1",
    );
}

#[test]
fn batch_sizes_streaming_and_reuse() {
    let engines = engines();
    let mut rng = rng("batch_sizes_streaming_and_reuse");
    let (net, method, x) = useful(&mut rng, "epsilon-gamma-box cnn", |rng| {
        let net = random_cnn(rng, 1, 8, 8, false);
        let method = Composite::EpsilonGammaBox
            .resolve(
                &net,
                Bounds {
                    low: 0.0,
                    high: 1.0,
                },
                &[],
            )
            .unwrap();
        let x = random_input(rng, &net, 11, 0.0, 1.0);
        (net, method, x)
    });
    for batch in [1, 4, 11, 32] {
        compare(
            &engines,
            &net,
            &method,
            &x,
            None,
            batch,
            &format!("batch {batch} of 11"),
        );
    }
    // A batch large enough to run as two overlapped submissions (halves of 258 and 257).
    let x_big = random_input(&mut rng, &net, 515, 0.0, 1.0);
    compare(
        &engines,
        &net,
        &method,
        &x_big,
        None,
        1024,
        "515 samples, batch 1024 (two halves)",
    );
    // The same batch as 1, 3 or 4 submissions (of 515, then 256 or more): the same bits.
    if let Some(Engine::Gpu(ctx)) = engines.get(1) {
        let mut want = None;
        for k in [2, 1, 3, 4] {
            let mut backend = GpuBackend::new(ctx, &net, &method, 1024).unwrap();
            backend.set_submissions(k);
            let out = backend.run(x_big.view(), None).unwrap();
            let bits: Vec<u32> = out.relevance.iter().map(|v| v.to_bits()).collect();
            match &want {
                None => want = Some((bits, out.targets)),
                Some((b, t)) => {
                    assert!(*b == bits, "{k} submissions: relevance differs");
                    assert_eq!(*t, out.targets, "{k} submissions");
                }
            }
        }
    }
    // One backend, runs of different lengths and target modes: uniforms follow each run.
    let classes = net.num_outputs();
    let explicit: Vec<usize> = (0..11).map(|_| rng.random_range(0..classes)).collect();
    let cases: [(usize, bool); 4] = [(7, false), (3, true), (11, true), (1, false)];
    for engine in &engines {
        let mut backend = engine.backend(&net, &method, 4);
        for (n, use_targets) in cases {
            let xs = x.slice_axis(Axis(0), (0..n).into()).to_owned();
            let t = use_targets.then(|| &explicit[..n]);
            let out = backend.run(xs.view(), t).unwrap();
            let what = format!("{}: reuse n={n} explicit={use_targets}", engine.name());
            compare_output(&net, &method, &xs, t, &out, &what);
        }
    }
}

/// Dispatches of more workgroups than a dimension allows are folded into two dimensions, and every
/// kernel finds its index from both: on a device allowed 24 workgroups per dimension (a real GPU
/// allows 65,535 and folds from 4.2 M invocations on), batches of 32 fold the dispatches of
/// every kernel family of a small CNN (up to 512 workgroups: 24 x 22, the last row partly past
/// the end), the byte input's expansion included. The results are the unfolded run's to the bit.
#[test]
fn dispatches_folded_into_two_dimensions_give_the_same_bits() {
    let Some(ctx) = common::gpu::context() else {
        return;
    };
    let folded = GpuContext::with_workgroup_limit(24).expect("the same adapter, fewer workgroups");
    assert_eq!(folded.limits().max_compute_workgroups_per_dimension, 24);
    let mut rng = rng("dispatches_folded_into_two_dimensions");
    let window = window(2, 2, 0);
    for avg in [false, true] {
        let pool = if avg {
            Layer::AvgPool2d {
                window,
                count_include_pad: false,
                sum: false,
            }
        } else {
            Layer::MaxPool2d { window }
        };
        // 1 x 16 x 16 -> 4 x 16 x 16 (1,024 values a sample) -> 4 x 8 x 8 -> 4 x 8 x 8 -> 1,024
        // -> 10: at batch 32, up to 32 x 1,024 invocations (512 workgroups) per dispatch
        let layers = vec![
            conv(&mut rng, 1, 4, 3, 1, 1, false),
            Layer::Relu,
            pool,
            conv(&mut rng, 4, 4, 3, 1, 1, false),
            Layer::Relu,
            Layer::Flatten,
            dense(&mut rng, 256, 1024, false),
            Layer::Relu,
            dense(&mut rng, 1024, 10, false),
        ];
        let net = Network::new(vec![1, 16, 16], layers, vec![]).unwrap();
        // 37 samples: a batch of 32 and one of 5
        let bytes =
            ndarray::Array4::from_shape_fn((37, 1, 16, 16), |_| rng.random::<u8>()).into_dyn();
        let lut: [f32; 256] = std::array::from_fn(|b| b as f32 / 255.0);
        let x = bytes.mapv(|b| lut[usize::from(b)]);
        // Values of 256 levels make near ties in max pooling common, where f32 and the f64
        // reference may pick different winners; the comparison with the reference takes
        // continuous values.
        let continuous = random_input(&mut rng, &net, 37, 0.0, 1.0);
        let bounds = Bounds {
            low: 0.0,
            high: 1.0,
        };
        for composite in [
            Composite::DeepTaylorBounded,
            Composite::EpsilonAlpha2Beta1,
            Composite::GradientXInput,
        ] {
            let method = composite.resolve(&net, bounds, &[]).unwrap();
            let what = format!(
                "{} pooling, {}",
                if avg { "avg" } else { "max" },
                composite.name()
            );
            let mut plain = GpuBackend::new(&ctx, &net, &method, 32).unwrap();
            let want = plain.run(x.view(), None).unwrap();
            // Bytes first: the folded backend's input buffer then holds nothing from an f32
            // run that could stand in for words its expansion missed.
            let mut many = GpuBackend::new(&folded, &net, &method, 32).unwrap();
            let got = many
                .run_pixels(bytes.view(), &lut, None)
                .unwrap_or_else(|e| panic!("{what}, bytes: {e}"));
            common::assert_same_output(&got, &want, &format!("{what}, bytes"));
            let want = plain.run(continuous.view(), None).unwrap();
            let got = many
                .run(continuous.view(), None)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            common::assert_same_output(&got, &want, &what);
            compare_output(&net, &method, &continuous, None, &got, &what);
        }
    }
}

#[test]
fn single_output_network_starts_from_y() {
    let engines = engines();
    let mut rng = rng("single_output_network_starts_from_y");
    let (net, method, x) = useful(&mut rng, "single output", |rng| {
        let net = random_mlp(rng, &[12, 8, 1], false);
        let x = random_input(rng, &net, 3, 0.0, 1.0);
        (net.clone(), same_rule(&net, Rule::Epsilon(0.1)), x)
    });
    compare(
        &engines,
        &net,
        &method,
        &x,
        None,
        2,
        "single output, predicted",
    );
    compare(
        &engines,
        &net,
        &method,
        &x,
        Some(&[0, 0, 0]),
        3,
        "single output, explicit",
    );
}

#[test]
fn bad_inputs_are_refused() {
    let engines = engines();
    let mut rng = rng("bad_inputs_are_refused");
    let net = random_mlp(&mut rng, &[6, 5, 3], false);
    let method = same_rule(&net, Rule::ZPlus);
    let one_rule = Method::Lrp {
        rules: vec![Rule::ZPlus],
    };
    assert!(matches!(
        FastBackend::new(&net, &one_rule),
        Err(Error::Usage { .. })
    ));
    if let Some(Engine::Gpu(ctx)) = engines.get(1) {
        assert!(matches!(
            GpuBackend::new(ctx, &net, &method, 0),
            Err(Error::Usage { .. })
        ));
        assert!(matches!(
            GpuBackend::new(ctx, &net, &one_rule, 4),
            Err(Error::Usage { .. })
        ));
    }
    for engine in &engines {
        let mut backend = engine.backend(&net, &method, 4);
        let wrong = ArrayD::<f32>::from_elem(ndarray::IxDyn(&[2, 7]), 0.5);
        assert!(matches!(
            backend.run(wrong.view(), None),
            Err(Error::Shape { .. })
        ));
        let mut x = random_input(&mut rng, &net, 3, 0.0, 1.0);
        assert!(matches!(
            backend.run(x.view(), Some(&[0, 3, 1])),
            Err(Error::Usage { .. })
        ));
        assert!(matches!(
            backend.run(x.view(), Some(&[0, 1])),
            Err(Error::Usage { .. })
        ));
        x[[1, 2]] = f32::NAN;
        match backend.run(x.view(), None) {
            Err(Error::NonFinite { what }) => assert!(what.contains("sample 1"), "{what}"),
            other => panic!(
                "{}: expected a non-finite error, got {other:?}",
                engine.name()
            ),
        }
    }
}

#[test]
fn adapters_are_listed_and_the_best_is_chosen() {
    let Some(ctx) = common::gpu::context() else {
        return;
    };
    let list = adapters();
    let chosen = ctx.summary();
    eprintln!("adapters: {list:#?}\nchosen: {chosen}");
    assert!(list.contains(&chosen), "{chosen} not in {list:?}");
    if list.iter().any(|a| !a.software) {
        assert!(
            !chosen.software,
            "a hardware adapter exists but {chosen} was chosen"
        );
    }
    if list
        .iter()
        .any(|a| a.backend == "Vulkan" && a.software == chosen.software)
    {
        assert_eq!(chosen.backend, "Vulkan", "Vulkan preferred over GL");
    }
    if chosen.name.contains("llvmpipe") {
        assert!(chosen.software);
        assert_eq!(chosen.device_type, "Cpu");
    }
}

#[test]
fn byte_inputs_give_what_their_expanded_values_give() {
    let engines = engines();
    let mut rng = rng("byte_inputs_give_what_their_expanded_values_give");
    // 1 x 7 x 9 = 63 values per sample: an odd batch is not a whole number of 4-byte words.
    let net = random_cnn(&mut rng, 1, 7, 9, false);
    let method = Composite::EpsilonGammaBox
        .resolve(
            &net,
            Bounds {
                low: -1.0,
                high: 2.0,
            },
            &[],
        )
        .unwrap();
    // A normalised-pixel-like table: increasing, negative and positive values.
    let (mean, std) = (rng.random_range(0.1..0.5), rng.random_range(0.2..0.5));
    let lut: [f32; 256] = std::array::from_fn(|b| ((b as f64 / 255.0 - mean) / std) as f32);
    let bytes = ndarray::Array4::from_shape_fn((11, 1, 7, 9), |_| rng.random::<u8>()).into_dyn();
    let x = bytes.mapv(|b| lut[usize::from(b)]);
    for engine in &engines {
        for (batch, what) in [(4, "streamed in 4s"), (11, "one batch")] {
            // Separate backends, bytes first: the device's input buffer holds nothing from an
            // f32 run that could stand in for a missing expansion.
            let mut bytes_backend = engine.backend(&net, &method, batch);
            let mut f32_backend = engine.backend(&net, &method, batch);
            let got = bytes_backend.run_pixels(bytes.view(), &lut, None).unwrap();
            let want = f32_backend.run(x.view(), None).unwrap();
            let what = format!("{}: {what}", engine.name());
            common::assert_same_output(&got, &want, &what);
            compare_output(&net, &method, &x, None, &got, &what);
            // A strided view (every other sample) goes through the copy path.
            let every_other = ndarray::Slice::new(0, None, 2);
            let got = bytes_backend
                .run_pixels(bytes.slice_axis(Axis(0), every_other), &lut, None)
                .unwrap();
            let want = f32_backend
                .run(x.slice_axis(Axis(0), every_other), None)
                .unwrap();
            assert_eq!(got.relevance, want.relevance, "{what}: strided");
        }
        // A table with a non-finite value is refused, not explained.
        let mut bad = lut;
        bad[usize::from(bytes[[3, 0, 2, 2]])] = f32::INFINITY;
        let mut backend = engine.backend(&net, &method, 4);
        assert!(
            matches!(
                backend.run_pixels(bytes.view(), &bad, None),
                Err(Error::NonFinite { .. })
            ),
            "{}",
            engine.name()
        );
    }
}
