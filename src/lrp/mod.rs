//! The domain vocabulary: rules, composites, targets, the backend interface and the per-sample
//! consistency statistics (SPEC sections 2 to 4).

mod composite;
mod rule;
mod stats;

pub use composite::{Composite, LayerSelector, Method};
pub use rule::{stabilize, InputMod, ParamMod, Pass, Rule, Term, DEFAULT_EPS};
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
#[derive(Clone, Debug)]
pub struct BatchOutput {
    /// Relevance R_i, shape `(n, per-sample input shape...)`.
    pub relevance: ArrayD<f64>,
    /// The network's outputs, shape `(n, outputs)`.
    pub logits: Array2<f64>,
    /// The output each explanation started from.
    pub targets: Vec<usize>,
}

impl BatchOutput {
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
        SampleStats::compute(row.iter().copied(), self.score(i))
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

/// An explainer planned for one (network, method): runs batches of inputs.
///
/// `targets` is `None` to explain the predicted class, or one class index per sample. For a
/// network with a single output every target is 0.
pub trait Backend {
    /// "cpu" or "gpu".
    fn kind(&self) -> &'static str;
    /// Adapter or processor description for reports.
    fn adapter(&self) -> String;
    /// Explains one batch; `x` has shape `(n, per-sample input shape...)`.
    fn run(&mut self, x: ArrayViewD<'_, f32>, targets: Option<&[usize]>) -> Result<BatchOutput>;
}
