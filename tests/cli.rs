//! End-to-end tests of the `taylormap` binary: outputs of `explain` (SPEC section 7), replacement
//! on re-runs, refusals with exit code 2 and no half-written outputs, `inspect`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::{ArrayD, Axis, IxDyn};
use rand::Rng;
use taylormap::lrp::{Bounds, Composite};
use taylormap::{Backend, Network};

fn taylormap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_taylormap"))
        .args(args)
        .env("TAYLORMAP_SEED", "0")
        .output()
        .expect("run taylormap")
}

fn write_npy(path: &Path, x: &ArrayD<f32>) {
    let data: Vec<f32> = x.iter().copied().collect();
    std::fs::write(path, taylormap::data::npy_bytes_f32(x.shape(), &data)).unwrap();
}

fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, data)
}

struct Case {
    dir: tempfile::TempDir,
    net: Network,
    x: ArrayD<f32>,
}

impl Case {
    fn new(name: &str, n: usize) -> Case {
        let mut rng = common::rng(name);
        let net = common::random_cnn(&mut rng, 1, 9, 9, true);
        let x = common::random_input(&mut rng, &net, n, 0.0, 1.0);
        let dir = tempfile::tempdir().unwrap();
        taylormap::model::onnx::save(&net, &dir.path().join("model.onnx")).unwrap();
        write_npy(&dir.path().join("x.npy"), &x);
        Case { dir, net, x }
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    /// The f64 reference's explanation of the case's inputs (bounds [0, 1], predicted class).
    fn reference(&self, composite: Composite) -> taylormap::BatchOutput {
        let bounds = Bounds {
            low: 0.0,
            high: 1.0,
        };
        let method = composite.resolve(&self.net, bounds, &[]).unwrap();
        taylormap::cpu::explain(&self.net, &method, self.x.mapv(f64::from).view(), None).unwrap()
    }
    fn explain(&self, extra: &[&str]) -> Output {
        let (model, input, out) = (
            self.path("model.onnx"),
            self.path("x.npy"),
            self.path("out"),
        );
        // The f64 reference by default, so that outputs can be checked exactly.
        let reference = "reference".to_string();
        let mut args = vec!["explain", "--quiet"];
        for (flag, default) in [
            ("--out", &out),
            ("--model", &model),
            ("--input", &input),
            ("--backend", &reference),
        ] {
            if !extra.contains(&flag) {
                args.extend([flag, default.as_str()]);
            }
        }
        args.extend(extra);
        taylormap(&args)
    }
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_cpu_engine_writes_exactly_what_it_computes_in_input_order() {
    // 37 samples in batches of 16: batches that do not divide the input, each split in chunks.
    // (The engine's agreement with the reference is tests/parity.rs's business.)
    let case = Case::new("cpu_engine_explain", 37);
    ok(&case.explain(&[
        "--backend",
        "cpu",
        "--batch-size",
        "16",
        "--composite",
        "deep-taylor-bounded",
    ]));
    let out = case.out();
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["backend"], "cpu");
    let (shape, rel) = read_npy_f32(&out.join("relevance.npy"));
    assert_eq!(shape, vec![37, 1, 9, 9]);
    // The same batches through the engine in this process: the same bits.
    let bounds = Bounds {
        low: 0.0,
        high: 1.0,
    };
    let method = Composite::DeepTaylorBounded
        .resolve(&case.net, bounds, &[])
        .unwrap();
    let mut engine = taylormap::cpu::FastBackend::new(&case.net, &method).unwrap();
    let (mut want, mut predicted) = (vec![], vec![]);
    for start in (0..37).step_by(16) {
        let batch = case
            .x
            .slice_axis(Axis(0), (start..(start + 16).min(37)).into());
        let o = engine.run(batch, None).unwrap();
        want.extend(o.relevance.iter().copied());
        predicted.extend((0..o.targets.len()).map(|i| o.predicted(i)));
    }
    assert_eq!(rel.len(), want.len());
    for (i, (got, want)) in rel.iter().zip(&want).enumerate() {
        assert_eq!(got.to_bits(), want.to_bits(), "value {i}: {got} vs {want}");
    }
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 38);
    for (i, line) in csv.lines().skip(1).enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[0], i.to_string(), "rows in input order");
        assert_eq!(f[2].parse::<usize>().unwrap(), predicted[i], "sample {i}");
    }
}

