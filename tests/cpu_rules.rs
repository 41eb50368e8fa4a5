//! Every rule, pooling rule and baseline of SPEC section 2 on tiny networks whose relevance is
//! derived by hand in the comments.
//!
//! Most linear-rule cases use the same two-layer network: the layer under test,
//!
//! ```text
//! W = [[ 1, 2],     (row i = input x_i, column j = neuron j: w11 = 1, w12 = 2,
//!      [-1, 3]]      w21 = -1, w22 = 3),  b = (0.5, -1)
//! ```
//!
//! then ReLU and a summing output `y = h1 + h2` (weights 1, no bias) under LRP-0, which hands
//! each hidden neuron R_j = h_j * y / (y + 1e-9) ~ h_j. For x = (3, 1):
//! z1 = 3 - 1 + 0.5 = 2.5, z2 = 6 + 3 - 1 = 8, y = 10.5, so R_up = (2.5, 8).

mod common;

use ndarray::{Array1, Array2, Array4, ArrayD, IxDyn};
use taylormap::lrp::{Method, Rule};
use taylormap::model::Window;
use taylormap::{cpu, Layer, Network};

/// A Dense layer from rows w[i] (input i) and the bias.
fn dense(w: &[&[f32]], b: &[f32]) -> Layer {
    let (ni, no) = (w.len(), w[0].len());
    Layer::Dense {
        weight: Array2::from_shape_fn((ni, no), |(i, j)| w[i][j]),
        bias: Array1::from(b.to_vec()),
    }
}

fn net(input: &[usize], layers: Vec<Layer>) -> Network {
    Network::new(input.to_vec(), layers, vec![]).unwrap()
}

/// Relevance and logits of one sample.
fn explain(
    net: &Network,
    method: Method,
    x: &[f64],
    target: Option<usize>,
) -> (Vec<f64>, Vec<f64>) {
    let mut shape = vec![1];
    shape.extend(&net.input_shape);
    let x = ArrayD::from_shape_vec(IxDyn(&shape), x.to_vec()).unwrap();
    let targets = target.map(|t| vec![t]);
    let out = cpu::explain(net, &method, x.view(), targets.as_deref()).unwrap();
    assert_eq!(out.relevance.shape(), x.shape());
    (
        out.relevance.iter().copied().collect(),
        out.logits.iter().copied().collect(),
    )
}

fn assert_close(got: &[f64], expected: &[f64], what: &str) {
    assert_eq!(got.len(), expected.len(), "{what}");
    for (k, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!(
            (g - e).abs() <= 1e-8 * e.abs().max(1.0),
            "{what}: R[{k}] = {g}, expected {e}\n got {got:?}\n expected {expected:?}"
        );
    }
}

/// The two-layer network of the module docs.
fn two_layer() -> Network {
    net(
        &[2],
        vec![
            dense(&[&[1.0, 2.0], &[-1.0, 3.0]], &[0.5, -1.0]),
            Layer::Relu,
            dense(&[&[1.0], &[1.0]], &[0.0]),
        ],
    )
}

/// Relevance of the two-layer network with `rule` on the first layer.
fn first_layer(rule: Rule, x: &[f64]) -> Vec<f64> {
    let method = Method::Lrp {
        rules: vec![rule, Rule::Zero],
    };
    explain(&two_layer(), method, x, None).0
}

#[test]
fn zero_rule() {
    // q = x w, denominator z_j: R_i = sum_j x_i w_ij / z_j * R_j = x_i * sum_j w_ij (R_j = z_j)
    // R1 = 3 * (1 + 2) = 9, R2 = 1 * (-1 + 3) = 2
    assert_close(&first_layer(Rule::Zero, &[3.0, 1.0]), &[9.0, 2.0], "zero");
}

#[test]
fn epsilon_rule() {
    // eps = 1: stab(2.5) = 3.5, stab(8) = 9
    // R1 = 3*1/3.5 * 2.5 + 3*2/9 * 8,  R2 = 1*(-1)/3.5 * 2.5 + 1*3/9 * 8
    let expected = [
        3.0 / 3.5 * 2.5 + 6.0 / 9.0 * 8.0, // 2.142857 + 5.333333 = 7.476190
        -1.0 / 3.5 * 2.5 + 3.0 / 9.0 * 8.0, // -0.714286 + 2.666667 = 1.952381
    ];
    assert_close(
        &first_layer(Rule::Epsilon(1.0), &[3.0, 1.0]),
        &expected,
        "epsilon(1)",
    );
}

