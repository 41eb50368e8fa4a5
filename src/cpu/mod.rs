//! The CPU backends. The reference backend (this file and `linear`, `pool`, `window`):
//! paper-literal LRP / Deep Taylor Decomposition in f64 with ndarray, the oracle for every f32
//! engine. The fast engine (`fast`): f32 on every core, the fallback when there is no GPU.
//!
//! A [`Network`] is prepared once into a plan (f64 parameters, window geometry per layer); a
//! batch then runs forward keeping every activation, seeds the target (SPEC section 4) and walks
//! the layers backward with the rule of each Dense/Conv2d layer (SPEC section 2) or, for the
//! baselines, with the exact gradient.

mod fast;
mod linear;
mod pool;
mod window;

pub use fast::FastBackend;

use ndarray::{Array2, ArrayD, ArrayViewD, Ix2, Ix4, IxDyn};

use crate::lrp::{argmax, Backend, BatchOutput, Method, Rule};
use crate::model::{Layer, Network};
use crate::{Error, Result};
use linear::LinearOp;
use window::Geometry;

/// Runs `net` on the batch `x` (shape `(n, per-sample input shape...)`) and returns every
/// activation, batch-first: `[input, output of layer 0, output of layer 1, ...]`.
pub fn forward(net: &Network, x: ArrayViewD<'_, f64>) -> Result<Vec<ArrayD<f64>>> {
    let plan = Plan::new(net)?;
    plan.check_input(&x)?;
    plan.forward(x)
}

/// The network's outputs (logits) for the batch `x`, shape `(n, outputs)`.
pub fn logits(net: &Network, x: ArrayViewD<'_, f64>) -> Result<Array2<f64>> {
    let plan = Plan::new(net)?;
    plan.check_input(&x)?;
    plan.logits(&plan.forward(x)?)
}

/// Explains the batch `x` with `method`.
///
/// `targets` is `None` for the predicted class (arg-max, first on ties) or one class index per
/// sample; a network with a single output always starts from output 0. The output relevance is
/// e_t * y_t for LRP; the baselines differentiate y_t.
pub fn explain(
    net: &Network,
    method: &Method,
    x: ArrayViewD<'_, f64>,
    targets: Option<&[usize]>,
) -> Result<BatchOutput> {
    Plan::new(net)?.explain(method, x, targets)
}

/// The CPU reference backend behind the [`Backend`] interface.
pub struct ReferenceBackend {
    net: Network,
    method: Method,
    /// Built on the first batch, so that `new` cannot fail.
    plan: Option<Plan>,
    /// The most samples a batch may have for its working memory to fit in the memory that was
    /// available when the plan was built (`u64::MAX` where the system does not say).
    max_batch: u64,
}

impl ReferenceBackend {
    /// A backend explaining `net` with `method`; the network is prepared on the first batch.
    pub fn new(net: Network, method: Method) -> Self {
        ReferenceBackend {
            net,
            method,
            plan: None,
            max_batch: u64::MAX,
        }
    }

    /// The plan for a batch of `n` samples (built on the first batch, when the network's memory
    /// is checked), or the refusal of a batch too large for memory.
    fn plan_for(&mut self, n: usize) -> Result<Plan> {
        let plan = match self.plan.take() {
            Some(plan) => plan,
            None => {
                self.max_batch = max_batch(&self.net)?;
                Plan::new(&self.net)?
            }
        };
        if n as u64 > self.max_batch {
            let fit = self.max_batch;
            self.plan = Some(plan);
            return Err(Error::usage(
                "--batch-size",
                format!(
                    "a batch of {n} samples would not fit in memory on the reference backend; \
                     use at most {fit} samples a batch"
                ),
            ));
        }
        Ok(plan)
    }
}

