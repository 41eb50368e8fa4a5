//! `taylormap eval`: how good and how consistent the heatmaps of one or more composites are over
//! a whole input set (SPEC section 6), one row per composite and metric:
//!
//! - `conservation`: the shares of conservative, positive and consistent heatmaps (SPEC
//!   section 4) and the spread of the conservation error;
//! - `aopc`: the area over the perturbation curve (Samek et al. 2017): how fast the target score
//!   falls when regions are perturbed most relevant first, beside the same for a random order;
//! - `target-share`: the share of positive relevance inside a target region (the attribution
//!   localisation of Kohlbrenner et al. 2020).
//!
//! The formulas, their sources and their defaults are in docs/eval.md.

use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use ndarray::{Array2, ArrayViewD, Axis, IxDyn, Slice};
use serde::Serialize;

use crate::data::{self, Dataset};
use crate::explain::{self, BackendChoice};
use crate::gpu::GpuContext;
use crate::lrp::{Bounds, Composite, SampleStats, TargetChoice};
use crate::train::rng::SplitMix64;
use crate::{Backend, Error, Result, Samples, StreamBatch};

/// What `eval` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Shares of conservative, positive and consistent heatmaps.
    Conservation,
    /// Area over the most-relevant-first perturbation curve.
    Aopc,
    /// Share of positive relevance inside the target region.
    TargetShare,
}

impl Metric {
    /// The CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Conservation => "conservation",
            Metric::Aopc => "aopc",
            Metric::TargetShare => "target-share",
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "conservation" => Ok(Metric::Conservation),
            "aopc" => Ok(Metric::Aopc),
            "target-share" => Ok(Metric::TargetShare),
            other => Err(Error::usage(
                "--metric",
                format!("expected conservation, aopc or target-share, got '{other}'"),
            )),
        }
    }
}

/// What a perturbed value becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Perturbation {
    /// A value drawn uniformly from the input bounds [L, H] (Samek et al. 2017).
    Uniform,
    /// The lower bound L (black, for pixels scaled to [0, 1]).
    Low,
}

impl Perturbation {
    /// The CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            Perturbation::Uniform => "uniform",
            Perturbation::Low => "low",
        }
    }
}

impl std::str::FromStr for Perturbation {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "uniform" => Ok(Perturbation::Uniform),
            "low" => Ok(Perturbation::Low),
            other => Err(Error::usage(
                "--perturbation",
                format!("expected uniform or low, got '{other}'"),
            )),
        }
    }
}

/// The replacement values and random orders of AOPC, drawn per sample from `seed` and the
/// sample's index in the input set: every ordering and every composite perturbs a sample with the
/// same values, so their curves differ by the order alone, and a sample's draws do not depend on
/// the batch it runs in.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Perturber {
    pub kind: Perturbation,
    pub bounds: Bounds,
    pub seed: u64,
}

impl Perturber {
    /// Writes the replacement of every value of sample `index` into `out`.
    pub fn replacement(&self, index: usize, out: &mut [f32]) {
        match self.kind {
            Perturbation::Low => out.fill(self.bounds.low as f32),
            Perturbation::Uniform => {
                let mut rng = SplitMix64::new(self.seed, 2 * index as u64);
                for v in out {
                    *v = rng.uniform(self.bounds.low, self.bounds.high) as f32;
                }
            }
        }
    }

    /// A random order of `regions` regions for sample `index`: the baseline ordering.
    pub fn random_order(&self, index: usize, regions: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..regions).collect();
        SplitMix64::new(self.seed, 2 * index as u64 + 1).shuffle(&mut order);
        order
    }
}

/// A partition of one sample's values into the regions AOPC perturbs: `size` x `size` tiles of
/// an image, row by row, with every channel of a tile in it and the tiles at the right and
/// bottom edges cut to fit; each feature of a vector is a region of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regions {
    /// Flat indices into a sample (C order), region by region.
    indices: Vec<usize>,
    /// Region r holds `indices[starts[r]..starts[r + 1]]`.
    starts: Vec<usize>,
}

