//! Composites: which rule each Dense/Conv2d layer gets (SPEC section 3), plus `--rule`
//! overrides, resolved into a [`Method`] a backend can run.

use super::{Bounds, Rule};
use crate::{Error, Layer, Network, Result};

/// A named rule assignment, or one of the gradient baselines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Composite {
    /// wsquare first, zplus elsewhere (iNNvestigate `deep_taylor`).
    DeepTaylor,
    /// zbox(L,H) first, zplus elsewhere (iNNvestigate `deep_taylor.bounded`).
    DeepTaylorBounded,
    /// zplus on conv, epsilon(0.25) on dense (Zennit EpsilonPlus).
    EpsilonPlus,
    /// zbox first, gamma(0.25) on conv, epsilon(0.25) on dense (Zennit EpsilonGammaBox).
    EpsilonGammaBox,
    /// alphabeta(2,1) on conv (and a first dense), epsilon(0.25) on dense (Zennit EpsilonAlpha2Beta1).
    EpsilonAlpha2Beta1,
    /// zero everywhere.
    LrpZero,
    /// R_i = (dy_t/dx_i)^2 (sensitivity analysis, as in the DTD paper).
    Sensitivity,
    /// R_i = x_i dy_t/dx_i.
    GradientXInput,
}

/// What a backend computes: LRP with one rule per Dense/Conv2d layer, or a gradient baseline.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    /// `rules[k]` is the rule of the k-th Dense/Conv2d layer (see [`Network::linear_layers`]).
    Lrp {
        rules: Vec<Rule>,
    },
    Sensitivity,
    GradientXInput,
}

impl Method {
    /// Multiply-accumulates of one sample's relevance pass, as the GPU engine runs it: per
    /// Dense/Conv2d layer, one modified forward product (z') per rule term with a data input, and
    /// one transposed product per term, where a pass's constant-input terms (z^B's L and H) count
    /// once (one merged product; their share of z' is the same for every sample and computed
    /// once per plan), and on a ReLU-fed layer without the x- terms that vanish there
    /// (`Rule::passes_on`). Where a rule's one pass has the plain x w as its only data term
    /// (LRP-0, epsilon, z^B), its z' is the forward pass's own sum, which both engines take from
    /// there (one product fewer). Another data term on input x (z+ on a ReLU output) the GPU
    /// computes during the forward pass (so do alpha-beta's x w+ and x w- on a ReLU output); it
    /// is counted here. The gradient methods: one
    /// transposed product per layer. Pooling and element-wise steps are not counted (no
    /// multiply-accumulates of weights).
    pub fn relevance_macs(&self, net: &Network) -> usize {
        let macs = net.layer_macs();
        let linear = net.linear_layers();
        match self {
            Method::Sensitivity | Method::GradientXInput => linear.iter().map(|&k| macs[k]).sum(),
            Method::Lrp { rules } => {
                let nonnegative = net.nonnegative_inputs();
                linear
                    .iter()
                    .zip(rules)
                    .map(|(&k, rule)| {
                        let passes = rule.passes_on(nonnegative[k]);
                        let data: usize = passes
                            .iter()
                            .map(|p| p.terms.iter().filter(|t| !t.input.is_constant()).count())
                            .sum();
                        let merged = passes
                            .iter()
                            .filter(|p| p.terms.iter().any(|t| t.input.is_constant()))
                            .count();
                        let reused = rule.forward_z(nonnegative[k]) == super::ForwardZ::Plain;
                        (2 * data + merged - usize::from(reused)) * macs[k]
                    })
                    .sum()
            }
        }
    }
}

/// Which Dense/Conv2d layers a `--rule SELECTOR=RULE` override applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerSelector {
    /// The k-th Dense/Conv2d layer, 0-based.
    Index(usize),
    First,
    Last,
    Dense,
    Conv,
    All,
}

impl Composite {
    /// Every composite with its CLI name.
    pub const ALL: [(&'static str, Composite); 8] = [
        ("deep-taylor", Composite::DeepTaylor),
        ("deep-taylor-bounded", Composite::DeepTaylorBounded),
        ("epsilon-plus", Composite::EpsilonPlus),
        ("epsilon-gamma-box", Composite::EpsilonGammaBox),
        ("epsilon-alpha2-beta1", Composite::EpsilonAlpha2Beta1),
        ("lrp-zero", Composite::LrpZero),
        ("sensitivity", Composite::Sensitivity),
        ("gradient-x-input", Composite::GradientXInput),
    ];

    /// The CLI name.
    pub fn name(&self) -> &'static str {
        Self::ALL.iter().find(|(_, c)| c == self).unwrap().0
    }

