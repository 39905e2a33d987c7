//! Turning a routing file into a validated [`RoutingAdapter`].
//!
//! Validation happens once, here, so the hooks can trust every shape: the tensor set must
//! be exactly the one the configuration implies (nothing missing, nothing extra, exact
//! shapes, all finite), and the two nodes must exist with the widths `dims` names. Then
//! the STAR-style towers are folded: `W_j,ℓ = W⁰_ℓ ⊙ Wʲ_ℓ`, transposed from the file's
//! `(in, out)` into graft's `[out, in]`, so each cluster is an ordinary MLP the host's
//! `linear` kernel runs directly.

use std::path::Path;

use abi_stable::std_types::RStr;
use graft_plugin_abi::{ErrorCode, LoadRequest, ModelViewRef, NodeInfo, NodeOp, PluginError};

use crate::adapter::{Layer, Node, RoutingAdapter};
use crate::config::{Config, cluster_bias, cluster_weight, parse_options, shared_bias, shared_weight};
use crate::file::{Tensors, parse, read_bytes};

fn shape_err(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::SHAPE, field, message)
}

/// Loads `request.source` (a routing safetensors file) against `model`.
pub fn load_file(request: &LoadRequest<'_>, model: &ModelViewRef<'_>) -> Result<RoutingAdapter, PluginError> {
    let source = request.source.as_str();
    let bytes = read_bytes(Path::new(source))?;
    load_bytes(source, &bytes, request.options.as_str(), model)
}

/// Loads a routing file from its bytes (for fuzzing and tests; the same validation as
/// [`load_file`]). `source` names it in errors and in the summary.
pub fn load_bytes(
    source: &str,
    bytes: &[u8],
    options_json: &str,
    model: &ModelViewRef<'_>,
) -> Result<RoutingAdapter, PluginError> {
    let options = parse_options(options_json)?;
    let (config, tensors) = parse(bytes, options, source)?;
    let parts = Parts::check(&config, tensors)?;
    let input = resolve(model, &config.input_node, "input_node")?;
    let output = resolve(model, &config.output_node, "output_node")?;
    if output.op == NodeOp::Input {
        return Err(PluginError::new(
            ErrorCode::UNSUPPORTED,
            "output_node",
            format!("`{}` is a graph input; the routed output must replace a computed node", output.name),
        ));
    }
    if input.out_features != config.input_width() {
        return Err(shape_err(
            "dims",
            format!(
                "dims[0] = {} but input node `{}` is {} wide",
                config.input_width(),
                input.name,
                input.out_features
            ),
        ));
    }
    if output.out_features != config.output_width() {
        return Err(shape_err(
            "dims",
            format!(
                "the last entry of dims is {} but output node `{}` is {} wide",
                config.output_width(),
                output.name,
                output.out_features
            ),
        ));
    }
    parts.build(source, config, input, output)
}

fn resolve(model: &ModelViewRef<'_>, path: &str, field: &str) -> Result<Node, PluginError> {
    let info: NodeInfo = model.resolve(RStr::from_str(path)).into_result().map_err(|mut e| {
        if e.field.is_empty() {
            e.field = field.into();
        }
        e
    })?;
    Ok(Node { id: info.node, name: info.name.to_string(), op: info.op, out_features: info.out_features })
}

/// The tensors of a file, checked against its configuration.
#[derive(Debug)]
pub(crate) struct Parts {
    tensors: Tensors,
}

impl Parts {
    /// Checks that `tensors` is exactly the set `config` implies: every expected tensor
    /// present with its exact shape and finite values, and nothing else.
    pub(crate) fn check(config: &Config, tensors: Tensors) -> Result<Parts, PluginError> {
        let expected = config.tensors();
        // Unexpected names first (in sorted order, so errors are deterministic).
        for name in tensors.keys() {
            if !expected.iter().any(|(n, _)| n == name) {
                let hint = if !config.use_bias && name.ends_with(".bias") {
                    " (a bias, but the configuration has use_bias = false)"
                } else {
                    ""
                };
                return Err(PluginError::new(
                    ErrorCode::TENSOR,
                    name.as_str(),
                    format!("unexpected tensor{hint}: the configuration does not use it"),
                ));
            }
        }
        for (name, shape) in &expected {
            let Some((found, values)) = tensors.get(name) else {
                return Err(PluginError::new(
                    ErrorCode::TENSOR,
                    name.as_str(),
                    format!("missing (expected {shape:?})"),
                ));
            };
            if found != shape {
                return Err(shape_err(name, format!("expected shape {shape:?}, found {found:?}")));
            }
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(PluginError::new(
                    ErrorCode::NOT_FINITE,
                    name.as_str(),
                    format!("value at flat index {i} is {}", values[i]),
                ));
            }
        }
        Ok(Parts { tensors })
    }

    fn values(&self, name: &str) -> &[f32] {
        // `check` guaranteed every expected name; an empty slice here would be caught by the
        // shape checks of the consumer, never read out of bounds.
        self.tensors.get(name).map_or(&[], |(_, v)| v.as_slice())
    }

    /// Bytes of parameters in the file: centers, and the towers (weights and biases).
    fn bytes(&self) -> (u64, u64) {
        let centers = self.values("centers").len() as u64 * 4;
        let all: u64 = self.tensors.values().map(|(_, v)| v.len() as u64 * 4).sum();
        (centers, all - centers)
    }

    /// Folds the towers and assembles the adapter. A product or bias sum that overflows
    /// f32 is refused, naming the cluster tensor.
    pub(crate) fn build(
        self,
        source: &str,
        config: Config,
        input: Node,
        output: Node,
    ) -> Result<RoutingAdapter, PluginError> {
        let (center_bytes, tower_bytes) = self.bytes();
        let mut towers: Vec<Vec<Layer>> = Vec::with_capacity(config.clusters);
        for j in 0..config.clusters {
            let mut tower = Vec::with_capacity(config.layers());
            for (l, w) in config.dims.windows(2).enumerate() {
                let (inputs, outputs) = (w[0], w[1]);
                let shared = self.values(&shared_weight(l));
                let own = self.values(&cluster_weight(j, l));
                // File: (in, out) row-major, element [i, o] at i·out + o.
                // Kernel: [out, in] row-major, element [o, i] at o·in + i.
                let mut weight = vec![0f32; inputs * outputs];
                for (i, (s_row, c_row)) in shared.chunks_exact(outputs).zip(own.chunks_exact(outputs)).enumerate() {
                    for (o, (s, c)) in s_row.iter().zip(c_row).enumerate() {
                        weight[o * inputs + i] = s * c;
                    }
                }
                if weight.iter().any(|v| !v.is_finite()) {
                    return Err(overflow(&cluster_weight(j, l), "the folded weight shared ⊙ cluster"));
                }
                let bias = if config.use_bias {
                    let b0 = self.values(&shared_bias(l));
                    let bj = self.values(&cluster_bias(j, l));
                    let b: Vec<f32> = b0.iter().zip(bj).map(|(a, b)| a + b).collect();
                    if b.iter().any(|v| !v.is_finite()) {
                        return Err(overflow(&cluster_bias(j, l), "the folded bias shared + cluster"));
                    }
                    Some(b)
                } else {
                    None
                };
                tower.push(Layer { inputs, outputs, weight, bias });
            }
            towers.push(tower);
        }
        let centers = self.values("centers").to_vec();
        Ok(RoutingAdapter::new(source, config, input, output, centers, towers, center_bytes, tower_bytes))
    }
}

fn overflow(field: &str, what: &str) -> PluginError {
    PluginError::new(ErrorCode::NOT_FINITE, field, format!("{what} overflows f32"))
}
