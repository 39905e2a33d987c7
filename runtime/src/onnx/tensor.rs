//! ONNX `TensorProto` ⇄ plain Rust values.
//!
//! ONNX stores a tensor's elements either packed little-endian in `raw_data` or in one of
//! the typed repeated fields (`float_data`, `int64_data`, `int32_data`, …), and which one
//! a producer picks varies by exporter and by tensor size. The importer only ever needs
//! two element kinds — f32 for parameters and i64 for axes and shapes — so every
//! supported storage type is decoded into one of those here, with the element count
//! checked against `dims` before anything is trusted. Decoding consumes the proto so the
//! raw bytes are freed as soon as the values exist: a model is never held three times.

use std::sync::Arc;

use tract_onnx::pb::{TensorProto, tensor_proto::DataType};

use crate::error::{Error, Result};
use crate::quant;

/// The values of a decoded tensor.
#[derive(Clone, Debug)]
pub(crate) enum ConstData {
    /// Floating-point elements (f32, f64, f16 and bf16 are all widened or narrowed to f32).
    F32(Arc<Vec<f32>>),
    /// Integer elements (int8 … int64, uint8 … uint32 and bool, widened to i64).
    I64(Vec<i64>),
}

/// A constant tensor: an initializer or the value of a `Constant` node.
#[derive(Clone, Debug)]
pub(crate) struct ConstTensor {
    /// The ONNX name, for error messages and parameter names.
    pub name: String,
    /// The shape (empty for a scalar).
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: ConstData,
}

impl ConstTensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            ConstData::F32(v) => v.len(),
            ConstData::I64(v) => v.len(),
        }
    }

    /// The f32 elements, or `None` for an integer tensor.
    pub fn f32s(&self) -> Option<&Arc<Vec<f32>>> {
        match &self.data {
            ConstData::F32(v) => Some(v),
            ConstData::I64(_) => None,
        }
    }

    /// The i64 elements, or `None` for a floating-point tensor.
    pub fn i64s(&self) -> Option<&[i64]> {
        match &self.data {
            ConstData::I64(v) => Some(v),
            ConstData::F32(_) => None,
        }
    }

    /// The single value of a one-element float tensor of any rank.
    pub fn scalar_f32(&self) -> Option<f32> {
        match self.f32s() {
            Some(v) if v.len() == 1 => Some(v[0]),
            _ => None,
        }
    }

    /// Fails with a typed error naming the tensor if any element is NaN or infinite.
    pub fn check_finite(&self) -> Result<()> {
        if let Some(v) = self.f32s()
            && let Some(i) = v.iter().position(|x| !x.is_finite())
        {
            return Err(Error::TensorEntry {
                tensor: self.name.clone(),
                detail: format!("ONNX tensor holds a non-finite value ({}) at flat index {i}", v[i]),
            });
        }
        Ok(())
    }
}

fn onnx_err(name: &str, detail: impl std::fmt::Display) -> Error {
    Error::Onnx { detail: format!("tensor `{name}`: {detail}") }
}

/// The element count of `dims`, rejecting negative dims and overflow.
pub(crate) fn element_count(name: &str, dims: &[i64]) -> Result<(Vec<usize>, usize)> {
    let mut out = Vec::with_capacity(dims.len());
    let mut count = 1usize;
    for &d in dims {
        let d = usize::try_from(d).map_err(|_| onnx_err(name, format_args!("negative dimension {d} in {dims:?}")))?;
        count = count.checked_mul(d).ok_or_else(|| onnx_err(name, format_args!("shape {dims:?} overflows")))?;
        out.push(d);
    }
    Ok((out, count))
}

/// Decodes `raw_data` of `width`-byte little-endian elements, checking its length.
fn raw_elements<'a>(name: &str, raw: &'a [u8], count: usize, width: usize) -> Result<std::slice::ChunksExact<'a, u8>> {
    let want = count.checked_mul(width).ok_or_else(|| onnx_err(name, "byte size overflows"))?;
    if raw.len() != want {
        return Err(onnx_err(
            name,
            format_args!("raw_data holds {} bytes, but {count} elements of {width} bytes need {want}", raw.len()),
        ));
    }
    Ok(raw.chunks_exact(width))
}

fn typed_len_check(name: &str, field: &str, len: usize, count: usize) -> Result<()> {
    if len != count {
        return Err(onnx_err(name, format_args!("`{field}` holds {len} elements, but the shape needs {count}")));
    }
    Ok(())
}

