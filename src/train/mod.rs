//! `taylormap train`: a small, deterministic CPU trainer for DTD-ready networks.
//!
//! Networks are trained with Adam on mini-batches in f32 (one thread, batched matrix products,
//! im2col convolutions), from a seeded initialisation and a seeded shuffle, so the same
//! [`TrainConfig`] and data give bit-identical weights on the same machine. Multi-class
//! architectures minimise softmax cross-entropy on the logits (the network itself ends in the
//! logits; softmax is only part of the loss).
//!
//! With [`TrainConfig::nonpositive_bias`], every bias is projected onto `b <= 0` after each step
//! (projected gradient descent). That is the condition under which Deep Taylor Decomposition's
//! root point exists for ReLU layers, so its z+ / w^2 / z^B heatmaps are conservative and
//! positive (Montavon et al. 2017, "Explaining nonlinear classification decisions with deep
//! Taylor decomposition", Pattern Recognition 65).
//!
//! Architectures ([`Arch`]):
//! - `mnist-cnn`: conv5x5(C->8) ReLU maxpool2 conv5x5(8->16) ReLU maxpool2 flatten
//!   dense(->64) ReLU dense(->classes); images of at least 16x16.
//! - `mnist-mlp`: (flatten) dense(->256) ReLU dense(256->256) ReLU dense(->classes).
//! - `detection-pooling`: the paper's basic detection network: (flatten) dense(D->H) ReLU, then
//!   sum pooling over the H detections written as a fixed dense(H->1) layer of ones with bias 0,
//!   so the single output is y = sum_j max(0, sum_i x_i w_ij + b_j). Biases are always kept
//!   <= 0. It is trained as a binary detector of [`TrainConfig::detect_class`] (a sample is
//!   positive when its label equals that class) with the logistic loss on
//!   `y - DETECTION_THRESHOLD`, positives and negatives weighted to count alike: the class is
//!   detected when y > [`DETECTION_THRESHOLD`]. (y is positively homogeneous in the trained
//!   weights, so a fixed threshold loses nothing.)
//! - `tabular-mlp`: dense(D->32) ReLU dense(32->classes) on (N, D) features.
//!
//! The number of classes is [`TrainConfig::num_classes`], or else the largest label plus one.

mod adam;
mod arch;
mod nn;
pub(crate) mod rng;

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use ndarray::{Array1, Array2, ArrayD, ArrayViewD, Axis, Slice};

pub use arch::{default_hidden, CNN_CHANNELS};
use nn::{Act, Model, Real};
use rng::SplitMix64;

use crate::{Error, Layer, Network, Result};

/// Score above which a `detection-pooling` network reports its class as present.
pub const DETECTION_THRESHOLD: f64 = 1.0;

/// Samples per forward pass when evaluating (no gradients kept).
const EVAL_BATCH: usize = 100;

/// The most classes `train` makes: labels are class indices, and a label column that is not a
/// class (an id, a count) would otherwise make as many outputs as its largest value.
pub const MAX_CLASSES: usize = 1 << 16;

/// The architectures `taylormap train --arch` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// A small LeNet-style convolutional network for MNIST-sized images.
    MnistCnn,
    /// A two-hidden-layer ReLU perceptron.
    MnistMlp,
    /// One hidden ReLU layer with biases <= 0 and a sum-pooled single output (Montavon 2017).
    DetectionPooling,
    /// One hidden ReLU layer on tabular features.
    TabularMlp,
}

impl Arch {
    /// Every architecture, in CLI order.
    pub const ALL: [Arch; 4] = [
        Arch::MnistCnn,
        Arch::MnistMlp,
        Arch::DetectionPooling,
        Arch::TabularMlp,
    ];

