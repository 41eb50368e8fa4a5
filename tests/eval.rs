//! `taylormap eval`: the regions and orders of AOPC, perturbation curves against a per-sample
//! loop on the f64 reference, AOPC on a linear model where the best order is known, the target
//! share and consistency summaries against their formulas, and the command line (JSON rows,
//! refusals with exit code 2).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{random_cnn, random_input, random_mlp, rng};
use ndarray::{Array2, ArrayD, Axis, IxDyn};
use rand::seq::SliceRandom;
use rand::Rng;
use taylormap::eval::{
    aopc, default_region, target_share, Consistency, Curves, Perturbation, Perturber, Regions,
};
use taylormap::lrp::{Bounds, Composite, Rule};
use taylormap::{cpu, Backend, Method, Network, SampleStats};

const UNIT: Bounds = Bounds {
    low: 0.0,
    high: 1.0,
};

#[test]
fn regions_cover_every_value_once_in_tiles() {
    let mut rng = rng("regions_cover_every_value_once");
    for _ in 0..20 {
        let (c, h, w) = (
            rng.random_range(1..4),
            rng.random_range(1..12),
            rng.random_range(1..12),
        );
        let size = rng.random_range(1..5);
        let regions = Regions::new(&[c, h, w], size);
        assert_eq!(
            regions.len(),
            h.div_ceil(size) * w.div_ceil(size),
            "{c}x{h}x{w}, tiles of {size}"
        );
        let mut seen = vec![0; c * h * w];
        for r in 0..regions.len() {
            // row-major tiles: region r is tile (r / across, r % across)
            let across = w.div_ceil(size);
            let (ty, tx) = (r / across, r % across);
            for &i in regions.members(r) {
                seen[i] += 1;
                let (y, x) = ((i / w) % h, i % w);
                assert_eq!((y / size, x / size), (ty, tx), "value {i} in region {r}");
            }
        }
        assert!(seen.iter().all(|&s| s == 1), "{c}x{h}x{w} size {size}");
    }
    // the default side: about 14 x 14 regions whatever the image size
    for (h, w, side) in [
        (28, 28, 2),
        (32, 32, 2),
        (224, 224, 16),
        (64, 300, 4),
        (5, 40, 1),
    ] {
        assert_eq!(default_region(h, w), side, "{h}x{w}");
    }
    // a vector: one region per feature, whatever the size asked
    let regions = Regions::new(&[7], 3);
    assert_eq!(regions.len(), 7);
    assert!((0..7).all(|r| regions.members(r) == [r]));
}

#[test]
fn most_relevant_first_sorts_region_sums_and_breaks_ties_by_index() {
    let mut rng = rng("most_relevant_first_sorts");
    let regions = Regions::new(&[2, 6, 5], 2);
    let mut relevance: Vec<f32> = (0..60).map(|_| rng.random_range(-1.0..1.0)).collect();
    // regions 1 and 4 tie exactly, at the top; 2 (all -0) and 6 (all +0) tie at 0
    for r in [1, 4] {
        for &i in regions.members(r) {
            relevance[i] = 0.0;
        }
        relevance[regions.members(r)[0]] = 100.0;
    }
    for (r, zero) in [(2, -0.0), (6, 0.0)] {
        for &i in regions.members(r) {
            relevance[i] = zero;
        }
    }
    let order = regions.most_relevant_first(&relevance);
    assert_eq!(&order[..2], [1, 4]);
    let at = |r: usize| order.iter().position(|&o| o == r).unwrap();
    assert_eq!(at(6), at(2) + 1, "{order:?}");
    let sum = |r: usize| -> f64 {
        regions
            .members(r)
            .iter()
            .map(|&i| f64::from(relevance[i]))
            .sum()
    };
    assert!(
        order.windows(2).all(|p| sum(p[0]) >= sum(p[1])),
        "{order:?}"
    );
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..regions.len()).collect::<Vec<_>>());
}

#[test]
fn replacements_and_random_orders_are_seeded_per_sample() {
    let bounds = Bounds {
        low: -0.5,
        high: 2.0,
    };
    let uniform = Perturber {
        kind: Perturbation::Uniform,
        bounds,
        seed: 7,
    };
    let draw = |p: &Perturber, i: usize| {
        let mut v = vec![0f32; 500];
        p.replacement(i, &mut v);
        v
    };
    let a = draw(&uniform, 3);
    assert_eq!(a, draw(&uniform, 3), "same sample, same values");
    assert_ne!(a, draw(&uniform, 4), "another sample, other values");
    assert_ne!(
        a,
        draw(&Perturber { seed: 8, ..uniform }, 3),
        "another seed"
    );
    assert!(a.iter().all(|&v| (-0.5..=2.0).contains(&v)), "{a:?}");
    let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / 500.0;
    assert!((mean - 0.75).abs() < 0.15, "mean {mean}");
    let low = Perturber {
        kind: Perturbation::Low,
        ..uniform
    };
    assert!(draw(&low, 3).iter().all(|&v| v == -0.5));
    let order = uniform.random_order(5, 40);
    assert_eq!(order, uniform.random_order(5, 40));
    assert_ne!(order, uniform.random_order(6, 40));
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..40).collect::<Vec<_>>());
}

