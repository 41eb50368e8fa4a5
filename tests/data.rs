//! Input readers (IDX, NPY, PNG folders), label discovery, normalisation and bounds, every
//! refusal, atomic writes and the NPY writer, on small seeded random files in a temp dir.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::Rng;
use taylormap::data::{self, npy_bytes_f32, read_npy, write_atomic, Dataset, NpyData};
use taylormap::{Bounds, Error};

// ---------- writers for test files ----------

fn idx_bytes(magic: u32, dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_be_bytes().to_vec();
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// An NPY file with any header fields, written by hand (version `major`.0).
fn npy_raw(major: u8, descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let dims = if shape.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let fortran = if fortran { "True" } else { "False" };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {dims}, }}");
    let pre = if major == 1 { 10 } else { 12 };
    while (pre + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[major, 0]);
    if major == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Writes a PNG; `samples` are per-pixel interleaved, big-endian for 16 bit.
fn png_file(
    path: &Path,
    w: usize,
    h: usize,
    color: png::ColorType,
    depth: png::BitDepth,
    samples: &[u8],
) {
    let file = std::fs::File::create(path).unwrap();
    let mut e = png::Encoder::new(std::io::BufWriter::new(file), w as u32, h as u32);
    e.set_color(color);
    e.set_depth(depth);
    let mut wr = e.write_header().unwrap();
    wr.write_image_data(samples).unwrap();
    wr.finish().unwrap();
}

fn random_bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    (0..n).map(|_| rng.random()).collect()
}

fn random_f32(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| common::uniform(rng, -3.0, 5.0)).collect()
}

fn unit(b: u8) -> f32 {
    (b as f64 / 255.0) as f32
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The error message, checked to name `file`.
fn err_naming(result: taylormap::Result<Dataset>, file: &Path) -> String {
    let msg = result.expect_err("expected a refusal").to_string();
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "message does not name {name}: {msg}");
    msg
}

// ---------- IDX ----------

#[test]
fn idx_plain_and_gzipped_read_back_exactly_with_discovered_labels() {
    let mut rng = common::rng("idx_plain_and_gzipped");
    let dir = tmp();
    let (n, h, w) = (
        rng.random_range(1..6),
        rng.random_range(2..9),
        rng.random_range(2..9),
    );
    let pixels = random_bytes(&mut rng, n * h * w);
    let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..10)).collect();
    let images = idx_bytes(0x803, &[n, h, w], &pixels);
    let label_file = idx_bytes(0x801, &[n], &labels);
    // Plain, MNIST names.
    let plain = write(dir.path(), "train-images-idx3-ubyte", &images);
    write(dir.path(), "train-labels-idx1-ubyte", &label_file);
    // Gzipped, detected by magic whatever the name; labels gzipped too.
    let gz = write(dir.path(), "t10k-images.idx3-ubyte", &gzip(&images));
    write(dir.path(), "t10k-labels.idx1-ubyte", &gzip(&label_file));
    let want: Vec<f32> = pixels.iter().map(|&b| unit(b)).collect();
    let want_labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    for path in [plain, gz] {
        let d = data::load(&path, None, None).unwrap();
        assert_eq!(d.kind, "idx");
        assert_eq!(d.x.shape(), &[n, h, w]);
        assert_eq!(d.x.as_slice().unwrap(), &want[..]);
        assert_eq!(d.labels.as_deref(), Some(&want_labels[..]));
        assert_eq!(
            d.bounds,
            Bounds {
                low: 0.0,
                high: 1.0
            }
        );
        assert_eq!(d.path, path);
        assert_eq!(d.len(), n);
    }
}

#[test]
fn idx_labels_come_from_the_argument_or_not_at_all() {
    let mut rng = common::rng("idx_labels_argument");
    let dir = tmp();
    let n = rng.random_range(2..7);
    let images = idx_bytes(0x803, &[n, 3, 4], &random_bytes(&mut rng, n * 12));
    let path = write(dir.path(), "digits.idx3", &images);
    assert_eq!(data::load(&path, None, None).unwrap().labels, None);

    let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..10)).collect();
    let want: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
    let lp = write(
        dir.path(),
        "elsewhere.gz",
        &gzip(&idx_bytes(0x801, &[n], &labels)),
    );
    assert_eq!(
        data::load(&path, Some(&lp), None).unwrap().labels,
        Some(want.clone())
    );
    // NPY (int64) and text labels work as well.
    let ints: Vec<u8> = want
        .iter()
        .flat_map(|&l| (l as i64).to_le_bytes())
        .collect();
    let np = write(
        dir.path(),
        "labels.npy",
        &npy_raw(1, "<i8", false, &[n], &ints),
    );
    assert_eq!(
        data::load(&path, Some(&np), None).unwrap().labels,
        Some(want.clone())
    );
    let text: String = want.iter().map(|l| format!("{l}\n")).collect();
    let tp = write(dir.path(), "labels.txt", text.as_bytes());
    assert_eq!(
        data::load(&path, Some(&tp), None).unwrap().labels,
        Some(want)
    );
}

