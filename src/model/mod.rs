//! Networks: a closed set of layers with shape inference and load-time validation.
//!
//! Layouts are ONNX's: activations NCHW (or N x D), Dense weights `[in, out]` (so z = x W + b),
//! Conv2d weights `[out_channels, in_channels, kh, kw]`. Weights are stored as f32, as in the file;
//! backends convert them to their own precision.

pub mod inspect;
pub mod onnx;
pub mod onnx_proto;

use ndarray::{Array1, Array2, Array4};

use crate::{Error, Result};

/// 2-D window geometry shared by Conv2d and the pooling layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride along height and width.
    pub stride: [usize; 2],
    /// Zero padding: top, left, bottom, right.
    pub pad: [usize; 4],
}

impl Window {
    /// Output spatial size for an input of `h x w`, or `None` when the window does not fit (or
    /// is empty, or does not move).
    pub fn output_hw(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let ph = h + self.pad[0] + self.pad[2];
        let pw = w + self.pad[1] + self.pad[3];
        if self.stride.contains(&0)
            || self.kernel.contains(&0)
            || ph < self.kernel[0]
            || pw < self.kernel[1]
        {
            return None;
        }
        Some((
            (ph - self.kernel[0]) / self.stride[0] + 1,
            (pw - self.kernel[1]) / self.stride[1] + 1,
        ))
    }
}

/// One layer of a feed-forward network.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// z = x W + b with W `[in, out]`.
    Dense {
        weight: Array2<f32>,
        bias: Array1<f32>,
    },
    /// 2-D convolution, group 1, dilation 1; weight `[out_c, in_c, kh, kw]`.
    Conv2d {
        weight: Array4<f32>,
        bias: Array1<f32>,
        window: Window,
    },
    /// max(0, x).
    Relu,
    /// Max pooling; padded positions never win.
    MaxPool2d { window: Window },
    /// Average pooling. `count_include_pad` follows ONNX (false: divide by the number of real
    /// positions in the window). `sum` makes it sum pooling (average x window size).
    AvgPool2d {
        window: Window,
        count_include_pad: bool,
        sum: bool,
    },
    /// (N, C, H, W) -> (N, C*H*W).
    Flatten,
}

impl Layer {
    /// Short human name of the layer kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Dense { .. } => "Dense",
            Layer::Conv2d { .. } => "Conv2d",
            Layer::Relu => "ReLU",
            Layer::MaxPool2d { .. } => "MaxPool2d",
            Layer::AvgPool2d { sum: false, .. } => "AvgPool2d",
            Layer::AvgPool2d { sum: true, .. } => "SumPool2d",
            Layer::Flatten => "Flatten",
        }
    }

    /// True for the layers that take a relevance rule (Dense and Conv2d).
    pub fn is_linear(&self) -> bool {
        matches!(self, Layer::Dense { .. } | Layer::Conv2d { .. })
    }

    /// Number of trainable parameters.
    pub fn param_count(&self) -> usize {
        match self {
            Layer::Dense { weight, bias } => weight.len() + bias.len(),
            Layer::Conv2d { weight, bias, .. } => weight.len() + bias.len(),
            _ => 0,
        }
    }

    /// Per-sample output shape (batch dimension excluded) for a per-sample input shape.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let chw = |what: &str| -> Result<(usize, usize, usize), String> {
            match input {
                [c, h, w] => Ok((*c, *h, *w)),
                _ => Err(format!(
                    "{what} needs a (C, H, W) input per sample, got {input:?}"
                )),
            }
        };
        match self {
            Layer::Dense { weight, bias } => {
                let (i, o) = weight.dim();
                if bias.len() != o {
                    return Err(format!("bias of length {o}, got {}", bias.len()));
                }
                match input {
                    [d] if *d == i => Ok(vec![o]),
                    _ => Err(format!(
                        "Dense expects an input of shape [{i}], got {input:?}"
                    )),
                }
            }
            Layer::Conv2d {
                weight,
                bias,
                window,
            } => {
                let (oc, ic, kh, kw) = weight.dim();
                if bias.len() != oc {
                    return Err(format!("bias of length {oc}, got {}", bias.len()));
                }
                if window.kernel != [kh, kw] {
                    return Err(format!(
                        "kernel {:?} disagrees with weight shape {:?}",
                        window.kernel,
                        weight.shape()
                    ));
                }
                let (c, h, w) = chw("Conv2d")?;
                if c != ic {
                    return Err(format!("Conv2d expects {ic} input channels, got {c}"));
                }
                let (oh, ow) = window
                    .output_hw(h, w)
                    .ok_or_else(|| format!("window {window:?} does not fit input {h}x{w} (or has a zero kernel size or stride)"))?;
                Ok(vec![oc, oh, ow])
            }
            Layer::Relu => Ok(input.to_vec()),
            Layer::MaxPool2d { window } | Layer::AvgPool2d { window, .. } => {
                let (c, h, w) = chw(self.kind())?;
                if window.pad[0] >= window.kernel[0]
                    || window.pad[2] >= window.kernel[0]
                    || window.pad[1] >= window.kernel[1]
                    || window.pad[3] >= window.kernel[1]
                {
                    return Err(format!(
                        "padding {:?} must be smaller than the kernel",
                        window.pad
                    ));
                }
                let (oh, ow) = window
                    .output_hw(h, w)
                    .ok_or_else(|| format!("window {window:?} does not fit input {h}x{w} (or has a zero kernel size or stride)"))?;
                Ok(vec![c, oh, ow])
            }
            Layer::Flatten => Ok(vec![input.iter().product()]),
        }
    }
}

