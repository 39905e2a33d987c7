//! Turning a PEFT directory (or its two files' bytes) into a validated [`LoraAdapter`].
//!
//! Validation happens here, once, so that the forward path can trust every shape: each
//! tensor key is classified, each module needs both factors, each module path is resolved
//! through the host (which owns the name mapping), shapes are checked against the node and
//! the configured rank, every value is checked finite, and the DoRA norms are computed
//! from the host's dequantized base rows. Every failure names the field, tensor or file.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

use abi_stable::std_types::RStr;
use graft_plugin_abi::{ErrorCode, LoadRequest, ModelViewRef, NodeInfo, NodeOp, PluginError};

use crate::adapter::{LoraAdapter, Module};
use crate::config::{LoadOptions, LoraConfig, MAX_CONFIG_BYTES, parse_config, parse_options};
use crate::dora::Dora;
use crate::tensors::{Backing, Tensor, read_tensors};

/// The config file name in a PEFT directory.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The tensor file name in a PEFT directory.
pub const TENSOR_FILE: &str = "adapter_model.safetensors";
/// PEFT's legacy pickle, which is refused.
pub const LEGACY_FILE: &str = "adapter_model.bin";
/// Every tensor key starts with this.
const KEY_PREFIX: &str = "base_model.model.";

/// Loads a PEFT LoRA directory (`request.source`) against `model`.
pub fn load_dir(request: &LoadRequest<'_>, model: &ModelViewRef<'_>) -> Result<LoraAdapter, PluginError> {
    let source = request.source.as_str();
    let dir = Path::new(source);
    if !dir.is_dir() {
        return Err(PluginError::new(ErrorCode::IO, source, "not a directory (expected a PEFT adapter directory)"));
    }
    let options = parse_options(request.options.as_str())?;
    let tensor_path = dir.join(TENSOR_FILE);
    if !tensor_path.exists() && dir.join(LEGACY_FILE).exists() {
        return Err(PluginError::new(
            ErrorCode::UNSUPPORTED,
            LEGACY_FILE,
            "legacy pickle adapter_model.bin is not supported; re-save with safe_serialization=True",
        ));
    }
    let config = parse_config(&read_config(&dir.join(CONFIG_FILE))?)?;
    if !tensor_path.exists() {
        return Err(PluginError::new(ErrorCode::IO, TENSOR_FILE, format!("missing in {source}")));
    }
    let backing = Backing::open(&tensor_path, TENSOR_FILE)?;
    build(source, backing, &config, &options, model)
}

/// Loads an adapter from the bytes of its two files (for fuzzing and tests; the same
/// validation as [`load_dir`]).
pub fn load_bytes(
    id: &str,
    config_json: &[u8],
    safetensors: Vec<u8>,
    options_json: &str,
    model: &ModelViewRef<'_>,
) -> Result<LoraAdapter, PluginError> {
    let options = parse_options(options_json)?;
    let config = parse_config(config_json)?;
    build(&format!("<memory:{id}>"), Backing::Owned(safetensors), &config, &options, model)
}

/// Reads the config with a size cap (never more than the cap plus one byte).
fn read_config(path: &Path) -> Result<Vec<u8>, PluginError> {
    let file = File::open(path)
        .map_err(|e| PluginError::new(ErrorCode::IO, CONFIG_FILE, format!("cannot open {}: {e}", path.display())))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| PluginError::new(ErrorCode::IO, CONFIG_FILE, format!("cannot read {}: {e}", path.display())))?;
    Ok(bytes)
}

/// The tensors of one module, as found in the file.
#[derive(Default)]
struct Parts {
    a: Option<Tensor>,
    b: Option<Tensor>,
    bias: Option<Tensor>,
    magnitude: Option<Tensor>,
}

fn key(path: &str, suffix: &str) -> String {
    format!("{KEY_PREFIX}{path}.{suffix}")
}

fn shape_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::SHAPE, field, message)
}

fn tensor_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::TENSOR, field, message)
}

