//! The `graft.adapter` JSON config and the load options.
//!
//! Parsing is strict on purpose: a typo in a key (`top-k`, `base_qeury`) or a key written
//! twice would otherwise load a silently different model, so unknown and duplicate keys
//! are `CONFIG` errors naming the key, and every error names the field by its JSON path
//! (`pool.top_k`, `sites[1].gamma`). Only structural rules live here; everything that
//! needs the tensors or the model is checked by the loader.

use core::fmt;

use graft_plugin_abi::{ErrorCode, PluginError};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The `kind` every config must carry.
pub const CONFIG_KIND: &str = "ssf-pool";
/// The only `format_version` this build reads.
pub const FORMAT_VERSION: u64 = 1;
/// Default `pool.query_eps` (torch `F.normalize`).
pub const DEFAULT_QUERY_EPS: f64 = 1e-12;

/// One SSF site: `y ← γ ⊙ y + β` on the output of `node`.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteConfig {
    /// Module path of the node whose output is scaled and shifted.
    pub node: String,
    /// Name of the scale tensor (`[C]`/`[1, C]`, or `[P, C]` with a pool).
    pub gamma: String,
    /// Name of the shift tensor (same shape as `gamma`).
    pub beta: String,
}

/// The FedIns pool: per-row selection of `top_k` entries by cosine similarity.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Name of the key tensor `[P, D]`.
    pub keys: String,
    /// Module path of the node (or graph input) whose output is the query (`D` wide).
    pub query: String,
    /// Entries selected per row, `1..=P`.
    pub top_k: usize,
    /// Norm floor of the query and key normalization (`> 0`).
    pub query_eps: f64,
    /// Whether the query must be the base model's value (no adapter hooks before it).
    pub base_query: bool,
}

impl PoolConfig {
    /// A pool with the default `query_eps` and `base_query = true`.
    pub fn new(keys: &str, query: &str, top_k: usize) -> PoolConfig {
        PoolConfig {
            keys: keys.to_owned(),
            query: query.to_owned(),
            top_k,
            query_eps: DEFAULT_QUERY_EPS,
            base_query: true,
        }
    }
}

/// A pool of classifier heads at a linear node, averaged over the selected entries.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadConfig {
    /// Module path of the linear node the pooled head replaces.
    pub node: String,
    /// Name of the weight tensor `[P, out, in]`.
    pub weight: String,
    /// Name of the bias tensor `[P, out]`; none means zero bias.
    pub bias: Option<String>,
}

/// An `ssf-pool` adapter config (the `graft.adapter` metadata value).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The SSF sites (at least one).
    pub sites: Vec<SiteConfig>,
    /// The FedIns pool; none for a static SSF adapter.
    pub pool: Option<PoolConfig>,
    /// Pooled classifier heads (needs `pool`).
    pub head: Option<HeadConfig>,
}

impl SiteConfig {
    /// A site at `node` with tensors `gamma` and `beta`.
    pub fn new(node: &str, gamma: &str, beta: &str) -> SiteConfig {
        SiteConfig { node: node.to_owned(), gamma: gamma.to_owned(), beta: beta.to_owned() }
    }
}

pub(crate) fn config_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::CONFIG, field, message)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
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

/// A JSON value parsed like `serde_json::Value`, except that an object with a key written
/// twice is an error (serde_json keeps the last one silently).
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(Value::Number(v.into())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Strict, E> {
        Number::from_f64(v).map(|n| Strict(Value::Number(n))).ok_or_else(|| E::custom("non-finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(Value::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(Value::String(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Strict, E> {
        Ok(Strict(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Strict, D::Error> {
        Strict::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict(Value::Array(out)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            out.insert(key, v);
        }
        Ok(Strict(Value::Object(out)))
    }
}

/// Parses JSON text, refusing duplicate keys.
fn parse_json(text: &str, field: &str) -> Result<Value, PluginError> {
    serde_json::from_str::<Strict>(text).map(|s| s.0).map_err(|e| config_err(field, format!("not valid JSON: {e}")))
}

/// An object's entries, checked against the keys it may have.
fn object<'a>(v: &'a Value, path: &str, allowed: &[&str]) -> Result<&'a Map<String, Value>, PluginError> {
    let Value::Object(map) = v else {
        let field = if path.is_empty() { "graft.adapter" } else { path };
        return Err(config_err(field, format!("expected a JSON object, found {}", kind_of(v))));
    };
    if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(config_err(&join(path, key), format!("unknown key `{key}` (allowed: {})", allowed.join(", "))));
    }
    Ok(map)
}

fn required<'a>(map: &'a Map<String, Value>, path: &str, key: &str) -> Result<&'a Value, PluginError> {
    map.get(key).ok_or_else(|| config_err(&join(path, key), "missing (required)"))
}

