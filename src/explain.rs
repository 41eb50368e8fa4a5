//! The `explain` job: load a model and inputs, pick a backend, explain every sample in batches,
//! and write relevance.npy, summary.csv, run.json and PNG heatmaps (SPEC section 7), each file
//! complete or absent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use ndarray::{Axis, Slice};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::data::{self, Dataset};
use crate::lrp::{Bounds, Composite, LayerSelector, Method, SampleStats, TargetChoice};
use crate::render::{self, Colormap};
use crate::{Backend, BatchOutput, Error, Network, Result, Samples, StreamBatch};

/// Where the bundled model lives, relative to the crate root.
pub const DEFAULT_MODEL: &str = "assets/models/mnist-cnn.onnx";
/// Where the bundled images live, relative to the crate root.
pub const DEFAULT_INPUT: &str = "assets/mnist/t10k-images.idx3-ubyte.gz";

/// Default batch size on the GPU: large enough to fill a hardware GPU.
pub const DEFAULT_GPU_BATCH: usize = 1024;
/// Default batch size on the CPU backends (the fast engine splits a batch over its threads in
/// chunks that stay in cache, so this only bounds memory and the latency of a batch).
pub const DEFAULT_CPU_BATCH: usize = 256;

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// A hardware GPU when there is one, else the CPU backend.
    Auto,
    /// The best adapter there is, a software one included.
    Gpu,
    /// The fast CPU engine (f32, every core).
    Cpu,
    /// The f64 CPU reference backend (the oracle: slow, exact).
    Reference,
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "gpu" => Ok(BackendChoice::Gpu),
            "cpu" => Ok(BackendChoice::Cpu),
            "reference" => Ok(BackendChoice::Reference),
            _ => Err(Error::usage(
                "--backend",
                format!("expected auto, gpu, cpu or reference, got '{s}'"),
            )),
        }
    }
}

/// Resolves a path given relative to the crate root (for the bundled assets) when it does not
/// exist relative to the working directory.
pub fn asset_path(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        return here;
    }
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    if bundled.exists() {
        bundled
    } else {
        here
    }
}

/// Builds the backend for (network, method). Returns the backend and messages for the user
/// (which backend was chosen and why, clamped batch sizes).
///
/// `threads` sets the CPU engine's thread count (default: one per core).
pub fn select_backend(
    choice: BackendChoice,
    net: &Network,
    method: &Method,
    batch_size: usize,
    threads: Option<usize>,
) -> Result<(Box<dyn Backend>, Vec<String>)> {
    select_backend_in(choice, None, net, method, batch_size, threads)
}

/// [`select_backend`] with the GPU context made already (`context`, for `gpu` and `auto`: what
/// `GpuContext::new` returned); `None` makes it here.
pub(crate) fn select_backend_in(
    choice: BackendChoice,
    context: Option<Result<crate::gpu::GpuContext>>,
    net: &Network,
    method: &Method,
    batch_size: usize,
    threads: Option<usize>,
) -> Result<(Box<dyn Backend>, Vec<String>)> {
    let context = || context.unwrap_or_else(crate::gpu::GpuContext::new);
    let cpu = || -> Result<Box<dyn Backend>> {
        let engine = crate::cpu::FastBackend::new(net, method)?;
        Ok(Box::new(match threads {
            Some(t) => engine.with_threads(t),
            None => engine,
        }))
    };
    let gpu = |ctx: crate::gpu::GpuContext| -> Result<(Box<dyn Backend>, Vec<String>)> {
        let backend = crate::gpu::GpuBackend::new(&ctx, net, method, batch_size)?;
        let mut notes = backend.notes();
        notes.insert(0, format!("backend: gpu ({})", backend.adapter()));
        Ok((Box::new(backend), notes))
    };
    match choice {
        BackendChoice::Cpu => {
            let backend = cpu()?;
            let note = format!("backend: cpu ({})", backend.adapter());
            Ok((backend, vec![note]))
        }
        BackendChoice::Reference => Ok((
            Box::new(crate::cpu::ReferenceBackend::new(
                net.clone(),
                method.clone(),
            )),
            vec!["backend: reference (CPU, f64)".into()],
        )),
        BackendChoice::Gpu => gpu(context()?),
        BackendChoice::Auto => match context() {
            Ok(ctx) if !ctx.summary().software => gpu(ctx),
            Ok(ctx) => Ok((
                cpu()?,
                vec![format!(
                    "backend: cpu (only a software GPU adapter, '{}', is present, and the CPU engine \
                     is faster there; --backend gpu forces it)",
                    ctx.summary().name
                )],
            )),
            Err(e) => Ok((cpu()?, vec![format!("backend: cpu (no GPU adapter: {e})")])),
        },
    }
}

/// Everything `explain` needs.
#[derive(Clone, Debug)]
pub struct ExplainConfig {
    pub model: PathBuf,
    pub input: PathBuf,
    pub labels: Option<PathBuf>,
    pub out: PathBuf,
    pub composite: Composite,
    /// `--rule SELECTOR=RULE` texts, parsed once the bounds are known.
    pub rules: Vec<String>,
    pub target: TargetChoice,
    pub backend: BackendChoice,
    /// Samples per batch; `None`: [`DEFAULT_GPU_BATCH`] on the GPU, [`DEFAULT_CPU_BATCH`] on the CPU.
    pub batch_size: Option<usize>,
    pub limit: Option<usize>,
    pub cmap: Colormap,
    pub scale: usize,
    pub png: bool,
    /// Blend each heatmap over its input image instead of drawing it alone.
    pub overlay: bool,
    pub bounds: Option<Bounds>,
    pub normalize: Option<(f64, f64)>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Threads of the CPU engine (`None`: one per core).
    pub threads: Option<usize>,
}

