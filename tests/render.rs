//! Colormaps and PNG heatmaps: neutral zero, colormap ends at +-max, positive-only map, channel
//! sums, per-sample normalisation, nearest-neighbour upscaling, and PNGs that decode back.

mod common;

use rand::Rng;
use taylormap::render::{heatmap_png, heatmap_rgb, png_bytes, Colormap};

#[test]
fn colormaps_parse_from_their_names_and_refuse_others() {
    for cmap in Colormap::ALL {
        assert_eq!(cmap.name().parse::<Colormap>().unwrap(), cmap);
        assert_eq!(cmap.to_string(), cmap.name());
    }
    assert_eq!("coldnhot".parse::<Colormap>().unwrap(), Colormap::ColdHot);
    assert_eq!(Colormap::default(), Colormap::Bwr);
    let msg = "viridis".parse::<Colormap>().unwrap_err().to_string();
    assert!(
        msg.contains("--cmap") && msg.contains("bwr") && msg.contains("viridis"),
        "{msg}"
    );
}

#[test]
fn signed_maps_send_zero_to_neutral_and_extremes_to_the_ends() {
    let ends = [
        (Colormap::Bwr, [0, 0, 255], [255, 255, 255], [255, 0, 0]),
        (Colormap::ColdHot, [0, 255, 255], [0, 0, 0], [255, 255, 0]),
        (Colormap::Gray, [0, 0, 0], [128, 128, 128], [255, 255, 255]),
    ];
    for (cmap, low, mid, high) in ends {
        assert!(cmap.is_signed());
        assert_eq!(cmap.color(-1.0), low, "{cmap}");
        assert_eq!(cmap.color(0.0), mid, "{cmap}");
        assert_eq!(cmap.neutral(), mid, "{cmap}");
        assert_eq!(cmap.color(1.0), high, "{cmap}");
        assert_eq!(cmap.color(7.0), high, "values beyond 1 clamp");
        assert_eq!(cmap.color(f64::NAN), mid);
    }
    // bwr is red-ish for positive and blue-ish for negative values, never neutral away from 0.
    let mut rng = common::rng("signed_maps");
    for _ in 0..50 {
        let t = common::uniform(&mut rng, 0.01, 1.0) as f64;
        let [r, g, b] = Colormap::Bwr.color(t);
        assert!(r == 255 && g == b && g < 255, "{t}: {:?}", [r, g, b]);
        let [r, g, b] = Colormap::Bwr.color(-t);
        assert!(b == 255 && g == r && g < 255, "{t}: {:?}", [r, g, b]);
    }
}

/// Every map is piecewise linear between its documented nodes, rounded to the nearest byte:
/// checked on a fine grid, every node and the midpoints between them, against that formula
/// written out here with `f64::round`.
#[test]
fn colormaps_interpolate_linearly_between_their_nodes() {
    let maps: [(Colormap, &[[u8; 3]]); 4] = [
        (Colormap::Bwr, &[[0, 0, 255], [255, 255, 255], [255, 0, 0]]),
        (
            Colormap::ColdHot,
            &[
                [0, 255, 255],
                [0, 0, 255],
                [0, 0, 0],
                [255, 0, 0],
                [255, 255, 0],
            ],
        ),
        (
            Colormap::Heat,
            &[[0, 0, 0], [255, 0, 0], [255, 255, 0], [255, 255, 255]],
        ),
        (Colormap::Gray, &[[0, 0, 0], [255, 255, 255]]),
    ];
    let mut rng = common::rng("colormap_nodes");
    for (cmap, nodes) in maps {
        let segments = (nodes.len() - 1) as f64;
        let mut ts: Vec<f64> = (-2000..=2000).map(|k| f64::from(k) / 2000.0).collect();
        ts.extend((0..1000).map(|_| common::uniform(&mut rng, -1.0, 1.0) as f64));
        for t in ts {
            // position along the nodes: [-1, 1] onto them all, or [0, 1] for a positive-only map
            let u = if cmap.is_signed() {
                (t + 1.0) / 2.0
            } else {
                t.max(0.0)
            };
            let pos = u * segments;
            let k = (pos.floor() as usize).min(nodes.len() - 2);
            let f = pos - k as f64;
            let want: [u8; 3] = std::array::from_fn(|c| {
                let (a, b) = (f64::from(nodes[k][c]), f64::from(nodes[k + 1][c]));
                (a + (b - a) * f).round() as u8
            });
            assert_eq!(cmap.color(t), want, "{cmap} at t = {t:e}");
        }
    }
}

