//! Overlays and contact sheets: zero relevance shows the gray input, the strongest pixel the
//! colormap's end colour, sheet sizes follow the documented layout, wrong predictions get red
//! captions, and non-finite values neither panic nor break the PNG.

mod common;

use rand::rngs::StdRng;
use rand::Rng;
use taylormap::render::{
    grid_png, grid_rgb, heatmap_rgb, overlay_rgb, png_bytes, Colormap, GridItem,
};

/// Random values in `range` (never all zero).
fn random_input(rng: &mut StdRng, n: usize, (lo, hi): (f64, f64)) -> Vec<f32> {
    (0..n).map(|_| common::uniform(rng, lo, hi)).collect()
}

fn random_relevance(rng: &mut StdRng, n: usize) -> Vec<f64> {
    (0..n)
        .map(|_| common::uniform(rng, -1.0, 1.0) as f64)
        .collect()
}

/// The gray level of pixel `p`, computed independently of the library.
fn gray(input: &[f32], plane: usize, channels: usize, (lo, hi): (f64, f64), p: usize) -> u8 {
    let sum: f64 = (0..channels)
        .map(|c| ((input[c * plane + p] as f64 - lo) / (hi - lo)).clamp(0.0, 1.0))
        .sum();
    (sum / channels as f64 * 255.0).round() as u8
}

fn pixel(rgb: &[u8], width: usize, x: usize, y: usize) -> [u8; 3] {
    let i = (y * width + x) * 3;
    [rgb[i], rgb[i + 1], rgb[i + 2]]
}

fn decode(bytes: &[u8]) -> (Vec<u8>, usize, usize) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    (buf, info.width as usize, info.height as usize)
}

fn is_red(p: [u8; 3]) -> bool {
    p[0] > 150 && p[1] < 60 && p[2] < 60
}

#[test]
fn overlay_shows_gray_input_at_zero_and_end_colour_at_the_strongest_pixel() {
    let mut rng = common::rng("overlay");
    for cmap in Colormap::ALL {
        let (h, w, channels) = (
            rng.random_range(2..9),
            rng.random_range(2..9),
            rng.random_range(1..4),
        );
        let plane = h * w;
        let lo = common::uniform(&mut rng, -2.0, 0.0) as f64;
        let range = (lo, lo + common::uniform(&mut rng, 0.5, 3.0) as f64);
        // Slightly beyond the range on both sides, to exercise the clamp.
        let input = random_input(&mut rng, channels * plane, (range.0 - 0.2, range.1 + 0.2));
        let mut rel = random_relevance(&mut rng, channels * plane);
        let zero = rng.random_range(0..plane);
        let strong = (zero + rng.random_range(1..plane)) % plane;
        let sign = if cmap.is_signed() && rng.random_bool(0.5) {
            -1.0
        } else {
            1.0
        };
        for c in 0..channels {
            rel[c * plane + zero] = 0.0;
            rel[c * plane + strong] = sign * 50.0;
        }
        let scale = rng.random_range(1..4);
        let out = overlay_rgb(&input, &rel, h, w, channels, range, cmap, scale);
        assert_eq!(out.len(), h * scale * w * scale * 3);
        let at = |p: usize, dy: usize, dx: usize| {
            pixel(&out, w * scale, (p % w) * scale + dx, (p / w) * scale + dy)
        };
        for (dy, dx) in [(0, 0), (scale - 1, scale - 1)] {
            let g = gray(&input, plane, channels, range, zero);
            assert_eq!(
                at(zero, dy, dx),
                [g; 3],
                "{cmap}: zero relevance shows input"
            );
            assert_eq!(at(strong, dy, dx), cmap.color(sign), "{cmap}: end colour");
        }

        // Every pixel blends colour and gray with opacity |t| (max(t, 0) for heat).
        let sums: Vec<f64> = (0..plane)
            .map(|p| (0..channels).map(|c| rel[c * plane + p]).sum())
            .collect();
        let max = sums.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (p, &v) in sums.iter().enumerate() {
            let t = v / max;
            let alpha = if cmap.is_signed() {
                t.abs()
            } else {
                t.max(0.0)
            };
            let g = gray(&input, plane, channels, range, p) as f64;
            let colour = cmap.color(t);
            let got = at(p, 0, 0);
            for c in 0..3 {
                let want = alpha * colour[c] as f64 + (1.0 - alpha) * g;
                assert!(
                    (got[c] as f64 - want).abs() <= 1.0,
                    "{cmap} pixel {p}: {got:?} vs {want}"
                );
            }
        }

        // A sample with no relevance at all is the gray input.
        let none = vec![0.0; channels * plane];
        let plain = overlay_rgb(&input, &none, h, w, channels, range, cmap, 1);
        for p in 0..plane {
            let g = gray(&input, plane, channels, range, p);
            assert_eq!(pixel(&plain, w, p % w, p / w), [g; 3]);
        }
    }
}