/// One row of summary.csv.
#[derive(Clone, Debug)]
pub struct SampleRow {
    pub index: usize,
    pub label: Option<usize>,
    pub predicted: usize,
    pub target: usize,
    pub stats: SampleStats,
}

/// What an explain run did, for the closing summary.
#[derive(Clone, Debug)]
pub struct ExplainReport {
    pub rows: Vec<SampleRow>,
    pub batch_size: usize,
    pub backend: String,
    pub adapter: String,
    pub notes: Vec<String>,
    pub load_seconds: f64,
    pub compute_seconds: f64,
    pub write_seconds: f64,
    /// The network's outputs per sample (1: a detector, whose "prediction" is no class).
    pub outputs: usize,
}

impl ExplainReport {
    /// Heatmaps per second over compute and write (load excluded).
    pub fn heatmaps_per_second(&self) -> f64 {
        self.rows.len() as f64 / (self.compute_seconds + self.write_seconds).max(1e-9)
    }

    /// Samples whose relevance holds NaN or infinity (float32 overflow or 0/0 in an engine).
    pub fn non_finite(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| !r.stats.relevance_sum.is_finite())
            .count()
    }

    /// The one-screen summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let n = self.rows.len();
        let stats: Vec<SampleStats> = self.rows.iter().map(|r| r.stats).collect();
        let summary = crate::eval::Consistency::of(&stats);
        let labelled: Vec<&SampleRow> = self.rows.iter().filter(|r| r.label.is_some()).collect();
        let accuracy = if self.outputs == 1 {
            "n/a (a single output: a detector's score, not a class)".to_string()
        } else if labelled.is_empty() {
            "n/a (no labels)".to_string()
        } else {
            let right = labelled
                .iter()
                .filter(|r| r.label == Some(r.predicted))
                .count();
            format!(
                "{:.2}% ({right}/{})",
                100.0 * right as f64 / labelled.len() as f64,
                labelled.len()
            )
        };
        let non_finite = self.non_finite();
        let non_finite = if non_finite > 0 {
            format!(
                "non-finite           {non_finite} heatmap(s) hold NaN or infinite relevance \
                 (float32 overflow or 0/0: inputs, bounds or rule arguments too large for \
                 float32?; --backend reference computes in f64)\n"
            )
        } else {
            String::new()
        };
        format!(
            "samples              {n}\n\
             accuracy vs labels   {accuracy}\n\
             {non_finite}\
             conservation error   median {:.2e}, worst {:.2e}\n\
             conservative         {:.1}% (error <= 1e-4)\n\
             positive             {:.1}%\n\
             consistent           {:.1}% (conservative and positive)\n\
             backend              {} ({})\n\
             time                 load {:.2} s, compute {:.2} s, write {:.2} s\n\
             heatmaps per second  {:.0}",
            summary.conservation_error_median,
            summary.conservation_error_max,
            100.0 * summary.conservative,
            100.0 * summary.positive,
            100.0 * summary.consistent,
            self.backend,
            self.adapter,
            self.load_seconds,
            self.compute_seconds,
            self.write_seconds,
            self.heatmaps_per_second(),
        )
    }
}

/// Resolves the per-sample targets of the whole dataset (`None` = predicted).
pub(crate) fn resolve_targets(
    choice: TargetChoice,
    dataset: &Dataset,
    outputs: usize,
) -> Result<Option<Vec<usize>>> {
    match choice {
        TargetChoice::Predicted => Ok(None),
        TargetChoice::Class(k) if outputs == 1 && k == 0 => Ok(None),
        TargetChoice::Class(k) => {
            if k >= outputs {
                return Err(Error::usage(
                    "--target",
                    if outputs == 1 {
                        format!(
                            "class {k} does not exist: the model has a single output, which is \
                             always explained"
                        )
                    } else {
                        format!(
                            "class {k} does not exist: the model has {outputs} outputs (0..{})",
                            outputs - 1
                        )
                    },
                ));
            }
            Ok(Some(vec![k; dataset.len()]))
        }
        TargetChoice::Label => {
            let labels = dataset.labels.as_ref().ok_or_else(|| {
                Error::usage(
                    "--target label",
                    format!(
                        "{} has no labels; pass --labels PATH or choose --target predicted",
                        dataset.path.display()
                    ),
                )
            })?;
            if outputs == 1 {
                return Ok(None);
            }
            if let Some((i, l)) = labels.iter().enumerate().find(|(_, l)| **l >= outputs) {
                return Err(Error::usage(
                    "--target label",
                    format!("sample {i} has label {l}, but the model has only {outputs} outputs"),
                ));
            }
            Ok(Some(labels.clone()))
        }
    }
}

/// Where a run's samples come from: the model they are for, the input and labels, the
/// normalisation and `--limit`.
pub(crate) struct Source<'a> {
    pub model: &'a Path,
    pub input: &'a Path,
    pub labels: Option<&'a Path>,
    pub normalize: Option<(f64, f64)>,
    pub limit: Option<usize>,
}

