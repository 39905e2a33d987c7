//! `adapter_config.json` and the load options, reduced to what inference needs.
//!
//! The config is a whitelist: every key PEFT 0.21.2's `IA3Config` writes is known, and
//! anything else is refused by name, because a field from a newer PEFT (or a typo in a
//! hand-written file) could change what the adapter computes.

use graft_plugin_abi::{ErrorCode, PluginError};
use serde_json::{Map, Value};

/// Largest `adapter_config.json` accepted (PEFT writes about half a KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Every key of PEFT 0.21.2's `IA3Config` (with `PeftConfig`'s), the only keys accepted.
pub const KNOWN_KEYS: &[&str] = &[
    "peft_type",
    "peft_version",
    "auto_mapping",
    "base_model_name_or_path",
    "revision",
    "task_type",
    "inference_mode",
    "target_modules",
    "exclude_modules",
    "feedforward_modules",
    "fan_in_fan_out",
    "modules_to_save",
    "init_ia3_weights",
];

/// How `feedforward_modules` classifies a module.
#[derive(Debug, Clone, PartialEq)]
pub enum Feedforward {
    /// A list: PEFT's `key.endswith(entry)` for any entry.
    Suffixes(Vec<String>),
    /// A regex string (PEFT's `re.fullmatch`): not evaluated, the vector's shape decides.
    Regex(String),
    /// Null or absent: the vector's shape decides.
    Unset,
}

impl Feedforward {
    /// Whether PEFT treats `module` as feedforward, or `None` where only the shape can tell.
    pub fn classify(&self, module: &str) -> Option<bool> {
        match self {
            Feedforward::Suffixes(list) => Some(list.iter().any(|s| module.ends_with(s.as_str()))),
            Feedforward::Regex(_) | Feedforward::Unset => None,
        }
    }
}

/// What inference needs from `adapter_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ia3Config {
    /// Which modules scale their input rather than their output.
    pub feedforward: Feedforward,
    /// The base weight's storage in the source framework (GPT-2 `Conv1D`); no effect here.
    pub fan_in_fan_out: bool,
    /// `peft_version`, for notes.
    pub peft_version: Option<String>,
}

pub(crate) fn config_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::CONFIG, field, message)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A list of strings, a string, or null (`target_modules`, `exclude_modules`).
fn check_names(key: &str, v: &Value) -> Result<(), PluginError> {
    match v {
        Value::Null | Value::String(_) => Ok(()),
        Value::Array(a) => match a.iter().position(|e| !e.is_string()) {
            None => Ok(()),
            Some(i) => Err(config_err(key, format!("entry {i} is {}, expected a string", kind_of(&a[i])))),
        },
        other => {
            Err(config_err(key, format!("expected a list of names, a regex string or null, found {}", kind_of(other))))
        }
    }
}

fn get_bool(map: &Map<String, Value>, key: &str, default: bool) -> Result<bool, PluginError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(config_err(key, format!("expected a boolean, found {}", kind_of(v)))),
    }
}

fn feedforward(v: Option<&Value>) -> Result<Feedforward, PluginError> {
    const KEY: &str = "feedforward_modules";
    match v {
        None | Some(Value::Null) => Ok(Feedforward::Unset),
        Some(Value::String(s)) => Ok(Feedforward::Regex(s.clone())),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, e)| match e {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                // PEFT's `key.endswith("")` is true for every module: almost surely a mistake.
                Value::String(_) => Err(config_err(KEY, format!("entry {i} is empty (it would match every module)"))),
                other => Err(config_err(KEY, format!("entry {i} is {}, expected a string", kind_of(other)))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Feedforward::Suffixes),
        Some(other) => {
            Err(config_err(KEY, format!("expected a list of names, a regex string or null, found {}", kind_of(other))))
        }
    }
}