    /// The CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            Arch::MnistCnn => "mnist-cnn",
            Arch::MnistMlp => "mnist-mlp",
            Arch::DetectionPooling => "detection-pooling",
            Arch::TabularMlp => "tabular-mlp",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<_> = Arch::ALL.iter().map(|a| a.name()).collect();
                Error::usage(
                    "--arch",
                    format!(
                        "unknown architecture '{s}'; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

/// What the trainer minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// Mean softmax cross-entropy of the logits against class labels.
    SoftmaxCrossEntropy,
    /// Mean logistic loss of a single output `y`, as the logit `y - DETECTION_THRESHOLD`, for
    /// the target "label == class" (in training, positives and negatives weighted to count
    /// alike; see `class_weights`).
    Detection { class: usize },
}

/// Settings of one training run.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// Which network to build.
    pub arch: Arch,
    /// Passes over the training data (0 returns the initialised network).
    pub epochs: usize,
    /// Seed of the initial weights and of the batch order.
    pub seed: u64,
    /// Project every bias onto b <= 0 after each step (always on for `detection-pooling`).
    pub nonpositive_bias: bool,
    /// Samples per Adam step (the last batch of an epoch may be smaller).
    pub batch_size: usize,
    /// Adam step size in the first epoch.
    pub learning_rate: f64,
    /// Factor applied to the step size after every epoch (1 keeps it constant).
    pub lr_decay: f64,
    /// Hidden width; `None` takes [`default_hidden`].
    pub hidden: Option<usize>,
    /// Number of classes (outputs); `None` takes the largest label plus one.
    pub num_classes: Option<usize>,
    /// The class `detection-pooling` learns to detect.
    pub detect_class: usize,
}

impl TrainConfig {
    /// Defaults: 10 epochs, seed 0, batches of 64, Adam step 1e-3 (1e-2 for `tabular-mlp`, 3e-4
    /// for `detection-pooling`) decaying by 0.8 per epoch, biases unconstrained (except for
    /// `detection-pooling`), detection of class 0.
    ///
    /// `tabular-mlp` takes the larger step because tables are small: Kaggle's Titanic (712
    /// training rows after a 20 % validation split) gives 12 steps an epoch, and at 1e-3 ten
    /// epochs left the network at 60 % validation accuracy, below the 61.6 % of always answering
    /// the majority class (549 of 891 passengers died); at 1e-2, 80 to 84 % over seeds 0 to 2.
    ///
    /// `detection-pooling` takes a smaller step because its detection layer starts with weights
    /// 1/sqrt(H) the usual size (0.0087 at most for 784 inputs and H = 100), and Adam's first
    /// steps move every weight by about the step size: at 1e-3 the first steps could push every
    /// detection below zero for every input, and a dead ReLU gets no gradient back. On 1,000
    /// synthetic 28 x 28 images with a rare class (`tests/train.rs`) 3 of 40 seeds failed at 1e-3
    /// (2 with the output 0 for every image), none of 100 at 3e-4. On MNIST (zeros against the
    /// other digits, seeds 0 to 11) test accuracy was 99.19 to 99.46 % at 3e-4 and 99.22 to
    /// 99.56 % at 1e-3.
    pub fn new(arch: Arch) -> Self {
        TrainConfig {
            arch,
            epochs: 10,
            seed: 0,
            nonpositive_bias: false,
            batch_size: 64,
            learning_rate: match arch {
                Arch::TabularMlp => 1e-2,
                Arch::DetectionPooling => 3e-4,
                _ => 1e-3,
            },
            lr_decay: 0.8,
            hidden: None,
            num_classes: None,
            detect_class: 0,
        }
    }

    /// The loss this configuration trains with.
    pub fn objective(&self) -> Objective {
        match self.arch {
            Arch::DetectionPooling => Objective::Detection {
                class: self.detect_class,
            },
            _ => Objective::SoftmaxCrossEntropy,
        }
    }

    /// Whether biases are projected onto b <= 0.
    pub fn projects_biases(&self) -> bool {
        self.nonpositive_bias || self.arch == Arch::DetectionPooling
    }

    fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::usage("--batch-size", "must be at least 1"));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::usage(
                "--learning-rate",
                format!("must be a positive number, got {}", self.learning_rate),
            ));
        }
        if !(self.lr_decay.is_finite() && self.lr_decay > 0.0) {
            return Err(Error::usage(
                "--lr-decay",
                format!("must be a positive number, got {}", self.lr_decay),
            ));
        }
        Ok(())
    }
}