/// f_t of one sample after perturbing, in order, the image tiles `order[..k]` (tile r of the
/// row-major grid of `size` x `size` tiles, every channel), each value set to `replacement`:
/// written from the definition, on the f64 reference one sample at a time.
fn curve_by_hand(
    net: &Network,
    sample: &ArrayD<f32>,
    replacement: &[f32],
    order: &[usize],
    size: usize,
    target: usize,
) -> Vec<f64> {
    let &[c, h, w] = net.input_shape.as_slice() else {
        panic!("an image network")
    };
    let across = w.div_ceil(size);
    let mut x = sample.mapv(f64::from).insert_axis(Axis(0));
    let mut curve = vec![];
    for k in 0..=order.len() {
        if k > 0 {
            let (ty, tx) = (order[k - 1] / across, order[k - 1] % across);
            for ch in 0..c {
                for y in ty * size..((ty + 1) * size).min(h) {
                    for xx in tx * size..((tx + 1) * size).min(w) {
                        x[IxDyn(&[0, ch, y, xx])] = f64::from(replacement[(ch * h + y) * w + xx]);
                    }
                }
            }
        }
        curve.push(cpu::logits(net, x.view()).unwrap()[[0, target]]);
    }
    curve
}

#[test]
fn perturbation_curves_match_a_per_sample_loop_on_the_reference() {
    let mut rng = rng("perturbation_curves_match");
    for case in 0..4 {
        let c = rng.random_range(1..3);
        let (h, w) = (rng.random_range(6..10), rng.random_range(6..10));
        let net = random_cnn(&mut rng, c, h, w, false);
        let n = rng.random_range(3..8);
        let x = random_input(&mut rng, &net, n, 0.0, 1.0);
        let size = rng.random_range(1..4);
        let regions = Regions::new(&net.input_shape, size);
        let steps = rng.random_range(1..=regions.len());
        let perturber = Perturber {
            kind: if case % 2 == 0 {
                Perturbation::Uniform
            } else {
                Perturbation::Low
            },
            bounds: UNIT,
            seed: rng.random(),
        };
        let method = Composite::DeepTaylorBounded
            .resolve(&net, UNIT, &[])
            .unwrap();
        let explained = cpu::explain(&net, &method, x.mapv(f64::from).view(), None).unwrap();
        let relevance = explained.relevance.mapv(|r| r as f32);
        let per: usize = net.input_shape.iter().product();
        let orders: Vec<Vec<usize>> = relevance
            .as_slice()
            .unwrap()
            .chunks(per)
            .map(|r| regions.most_relevant_first(r))
            .collect();
        let first = rng.random_range(0..100);
        let curves = Curves {
            regions: &regions,
            perturber,
            steps,
            batch_size: rng.random_range(1..5),
        };
        let mut calls = 0;
        let mut reference = cpu::ReferenceBackend::new(net.clone(), method.clone());
        let got = curves
            .run(
                &mut reference,
                x.view(),
                first,
                &explained.targets,
                &orders,
                &mut |m| calls += m,
            )
            .unwrap();
        assert_eq!(got.dim(), (n, steps + 1));
        assert_eq!(calls, n * (steps + 1), "progress counts every forward pass");
        for (i, order) in orders.iter().enumerate() {
            let mut replacement = vec![0f32; per];
            perturber.replacement(first + i, &mut replacement);
            let want = curve_by_hand(
                &net,
                &x.index_axis(Axis(0), i).to_owned(),
                &replacement,
                &order[..steps],
                size,
                explained.targets[i],
            );
            let err = common::rel_l2(got.row(i).iter().copied(), want.iter().copied());
            assert!(err <= 1e-12, "case {case} sample {i}: {err:e}");
        }
        // the f32 engine's forward-only pass: the same curves to f32 precision, and the same
        // logits as its full explanation
        let mut fast = cpu::FastBackend::new(&net, &method).unwrap();
        let f32_curves = curves
            .run(
                &mut fast,
                x.view(),
                first,
                &explained.targets,
                &orders,
                &mut |_| {},
            )
            .unwrap();
        let err = common::rel_l2(f32_curves.iter().copied(), got.iter().copied());
        assert!(err <= 1e-5, "case {case}: f32 curves off by {err:e}");
        assert_eq!(
            fast.logits(x.view()).unwrap(),
            fast.run(x.view(), None).unwrap().logits
        );
    }
}

