//! The trainer's architectures: layer lists and seeded He-uniform initialisation (biases start at 0).

use ndarray::{Array1, Array2, Array4};

use super::rng::SplitMix64;
use super::{Arch, TrainConfig};
use crate::model::Window;
use crate::{Error, Layer, Network, Result};

/// Output channels of the two 5x5 convolutions of `mnist-cnn`.
pub const CNN_CHANNELS: [usize; 2] = [8, 16];
/// Default hidden width per architecture (`TrainConfig::hidden` overrides it).
pub fn default_hidden(arch: Arch) -> usize {
    match arch {
        Arch::MnistCnn => 64,
        Arch::MnistMlp => 256,
        Arch::DetectionPooling => 100,
        Arch::TabularMlp => 32,
    }
}

/// A freshly initialised network for `cfg.arch` on per-sample inputs of `input_shape`, with
/// `classes` outputs (ignored by `detection-pooling`, which has one). Also returns, per layer,
/// whether the trainer updates it (the sum-pooling layer of `detection-pooling` is fixed).
pub(crate) fn build(
    cfg: &TrainConfig,
    input_shape: &[usize],
    classes: usize,
    rng: &mut SplitMix64,
) -> Result<(Network, Vec<bool>)> {
    let hidden = cfg.hidden.unwrap_or_else(|| default_hidden(cfg.arch));
    if hidden == 0 {
        return Err(Error::usage(
            "--hidden",
            "the hidden width must be at least 1",
        ));
    }
    let arch = cfg.arch.name();
    let available = crate::available_memory();
    let mut b = Builder {
        rng,
        layers: vec![],
        names: vec![],
        trainable: vec![],
        params: 0,
        max_params: available.map_or(FALLBACK_MAX_PARAMS, |a| a / TRAIN_BYTES_PER_PARAM),
        available,
        what: format!("{arch} on inputs of shape {input_shape:?} with hidden width {hidden}"),
    };
    let flat_input = |what: &str| -> Result<usize> {
        match input_shape {
            [d] => Ok(*d),
            [c, h, w] => Ok(c * h * w),
            _ => Err(Error::Shape {
                layer: "input".into(),
                expected: format!("{what} for {arch}"),
                got: format!("per-sample shape {input_shape:?}"),
            }),
        }
    };
    match cfg.arch {
        Arch::MnistCnn => {
            let (c, h, w) = match input_shape {
                [c, h, w] if *h >= 16 && *w >= 16 => (*c, *h, *w),
                _ => {
                    return Err(Error::Shape {
                        layer: "input".into(),
                        expected: "images (N, C, H, W) of at least 16x16 for mnist-cnn".into(),
                        got: format!("per-sample shape {input_shape:?}"),
                    })
                }
            };
            let [c1, c2] = CNN_CHANNELS;
            let pool = Window {
                kernel: [2, 2],
                stride: [2, 2],
                pad: [0; 4],
            };
            b.conv("conv1", c, c1, 5)?;
            b.push("relu1", Layer::Relu, false);
            b.push("pool1", Layer::MaxPool2d { window: pool }, false);
            b.conv("conv2", c1, c2, 5)?;
            b.push("relu2", Layer::Relu, false);
            b.push("pool2", Layer::MaxPool2d { window: pool }, false);
            b.push("flatten", Layer::Flatten, false);
            // Valid 5x5 convolution, then 2x2 pooling, twice.
            let side = |s: usize| ((s - 4) / 2 - 4) / 2;
            let flat = c2 * side(h) * side(w);
            b.dense("fc1", flat, hidden)?;
            b.push("relu3", Layer::Relu, false);
            b.dense("fc2", hidden, classes)?;
        }
        Arch::MnistMlp => {
            let d = flat_input("(N, D) or (N, C, H, W) inputs")?;
            if input_shape.len() == 3 {
                b.push("flatten", Layer::Flatten, false);
            }
            b.dense("fc1", d, hidden)?;
            b.push("relu1", Layer::Relu, false);
            b.dense("fc2", hidden, hidden)?;
            b.push("relu2", Layer::Relu, false);
            b.dense("fc3", hidden, classes)?;
        }
        Arch::DetectionPooling => {
            let d = flat_input("(N, D) or (N, C, H, W) inputs")?;
            if input_shape.len() == 3 {
                b.push("flatten", Layer::Flatten, false);
            }
            b.dense("detect", d, hidden)?;
            // He initialisation scaled by 1/sqrt(H) keeps the initial sum of H detections O(1).
            if let Some(Layer::Dense { weight, .. }) = b.layers.last_mut() {
                weight.mapv_inplace(|v| v / (hidden as f32).sqrt());
            }
            b.push("relu", Layer::Relu, false);
            b.reserve("sum_pool", Some(hidden))?;
            b.push(
                "sum_pool",
                Layer::Dense {
                    weight: Array2::ones((hidden, 1)),
                    bias: Array1::zeros(1),
                },
                false,
            );
        }
        Arch::TabularMlp => {
            let d = match input_shape {
                [d] => *d,
                _ => {
                    return Err(Error::Shape {
                        layer: "input".into(),
                        expected: "tabular features (N, D) for tabular-mlp".into(),
                        got: format!("per-sample shape {input_shape:?}"),
                    })
                }
            };
            b.dense("fc1", d, hidden)?;
            b.push("relu1", Layer::Relu, false);
            b.dense("fc2", hidden, classes)?;
        }
    }
    let Builder {
        layers,
        names,
        trainable,
        ..
    } = b;
    Ok((
        Network::new(input_shape.to_vec(), layers, names)?,
        trainable,
    ))
}

