//! Input readers (IDX, NPY, PNG folders, CSV; SPEC section 5), the NPY writer and atomic file writes.
//!
//! [`load`] detects the format, checks shapes, types and values before any work, scales integer
//! pixels to [0, 1], applies `--normalize MEAN,STD` and works out the input [`Bounds`]:
//!
//! | source | values | bounds |
//! |---|---|---|
//! | IDX, `'|u1'` NPY, PNG (8 or 16 bit) | pixel / 255 (or / 65535) | [0, 1], transformed |
//! | `'<f4'` NPY, all values in [0, 1] | as stored | [0, 1], transformed |
//! | `'<f4'` NPY, other values | as stored | the data's min and max, transformed |
//!
//! Integer sources can take every value in [0, 1], so their bounds are that range sent through
//! the normalisation. A float array carries no declared range: when every value lies in [0, 1]
//! it is taken to hold pixels already scaled to [0, 1] (the common case), otherwise its bounds
//! are the smallest and largest value present; pass `--bounds L,H` when the model's true input
//! range differs.
//!
//! 8-bit sources (IDX, `'|u1'` NPY, folders of 8-bit PNG files) also keep their bytes ([`Pixels`]): every value of `x` is a
//! table lookup of its byte, so an engine can upload one byte per value instead of four.
//!
//! CSV needs the preprocessing its model was trained with, so [`load`] refuses it; load it with
//! [`load_tabular`] and the description [`model_tabular`] reads from the model (see [`csv`]).

mod atomic;
pub mod csv;
pub mod idx;
pub mod npy;
pub mod png_folder;

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

pub use atomic::{write_atomic, AtomicFile};
pub use csv::{load_tabular, model_tabular, CsvTable, Tabular};
pub use npy::{f32_le_bytes, npy_bytes_f32, npy_header_f32, parse_npy, read_npy, NpyData};

use crate::{Bounds, Error, Result};

/// The formats [`load`] accepts, for error messages.
pub const ACCEPTED_FORMATS: &str =
    "a folder of PNG files, one PNG file, an NPY file (.npy, float32 or uint8), \
     or an IDX images file in the MNIST layout (plain or gzipped)";

/// A loaded input set: samples, optional labels, and the range the inputs can take.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Samples, shape (N, per-sample shape), after scaling and normalisation.
    pub x: ArrayD<f32>,
    /// One label per sample, when known.
    pub labels: Option<Vec<usize>>,
    /// The file or folder the samples came from.
    pub path: PathBuf,
    /// Lowest and highest value an input can take after the transform (see the module docs).
    pub bounds: Bounds,
    /// `"idx"`, `"npy"`, `"png-folder"` or `"png"` (a single PNG file).
    pub kind: &'static str,
    /// The bytes of an 8-bit source, shaped like `x`.
    pub pixels: Option<Pixels>,
}