#[test]
fn a_complete_perturbation_ends_at_the_replacement_in_any_order() {
    let mut rng = rng("a_complete_perturbation_ends");
    let net = random_cnn(&mut rng, 2, 7, 6, false);
    let x = random_input(&mut rng, &net, 4, 0.0, 1.0);
    let regions = Regions::new(&net.input_shape, 3);
    let perturber = Perturber {
        kind: Perturbation::Uniform,
        bounds: UNIT,
        seed: rng.random(),
    };
    let curves = Curves {
        regions: &regions,
        perturber,
        steps: regions.len(),
        batch_size: 3,
    };
    let targets = vec![0; 4];
    let mut backend = cpu::ReferenceBackend::new(net.clone(), Method::Sensitivity);
    let random: Vec<Vec<usize>> = (0..4)
        .map(|i| perturber.random_order(i, regions.len()))
        .collect();
    let ascending: Vec<Vec<usize>> = (0..4).map(|_| (0..regions.len()).collect()).collect();
    let a = curves
        .run(&mut backend, x.view(), 0, &targets, &random, &mut |_| {})
        .unwrap();
    let b = curves
        .run(&mut backend, x.view(), 0, &targets, &ascending, &mut |_| {})
        .unwrap();
    let mut replaced = x.mapv(f64::from);
    for (i, mut sample) in replaced.outer_iter_mut().enumerate() {
        let mut values = vec![0f32; sample.len()];
        perturber.replacement(i, &mut values);
        for (v, r) in sample.iter_mut().zip(values) {
            *v = f64::from(r);
        }
    }
    let want = cpu::logits(&net, replaced.view()).unwrap();
    let start = cpu::logits(&net, x.mapv(f64::from).view()).unwrap();
    let last = regions.len();
    for i in 0..4 {
        assert!((a[[i, last]] - want[[i, 0]]).abs() <= 1e-9 * want[[i, 0]].abs().max(1.0));
        assert!((b[[i, last]] - want[[i, 0]]).abs() <= 1e-9 * want[[i, 0]].abs().max(1.0));
        for curve in [&a, &b] {
            let tol = 1e-12 * start[[i, 0]].abs().max(1.0);
            assert!((curve[[i, 0]] - start[[i, 0]]).abs() <= tol);
        }
    }
}

#[test]
fn aopc_is_the_mean_drop_over_steps_and_samples() {
    let curves = Array2::from_shape_vec((2, 3), vec![3.0, 2.0, 1.0, 1.0, 1.0, 0.0]).unwrap();
    let a = aopc(&curves);
    assert_eq!(a.curve, vec![0.0, 0.5, 1.5]);
    // per sample: (0 + 1 + 2) / 3 = 1 and (0 + 0 + 1) / 3 = 1/3
    assert!((a.value - 2.0 / 3.0).abs() < 1e-15);
    // sample standard deviation sqrt(2/9), over sqrt(2)
    assert!((a.stderr - 1.0 / 3.0).abs() < 1e-15, "{}", a.stderr);
    assert!(aopc(&curves.slice(ndarray::s![..1, ..]).to_owned())
        .stderr
        .is_nan());
}