/// Summary of one epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches (as trained, weights moving).
    pub loss: f64,
    /// Training accuracy over the epoch's batches (as trained).
    pub accuracy: f64,
    /// Accuracy on the test set after the epoch, when one was given.
    pub test_accuracy: Option<f64>,
    /// Wall time of the epoch, evaluation included.
    pub seconds: f64,
}

/// Events for a progress display.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// Training starts.
    Start {
        epochs: usize,
        batches_per_epoch: usize,
        samples: usize,
        parameters: usize,
    },
    /// A batch was trained; `loss` and `accuracy` are the epoch's running means so far.
    Batch {
        epoch: usize,
        batch: usize,
        batches: usize,
        loss: f64,
        accuracy: f64,
    },
    /// The test set is being evaluated after `epoch`.
    Evaluating { epoch: usize },
    /// An epoch ended.
    Epoch(EpochReport),
}

/// Gradient of the loss for one Dense or Conv2d layer, in the layer's own layout.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerGradient {
    /// Index of the layer in `Network::layers`.
    pub layer: usize,
    /// dLoss/dW: `[in, out]` for Dense, `[out, in, kh, kw]` for Conv2d.
    pub weight: ArrayD<f64>,
    /// dLoss/db.
    pub bias: Array1<f64>,
}

/// Trains `cfg.arch` on `x` ((N, D), (N, C, H, W), or (N, H, W) taken as (N, 1, H, W)) with
/// class `labels`, measuring accuracy on `test` after every epoch. Returns the trained network and one report per epoch.
pub fn train(
    cfg: &TrainConfig,
    x: ArrayViewD<f32>,
    labels: &[usize],
    test: Option<(ArrayViewD<f32>, &[usize])>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Network, Vec<EpochReport>)> {
    cfg.validate()?;
    let x = with_channel_axis(x);
    let test = test.map(|(tx, tl)| (with_channel_axis(tx), tl));
    check_data(&x, labels, "training data")?;
    let objective = cfg.objective();
    let classes = match objective {
        Objective::Detection { .. } => 1,
        Objective::SoftmaxCrossEntropy => {
            let top = labels.iter().copied().max().unwrap_or(0);
            if top >= MAX_CLASSES {
                let distinct = labels
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len();
                return Err(Error::usage(
                    "labels",
                    format!(
                        "label {top} would make {} classes ({distinct} distinct labels occur); \
                         at most {MAX_CLASSES} are trained. Integer labels are class indices: \
                         is the label column a class?",
                        top as u128 + 1
                    ),
                ));
            }
            let classes = cfg.num_classes.unwrap_or(top + 1).max(2);
            if top >= classes {
                return Err(Error::usage(
                    "labels",
                    format!("label {top} is not below the number of classes, {classes}"),
                ));
            }
            classes
        }
    };
    if let Objective::Detection { class } = objective {
        if !labels.contains(&class) {
            return Err(Error::usage(
                "--detect-class",
                format!("class {class} never occurs in the training labels"),
            ));
        }
    }
    let input_shape = x.shape()[1..].to_vec();
    if let Some((tx, tl)) = &test {
        check_data(tx, tl, "test data")?;
        if tx.shape()[1..] != input_shape[..] {
            return Err(Error::Shape {
                layer: "test data".into(),
                expected: format!("samples of the training data's shape {input_shape:?}"),
                got: format!("{:?}", &tx.shape()[1..]),
            });
        }
    }

    let mut init_rng = SplitMix64::new(cfg.seed, 1);
    let (net, trainable) = arch::build(cfg, &input_shape, classes, &mut init_rng)?;
    let mut model = Model::<f32>::from_network(&net)?;
    let n = labels.len();
    let batches = n.div_ceil(cfg.batch_size);
    progress(Progress::Start {
        epochs: cfg.epochs,
        batches_per_epoch: batches,
        samples: n,
        parameters: net.param_count(),
    });

    let weights = class_weights(objective, labels);
    let mut adam = adam::Adam::new();
    let mut shuffle_rng = SplitMix64::new(cfg.seed, 2);
    let mut order: Vec<usize> = (0..n).collect();
    let mut reports = Vec::with_capacity(cfg.epochs);
    for epoch in 1..=cfg.epochs {
        let start = Instant::now();
        let lr = cfg.learning_rate * cfg.lr_decay.powi(epoch as i32 - 1);
        shuffle_rng.shuffle(&mut order);
        let (mut loss_sum, mut correct, mut seen) = (0.0, 0usize, 0usize);
        for (b, idx) in order.chunks(cfg.batch_size).enumerate() {
            let xb = x.select(Axis(0), idx);
            let yb: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
            let (logits, tape) = model.forward_train(Act::from_input(xb.view())?)?;
            let (l, c, dlogits) = evaluate_logits(&logits, &yb, objective, weights, true)?;
            let grads = model.backward(tape, dlogits.expect("requested"));
            adam.begin_step();
            for (k, (op, grad)) in model.ops.iter_mut().zip(grads).enumerate() {
                let (Some(grad), true) = (grad, trainable[k]) else {
                    continue;
                };
                if let nn::Op::Dense { w, b } | nn::Op::Conv { w, b, .. } = op {
                    adam.update(2 * k, lr, w.view_mut().into_dyn(), grad.w.view().into_dyn());
                    adam.update(
                        2 * k + 1,
                        lr,
                        b.view_mut().into_dyn(),
                        grad.b.view().into_dyn(),
                    );
                    if cfg.projects_biases() {
                        b.mapv_inplace(|v| v.min(0.0));
                    }
                }
            }
            loss_sum += l;
            correct += c;
            seen += idx.len();
            progress(Progress::Batch {
                epoch,
                batch: b + 1,
                batches,
                loss: loss_sum / seen as f64,
                accuracy: correct as f64 / seen as f64,
            });
        }
        let test_accuracy = match &test {
            Some((tx, tl)) => {
                progress(Progress::Evaluating { epoch });
                let (_, c) = evaluate(&model, tx.view(), tl, objective)?;
                Some(c as f64 / tl.len() as f64)
            }
            None => None,
        };
        let report = EpochReport {
            epoch,
            loss: loss_sum / seen as f64,
            accuracy: correct as f64 / seen as f64,
            test_accuracy,
            seconds: start.elapsed().as_secs_f64(),
        };
        progress(Progress::Epoch(report.clone()));
        reports.push(report);
    }
    Ok((model.to_network()?, reports))
}

