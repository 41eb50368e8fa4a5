//! A folder of PNG images (grayscale or RGB, 8 or 16 bit, any alpha dropped), all one size, read
//! in sorted file-name order into an (N, C, H, W) array scaled to [0, 1].

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use png::{BitDepth, ColorType, Transformations};

use crate::{Error, Result};

/// One decoded image: channels (1 or 3), height, width, and the values in C x H x W order,
/// scaled to [0, 1].
pub struct Image {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub values: Vec<f32>,
    /// The 8-bit samples themselves, in the same order (`values[i]` is `bytes[i] / 255`);
    /// `None` for a 16-bit image.
    pub bytes: Option<Vec<u8>>,
}

/// The `.png` files directly inside `dir` (case-insensitive extension), sorted by file name.
pub fn list_png_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = vec![];
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let is_png = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if is_png && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Decodes one PNG file. Palette and low-bit images are expanded; alpha is dropped.
pub fn read_png(path: &Path) -> Result<Image> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(Transformations::EXPAND);
    let bad = |e: png::DecodingError| Error::input(path, format!("not a readable PNG file: {e}"));
    let mut reader = decoder.read_info().map_err(bad)?;
    let size = reader.output_buffer_size().ok_or_else(|| {
        Error::input(
            path,
            "PNG image is too large to decode in memory".to_string(),
        )
    })?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(bad)?;
    let (width, height) = (frame.width as usize, frame.height as usize);
    let (color, depth) = (frame.color_type, frame.bit_depth);
    let (stored, keep) = match color {
        ColorType::Grayscale => (1, 1),
        ColorType::GrayscaleAlpha => (2, 1),
        ColorType::Rgb => (3, 3),
        ColorType::Rgba => (4, 3),
        ColorType::Indexed => {
            return Err(Error::input(
                path,
                "palette PNG could not be expanded to RGB".to_string(),
            ))
        }
    };
    let sixteen = match depth {
        BitDepth::Eight => false,
        BitDepth::Sixteen => true,
        d => {
            return Err(Error::input(
                path,
                format!("PNG bit depth {d:?} left after expansion; expected 8 or 16"),
            ))
        }
    };
    let bytes_per_sample = if sixteen { 2 } else { 1 };
    let line = frame.line_size;
    let mut values = vec![0f32; keep * height * width];
    let mut bytes = if sixteen {
        None
    } else {
        Some(vec![0u8; values.len()])
    };
    for y in 0..height {
        let row = &buf[y * line..y * line + width * stored * bytes_per_sample];
        for x in 0..width {
            for c in 0..keep {
                let k = (x * stored + c) * bytes_per_sample;
                let v = if sixteen {
                    u16::from_be_bytes([row[k], row[k + 1]]) as f64 / 65535.0
                } else {
                    row[k] as f64 / 255.0
                };
                values[(c * height + y) * width + x] = v as f32;
                if let Some(b) = &mut bytes {
                    b[(c * height + y) * width + x] = row[k];
                }
            }
        }
    }
    Ok(Image {
        channels: keep,
        height,
        width,
        values,
        bytes,
    })
}

/// The images of a folder, stacked.
pub struct Folder {
    /// `[N, C, H, W]`.
    pub shape: Vec<usize>,
    /// The values in [0, 1], in that order.
    pub values: Vec<f32>,
    /// The bytes behind the values when every image is 8-bit.
    pub bytes: Option<Vec<u8>>,
}

/// Reads every PNG in `dir`.
///
/// All images must have the size and channel count of the first one; the error names the first
/// file that differs.
pub fn read_folder(dir: &Path) -> Result<Folder> {
    let files = list_png_files(dir)?;
    let Some(first_path) = files.first() else {
        return Err(Error::input(
            dir,
            "folder holds no .png files; expected a folder of PNG images (grayscale or RGB, all one size)"
                .to_string(),
        ));
    };
    let first = read_png(first_path)?;
    let (c, h, w) = (first.channels, first.height, first.width);
    let mut values = Vec::with_capacity(files.len() * c * h * w);
    values.extend_from_slice(&first.values);
    // the bytes too, while every image is 8-bit
    let mut bytes = first.bytes;
    for path in &files[1..] {
        let img = read_png(path)?;
        if (img.height, img.width) != (h, w) {
            return Err(Error::input(
                path,
                format!(
                    "image is {}x{} (width x height) but {} is {w}x{h}; all PNG files in the folder must be one size",
                    img.width,
                    img.height,
                    first_path.display()
                ),
            ));
        }
        if img.channels != c {
            let kind = |c| if c == 1 { "grayscale" } else { "RGB" };
            return Err(Error::input(
                path,
                format!(
                    "image is {} but {} is {}; all PNG files in the folder must be all grayscale or all RGB",
                    kind(img.channels),
                    first_path.display(),
                    kind(c)
                ),
            ));
        }
        values.extend_from_slice(&img.values);
        bytes = match (bytes, img.bytes) {
            (Some(mut all), Some(b)) => {
                all.extend_from_slice(&b);
                Some(all)
            }
            _ => None,
        };
    }
    Ok(Folder {
        shape: vec![files.len(), c, h, w],
        values,
        bytes,
    })
}