#[test]
fn idx_refusals_name_the_file() {
    let mut rng = common::rng("idx_refusals");
    let dir = tmp();
    let n = rng.random_range(2..6);
    let pixels = random_bytes(&mut rng, n * 25);
    let good = idx_bytes(0x803, &[n, 5, 5], &pixels);

    // Truncated data, plain and gzipped; truncated gzip stream.
    let p = write(dir.path(), "cut-images-idx3-ubyte", &good[..good.len() - 3]);
    assert!(err_naming(data::load(&p, None, None), &p).contains("truncated"));
    let p = write(
        dir.path(),
        "cutgz-images-idx3-ubyte",
        &gzip(&good[..good.len() - 1]),
    );
    assert!(err_naming(data::load(&p, None, None), &p).contains("truncated"));
    let z = gzip(&good);
    let p = write(dir.path(), "broken.gz", &z[..z.len() / 2]);
    assert!(err_naming(data::load(&p, None, None), &p).contains("gzip"));
    // A trailer recording the wrong size (too large to trust as room to allocate, or too small).
    for size in [u32::MAX, 1] {
        let mut z = z.clone();
        let at = z.len() - 4;
        z[at..].copy_from_slice(&size.to_le_bytes());
        let p = write(dir.path(), "bad-size.gz", &z);
        assert!(err_naming(data::load(&p, None, None), &p).contains("gzip"));
    }

    // A labels file or a float IDX given as images: bad magic.
    let p = write(
        dir.path(),
        "labels-as-images",
        &idx_bytes(0x801, &[n], &pixels[..n]),
    );
    let msg = err_naming(data::load(&p, None, None), &p);
    assert!(msg.contains("magic") && msg.contains("--labels"), "{msg}");
    let p = write(
        dir.path(),
        "float.idx",
        &idx_bytes(0x0d03, &[1, 1, 1], &[0; 4]),
    );
    assert!(err_naming(data::load(&p, None, None), &p).contains("0x0d"));

    // Label count mismatch names the labels file.
    let img = write(dir.path(), "a-images-idx3-ubyte", &good);
    let lp = write(
        dir.path(),
        "a-labels-idx1-ubyte",
        &idx_bytes(0x801, &[n - 1], &pixels[..n - 1]),
    );
    let msg = err_naming(data::load(&img, None, None), &lp);
    assert!(msg.contains(&format!("{} labels", n - 1)), "{msg}");
    // Images given as labels.
    let msg = err_naming(data::load(&img, Some(&img), None), &img);
    assert!(msg.contains("magic"), "{msg}");
}

// ---------- NPY ----------

#[test]
fn npy_float32_and_uint8_in_three_shapes_read_back_exactly() {
    let mut rng = common::rng("npy_shapes");
    let dir = tmp();
    let n = rng.random_range(1..5);
    let (c, h, w) = (
        rng.random_range(1..4),
        rng.random_range(1..6),
        rng.random_range(1..6),
    );
    for (k, shape) in [vec![n, h, w], vec![n, c, h, w], vec![n, c * h * w]]
        .into_iter()
        .enumerate()
    {
        let count: usize = shape.iter().product();
        let floats = random_f32(&mut rng, count);
        let major = if k == 1 { 2 } else { 1 };
        let p = write(
            dir.path(),
            &format!("f{k}.npy"),
            &npy_raw(major, "<f4", false, &shape, &f32_bytes(&floats)),
        );
        let d = data::load(&p, None, None).unwrap();
        assert_eq!((d.kind, d.x.shape()), ("npy", &shape[..]));
        assert_eq!(d.x.as_slice().unwrap(), &floats[..]);
        let lo = floats.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
        let hi = floats.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        // Values that all lie in [0, 1] (a draw of one or two values can) are taken as [0, 1]
        // data, as 8-bit sources are; others bound by their own range.
        let want = if lo >= 0.0 && hi <= 1.0 {
            Bounds {
                low: 0.0,
                high: 1.0,
            }
        } else {
            Bounds { low: lo, high: hi }
        };
        assert_eq!(d.bounds, want);
        assert_eq!(d.labels, None);

        let bytes = random_bytes(&mut rng, count);
        let p = write(
            dir.path(),
            &format!("u{k}.npy"),
            &npy_raw(major, "|u1", false, &shape, &bytes),
        );
        let d = data::load(&p, None, None).unwrap();
        assert_eq!(d.x.shape(), &shape[..]);
        let want: Vec<f32> = bytes.iter().map(|&b| unit(b)).collect();
        assert_eq!(d.x.as_slice().unwrap(), &want[..]);
        assert_eq!(
            d.bounds,
            Bounds {
                low: 0.0,
                high: 1.0
            }
        );
    }
}

