//! Turning a PEFT IA3 directory (or its two files' bytes) into a validated [`Ia3Adapter`].
//!
//! Validation happens here, once, so the hooks can trust every shape: each tensor key must
//! be an `ia3_l` vector, each module path is resolved through the host, the vector's shape
//! is checked against the node and the config's feedforward rule, every value is checked
//! finite, and feedforward modules get their `W·diag(l − 1)` cache from the host's base
//! rows. Every failure names the field, tensor or file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use abi_stable::std_types::{RSliceMut, RStr};
use graft_plugin_abi::{ErrorCode, LoadRequest, ModelViewRef, NodeInfo, NodeOp, PluginError};
use safetensors::{Dtype, SafeTensors};

use crate::adapter::{Ia3Adapter, Module, Scaling};
use crate::config::{Ia3Config, MAX_CONFIG_BYTES, config_err, parse_config, parse_options};

/// The config file name in a PEFT directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The tensor file name in a PEFT directory.
pub const TENSOR_FILE: &str = "adapter_model.safetensors";
/// PEFT's legacy pickle, which is refused.
pub const LEGACY_FILE: &str = "adapter_model.bin";
/// Largest tensor file accepted (IA3 vectors of a 70B model take a few MB).
pub const MAX_TENSOR_BYTES: u64 = 1 << 30;
/// Every tensor key starts with this and ends with [`KEY_SUFFIX`].
const KEY_PREFIX: &str = "base_model.model.";
const KEY_SUFFIX: &str = ".ia3_l";

fn tensor_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::TENSOR, field, message)
}

fn shape_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::SHAPE, field, message)
}

/// Loads a PEFT IA3 directory (`request.source`) against `model`.
pub fn load_dir(request: &LoadRequest<'_>, model: &ModelViewRef<'_>) -> Result<Ia3Adapter, PluginError> {
    let source = request.source.as_str();
    let dir = Path::new(source);
    if !dir.is_dir() {
        return Err(PluginError::new(ErrorCode::IO, source, "not a directory (expected a PEFT adapter directory)"));
    }
    parse_options(request.options.as_str())?;
    let tensor_path = dir.join(TENSOR_FILE);
    if !tensor_path.exists() && dir.join(LEGACY_FILE).exists() {
        return Err(PluginError::new(
            ErrorCode::UNSUPPORTED,
            LEGACY_FILE,
            "legacy pickle adapter_model.bin is not supported; re-save with safe_serialization=True",
        ));
    }
    let config = parse_config(&read_capped(&dir.join(CONFIG_FILE), CONFIG_FILE, MAX_CONFIG_BYTES)?)?;
    if !tensor_path.exists() {
        return Err(PluginError::new(ErrorCode::IO, TENSOR_FILE, format!("missing in {source}")));
    }
    let bytes = read_capped(&tensor_path, TENSOR_FILE, MAX_TENSOR_BYTES)?;
    if bytes.len() as u64 > MAX_TENSOR_BYTES {
        return Err(tensor_err(TENSOR_FILE, format!("larger than the {MAX_TENSOR_BYTES}-byte limit")));
    }
    build(source, &bytes, &config, model)
}

/// Loads an adapter from the bytes of its two files (tests and fuzzing; the same
/// validation as [`load_dir`]).
pub fn load_bytes(
    id: &str,
    config_json: &[u8],
    safetensors: &[u8],
    options_json: &str,
    model: &ModelViewRef<'_>,
) -> Result<Ia3Adapter, PluginError> {
    parse_options(options_json)?;
    let config = parse_config(config_json)?;
    build(&format!("<memory:{id}>"), safetensors, &config, model)
}