/// Share of samples the network classifies correctly: the arg-max logit (first on ties) against
/// class labels; for a single-output (detection) network, `y > DETECTION_THRESHOLD` against
/// labels 1 (present) and 0 (absent) (see [`binary_labels`]).
pub fn accuracy(net: &Network, x: ArrayViewD<f32>, labels: &[usize]) -> Result<f64> {
    let objective = default_objective(net);
    let model = Model::<f32>::from_network(net)?;
    check_input(net, &x, labels)?;
    let (_, correct) = evaluate(&model, x, labels, objective)?;
    Ok(correct as f64 / labels.len() as f64)
}

/// The logits `(N, K)` of `net` on a batch, by the trainer's batched f32 forward pass.
pub fn forward(net: &Network, x: ArrayViewD<f32>) -> Result<Array2<f32>> {
    let model = Model::<f32>::from_network(net)?;
    let labels = vec![0; x.shape().first().copied().unwrap_or(0)];
    check_input(net, &x, &labels)?;
    let mut parts = vec![];
    for start in (0..labels.len()).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(labels.len());
        parts.push(model.forward(Act::from_input(
            x.slice_axis(Axis(0), Slice::from(start..end)),
        )?)?);
    }
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Shape {
        layer: "output".into(),
        expected: "logits of one width".into(),
        got: e.to_string(),
    })
}

/// Labels for a detection network: 1 where `labels[i] == class`, else 0.
pub fn binary_labels(labels: &[usize], class: usize) -> Vec<usize> {
    labels.iter().map(|&l| usize::from(l == class)).collect()
}

/// Mean loss of `net` on a batch, computed in f64.
pub fn loss(
    net: &Network,
    objective: Objective,
    x: ArrayViewD<f32>,
    labels: &[usize],
) -> Result<f64> {
    let model = Model::<f64>::from_network(net)?;
    check_input(net, &x, labels)?;
    let (sum, _) = evaluate(&model, x, labels, objective)?;
    Ok(sum / labels.len() as f64)
}

