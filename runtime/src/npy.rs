//! Minimal `.npy` reading and writing (NumPy format versions 1–3, C order).
//!
//! Enough for the CLI and tests to exchange inputs and outputs with Python: f32 and i64
//! arrays (i32 is widened to i64 on read), little-endian, C order, any rank.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// The values of a `.npy` array.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    /// `<f4`.
    F32(Vec<f32>),
    /// `<i8` (or `<i4`, widened).
    I64(Vec<i64>),
}

/// An array read from a `.npy` file.
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    /// Shape (C order).
    pub shape: Vec<usize>,
    /// Values.
    pub data: NpyData,
}

const MAGIC: &[u8] = b"\x93NUMPY";

/// The largest `.npy` header [`read`] accepts (NumPy itself writes a few hundred bytes).
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// The largest array [`read`] accepts, in bytes of data.
pub const MAX_DATA_BYTES: u64 = 1 << 36;

/// Reads a `.npy` file: the header first, then exactly the bytes its shape needs, so a
/// device (`/dev/zero`), a pipe or a file whose header promises more than it holds is
/// refused with [`Error::Npy`] instead of being read until memory runs out.
pub fn read(path: &Path) -> Result<NpyArray> {
    use std::io::Read;
    let npy = |detail: String| Error::Npy { path: path.display().to_string(), detail };
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let size = file.metadata().ok().filter(|m| m.is_file()).map(|m| m.len());
    let mut bytes = Vec::new();
    let mut take = |bytes: &mut Vec<u8>, n: usize| -> Result<()> {
        let before = bytes.len();
        bytes
            .try_reserve_exact(n)
            .map_err(|_| Error::OutOfMemory { what: path.display().to_string(), bytes: n as u128 })?;
        (&mut file).take(n as u64).read_to_end(bytes).map_err(|e| Error::io(path, e))?;
        if bytes.len() - before < n {
            return Err(npy(format!("truncated: {} bytes, the header needs {}", bytes.len(), before + n)));
        }
        Ok(())
    };
    take(&mut bytes, 10)?;
    if &bytes[..6] != MAGIC {
        return Err(npy("not a .npy file (bad magic)".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            take(&mut bytes, 2)?;
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(npy(format!("unsupported .npy version {v}"))),
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(npy(format!("header of {header_len} bytes (limit {MAX_HEADER_BYTES})")));
    }
    take(&mut bytes, header_len)?;
    let (descr, shape) = header_fields(&bytes[start..]).map_err(npy)?;
    let item = match descr.as_str() {
        "<f4" | "<i4" => 4u64,
        "<i8" => 8,
        other => return Err(npy(format!("dtype `{other}` is not supported (use float32 or int64)"))),
    };
    let data = shape.iter().try_fold(item, |a, &d| a.checked_mul(d as u64)).filter(|&n| n <= MAX_DATA_BYTES);
    let data =
        data.ok_or_else(|| npy(format!("shape {shape:?} of {descr} exceeds the {MAX_DATA_BYTES}-byte limit")))?;
    if let Some(size) = size
        && size < (start + header_len) as u64 + data
    {
        return Err(npy(format!(
            "file holds {size} bytes, shape {shape:?} of {descr} needs {}",
            start + header_len + data as usize
        )));
    }
    take(&mut bytes, data as usize)?;
    parse(&bytes).map_err(npy)
}

/// The dtype and shape of a header (the text after the length field).
fn header_fields(header: &[u8]) -> core::result::Result<(String, Vec<usize>), String> {
    let header = std::str::from_utf8(header).map_err(|_| "header is not UTF-8")?;
    let descr = dict_value(header, "descr").ok_or("header has no 'descr'")?;
    let shape_str = dict_value(header, "shape").ok_or("header has no 'shape'")?;
    let shape = shape_str
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape entry `{s}`")))
        .collect::<core::result::Result<Vec<_>, _>>()?;
    Ok((descr.trim().trim_matches(|c| c == '\'' || c == '"').to_string(), shape))
}

/// Parses `.npy` bytes.
pub fn parse(bytes: &[u8]) -> core::result::Result<NpyArray, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let major = bytes[6];
    let (header_len, start): (usize, usize) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            let b = bytes.get(8..12).ok_or("truncated header length")?;
            (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header_bytes = bytes.get(start..start.saturating_add(header_len)).ok_or("truncated header")?;
    let (descr, shape) = header_fields(header_bytes)?;
    let header = std::str::from_utf8(header_bytes).map_err(|_| "header is not UTF-8")?;
    let fortran = dict_value(header, "fortran_order").ok_or("header has no 'fortran_order'")?;
    if fortran.trim() != "False" {
        return Err("Fortran-order arrays are not supported".into());
    }
    let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    let body = &bytes[start + header_len..];
    let descr = descr.as_str();
    let need = |size: usize| -> core::result::Result<&[u8], String> {
        let n = count.checked_mul(size).ok_or("size overflows")?;
        body.get(..n).ok_or_else(|| format!("data holds {} bytes, shape {shape:?} needs {n}", body.len()))
    };
    let data = match descr {
        "<f4" => NpyData::F32(need(4)?.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        "<i8" => {
            NpyData::I64(need(8)?.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
        }
        "<i4" => NpyData::I64(
            need(4)?.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
        ),
        other => return Err(format!("dtype `{other}` is not supported (use float32 or int64)")),
    };
    Ok(NpyArray { shape, data })
}

/// Finds `'key': value` in a Python dict literal; the value ends at the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("'{key}':");
    let start = header.find(&pat)? + pat.len();
    let rest = &header[start..];
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

/// Writes an f32 array as `.npy` (version 1.0).
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_raw(path, "<f4", shape, bytemuck::cast_slice(data))
}

/// Writes an i64 array as `.npy` (version 1.0).
pub fn write_i64(path: &Path, shape: &[usize], data: &[i64]) -> Result<()> {
    write_raw(path, "<i8", shape, bytemuck::cast_slice(data))
}

fn write_raw(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let shape_str = match shape {
        [n] => format!("({n},)"),
        dims => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    let total = 10 + header.len() + 1;
    header.extend(std::iter::repeat_n(' ', total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::File::create(path).and_then(|mut f| f.write_all(&out)).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_f32() {
        let dir = std::env::temp_dir().join(format!("graft-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let p = dir.join("a.npy");
        write_f32(&p, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("write");
        let a = read(&p).expect("read");
        assert_eq!(a.shape, vec![2, 3]);
        assert_eq!(a.data, NpyData::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn devices_and_lying_headers_are_refused_without_reading_them_whole() {
        // /dev/zero never ends: the magic check stops the read after 10 bytes.
        let e = read(Path::new("/dev/zero")).expect_err("/dev/zero is no .npy");
        assert!(e.to_string().contains("bad magic"), "{e}");
        let dir = std::env::temp_dir().join(format!("graft-npy-guard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        // A header promising 2^40 floats over a file of a few bytes.
        let p = dir.join("huge.npy");
        let header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }\n";
        let mut lying = MAGIC.to_vec();
        lying.extend_from_slice(&[1, 0]);
        lying.extend_from_slice(&(header.len() as u16).to_le_bytes());
        lying.extend_from_slice(header);
        lying.extend_from_slice(&[0; 8]);
        std::fs::write(&p, &lying).expect("write");
        let e = read(&p).expect_err("lying header");
        assert!(e.to_string().contains("exceeds") || e.to_string().contains("needs"), "{e}");
        // A header within the limit but longer than the file: truncated, typed.
        write_f32(&p, &[4], &[1.0, 2.0, 3.0, 4.0]).expect("write");
        let bytes = std::fs::read(&p).expect("read back");
        std::fs::write(&p, &bytes[..bytes.len() - 3]).expect("truncate");
        let e = read(&p).expect_err("truncated");
        assert!(matches!(e, Error::Npy { .. }) && e.to_string().contains("needs"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"hello world").is_err());
        assert!(parse(b"\x93NUMPY\x01\x00\xff\x00{").is_err());
    }
}
