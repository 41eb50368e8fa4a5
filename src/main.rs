//! The `taylormap` command line: parses flags, calls the library, maps errors to exit codes
//! (0 success, 1 runtime error, 2 bad usage or bad input).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ndarray::ArrayD;
use taylormap::explain::{self, BackendChoice, ExplainConfig};
use taylormap::lrp::{Bounds, Composite, TargetChoice};
use taylormap::render::Colormap;

/// `print!` without its panic when standard output fails: a reader that went away (`taylormap
/// bench | head -3`) ends the process quietly with status 0, as ripgrep does; any other failure
/// ends it with an error naming standard output (status 1).
macro_rules! out {
    ($($arg:tt)*) => {
        emit(format_args!($($arg)*))
    };
}

/// `println!` the same way as [`out!`].
macro_rules! outln {
    ($($arg:tt)*) => {
        emit(format_args!("{}\n", format_args!($($arg)*)))
    };
}

fn emit(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().write_fmt(text) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: standard output: {e}");
        std::process::exit(1);
    }
}

#[derive(Parser)]
#[command(
    name = "taylormap",
    version,
    about = "Deep Taylor Decomposition and LRP heatmaps, on the GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Explain every input sample and write heatmaps, relevance.npy, summary.csv and run.json.
    Explain(ExplainArgs),
    /// Train a small DTD-ready network on the CPU and write it as ONNX.
    Train(TrainArgs),
    /// Measure relevance throughput per backend and batch size.
    Bench(BenchArgs),
    /// Score heatmaps over an input set: conservation, AOPC (perturbation) or target share, per composite.
    Eval(EvalArgs),
    /// Print a model's layers, shapes and parameter counts.
    Inspect {
        /// The ONNX model.
        model: PathBuf,
    },
    /// List every GPU adapter wgpu can see.
    Adapters,
}

#[derive(Args)]
struct ExplainArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Output folder.
    #[arg(long, default_value = "taylormap-out")]
    out: PathBuf,
    /// Rules for all Dense/Conv2d layers: deep-taylor, deep-taylor-bounded, epsilon-plus,
    /// epsilon-gamma-box, epsilon-alpha2-beta1, lrp-zero, sensitivity, gradient-x-input.
    #[arg(long, default_value = "deep-taylor")]
    composite: String,
    #[command(flatten)]
    run: RunArgs,
    /// Heatmap colormap: bwr, coldnhot, heat, gray.
    #[arg(long, default_value = "bwr")]
    cmap: String,
    /// Enlarge heatmaps by this integer factor.
    #[arg(long, default_value_t = 1)]
    scale: usize,
    /// Do not write PNG heatmaps (nor grid.png).
    #[arg(long)]
    no_png: bool,
    /// Blend each heatmap over its input image.
    #[arg(long)]
    overlay: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// The model and its inputs, as `explain` and `eval` take them.
#[derive(Args)]
struct SourceArgs {
    /// ONNX model (default: the bundled MNIST CNN).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Inputs: IDX (optionally gzipped), NPY, a folder of PNGs (or one PNG), or CSV for a
    /// tabular model (default: the bundled MNIST test set).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Labels (IDX or NPY); default: the IDX labels file next to an IDX input.
    #[arg(long)]
    labels: Option<PathBuf>,
}