#[test]
fn zplus_rule_on_positive_inputs() {
    // q = x w+: neuron 1: q11 = 3*1 = 3, q21 = 1*0 = 0 -> 3; neuron 2: q12 = 6, q22 = 3 -> 9
    // R1 = 3/3 * 2.5 + 6/9 * 8 = 2.5 + 5.333 = 7.833, R2 = 0 + 3/9 * 8 = 2.667 (sum 10.5 = y)
    let expected = [2.5 + 6.0 / 9.0 * 8.0, 3.0 / 9.0 * 8.0];
    assert_close(&first_layer(Rule::ZPlus, &[3.0, 1.0]), &expected, "zplus");
}

#[test]
fn zplus_rule_on_negative_inputs() {
    // x = (3, -1): z1 = 3 + 1 + 0.5 = 4.5, z2 = 6 - 3 - 1 = 2, y = 6.5, R_up = (4.5, 2)
    // q = x+ w+ + x- w-: neuron 1: q11 = 3*1 = 3, q21 = (-1)*(-1) = 1 -> 4
    //                    neuron 2: q12 = 3*2 = 6, q22 = (-1)*min(3, 0) = 0 -> 6
    // R1 = 3/4 * 4.5 + 6/6 * 2 = 3.375 + 2 = 5.375, R2 = 1/4 * 4.5 = 1.125 (sum 6.5 = y)
    let (r, y) = explain(
        &two_layer(),
        Method::Lrp {
            rules: vec![Rule::ZPlus, Rule::Zero],
        },
        &[3.0, -1.0],
        None,
    );
    assert_close(&y, &[6.5], "logit");
    assert_close(&r, &[5.375, 1.125], "zplus, negative input");
}

#[test]
fn wsquare_rule() {
    // q = w^2: neuron 1: 1, 1 -> 2; neuron 2: 4, 9 -> 13
    // R1 = 1/2 * 2.5 + 4/13 * 8 = 1.25 + 2.4615, R2 = 1/2 * 2.5 + 9/13 * 8 = 1.25 + 5.5385
    let expected = [1.25 + 4.0 / 13.0 * 8.0, 1.25 + 9.0 / 13.0 * 8.0];
    assert_close(
        &first_layer(Rule::WSquare, &[3.0, 1.0]),
        &expected,
        "wsquare",
    );
}

#[test]
fn zbox_rule() {
    // L = -1, H = 4: q = x w - L w+ - H w-
    // neuron 1: q11 = 3*1 + 1*1 = 4, q21 = 1*(-1) - 4*(-1) = 3 -> 7
    // neuron 2: q12 = 3*2 + 1*2 = 8, q22 = 1*3 + 1*3 = 6 -> 14
    // R1 = 4/7 * 2.5 + 8/14 * 8 = 1.428571 + 4.571429 = 6, R2 = 3/7 * 2.5 + 6/14 * 8 = 4.5
    let rule = Rule::ZBox {
        low: -1.0,
        high: 4.0,
    };
    assert_close(&first_layer(rule, &[3.0, 1.0]), &[6.0, 4.5], "zbox(-1,4)");
}

#[test]
fn flat_rule() {
    // q = 1: each neuron splits evenly, R1 = R2 = 2.5/2 + 8/2 = 5.25
    assert_close(&first_layer(Rule::Flat, &[3.0, 1.0]), &[5.25, 5.25], "flat");
}

#[test]
fn gamma_rule() {
    // G = 0.5: w' = w + 0.5 w+ = [[1.5, 3], [-1, 4.5]], b' = b + 0.5 b+ = (0.75, -1)
    // neuron 1: q11 = 4.5, q21 = -1, z' = 3.5 + 0.75 = 4.25
    // neuron 2: q12 = 9, q22 = 4.5, z' = 13.5 - 1 = 12.5
    // R1 = 4.5/4.25 * 2.5 + 9/12.5 * 8, R2 = -1/4.25 * 2.5 + 4.5/12.5 * 8
    let expected = [
        4.5 / 4.25 * 2.5 + 9.0 / 12.5 * 8.0, // 2.647059 + 5.76 = 8.407059
        -1.0 / 4.25 * 2.5 + 4.5 / 12.5 * 8.0, // -0.588235 + 2.88 = 2.291765
    ];
    assert_close(
        &first_layer(Rule::Gamma(0.5), &[3.0, 1.0]),
        &expected,
        "gamma(0.5)",
    );
}

