//! Heatmaps over their inputs: an overlay of relevance on the gray input, and a contact sheet of
//! samples (input beside heatmap, captioned with label and prediction in a built-in 3x5 font).

use super::{heatmap_rgb, normalised, png_bytes, round_to_byte, upscale, Colormap};
use crate::{Error, Result};

type Rgb = [u8; 3];

const WHITE: Rgb = [255, 255, 255];
const BLACK: Rgb = [0, 0, 0];
/// A 1-pixel frame just outside each image, so a heatmap's neutral white shows its extent.
const FRAME: Rgb = [192, 192, 192];
/// Caption colour when the label and the prediction differ.
const WRONG: Rgb = [220, 0, 0];

/// Glyph width and height of the caption font, in font pixels.
const GLYPH_W: usize = 3;
const GLYPH_H: usize = 5;

/// Maps one input value from `range` to [0, 1]; non-finite values and a range with
/// `hi <= lo` give 0.
fn unit(v: f32, (lo, hi): (f64, f64)) -> f64 {
    let span = hi - lo;
    let v = f64::from(v);
    if v.is_finite() && span.is_finite() && span > 0.0 {
        ((v - lo) / span).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

fn byte(u: f64) -> u8 {
    round_to_byte(u * 255.0)
}

/// The gray level in [0, 1] of each pixel: channels mapped from `range` and averaged.
fn gray_plane(input: &[f32], plane: usize, channels: usize, range: (f64, f64)) -> Vec<f64> {
    let mut gray = vec![0.0f64; plane];
    for chunk in input.chunks_exact(plane.max(1)).take(channels) {
        for (g, &v) in gray.iter_mut().zip(chunk) {
            *g += unit(v, range);
        }
    }
    let c = channels.max(1) as f64;
    gray.iter_mut().for_each(|g| *g /= c);
    gray
}

/// The input as colours: RGB when it has 3 channels, else the channel average in gray.
fn input_colors(input: &[f32], plane: usize, channels: usize, range: (f64, f64)) -> Vec<Rgb> {
    if channels == 3 {
        (0..plane)
            .map(|p| std::array::from_fn(|c| byte(unit(input[c * plane + p], range))))
            .collect()
    } else {
        gray_plane(input, plane, channels, range)
            .into_iter()
            .map(|g| [byte(g); 3])
            .collect()
    }
}

/// Draws one sample's relevance over its input, as an RGB image of `(h * scale) x (w * scale)`
/// pixels (row-major, 3 bytes per pixel).
///
/// The input (C x H x W, mapped from `input_range` to [0, 1], channels averaged) is shown in
/// gray; the relevance is normalised as in [`heatmap_rgb`] to t in [-1, 1] and coloured by
/// `cmap`, with opacity |t| (for the positive-only [`Colormap::Heat`], max(t, 0)):
/// `out = alpha * colour + (1 - alpha) * gray`. So the strongest pixel shows the colormap's end
/// colour and zero relevance shows the input unchanged. Non-finite relevance counts as 0 and
/// non-finite input as the low end of the range. `scale` 0 counts as 1.
///
/// # Panics
/// When `input.len()` or `relevance.len()` is not `channels * h * w`.
#[allow(clippy::too_many_arguments)]
pub fn overlay_rgb(
    input: &[f32],
    relevance: &[f64],
    h: usize,
    w: usize,
    channels: usize,
    input_range: (f64, f64),
    cmap: Colormap,
    scale: usize,
) -> Vec<u8> {
    let plane = h * w;
    for (what, len) in [("input", input.len()), ("relevance", relevance.len())] {
        assert_eq!(
            len,
            channels * plane,
            "overlay_rgb: {len} {what} values for {channels} x {h} x {w}"
        );
    }
    let gray = gray_plane(input, plane, channels, input_range);
    let painter = cmap.painter();
    let colors: Vec<Rgb> = normalised(relevance, plane, channels)
        .into_iter()
        .zip(gray)
        .map(|(t, g)| {
            let alpha = if cmap.is_signed() {
                t.abs()
            } else {
                t.max(0.0)
            };
            let colour = painter.color(t);
            let g = g * 255.0;
            std::array::from_fn(|c| round_to_byte(alpha * f64::from(colour[c]) + (1.0 - alpha) * g))
        })
        .collect();
    upscale(colors, h, w, scale)
}

/// One sample of a contact sheet ([`grid_png`]): its input and relevance (both C x H x W), its
/// true label when known, and the predicted class.
#[derive(Clone, Copy, Debug)]
pub struct GridItem<'a> {
    pub input: &'a [f32],
    pub relevance: &'a [f64],
    pub label: Option<usize>,
    /// The predicted class; `None` for a single-output network (a detector's score is no class).
    pub predicted: Option<usize>,
}

impl GridItem<'_> {
    fn caption(&self) -> String {
        let label = self.label.map_or("-".to_string(), |l| l.to_string());
        match self.predicted {
            Some(p) => format!("L:{label} P:{p}"),
            None => format!("L:{label}"),
        }
    }

    fn caption_color(&self) -> Rgb {
        match (self.label, self.predicted) {
            (Some(l), Some(p)) if l != p => WRONG,
            _ => BLACK,
        }
    }
}