/// On a linear model y = sum_i x_i w_i + b, LRP-0 gives R_i = x_i w_i y / stab(y), and setting
/// feature i to 0 lowers y by exactly x_i w_i: the most-relevant-first curve is the running sum
/// of the relevance sorted from the top (times stab(y) / y), the largest drop any order can
/// reach at every step.
#[test]
fn on_a_linear_model_most_relevant_first_is_the_best_order() {
    let mut rng = rng("on_a_linear_model");
    let d = rng.random_range(8..20);
    let net = random_mlp(&mut rng, &[d, 3], false);
    let n = 5;
    let x = random_input(&mut rng, &net, n, 0.0, 1.0);
    let method = Method::Lrp {
        rules: vec![Rule::Zero],
    };
    let explained = cpu::explain(&net, &method, x.mapv(f64::from).view(), None).unwrap();
    let relevance = explained.relevance.mapv(|r| r as f32);
    let regions = Regions::new(&[d], 1);
    let orders: Vec<Vec<usize>> = relevance
        .outer_iter()
        .map(|r| regions.most_relevant_first(r.as_slice().unwrap()))
        .collect();
    let curves = Curves {
        regions: &regions,
        perturber: Perturber {
            kind: Perturbation::Low,
            bounds: UNIT,
            seed: 0,
        },
        steps: d,
        batch_size: 2,
    };
    let mut backend = cpu::ReferenceBackend::new(net.clone(), method.clone());
    let targets = explained.targets.clone();
    let best = curves
        .run(&mut backend, x.view(), 0, &targets, &orders, &mut |_| {})
        .unwrap();
    for i in 0..n {
        // R_i is x_i w_i up to the stabiliser's factor y / (y + 1e-9 sign(y)), which is 1 - 1e-6
        // where |y| is 1e-3 (TAYLORMAP_SEED=1796332678291126379: a drop off by 1e-6 at step 7)
        let y = explained.logits[[i, explained.targets[i]]];
        let unstabilised = (y + 1e-9f64.copysign(y)) / y;
        let mut sorted: Vec<f64> = explained
            .relevance
            .index_axis(Axis(0), i)
            .iter()
            .map(|&r| r * unstabilised)
            .collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let mut drop = 0.0;
        for k in 1..=d {
            drop += sorted[k - 1];
            let got = best[[i, 0]] - best[[i, k]];
            // (1e-7: the order comes from f32 relevance, in which near ties can swap)
            assert!(
                (got - drop).abs() <= 1e-7,
                "sample {i} step {k}: {got} vs {drop}"
            );
        }
    }
    let top = aopc(&best).value;
    for _ in 0..10 {
        let shuffled: Vec<Vec<usize>> = (0..n)
            .map(|_| {
                let mut o: Vec<usize> = (0..d).collect();
                o.shuffle(&mut rng);
                o
            })
            .collect();
        let other = curves
            .run(&mut backend, x.view(), 0, &targets, &shuffled, &mut |_| {})
            .unwrap();
        let other = aopc(&other).value;
        assert!(other <= top + 1e-9, "{other} > {top}");
    }
}

#[test]
fn target_share_is_the_positive_relevance_inside_the_mask() {
    let mut rng = rng("target_share_is_the_positive");
    for _ in 0..20 {
        let len = rng.random_range(1..50);
        let relevance: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mask: Vec<bool> = (0..len).map(|_| rng.random()).collect();
        let positive: f64 = relevance.iter().map(|&r| f64::from(r.max(0.0))).sum();
        let inside: f64 = relevance
            .iter()
            .zip(&mask)
            .filter(|(_, &m)| m)
            .map(|(&r, _)| f64::from(r.max(0.0)))
            .sum();
        let got = target_share(&relevance, &mask);
        if positive == 0.0 {
            assert_eq!(got, None);
            continue;
        }
        let got = got.unwrap();
        assert!((got - inside / positive).abs() < 1e-12);
        let outside: Vec<bool> = mask.iter().map(|m| !m).collect();
        let rest = target_share(&relevance, &outside).unwrap();
        assert!((got + rest - 1.0).abs() < 1e-12, "{got} + {rest}");
        assert_eq!(target_share(&relevance, &vec![true; len]), Some(1.0));
    }
    assert_eq!(target_share(&[-1.0, 0.0], &[true, true]), None);
}

#[test]
fn consistency_counts_the_shares_of_section_4() {
    let mut rng = rng("consistency_counts");
    let stats: Vec<SampleStats> = (0..101)
        .map(|_| {
            let score = rng.random_range(0.5..5.0);
            let len = rng.random_range(1..30);
            let mut r: Vec<f64> = (0..len).map(|_| rng.random_range(0.0..1.0)).collect();
            let sum: f64 = r.iter().sum();
            r.iter_mut().for_each(|v| *v *= score / sum);
            match rng.random_range(0..3) {
                0 => r[0] += rng.random_range(-0.5..0.5), // not conservative
                1 => r[0] -= r[0] + 0.1,                  // negative
                _ => {}
            }
            SampleStats::compute(r, score)
        })
        .collect();
    let c = Consistency::of(&stats);
    let share = |f: &dyn Fn(&SampleStats) -> bool| {
        stats.iter().filter(|s| f(s)).count() as f64 / stats.len() as f64
    };
    assert_eq!(c.conservative, share(&|s| s.conservative()));
    assert_eq!(c.positive, share(&|s| s.positive));
    assert_eq!(c.consistent, share(&|s| s.conservative() && s.positive));
    assert!(c.consistent > 0.0 && c.consistent < 1.0, "{c:?}");
    let mut errors: Vec<f64> = stats.iter().map(|s| s.conservation_error).collect();
    errors.sort_by(f64::total_cmp);
    assert_eq!(c.conservation_error_median, errors[50]);
    assert_eq!(c.conservation_error_max, errors[100]);
    let mean = stats.iter().map(|s| s.negative_fraction).sum::<f64>() / 101.0;
    assert!((c.negative_fraction_mean - mean).abs() < 1e-15);
}