/// What decides a heatmap and where it runs: the flags `explain` and `eval` share.
#[derive(Args)]
struct RunArgs {
    /// Per-layer override SELECTOR=RULE (SELECTOR: index, first, last, dense, conv, *); for eval,
    /// of every composite. Repeatable.
    #[arg(long = "rule")]
    rules: Vec<String>,
    /// predicted, label, or a class index.
    #[arg(long, default_value = "predicted")]
    target: String,
    /// auto (hardware GPU if present, else the CPU engine), gpu (any adapter, software
    /// included), cpu (the f32 CPU engine on every core) or reference (the f64 CPU reference).
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Samples per batch (default: 1024 on the GPU, 256 on the CPU).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Threads of the CPU engine (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Use only the first N samples.
    #[arg(long)]
    limit: Option<usize>,
    /// Input bounds L,H for zbox, and for eval's perturbation (default: the lowest and highest
    /// value an input can take).
    #[arg(long)]
    bounds: Option<String>,
    /// Normalise inputs with (x - MEAN) / STD after scaling: MEAN,STD.
    #[arg(long)]
    normalize: Option<String>,
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// conservation (shares of conservative, positive, consistent heatmaps), aopc (area over the
    /// perturbation curve, most relevant regions first) or target-share (share of positive
    /// relevance inside --mask). Repeat, or separate with commas.
    #[arg(long = "metric", value_delimiter = ',', required = true)]
    metrics: Vec<String>,
    /// Composites to compare, one row each (default: deep-taylor). Repeat, or separate with
    /// commas.
    #[arg(long = "composite", value_delimiter = ',')]
    composites: Vec<String>,
    #[command(flatten)]
    run: RunArgs,
    /// aopc: side of the square image regions perturbed one per step (default: min(H, W) / 14,
    /// 2 on MNIST; vector inputs: one feature per region).
    #[arg(long)]
    region: Option<usize>,
    /// aopc: perturbation steps L (at most the number of regions).
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// aopc: what a perturbed value becomes: uniform (random in the input bounds, as Samek et al.
    /// 2017) or low (the lower bound: black pixels).
    #[arg(long, default_value = "uniform")]
    perturbation: String,
    /// aopc: seed of the perturbation values and of the random-order baseline.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// target-share: the target region, one value per input value (NPY, IDX or a PNG folder;
    /// non-zero = inside; one channel serves every channel). Default: the input values above the
    /// lower bound (the strokes of a digit).
    #[arg(long)]
    mask: Option<PathBuf>,
    /// Also write every sample's figures, one row per composite and sample, to this CSV file.
    #[arg(long)]
    per_sample: Option<PathBuf>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// mnist-cnn, mnist-mlp, detection-pooling or tabular-mlp.
    #[arg(long)]
    arch: String,
    /// A folder with train-images/train-labels (and optionally t10k-images/t10k-labels) IDX
    /// files, plain or gzipped; one images file (IDX or NPY) whose labels sit beside it; or a
    /// CSV file with a header row (tabular-mlp; see --columns and --label).
    #[arg(long)]
    data: PathBuf,
    /// CSV: the feature columns, NAME, NAME:num or NAME:cat (default: every column but the
    /// label; kinds inferred). Numeric columns are standardised, categorical ones one-hot.
    #[arg(long, value_delimiter = ',')]
    columns: Vec<String>,
    /// CSV: the label column (class indices, or text classes).
    #[arg(long)]
    label: Option<String>,
    /// Hold out this share of the training samples (seeded) and report accuracy on them, when
    /// the data has no test set of its own.
    #[arg(long)]
    validation_split: Option<f64>,
    /// Where to write the ONNX model.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Keep every bias <= 0 after each step (projected gradient): DTD's root point exists and
    /// heatmaps are conservative and positive.
    #[arg(long)]
    nonpositive_bias: bool,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Adam's step size (default: 0.001; 0.01 for tabular-mlp, whose small data sets give few
    /// steps per epoch; 0.0003 for detection-pooling, whose small initial weights the larger
    /// step could drive to dead ReLUs).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Learning-rate factor applied after each epoch.
    #[arg(long, default_value_t = 0.8)]
    lr_decay: f64,
    /// Hidden width (architecture default when absent); a width whose network would not fit
    /// in memory to train (about 24 bytes a parameter) is refused.
    #[arg(long)]
    hidden: Option<usize>,
    /// detection-pooling: the class to detect.
    #[arg(long, default_value_t = 0)]
    detect_class: usize,
    /// Train on the first N samples only.
    #[arg(long)]
    limit: Option<usize>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Finds `stem` (e.g. "train-images") with the idx3 suffix in the usual spellings.
fn find_idx(dir: &std::path::Path, stem: &str, idx: &str) -> Option<PathBuf> {
    [".", "-"]
        .iter()
        .flat_map(|sep| ["", ".gz"].map(move |gz| format!("{stem}{sep}{idx}-ubyte{gz}")))
        .map(|name| dir.join(name))
        .find(|p| p.exists())
}

fn train(a: TrainArgs) -> taylormap::Result<()> {
    use taylormap::train::{self, Arch, Progress, TrainConfig};
    let arch: Arch = a.arch.parse()?;
    let mut cfg = TrainConfig::new(arch);
    cfg.epochs = a.epochs;
    cfg.seed = a.seed;
    cfg.nonpositive_bias = a.nonpositive_bias;
    cfg.batch_size = a.batch_size;
    if let Some(lr) = a.learning_rate {
        cfg.learning_rate = lr;
    }
    cfg.lr_decay = a.lr_decay;
    cfg.hidden = a.hidden;
    cfg.detect_class = a.detect_class;
    if a.limit == Some(0) {
        return Err(taylormap::Error::usage("--limit", "must be at least 1"));
    }
    if let Some(f) = a.validation_split {
        if !(f > 0.0 && f < 1.0) {
            return Err(taylormap::Error::usage(
                "--validation-split",
                format!("expected a share between 0 and 1 (exclusive), got {f}"),
            ));
        }
    }
    // Before training, which can take minutes: the model must have somewhere to go.
    let folder = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    if a.out.is_dir() || !folder.is_dir() {
        return Err(taylormap::Error::usage(
            "--out",
            format!(
                "{}: expected a file path in an existing folder",
                a.out.display()
            ),
        ));
    }
    let is_csv = !a.data.is_dir()
        && a.data
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let (train_x, labels, test_set, tabular) = if is_csv {
        if arch != Arch::TabularMlp {
            return Err(taylormap::Error::usage(
                "--arch",
                format!("CSV data trains tabular-mlp, not {arch}"),
            ));
        }
        let ((x, labels, test), tab) = tabular_data(&a)?;
        cfg.num_classes = tab.num_classes();
        (x, labels, test, Some(tab))
    } else {
        if !a.columns.is_empty() || a.label.is_some() {
            return Err(taylormap::Error::usage(
                if a.label.is_some() {
                    "--label"
                } else {
                    "--columns"
                },
                "only applies to CSV data (--data FILE.csv)",
            ));
        }
        let (x, labels, test) = array_data(&a)?;
        (x, labels, test, None)
    };
    let test = test_set.as_ref().map(|(x, l)| (x.view(), l.as_slice()));
    let bar = if a.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(0)
    };
    // Where standard error is not a terminal (a log file, nohup), the bar draws nothing, and
    // neither would its println: the start and epoch lines then go to standard error plainly.
    let plain = !a.quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let say = |line: String| {
        if plain {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "epoch {prefix} [{bar:30}] {pos}/{len} {msg} ({eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let (net, reports) = train::train(&cfg, train_x.view(), &labels, test, &mut |p| match p {
        Progress::Start {
            epochs,
            batches_per_epoch,
            samples,
            parameters,
        } => {
            say(format!(
                "{}: {parameters} parameters, {samples} samples, {epochs} epochs",
                cfg.arch
            ));
            bar.set_length(batches_per_epoch as u64);
        }
        Progress::Batch {
            epoch,
            batch,
            loss,
            accuracy,
            ..
        } => {
            // both are 1-based already
            bar.set_prefix(format!("{epoch}/{}", cfg.epochs));
            bar.set_position(batch as u64);
            bar.set_message(format!("loss {loss:.4} acc {:.2}%", 100.0 * accuracy));
        }
        Progress::Evaluating { .. } => bar.set_message("evaluating on the test set"),
        Progress::Epoch(r) => say(format!(
            "epoch {:>3}: loss {:.4}, train accuracy {:.2}%{}, {:.1} s",
            r.epoch,
            r.loss,
            100.0 * r.accuracy,
            r.test_accuracy
                .map(|t| format!(", test accuracy {:.2}%", 100.0 * t))
                .unwrap_or_default(),
            r.seconds
        )),
    })?;
    bar.finish_and_clear();
    match &tabular {
        Some(tab) => taylormap::model::onnx::save_with_metadata(
            &net,
            &a.out,
            &[(taylormap::data::csv::METADATA_KEY, &tab.to_json())],
        )?,
        None => taylormap::model::onnx::save(&net, &a.out)?,
    }
    let last = reports.last();
    outln!(
        "wrote {} ({} parameters{})",
        a.out.display(),
        net.param_count(),
        last.and_then(|r| r.test_accuracy)
            .map(|t| format!(", test accuracy {:.2}%", 100.0 * t))
            .unwrap_or_default()
    );
    Ok(())
}

/// Training samples, labels and an optional test set as arrays.
type TrainData = (ArrayD<f32>, Vec<usize>, Option<(ArrayD<f32>, Vec<usize>)>);

/// IDX or NPY training data (and the t10k test set of an IDX folder, or a held-out share).
fn array_data(a: &TrainArgs) -> taylormap::Result<TrainData> {
    let (train_path, test_path) = if a.data.is_dir() {
        let train = find_idx(&a.data, "train-images", "idx3").ok_or_else(|| {
            taylormap::Error::input(
                &a.data,
                "holds no train-images.idx3-ubyte[.gz] (or train-images-idx3-ubyte[.gz])",
            )
        })?;
        (train, find_idx(&a.data, "t10k-images", "idx3"))
    } else {
        (a.data.clone(), None)
    };
    let mut trainset = taylormap::data::load(&train_path, None, None)?;
    if let Some(n) = a.limit {
        trainset.limit(n);
    }
    let labels = trainset.labels.clone().ok_or_else(|| {
        taylormap::Error::input(
            &train_path,
            "has no labels file beside it (train-labels...)",
        )
    })?;
    if let Some(p) = &test_path {
        if a.validation_split.is_some() {
            return Err(taylormap::Error::usage(
                "--validation-split",
                format!(
                    "{} has its own test set ({}); leave out --validation-split",
                    a.data.display(),
                    p.display()
                ),
            ));
        }
        let testset = taylormap::data::load(p, None, None)?;
        let test = testset.labels.map(|l| (testset.x, l));
        return Ok((trainset.x, labels, test));
    }
    match a.validation_split {
        Some(f) => {
            let (keep, held) = holdout(labels.len(), f, a.seed, &train_path)?;
            let pick = |idx: &[usize]| {
                (
                    trainset.x.select(ndarray::Axis(0), idx),
                    idx.iter().map(|&i| labels[i]).collect::<Vec<_>>(),
                )
            };
            let (x, l) = pick(&keep);
            Ok((x, l, Some(pick(&held))))
        }
        None => Ok((trainset.x, labels, None)),
    }
}

/// CSV training data: fits the preprocessing on the training rows (after any held-out share is
/// set aside) and applies it.
fn tabular_data(a: &TrainArgs) -> taylormap::Result<(TrainData, taylormap::data::Tabular)> {
    use taylormap::data::csv::{ColumnKind, ColumnSpec};
    use taylormap::data::{CsvTable, Tabular};
    let label = a.label.as_deref().ok_or_else(|| {
        taylormap::Error::usage(
            "--label",
            "training on a CSV needs the label column, e.g. --label Survived",
        )
    })?;
    let columns: Vec<ColumnSpec> = a
        .columns
        .iter()
        .map(|c| c.parse())
        .collect::<taylormap::Result<_>>()?;
    let mut table = CsvTable::read(&a.data)?;
    if let Some(n) = a.limit {
        table.truncate(n);
    }
    let (fit_rows, held) = match a.validation_split {
        Some(f) => {
            let (keep, held) = holdout(table.len(), f, a.seed, &a.data)?;
            (table.select(&keep), Some(table.select(&held)))
        }
        None => (table, None),
    };
    let tab = Tabular::fit(&fit_rows, &columns, Some(label))?;
    for c in &tab.columns {
        if let ColumnKind::Categorical { categories } = &c.kind {
            if categories.len() > 20 && 2 * categories.len() > fit_rows.len() {
                eprintln!(
                    "note: column '{}' has {} categories in {} rows (an identifier?); \
                     leave it out with --columns",
                    c.name,
                    categories.len(),
                    fit_rows.len()
                );
            }
        }
    }
    let names = tab.feature_names();
    const SHOWN: usize = 24;
    outln!(
        "{}: {}{}",
        tab.counts(),
        names[..names.len().min(SHOWN)].join(", "),
        if names.len() > SHOWN {
            format!(", ... ({} more)", names.len() - SHOWN)
        } else {
            String::new()
        }
    );
    let dataset = |t: &CsvTable| -> taylormap::Result<(ArrayD<f32>, Vec<usize>)> {
        let (x, l) = tab.transform(t)?;
        let l = l.ok_or_else(|| {
            taylormap::Error::input(&a.data, format!("has no label column '{label}'"))
        })?;
        Ok((x.into_dyn(), l))
    };
    let (x, labels) = dataset(&fit_rows)?;
    let test = held.as_ref().map(dataset).transpose()?;
    Ok(((x, labels, test), tab))
}

/// Splits `0..n` into training and held-out indices (each in ascending order): a seeded shuffle,
/// then `round(n * fraction)` samples (at least one, and at least one left) held out.
fn holdout(
    n: usize,
    fraction: f64,
    seed: u64,
    path: &std::path::Path,
) -> taylormap::Result<(Vec<usize>, Vec<usize>)> {
    if n < 2 {
        return Err(taylormap::Error::input(
            path,
            format!("holds {n} sample(s); --validation-split needs at least 2"),
        ));
    }
    let held_n = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    // SplitMix64, seeded apart from the trainer's streams.
    let mut state = seed ^ 0x7461_796C_6F72_6D61;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut held = order[..held_n].to_vec();
    let mut keep = order[held_n..].to_vec();
    held.sort_unstable();
    keep.sort_unstable();
    Ok((keep, held))
}

#[derive(Args)]
struct BenchArgs {
    /// ONNX model (default: the bundled MNIST CNN).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Inputs, cycled to fill the batches (default: the bundled MNIST test set).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Composite to measure.
    #[arg(long, default_value = "deep-taylor")]
    composite: String,
    /// auto, gpu, cpu or reference; repeatable; default: cpu, reference, and gpu when an
    /// adapter exists.
    #[arg(long = "backend")]
    backends: Vec<String>,
    /// Batch sizes to measure.
    #[arg(long, default_value = "1,64,1024", value_delimiter = ',')]
    batch_sizes: Vec<usize>,
    /// Minimum measured time per (backend, batch size), in seconds.
    #[arg(long, default_value_t = 2.0)]
    min_seconds: f64,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Threads of the CPU engine (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Split each GPU batch of at least 512 samples into up to K submissions of at least 256
    /// (default 1: the streamed batches overlap with each other), to tune how upload, GPU work
    /// and read-back overlap.
    #[arg(long)]
    submissions: Option<usize>,
    /// Upload f32 values to the GPU even for 8-bit inputs (by default their bytes go up, a
    /// quarter of the traffic), to measure what the byte upload gains.
    #[arg(long)]
    f32_upload: bool,
    /// Also time every GPU dispatch (layer and kernel), each in its own compute pass (the pass
    /// boundaries cost some throughput), to see which kernel the GPU time goes to
    #[arg(long)]
    kernel_times: bool,
}

fn bench(a: BenchArgs) -> taylormap::Result<()> {
    let backends = if a.backends.is_empty() {
        let mut b = vec![BackendChoice::Cpu, BackendChoice::Reference];
        if !taylormap::gpu::adapters().is_empty() {
            b.push(BackendChoice::Gpu);
        }
        b
    } else {
        a.backends
            .iter()
            .map(|b| b.parse::<BackendChoice>())
            .collect::<taylormap::Result<_>>()?
    };
    if a.kernel_times
        && !backends
            .iter()
            .any(|b| matches!(b, BackendChoice::Gpu | BackendChoice::Auto))
    {
        return Err(taylormap::Error::usage(
            "--kernel-times",
            "times the dispatches of the GPU backend; add --backend gpu",
        ));
    }
    if a.min_seconds.is_nan() || a.min_seconds < 0.0 {
        return Err(taylormap::Error::usage("--min-seconds", "must be >= 0"));
    }
    let cfg = taylormap::bench::BenchConfig {
        model: or_bundled(a.model, explain::DEFAULT_MODEL),
        input: or_bundled(a.input, explain::DEFAULT_INPUT),
        composite: a.composite.parse::<Composite>()?,
        backends,
        batch_sizes: a.batch_sizes,
        min_seconds: a.min_seconds,
        f32_upload: a.f32_upload,
        kernel_times: a.kernel_times,
        threads: threads_flag(a.threads)?,
        submissions: match a.submissions {
            Some(0) => {
                return Err(taylormap::Error::usage(
                    "--submissions",
                    "must be at least 1",
                ))
            }
            k => k,
        },
    };
    // The table's header comes with its first row, so that a run refused before any
    // measurement (a bad model or input) prints only its error.
    let mut header = !a.json;
    taylormap::bench::run(&cfg, &mut |r| {
        if a.json {
            outln!("{}", serde_json::to_string(r).expect("json"));
        } else {
            if std::mem::take(&mut header) {
                outln!(
                    "{:<9} {:>6} {:>9} {:>8} {:>11}  adapter",
                    "backend",
                    "batch",
                    "samples",
                    "seconds",
                    "heatmaps/s"
                );
            }
            // the adapter last: its name has any length
            outln!(
                "{:<9} {:>6} {:>9} {:>8.3} {:>11.0}  {}",
                r.backend,
                r.batch_size,
                r.samples,
                r.seconds,
                r.heatmaps_per_second,
                r.adapter
            );
            let flops = (r.forward_flops_per_sample + r.relevance_flops_per_sample) as f64;
            outln!(
                "          {:.2} MFLOP per heatmap (forward {:.2}, relevance {:.2}): {:.1} GFLOP/s",
                flops * 1e-6,
                r.forward_flops_per_sample as f64 * 1e-6,
                r.relevance_flops_per_sample as f64 * 1e-6,
                flops * r.heatmaps_per_second * 1e-9
            );
            let memory = r.memory_bytes_per_sample as f64;
            outln!(
                "          {:.1} kB of memory traffic per heatmap at the least: {:.1} GB/s \
                 ({:.1} FLOP per byte)",
                memory * 1e-3,
                memory * r.heatmaps_per_second * 1e-9,
                flops / memory.max(1.0)
            );
            if let Some(st) = &r.stage_seconds {
                outln!(
                    "          GPU ms per batch: upload {:.3}, forward {:.3}, relevance {:.3}, \
                     readback {:.3}",
                    st.upload * 1e3,
                    st.forward * 1e3,
                    st.relevance * 1e3,
                    st.readback * 1e3
                );
            }
            if let Some(ks) = &r.kernel_seconds {
                let total: f64 = ks.iter().map(|k| k.seconds).sum();
                for k in ks {
                    outln!(
                        "          {:<48} {:>9.3} ms {:>5.1}%",
                        k.kernel,
                        k.seconds * 1e3,
                        100.0 * k.seconds / total.max(f64::MIN_POSITIVE)
                    );
                }
            }
            if let Some(h) = &r.host_seconds {
                outln!(
                    "          host ms per batch: check {:.3}, submit {:.3}, wait {:.3}, copy {:.3} \
                     (wall {:.3})",
                    h.check * 1e3,
                    h.submit * 1e3,
                    h.wait * 1e3,
                    h.copy * 1e3,
                    r.seconds * 1e3 * r.batch_size as f64 / r.samples as f64
                );
            }
        }
    })?;
    Ok(())
}

/// `--threads N`: at least 1.
fn threads_flag(threads: Option<usize>) -> taylormap::Result<Option<usize>> {
    match threads {
        Some(0) => Err(taylormap::Error::usage("--threads", "must be at least 1")),
        t => Ok(t),
    }
}

/// The path given, or the bundled asset.
fn or_bundled(path: Option<PathBuf>, asset: &str) -> PathBuf {
    path.unwrap_or_else(|| explain::asset_path(asset))
}

fn parse_pair(flag: &str, text: &str) -> taylormap::Result<(f64, f64)> {
    let bad = || {
        taylormap::Error::usage(
            flag,
            format!("expected two finite numbers A,B within float32's range, got '{text}'"),
        )
    };
    let (a, b) = text.split_once(',').ok_or_else(bad)?;
    let a: f64 = a.trim().parse().map_err(|_| bad())?;
    let b: f64 = b.trim().parse().map_err(|_| bad())?;
    // the f32 engines take them as f32: 1e40 would be infinite there
    if !(a as f32).is_finite() || !(b as f32).is_finite() {
        return Err(bad());
    }
    Ok((a, b))
}

/// `--bounds L,H`.
fn bounds_flag(text: Option<&str>) -> taylormap::Result<Option<Bounds>> {
    let Some(t) = text else { return Ok(None) };
    let (low, high) = parse_pair("--bounds", t)?;
    if low > high {
        return Err(taylormap::Error::usage(
            "--bounds",
            format!("needs L <= H, got '{t}'"),
        ));
    }
    Ok(Some(Bounds { low, high }))
}

/// `--normalize MEAN,STD`.
fn normalize_flag(text: Option<&str>) -> taylormap::Result<Option<(f64, f64)>> {
    let Some(t) = text else { return Ok(None) };
    let (m, s) = parse_pair("--normalize", t)?;
    if s == 0.0 {
        return Err(taylormap::Error::usage("--normalize", "STD must not be 0"));
    }
    Ok(Some((m, s)))
}

fn explain_config(a: ExplainArgs) -> taylormap::Result<ExplainConfig> {
    let bounds = bounds_flag(a.run.bounds.as_deref())?;
    let normalize = normalize_flag(a.run.normalize.as_deref())?;
    Ok(ExplainConfig {
        model: or_bundled(a.source.model, explain::DEFAULT_MODEL),
        input: or_bundled(a.source.input, explain::DEFAULT_INPUT),
        labels: a.source.labels,
        out: a.out,
        composite: a.composite.parse::<Composite>()?,
        rules: a.run.rules,
        target: a.run.target.parse::<TargetChoice>()?,
        backend: a.run.backend.parse::<BackendChoice>()?,
        batch_size: a.run.batch_size,
        limit: a.run.limit,
        cmap: a.cmap.parse::<Colormap>()?,
        scale: a.scale,
        png: !a.no_png,
        overlay: a.overlay,
        bounds,
        normalize,
        progress: !a.quiet,
        threads: threads_flag(a.run.threads)?,
    })
}

/// One line of `eval`'s table: metric, composite, samples, the headline value and the details;
/// with `--rule` (`overridden`), the rules themselves.
fn eval_table_row(r: &taylormap::eval::EvalRow, overridden: bool) -> String {
    use taylormap::eval::Detail;
    let (value, detail) = match &r.detail {
        Detail::Conservation(c) => (
            format!("{:.1}%", 100.0 * r.value),
            format!(
                "consistent; conservative {:.1}%, positive {:.1}%, error median {:.1e} worst \
                 {:.1e}, negative share {:.1}%",
                100.0 * c.conservative,
                100.0 * c.positive,
                c.conservation_error_median,
                c.conservation_error_max,
                100.0 * c.negative_fraction_mean
            ),
        ),
        Detail::Aopc(d) => (
            format!("{:.4}", r.value),
            format!(
                "+- {:.4}; random order {:.4} +- {:.4}; {} steps of {} regions ({}x{}), {} \
                 perturbation",
                d.stderr,
                d.aopc_random,
                d.aopc_random_stderr,
                d.steps,
                d.regions,
                d.region,
                d.region,
                d.perturbation
            ),
        ),
        Detail::TargetShare(d) => (
            format!("{:.4}", r.value),
            format!(
                "+- {:.4}; mask ({}) {:.1}% of the values: {:.2}x chance; median {:.4}, {} \
                 skipped",
                d.stderr,
                d.mask,
                100.0 * d.mask_fraction,
                d.share_over_chance,
                d.share_median,
                d.skipped
            ),
        ),
    };
    // with --rule, the composite's name no longer says the rules: the details do
    let rules = if overridden && !r.rules.is_empty() {
        format!(" [rules {}]", r.rules.join(" "))
    } else {
        String::new()
    };
    format!(
        "{:<13} {:<21} {:>8} {:>9}  {detail}{rules}",
        r.metric, r.composite, r.samples, value
    )
}

fn eval(a: EvalArgs) -> taylormap::Result<()> {
    use taylormap::eval::{self, EvalConfig, MaskSource};
    let cfg = EvalConfig {
        model: or_bundled(a.source.model, explain::DEFAULT_MODEL),
        input: or_bundled(a.source.input, explain::DEFAULT_INPUT),
        labels: a.source.labels,
        metrics: a
            .metrics
            .iter()
            .map(|m| m.parse())
            .collect::<taylormap::Result<_>>()?,
        composites: a
            .composites
            .iter()
            .map(|c| c.parse())
            .collect::<taylormap::Result<_>>()?,
        rules: a.run.rules,
        target: a.run.target.parse::<TargetChoice>()?,
        backend: a.run.backend.parse::<BackendChoice>()?,
        batch_size: a.run.batch_size,
        threads: threads_flag(a.run.threads)?,
        limit: a.run.limit,
        bounds: bounds_flag(a.run.bounds.as_deref())?,
        normalize: normalize_flag(a.run.normalize.as_deref())?,
        region: a.region,
        steps: a.steps,
        perturbation: a.perturbation.parse()?,
        seed: a.seed,
        mask: a.mask.map_or(MaskSource::Object, MaskSource::File),
        per_sample: a.per_sample,
        progress: !a.quiet,
    };
    let mut header = !a.json;
    let overridden = !cfg.rules.is_empty();
    eval::run(&cfg, &mut |r| {
        if a.json {
            outln!("{}", serde_json::to_string(r).expect("json"));
            return;
        }
        if std::mem::take(&mut header) {
            outln!(
                "{:<13} {:<21} {:>8} {:>9}  details",
                "metric",
                "composite",
                "samples",
                "value"
            );
        }
        outln!("{}", eval_table_row(r, overridden));
    })?;
    Ok(())
}

fn run(cli: Cli) -> taylormap::Result<()> {
    match cli.command {
        Command::Explain(args) => {
            let cfg = explain_config(args)?;
            let report = explain::run(&cfg)?;
            outln!("{}", report.summary());
            outln!("outputs              {}", cfg.out.display());
        }
        Command::Bench(args) => bench(args)?,
        Command::Eval(args) => eval(args)?,
        Command::Train(args) => train(args)?,
        Command::Inspect { model } => {
            let net = taylormap::model::onnx::load(&model)?;
            out!("{}", taylormap::model::inspect::describe(&net));
            if let Some(tab) = taylormap::data::csv::model_tabular(&model)? {
                out!("{}", tab.describe());
            }
        }
        Command::Adapters => {
            let adapters = taylormap::gpu::adapters();
            if adapters.is_empty() {
                outln!(
                    "no GPU adapter found; for the software Vulkan driver install mesa-vulkan-drivers \
                     and libvulkan1 (Debian/Ubuntu), or a GPU driver"
                );
            }
            for a in adapters {
                outln!(
                    "{:<40} backend {:<8} type {:<14}{}",
                    a.name,
                    a.backend,
                    a.device_type,
                    if a.software { " (software)" } else { "" }
                );
            }
        }
    }
    Ok(())
}

/// Mesa's Vulkan drivers come with an implicit loader layer, device-select, that orders the GPUs
/// for programs taking the first one; taylormap ranks the adapters itself. Without a desktop
/// session (no `XDG_RUNTIME_DIR`: servers, containers, CI) that layer prints "error:
/// XDG_RUNTIME_DIR is invalid or not set in the environment." twice on every run that looks for
/// a GPU, though nothing is wrong. It is switched off then (`NODEVICE_SELECT=1`, Mesa's own
/// switch), unless the user steers it with `MESA_VK_DEVICE_SELECT` or set `NODEVICE_SELECT`.
fn quiet_device_select_layer() {
    let unset = |key: &str| std::env::var_os(key).is_none();
    if unset("XDG_RUNTIME_DIR") && unset("MESA_VK_DEVICE_SELECT") && unset("NODEVICE_SELECT") {
        // first thing in main: no other thread exists yet to read the environment meanwhile
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

fn main() -> ExitCode {
    quiet_device_select_layer();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
