//! Relevance rules for Dense and Conv2d layers (SPEC section 2).
//!
//! Every z-rule is one mechanism with different modifiers (Zennit's formulation): a rule is a
//! list of [`Pass`]es; each pass builds a modified pre-activation
//! `z'_j = sum_terms sign * sum_i f(x_i) g(w_ij) + h(b_j)`, computes `s_j = R_j / stab(z'_j)` and
//! gives back `coefficient * sum_terms sign * f(x_i) * sum_j g(w_ij) s_j`. The relevance of the
//! layer input is the sum over passes. Padding positions of a convolution have f(x) = 0 for
//! every modifier, so they neither receive relevance nor enter a denominator.

use crate::{Error, Result};

/// Stabiliser of every rule but `epsilon` (SPEC section 2).
pub const DEFAULT_EPS: f64 = 1e-9;

/// A relevance rule for one Dense or Conv2d layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// LRP-0 (Bach et al. 2015): q = x w, bias b.
    Zero,
    /// LRP-epsilon: q = x w, bias b, stabiliser E.
    Epsilon(f64),
    /// DTD z+ (Montavon et al. 2017): q = x+ w+ + x- w-, no bias.
    ZPlus,
    /// DTD w^2 (Montavon et al. 2017): q = w^2, no bias.
    WSquare,
    /// DTD z^B (Montavon et al. 2017): q = x w - L w+ - H w-, no bias.
    ZBox { low: f64, high: f64 },
    /// Flat (Lapuschkin et al. 2019): q = 1 over the receptive field, no bias.
    Flat,
    /// LRP-gamma (Montavon et al. 2019): q = x (w + G w+), bias b + G b+.
    Gamma(f64),
    /// LRP-alpha-beta: positive and negative parts of x w normalised separately.
    AlphaBeta { alpha: f64, beta: f64 },
}

/// How a pass modifies the layer input x.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum InputMod {
    /// x
    Identity,
    /// max(0, x)
    Positive,
    /// min(0, x)
    Negative,
    /// 1 (at real positions; padding stays 0)
    Ones,
    /// a constant (zbox's L or H; padding stays 0)
    Constant(f64),
}

/// How a pass modifies a weight or bias.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ParamMod {
    /// w
    Identity,
    /// max(0, w)
    Positive,
    /// min(0, w)
    Negative,
    /// w^2
    Square,
    /// 1
    Ones,
    /// w + G max(0, w)
    Gamma(f64),
    /// 0 (used for "no bias term")
    Zero,
}

/// What a layer's forward pass can give towards a rule's z' ([`Rule::forward_z`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardZ {
    /// Nothing: z' takes products of its own.
    None,
    /// The rule's one pass has the plain x w (sign +1) as its only data-dependent term (LRP-0,
    /// epsilon, z^B beside its constant L/H term): that term's share of z' is the forward pass's
    /// own sum of x w.
    Plain,
    /// The rule's one pass has x g(w) with other weights as its only data-dependent term (z+ and
    /// gamma on a ReLU output): a second sum over the forward pass's inputs, which an engine
    /// can compute together with x w.
    Other,
    /// The rule's two passes have one term each, x w+ in the first and x w- in the second,
    /// both with sign +1 (alpha-beta on a ReLU output): two more sums over the forward pass's
    /// inputs, each its pass's z' (less h(b)). They add up to x w, but the forward pass sums x w
    /// itself: the rounding of the larger part would otherwise land on its output.
    Split,
}

/// One product term `sign * f(x) g(w)` of a pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Term {
    pub input: InputMod,
    pub weight: ParamMod,
    pub sign: f64,
}

/// One normalised redistribution; see the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct Pass {
    pub coefficient: f64,
    pub terms: Vec<Term>,
    pub bias: ParamMod,
}

impl InputMod {
    /// Whether the modifier ignores the data (1 or zbox's L and H).
    pub fn is_constant(self) -> bool {
        matches!(self, InputMod::Ones | InputMod::Constant(_))
    }

    /// Applies the modifier to one input value.
    pub fn apply(self, x: f64) -> f64 {
        match self {
            InputMod::Identity => x,
            InputMod::Positive => x.max(0.0),
            InputMod::Negative => x.min(0.0),
            InputMod::Ones => 1.0,
            InputMod::Constant(c) => c,
        }
    }
}

