//! The source file: which misbehaviour, at which node.

use abi_stable::std_types::RStr;
use graft_plugin_abi::{ErrorCode, HookKind, LoadRequest, ModelViewRef, NodeOp, PluginError};
use serde_json::Value;

use crate::adapter::FaultyAdapter;

/// Largest source file accepted.
pub const MAX_SOURCE_BYTES: u64 = 64 * 1024;

/// What every hook call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Leave the output unchanged.
    Ok,
    /// Return a `BAD_CALL` error.
    Error,
    /// Panic (caught by the kind's guard: an `INTERNAL` error).
    Panic,
    /// Write NaN into `y`.
    Nan,
    /// Panic inside `load`.
    PanicOnLoad,
}

impl Mode {
    /// The name the source file uses.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Ok => "ok",
            Mode::Error => "error",
            Mode::Panic => "panic",
            Mode::Nan => "nan",
            Mode::PanicOnLoad => "panic_on_load",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "ok" => Mode::Ok,
            "error" => Mode::Error,
            "panic" => Mode::Panic,
            "nan" => Mode::Nan,
            "panic_on_load" => Mode::PanicOnLoad,
            _ => return None,
        })
    }
}

/// A parsed source file.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The misbehaviour.
    pub mode: Mode,
    /// The module path to resolve.
    pub module: String,
    /// The hook, if the file names one.
    pub hook: Option<HookKind>,
}

fn config_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::CONFIG, field, message)
}

fn string<'a>(map: &'a serde_json::Map<String, Value>, key: &str) -> Result<Option<&'a str>, PluginError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(config_err(key, "expected a string")),
    }
}

impl Spec {
    /// Parses the source file's bytes.
    pub fn parse(bytes: &[u8]) -> Result<Spec, PluginError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| config_err("source", format!("not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(config_err("source", "expected a JSON object"));
        };
        if let Some(key) = map.keys().find(|k| !["mode", "module", "hook"].contains(&k.as_str())) {
            return Err(config_err(key, format!("unknown key `{key}` (expected mode, module, hook)")));
        }
        let mode = string(&map, "mode")?.ok_or_else(|| config_err("mode", "missing"))?;
        let mode = Mode::parse(mode).ok_or_else(|| {
            config_err("mode", format!("unknown mode `{mode}` (ok, error, panic, nan, panic_on_load)"))
        })?;
        let module = string(&map, "module")?.ok_or_else(|| config_err("module", "missing"))?.to_owned();
        let hook = match string(&map, "hook")? {
            None => None,
            Some("linear_delta") => Some(HookKind::LinearDelta),
            Some("post") => Some(HookKind::Post),
            Some(other) => return Err(config_err("hook", format!("unknown hook `{other}` (linear_delta, post)"))),
        };
        Ok(Spec { mode, module, hook })
    }
}

fn read_source(path: &str) -> Result<Vec<u8>, PluginError> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| PluginError::new(ErrorCode::IO, path, format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_SOURCE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| PluginError::new(ErrorCode::IO, path, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_SOURCE_BYTES {
        return Err(config_err(path, format!("larger than the {MAX_SOURCE_BYTES}-byte limit")));
    }
    Ok(bytes)
}

/// Loads a faulty adapter from the JSON file `request.source`.
pub fn load(request: &LoadRequest<'_>, model: &ModelViewRef<'_>) -> Result<FaultyAdapter, PluginError> {
    let options = request.options.as_str().trim();
    if !options.is_empty() && options != "{}" {
        return Err(config_err("options", "the faulty kind takes no options"));
    }
    let spec = Spec::parse(&read_source(request.source.as_str())?)?;
    if spec.mode == Mode::PanicOnLoad {
        panic!("faulty kind: mode panic_on_load");
    }
    let node = model.resolve(RStr::from_str(&spec.module)).into_result()?;
    let hook = spec.hook.unwrap_or(if node.op == NodeOp::Linear { HookKind::LinearDelta } else { HookKind::Post });
    if hook == HookKind::LinearDelta && node.op != NodeOp::Linear {
        return Err(PluginError::new(
            ErrorCode::UNSUPPORTED,
            "hook",
            format!("linear_delta needs a linear node; `{}` is {:?}", node.name, node.op),
        ));
    }
    if node.op == NodeOp::Input && hook == HookKind::Post {
        return Err(PluginError::new(ErrorCode::UNSUPPORTED, "hook", "a post hook cannot attach to a graph input"));
    }
    Ok(FaultyAdapter {
        source: request.source.as_str().to_owned(),
        mode: spec.mode,
        module: spec.module,
        node: node.node,
        node_name: node.name.to_string(),
        hook,
    })
}
