//! IDX files in the MNIST layout, plain or gzipped: u8 images (magic 0x00000803, shape N x H x W)
//! and u8 labels (magic 0x00000801, shape N).
//!
//! Layout (LeCun's MNIST page): two zero bytes, a type code (0x08 = unsigned byte), the number
//! of dimensions, then one big-endian u32 per dimension, then the data in C order.

use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// Magic number of a u8 image file (N x H x W).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of a u8 label file (N).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Reads a file, gunzipping it when it starts with the gzip magic bytes (whatever its name).
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::unreadable(path, e))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        // Only a hint (a truncated download ends in arbitrary bytes, up to 4 GiB as a size):
        // where the allocator refuses it, the decoder grows the buffer as the data comes.
        let mut out = Vec::new();
        let _ = out.try_reserve_exact(gunzipped_len_hint(&bytes));
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| Error::input(path, format!("gzip data is corrupt or truncated: {e}")))?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Room for the decompressed bytes of gzip data: the size its trailer records (ISIZE, the last
/// member's size modulo 2^32, exact for the usual single member), so that decompressing
/// reallocates and copies nothing, unless that is beyond what DEFLATE can expand `gz` to (a
/// corrupt trailer), then 4 times the compressed size.
fn gunzipped_len_hint(gz: &[u8]) -> usize {
    let fallback = gz.len().saturating_mul(4);
    match gz.len().checked_sub(4).map(|at| &gz[at..]) {
        Some(&[a, b, c, d]) if gz.len() >= 18 => {
            let isize = u32::from_le_bytes([a, b, c, d]) as usize;
            if isize <= gz.len().saturating_mul(1032) {
                isize
            } else {
                fallback
            }
        }
        _ => fallback,
    }
}

/// The big-endian magic number at the start of `bytes`, if there are four bytes.
pub fn magic(bytes: &[u8]) -> Option<u32> {
    bytes
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// True when `bytes` start like an IDX file: two zero bytes, a known type code (0x08 unsigned
/// byte, 0x09 signed byte, 0x0B short, 0x0C int, 0x0D float, 0x0E double), 1 to 4 dimensions.
pub fn looks_like_idx(bytes: &[u8]) -> bool {
    matches!(magic(bytes), Some(m) if m >> 16 == 0
        && matches!((m >> 8) & 0xff, 0x08 | 0x09 | 0x0b | 0x0c | 0x0d | 0x0e)
        && (1..=4).contains(&(m & 0xff)))
}

/// Checks the header of an IDX u8 file with `ndim` dimensions and returns the dimensions and
/// the data bytes.
fn parse<'a>(
    path: &Path,
    bytes: &'a [u8],
    ndim: usize,
    what: &str,
) -> Result<(Vec<usize>, &'a [u8])> {
    let want_magic = 0x0800 | ndim as u32;
    let Some(m) = magic(bytes) else {
        return Err(Error::input(
            path,
            format!(
                "IDX {what} file truncated: {} bytes, no header",
                bytes.len()
            ),
        ));
    };
    if m != want_magic {
        let hint = match m {
            IDX_LABELS_MAGIC => "; this is an IDX labels file: pass it with --labels".to_string(),
            IDX_IMAGES_MAGIC => "; this is an IDX images file, not a labels file".to_string(),
            m if m >> 16 == 0 && (m >> 8) & 0xff != 0x08 => format!(
                "; IDX type code 0x{:02x} is not unsigned byte (0x08)",
                (m >> 8) & 0xff
            ),
            _ => String::new(),
        };
        return Err(Error::input(
            path,
            format!("bad IDX magic number 0x{m:08x}, expected 0x{want_magic:08x} for {what}{hint}"),
        ));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(Error::input(
            path,
            format!(
                "IDX {what} file truncated inside its header ({} bytes)",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|k| {
            let b = &bytes[4 + 4 * k..8 + 4 * k];
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
        })
        .collect();
    let want: usize = dims.iter().product();
    let data = &bytes[header..];
    if data.len() < want {
        return Err(Error::input(
            path,
            format!(
                "IDX {what} file truncated: dimensions {dims:?} need {want} bytes of data, found {}",
                data.len()
            ),
        ));
    }
    if data.len() > want {
        return Err(Error::input(
            path,
            format!(
                "IDX {what} file has {} bytes more than dimensions {dims:?} need ({want})",
                data.len() - want
            ),
        ));
    }
    Ok((dims, data))
}

/// Parses (already gunzipped) IDX image bytes: shape `[N, H, W]` and the pixels.
pub fn parse_images(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, Vec<u8>)> {
    let (dims, data) = parse(path, bytes, 3, "images")?;
    Ok((dims, data.to_vec()))
}

/// Parses (already gunzipped) IDX label bytes.
pub fn parse_labels(path: &Path, bytes: &[u8]) -> Result<Vec<usize>> {
    let (_, data) = parse(path, bytes, 1, "labels")?;
    Ok(data.iter().map(|&b| b as usize).collect())
}

/// The labels file that goes with an images file by the MNIST naming convention: the file name
/// with `images` replaced by `labels` and `idx3` by `idx1`, when such a different file exists.
pub fn companion_labels(images: &Path) -> Option<std::path::PathBuf> {
    let name = images.file_name()?.to_str()?;
    let candidate = name.replace("images", "labels").replace("idx3", "idx1");
    if candidate == name {
        return None;
    }
    let path = images.with_file_name(candidate);
    path.is_file().then_some(path)
}
