//! ONNX import and export (feature `onnx`).
//!
//! [`import`] converts an ONNX model into a [`ModelBuilder`] — the one place graft
//! graphs are produced, so an imported model is quantized and written exactly like any
//! other. It does not re-implement ONNX semantics: tract-onnx loads the model with the
//! batch as a symbol, types and declutters it (shape arithmetic, constant `If`,
//! `Constant(OfShape)`, `Range`, BatchNorm folded into constants), and graft lowers
//! tract's typed ops onto its own op set with the batch folded out of every shape (see
//! `lower`). Anything it cannot represent exactly is refused with
//! [`Error::OnnxUnsupported`] naming the node, the op and what would make it work.
//!
//! Node names matter beyond diagnostics: adapters (LoRA, SSF, …) attach to graft nodes by
//! the PyTorch module path they were trained against. A linear, table or convolution is
//! named after its weight initializer (`top_fc1.weight` → node `top_fc1`, i.e. the
//! `state_dict` names) or, failing that, after the module path of the ONNX node
//! (`/top_fc1/Gemm` → `top_fc1`), and records the ONNX node name as the node's `source`.
//!
//! [`export`] goes the other way: it writes a graft model as an equivalent ONNX model
//! (opset 17, IR version 8, weights dequantized to f32 exactly as graft's kernels see
//! them), so ONNX Runtime and tract can run the very model graft runs — the basis of the
//! parity tests and the peer benchmarks. [`to_proto_with_lora`] exports a model prepared
//! for ONNX Runtime's own LoRA mechanism and [`adapter_format`] writes the matching
//! `.onnx_adapter` files, so ORT's LoRA can be benchmarked against graft's.
//!
//! [`ModelBuilder`]: crate::builder::ModelBuilder

pub mod adapter_format;
mod bag_loop;
mod export;
mod lower;
mod static_if;
mod tensor;
#[cfg(test)]
mod tests;

use std::path::Path;

pub use tract_onnx::pb;

pub use adapter_format::write_onnx_adapter;
pub use export::{IR_VERSION, LoraInputs, OPSET, export, export_to_path, to_proto, to_proto_with_lora};
pub use lower::{import, import_bytes, import_proto};

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