/// Mean loss of `net` on a batch and its gradient for every Dense/Conv2d layer, by
/// backpropagation in f64 (what the trainer computes in f32).
pub fn gradient(
    net: &Network,
    objective: Objective,
    x: ArrayViewD<f32>,
    labels: &[usize],
) -> Result<(f64, Vec<LayerGradient>)> {
    let model = Model::<f64>::from_network(net)?;
    check_input(net, &x, labels)?;
    let (logits, tape) = model.forward_train(Act::from_input(x)?)?;
    let (sum, _, dlogits) = evaluate_logits(&logits, labels, objective, UNWEIGHTED, true)?;
    let grads = model.backward(tape, dlogits.expect("requested"));
    let mut out = vec![];
    for (k, grad) in grads.into_iter().enumerate() {
        let Some(grad) = grad else { continue };
        let weight = match &net.layers[k] {
            Layer::Conv2d { weight, .. } => grad
                .w
                .into_shape_with_order(ndarray::IxDyn(weight.shape()))
                .map_err(|e| Error::Shape {
                    layer: net.names[k].clone(),
                    expected: "a conv weight gradient".into(),
                    got: e.to_string(),
                })?,
            _ => grad.w.into_dyn(),
        };
        out.push(LayerGradient {
            layer: k,
            weight,
            bias: grad.b,
        });
    }
    Ok((sum / labels.len() as f64, out))
}

fn default_objective(net: &Network) -> Objective {
    if net.num_outputs() == 1 {
        Objective::Detection { class: 1 }
    } else {
        Objective::SoftmaxCrossEntropy
    }
}

/// Grayscale images (N, H, W), as IDX files hold them, become (N, 1, H, W).
fn with_channel_axis(x: ArrayViewD<f32>) -> ArrayViewD<f32> {
    if x.ndim() == 3 {
        x.insert_axis(Axis(1))
    } else {
        x
    }
}

/// Batch shape, label count and finiteness.
fn check_data(x: &ArrayViewD<f32>, labels: &[usize], what: &str) -> Result<()> {
    let shape = x.shape();
    if !(shape.len() == 2 || shape.len() == 4) || shape.contains(&0) {
        return Err(Error::Shape {
            layer: what.into(),
            expected: "a non-empty batch of shape (N, D) or (N, C, H, W)".into(),
            got: format!("{shape:?}"),
        });
    }
    if labels.len() != shape[0] {
        return Err(Error::Shape {
            layer: what.into(),
            expected: format!("one label per sample ({} samples)", shape[0]),
            got: format!("{} labels", labels.len()),
        });
    }
    if let Some(i) = x
        .outer_iter()
        .position(|s| s.iter().any(|v| !v.is_finite()))
    {
        return Err(Error::NonFinite {
            what: format!("{what}, sample {i}"),
        });
    }
    Ok(())
}

fn check_input(net: &Network, x: &ArrayViewD<f32>, labels: &[usize]) -> Result<()> {
    check_data(x, labels, "input")?;
    if x.shape()[1..] != net.input_shape[..] {
        return Err(Error::Shape {
            layer: "input".into(),
            expected: format!("samples of the network's input shape {:?}", net.input_shape),
            got: format!("{:?}", &x.shape()[1..]),
        });
    }
    Ok(())
}

/// Summed loss and number of correct predictions over a data set, in batches.
fn evaluate<F: Real>(
    model: &Model<F>,
    x: ArrayViewD<f32>,
    labels: &[usize],
    objective: Objective,
) -> Result<(f64, usize)> {
    let (mut loss, mut correct) = (0.0, 0);
    for start in (0..labels.len()).step_by(EVAL_BATCH) {
        let end = (start + EVAL_BATCH).min(labels.len());
        let xb = x.slice_axis(Axis(0), Slice::from(start..end));
        let logits = model.forward(Act::from_input(xb)?)?;
        let (l, c, _) =
            evaluate_logits(&logits, &labels[start..end], objective, UNWEIGHTED, false)?;
        loss += l;
        correct += c;
    }
    Ok((loss, correct))
}

