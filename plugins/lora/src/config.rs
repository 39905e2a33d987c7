//! `adapter_config.json` and the load options, read into the few values inference needs.
//!
//! The config is parsed in two steps so that every error can name its field: first into an
//! ordered list of `(key, value)` pairs (keeping the order of `rank_pattern` and
//! `alpha_pattern`, because PEFT picks the *first* matching pattern key in dict order and
//! serde_json's default map is sorted), then each known key is converted on its own.
//! Unknown keys and training-only fields are ignored; variants graft does not implement are
//! rejected by name so that an adapter never loads with silently different semantics.

use core::fmt;

use graft_plugin_abi::{ErrorCode, PluginError};
use regex::{Regex, RegexBuilder};
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// Largest `adapter_config.json` accepted (PEFT writes about 1 KiB).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Compiled-size limit of one pattern regex, so a hostile key cannot exhaust memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Config keys naming PEFT variants graft does not implement. Each is rejected when set to
/// anything but an "unset" value (`null`, `false`, `{}`, `[]`, `""`).
pub const REJECTED_KEYS: &[&str] = &[
    "use_bdlora",
    "alora_invocation_tokens",
    "velora_config",
    "arrow_config",
    "use_qalora",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "megatron_config",
    "kasa_config",
    "monteclora_config",
];

/// One compiled `rank_pattern` / `alpha_pattern` entry.
#[derive(Debug, Clone)]
pub struct Pattern<T> {
    /// The key as written in the config.
    pub key: String,
    regex: Regex,
    /// The value it assigns.
    pub value: T,
}

/// What inference needs from `adapter_config.json`.
#[derive(Debug, Clone)]
pub struct LoraConfig {
    /// Default rank.
    pub r: u32,
    /// Default alpha.
    pub lora_alpha: f64,
    /// `s = alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// Weight-decomposed LoRA (magnitude vector, row-norm rescale).
    pub use_dora: bool,
    /// Base weight stored `(in, out)` in the original framework; see the crate docs.
    pub fan_in_fan_out: bool,
    /// `lora_B` carries a bias.
    pub lora_bias: bool,
    /// Per-module rank overrides, in config order.
    pub rank_pattern: Vec<Pattern<u32>>,
    /// Per-module alpha overrides, in config order.
    pub alpha_pattern: Vec<Pattern<f64>>,
    /// graft extension: an explicit scale replacing `alpha / r` for every module.
    pub scaling: Option<f64>,
    /// `peft_version`, if the file has one (for notes).
    pub peft_version: Option<String>,
}

/// Where a module's rank or alpha came from (for error messages).
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// The config default (`r` / `lora_alpha`).
    Default,
    /// A pattern key.
    Pattern(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("config default"),
            Origin::Pattern(k) => write!(f, "pattern key `{k}`"),
        }
    }
}

impl LoraConfig {
    /// The configured rank of `module` and where it came from.
    pub fn rank_for(&self, module: &str) -> (u32, Origin) {
        match self.rank_pattern.iter().find(|p| p.regex.is_match(module)) {
            Some(p) => (p.value, Origin::Pattern(p.key.clone())),
            None => (self.r, Origin::Default),
        }
    }

    /// The configured alpha of `module`.
    pub fn alpha_for(&self, module: &str) -> f64 {
        self.alpha_pattern.iter().find(|p| p.regex.is_match(module)).map_or(self.lora_alpha, |p| p.value)
    }

    /// The scale `s` of `module` with rank `r` (before any override).
    pub fn scale_for(&self, module: &str, r: u32) -> f64 {
        let alpha = self.alpha_for(module);
        let r = f64::from(r);
        if self.use_rslora { alpha / r.sqrt() } else { alpha / r }
    }
}

/// Load options (`LoadRequest.options`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadOptions {
    /// Scale override for every module; takes precedence over the config's `scaling`.
    pub scaling: Option<f64>,
}

