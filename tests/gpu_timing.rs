//! Per-stage GPU timing (`GpuBackend::enable_stage_timing`, `bench`'s `stage_seconds`): times are
//! positive, finite and within the wall time, and timing leaves the results bit-identical. Per-
//! kernel timing (`enable_kernel_timing`, `bench --kernel-times`): every layer's dispatches are
//! named, their times add up to the stages, results are unchanged. Needs an adapter with timestamp queries (llvmpipe has them); fails rather than skips under
//! `TAYLORMAP_REQUIRE_GPU=1`.

mod common;

use std::process::Command;
use std::time::Instant;

use rand::Rng;

use common::gpu::context;
use common::{random_cnn, random_input, rng};
use taylormap::gpu::GpuBackend;
use taylormap::lrp::{Bounds, Composite};
use taylormap::{Backend, Layer};

const BOUNDS: Bounds = Bounds {
    low: 0.0,
    high: 1.0,
};

#[test]
fn stage_times_are_positive_within_the_wall_time_and_change_no_result() {
    let Some(ctx) = context() else { return };
    assert!(
        ctx.timestamps(),
        "the adapter {} has no timestamp queries",
        ctx.summary()
    );
    let mut rng = rng("stage_times");
    let net = random_cnn(&mut rng, 2, 9, 9, false);
    let method = Composite::DeepTaylor.resolve(&net, BOUNDS, &[]).unwrap();
    // 10 samples in batches of 4: three submissions per run, both staging slots in turn.
    let x = random_input(&mut rng, &net, 10, 0.0, 1.0);
    let mut plain = GpuBackend::new(&ctx, &net, &method, 4).unwrap();
    let mut timed = GpuBackend::new(&ctx, &net, &method, 4).unwrap();
    assert!(plain.stage_times().is_none());
    assert!(timed.enable_stage_timing().unwrap());
    let zero = timed.stage_times().unwrap();
    assert_eq!(zero.batches, 0);
    assert_eq!(zero.total_s(), 0.0);

    let expected = plain.run(x.view(), None).unwrap();
    let start = Instant::now();
    let mut outputs = vec![];
    for _ in 0..3 {
        outputs.push(timed.run(x.view(), None).unwrap());
    }
    let wall = start.elapsed().as_secs_f64();
    let t = timed.stage_times().unwrap();
    assert_eq!(t.batches, 9, "{t:?}");
    for (stage, s) in [
        ("upload", t.upload_s),
        ("forward", t.forward_s),
        ("relevance", t.relevance_s),
        ("readback", t.readback_s),
    ] {
        assert!(s.is_finite() && s > 0.0, "{stage}: {s} ({t:?})");
    }
    assert!(t.total_s() < wall, "stage sum vs wall {wall} s: {t:?}");
    for out in &outputs {
        // Bit for bit: f32 relevance, logits widened from f32.
        let bits32: fn(&f32) -> u32 = |v| v.to_bits();
        let bits64: fn(&f64) -> u64 = |v| v.to_bits();
        assert!(expected
            .relevance
            .iter()
            .map(bits32)
            .eq(out.relevance.iter().map(bits32)));
        assert!(expected
            .logits
            .iter()
            .map(bits64)
            .eq(out.logits.iter().map(bits64)));
        assert_eq!(expected.targets, out.targets);
    }
    // Explicit targets go through the timed path too.
    let targets: Vec<usize> = (0..10).map(|i| i % net.num_outputs()).collect();
    let a = plain.run(x.view(), Some(&targets)).unwrap();
    let b = timed.run(x.view(), Some(&targets)).unwrap();
    assert_eq!(a.relevance, b.relevance);
    assert_eq!(a.targets, b.targets);
    assert_eq!(timed.stage_times().unwrap().batches, 12);
    // Timing is per backend: the plain one still has none.
    assert!(plain.stage_times().is_none());
}

