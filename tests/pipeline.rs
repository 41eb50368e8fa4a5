//! The `explain` pipeline (backend thread, writer, PNG encoders) against a plain loop over the
//! same backend: relevance.npy, summary.csv and every heatmap PNG equal, in input order, for
//! sample counts that the batch size does not divide; and an error in any stage mid-run ends the
//! job with that error, no outputs and no hang.

mod common;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use ndarray::{ArrayD, ArrayViewD, Axis};
use taylormap::explain::{self, BackendChoice, ExplainConfig, SampleRow};
use taylormap::lrp::{Bounds, Composite, TargetChoice};
use taylormap::render::{self, Colormap};
use taylormap::{Backend, BatchOutput, Error, Network};

/// A random CNN on 1 x 9 x 9 inputs in [0, 1), its inputs and labels, written to a folder.
struct Case {
    dir: tempfile::TempDir,
    net: Network,
    x: ArrayD<f32>,
    labels: Vec<usize>,
}

impl Case {
    fn new(name: &str, n: usize) -> Case {
        let mut rng = common::rng(name);
        let net = common::random_cnn(&mut rng, 1, 9, 9, true);
        let x = common::random_input(&mut rng, &net, n, 0.0, 1.0);
        let classes = net.num_outputs();
        let labels: Vec<usize> = (0..n).map(|i| (i * 7 + 3) % classes).collect();
        let dir = tempfile::tempdir().unwrap();
        taylormap::model::onnx::save(&net, &dir.path().join("model.onnx")).unwrap();
        let data: Vec<f32> = x.iter().copied().collect();
        std::fs::write(
            dir.path().join("x.npy"),
            taylormap::data::npy_bytes_f32(x.shape(), &data),
        )
        .unwrap();
        let text: String = labels.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(dir.path().join("labels.txt"), text).unwrap();
        Case {
            dir,
            net,
            x,
            labels,
        }
    }

    fn n(&self) -> usize {
        self.x.shape()[0]
    }

    /// A job over the whole case, PNGs on, into `out/`.
    fn config(&self, backend: BackendChoice, batch_size: usize) -> ExplainConfig {
        ExplainConfig {
            model: self.dir.path().join("model.onnx"),
            input: self.dir.path().join("x.npy"),
            labels: Some(self.dir.path().join("labels.txt")),
            out: self.dir.path().join("out"),
            composite: Composite::DeepTaylorBounded,
            rules: vec![],
            target: TargetChoice::Predicted,
            backend,
            batch_size: Some(batch_size),
            limit: None,
            cmap: Colormap::Bwr,
            scale: 1,
            png: true,
            overlay: false,
            bounds: None,
            normalize: None,
            progress: false,
            threads: None,
        }
    }

    /// The plain loop: the same backend, run once on the whole input.
    fn plain(&self, cfg: &ExplainConfig) -> BatchOutput<f32> {
        let n = self.n();
        // The inputs lie in [0, 1), so the job takes its bounds from the unit range too.
        let bounds = Bounds {
            low: 0.0,
            high: 1.0,
        };
        let method = cfg.composite.resolve(&self.net, bounds, &[]).unwrap();
        let (mut backend, _) =
            explain::select_backend(cfg.backend, &self.net, &method, n, None).unwrap();
        let targets: Option<Vec<usize>> = match cfg.target {
            TargetChoice::Predicted => None,
            TargetChoice::Label => Some(self.labels.clone()),
            TargetChoice::Class(k) => Some(vec![k; n]),
        };
        backend.run(self.x.view(), targets.as_deref()).unwrap()
    }
}

fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    match taylormap::data::read_npy(path).unwrap() {
        (shape, taylormap::data::NpyData::F32(v)) => (shape, v),
        (shape, _) => panic!("{}: not float32 (shape {shape:?})", path.display()),
    }
}

/// Decoded RGB pixels and size of a PNG file.
fn decode_png(path: &Path) -> (u32, u32, Vec<u8>) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf)
}

