//! The `taylormap` command line: parses flags, calls the library, maps errors to exit codes
//! (0 success, 1 runtime error, 2 bad usage or bad input).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use taylormap::explain::{self, BackendChoice, ExplainConfig};
use taylormap::lrp::{Bounds, Composite, TargetChoice};
use taylormap::render::Colormap;

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
    /// Measure relevance throughput per backend and batch size.
    Bench(BenchArgs),
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
    /// ONNX model (default: the bundled MNIST CNN).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Inputs: IDX (optionally gzipped), NPY, or a folder of PNGs (default: the bundled MNIST test set).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Labels (IDX or NPY); default: the IDX labels file next to an IDX input.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Output folder.
    #[arg(long, default_value = "taylormap-out")]
    out: PathBuf,
    /// Rules for all Dense/Conv2d layers: deep-taylor, deep-taylor-bounded, epsilon-plus,
    /// epsilon-gamma-box, epsilon-alpha2-beta1, lrp-zero, sensitivity, gradient-x-input.
    #[arg(long, default_value = "deep-taylor")]
    composite: String,
    /// Per-layer override SELECTOR=RULE (SELECTOR: index, first, last, dense, conv, *). Repeatable.
    #[arg(long = "rule")]
    rules: Vec<String>,
    /// predicted, label, or a class index.
    #[arg(long, default_value = "predicted")]
    target: String,
    /// auto (hardware GPU if present, else CPU), gpu (any adapter, software included) or cpu.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// Samples per batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Explain only the first N samples.
    #[arg(long)]
    limit: Option<usize>,
    /// Heatmap colormap: bwr, coldnhot, heat, gray.
    #[arg(long, default_value = "bwr")]
    cmap: String,
    /// Enlarge heatmaps by this integer factor.
    #[arg(long, default_value_t = 1)]
    scale: usize,
    /// Do not write PNG heatmaps.
    #[arg(long)]
    no_png: bool,
    /// Input bounds L,H for zbox (default: the lowest and highest value an input can take).
    #[arg(long)]
    bounds: Option<String>,
    /// Normalise inputs with (x - MEAN) / STD after scaling: MEAN,STD.
    #[arg(long)]
    normalize: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
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
    /// auto, gpu or cpu; repeatable; default: cpu, and gpu when an adapter exists.
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
}

fn bench(a: BenchArgs) -> taylormap::Result<()> {
    let backends = if a.backends.is_empty() {
        let mut b = vec![BackendChoice::Cpu];
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
    if a.min_seconds.is_nan() || a.min_seconds < 0.0 {
        return Err(taylormap::Error::usage("--min-seconds", "must be >= 0"));
    }
    let cfg = taylormap::bench::BenchConfig {
        model: a
            .model
            .unwrap_or_else(|| explain::asset_path(explain::DEFAULT_MODEL)),
        input: a
            .input
            .unwrap_or_else(|| explain::asset_path(explain::DEFAULT_INPUT)),
        composite: a.composite.parse::<Composite>()?,
        backends,
        batch_sizes: a.batch_sizes,
        min_seconds: a.min_seconds,
    };
    if !a.json {
        println!(
            "{:<5} {:<36} {:>10} {:>9} {:>9} {:>14}",
            "back", "adapter", "batch", "samples", "seconds", "heatmaps/s"
        );
    }
    taylormap::bench::run(&cfg, &mut |r| {
        if a.json {
            println!("{}", serde_json::to_string(r).expect("json"));
        } else {
            println!(
                "{:<5} {:<36} {:>10} {:>9} {:>9.3} {:>14.0}",
                r.backend, r.adapter, r.batch_size, r.samples, r.seconds, r.heatmaps_per_second
            );
        }
    })?;
    Ok(())
}

fn parse_pair(flag: &str, text: &str) -> taylormap::Result<(f64, f64)> {
    let bad = || taylormap::Error::usage(flag, format!("expected two numbers A,B, got '{text}'"));
    let (a, b) = text.split_once(',').ok_or_else(bad)?;
    let a: f64 = a.trim().parse().map_err(|_| bad())?;
    let b: f64 = b.trim().parse().map_err(|_| bad())?;
    if !a.is_finite() || !b.is_finite() {
        return Err(bad());
    }
    Ok((a, b))
}

fn explain_config(a: ExplainArgs) -> taylormap::Result<ExplainConfig> {
    let bounds = match &a.bounds {
        Some(t) => {
            let (low, high) = parse_pair("--bounds", t)?;
            if low > high {
                return Err(taylormap::Error::usage(
                    "--bounds",
                    format!("needs L <= H, got '{t}'"),
                ));
            }
            Some(Bounds { low, high })
        }
        None => None,
    };
    let normalize = match &a.normalize {
        Some(t) => {
            let (m, s) = parse_pair("--normalize", t)?;
            if s == 0.0 {
                return Err(taylormap::Error::usage("--normalize", "STD must not be 0"));
            }
            Some((m, s))
        }
        None => None,
    };
    Ok(ExplainConfig {
        model: a
            .model
            .unwrap_or_else(|| explain::asset_path(explain::DEFAULT_MODEL)),
        input: a
            .input
            .unwrap_or_else(|| explain::asset_path(explain::DEFAULT_INPUT)),
        labels: a.labels,
        out: a.out,
        composite: a.composite.parse::<Composite>()?,
        rules: a.rules,
        target: a.target.parse::<TargetChoice>()?,
        backend: a.backend.parse::<BackendChoice>()?,
        batch_size: a.batch_size,
        limit: a.limit,
        cmap: a.cmap.parse::<Colormap>()?,
        scale: a.scale,
        png: !a.no_png,
        bounds,
        normalize,
        progress: !a.quiet,
    })
}

fn run(cli: Cli) -> taylormap::Result<()> {
    match cli.command {
        Command::Explain(args) => {
            let cfg = explain_config(args)?;
            let report = explain::run(&cfg)?;
            println!("{}", report.summary());
            println!("outputs              {}", cfg.out.display());
        }
        Command::Bench(args) => bench(args)?,
        Command::Inspect { model } => {
            let net = taylormap::model::onnx::load(&model)?;
            print!("{}", taylormap::model::inspect::describe(&net));
        }
        Command::Adapters => {
            let adapters = taylormap::gpu::adapters();
            if adapters.is_empty() {
                println!(
                    "no GPU adapter found; for the software Vulkan driver install mesa-vulkan-drivers \
                     and libvulkan1 (Debian/Ubuntu), or a GPU driver"
                );
            }
            for a in adapters {
                println!(
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