#[test]
fn npy_refusals_name_the_file() {
    let mut rng = common::rng("npy_refusals");
    let dir = tmp();
    let (n, d) = (rng.random_range(3..7), rng.random_range(2..6));
    let mut floats = random_f32(&mut rng, n * d);
    let good = npy_raw(1, "<f4", false, &[n, d], &f32_bytes(&floats));

    let p = write(dir.path(), "short.npy", &good[..good.len() - 2]);
    assert!(err_naming(data::load(&p, None, None), &p).contains("truncated"));
    let p = write(dir.path(), "header.npy", &good[..40]);
    assert!(err_naming(data::load(&p, None, None), &p).contains("truncated"));
    let p = write(dir.path(), "magic.npy", b"NUMPY but not really, just text");
    assert!(err_naming(data::load(&p, None, None), &p).contains("magic"));
    for descr in ["<f8", "<i4", "<f2"] {
        let bytes = vec![1u8; n * d * descr[2..].parse::<usize>().unwrap()];
        let p = write(
            dir.path(),
            "dtype.npy",
            &npy_raw(1, descr, false, &[n, d], &bytes),
        );
        let msg = err_naming(data::load(&p, None, None), &p);
        assert!(msg.contains("float32") && msg.contains("uint8"), "{msg}");
    }
    let p = write(
        dir.path(),
        "fortran.npy",
        &npy_raw(1, "<f4", true, &[n, d], &f32_bytes(&floats)),
    );
    assert!(err_naming(data::load(&p, None, None), &p).contains("Fortran"));
    for shape in [vec![n * d], vec![n, 1, 1, 1, d]] {
        let p = write(
            dir.path(),
            "rank.npy",
            &npy_raw(1, "<f4", false, &shape, &f32_bytes(&floats)),
        );
        assert!(err_naming(data::load(&p, None, None), &p).contains("(N, D)"));
    }
    // NaN and infinity name the first offending sample.
    let bad = rng.random_range(1..n);
    floats[bad * d + rng.random_range(0..d)] = f32::NAN;
    floats[(n - 1) * d] = f32::INFINITY;
    let p = write(
        dir.path(),
        "nan.npy",
        &npy_raw(1, "<f4", false, &[n, d], &f32_bytes(&floats)),
    );
    let err = data::load(&p, None, None).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("nan.npy") && msg.contains(&format!("sample {bad}")),
        "{msg}"
    );
}

#[test]
fn npy_writer_round_trips_through_the_reader() {
    let mut rng = common::rng("npy_round_trip");
    let dir = tmp();
    for rank in 1..=4 {
        let shape: Vec<usize> = (0..rank).map(|_| rng.random_range(1..5)).collect();
        let values = random_f32(&mut rng, shape.iter().product());
        let bytes = npy_bytes_f32(&shape, &values);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0, "data must start 64-byte aligned");
        assert_eq!(bytes[9 + header_len], b'\n');
        let p = dir.path().join("r.npy");
        write_atomic(&p, &bytes).unwrap();
        let (got_shape, got) = read_npy(&p).unwrap();
        assert_eq!(got_shape, shape);
        assert_eq!(got, NpyData::F32(values));
    }
}

// ---------- PNG folders ----------