/// A non-empty string.
fn string(v: &Value, field: &str) -> Result<String, PluginError> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::String(_) => Err(config_err(field, "must not be empty")),
        other => Err(config_err(field, format!("expected a string, found {}", kind_of(other)))),
    }
}

fn unsigned(v: &Value, field: &str) -> Result<u64, PluginError> {
    v.as_u64().ok_or_else(|| config_err(field, format!("expected a non-negative integer, found {v}")))
}

fn boolean(v: &Value, field: &str) -> Result<bool, PluginError> {
    v.as_bool().ok_or_else(|| config_err(field, format!("expected true or false, found {}", kind_of(v))))
}

fn number(v: &Value, field: &str) -> Result<f64, PluginError> {
    v.as_f64().ok_or_else(|| config_err(field, format!("expected a number, found {}", kind_of(v))))
}

const TOP_KEYS: &[&str] = &["kind", "format_version", "sites", "pool", "head"];
const SITE_KEYS: &[&str] = &["node", "gamma", "beta"];
const POOL_KEYS: &[&str] = &["keys", "query", "top_k", "query_eps", "base_query"];
const HEAD_KEYS: &[&str] = &["node", "weight", "bias"];

fn site_from(v: &Value, path: &str) -> Result<SiteConfig, PluginError> {
    let map = object(v, path, SITE_KEYS)?;
    Ok(SiteConfig {
        node: string(required(map, path, "node")?, &join(path, "node"))?,
        gamma: string(required(map, path, "gamma")?, &join(path, "gamma"))?,
        beta: string(required(map, path, "beta")?, &join(path, "beta"))?,
    })
}

fn pool_from(v: &Value) -> Result<PoolConfig, PluginError> {
    let path = "pool";
    let map = object(v, path, POOL_KEYS)?;
    let top_k = unsigned(required(map, path, "top_k")?, "pool.top_k")?;
    Ok(PoolConfig {
        keys: string(required(map, path, "keys")?, "pool.keys")?,
        query: string(required(map, path, "query")?, "pool.query")?,
        top_k: usize::try_from(top_k).map_err(|_| config_err("pool.top_k", format!("{top_k} is too large")))?,
        query_eps: map.get("query_eps").map(|v| number(v, "pool.query_eps")).transpose()?.unwrap_or(DEFAULT_QUERY_EPS),
        base_query: map.get("base_query").map(|v| boolean(v, "pool.base_query")).transpose()?.unwrap_or(true),
    })
}

fn head_from(v: &Value) -> Result<HeadConfig, PluginError> {
    let path = "head";
    let map = object(v, path, HEAD_KEYS)?;
    Ok(HeadConfig {
        node: string(required(map, path, "node")?, "head.node")?,
        weight: string(required(map, path, "weight")?, "head.weight")?,
        bias: map.get("bias").map(|v| string(v, "head.bias")).transpose()?,
    })
}

impl Config {
    /// A static SSF config over `sites`.
    pub fn ssf(sites: Vec<SiteConfig>) -> Config {
        Config { sites, pool: None, head: None }
    }

