//! Sliding-window geometry on batched NCHW arrays, shared by Conv2d and the pooling layers:
//! padding, the per-kernel-offset "taps", window sums and their transposes, im2col and col2im.
//!
//! Everything loops over kernel offsets `(ki, kj)` only and moves whole strided array slices, so no
//! code here touches single pixels. Output position `(oi, oj)` sees, at offset `(ki, kj)`, the
//! padded input position `(oi * stride_h + ki, oj * stride_w + kj)`.

use ndarray::{s, Array2, Array4, Array6, ArrayView2, ArrayView4, ArrayViewMut4, Zip};

use crate::model::Window;

/// Input and output spatial sizes of one windowed layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub window: Window,
    /// Input height and width (without padding).
    pub input: (usize, usize),
    /// Output height and width.
    pub output: (usize, usize),
}

impl Geometry {
    /// The geometry of `window` on an `h x w` input, or `None` when the window does not fit.
    pub fn new(window: Window, h: usize, w: usize) -> Option<Self> {
        let output = window.output_hw(h, w)?;
        Some(Geometry {
            window,
            input: (h, w),
            output,
        })
    }

    /// A zero array of the padded input shape (n, c, h + top + bottom, w + left + right).
    pub fn padded_zeros(&self, n: usize, c: usize) -> Array4<f64> {
        let [top, left, bottom, right] = self.window.pad;
        Array4::zeros((
            n,
            c,
            self.input.0 + top + bottom,
            self.input.1 + left + right,
        ))
    }

    /// Number of kernel offsets (kh * kw).
    pub fn offsets(&self) -> usize {
        self.window.kernel[0] * self.window.kernel[1]
    }

    /// Kernel offsets `(ki, kj)` in row-major order (the tie-breaking order of max pooling).
    pub fn offset_iter(&self) -> impl Iterator<Item = (usize, usize)> {
        let [kh, kw] = self.window.kernel;
        (0..kh).flat_map(move |ki| (0..kw).map(move |kj| (ki, kj)))
    }

    /// Copies `x` (n, c, h, w) into a padded array whose padding holds `fill`.
    pub fn pad<T: Clone>(&self, x: ArrayView4<'_, T>, fill: T) -> Array4<T> {
        let (n, c, _, _) = x.dim();
        let [top, left, bottom, right] = self.window.pad;
        let (h, w) = self.input;
        let mut padded = Array4::from_elem((n, c, h + top + bottom, w + left + right), fill);
        padded
            .slice_mut(s![.., .., top..top + h, left..left + w])
            .assign(&x);
        padded
    }

    /// Removes the padding again: the real positions of a padded array.
    pub fn crop<T: Clone>(&self, padded: &Array4<T>) -> Array4<T> {
        let [top, left, _, _] = self.window.pad;
        let (h, w) = self.input;
        padded
            .slice(s![.., .., top..top + h, left..left + w])
            .to_owned()
    }

