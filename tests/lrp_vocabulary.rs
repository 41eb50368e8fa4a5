//! Rule parsing, composite resolution and `--rule` overrides (SPEC sections 2 and 3).

mod common;

use taylormap::lrp::{Bounds, Composite, LayerSelector, Method, Rule};
use taylormap::model::Window;

const B: Bounds = Bounds {
    low: -0.5,
    high: 2.0,
};

#[test]
fn rules_parse_from_their_cli_spelling_and_print_back() {
    let cases = [
        ("zero", Rule::Zero),
        ("epsilon(0.1)", Rule::Epsilon(0.1)),
        ("zplus", Rule::ZPlus),
        ("wsquare", Rule::WSquare),
        (
            "zbox(-1,1)",
            Rule::ZBox {
                low: -1.0,
                high: 1.0,
            },
        ),
        (
            "zbox",
            Rule::ZBox {
                low: -0.5,
                high: 2.0,
            },
        ),
        ("flat", Rule::Flat),
        ("gamma(0.5)", Rule::Gamma(0.5)),
        (
            "alphabeta(2,1)",
            Rule::AlphaBeta {
                alpha: 2.0,
                beta: 1.0,
            },
        ),
        (
            "alphabeta(1, 0)",
            Rule::AlphaBeta {
                alpha: 1.0,
                beta: 0.0,
            },
        ),
    ];
    for (text, rule) in cases {
        assert_eq!(Rule::parse(text, B).unwrap(), rule, "{text}");
        assert_eq!(Rule::parse(&rule.to_string(), B).unwrap(), rule);
    }
}

#[test]
fn bad_rules_are_refused_with_the_spelling_in_the_message() {
    for bad in [
        "alphabeta(2,2)",
        "alphabeta(0.5,-0.5)",
        "zbox(1,-1)",
        "epsilon(x)",
        "gamma(1,2)",
        "zplus(1)",
        "lrp-omega",
        "epsilon(-1)",
        "zbox(nan,1)",
    ] {
        let err = Rule::parse(bad, B).unwrap_err().to_string();
        assert!(err.contains(bad), "{err}");
    }
}

#[test]
fn composites_follow_the_spec_table() {
    let mut rng = common::rng("composites_follow_the_spec_table");
    // conv, conv, dense, dense
    let net = common::random_cnn(&mut rng, 1, 8, 8, false);
    let rules = |c: Composite| match c.resolve(&net, B, &[]).unwrap() {
        Method::Lrp { rules } => rules,
        m => panic!("{m:?}"),
    };
    let zbox = Rule::ZBox {
        low: -0.5,
        high: 2.0,
    };
    let eps = Rule::Epsilon(0.25);
    let ab = Rule::AlphaBeta {
        alpha: 2.0,
        beta: 1.0,
    };
    use Rule::*;
    assert_eq!(rules(Composite::DeepTaylor), [WSquare, ZPlus, ZPlus, ZPlus]);
    assert_eq!(
        rules(Composite::DeepTaylorBounded),
        [zbox, ZPlus, ZPlus, ZPlus]
    );
    assert_eq!(rules(Composite::EpsilonPlus), [ZPlus, ZPlus, eps, eps]);
    assert_eq!(
        rules(Composite::EpsilonGammaBox),
        [zbox, Gamma(0.25), eps, eps]
    );
    assert_eq!(rules(Composite::EpsilonAlpha2Beta1), [ab, ab, eps, eps]);
    assert_eq!(rules(Composite::LrpZero), [Zero; 4]);
    assert_eq!(
        Composite::Sensitivity.resolve(&net, B, &[]).unwrap(),
        Method::Sensitivity
    );
    // a first Dense layer under epsilon-plus takes epsilon
    let mlp = common::random_mlp(&mut rng, &[5, 4, 3], false);
    assert_eq!(
        Composite::EpsilonPlus.resolve(&mlp, B, &[]).unwrap(),
        Method::Lrp {
            rules: vec![eps, eps]
        }
    );
    for (name, c) in Composite::ALL {
        assert_eq!(name.parse::<Composite>().unwrap(), c);
    }
    assert!("deep-tailor"
        .parse::<Composite>()
        .unwrap_err()
        .to_string()
        .contains("deep-taylor"));
}

#[test]
fn overrides_apply_in_order_and_bad_selectors_are_refused() {
    let mut rng = common::rng("overrides");
    let net = common::random_cnn(&mut rng, 1, 8, 8, false);
    let o = |s: &str| LayerSelector::parse_override(s, B).unwrap();
    let m = Composite::DeepTaylor
        .resolve(
            &net,
            B,
            &[
                o("*=zero"),
                o("conv=flat"),
                o("first=zbox"),
                o("3=epsilon(0.5)"),
                o("last=gamma(0.1)"),
            ],
        )
        .unwrap();
    assert_eq!(
        m,
        Method::Lrp {
            rules: vec![
                Rule::ZBox {
                    low: -0.5,
                    high: 2.0
                },
                Rule::Flat,
                Rule::Zero,
                Rule::Gamma(0.1)
            ]
        }
    );
    let err = Composite::DeepTaylor
        .resolve(&net, B, &[o("7=flat")])
        .unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
    assert!(LayerSelector::parse_override("middle=flat", B).is_err());
    assert!(LayerSelector::parse_override("flat", B).is_err());
    assert!(Composite::Sensitivity
        .resolve(&net, B, &[o("first=flat")])
        .is_err());
}

