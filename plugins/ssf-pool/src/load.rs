//! Turning an adapter file (and optional load options) into a validated [`SsfPoolAdapter`].
//!
//! Validation happens here, once, so the hooks can trust every shape: each module path is
//! resolved through the host (which owns the name mapping), each tensor is checked for
//! presence, dtype, exact shape against the node and the pool size, and finiteness, and a
//! tensor the config does not name is refused (it usually means a forgotten site). Every
//! failure names the config field or the tensor.

use std::collections::BTreeSet;

use abi_stable::std_types::RStr;
use graft_plugin_abi::{ErrorCode, LoadRequest, ModelViewRef, NodeInfo, NodeOp, PluginError};

use crate::adapter::{Head, Pool, Site, SsfPoolAdapter};
use crate::config::{Config, FORMAT_VERSION, HeadConfig, PoolConfig, SiteConfig, config_err, parse_options};
use crate::file::{AdapterFile, CONFIG_KEY, F32Tensor};
use crate::select::{normalize_into, similarity_error_bound};

/// The largest pool: selected indices travel in the f32 run state, exact below 2²⁴.
pub const MAX_POOL_SIZE: usize = 1 << 24;

/// Loads the adapter file `request.source` against `model`.
pub fn load_file(request: &LoadRequest<'_>, model: &ModelViewRef<'_>) -> Result<SsfPoolAdapter, PluginError> {
    let source = request.source.as_str();
    let bytes =
        std::fs::read(source).map_err(|e| PluginError::new(ErrorCode::IO, source, format!("cannot read: {e}")))?;
    build(source, &bytes, request.options.as_str(), model)
}

/// Loads an adapter from the bytes of its file (for fuzzing and tests; the same
/// validation as [`load_file`]).
pub fn load_bytes(
    id: &str,
    bytes: &[u8],
    options: &str,
    model: &ModelViewRef<'_>,
) -> Result<SsfPoolAdapter, PluginError> {
    build(&format!("<memory:{id}>"), bytes, options, model)
}

fn shape_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::SHAPE, field, message)
}

/// Where the config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigOrigin {
    Options,
    File,
}

/// The config: the `config` load option if given, else the file's metadata.
pub(crate) fn read_config(file: &AdapterFile<'_>, options: &str) -> Result<(Config, ConfigOrigin), PluginError> {
    if let Some(config) = parse_options(options)? {
        return Ok((config, ConfigOrigin::Options));
    }
    match file.config_text() {
        Some(text) => Ok((Config::from_json(text)?, ConfigOrigin::File)),
        None => Err(config_err(
            CONFIG_KEY,
            format!(
                "{} has no `{CONFIG_KEY}` metadata; pass the config with the load option {{\"config\": {{...}}}}",
                file.source
            ),
        )),
    }
}

/// Resolves `path`, keeping the host's error code and naming the config `field`.
fn resolve(model: &ModelViewRef<'_>, path: &str, field: &str) -> Result<NodeInfo, PluginError> {
    model
        .resolve(RStr::from_str(path))
        .into_result()
        .map_err(|e| PluginError::new(e.code, field, format!("`{path}`: {}", e.message)))
}

fn expect_shape(t: &F32Tensor, name: &str, expected: &[usize], why: &str) -> Result<(), PluginError> {
    if t.shape == expected {
        Ok(())
    } else {
        Err(shape_err(name, format!("expected shape {expected:?} ({why}), found {:?}", t.shape)))
    }
}

/// The tensors of the file, with the names the config used struck off as they are read.
struct Tensors<'a> {
    file: &'a AdapterFile<'a>,
    unused: BTreeSet<String>,
}

impl Tensors<'_> {
    fn take(&mut self, name: &str, field: &str) -> Result<F32Tensor, PluginError> {
        let t = self.file.tensor(name, field)?;
        self.unused.remove(name);
        Ok(t)
    }
}

fn load_pool(pc: &PoolConfig, tensors: &mut Tensors<'_>, model: &ModelViewRef<'_>) -> Result<Pool, PluginError> {
    let node = resolve(model, &pc.query, "pool.query")?;
    let d = node.out_features;
    if d == 0 {
        return Err(shape_err("pool.query", format!("node `{}` has no outputs to query with", node.name)));
    }
    let keys = tensors.take(&pc.keys, "pool.keys")?;
    let p = match keys.shape[..] {
        [p, kd] if kd == d => p,
        _ => {
            return Err(shape_err(
                &pc.keys,
                format!("expected shape [P, {d}] (query node `{}` is {d} wide), found {:?}", node.name, keys.shape),
            ));
        }
    };
    if p == 0 {
        return Err(shape_err(&pc.keys, "the pool is empty (P = 0)"));
    }
    if p > MAX_POOL_SIZE {
        return Err(shape_err(&pc.keys, format!("pool size {p} exceeds the limit {MAX_POOL_SIZE}")));
    }
    if pc.top_k > p {
        return Err(config_err("pool.top_k", format!("top_k {} exceeds the pool size {p}", pc.top_k)));
    }
    let mut normalized = vec![0f32; keys.values.len()];
    for (k, out) in keys.values.chunks_exact(d).zip(normalized.chunks_exact_mut(d)) {
        normalize_into(k, pc.query_eps, out);
    }
    Ok(Pool {
        path: pc.query.clone(),
        node: node.node,
        node_name: node.name.to_string(),
        width: d,
        size: p,
        top_k: pc.top_k,
        eps: pc.query_eps,
        base_query: pc.base_query,
        keys: normalized,
        similarity_bound: similarity_error_bound(d),
    })
}