#[test]
fn explain_writes_every_output_and_they_match_the_reference() {
    let case = Case::new("explain_writes_every_output", 7);
    ok(&case.explain(&[
        "--batch-size",
        "3",
        "--composite",
        "deep-taylor-bounded",
        "--scale",
        "2",
    ]));
    let out = case.out();

    // relevance.npy: the model's input shape, exactly the reference relevance
    let (shape, rel) = read_npy_f32(&out.join("relevance.npy"));
    assert_eq!(shape, vec![7, 1, 9, 9]);
    let want = case.reference(Composite::DeepTaylorBounded);
    for (got, want) in rel.iter().zip(want.relevance.iter()) {
        assert!(
            (*got as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
            "{got} vs {want}"
        );
    }

    // summary.csv: header and one row per sample
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "index,label,predicted,target,score,relevance_sum,conservation_error,negative_fraction"
    );
    assert_eq!(lines.len(), 8);
    for (i, line) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 8);
        assert_eq!(f[0], i.to_string());
        assert_eq!(f[1], "", "no labels for an NPY input");
        assert_eq!(f[2].parse::<usize>().unwrap(), want.predicted(i));
        assert_eq!(f[3], f[2], "target predicted");
        let score: f64 = f[4].parse().unwrap();
        assert!((score - want.score(i)).abs() <= 1e-9 * score.abs().max(1.0));
        let stats = want.stats(i);
        let sum: f64 = f[5].parse().unwrap();
        assert!((sum - stats.relevance_sum).abs() <= 1e-6 * sum.abs().max(1.0));
    }

    // run.json
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["samples"], 7);
    assert_eq!(run["backend"], "reference");
    assert_eq!(run["composite"], "deep-taylor-bounded");
    assert_eq!(run["rules"].as_array().unwrap().len(), 4);
    assert_eq!(run["rules"][0]["rule"], "zbox(0,1)");
    assert_eq!(run["model"]["sha256"].as_str().unwrap().len(), 64);
    assert!(run["heatmaps_per_second"].as_f64().unwrap() > 0.0);

    // heatmaps: one PNG per sample, input size x scale
    for i in 0..7 {
        let file = std::fs::File::open(out.join(format!("heatmaps/{i:05}.png"))).unwrap();
        let reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .unwrap();
        assert_eq!((reader.info().width, reader.info().height), (18, 18));
    }
    assert_eq!(std::fs::read_dir(out.join("heatmaps")).unwrap().count(), 7);
    let grid = std::fs::File::open(out.join("grid.png")).unwrap();
    let grid = png::Decoder::new(std::io::BufReader::new(grid))
        .read_info()
        .unwrap();
    assert!(grid.info().width > 2 * 9 && grid.info().height > 9);
    // no temporary files left behind
    for entry in std::fs::read_dir(&out).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            [
                "heatmaps",
                "grid.png",
                "relevance.npy",
                "summary.csv",
                "run.json"
            ]
            .contains(&name.as_str()),
            "{name}"
        );
    }
}

#[test]
fn overlay_heatmaps_differ_from_plain_ones_and_keep_the_size() {
    let case = Case::new("overlay_heatmaps", 2);
    ok(&case.explain(&["--scale", "3"]));
    let plain = std::fs::read(case.out().join("heatmaps/00001.png")).unwrap();
    ok(&case.explain(&["--scale", "3", "--overlay"]));
    let file = std::fs::File::open(case.out().join("heatmaps/00001.png")).unwrap();
    let reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    assert_eq!((reader.info().width, reader.info().height), (27, 27));
    assert_ne!(
        plain,
        std::fs::read(case.out().join("heatmaps/00001.png")).unwrap()
    );
}

