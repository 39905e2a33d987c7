//! Bad input is refused with a typed error naming the field, tensor or file; nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::abi_stable::std_types::RStr;
use graft_plugin_abi::{Adapter, ErrorCode, LoadRequest, PluginError};
use graft_plugin_ia3::{Ia3Adapter, Scaling, load_dir};
use safetensors::Dtype;
use serde_json::json;

fn cfg() -> String {
    config(json!({}))
}

fn load_from_dir(dir: &std::path::Path, model: &FakeModel, options: &str) -> Result<Ia3Adapter, PluginError> {
    let source = dir.to_str().unwrap().to_owned();
    let req =
        LoadRequest { id: RStr::from_str("t"), source: RStr::from_str(&source), options: RStr::from_str(options) };
    load_dir(&req, &model.view())
}

#[test]
fn module_errors() {
    let m = example_model();
    assert_err(load(&m, &cfg(), &[vector("nope", &[2, 1], &[1.0, 1.0])], ""), ErrorCode::UNKNOWN_MODULE, "nope");
    assert_err(load(&m, &cfg(), &[vector("act", &[2, 1], &[1.0, 1.0])], ""), ErrorCode::UNSUPPORTED, "act");
}

#[test]
fn shape_errors_name_the_tensor() {
    let m = example_model();
    let key = "base_model.model.fc.ia3_l";
    for shape in [&[3usize, 1][..], &[2], &[1, 2], &[2, 1, 1]] {
        let n: usize = shape.iter().product();
        let e = assert_err(load(&m, &cfg(), &[vector("fc", shape, &vec![1.0; n])], ""), ErrorCode::SHAPE, key);
        assert!(e.message.contains("[2, 1]") && e.message.contains("[1, 3]"), "{e}");
    }
}

#[test]
fn feedforward_list_must_agree_with_the_shape() {
    let m = example_model();
    let listed = config(json!({"feedforward_modules": ["fc", "ff"]}));
    assert_err(load(&m, &listed, &example_tensors(), ""), ErrorCode::CONFIG, "feedforward_modules");
    let unlisted = config(json!({"feedforward_modules": []}));
    assert_err(load(&m, &unlisted, &example_tensors(), ""), ErrorCode::CONFIG, "feedforward_modules");
}

#[test]
fn regex_or_null_feedforward_falls_back_to_the_shape() {
    let m = example_model();
    for ff in [json!(".*ff"), json!(null)] {
        let a = load(&m, &config(json!({"feedforward_modules": ff})), &example_tensors(), "").unwrap();
        assert_eq!(a.modules().collect::<Vec<_>>(), [("fc", Scaling::Output), ("ff", Scaling::Feedforward)]);
        assert_eq!(forward(&a, 1, m.node("ff"), &EX_X, 1.0), [5.5, -2.0]);
    }
}

#[test]
fn a_one_by_one_layer_needs_a_list() {
    let m = FakeModel::new(vec![FakeNode::linear("tiny", 1, 1, vec![2.0], Some(vec![1.0]))]);
    let t = [vector("tiny", &[1, 1], &[3.0])];
    assert_err(
        load(&m, &config(json!({"feedforward_modules": "t.*"})), &t, ""),
        ErrorCode::UNSUPPORTED,
        "feedforward_modules",
    );
    // A list decides: feedforward scales x (bias untouched), output scaling scales the bias too.
    let ff = load(&m, &config(json!({"feedforward_modules": ["tiny"]})), &t, "").unwrap();
    assert_eq!(forward(&ff, 0, m.node("tiny"), &[1.0], 1.0), [7.0]);
    let out = load(&m, &config(json!({"feedforward_modules": ["other"]})), &t, "").unwrap();
    assert_eq!(forward(&out, 0, m.node("tiny"), &[1.0], 1.0), [9.0]);
}

#[test]
fn non_finite_values_are_refused() {
    let m = example_model();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let e = assert_err(
            load(&m, &cfg(), &[vector("fc", &[2, 1], &[1.0, bad])], ""),
            ErrorCode::NOT_FINITE,
            "base_model.model.fc.ia3_l",
        );
        assert!(e.message.contains("index 1"), "{e}");
    }
    // A non-finite base weight would poison the feedforward cache.
    let mut m = example_model();
    m.nodes[1].weight[4] = f32::NAN;
    assert_err(load(&m, &cfg(), &example_tensors(), ""), ErrorCode::NOT_FINITE, "ff");
}

