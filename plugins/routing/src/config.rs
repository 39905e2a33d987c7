//! The `graft.adapter` configuration of a routing file, and the load options.
//!
//! Parsing is by hand over a `serde_json::Value` rather than a derived struct so that every
//! error names the key at fault (`dims`, `activation`, …) and an unknown key is refused by
//! name: a typo such as `"use_bais"` must not silently load a different model.

use graft_plugin_abi::{ErrorCode, PluginError};
use serde_json::{Map, Value, json};

/// The safetensors `__metadata__` key holding the configuration JSON.
pub const METADATA_KEY: &str = "graft.adapter";
/// The only file format version this crate reads and writes.
pub const FORMAT_VERSION: u64 = 1;
/// The largest cluster count: the run state carries κ as an f32, which is exact below 2²⁴.
pub const MAX_CLUSTERS: usize = 1 << 24;

/// The keys a configuration may have.
const KNOWN_KEYS: &[&str] = &[
    "kind",
    "format_version",
    "input_node",
    "output_node",
    "output_is",
    "clusters",
    "dims",
    "activation",
    "mode",
    "use_bias",
];

/// Activations other kinds of towers use, named in the refusal so the message is useful.
const OTHER_ACTIVATIONS: &[&str] = &["gelu", "sigmoid", "tanh", "prelu", "leaky_relu", "dice", "silu", "swish", "elu"];

/// The units of the output node: what the routed value is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputIs {
    /// The node holds a logit (e.g. the last linear before a sigmoid).
    Logit,
    /// The node holds a probability (e.g. the sigmoid node itself).
    Prob,
}

impl OutputIs {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            OutputIs::Logit => "logit",
            OutputIs::Prob => "prob",
        }
    }
}

/// How the cluster towers combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only the tower of the best-scoring cluster runs (the reference behaviour).
    Hard,
    /// Every tower runs; probabilities are mixed by `softmax(scores)`.
    Soft,
}

impl Mode {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Hard => "hard",
            Mode::Soft => "soft",
        }
    }
}

/// The hidden-layer activation (the reference code only has ReLU).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `max(0, a)`.
    Relu,
}

impl Activation {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
        }
    }
}

/// A parsed, self-consistent routing configuration (widths are checked against the model
/// and the tensors later).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Node whose output is the routing representation `x` (width `dims[0]`).
    pub input_node: String,
    /// Node whose output the routed value replaces (width `dims.last()`).
    pub output_node: String,
    /// Units of the output node.
    pub output_is: OutputIs,
    /// Number of clusters `K`.
    pub clusters: usize,
    /// Tower widths `[D, h1, …, out]`.
    pub dims: Vec<usize>,
    /// Hidden-layer activation.
    pub activation: Activation,
    /// Hard or soft routing.
    pub mode: Mode,
    /// Whether the towers carry biases (`b = b⁰ + bʲ`).
    pub use_bias: bool,
}

fn config_err(field: &str, message: impl Into<String>) -> PluginError {
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

fn get_str<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, PluginError> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(config_err(key, format!("expected a string, found {}", kind_of(v)))),
    }
}

fn required_str<'a>(map: &'a Map<String, Value>, key: &str) -> Result<&'a str, PluginError> {
    match get_str(map, key)? {
        Some("") => Err(config_err(key, "must not be empty")),
        Some(s) => Ok(s),
        None => Err(config_err(key, "missing (required)")),
    }
}

/// A positive integer that fits `usize`.
fn positive(field: &str, v: &Value) -> Result<usize, PluginError> {
    let n = v.as_u64().ok_or_else(|| config_err(field, format!("expected a positive integer, found {v}")))?;
    match usize::try_from(n) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(config_err(field, format!("expected a positive integer, found {n}"))),
    }
}

impl Config {
    /// A configuration with the defaults (`logit`, ReLU, hard, no bias).
    pub fn new(input_node: &str, output_node: &str, clusters: usize, dims: Vec<usize>) -> Config {
        Config {
            input_node: input_node.to_owned(),
            output_node: output_node.to_owned(),
            output_is: OutputIs::Logit,
            clusters,
            dims,
            activation: Activation::Relu,
            mode: Mode::Hard,
            use_bias: false,
        }
    }

