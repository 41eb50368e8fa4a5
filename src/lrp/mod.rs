//! The domain vocabulary: rules, composites, targets, the backend interface and the per-sample
//! consistency statistics (SPEC sections 2 to 4).

mod composite;
mod rule;
mod stats;

pub use composite::{Composite, LayerSelector, Method};
pub use rule::{stabilize, ForwardZ, InputMod, ParamMod, Pass, Rule, Term, DEFAULT_EPS};
pub use stats::SampleStats;

use ndarray::{Array2, ArrayD, ArrayViewD};

use crate::Result;

/// The range an input value can take after the input transform; zbox's L and H default to it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bounds {
    pub low: f64,
    pub high: f64,
}

impl Bounds {
    /// The range of pixels scaled to [0, 1] and then normalised with `(x - mean) / std`.
    pub fn unit_normalized(normalize: Option<(f64, f64)>) -> Self {
        match normalize {
            None => Bounds {
                low: 0.0,
                high: 1.0,
            },
            Some((m, s)) => {
                let (a, b) = ((0.0 - m) / s, (1.0 - m) / s);
                Bounds {
                    low: a.min(b),
                    high: a.max(b),
                }
            }
        }
    }
}

/// Which output the explanation starts from (SPEC section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetChoice {
    /// The arg-max logit (first on ties).
    Predicted,
    /// The dataset's label.
    Label,
    /// A fixed class index.
    Class(usize),
}

impl std::str::FromStr for TargetChoice {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "predicted" => Ok(TargetChoice::Predicted),
            "label" => Ok(TargetChoice::Label),
            k => k.parse::<usize>().map(TargetChoice::Class).map_err(|_| {
                crate::Error::usage(
                    "--target",
                    format!("expected 'predicted', 'label' or a class index, got '{k}'"),
                )
            }),
        }
    }
}

/// What a backend returns for one batch of `n` samples.
///
/// The relevance has the engine's own precision: f64 from the reference backend's [`explain`]
/// functions, f32 through the [`Backend`] interface (what the GPU computes and relevance.npy
/// stores, so that no batch is widened and narrowed again on its way to disk).
///
/// [`explain`]: crate::cpu::explain
#[derive(Clone, Debug)]
pub struct BatchOutput<T = f64> {
    /// Relevance R_i, shape `(n, per-sample input shape...)`.
    pub relevance: ArrayD<T>,
    /// The network's outputs, shape `(n, outputs)`.
    pub logits: Array2<f64>,
    /// The output each explanation started from.
    pub targets: Vec<usize>,
}

impl<T: Copy + Into<f64>> BatchOutput<T> {
    /// Score y_t of sample `i`.
    pub fn score(&self, i: usize) -> f64 {
        self.logits[[i, self.targets[i]]]
    }

    /// Predicted class (arg-max, first on ties) of sample `i`.
    pub fn predicted(&self, i: usize) -> usize {
        argmax(self.logits.row(i).iter().copied())
    }

    /// Consistency statistics of sample `i`.
    pub fn stats(&self, i: usize) -> SampleStats {
        let row = self.relevance.index_axis(ndarray::Axis(0), i);
        SampleStats::compute(row.iter().map(|&r| r.into()), self.score(i))
    }
}

impl BatchOutput<f64> {
    /// The same output with the relevance rounded to f32.
    pub fn to_f32(&self) -> BatchOutput<f32> {
        BatchOutput {
            relevance: self.relevance.mapv(|r| r as f32),
            logits: self.logits.clone(),
            targets: self.targets.clone(),
        }
    }
}