impl Regions {
    /// The regions of samples of shape `sample_shape`: (C, H, W) images in tiles of side `size`
    /// (at least 1), anything else one value per region.
    pub fn new(sample_shape: &[usize], size: usize) -> Regions {
        let size = size.max(1);
        let (c, h, w, side) = match sample_shape {
            [c, h, w] => (*c, *h, *w, size),
            other => (1, 1, other.iter().product(), 1),
        };
        let mut indices = Vec::with_capacity(c * h * w);
        let mut starts = vec![];
        for top in (0..h).step_by(side) {
            for left in (0..w).step_by(side) {
                starts.push(indices.len());
                for ch in 0..c {
                    for y in top..(top + side).min(h) {
                        indices.extend((left..(left + side).min(w)).map(|x| (ch * h + y) * w + x));
                    }
                }
            }
        }
        starts.push(indices.len());
        Regions { indices, starts }
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    /// True for a sample without values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flat indices of region `r`.
    pub fn members(&self, r: usize) -> &[usize] {
        &self.indices[self.starts[r]..self.starts[r + 1]]
    }

    /// The regions in order of decreasing relevance, a region's relevance being the sum over its
    /// values (the first region first on ties, -0 and +0 being a tie): AOPC's "most relevant
    /// first".
    pub fn most_relevant_first(&self, relevance: &[f32]) -> Vec<usize> {
        let score: Vec<f64> = (0..self.len())
            .map(|r| {
                let sum: f64 = self
                    .members(r)
                    .iter()
                    .map(|&i| f64::from(relevance[i]))
                    .sum();
                sum + 0.0 // -0 becomes +0, for total_cmp
            })
            .collect();
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
        order
    }
}

/// How perturbation curves are run: which regions, with which values, for how many steps, in
/// batches of how many samples.
#[derive(Clone, Debug)]
pub struct Curves<'a> {
    pub regions: &'a Regions,
    pub perturber: Perturber,
    /// L, at most the number of regions.
    pub steps: usize,
    pub batch_size: usize,
}

impl Curves<'_> {
    /// The target score f_t(x^(k)) of every sample for k = 0..=steps, shape (n, steps + 1):
    /// x^(0) = x, and x^(k) is x^(k-1) with region `orders[i][k - 1]` set to sample i's
    /// replacement values. `first` is the index of x's first sample in the input set (it seeds
    /// the replacements); `targets` holds one output index per sample (0 for a single-output
    /// network). Each step of a batch is one [`Backend::logits`]; `progress` hears how many
    /// samples each call ran.
    pub fn run(
        &self,
        backend: &mut dyn Backend,
        x: ArrayViewD<'_, f32>,
        first: usize,
        targets: &[usize],
        orders: &[Vec<usize>],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Array2<f64>> {
        let n = x.shape().first().copied().unwrap_or(0);
        let per: usize = x.shape()[1..].iter().product();
        let bad = |what: String| Error::usage("--steps", what);
        if targets.len() != n || orders.len() != n {
            return Err(bad(format!(
                "{n} samples need as many targets and orders, got {} and {}",
                targets.len(),
                orders.len()
            )));
        }
        if let Some(short) = orders.iter().position(|o| o.len() < self.steps) {
            return Err(bad(format!(
                "{} steps need as many regions in the order of sample {}, which has {}",
                self.steps,
                first + short,
                orders[short].len()
            )));
        }
        let regions = self.regions.len();
        if let Some(i) = orders
            .iter()
            .position(|o| o[..self.steps].iter().any(|&r| r >= regions))
        {
            return Err(bad(format!(
                "the order of sample {} names a region past the {regions} there are",
                first + i
            )));
        }
        if per != self.regions.indices.len() {
            return Err(bad(format!(
                "the regions cover {} values, a sample has {per}",
                self.regions.indices.len()
            )));
        }
        let x = x.as_standard_layout();
        let flat = x.as_slice().expect("standard layout");
        let batch_size = self.batch_size.max(1);
        let mut curves = Array2::zeros((n, self.steps + 1));
        let mut shape = x.shape().to_vec();
        for start in (0..n).step_by(batch_size) {
            let m = batch_size.min(n - start);
            let mut current = flat[start * per..(start + m) * per].to_vec();
            let mut replacement = vec![0f32; m * per];
            for (i, values) in replacement.chunks_exact_mut(per.max(1)).enumerate() {
                self.perturber.replacement(first + start + i, values);
            }
            shape[0] = m;
            for k in 0..=self.steps {
                if k > 0 {
                    for i in 0..m {
                        for &j in self.regions.members(orders[start + i][k - 1]) {
                            current[i * per + j] = replacement[i * per + j];
                        }
                    }
                }
                let view =
                    ArrayViewD::from_shape(IxDyn(&shape), &current).expect("sized from the shape");
                let logits = backend.logits(view)?;
                for i in 0..m {
                    let t = if logits.ncols() == 1 {
                        0
                    } else {
                        targets[start + i]
                    };
                    curves[[start + i, k]] = *logits.get([i, t]).ok_or_else(|| {
                        Error::usage(
                            "--target",
                            format!(
                                "sample {}: target {t} is past the network's {} outputs",
                                first + start + i,
                                logits.ncols()
                            ),
                        )
                    })?;
                }
                progress(m);
            }
        }
        Ok(curves)
    }
}