/// A feed-forward network: a per-sample input shape and a list of layers.
#[derive(Clone, Debug, PartialEq)]
pub struct Network {
    /// Per-sample input shape: `[C, H, W]` for images or `[D]` for tabular data.
    pub input_shape: Vec<usize>,
    /// The layers, in order.
    pub layers: Vec<Layer>,
    /// One name per layer (the ONNX node name, or a generated one) for messages.
    pub names: Vec<String>,
}

impl Network {
    /// Builds and validates a network: shapes must chain, weights must be finite.
    pub fn new(input_shape: Vec<usize>, layers: Vec<Layer>, names: Vec<String>) -> Result<Self> {
        let names = if names.len() == layers.len() {
            names
        } else {
            layers
                .iter()
                .enumerate()
                .map(|(i, l)| format!("{}_{i}", l.kind().to_lowercase()))
                .collect()
        };
        let net = Network {
            input_shape,
            layers,
            names,
        };
        net.validate()?;
        Ok(net)
    }

    /// Checks shapes chain from input to output and all weights are finite.
    pub fn validate(&self) -> Result<()> {
        if self.input_shape.is_empty()
            || self.input_shape.len() == 2
            || self.input_shape.len() > 3
            || self.input_shape.contains(&0)
        {
            return Err(Error::Shape {
                layer: "input".into(),
                expected: "a per-sample shape (C, H, W) or (D) with no zero dimension".into(),
                got: format!("{:?}", self.input_shape),
            });
        }
        if self.layers.is_empty() {
            return Err(Error::Shape {
                layer: "network".into(),
                expected: "at least one layer".into(),
                got: "none".into(),
            });
        }
        // (no layer may be empty either: the engines' index arithmetic divides by these sizes)
        for (k, shape) in self.shapes()?.iter().enumerate().skip(1) {
            if shape.contains(&0) {
                return Err(Error::Shape {
                    layer: format!(
                        "{} ('{}', {})",
                        k - 1,
                        self.names[k - 1],
                        self.layers[k - 1].kind()
                    ),
                    expected: "an output with no zero dimension".into(),
                    got: format!("{shape:?}"),
                });
            }
        }
        for (layer, name) in self.layers.iter().zip(&self.names) {
            let finite = match layer {
                Layer::Dense { weight, bias } => {
                    weight.iter().chain(bias.iter()).all(|v| v.is_finite())
                }
                Layer::Conv2d { weight, bias, .. } => {
                    weight.iter().chain(bias.iter()).all(|v| v.is_finite())
                }
                _ => true,
            };
            if !finite {
                return Err(Error::NonFinite {
                    what: format!("the weights or bias of layer '{name}'"),
                });
            }
        }
        let out = self.output_shape();
        if out.len() != 1 {
            return Err(Error::Shape {
                layer: "output".into(),
                expected: "a vector of logits per sample (add a Flatten)".into(),
                got: format!("{out:?}"),
            });
        }
        Ok(())
    }

    /// Per-sample shapes of every activation: `shapes()[0]` is the input, `shapes()[k + 1]` the
    /// output of layer `k`.
    pub fn shapes(&self) -> Result<Vec<Vec<usize>>> {
        let mut shapes = vec![self.input_shape.clone()];
        for (k, layer) in self.layers.iter().enumerate() {
            let next = layer
                .output_shape(shapes.last().unwrap())
                .map_err(|got| Error::Shape {
                    layer: format!("{k} ('{}', {})", self.names[k], layer.kind()),
                    expected: "an input shape this layer accepts".into(),
                    got,
                })?;
            shapes.push(next);
        }
        Ok(shapes)
    }

