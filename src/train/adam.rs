//! Adam (Kingma & Ba 2015, Algorithm 1), written once for every parameter tensor of the trainer.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip};

/// Adam state: first and second moment estimates per parameter tensor ("slot").
#[derive(Clone, Debug)]
pub(crate) struct Adam {
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Steps taken so far.
    t: i32,
    /// (m, v) per slot, created on first use.
    moments: Vec<Option<(ArrayD<f32>, ArrayD<f32>)>>,
}

impl Adam {
    /// The paper's defaults: beta1 = 0.9, beta2 = 0.999, eps = 1e-8.
    pub(crate) fn new() -> Self {
        Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            moments: Vec::new(),
        }
    }

    /// Starts a step; call [`Adam::update`] for every parameter tensor afterwards.
    pub(crate) fn begin_step(&mut self) {
        self.t += 1;
    }

    /// One Adam update of `param` with gradient `grad` and step size `lr`:
    /// m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
    /// param -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    pub(crate) fn update(
        &mut self,
        slot: usize,
        lr: f64,
        param: ArrayViewMutD<f32>,
        grad: ArrayViewD<f32>,
    ) {
        if self.moments.len() <= slot {
            self.moments.resize(slot + 1, None);
        }
        let (m, v) = self.moments[slot].get_or_insert_with(|| {
            (
                ArrayD::zeros(param.raw_dim()),
                ArrayD::zeros(param.raw_dim()),
            )
        });
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let c1 = (1.0 / (1.0 - self.beta1.powi(self.t))) as f32;
        let c2 = (1.0 / (1.0 - self.beta2.powi(self.t))) as f32;
        let (lr, eps) = (lr as f32, self.eps as f32);
        Zip::from(param)
            .and(grad)
            .and(m)
            .and(v)
            .for_each(|p, &g, m, v| {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *p -= lr * (*m * c1) / ((*v * c2).sqrt() + eps);
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    #[test]
    fn first_step_moves_each_parameter_by_lr_against_the_gradient_sign() {
        // With bias correction, the first step is lr * g / (|g| + eps) ~ lr * sign(g).
        let mut adam = Adam::new();
        let mut p = arr1(&[0.5f32, -0.25, 2.0]).into_dyn();
        let g = arr1(&[3.0f32, -0.01, 0.7]).into_dyn();
        adam.begin_step();
        adam.update(0, 0.1, p.view_mut(), g.view());
        let expect = [0.4f32, -0.15, 1.9];
        for (a, b) in p.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn minimises_a_quadratic() {
        let mut adam = Adam::new();
        let target = arr1(&[1.5f32, -2.0, 0.3]).into_dyn();
        let mut p = ArrayD::<f32>::zeros(target.raw_dim());
        for _ in 0..2000 {
            let g = (&p - &target) * 2.0;
            adam.begin_step();
            adam.update(0, 0.01, p.view_mut(), g.view());
        }
        for (a, b) in p.iter().zip(target.iter()) {
            assert!((a - b).abs() < 1e-2, "{a} vs {b}");
        }
    }
}