/// The AOPC of a set of perturbation curves.
#[derive(Clone, Debug, PartialEq)]
pub struct Aopc {
    /// AOPC = 1/(L+1) sum_{k=0..L} < f(x^(0)) - f(x^(k)) >, the mean over the samples.
    pub value: f64,
    /// The standard error of that mean: the standard deviation of the samples' own AOPC
    /// (1/(L+1) sum_k f(x^(0)) - f(x^(k)) of one sample) over sqrt(n).
    pub stderr: f64,
    /// The mean drop f(x^(0)) - f(x^(k)) per step k = 0..=L: the curve `value` is the area of.
    pub curve: Vec<f64>,
    /// Each sample's own AOPC, in sample order.
    pub per_sample: Vec<f64>,
}

/// The AOPC of `curves`, one row per sample as [`Curves::run`] returns them.
pub fn aopc(curves: &Array2<f64>) -> Aopc {
    let points = curves.ncols();
    let mut curve = vec![0.0; points];
    let mut per_sample = Vec::with_capacity(curves.nrows());
    for row in curves.rows() {
        let mut area = 0.0;
        for (c, f) in curve.iter_mut().zip(row) {
            *c += row[0] - f;
            area += row[0] - f;
        }
        per_sample.push(area / points.max(1) as f64);
    }
    for c in &mut curve {
        *c /= curves.nrows().max(1) as f64;
    }
    let (value, stderr) = mean_and_stderr(&per_sample);
    Aopc {
        value,
        stderr,
        curve,
        per_sample,
    }
}

/// The mean of `values` and its standard error, s / sqrt(n) with the sample standard deviation
/// s (n - 1 in its denominator; NaN for fewer than two values).
pub fn mean_and_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0);
    (mean, if n >= 2.0 { (var / n).sqrt() } else { f64::NAN })
}

/// The share of a heatmap's positive relevance that lies inside `mask`:
/// sum_{i in M} max(R_i, 0) / sum_i max(R_i, 0). `None` when no relevance is positive.
pub fn target_share(relevance: &[f32], mask: &[bool]) -> Option<f64> {
    let (mut inside, mut total) = (0.0, 0.0);
    for (&r, &m) in relevance.iter().zip(mask) {
        let r = f64::from(r.max(0.0));
        total += r;
        if m {
            inside += r;
        }
    }
    (total > 0.0).then(|| inside / total)
}

/// The consistency of a set of heatmaps (SPEC section 4): shares of samples, and the spread of
/// the conservation error.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Consistency {
    /// Share of conservative heatmaps (conservation error <= 1e-4).
    pub conservative: f64,
    /// Share of positive heatmaps.
    pub positive: f64,
    /// Share of heatmaps both conservative and positive.
    pub consistent: f64,
    /// The median conservation error (the upper one of an even count).
    pub conservation_error_median: f64,
    pub conservation_error_max: f64,
    /// The mean over samples of the share of |R| that is negative.
    pub negative_fraction_mean: f64,
}

impl Consistency {
    /// Summarises the statistics of every sample (NaN figures for no sample).
    pub fn of(stats: &[SampleStats]) -> Self {
        let n = stats.len() as f64;
        let share =
            |f: &dyn Fn(&SampleStats) -> bool| stats.iter().filter(|s| f(s)).count() as f64 / n;
        let mut errors: Vec<f64> = stats.iter().map(|s| s.conservation_error).collect();
        errors.sort_by(f64::total_cmp);
        Consistency {
            conservative: share(&|s| s.conservative()),
            positive: share(&|s| s.positive),
            consistent: share(&|s| s.consistent()),
            conservation_error_median: errors.get(errors.len() / 2).copied().unwrap_or(f64::NAN),
            conservation_error_max: errors.last().copied().unwrap_or(f64::NAN),
            negative_fraction_mean: stats.iter().map(|s| s.negative_fraction).sum::<f64>() / n,
        }
    }
}

/// The details of an `aopc` row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AopcDetail {
    /// The side of the square regions (1 for vector inputs).
    pub region: usize,
    /// Regions per sample.
    pub regions: usize,
    /// L: regions perturbed, one per step.
    pub steps: usize,
    pub perturbation: &'static str,
    pub seed: u64,
    /// The standard error of the AOPC over the samples.
    pub stderr: f64,
    /// The AOPC of random orders, the same for every composite: the level an explanation has to
    /// beat.
    pub aopc_random: f64,
    pub aopc_random_stderr: f64,
    /// The mean drop of the target score after k steps, k = 0..=steps, most relevant first.
    pub curve: Vec<f64>,
    /// The same in random order.
    pub curve_random: Vec<f64>,
}

