//! The `graft.adapter` config and the load options, parsed key by key.
//!
//! Parsing goes through an ordered list of `(key, value)` pairs rather than a serde struct
//! so that every error names its key: an unknown key (a typo would otherwise silently
//! change the model), a repeated key, a wrong type, or a value out of range are all
//! `CONFIG` errors whose `field` is the key. Defaults are filled in here, so the rest of
//! the crate sees one fully specified [`Config`].

use core::fmt;

use graft_plugin_abi::{ErrorCode, PluginError};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// The only `format_version` this crate reads and writes.
pub const FORMAT_VERSION: u64 = 1;
/// Largest config or options document accepted, in bytes.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;
/// Largest `bits` (`p`): bucket indices travel in f32 run state, exact below 2^24.
pub const MAX_BITS: u32 = 20;
/// Largest `tables` (`L`).
pub const MAX_TABLES: u32 = 256;
/// Largest `pending` and `exact_capacity` (ring indices are carried as f32 in scratch).
pub const MAX_RING: u32 = 1 << 24;
/// Smallest `logit_eps`: `logit(1 − eps)` must stay finite in f64.
pub const MIN_LOGIT_EPS: f64 = 1e-12;

/// Whether a value is a probability or a logit (`output_is`, `space`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    /// A probability in `[0, 1]`.
    Prob,
    /// A logit (`σ⁻¹` of a probability).
    Logit,
}

impl Units {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Units::Prob => "prob",
            Units::Logit => "logit",
        }
    }
}

/// How the error estimate `ê(h)` is computed (crate docs, "Estimates").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimate {
    /// `Σ_l S[l,b_l] / Σ_l C[l,b_l]` over the hit buckets.
    Pooled,
    /// Softmax-weighted top-k over the hit buckets as pseudo-samples.
    TopK,
    /// Brute-force top-k over the last `exact_capacity` raw samples (reference mode).
    Exact,
}

impl Estimate {
    /// The config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Estimate::Pooled => "pooled",
            Estimate::TopK => "topk",
            Estimate::Exact => "exact",
        }
    }
}

/// A fully specified error-memory configuration (every default filled in).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The node whose output is the key `h`.
    pub key_node: String,
    /// The width-1 node whose output is compensated.
    pub output_node: String,
    /// What `output_node` holds.
    pub output_is: Units,
    /// `L`, the number of hash tables.
    pub tables: u32,
    /// `p`, hyperplanes per table (`2^p` buckets per table).
    pub bits: u32,
    /// Seed of the generated projections (unused with `projections`).
    pub seed: u64,
    /// Name of a tensor in the file holding `R`, `[L·p, d]`.
    pub projections: Option<String>,
    /// The estimator.
    pub estimate: Estimate,
    /// `k` of the top-k estimators; `None` means `L`.
    pub top_k: Option<u32>,
    /// Softmax temperature `τ`.
    pub tau: f64,
    /// Compensation weight `λ ∈ [0, 1]`.
    pub lambda: f64,
    /// Units of the stored errors and of the compensation.
    pub space: Units,
    /// Forgetting factor `ρ ∈ (0, 1]` per insertion.
    pub decay: f64,
    /// Inserts only errors with `|e| ≥ threshold`.
    pub threshold: f64,
    /// Probabilities are clamped to `[eps, 1 − eps]` before `logit`.
    pub logit_eps: f64,
    /// Capacity of the ring of predictions awaiting a label.
    pub pending: u32,
    /// Raw samples kept by `estimate = "exact"`.
    pub exact_capacity: u32,
}

/// The config keys, in canonical order.
pub const CONFIG_KEYS: &[&str] = &[
    "kind",
    "format_version",
    "key_node",
    "output_node",
    "output_is",
    "tables",
    "bits",
    "seed",
    "projections",
    "estimate",
    "top_k",
    "tau",
    "lambda",
    "space",
    "decay",
    "threshold",
    "logit_eps",
    "pending",
    "exact_capacity",
];

pub(crate) fn config_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::CONFIG, field, message)
}

/// A JSON object's entries in document order; a repeated key is an error, not "last wins".
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries: Vec<(String, Value)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Value>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format_args!("duplicate key `{key}`")));
                    }
                    entries.push((key, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(V)
    }
}

fn parse_entries(bytes: &[u8], field: &str) -> Result<Vec<(String, Value)>, PluginError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(config_err(field, format!("{} bytes; at most {MAX_CONFIG_BYTES} are accepted", bytes.len())));
    }
    serde_json::from_slice::<Entries>(bytes)
        .map(|e| e.0)
        .map_err(|e| config_err(field, format!("not a JSON object: {e}")))
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