#[test]
fn alphabeta_rule() {
    // A = 2, B = 1; z_ij = x_i w_ij: neuron 1: z11 = 3, z21 = -1, b1 = 0.5
    //   positive: 3 + b+ 0.5 = 3.5, negative: -1 + b- 0 = -1
    // neuron 2: z12 = 6, z22 = 3, b2 = -1: positive: 9 + 0 = 9, negative: 0 + (-1) = -1
    // R1 = 2*3/3.5 * 2.5 + 2*6/9 * 8                 = 4.285714 + 10.666667
    // R2 = -1*(-1)/(-1) * 2.5 + 2*3/9 * 8            = -2.5 + 5.333333
    let expected = [
        2.0 * 3.0 / 3.5 * 2.5 + 2.0 * 6.0 / 9.0 * 8.0,
        -2.5 + 2.0 * 3.0 / 9.0 * 8.0,
    ];
    let rule = Rule::AlphaBeta {
        alpha: 2.0,
        beta: 1.0,
    };
    assert_close(&first_layer(rule, &[3.0, 1.0]), &expected, "alphabeta(2,1)");
}

#[test]
fn stabiliser_takes_sign_zero_as_positive() {
    // One Dense layer, w = (1, -2), b = 0, x = (1, 1): y = 1 - 2 = -1.
    // gamma(1): w' = (2, -2), z' = 2 - 2 = 0 exactly, stab(0) = 0 + 1e-9 (sign(0) = +1).
    // R = x w' * y / 1e-9 = (2 * -1e9, -2 * -1e9) = (-2e9, 2e9); sign(0) = -1 would flip both.
    let n = net(&[2], vec![dense(&[&[1.0], &[-2.0]], &[0.0])]);
    let (r, y) = explain(
        &n,
        Method::Lrp {
            rules: vec![Rule::Gamma(1.0)],
        },
        &[1.0, 1.0],
        None,
    );
    assert_close(&y, &[-1.0], "logit");
    assert_close(&r, &[-2e9, 2e9], "stab(0) = +eps");
}

#[test]
fn stabiliser_moves_negative_denominators_away_from_zero() {
    // w = (1, -2), b = 0, x = (1, 2): y = 1 - 4 = -3; epsilon(1): stab(-3) = -3 - 1 = -4.
    // R = (1*1, 2*(-2)) * (-3)/(-4) = (0.75, -3)
    let n = net(&[2], vec![dense(&[&[1.0], &[-2.0]], &[0.0])]);
    let (r, _) = explain(
        &n,
        Method::Lrp {
            rules: vec![Rule::Epsilon(1.0)],
        },
        &[1.0, 2.0],
        None,
    );
    assert_close(&r, &[0.75, -3.0], "stab(-3) = -4");
}

/// A (1, 1, 3) input through a 1x2 convolution with weights (2, 1), padding one column on each
/// side, then a summing output. Padded x = (0 | 1, 2, 3 | 0), outputs
/// o0 = 0*2 + 1*1 = 1, o1 = 1*2 + 2*1 = 4, o2 = 2*2 + 3*1 = 7, o3 = 3*2 + 0*1 = 6, y = 18.
fn padded_conv() -> Network {
    net(
        &[1, 1, 3],
        vec![
            Layer::Conv2d {
                weight: Array4::from_shape_vec((1, 1, 1, 2), vec![2.0, 1.0]).unwrap(),
                bias: Array1::from(vec![0.0]),
                window: Window {
                    kernel: [1, 2],
                    stride: [1, 1],
                    pad: [0, 1, 0, 1],
                },
            },
            Layer::Flatten,
            dense(&[&[1.0], &[1.0], &[1.0], &[1.0]], &[0.0]),
        ],
    )
}

#[test]
fn flat_rule_on_a_padded_convolution_ignores_padding() {
    // flat: o0 sees only x0 (its other tap is padding) -> x0 gets all of 1;
    // o1 -> 2 + 2; o2 -> 3.5 + 3.5; o3 sees only x2 -> 6.
    // R = (1 + 2, 2 + 3.5, 3.5 + 6) = (3, 5.5, 9.5), sum 18 = y.
    let method = Method::Lrp {
        rules: vec![Rule::Flat, Rule::Zero],
    };
    let (r, y) = explain(&padded_conv(), method, &[1.0, 2.0, 3.0], None);
    assert_close(&y, &[18.0], "logit");
    assert_close(&r, &[3.0, 5.5, 9.5], "flat, padded conv");
}