/// The details of a `target-share` row.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShareDetail {
    /// The mask file, or "object" for the default (input values above the lower bound).
    pub mask: String,
    /// Median share over the samples counted.
    pub share_median: f64,
    /// Mean share of a sample's values inside the mask: what a heatmap spread evenly would get.
    pub mask_fraction: f64,
    /// Mean over samples of share / mask fraction (Kohlbrenner et al.'s size-weighted share):
    /// above 1, relevance concentrates inside the mask.
    pub share_over_chance: f64,
    /// The standard error of the mean share over the samples counted.
    pub stderr: f64,
    /// Samples left out: an empty mask, or no positive relevance.
    pub skipped: usize,
}

/// What a row holds beside its headline value.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Detail {
    Conservation(Consistency),
    Aopc(AopcDetail),
    TargetShare(ShareDetail),
}

/// One result: one line of `eval --json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EvalRow {
    pub metric: &'static str,
    pub composite: String,
    /// The rule of each Dense/Conv2d layer, `--rule` overrides applied (empty for the gradient
    /// baselines).
    pub rules: Vec<String>,
    pub model: String,
    pub backend: String,
    pub adapter: String,
    /// Samples evaluated (for target-share, skipped ones included).
    pub samples: usize,
    /// The headline: the share of consistent heatmaps, the AOPC, or the mean target share.
    pub value: f64,
    #[serde(flatten)]
    pub detail: Detail,
}

/// Which values of a sample are inside the target-share mask: where the input is above its
/// lower bound (the strokes of a digit), or where a mask file is non-zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MaskSource {
    Object,
    File(PathBuf),
}

/// The default side of AOPC's square regions on H x W images: min(H, W) / 14, at least 1, so
/// that an image has about 14 x 14 = 196 regions whatever its size (2 x 2 pixels on MNIST,
/// 16 x 16 on 224 x 224 images, near Samek et al.'s 9 x 9 there).
pub fn default_region(h: usize, w: usize) -> usize {
    (h.min(w) / 14).max(1)
}

/// Everything `eval` needs.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    pub model: PathBuf,
    pub input: PathBuf,
    pub labels: Option<PathBuf>,
    pub metrics: Vec<Metric>,
    /// Composites to compare, in order.
    pub composites: Vec<Composite>,
    /// `--rule SELECTOR=RULE` texts, applied to every composite.
    pub rules: Vec<String>,
    pub target: TargetChoice,
    pub backend: BackendChoice,
    pub batch_size: Option<usize>,
    pub threads: Option<usize>,
    pub limit: Option<usize>,
    pub bounds: Option<Bounds>,
    pub normalize: Option<(f64, f64)>,
    /// AOPC: the side of the square regions (`None`: [`default_region`] on images, 1 on vectors).
    pub region: Option<usize>,
    /// AOPC: perturbation steps L (at most the number of regions).
    pub steps: usize,
    pub perturbation: Perturbation,
    pub seed: u64,
    pub mask: MaskSource,
    /// Where to write every sample's figures as CSV (see [`per_sample_csv`]), if anywhere.
    pub per_sample: Option<PathBuf>,
    /// Progress bars on stderr.
    pub progress: bool,
}

/// What every composite is evaluated on, prepared once: the network, the samples and their
/// targets, the bounds and `--rule` overrides, and what the metrics asked for need.
struct Prepared {
    net: crate::Network,
    dataset: Dataset,
    /// `None`: the predicted class.
    targets: Option<Vec<usize>>,
    bounds: Bounds,
    overrides: Vec<(crate::LayerSelector, crate::Rule)>,
    /// For target-share.
    mask: Option<Mask>,
    /// For AOPC: the regions, their side, and the steps L.
    regions: Regions,
    region: usize,
    steps: usize,
    perturber: Perturber,
}

