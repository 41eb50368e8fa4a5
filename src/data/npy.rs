//! NPY files: a hand-written reader for header versions 1 to 3 (C order; float32, uint8 and the
//! integer types used for labels) and a writer for float32 arrays (NPY v1.0, `'<f4'`, C order).
//!
//! Format reference: numpy's `numpy.lib.format` documentation. The header is a Python dict
//! literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (10, 28, 28), }`.

use std::path::Path;

use crate::{Error, Result};

/// The six magic bytes every NPY file starts with.
pub const NPY_MAGIC: &[u8; 6] = b"\x93NUMPY";

/// The element data of an NPY file, converted to host order.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// `'<f4'` or `'>f4'`.
    F32(Vec<f32>),
    /// `'|u1'`.
    U8(Vec<u8>),
    /// Any other integer type (`i1`, `i2`, `i4`, `i8`, `u2`, `u4`, `u8`), widened; used for labels.
    Int(Vec<i64>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::Int(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Element types this reader understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    F32 {
        big_endian: bool,
    },
    U8,
    Int {
        size: usize,
        signed: bool,
        big_endian: bool,
    },
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F32 { .. } => 4,
            Elem::U8 => 1,
            Elem::Int { size, .. } => size,
        }
    }
}

/// Reads an NPY file: its shape and its data in C order.
pub fn read_npy(path: &Path) -> Result<(Vec<usize>, NpyData)> {
    let bytes = std::fs::read(path).map_err(|e| Error::unreadable(path, e))?;
    parse_npy(path, &bytes)
}

/// Parses the bytes of an NPY file; `path` only names the file in errors.
pub fn parse_npy(path: &Path, bytes: &[u8]) -> Result<(Vec<usize>, NpyData)> {
    let bad = |m: String| Error::input(path, m);
    if bytes.len() < 10 || &bytes[..6] != NPY_MAGIC {
        return Err(bad(
            "not an NPY file: it does not start with the magic bytes \\x93NUMPY".into(),
        ));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (header_len, header_start) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10usize),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("NPY file truncated inside its header".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        _ => {
            return Err(bad(format!(
                "NPY format version {major}.{minor} is not supported; expected 1.0, 2.0 or 3.0"
            )))
        }
    };
    let data_start = header_start
        .checked_add(header_len)
        .filter(|&end| end <= bytes.len())
        .ok_or_else(|| {
            bad(format!(
                "NPY file truncated: the header says it is {header_len} bytes long, \
                 but the file has only {} bytes after the preamble",
                bytes.len() - header_start
            ))
        })?;
    let header = std::str::from_utf8(&bytes[header_start..data_start])
        .map_err(|_| bad("NPY header is not valid text".into()))?;
    let Header {
        descr,
        fortran_order,
        shape,
    } = parse_header(header).map_err(|m| bad(format!("NPY header {header:?}: {m}")))?;

    let elem = parse_descr(&descr).ok_or_else(|| {
        bad(format!(
            "NPY dtype '{descr}' is not supported; expected '<f4' (float32) or '|u1' (uint8); \
             convert with np.save(path, x.astype(np.float32))"
        ))
    })?;
    if fortran_order && shape.iter().filter(|&&d| d > 1).count() > 1 {
        return Err(bad(
            "NPY array is in Fortran order; expected C order: save np.ascontiguousarray(x)".into(),
        ));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("NPY shape {shape:?} is too large")))?;
    let want = count
        .checked_mul(elem.size())
        .ok_or_else(|| bad(format!("NPY shape {shape:?} is too large")))?;
    let data = &bytes[data_start..];
    if data.len() < want {
        return Err(bad(format!(
            "NPY data truncated: shape {shape:?} of '{descr}' needs {want} bytes, the file holds {}",
            data.len()
        )));
    }
    if data.len() > want {
        return Err(bad(format!(
            "NPY data has {} bytes more than shape {shape:?} of '{descr}' needs ({want} bytes)",
            data.len() - want
        )));
    }
    Ok((shape, decode(elem, data)))
}