#[test]
fn stage_sum_is_below_the_wall_time_of_the_runs() {
    let Some(ctx) = context() else { return };
    let mut rng = rng("stage_sum");
    let net = random_cnn(&mut rng, 1, 9, 9, true);
    let method = Composite::GradientXInput
        .resolve(&net, BOUNDS, &[])
        .unwrap();
    let x = random_input(&mut rng, &net, 7, 0.0, 1.0);
    let mut timed = GpuBackend::new(&ctx, &net, &method, 3).unwrap();
    assert!(timed.enable_stage_timing().unwrap());
    timed.run(x.view(), None).unwrap(); // warm-up: pipelines compiled
    let before = timed.stage_times().unwrap();
    let start = Instant::now();
    for _ in 0..4 {
        timed.run(x.view(), None).unwrap();
    }
    let wall = start.elapsed().as_secs_f64();
    let after = timed.stage_times().unwrap();
    assert_eq!(after.batches - before.batches, 12);
    let sum = after.total_s() - before.total_s();
    assert!(
        sum.is_finite() && sum > 0.0 && sum < wall,
        "{sum} s vs {wall} s"
    );
    // Host time per step: every run counted, each step measured, together within the wall.
    let host = timed.host_times();
    assert_eq!(host.runs, 5);
    for (step, s) in [
        ("check", host.check_s),
        ("submit", host.submit_s),
        ("wait", host.wait_s),
        ("copy", host.copy_s),
    ] {
        assert!(s.is_finite() && s > 0.0, "{step}: {host:?}");
    }
}

#[test]
fn bench_json_reports_stage_seconds_on_the_gpu() {
    let Some(_ctx) = context() else { return };
    let mut rng = rng("bench_stage_seconds");
    let net = random_cnn(&mut rng, 1, 9, 9, true);
    let x = random_input(&mut rng, &net, 3, 0.0, 1.0);
    let dir = tempfile::tempdir().unwrap();
    let (model, input) = (dir.path().join("model.onnx"), dir.path().join("x.npy"));
    taylormap::model::onnx::save(&net, &model).unwrap();
    let data: Vec<f32> = x.iter().copied().collect();
    std::fs::write(&input, taylormap::data::npy_bytes_f32(x.shape(), &data)).unwrap();
    let bench = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_taylormap"))
            .args(["bench", "--model"])
            .arg(&model)
            .arg("--input")
            .arg(&input)
            .args([
                "--backend",
                "gpu",
                "--json",
                "--batch-sizes",
                "2",
                "--min-seconds",
                "0",
            ])
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            o.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{stdout}");
        (lines[0].clone(), stdout)
    };
    let (line, stdout) = bench(&[]);
    assert!(line.get("kernel_seconds").is_none(), "{stdout}");
    assert_eq!(line["backend"], "gpu");
    assert_eq!(line["batch_size"], 2);
    let seconds = line["seconds"].as_f64().unwrap();
    let samples = line["samples"].as_f64().unwrap();
    let stages = &line["stage_seconds"];
    let mut sum = 0.0;
    for key in ["upload", "forward", "relevance", "readback"] {
        let s = stages[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {stdout}"));
        assert!(s.is_finite() && s > 0.0, "{key}: {stdout}");
        sum += s;
    }
    // (The stages come from a timed phase after the throughput phase, so they are not bounded
    // by `seconds`; the library test above holds them within the wall time of their batches.)
    assert!(sum > 0.0, "{stdout}");
    let host = &line["host_seconds"];
    let mut host_sum = 0.0;
    for key in ["check", "submit", "wait", "copy"] {
        let s = host[key]
            .as_f64()
            .unwrap_or_else(|| panic!("host {key}: {stdout}"));
        assert!(s.is_finite() && s >= 0.0, "host {key}: {stdout}");
        host_sum += s;
    }
    assert!(
        host_sum > 0.0 && host_sum * samples / 2.0 <= seconds,
        "{stdout}"
    );
    for key in [
        "adapter",
        "model",
        "composite",
        "heatmaps_per_second",
        "forward_flops_per_sample",
        "relevance_flops_per_sample",
        "transfer_bytes_per_sample",
        "memory_bytes_per_sample",
    ] {
        assert!(!line[key].is_null(), "{key}: {stdout}");
    }

    // --kernel-times: every dispatch per batch (no byte unpack for f32 NPY input), together the
    // forward and relevance stages but for the unpack's empty pass.
    let (line, stdout) = bench(&["--kernel-times"]);
    let kernels = line["kernel_seconds"].as_array().expect(&stdout);
    assert!(kernels.len() >= 10, "{stdout}");
    let mut sum = 0.0;
    for k in kernels {
        let name = k["kernel"].as_str().expect(&stdout);
        assert!(!name.contains("unpack"), "{stdout}");
        let s = k["seconds"].as_f64().expect(&stdout);
        assert!(s.is_finite() && s >= 0.0, "{name}: {stdout}");
        sum += s;
    }
    let stages = &line["stage_seconds"];
    let fr = stages["forward"].as_f64().unwrap() + stages["relevance"].as_f64().unwrap();
    assert!(
        sum > 0.0 && sum <= fr * (1.0 + 1e-6),
        "{sum} vs {fr}: {stdout}"
    );
}