/// Checks the flags, loads the model and the samples, and prepares what the metrics need.
fn prepare(cfg: &EvalConfig) -> Result<Prepared> {
    if cfg.metrics.is_empty() {
        return Err(Error::usage(
            "--metric",
            "name at least one: conservation, aopc or target-share",
        ));
    }
    if cfg.batch_size == Some(0) {
        return Err(Error::usage("--batch-size", "must be at least 1"));
    }
    let aopc_wanted = cfg.metrics.contains(&Metric::Aopc);
    if aopc_wanted && cfg.steps == 0 {
        return Err(Error::usage("--steps", "must be at least 1"));
    }
    if cfg.region == Some(0) {
        return Err(Error::usage("--region", "must be at least 1"));
    }
    if cfg.mask != MaskSource::Object && !cfg.metrics.contains(&Metric::TargetShare) {
        return Err(Error::usage(
            "--mask",
            "only applies to --metric target-share",
        ));
    }
    if let Some(path) = &cfg.per_sample {
        let folder = path.parent().filter(|p| !p.as_os_str().is_empty());
        if folder.is_some_and(|f| !f.is_dir()) || path.is_dir() {
            return Err(Error::usage(
                "--per-sample",
                format!("{} is not a file in an existing folder", path.display()),
            ));
        }
    }
    let net = crate::model::onnx::load(&cfg.model)?;
    let explain::RunInputs {
        dataset,
        total,
        bounds,
        overrides,
    } = explain::load_inputs(
        &net,
        explain::Source {
            model: &cfg.model,
            input: &cfg.input,
            labels: cfg.labels.as_deref(),
            normalize: cfg.normalize,
            limit: cfg.limit,
        },
        cfg.bounds,
        &cfg.rules,
    )?;
    let targets = explain::resolve_targets(cfg.target, &dataset, net.num_outputs())?;
    let mask = if cfg.metrics.contains(&Metric::TargetShare) {
        Some(match &cfg.mask {
            MaskSource::Object if net.input_shape.len() != 3 => {
                return Err(Error::usage(
                    "--mask",
                    format!(
                        "target-share on vector inputs ({} features per sample) needs the \
                         target features as a mask: an NPY file of shape ({total}, {}), non-zero \
                         inside",
                        net.input_shape[0], net.input_shape[0]
                    ),
                ))
            }
            // above the lower bound by 1e-6 of the bounds' width, so that a background pixel
            // rounded to f32 stays outside
            MaskSource::Object => {
                Mask::Above((bounds.low + 1e-6 * (bounds.high - bounds.low)) as f32)
            }
            MaskSource::File(path) => load_mask(path, total, &dataset)?,
        })
    } else {
        None
    };
    let image = net.input_shape.len() == 3;
    if let (Some(size), false) = (cfg.region, image) {
        if size != 1 {
            return Err(Error::usage(
                "--region",
                format!(
                    "the model's inputs are vectors of {} values, each one a region of its own; \
                     leave out --region",
                    dataset.sample_shape().iter().product::<usize>()
                ),
            ));
        }
    }
    let region = if image {
        cfg.region
            .unwrap_or_else(|| default_region(net.input_shape[1], net.input_shape[2]))
    } else {
        1
    };
    let regions = Regions::new(dataset.sample_shape(), region);
    let steps = cfg.steps.min(regions.len());
    if aopc_wanted && steps < cfg.steps {
        eprintln!(
            "note: --steps {} is more than the {} regions of a sample; running {steps}",
            cfg.steps,
            regions.len()
        );
    }
    let perturber = Perturber {
        kind: cfg.perturbation,
        bounds,
        seed: cfg.seed,
    };
    Ok(Prepared {
        net,
        dataset,
        targets,
        bounds,
        overrides,
        mask,
        regions,
        region,
        steps,
        perturber,
    })
}

