//! Per-stage GPU timing (`GpuBackend::enable_stage_timing`, `bench`'s `stage_seconds`): times are
//! positive, finite and within the wall time, and timing leaves the results bit-identical.
//! Needs an adapter with timestamp queries (llvmpipe has them); fails rather than skips under
//! `TAYLORMAP_REQUIRE_GPU=1`.

mod common;

use std::process::Command;
use std::time::Instant;

use common::gpu::context;
use common::{random_cnn, random_input, rng};
use taylormap::gpu::GpuBackend;
use taylormap::lrp::{Bounds, Composite};
use taylormap::Backend;

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
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
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
    let line = &lines[0];
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
    // Per batch: times the number of batches, within the measured time.
    assert!(sum * samples / 2.0 < seconds, "{stdout}");
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
        "transfer_bytes_per_sample",
    ] {
        assert!(!line[key].is_null(), "{key}: {stdout}");
    }
}
