//! ONNX import and export (feature `onnx`).
//!
//! graft's graph is deliberately small — per-row `[batch, features]` values and a dozen
//! recommender ops — so it does not execute ONNX; it *translates* it. [`import`] reads an
//! ONNX model (the protobuf is parsed with tract-onnx's generated types, nothing else of
//! tract is used) and maps its nodes onto [`ModelBuilder`] calls, the one place graft
//! graphs are produced, so that an imported model is quantized and written exactly like
//! any other. Translation is pattern-based and conservative: every ONNX form it accepts
//! is one whose semantics it can reproduce exactly (shape no-ops are *proven* no-ops by
//! tracking shapes with a symbolic batch dimension), and anything else is refused with
//! [`Error::OnnxUnsupported`] naming the node and op type rather than approximated.
//!
//! Node names matter beyond diagnostics: adapters (LoRA, SSF, …) attach to graft nodes by
//! the PyTorch module path they were trained against. The importer therefore names a
//! linear, embedding bag or layer norm after its weight initializer (`top_fc1.weight` →
//! node `top_fc1`, parameters `top_fc1.weight` / `top_fc1.bias`, i.e. the `state_dict`
//! names) or, failing that, after the module path in the ONNX node name
//! (`/top_fc1/Gemm` → `top_fc1`), and records the ONNX node name as the node's `source`.
//!
//! [`export`] goes the other way: it writes a graft model as an equivalent ONNX model
//! (opset 17, IR version 8, weights dequantized to f32 exactly as graft's kernels see
//! them), so ONNX Runtime and tract can run the very model graft runs — the basis of the
//! parity tests and the peer benchmarks. [`to_proto_with_lora`] exports a model prepared
//! for ONNX Runtime's own LoRA mechanism and [`adapter_format`] writes the matching
//! `.onnx_adapter` files, so ORT's LoRA can be benchmarked against graft's.
//!
//! Supported on import: `Gemm`, `MatMul` with a constant weight (plus a following `Add`
//! of a constant bias), `Add`, `Mul`, `Relu`, `Sigmoid`, `Tanh`, `Gelu` and the
//! `Div`/`Erf`/`Add`/`Mul` GELU decomposition, `Concat` along features, `Gather` from a
//! constant table (with `ReduceSum`/`ReduceMean` over the slot axis: an embedding bag),
//! `LayerNormalization` over the feature axis, `Flatten`/`Reshape`/`Squeeze`/`Unsqueeze`/
//! `Identity`/`Cast` where they are layout no-ops, and `Constant`.
//!
//! [`ModelBuilder`]: crate::builder::ModelBuilder

pub mod adapter_format;
mod export;
mod import;
mod tensor;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use tract_onnx::pb;

pub use adapter_format::write_onnx_adapter;
pub use export::{IR_VERSION, LoraInputs, OPSET, export, export_to_path, to_proto, to_proto_with_lora};
pub use import::{import, import_bytes, import_proto};

use crate::error::{Error, Result};

/// Parses ONNX protobuf bytes.
pub fn decode_proto(bytes: &[u8]) -> Result<pb::ModelProto> {
    <pb::ModelProto as prost::Message>::decode(bytes)
        .map_err(|e| Error::Onnx { detail: format!("not a valid ONNX protobuf: {e}") })
}

/// Serializes an ONNX model to protobuf bytes.
///
/// Fails if the model is larger than protobuf's 2 GiB message limit (graft does not write
/// ONNX external data).
pub fn encode_proto(model: &pb::ModelProto) -> Result<Vec<u8>> {
    let len = prost::Message::encoded_len(model);
    if len > i32::MAX as usize {
        return Err(Error::Onnx {
            detail: format!(
                "the model needs {len} bytes, over protobuf's 2 GiB limit (external data is not supported)"
            ),
        });
    }
    Ok(prost::Message::encode_to_vec(model))
}

/// Reads and parses an ONNX file.
pub fn read_proto(path: &Path) -> Result<pb::ModelProto> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_proto(&bytes).map_err(|e| match e {
        Error::Onnx { detail } => Error::Onnx { detail: format!("{}: {detail}", path.display()) },
        e => e,
    })
}
