//! Saving and restoring the memory across restarts.
//!
//! The state file is a safetensors file (F32 tensors, see the crate docs for names and
//! shapes) with one metadata key, [`STATE_METADATA_KEY`], holding a JSON object
//! `{format_version, model_fingerprint, config_hash, inserts, weight, checksum}`.
//! It is written to a unique `<path>.tmp.<pid>.<n>`, fsynced, renamed over `path` and the
//! directory fsynced (`graft_plugin_abi::files`), so a crash leaves either the old file or
//! the new one; only regular files are replaced, and temporary files of killed savers are
//! removed by the next save or restore. Restoring refuses, with
//! a `STATE` error that says which, a file that is torn (truncated, unparsable), whose
//! tensor data does not match its checksum, that was saved against another model
//! (fingerprint) or another configuration (config hash), or whose tensors do not fit.
//!
//! Both hashes are 64-bit FNV-1a: fast, dependency-free, and stable forever (it is part of
//! the file format). It detects corruption, not tampering; state files are trusted input.

use std::fs;
use std::io::Write;
use std::path::Path;

use graft_plugin_abi::{ErrorCode, PluginError};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::sketch::SketchData;

/// The metadata key of a state file.
pub const STATE_METADATA_KEY: &str = "graft.error-memory.state";
/// The state format version this build reads and writes.
pub const STATE_FORMAT_VERSION: u64 = 1;
/// Header bytes allowed on top of the tensor data when reading a state file.
const HEADER_ALLOWANCE: u64 = 1 << 20;
/// Largest global weight a state file may carry.
const MAX_WEIGHT: f64 = 1e30;

/// 64-bit FNV-1a.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    /// Feeds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Feeds f32 values as little-endian bytes.
    pub fn update_f32(&mut self, values: &[f32]) {
        for v in values {
            self.update(&v.to_le_bytes());
        }
    }

    /// The hash so far.
    pub fn finish(self) -> u64 {
        self.0
    }
}

/// What a state file must agree with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity {
    pub fingerprint: u64,
    pub config_hash: u64,
}

/// The tensor layout of a state file for one configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub tables: usize,
    pub buckets: usize,
    pub d: usize,
    pub key_sums: bool,
    /// `Some(capacity)` with the exact estimator.
    pub exact: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateMeta {
    format_version: u64,
    model_fingerprint: String,
    config_hash: String,
    inserts: u64,
    weight: f64,
    checksum: String,
}

fn state_err(path: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::STATE, "state", format!("{path}: {}", message.into()))
}

fn io_err(field: &str, path: &Path, what: &str, e: std::io::Error) -> PluginError {
    PluginError::new(ErrorCode::IO, field, format!("cannot {what} {}: {e}", path.display()))
}

fn hex(x: u64) -> String {
    format!("{x:016x}")
}

impl Layout {
    /// `(name, shape)` of every tensor, for `n` exact samples, in checksum order.
    fn shapes(&self, n: usize) -> Vec<(&'static str, Vec<usize>)> {
        let mut v = vec![("S", vec![self.tables, self.buckets]), ("C", vec![self.tables, self.buckets])];
        if self.key_sums {
            v.push(("K", vec![self.tables, self.buckets, self.d]));
        }
        if self.exact.is_some() {
            v.push(("exact_h", vec![n, self.d]));
            v.push(("exact_e", vec![n]));
        }
        v
    }

    /// Largest tensor data a state file of this layout holds, in bytes.
    fn max_data_bytes(&self) -> u64 {
        let cap = self.exact.unwrap_or(0);
        self.shapes(cap).iter().map(|(_, s)| s.iter().product::<usize>() as u64 * 4).sum()
    }
}

fn data_of<'a>(data: &'a SketchData, name: &str) -> &'a [f32] {
    match name {
        "S" => &data.sums,
        "C" => &data.counts,
        "K" => &data.key_sums,
        "exact_h" => &data.exact_keys,
        _ => &data.exact_errors,
    }
}

/// Writes `bytes` to `path` atomically (`graft_plugin_abi::files`): a unique temporary
/// file in the same directory, fsync, rename, fsync of the directory. Only regular files
/// are replaced; the temporary file is removed on failure, and ones left by killed savers
/// are removed first.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], field: &str) -> Result<(), PluginError> {
    graft_plugin_abi::files::write_atomic(path, |file| file.write_all(bytes))
        .map_err(|e| PluginError::new(ErrorCode::IO, field, format!("cannot save {}: {e}", path.display())))
}