    /// The input width `D`.
    pub fn input_width(&self) -> usize {
        self.dims.first().copied().unwrap_or(0)
    }

    /// The output width (`dims.last()`, usually 1).
    pub fn output_width(&self) -> usize {
        self.dims.last().copied().unwrap_or(0)
    }

    /// Number of tower layers (`dims.len() − 1`).
    pub fn layers(&self) -> usize {
        self.dims.len().saturating_sub(1)
    }

    /// Every tensor the file must hold, with its exact shape, in a fixed order: `centers`,
    /// then per layer the shared weight and each cluster's weight, then (with `use_bias`)
    /// the biases in the same order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![("centers".to_owned(), vec![self.clusters, self.input_width()])];
        let pairs: Vec<(usize, usize)> = self.dims.windows(2).map(|w| (w[0], w[1])).collect();
        for (l, &(i, o)) in pairs.iter().enumerate() {
            out.push((shared_weight(l), vec![i, o]));
            out.extend((0..self.clusters).map(|j| (cluster_weight(j, l), vec![i, o])));
        }
        if self.use_bias {
            for (l, &(_, o)) in pairs.iter().enumerate() {
                out.push((shared_bias(l), vec![o]));
                out.extend((0..self.clusters).map(|j| (cluster_bias(j, l), vec![o])));
            }
        }
        out
    }

    /// The JSON object stored under [`METADATA_KEY`].
    pub fn to_json(&self) -> String {
        json!({
            "kind": crate::KIND,
            "format_version": FORMAT_VERSION,
            "input_node": self.input_node,
            "output_node": self.output_node,
            "output_is": self.output_is.name(),
            "clusters": self.clusters,
            "dims": self.dims,
            "activation": self.activation.name(),
            "mode": self.mode.name(),
            "use_bias": self.use_bias,
        })
        .to_string()
    }

    /// Parses configuration JSON text (the metadata string).
    pub fn parse(text: &str) -> Result<Config, PluginError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| config_err(METADATA_KEY, format!("configuration is not valid JSON: {e}")))?;
        Config::from_value(&value)
    }

    /// Parses and checks a configuration object.
    pub fn from_value(value: &Value) -> Result<Config, PluginError> {
        let Value::Object(map) = value else {
            return Err(config_err(METADATA_KEY, format!("expected a JSON object, found {}", kind_of(value))));
        };
        if let Some(key) = map.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(config_err(
                key,
                format!("unknown configuration key `{key}` (known: {})", KNOWN_KEYS.join(", ")),
            ));
        }
        match required_str(map, "kind")? {
            k if k == crate::KIND => {}
            k => return Err(config_err("kind", format!("`{k}` is not this kind (`{}`)", crate::KIND))),
        }
        match map.get("format_version") {
            None => return Err(config_err("format_version", "missing (required)")),
            Some(v) => match v.as_u64() {
                Some(FORMAT_VERSION) => {}
                Some(n) => {
                    return Err(PluginError::new(
                        ErrorCode::UNSUPPORTED,
                        "format_version",
                        format!("format version {n} is not supported (this build reads {FORMAT_VERSION})"),
                    ));
                }
                None => return Err(config_err("format_version", format!("expected an integer, found {v}"))),
            },
        }
        let input_node = required_str(map, "input_node")?.to_owned();
        let output_node = required_str(map, "output_node")?.to_owned();
        let output_is = match get_str(map, "output_is")? {
            None | Some("logit") => OutputIs::Logit,
            Some("prob") => OutputIs::Prob,
            Some(s) => return Err(config_err("output_is", format!("expected \"logit\" or \"prob\", found \"{s}\""))),
        };
        let clusters = match map.get("clusters") {
            None => return Err(config_err("clusters", "missing (required)")),
            Some(v) => positive("clusters", v)?,
        };
        if clusters > MAX_CLUSTERS {
            return Err(config_err("clusters", format!("{clusters} clusters is more than the limit {MAX_CLUSTERS}")));
        }
        let dims = match map.get("dims") {
            None => return Err(config_err("dims", "missing (required)")),
            Some(Value::Array(a)) => a.iter().map(|v| positive("dims", v)).collect::<Result<Vec<_>, _>>()?,
            Some(v) => return Err(config_err("dims", format!("expected an array of integers, found {}", kind_of(v)))),
        };
        if dims.len() < 2 {
            return Err(config_err("dims", format!("needs at least [input, output], found {dims:?}")));
        }
        // Every layer's parameter count must be addressable (tensor shapes are compared
        // against these and scratch sizes are derived from them).
        if dims.windows(2).any(|w| w[0].checked_mul(w[1]).and_then(|n| n.checked_mul(clusters)).is_none()) {
            return Err(config_err("dims", format!("{dims:?} with {clusters} clusters overflows")));
        }
        let activation = match get_str(map, "activation")? {
            None | Some("relu") => Activation::Relu,
            Some(s) => {
                let known =
                    if OTHER_ACTIVATIONS.contains(&s.to_ascii_lowercase().as_str()) { " known, but" } else { "" };
                return Err(PluginError::new(
                    ErrorCode::UNSUPPORTED,
                    "activation",
                    format!("activation \"{s}\" is{known} not supported (only \"relu\")"),
                ));
            }
        };
        let mode = match get_str(map, "mode")? {
            None | Some("hard") => Mode::Hard,
            Some("soft") => Mode::Soft,
            Some(s) => return Err(config_err("mode", format!("expected \"hard\" or \"soft\", found \"{s}\""))),
        };
        let use_bias = match map.get("use_bias") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(v) => return Err(config_err("use_bias", format!("expected a boolean, found {}", kind_of(v)))),
        };
        Ok(Config { input_node, output_node, output_is, clusters, dims, activation, mode, use_bias })
    }
}