/// Parses and validates `adapter_config.json`.
pub fn parse_config(bytes: &[u8]) -> Result<Ia3Config, PluginError> {
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(config_err(
            "adapter_config.json",
            format!("{} bytes is larger than the {MAX_CONFIG_BYTES}-byte limit", bytes.len()),
        ));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| config_err("adapter_config.json", format!("not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(config_err("adapter_config.json", format!("expected a JSON object, found {}", kind_of(&value))));
    };
    if let Some(key) = map.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
        return Err(config_err(
            key,
            format!("unknown IA3Config key `{key}` (this kind reads PEFT 0.21.2's IA3Config fields only)"),
        ));
    }

    match map.get("peft_type") {
        Some(Value::String(s)) if s == "IA3" => {}
        Some(Value::String(s)) => {
            return Err(PluginError::new(
                ErrorCode::UNSUPPORTED,
                "peft_type",
                format!("peft_type `{s}` is not (IA)³; this kind reads only \"IA3\""),
            ));
        }
        Some(v) => return Err(config_err("peft_type", format!("expected a string, found {}", kind_of(v)))),
        None => return Err(config_err("peft_type", "missing (a PEFT adapter config always has one)")),
    }

    match map.get("modules_to_save") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(Value::Array(_)) => {
            return Err(PluginError::new(
                ErrorCode::UNSUPPORTED,
                "modules_to_save",
                "modules_to_save replaces whole base modules; graft adapters only modify layers in place",
            ));
        }
        Some(v) => return Err(config_err("modules_to_save", format!("expected a list, found {}", kind_of(v)))),
    }

    for key in ["target_modules", "exclude_modules"] {
        if let Some(v) = map.get(key) {
            check_names(key, v)?;
        }
    }
    get_bool(&map, "init_ia3_weights", true)?;
    get_bool(&map, "inference_mode", true)?;
    let peft_version = match map.get("peft_version") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };

    Ok(Ia3Config {
        feedforward: feedforward(map.get("feedforward_modules"))?,
        fan_in_fan_out: get_bool(&map, "fan_in_fan_out", false)?,
        peft_version,
    })
}

/// Checks `LoadRequest.options`: empty or a JSON object without keys (the kind has no options).
pub fn parse_options(options: &str) -> Result<(), PluginError> {
    if options.trim().is_empty() {
        return Ok(());
    }
    let value: Value =
        serde_json::from_str(options).map_err(|e| config_err("options", format!("not valid JSON: {e}")))?;
    match value {
        Value::Object(map) => match map.keys().next() {
            None => Ok(()),
            Some(key) => Err(config_err(key, format!("unknown load option `{key}` (the ia3 kind takes no options)"))),
        },
        other => Err(config_err("options", format!("expected a JSON object, found {}", kind_of(&other)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<Ia3Config, PluginError> {
        let sep = if extra.is_empty() { "" } else { "," };
        parse_config(format!(r#"{{"peft_type":"IA3"{sep}{extra}}}"#).as_bytes())
    }

    fn field(r: Result<Ia3Config, PluginError>) -> Option<(ErrorCode, String)> {
        r.err().map(|e| (e.code, e.field.to_string()))
    }

    #[test]
    fn feedforward_rules() -> Result<(), PluginError> {
        let c = cfg(r#""feedforward_modules":["fc2","mlp.down"]"#)?;
        // PEFT's plain `endswith`, not a dotted-suffix match.
        assert_eq!(c.feedforward.classify("top_fc2"), Some(true));
        assert_eq!(c.feedforward.classify("layers.0.mlp.down"), Some(true));
        assert_eq!(c.feedforward.classify("top_fc1"), Some(false));
        assert_eq!(cfg(r#""feedforward_modules":".*fc2""#)?.feedforward.classify("top_fc2"), None);
        assert_eq!(cfg("")?.feedforward, Feedforward::Unset);
        Ok(())
    }

    #[test]
    fn errors_name_the_field() {
        for (extra, code, f) in [
            (r#""feedforward_modules":[1]"#, ErrorCode::CONFIG, "feedforward_modules"),
            (r#""feedforward_modules":[""]"#, ErrorCode::CONFIG, "feedforward_modules"),
            (r#""feedforward_modules":3"#, ErrorCode::CONFIG, "feedforward_modules"),
            (r#""target_modules":{"a":1}"#, ErrorCode::CONFIG, "target_modules"),
            (r#""fan_in_fan_out":"yes""#, ErrorCode::CONFIG, "fan_in_fan_out"),
            (r#""modules_to_save":["head"]"#, ErrorCode::UNSUPPORTED, "modules_to_save"),
            (r#""use_dora":false"#, ErrorCode::CONFIG, "use_dora"),
        ] {
            assert_eq!(field(cfg(extra)), Some((code, f.to_string())), "{extra}");
        }
        let lora = parse_config(br#"{"peft_type":"LORA"}"#);
        assert_eq!(field(lora), Some((ErrorCode::UNSUPPORTED, "peft_type".into())));
        assert_eq!(field(parse_config(b"{}")), Some((ErrorCode::CONFIG, "peft_type".into())));
        assert_eq!(field(parse_config(b"[]")), Some((ErrorCode::CONFIG, "adapter_config.json".into())));
        assert_eq!(field(parse_config(b"{")), Some((ErrorCode::CONFIG, "adapter_config.json".into())));
    }

    #[test]
    fn options() {
        assert_eq!(parse_options(""), Ok(()));
        assert_eq!(parse_options(" {} "), Ok(()));
        assert_eq!(parse_options(r#"{"scale":1}"#).map_err(|e| e.field.to_string()), Err("scale".to_string()));
        assert_eq!(parse_options("[1]").map_err(|e| e.field.to_string()), Err("options".to_string()));
        assert_eq!(parse_options("{").map_err(|e| e.code), Err(ErrorCode::CONFIG));
    }
}