#[test]
fn png_folder_reads_gray_rgb_alpha_and_16_bit_in_sorted_order() {
    let mut rng = common::rng("png_folder");
    let (h, w) = (rng.random_range(1..7), rng.random_range(1..7));
    let n = rng.random_range(2..5);
    use png::{BitDepth, ColorType};

    // Grayscale: 8-bit, with one 16-bit and one gray+alpha image; written in reverse order.
    let dir = tmp();
    let mut want = vec![];
    let names: Vec<String> = (0..n).map(|i| format!("img{i:02}.png")).collect();
    let mut files = vec![];
    for (i, name) in names.iter().enumerate() {
        let gray = random_bytes(&mut rng, h * w * 2);
        let (color, depth, samples, values): (_, _, Vec<u8>, Vec<f32>) = match i % 3 {
            0 => (
                ColorType::Grayscale,
                BitDepth::Eight,
                gray[..h * w].to_vec(),
                gray[..h * w].iter().map(|&b| unit(b)).collect(),
            ),
            1 => (
                ColorType::Grayscale,
                BitDepth::Sixteen,
                gray.clone(),
                gray.chunks(2)
                    .map(|c| (u16::from_be_bytes([c[0], c[1]]) as f64 / 65535.0) as f32)
                    .collect(),
            ),
            _ => (
                ColorType::GrayscaleAlpha,
                BitDepth::Eight,
                gray.clone(),
                gray.chunks(2).map(|c| unit(c[0])).collect(),
            ),
        };
        want.extend(values);
        files.push((dir.path().join(name), color, depth, samples));
    }
    for (path, color, depth, samples) in files.iter().rev() {
        png_file(path, w, h, *color, *depth, samples);
    }
    write(dir.path(), "notes.txt", b"not an image, ignored");
    let d = data::load(dir.path(), None, None).unwrap();
    assert_eq!(d.kind, "png-folder");
    assert_eq!(d.x.shape(), &[n, 1, h, w]);
    assert_eq!(d.x.as_slice().unwrap(), &want[..]);
    // One file of them is a set of one image (the first: 8-bit, its bytes kept), the same values.
    let one = data::load(&files[0].0, None, None).unwrap();
    assert_eq!(one.kind, "png");
    assert_eq!(one.x.shape(), &[1, 1, h, w]);
    assert_eq!(one.x.as_slice().unwrap(), &want[..h * w]);
    assert_eq!(one.pixels.as_ref().map(|p| p.bytes.len()), Some(h * w));
    assert_eq!(
        d.bounds,
        Bounds {
            low: 0.0,
            high: 1.0
        }
    );

    // RGB and RGBA: (N, 3, H, W), channel-first, alpha dropped.
    let dir = tmp();
    let mut want = vec![0f32; n * 3 * h * w];
    for i in 0..n {
        let alpha = i % 2 == 1;
        let stored = if alpha { 4 } else { 3 };
        let samples = random_bytes(&mut rng, h * w * stored);
        for p in 0..h * w {
            for c in 0..3 {
                want[(i * 3 + c) * h * w + p] = unit(samples[p * stored + c]);
            }
        }
        let color = if alpha {
            ColorType::Rgba
        } else {
            ColorType::Rgb
        };
        png_file(
            &dir.path().join(format!("{i}.png")),
            w,
            h,
            color,
            BitDepth::Eight,
            &samples,
        );
    }
    let d = data::load(dir.path(), None, None).unwrap();
    assert_eq!(d.x.shape(), &[n, 3, h, w]);
    assert_eq!(d.x.as_slice().unwrap(), &want[..]);
}

/// A PNG file of `w x h` 8-bit grayscale pixels, as its header says, whose data holds a few
/// rows at most: written chunk by chunk, since an encoder would want every row.
fn png_claiming(path: &Path, w: u32, h: u32) {
    use std::io::Write;
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&crc.sum().to_be_bytes());
        c
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut z = flate2::write::ZlibEncoder::new(vec![], flate2::Compression::default());
    z.write_all(&vec![0u8; 3 * (w as usize + 1)]).unwrap();
    let mut file = b"\x89PNG\r\n\x1a\n".to_vec();
    file.extend(chunk(b"IHDR", &ihdr));
    file.extend(chunk(b"IDAT", &z.finish().unwrap()));
    file.extend(chunk(b"IEND", &[]));
    std::fs::write(path, file).unwrap();
}