/// `shared.ℓ.weight`.
pub(crate) fn shared_weight(layer: usize) -> String {
    format!("shared.{layer}.weight")
}

/// `cluster.j.ℓ.weight`.
pub(crate) fn cluster_weight(cluster: usize, layer: usize) -> String {
    format!("cluster.{cluster}.{layer}.weight")
}

/// `shared.ℓ.bias`.
pub(crate) fn shared_bias(layer: usize) -> String {
    format!("shared.{layer}.bias")
}

/// `cluster.j.ℓ.bias`.
pub(crate) fn cluster_bias(cluster: usize, layer: usize) -> String {
    format!("cluster.{cluster}.{layer}.bias")
}

/// Load options (`LoadRequest.options`).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LoadOptions {
    /// A configuration that replaces the file's own (files written by other tools).
    pub config: Option<Config>,
}

/// Parses `LoadRequest.options`: empty, or a JSON object with the optional key `config`.
pub(crate) fn parse_options(options: &str) -> Result<LoadOptions, PluginError> {
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
            "config" => out.config = Some(Config::from_value(v)?),
            other => {
                return Err(config_err(
                    other,
                    format!("unknown load option `{other}` (the routing kind accepts `config`)"),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &str) -> Result<Config, PluginError> {
        let sep = if extra.is_empty() { "" } else { "," };
        Config::parse(&format!(
            r#"{{"kind":"routing","format_version":1,"input_node":"emb","output_node":"fc","clusters":2,"dims":[2,2,1]{sep}{extra}}}"#
        ))
    }

    #[test]
    fn defaults_and_round_trip() -> Result<(), PluginError> {
        let c = parse("")?;
        assert_eq!(c, Config::new("emb", "fc", 2, vec![2, 2, 1]));
        let mut d = c.clone();
        d.mode = Mode::Soft;
        d.output_is = OutputIs::Prob;
        d.use_bias = true;
        assert_eq!(Config::parse(&d.to_json())?, d);
        Ok(())
    }

    #[test]
    fn tensor_list() -> Result<(), PluginError> {
        let mut c = parse("")?;
        let names: Vec<String> = c.tensors().into_iter().map(|t| t.0).collect();
        assert_eq!(
            names,
            [
                "centers",
                "shared.0.weight",
                "cluster.0.0.weight",
                "cluster.1.0.weight",
                "shared.1.weight",
                "cluster.0.1.weight",
                "cluster.1.1.weight"
            ]
        );
        c.use_bias = true;
        let t = c.tensors();
        assert_eq!(t.len(), 13);
        assert_eq!(t[12], ("cluster.1.1.bias".to_owned(), vec![1]));
        Ok(())
    }

    #[test]
    fn errors_name_the_field() {
        for (extra, code, field) in [
            (r#""use_bais":true"#, ErrorCode::CONFIG, "use_bais"),
            (r#""activation":"gelu""#, ErrorCode::UNSUPPORTED, "activation"),
            (r#""activation":3"#, ErrorCode::CONFIG, "activation"),
            (r#""mode":"mixture""#, ErrorCode::CONFIG, "mode"),
            (r#""output_is":"odds""#, ErrorCode::CONFIG, "output_is"),
            (r#""use_bias":"yes""#, ErrorCode::CONFIG, "use_bias"),
        ] {
            let e = parse(extra).err();
            assert_eq!(e.as_ref().map(|e| (e.code, e.field.as_str())), Some((code, field)), "{extra}");
        }
        let bad = |text: &str| Config::parse(text).err().map(|e| (e.code, e.field.to_string()));
        let base = r#""kind":"routing","format_version":1,"input_node":"a","output_node":"b""#;
        assert_eq!(bad("{"), Some((ErrorCode::CONFIG, METADATA_KEY.into())));
        assert_eq!(bad("[]"), Some((ErrorCode::CONFIG, METADATA_KEY.into())));
        assert_eq!(
            bad(&format!(r#"{{{base},"clusters":0,"dims":[2,1]}}"#)),
            Some((ErrorCode::CONFIG, "clusters".into()))
        );
        assert_eq!(bad(&format!(r#"{{{base},"clusters":1,"dims":[2]}}"#)), Some((ErrorCode::CONFIG, "dims".into())));
        assert_eq!(bad(&format!(r#"{{{base},"clusters":1,"dims":[2,0]}}"#)), Some((ErrorCode::CONFIG, "dims".into())));
        assert_eq!(bad(&format!(r#"{{{base},"clusters":1,"dims":[2,-1]}}"#)), Some((ErrorCode::CONFIG, "dims".into())));
        assert_eq!(bad(&format!(r#"{{{base},"clusters":1,"dims":"2,1"}}"#)), Some((ErrorCode::CONFIG, "dims".into())));
        assert_eq!(
            bad(&format!(r#"{{{base},"clusters":2,"dims":[4294967296,4294967296]}}"#)),
            Some((ErrorCode::CONFIG, "dims".into()))
        );
        assert_eq!(bad(&format!(r#"{{{base},"dims":[2,1]}}"#)), Some((ErrorCode::CONFIG, "clusters".into())));
        assert_eq!(
            bad(&format!(r#"{{{base},"clusters":16777217,"dims":[2,1]}}"#)),
            Some((ErrorCode::CONFIG, "clusters".into()))
        );
        let v2 =
            r#"{"kind":"routing","format_version":2,"input_node":"a","output_node":"b","clusters":1,"dims":[2,1]}"#;
        assert_eq!(bad(v2), Some((ErrorCode::UNSUPPORTED, "format_version".into())));
        let lora = r#"{"kind":"lora","format_version":1,"input_node":"a","output_node":"b","clusters":1,"dims":[2,1]}"#;
        assert_eq!(bad(lora), Some((ErrorCode::CONFIG, "kind".into())));
        let no_in = r#"{"kind":"routing","format_version":1,"output_node":"b","clusters":1,"dims":[2,1]}"#;
        assert_eq!(bad(no_in), Some((ErrorCode::CONFIG, "input_node".into())));
    }

    #[test]
    fn options() -> Result<(), PluginError> {
        assert_eq!(parse_options("")?, LoadOptions::default());
        assert_eq!(parse_options(" {} ")?, LoadOptions::default());
        let cfg = Config::new("a", "b", 1, vec![2, 1]);
        let o = parse_options(&format!(r#"{{"config":{}}}"#, cfg.to_json()))?;
        assert_eq!(o.config, Some(cfg));
        assert_eq!(parse_options("[1]").map_err(|e| e.field.to_string()), Err("options".to_string()));
        assert_eq!(parse_options("{").map_err(|e| e.field.to_string()), Err("options".to_string()));
        assert_eq!(parse_options(r#"{"cfg":{}}"#).map_err(|e| e.field.to_string()), Err("cfg".to_string()));
        Ok(())
    }
}