#[test]
fn heat_is_positive_only() {
    let mut rng = common::rng("heat");
    let heat = Colormap::Heat;
    assert!(!heat.is_signed());
    assert_eq!(heat.neutral(), [0, 0, 0]);
    assert_eq!(heat.color(1.0), [255, 255, 255]);
    for _ in 0..20 {
        let t = common::uniform(&mut rng, 0.01, 1.0) as f64;
        assert_eq!(heat.color(-t), heat.neutral(), "negative values draw as 0");
        assert_ne!(heat.color(t), heat.neutral());
    }
    // Brightness grows with t.
    let sum = |c: [u8; 3]| c.iter().map(|&v| v as u32).sum::<u32>();
    let mut last = 0;
    for k in 0..=20 {
        let s = sum(heat.color(k as f64 / 20.0));
        assert!(s >= last);
        last = s;
    }
}

#[test]
fn heatmap_sums_channels_normalises_per_sample_and_upscales() {
    let mut rng = common::rng("heatmap_rgb");
    for _ in 0..10 {
        let (c, h, w) = (
            rng.random_range(1..4),
            rng.random_range(1..7),
            rng.random_range(1..7),
        );
        let scale = rng.random_range(1..5);
        let rel: Vec<f64> = (0..c * h * w)
            .map(|_| common::uniform(&mut rng, -2.0, 2.0) as f64)
            .collect();
        let summed: Vec<f64> = (0..h * w)
            .map(|p| (0..c).map(|k| rel[k * h * w + p]).sum())
            .collect();
        let max = summed.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for cmap in Colormap::ALL {
            let img = heatmap_rgb(&rel, h, w, c, cmap, scale);
            let (oh, ow) = (h * scale, w * scale);
            assert_eq!(img.len(), oh * ow * 3);
            let px = |y: usize, x: usize| -> [u8; 3] {
                let i = (y * ow + x) * 3;
                [img[i], img[i + 1], img[i + 2]]
            };
            for y in 0..oh {
                for x in 0..ow {
                    let want = cmap.color(summed[(y / scale) * w + x / scale] / max);
                    assert_eq!(px(y, x), want, "{cmap} at ({y},{x})");
                }
            }
            // The strongest pixel reaches an end of the map.
            let arg = (0..h * w)
                .max_by(|&a, &b| summed[a].abs().total_cmp(&summed[b].abs()))
                .unwrap();
            let end = cmap.color(summed[arg].signum());
            assert_eq!(px((arg / w) * scale, (arg % w) * scale), end);
            // Scaling the relevance by a positive factor changes nothing.
            let k = common::uniform(&mut rng, 0.01, 100.0) as f64;
            let scaled: Vec<f64> = rel.iter().map(|r| r * k).collect();
            assert_eq!(heatmap_rgb(&scaled, h, w, c, cmap, scale), img);
        }
        // Zero relevance draws the neutral colour everywhere.
        let zero = heatmap_rgb(&vec![0.0; c * h * w], h, w, c, Colormap::Bwr, scale);
        assert!(zero.chunks(3).all(|p| p == [255, 255, 255]));
    }
}

#[test]
fn png_bytes_decode_back_to_the_image() {
    let mut rng = common::rng("png_bytes");
    let (h, w, scale) = (
        rng.random_range(1..9),
        rng.random_range(1..9),
        rng.random_range(1..4),
    );
    let rel: Vec<f64> = (0..h * w)
        .map(|_| common::uniform(&mut rng, -1.0, 1.0) as f64)
        .collect();
    let rgb = heatmap_rgb(&rel, h, w, 1, Colormap::ColdHot, scale);
    let bytes = heatmap_png(&rel, h, w, 1, Colormap::ColdHot, scale).unwrap();
    assert_eq!(bytes, png_bytes(&rgb, w * scale, h * scale).unwrap());

    let mut reader = png::Decoder::new(std::io::Cursor::new(&bytes))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(
        (info.width as usize, info.height as usize),
        (w * scale, h * scale)
    );
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(&buf[..info.buffer_size()], &rgb[..]);

    let err = png_bytes(&rgb[1..], w * scale, h * scale).unwrap_err();
    assert!(err.to_string().contains("heatmap PNG"), "{err}");
    assert!(png_bytes(&[], 0, 0).is_err());
}