/// A PNG header can claim billions of pixels in a file of a few hundred bytes. Such a file is
/// refused, named, before anything its size is allocated: one of 4,006 x 2^31-1 pixels used to
/// abort the process (out of memory) instead of exiting 2. A file that merely lacks rows is
/// refused when decoded.
#[test]
fn a_png_claiming_billions_of_pixels_is_refused_before_allocating() {
    let mut rng = common::rng("png_claiming");
    let w = rng.random_range(1000..5000);
    let dir = tmp();
    let huge = dir.path().join("huge.png");
    png_claiming(&huge, w, (1 << 31) - 1);
    let msg = err_naming(data::load(&huge, None, None), &huge);
    assert!(
        msg.contains("too large") && msg.contains("8192 x 8192"),
        "{msg}"
    );

    // in a folder, after an image that is fine: still refused, and named
    let dir = tmp();
    png_file(
        &dir.path().join("a.png"),
        3,
        2,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &random_bytes(&mut rng, 6),
    );
    let late = dir.path().join("b.png");
    png_claiming(&late, 1 << 16, 1 << 16);
    let msg = err_naming(data::load(dir.path(), None, None), &late);
    assert!(msg.contains("too large"), "{msg}");

    // at the limit the header passes, and the missing rows are the refusal
    let short = dir.path().join("b.png");
    png_claiming(&short, 8192, 8192);
    let msg = err_naming(data::load(&short, None, None), &short);
    assert!(msg.contains("not a readable PNG"), "{msg}");
}

#[test]
fn png_folder_refusals_name_the_first_odd_file() {
    let mut rng = common::rng("png_refusals");
    let (h, w) = (rng.random_range(2..6), rng.random_range(2..6));
    let dir = tmp();
    use png::{BitDepth, ColorType};
    let gray = |rng: &mut StdRng, h: usize, w: usize| random_bytes(rng, h * w);
    png_file(
        &dir.path().join("a.png"),
        w,
        h,
        ColorType::Grayscale,
        BitDepth::Eight,
        &gray(&mut rng, h, w),
    );
    png_file(
        &dir.path().join("b.png"),
        w,
        h,
        ColorType::Grayscale,
        BitDepth::Eight,
        &gray(&mut rng, h, w),
    );
    png_file(
        &dir.path().join("c.png"),
        w + 1,
        h,
        ColorType::Grayscale,
        BitDepth::Eight,
        &gray(&mut rng, h, w + 1),
    );
    png_file(
        &dir.path().join("d.png"),
        w,
        h + 1,
        ColorType::Grayscale,
        BitDepth::Eight,
        &gray(&mut rng, h + 1, w),
    );
    let msg = err_naming(
        data::load(dir.path(), None, None),
        &dir.path().join("c.png"),
    );
    assert!(msg.contains("one size") && !msg.contains("d.png"), "{msg}");

    let dir = tmp();
    png_file(
        &dir.path().join("a.png"),
        w,
        h,
        ColorType::Grayscale,
        BitDepth::Eight,
        &gray(&mut rng, h, w),
    );
    png_file(
        &dir.path().join("b.png"),
        w,
        h,
        ColorType::Rgb,
        BitDepth::Eight,
        &random_bytes(&mut rng, 3 * h * w),
    );
    let msg = err_naming(
        data::load(dir.path(), None, None),
        &dir.path().join("b.png"),
    );
    assert!(msg.contains("RGB"), "{msg}");

    let dir = tmp();
    let p = write(dir.path(), "fake.png", b"\x89PNG but cut short");
    err_naming(data::load(dir.path(), None, None), &p);
    let empty = tmp();
    assert!(data::load(empty.path(), None, None)
        .unwrap_err()
        .to_string()
        .contains("no .png"));
    // PyTorch's ImageFolder layout (a folder per class): the message names a class folder
    std::fs::create_dir(empty.path().join("class_3")).unwrap();
    png_file(
        &empty.path().join("class_3").join("x.png"),
        w,
        h,
        ColorType::Grayscale,
        BitDepth::Eight,
        &gray(&mut rng, h, w),
    );
    let msg = data::load(empty.path(), None, None)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("no .png") && msg.contains("class_3"), "{msg}");
}

// ---------- normalisation, bounds, formats ----------