#[test]
fn a_rerun_replaces_the_outputs() {
    let case = Case::new("a_rerun_replaces_the_outputs", 5);
    ok(&case.explain(&[]));
    ok(&case.explain(&["--limit", "2", "--target", "0"]));
    let out = case.out();
    assert_eq!(std::fs::read_dir(out.join("heatmaps")).unwrap().count(), 2);
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    assert!(csv
        .lines()
        .skip(1)
        .all(|l| l.split(',').nth(3) == Some("0")));
    assert_eq!(read_npy_f32(&out.join("relevance.npy")).0, vec![2, 1, 9, 9]);
    // the old heatmaps folder was set aside, then removed: nothing else is left
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grid.png",
            "heatmaps",
            "relevance.npy",
            "run.json",
            "summary.csv"
        ]
    );
}

#[test]
fn bad_input_exits_2_names_the_culprit_and_writes_nothing() {
    let case = Case::new("bad_input_exits_2", 3);
    let mut rng = common::rng("bad_input_exits_2/other");
    let other = common::random_mlp(&mut rng, &[5, 2], false);
    let wrong = common::random_input(&mut rng, &other, 3, 0.0, 1.0);
    write_npy(&case.dir.path().join("wrong.npy"), &wrong);
    let mut nan = case.x.clone();
    nan[IxDyn(&[2, 0, 4, 4])] = f32::NAN;
    write_npy(&case.dir.path().join("nan.npy"), &nan);
    let (wrong, nan) = (case.path("wrong.npy"), case.path("nan.npy"));
    std::fs::write(case.dir.path().join("a-file"), b"x").unwrap();
    let a_file = case.path("a-file");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--input", &wrong], "wrong.npy"),
        (vec!["--input", &nan], "sample 2"),
        (vec!["--composite", "deep-tailor"], "--composite"),
        (vec!["--rule", "first=zomething"], "--rule: 'zomething'"),
        (vec!["--target", "label"], "label"),
        (vec!["--target", "99"], "99"),
        (vec!["--bounds", "1"], "--bounds"),
        // beyond float32's range: infinite in the f32 engines
        (vec!["--bounds", "0,1e40"], "--bounds"),
        (vec!["--rule", "first=epsilon(1e39)"], "float32"),
        (vec!["--model", "/nonexistent/model.onnx"], "model.onnx"),
        (vec!["--input", "/nonexistent/x.npy"], "x.npy"),
        (vec!["--input", "/nonexistent/images"], "images"),
        (vec!["--labels", "/nonexistent/y.npy"], "y.npy"),
        (vec!["--out", &a_file], "--out"),
        // heatmaps of 800,000 x 800,000 pixels: refused before any work, not a failed allocation
        (vec!["--scale", "100000"], "--scale"),
        (vec!["--backend", "cpu", "--threads", "0"], "--threads"),
        (vec!["--backend", "gpus"], "--backend"),
    ];
    for (extra, needle) in cases {
        let o = case.explain(&extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: '{needle}' not in: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(
            !case.out().join("relevance.npy").exists(),
            "{extra:?} left an output"
        );
    }
}

/// `--limit 0` is bad usage, named as such, in every command that takes it (it was reported as an
/// input that "holds no samples", or for `train` as a batch of shape [0, 1, 28, 28]).
#[test]
fn limit_zero_is_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out").display().to_string();
    let model = dir.path().join("m.onnx").display().to_string();
    let titanic = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/titanic/train.csv");
    let commands: Vec<Vec<&str>> = vec![
        vec!["explain", "--limit", "0", "--out", &out, "--backend", "cpu"],
        vec![
            "eval",
            "--limit",
            "0",
            "--metric",
            "conservation",
            "--backend",
            "cpu",
        ],
        vec![
            "train",
            "--arch",
            "tabular-mlp",
            "--data",
            titanic,
            "--label",
            "Survived",
            "--out",
            &model,
            "--limit",
            "0",
        ],
    ];
    for args in commands {
        let o = taylormap(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--limit: must be at least 1"),
            "{args:?}: {err}"
        );
    }
    assert!(!dir.path().join("out").exists() && !dir.path().join("m.onnx").exists());
}