/// Host memory training takes per parameter, about: the f32 weight, its gradient, Adam's two
/// moments, and a copy as the model is written (measured: 20 to 22 bytes per parameter for
/// mnist-mlp of width 5,000 and 10,000, data included).
const TRAIN_BYTES_PER_PARAM: u64 = 24;
/// The most parameters where the system does not say how much memory there is (80 GB of training
/// state).
const FALLBACK_MAX_PARAMS: u64 = 1 << 32;

struct Builder<'a> {
    rng: &'a mut SplitMix64,
    layers: Vec<Layer>,
    names: Vec<String>,
    trainable: Vec<bool>,
    /// Parameters so far, and the most there is memory to train.
    params: u64,
    max_params: u64,
    /// The memory available (Linux's `MemAvailable`), where the system says.
    available: Option<u64>,
    /// The architecture, input shape and width, for messages.
    what: String,
}

impl Builder<'_> {
    fn push(&mut self, name: &str, layer: Layer, trainable: bool) {
        self.layers.push(layer);
        self.names.push(name.into());
        self.trainable.push(trainable);
    }

    /// He-uniform bound for `fan_in` inputs: sqrt(6 / fan_in).
    fn he(&mut self, fan_in: usize) -> f32 {
        let s = (6.0 / fan_in as f64).sqrt();
        self.rng.uniform(-s, s) as f32
    }

    /// Counts `count` more parameters (`None`: beyond usize), refusing before they are allocated a
    /// network whose training would not fit in memory.
    fn reserve(&mut self, name: &str, count: Option<usize>) -> Result<()> {
        match count.and_then(|c| self.params.checked_add(c as u64)) {
            Some(total) if total <= self.max_params => {
                self.params = total;
                Ok(())
            }
            _ => {
                let memory = match self.available {
                    Some(a) => format!("{:.1} GB of memory are available", a as f64 * 1e-9),
                    None => "the system does not say how much memory there is".to_string(),
                };
                Err(Error::usage(
                    "--hidden",
                    format!(
                        "{} has more than {} parameters by layer '{name}', too many to train: \
                         training takes about {TRAIN_BYTES_PER_PARAM} bytes of memory per \
                         parameter and {memory}; choose a smaller --hidden",
                        self.what, self.max_params
                    ),
                ))
            }
        }
    }

    fn dense(&mut self, name: &str, inputs: usize, outputs: usize) -> Result<()> {
        let count = inputs
            .checked_mul(outputs)
            .and_then(|w| w.checked_add(outputs));
        self.reserve(name, count)?;
        let weight = Array2::from_shape_simple_fn((inputs, outputs), || self.he(inputs));
        let layer = Layer::Dense {
            weight,
            bias: Array1::zeros(outputs),
        };
        self.push(name, layer, true);
        Ok(())
    }

    /// A 5x5-style square convolution, stride 1, no padding.
    fn conv(&mut self, name: &str, inputs: usize, outputs: usize, kernel: usize) -> Result<()> {
        let fan_in = inputs * kernel * kernel;
        self.reserve(name, Some(outputs * fan_in + outputs))?;
        let weight =
            Array4::from_shape_simple_fn((outputs, inputs, kernel, kernel), || self.he(fan_in));
        let layer = Layer::Conv2d {
            weight,
            bias: Array1::zeros(outputs),
            window: Window {
                kernel: [kernel, kernel],
                stride: [1, 1],
                pad: [0; 4],
            },
        };
        self.push(name, layer, true);
        Ok(())
    }
}