#[test]
fn half_precision_vectors_load() {
    let m = example_model();
    // 2.0 and 0.5 in f16 and bf16.
    let f16 = (
        "base_model.model.fc.ia3_l".to_string(),
        Dtype::F16,
        vec![2, 1],
        [0x4000u16, 0x3800].iter().flat_map(|b| b.to_le_bytes()).collect(),
    );
    let bf16 = (
        "base_model.model.fc.ia3_l".to_string(),
        Dtype::BF16,
        vec![2, 1],
        [0x4000u16, 0x3f00].iter().flat_map(|b| b.to_le_bytes()).collect(),
    );
    for t in [f16, bf16] {
        let a = load(&m, &cfg(), &[t], "").unwrap();
        assert_eq!(a.vector(0), Some(&EX_L_OUT[..]));
        assert_eq!(a.info().targets[0].bytes, 4);
    }
    let i32s = ("base_model.model.fc.ia3_l".to_string(), Dtype::I32, vec![2, 1], vec![0u8; 8]);
    assert_err(load(&m, &cfg(), &[i32s], ""), ErrorCode::TENSOR, "base_model.model.fc.ia3_l");
}

#[test]
fn tensor_file_errors() {
    let m = example_model();
    let lora = f32_tensor("base_model.model.fc.lora_A.weight", &[1, 3], &[1.0; 3]);
    assert_err(load(&m, &cfg(), &[lora], ""), ErrorCode::TENSOR, "base_model.model.fc.lora_A.weight");
    assert_err(load(&m, &cfg(), &[f32_tensor("fc.ia3_l", &[2, 1], &[1.0; 2])], ""), ErrorCode::TENSOR, "fc.ia3_l");
    assert_err(load(&m, &cfg(), &[vector("", &[2, 1], &[1.0; 2])], ""), ErrorCode::TENSOR, "base_model.model..ia3_l");
    assert_err(load(&m, &cfg(), &[], ""), ErrorCode::TENSOR, "adapter_model.safetensors");
    let bytes = safetensors_bytes(&example_tensors());
    for cut in [0, 7, 8, 20, bytes.len() - 1] {
        let r = graft_plugin_ia3::load_bytes("t", cfg().as_bytes(), &bytes[..cut], "", &m.view());
        assert_err(r, ErrorCode::TENSOR, "adapter_model.safetensors");
    }
    let mut hostile = (u64::MAX / 2).to_le_bytes().to_vec();
    hostile.extend_from_slice(b"{}");
    let r = graft_plugin_ia3::load_bytes("t", cfg().as_bytes(), &hostile, "", &m.view());
    assert_err(r, ErrorCode::TENSOR, "adapter_model.safetensors");
}

#[test]
fn config_and_option_errors() {
    let m = example_model();
    let t = example_tensors();
    assert_err(load(&m, &config(json!({"peft_type": "LORA"})), &t, ""), ErrorCode::UNSUPPORTED, "peft_type");
    assert_err(
        load(&m, &config(json!({"modules_to_save": ["head"]})), &t, ""),
        ErrorCode::UNSUPPORTED,
        "modules_to_save",
    );
    assert_err(load(&m, &config(json!({"r": 8})), &t, ""), ErrorCode::CONFIG, "r");
    assert_err(load(&m, &cfg(), &t, r#"{"scaling": 2}"#), ErrorCode::CONFIG, "scaling");
    assert_err(load(&m, &cfg(), &t, "not json"), ErrorCode::CONFIG, "options");
    assert_err(load(&m, "", &t, ""), ErrorCode::CONFIG, "adapter_config.json");
    // fan_in_fan_out (GPT-2 Conv1D bases) changes nothing for vectors.
    let a = load(&m, &config(json!({"fan_in_fan_out": true})), &t, "").unwrap();
    assert_eq!(forward(&a, 0, m.node("fc"), &EX_X, 1.0), [15.0, -0.75]);
}

#[test]
fn directory_errors() {
    let m = example_model();
    let dir = TempDir::new("dir");
    assert_err(
        load_from_dir(&dir.path().join("missing"), &m, ""),
        ErrorCode::IO,
        dir.path().join("missing").to_str().unwrap(),
    );
    assert_err(load_from_dir(dir.path(), &m, ""), ErrorCode::IO, "adapter_config.json");
    std::fs::write(dir.path().join("adapter_config.json"), cfg()).unwrap();
    assert_err(load_from_dir(dir.path(), &m, ""), ErrorCode::IO, "adapter_model.safetensors");
    std::fs::write(dir.path().join("adapter_model.bin"), b"pickle").unwrap();
    assert_err(load_from_dir(dir.path(), &m, ""), ErrorCode::UNSUPPORTED, "adapter_model.bin");
    write_dir(dir.path(), &cfg(), &example_tensors());
    let a = load_from_dir(dir.path(), &m, "").unwrap();
    assert_eq!(a.targets().len(), 2);
}