/// Rows of a 3x5 glyph, most significant of the 3 low bits on the left; `None` for characters
/// the font lacks.
fn glyph(c: char) -> Option<[u8; GLYPH_H]> {
    Some(match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        ':' => [0b000, 0b010, 0b000, 0b010, 0b000],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        ' ' => [0; GLYPH_H],
        _ => return None,
    })
}

/// Width in image pixels of `text` at font pixel size `fs` (one font pixel between glyphs).
fn text_width(text: &str, fs: usize) -> usize {
    let n = text.chars().count();
    (n * (GLYPH_W + 1)).saturating_sub(1) * fs
}

/// An RGB canvas being drawn on.
struct Canvas {
    rgb: Vec<u8>,
    width: usize,
}

impl Canvas {
    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, color: Rgb) {
        for row in y..y + h {
            let start = (row * self.width + x) * 3;
            for px in self.rgb[start..start + w * 3].chunks_exact_mut(3) {
                px.copy_from_slice(&color);
            }
        }
    }

    /// A 1-pixel outline just outside the `w x h` rectangle at (x, y), where x, y >= 1.
    fn frame(&mut self, x: usize, y: usize, w: usize, h: usize, color: Rgb) {
        self.fill(x - 1, y - 1, w + 2, 1, color);
        self.fill(x - 1, y + h, w + 2, 1, color);
        self.fill(x - 1, y, 1, h, color);
        self.fill(x + w, y, 1, h, color);
    }

    /// Copies a `w`-pixel-wide RGB image with its top-left corner at (x, y).
    fn blit(&mut self, x: usize, y: usize, w: usize, image: &[u8]) {
        for (r, line) in image.chunks_exact(w * 3).enumerate() {
            let start = ((y + r) * self.width + x) * 3;
            self.rgb[start..start + w * 3].copy_from_slice(line);
        }
    }

    /// Draws `text` with its top-left corner at (x, y), each font pixel `fs` x `fs` image pixels;
    /// characters the font lacks are drawn as a filled box.
    fn text(&mut self, x: usize, y: usize, text: &str, fs: usize, color: Rgb) {
        for (i, c) in text.chars().enumerate() {
            let rows = glyph(c).unwrap_or([0b111; GLYPH_H]);
            let gx = x + i * (GLYPH_W + 1) * fs;
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits >> (GLYPH_W - 1 - col) & 1 == 1 {
                        self.fill(gx + col * fs, y + r * fs, fs, fs, color);
                    }
                }
            }
        }
    }
}