/// Sorts every tensor into its module, refusing keys that are not LoRA parameters.
fn group(tensors: Vec<Tensor>) -> Result<BTreeMap<String, Parts>, PluginError> {
    let mut modules: BTreeMap<String, Parts> = BTreeMap::new();
    for t in tensors {
        if t.key.contains("lora_embedding_A") || t.key.contains("lora_embedding_B") {
            return Err(PluginError::new(
                ErrorCode::UNSUPPORTED,
                t.key.as_str(),
                "LoRA on embeddings has no hook point in graft",
            ));
        }
        let Some(rest) = t.key.strip_prefix(KEY_PREFIX) else {
            return Err(tensor_err(&t.key, format!("not a PEFT LoRA key (every key starts with `{KEY_PREFIX}`)")));
        };
        let found = ["lora_A.weight", "lora_B.weight", "lora_B.bias", "lora_magnitude_vector"]
            .into_iter()
            .enumerate()
            .find_map(|(i, suffix)| rest.strip_suffix(suffix)?.strip_suffix('.').map(|p| (i, p.to_owned())));
        let Some((slot, path)) = found.filter(|(_, p)| !p.is_empty()) else {
            return Err(tensor_err(
                &t.key,
                "unknown tensor: expected <module>.lora_A.weight, .lora_B.weight, .lora_B.bias or .lora_magnitude_vector",
            ));
        };
        let parts = modules.entry(path).or_default();
        let place = match slot {
            0 => &mut parts.a,
            1 => &mut parts.b,
            2 => &mut parts.bias,
            _ => &mut parts.magnitude,
        };
        *place = Some(t);
    }
    Ok(modules)
}

/// Checks a tensor's shape against `expected`.
fn expect_shape(t: &Tensor, expected: &[usize], what: &str) -> Result<(), PluginError> {
    if t.shape == expected {
        Ok(())
    } else {
        Err(shape_err(&t.key, format!("expected shape {expected:?} ({what}), found {:?}", t.shape)))
    }
}

fn check_finite(t: &Tensor, backing: &[u8]) -> Result<(), PluginError> {
    match t.first_non_finite(backing) {
        None => Ok(()),
        Some(i) => Err(PluginError::new(
            ErrorCode::NOT_FINITE,
            t.key.as_str(),
            format!("value at flat index {i} is {}", t.get(backing, i).unwrap_or(f32::NAN)),
        )),
    }
}

/// A presence rule: `tensor` must exist iff `flag` is set.
fn presence(t: &Option<Tensor>, flag: bool, flag_name: &str, missing_key: String) -> Result<(), PluginError> {
    match (t, flag) {
        (Some(t), false) => Err(tensor_err(&t.key, format!("present but the config has {flag_name} = false"))),
        (None, true) => Err(tensor_err(&missing_key, format!("missing but the config has {flag_name} = true"))),
        _ => Ok(()),
    }
}