#[test]
fn normalize_applies_after_scaling_and_bounds_follow() {
    let mut rng = common::rng("normalize");
    let dir = tmp();
    let n = rng.random_range(2..6);
    let mean = common::uniform(&mut rng, -0.5, 0.9) as f64;
    let std = common::uniform(&mut rng, 0.1, 2.0) as f64;
    let pixels = random_bytes(&mut rng, n * 16);
    let p = write(
        dir.path(),
        "x-images-idx3-ubyte",
        &idx_bytes(0x803, &[n, 4, 4], &pixels),
    );
    let d = data::load(&p, None, Some((mean, std))).unwrap();
    for (got, &b) in d.x.iter().zip(&pixels) {
        let want = (unit(b) as f64 - mean) / std;
        assert!(
            (*got as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{got} vs {want}"
        );
    }
    assert_eq!(
        d.bounds,
        Bounds {
            low: -mean / std,
            high: (1.0 - mean) / std
        }
    );

    let floats = random_f32(&mut rng, n * 5);
    let p = write(
        dir.path(),
        "f.npy",
        &npy_raw(1, "<f4", false, &[n, 5], &f32_bytes(&floats)),
    );
    let d = data::load(&p, None, Some((mean, std))).unwrap();
    let lo = d.x.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
    let hi = d.x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    // floats outside [0, 1]: the data's own range, transformed
    assert!(
        (d.bounds.low - lo).abs() < 1e-5 * lo.abs().max(1.0),
        "{:?}",
        d.bounds
    );
    assert!(
        (d.bounds.high - hi).abs() < 1e-5 * hi.abs().max(1.0),
        "{:?}",
        d.bounds
    );
    let raw_lo = floats.iter().cloned().fold(f32::INFINITY, f32::min) as f64;
    assert!((lo - (raw_lo - mean) / std).abs() < 1e-5 * lo.abs().max(1.0));

    // floats inside [0, 1] are taken as pixels scaled to [0, 1]
    let unit: Vec<f32> = floats.iter().map(|v| v.abs().fract() * 0.9).collect();
    let q = write(
        dir.path(),
        "u.npy",
        &npy_raw(1, "<f4", false, &[n, 5], &f32_bytes(&unit)),
    );
    let d = data::load(&q, None, Some((mean, std))).unwrap();
    assert_eq!(d.bounds, Bounds::unit_normalized(Some((mean, std))));

    for bad in [(0.0, 0.0), (0.5, -1.0), (f64::NAN, 1.0)] {
        let err = data::load(&p, None, Some(bad)).unwrap_err();
        assert!(err.to_string().contains("--normalize"), "{err}");
    }
}

#[test]
fn unknown_and_csv_inputs_are_refused_with_the_accepted_list() {
    let mut rng = common::rng("formats");
    let dir = tmp();
    let p = write(dir.path(), "table.csv", b"a,b\n1,2\n");
    assert!(err_naming(data::load(&p, None, None), &p).contains("tabular model"));
    let mut blob = b"#?".to_vec();
    blob.extend(random_bytes(&mut rng, 64));
    let p = write(dir.path(), "blob.bin", &blob);
    let msg = err_naming(data::load(&p, None, None), &p);
    assert!(
        msg.contains("PNG") && msg.contains("NPY") && msg.contains("IDX"),
        "{msg}"
    );
    let missing = dir.path().join("missing.npy");
    let err = data::load(&missing, None, None).unwrap_err();
    // a missing input is bad input (exit code 2), not a runtime error
    assert!(matches!(err, Error::Input { .. }) && err.to_string().contains("missing.npy"));
    assert_eq!(err.exit_code(), 2);
}

// ---------- Dataset methods ----------

#[test]
fn check_against_adapts_plain_cases_and_refuses_the_rest() {
    let mut rng = common::rng("check_against");
    let dir = tmp();
    let (n, h, w) = (
        rng.random_range(2..5),
        rng.random_range(2..6),
        rng.random_range(2..6),
    );
    let pixels = random_bytes(&mut rng, n * h * w);
    let p = write(
        dir.path(),
        "i-images-idx3-ubyte",
        &idx_bytes(0x803, &[n, h, w], &pixels),
    );
    let base = data::load(&p, None, None).unwrap();
    let flat: Vec<f32> = base.x.iter().cloned().collect();

    let mut d = base.clone();
    d.check_against(&[1, h, w]).unwrap();
    assert_eq!(d.x.shape(), &[n, 1, h, w]);
    assert_eq!(d.x.iter().cloned().collect::<Vec<_>>(), flat);
    d.check_against(&[1, h, w]).unwrap();

    let mut d = base.clone();
    d.check_against(&[h * w]).unwrap();
    assert_eq!(d.x.shape(), &[n, h * w]);
    assert_eq!(d.x.as_slice().unwrap(), &flat[..]);

    for wrong in [
        vec![3, h, w],
        vec![1, h + 1, w],
        vec![h * w + 1],
        vec![h, w, 1],
    ] {
        let mut d = base.clone();
        let msg = d.check_against(&wrong).unwrap_err().to_string();
        assert!(
            msg.contains("i-images-idx3-ubyte")
                && msg.contains(&format!("{wrong:?}"))
                && msg.contains(&format!("{:?}", [h, w])),
            "{msg}"
        );
        assert_eq!(
            d.x.shape(),
            &[n, h, w],
            "a refused check must leave the data alone"
        );
    }
}

#[test]
fn limit_keeps_the_first_samples_and_labels() {
    let mut rng = common::rng("limit");
    let dir = tmp();
    let n = rng.random_range(3..8);
    let pixels = random_bytes(&mut rng, n * 4);
    let labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..10)).collect();
    let p = write(
        dir.path(),
        "l-images-idx3-ubyte",
        &idx_bytes(0x803, &[n, 2, 2], &pixels),
    );
    write(
        dir.path(),
        "l-labels-idx1-ubyte",
        &idx_bytes(0x801, &[n], &labels),
    );
    let mut d = data::load(&p, None, None).unwrap();
    let k = rng.random_range(1..n);
    d.limit(k);
    assert_eq!(d.len(), k);
    assert_eq!(d.x.shape(), &[k, 2, 2]);
    let want: Vec<f32> = pixels[..k * 4].iter().map(|&b| unit(b)).collect();
    assert_eq!(d.x.as_slice().unwrap(), &want[..]);
    assert_eq!(d.labels.as_ref().unwrap().len(), k);
    d.limit(n + 5);
    assert_eq!(d.len(), k);
}