fn config_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::CONFIG, field, message)
}

fn unsupported(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::UNSUPPORTED, field, message)
}

/// A top-level value: pattern objects keep their key order.
#[derive(Debug)]
enum Slot {
    Plain(Value),
    Ordered(Ordered),
}

/// A value read with object key order preserved (only objects are kept; anything else is
/// remembered by kind so that the caller can report a type error).
#[derive(Debug)]
enum Ordered {
    Null,
    Object(Vec<(String, Value)>),
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Ordered, E> {
                Ok(Ordered::Null)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Ordered, E> {
                Ok(Ordered::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Ordered, E> {
                Ok(Ordered::Other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Ordered, E> {
                Ok(Ordered::Other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Ordered, E> {
                Ok(Ordered::Other("a number"))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Ordered, E> {
                Ok(Ordered::Other("a string"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Ordered::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut entries: Vec<(String, Value)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    // Python dict semantics: a repeated key keeps its first position, last value.
                    match entries.iter_mut().find(|(key, _)| *key == k) {
                        Some(slot) => slot.1 = v,
                        None => entries.push((k, v)),
                    }
                }
                Ok(Ordered::Object(entries))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// The whole config as ordered `(key, slot)` pairs.
#[derive(Debug)]
struct RawDoc(Vec<(String, Slot)>);

impl<'de> Deserialize<'de> for RawDoc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawDoc, A::Error> {
                let mut entries: Vec<(String, Slot)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let slot = if key == "rank_pattern" || key == "alpha_pattern" {
                        Slot::Ordered(map.next_value::<Ordered>()?)
                    } else {
                        Slot::Plain(map.next_value::<Value>()?)
                    };
                    match entries.iter_mut().find(|(k, _)| *k == key) {
                        Some(e) => e.1 = slot,
                        None => entries.push((key, slot)),
                    }
                }
                Ok(RawDoc(entries))
            }
        }
        deserializer.deserialize_map(V)
    }
}

impl RawDoc {
    fn plain(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).and_then(|(_, s)| match s {
            Slot::Plain(v) => Some(v),
            Slot::Ordered(_) => None,
        })
    }

    fn ordered(&self, key: &str) -> Option<&Ordered> {
        self.0.iter().find(|(k, _)| k == key).and_then(|(_, s)| match s {
            Slot::Ordered(o) => Some(o),
            Slot::Plain(_) => None,
        })
    }
}

/// Whether a value counts as "not set" for a rejected feature key.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        Value::Number(_) | Value::Bool(true) => false,
    }
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

/// A boolean field; `null` or absent means `default`.
fn get_bool(doc: &RawDoc, key: &str, default: bool) -> Result<bool, PluginError> {
    match doc.plain(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(config_err(key, format!("expected a boolean, found {}", kind_of(v)))),
    }
}

/// A positive integer rank.
fn as_rank(field: &str, v: &Value) -> Result<u32, PluginError> {
    let n = v.as_u64().ok_or_else(|| config_err(field, format!("expected a positive integer, found {v}")))?;
    match u32::try_from(n) {
        Ok(r) if r >= 1 => Ok(r),
        _ => Err(config_err(field, format!("rank must be between 1 and {}, found {n}", u32::MAX))),
    }
}

/// A finite number.
fn as_finite(field: &str, v: &Value) -> Result<f64, PluginError> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        Some(x) => Err(config_err(field, format!("expected a finite number, found {x}"))),
        None => Err(config_err(field, format!("expected a number, found {}", kind_of(v)))),
    }
}

/// Compiles a PEFT pattern key: module path `p` matches `K` if `p` matches `(.*\.)?(K)$`
/// from its start (`re.match`), i.e. `K` matches a dot-separated suffix of the path.
fn compile_pattern(field: &str, key: &str) -> Result<Regex, PluginError> {
    RegexBuilder::new(&format!(r"^(?:.*\.)?(?:{key})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| config_err(field, format!("pattern key `{key}` is not a valid regex: {e}")))
}

fn patterns<T>(
    doc: &RawDoc,
    field: &str,
    convert: impl Fn(&str, &Value) -> Result<T, PluginError>,
) -> Result<Vec<Pattern<T>>, PluginError> {
    match doc.ordered(field) {
        None | Some(Ordered::Null) => Ok(Vec::new()),
        Some(Ordered::Other(kind)) => Err(config_err(field, format!("expected an object, found {kind}"))),
        Some(Ordered::Object(entries)) => entries
            .iter()
            .map(|(key, v)| {
                Ok(Pattern { key: key.clone(), regex: compile_pattern(field, key)?, value: convert(field, v)? })
            })
            .collect(),
    }
}

/// Parses and validates `adapter_config.json`.
pub fn parse_config(bytes: &[u8]) -> Result<LoraConfig, PluginError> {
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(config_err(
            "adapter_config.json",
            format!("{} bytes is larger than the {MAX_CONFIG_BYTES}-byte limit", bytes.len()),
        ));
    }
    let doc: RawDoc = serde_json::from_slice(bytes)
        .map_err(|e| config_err("adapter_config.json", format!("not a JSON object: {e}")))?;

    match doc.plain("peft_type") {
        Some(Value::String(s)) if s == "LORA" => {}
        Some(Value::String(s)) => {
            return Err(unsupported(
                "peft_type",
                format!("peft_type `{s}` is not LoRA; this kind reads only \"LORA\""),
            ));
        }
        Some(v) => return Err(config_err("peft_type", format!("expected a string, found {}", kind_of(v)))),
        None => return Err(config_err("peft_type", "missing (a PEFT adapter config always has one)")),
    }

    for &key in REJECTED_KEYS {
        if let Some(v) = doc.plain(key)
            && !is_unset(v)
        {
            return Err(unsupported(key, format!("`{key}` = {v} selects a LoRA variant graft does not implement")));
        }
    }

    match doc.plain("bias") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "none" => {}
        Some(Value::String(s)) => {
            return Err(unsupported(
                "bias",
                format!("bias = \"{s}\" trains (and saves) base-layer biases; only \"none\" is supported"),
            ));
        }
        Some(v) => return Err(config_err("bias", format!("expected a string, found {}", kind_of(v)))),
    }

    match doc.plain("modules_to_save") {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(Value::Array(_)) => {
            return Err(unsupported(
                "modules_to_save",
                "modules_to_save replaces whole base modules; graft adapters only add deltas",
            ));
        }
        Some(v) => return Err(config_err("modules_to_save", format!("expected a list, found {}", kind_of(v)))),
    }

    let r = match doc.plain("r") {
        None | Some(Value::Null) => 8,
        Some(v) => as_rank("r", v)?,
    };
    let lora_alpha = match doc.plain("lora_alpha") {
        None | Some(Value::Null) => 8.0,
        Some(v) => as_finite("lora_alpha", v)?,
    };
    let scaling = match doc.plain("scaling") {
        None | Some(Value::Null) => None,
        Some(v) => Some(as_finite("scaling", v)?),
    };
    let peft_version = match doc.plain("peft_version") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };

    Ok(LoraConfig {
        r,
        lora_alpha,
        use_rslora: get_bool(&doc, "use_rslora", false)?,
        use_dora: get_bool(&doc, "use_dora", false)?,
        fan_in_fan_out: get_bool(&doc, "fan_in_fan_out", false)?,
        lora_bias: get_bool(&doc, "lora_bias", false)?,
        rank_pattern: patterns(&doc, "rank_pattern", as_rank)?,
        alpha_pattern: patterns(&doc, "alpha_pattern", as_finite)?,
        scaling,
        peft_version,
    })
}

/// Parses `LoadRequest.options`: empty, or a JSON object with the optional key `scaling`.
pub fn parse_options(options: &str) -> Result<LoadOptions, PluginError> {
    if options.trim().is_empty() {
        return Ok(LoadOptions::default());
    }
    let value: Value =
        serde_json::from_str(options).map_err(|e| config_err("options", format!("not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(config_err("options", format!("expected a JSON object, found {}", kind_of(&value))));
    };
    let mut out = LoadOptions::default();
    for (key, v) in &map {
        match key.as_str() {
            "scaling" => out.scaling = if v.is_null() { None } else { Some(as_finite("scaling", v)?) },
            other => {
                return Err(config_err(
                    other,
                    format!("unknown load option `{other}` (the lora kind accepts `scaling`)"),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<LoraConfig, PluginError> {
        let sep = if extra.is_empty() { "" } else { "," };
        parse_config(format!(r#"{{"peft_type":"LORA","r":4,"lora_alpha":8{sep}{extra}}}"#).as_bytes())
    }

    #[test]
    fn pattern_order_is_first_match_in_file_order() -> Result<(), PluginError> {
        // "fc1" sorts before "top_.*" but comes second in the file: the file order wins.
        let c = cfg(r#""rank_pattern":{"top_.*":16,"fc1":2},"alpha_pattern":{"z":1,"top_fc1":32}"#)?;
        assert_eq!(c.rank_for("top_fc1"), (16, Origin::Pattern("top_.*".into())));
        assert_eq!(c.rank_for("a.fc1"), (2, Origin::Pattern("fc1".into())));
        // Keys match whole dot-separated suffixes only.
        assert_eq!(c.rank_for("bot_fc1"), (4, Origin::Default));
        assert_eq!(c.rank_for("model.top_fc1"), (16, Origin::Pattern("top_.*".into())));
        assert_eq!(c.rank_for("xtop_fc2"), (4, Origin::Default));
        assert_eq!(c.alpha_for("top_fc1"), 32.0);
        assert_eq!(c.alpha_for("a.top_fc1"), 32.0);
        assert_eq!(c.alpha_for("top_fc1x"), 8.0);
        Ok(())
    }

    #[test]
    fn scale_formulas() -> Result<(), PluginError> {
        let c = cfg("")?;
        assert_eq!(c.scale_for("m", 4), 2.0);
        let c = cfg(r#""use_rslora":true"#)?;
        assert_eq!(c.scale_for("m", 4), 4.0);
        Ok(())
    }

    #[test]
    fn type_errors_name_the_field() {
        for (extra, field) in [
            (r#""r":"eight""#, "r"),
            (r#""r":0"#, "r"),
            (r#""r":2.5"#, "r"),
            (r#""lora_alpha":"x""#, "lora_alpha"),
            (r#""use_dora":1"#, "use_dora"),
            (r#""rank_pattern":[1]"#, "rank_pattern"),
            (r#""rank_pattern":{"a":-1}"#, "rank_pattern"),
            (r#""rank_pattern":{"(":2}"#, "rank_pattern"),
            (r#""alpha_pattern":{"a":"b"}"#, "alpha_pattern"),
            (r#""scaling":true"#, "scaling"),
        ] {
            let e = cfg(extra).err();
            assert_eq!(e.as_ref().map(|e| (e.code, e.field.as_str())), Some((ErrorCode::CONFIG, field)), "{extra}");
        }
    }

    #[test]
    fn options() {
        assert_eq!(parse_options(""), Ok(LoadOptions::default()));
        assert_eq!(parse_options(r#"{"scaling":0.5}"#), Ok(LoadOptions { scaling: Some(0.5) }));
        assert_eq!(parse_options("[1]").map_err(|e| e.code), Err(ErrorCode::CONFIG));
        assert_eq!(parse_options("{").map_err(|e| e.field.to_string()), Err("options".to_string()));
        assert_eq!(parse_options(r#"{"scale":1}"#).map_err(|e| e.field.to_string()), Err("scale".to_string()));
    }
}