fn taylormap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taylormap"))
        .args(args)
        .output()
        .expect("run taylormap")
}

fn write_npy(path: &Path, shape: &[usize], values: &[f32]) {
    std::fs::write(path, taylormap::data::npy_bytes_f32(shape, values)).unwrap();
}

/// A folder with `net` as model.onnx and `x` as x.npy.
fn case_files(net: &Network, x: &ArrayD<f32>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    taylormap::model::onnx::save(net, &dir.path().join("model.onnx")).unwrap();
    write_npy(&dir.path().join("x.npy"), x.shape(), x.as_slice().unwrap());
    dir
}

/// The JSON lines of a successful run.
fn json_rows(o: &Output) -> Vec<serde_json::Value> {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn eval_json_rows_on_the_bundled_model() {
    let o = taylormap(&[
        "eval",
        "--metric",
        "conservation,aopc,target-share",
        "--composite",
        "deep-taylor-bounded",
        "--composite",
        "lrp-zero",
        "--limit",
        "24",
        "--steps",
        "30",
        "--backend",
        "cpu",
        "--json",
        "--quiet",
    ]);
    let rows = json_rows(&o);
    let key = |r: &serde_json::Value| {
        (
            r["composite"].as_str().unwrap().to_string(),
            r["metric"].as_str().unwrap().to_string(),
        )
    };
    let keys: Vec<_> = rows.iter().map(key).collect();
    let want: Vec<(String, String)> = ["deep-taylor-bounded", "lrp-zero"]
        .iter()
        .flat_map(|c| {
            ["conservation", "aopc", "target-share"].map(|m| (c.to_string(), m.to_string()))
        })
        .collect();
    assert_eq!(keys, want);
    for r in &rows {
        assert_eq!(r["samples"], 24);
        assert_eq!(r["backend"], "cpu");
        assert!(r["value"].as_f64().unwrap().is_finite(), "{r}");
    }
    // DTD on the bundled model (biases <= 0): every heatmap consistent, none from LRP-0
    assert_eq!(rows[0]["value"], 1.0);
    assert!(rows[3]["value"].as_f64().unwrap() < 1.0, "{}", rows[3]);
    // the explanation beats a random order, which is the same for both composites
    assert_eq!(rows[0]["rules"][0], "zbox(0,1)");
    assert_eq!(rows[3]["rules"][0], "zero");
    let aopc = &rows[1];
    assert_eq!(aopc["steps"], 30);
    assert_eq!(aopc["regions"], 196);
    assert_eq!(aopc["curve"].as_array().unwrap().len(), 31);
    assert_eq!(aopc["curve"][0], 0.0);
    for field in ["stderr", "aopc_random_stderr"] {
        let v = aopc[field].as_f64().unwrap();
        assert!(
            v > 0.0 && v < aopc["value"].as_f64().unwrap(),
            "{field}: {aopc}"
        );
    }
    assert!(
        aopc["value"].as_f64().unwrap() > aopc["aopc_random"].as_f64().unwrap(),
        "{aopc}"
    );
    assert_eq!(aopc["aopc_random"], rows[4]["aopc_random"]);
    let share = &rows[2];
    assert_eq!(share["mask"], "object");
    let (value, chance) = (
        share["value"].as_f64().unwrap(),
        share["mask_fraction"].as_f64().unwrap(),
    );
    assert!(value > chance && value <= 1.0 && chance > 0.0, "{share}");
}

#[test]
fn eval_agrees_across_backends_and_reads_masks() {
    let mut rng = rng("eval_agrees_across_backends");
    let n = 6;
    // A small random network can be dead (every ReLU off, constant logits): draw until each
    // sample's score moves when its input is replaced by noise and its heatmap has positive
    // relevance, so that both metrics have something to measure.
    let (net, x) = loop {
        let net = random_cnn(&mut rng, 1, 8, 8, false);
        let x = random_input(&mut rng, &net, n, 0.0, 1.0);
        let noise = random_input(&mut rng, &net, n, 0.0, 1.0);
        let method = Composite::DeepTaylor.resolve(&net, UNIT, &[]).unwrap();
        let out = cpu::explain(&net, &method, x.mapv(f64::from).view(), None).unwrap();
        let moved = cpu::logits(&net, noise.mapv(f64::from).view()).unwrap();
        let live = (0..n).all(|i| {
            let t = out.targets[i];
            (moved[[i, t]] - out.logits[[i, t]]).abs() > 1e-2
                && out
                    .relevance
                    .index_axis(Axis(0), i)
                    .iter()
                    .any(|&r| r > 1e-3)
        });
        if live {
            break (net, x);
        }
    };
    let dir = case_files(&net, &x);
    let path = |name: &str| dir.path().join(name).display().to_string();
    // the left half of every image, as an (N, H, W) mask
    let mask: Vec<f32> = (0..n * 64)
        .map(|i| f32::from(u8::from(i % 8 < 4)))
        .collect();
    write_npy(dir.path().join("mask.npy").as_path(), &[n, 8, 8], &mask);
    let run = |backend: &str| {
        json_rows(&taylormap(&[
            "eval",
            "--model",
            &path("model.onnx"),
            "--input",
            &path("x.npy"),
            "--metric",
            "aopc,target-share",
            "--mask",
            &path("mask.npy"),
            "--backend",
            backend,
            "--batch-size",
            "4",
            "--json",
            "--quiet",
            "--per-sample",
            &path(&format!("{backend}.csv")),
        ]))
    };
    let reference = run("reference");
    assert_eq!(reference[0]["backend"], "reference");
    // the per-sample file: one row per sample, whose column means are the rows' values
    let csv = std::fs::read_to_string(dir.path().join("reference.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "index,composite,label,predicted,target,score,relevance_sum,conservation_error,\
         negative_fraction,consistent,aopc,aopc_random,target_share"
    );
    let table: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(table.len(), n);
    let column = |k: usize| -> Vec<f64> { table.iter().map(|r| r[k].parse().unwrap()).collect() };
    let index: Vec<usize> = table.iter().map(|r| r[0].parse().unwrap()).collect();
    assert_eq!(index, (0..n).collect::<Vec<_>>());
    // no labels with this input; under --target predicted the target is the predicted class
    assert!(
        table
            .iter()
            .all(|r| r[1] == "deep-taylor" && r[2].is_empty() && r[3] == r[4]),
        "{csv}"
    );
    for (k, value) in [
        (10, &reference[0]["value"]),
        (11, &reference[0]["aopc_random"]),
        (12, &reference[1]["value"]),
    ] {
        let mean = column(k).iter().sum::<f64>() / n as f64;
        let value = value.as_f64().unwrap();
        let tol = 1e-12 * value.abs().max(1.0);
        assert!((mean - value).abs() <= tol, "column {k}: {mean} vs {value}");
    }
    // the f32 engines: the CPU engine, and the GPU one where there is an adapter (required
    // under TAYLORMAP_REQUIRE_GPU=1)
    let mut engines = vec![run("cpu")];
    if common::gpu::context().is_some() {
        engines.push(run("gpu"));
    }
    for rows in &engines {
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["metric"], "aopc");
        // the random-order baseline perturbs the same inputs on every engine: equal to f32
        // precision (compared as curves: their mean, the AOPC, can cancel to near 0)
        let random = |r: &serde_json::Value| -> Vec<f64> {
            let curve = r["curve_random"].as_array().unwrap();
            curve.iter().map(|v| v.as_f64().unwrap()).collect()
        };
        let rel = common::rel_l2(random(&rows[0]), random(&reference[0]));
        assert!(rel <= 1e-4, "{rel:e}: {} vs {}", reference[0], rows[0]);
    }
    // the target share from the reference's relevance, by hand
    let method = Composite::DeepTaylor.resolve(&net, UNIT, &[]).unwrap();
    let explained = cpu::explain(&net, &method, x.mapv(f64::from).view(), None).unwrap();
    let shares: Vec<f64> = explained
        .relevance
        .outer_iter()
        .filter_map(|r| {
            let r: Vec<f32> = r.iter().map(|&v| v as f32).collect();
            let m: Vec<bool> = (0..64).map(|i| i % 8 < 4).collect();
            target_share(&r, &m)
        })
        .collect();
    let k = shares.len() as f64;
    let want = shares.iter().sum::<f64>() / k;
    let sd = (shares.iter().map(|v| (v - want).powi(2)).sum::<f64>() / (k - 1.0)).sqrt();
    let want_stderr = sd / k.sqrt();
    for rows in std::iter::once(&reference).chain(&engines) {
        let got = rows[1]["value"].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-5, "{got} vs {want}");
        let stderr = rows[1]["stderr"].as_f64().unwrap();
        assert!(
            (stderr - want_stderr).abs() <= 1e-4 * want_stderr + 1e-9,
            "{stderr} vs {want_stderr}"
        );
        assert_eq!(rows[1]["mask_fraction"], 0.5);
        assert_eq!(rows[1]["skipped"], n - shares.len());
    }
}