impl ParamMod {
    /// Applies the modifier to one weight or bias.
    pub fn apply(self, w: f64) -> f64 {
        match self {
            ParamMod::Identity => w,
            ParamMod::Positive => w.max(0.0),
            ParamMod::Negative => w.min(0.0),
            ParamMod::Square => w * w,
            ParamMod::Ones => 1.0,
            ParamMod::Gamma(g) => w + g * w.max(0.0),
            ParamMod::Zero => 0.0,
        }
    }
}

/// stab(d) = d + eps * sign(d), sign(0) = +1.
pub fn stabilize(d: f64, eps: f64) -> f64 {
    if d >= 0.0 {
        d + eps
    } else {
        d - eps
    }
}

fn term(input: InputMod, weight: ParamMod, sign: f64) -> Term {
    Term {
        input,
        weight,
        sign,
    }
}

impl Rule {
    /// The stabiliser eps of stab(d).
    pub fn eps(&self) -> f64 {
        match self {
            Rule::Epsilon(e) => *e,
            _ => DEFAULT_EPS,
        }
    }

    /// The passes of the rule on a layer whose input is known to be non-negative (a ReLU
    /// output, possibly pooled or flattened) when `nonnegative_input`: there x+ = x and x- = 0,
    /// so terms with input x- vanish and x+ becomes x. The relevance is exactly that of
    /// [`Rule::passes`], with fewer terms to evaluate (z+ and alpha-beta halve).
    pub fn passes_on(&self, nonnegative_input: bool) -> Vec<Pass> {
        let mut passes = self.passes();
        if nonnegative_input {
            for pass in &mut passes {
                pass.terms.retain(|t| t.input != InputMod::Negative);
                for t in &mut pass.terms {
                    if t.input == InputMod::Positive {
                        t.input = InputMod::Identity;
                    }
                }
            }
        }
        passes
    }

    /// What the forward pass of a layer under this rule can give towards its z' (the engines
    /// then skip or merge that product: see [`ForwardZ`]); `nonnegative_input` as for
    /// [`Rule::passes_on`].
    pub fn forward_z(&self, nonnegative_input: bool) -> ForwardZ {
        let passes = self.passes_on(nonnegative_input);
        // a pass whose one term is x g(w) with sign +1
        let one_term = |p: &Pass, weight: ParamMod| match &p.terms[..] {
            [t] => t.input == InputMod::Identity && t.weight == weight && t.sign == 1.0,
            _ => false,
        };
        let pass = match &passes[..] {
            [pass] => pass,
            [a, b] if one_term(a, ParamMod::Positive) && one_term(b, ParamMod::Negative) => {
                return ForwardZ::Split;
            }
            _ => return ForwardZ::None,
        };
        let mut data = pass.terms.iter().filter(|t| !t.input.is_constant());
        match (data.next(), data.next()) {
            (Some(t), None) if t.input == InputMod::Identity => {
                if t.weight == ParamMod::Identity && t.sign == 1.0 {
                    ForwardZ::Plain
                } else {
                    ForwardZ::Other
                }
            }
            _ => ForwardZ::None,
        }
    }

    /// The passes of the rule (see the module docs).
    pub fn passes(&self) -> Vec<Pass> {
        use InputMod as I;
        use ParamMod as P;
        let single = |terms: Vec<Term>, bias| {
            vec![Pass {
                coefficient: 1.0,
                terms,
                bias,
            }]
        };
        match *self {
            Rule::Zero | Rule::Epsilon(_) => {
                single(vec![term(I::Identity, P::Identity, 1.0)], P::Identity)
            }
            Rule::ZPlus => single(
                vec![
                    term(I::Positive, P::Positive, 1.0),
                    term(I::Negative, P::Negative, 1.0),
                ],
                P::Zero,
            ),
            Rule::WSquare => single(vec![term(I::Ones, P::Square, 1.0)], P::Zero),
            Rule::ZBox { low, high } => single(
                vec![
                    term(I::Identity, P::Identity, 1.0),
                    term(I::Constant(low), P::Positive, -1.0),
                    term(I::Constant(high), P::Negative, -1.0),
                ],
                P::Zero,
            ),
            Rule::Flat => single(vec![term(I::Ones, P::Ones, 1.0)], P::Zero),
            Rule::Gamma(g) => single(vec![term(I::Identity, P::Gamma(g), 1.0)], P::Gamma(g)),
            Rule::AlphaBeta { alpha, beta } => vec![
                Pass {
                    coefficient: alpha,
                    terms: vec![
                        term(I::Positive, P::Positive, 1.0),
                        term(I::Negative, P::Negative, 1.0),
                    ],
                    bias: P::Positive,
                },
                Pass {
                    coefficient: -beta,
                    terms: vec![
                        term(I::Positive, P::Negative, 1.0),
                        term(I::Negative, P::Positive, 1.0),
                    ],
                    bias: P::Negative,
                },
            ],
        }
    }