/// A file named on the command line that is missing is bad input (exit 2) in every command, not a
/// runtime error, and the message names it.
/// A gzipped input whose trailer records a size far beyond its data (a truncated download ends
/// in arbitrary bytes) is reported as corrupt, also where that size cannot be allocated: it is
/// only a hint. Under a 1.4 GB address-space limit, reserving the 1.5 GB such a trailer claimed
/// used to abort the process (status 134).
#[cfg(unix)]
#[test]
fn a_gzip_trailer_claiming_more_memory_than_there_is_is_only_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let mut gz = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist/t10k-images.idx3-ubyte.gz"),
    )
    .unwrap();
    let at = gz.len() - 4;
    gz[at..].copy_from_slice(&1_500_000_000u32.to_le_bytes());
    let input = dir.path().join("cut.idx3-ubyte.gz");
    std::fs::write(&input, gz).unwrap();
    let out = dir.path().join("out");
    let o = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1400000 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_taylormap"))
        .args([
            "explain",
            "--backend",
            "cpu",
            "--no-png",
            "--quiet",
            "--input",
        ])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run taylormap under sh");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cut.idx3-ubyte.gz") && err.contains("corrupt or truncated"),
        "{err}"
    );
    assert!(!out.exists() || std::fs::read_dir(&out).unwrap().next().is_none());
}

#[test]
fn missing_files_exit_2_in_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out").display().to_string();
    let model = dir.path().join("m.onnx").display().to_string();
    let titanic = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets/titanic/train.csv")
        .display()
        .to_string();
    let commands: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["explain", "--input", "/nonexistent/a.npy", "--out", &out],
            "a.npy",
        ),
        (
            vec!["bench", "--input", "/nonexistent/b.npy", "--backend", "cpu"],
            "b.npy",
        ),
        (
            vec![
                "eval",
                "--input",
                "/nonexistent/c.npy",
                "--metric",
                "conservation",
            ],
            "c.npy",
        ),
        (
            vec![
                "eval",
                "--metric",
                "target-share",
                "--mask",
                "/nonexistent/d.npy",
                "--limit",
                "2",
            ],
            "d.npy",
        ),
        (
            vec![
                "train",
                "--arch",
                "mnist-mlp",
                "--data",
                "/nonexistent/e",
                "--out",
                &model,
            ],
            "/nonexistent/e",
        ),
        (
            vec![
                "train",
                "--arch",
                "tabular-mlp",
                "--data",
                "/nonexistent/f.csv",
                "--label",
                "y",
                "--out",
                &model,
            ],
            "f.csv",
        ),
        (vec!["inspect", "/nonexistent/g.onnx"], "g.onnx"),
        // refused before training, not after: the model would have nowhere to go
        (
            vec![
                "train",
                "--arch",
                "tabular-mlp",
                "--data",
                &titanic,
                "--label",
                "Survived",
                "--out",
                "/nonexistent/h.onnx",
            ],
            "--out",
        ),
    ];
    for (args, needle) in commands {
        let o = taylormap(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: '{needle}' not in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!dir.path().join("out").exists() && !dir.path().join("m.onnx").exists());
}