#[test]
fn forward_macs_count_dense_and_conv_products() {
    let mut rng = common::rng("forward_macs");
    let net = common::random_mlp(&mut rng, &[7, 5, 3], false);
    assert_eq!(net.forward_macs(), 7 * 5 + 5 * 3);
    let conv = common::conv(&mut rng, 2, 3, 3, 1, 1, false);
    let net = taylormap::Network::new(vec![2, 6, 6], vec![conv, taylormap::Layer::Flatten], vec![])
        .unwrap();
    assert_eq!(net.forward_macs(), 3 * 6 * 6 * 2 * 3 * 3);
}

#[test]
fn compulsory_traffic_counts_3_inputs_and_2_outputs_per_layer_but_element_wise_ones() {
    let mut rng = common::rng("compulsory_traffic");
    // Dense 7 -> 5, ReLU, Dense 5 -> 3: the input read twice (at 4 or 1 byte a value) and its
    // relevance written; the first Dense writes and reads its 5 outputs, writes their relevance
    // and the second reads it (2 x 5 values); the second reads its input twice, writes its
    // relevance (3 x 5 values) and writes and reads its 3 logits (2 x 3 values).
    let net = common::random_mlp(&mut rng, &[7, 5, 3], false);
    assert_eq!(
        net.compulsory_traffic(4),
        7 * (2 * 4 + 4) + 4 * (2 * 5 + 3 * 5 + 2 * 3)
    );
    assert_eq!(
        net.compulsory_traffic(1),
        7 * (2 + 4) + 4 * (2 * 5 + 3 * 5 + 2 * 3)
    );
    // Conv 2 -> 3 channels on 6 x 6 (padding 1: output 3 x 6 x 6), ReLU, max pool 2 x 2
    // (output 3 x 3 x 3), Flatten.
    let conv = common::conv(&mut rng, 2, 3, 3, 1, 1, false);
    let window = Window {
        kernel: [2, 2],
        stride: [2, 2],
        pad: [0; 4],
    };
    let layers = vec![
        conv,
        taylormap::Layer::Relu,
        taylormap::Layer::MaxPool2d { window },
        taylormap::Layer::Flatten,
    ];
    let net = taylormap::Network::new(vec![2, 6, 6], layers, vec![]).unwrap();
    assert_eq!(
        net.compulsory_traffic(4),
        72 * 12 + 4 * (2 * 108) + 4 * (3 * 108 + 2 * 27)
    );
}

#[test]
fn relevance_macs_count_one_product_per_term_and_merge_the_constant_terms() {
    use taylormap::Layer;
    let mut rng = common::rng("relevance_macs");
    // conv 1 -> 3, 3x3, padding 1 on 1 x 6 x 6: 3 * 36 * 9 = 972 multiply-adds; dense 108 -> 4:
    // 432; dense 4 -> 2: 8. Only the first layer's input can be negative.
    let layers = vec![
        common::conv(&mut rng, 1, 3, 3, 1, 1, false),
        Layer::Relu,
        Layer::Flatten,
        common::dense(&mut rng, 108, 4, false),
        Layer::Relu,
        common::dense(&mut rng, 4, 2, false),
    ];
    let net = taylormap::Network::new(vec![1, 6, 6], layers, vec![]).unwrap();
    assert_eq!(net.layer_macs(), [972, 0, 0, 432, 0, 8]);
    assert_eq!(
        net.nonnegative_inputs(),
        [false, false, true, true, false, true]
    );
    let lrp = |rules: Vec<Rule>| Method::Lrp { rules }.relevance_macs(&net);
    let zbox = Rule::ZBox {
        low: 0.0,
        high: 1.0,
    };
    let ab = Rule::AlphaBeta {
        alpha: 2.0,
        beta: 1.0,
    };
    // z^B: z' is the forward's own x w plus the constant L/H share, c for x and the merged L/H
    // term; z+ on a ReLU output: z' (x w+) and c; epsilon: z' is the forward's, c only.
    assert_eq!(
        lrp(vec![zbox, Rule::ZPlus, Rule::Epsilon(0.25)]),
        2 * 972 + 2 * 432 + 8
    );
    assert_eq!(lrp(vec![Rule::Zero, Rule::Zero, Rule::Zero]), 972 + 432 + 8);
    // alpha-beta: two passes of two terms on a signed input, one term each on ReLU outputs (their
    // z', x w+ and x w-, summed by the forward pass beside x w, still count).
    assert_eq!(lrp(vec![ab, ab, Rule::ZPlus]), 8 * 972 + 4 * 432 + 2 * 8);
    // w^2 and flat: z' is the same for every sample, only c is per sample.
    assert_eq!(
        lrp(vec![Rule::WSquare, Rule::Flat, Rule::Gamma(0.25)]),
        972 + 432 + 2 * 8
    );
    for gradient in [Method::Sensitivity, Method::GradientXInput] {
        assert_eq!(gradient.relevance_macs(&net), 972 + 432 + 8);
    }
}

