//! `inspect_dir`: a summary of a PEFT IA3 directory without a model, for
//! `graft adapter inspect`. Nothing is resolved, so node names are empty and a module's
//! scaling comes from the vector's shape (`[n, 1]` output, `[1, n]` feedforward) or, for a
//! `[1, 1]` vector, from a `feedforward_modules` list.

use std::path::Path;

use abi_stable::std_types::{RString, RVec};
use graft_plugin_abi::{AdapterInfo, ErrorCode, PluginError, TargetInfo};
use safetensors::SafeTensors;

use crate::config::parse_config;
use crate::load::{CONFIG_FILE, MAX_TENSOR_BYTES, TENSOR_FILE};

fn read(path: &Path, field: &str) -> Result<Vec<u8>, PluginError> {
    let len = std::fs::metadata(path)
        .map_err(|e| PluginError::new(ErrorCode::IO, field, format!("cannot stat {}: {e}", path.display())))?
        .len();
    if len > MAX_TENSOR_BYTES {
        return Err(PluginError::new(
            ErrorCode::TENSOR,
            field,
            format!("larger than the {MAX_TENSOR_BYTES}-byte limit"),
        ));
    }
    std::fs::read(path)
        .map_err(|e| PluginError::new(ErrorCode::IO, field, format!("cannot read {}: {e}", path.display())))
}

/// Summarizes the adapter in directory `dir`: one target per `ia3_l` vector, sorted by
/// module path, with its scaling as `variant` (`ia3-output`, `ia3-feedforward`, or
/// `ia3-undecided` for a `[1, 1]` vector the config does not classify).
pub fn inspect_dir(dir: &Path) -> Result<AdapterInfo, PluginError> {
    let config = parse_config(&read(&dir.join(CONFIG_FILE), CONFIG_FILE)?)?;
    let bytes = read(&dir.join(TENSOR_FILE), TENSOR_FILE)?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| PluginError::new(ErrorCode::TENSOR, TENSOR_FILE, format!("not a valid safetensors file: {e}")))?;
    let mut targets: Vec<TargetInfo> = Vec::new();
    for (key, view) in st.tensors() {
        let Some(path) = key.strip_prefix("base_model.model.").and_then(|r| r.strip_suffix(".ia3_l")) else {
            return Err(PluginError::new(ErrorCode::TENSOR, key.as_str(), "not a PEFT IA3 key"));
        };
        let variant = match (view.shape(), config.feedforward.classify(path)) {
            ([1, 1], Some(true)) => "ia3-feedforward",
            ([1, 1], Some(false)) => "ia3-output",
            ([1, 1], None) => "ia3-undecided",
            ([_, 1], _) => "ia3-output",
            ([1, _], _) => "ia3-feedforward",
            (shape, _) => {
                return Err(PluginError::new(
                    ErrorCode::SHAPE,
                    key.as_str(),
                    format!("expected [out, 1] or [1, in], found {shape:?}"),
                ));
            }
        };
        targets.push(TargetInfo {
            module: RString::from(path),
            node: RString::new(),
            rank: 0,
            scale: 1.0,
            variant: RString::from(variant),
            bytes: view.data().len() as u64,
        });
    }
    targets.sort_by(|a, b| a.module.cmp(&b.module));
    let mut notes: RVec<RString> = RVec::new();
    notes.push(RString::from("format=peft-ia3"));
    if let Some(v) = &config.peft_version {
        notes.push(RString::from(format!("peft_version={v}")));
    }
    Ok(AdapterInfo {
        kind: RString::from(crate::KIND),
        source: RString::from(dir.to_string_lossy().into_owned()),
        targets: targets.into_iter().collect(),
        mapped_bytes: 0,
        owned_bytes: 0,
        notes,
    })
}