impl Backend for ReferenceBackend {
    fn kind(&self) -> &'static str {
        "reference"
    }

    fn adapter(&self) -> String {
        "CPU reference backend (f64, ndarray)".into()
    }

    fn run(
        &mut self,
        x: ArrayViewD<'_, f32>,
        targets: Option<&[usize]>,
    ) -> Result<BatchOutput<f32>> {
        let plan = self.plan_for(x.shape().first().copied().unwrap_or(0))?;
        let out = plan.explain(&self.method, x.mapv(f64::from).view(), targets);
        self.plan = Some(plan);
        out.map(|o| o.to_f32())
    }

    fn logits(&mut self, x: ArrayViewD<'_, f32>) -> Result<Array2<f64>> {
        let plan = self.plan_for(x.shape().first().copied().unwrap_or(0))?;
        let x = x.mapv(f64::from);
        let out = plan
            .check_input(&x.view())
            .and_then(|_| plan.logits(&plan.forward(x.view())?));
        self.plan = Some(plan);
        out
    }
}

/// The most samples of a batch whose f64 working memory fits in the memory available now: the
/// reference holds the whole batch's activations and each layer's im2col matrix at once (counted
/// at the least: every activation and the largest im2col matrix). A network whose one sample does
/// not fit is refused, naming its largest layer (it used to abort the process).
fn max_batch(net: &Network) -> Result<u64> {
    let Some(available) = crate::available_memory() else {
        return Ok(u64::MAX);
    };
    let activations: usize = net
        .shapes()?
        .iter()
        .map(|s| s.iter().product::<usize>())
        .sum();
    let per_sample = 8 * (activations as u64 + net.largest_im2col()? as u64);
    if per_sample > available {
        return Err(crate::too_large_for_memory(
            net,
            "reference backend working memory (activations and im2col, f64)",
            per_sample,
            available,
        ));
    }
    Ok(available / per_sample.max(1))
}

/// An error for a broken internal invariant (shapes are validated before any work).
fn internal(what: String) -> Error {
    Error::Shape {
        layer: "cpu backend".into(),
        expected: "shapes validated at planning time (this is a bug in taylormap)".into(),
        got: what,
    }
}

/// One layer prepared for f64 evaluation.
enum Step {
    /// Dense or Conv2d; `rule` indexes the method's rules.
    Linear {
        op: LinearOp,
        rule: usize,
    },
    Relu,
    MaxPool(Geometry),
    AvgPool {
        geometry: Geometry,
        count_include_pad: bool,
        sum: bool,
    },
    Flatten,
}

/// A network prepared for the CPU: f64 parameters and per-layer geometry.
struct Plan {
    steps: Vec<Step>,
    /// Per-sample activation shapes, `shapes[0]` the input.
    shapes: Vec<Vec<usize>>,
    /// Layer names for messages.
    names: Vec<String>,
    /// Number of Dense/Conv2d layers (= rules a method needs).
    linear: usize,
    /// Number of outputs per sample.
    outputs: usize,
}

impl Plan {
    fn new(net: &Network) -> Result<Self> {
        net.validate()?;
        let shapes = net.shapes()?;
        let mut steps = Vec::with_capacity(net.layers.len());
        let mut linear = 0;
        for (k, layer) in net.layers.iter().enumerate() {
            let input = &shapes[k];
            let geometry = |window| {
                match input.as_slice() {
                    [_, h, w] => Geometry::new(window, *h, *w),
                    _ => None,
                }
                .ok_or_else(|| internal(format!("layer {k}: window on input {input:?}")))
            };
            steps.push(match layer {
                Layer::Dense { weight, bias } => {
                    linear += 1;
                    Step::Linear {
                        op: LinearOp::dense(weight, bias),
                        rule: linear - 1,
                    }
                }
                Layer::Conv2d {
                    weight,
                    bias,
                    window,
                } => {
                    linear += 1;
                    Step::Linear {
                        op: LinearOp::conv(weight, bias, *window, input)?,
                        rule: linear - 1,
                    }
                }
                Layer::Relu => Step::Relu,
                Layer::MaxPool2d { window } => Step::MaxPool(geometry(*window)?),
                Layer::AvgPool2d {
                    window,
                    count_include_pad,
                    sum,
                } => Step::AvgPool {
                    geometry: geometry(*window)?,
                    count_include_pad: *count_include_pad,
                    sum: *sum,
                },
                Layer::Flatten => Step::Flatten,
            });
        }
        let outputs = shapes.last().map_or(0, |s| s.iter().product());
        if outputs == 0 {
            return Err(Error::Shape {
                layer: "output".into(),
                expected: "at least one output per sample".into(),
                got: "none".into(),
            });
        }
        Ok(Plan {
            steps,
            shapes,
            names: net.names.clone(),
            linear,
            outputs,
        })
    }