/// The samples of an 8-bit source as bytes: `x[i] == lut[bytes[i]]` exactly (the table holds
/// the scaled and normalised value of each byte, computed as [`load`] computes `x`).
#[derive(Clone, Debug, PartialEq)]
pub struct Pixels {
    pub bytes: ArrayD<u8>,
    pub lut: [f32; 256],
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.x.shape()[0]
    }

    /// True when there are no samples (only after `limit(0)`: [`load`] refuses empty inputs).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape of one sample.
    pub fn sample_shape(&self) -> &[usize] {
        &self.x.shape()[1..]
    }

    /// Keeps only the first `n` samples (and labels); no-op when there are at most `n`.
    pub fn limit(&mut self, n: usize) {
        if n >= self.len() {
            return;
        }
        self.x = self
            .x
            .slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..n))
            .to_owned();
        if let Some(p) = &mut self.pixels {
            p.bytes = p
                .bytes
                .slice_axis(ndarray::Axis(0), ndarray::Slice::from(0..n))
                .to_owned();
        }
        if let Some(labels) = &mut self.labels {
            labels.truncate(n);
        }
    }

    /// Checks the samples against a model's `input_shape` (without the batch axis) and adapts
    /// them where the meaning is plain:
    /// - (N, H, W) becomes (N, 1, H, W) when the model wants [1, H, W] (grayscale IDX or NPY);
    /// - any (N, ...) becomes (N, D) when the model wants (D) and each sample has D values
    ///   (flattened in C order, as Keras and PyTorch MLPs on MNIST expect).
    ///
    /// Anything else is an [`Error::Input`] naming the file, the expected and the actual shape.
    pub fn check_against(&mut self, input_shape: &[usize]) -> Result<()> {
        let got = self.sample_shape().to_vec();
        if got == input_shape {
            return Ok(());
        }
        let count = |s: &[usize]| s.iter().product::<usize>();
        let add_channel = got.len() == 2
            && input_shape.len() == 3
            && input_shape[0] == 1
            && got == input_shape[1..];
        let flatten = input_shape.len() == 1 && count(&got) == input_shape[0];
        if !(add_channel || flatten) {
            let hint = match (got.len(), input_shape.len()) {
                (3, 3) if got[1..] == input_shape[1..] => format!(
                    " (the images have {} channel(s), the model wants {})",
                    got[0], input_shape[0]
                ),
                _ => String::new(),
            };
            return Err(Error::input(
                &self.path,
                format!(
                    "the model expects samples of shape {input_shape:?}, this {} input holds {} samples of shape {got:?}{hint}",
                    self.kind,
                    self.len()
                ),
            ));
        }
        let mut shape = vec![self.len()];
        shape.extend_from_slice(input_shape);
        let x = standard(std::mem::replace(&mut self.x, ArrayD::zeros(IxDyn(&[0]))));
        self.x = x
            .into_shape_with_order(IxDyn(&shape))
            .map_err(|e| Error::input(&self.path, format!("cannot reshape to {shape:?}: {e}")))?;
        if let Some(p) = &mut self.pixels {
            let bytes = std::mem::replace(&mut p.bytes, ArrayD::zeros(IxDyn(&[0])));
            p.bytes = standard(bytes)
                .into_shape_with_order(IxDyn(&shape))
                .map_err(|e| {
                    Error::input(&self.path, format!("cannot reshape to {shape:?}: {e}"))
                })?;
        }
        Ok(())
    }
}

/// `a` in standard (row-major) layout, as it is when it already is: no copy of the samples.
fn standard<T: Clone>(a: ArrayD<T>) -> ArrayD<T> {
    if a.is_standard_layout() {
        a
    } else {
        a.as_standard_layout().into_owned()
    }
}

/// Values as read, before normalisation.
struct Raw {
    kind: &'static str,
    shape: Vec<usize>,
    values: Vec<f32>,
    /// True for integer sources scaled to [0, 1]; false for float data.
    unit_range: bool,
    /// The bytes of an 8-bit source (`values` are their scaled copies).
    bytes: Option<Vec<u8>>,
}

/// Loads the inputs for the model at `model`: through the model's tabular preprocessing (column
/// list, standardisation, one-hot encoding) when it carries one, else with [`load`].
pub fn load_for_model(
    path: &Path,
    model: &Path,
    labels: Option<&Path>,
    normalize: Option<(f64, f64)>,
) -> Result<Dataset> {
    let Some(tabular) = model_tabular(model)? else {
        return load(path, labels, normalize);
    };
    if normalize.is_some() {
        return Err(Error::usage(
            "--normalize",
            format!(
                "{} is a tabular model: its own preprocessing standardises the columns",
                model.display()
            ),
        ));
    }
    if labels.is_some() {
        return Err(Error::usage(
            "--labels",
            format!(
                "{} is a tabular model: labels come from its label column in the CSV",
                model.display()
            ),
        ));
    }
    load_tabular(path, &tabular)
}