#[test]
fn zbox_rule_on_a_padded_convolution_keeps_bounds_off_the_padding() {
    // zbox(-1, 2), all w > 0: q = x w - L w = w (x + 1); padding contributes nothing.
    // o0: x0 (w 1): q = 2 -> R 1 to x0
    // o1: x0 (w 2): 4, x1 (w 1): 3 -> 4/7 * 4, 3/7 * 4
    // o2: x1 (w 2): 6, x2 (w 1): 4 -> 6/10 * 7, 4/10 * 7
    // o3: x2 (w 2): 8 -> 6 to x2
    let method = Method::Lrp {
        rules: vec![
            Rule::ZBox {
                low: -1.0,
                high: 2.0,
            },
            Rule::Zero,
        ],
    };
    let (r, _) = explain(&padded_conv(), method, &[1.0, 2.0, 3.0], None);
    let expected = [
        1.0 + 16.0 / 7.0, // 3.285714
        12.0 / 7.0 + 4.2, // 5.914286
        2.8 + 6.0,        // 8.8
    ];
    assert_close(&r, &expected, "zbox, padded conv");
}

/// MaxPool2d (1, 3, 3) kernel 2 stride 1 -> 2x2, then y = sum of the four maxima.
///
/// ```text
/// x = [[1,   5, 2],      windows: (0,0) {1,5,3,4} -> 5 at (0,1)
///      [3,   4, 5],               (0,1) {5,2,4,5} -> 5 at (0,1), tie with (1,2): first wins
///      [0.5, 2, 1]]               (1,0) {3,4,.5,2} -> 4 at (1,1);  (1,1) {4,5,2,1} -> 5 at (1,2)
/// ```
fn max_pool_net() -> (Network, Vec<f64>) {
    let n = net(
        &[1, 3, 3],
        vec![
            Layer::MaxPool2d {
                window: Window {
                    kernel: [2, 2],
                    stride: [1, 1],
                    pad: [0; 4],
                },
            },
            Layer::Flatten,
            dense(&[&[1.0], &[1.0], &[1.0], &[1.0]], &[0.0]),
        ],
    );
    (n, vec![1.0, 5.0, 2.0, 3.0, 4.0, 5.0, 0.5, 2.0, 1.0])
}

#[test]
fn max_pool_gives_everything_to_the_first_arg_max() {
    // y = 5 + 5 + 4 + 5 = 19; R_up = (5, 5, 4, 5).
    // (0,1) receives 5 + 5 = 10 from two overlapping windows, (1,1) gets 4, (1,2) gets 5.
    let (n, x) = max_pool_net();
    let (r, y) = explain(
        &n,
        Method::Lrp {
            rules: vec![Rule::Zero],
        },
        &x,
        None,
    );
    assert_close(&y, &[19.0], "logit");
    assert_close(
        &r,
        &[0.0, 10.0, 0.0, 0.0, 4.0, 5.0, 0.0, 0.0, 0.0],
        "max pool",
    );
}

#[test]
fn max_pool_padding_never_wins() {
    // (1, 3, 3) all negative, kernel 2, stride 2, padding top 1 and left 1 -> 2x2:
    // x = [[-2, -1, -3], [-4, -0.5, -6], [-1, -7, -8]]
    // windows: (0,0) {-2} -> -2 at (0,0); (0,1) {-1, -3} -> -1 at (0,1)
    //          (1,0) {-4, -1} -> -1 at (2,0); (1,1) {-0.5, -6, -7, -8} -> -0.5 at (1,1)
    // y = -(-2 - 1 - 1 - 0.5) = 4.5 (weights -1); R_up = (2, 1, 1, 0.5).
    let n = net(
        &[1, 3, 3],
        vec![
            Layer::MaxPool2d {
                window: Window {
                    kernel: [2, 2],
                    stride: [2, 2],
                    pad: [1, 1, 0, 0],
                },
            },
            Layer::Flatten,
            dense(&[&[-1.0], &[-1.0], &[-1.0], &[-1.0]], &[0.0]),
        ],
    );
    let x = [-2.0, -1.0, -3.0, -4.0, -0.5, -6.0, -1.0, -7.0, -8.0];
    let (r, y) = explain(
        &n,
        Method::Lrp {
            rules: vec![Rule::Zero],
        },
        &x,
        None,
    );
    assert_close(&y, &[4.5], "logit (padding would give 0 maxima)");
    assert_close(
        &r,
        &[2.0, 1.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0, 0.0],
        "max pool, padded",
    );
}