/// A run's samples, loaded and checked against its network.
pub(crate) struct RunInputs {
    /// The samples, `--limit` applied.
    pub dataset: Dataset,
    /// Samples in the input before `--limit`.
    pub total: usize,
    /// `--bounds`, else the data's own.
    pub bounds: Bounds,
    /// The `--rule` overrides, read with those bounds.
    pub overrides: Vec<(LayerSelector, crate::Rule)>,
}

/// Loads the samples of `source` for `net` (refusing shapes that do not fit it, and an empty
/// input), and reads the `--rule` overrides with the bounds in force.
pub(crate) fn load_inputs(
    net: &Network,
    source: Source<'_>,
    bounds: Option<Bounds>,
    rules: &[String],
) -> Result<RunInputs> {
    if source.limit == Some(0) {
        return Err(Error::usage("--limit", "must be at least 1"));
    }
    let mut dataset =
        data::load_for_model(source.input, source.model, source.labels, source.normalize)?;
    dataset.check_against(&net.input_shape)?;
    let total = dataset.len();
    if let Some(limit) = source.limit {
        dataset.limit(limit);
    }
    if dataset.is_empty() {
        return Err(Error::input(source.input, "holds no samples"));
    }
    let bounds = bounds.unwrap_or(dataset.bounds);
    let overrides = rules
        .iter()
        .map(|r| LayerSelector::parse_override(r, bounds))
        .collect::<Result<Vec<_>>>()?;
    Ok(RunInputs {
        dataset,
        total,
        bounds,
        overrides,
    })
}

