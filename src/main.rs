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