#[test]
fn grid_size_follows_the_documented_layout() {
    let mut rng = common::rng("grid_size");
    let range = (0.0, 1.0);
    for _ in 0..6 {
        let (h, w, channels) = (
            rng.random_range(1..12),
            rng.random_range(1..12),
            rng.random_range(1..4),
        );
        let n = rng.random_range(1..20);
        let columns = rng.random_range(0..10);
        let scale = rng.random_range(0..4);
        let inputs: Vec<_> = (0..n)
            .map(|_| random_input(&mut rng, channels * h * w, range))
            .collect();
        let rels: Vec<_> = (0..n)
            .map(|_| random_relevance(&mut rng, channels * h * w))
            .collect();
        let items: Vec<GridItem> = (0..n)
            .map(|i| GridItem {
                input: &inputs[i],
                relevance: &rels[i],
                label: rng.random_bool(0.7).then(|| rng.random_range(0..10)),
                predicted: Some(rng.random_range(0..10)),
            })
            .collect();
        let cmap = Colormap::ALL[rng.random_range(0..4)];
        let bytes = grid_png(&items, h, w, channels, range, cmap, scale, columns).unwrap();
        let (rgb, width, height) = decode(&bytes);

        let s = scale.max(1);
        let f = s.max(2);
        let caption_w = (7 * 4 - 1) * f; // "L:d P:d"
        let cell_w = (2 * w * s + f).max(caption_w);
        let cell_h = 6 * f + h * s;
        let c = columns.clamp(1, n);
        let rows = n.div_ceil(c);
        assert_eq!(
            (width, height),
            (
                2 * f + c * (cell_w + 2 * f),
                2 * f + rows * (cell_h + 2 * f)
            ),
            "{n} items, {columns} columns, {h} x {w} at scale {scale}"
        );
        let (raw, rw, rh) = grid_rgb(&items, h, w, channels, range, cmap, scale, columns).unwrap();
        assert_eq!((rw, rh), (width, height));
        assert_eq!(raw, rgb, "PNG decodes to the RGB sheet");
        assert_eq!(
            bytes,
            grid_png(&items, h, w, channels, range, cmap, scale, columns).unwrap(),
            "deterministic"
        );
        assert_eq!(pixel(&rgb, width, 0, 0), [255; 3], "white margin");
        assert_eq!(pixel(&rgb, width, width - 1, height - 1), [255; 3]);

        // The last item's heatmap sits at its documented place.
        let last = n - 1;
        let x0 = 2 * f + (last % c) * (cell_w + 2 * f) + w * s + f;
        let y0 = 2 * f + (last / c) * (cell_h + 2 * f) + 6 * f;
        let heat = heatmap_rgb(&rels[last], h, w, channels, cmap, s);
        // A light gray frame just outside it, even where the heatmap is neutral white.
        for (x, y) in [(x0 - 1, y0), (x0 + w * s, y0 + h * s - 1), (x0, y0 + h * s)] {
            assert_eq!(pixel(&rgb, width, x, y), [192; 3]);
        }
        for y in 0..h * s {
            for x in 0..w * s {
                assert_eq!(
                    pixel(&rgb, width, x0 + x, y0 + y),
                    pixel(&heat, w * s, x, y)
                );
            }
        }
    }

    // 64 MNIST digits in 8 columns at scale 3.
    let input = random_input(&mut rng, 28 * 28, range);
    let rel = random_relevance(&mut rng, 28 * 28);
    let items: Vec<GridItem> = (0..64)
        .map(|i| GridItem {
            input: &input,
            relevance: &rel,
            label: Some(i % 10),
            predicted: Some((i * 7) % 10),
        })
        .collect();
    let bytes = grid_png(&items, 28, 28, 1, range, Colormap::Bwr, 3, 8).unwrap();
    let (_, width, height) = decode(&bytes);
    assert_eq!((width, height), (6 + 8 * 177, 6 + 8 * 108));
}

