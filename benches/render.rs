//! `cargo bench --bench render`: the host's share of a heatmap file, per 28 x 28 heatmap: colouring
//! the relevance (normalise, colormap, upscale), PNG encoding, and both as `explain` runs them.
//! End to end on a fast GPU, these run on the encoder threads beside the file writes.

use divan::counter::ItemsCount;
use divan::Bencher;
use taylormap::render::{self, Colormap};

fn main() {
    divan::main();
}

const H: usize = 28;
const W: usize = 28;

/// A deterministic signed relevance map with a few strong pixels, as heatmaps of digits have.
fn relevance() -> Vec<f64> {
    let mut u = 0.25f64;
    (0..H * W)
        .map(|i| {
            u = (u + 0.618_033_988_749_895).fract();
            let strong = if i % 37 == 0 { 8.0 } else { 1.0 };
            (u - 0.3) * strong
        })
        .collect()
}

#[divan::bench(args = Colormap::ALL)]
fn heatmap_rgb(bencher: Bencher, cmap: Colormap) {
    let r = relevance();
    bencher
        .counter(ItemsCount::new(1usize))
        .bench_local(|| render::heatmap_rgb(divan::black_box(&r), H, W, 1, cmap, 1));
}

#[divan::bench]
fn overlay_rgb(bencher: Bencher) {
    let r = relevance();
    let x: Vec<f32> = (0..H * W).map(|i| (i % 255) as f32 / 255.0).collect();
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        render::overlay_rgb(
            &x,
            divan::black_box(&r),
            H,
            W,
            1,
            (0.0, 1.0),
            Colormap::Bwr,
            1,
        )
    });
}

#[divan::bench]
fn png_bytes(bencher: Bencher) {
    let rgb = render::heatmap_rgb(&relevance(), H, W, 1, Colormap::Bwr, 1);
    bencher
        .counter(ItemsCount::new(1usize))
        .bench_local(|| render::png_bytes(divan::black_box(&rgb), W, H).expect("encoded"));
}

#[divan::bench(args = [1, 4])]
fn heatmap_png(bencher: Bencher, scale: usize) {
    let r = relevance();
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        render::heatmap_png(divan::black_box(&r), H, W, 1, Colormap::Bwr, scale).expect("encoded")
    });
}