#[test]
fn eval_refuses_bad_flags_with_exit_2_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("mask.npy");
    write_npy(&mask, &[3, 5, 5], &[1.0; 75]);
    let mask = mask.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--metric", "accuracy"], "--metric"),
        (vec!["--metric", "aopc", "--steps", "0"], "--steps"),
        (vec!["--metric", "aopc", "--region", "0"], "--region"),
        (
            vec!["--metric", "aopc", "--perturbation", "blur"],
            "--perturbation",
        ),
        (vec!["--metric", "aopc", "--mask", &mask], "--mask"),
        (
            vec!["--metric", "target-share", "--mask", &mask],
            "mask.npy",
        ),
        (
            vec!["--metric", "conservation", "--composite", "deep"],
            "--composite",
        ),
        (
            vec!["--metric", "conservation", "--batch-size", "0"],
            "--batch-size",
        ),
        (
            vec![
                "--metric",
                "conservation",
                "--per-sample",
                "/nonexistent/e.csv",
            ],
            "--per-sample",
        ),
        // refused before any composite runs, the first one included
        (
            vec![
                "--metric",
                "conservation",
                "--composite",
                "deep-taylor,sensitivity",
                "--rule",
                "first=zplus",
            ],
            "--rule",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["eval", "--backend", "cpu", "--limit", "3", "--quiet"];
        args.extend(&extra);
        let o = taylormap(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: '{needle}' not in: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(o.stdout.is_empty(), "{extra:?} printed rows");
    }
}

