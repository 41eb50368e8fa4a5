//! Per-sample consistency statistics (SPEC section 4).

/// What the engine reports per sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleStats {
    /// y_t, the target logit.
    pub score: f64,
    /// sum_i R_i.
    pub relevance_sum: f64,
    /// |relevance_sum - score| / max(|score|, 1e-12).
    pub conservation_error: f64,
    /// Share of total |R| that is negative (0 when all R are 0).
    pub negative_fraction: f64,
    /// No R_i below -1e-6 |score|.
    pub positive: bool,
}

impl SampleStats {
    /// Computes the statistics of one sample's relevance given its score.
    pub fn compute(relevance: impl IntoIterator<Item = f64>, score: f64) -> Self {
        let (mut sum, mut abs, mut neg, mut min) = (0.0, 0.0, 0.0, f64::INFINITY);
        for r in relevance {
            sum += r;
            abs += r.abs();
            if r < 0.0 {
                neg -= r;
            }
            min = min.min(r);
        }
        SampleStats {
            score,
            relevance_sum: sum,
            conservation_error: (sum - score).abs() / score.abs().max(1e-12),
            negative_fraction: if abs > 0.0 { neg / abs } else { 0.0 },
            positive: min >= -1e-6 * score.abs(),
        }
    }

    /// conservation_error <= 1e-4.
    pub fn conservative(&self) -> bool {
        self.conservation_error <= 1e-4
    }

    /// Conservative and positive.
    pub fn consistent(&self) -> bool {
        self.conservative() && self.positive
    }
}