/// Runs every metric on every composite, handing each row to `report` as it is ready.
pub fn run(cfg: &EvalConfig, report: &mut dyn FnMut(&EvalRow)) -> Result<Vec<EvalRow>> {
    let p = prepare(cfg)?;
    let composites = if cfg.composites.is_empty() {
        vec![Composite::DeepTaylor]
    } else {
        cfg.composites.clone()
    };
    // One GPU context for every composite (its error kept as text, to be raised for each).
    let context: Option<std::result::Result<GpuContext, String>> =
        matches!(cfg.backend, BackendChoice::Gpu | BackendChoice::Auto).then(|| {
            GpuContext::new().map_err(|e| match e {
                Error::Gpu(text) => text,
                other => other.to_string(),
            })
        });
    let model_name = cfg.model.display().to_string();
    let mut rows = vec![];
    let mut random: Option<Aopc> = None;
    let mut samples = vec![];
    // every composite's rules, before any work (a --rule a baseline refuses fails here)
    let methods = composites
        .iter()
        .map(|c| c.resolve(&p.net, p.bounds, &p.overrides))
        .collect::<Result<Vec<_>>>()?;
    for (c, (composite, method)) in composites.iter().zip(methods).enumerate() {
        let ctx = context
            .as_ref()
            .map(|made| made.clone().map_err(Error::Gpu));
        let (mut backend, notes) = explain::select_backend_in(
            cfg.backend,
            ctx,
            &p.net,
            &method,
            cfg.batch_size.unwrap_or(explain::DEFAULT_GPU_BATCH),
            cfg.threads,
        )?;
        if c == 0 {
            for note in &notes {
                eprintln!("{note}");
            }
        }
        let batch_size = cfg.batch_size.unwrap_or(match backend.kind() {
            "gpu" => explain::DEFAULT_GPU_BATCH,
            _ => explain::DEFAULT_CPU_BATCH,
        });
        let name = composite.name();
        let mut figures = SampleFigures {
            composite: name,
            ..SampleFigures::default()
        };
        let bar = progress_bar(cfg.progress, p.dataset.len(), format!("{name}: explaining"));
        let takes = Takes {
            orders: cfg
                .metrics
                .contains(&Metric::Aopc)
                .then_some((&p.regions, p.steps)),
            mask: p.mask.as_ref(),
        };
        let explained = explain_set(
            backend.as_mut(),
            &p.dataset,
            p.targets.as_deref(),
            batch_size,
            takes,
            &bar,
        )?;
        bar.finish_and_clear();
        let rules: Vec<String> = match &method {
            crate::Method::Lrp { rules } => rules.iter().map(|r| r.to_string()).collect(),
            _ => vec![],
        };
        let row = |metric: Metric, value: f64, detail: Detail, backend: &dyn Backend| EvalRow {
            metric: metric.name(),
            composite: name.to_string(),
            rules: rules.clone(),
            model: model_name.clone(),
            backend: backend.kind().to_string(),
            adapter: backend.adapter(),
            samples: p.dataset.len(),
            value,
            detail,
        };
        for &metric in &cfg.metrics {
            let made = match metric {
                Metric::Conservation => {
                    let summary = Consistency::of(&explained.stats);
                    row(
                        metric,
                        summary.consistent,
                        Detail::Conservation(summary),
                        backend.as_ref(),
                    )
                }
                Metric::Aopc => {
                    let curves = Curves {
                        regions: &p.regions,
                        perturber: p.perturber,
                        steps: p.steps,
                        batch_size,
                    };
                    let mut run = |orders: &[Vec<usize>], what: String| {
                        perturbation_aopc(
                            &curves,
                            backend.as_mut(),
                            &p.dataset,
                            &explained.targets,
                            orders,
                            (cfg.progress, what),
                        )
                    };
                    let relevant = run(&explained.orders, format!("{name}: aopc"))?;
                    // the random orders do not depend on the composite: run once
                    let baseline = match &random {
                        Some(done) => done.clone(),
                        None => {
                            let orders: Vec<Vec<usize>> = (0..p.dataset.len())
                                .map(|i| {
                                    let mut order = p.perturber.random_order(i, p.regions.len());
                                    order.truncate(p.steps);
                                    order
                                })
                                .collect();
                            random
                                .insert(run(&orders, "random order: aopc".into())?)
                                .clone()
                        }
                    };
                    figures.aopc = Some((relevant.per_sample, baseline.per_sample));
                    let detail = AopcDetail {
                        region: p.region,
                        regions: p.regions.len(),
                        steps: p.steps,
                        perturbation: cfg.perturbation.name(),
                        seed: cfg.seed,
                        stderr: relevant.stderr,
                        aopc_random: baseline.value,
                        aopc_random_stderr: baseline.stderr,
                        curve: relevant.curve,
                        curve_random: baseline.curve,
                    };
                    row(
                        metric,
                        relevant.value,
                        Detail::Aopc(detail),
                        backend.as_ref(),
                    )
                }
                Metric::TargetShare => {
                    let (value, detail, shares) = share_summary(&explained.shares, &cfg.mask);
                    figures.share = Some(shares);
                    row(metric, value, Detail::TargetShare(detail), backend.as_ref())
                }
            };
            report(&made);
            rows.push(made);
        }
        figures.labels = p.dataset.labels.clone();
        figures.predicted = explained.predicted;
        figures.targets = explained.targets;
        figures.stats = explained.stats;
        samples.push(figures);
    }
    if let Some(path) = &cfg.per_sample {
        data::write_atomic(path, per_sample_csv(&samples).as_bytes())?;
    }
    Ok(rows)
}

/// One composite's figures per sample, for `--per-sample`.
#[derive(Clone, Debug, Default)]
pub struct SampleFigures {
    pub composite: &'static str,
    /// The dataset's labels, when it has them.
    pub labels: Option<Vec<usize>>,
    pub predicted: Vec<usize>,
    pub targets: Vec<usize>,
    pub stats: Vec<SampleStats>,
    /// Each sample's AOPC, most relevant first and in random order.
    pub aopc: Option<(Vec<f64>, Vec<f64>)>,
    /// Each sample's target share (`None`: skipped).
    pub share: Option<Vec<Option<f64>>>,
}