    /// The batch must have shape `(n, input shape...)` and finite values; returns n.
    fn check_input(&self, x: &ArrayViewD<'_, f64>) -> Result<usize> {
        let n = crate::lrp::check_batch(x.shape(), &self.shapes[0])?;
        crate::lrp::check_finite(x.view())?;
        Ok(n)
    }

    /// Every activation, `[input, output of layer 0, ...]`.
    fn forward(&self, x: ArrayViewD<'_, f64>) -> Result<Vec<ArrayD<f64>>> {
        let mut acts = vec![x.to_owned()];
        for (k, step) in self.steps.iter().enumerate() {
            let a = acts[k].view();
            let next = match step {
                Step::Linear { op, .. } => op.forward(a)?,
                Step::Relu => a.mapv(|v| v.max(0.0)),
                Step::MaxPool(g) => pool::max_pool(g, as4(a)?).0.into_dyn(),
                Step::AvgPool {
                    geometry,
                    count_include_pad,
                    sum,
                } => pool::avg_pool(geometry, as4(a)?, *count_include_pad, *sum).into_dyn(),
                Step::Flatten => reshape(a, &self.shapes[k + 1])?,
            };
            acts.push(next);
        }
        Ok(acts)
    }

    /// The last activation as `(n, outputs)`.
    fn logits(&self, acts: &[ArrayD<f64>]) -> Result<Array2<f64>> {
        let last = acts
            .last()
            .ok_or_else(|| internal("no activations".into()))?;
        last.view()
            .into_dimensionality::<Ix2>()
            .map(|v| v.to_owned())
            .map_err(|e| internal(format!("logits: {e}")))
    }

    /// The output each sample starts from (SPEC section 4).
    fn targets(&self, logits: &Array2<f64>, targets: Option<&[usize]>) -> Result<Vec<usize>> {
        let n = logits.nrows();
        if let Some(t) = targets {
            crate::lrp::check_targets(t, n, self.outputs)?;
        }
        Ok(match targets {
            // A single-output (detection) network always explains y itself.
            _ if self.outputs == 1 => vec![0; n],
            None => logits
                .rows()
                .into_iter()
                .map(|row| argmax(row.iter().copied()))
                .collect(),
            Some(t) => t.to_vec(),
        })
    }

    fn explain(
        &self,
        method: &Method,
        x: ArrayViewD<'_, f64>,
        targets: Option<&[usize]>,
    ) -> Result<BatchOutput> {
        if let Method::Lrp { rules } = method {
            if rules.len() != self.linear {
                return Err(Error::usage(
                    "--rule",
                    format!(
                        "the method has {} rule(s) but the network has {} Dense/Conv2d layer(s); \
                         give one rule per Dense/Conv2d layer",
                        rules.len(),
                        self.linear
                    ),
                ));
            }
        }
        let n = self.check_input(&x)?;
        let acts = self.forward(x)?;
        let logits = self.logits(&acts)?;
        let targets = self.targets(&logits, targets)?;
        let relevance = match method {
            Method::Lrp { rules } => {
                // R at the output: e_t * y_t.
                let mut seed = Array2::<f64>::zeros((n, self.outputs));
                for (i, &t) in targets.iter().enumerate() {
                    seed[[i, t]] = logits[[i, t]];
                }
                self.lrp_backward(rules, &acts, seed.into_dyn())?
            }
            Method::Sensitivity | Method::GradientXInput => {
                // dy_t/dy = e_t.
                let mut seed = Array2::<f64>::zeros((n, self.outputs));
                for (i, &t) in targets.iter().enumerate() {
                    seed[[i, t]] = 1.0;
                }
                let grad = self.gradient(&acts, seed.into_dyn())?;
                if *method == Method::Sensitivity {
                    // R_i = (dy_t/dx_i)^2
                    grad.mapv(|g| g * g)
                } else {
                    // R_i = x_i dy_t/dx_i
                    grad * &acts[0]
                }
            }
        };
        Ok(BatchOutput {
            relevance,
            logits,
            targets,
        })
    }