    /// Parses the CLI spelling (`zero`, `epsilon(0.25)`, `zplus`, `wsquare`, `zbox(L,H)`, `flat`,
    /// `gamma(0.25)`, `alphabeta(2,1)`). `zbox` without arguments takes `bounds`; `epsilon` and
    /// `gamma` default to 0.25, `alphabeta` to (2, 1).
    pub fn parse(spec: &str, bounds: super::Bounds) -> Result<Rule> {
        let bad = |m: String| Error::usage("rule", format!("'{spec}': {m}"));
        let s: String = spec
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        let (name, args) = match s.find('(') {
            Some(open) => {
                if !s.ends_with(')') {
                    return Err(bad("missing ')'".into()));
                }
                let inner = &s[open + 1..s.len() - 1];
                let args = inner
                    .split(',')
                    .map(|a| {
                        a.parse::<f64>()
                            .map_err(|_| bad(format!("'{a}' is not a number")))
                    })
                    .collect::<Result<Vec<f64>>>()?;
                // the f32 engines take them as f32: 1e40 would be infinite there
                if args.iter().any(|&a| !(a as f32).is_finite()) {
                    return Err(bad(
                        "arguments must be finite numbers within float32's range (up to 3.4e38)"
                            .into(),
                    ));
                }
                (&s[..open], args)
            }
            None => (s.as_str(), vec![]),
        };
        let want = |n: usize, rule: Rule| {
            if args.len() == n {
                Ok(rule)
            } else {
                Err(bad(format!("takes {n} argument(s), got {}", args.len())))
            }
        };
        match (name, args.len()) {
            ("zero" | "lrp0" | "lrp-0", _) => want(0, Rule::Zero),
            ("epsilon" | "eps", 0) => Ok(Rule::Epsilon(0.25)),
            ("epsilon" | "eps", _) => {
                if args[0] < 0.0 {
                    return Err(bad("epsilon must be >= 0".into()));
                }
                want(1, Rule::Epsilon(args[0]))
            }
            ("zplus" | "z+", _) => want(0, Rule::ZPlus),
            ("wsquare" | "w2" | "w^2", _) => want(0, Rule::WSquare),
            ("zbox" | "zb", 0) => Ok(Rule::ZBox {
                low: bounds.low,
                high: bounds.high,
            }),
            ("zbox" | "zb", _) => {
                if args.len() == 2 && args[0] > args[1] {
                    return Err(bad("needs L <= H".into()));
                }
                want(2, Rule::ZBox {
                    low: args[0],
                    high: *args.get(1).unwrap_or(&0.0),
                })
            }
            ("flat", _) => want(0, Rule::Flat),
            ("gamma", 0) => Ok(Rule::Gamma(0.25)),
            ("gamma", _) => {
                if args[0] < 0.0 {
                    return Err(bad("gamma must be >= 0".into()));
                }
                want(1, Rule::Gamma(args[0]))
            }
            ("alphabeta" | "alpha-beta", 0) => Ok(Rule::AlphaBeta {
                alpha: 2.0,
                beta: 1.0,
            }),
            ("alphabeta" | "alpha-beta", _) => {
                if args.len() != 2 {
                    return Err(bad(format!("takes 2 arguments, got {}", args.len())));
                }
                let (alpha, beta) = (args[0], args[1]);
                if alpha < 1.0 || beta < 0.0 || (alpha - beta - 1.0).abs() > 1e-9 {
                    return Err(bad("needs A - B = 1, A >= 1, B >= 0".into()));
                }
                Ok(Rule::AlphaBeta { alpha, beta })
            }
            _ => Err(bad(
                "unknown rule; expected zero, epsilon(E), zplus, wsquare, zbox(L,H), flat, gamma(G) or alphabeta(A,B)"
                    .into(),
            )),
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rule::Zero => write!(f, "zero"),
            Rule::Epsilon(e) => write!(f, "epsilon({e})"),
            Rule::ZPlus => write!(f, "zplus"),
            Rule::WSquare => write!(f, "wsquare"),
            Rule::ZBox { low, high } => write!(f, "zbox({low},{high})"),
            Rule::Flat => write!(f, "flat"),
            Rule::Gamma(g) => write!(f, "gamma({g})"),
            Rule::AlphaBeta { alpha, beta } => write!(f, "alphabeta({alpha},{beta})"),
        }
    }
}