/// Index of the largest value, the first one on ties (NaN never wins).
pub fn argmax(values: impl IntoIterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.into_iter().enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Checks that a batch has shape `(n, input...)`; returns n.
pub fn check_batch(shape: &[usize], input: &[usize]) -> Result<usize> {
    if shape.len() != input.len() + 1 || shape[1..] != *input {
        let join = |d: &[usize]| {
            d.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(crate::Error::Shape {
            layer: "input".into(),
            expected: format!("a batch of shape (n, {})", join(input)),
            got: format!("({})", join(shape)),
        });
    }
    Ok(shape[0])
}

/// Checks that every input value is finite, naming the first sample that is not.
pub fn check_finite<T: Copy + Into<f64>>(x: ArrayViewD<'_, T>) -> Result<()> {
    let finite = |v: &T| {
        let v: f64 = (*v).into();
        v.is_finite()
    };
    let per_sample: usize = x.shape().iter().skip(1).product();
    let bad = match x.as_slice() {
        // A contiguous batch is scanned as a flat slice (the common case, and much faster).
        // (`fold` rather than `all`: no early exit per value, so the scan vectorises.)
        Some(flat) if per_sample > 0 => flat
            .chunks(per_sample)
            .position(|sample| !sample.iter().fold(true, |ok, v| ok & finite(v))),
        _ => x.outer_iter().position(|sample| !sample.iter().all(finite)),
    };
    match bad {
        Some(i) => Err(crate::Error::NonFinite {
            what: format!("input sample {i}"),
        }),
        None => Ok(()),
    }
}

/// Checks explicit targets for a batch of `n` samples of a network with `outputs` outputs.
pub fn check_targets(targets: &[usize], n: usize, outputs: usize) -> Result<()> {
    if targets.len() != n {
        return Err(crate::Error::usage(
            "--target",
            format!("got {} targets for a batch of {n} samples", targets.len()),
        ));
    }
    // A single-output (detection) network always explains y itself.
    if outputs == 1 {
        return Ok(());
    }
    match targets.iter().enumerate().find(|(_, &c)| c >= outputs) {
        Some((i, &bad)) => Err(crate::Error::usage(
            "--target",
            format!(
                "sample {i}: target class {bad} is out of range; the network has {outputs} \
                 outputs (0..={})",
                outputs - 1
            ),
        )),
        None => Ok(()),
    }
}

/// An explainer planned for one (network, method): runs batches of inputs.
///
/// `targets` is `None` to explain the predicted class, or one class index per sample. For a
/// network with a single output every target is 0.
///
/// Backends are `Send`: `explain` runs one on its own thread, so that it computes the next batch
/// while the previous one is written.
pub trait Backend: Send {
    /// "cpu" (the fast CPU engine), "gpu" or "reference" (the f64 CPU reference).
    fn kind(&self) -> &'static str;
    /// Adapter or processor description for reports.
    fn adapter(&self) -> String;
    /// Explains one batch; `x` has shape `(n, per-sample input shape...)`.
    fn run(
        &mut self,
        x: ArrayViewD<'_, f32>,
        targets: Option<&[usize]>,
    ) -> Result<BatchOutput<f32>>;

    /// The network's outputs (logits) for one batch, shape `(n, outputs)`, without relevance:
    /// what evaluation by perturbation (`taylormap eval --metric aopc`) runs many times. By
    /// default the logits of [`Backend::run`]; the CPU backends run only the forward pass.
    fn logits(&mut self, x: ArrayViewD<'_, f32>) -> Result<Array2<f64>> {
        Ok(self.run(x, None)?.logits)
    }

    /// Whether [`Backend::run_pixels`] is cheaper than [`Backend::run`] for 8-bit inputs (the
    /// GPU backend: a quarter of the bytes cross the bus). Callers holding both forms use it.
    fn prefers_bytes(&self) -> bool {
        false
    }

    /// Explains one batch of 8-bit samples whose values are `lut[byte]` (the [`Pixels`] of an
    /// 8-bit source); `bytes` has shape `(n, per-sample input shape...)`. Same result as
    /// [`Backend::run`] on the expanded values. The GPU backend uploads the bytes, one per value
    /// instead of four, and expands them on the device; by default they are expanded here.
    ///
    /// [`Pixels`]: crate::data::Pixels
    fn run_pixels(
        &mut self,
        bytes: ArrayViewD<'_, u8>,
        lut: &[f32; 256],
        targets: Option<&[usize]>,
    ) -> Result<BatchOutput<f32>> {
        let x = bytes.mapv(|b| lut[usize::from(b)]);
        self.run(x.view(), targets)
    }

    /// Explains one batch given as [`Samples`]: [`Backend::run`] or [`Backend::run_pixels`].
    fn run_samples(
        &mut self,
        samples: Samples<'_>,
        targets: Option<&[usize]>,
    ) -> Result<BatchOutput<f32>> {
        match samples {
            Samples::F32(x) => self.run(x, targets),
            Samples::U8(bytes, lut) => self.run_pixels(bytes, lut, targets),
        }
    }

    /// Explains a stream of batches in order, handing each batch's output to `sink` as soon as
    /// it is ready; `sink` returns whether to go on (false ends the stream early, without an
    /// error). An error about an input sample names the stream's samples of its batch.
    ///
    /// By default one [`Backend::run_samples`] per batch. The GPU backend keeps the next batch
    /// in flight while it reads back and hands over the previous one, so that the GPU does not
    /// idle between batches: `explain` and `bench` stream their batches through here.
    fn run_stream<'a>(
        &mut self,
        batches: &mut dyn Iterator<Item = StreamBatch<'a>>,
        sink: &mut dyn FnMut(BatchOutput<f32>) -> Result<bool>,
    ) -> Result<()> {
        let mut start = 0;
        for batch in batches {
            let n = batch.samples.len();
            let out = self
                .run_samples(batch.samples, batch.targets)
                .map_err(|e| in_batch(e, start, start + n))?;
            start += n;
            if !sink(out)? {
                break;
            }
        }
        Ok(())
    }
}

/// The samples of one batch: f32 values, or 8-bit values with the value of each byte (the
/// [`Pixels`] of an 8-bit source; see [`Backend::run_pixels`]).
///
/// [`Pixels`]: crate::data::Pixels
#[derive(Clone, Debug)]
pub enum Samples<'a> {
    F32(ArrayViewD<'a, f32>),
    U8(ArrayViewD<'a, u8>, &'a [f32; 256]),
}

impl Samples<'_> {
    /// The batch's shape, `(n, per-sample input shape...)`.
    pub fn shape(&self) -> &[usize] {
        match self {
            Samples::F32(x) => x.shape(),
            Samples::U8(b, _) => b.shape(),
        }
    }

    /// Samples in the batch (0 for a batch without a sample axis).
    pub fn len(&self) -> usize {
        self.shape().first().copied().unwrap_or(0)
    }

    /// Whether the batch has no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One batch of a [`Backend::run_stream`]: its samples and, optionally, one target per sample.
#[derive(Clone, Debug)]
pub struct StreamBatch<'a> {
    pub samples: Samples<'a>,
    pub targets: Option<&'a [usize]>,
}

/// Says which samples of a stream an error about "input sample i" (counted within its batch of
/// the stream's samples `start..end`) came from.
pub(crate) fn in_batch(e: crate::Error, start: usize, end: usize) -> crate::Error {
    match e {
        crate::Error::NonFinite { what } => crate::Error::NonFinite {
            what: format!(
                "{what} of the batch of samples {start}..{end} (sample {start} counts as 0 there)"
            ),
        },
        e => e,
    }
}
