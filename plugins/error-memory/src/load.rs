//! Turning an adapter file (or its bytes) into a validated [`ErrorMemory`] for one model.
//!
//! Order: options, file and config (model-independent, in `file`), then the two nodes
//! through the host's resolver, the key width, the projections, memory limits, and
//! finally the saved state if the options name one. Every failure names its field.

use std::sync::Mutex;

use abi_stable::std_types::RStr;
use graft_plugin_abi::{ErrorCode, LoadRequest, ModelViewRef, NodeOp, PluginError};

use crate::adapter::{Counters, ErrorMemory, NodeRef, WriterState};
use crate::config::{Config, LoadOptions, config_err, parse_options};
use crate::file::{AdapterFile, parse, read_file, sketch_floats};
use crate::pending::Pending;
use crate::projections::projections_from_seed;
use crate::sketch::{Sketch, Writer};
use crate::state::{Fnv1a, Identity};

/// Largest memory (sketch cells and exact ring) one adapter may allocate, in bytes.
pub const MAX_SKETCH_BYTES: u64 = 1 << 30;
/// Largest pending ring one adapter may allocate, in bytes.
pub const MAX_PENDING_BYTES: u64 = 1 << 30;
/// Default budget for everything an error memory allocates (sketch, exact ring, pending
/// ring), so a small file cannot claim gigabytes on a device; the load option
/// `{"max_bytes": n}` raises or lowers it (up to the two limits above).
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// Loads the error-memory file `request.source` against `model`. Options (`request.options`):
/// `""` or `{"config": {…}, "state": "<path>"}`.
pub fn load_file(request: &LoadRequest<'_>, model: &ModelViewRef<'_>) -> Result<ErrorMemory, PluginError> {
    let source = request.source.as_str();
    let options = parse_options(request.options.as_str())?;
    let file = parse(&read_file(source)?, source, options.config.clone())?;
    build(source, file, &options, model)
}

/// Loads from the file's bytes (the same validation as [`load_file`]; for fuzzing and tests).
pub fn load_bytes(
    id: &str,
    bytes: &[u8],
    options_json: &str,
    model: &ModelViewRef<'_>,
) -> Result<ErrorMemory, PluginError> {
    let source = format!("<memory:{id}>");
    let options = parse_options(options_json)?;
    let file = parse(bytes, &source, options.config.clone())?;
    build(&source, file, &options, model)
}

/// The hash of everything that gives saved state its meaning (crate docs, "State").
fn config_hash(config: &Config, d: usize, projections: &[f32]) -> u64 {
    let mut h = Fnv1a::default();
    h.update(config.state_identity(d).as_bytes());
    h.update_f32(projections);
    h.finish()
}

fn build(
    source: &str,
    file: AdapterFile,
    options: &LoadOptions,
    model: &ModelViewRef<'_>,
) -> Result<ErrorMemory, PluginError> {
    let state = options.state.as_deref();
    let AdapterFile { config, projections } = file;
    let key = model.resolve(RStr::from_str(&config.key_node)).into_result()?;
    let output = model.resolve(RStr::from_str(&config.output_node)).into_result()?;
    let d = key.out_features;
    if d == 0 {
        return Err(PluginError::new(ErrorCode::SHAPE, &config.key_node, format!("node `{}` has width 0", key.name)));
    }
    if output.op == NodeOp::Input {
        return Err(PluginError::new(
            ErrorCode::UNSUPPORTED,
            &config.output_node,
            format!("node `{}` is a graph input; only a computed node's output can be compensated", output.name),
        ));
    }
    if output.out_features != 1 {
        return Err(PluginError::new(
            ErrorCode::SHAPE,
            &config.output_node,
            format!("node `{}` has width {}; the compensated node must have width 1", output.name, output.out_features),
        ));
    }
    let projections = match projections {
        Some((name, cols, values)) => {
            if cols != d {
                return Err(PluginError::new(
                    ErrorCode::SHAPE,
                    &name,
                    format!("has {cols} columns; the key node `{}` has width {d}", key.name),
                ));
            }
            values
        }
        None => projections_from_seed(config.seed, config.tables as usize, config.bits as usize, d),
    };

    let sketch_bytes = sketch_floats(&config, d).map_or(u64::MAX, |f| (f as u64).saturating_mul(4));
    if sketch_bytes > MAX_SKETCH_BYTES {
        let field = if config.estimate == crate::config::Estimate::Exact { "exact_capacity" } else { "bits" };
        return Err(config_err(
            field,
            format!("the memory would take {sketch_bytes} bytes (d = {d}); the limit is {MAX_SKETCH_BYTES}"),
        ));
    }
    let pending_bytes = (config.pending as u64).saturating_mul(Pending::slot_bytes(d, config.tables as usize) as u64);
    if pending_bytes > MAX_PENDING_BYTES {
        return Err(config_err(
            "pending",
            format!("the pending ring would take {pending_bytes} bytes (d = {d}); the limit is {MAX_PENDING_BYTES}"),
        ));
    }

    let budget = options.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
    let total = sketch_bytes.saturating_add(pending_bytes);
    if total > budget {
        return Err(config_err(
            "max_bytes",
            format!(
                "the memory would take {total} bytes ({sketch_bytes} sketch + {pending_bytes} pending ring, d = {d}); \
                 the budget is {budget} (raise it with the load option {{\"max_bytes\": n}})"
            ),
        ));
    }
    let tables = config.tables as usize;
    let sketch =
        Sketch::new(tables, config.bits, d, config.estimate, config.k(), config.tau, config.exact_capacity as usize)?;
    let pending = Pending::new(config.pending as usize, d, tables)?;
    let identity = Identity { fingerprint: model.fingerprint(), config_hash: config_hash(&config, d, &projections) };
    let writer = WriterState {
        writer: Writer { weight: 1.0, decay: config.decay, renormalizations: 0 },
        h: vec![0.0; d],
        buckets: vec![0; tables],
    };
    let mut memory = ErrorMemory {
        source: source.to_owned(),
        d,
        key: NodeRef { node: key.node, name: key.name.to_string() },
        output: NodeRef { node: output.node, name: output.name.to_string() },
        projections,
        sketch,
        pending,
        writer: Mutex::new(writer),
        save_lock: Mutex::new(()),
        identity,
        counters: Counters::default(),
        restored_from: None,
        config,
    };
    if let Some(path) = state {
        memory.restore(path)?;
    }
    Ok(memory)
}