fn decode(elem: Elem, data: &[u8]) -> NpyData {
    match elem {
        Elem::U8 => NpyData::U8(data.to_vec()),
        Elem::F32 { big_endian } => NpyData::F32(
            data.chunks_exact(4)
                .map(|c| {
                    let b = [c[0], c[1], c[2], c[3]];
                    if big_endian {
                        f32::from_be_bytes(b)
                    } else {
                        f32::from_le_bytes(b)
                    }
                })
                .collect(),
        ),
        Elem::Int {
            size,
            signed,
            big_endian,
        } => NpyData::Int(
            data.chunks_exact(size)
                .map(|c| {
                    let mut b = [0u8; 8];
                    // Gather the bytes little-endian first, then sign-extend.
                    for (k, slot) in b.iter_mut().take(size).enumerate() {
                        *slot = if big_endian { c[size - 1 - k] } else { c[k] };
                    }
                    if signed && b[size - 1] & 0x80 != 0 {
                        for slot in b.iter_mut().skip(size) {
                            *slot = 0xff;
                        }
                    }
                    let v = u64::from_le_bytes(b);
                    if !signed && size == 8 && v > i64::MAX as u64 {
                        // Out of range for i64: saturate; callers refuse it as a negative/huge label.
                        i64::MAX
                    } else {
                        v as i64
                    }
                })
                .collect(),
        ),
    }
}

/// Maps a numpy type string to an element type this reader handles.
fn parse_descr(descr: &str) -> Option<Elem> {
    let (order, kind) = match descr.chars().next()? {
        c @ ('<' | '>' | '=' | '|') => (c, &descr[1..]),
        _ => ('=', descr),
    };
    // '=' means native; every target taylormap builds for is little-endian.
    let big_endian = order == '>';
    match kind {
        "f4" => Some(Elem::F32 { big_endian }),
        "u1" => Some(Elem::U8),
        "i1" => Some(Elem::Int {
            size: 1,
            signed: true,
            big_endian,
        }),
        "i2" | "i4" | "i8" | "u2" | "u4" | "u8" => Some(Elem::Int {
            size: kind[1..].parse().ok()?,
            signed: kind.starts_with('i'),
            big_endian,
        }),
        _ => None,
    }
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// A value of the small Python-literal subset NPY headers use.
#[derive(Debug)]
enum Lit {
    Str(String),
    Bool(bool),
    Int(u64),
    Tuple(Vec<Lit>),
    Other,
}

/// Parses `{'descr': ..., 'fortran_order': ..., 'shape': (...), }`.
fn parse_header(text: &str) -> std::result::Result<Header, String> {
    let mut p = Lexer {
        s: text.trim_end().as_bytes(),
        i: 0,
    };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        p.skip_ws();
        if p.eat(b'}') {
            break;
        }
        let key = match p.value()? {
            Lit::Str(k) => k,
            other => return Err(format!("expected a string key, found {other:?}")),
        };
        p.skip_ws();
        p.expect(b':')?;
        let value = p.value()?;
        match (key.as_str(), value) {
            ("descr", Lit::Str(s)) => descr = Some(s),
            ("descr", v) => {
                return Err(format!(
                    "'descr' is {v:?}; structured dtypes are not supported"
                ))
            }
            ("fortran_order", Lit::Bool(b)) => fortran = Some(b),
            ("shape", Lit::Tuple(items)) => {
                let dims = items
                    .into_iter()
                    .map(|d| match d {
                        Lit::Int(n) => usize::try_from(n).map_err(|_| "dimension too large".into()),
                        other => Err(format!("shape holds {other:?}, expected integers")),
                    })
                    .collect::<std::result::Result<Vec<_>, String>>()?;
                shape = Some(dims);
            }
            (k @ ("fortran_order" | "shape"), v) => {
                return Err(format!("'{k}' has an unexpected value {v:?}"))
            }
            _ => {}
        }
        p.skip_ws();
        if !p.eat(b',') {
            p.skip_ws();
            p.expect(b'}')?;
            break;
        }
    }
    Ok(Header {
        descr: descr.ok_or("no 'descr' key")?,
        fortran_order: fortran.ok_or("no 'fortran_order' key")?,
        shape: shape.ok_or("no 'shape' key")?,
    })
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl Lexer<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        self.skip_ws();
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected '{}' at byte {}", c as char, self.i))
        }
    }

    fn value(&mut self) -> std::result::Result<Lit, String> {
        self.skip_ws();
        let Some(&c) = self.s.get(self.i) else {
            return Err("unexpected end".into());
        };
        match c {
            b'\'' | b'"' => {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i] != c {
                    self.i += 1;
                }
                if self.i == self.s.len() {
                    return Err("unterminated string".into());
                }
                let text = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                self.i += 1;
                Ok(Lit::Str(text))
            }
            b'(' | b'[' => {
                let close = if c == b'(' { b')' } else { b']' };
                self.i += 1;
                let mut items = vec![];
                loop {
                    self.skip_ws();
                    if self.eat(close) {
                        break;
                    }
                    items.push(self.value()?);
                    self.skip_ws();
                    if !self.eat(b',') {
                        self.expect(close)?;
                        break;
                    }
                }
                Ok(Lit::Tuple(items))
            }
            b'0'..=b'9' => {
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                // numpy may write Python 2 longs such as `10L`.
                self.eat(b'L');
                std::str::from_utf8(&self.s[start..self.i])
                    .unwrap_or_default()
                    .trim_end_matches('L')
                    .parse()
                    .map(Lit::Int)
                    .map_err(|_| "integer too large".into())
            }
            _ => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_')
                {
                    self.i += 1;
                }
                match &self.s[start..self.i] {
                    b"True" => Ok(Lit::Bool(true)),
                    b"False" => Ok(Lit::Bool(false)),
                    b"" => Err(format!("unexpected character '{}'", c as char)),
                    _ => Ok(Lit::Other),
                }
            }
        }
    }
}