#[test]
fn avg_pool_redistributes_in_proportion_to_the_inputs() {
    // (1, 2, 3) x = [[1, 2, 3], [4, 5, 6]], kernel 2, stride 1 -> two windows:
    // A = {1, 2, 4, 5}: sum 12, average 3;  B = {2, 3, 5, 6}: sum 16, average 4.
    // y = 1*3 + 2*4 = 11, R_up = (3, 8); s = R / window sum = (3/12, 8/16) = (0.25, 0.5).
    // R_i = x_i * (s of the windows holding i):
    //   1*0.25, 2*0.75, 3*0.5, 4*0.25, 5*0.75, 6*0.5 = 0.25, 1.5, 1.5, 1, 3.75, 3 (sum 11)
    let n = net(
        &[1, 2, 3],
        vec![
            Layer::AvgPool2d {
                window: Window {
                    kernel: [2, 2],
                    stride: [1, 1],
                    pad: [0; 4],
                },
                count_include_pad: true,
                sum: false,
            },
            Layer::Flatten,
            dense(&[&[1.0], &[2.0]], &[0.0]),
        ],
    );
    let (r, y) = explain(
        &n,
        Method::Lrp {
            rules: vec![Rule::Zero],
        },
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        None,
    );
    assert_close(&y, &[11.0], "logit");
    assert_close(&r, &[0.25, 1.5, 1.5, 1.0, 3.75, 3.0], "avg pool");
}

/// (1, 2, 2) x = [[1, 2], [3, 4]], kernel 2, stride 1, padding top 1 and left 1 -> 2x2 windows
/// (0,0) {1}, (0,1) {1, 2}, (1,0) {1, 3}, (1,1) {1, 2, 3, 4} (sums 1, 3, 4, 10), summed output.
fn padded_avg_pool(count_include_pad: bool, sum: bool) -> Network {
    net(
        &[1, 2, 2],
        vec![
            Layer::AvgPool2d {
                window: Window {
                    kernel: [2, 2],
                    stride: [1, 1],
                    pad: [1, 1, 0, 0],
                },
                count_include_pad,
                sum,
            },
            Layer::Flatten,
            dense(&[&[1.0], &[1.0], &[1.0], &[1.0]], &[0.0]),
        ],
    )
}

#[test]
fn padded_avg_and_sum_pool_forward_and_relevance() {
    let zero = || Method::Lrp {
        rules: vec![Rule::Zero],
    };
    let x = [1.0, 2.0, 3.0, 4.0];
    // count_include_pad = false: averages 1/1, 3/2, 4/2, 10/4 -> y = 7, R_up = (1, 1.5, 2, 2.5)
    // s = (1/1, 1.5/3, 2/4, 2.5/10) = (1, 0.5, 0.5, 0.25)
    // R = (1*(1 + 0.5 + 0.5 + 0.25), 2*(0.5 + 0.25), 3*(0.5 + 0.25), 4*0.25) = (2.25, 1.5, 2.25, 1)
    let (r, y) = explain(&padded_avg_pool(false, false), zero(), &x, None);
    assert_close(&y, &[7.0], "count_include_pad=false logit");
    assert_close(&r, &[2.25, 1.5, 2.25, 1.0], "count_include_pad=false");
    // count_include_pad = true: averages 1/4, 3/4, 4/4, 10/4 -> y = 4.5, s = 0.25 everywhere
    // R = x * 0.25 * (windows holding x) = (1*4, 2*2, 3*2, 4*1) * 0.25 = (1, 1, 1.5, 1)
    let (r, y) = explain(&padded_avg_pool(true, false), zero(), &x, None);
    assert_close(&y, &[4.5], "count_include_pad=true logit");
    assert_close(&r, &[1.0, 1.0, 1.5, 1.0], "count_include_pad=true");
    // sum pooling: 1, 3, 4, 10 -> y = 18, s = 1 everywhere, R = x * windows = (4, 4, 6, 4)
    let (r, y) = explain(&padded_avg_pool(false, true), zero(), &x, None);
    assert_close(&y, &[18.0], "sum pool logit");
    assert_close(&r, &[4.0, 4.0, 6.0, 4.0], "sum pool");
}