fn load_site(
    i: usize,
    sc: &SiteConfig,
    pool_size: Option<usize>,
    tensors: &mut Tensors<'_>,
    model: &ModelViewRef<'_>,
) -> Result<Site, PluginError> {
    let field = format!("sites[{i}].node");
    let node = resolve(model, &sc.node, &field)?;
    if node.op == NodeOp::Input {
        return Err(PluginError::new(
            ErrorCode::UNSUPPORTED,
            field,
            format!("`{}` is a graph input; an SSF site transforms a node's output", sc.node),
        ));
    }
    let c = node.out_features;
    if c == 0 {
        return Err(shape_err(&field, format!("node `{}` has no outputs", node.name)));
    }
    let mut params = Vec::with_capacity(2);
    for (key, name) in [("gamma", &sc.gamma), ("beta", &sc.beta)] {
        let t = tensors.take(name, &format!("sites[{i}].{key}"))?;
        match pool_size {
            Some(p) => {
                expect_shape(&t, name, &[p, c], &format!("pool size {p}, node `{}` has {c} outputs", node.name))?;
            }
            None if t.shape == [1, c] => {}
            None => {
                expect_shape(&t, name, &[c], &format!("node `{}` has {c} outputs; [1, {c}] also reads", node.name))?
            }
        }
        params.push(t.values);
    }
    let beta = params.pop().unwrap_or_default();
    let gamma = params.pop().unwrap_or_default();
    Ok(Site {
        path: sc.node.clone(),
        node: node.node,
        node_name: node.name.to_string(),
        op: node.op,
        in_features: node.in_features,
        width: c,
        gamma,
        beta,
        state_offset: 0,
    })
}

fn load_head(
    hc: &HeadConfig,
    pool: &Pool,
    tensors: &mut Tensors<'_>,
    model: &ModelViewRef<'_>,
) -> Result<Head, PluginError> {
    let node = resolve(model, &hc.node, "head.node")?;
    if node.op != NodeOp::Linear {
        return Err(PluginError::new(
            ErrorCode::UNSUPPORTED,
            "head.node",
            format!(
                "`{}` resolves to node `{}` ({:?}); a pooled head replaces a linear layer",
                hc.node, node.name, node.op
            ),
        ));
    }
    if node.node == pool.node {
        return Err(config_err(
            "head.node",
            format!("node `{}` is also the query node; the head needs the selection the query makes", node.name),
        ));
    }
    let (p, out, inf) = (pool.size, node.out_features, node.in_features);
    let why = format!("pool size {p}, node `{}` is {inf}→{out}", node.name);
    let weight = tensors.take(&hc.weight, "head.weight")?;
    expect_shape(&weight, &hc.weight, &[p, out, inf], &why)?;
    let bias = match &hc.bias {
        Some(name) => {
            let t = tensors.take(name, "head.bias")?;
            expect_shape(&t, name, &[p, out], &why)?;
            Some(t.values)
        }
        None => None,
    };
    Ok(Head {
        path: hc.node.clone(),
        node: node.node,
        node_name: node.name.to_string(),
        in_features: inf,
        out_features: out,
        weight: weight.values,
        bias,
    })
}

/// Parses and validates everything, then assembles the adapter.
pub(crate) fn build(
    source: &str,
    bytes: &[u8],
    options: &str,
    model: &ModelViewRef<'_>,
) -> Result<SsfPoolAdapter, PluginError> {
    let file = AdapterFile::parse(bytes, source)?;
    let (config, origin) = read_config(&file, options)?;
    let mut tensors = Tensors { file: &file, unused: file.names() };

    let pool = config.pool.as_ref().map(|pc| load_pool(pc, &mut tensors, model)).transpose()?;
    let pool_size = pool.as_ref().map(|p| p.size);
    let mut sites: Vec<Site> = Vec::with_capacity(config.sites.len());
    for (i, sc) in config.sites.iter().enumerate() {
        let site = load_site(i, sc, pool_size, &mut tensors, model)?;
        if let Some(j) = sites.iter().position(|s| s.node == site.node) {
            return Err(config_err(
                &format!("sites[{i}].node"),
                format!("`{}` resolves to node `{}`, which sites[{j}] already adapts", sc.node, site.node_name),
            ));
        }
        sites.push(site);
    }
    let head = match (&config.head, &pool) {
        (Some(hc), Some(pool)) => Some(load_head(hc, pool, &mut tensors, model)?),
        (Some(_), None) => return Err(config_err("head", "a pooled head needs a `pool`")),
        (None, _) => None,
    };
    if let Some(name) = tensors.unused.first() {
        return Err(PluginError::new(
            ErrorCode::TENSOR,
            name.as_str(),
            "not named by the config (every tensor must belong to a site, the pool or the head)",
        ));
    }

    let mut notes = vec![
        format!("format_version={FORMAT_VERSION}"),
        format!("config={}", if origin == ConfigOrigin::Options { "load option" } else { "file" }),
        format!("sites={}", sites.len()),
    ];
    if let Some(p) = &pool {
        notes.push(format!("pool_size={}", p.size));
        notes.push(format!("top_k={}", p.top_k));
        notes.push(format!("query={}", p.path));
        notes.push(format!("query_eps={:e}", p.eps));
        notes.push(format!("base_query={}", p.base_query));
    }
    if let Some(h) = &head {
        notes.push(format!("head={} (bias={})", h.path, h.bias.is_some()));
    }
    Ok(SsfPoolAdapter::new(source.to_owned(), sites, pool, head, notes))
}