/// Loads an input file or folder (format detected as described in SPEC section 5), its labels
/// (`labels`, or for IDX the companion file by the MNIST naming convention) and applies
/// `normalize = (MEAN, STD)` as `(x - MEAN) / STD` after scaling.
pub fn load(path: &Path, labels: Option<&Path>, normalize: Option<(f64, f64)>) -> Result<Dataset> {
    if let Some((mean, std)) = normalize {
        if !mean.is_finite() || !std.is_finite() || std <= 0.0 {
            return Err(Error::usage(
                "--normalize",
                format!("expected MEAN,STD with finite MEAN and STD > 0, got {mean},{std}"),
            ));
        }
    }
    let raw = read_raw(path)?;
    let Raw {
        kind,
        shape,
        mut values,
        unit_range,
        bytes,
    } = raw;
    let per_sample: usize = shape[1..].iter().product();

    if !unit_range {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("input {}, sample {}", path.display(), i / per_sample),
            });
        }
    }
    // (8-bit sources are in [0, 1] by construction: no pass over their values)
    let (raw_low, raw_high) = if unit_range {
        (0.0, 1.0)
    } else {
        values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
                (l.min(v as f64), h.max(v as f64))
            })
    };
    if let Some((mean, std)) = normalize {
        for v in values.iter_mut() {
            *v = ((*v as f64 - mean) / std) as f32;
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!(
                    "input {}, sample {}, after --normalize {mean},{std} (the value overflows float32)",
                    path.display(),
                    i / per_sample
                ),
            });
        }
    }
    let bounds = if unit_range || (raw_low >= 0.0 && raw_high <= 1.0) {
        Bounds::unit_normalized(normalize)
    } else {
        let (a, b) = match normalize {
            Some((mean, std)) => ((raw_low - mean) / std, (raw_high - mean) / std),
            None => (raw_low, raw_high),
        };
        Bounds {
            low: a.min(b),
            high: a.max(b),
        }
    };

    let n = shape[0];
    let labels = match labels {
        Some(p) => Some((p.to_path_buf(), read_labels(p)?)),
        None if kind == "idx" => match idx::companion_labels(path) {
            Some(p) => Some((p.clone(), read_labels(&p)?)),
            None => None,
        },
        None => None,
    };
    if let Some((p, l)) = &labels {
        if l.len() != n {
            return Err(Error::input(
                p,
                format!(
                    "holds {} labels but {} holds {n} samples; expected one label per sample",
                    l.len(),
                    path.display()
                ),
            ));
        }
    }
    let x = ArrayD::from_shape_vec(IxDyn(&shape), values)
        .map_err(|e| Error::input(path, format!("shape {shape:?}: {e}")))?;
    let pixels = match bytes {
        Some(bytes) => Some(Pixels {
            bytes: ArrayD::from_shape_vec(IxDyn(&shape), bytes)
                .map_err(|e| Error::input(path, format!("shape {shape:?}: {e}")))?,
            lut: byte_table(normalize),
        }),
        None => None,
    };
    Ok(Dataset {
        x,
        labels: labels.map(|(_, l)| l),
        path: path.to_path_buf(),
        bounds,
        kind,
        pixels,
    })
}

/// The value [`load`] gives each byte of an 8-bit source: scaled to [0, 1] in f32, then
/// normalised in f64 and rounded to f32, exactly as for `x`.
fn byte_table(normalize: Option<(f64, f64)>) -> [f32; 256] {
    std::array::from_fn(|b| {
        let unit = scale_u8(&[b as u8])[0];
        match normalize {
            Some((mean, std)) => ((unit as f64 - mean) / std) as f32,
            None => unit,
        }
    })
}