/// Saves `data` to `path`.
pub(crate) fn save(path: &str, data: &SketchData, layout: &Layout, id: &Identity) -> Result<(), PluginError> {
    let n = data.exact_errors.len();
    let shapes = layout.shapes(n);
    let bytes: Vec<Vec<u8>> =
        shapes.iter().map(|(name, _)| data_of(data, name).iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let mut checksum = Fnv1a::default();
    for b in &bytes {
        checksum.update(b);
    }
    let meta = StateMeta {
        format_version: STATE_FORMAT_VERSION,
        model_fingerprint: hex(id.fingerprint),
        config_hash: hex(id.config_hash),
        inserts: data.inserts,
        weight: data.weight,
        checksum: hex(checksum.finish()),
    };
    let meta_json = serde_json::to_string(&meta)
        .map_err(|e| PluginError::new(ErrorCode::INTERNAL, "state", format!("metadata: {e}")))?;
    let mut views = Vec::with_capacity(shapes.len());
    for ((name, shape), b) in shapes.iter().zip(&bytes) {
        let view = TensorView::new(Dtype::F32, shape.clone(), b)
            .map_err(|e| PluginError::new(ErrorCode::INTERNAL, *name, format!("state tensor: {e}")))?;
        views.push((*name, view));
    }
    let metadata = std::collections::HashMap::from([(STATE_METADATA_KEY.to_owned(), meta_json)]);
    let file = safetensors::serialize(views, Some(metadata))
        .map_err(|e| PluginError::new(ErrorCode::INTERNAL, "state", format!("serialize: {e}")))?;
    write_atomic(Path::new(path), &file, "state")
}

/// Reads the state at `path`, checking it against `layout` and `id`.
pub(crate) fn load(path: &str, layout: &Layout, id: &Identity) -> Result<SketchData, PluginError> {
    let p = Path::new(path);
    // Start-up is when a killed saver's temporary file is found; only dead pids' go.
    let _ = graft_plugin_abi::files::remove_stale_temps(p);
    let len = fs::metadata(p).map_err(|e| io_err("state", p, "read", e))?.len();
    let limit = layout.max_data_bytes() + HEADER_ALLOWANCE;
    if len > limit {
        return Err(state_err(path, format!("{len} bytes; a state of this configuration is at most {limit}")));
    }
    let bytes = fs::read(p).map_err(|e| io_err("state", p, "read", e))?;
    let torn = |e: safetensors::SafeTensorError| state_err(path, format!("torn or not a state file: {e}"));
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(torn)?;
    let st = SafeTensors::deserialize(&bytes).map_err(torn)?;
    let meta_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_METADATA_KEY))
        .ok_or_else(|| state_err(path, format!("no `{STATE_METADATA_KEY}` metadata: not an error-memory state")))?;
    let meta: StateMeta = serde_json::from_str(meta_json)
        .map_err(|e| state_err(path, format!("torn metadata `{STATE_METADATA_KEY}`: {e}")))?;
    if meta.format_version != STATE_FORMAT_VERSION {
        return Err(state_err(
            path,
            format!("state format_version {}; this build reads {STATE_FORMAT_VERSION}", meta.format_version),
        ));
    }
    if meta.model_fingerprint != hex(id.fingerprint) {
        return Err(state_err(
            path,
            format!(
                "saved against another model (fingerprint {}, this model's is {}); an error memory is only valid \
                 for the model that made the errors",
                meta.model_fingerprint,
                hex(id.fingerprint)
            ),
        ));
    }
    if meta.config_hash != hex(id.config_hash) {
        return Err(state_err(
            path,
            format!(
                "saved with another configuration (config hash {}, this adapter's is {}): nodes, tables, bits, \
                 projections, estimate, space, logit_eps or exact_capacity differ",
                meta.config_hash,
                hex(id.config_hash)
            ),
        ));
    }

    // The exact sample count is the only free dimension; read it from the file.
    let n = match layout.exact {
        Some(cap) => {
            let t = st.tensor("exact_e").map_err(|_| state_err(path, "missing tensor `exact_e`"))?;
            match t.shape() {
                [n] if *n <= cap => *n,
                s => return Err(state_err(path, format!("`exact_e` has shape {s:?}; expected [n] with n ≤ {cap}"))),
            }
        }
        None => 0,
    };
    let shapes = layout.shapes(n);
    if let Some(extra) = st.names().into_iter().find(|name| !shapes.iter().any(|(s, _)| s == name)) {
        return Err(state_err(path, format!("unexpected tensor `{extra}` for this configuration")));
    }
    let mut checksum = Fnv1a::default();
    let mut values: Vec<Vec<f32>> = Vec::with_capacity(shapes.len());
    for (name, shape) in &shapes {
        let t = st.tensor(name).map_err(|_| state_err(path, format!("missing tensor `{name}`")))?;
        if t.dtype() != Dtype::F32 {
            return Err(state_err(path, format!("tensor `{name}` is {:?}; expected F32", t.dtype())));
        }
        if t.shape() != shape.as_slice() {
            return Err(state_err(path, format!("tensor `{name}` has shape {:?}; expected {shape:?}", t.shape())));
        }
        checksum.update(t.data());
        values.push(t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect());
    }
    if meta.checksum != hex(checksum.finish()) {
        return Err(state_err(
            path,
            format!(
                "checksum mismatch (file says {}, data hashes to {}): corrupted",
                meta.checksum,
                hex(checksum.finish())
            ),
        ));
    }
    for ((name, _), v) in shapes.iter().zip(&values) {
        if let Some(i) = v.iter().position(|x| !x.is_finite() || (*name == "C" && *x < 0.0)) {
            return Err(state_err(path, format!("tensor `{name}` holds {} at flat index {i}", v[i])));
        }
    }
    if !(meta.weight.is_finite() && (1.0..=MAX_WEIGHT).contains(&meta.weight)) {
        return Err(state_err(path, format!("weight {} is not in [1, {MAX_WEIGHT:e}]", meta.weight)));
    }
    let mut it = values.into_iter();
    let mut next = || it.next().unwrap_or_default();
    let (sums, counts) = (next(), next());
    let key_sums = if layout.key_sums { next() } else { Vec::new() };
    let (exact_keys, exact_errors) = if layout.exact.is_some() { (next(), next()) } else { (Vec::new(), Vec::new()) };
    Ok(SketchData { sums, counts, key_sums, exact_keys, exact_errors, inserts: meta.inserts, weight: meta.weight })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_reference_values() {
        // Published FNV-1a 64 test vectors.
        let h = |s: &str| {
            let mut f = Fnv1a::default();
            f.update(s.as_bytes());
            f.finish()
        };
        assert_eq!(h(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(h("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(h("foobar"), 0x8594_4171_f739_67e8);
    }
}