#[test]
fn eval_on_vector_inputs_perturbs_features_and_needs_a_mask_for_target_share() {
    let mut rng = rng("eval_on_vector_inputs");
    let d = rng.random_range(5..12);
    // linear, under sensitivity (R_i = w_it^2): every heatmap has positive relevance, so no
    // sample is skipped
    let net = random_mlp(&mut rng, &[d, 3], false);
    let n = 5;
    let x = random_input(&mut rng, &net, n, -1.0, 2.0);
    let dir = case_files(&net, &x);
    let path = |name: &str| dir.path().join(name).display().to_string();
    let mask: Vec<f32> = (0..n * d)
        .map(|i| f32::from(u8::from(i % d == 0)))
        .collect();
    write_npy(dir.path().join("mask.npy").as_path(), &[n, d], &mask);
    let (model, input, mask) = (path("model.onnx"), path("x.npy"), path("mask.npy"));
    let base = [
        "eval",
        "--model",
        &model,
        "--input",
        &input,
        "--backend",
        "cpu",
        "--quiet",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend(extra);
        taylormap(&args)
    };
    let o = with(&[
        "--metric",
        "aopc,target-share",
        "--composite",
        "sensitivity",
        "--mask",
        &mask,
        "--json",
    ]);
    let rows = json_rows(&o);
    assert_eq!(rows[0]["regions"], d);
    assert_eq!(rows[0]["region"], 1);
    assert_eq!(rows[0]["steps"], d, "the steps stop at the last feature");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--steps 100 is more than"));
    let fraction = rows[1]["mask_fraction"].as_f64().unwrap();
    assert!((fraction - 1.0 / d as f64).abs() < 1e-12, "{fraction}");
    for (extra, needle) in [
        (vec!["--metric", "target-share"], "--mask"),
        (vec!["--metric", "aopc", "--region", "3"], "--region"),
    ] {
        let o = with(&extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    }
}

/// The GPU backend's forward-only batches (what AOPC runs) give the logits of its full runs,
/// and leave the plan as it was for the explanations after them; batches larger than the plan
/// run in parts.
#[test]
fn gpu_logits_run_the_forward_pass_alone_and_agree_with_full_runs() {
    let Some(ctx) = common::gpu::context() else {
        return;
    };
    let mut rng = rng("gpu_logits_run_the_forward_pass_alone");
    let net = random_cnn(&mut rng, 2, 9, 8, false);
    let method = Composite::EpsilonGammaBox.resolve(&net, UNIT, &[]).unwrap();
    let mut gpu = taylormap::gpu::GpuBackend::new(&ctx, &net, &method, 4).unwrap();
    for n in [1, 3, 4, 9] {
        let x = random_input(&mut rng, &net, n, 0.0, 1.0);
        let full = gpu.run(x.view(), None).unwrap();
        let logits = gpu.logits(x.view()).unwrap();
        assert_eq!(logits, full.logits, "{n} samples");
        let again = gpu.run(x.view(), None).unwrap();
        common::assert_same_output(&again, &full, &format!("{n} samples, after logits"));
        let reference = cpu::logits(&net, x.mapv(f64::from).view()).unwrap();
        let err = common::rel_l2(logits.iter().copied(), reference.iter().copied());
        assert!(err <= 1e-5, "{n} samples: {err:e}");
    }
}

/// Orders, targets or regions that do not fit the samples are errors, not panics.
#[test]
fn perturbation_curves_refuse_what_does_not_fit() {
    let mut rng = rng("perturbation_curves_refuse");
    let net = random_cnn(&mut rng, 1, 6, 6, false);
    let x = random_input(&mut rng, &net, 2, 0.0, 1.0);
    let regions = Regions::new(&net.input_shape, 2);
    let other = Regions::new(&[1, 5, 6], 2);
    let curves = |regions| Curves {
        regions,
        perturber: Perturber {
            kind: Perturbation::Low,
            bounds: UNIT,
            seed: 0,
        },
        steps: 2,
        batch_size: 2,
    };
    let mut backend = cpu::ReferenceBackend::new(net.clone(), Method::Sensitivity);
    let fine = vec![vec![0, 1], vec![2, 3]];
    let mut run = |regions, targets: &[usize], orders: &[Vec<usize>]| {
        curves(regions)
            .run(&mut backend, x.view(), 0, targets, orders, &mut |_| {})
            .map(|_| ())
    };
    assert!(run(&regions, &[0, 0], &fine).is_ok());
    let outputs = net.num_outputs();
    for (what, result) in [
        (
            "a region past the last",
            run(&regions, &[0, 0], &[vec![0, 1], vec![2, 9]]),
        ),
        (
            "a short order",
            run(&regions, &[0, 0], &[vec![0, 1], vec![2]]),
        ),
        ("one target for two samples", run(&regions, &[0], &fine)),
        (
            "a target past the outputs",
            run(&regions, &[0, outputs], &fine),
        ),
        ("regions of another shape", run(&other, &[0, 0], &fine)),
    ] {
        assert!(result.is_err(), "{what}");
    }
}

/// A folder of grayscale PNG masks serves every channel of colour inputs: one file per sample,
/// in sorted name order.
#[test]
fn eval_reads_png_masks_for_every_channel() {
    let mut rng = rng("eval_reads_png_masks");
    let n = 3;
    let method = Method::Sensitivity;
    // A small random network can be dead for a sample (its target's gradient 0 everywhere:
    // no positive relevance, so eval skips it; with TAYLORMAP_SEED=1796329921542020351 all
    // three were, and there was no mean to compare): draw until every sample has some.
    let (net, x, explained) = loop {
        let net = random_cnn(&mut rng, 3, 8, 8, false);
        let x = random_input(&mut rng, &net, n, 0.0, 1.0);
        let explained = cpu::explain(&net, &method, x.mapv(f64::from).view(), None).unwrap();
        let live = explained
            .relevance
            .outer_iter()
            .all(|r| r.iter().any(|&v| v > 1e-9));
        if live {
            break (net, x, explained);
        }
    };
    let dir = case_files(&net, &x);
    let masks = dir.path().join("masks");
    std::fs::create_dir(&masks).unwrap();
    // sample i: the first 8 * (i + 2) pixels (rows 0..i+2) inside
    for i in 0..n {
        let pixels: Vec<u8> = (0..64)
            .map(|p| if p < 8 * (i + 2) { 255 } else { 0 })
            .collect();
        let file = std::fs::File::create(masks.join(format!("{i:03}.png"))).unwrap();
        let mut e = png::Encoder::new(std::io::BufWriter::new(file), 8, 8);
        e.set_color(png::ColorType::Grayscale);
        e.set_depth(png::BitDepth::Eight);
        e.write_header().unwrap().write_image_data(&pixels).unwrap();
    }
    let path = |name: &str| dir.path().join(name).display().to_string();
    let rows = json_rows(&taylormap(&[
        "eval",
        "--model",
        &path("model.onnx"),
        "--input",
        &path("x.npy"),
        "--metric",
        "target-share",
        "--composite",
        "sensitivity",
        "--mask",
        &path("masks"),
        "--backend",
        "reference",
        "--json",
        "--quiet",
    ]));
    // by hand: the reference's sensitivity heatmaps, each channel masked alike
    let (mut shares, mut fractions) = (vec![], vec![]);
    for (i, r) in explained.relevance.outer_iter().enumerate() {
        let r: Vec<f32> = r.iter().map(|&v| v as f32).collect();
        let m: Vec<bool> = (0..3 * 64).map(|v| v % 64 < 8 * (i + 2)).collect();
        if let Some(share) = target_share(&r, &m) {
            shares.push(share);
            fractions.push((i + 2) as f64 / 8.0);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let row = &rows[0];
    assert_eq!(
        (row["skipped"].as_u64(), shares.len()),
        (Some(0), n),
        "{row}"
    );
    let got = row["value"].as_f64().unwrap();
    assert!(
        (got - mean(&shares)).abs() <= 1e-6,
        "{got} vs {}",
        mean(&shares)
    );
    let fraction = row["mask_fraction"].as_f64().unwrap();
    assert!((fraction - mean(&fractions)).abs() <= 1e-12, "{row}");
}