#[test]
fn on_nonnegative_inputs_the_x_minus_terms_vanish_and_x_plus_is_x() {
    use taylormap::lrp::InputMod;
    let rules = [
        Rule::Zero,
        Rule::Epsilon(0.25),
        Rule::ZPlus,
        Rule::WSquare,
        Rule::ZBox {
            low: -1.0,
            high: 2.0,
        },
        Rule::Flat,
        Rule::Gamma(0.25),
        Rule::AlphaBeta {
            alpha: 2.0,
            beta: 1.0,
        },
    ];
    for rule in rules {
        let all = rule.passes();
        assert_eq!(rule.passes_on(false), all, "{rule}");
        let reduced = rule.passes_on(true);
        assert_eq!(reduced.len(), all.len(), "{rule}: same passes");
        for (r, a) in reduced.iter().zip(&all) {
            assert_eq!((r.coefficient, r.bias), (a.coefficient, a.bias), "{rule}");
            // Every term but the x- ones, in order, with x+ read as x.
            let want: Vec<_> = a
                .terms
                .iter()
                .filter(|t| t.input != InputMod::Negative)
                .map(|t| match t.input {
                    InputMod::Positive => (InputMod::Identity, t.weight, t.sign),
                    other => (other, t.weight, t.sign),
                })
                .collect();
            let got: Vec<_> = r
                .terms
                .iter()
                .map(|t| (t.input, t.weight, t.sign))
                .collect();
            assert_eq!(got, want, "{rule}");
            // On x >= 0 a dropped term's f(x) is 0 and a kept term's f(x) is the original's, so
            // z' and R are unchanged.
            for x in [0.0, 0.3, 2.5] {
                let mut kept = r.terms.iter();
                for t in &a.terms {
                    if t.input == InputMod::Negative {
                        assert_eq!(t.input.apply(x), 0.0, "{rule}");
                    } else {
                        let k = kept.next().unwrap();
                        assert_eq!(k.input.apply(x), t.input.apply(x), "{rule} at x = {x}");
                    }
                }
            }
        }
    }
    // z+ and alpha-beta halve; z^B and w^2 keep their terms.
    let count = |r: Rule| -> usize { r.passes_on(true).iter().map(|p| p.terms.len()).sum() };
    assert_eq!(count(Rule::ZPlus), 1);
    assert_eq!(
        count(Rule::AlphaBeta {
            alpha: 2.0,
            beta: 1.0
        }),
        2
    );
    assert_eq!(
        count(Rule::ZBox {
            low: 0.0,
            high: 1.0
        }),
        3
    );
    assert_eq!(count(Rule::WSquare), 1);
}

#[test]
fn forward_z_is_given_for_one_pass_whose_data_term_has_input_x() {
    use taylormap::lrp::ForwardZ;
    let zbox = Rule::ZBox {
        low: 0.0,
        high: 1.0,
    };
    for (rule, nonnegative, want) in [
        (Rule::Zero, false, ForwardZ::Plain),
        (Rule::Epsilon(0.25), true, ForwardZ::Plain),
        // x w beside the constant L/H term
        (zbox, false, ForwardZ::Plain),
        (zbox, true, ForwardZ::Plain),
        // z+ on a ReLU output is x w+; gamma's weights are w + G w+
        (Rule::ZPlus, true, ForwardZ::Other),
        (Rule::Gamma(0.25), false, ForwardZ::Other),
        (Rule::Gamma(0.25), true, ForwardZ::Other),
        // z+ on any input has two data terms (x+ w+, x- w-); w^2 and flat none
        (Rule::ZPlus, false, ForwardZ::None),
        (Rule::WSquare, false, ForwardZ::None),
        (Rule::Flat, true, ForwardZ::None),
        // alpha-beta on a ReLU output: x w+ and x w-, which add up to x w (even with beta = 0)
        (
            Rule::AlphaBeta {
                alpha: 1.0,
                beta: 0.0,
            },
            true,
            ForwardZ::Split,
        ),
        (
            Rule::AlphaBeta {
                alpha: 2.0,
                beta: 1.0,
            },
            true,
            ForwardZ::Split,
        ),
        // on any input, each pass has two data terms (x+ w+ and x- w-, x+ w- and x- w+)
        (
            Rule::AlphaBeta {
                alpha: 2.0,
                beta: 1.0,
            },
            false,
            ForwardZ::None,
        ),
    ] {
        assert_eq!(rule.forward_z(nonnegative), want, "{rule} {nonnegative}");
    }
}
