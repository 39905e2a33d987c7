//! Plain Rust values → ONNX `TensorProto`, as the exporter writes initializers
//! (little-endian `raw_data`). Decoding is tract-onnx's job on the import side.

use tract_onnx::pb::{TensorProto, tensor_proto::DataType};

/// An f32 initializer with `raw_data` (little-endian), as the exporter writes them.
pub(crate) fn f32_proto(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    let mut raw = Vec::with_capacity(values.len() * 4);
    for v in values {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: raw,
        ..TensorProto::default()
    }
}

/// An i64 initializer with `raw_data` (little-endian).
pub(crate) fn i64_proto(name: &str, dims: &[usize], values: &[i64]) -> TensorProto {
    let mut raw = Vec::with_capacity(values.len() * 8);
    for v in values {
        raw.extend_from_slice(&v.to_le_bytes());
    }
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Int64 as i32,
        raw_data: raw,
        ..TensorProto::default()
    }
}