/// Decodes a tensor, consuming its storage.
pub(crate) fn decode(t: TensorProto) -> Result<ConstTensor> {
    let name = t.name;
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(onnx_err(&name, "external data is not supported; re-save the model with weights embedded"));
    }
    if t.segment.is_some() {
        return Err(onnx_err(&name, "segmented tensors are not supported"));
    }
    let (dims, count) = element_count(&name, &t.dims)?;
    let raw = !t.raw_data.is_empty() || count == 0;
    let dtype = DataType::try_from(t.data_type)
        .map_err(|_| onnx_err(&name, format_args!("unknown data type {}", t.data_type)))?;
    let le = |c: &[u8]| -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        b
    };
    let data = match dtype {
        DataType::Float => ConstData::F32(Arc::new(if raw {
            raw_elements(&name, &t.raw_data, count, 4)?.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        } else {
            typed_len_check(&name, "float_data", t.float_data.len(), count)?;
            t.float_data
        })),
        DataType::Double => ConstData::F32(Arc::new(if raw {
            raw_elements(&name, &t.raw_data, count, 8)?.map(|c| f64::from_le_bytes(le(c)) as f32).collect()
        } else {
            typed_len_check(&name, "double_data", t.double_data.len(), count)?;
            t.double_data.iter().map(|&v| v as f32).collect()
        })),
        DataType::Float16 | DataType::Bfloat16 => {
            let convert = |bits: u16| {
                if dtype == DataType::Float16 { quant::f16_to_f32(bits) } else { quant::bf16_to_f32(bits) }
            };
            ConstData::F32(Arc::new(if raw {
                raw_elements(&name, &t.raw_data, count, 2)?.map(|c| convert(u16::from_le_bytes([c[0], c[1]]))).collect()
            } else {
                // The typed form keeps 16-bit floats as their bit patterns in `int32_data`.
                typed_len_check(&name, "int32_data", t.int32_data.len(), count)?;
                t.int32_data.iter().map(|&v| convert(v as u16)).collect()
            }))
        }
        DataType::Int64 => ConstData::I64(if raw {
            raw_elements(&name, &t.raw_data, count, 8)?.map(|c| i64::from_le_bytes(le(c))).collect()
        } else {
            typed_len_check(&name, "int64_data", t.int64_data.len(), count)?;
            t.int64_data
        }),
        DataType::Int32 | DataType::Int16 | DataType::Int8 | DataType::Uint16 | DataType::Uint8 | DataType::Bool => {
            let width = match dtype {
                DataType::Int32 => 4,
                DataType::Int16 | DataType::Uint16 => 2,
                _ => 1,
            };
            ConstData::I64(if raw {
                raw_elements(&name, &t.raw_data, count, width)?
                    .map(|c| match dtype {
                        DataType::Int32 => i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                        DataType::Int16 => i64::from(i16::from_le_bytes([c[0], c[1]])),
                        DataType::Uint16 => i64::from(u16::from_le_bytes([c[0], c[1]])),
                        DataType::Int8 => i64::from(c[0] as i8),
                        _ => i64::from(c[0]),
                    })
                    .collect()
            } else {
                // Every type narrower than 32 bits is stored one element per `int32_data` entry.
                typed_len_check(&name, "int32_data", t.int32_data.len(), count)?;
                t.int32_data.iter().map(|&v| i64::from(v)).collect()
            })
        }
        DataType::Uint32 => ConstData::I64(if raw {
            raw_elements(&name, &t.raw_data, count, 4)?
                .map(|c| i64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        } else {
            typed_len_check(&name, "uint64_data", t.uint64_data.len(), count)?;
            t.uint64_data.iter().map(|&v| v as i64).collect()
        }),
        other => {
            return Err(onnx_err(&name, format_args!("data type {} is not supported", other.as_str_name())));
        }
    };
    Ok(ConstTensor { name, dims, data })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_typed_forms_decode_alike() -> Result<()> {
        let raw = decode(f32_proto("w", &[2, 2], &[1.0, -2.0, 3.5, 0.25]))?;
        let typed = decode(TensorProto {
            name: "w".into(),
            dims: vec![2, 2],
            data_type: DataType::Float as i32,
            float_data: vec![1.0, -2.0, 3.5, 0.25],
            ..TensorProto::default()
        })?;
        assert_eq!(raw.f32s(), typed.f32s());
        assert_eq!(raw.dims, vec![2, 2]);
        let ints = decode(TensorProto {
            name: "i".into(),
            dims: vec![3],
            data_type: DataType::Int32 as i32,
            int32_data: vec![1, -1, 7],
            ..TensorProto::default()
        })?;
        assert_eq!(ints.i64s(), Some(&[1, -1, 7][..]));
        assert_eq!(decode(i64_proto("j", &[2], &[5, -9]))?.i64s(), Some(&[5, -9][..]));
        Ok(())
    }

    #[test]
    fn element_counts_are_checked() {
        let mut short = f32_proto("w", &[2, 3], &[1.0; 6]);
        short.raw_data.pop();
        assert!(matches!(decode(short), Err(Error::Onnx { .. })));
        let typed = TensorProto {
            name: "w".into(),
            dims: vec![4],
            data_type: DataType::Int64 as i32,
            int64_data: vec![1, 2],
            ..TensorProto::default()
        };
        assert!(matches!(decode(typed), Err(Error::Onnx { .. })));
        let negative = TensorProto { name: "n".into(), dims: vec![-1], data_type: 1, ..TensorProto::default() };
        assert!(matches!(decode(negative), Err(Error::Onnx { .. })));
        let strings = TensorProto {
            name: "s".into(),
            dims: vec![1],
            data_type: DataType::String as i32,
            ..TensorProto::default()
        };
        assert!(matches!(decode(strings), Err(Error::Onnx { .. })));
    }

    #[test]
    fn non_finite_values_are_reported() -> Result<()> {
        let t = decode(f32_proto("w", &[3], &[0.0, f32::NAN, 1.0]))?;
        match t.check_finite() {
            Err(Error::TensorEntry { tensor, detail }) => {
                assert_eq!(tensor, "w");
                assert!(detail.contains("index 1"), "{detail}");
            }
            other => panic!("expected TensorEntry, got {other:?}"),
        }
        Ok(())
    }
}