fn string(key: &str, v: &Value) -> Result<String, PluginError> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::String(_) => Err(config_err(key, "must not be empty")),
        other => Err(config_err(key, format!("expected a string, found {}", kind_of(other)))),
    }
}

fn integer(key: &str, v: &Value) -> Result<u64, PluginError> {
    v.as_u64().ok_or_else(|| config_err(key, format!("expected a non-negative integer, found {v}")))
}

fn bounded(key: &str, v: &Value, lo: u32, hi: u32) -> Result<u32, PluginError> {
    let n = integer(key, v)?;
    u32::try_from(n)
        .ok()
        .filter(|n| (lo..=hi).contains(n))
        .ok_or_else(|| config_err(key, format!("{n} is out of range {lo}..={hi}")))
}

fn number(key: &str, v: &Value) -> Result<f64, PluginError> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(config_err(key, format!("expected a finite number, found {v}"))),
    }
}

fn units(key: &str, v: &Value) -> Result<Units, PluginError> {
    match string(key, v)?.as_str() {
        "prob" => Ok(Units::Prob),
        "logit" => Ok(Units::Logit),
        s => Err(config_err(key, format!("`{s}` is not one of \"prob\", \"logit\""))),
    }
}

impl Config {
    /// A config with every default, for `key_node` and `output_node`.
    pub fn new(key_node: &str, output_node: &str) -> Config {
        Config {
            key_node: key_node.to_owned(),
            output_node: output_node.to_owned(),
            output_is: Units::Prob,
            tables: 8,
            bits: 10,
            seed: 0,
            projections: None,
            estimate: Estimate::Pooled,
            top_k: None,
            tau: 1.0,
            lambda: 0.5,
            space: Units::Prob,
            decay: 1.0,
            threshold: 0.0,
            logit_eps: 1e-6,
            pending: 65536,
            exact_capacity: 4096,
        }
    }

    /// Parses and validates a config document (`field` names its origin in errors).
    pub fn from_json(bytes: &[u8], field: &str) -> Result<Config, PluginError> {
        Config::from_entries(parse_entries(bytes, field)?, field)
    }