/// Runs the whole job and writes the outputs into `cfg.out`.
pub fn run(cfg: &ExplainConfig) -> Result<ExplainReport> {
    // The GPU context (instance, adapter, device) depends on neither the model nor the inputs,
    // so it is made while they load.
    let making = std::cell::Cell::new(
        matches!(cfg.backend, BackendChoice::Gpu | BackendChoice::Auto)
            .then(|| std::thread::spawn(crate::gpu::GpuContext::new)),
    );
    let result = run_with(cfg, |net, method, batch_size| {
        let context = making.take().map(|made| {
            made.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        select_backend_in(cfg.backend, context, net, method, batch_size, cfg.threads)
    });
    // An error before the backend was chosen (an unreadable input, a bad rule) leaves the
    // context being made. Wait for it: were the process to exit meanwhile, the GPU driver's exit
    // handlers would free what that thread was using (Mesa's llvmpipe: "corrupted size vs.
    // prev_size" and an abort, 1 exit in about 1,000 under load, instead of status 2).
    if let Some(made) = making.take() {
        let _ = made.join();
    }
    result
}

/// [`run`] on a backend of the caller's making (`cfg.backend` is not consulted).
///
/// Once the model is loaded and its rules resolved, `make_backend(net, method, batch_size)` is
/// called once, as [`select_backend`] would be (`batch_size` is `cfg.batch_size`, else
/// [`DEFAULT_GPU_BATCH`]); it returns the backend and lines for the user, the first one naming
/// the backend.
pub fn run_with<F>(cfg: &ExplainConfig, make_backend: F) -> Result<ExplainReport>
where
    F: FnOnce(&Network, &Method, usize) -> Result<(Box<dyn Backend>, Vec<String>)>,
{
    if cfg.batch_size == Some(0) {
        return Err(Error::usage("--batch-size", "must be at least 1"));
    }
    if cfg.scale == 0 {
        return Err(Error::usage("--scale", "must be at least 1"));
    }
    let t_load = Instant::now();
    let model_bytes = std::fs::read(&cfg.model)
        .map_err(|e| Error::input(&cfg.model, format!("cannot read the model: {e}")))?;
    let net = crate::model::onnx::from_bytes(&model_bytes, &cfg.model.display().to_string())?;
    if cfg.png {
        let [_, h, w] = heatmap_chw(&net);
        let (sh, sw) = (h.saturating_mul(cfg.scale), w.saturating_mul(cfg.scale));
        if sh.saturating_mul(sw) > MAX_HEATMAP_PIXELS {
            return Err(Error::usage(
                "--scale",
                format!(
                    "{} makes heatmaps of {sw} x {sh} pixels from {w} x {h} inputs; at most \
                     {MAX_HEATMAP_PIXELS} pixels (8192 x 8192) each",
                    cfg.scale
                ),
            ));
        }
    }
    let RunInputs {
        dataset,
        bounds,
        overrides,
        ..
    } = load_inputs(
        &net,
        Source {
            model: &cfg.model,
            input: &cfg.input,
            labels: cfg.labels.as_deref(),
            normalize: cfg.normalize,
            limit: cfg.limit,
        },
        cfg.bounds,
        &cfg.rules,
    )?;
    let method = cfg.composite.resolve(&net, bounds, &overrides)?;
    let targets = resolve_targets(cfg.target, &dataset, net.num_outputs())?;

    // The heatmap files are made while the backend starts (on a GPU, the longest part of
    // loading); see [`Staging`].
    let out_existed = cfg.out.is_dir();
    if !out_existed && cfg.out.exists() {
        return Err(Error::usage(
            "--out",
            format!(
                "{} is a file; expected a folder (made when missing)",
                cfg.out.display()
            ),
        ));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    if out_existed {
        for removed in remove_leftovers(&cfg.out) {
            eprintln!(
                "note: removed {}, left in {} by an explain run that did not finish",
                removed,
                cfg.out.display()
            );
        }
    }
    let staging = if cfg.png {
        let dir = cfg
            .out
            .join(format!(".heatmaps.partial-{}", std::process::id()));
        Some(Staging::create(dir, dataset.len())?)
    } else {
        None
    };
    let made = make_backend(&net, &method, cfg.batch_size.unwrap_or(DEFAULT_GPU_BATCH));
    let (mut backend, notes) = match made {
        Ok(made) => made,
        Err(e) => {
            drop(staging);
            if !out_existed {
                let _ = std::fs::remove_dir(&cfg.out); // only if it is empty
            }
            return Err(e);
        }
    };
    let batch_size = cfg.batch_size.unwrap_or(match backend.kind() {
        "gpu" => DEFAULT_GPU_BATCH,
        _ => DEFAULT_CPU_BATCH,
    });
    let load_seconds = t_load.elapsed().as_secs_f64();
    for note in &notes {
        eprintln!("{note}");
    }

    let heatmaps_dir = cfg.out.join("heatmaps");
    // relevance.npy is streamed batch by batch under a temporary name, renamed at the end; the
    // disk writes it in the background meanwhile
    let mut shape = vec![dataset.len()];
    shape.extend(&net.input_shape);
    let mut relevance_file = data::AtomicFile::create(&cfg.out.join("relevance.npy"))?;
    relevance_file.sync_behind(SYNC_BEHIND_BYTES);
    relevance_file.write_all(&data::npy_header_f32(&shape))?;
    let result = explain_all(
        cfg,
        &dataset,
        &net,
        Run {
            backend: backend.as_mut(),
            targets: targets.as_deref(),
            batch_size,
        },
        Sinks {
            staging: staging.as_ref().map(|s| s.dir.as_path()),
            relevance: &mut relevance_file,
        },
    );
    // on an error, dropping `staging` removes the folder
    let (rows, tables, compute_seconds, png_seconds) = result?;

    // relevance.npy, summary.csv and grid.png are on disk under temporary names, synced while
    // the last PNGs were written: the commits only rename.
    let t_write = Instant::now();
    relevance_file.commit()?;
    for table in tables {
        table.commit()?;
    }
    if let Some(staging) = staging {
        staging.commit(&heatmaps_dir)?;
    }
    let mut report = ExplainReport {
        rows,
        batch_size,
        backend: backend.kind().to_string(),
        adapter: backend.adapter(),
        notes,
        load_seconds,
        compute_seconds,
        write_seconds: png_seconds + t_write.elapsed().as_secs_f64(),
        outputs: net.num_outputs(),
    };
    let run_json = run_json(cfg, &net, &method, &model_bytes, bounds, &report);
    data::write_atomic(&cfg.out.join("run.json"), run_json.as_bytes())?;
    report.write_seconds = png_seconds + t_write.elapsed().as_secs_f64();
    Ok(report)
}

/// Bytes of relevance.npy after which a background fsync starts (see
/// [`data::AtomicFile::sync_behind`]): the disk writes the file while the batches stream, instead
/// of all of it at the end.
const SYNC_BEHIND_BYTES: u64 = 8 << 20;

/// summary.csv and, with PNGs, grid.png, written and synced under their temporary names.
fn tables(
    cfg: &ExplainConfig,
    dataset: &Dataset,
    net: &Network,
    rows: &[SampleRow],
    grid_relevance: &[f32],
) -> Result<Vec<data::AtomicFile>> {
    let mut files = vec![data::AtomicFile::written(
        &cfg.out.join("summary.csv"),
        summary_csv(rows).as_bytes(),
    )?];
    if cfg.png && net.input_shape.len() == 3 {
        let grid = grid_png(cfg, dataset, net, rows, grid_relevance)?;
        files.push(data::AtomicFile::written(&cfg.out.join("grid.png"), &grid)?);
    }
    Ok(files)
}

/// The folder the heatmaps are written into before it takes the place of `heatmaps/`, with an
/// empty file for every heatmap made ahead of the encoders by a thread of its own.
///
/// Creating a file is most of the cost of writing a small PNG on a disk, and it does not spread
/// over threads: creations in one folder take its lock in turn. Started before the backend, the
/// maker creates the files while the GPU initialises and compiles its pipelines, and the
/// encoders then only fill files that exist ([`write_png_file`]); where the backend is quicker
/// to start, the maker runs on beside the encoders, and whichever reaches a file first creates
/// it. Nothing waits on the maker but the commit, which stops it; the report's load, compute
/// and write times are wall times, so its work shows wherever it delays the job.
///
/// Dropping it stops the maker, waits for it, and removes the folder, unless it was committed.
struct Staging {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    maker: Option<std::thread::JoinHandle<()>>,
}

impl Staging {
    /// Makes `dir` and starts making `00000.png` .. the file of sample `n - 1` in it.
    fn create(dir: PathBuf, n: usize) -> Result<Staging> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let maker = {
            let (folder, stop) = (dir.clone(), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("heatmap files".into())
                .spawn(move || {
                    for index in 0..n {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        // Not truncating: an encoder may have written this file already. On
                        // any error, stop: the encoder of that file reports it.
                        let made = std::fs::OpenOptions::new()
                            .write(true)
                            .create(true)
                            .truncate(false)
                            .open(folder.join(png_name(index, n)));
                        if made.is_err() {
                            return;
                        }
                    }
                })
                .map_err(|e| Error::io(&dir, e))?
        };
        Ok(Staging {
            dir,
            stop,
            maker: Some(maker),
        })
    }

    /// Stops the maker and waits for it.
    fn settle(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(maker) = self.maker.take() {
            let _ = maker.join(); // it cannot panic short of allocation failure
        }
    }

    /// Puts the complete folder at `target` ([`replace_dir`]).
    fn commit(mut self, target: &Path) -> Result<()> {
        self.settle();
        replace_dir(&self.dir, target)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        self.settle();
        let _ = std::fs::remove_dir_all(&self.dir); // gone already once committed
    }
}

/// The heatmap file of sample `index` of `count`: its index zero-padded to 5 digits, or to as
/// many as the last index has beyond 99,999, so that every name has the same width and file
/// names sort in input order.
fn png_name(index: usize, count: usize) -> String {
    let width = count.saturating_sub(1).max(1).ilog10() as usize + 1;
    format!("{index:0width$}.png", width = width.max(5))
}

/// Writes `bytes` into the staging file at `path`, which [`Staging`]'s maker has most likely
/// created already: it is opened without `O_CREAT` (a lookup, not a creation), and created here
/// only if it is not there yet.
fn write_png_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path);
    let mut file = match opened {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::File::create(path),
        opened => opened,
    }
    .map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))
}