/// The `--per-sample` CSV: one row per composite and sample (composites in turn, samples in
/// input order), with the header `index,composite,label,predicted,target,score,relevance_sum,
/// conservation_error,negative_fraction,consistent` (label empty when unknown)
/// and, where measured, `aopc,aopc_random` and `target_share` (empty for a skipped sample).
/// The rows of two composites share their samples: the file is made for paired comparisons.
pub fn per_sample_csv(samples: &[SampleFigures]) -> String {
    use std::fmt::Write;
    let aopc = samples.iter().any(|f| f.aopc.is_some());
    let share = samples.iter().any(|f| f.share.is_some());
    let mut out = String::from(
        "index,composite,label,predicted,target,score,relevance_sum,conservation_error,\
         negative_fraction,consistent",
    );
    if aopc {
        out.push_str(",aopc,aopc_random");
    }
    if share {
        out.push_str(",target_share");
    }
    out.push('\n');
    for f in samples {
        for (i, (s, t)) in f.stats.iter().zip(&f.targets).enumerate() {
            let label = f.labels.as_ref().map(|l| l[i].to_string());
            let _ = write!(
                out,
                "{i},{},{},{},{t},{},{},{},{},{}",
                f.composite,
                label.unwrap_or_default(),
                f.predicted[i],
                s.score,
                s.relevance_sum,
                s.conservation_error,
                s.negative_fraction,
                u8::from(s.consistent())
            );
            if aopc {
                match &f.aopc {
                    Some((a, r)) => {
                        let _ = write!(out, ",{},{}", a[i], r[i]);
                    }
                    None => out.push_str(",,"),
                }
            }
            if share {
                match f.share.as_ref().and_then(|v| v[i]) {
                    Some(v) => {
                        let _ = write!(out, ",{v}");
                    }
                    None => out.push(','),
                }
            }
            out.push('\n');
        }
    }
    out
}

/// What explaining the input set gave, per sample: the output each explanation started from,
/// the statistics of its heatmap and what [`Takes`] asked of it. The heatmaps themselves are
/// not kept: memory grows with the samples, not with their size.
struct Explained {
    targets: Vec<usize>,
    /// The arg-max output of each sample.
    predicted: Vec<usize>,
    stats: Vec<SampleStats>,
    /// The first `steps` regions, most relevant first (for AOPC).
    orders: Vec<Vec<usize>>,
    /// (target share, share of the values inside the mask), or `None` for a sample left out
    /// (for target-share).
    shares: Vec<Option<(f64, f64)>>,
}

/// What to take from each heatmap as it streams by: its first `steps` regions in order of
/// relevance, and its target share in a mask.
struct Takes<'a> {
    orders: Option<(&'a Regions, usize)>,
    mask: Option<&'a Mask>,
}

/// Explains every sample of `dataset`, in batches of `batch_size`, streamed through the
/// backend as `explain` does (8-bit samples go as bytes where the backend prefers them).
fn explain_set(
    backend: &mut dyn Backend,
    dataset: &Dataset,
    targets: Option<&[usize]>,
    batch_size: usize,
    takes: Takes<'_>,
    bar: &ProgressBar,
) -> Result<Explained> {
    let n = dataset.len();
    let bytes = dataset.pixels.as_ref().filter(|_| backend.prefers_bytes());
    let mut batches = (0..n).step_by(batch_size).map(|start| {
        let end = (start + batch_size).min(n);
        let rows = Slice::from(start..end);
        StreamBatch {
            samples: match bytes {
                Some(p) => Samples::U8(p.bytes.slice_axis(Axis(0), rows), &p.lut),
                None => Samples::F32(dataset.x.slice_axis(Axis(0), rows)),
            },
            targets: targets.map(|t| &t[start..end]),
        }
    });
    let per = dataset.sample_shape().iter().product::<usize>().max(1);
    let x = dataset.x.as_standard_layout();
    let x = x.as_slice().expect("standard layout");
    let mut out = Explained {
        targets: Vec::with_capacity(n),
        predicted: Vec::with_capacity(n),
        stats: Vec::with_capacity(n),
        orders: vec![],
        shares: vec![],
    };
    let mut inside = vec![];
    backend.run_stream(&mut batches, &mut |batch| {
        let relevance = batch.relevance.as_standard_layout();
        let relevance = relevance.as_slice().expect("standard layout");
        for (i, r) in relevance.chunks_exact(per).enumerate() {
            let index = out.stats.len();
            out.stats.push(batch.stats(i));
            out.predicted.push(batch.predicted(i));
            if let Some((regions, steps)) = takes.orders {
                // only the first `steps` regions are ever perturbed
                let mut order = regions.most_relevant_first(r);
                order.truncate(steps);
                out.orders.push(order);
            }
            if let Some(mask) = takes.mask {
                mask.fill(index, &x[index * per..][..per], &mut inside);
                let count = inside.iter().filter(|&&m| m).count();
                out.shares.push(
                    target_share(r, &inside)
                        .filter(|_| count > 0)
                        .map(|share| (share, count as f64 / per as f64)),
                );
            }
        }
        out.targets.extend(&batch.targets);
        bar.inc(batch.targets.len() as u64);
        Ok(true)
    })?;
    Ok(out)
}