#[test]
fn kernel_times_name_every_dispatch_add_up_to_the_stages_and_change_no_result() {
    let Some(ctx) = context() else { return };
    let mut rng = rng("kernel_times");
    let net = random_cnn(&mut rng, 1, 9, 9, false);
    let method = Composite::DeepTaylorBounded
        .resolve(&net, BOUNDS, &[])
        .unwrap();
    // 10 samples in batches of 4, as bytes: the unpack runs and is timed too.
    let bytes = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[10, 1, 9, 9]), |_| {
        rng.random_range(0..=255u8)
    });
    let lut: [f32; 256] = std::array::from_fn(|b| b as f32 / 255.0);
    let mut plain = GpuBackend::new(&ctx, &net, &method, 4).unwrap();
    let mut timed = GpuBackend::new(&ctx, &net, &method, 4).unwrap();
    assert!(timed.enable_stage_timing().unwrap());
    assert!(timed.kernel_times().is_none(), "stage timing alone");
    timed.run_pixels(bytes.view(), &lut, None).unwrap();
    // Switching to kernel timing starts the totals afresh.
    assert!(timed.enable_kernel_timing().unwrap());
    assert_eq!(timed.stage_times().unwrap().batches, 0);
    assert_eq!(timed.kernel_times().unwrap().batches, 0);

    let expected = plain.run_pixels(bytes.view(), &lut, None).unwrap();
    let got = timed.run_pixels(bytes.view(), &lut, None).unwrap();
    let bits: fn(&f32) -> u32 = |v| v.to_bits();
    assert!(expected
        .relevance
        .iter()
        .map(bits)
        .eq(got.relevance.iter().map(bits)));
    assert_eq!(expected.logits, got.logits);
    assert_eq!(expected.targets, got.targets);

    let k = timed.kernel_times().unwrap();
    let st = timed.stage_times().unwrap();
    assert_eq!((k.batches, st.batches), (3, 3));
    let names: Vec<&str> = k.kernels.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "input.unpack unpack_u8", "{names:?}");
    // Every layer's kernels, named by layer label and entry point: each Conv2d and Dense layer
    // has its forward, s and back-projection dispatches, each pooling layer two, but a max
    // pooling right after a convolution's ReLU: its relevance step is the convolution's s step,
    // which reads the pooling's relevance through its arg-max. Under deep-taylor-bounded every
    // layer keeps z' from its forward pass (z^B: x w; z+ on a ReLU output: x w+) and finishes s
    // with s_reduce instead of a z_partial pass.
    for (k, layer) in net.layers.iter().enumerate() {
        let of_layer: Vec<&str> = names
            .iter()
            .filter(|n| n.starts_with(&format!("layer.{k}.")))
            .map(|n| n.rsplit(' ').next().unwrap())
            .collect();
        let want: &[&str] = match layer {
            Layer::Conv2d { .. } | Layer::Dense { .. } => {
                &["forward_partial", "s_reduce", "c_partial"]
            }
            // 2 x 2 windows of stride 2 tile the input: the tiled relevance kernel, or none
            // where the convolution below takes the step over (both max poolings here)
            Layer::MaxPool2d { .. } => &["max_forward"],
            Layer::AvgPool2d { .. } => &["avg_forward", "avg_relevance_tiled"],
            _ => &[],
        };
        for entry in want {
            assert!(
                of_layer.contains(entry),
                "layer {k}: no {entry} in {names:?}"
            );
        }
        if matches!(layer, Layer::Conv2d { .. } | Layer::Dense { .. }) {
            assert!(!of_layer.contains(&"z_partial"), "{names:?}");
        }
        if matches!(layer, Layer::MaxPool2d { .. }) {
            assert_eq!(of_layer, ["max_forward"], "layer {k}: {names:?}");
        }
    }
    let seed = names.iter().position(|n| *n == "seed seed").unwrap();
    assert!(
        names[..seed].iter().all(|n| !n.contains("c_partial")),
        "{names:?}"
    );
    assert!(
        names[seed..].iter().all(|n| !n.contains("forward")),
        "{names:?}"
    );
    for (name, s) in &k.kernels {
        assert!(s.is_finite() && *s >= 0.0, "{name}: {s}");
    }
    assert!(k.kernels[0].1 > 0.0, "the unpack ran: {:?}", k.kernels[0]);
    // The stages are sums of the same timestamps: forward (with the unpack) and relevance
    // together are the dispatches' total.
    let sum: f64 = k.kernels.iter().map(|(_, s)| s).sum();
    let stages = st.forward_s + st.relevance_s;
    assert!(
        (sum - stages).abs() <= 1e-9 * stages.max(1e-9),
        "{sum} vs {stages}"
    );
}