#[test]
fn wrong_predictions_get_red_captions() {
    let mut rng = common::rng("grid_caption");
    let (h, w) = (rng.random_range(4..12), rng.random_range(4..12));
    let range = (-1.0, 1.0);
    let input = random_input(&mut rng, h * w, range);
    let rel = random_relevance(&mut rng, h * w);
    let scale = rng.random_range(1..5);
    let label = rng.random_range(0..10);
    let wrong = (label + rng.random_range(1..10)) % 10;
    // Gray heatmap and gray input: any red pixel belongs to a caption.
    let sheet = |label: Option<usize>, predicted: Option<usize>| {
        let item = GridItem {
            input: &input,
            relevance: &rel,
            label,
            predicted,
        };
        grid_rgb(&[item], h, w, 1, range, Colormap::Gray, scale, 1).unwrap()
    };
    let (right, width, height) = sheet(Some(label), Some(label));
    let (bad, bw, bh) = sheet(Some(wrong), Some(label));
    let (unlabelled, ..) = sheet(None, Some(label));
    // a single-output network (a detector) predicts no class: never red, and no "P:" either
    let (detector, ..) = sheet(Some(wrong), None);
    assert_eq!((bw, bh), (width, height));
    let reds = |rgb: &[u8]| {
        rgb.chunks_exact(3)
            .filter(|p| is_red([p[0], p[1], p[2]]))
            .count()
    };
    assert_eq!(reds(&right), 0);
    assert_eq!(reds(&unlabelled), 0);
    assert!(reds(&bad) > 0);
    assert_eq!(reds(&detector), 0);
    let ink = |rgb: &[u8]| rgb.chunks_exact(3).filter(|p| p == &[0, 0, 0]).count();
    assert!(
        ink(&detector) < ink(&right),
        "'L:n' has less ink than 'L:n P:n'"
    );

    // The top-left font pixel of 'L' is at the margin corner: black when right, red when wrong.
    let m = 2 * scale.max(2);
    assert_eq!(pixel(&right, width, m, m), [0; 3]);
    assert!(is_red(pixel(&bad, width, m, m)));
    // Just left of it is the white margin.
    assert_eq!(pixel(&bad, width, m - 1, m), [255; 3]);
    // Only caption pixels differ.
    let caption_bottom = m + 5 * scale.max(2);
    for (i, (a, b)) in right.chunks_exact(3).zip(bad.chunks_exact(3)).enumerate() {
        if a != b {
            assert!(i / width < caption_bottom, "pixel {i} outside the caption");
        }
    }
}