/// Names in a folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// How the pipeline's relevance must compare with the plain loop's.
#[derive(Clone, Copy, Debug)]
enum Match {
    /// Bit for bit.
    Exact,
    /// Within this relative L2 error per sample (engines whose f32 sums may be blocked
    /// differently when a batch holds other samples).
    Relative(f64),
}

/// Checks every output of the job `cfg` (which returned `report`) against `plain`.
fn check_against_plain_loop(
    case: &Case,
    cfg: &ExplainConfig,
    report: &explain::ExplainReport,
    plain: &BatchOutput<f32>,
    m: Match,
) {
    let n = case.n();
    let per_sample = case.net.input_len();
    let out = &cfg.out;
    assert_eq!(report.rows.len(), n);
    assert!(report.compute_seconds > 0.0 && report.write_seconds >= 0.0);

    // relevance.npy: the model's input shape, the plain loop's relevance in input order
    let (shape, relevance) = read_npy_f32(&out.join("relevance.npy"));
    assert_eq!(shape, [n, 1, 9, 9]);
    let want = plain.relevance.as_standard_layout();
    let want = want.as_slice().unwrap();
    assert_eq!(relevance.len(), want.len());
    for (i, (got, want)) in relevance
        .chunks(per_sample)
        .zip(want.chunks(per_sample))
        .enumerate()
    {
        match m {
            Match::Exact => {
                let bits = |v: &[f32]| v.iter().map(|r| r.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(want), "sample {i}: relevance differs");
            }
            Match::Relative(tol) => {
                let err = common::rel_l2(
                    got.iter().map(|&v| f64::from(v)),
                    want.iter().map(|&v| f64::from(v)),
                );
                assert!(
                    err <= tol,
                    "sample {i}: relative L2 error {err:e} > {tol:e}"
                );
            }
        }
    }

    // summary.csv: the plain loop's rows, index 0..n in order
    let rows: Vec<SampleRow> = (0..n)
        .map(|i| SampleRow {
            index: i,
            label: Some(case.labels[i]),
            predicted: plain.predicted(i),
            target: plain.targets[i],
            stats: plain.stats(i),
        })
        .collect();
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let indices: Vec<String> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap().to_string())
        .collect();
    let in_order: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(indices, in_order, "summary.csv rows in input order");
    match m {
        Match::Exact => assert_eq!(csv, explain::summary_csv(&rows)),
        Match::Relative(_) => {
            // The statistics follow the relevance, so only the exact columns compare as text.
            for (line, row) in csv.lines().skip(1).zip(&rows) {
                let f: Vec<&str> = line.split(',').collect();
                assert_eq!(f[1], row.label.unwrap().to_string());
                assert_eq!(f[2], row.predicted.to_string());
                assert_eq!(f[3], row.target.to_string());
                for (k, want) in [(4, row.stats.score), (5, row.stats.relevance_sum)] {
                    let got: f64 = f[k].parse().unwrap();
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1e-3),
                        "column {k}: {got} vs {want}"
                    );
                }
            }
        }
    }
    for (got, row) in report.rows.iter().zip(&rows) {
        assert_eq!(
            (got.index, got.label, got.predicted, got.target),
            (row.index, row.label, row.predicted, row.target)
        );
    }

    // heatmaps: one per sample, each the plain loop's relevance rendered the same way
    let heatmaps = out.join("heatmaps");
    let files: Vec<String> = (0..n).map(|i| format!("{i:05}.png")).collect();
    assert_eq!(names(&heatmaps), files);
    let x = case.x.as_standard_layout();
    let x = x.as_slice().unwrap();
    for i in 0..n {
        let rel: Vec<f64> = want[i * per_sample..(i + 1) * per_sample]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let rgb = if cfg.overlay {
            let input = &x[i * per_sample..(i + 1) * per_sample];
            render::overlay_rgb(input, &rel, 9, 9, 1, (0.0, 1.0), cfg.cmap, cfg.scale)
        } else {
            render::heatmap_rgb(&rel, 9, 9, 1, cfg.cmap, cfg.scale)
        };
        let side = (9 * cfg.scale) as u32;
        let (w, h, pixels) = decode_png(&heatmaps.join(&files[i]));
        assert_eq!((w, h), (side, side), "sample {i}");
        match m {
            Match::Exact => assert!(pixels == rgb, "sample {i}: heatmap pixels differ"),
            // Relevance within f32 rounding may still tip a colour by one level.
            Match::Relative(_) => {
                let worst = pixels
                    .iter()
                    .zip(&rgb)
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap();
                assert!(worst <= 1, "sample {i}: heatmap pixels differ by {worst}");
            }
        }
    }

    // nothing else: no staging folder, no temporary files
    assert_eq!(names(out), OUTPUTS);
}