    /// The padded input values seen at kernel offset `(ki, kj)` by every output position,
    /// shape (n, c, oh, ow).
    pub fn tap<'a, T>(&self, padded: &'a Array4<T>, ki: usize, kj: usize) -> ArrayView4<'a, T> {
        let ([sh, sw], (oh, ow)) = (self.window.stride, self.output);
        padded.slice(s![
            ..,
            ..,
            ki..ki + sh * (oh - 1) + 1;sh,
            kj..kj + sw * (ow - 1) + 1;sw
        ])
    }

    /// Mutable version of [`Geometry::tap`].
    pub fn tap_mut<'a, T>(
        &self,
        padded: &'a mut Array4<T>,
        ki: usize,
        kj: usize,
    ) -> ArrayViewMut4<'a, T> {
        let ([sh, sw], (oh, ow)) = (self.window.stride, self.output);
        padded.slice_mut(s![
            ..,
            ..,
            ki..ki + sh * (oh - 1) + 1;sh,
            kj..kj + sw * (ow - 1) + 1;sw
        ])
    }

    /// Which (output position, kernel offset) pairs see a real (not padded) input position:
    /// `mask[o]` is an (oh, ow) array of booleans for the offset `o` in row-major order.
    pub fn real_masks(&self) -> Vec<Array2<bool>> {
        let (h, w) = self.input;
        let real = self.pad(Array4::from_elem((1, 1, h, w), true).view(), false);
        self.offset_iter()
            .map(|(ki, kj)| {
                self.tap(&real, ki, kj)
                    .index_axis_move(ndarray::Axis(0), 0)
                    .index_axis_move(ndarray::Axis(0), 0)
                    .to_owned()
            })
            .collect()
    }

    /// Number of real input positions in each output window, shape (oh, ow).
    pub fn real_counts(&self) -> Array2<f64> {
        let mut counts = Array2::zeros(self.output);
        for mask in self.real_masks() {
            Zip::from(&mut counts)
                .and(&mask)
                .for_each(|c, &m| *c += f64::from(u8::from(m)));
        }
        counts
    }

    /// sum_i x_i over the window of every output position (padding counts as 0):
    /// (n, c, h, w) -> (n, c, oh, ow).
    pub fn window_sum(&self, x: ArrayView4<'_, f64>) -> Array4<f64> {
        let (n, c, _, _) = x.dim();
        let padded = self.pad(x, 0.0);
        let mut sum = Array4::zeros((n, c, self.output.0, self.output.1));
        for (ki, kj) in self.offset_iter() {
            sum += &self.tap(&padded, ki, kj);
        }
        sum
    }

    /// The transpose of [`Geometry::window_sum`]: every input position receives the sum of
    /// `upper` over the windows that contain it; padding positions are dropped.
    /// (n, c, oh, ow) -> (n, c, h, w).
    pub fn window_spread(&self, upper: ArrayView4<'_, f64>) -> Array4<f64> {
        let (n, c, _, _) = upper.dim();
        let mut padded = self.padded_zeros(n, c);
        for (ki, kj) in self.offset_iter() {
            let mut dst = self.tap_mut(&mut padded, ki, kj);
            dst += &upper;
        }
        self.crop(&padded)
    }

    /// im2col: (n, c, h, w) -> (n * oh * ow, c * kh * kw); row (b, oi, oj) holds the receptive
    /// field of that output position in (c, ki, kj) order, padding as 0.
    pub fn im2col(&self, x: ArrayView4<'_, f64>) -> Array2<f64> {
        let (n, c, _, _) = x.dim();
        let ([kh, kw], (oh, ow)) = (self.window.kernel, self.output);
        let padded = self.pad(x, 0.0);
        let mut cols = Array6::zeros((n, oh, ow, c, kh, kw));
        for (ki, kj) in self.offset_iter() {
            cols.slice_mut(s![.., .., .., .., ki, kj])
                .assign(&self.tap(&padded, ki, kj).permuted_axes([0, 2, 3, 1]));
        }
        let rows = n * oh * ow;
        cols.into_shape_with_order((rows, c * kh * kw))
            .expect("a fresh array is contiguous")
    }

    /// col2im, the transpose of [`Geometry::im2col`]: (n * oh * ow, c * kh * kw) -> (n, c, h, w),
    /// overlapping windows accumulate and padding positions are dropped.
    pub fn col2im(&self, cols: ArrayView2<'_, f64>, n: usize, c: usize) -> Array4<f64> {
        let ([kh, kw], (oh, ow)) = (self.window.kernel, self.output);
        let cols = cols
            .to_shape((n, oh, ow, c, kh, kw))
            .expect("im2col layout has n * oh * ow rows and c * kh * kw columns");
        let mut padded = self.padded_zeros(n, c);
        for (ki, kj) in self.offset_iter() {
            let mut dst = self.tap_mut(&mut padded, ki, kj);
            dst += &cols
                .slice(s![.., .., .., .., ki, kj])
                .permuted_axes([0, 3, 1, 2]);
        }
        self.crop(&padded)
    }
}