/// Reads at most `cap + 1` bytes (the caller's size check then fails cleanly).
fn read_capped(path: &Path, field: &str, cap: u64) -> Result<Vec<u8>, PluginError> {
    let file = File::open(path)
        .map_err(|e| PluginError::new(ErrorCode::IO, field, format!("cannot open {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| PluginError::new(ErrorCode::IO, field, format!("cannot read {}: {e}", path.display())))?;
    Ok(bytes)
}

/// IEEE binary16 to f32 (exact; no dependency for eight lines).
fn f16_to_f32(h: u16) -> f32 {
    let negative = h & 0x8000 != 0;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    let magnitude = match exp {
        0 => mant as f32 * f32::from_bits(0x3380_0000), // subnormal: mant · 2⁻²⁴
        0x1f => f32::from_bits(0x7f80_0000 | (mant << 13)),
        e => f32::from_bits(((e + 112) << 23) | (mant << 13)),
    };
    if negative { -magnitude } else { magnitude }
}

/// A vector's values as f32.
fn values(key: &str, dtype: Dtype, data: &[u8]) -> Result<Vec<f32>, PluginError> {
    let v = match dtype {
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        Dtype::BF16 => {
            data.chunks_exact(2).map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)).collect()
        }
        other => return Err(tensor_err(key, format!("dtype {other:?} is not supported (F32, F16 or BF16)"))),
    };
    Ok(v)
}

/// Decides output vs feedforward scaling from the vector's shape and the config's rule.
fn classify(
    key: &str,
    path: &str,
    shape: &[usize],
    node: &NodeInfo,
    config: &Ia3Config,
) -> Result<Scaling, PluginError> {
    let (inf, out) = (node.in_features, node.out_features);
    let as_output = shape == [out, 1];
    let as_input = shape == [1, inf];
    match (config.feedforward.classify(path), as_output, as_input) {
        (_, false, false) => Err(shape_err(
            key,
            format!(
                "expected [{out}, 1] (output scaling) or [1, {inf}] (feedforward) for node `{}` ({inf}→{out}), found {shape:?}",
                node.name
            ),
        )),
        (Some(true), _, true) | (None, false, true) => Ok(Scaling::Feedforward),
        (Some(false), true, _) | (None, true, false) => Ok(Scaling::Output),
        (Some(true), true, false) => Err(config_err(
            "feedforward_modules",
            format!("`{path}` is listed as feedforward but `{key}` has the output-scaling shape {shape:?}"),
        )),
        (Some(false), false, true) => Err(config_err(
            "feedforward_modules",
            format!("`{path}` is not listed as feedforward but `{key}` has the feedforward shape {shape:?}"),
        )),
        (None, true, true) => Err(PluginError::new(
            ErrorCode::UNSUPPORTED,
            "feedforward_modules",
            format!(
                "`{path}` is a 1→1 layer, so its [1, 1] vector does not say whether it is feedforward; \
                 give feedforward_modules as a list of names (a regex is not evaluated by this kind)"
            ),
        )),
    }
}

/// `W·diag(l − 1)` (`out × in`, row-major) from the host's dequantized base rows.
fn delta_weight(model: &ModelViewRef<'_>, node: &NodeInfo, path: &str, l: &[f32]) -> Result<Vec<f32>, PluginError> {
    let (inf, out) = (node.in_features, node.out_features);
    let n = out
        .checked_mul(inf)
        .ok_or_else(|| shape_err(path, format!("layer {inf}→{out} is too large for a feedforward cache")))?;
    let mut w: Vec<f32> = Vec::new();
    w.try_reserve_exact(n).map_err(|_| {
        PluginError::new(
            ErrorCode::UNSUPPORTED,
            path,
            format!("cannot allocate the {}-byte feedforward cache of layer {inf}→{out}", n.saturating_mul(4)),
        )
    })?;
    w.resize(n, 0.0);
    if inf == 0 {
        return Ok(w);
    }
    for (o, row) in w.chunks_exact_mut(inf).enumerate() {
        model.base_weight_row(node.node, o, RSliceMut::from_mut_slice(row)).into_result()?;
        if let Some(i) = row.iter().position(|v| !v.is_finite()) {
            return Err(PluginError::new(
                ErrorCode::NOT_FINITE,
                path,
                format!("base weight of node `{}` is {} at row {o}, column {i}", node.name, row[i]),
            ));
        }
        for (w, &li) in row.iter_mut().zip(l) {
            *w *= li - 1.0;
        }
    }
    Ok(w)
}

fn build(source: &str, bytes: &[u8], config: &Ia3Config, model: &ModelViewRef<'_>) -> Result<Ia3Adapter, PluginError> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| tensor_err(TENSOR_FILE, format!("not a valid safetensors file: {e}")))?;
    // Sorted by module path: target order does not depend on the file's key order.
    let mut by_path = BTreeMap::new();
    for (key, view) in st.tensors() {
        let path = key.strip_prefix(KEY_PREFIX).and_then(|r| r.strip_suffix(KEY_SUFFIX)).filter(|p| !p.is_empty());
        let Some(path) = path else {
            return Err(tensor_err(&key, format!("not a PEFT IA3 key (expected `{KEY_PREFIX}<module>{KEY_SUFFIX}`)")));
        };
        by_path.insert(path.to_owned(), (key.clone(), view));
    }
    if by_path.is_empty() {
        return Err(tensor_err(TENSOR_FILE, "no ia3_l tensors: the adapter changes nothing"));
    }

    let mut modules: Vec<Module> = Vec::with_capacity(by_path.len());
    let mut owned = 0u64;
    for (path, (key, view)) in by_path {
        let shape = view.shape().to_vec();
        let l = values(&key, view.dtype(), view.data())?;
        if shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) != Some(l.len()) {
            return Err(tensor_err(&key, format!("shape {shape:?} does not match its {} values", l.len())));
        }
        if let Some(i) = l.iter().position(|v| !v.is_finite()) {
            return Err(PluginError::new(
                ErrorCode::NOT_FINITE,
                key.as_str(),
                format!("value at index {i} is {}", l[i]),
            ));
        }
        let node: NodeInfo = model.resolve(RStr::from_str(&path)).into_result()?;
        if node.op != NodeOp::Linear {
            return Err(PluginError::new(
                ErrorCode::UNSUPPORTED,
                path.as_str(),
                format!(
                    "module resolves to node `{}` ({:?}); (IA)³ attaches to linear layers only",
                    node.name, node.op
                ),
            ));
        }
        if let Some(prev) = modules.iter().find(|m| m.node == node.node) {
            return Err(config_err(
                &path,
                format!("modules `{}` and `{path}` resolve to the same node `{}`", prev.path, node.name),
            ));
        }
        let scaling = classify(&key, &path, &shape, &node, config)?;
        let delta = match scaling {
            Scaling::Output => Vec::new(),
            Scaling::Feedforward => delta_weight(model, &node, &path, &l)?,
        };
        owned += ((l.len() + delta.len()) * 4) as u64;
        modules.push(Module {
            stored_bytes: view.data().len() as u64,
            path,
            node: node.node,
            node_name: node.name.to_string(),
            in_features: node.in_features,
            out_features: node.out_features,
            scaling,
            l,
            delta_weight: delta,
        });
    }

    let cache: usize = modules.iter().map(|m| m.delta_weight.len() * 4).sum();
    let mut notes = vec!["format=peft-ia3".to_owned(), format!("feedforward_cache_bytes={cache}")];
    if let Some(v) = &config.peft_version {
        notes.push(format!("peft_version={v}"));
    }
    if config.fan_in_fan_out {
        notes.push("fan_in_fan_out=true (no effect: vectors are layout-free)".to_owned());
    }
    Ok(Ia3Adapter { source: source.to_owned(), modules, notes, owned_bytes: owned })
}

#[cfg(test)]
mod tests {
    use super::f16_to_f32;

    #[test]
    fn f16_decoding() {
        for (bits, want) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x0001, 5.960_464_5e-8),
            (0x8000, -0.0),
            (0x7bff, 65504.0),
        ] {
            assert_eq!(f16_to_f32(bits).to_bits(), want.to_bits(), "{bits:#06x}");
        }
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