    fn from_entries(entries: Vec<(String, Value)>, field: &str) -> Result<Config, PluginError> {
        let get = |key: &str| entries.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        if let Some((key, _)) = entries.iter().find(|(k, _)| !CONFIG_KEYS.contains(&k.as_str())) {
            return Err(config_err(key, format!("unknown key (known keys: {})", CONFIG_KEYS.join(", "))));
        }
        match get("kind") {
            Some(v) if string("kind", v)? == crate::KIND => {}
            Some(v) => return Err(config_err("kind", format!("{v} is not \"{}\"", crate::KIND))),
            None => return Err(config_err("kind", format!("missing in {field} (expected \"{}\")", crate::KIND))),
        }
        match get("format_version") {
            Some(v) if integer("format_version", v)? == FORMAT_VERSION => {}
            Some(v) => {
                return Err(PluginError::new(
                    ErrorCode::UNSUPPORTED,
                    "format_version",
                    format!("{v}; this build reads format_version {FORMAT_VERSION}"),
                ));
            }
            None => return Err(config_err("format_version", format!("missing in {field}"))),
        }
        let required = |key: &str| {
            get(key).ok_or_else(|| config_err(key, format!("missing in {field}"))).and_then(|v| string(key, v))
        };
        let mut c = Config::new(&required("key_node")?, &required("output_node")?);
        for (key, v) in &entries {
            let key = key.as_str();
            match key {
                "output_is" => c.output_is = units(key, v)?,
                "tables" => c.tables = bounded(key, v, 1, MAX_TABLES)?,
                "bits" => c.bits = bounded(key, v, 1, MAX_BITS)?,
                "seed" => c.seed = integer(key, v)?,
                "projections" => c.projections = Some(string(key, v)?),
                "estimate" => {
                    c.estimate = match string(key, v)?.as_str() {
                        "pooled" => Estimate::Pooled,
                        "topk" => Estimate::TopK,
                        "exact" => Estimate::Exact,
                        s => {
                            return Err(config_err(
                                key,
                                format!("`{s}` is not one of \"pooled\", \"topk\", \"exact\""),
                            ));
                        }
                    }
                }
                "top_k" => c.top_k = Some(bounded(key, v, 1, MAX_RING)?),
                "tau" => c.tau = number(key, v)?,
                "lambda" => c.lambda = number(key, v)?,
                "space" => c.space = units(key, v)?,
                "decay" => c.decay = number(key, v)?,
                "threshold" => c.threshold = number(key, v)?,
                "logit_eps" => c.logit_eps = number(key, v)?,
                "pending" => c.pending = bounded(key, v, 1, MAX_RING)?,
                "exact_capacity" => c.exact_capacity = bounded(key, v, 1, MAX_RING)?,
                _ => {} // kind, format_version, key_node, output_node: read above.
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks every range and cross-field rule (the parser calls it; call it on a config
    /// built in code before [`save`](crate::save)).
    pub fn validate(&self) -> Result<(), PluginError> {
        for (key, v) in [("key_node", &self.key_node), ("output_node", &self.output_node)] {
            if v.is_empty() {
                return Err(config_err(key, "must not be empty"));
            }
        }
        if self.projections.as_deref() == Some("") {
            return Err(config_err("projections", "must not be empty"));
        }
        if !(1..=MAX_TABLES).contains(&self.tables) {
            return Err(config_err("tables", format!("{} is out of range 1..={MAX_TABLES}", self.tables)));
        }
        if !(1..=MAX_BITS).contains(&self.bits) {
            return Err(config_err("bits", format!("{} is out of range 1..={MAX_BITS}", self.bits)));
        }
        for (key, n) in [("pending", self.pending), ("exact_capacity", self.exact_capacity)] {
            if !(1..=MAX_RING).contains(&n) {
                return Err(config_err(key, format!("{n} is out of range 1..={MAX_RING}")));
            }
        }
        let finite_in = |key: &str, x: f64, ok: bool, range: &str| {
            if x.is_finite() && ok { Ok(()) } else { Err(config_err(key, format!("{x} is not in {range}"))) }
        };
        finite_in("tau", self.tau, self.tau > 0.0, "(0, ∞)")?;
        finite_in("lambda", self.lambda, (0.0..=1.0).contains(&self.lambda), "[0, 1]")?;
        finite_in("decay", self.decay, self.decay > 0.0 && self.decay <= 1.0, "(0, 1]")?;
        finite_in("threshold", self.threshold, self.threshold >= 0.0, "[0, ∞)")?;
        finite_in(
            "logit_eps",
            self.logit_eps,
            (MIN_LOGIT_EPS..0.5).contains(&self.logit_eps),
            &format!("[{MIN_LOGIT_EPS:e}, 0.5)"),
        )?;
        if let Some(k) = self.top_k {
            let limit = match self.estimate {
                Estimate::TopK => self.tables,
                Estimate::Exact => self.exact_capacity,
                Estimate::Pooled => MAX_RING,
            };
            if k == 0 || k > limit {
                let why = match self.estimate {
                    Estimate::TopK => "tables (the candidates are the L hit buckets)",
                    Estimate::Exact => "exact_capacity",
                    Estimate::Pooled => "the ring limit",
                };
                return Err(config_err("top_k", format!("{k} is not in 1..={limit} ({why})")));
            }
        }
        Ok(())
    }

    /// The effective `k` of the top-k estimators.
    pub fn k(&self) -> usize {
        self.top_k.unwrap_or(self.tables) as usize
    }

    /// The whole config as a JSON object in canonical key order (what [`save`](crate::save)
    /// writes as `graft.adapter`).
    pub fn to_json(&self) -> String {
        let s = |v: &str| Value::String(v.to_owned()).to_string();
        let mut out = format!(
            "{{\"kind\":{},\"format_version\":{FORMAT_VERSION},\"key_node\":{},\"output_node\":{},\"output_is\":{},\
             \"tables\":{},\"bits\":{},\"seed\":{}",
            s(crate::KIND),
            s(&self.key_node),
            s(&self.output_node),
            s(self.output_is.name()),
            self.tables,
            self.bits,
            self.seed
        );
        if let Some(p) = &self.projections {
            out.push_str(&format!(",\"projections\":{}", s(p)));
        }
        out.push_str(&format!(",\"estimate\":{}", s(self.estimate.name())));
        if let Some(k) = self.top_k {
            out.push_str(&format!(",\"top_k\":{k}"));
        }
        out.push_str(&format!(
            ",\"tau\":{},\"lambda\":{},\"space\":{},\"decay\":{},\"threshold\":{},\"logit_eps\":{},\"pending\":{},\
             \"exact_capacity\":{}}}",
            json_f64(self.tau),
            json_f64(self.lambda),
            s(self.space.name()),
            json_f64(self.decay),
            json_f64(self.threshold),
            json_f64(self.logit_eps),
            self.pending,
            self.exact_capacity
        ));
        out
    }

    /// The canonical JSON of the fields that give saved state its meaning (hashed, with
    /// the projection bytes, into the state's `config_hash`; see the crate docs).
    pub(crate) fn state_identity(&self, d: usize) -> String {
        let s = |v: &str| Value::String(v.to_owned()).to_string();
        format!(
            "{{\"kind\":{},\"format_version\":{FORMAT_VERSION},\"key_node\":{},\"output_node\":{},\"d\":{d},\
             \"tables\":{},\"bits\":{},\"estimate\":{},\"space\":{},\"logit_eps\":{},\"exact_capacity\":{}}}",
            s(crate::KIND),
            s(&self.key_node),
            s(&self.output_node),
            self.tables,
            self.bits,
            s(self.estimate.name()),
            s(self.space.name()),
            json_f64(self.logit_eps),
            self.exact_capacity
        )
    }
}

/// A finite f64 as JSON (shortest round-trip form; integers keep a `.0`).
fn json_f64(x: f64) -> String {
    serde_json::Number::from_f64(x).map_or_else(|| "null".to_owned(), |n| n.to_string())
}

/// `LoadRequest.options`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LoadOptions {
    /// Replaces the file's `graft.adapter` metadata.
    pub config: Option<Config>,
    /// Saved state to restore.
    pub state: Option<String>,
    /// Memory budget for the sketch, exact ring and pending ring together, in bytes.
    pub max_bytes: Option<u64>,
}

/// The options document: `config` keeps its entries in order (so a repeated key inside it
/// is refused too), everything else is a plain value.
enum OptionValue {
    Config(Entries),
    Plain(Value),
}

struct OptionEntries(Vec<(String, OptionValue)>);

impl<'de> Deserialize<'de> for OptionEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OptionEntries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OptionEntries, A::Error> {
                let mut entries: Vec<(String, OptionValue)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(serde::de::Error::custom(format_args!("duplicate key `{key}`")));
                    }
                    let value = if key == "config" {
                        OptionValue::Config(map.next_value::<Entries>()?)
                    } else {
                        OptionValue::Plain(map.next_value::<Value>()?)
                    };
                    entries.push((key, value));
                }
                Ok(OptionEntries(entries))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// Parses the load options: `""` or a JSON object with `config` and/or `state`.
pub(crate) fn parse_options(json: &str) -> Result<LoadOptions, PluginError> {
    if json.trim().is_empty() {
        return Ok(LoadOptions::default());
    }
    if json.len() > MAX_CONFIG_BYTES {
        return Err(config_err("options", format!("{} bytes; at most {MAX_CONFIG_BYTES} are accepted", json.len())));
    }
    let entries = serde_json::from_str::<OptionEntries>(json)
        .map_err(|e| config_err("options", format!("not a JSON object (or `config` is not one): {e}")))?;
    let mut options = LoadOptions::default();
    for (key, v) in entries.0 {
        match (key.as_str(), v) {
            ("config", OptionValue::Config(c)) => {
                options.config = Some(Config::from_entries(c.0, "the `config` option")?);
            }
            ("state", OptionValue::Plain(v)) => options.state = Some(string("state", &v)?),
            ("max_bytes", OptionValue::Plain(v)) => options.max_bytes = Some(integer("max_bytes", &v)?),
            _ => return Err(config_err(&key, "unknown load option (known: config, state, max_bytes)")),
        }
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(json: &str) -> Result<Config, PluginError> {
        Config::from_json(json.as_bytes(), "test")
    }

    const BASE: &str = r#""kind":"error-memory","format_version":1,"key_node":"h","output_node":"y""#;

    #[test]
    fn defaults_and_round_trip() {
        let c = parse(&format!("{{{BASE}}}")).unwrap();
        assert_eq!(c, Config::new("h", "y"));
        assert_eq!(c.k(), 8);
        let mut c2 = c.clone();
        c2.projections = Some("R".into());
        c2.top_k = Some(3);
        c2.estimate = Estimate::TopK;
        c2.tau = 0.25;
        assert_eq!(parse(&c2.to_json()).unwrap(), c2);
    }

    #[test]
    fn duplicate_and_unknown_keys() {
        let e = parse(&format!("{{{BASE},\"bits\":3,\"bits\":4}}")).unwrap_err();
        assert!(e.message.contains("duplicate key `bits`"), "{e}");
        let e = parse(&format!("{{{BASE},\"tabels\":3}}")).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::CONFIG, "tabels"));
    }

    #[test]
    fn identity_ignores_query_time_fields() {
        let a = Config::new("h", "y");
        let mut b = a.clone();
        b.lambda = 0.1;
        b.tau = 3.0;
        b.decay = 0.5;
        assert_eq!(a.state_identity(4), b.state_identity(4));
        b.bits = 3;
        assert_ne!(a.state_identity(4), b.state_identity(4));
        assert_ne!(a.state_identity(4), a.state_identity(5));
    }
}