/// Removes from the output folder `out` the temporary files and folders of explain runs that
/// ended without cleaning up (killed, or the machine went down): `.heatmaps.partial-PID`,
/// `.heatmaps.old-PID` and `.NAME.tmp.PID.K` for each output NAME, where process PID no longer
/// runs. A run still going (into the same folder) keeps its own. Where the system cannot say
/// which processes run (no `/proc`), nothing is removed. Returns the names removed.
fn remove_leftovers(out: &Path) -> Vec<String> {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return vec![];
    }
    let Ok(entries) = std::fs::read_dir(out) else {
        return vec![];
    };
    let owner = |name: &str| -> Option<u32> {
        if let Some(pid) = name
            .strip_prefix(".heatmaps.partial-")
            .or_else(|| name.strip_prefix(".heatmaps.old-"))
        {
            return pid.parse().ok();
        }
        let rest = ["relevance.npy", "summary.csv", "run.json", "grid.png"]
            .iter()
            .find_map(|n| name.strip_prefix(&format!(".{n}.tmp.")))?;
        let (pid, k) = rest.split_once('.')?;
        k.parse::<u64>().ok()?;
        pid.parse().ok()
    };
    let mut removed = vec![];
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner(&name) else {
            continue;
        };
        if pid == std::process::id() || proc.join(pid.to_string()).exists() {
            continue;
        }
        let path = entry.path();
        // the entry itself, not what a link points to
        let gone = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        if gone.is_ok() {
            removed.push(name);
        }
    }
    removed.sort();
    removed
}

/// Puts the complete folder `staging` at `target`, replacing any earlier one: the old folder is
/// renamed aside first, so `target` is the old folder or the new one at every moment, then
/// removed.
fn replace_dir(staging: &Path, target: &Path) -> Result<()> {
    let aside = target.with_file_name(format!(
        ".{}.old-{}",
        target
            .file_name()
            .map_or("heatmaps".into(), |n| n.to_string_lossy()),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&aside); // left by an earlier run that died
    let had_old = match std::fs::rename(target, &aside) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io(target, e)),
    };
    if let Err(e) = std::fs::rename(staging, target) {
        if had_old {
            let _ = std::fs::rename(&aside, target);
        }
        return Err(Error::io(target, e));
    }
    if had_old {
        std::fs::remove_dir_all(&aside).map_err(|e| Error::io(&aside, e))?;
    }
    Ok(())
}

/// Rows of summary.csv, summary.csv and grid.png ready to commit ([`tables`]), compute seconds
/// (inside the backend, on the backend thread) and the rest of the loop's wall time (the writing
/// and PNG encoding not hidden behind compute: filling and draining the pipeline, the time the
/// backend waited on the writers, and the final fsyncs).
type Explained = (Vec<SampleRow>, Vec<data::AtomicFile>, f64, f64);

/// Samples per PNG job handed to an encoder thread.
const PNG_JOB: usize = 64;

/// Batches computed ahead of the one being written: enough for the backend never to wait on a
/// short stall of the writer, few enough to keep memory bounded.
const BATCHES_AHEAD: usize = 2;

/// The most pixels a heatmap PNG may have: 8192 x 8192, 201 MB of RGB on each encoder thread.
const MAX_HEATMAP_PIXELS: usize = 1 << 26;

/// Channels, height and width of a heatmap (a vector input is a row of D pixels).
fn heatmap_chw(net: &Network) -> [usize; 3] {
    match net.input_shape.as_slice() {
        [c, h, w] => [*c, *h, *w],
        [d] => [1, 1, *d],
        _ => unreachable!("validated by Network::new"),
    }
}

/// PNG heatmaps of samples `start..start + relevance.len() / per_sample`.
struct PngJob {
    start: usize,
    relevance: Vec<f32>,
}

/// One batch from the backend thread: the index of its first sample and what the backend
/// returned for it.
type Batch = (usize, BatchOutput<f32>);