    /// Reads a config from its JSON value (the `graft.adapter` metadata, or the `config`
    /// load option), then checks the structural rules ([`Config::validate`]).
    pub fn from_value(v: &Value) -> Result<Config, PluginError> {
        let map = object(v, "", TOP_KEYS)?;
        match required(map, "", "kind")? {
            Value::String(k) if k == CONFIG_KIND => {}
            Value::String(k) => {
                return Err(config_err("kind", format!("this config is for kind `{k}`, not `{CONFIG_KIND}`")));
            }
            other => return Err(config_err("kind", format!("expected a string, found {}", kind_of(other)))),
        }
        let version = unsigned(required(map, "", "format_version")?, "format_version")?;
        if version != FORMAT_VERSION {
            return Err(PluginError::new(
                ErrorCode::UNSUPPORTED,
                "format_version",
                format!("format version {version} is not supported (this build reads version {FORMAT_VERSION})"),
            ));
        }
        let sites = match required(map, "", "sites")? {
            Value::Array(items) => {
                items.iter().enumerate().map(|(i, s)| site_from(s, &format!("sites[{i}]"))).collect::<Result<_, _>>()?
            }
            other => return Err(config_err("sites", format!("expected an array, found {}", kind_of(other)))),
        };
        let config = Config {
            sites,
            pool: map.get("pool").map(pool_from).transpose()?,
            head: map.get("head").map(head_from).transpose()?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Parses the config from JSON text (duplicate keys are refused).
    pub fn from_json(text: &str) -> Result<Config, PluginError> {
        Config::from_value(&parse_json(text, "graft.adapter")?)
    }

    /// The rules that need neither the tensors nor the model: at least one site, no site
    /// node named twice, non-empty names, `top_k ≥ 1`, `query_eps` finite and positive,
    /// and a head only with a pool.
    pub fn validate(&self) -> Result<(), PluginError> {
        if self.sites.is_empty() {
            return Err(config_err("sites", "at least one site is required"));
        }
        let names = self.sites.iter().enumerate().flat_map(|(i, s)| {
            [("node", &s.node), ("gamma", &s.gamma), ("beta", &s.beta)].map(|(k, v)| (format!("sites[{i}].{k}"), v))
        });
        for (field, name) in names {
            if name.is_empty() {
                return Err(config_err(&field, "must not be empty"));
            }
        }
        for (i, s) in self.sites.iter().enumerate() {
            if let Some(j) = self.sites[..i].iter().position(|t| t.node == s.node) {
                return Err(config_err(
                    &format!("sites[{i}].node"),
                    format!("node `{}` already has a site (sites[{j}])", s.node),
                ));
            }
        }
        if let Some(pool) = &self.pool {
            for (field, name) in [("pool.keys", &pool.keys), ("pool.query", &pool.query)] {
                if name.is_empty() {
                    return Err(config_err(field, "must not be empty"));
                }
            }
            if pool.top_k == 0 {
                return Err(config_err("pool.top_k", "must be at least 1"));
            }
            if !(pool.query_eps.is_finite() && pool.query_eps > 0.0) {
                return Err(config_err(
                    "pool.query_eps",
                    format!("must be a finite number > 0, found {}", pool.query_eps),
                ));
            }
        }
        if let Some(head) = &self.head {
            if self.pool.is_none() {
                return Err(config_err("head", "a pooled head needs a `pool` to select its entries"));
            }
            let bias = head.bias.as_ref().map(|b| ("head.bias", b));
            for (field, name) in [("head.node", &head.node), ("head.weight", &head.weight)].into_iter().chain(bias) {
                if name.is_empty() {
                    return Err(config_err(field, "must not be empty"));
                }
            }
        }
        Ok(())
    }

    /// The config as a JSON value, with `kind` and `format_version`.
    pub fn to_value(&self) -> Value {
        let mut top = Map::new();
        top.insert("kind".into(), CONFIG_KIND.into());
        top.insert("format_version".into(), FORMAT_VERSION.into());
        let sites = self
            .sites
            .iter()
            .map(|s| {
                let mut m = Map::new();
                m.insert("node".into(), s.node.as_str().into());
                m.insert("gamma".into(), s.gamma.as_str().into());
                m.insert("beta".into(), s.beta.as_str().into());
                Value::Object(m)
            })
            .collect();
        top.insert("sites".into(), Value::Array(sites));
        if let Some(p) = &self.pool {
            let mut m = Map::new();
            m.insert("keys".into(), p.keys.as_str().into());
            m.insert("query".into(), p.query.as_str().into());
            m.insert("top_k".into(), (p.top_k as u64).into());
            m.insert("query_eps".into(), Number::from_f64(p.query_eps).map_or(Value::Null, Value::Number));
            m.insert("base_query".into(), p.base_query.into());
            top.insert("pool".into(), Value::Object(m));
        }
        if let Some(h) = &self.head {
            let mut m = Map::new();
            m.insert("node".into(), h.node.as_str().into());
            m.insert("weight".into(), h.weight.as_str().into());
            if let Some(b) = &h.bias {
                m.insert("bias".into(), b.as_str().into());
            }
            top.insert("head".into(), Value::Object(m));
        }
        Value::Object(top)
    }

    /// The config as compact JSON text.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// Every tensor name the config refers to, in config order (a name may repeat).
    pub fn tensor_names(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        if let Some(p) = &self.pool {
            out.push(&p.keys);
        }
        for s in &self.sites {
            out.push(&s.gamma);
            out.push(&s.beta);
        }
        if let Some(h) = &self.head {
            out.push(&h.weight);
            out.extend(h.bias.as_deref());
        }
        out
    }
}

/// Reads the load options: `""` (or whitespace) or a JSON object whose only key is
/// `config`, a config object that takes precedence over the file's metadata.
pub(crate) fn parse_options(options: &str) -> Result<Option<Config>, PluginError> {
    if options.trim().is_empty() {
        return Ok(None);
    }
    let value = parse_json(options, "options")?;
    let Value::Object(map) = &value else {
        return Err(config_err("options", format!("expected a JSON object, found {}", kind_of(&value))));
    };
    if let Some(key) = map.keys().find(|k| k.as_str() != "config") {
        return Err(config_err(
            &format!("options.{key}"),
            format!("unknown load option `{key}` (the ssf-pool kind accepts `config`)"),
        ));
    }
    match map.get("config") {
        None => Ok(None),
        Some(v @ Value::Object(_)) => Config::from_value(v).map(Some),
        Some(other) => Err(config_err("options.config", format!("expected a config object, found {}", kind_of(other)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, PluginError> {
        Config::from_json(text)
    }

    fn field(r: Result<Config, PluginError>) -> (ErrorCode, String) {
        match r {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => (e.code, e.field.to_string()),
        }
    }

    const SITE: &str = r#"{"node":"fc","gamma":"g","beta":"b"}"#;

    #[test]
    fn round_trip_keeps_every_field() -> Result<(), PluginError> {
        let config = Config {
            sites: vec![SiteConfig::new("a", "ga", "ba"), SiteConfig::new("b", "gb", "bb")],
            pool: Some(PoolConfig { query_eps: 1e-6, base_query: false, ..PoolConfig::new("keys", "x", 3) }),
            head: Some(HeadConfig { node: "head".into(), weight: "hw".into(), bias: Some("hb".into()) }),
        };
        assert_eq!(parse(&config.to_json())?, config);
        let plain = Config::ssf(vec![SiteConfig::new("a", "g", "b")]);
        assert_eq!(parse(&plain.to_json())?, plain);
        Ok(())
    }

    #[test]
    fn defaults() -> Result<(), PluginError> {
        let c = parse(&format!(
            r#"{{"kind":"ssf-pool","format_version":1,"sites":[{SITE}],"pool":{{"keys":"k","query":"x","top_k":2}}}}"#
        ))?;
        let pool = c.pool.as_ref().map(|p| (p.query_eps, p.base_query));
        assert_eq!(pool, Some((DEFAULT_QUERY_EPS, true)));
        Ok(())
    }

    #[test]
    fn errors_name_the_field() {
        let base = |extra: &str| format!(r#"{{"kind":"ssf-pool","format_version":1,"sites":[{SITE}]{extra}}}"#);
        let cases: &[(String, ErrorCode, &str)] = &[
            ("{".into(), ErrorCode::CONFIG, "graft.adapter"),
            ("[]".into(), ErrorCode::CONFIG, "graft.adapter"),
            (base(r#","extra":1"#), ErrorCode::CONFIG, "extra"),
            (base(r#","kind":"ssf-pool""#), ErrorCode::CONFIG, "graft.adapter"),
            (r#"{"format_version":1,"sites":[]}"#.into(), ErrorCode::CONFIG, "kind"),
            (r#"{"kind":"lora","format_version":1,"sites":[]}"#.into(), ErrorCode::CONFIG, "kind"),
            (r#"{"kind":"ssf-pool","format_version":2,"sites":[]}"#.into(), ErrorCode::UNSUPPORTED, "format_version"),
            (r#"{"kind":"ssf-pool","format_version":"1","sites":[]}"#.into(), ErrorCode::CONFIG, "format_version"),
            (r#"{"kind":"ssf-pool","format_version":1,"sites":[]}"#.into(), ErrorCode::CONFIG, "sites"),
            (r#"{"kind":"ssf-pool","format_version":1,"sites":{}}"#.into(), ErrorCode::CONFIG, "sites"),
            (
                r#"{"kind":"ssf-pool","format_version":1,"sites":[{"node":"a","gamma":"g"}]}"#.into(),
                ErrorCode::CONFIG,
                "sites[0].beta",
            ),
            (
                r#"{"kind":"ssf-pool","format_version":1,"sites":[{"node":"a","gamma":"g","beta":"b","scale":1}]}"#
                    .into(),
                ErrorCode::CONFIG,
                "sites[0].scale",
            ),
            (
                r#"{"kind":"ssf-pool","format_version":1,"sites":[{"node":"","gamma":"g","beta":"b"}]}"#.into(),
                ErrorCode::CONFIG,
                "sites[0].node",
            ),
            (
                format!(r#"{{"kind":"ssf-pool","format_version":1,"sites":[{SITE},{SITE}]}}"#),
                ErrorCode::CONFIG,
                "sites[1].node",
            ),
            (base(r#","pool":{"keys":"k","query":"x","top_k":0}"#), ErrorCode::CONFIG, "pool.top_k"),
            (base(r#","pool":{"keys":"k","query":"x","top_k":-1}"#), ErrorCode::CONFIG, "pool.top_k"),
            (base(r#","pool":{"keys":"k","query":"x"}"#), ErrorCode::CONFIG, "pool.top_k"),
            (base(r#","pool":{"keys":"k","query":"x","top_k":2,"topk":2}"#), ErrorCode::CONFIG, "pool.topk"),
            (base(r#","pool":{"keys":"k","query":"x","top_k":2,"query_eps":0}"#), ErrorCode::CONFIG, "pool.query_eps"),
            (
                base(r#","pool":{"keys":"k","query":"x","top_k":2,"query_eps":-1e-3}"#),
                ErrorCode::CONFIG,
                "pool.query_eps",
            ),
            (
                base(r#","pool":{"keys":"k","query":"x","top_k":2,"base_query":1}"#),
                ErrorCode::CONFIG,
                "pool.base_query",
            ),
            (base(r#","head":{"node":"h","weight":"w"}"#), ErrorCode::CONFIG, "head"),
            (
                base(r#","pool":{"keys":"k","query":"x","top_k":1},"head":{"node":"h"}"#),
                ErrorCode::CONFIG,
                "head.weight",
            ),
        ];
        for (text, code, want) in cases {
            assert_eq!(field(parse(text)), (*code, want.to_string()), "{text}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_every_depth() {
        let dup_top = format!(r#"{{"kind":"ssf-pool","format_version":1,"format_version":1,"sites":[{SITE}]}}"#);
        let dup_site =
            r#"{"kind":"ssf-pool","format_version":1,"sites":[{"node":"a","node":"b","gamma":"g","beta":"b"}]}"#;
        for text in [dup_top.as_str(), dup_site] {
            let (code, f) = field(parse(text));
            assert_eq!((code, f.as_str()), (ErrorCode::CONFIG, "graft.adapter"));
        }
    }

    #[test]
    fn options() -> Result<(), PluginError> {
        assert_eq!(parse_options("")?, None);
        assert_eq!(parse_options("  \n")?, None);
        assert_eq!(parse_options("{}")?, None);
        let c = parse_options(&format!(r#"{{"config":{{"kind":"ssf-pool","format_version":1,"sites":[{SITE}]}}}}"#))?;
        assert_eq!(c.map(|c| c.sites.len()), Some(1));
        for (text, want) in [("[1]", "options"), ("{", "options"), (r#"{"scaling":1}"#, "options.scaling")] {
            let e = parse_options(text).err().map(|e| (e.code, e.field.to_string()));
            assert_eq!(e, Some((ErrorCode::CONFIG, want.to_string())), "{text}");
        }
        let e = parse_options(r#"{"config":3}"#).err().map(|e| (e.code, e.field.to_string()));
        assert_eq!(e, Some((ErrorCode::CONFIG, "options.config".to_string())));
        Ok(())
    }
}