/// Runs the perturbation curves of `orders` over the input set with a progress bar (`bar`:
/// whether to show it, and its message) and returns their AOPC and mean curve.
fn perturbation_aopc(
    curves: &Curves<'_>,
    backend: &mut dyn Backend,
    dataset: &Dataset,
    targets: &[usize],
    orders: &[Vec<usize>],
    bar: (bool, String),
) -> Result<Aopc> {
    let forwards = dataset.len() * (curves.steps + 1);
    let bar = progress_bar(bar.0, forwards, bar.1);
    let run = curves.run(backend, dataset.x.view(), 0, targets, orders, &mut |m| {
        bar.inc(m as u64)
    });
    bar.finish_and_clear();
    Ok(aopc(&run?))
}

/// The mean target share over the samples that have one (`shares`: per sample, the share and
/// the share of values inside the mask, or `None`), the details of the row, and each sample's
/// share.
fn share_summary(
    shares: &[Option<(f64, f64)>],
    source: &MaskSource,
) -> (f64, ShareDetail, Vec<Option<f64>>) {
    let counted: Vec<(f64, f64)> = shares.iter().flatten().copied().collect();
    let k = counted.len() as f64;
    let mut values: Vec<f64> = counted.iter().map(|c| c.0).collect();
    let (mean, stderr) = mean_and_stderr(&values);
    values.sort_by(f64::total_cmp);
    let detail = ShareDetail {
        mask: match source {
            MaskSource::Object => "object".into(),
            MaskSource::File(p) => p.display().to_string(),
        },
        share_median: values.get(values.len() / 2).copied().unwrap_or(f64::NAN),
        mask_fraction: counted.iter().map(|c| c.1).sum::<f64>() / k,
        share_over_chance: counted.iter().map(|c| c.0 / c.1).sum::<f64>() / k,
        stderr,
        skipped: shares.len() - counted.len(),
    };
    (
        mean,
        detail,
        shares.iter().map(|s| s.map(|c| c.0)).collect(),
    )
}

/// Which values of a sample are inside the target-share mask.
#[derive(Clone, Debug)]
enum Mask {
    /// The values above this one: the object itself.
    Above(f32),
    /// The non-zero values of a mask file: `plane` values per sample (sample after sample),
    /// the same for each of `channels` channels.
    File {
        values: Vec<f32>,
        plane: usize,
        channels: usize,
    },
}

impl Mask {
    /// Sets `inside` to the mask of sample `index`, whose values are `sample`.
    fn fill(&self, index: usize, sample: &[f32], inside: &mut Vec<bool>) {
        inside.clear();
        match self {
            Mask::Above(above) => inside.extend(sample.iter().map(|v| v > above)),
            Mask::File {
                values,
                plane,
                channels,
            } => {
                let mask = &values[index * plane..][..*plane];
                for _ in 0..*channels {
                    inside.extend(mask.iter().map(|&v| v != 0.0));
                }
            }
        }
    }
}

/// Loads a target-share mask: any input format, one sample per input sample (`total`, the input
/// set's count before `--limit`), each of the inputs' per-sample shape, or of their (1, H, W) or
/// (H, W) for (C, H, W) inputs (the same mask for every channel: a folder of grayscale PNG
/// files for colour images). Non-zero values are inside.
fn load_mask(path: &Path, total: usize, dataset: &Dataset) -> Result<Mask> {
    let mask = data::load(path, None, None)?;
    let shape = dataset.sample_shape();
    let mask_shape = mask.sample_shape();
    let per: usize = shape.iter().product();
    // one channel, with or without its axis, serves every channel
    let fits = mask_shape == shape
        || (shape.len() == 1 && mask_shape.iter().product::<usize>() == per)
        || (shape.len() == 3
            && (mask_shape == &shape[1..]
                || (mask_shape.len() == 3 && mask_shape[0] == 1 && mask_shape[1..] == shape[1..])));
    let expected = match shape {
        [1, h, w] => format!("({total}, 1, {h}, {w}) or ({total}, {h}, {w})"),
        [c, h, w] => {
            format!("({total}, {c}, {h}, {w}), ({total}, 1, {h}, {w}) or ({total}, {h}, {w})")
        }
        _ => format!("({total}, {per})"),
    };
    if !fits || mask.len() != total {
        return Err(Error::input(
            path,
            format!(
                "a mask needs one value per input value, shape {expected} for the input {}; \
                 this one has shape {:?}",
                dataset.path.display(),
                mask.x.shape()
            ),
        ));
    }
    let plane = mask_shape.iter().product::<usize>().max(1);
    let flat = mask.x.as_standard_layout();
    let flat = flat.as_slice().expect("standard layout");
    Ok(Mask::File {
        values: flat[..dataset.len() * plane].to_vec(),
        plane,
        channels: per / plane,
    })
}

/// A progress bar on stderr over `len` steps, or a hidden one.
fn progress_bar(show: bool, len: usize, message: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}