    /// Values of the largest im2col matrix of one sample: a Conv2d's patch (input channels x
    /// kernel) times its output positions, or a Dense layer's inputs, i.e. its multiply-adds over
    /// its output channels; 0 without such layers.
    pub fn largest_im2col(&self) -> Result<usize> {
        let shapes = self.shapes()?;
        let cols = self
            .layer_macs()
            .into_iter()
            .zip(&shapes[1..])
            .map(|(macs, out)| macs / out.first().copied().unwrap_or(1).max(1));
        Ok(cols.max().unwrap_or(0))
    }

    /// Number of outputs (logits) per sample.
    pub fn output_shape(&self) -> Vec<usize> {
        self.shapes()
            .map(|s| s.last().unwrap().clone())
            .unwrap_or_default()
    }

    /// Number of logits per sample.
    pub fn num_outputs(&self) -> usize {
        self.output_shape().iter().product()
    }

    /// Number of input values per sample.
    pub fn input_len(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// Indices (into `layers`) of the Dense and Conv2d layers, the ones that take rules.
    pub fn linear_layers(&self) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&i| self.layers[i].is_linear())
            .collect()
    }

    /// Multiply-accumulates of one sample's forward pass through the Dense and Conv2d layers
    /// (a relevance pass costs a small multiple of it: one forward and one transposed product per
    /// rule term; see `Method::relevance_macs`).
    pub fn forward_macs(&self) -> usize {
        self.layer_macs().iter().sum()
    }

    /// Multiply-accumulates of one sample's forward pass through each layer (0 for layers other
    /// than Dense and Conv2d; all 0 when the shapes do not chain).
    pub fn layer_macs(&self) -> Vec<usize> {
        let shapes = match self.shapes() {
            Ok(s) => s,
            Err(_) => return vec![0; self.layers.len()],
        };
        self.layers
            .iter()
            .zip(&shapes[1..])
            .map(|(layer, out)| match layer {
                Layer::Dense { weight, .. } => weight.len(),
                Layer::Conv2d { weight, .. } => {
                    let (_, ic, kh, kw) = weight.dim();
                    out.iter().product::<usize>() * ic * kh * kw
                }
                _ => 0,
            })
            .collect()
    }

    /// Bytes of device memory that one sample's forward and relevance passes move at the least,
    /// weights aside (read once per batch, they stay in cache): the roofline's memory term. Each
    /// Dense, Conv2d and pooling layer reads its input and writes its output going forward, then
    /// reads its input and its upper relevance and writes its lower relevance going back: 3 x
    /// input + 2 x output values. Element-wise layers (ReLU, Flatten) are counted as fused into a
    /// neighbour (no traffic of their own). Values are f32 (4 bytes) except the network's input,
    /// read at `input_value_bytes` each (1 where 8-bit inputs are uploaded as bytes); the
    /// relevance of the input is written as f32. The GPU engine moves more than this (z' kept
    /// from the forward pass, `s` scratch, split-K partial sums, arg-max indices); an engine at
    /// this bound and at the device's bandwidth gives the memory roofline. 0 when the shapes do
    /// not chain.
    pub fn compulsory_traffic(&self, input_value_bytes: usize) -> usize {
        let Ok(shapes) = self.shapes() else {
            return 0;
        };
        let len = |s: &Vec<usize>| s.iter().product::<usize>();
        let input = len(&shapes[0]);
        // the input is read once in each direction and its relevance written once, whatever
        // layers come first
        let mut bytes = input * (2 * input_value_bytes + 4);
        let mut first = true;
        for (layer, (x, out)) in self.layers.iter().zip(shapes.iter().zip(&shapes[1..])) {
            if matches!(layer, Layer::Relu | Layer::Flatten) {
                continue;
            }
            if !first {
                bytes += 3 * 4 * len(x);
            }
            bytes += 2 * 4 * len(out);
            first = false;
        }
        bytes
    }

    /// Per layer, whether its input is known to be non-negative: a ReLU output, possibly pooled
    /// or flattened since (the rules' x- terms vanish there; see `Rule::passes_on`).
    pub fn nonnegative_inputs(&self) -> Vec<bool> {
        let mut nonnegative = false;
        self.layers
            .iter()
            .map(|layer| {
                let input = nonnegative;
                nonnegative = match layer {
                    Layer::Relu => true,
                    Layer::Dense { .. } | Layer::Conv2d { .. } => false,
                    _ => nonnegative,
                };
                input
            })
            .collect()
    }

    /// Total trainable parameters.
    pub fn param_count(&self) -> usize {
        self.layers.iter().map(Layer::param_count).sum()
    }
}