#[test]
fn non_finite_values_and_bad_shapes_do_not_panic() {
    let mut rng = common::rng("grid_nonfinite");
    let (h, w, channels) = (rng.random_range(2..8), rng.random_range(2..8), 3);
    let n = channels * h * w;
    let range = (0.0, 255.0);
    let mut input = random_input(&mut rng, n, range);
    let mut rel = random_relevance(&mut rng, n);
    for (k, bad) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        rel[k * 3] = bad;
        input[k * 5] = bad as f32;
    }
    for cmap in Colormap::ALL {
        let out = overlay_rgb(&input, &rel, h, w, channels, range, cmap, 2);
        assert_eq!(out.len(), h * w * 4 * 3);
        let item = GridItem {
            input: &input,
            relevance: &rel,
            label: Some(3),
            predicted: Some(12),
        };
        let bytes = grid_png(&[item, item], h, w, channels, range, cmap, 2, 8).unwrap();
        let (rgb, width, height) = decode(&bytes);
        assert_eq!(rgb.len(), width * height * 3);
        assert_eq!(bytes, png_bytes(&rgb, width, height).unwrap());
    }
    // All-NaN relevance: the overlay is the gray input.
    let nan = vec![f64::NAN; n];
    let out = overlay_rgb(&input, &nan, h, w, channels, range, Colormap::Bwr, 1);
    let plane = h * w;
    let finite: Vec<f32> = input
        .iter()
        .map(|v| if v.is_finite() { *v } else { 0.0 })
        .collect();
    for p in 0..plane {
        let g = gray(&finite, plane, channels, range, p);
        assert_eq!(pixel(&out, w, p % w, p / w), [g; 3]);
    }

    // Shapes that do not fit are errors, not panics.
    let short = GridItem {
        input: &input[1..],
        relevance: &rel,
        label: None,
        predicted: Some(0),
    };
    let err = grid_png(&[short], h, w, channels, range, Colormap::Bwr, 2, 4).unwrap_err();
    assert!(err.to_string().contains("grid"), "{err}");
    assert!(grid_png(&[], h, w, channels, range, Colormap::Bwr, 2, 4).is_err());
}

/// A sheet of random blobs to look at: set `TAYLORMAP_GRID_PNG` to a path to write it there.
#[test]
fn sample_sheet_of_blobs() {
    let mut rng = common::rng("grid_blobs");
    let (h, w) = (28, 28);
    let blobs = |rng: &mut StdRng, k: usize, signed: bool| -> Vec<(f64, f64, f64, f64)> {
        (0..k)
            .map(|_| {
                let amp = if signed && rng.random_bool(0.4) {
                    -1.0
                } else {
                    1.0
                };
                (
                    rng.random_range(6.0..22.0),
                    rng.random_range(6.0..22.0),
                    rng.random_range(2.0..5.0),
                    amp,
                )
            })
            .collect()
    };
    let field = |b: &[(f64, f64, f64, f64)]| -> Vec<f64> {
        (0..h * w)
            .map(|p| {
                let (y, x) = ((p / w) as f64, (p % w) as f64);
                b.iter()
                    .map(|&(cy, cx, r, a)| {
                        a * (-((y - cy).powi(2) + (x - cx).powi(2)) / (2.0 * r * r)).exp()
                    })
                    .sum()
            })
            .collect()
    };
    let n = 24;
    let mut inputs = Vec::new();
    let mut rels = Vec::new();
    for _ in 0..n {
        let b = blobs(&mut rng, 3, false);
        inputs.push(
            field(&b)
                .iter()
                .map(|v| v.min(1.0) as f32)
                .collect::<Vec<_>>(),
        );
        rels.push(field(&blobs(&mut rng, 3, true)));
    }
    let items: Vec<GridItem> = (0..n)
        .map(|i| GridItem {
            input: &inputs[i],
            relevance: &rels[i],
            label: (i % 5 != 4).then_some(i % 10),
            predicted: Some(if i % 3 == 2 { (i + 3) % 10 } else { i % 10 }),
        })
        .collect();
    let bytes = grid_png(&items, h, w, 1, (0.0, 1.0), Colormap::Bwr, 3, 8).unwrap();
    let (_, width, height) = decode(&bytes);
    assert_eq!((width, height), (6 + 8 * 177, 6 + 3 * 108));
    if let Ok(path) = std::env::var("TAYLORMAP_GRID_PNG") {
        std::fs::write(&path, &bytes).unwrap();
        let over = overlay_rgb(&inputs[0], &rels[0], h, w, 1, (0.0, 1.0), Colormap::Bwr, 6);
        let over_png = png_bytes(&over, w * 6, h * 6).unwrap();
        std::fs::write(format!("{path}.overlay.png"), over_png).unwrap();
    }
}
