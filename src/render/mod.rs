//! Heatmap rendering: relevance to RGB through a [`Colormap`], and RGB to PNG bytes; overlays
//! of relevance on the input and contact sheets of many samples ([`overlay_rgb`], [`grid_png`]).
//!
//! Each heatmap is normalised on its own: channels are summed, the result is divided by its
//! largest |R| (so the strongest pixel reaches the end of the map and 0 stays at the neutral
//! colour), and the image is upscaled by an integer factor with nearest-neighbour sampling.

mod colormap;
mod grid;

pub use colormap::Colormap;
pub use grid::{grid_png, grid_rgb, overlay_rgb, GridItem};

use crate::{Error, Result};

/// Colours one sample's relevance, given in C x H x W order, as an RGB image of
/// `(h * scale) x (w * scale)` pixels (row-major, 3 bytes per pixel).
///
/// Channels are summed per pixel; values are divided by the largest finite |R| of the sample.
/// A sample whose relevance is all zero is drawn in the neutral colour; non-finite values are
/// drawn as 0. `scale` 0 counts as 1.
///
/// # Panics
/// When `relevance.len() != channels * h * w`: the caller's shapes disagree, a bug rather than
/// bad input.
pub fn heatmap_rgb(
    relevance: &[f64],
    h: usize,
    w: usize,
    channels: usize,
    cmap: Colormap,
    scale: usize,
) -> Vec<u8> {
    let plane = h * w;
    assert_eq!(
        relevance.len(),
        channels * plane,
        "heatmap_rgb: {} relevance values for {channels} x {h} x {w}",
        relevance.len()
    );
    let painter = cmap.painter();
    let colors: Vec<[u8; 3]> = normalised(relevance, plane, channels)
        .into_iter()
        .map(|t| painter.color(t))
        .collect();
    upscale(colors, h, w, scale)
}

/// Sums the channels of C x H x W relevance per pixel and divides by the largest finite |R|:
/// values in [-1, 1], non-finite values and all-zero samples give 0.
fn normalised(relevance: &[f64], plane: usize, channels: usize) -> Vec<f64> {
    let mut summed = vec![0.0f64; plane];
    for chunk in relevance.chunks_exact(plane.max(1)).take(channels) {
        for (s, r) in summed.iter_mut().zip(chunk) {
            *s += r;
        }
    }
    let max = summed
        .iter()
        .filter(|v| v.is_finite())
        .fold(0.0f64, |m, v| m.max(v.abs()));
    summed
        .into_iter()
        .map(|v| {
            if max > 0.0 && v.is_finite() {
                v / max
            } else {
                0.0
            }
        })
        .collect()
}

/// `x.round() as u8` (half away from zero, saturating, NaN to 0) without the libm call that
/// `f64::round` compiles to on x86-64, and without branches: clamped to [0, 255] first, then
/// truncation (NaN casts to 0) and one comparison, exact because `x - trunc(x)` is exact for
/// |x| < 2^52. Colouring a pixel rounds three times; `round` was a third of the time to render a
/// heatmap, then the branches of a signed map's pixels, whose channels land at 0, 255 or in
/// between as the sign of the relevance goes, were mispredicted about half the time.
pub(crate) fn round_to_byte(x: f64) -> u8 {
    let x = x.clamp(0.0, 255.0);
    // truncation, = floor for x >= 0; NaN gives 0, and NaN >= 0.5 is false (through i32, which
    // SIMD converts to in one instruction, unlike u32)
    let whole = x as i32;
    let up = x - f64::from(whole) >= 0.5;
    (whole + i32::from(up)) as u8
}

/// Nearest-neighbour upscaling of an `h x w` image of colours by `scale` (0 counts as 1), to
/// row-major RGB bytes (at scale 1, the colours' own bytes).
fn upscale(colors: Vec<[u8; 3]>, h: usize, w: usize, scale: usize) -> Vec<u8> {
    let s = scale.max(1);
    if s == 1 {
        return colors.into_flattened();
    }
    let (out_w, out_h) = (w * s, h * s);
    let mut out = Vec::with_capacity(out_w * out_h * 3);
    for y in 0..out_h {
        let row = &colors[(y / s) * w..(y / s + 1) * w];
        for x in 0..out_w {
            out.extend_from_slice(&row[x / s]);
        }
    }
    out
}

/// Encodes an 8-bit RGB image (row-major, 3 bytes per pixel) as PNG.
///
/// Compression is the png crate's `Fast` (fdeflate, adaptive filters): on 28 x 28 MNIST heatmaps
/// it encodes about 8 times faster than the default zlib level, for files of 1.2 kB instead of
/// 0.9 kB (one disk block either way); a 64-sample grid.png grows from 100 to 170 kB. `Fastest`
/// (the Up filter only) saves little more time on heatmaps but triples the grid.
pub fn png_bytes(rgb: &[u8], width: usize, height: usize) -> Result<Vec<u8>> {
    let expected = width.checked_mul(height).and_then(|p| p.checked_mul(3));
    if width == 0 || height == 0 || expected != Some(rgb.len()) {
        return Err(Error::Shape {
            layer: "heatmap PNG".into(),
            expected: format!("{width} x {height} x 3 bytes of RGB, width and height > 0"),
            got: format!("{} bytes", rgb.len()),
        });
    }
    let (Ok(w), Ok(h)) = (u32::try_from(width), u32::try_from(height)) else {
        return Err(Error::Shape {
            layer: "heatmap PNG".into(),
            expected: "width and height below 2^32".into(),
            got: format!("{width} x {height}"),
        });
    };
    let encoding = |e: png::EncodingError| Error::io("heatmap.png", std::io::Error::other(e));
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(encoding)?;
    writer.write_image_data(rgb).map_err(encoding)?;
    writer.finish().map_err(encoding)?;
    Ok(out)
}

/// [`heatmap_rgb`] followed by [`png_bytes`].
pub fn heatmap_png(
    relevance: &[f64],
    h: usize,
    w: usize,
    channels: usize,
    cmap: Colormap,
    scale: usize,
) -> Result<Vec<u8>> {
    let s = scale.max(1);
    png_bytes(
        &heatmap_rgb(relevance, h, w, channels, cmap, scale),
        w * s,
        h * s,
    )
}

#[cfg(test)]
mod tests {
    use super::round_to_byte;

    #[test]
    fn round_to_byte_is_round_then_cast() {
        let mut cases = vec![
            0.0,
            -0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            0.5f64.next_down(),
            254.5f64.next_down(),
            255.5f64.next_down(),
            1e300,
            -1e300,
        ];
        // every half and its neighbours, over and beyond the byte range
        for k in -20..1100 {
            let x = f64::from(k) / 2.0;
            cases.extend([x, x.next_up(), x.next_down()]);
        }
        // a deterministic spread of fractions (golden-ratio sequence)
        let mut u = 0.0f64;
        for _ in 0..100_000 {
            u = (u + 0.618_033_988_749_894_9).fract();
            cases.push(u * 300.0 - 20.0);
        }
        for x in cases {
            assert_eq!(round_to_byte(x), x.round() as u8, "x = {x:e}");
        }
    }
}