// ---------- atomic writes ----------

#[test]
fn write_atomic_replaces_and_leaves_no_temp_file() {
    let mut rng = common::rng("write_atomic");
    let dir = tmp();
    let p = dir.path().join("out.bin");
    let len = rng.random_range(1..200);
    let first = random_bytes(&mut rng, len);
    write_atomic(&p, &first).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), first);
    let len = rng.random_range(1..200);
    let second = random_bytes(&mut rng, len);
    write_atomic(&p, &second).unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), second);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("out.bin")]);

    // Failure (target is a directory; parent missing): an I/O error naming the path, no litter.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let err = write_atomic(&sub, &first).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("sub"));
    let err = write_atomic(&dir.path().join("nope").join("x.bin"), &first).unwrap_err();
    assert!(err.to_string().contains("x.bin"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    assert_eq!(std::fs::read_dir(&sub).unwrap().count(), 0);
}

#[test]
fn atomic_file_appears_only_on_commit_and_vanishes_when_dropped() {
    let mut rng = common::rng("atomic_file");
    let dir = tmp();
    let target = dir.path().join("r.npy");
    std::fs::write(&target, b"old").unwrap();
    let values = random_f32(&mut rng, 12);
    let mut file = data::AtomicFile::create(&target).unwrap();
    file.write_all(&data::npy_header_f32(&[3, 4])).unwrap();
    for chunk in values.chunks(4) {
        file.write_all(&data::f32_le_bytes(chunk)).unwrap();
    }
    assert_eq!(
        std::fs::read(&target).unwrap(),
        b"old",
        "visible before commit"
    );
    file.commit().unwrap();
    assert_eq!(
        std::fs::read(&target).unwrap(),
        data::npy_bytes_f32(&[3, 4], &values)
    );
    let mut dropped = data::AtomicFile::create(&target).unwrap();
    dropped.write_all(b"partial").unwrap();
    drop(dropped);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "temp file left behind"
    );
    assert_eq!(
        std::fs::read(&target).unwrap(),
        data::npy_bytes_f32(&[3, 4], &values)
    );
}