/// Both CPU backends, through the pipeline and through a plain loop.
fn check_both_cpu_backends(name: &str, n: usize, batch_size: usize, edit: fn(&mut ExplainConfig)) {
    let case = Case::new(name, n);
    for (backend, m) in [
        // The f64 reference treats every sample on its own: exactly the same bits.
        (BackendChoice::Reference, Match::Exact),
        // The fast engine splits a batch into chunks of samples for its threads, so which
        // samples share a chunk differs between the pipeline's batches and the plain loop's
        // single run. Its f32 sums do not depend on that (checked over many seeds), so it too
        // must match bit for bit. Should a change to its GEMM blocking make them depend on the
        // chunk's other samples, compare it at Match::Relative(1e-6) instead and keep Exact
        // for the reference.
        (BackendChoice::Cpu, Match::Exact),
    ] {
        let mut cfg = case.config(backend, batch_size);
        edit(&mut cfg);
        let plain = case.plain(&cfg);
        let report = explain::run(&cfg).unwrap();
        check_against_plain_loop(&case, &cfg, &report, &plain, m);
    }
}

#[test]
fn batches_that_do_not_divide_the_input_give_the_plain_loops_outputs() {
    // 37 samples in batches of 8: four full batches and a last one of 5
    check_both_cpu_backends("pipeline_37_by_8", 37, 8, |_| {});
}

#[test]
fn a_batch_larger_than_the_input_gives_the_plain_loops_outputs() {
    // 5 samples, batch 16: one partial batch; overlays, upscaled, explaining the labels
    check_both_cpu_backends("pipeline_5_by_16", 5, 16, |cfg| {
        cfg.overlay = true;
        cfg.scale = 2;
        cfg.target = TargetChoice::Label;
    });
}

#[test]
fn batches_of_one_give_the_plain_loops_outputs() {
    // every sample its own batch: the deepest pipeline, more PNG jobs than batches in flight
    check_both_cpu_backends("pipeline_batch_1", 70, 1, |cfg| {
        cfg.cmap = Colormap::ColdHot;
        cfg.target = TargetChoice::Class(1);
        cfg.composite = Composite::EpsilonPlus;
    });
}

#[test]
fn the_gpu_backend_on_its_thread_gives_the_plain_loops_outputs() {
    let Some(ctx) = common::gpu::context() else {
        return;
    };
    let case = Case::new("pipeline_gpu", 37);
    let cfg = case.config(BackendChoice::Gpu, 8);
    let method = cfg
        .composite
        .resolve(
            &case.net,
            Bounds {
                low: 0.0,
                high: 1.0,
            },
            &[],
        )
        .unwrap();
    let mut whole = taylormap::gpu::GpuBackend::new(&ctx, &case.net, &method, case.n()).unwrap();
    let plain = whole.run(case.x.view(), None).unwrap();
    let report = explain::run_with(&cfg, |net, method, batch| {
        let backend = taylormap::gpu::GpuBackend::new(&ctx, net, method, batch)?;
        Ok((Box::new(backend), vec!["backend: gpu".into()]))
    })
    .unwrap();
    assert_eq!(report.backend, "gpu");
    // The GPU computes each sample in its own invocations; the batch composition changes only
    // which samples share a dispatch, so the results agree to f32 rounding at worst.
    check_against_plain_loop(&case, &cfg, &report, &plain, Match::Relative(1e-6));
}