    /// Relevance propagation from the output relevance `r` down to the input.
    fn lrp_backward(
        &self,
        rules: &[Rule],
        acts: &[ArrayD<f64>],
        mut r: ArrayD<f64>,
    ) -> Result<ArrayD<f64>> {
        for (k, step) in self.steps.iter().enumerate().rev() {
            let a = acts[k].view();
            r = match step {
                Step::Linear { op, rule } => op.relevance(&rules[*rule], a, r.view())?,
                // ReLU: identity for relevance.
                Step::Relu => r,
                Step::MaxPool(g) => {
                    let (_, arg) = pool::max_pool(g, as4(a)?);
                    pool::route_to_argmax(g, as4(r.view())?, &arg).into_dyn()
                }
                Step::AvgPool { geometry, .. } => {
                    pool::avg_relevance(geometry, as4(a)?, as4(r.view())?).into_dyn()
                }
                Step::Flatten => reshape(r.view(), &self.shapes[k])?,
            };
            debug_assert_eq!(r.shape(), acts[k].shape(), "layer {}", self.names[k]);
        }
        Ok(r)
    }

    /// The exact gradient of the seeded outputs with respect to the input.
    fn gradient(&self, acts: &[ArrayD<f64>], mut g: ArrayD<f64>) -> Result<ArrayD<f64>> {
        for (k, step) in self.steps.iter().enumerate().rev() {
            let a = acts[k].view();
            g = match step {
                Step::Linear { op, .. } => op.transpose(op.weight(), g.view())?,
                // d relu(z)/dz = 1 for z > 0, else 0.
                Step::Relu => {
                    ndarray::Zip::from(&g)
                        .and(&a)
                        .map_collect(|&g, &z| if z > 0.0 { g } else { 0.0 })
                }
                Step::MaxPool(geometry) => {
                    let (_, arg) = pool::max_pool(geometry, as4(a)?);
                    pool::route_to_argmax(geometry, as4(g.view())?, &arg).into_dyn()
                }
                Step::AvgPool {
                    geometry,
                    count_include_pad,
                    sum,
                } => pool::avg_gradient(geometry, as4(g.view())?, *count_include_pad, *sum)
                    .into_dyn(),
                Step::Flatten => reshape(g.view(), &self.shapes[k])?,
            };
        }
        Ok(g)
    }
}

/// A batch of per-sample shape `shape`, in row-major order.
fn reshape(a: ArrayViewD<'_, f64>, shape: &[usize]) -> Result<ArrayD<f64>> {
    let mut full = vec![a.shape()[0]];
    full.extend_from_slice(shape);
    a.to_shape(IxDyn(&full))
        .map(|v| v.into_owned())
        .map_err(|e| internal(format!("reshape to {full:?}: {e}")))
}

/// A batch of (C, H, W) samples as a 4-D view.
fn as4(a: ArrayViewD<'_, f64>) -> Result<ndarray::ArrayView4<'_, f64>> {
    a.into_dimensionality::<Ix4>()
        .map_err(|e| internal(format!("expected an (n, C, H, W) batch: {e}")))
}