/// Renders and writes the PNGs of one job into `staging`.
fn write_pngs(
    cfg: &ExplainConfig,
    dataset: &Dataset,
    chw: [usize; 3],
    staging: &Path,
    job: &PngJob,
) -> Result<()> {
    let [c, h, w] = chw;
    let per_sample = c * h * w;
    // one buffer for the widened relevance of every sample of the job
    let mut values = vec![0f64; per_sample];
    for (i, r) in job.relevance.chunks_exact(per_sample).enumerate() {
        let index = job.start + i;
        for (v, &r) in values.iter_mut().zip(r) {
            *v = f64::from(r);
        }
        let rgb = if cfg.overlay {
            let input = sample_slice(dataset, index);
            let range = (dataset.bounds.low, dataset.bounds.high);
            render::overlay_rgb(input, &values, h, w, c, range, cfg.cmap, cfg.scale)
        } else {
            render::heatmap_rgb(&values, h, w, c, cfg.cmap, cfg.scale)
        };
        let bytes = render::png_bytes(&rgb, w * cfg.scale, h * cfg.scale)?;
        write_png_file(&staging.join(png_name(index, dataset.len())), &bytes)?;
    }
    Ok(())
}

/// The backend and what it runs on.
struct Run<'a> {
    backend: &'a mut dyn Backend,
    targets: Option<&'a [usize]>,
    batch_size: usize,
}

/// Where the batch loop's outputs go: PNGs into a staging folder (`None`: no PNGs), relevance
/// into its file.
struct Sinks<'a> {
    staging: Option<&'a Path>,
    relevance: &'a mut data::AtomicFile,
}