/// Detects the format and reads the values (integer sources scaled to [0, 1]).
fn read_raw(path: &Path) -> Result<Raw> {
    let meta = std::fs::metadata(path).map_err(|e| Error::unreadable(path, e))?;
    let png = |kind, folder: png_folder::Folder| Raw {
        kind,
        shape: folder.shape,
        values: folder.values,
        unit_range: true,
        bytes: folder.bytes,
    };
    let raw = if meta.is_dir() {
        png("png-folder", png_folder::read_folder(path)?)
    } else {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        if ext == "csv" {
            return Err(Error::input(
                path,
                "CSV input needs the column list and preprocessing of a tabular model, and this \
                 model carries none: use a model trained by `taylormap train --arch tabular-mlp \
                 --data FILE.csv`, which stores them in its metadata",
            ));
        }
        let bytes = idx::read_maybe_gz(path)?;
        if bytes.starts_with(npy::NPY_MAGIC) || ext == "npy" {
            read_npy_input(path, &bytes)?
        } else if idx::looks_like_idx(&bytes) {
            let (shape, pixels) = idx::parse_images(path, &bytes)?;
            Raw {
                kind: "idx",
                shape,
                values: scale_u8(&pixels),
                unit_range: true,
                bytes: Some(pixels),
            }
        } else if ext == "png" || bytes.starts_with(b"\x89PNG") {
            png("png", png_folder::read_single(path)?)
        } else {
            return Err(Error::input(
                path,
                format!("unrecognised input format; accepted: {ACCEPTED_FORMATS}"),
            ));
        }
    };
    if raw.shape[0] == 0 {
        return Err(Error::input(path, "holds no samples"));
    }
    if raw.shape.contains(&0) {
        return Err(Error::input(
            path,
            format!("shape {:?} has an empty dimension", raw.shape),
        ));
    }
    Ok(raw)
}

fn scale_u8(pixels: &[u8]) -> Vec<f32> {
    pixels.iter().map(|&b| (b as f64 / 255.0) as f32).collect()
}

fn read_npy_input(path: &Path, bytes: &[u8]) -> Result<Raw> {
    let (shape, data) = parse_npy(path, bytes)?;
    if !(2..=4).contains(&shape.len()) {
        return Err(Error::input(
            path,
            format!("NPY shape {shape:?}: expected (N, H, W), (N, C, H, W) or (N, D)"),
        ));
    }
    let (values, unit_range, bytes) = match data {
        NpyData::F32(v) => (v, false, None),
        NpyData::U8(v) => (scale_u8(&v), true, Some(v)),
        NpyData::Int(_) => return Err(Error::input(
            path,
            "NPY holds integers other than uint8; inputs must be float32 ('<f4') or uint8 ('|u1')",
        )),
    };
    Ok(Raw {
        kind: "npy",
        shape,
        values,
        unit_range,
        bytes,
    })
}

/// Reads a labels file: IDX labels (magic 0x00000801, plain or gzipped), a 1-D integer NPY
/// array, or a text file with one non-negative integer per line.
pub fn read_labels(path: &Path) -> Result<Vec<usize>> {
    let bytes = idx::read_maybe_gz(path)?;
    if bytes.starts_with(npy::NPY_MAGIC) {
        let (shape, data) = parse_npy(path, &bytes)?;
        if shape.len() != 1 {
            return Err(Error::input(
                path,
                format!("labels NPY has shape {shape:?}; expected a 1-D array (N,)"),
            ));
        }
        let ints: Vec<i64> = match data {
            NpyData::U8(v) => v.into_iter().map(i64::from).collect(),
            NpyData::Int(v) => v,
            NpyData::F32(_) => {
                return Err(Error::input(
                    path,
                    "labels NPY holds float32; expected an integer array (e.g. '<i8' or '|u1')",
                ))
            }
        };
        ints.into_iter()
            .enumerate()
            .map(|(i, v)| {
                usize::try_from(v).map_err(|_| {
                    Error::input(
                        path,
                        format!("label {i} is {v}; expected a class index >= 0"),
                    )
                })
            })
            .collect()
    } else if idx::magic(&bytes).is_some_and(|m| m >> 16 == 0) {
        idx::parse_labels(path, &bytes)
    } else if let Ok(text) = std::str::from_utf8(&bytes) {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(k, l)| {
                l.trim().parse::<usize>().map_err(|_| {
                    Error::input(
                        path,
                        format!(
                            "line {}: '{}' is not a class index (a non-negative integer)",
                            k + 1,
                            l.trim()
                        ),
                    )
                })
            })
            .collect()
    } else {
        Err(Error::input(
            path,
            "unrecognised labels format; expected IDX labels (magic 0x00000801), a 1-D integer \
             NPY array, or a text file with one class index per line",
        ))
    }
}