    /// The rule of a Dense/Conv2d layer, given whether it is the first one and whether it is a
    /// convolution. `None` for the gradient baselines.
    pub fn rule_for(&self, first: bool, conv: bool, bounds: Bounds) -> Option<Rule> {
        let zbox = Rule::ZBox {
            low: bounds.low,
            high: bounds.high,
        };
        let eps = Rule::Epsilon(0.25);
        Some(match self {
            Composite::DeepTaylor if first => Rule::WSquare,
            Composite::DeepTaylor => Rule::ZPlus,
            Composite::DeepTaylorBounded if first => zbox,
            Composite::DeepTaylorBounded => Rule::ZPlus,
            Composite::EpsilonPlus if conv => Rule::ZPlus,
            Composite::EpsilonPlus => eps,
            Composite::EpsilonGammaBox if first => zbox,
            Composite::EpsilonGammaBox if conv => Rule::Gamma(0.25),
            Composite::EpsilonGammaBox => eps,
            Composite::EpsilonAlpha2Beta1 if first || conv => Rule::AlphaBeta {
                alpha: 2.0,
                beta: 1.0,
            },
            Composite::EpsilonAlpha2Beta1 => eps,
            Composite::LrpZero => Rule::Zero,
            Composite::Sensitivity | Composite::GradientXInput => return None,
        })
    }

    /// Resolves the composite and the overrides (applied in order, later ones win) for `net`.
    pub fn resolve(
        &self,
        net: &Network,
        bounds: Bounds,
        overrides: &[(LayerSelector, Rule)],
    ) -> Result<Method> {
        let linear = net.linear_layers();
        match self {
            Composite::Sensitivity | Composite::GradientXInput => {
                if !overrides.is_empty() {
                    return Err(Error::usage(
                        "--rule",
                        format!("the '{}' baseline takes no rules", self.name()),
                    ));
                }
                return Ok(if *self == Composite::Sensitivity {
                    Method::Sensitivity
                } else {
                    Method::GradientXInput
                });
            }
            _ => {}
        }
        let is_conv = |k: usize| matches!(net.layers[linear[k]], Layer::Conv2d { .. });
        let mut rules: Vec<Rule> = (0..linear.len())
            .map(|k| self.rule_for(k == 0, is_conv(k), bounds).unwrap())
            .collect();
        for (selector, rule) in overrides {
            let mut hit = false;
            for (k, slot) in rules.iter_mut().enumerate() {
                let applies = match selector {
                    LayerSelector::Index(i) => *i == k,
                    LayerSelector::First => k == 0,
                    LayerSelector::Last => k + 1 == linear.len(),
                    LayerSelector::Dense => !is_conv(k),
                    LayerSelector::Conv => is_conv(k),
                    LayerSelector::All => true,
                };
                if applies {
                    *slot = *rule;
                    hit = true;
                }
            }
            if let (LayerSelector::Index(i), false) = (selector, hit) {
                return Err(Error::usage(
                    "--rule",
                    format!(
                        "layer index {i} is out of range: the network has {} Dense/Conv2d layers (0..{})",
                        linear.len(),
                        linear.len().saturating_sub(1)
                    ),
                ));
            }
        }
        Ok(Method::Lrp { rules })
    }
}

impl std::str::FromStr for Composite {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(n, _)| *n == s.trim())
            .map(|(_, c)| *c)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                Error::usage(
                    "--composite",
                    format!(
                        "unknown composite '{s}'; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}

impl LayerSelector {
    /// Parses `SELECTOR=RULE` as given to `--rule`.
    pub fn parse_override(spec: &str, bounds: Bounds) -> Result<(LayerSelector, Rule)> {
        let (sel, rule) = spec.split_once('=').ok_or_else(|| {
            Error::usage(
                "--rule",
                format!("'{spec}': expected SELECTOR=RULE, e.g. first=flat or 2=epsilon(0.1)"),
            )
        })?;
        let selector = match sel.trim() {
            "first" => LayerSelector::First,
            "last" => LayerSelector::Last,
            "dense" => LayerSelector::Dense,
            "conv" => LayerSelector::Conv,
            "*" | "all" => LayerSelector::All,
            k => LayerSelector::Index(k.parse().map_err(|_| {
                Error::usage(
                    "--rule",
                    format!(
                        "'{spec}': selector '{k}' is not a layer index, first, last, dense, conv or *"
                    ),
                )
            })?),
        };
        // Rule::parse names no flag of its own ("rule: ..."); this one does
        let rule = Rule::parse(rule, bounds).map_err(|e| match e {
            Error::Usage { message, .. } => Error::usage("--rule", message),
            other => other,
        })?;
        Ok((selector, rule))
    }
}