/// The batch loop, a pipeline of three stages on their own threads, joined by bounded queues:
///
/// 1. the backend thread ([`produce`]) runs the backend batch after batch and hands each
///    output to
/// 2. the calling thread ([`consume`]), which collects the statistics, appends relevance to its
///    file and cuts the relevance into PNG jobs for
/// 3. the encoder threads ([`write_pngs`]), which render and write the PNGs into `staging`.
///
/// The backend waits on the writers only when [`BATCHES_AHEAD`] batches are done and unwritten,
/// so memory stays bounded however many samples stream through, and outputs keep input order
/// (one backend thread and one writer). The first error of any stage stops them all: a failing
/// writer drops its queue (the backend thread sees it at its next hand-over and stops), and a
/// failing encoder raises a flag the writer checks, then drains its queue until it closes, so no
/// stage ever waits on a full queue that nobody reads.
///
/// Once every batch is written to relevance.npy, and while the encoders still write the last
/// PNGs, the calling thread syncs relevance.npy and makes the [`tables`] (summary.csv, and
/// grid.png from the first [`GRID_SAMPLES`] samples) ready to commit, so the end of the run
/// waits on the slowest of these, not on their sum.
fn explain_all(
    cfg: &ExplainConfig,
    dataset: &Dataset,
    net: &Network,
    run: Run,
    sinks: Sinks,
) -> Result<Explained> {
    let n = dataset.len();
    let bar = if cfg.progress {
        let bar = indicatif::ProgressBar::new(n as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} explaining [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let chw = heatmap_chw(net);
    let threads = if sinks.staging.is_some() {
        std::thread::available_parallelism()
            .map_or(2, |p| p.get())
            .clamp(1, 32)
    } else {
        0
    };
    let encoder_failed = AtomicBool::new(false);
    let loop_start = Instant::now();
    let (rows, finished, compute) = std::thread::scope(|scope| -> Result<_> {
        let (jobs, queue) = mpsc::sync_channel::<PngJob>(2 * threads.max(1));
        // Each encoder holds the queue: should every one of them die, the queue closes and the
        // writer's next hand-over fails instead of waiting forever.
        let queue = Arc::new(Mutex::new(queue));
        let encoders: Vec<_> = sinks
            .staging
            .into_iter()
            .flat_map(|staging| std::iter::repeat_n(staging, threads))
            .map(|staging| {
                let queue = Arc::clone(&queue);
                let failed = &encoder_failed;
                scope.spawn(move || -> Result<()> {
                    // After a failure keep draining, so the writer never blocks on a full queue.
                    let mut result = Ok(());
                    loop {
                        // the lock is held only while taking a job, not while encoding it
                        let job = match queue.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return result, // another encoder panicked; join says so
                        };
                        let Ok(job) = job else { return result };
                        if result.is_ok() {
                            result = write_pngs(cfg, dataset, chw, staging, &job);
                            if result.is_err() {
                                failed.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        drop(queue);
        let (batches, received) = mpsc::sync_channel::<Batch>(BATCHES_AHEAD);
        let producer = scope.spawn(move || produce(dataset, run, batches));
        let consumed = consume(
            cfg,
            dataset,
            received,
            Writer {
                relevance: &mut *sinks.relevance,
                jobs,
                encoder_failed: &encoder_failed,
                bar: &bar,
            },
        );
        // The writer has returned, closing both of its queues: the backend thread stops at its
        // next hand-over, the encoders once the queue is empty.
        let produced = producer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        // While the encoders write the last PNGs, relevance.npy is synced and the other
        // outputs are made, if every batch came through.
        let finished = match (&produced, &consumed) {
            (Ok(_), Ok((rows, grid_relevance)))
                if rows.len() == n && !encoder_failed.load(Ordering::Relaxed) =>
            {
                sinks
                    .relevance
                    .sync()
                    .and_then(|()| tables(cfg, dataset, net, rows, grid_relevance))
                    .map(Some)
            }
            _ => Ok(None), // an earlier failure is the cause
        };
        let encoded = crate::error::join_all(encoders);
        // The first failure is the cause; the stages that stopped after it report no error.
        let compute = produced?;
        let (rows, _) = consumed?;
        encoded?;
        let finished = finished?.expect("every stage succeeded, so every batch was written");
        Ok((rows, finished, compute))
    })?;
    bar.finish_and_clear();
    let rest = loop_start.elapsed().as_secs_f64() - compute;
    Ok((rows, finished, compute, rest))
}

/// The backend thread: streams every batch through the backend in input order (on the GPU the
/// next batch is in flight while one is handed over) and hands each output to the writer.
/// Returns the seconds spent in the backend (hand-overs excluded). Stops early, without an error
/// of its own, when the writer has stopped (its queue is closed): the writer reports why.
fn produce(dataset: &Dataset, run: Run, batches: mpsc::SyncSender<Batch>) -> Result<f64> {
    let Run {
        backend,
        targets,
        batch_size,
    } = run;
    let n = dataset.len();
    // 8-bit inputs go as bytes to a backend that uploads them (a quarter of the traffic).
    let bytes = dataset.pixels.as_ref().filter(|_| backend.prefers_bytes());
    let mut stream = (0..n).step_by(batch_size.max(1)).map(|start| {
        let end = (start + batch_size).min(n);
        let batch = Slice::from(start..end);
        StreamBatch {
            samples: match bytes {
                Some(p) => Samples::U8(p.bytes.slice_axis(Axis(0), batch), &p.lut),
                None => Samples::F32(dataset.x.slice_axis(Axis(0), batch)),
            },
            targets: targets.map(|t| &t[start..end]),
        }
    });
    let kind = backend.kind();
    let (mut start, mut handing_over) = (0, 0.0);
    let t = Instant::now();
    backend.run_stream(&mut stream, &mut |out| {
        let handing = Instant::now();
        let end = (start + batch_size).min(n);
        if out.relevance.shape().first() != Some(&(end - start)) || out.targets.len() != end - start
        {
            return Err(Error::Shape {
                layer: format!("{kind} backend output"),
                expected: format!("relevance and targets of {} samples", end - start),
                got: format!(
                    "relevance of shape {:?} and {} targets",
                    out.relevance.shape(),
                    out.targets.len()
                ),
            });
        }
        let open = batches.send((start, out)).is_ok();
        start = end;
        handing_over += handing.elapsed().as_secs_f64();
        Ok(open)
    })?;
    Ok(t.elapsed().as_secs_f64() - handing_over)
}

/// The writer's outputs: relevance into its file, PNG jobs to the encoders.
struct Writer<'a> {
    relevance: &'a mut data::AtomicFile,
    jobs: mpsc::SyncSender<PngJob>,
    encoder_failed: &'a AtomicBool,
    bar: &'a indicatif::ProgressBar,
}

/// The writer, on the calling thread: takes the backend's outputs in input order, collects the
/// rows of summary.csv and the relevance of the grid's samples, appends relevance to its file
/// and cuts it into PNG jobs. Returns early, its rows incomplete, once an encoder has failed
/// (the encoder reports why). Both queues close when it returns, whatever the outcome.
fn consume(
    cfg: &ExplainConfig,
    dataset: &Dataset,
    received: mpsc::Receiver<Batch>,
    out: Writer,
) -> Result<(Vec<SampleRow>, Vec<f32>)> {
    let n = dataset.len();
    let per_sample = dataset.x.len() / n.max(1);
    let mut rows = Vec::with_capacity(n);
    let mut grid_relevance = Vec::with_capacity(GRID_SAMPLES.min(n) * per_sample);
    for (start, batch) in received {
        if out.encoder_failed.load(Ordering::Relaxed) {
            break;
        }
        let count = batch.targets.len();
        let relevance = batch.relevance.as_standard_layout();
        let relevance = relevance.as_slice().expect("standard layout");
        let grid_rows = GRID_SAMPLES.saturating_sub(start).min(count);
        grid_relevance.extend_from_slice(&relevance[..grid_rows * per_sample]);
        out.relevance.write_all(&data::f32_le_bytes(relevance))?;
        rows.extend((0..count).map(|i| SampleRow {
            index: start + i,
            label: dataset.labels.as_ref().map(|l| l[start + i]),
            predicted: batch.predicted(i),
            target: batch.targets[i],
            stats: batch.stats(i),
        }));
        if cfg.png {
            for (k, chunk) in relevance.chunks(PNG_JOB * per_sample).enumerate() {
                let job = PngJob {
                    start: start + k * PNG_JOB,
                    relevance: chunk.to_vec(),
                };
                if out.jobs.send(job).is_err() {
                    // every encoder is gone (they drain the queue until it closes otherwise)
                    return Ok((rows, grid_relevance));
                }
            }
        }
        out.bar.inc(count as u64);
    }
    Ok((rows, grid_relevance))
}

/// How many samples the contact sheet shows.
pub const GRID_SAMPLES: usize = 64;

/// The values of sample `index` of the dataset.
fn sample_slice(dataset: &Dataset, index: usize) -> &[f32] {
    let per = dataset.x.len() / dataset.len();
    &dataset.x.as_slice().expect("datasets are contiguous")[index * per..(index + 1) * per]
}

/// DIR/grid.png: the first samples, input beside heatmap, captioned label/prediction.
fn grid_png(
    cfg: &ExplainConfig,
    dataset: &Dataset,
    net: &Network,
    rows: &[SampleRow],
    relevance: &[f32],
) -> Result<Vec<u8>> {
    let (c, h, w) = (net.input_shape[0], net.input_shape[1], net.input_shape[2]);
    let per = c * h * w;
    let n = rows.len().min(GRID_SAMPLES);
    let rel: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            relevance[i * per..(i + 1) * per]
                .iter()
                .map(|&v| v as f64)
                .collect()
        })
        .collect();
    let items: Vec<render::GridItem> = (0..n)
        .map(|i| render::GridItem {
            input: sample_slice(dataset, i),
            relevance: &rel[i],
            label: rows[i].label,
            predicted: (net.num_outputs() > 1).then_some(rows[i].predicted),
        })
        .collect();
    let scale = (84 / h.max(w)).clamp(1, 4);
    render::grid_png(
        &items,
        h,
        w,
        c,
        (dataset.bounds.low, dataset.bounds.high),
        cfg.cmap,
        scale,
        8,
    )
}

/// summary.csv with the SPEC header.
pub fn summary_csv(rows: &[SampleRow]) -> String {
    let mut s = String::from(
        "index,label,predicted,target,score,relevance_sum,conservation_error,negative_fraction\n",
    );
    for r in rows {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            r.index,
            r.label.map(|l| l.to_string()).unwrap_or_default(),
            r.predicted,
            r.target,
            r.stats.score,
            r.stats.relevance_sum,
            r.stats.conservation_error,
            r.stats.negative_fraction
        ));
    }
    s
}

fn run_json(
    cfg: &ExplainConfig,
    net: &Network,
    method: &Method,
    model_bytes: &[u8],
    bounds: Bounds,
    report: &ExplainReport,
) -> String {
    let linear = net.linear_layers();
    let rules: Vec<serde_json::Value> = match method {
        Method::Lrp { rules } => linear
            .iter()
            .zip(rules)
            .enumerate()
            .map(|(k, (&layer, rule))| {
                json!({"index": k, "layer": layer, "name": net.names[layer],
                       "kind": net.layers[layer].kind(), "rule": rule.to_string()})
            })
            .collect(),
        _ => vec![],
    };
    let sha = Sha256::digest(model_bytes);
    let sha: String = sha.iter().map(|b| format!("{b:02x}")).collect();
    let target = match cfg.target {
        TargetChoice::Predicted => json!("predicted"),
        TargetChoice::Label => json!("label"),
        TargetChoice::Class(k) => json!(k),
    };
    let mut v = json!({
        "taylormap_version": env!("CARGO_PKG_VERSION"),
        "model": {"path": cfg.model.display().to_string(), "sha256": sha},
        "input": cfg.input.display().to_string(),
        "composite": cfg.composite.name(),
        "rules": rules,
        "target": target,
        "bounds": [bounds.low, bounds.high],
        "normalize": cfg.normalize.map(|(m, s)| vec![m, s]),
        "backend": report.backend,
        "adapter": report.adapter,
        "notes": report.notes,
        "batch_size": report.batch_size,
        "samples": report.rows.len(),
        "timings": {"load_seconds": report.load_seconds,
                    "compute_seconds": report.compute_seconds,
                    "write_seconds": report.write_seconds},
        "heatmaps_per_second": report.heatmaps_per_second(),
        "consistent_fraction": report.rows.iter().filter(|r| r.stats.consistent()).count() as f64
            / report.rows.len().max(1) as f64,
        "non_finite_samples": report.non_finite(),
    });
    // A tabular model's feature names, in the order of relevance.npy's columns (the model was
    // read and its preprocessing applied already, so its metadata parses).
    let label = cfg.model.display().to_string();
    if let Ok(Some(tab)) = crate::data::csv::model_tabular_from_bytes(model_bytes, &label) {
        v["features"] = json!(tab.feature_names());
    }
    serde_json::to_string_pretty(&v).expect("json") + "\n"
}

#[cfg(test)]
mod tests {
    use super::png_name;

    #[test]
    fn heatmap_names_have_one_width_and_sort_in_input_order() {
        assert_eq!(png_name(0, 1), "00000.png");
        assert_eq!(png_name(7, 10_000), "00007.png");
        assert_eq!(png_name(99_999, 100_000), "99999.png");
        // beyond 100,000 samples every name widens, not only the late ones
        assert_eq!(png_name(0, 100_001), "000000.png");
        assert_eq!(png_name(100_000, 100_001), "100000.png");
        assert_eq!(png_name(12, 2_000_000), "0000012.png");
        for count in [1, 9, 10, 99_999, 100_000, 100_001, 1_000_001] {
            let names: Vec<String> = [0, count / 2, count - 1]
                .iter()
                .map(|&i| png_name(i, count))
                .collect();
            assert!(names.windows(2).all(|w| w[0] <= w[1]), "{names:?}");
            assert!(names.iter().all(|n| n.len() == names[0].len()), "{names:?}");
        }
    }
}