/// A backend that hands its batches to `inner`, after setting one value of sample `poison`
/// (counted over the whole job) to NaN: the backend finds it in a later batch.
struct Poisoned {
    inner: Box<dyn Backend>,
    poison: usize,
    seen: usize,
}

impl Backend for Poisoned {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn adapter(&self) -> String {
        self.inner.adapter()
    }
    fn run(
        &mut self,
        x: ArrayViewD<'_, f32>,
        targets: Option<&[usize]>,
    ) -> taylormap::Result<BatchOutput<f32>> {
        let n = x.shape()[0];
        let start = self.seen;
        self.seen += n;
        if (start..start + n).contains(&self.poison) {
            let mut x = x.to_owned();
            let mut sample = x.index_axis_mut(Axis(0), self.poison - start);
            *sample.iter_mut().nth(40).unwrap() = f32::NAN;
            return self.inner.run(x.view(), targets);
        }
        self.inner.run(x, targets)
    }
}

/// Runs `job` on a thread; fails the test when it has not returned within a minute.
fn without_hanging<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(job());
    });
    result
        .recv_timeout(Duration::from_secs(60))
        .expect("the job hung (or panicked)")
}

/// Runs `cfg` with the CPU engine poisoned at sample `poison`.
fn run_poisoned(cfg: ExplainConfig, poison: usize) -> taylormap::Result<explain::ExplainReport> {
    without_hanging(move || {
        explain::run_with(&cfg, |net, method, batch| {
            let (inner, notes) =
                explain::select_backend(BackendChoice::Cpu, net, method, batch, None)?;
            let backend = Poisoned {
                inner,
                poison,
                seen: 0,
            };
            Ok((Box::new(backend) as Box<dyn Backend>, notes))
        })
    })
}

#[test]
fn a_backend_error_mid_run_ends_the_job_with_that_error_and_no_outputs() {
    // Many small batches, so that the backend thread runs well ahead of the writer and the
    // encoders, and the queues are full when the error comes.
    let case = Case::new("pipeline_backend_error", 303);
    for poison in [150, 302] {
        let cfg = case.config(BackendChoice::Cpu, 4);
        let _ = std::fs::remove_dir_all(&cfg.out);
        let err = run_poisoned(cfg.clone(), poison).unwrap_err();
        let batch = poison / 4 * 4;
        let names_it = format!("batch of samples {batch}..{}", (batch + 4).min(303));
        match &err {
            Error::NonFinite { what } => assert!(what.contains(&names_it), "{what}"),
            e => panic!("expected a NonFinite error, got {e}"),
        }
        // the output folder is empty: no relevance.npy, heatmaps, staging or temporary files
        assert_eq!(names(&cfg.out), Vec::<String>::new(), "poison {poison}");
    }

    // Into a folder holding a complete earlier run, a failing run changes nothing.
    let cfg = case.config(BackendChoice::Cpu, 4);
    assert_a_failed_run_changes_nothing(&cfg, 303, || run_poisoned(cfg.clone(), 77));
}

/// The names in the output folder of a complete run with PNGs.
const OUTPUTS: [&str; 5] = [
    "grid.png",
    "heatmaps",
    "relevance.npy",
    "run.json",
    "summary.csv",
];

