//! Colormaps for heatmaps: signed maps centred exactly on a neutral colour at 0, and a
//! positive-only map. Colours are piecewise-linear in RGB between evenly spaced nodes.

use std::fmt;
use std::str::FromStr;

use super::round_to_byte;
use crate::{Error, Result};

/// A heatmap colormap. Values are normalised to t in [-1, 1] before colouring (see
/// [`Colormap::color`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Colormap {
    /// Diverging blue (-1) - white (0) - red (+1), like matplotlib's `bwr` and Zennit's `bwr`.
    #[default]
    Bwr,
    /// Zennit's `coldnhot`: cyan (-1) - blue - black (0) - red - yellow (+1).
    ColdHot,
    /// Positive only, like matplotlib's `hot`: black (0) - red - yellow - white (+1); negative
    /// values are drawn as 0.
    Heat,
    /// Signed grayscale: black (-1) - mid gray (0) - white (+1).
    Gray,
}

type Rgb = [u8; 3];

const BWR: &[Rgb] = &[[0, 0, 255], [255, 255, 255], [255, 0, 0]];
const COLD_HOT: &[Rgb] = &[
    [0, 255, 255],
    [0, 0, 255],
    [0, 0, 0],
    [255, 0, 0],
    [255, 255, 0],
];
const HEAT: &[Rgb] = &[[0, 0, 0], [255, 0, 0], [255, 255, 0], [255, 255, 255]];
const GRAY: &[Rgb] = &[[0, 0, 0], [255, 255, 255]];

impl Colormap {
    /// Every colormap, in the order the CLI lists them.
    pub const ALL: [Colormap; 4] = [
        Colormap::Bwr,
        Colormap::ColdHot,
        Colormap::Heat,
        Colormap::Gray,
    ];

    /// The CLI spelling.
    pub fn name(self) -> &'static str {
        match self {
            Colormap::Bwr => "bwr",
            Colormap::ColdHot => "coldnhot",
            Colormap::Heat => "heat",
            Colormap::Gray => "gray",
        }
    }

    /// True for maps that show negative relevance in their own colours.
    pub fn is_signed(self) -> bool {
        !matches!(self, Colormap::Heat)
    }

    fn nodes(self) -> &'static [Rgb] {
        match self {
            Colormap::Bwr => BWR,
            Colormap::ColdHot => COLD_HOT,
            Colormap::Heat => HEAT,
            Colormap::Gray => GRAY,
        }
    }

    /// The colour of a normalised value `t` (clamped to [-1, 1]; NaN counts as 0).
    ///
    /// Signed maps send -1, 0 and +1 exactly to their first, middle and last node; the
    /// positive-only [`Colormap::Heat`] sends t <= 0 to its first node and +1 to its last.
    pub fn color(self, t: f64) -> Rgb {
        self.painter().color(t)
    }

    /// The map prepared for colouring many values: [`Painter::color`] is [`Colormap::color`]
    /// without matching on the map for each value.
    pub(crate) fn painter(self) -> Painter {
        let nodes = self.nodes();
        let mut step = [[0.0; 3]; MAX_SEGMENTS];
        for (k, pair) in nodes.windows(2).enumerate() {
            // exact: differences of two bytes
            step[k] = std::array::from_fn(|c| f64::from(pair[1][c]) - f64::from(pair[0][c]));
        }
        Painter {
            first: nodes[0].map(f64::from),
            step,
            segments: (nodes.len() - 1) as f64,
            signed: self.is_signed(),
        }
    }

    /// The colour of zero relevance.
    pub fn neutral(self) -> Rgb {
        self.color(0.0)
    }
}

/// The most segments (nodes less one) of a colormap.
const MAX_SEGMENTS: usize = 4;

/// A [`Colormap`]'s nodes in f64: [`Colormap::painter`].
pub(crate) struct Painter {
    /// The first node.
    first: [f64; 3],
    /// Per segment, its last node less its first; 0 past the map's last segment.
    step: [[f64; 3]; MAX_SEGMENTS],
    segments: f64,
    signed: bool,
}

impl Painter {
    /// [`Colormap::color`] of `t`.
    ///
    /// With `pos` = t's position along the nodes (0 at the first, one per segment), segment k
    /// adds its step times clamp(pos - k, 0, 1): the whole step for the segments before pos, the
    /// fraction f = pos - k for pos's own and nothing after. That is the linear interpolation
    /// a + (b - a) f between pos's two nodes to the last bit: the whole steps are integers that
    /// sum exactly to a, and those after add 0. Without a segment index to look up, every value
    /// takes the same instructions.
    #[inline]
    pub(crate) fn color(&self, t: f64) -> Rgb {
        let t = if t.is_nan() { 0.0 } else { t.clamp(-1.0, 1.0) };
        let u = if self.signed {
            (t + 1.0) / 2.0
        } else {
            t.max(0.0)
        };
        let pos = u * self.segments;
        let mut v = self.first;
        for (k, step) in self.step.iter().enumerate() {
            let share = (pos - k as f64).clamp(0.0, 1.0);
            for (v, s) in v.iter_mut().zip(step) {
                *v += s * share;
            }
        }
        v.map(round_to_byte)
    }
}

impl fmt::Display for Colormap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Colormap {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        Colormap::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Colormap::ALL.iter().map(|c| c.name()).collect();
                Error::usage(
                    "--cmap",
                    format!(
                        "unknown colormap '{s}'; expected one of {}",
                        names.join(", ")
                    ),
                )
            })
    }
}
