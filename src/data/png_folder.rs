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
    for entry in std::fs::read_dir(dir).map_err(|e| Error::unreadable(dir, e))? {
        let path = entry.map_err(|e| Error::unreadable(dir, e))?.path();
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

/// The most pixels an input image may have (as many as a heatmap may: 8192 x 8192).
const MAX_IMAGE_PIXELS: u64 = 1 << 26;

/// `n` zeroed values, or `None` where the allocator refuses them (instead of aborting).
fn zeroed<T: Clone + Default>(n: usize) -> Option<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).ok()?;
    v.resize(n, T::default());
    Some(v)
}

/// Decodes one PNG file. Palette and low-bit images are expanded; alpha is dropped.
pub fn read_png(path: &Path) -> Result<Image> {
    let file = File::open(path).map_err(|e| Error::unreadable(path, e))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(Transformations::EXPAND);
    let bad = |e: png::DecodingError| Error::input(path, format!("not a readable PNG file: {e}"));
    let mut reader = decoder.read_info().map_err(bad)?;
    // The header's size, checked before anything that size is allocated: a small file can
    // claim billions of pixels.
    let (w, h) = (reader.info().width, reader.info().height);
    if (w as u64) * (h as u64) > MAX_IMAGE_PIXELS {
        return Err(Error::input(
            path,
            format!(
                "PNG image of {w} x {h} pixels is too large; at most {MAX_IMAGE_PIXELS} pixels \
                 (8192 x 8192) per image"
            ),
        ));
    }
    let size = reader.output_buffer_size().ok_or_else(|| {
        Error::input(
            path,
            "PNG image is too large to decode in memory".to_string(),
        )
    })?;
    let mut buf = zeroed(size).ok_or_else(|| {
        Error::input(
            path,
            format!("decoding this PNG image needs {size} bytes, more than could be allocated"),
        )
    })?;
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

/// Images per decoding thread at the least: below that, a thread costs more than it saves.
const FILES_PER_THREAD: usize = 64;

/// Reads every PNG in `dir`, decoding on every core (each thread a run of files in order,
/// straight into its part of the stacked values).
///
/// All images must have the size and channel count of the first one; the error names the first
/// file, in file-name order, that differs or cannot be read, as a reading one by one would.
pub fn read_folder(dir: &Path) -> Result<Folder> {
    let cores = std::thread::available_parallelism().map_or(1, |t| t.get());
    read_folder_on(dir, cores)
}

/// One PNG file as a set of one image (`explain --input digit.png`).
pub fn read_single(path: &Path) -> Result<Folder> {
    read_files(path, vec![path.to_path_buf()], 1)
}

/// [`read_folder`] on at most `threads` threads.
fn read_folder_on(dir: &Path, threads: usize) -> Result<Folder> {
    read_files(dir, list_png_files(dir)?, threads)
}

/// Decodes `files` (the PNG files of `dir`, or one file) in order on at most `threads` threads.
fn read_files(dir: &Path, files: Vec<PathBuf>, threads: usize) -> Result<Folder> {
    let Some(first_path) = files.first() else {
        // PyTorch's ImageFolder layout keeps the images one level down, a folder per class
        let nested = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .find(|e| list_png_files(&e.path()).is_ok_and(|f| !f.is_empty()));
        let hint = match nested {
            Some(sub) => format!(
                "; its subfolders hold PNG files (a folder per class?): pass one of them, e.g. {}, \
                 with its labels in --labels",
                sub.path().display()
            ),
            None => String::new(),
        };
        return Err(Error::input(
            dir,
            format!(
                "folder holds no .png files; expected a folder of PNG images (grayscale or RGB, \
                 all one size){hint}"
            ),
        ));
    };
    let first = read_png(first_path)?;
    let per = first.values.len();
    let total = files.len() * per;
    let too_much = |what: &str, bytes_each: usize| {
        Error::input(
            dir,
            format!(
                "{} images of {} x {} x {} values need {:.1} GiB of memory as {what}, more than \
                 could be allocated; explain the images in smaller folders",
                files.len(),
                first.channels,
                first.height,
                first.width,
                (total * bytes_each) as f64 / (1u64 << 30) as f64
            ),
        )
    };
    let mut values = zeroed::<f32>(total).ok_or_else(|| too_much("float32", 4))?;
    // the bytes too, while every image is 8-bit
    let mut bytes = match first.bytes {
        Some(_) => Some(zeroed::<u8>(total).ok_or_else(|| too_much("float32 and bytes", 5))?),
        None => None,
    };
    let threads = threads.min(files.len().div_ceil(FILES_PER_THREAD)).max(1);
    let run = files.len().div_ceil(threads);
    let value_runs = values.chunks_mut(run * per);
    let byte_runs: Vec<Option<&mut [u8]>> = match &mut bytes {
        Some(b) => b.chunks_mut(run * per).map(Some).collect(),
        None => (0..threads).map(|_| None).collect(),
    };
    let outcomes: Vec<RunOutcome> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(run)
            .zip(value_runs)
            .zip(byte_runs)
            .map(|((paths, vals), byts)| {
                let first = (&first, first_path.as_path());
                scope.spawn(move || read_run(paths, first, vals, byts))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    // runs are in file order, each stopped at its first refusal: the first refusal is the
    // folder's first
    let mut all_bytes = bytes.is_some();
    for outcome in outcomes {
        all_bytes &= outcome.all_bytes;
        outcome.refusal.map_or(Ok(()), Err)?;
    }
    Ok(Folder {
        shape: vec![files.len(), first.channels, first.height, first.width],
        values,
        bytes: bytes.filter(|_| all_bytes),
    })
}

/// What a decoding thread found in its run of files.
struct RunOutcome {
    /// Whether every image of the run was 8-bit.
    all_bytes: bool,
    /// The run's first file that could not be read or does not match the first image.
    refusal: Option<Error>,
}

/// Decodes `paths` in order into `values` (and `bytes` while they are 8-bit), image after image,
/// until one cannot be read or differs from `first` (the folder's first image and its path).
fn read_run(
    paths: &[PathBuf],
    (first, first_path): (&Image, &Path),
    values: &mut [f32],
    mut bytes: Option<&mut [u8]>,
) -> RunOutcome {
    let per = first.values.len();
    let mut all_bytes = true;
    for (i, path) in paths.iter().enumerate() {
        let img = match read_png(path).and_then(|img| matches_first(img, path, first, first_path)) {
            Ok(img) => img,
            Err(e) => {
                return RunOutcome {
                    all_bytes,
                    refusal: Some(e),
                }
            }
        };
        values[i * per..][..per].copy_from_slice(&img.values);
        match (&mut bytes, &img.bytes) {
            (Some(all), Some(b)) => all[i * per..][..per].copy_from_slice(b),
            _ => all_bytes = false,
        }
    }
    RunOutcome {
        all_bytes,
        refusal: None,
    }
}

/// `img` (read from `path`) when it has the size and channels of the folder's first image.
fn matches_first(img: Image, path: &Path, first: &Image, first_path: &Path) -> Result<Image> {
    let (c, h, w) = (first.channels, first.height, first.width);
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
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `w x h` grayscale PNG of the given samples (8 or 16 bit).
    fn gray(path: &Path, w: u32, h: u32, sixteen: bool, seed: u32) -> Vec<f32> {
        let n = (w * h) as usize;
        let samples: Vec<u32> = (0..n as u32).map(|i| (seed * 97 + i * 31) % 251).collect();
        let mut e = png::Encoder::new(File::create(path).unwrap(), w, h);
        e.set_color(ColorType::Grayscale);
        let (depth, data, scale) = if sixteen {
            let d: Vec<u8> = samples
                .iter()
                .flat_map(|&v| ((v * 257) as u16).to_be_bytes())
                .collect();
            (BitDepth::Sixteen, d, 255.0)
        } else {
            (
                BitDepth::Eight,
                samples.iter().map(|&v| v as u8).collect(),
                255.0,
            )
        };
        e.set_depth(depth);
        e.write_header().unwrap().write_image_data(&data).unwrap();
        samples.iter().map(|&v| (v as f64 / scale) as f32).collect()
    }

    /// Reads of a folder of many files on 1 to 7 threads agree: the same values in file order,
    /// the bytes only while every image is 8-bit, and the same refusal, of the first odd file,
    /// wherever the runs of the threads begin.
    #[test]
    fn threads_read_a_folder_as_one_does() {
        let dir = tempfile::tempdir().unwrap();
        let name = |i: usize| dir.path().join(format!("{i:03}.png"));
        let n = 300;
        let mut want = vec![];
        for i in 0..n {
            want.extend(gray(&name(i), 3, 2, false, i as u32));
        }
        let counts = [1, 2, 3, 7];
        for t in counts {
            let f = read_folder_on(dir.path(), t).unwrap();
            assert_eq!(f.shape, vec![n, 1, 2, 3]);
            assert_eq!(f.values, want, "{t} threads");
            let bytes: Vec<f32> = f
                .bytes
                .unwrap()
                .iter()
                .map(|&b| (b as f64 / 255.0) as f32)
                .collect();
            assert_eq!(bytes, want, "{t} threads");
        }
        // one 16-bit image late in the folder: the same values (v * 257 / 65535 = v / 255), no bytes
        gray(&name(250), 3, 2, true, 250);
        for t in counts {
            let f = read_folder_on(dir.path(), t).unwrap();
            assert_eq!(f.values, want, "{t} threads");
            assert!(f.bytes.is_none(), "{t} threads");
        }
        // two odd files: the first one is named, whichever thread reads it
        gray(&name(130), 2, 3, false, 130);
        std::fs::write(name(200), b"\x89PNG cut short").unwrap();
        for (odd, what) in [(130, "one size"), (200, "not a readable PNG")] {
            for t in counts {
                let msg = read_folder_on(dir.path(), t)
                    .err()
                    .expect("a refusal")
                    .to_string();
                assert!(
                    msg.contains(&format!("{odd:03}.png")) && msg.contains(what),
                    "{t} threads: {msg}"
                );
            }
            gray(&name(odd), 3, 2, false, odd as u32);
        }
        assert!(read_folder_on(dir.path(), 3).is_ok());
    }
}