/// Renders a contact sheet as RGB: returns `(rgb, width, height)`. See [`grid_png`] for the
/// layout.
#[allow(clippy::too_many_arguments)]
pub fn grid_rgb(
    items: &[GridItem],
    h: usize,
    w: usize,
    channels: usize,
    input_range: (f64, f64),
    cmap: Colormap,
    scale: usize,
    columns: usize,
) -> Result<(Vec<u8>, usize, usize)> {
    let shape = |expected: String, got: String| Error::Shape {
        layer: "heatmap grid".into(),
        expected,
        got,
    };
    if items.is_empty() || h == 0 || w == 0 || channels == 0 {
        return Err(shape(
            "at least one sample of non-empty C x H x W".into(),
            format!("{} samples of {channels} x {h} x {w}", items.len()),
        ));
    }
    let plane = h * w;
    let len = channels * plane;
    for (i, item) in items.iter().enumerate() {
        if item.input.len() != len || item.relevance.len() != len {
            return Err(shape(
                format!("sample {i}: {len} input and relevance values ({channels} x {h} x {w})"),
                format!(
                    "{} input and {} relevance values",
                    item.input.len(),
                    item.relevance.len()
                ),
            ));
        }
    }

    let s = scale.max(1);
    let fs = s.max(2);
    let (gap, margin) = (fs, 2 * fs);
    let (img_w, img_h) = (w * s, h * s);
    let captions: Vec<String> = items.iter().map(GridItem::caption).collect();
    let caption_w = captions
        .iter()
        .map(|c| text_width(c, fs))
        .max()
        .unwrap_or(0);
    let cell_w = (2 * img_w + gap).max(caption_w);
    let caption_h = (GLYPH_H + 1) * fs;
    let cell_h = caption_h + img_h;
    let cols = columns.clamp(1, items.len());
    let rows = items.len().div_ceil(cols);
    let width = margin + cols * (cell_w + margin);
    let height = margin + rows * (cell_h + margin);
    let bytes = width
        .checked_mul(height)
        .and_then(|p| p.checked_mul(3))
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| {
            shape(
                "a sheet that fits in memory".into(),
                format!("{width} x {height} pixels"),
            )
        })?;

    let mut canvas = Canvas {
        rgb: WHITE.repeat(bytes / 3),
        width,
    };
    for (i, (item, caption)) in items.iter().zip(&captions).enumerate() {
        let x = margin + (i % cols) * (cell_w + margin);
        let y = margin + (i / cols) * (cell_h + margin);
        canvas.text(x, y, caption, fs, item.caption_color());
        let input = upscale(
            input_colors(item.input, plane, channels, input_range),
            h,
            w,
            s,
        );
        let (y_img, x_heat) = (y + caption_h, x + img_w + gap);
        canvas.frame(x, y_img, img_w, img_h, FRAME);
        canvas.blit(x, y_img, img_w, &input);
        canvas.frame(x_heat, y_img, img_w, img_h, FRAME);
        let heat = heatmap_rgb(item.relevance, h, w, channels, cmap, s);
        canvas.blit(x_heat, y_img, img_w, &heat);
    }
    Ok((canvas.rgb, width, height))
}

/// Renders a contact sheet of samples as PNG: per sample a cell with the input (RGB for 3
/// channels, else gray; mapped from `input_range`) beside its heatmap ([`heatmap_rgb`] with
/// `cmap`), captioned above with `L:<label> P:<prediction>` (`L:-` without a label), in red when
/// label and prediction differ and in black otherwise. White background, a 1-pixel light gray
/// frame just outside each image (in the gap and margins); deterministic.
///
/// Layout, with `s = max(scale, 1)` and font pixel `f = max(s, 2)` (3x5 glyphs, so captions are
/// `5f` pixels tall): images are `w*s x h*s` with `f` pixels between input and heatmap; a cell is
/// `max(2*w*s + f, widest caption)` wide and `6f + h*s` tall; cells are laid out row by row in
/// `min(max(columns, 1), items)` columns with `2f` pixels of margin around and between them.
/// So for `n` items in `c` columns the sheet is `2f + c*(cell_w + 2f)` wide and
/// `2f + ceil(n/c)*(cell_h + 2f)` tall. For 28x28 digits at scale 3, a cell is 171 x 102 pixels.
///
/// Non-finite relevance counts as 0; non-finite input as the low end of the range.
///
/// # Errors
/// [`Error::Shape`] when there are no items, a dimension is 0, or an item's input or relevance
/// does not hold `channels * h * w` values.
#[allow(clippy::too_many_arguments)]
pub fn grid_png(
    items: &[GridItem],
    h: usize,
    w: usize,
    channels: usize,
    input_range: (f64, f64),
    cmap: Colormap,
    scale: usize,
    columns: usize,
) -> Result<Vec<u8>> {
    let (rgb, width, height) = grid_rgb(items, h, w, channels, input_range, cmap, scale, columns)?;
    png_bytes(&rgb, width, height)
}