/// Weights of the detection loss's negative and positive samples: 1 and 1 (the plain mean).
const UNWEIGHTED: [f64; 2] = [1.0, 1.0];

/// The weights [`train`] gives a detection objective's negative and positive samples, so that
/// each class carries half of the gradient: n / (2 n_neg) and n / (2 n_pos). Without them a rare
/// class (a digit is a tenth of MNIST) lets the negatives push every detection's bias and
/// weights down until no ReLU fires for any input, and a dead ReLU gets no gradient back: on
/// MNIST, `detection-pooling` with the defaults ended so in two of three seeds, answering "absent"
/// for every image (90.2 % accuracy, the share of other digits). Plain weights for the other
/// objective and for a class without negatives.
fn class_weights(objective: Objective, labels: &[usize]) -> [f64; 2] {
    let Objective::Detection { class } = objective else {
        return UNWEIGHTED;
    };
    let n = labels.len() as f64;
    let pos = labels.iter().filter(|&&l| l == class).count() as f64;
    let neg = n - pos;
    if pos == 0.0 || neg == 0.0 {
        return UNWEIGHTED;
    }
    [n / (2.0 * neg), n / (2.0 * pos)]
}

/// Summed loss, correct count and (optionally) the gradient of the batch's *mean* loss with
/// respect to the logits. A detection objective weighs its negative and positive samples' loss by
/// `weights` ([`UNWEIGHTED`] for the plain mean).
fn evaluate_logits<F: Real>(
    logits: &Array2<F>,
    labels: &[usize],
    objective: Objective,
    weights: [f64; 2],
    want_grad: bool,
) -> Result<(f64, usize, Option<Array2<F>>)> {
    let (n, k) = logits.dim();
    let scale = F::of(1.0 / n as f64);
    let mut grad = want_grad.then(|| Array2::zeros((n, k)));
    let (mut loss, mut correct) = (0.0, 0);
    match objective {
        Objective::SoftmaxCrossEntropy => {
            if k < 2 {
                return Err(Error::Shape {
                    layer: "output".into(),
                    expected: "at least 2 logits for softmax cross-entropy".into(),
                    got: format!("{k}"),
                });
            }
            for (i, (z, &y)) in logits.outer_iter().zip(labels).enumerate() {
                if y >= k {
                    return Err(Error::usage(
                        "labels",
                        format!("label {y} of sample {i} is not below the number of outputs, {k}"),
                    ));
                }
                // Arg-max, first on ties; log-sum-exp shifted by the maximum.
                let (mut best, mut max) = (0, z[0]);
                for (j, &v) in z.iter().enumerate() {
                    if v > max {
                        best = j;
                        max = v;
                    }
                }
                let lse = max + z.mapv(|v| (v - max).exp()).sum().ln();
                loss += (lse - z[y]).f64();
                correct += usize::from(best == y);
                if let Some(g) = grad.as_mut() {
                    let mut row = g.row_mut(i);
                    row.assign(&z.mapv(|v| (v - lse).exp()));
                    row[y] -= F::one();
                    row *= scale;
                }
            }
        }
        Objective::Detection { class } => {
            if k != 1 {
                return Err(Error::Shape {
                    layer: "output".into(),
                    expected: "a single output for a detection network".into(),
                    got: format!("{k} outputs"),
                });
            }
            let threshold = F::of(DETECTION_THRESHOLD);
            for (i, (&y, &label)) in logits.column(0).iter().zip(labels).enumerate() {
                let t = if label == class { F::one() } else { F::zero() };
                let weight = weights[usize::from(label == class)];
                let l = y - threshold;
                // softplus(l) - t l, with softplus(l) = max(l, 0) + ln(1 + e^-|l|).
                let softplus = l.max(F::zero()) + (-l.abs()).exp().ln_1p();
                loss += weight * (softplus - t * l).f64();
                correct += usize::from((y > threshold) == (label == class));
                if let Some(g) = grad.as_mut() {
                    let sigmoid = F::one() / (F::one() + (-l).exp());
                    g[[i, 0]] = (sigmoid - t) * scale * F::of(weight);
                }
            }
        }
    }
    Ok((loss, correct, grad))
}
