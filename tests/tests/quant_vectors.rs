//! graft's quantizers against `fixtures/vectors.json`, bit for bit: q8 per-row codes,
//! scale bits and dequantized values; ggml Q4_0 scale bits, codes, packed bytes and
//! dequantized values. Then the same weights written by `ModelBuilder` and read back by the
//! kernels (reference and fast) dequantize to the same bits, so the container and every
//! kernel level follow the rules too.

#![allow(clippy::unwrap_used)]

use graft::builder::{Matrix, ModelBuilder, WeightFormats};
use graft::kernels::{self, WeightMatrix};
use graft::quant;
use graft::{Model, WeightFormat};
use serde_json::Value;

fn vectors() -> Value {
    let path = graft_tests::fixture("vectors.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn bits(hex: &Value) -> u32 {
    u32::from_str_radix(hex.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

/// Dequantizes every row of a one-weight model through the kernels of `level`, by
/// multiplying with identity rows (exact: each output is one weight times 1.0).
fn dequant_via_kernels(model: &Model, rows: usize, cols: usize) -> Vec<Vec<Vec<f32>>> {
    let w: WeightMatrix<'_> = model.weight(0).unwrap();
    let mut per_level = Vec::new();
    for k in kernels::available() {
        let mut out = vec![vec![0.0f32; cols]; rows];
        for c in 0..cols {
            let mut x = vec![0.0f32; cols];
            x[c] = 1.0;
            let mut y = vec![0.0f32; rows];
            let mut scratch = vec![0.0f32; k.linear.scratch_len(&w, 1).max(1)];
            k.linear.linear(
                graft::view::MatRef::dense(&x, cols),
                &w,
                None,
                None,
                graft::view::MatMut::dense(&mut y, rows),
                &mut scratch,
            );
            for r in 0..rows {
                out[r][c] = y[r];
            }
        }
        per_level.push(out);
    }
    per_level
}

fn one_linear(rows: usize, cols: usize, values: Vec<f32>, format: WeightFormat) -> Model {
    let mut b = ModelBuilder::new("vectors");
    b.dense_input("x", cols);
    let y = b.linear("w", "x", Matrix::new(rows, cols, values), None);
    b.output("y", &y);
    Model::from_slice_copy(&b.to_bytes(WeightFormats::uniform(format)).unwrap()).unwrap()
}

#[test]
fn q8_rowwise_symmetric_matches_every_vector() {
    let v = vectors();
    let cases = v["q8_rowwise"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 7);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let rows: Vec<Vec<f32>> = case["rows"].as_array().unwrap().iter().map(floats).collect();
        for (r, row) in rows.iter().enumerate() {
            let mut codes = vec![0i8; row.len()];
            let scale = quant::q8_quantize_row(row, &mut codes);
            assert_eq!(scale.to_bits(), bits(&case["scale_bits"][r]), "{name} row {r}: scale");
            let want: Vec<i8> =
                case["codes"][r].as_array().unwrap().iter().map(|c| c.as_i64().unwrap() as i8).collect();
            assert_eq!(codes, want, "{name} row {r}: codes");
            let deq: Vec<f32> = codes.iter().map(|&q| quant::q8_dequant(q, scale)).collect();
            let want_deq = floats(&case["dequant"][r]);
            assert_eq!(bits_of(&deq), bits_of(&want_deq), "{name} row {r}: dequant");
        }
        // Through the container and every kernel level.
        let cols = rows[0].len();
        let model = one_linear(rows.len(), cols, rows.concat(), WeightFormat::Q8);
        for (level, got) in dequant_via_kernels(&model, rows.len(), cols).iter().enumerate() {
            for (r, row) in got.iter().enumerate() {
                assert_eq!(bits_of(row), bits_of(&floats(&case["dequant"][r])), "{name} level {level} row {r}");
            }
        }
    }
}

#[test]
fn q4_0_matches_every_vector() {
    let v = vectors();
    let cases = v["q4_0"]["cases"].as_array().unwrap();
    assert!(cases.len() >= 11);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let x = floats(&case["x"]);
        let mut packed = vec![0u8; x.len().div_ceil(quant::Q4_BLOCK) * quant::Q4_BLOCK_BYTES];
        quant::q4_quantize_row(&x, &mut packed);
        let hex: String = packed.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, case["packed_hex"].as_str().unwrap(), "{name}: packed bytes");
        for (b, block) in case["blocks"].as_array().unwrap().iter().enumerate() {
            let bytes = &packed[b * quant::Q4_BLOCK_BYTES..(b + 1) * quant::Q4_BLOCK_BYTES];
            let f16_bits = u16::from_le_bytes([bytes[0], bytes[1]]);
            assert_eq!(f16_bits as u32, bits(&block["d_f16_bits"]), "{name} block {b}: f16 scale");
            let codes: Vec<u8> = (0..quant::Q4_BLOCK).map(|j| quant::q4_code(bytes, j)).collect();
            let want: Vec<u8> = block["codes"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as u8).collect();
            assert_eq!(codes, want, "{name} block {b}: codes");
        }
        let mut deq = vec![0.0f32; x.len()];
        quant::q4_dequant_row(&packed, &mut deq);
        let want = floats(&case["dequant"]);
        // Compare by value: the all-zero block dequantizes to -0.0 (0 · -0.0 scale).
        assert!(deq.iter().zip(&want).all(|(a, b)| a == b), "{name}: dequant {deq:?} vs {want:?}");
        let model = one_linear(1, x.len(), x.clone(), WeightFormat::Q4);
        for (level, got) in dequant_via_kernels(&model, 1, x.len()).iter().enumerate() {
            assert!(got[0].iter().zip(&want).all(|(a, b)| a == b), "{name} level {level}: {:?}", got[0]);
        }
    }
}

fn bits_of(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}