/// Dense(2 -> 3), ReLU, Dense(3 -> 1): W columns (1, -1), (2, 3), (1, -3), b = (0.5, -1, 0),
/// v = (2, -0.5, 5). For x = (3, 1): z = (2.5, 8, 3 - 3 + 0 = 0), h = (2.5, 8, 0),
/// y = 2*2.5 - 0.5*8 + 5*0 = 1.
fn baseline_net() -> Network {
    net(
        &[2],
        vec![
            dense(&[&[1.0, 2.0, 1.0], &[-1.0, 3.0, -3.0]], &[0.5, -1.0, 0.0]),
            Layer::Relu,
            dense(&[&[2.0], &[-0.5], &[5.0]], &[0.0]),
        ],
    )
}

#[test]
fn gradient_baselines_on_a_dense_network() {
    // dy/dx_i = sum_j w_ij v_j relu'(z_j), relu'(0) = 0 so neuron 3 (z = 0) drops out:
    // dy/dx1 = 1*2 + 2*(-0.5) = 1, dy/dx2 = -1*2 + 3*(-0.5) = -3.5
    // (relu'(0) = 1 would add 5*(1, -3)).
    let (r, y) = explain(&baseline_net(), Method::Sensitivity, &[3.0, 1.0], None);
    assert_close(&y, &[1.0], "logit");
    assert_close(&r, &[1.0, 12.25], "sensitivity = gradient^2");
    let (r, _) = explain(&baseline_net(), Method::GradientXInput, &[3.0, 1.0], None);
    assert_close(&r, &[3.0, -3.5], "gradient x input = (3*1, 1*(-3.5))");
}

#[test]
fn gradient_baselines_through_pooling() {
    // max pool (see max_pool_net): dy/dx is 1 per window at its arg-max: (0,1) 2, (1,1) 1, (1,2) 1
    let (n, x) = max_pool_net();
    let (r, _) = explain(&n, Method::Sensitivity, &x, None);
    assert_close(
        &r,
        &[0.0, 4.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0],
        "max pool sensitivity",
    );
    let (r, _) = explain(&n, Method::GradientXInput, &x, None);
    assert_close(
        &r,
        &[0.0, 10.0, 0.0, 0.0, 4.0, 5.0, 0.0, 0.0, 0.0],
        "max pool gradient x input",
    );
    // avg pool, count_include_pad = false: divisors (1, 2, 2, 4)
    // dy/dx = (1 + 1/2 + 1/2 + 1/4, 1/2 + 1/4, 1/2 + 1/4, 1/4) = (2.25, 0.75, 0.75, 0.25)
    let x = [1.0, 2.0, 3.0, 4.0];
    let (r, _) = explain(
        &padded_avg_pool(false, false),
        Method::Sensitivity,
        &x,
        None,
    );
    assert_close(
        &r,
        &[5.0625, 0.5625, 0.5625, 0.0625],
        "avg pool (real count) sensitivity",
    );
    // count_include_pad = true: divisor 4 everywhere: dy/dx = (4, 2, 2, 1) / 4
    let (r, _) = explain(
        &padded_avg_pool(true, false),
        Method::GradientXInput,
        &x,
        None,
    );
    assert_close(
        &r,
        &[1.0, 1.0, 1.5, 1.0],
        "avg pool (window size) gradient x input",
    );
    // sum pool: divisor 1: dy/dx = (4, 2, 2, 1)
    let (r, _) = explain(&padded_avg_pool(false, true), Method::Sensitivity, &x, None);
    assert_close(&r, &[16.0, 4.0, 4.0, 1.0], "sum pool sensitivity");
}

#[test]
fn explicit_targets_seed_their_own_logit() {
    // The two-layer network with an identity output layer, so y = (h1, h2) = (2.5, 8).
    // Target 1 starts from R = (0, 8); LRP-0 gives R_i = x_i w_i2 / z2 * 8 = (3*2, 1*3) = (6, 3)
    // (sum 9 = y_1 minus the bias share -1).
    let n = net(
        &[2],
        vec![
            dense(&[&[1.0, 2.0], &[-1.0, 3.0]], &[0.5, -1.0]),
            Layer::Relu,
            dense(&[&[1.0, 0.0], &[0.0, 1.0]], &[0.0, 0.0]),
        ],
    );
    let zero = || Method::Lrp {
        rules: vec![Rule::Zero, Rule::Zero],
    };
    let (r, y) = explain(&n, zero(), &[3.0, 1.0], Some(1));
    assert_close(&y, &[2.5, 8.0], "logits");
    assert_close(&r, &[6.0, 3.0], "target 1");
    // target 0: R = (3*1, 1*(-1)) = (3, -1)
    let (r, _) = explain(&n, zero(), &[3.0, 1.0], Some(0));
    assert_close(&r, &[3.0, -1.0], "target 0");
}