#[test]
fn atomic_file_synced_behind_and_ahead_keeps_every_byte() {
    let mut rng = common::rng("atomic_file_sync_behind");
    let dir = tmp();
    let target = dir.path().join("r.npy");
    let chunks: Vec<Vec<u8>> = (0..rng.random_range(20..40))
        .map(|_| {
            let len = rng.random_range(1..300);
            random_bytes(&mut rng, len)
        })
        .collect();
    let mut file = data::AtomicFile::create(&target).unwrap();
    file.sync_behind(rng.random_range(100..400));
    let mut want = Vec::new();
    for chunk in &chunks[..chunks.len() / 2] {
        file.write_all(chunk).unwrap();
        want.extend_from_slice(chunk);
    }
    assert!(file.background_syncs() >= 1, "no background fsync started");
    // synced ahead of the commit, then written to again: the commit syncs the rest
    file.sync().unwrap();
    assert!(!target.exists(), "visible before commit");
    for chunk in &chunks[chunks.len() / 2..] {
        file.write_all(chunk).unwrap();
        want.extend_from_slice(chunk);
    }
    file.commit().unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), want);

    // written(): on disk under the temporary name, visible only once committed, gone if dropped
    let ready = data::AtomicFile::written(&target, b"new").unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), want);
    ready.commit().unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    drop(data::AtomicFile::written(&target, b"dropped").unwrap());
    assert_eq!(std::fs::read(&target).unwrap(), b"new");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn eight_bit_sources_keep_their_bytes_and_a_table_that_gives_x_exactly() {
    let mut rng = common::rng("eight_bit_pixels");
    let dir = tmp();
    let n = rng.random_range(3..7);
    let pixels = random_bytes(&mut rng, n * 20);
    let idx = write(
        dir.path(),
        "p-images-idx3-ubyte.gz",
        &gzip(&idx_bytes(0x803, &[n, 4, 5], &pixels)),
    );
    let npy = write(
        dir.path(),
        "p.npy",
        &npy_raw(1, "|u1", false, &[n, 1, 4, 5], &pixels),
    );
    let mean = common::uniform(&mut rng, -0.5, 0.9) as f64;
    let std = common::uniform(&mut rng, 0.1, 2.0) as f64;
    for path in [&idx, &npy] {
        for normalize in [None, Some((mean, std))] {
            let mut d = data::load(path, None, normalize).unwrap();
            let what = format!("{} {normalize:?}", path.display());
            let p = d
                .pixels
                .clone()
                .unwrap_or_else(|| panic!("{what}: no bytes kept"));
            assert_eq!(p.bytes.shape(), d.x.shape(), "{what}");
            assert_eq!(
                p.bytes.iter().copied().collect::<Vec<u8>>(),
                pixels,
                "{what}"
            );
            let expanded = p.bytes.mapv(|b| p.lut[usize::from(b)]);
            assert!(
                expanded
                    .iter()
                    .zip(&d.x)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{what}: lut[bytes] differs from x"
            );
            // Reshaped and limited together with x.
            d.check_against(&[1, 4, 5]).unwrap();
            d.limit(2);
            let p = d.pixels.as_ref().unwrap();
            assert_eq!(p.bytes.shape(), &[2, 1, 4, 5], "{what}");
            assert_eq!(p.bytes.shape(), d.x.shape(), "{what}");
            let expanded = p.bytes.mapv(|b| p.lut[usize::from(b)]);
            assert_eq!(expanded, d.x, "{what}: after check_against and limit");
        }
    }
    // A folder of 8-bit RGB PNGs keeps its bytes in (N, C, H, W) order; one 16-bit image drops
    // them (its values are not bytes).
    let folder = dir.path().join("pngs");
    std::fs::create_dir(&folder).unwrap();
    let rgb: Vec<Vec<u8>> = (0..3).map(|_| random_bytes(&mut rng, 4 * 5 * 3)).collect();
    for (i, img) in rgb.iter().enumerate() {
        let path = folder.join(format!("{i}.png"));
        png_file(&path, 5, 4, png::ColorType::Rgb, png::BitDepth::Eight, img);
    }
    let d = data::load(&folder, None, Some((mean, std))).unwrap();
    let p = d.pixels.as_ref().expect("8-bit PNGs keep their bytes");
    assert_eq!(p.bytes.shape(), &[3, 3, 4, 5]);
    for (i, img) in rgb.iter().enumerate() {
        for (k, &b) in img.iter().enumerate() {
            // interleaved RGB on disk, channel-major in the dataset
            let (y, x, c) = (k / 15, (k / 3) % 5, k % 3);
            assert_eq!(p.bytes[[i, c, y, x]], b, "png {i} value {k}");
        }
    }
    let expanded = p.bytes.mapv(|b| p.lut[usize::from(b)]);
    assert!(expanded
        .iter()
        .zip(&d.x)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let deep: Vec<u8> = random_bytes(&mut rng, 4 * 5 * 3 * 2);
    let path = folder.join("9.png");
    png_file(
        &path,
        5,
        4,
        png::ColorType::Rgb,
        png::BitDepth::Sixteen,
        &deep,
    );
    assert!(data::load(&folder, None, None).unwrap().pixels.is_none());
    // Float data keeps no bytes.
    let values = random_f32(&mut rng, n * 20);
    let f = write(dir.path(), "f.npy", &npy_bytes_f32(&[n, 20], &values));
    assert!(data::load(&f, None, None).unwrap().pixels.is_none());
}