/// Runs `cfg` (of `n` samples) to completion, then `failing`, which must fail, into the same
/// folder: the folder still holds the complete run, unchanged.
fn assert_a_failed_run_changes_nothing(
    cfg: &ExplainConfig,
    n: usize,
    failing: impl FnOnce() -> taylormap::Result<explain::ExplainReport>,
) {
    explain::run(cfg).unwrap();
    let last = format!("heatmaps/{:05}.png", n - 1);
    let before: Vec<(String, Vec<u8>)> = ["relevance.npy", "summary.csv", &last]
        .iter()
        .map(|f| (f.to_string(), std::fs::read(cfg.out.join(f)).unwrap()))
        .collect();
    failing().unwrap_err();
    assert_eq!(names(&cfg.out), OUTPUTS);
    assert_eq!(names(&cfg.out.join("heatmaps")).len(), n);
    for (file, bytes) in before {
        assert!(
            std::fs::read(cfg.out.join(&file)).unwrap() == bytes,
            "{file} changed"
        );
    }
}

/// The staging folder `explain` writes heatmaps into before renaming it (its name is an
/// implementation detail that this test relies on to make an encoder fail).
fn staging(out: &Path) -> PathBuf {
    out.join(format!(".heatmaps.partial-{}", std::process::id()))
}

#[test]
fn an_encoder_error_mid_run_ends_the_job_with_that_error_and_no_outputs() {
    let case = Case::new("pipeline_encoder_error", 303);
    let cfg = case.config(BackendChoice::Cpu, 4);
    // A folder where heatmap 00200.png should go: writing that file fails.
    let blocker = staging(&cfg.out).join("00200.png");
    std::fs::create_dir_all(&blocker).unwrap();
    let job = cfg.clone();
    let err = without_hanging(move || explain::run(&job)).unwrap_err();
    match &err {
        Error::Io { path, .. } => assert!(path.ends_with("00200.png"), "{err}"),
        e => panic!("expected an Io error naming 00200.png, got {e}"),
    }
    assert_eq!(names(&cfg.out), Vec::<String>::new());
}

/// Waits until `dir` holds at least `count` entries; fails the test after a minute.
fn wait_for_files(dir: &Path, count: usize) {
    let start = std::time::Instant::now();
    while std::fs::read_dir(dir).map_or(0, |d| d.count()) < count {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} never held {count} files",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn heatmap_files_made_while_the_backend_starts_are_filled_in_order() {
    // A backend that starts slowly, as a GPU does: by the time it is ready, every heatmap
    // file exists, empty, and the encoders fill the files made for them.
    let case = Case::new("pipeline_slow_start", 41);
    let cfg = case.config(BackendChoice::Cpu, 8);
    let plain = case.plain(&cfg);
    let job = cfg.clone();
    let report = without_hanging(move || {
        explain::run_with(&job, |net, method, batch| {
            let dir = staging(&job.out);
            wait_for_files(&dir, 41);
            let sizes: Vec<u64> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .collect();
            assert_eq!(sizes, vec![0; 41], "made ahead, not written yet");
            explain::select_backend(BackendChoice::Cpu, net, method, batch, None)
        })
    })
    .unwrap();
    check_against_plain_loop(&case, &cfg, &report, &plain, Match::Exact);
}

#[test]
fn a_backend_that_fails_to_start_leaves_no_outputs() {
    let case = Case::new("pipeline_failed_start", 300);
    let cfg = case.config(BackendChoice::Cpu, 8);
    let fail_once_files_exist = |job: ExplainConfig| {
        without_hanging(move || {
            explain::run_with(&job, |_, _, _| {
                wait_for_files(&staging(&job.out), 10);
                Err(Error::usage("--backend", "no adapter (test)"))
            })
        })
    };
    let err = fail_once_files_exist(cfg.clone()).unwrap_err();
    assert!(err.to_string().contains("no adapter (test)"), "{err}");
    assert!(!cfg.out.exists(), "the output folder it made is gone");

    // Into a folder holding a complete earlier run, it changes nothing.
    assert_a_failed_run_changes_nothing(&cfg, 300, || fail_once_files_exist(cfg.clone()));
}