fn build(
    source: &str,
    backing: Backing,
    config: &LoraConfig,
    options: &LoadOptions,
    model: &ModelViewRef<'_>,
) -> Result<LoraAdapter, PluginError> {
    let set = read_tensors(&backing, TENSOR_FILE)?;
    let grouped = group(set.tensors)?;
    let bytes = backing.bytes();
    let override_scale = options.scaling.or(config.scaling);

    let mut modules: Vec<Module> = Vec::with_capacity(grouped.len());
    let (mut mapped, mut owned) = (0u64, 0u64);
    for (path, parts) in grouped {
        let Parts { a, b, bias, magnitude } = parts;
        let a = a.ok_or_else(|| tensor_err(&key(&path, "lora_A.weight"), "missing (its lora_B partner is present)"))?;
        let b = b.ok_or_else(|| tensor_err(&key(&path, "lora_B.weight"), "missing (its lora_A partner is present)"))?;
        presence(&bias, config.lora_bias, "lora_bias", key(&path, "lora_B.bias"))?;
        presence(&magnitude, config.use_dora, "use_dora", key(&path, "lora_magnitude_vector"))?;

        let node: NodeInfo = model.resolve(RStr::from_str(&path)).into_result()?;
        if node.op != NodeOp::Linear {
            return Err(PluginError::new(
                ErrorCode::UNSUPPORTED,
                path.as_str(),
                format!("module resolves to node `{}` ({:?}); LoRA attaches to linear layers only", node.name, node.op),
            ));
        }
        if let Some(prev) = modules.iter().find(|m| m.node == node.node) {
            return Err(PluginError::new(
                ErrorCode::CONFIG,
                path.as_str(),
                format!("modules `{}` and `{path}` resolve to the same node `{}`", prev.path, node.name),
            ));
        }
        let (inf, out) = (node.in_features, node.out_features);

        // Rank from the tensor, cross-checked against the node and the config.
        let [r, a_in] = a.shape[..] else {
            return Err(shape_err(&a.key, format!("expected a 2-D [r, {inf}] matrix, found {:?}", a.shape)));
        };
        if r == 0 {
            return Err(shape_err(&a.key, "rank 0: lora_A has no rows"));
        }
        if a_in != inf {
            return Err(shape_err(
                &a.key,
                format!("expected [{r}, {inf}] (node `{}` has {inf} inputs), found {:?}", node.name, a.shape),
            ));
        }
        expect_shape(&b, &[out, r], &format!("node `{}` has {out} outputs, lora_A has rank {r}", node.name))?;
        let (r_cfg, origin) = config.rank_for(&path);
        if r != r_cfg as usize {
            return Err(shape_err(&a.key, format!("expected rank {r_cfg} (from {origin}), found rank {r}")));
        }
        if let Some(t) = &bias {
            expect_shape(t, &[out], "one bias per output")?;
        }
        if let Some(t) = &magnitude {
            expect_shape(t, &[out], "one magnitude per output row")?;
        }
        for t in [Some(&a), Some(&b), bias.as_ref(), magnitude.as_ref()].into_iter().flatten() {
            check_finite(t, bytes)?;
        }

        let scale = override_scale.unwrap_or_else(|| config.scale_for(&path, r_cfg));
        // The delta is computed in f32: a scale beyond its range (`lora_alpha: 1e300`,
        // `scaling: 1e39`) would turn every output into ±Inf or NaN.
        if !scale.is_finite() || scale.abs() > f64::from(f32::MAX) {
            let field = if override_scale.is_some() { "scaling" } else { "lora_alpha" };
            return Err(PluginError::new(
                ErrorCode::CONFIG,
                field,
                format!("module `{path}`: scale {scale:e} is outside the f32 range (|s| ≤ {:e})", f32::MAX),
            ));
        }
        let module_bytes =
            [Some(&a), Some(&b), bias.as_ref(), magnitude.as_ref()].into_iter().flatten().map(Tensor::bytes).sum();
        let unreadable = |t: &Tensor| PluginError::new(ErrorCode::INTERNAL, t.key.as_str(), "tensor data unreadable");
        let bias = match &bias {
            Some(t) => Some(t.to_f32_vec(bytes).ok_or_else(|| unreadable(t))?),
            None => None,
        };
        let dora = match &magnitude {
            Some(t) => {
                let m = t.to_f32_vec(bytes).ok_or_else(|| unreadable(t))?;
                let av = a.to_f32_vec(bytes).ok_or_else(|| unreadable(&a))?;
                let bv = b.to_f32_vec(bytes).ok_or_else(|| unreadable(&b))?;
                Some(Dora::compute(model, &node, &av, &bv, m, scale, &t.key)?)
            }
            None => None,
        };

        // `Bᵀ` for the host's `linear_t` (see the adapter module), kept like the DoRA norms.
        let bv = b.to_f32_vec(bytes).ok_or_else(|| unreadable(&b))?;
        let mut bt = vec![0f32; bv.len()];
        for (o, row) in bv.chunks_exact(r).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                bt[k * out + o] = v;
            }
        }
        owned += (bt.len() * 4) as u64;

        for t in [&a, &b] {
            if t.is_owned() || !backing.is_mapped() {
                owned += t.bytes();
            } else {
                mapped += t.bytes();
            }
        }
        owned += bias.as_ref().map_or(0, |v| (v.len() * 4) as u64) + dora.as_ref().map_or(0, Dora::bytes);

        let mut variant = String::from(if config.use_dora {
            "dora"
        } else if config.use_rslora {
            "rslora"
        } else {
            "lora"
        });
        if bias.is_some() {
            variant.push_str("+bias");
        }
        modules.push(Module {
            path,
            node: node.node,
            node_name: node.name.to_string(),
            in_features: inf,
            out_features: out,
            rank: r,
            scale,
            variant,
            a,
            b,
            bt,
            bias,
            dora,
            bytes: module_bytes,
        });
    }
    if modules.is_empty() {
        return Err(PluginError::new(ErrorCode::CONFIG, TENSOR_FILE, "the adapter has no LoRA modules (zero targets)"));
    }

    let mut notes = Vec::new();
    if let Some(v) = &config.peft_version {
        notes.push(format!("peft_version={v}"));
    }
    if let Some(f) = &set.format_note {
        notes.push(format!("format={f}"));
    }
    notes.push(format!("fan_in_fan_out={}", config.fan_in_fan_out));
    notes.push(format!("use_rslora={}", config.use_rslora));
    if let Some(s) = override_scale {
        let from = if options.scaling.is_some() { "load option" } else { "config" };
        notes.push(format!("scaling_override={s} ({from})"));
    }
    Ok(LoraAdapter { source: source.to_owned(), backing, modules, notes, mapped_bytes: mapped, owned_bytes: owned })
}
