//! Shared test helpers: seeded random networks and inputs, and error measures.
//!
//! Every test draws fresh random cases: the seed comes from `TAYLORMAP_SEED` when set, else from
//! the clock, and is printed (cargo shows it when the test fails) so a failure can be replayed.
#![allow(dead_code)]

pub mod gpu;

use ndarray::{Array1, Array2, Array4, ArrayD, IxDyn};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use taylormap::model::Window;
use taylormap::{BatchOutput, Layer, Network};

/// A seeded RNG for test `name`; prints the seed.
pub fn rng(name: &str) -> StdRng {
    let seed = std::env::var("TAYLORMAP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{name}: seed {seed} (replay with TAYLORMAP_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

/// Uniform in [lo, hi).
pub fn uniform(rng: &mut StdRng, lo: f64, hi: f64) -> f32 {
    (lo + (hi - lo) * rng.random::<f64>()) as f32
}

/// Bias in [-0.5, 0.5), or in [-0.5, 0] when `nonpositive`.
fn bias(rng: &mut StdRng, n: usize, nonpositive: bool) -> Array1<f32> {
    Array1::from_shape_fn(n, |_| {
        uniform(rng, -0.5, if nonpositive { 0.0 } else { 0.5 })
    })
}

/// A Dense layer with weights scaled like He initialisation.
pub fn dense(rng: &mut StdRng, inputs: usize, outputs: usize, nonpositive_bias: bool) -> Layer {
    let s = (6.0 / inputs as f64).sqrt();
    Layer::Dense {
        weight: Array2::from_shape_fn((inputs, outputs), |_| uniform(rng, -s, s)),
        bias: bias(rng, outputs, nonpositive_bias),
    }
}

/// A Conv2d layer.
pub fn conv(
    rng: &mut StdRng,
    in_c: usize,
    out_c: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    nonpositive_bias: bool,
) -> Layer {
    let s = (6.0 / (in_c * kernel * kernel) as f64).sqrt();
    Layer::Conv2d {
        weight: Array4::from_shape_fn((out_c, in_c, kernel, kernel), |_| uniform(rng, -s, s)),
        bias: bias(rng, out_c, nonpositive_bias),
        window: Window {
            kernel: [kernel, kernel],
            stride: [stride, stride],
            pad: [pad; 4],
        },
    }
}

/// Dense ReLU network with the given layer widths (`widths[0]` is the input size).
pub fn random_mlp(rng: &mut StdRng, widths: &[usize], nonpositive_bias: bool) -> Network {
    let mut layers = vec![];
    for k in 0..widths.len() - 1 {
        if k > 0 {
            layers.push(Layer::Relu);
        }
        layers.push(dense(rng, widths[k], widths[k + 1], nonpositive_bias));
    }
    Network::new(vec![widths[0]], layers, vec![]).unwrap()
}

/// A small random CNN: conv (random stride/padding) -> relu -> max or avg pool -> conv -> relu
/// -> flatten -> dense -> relu -> dense, on an input of `c x h x w`.
pub fn random_cnn(
    rng: &mut StdRng,
    c: usize,
    h: usize,
    w: usize,
    nonpositive_bias: bool,
) -> Network {
    let c1 = rng.random_range(2..5);
    let k1 = rng.random_range(2..4);
    let stride = rng.random_range(1..3);
    let pad = rng.random_range(0..2);
    let mut layers = vec![
        conv(rng, c, c1, k1, stride, pad, nonpositive_bias),
        Layer::Relu,
    ];
    let pool = Window {
        kernel: [2, 2],
        stride: [2, 2],
        pad: [0; 4],
    };
    layers.push(if rng.random::<bool>() {
        Layer::MaxPool2d { window: pool }
    } else {
        Layer::AvgPool2d {
            window: pool,
            count_include_pad: false,
            sum: false,
        }
    });
    let c2 = rng.random_range(2..5);
    layers.push(conv(rng, c1, c2, 2, 1, 1, nonpositive_bias));
    layers.push(Layer::Relu);
    layers.push(Layer::Flatten);
    let flat = Network::new(vec![c, h, w], layers.clone(), vec![])
        .unwrap()
        .output_shape()[0];
    let hidden = rng.random_range(4..12);
    layers.push(dense(rng, flat, hidden, nonpositive_bias));
    layers.push(Layer::Relu);
    let classes = rng.random_range(2..6);
    layers.push(dense(rng, hidden, classes, nonpositive_bias));
    Network::new(vec![c, h, w], layers, vec![]).unwrap()
}

/// `n` samples of the network's input shape, uniform in [lo, hi).
pub fn random_input(rng: &mut StdRng, net: &Network, n: usize, lo: f64, hi: f64) -> ArrayD<f32> {
    let mut shape = vec![n];
    shape.extend(&net.input_shape);
    ArrayD::from_shape_fn(IxDyn(&shape), |_| uniform(rng, lo, hi))
}

/// Relative L2 error ||a - b|| / max(||b||, tiny) between two slices.
pub fn rel_l2(a: impl IntoIterator<Item = f64>, b: impl IntoIterator<Item = f64>) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in a.into_iter().zip(b) {
        num += (x - y) * (x - y);
        den += y * y;
    }
    num.sqrt() / den.sqrt().max(1e-30)
}

/// Asserts that two backend outputs are the same bits: relevance (and its shape), logits and
/// targets.
pub fn assert_same_output(got: &BatchOutput<f32>, want: &BatchOutput<f32>, what: &str) {
    assert_eq!(got.relevance.shape(), want.relevance.shape(), "{what}");
    assert!(
        got.relevance
            .iter()
            .zip(&want.relevance)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{what}: relevance differs"
    );
    assert_eq!(got.logits, want.logits, "{what}: logits");
    assert_eq!(got.targets, want.targets, "{what}: targets");
}