/// Looking for a GPU without a desktop session (no XDG_RUNTIME_DIR, as on servers and in CI)
/// prints no error: Mesa's device-select layer, where installed, would print "error:
/// XDG_RUNTIME_DIR is invalid or not set" twice.
#[test]
fn looking_for_a_gpu_without_a_desktop_session_prints_no_error() {
    let o = Command::new(env!("CARGO_BIN_EXE_taylormap"))
        .arg("adapters")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("MESA_VK_DEVICE_SELECT")
        .env_remove("NODEVICE_SELECT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
    assert!(o.status.success(), "{err}");
}

/// A float32 overflow inside the engine (finite weights and inputs whose products pass 3.4e38 in
/// a hidden layer, about 1e40, while the outputs and relevance are about 1e11) gives non-finite
/// relevance; the summary says so and points to the f64 reference, which computes it.
#[test]
fn non_finite_relevance_is_reported_in_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("non_finite_relevance");
    let mut dense = |inputs: usize, outputs: usize, scale: f32| taylormap::Layer::Dense {
        weight: ndarray::Array2::from_shape_fn((inputs, outputs), |_| {
            rng.random_range(1.0..2.0) * scale
        }),
        bias: ndarray::Array1::zeros(outputs),
    };
    let layers = vec![dense(4, 3, 1e30), dense(3, 2, 1e-30)];
    let net = Network::new(vec![4], layers, vec![]).unwrap();
    let model = dir.path().join("huge.onnx");
    taylormap::model::onnx::save(&net, &model).unwrap();
    let x = ndarray::Array2::from_shape_fn((5, 4), |_| rng.random_range(1.0..2.0) * 1e10f32);
    let input = dir.path().join("x.npy");
    write_npy(&input, &x.into_dyn());
    let run = |backend: &str| {
        let out = dir.path().join(backend);
        let o = taylormap(&[
            "explain",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--backend",
            backend,
            "--no-png",
            "--quiet",
            "--composite",
            "lrp-zero",
        ]);
        ok(&o);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let non_finite_in_run_json = |backend: &str| {
        let text = std::fs::read_to_string(dir.path().join(backend).join("run.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["non_finite_samples"].as_u64().unwrap()
    };
    let f32_engine = run("cpu");
    assert!(
        f32_engine.contains("non-finite           5 heatmap(s)")
            && f32_engine.contains("reference"),
        "{f32_engine}"
    );
    assert_eq!(non_finite_in_run_json("cpu"), 5);
    let f64_reference = run("reference");
    assert!(!f64_reference.contains("non-finite"), "{f64_reference}");
    assert_eq!(non_finite_in_run_json("reference"), 0);
}

/// A run killed mid-way leaves its temporary files (named with its process id) in the output
/// folder; the next run into that folder removes those of processes that no longer run, and
/// keeps a running process's and other files.
#[test]
fn leftovers_of_runs_that_died_are_removed() {
    if !Path::new("/proc/self").exists() {
        return; // no way to tell which processes run: nothing is removed there
    }
    let case = Case::new("leftovers", 3);
    let out = case.dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    // 4,194,305 is above Linux's largest process id: that process cannot be running
    let dead = 4_194_305u32;
    let alive = std::process::id();
    let dead_files = [
        format!(".relevance.npy.tmp.{dead}.0"),
        format!(".summary.csv.tmp.{dead}.3"),
    ];
    let kept_files = [
        format!(".relevance.npy.tmp.{alive}.0"),
        format!(".relevance.npy.tmp.{dead}"), // not the pattern: no counter
        format!(".notes.txt.tmp.{dead}.0"),   // not an output of explain
        "keep.txt".to_string(),
    ];
    for f in dead_files.iter().chain(&kept_files) {
        std::fs::write(out.join(f), b"x").unwrap();
    }
    let dead_dirs = [
        format!(".heatmaps.partial-{dead}"),
        format!(".heatmaps.old-{dead}"),
    ];
    let alive_dir = format!(".heatmaps.partial-{alive}");
    for d in dead_dirs.iter().chain([&alive_dir]) {
        std::fs::create_dir_all(out.join(d)).unwrap();
        std::fs::write(out.join(d).join("00000.png"), b"x").unwrap();
    }
    let o = case.explain(&[]);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    for gone in dead_files.iter().chain(&dead_dirs) {
        assert!(!out.join(gone).exists(), "{gone} left");
        assert!(err.contains(gone.as_str()), "{gone} not named in: {err}");
    }
    for kept in kept_files.iter().chain([&alive_dir]) {
        assert!(out.join(kept).exists(), "{kept} removed");
    }
    assert!(out.join("relevance.npy").exists());
}

/// A single-output network (a detector) predicts no class: the summary gives no accuracy against
/// the labels (every "prediction" would be class 0).
#[test]
fn a_single_output_network_has_no_accuracy_against_labels() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("single_output_accuracy");
    let net = common::random_mlp(&mut rng, &[4, 3, 1], true);
    let model = dir.path().join("detector.onnx");
    taylormap::model::onnx::save(&net, &model).unwrap();
    let input = dir.path().join("x.npy");
    write_npy(&input, &common::random_input(&mut rng, &net, 5, 0.0, 1.0));
    // labels 0..5 as an '|u1' NPY
    let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (5,), }";
    let pad = 64 - (10 + header.len() + 1) % 64;
    let mut labels = b"\x93NUMPY\x01\x00".to_vec();
    labels.extend(((header.len() + pad + 1) as u16).to_le_bytes());
    labels.extend(format!("{header}{}\n", " ".repeat(pad)).bytes());
    labels.extend([0u8, 1, 2, 3, 4]);
    std::fs::write(dir.path().join("y.npy"), labels).unwrap();
    let o = taylormap(&[
        "explain",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--labels",
        dir.path().join("y.npy").to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
        "--backend",
        "cpu",
        "--quiet",
    ]);
    ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("accuracy vs labels   n/a (a single output"),
        "{text}"
    );
}