/// The bytes of an NPY v1.0 file holding `data` (float32, little-endian, C order) of `shape`.
///
/// The header is padded with spaces so that the data starts on a 64-byte boundary, as numpy does.
///
/// # Panics
/// When `data.len()` is not the product of `shape`: that is a bug in the caller, not bad input.
pub fn npy_bytes_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    let count: usize = shape.iter().product();
    assert_eq!(
        count,
        data.len(),
        "npy_bytes_f32: shape {shape:?} holds {count} elements, data has {}",
        data.len()
    );
    let mut out = npy_header_f32(shape);
    out.reserve(4 * data.len());
    out.extend_from_slice(&f32_le_bytes(data));
    out
}

/// Little-endian bytes of `data`, as they follow an NPY header: the memory itself on a
/// little-endian machine, a converted copy elsewhere.
pub fn f32_le_bytes(data: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(data))
    } else {
        std::borrow::Cow::Owned(data.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// The NPY v1.0 header (magic, version, length, dictionary, padding) of a float32 C-order array
/// of `shape`: the data follows it directly, for writers that stream the data.
pub fn npy_header_f32(shape: &[usize]) -> Vec<u8> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    // Preamble (10 bytes) + header + '\n' must be a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.extend(std::iter::repeat_n(
        ' ',
        unpadded.next_multiple_of(64) - unpadded,
    ));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(NPY_MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parser_reads_numpy_spellings() {
        let h = parse_header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }   \n")
            .unwrap();
        assert_eq!(
            (h.descr.as_str(), h.fortran_order, h.shape),
            ("<f4", false, vec![3, 4])
        );
        let h = parse_header("{\"shape\": (7L,), \"fortran_order\": True, \"descr\": \"|u1\"}")
            .unwrap();
        assert_eq!(
            (h.descr.as_str(), h.fortran_order, h.shape),
            ("|u1", true, vec![7])
        );
        assert!(parse_header("{'descr': '<f4', 'shape': (3,)}").is_err());
        assert!(
            parse_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': ()}").is_err()
        );
    }

    #[test]
    fn descr_parser_knows_only_what_it_decodes() {
        assert_eq!(parse_descr("<f4"), Some(Elem::F32 { big_endian: false }));
        assert_eq!(parse_descr(">f4"), Some(Elem::F32 { big_endian: true }));
        assert_eq!(parse_descr("|u1"), Some(Elem::U8));
        assert!(matches!(
            parse_descr("<i8"),
            Some(Elem::Int {
                size: 8,
                signed: true,
                ..
            })
        ));
        for bad in ["<f8", "<f2", "|b1", "<c8", "|O", "<U3", ""] {
            assert_eq!(parse_descr(bad), None, "{bad}");
        }
    }

    #[test]
    fn signed_integers_are_sign_extended() {
        let data: Vec<u8> = [-3i16, 5, -1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let got = decode(
            Elem::Int {
                size: 2,
                signed: true,
                big_endian: false,
            },
            &data,
        );
        assert_eq!(got, NpyData::Int(vec![-3, 5, -1]));
    }
}
