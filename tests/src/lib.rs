//! Shared helpers for the integration tests.
//!
//! The parity tests compare graft with three references — the torch outputs stored in
//! the fixtures, ONNX Runtime and tract — on the same inputs. This crate holds what they
//! share and what needs no test-only dependency: fixture paths, readers for the headerless
//! `.f32` / `.i64` fixture arrays, error statistics, and the policy for a missing ONNX
//! Runtime library (skip locally, fail in CI). Everything that links ONNX Runtime or tract
//! lives with the tests themselves (`tests/common`), since those crates are
//! dev-dependencies.

pub mod movielens;
pub mod plugin_builds;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The fixture directory (`tests/fixtures`), resolved at compile time so tests run from
/// any working directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A file or folder inside the fixtures, e.g. `fixture("dlrm_small/dense.f32")`.
pub fn fixture(relative: &str) -> PathBuf {
    fixtures().join(relative)
}

fn read_exact_multiple(path: &Path, size: usize) -> io::Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if bytes.len() % size != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {} bytes is not a whole number of {size}-byte elements", path.display(), bytes.len()),
        ));
    }
    Ok(bytes)
}

/// Reads a raw little-endian f32 array (no header).
pub fn read_f32(path: &Path) -> io::Result<Vec<f32>> {
    let bytes = read_exact_multiple(path, 4)?;
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Reads a raw little-endian i64 array (no header).
pub fn read_i64(path: &Path) -> io::Result<Vec<i64>> {
    let bytes = read_exact_multiple(path, 8)?;
    Ok(bytes.chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect())
}

/// Differences between a result and a reference of the same length.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Diff {
    /// Largest |a − b|.
    pub max_abs: f32,
    /// Mean |a − b|.
    pub mean_abs: f32,
    /// Largest |a − b| / max(1, |b|).
    pub max_rel: f32,
    /// Index of the largest |a − b|.
    pub argmax: usize,
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "max |Δ| {:.3e} (at {}), mean |Δ| {:.3e}", self.max_abs, self.argmax, self.mean_abs)
    }
}

/// Compares `got` with `want`. A length mismatch or a NaN reports an infinite difference.
pub fn diff(got: &[f32], want: &[f32]) -> Diff {
    if got.len() != want.len() || got.is_empty() {
        return Diff { max_abs: f32::INFINITY, mean_abs: f32::INFINITY, max_rel: f32::INFINITY, argmax: 0 };
    }
    let mut d = Diff::default();
    let mut sum = 0.0f64;
    for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
        let e = if a.is_nan() || b.is_nan() { f32::INFINITY } else { (a - b).abs() };
        if e > d.max_abs || i == 0 {
            d.max_abs = e;
            d.argmax = i;
        }
        d.max_rel = d.max_rel.max(e / b.abs().max(1.0));
        sum += f64::from(e);
    }
    d.mean_abs = (sum / got.len() as f64) as f32;
    d
}

/// The environment variable naming the ONNX Runtime shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// Whether this run is CI, where a missing ONNX Runtime is a failure, not a skip.
pub fn ci_requires_peers() -> bool {
    std::env::var("GRAFT_CI").is_ok_and(|v| v == "1")
}

/// The ONNX Runtime library named by `ORT_DYLIB_PATH`, if it is set and exists.
pub fn ort_dylib_path() -> Result<PathBuf, String> {
    let path =
        std::env::var_os(ORT_DYLIB_ENV).filter(|p| !p.is_empty()).ok_or(format!("{ORT_DYLIB_ENV} is not set"))?;
    let path = PathBuf::from(path);
    if !path.is_file() {
        return Err(format!("{ORT_DYLIB_ENV}={} is not a file", path.display()));
    }
    Ok(path)
}

/// Reports that ONNX Runtime is unavailable to `test`: prints the skip line, or panics
/// when `GRAFT_CI=1` so CI cannot pass without the peer.
pub fn ort_unavailable(test: &str, why: &str) {
    assert!(!ci_requires_peers(), "{test}: ONNX Runtime is required when GRAFT_CI=1, but {why}");
    println!("SKIP: {test}: ONNX Runtime library not found (set {ORT_DYLIB_ENV})");
    eprintln!("      ({why})");
}