#[test]
fn inspect_lists_layers_and_parameters() {
    let case = Case::new("inspect_lists_layers", 1);
    let o = taylormap(&["inspect", &case.path("model.onnx")]);
    ok(&o);
    let text = String::from_utf8_lossy(&o.stdout);
    for kind in ["Conv2d", "ReLU", "Flatten", "Dense"] {
        assert!(text.contains(kind), "{kind} missing in:\n{text}");
    }
    assert!(text.contains(&case.net.param_count().to_string()), "{text}");
    let o = taylormap(&["inspect", &case.path("x.npy")]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bench_json_prints_one_line_per_backend_and_batch_size() {
    let case = Case::new("bench_json", 4);
    let (model, input) = (case.path("model.onnx"), case.path("x.npy"));
    let o = taylormap(&[
        "bench",
        "--model",
        &model,
        "--input",
        &input,
        "--backend",
        "cpu",
        "--backend",
        "reference",
        "--threads",
        "1",
        "--batch-sizes",
        "1,3",
        "--min-seconds",
        "0",
        "--json",
    ]);
    ok(&o);
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    for (line, (backend, batch)) in
        lines
            .iter()
            .zip([("cpu", 1), ("cpu", 3), ("reference", 1), ("reference", 3)])
    {
        assert_eq!(line["backend"], backend);
        assert_eq!(line["batch_size"], batch);
        if backend == "cpu" {
            assert_eq!(line["adapter"], "CPU engine (f32, 1 thread)", "--threads 1");
        }
        assert_eq!(line["input"], "f32", "a float NPY goes up as f32");
        assert_eq!(line["composite"], "deep-taylor");
        assert!(line["samples"].as_u64().unwrap() >= batch);
        assert!(line["heatmaps_per_second"].as_f64().unwrap() > 0.0);
        for key in ["adapter", "model", "seconds"] {
            assert!(!line[key].is_null(), "{key}");
        }
        // The work per heatmap: the network's and the composite's products.
        let method = taylormap::lrp::Composite::DeepTaylor
            .resolve(
                &case.net,
                taylormap::lrp::Bounds {
                    low: 0.0,
                    high: 1.0,
                },
                &[],
            )
            .unwrap();
        assert_eq!(
            line["forward_flops_per_sample"],
            2 * case.net.forward_macs()
        );
        assert_eq!(
            line["relevance_flops_per_sample"],
            2 * method.relevance_macs(&case.net)
        );
        assert_eq!(
            line["memory_bytes_per_sample"],
            case.net.compulsory_traffic(4),
            "f32 input"
        );
    }
    let o = taylormap(&[
        "bench",
        "--model",
        &model,
        "--input",
        &input,
        "--batch-sizes",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    // A batch larger than the host's memory is refused before any work, naming the flag (where
    // the system says how much memory there is).
    if Path::new("/proc/meminfo").exists() {
        let o = taylormap(&[
            "bench",
            "--model",
            &model,
            "--input",
            &input,
            "--backend",
            "cpu",
            "--batch-sizes",
            "64,1000000000000",
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("--batch-sizes") && err.contains("1000000000000"),
            "{err}"
        );
        assert!(o.stdout.is_empty(), "no line before the refusal");
    }
    // Kernel times exist for the GPU backend only.
    let o = taylormap(&[
        "bench",
        "--model",
        &model,
        "--input",
        &input,
        "--backend",
        "cpu",
        "--kernel-times",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--kernel-times"), "{err}");
}

#[test]
fn gpu_explain_of_8_bit_input_matches_the_same_values_given_as_f32() {
    let Some(_ctx) = common::gpu::context() else {
        return;
    };
    // The bytes of an IDX file go up as bytes and are expanded on the GPU; the same values as a
    // float32 NPY go up as f32: the outputs must be identical.
    let case = Case::new("gpu_bytes", 13);
    let mut rng = common::rng("gpu_bytes_pixels");
    let bytes: Vec<u8> = (0..13 * 81).map(|_| rng.random()).collect();
    let mut idx = 0x803u32.to_be_bytes().to_vec();
    for d in [13u32, 9, 9] {
        idx.extend_from_slice(&d.to_be_bytes());
    }
    idx.extend_from_slice(&bytes);
    std::fs::write(case.path("x-images-idx3-ubyte"), &idx).unwrap();
    let values = ArrayD::from_shape_vec(
        IxDyn(&[13, 1, 9, 9]),
        bytes.iter().map(|&b| (b as f64 / 255.0) as f32).collect(),
    )
    .unwrap();
    write_npy(&case.dir.path().join("same.npy"), &values);
    let mut outputs = vec![];
    for (input, out) in [("x-images-idx3-ubyte", "bytes"), ("same.npy", "floats")] {
        let (input, out) = (case.path(input), case.path(out));
        ok(&case.explain(&[
            "--backend",
            "gpu",
            "--batch-size",
            "4",
            "--no-png",
            "--input",
            &input,
            "--out",
            &out,
        ]));
        let read = |f: &str| std::fs::read(Path::new(&out).join(f)).unwrap();
        outputs.push((read("relevance.npy"), read("summary.csv")));
    }
    assert!(outputs[0].0 == outputs[1].0, "relevance.npy differs");
    assert_eq!(
        String::from_utf8_lossy(&outputs[0].1),
        String::from_utf8_lossy(&outputs[1].1)
    );
}

/// Standard output that fails: a reader gone before the first line (`taylormap bench | head
/// -0`) ends the run quietly with status 0; a full device with status 1 and an error naming
/// standard output. Never a panic.
#[test]
fn failing_standard_output_ends_the_run_without_a_panic() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/models/mnist-cnn.onnx");
    let runs: [&[&str]; 2] = [
        &["inspect", model],
        &[
            "bench",
            "--backend",
            "cpu",
            "--batch-sizes",
            "1",
            "--min-seconds",
            "0",
            "--json",
        ],
    ];
    let run = |args: &[&str], stdout: std::process::Stdio| {
        let out = Command::new(env!("CARGO_BIN_EXE_taylormap"))
            .args(args)
            .stdout(stdout)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        (out.status, stderr)
    };
    for args in runs {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let (status, stderr) = run(args, writer.into());
        assert!(status.success(), "{args:?}: {status:?}\n{stderr}");
        if cfg!(target_os = "linux") {
            let full = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap();
            let (status, stderr) = run(args, full.into());
            assert_eq!(status.code(), Some(1), "{args:?}: {stderr}");
            assert!(
                stderr.contains("error: standard output"),
                "{args:?}: {stderr}"
            );
        }
    }
}
