//! Every refusal is an error with the right code, naming the field, tensor or file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::abi_stable::std_types::RStr;
use graft_plugin_abi::{Adapter, ErrorCode, LoadRequest, NodeOp};
use graft_plugin_lora::{LoraAdapter, REJECTED_KEYS, load_dir};
use safetensors::Dtype;
use serde_json::json;

fn load_ok(patch: serde_json::Value, tensors: &[RawTensor]) -> Result<LoraAdapter, graft_plugin_abi::PluginError> {
    load(&example_model(), &config(patch), tensors, "")
}

fn load_in_dir(dir: &TempDir) -> Result<LoraAdapter, graft_plugin_abi::PluginError> {
    let source = dir.path().to_str().unwrap().to_owned();
    let req = LoadRequest { id: RStr::from_str("r"), source: RStr::from_str(&source), options: RStr::from_str("") };
    load_dir(&req, &example_model().view())
}

#[test]
fn rejected_variant_keys() {
    let set = [
        ("use_bdlora", json!({"a": 1})),
        ("alora_invocation_tokens", json!([1, 2])),
        ("velora_config", json!({"x": 1})),
        ("arrow_config", json!({"top_k": 2})),
        ("use_qalora", json!(true)),
        ("layer_replication", json!([[0, 4]])),
        ("trainable_token_indices", json!([5])),
        ("target_parameters", json!(["fc.weight"])),
        ("megatron_config", json!({"tp": 2})),
        ("kasa_config", json!({"k": 1})),
        ("monteclora_config", json!({"n": 2})),
    ];
    assert_eq!(set.len(), REJECTED_KEYS.len());
    for (key, value) in set {
        assert_err(load_ok(json!({ key: value }), &example_tensors()), ErrorCode::UNSUPPORTED, key);
        // Unset spellings load.
        for unset in [json!(null), json!(false), json!({}), json!([])] {
            load_ok(json!({ key: unset }), &example_tensors()).unwrap();
        }
    }
}

#[test]
fn rejected_config_values() {
    assert_err(load_ok(json!({"peft_type": "IA3"}), &example_tensors()), ErrorCode::UNSUPPORTED, "peft_type");
    assert_err(load_ok(json!({"peft_type": 3}), &example_tensors()), ErrorCode::CONFIG, "peft_type");
    for bias in ["all", "lora_only"] {
        assert_err(load_ok(json!({"bias": bias}), &example_tensors()), ErrorCode::UNSUPPORTED, "bias");
    }
    assert_err(
        load_ok(json!({"modules_to_save": ["head"]}), &example_tensors()),
        ErrorCode::UNSUPPORTED,
        "modules_to_save",
    );
    load_ok(json!({"modules_to_save": []}), &example_tensors()).unwrap();
    assert_err(load_ok(json!({"r": "two"}), &example_tensors()), ErrorCode::CONFIG, "r");
    assert_err(load_ok(json!({"lora_alpha": [1]}), &example_tensors()), ErrorCode::CONFIG, "lora_alpha");
    assert_err(load_ok(json!({"use_rslora": "yes"}), &example_tensors()), ErrorCode::CONFIG, "use_rslora");
    assert_err(load_ok(json!({"fan_in_fan_out": 0}), &example_tensors()), ErrorCode::CONFIG, "fan_in_fan_out");
    assert_err(load_ok(json!({"rank_pattern": {"fc": "x"}}), &example_tensors()), ErrorCode::CONFIG, "rank_pattern");
    assert_err(load_ok(json!({"alpha_pattern": "fc"}), &example_tensors()), ErrorCode::CONFIG, "alpha_pattern");
    // Zero alpha is allowed: scale 0.
    let a = load_ok(json!({"lora_alpha": 0}), &example_tensors()).unwrap();
    assert_eq!(a.info().targets[0].scale, 0.0);
    // Not JSON / not an object.
    let m = example_model();
    assert_err(load(&m, "[1,2]", &example_tensors(), ""), ErrorCode::CONFIG, "adapter_config.json");
    assert_err(load(&m, "{", &example_tensors(), ""), ErrorCode::CONFIG, "adapter_config.json");
    assert_err(load(&m, r#"{"r": 2}"#, &example_tensors(), ""), ErrorCode::CONFIG, "peft_type");
    // fan_in_fan_out is accepted and noted.
    let a = load_ok(json!({"fan_in_fan_out": true}), &example_tensors()).unwrap();
    assert!(a.info().notes.iter().any(|n| n.as_str() == "fan_in_fan_out=true"));
}

#[test]
fn options() {
    let m = example_model();
    let c = config(json!({}));
    assert_err(load(&m, &c, &example_tensors(), "{"), ErrorCode::CONFIG, "options");
    assert_err(load(&m, &c, &example_tensors(), "3"), ErrorCode::CONFIG, "options");
    assert_err(load(&m, &c, &example_tensors(), r#"{"scale": 2}"#), ErrorCode::CONFIG, "scale");
    assert_err(load(&m, &c, &example_tensors(), r#"{"scaling": "2"}"#), ErrorCode::CONFIG, "scaling");
    let a = load(&m, &c, &example_tensors(), r#"{"scaling": 0.25}"#).unwrap();
    assert_eq!(a.info().targets[0].scale, 0.25);
}

#[test]
fn files() {
    // Missing config.
    let dir = TempDir::new("nocfg");
    std::fs::write(dir.path().join("adapter_model.safetensors"), safetensors_bytes(&example_tensors())).unwrap();
    assert_err(load_in_dir(&dir), ErrorCode::IO, "adapter_config.json");
    // Missing tensors.
    let dir = TempDir::new("nost");
    std::fs::write(dir.path().join("adapter_config.json"), config(json!({}))).unwrap();
    assert_err(load_in_dir(&dir), ErrorCode::IO, "adapter_model.safetensors");
    // Legacy pickle only.
    std::fs::write(dir.path().join("adapter_model.bin"), b"PK\x03\x04").unwrap();
    let e = assert_err(load_in_dir(&dir), ErrorCode::UNSUPPORTED, "adapter_model.bin");
    assert!(e.message.contains("safe_serialization=True"));
    // Oversized config.
    let dir = TempDir::new("big");
    let mut big = config(json!({}));
    big.insert_str(1, &format!(r#""pad": "{}","#, "x".repeat(1 << 20)));
    std::fs::write(dir.path().join("adapter_config.json"), big).unwrap();
    std::fs::write(dir.path().join("adapter_model.safetensors"), safetensors_bytes(&example_tensors())).unwrap();
    assert_err(load_in_dir(&dir), ErrorCode::CONFIG, "adapter_config.json");
    // Not a directory.
    let source = "/nonexistent/graft-lora";
    let req = LoadRequest { id: RStr::from_str("r"), source: RStr::from_str(source), options: RStr::from_str("") };
    assert_err(load_dir(&req, &example_model().view()), ErrorCode::IO, source);
}

#[test]
fn tensor_keys() {
    let mut t = example_tensors();
    t.push(f32_tensor("base_model.model.fc.weight", &[2], &[0.0, 0.0]));
    assert_err(load_ok(json!({}), &t), ErrorCode::TENSOR, "base_model.model.fc.weight");

    let mut t = example_tensors();
    t.push(f32_tensor("model.fc.lora_A.weight", &[2, 3], &EX_A));
    assert_err(load_ok(json!({}), &t), ErrorCode::TENSOR, "model.fc.lora_A.weight");

    let mut t = example_tensors();
    t.push(f32_tensor("base_model.model.fc.lora_A.default.weight", &[2, 3], &EX_A));
    assert_err(load_ok(json!({}), &t), ErrorCode::TENSOR, "base_model.model.fc.lora_A.default.weight");

    for k in ["base_model.model.emb.lora_embedding_A", "base_model.model.emb.lora_embedding_B"] {
        let mut t = example_tensors();
        t.push(f32_tensor(k, &[2, 2], &[0.0; 4]));
        let e = assert_err(load_ok(json!({}), &t), ErrorCode::UNSUPPORTED, k);
        assert!(e.message.contains("embeddings"));
    }

    let t = vec![f32_tensor("base_model.model.fc.lora_A.weight", &[2, 3], &EX_A)];
    assert_err(load_ok(json!({}), &t), ErrorCode::TENSOR, "base_model.model.fc.lora_B.weight");
    let t = vec![f32_tensor("base_model.model.fc.lora_B.weight", &[2, 2], &EX_B)];
    assert_err(load_ok(json!({}), &t), ErrorCode::TENSOR, "base_model.model.fc.lora_A.weight");

    // Zero targets.
    assert_err(load_ok(json!({}), &[]), ErrorCode::CONFIG, "adapter_model.safetensors");
}

#[test]
fn presence_rules() {
    // Magnitude without use_dora, and use_dora without magnitude.
    assert_err(load_ok(json!({}), &dora_tensors()), ErrorCode::TENSOR, "base_model.model.fc.lora_magnitude_vector");
    assert_err(
        load_ok(json!({"use_dora": true}), &example_tensors()),
        ErrorCode::TENSOR,
        "base_model.model.fc.lora_magnitude_vector",
    );
    let mut t = example_tensors();
    t.push(f32_tensor("base_model.model.fc.lora_B.bias", &[2], &[1.0, 1.0]));
    assert_err(load_ok(json!({}), &t), ErrorCode::TENSOR, "base_model.model.fc.lora_B.bias");
    assert_err(
        load_ok(json!({"lora_bias": true}), &example_tensors()),
        ErrorCode::TENSOR,
        "base_model.model.fc.lora_B.bias",
    );
}

#[test]
fn shapes_and_ranks() {
    // Rank mismatch with the config.
    let e =
        assert_err(load_ok(json!({"r": 4}), &example_tensors()), ErrorCode::SHAPE, "base_model.model.fc.lora_A.weight");
    assert!(e.message.contains("expected rank 4") && e.message.contains("found rank 2"), "{e}");
    // In-features mismatch with the model.
    let t = vec![
        f32_tensor("base_model.model.fc.lora_A.weight", &[2, 2], &[1.0; 4]),
        f32_tensor("base_model.model.fc.lora_B.weight", &[2, 2], &EX_B),
    ];
    assert_err(load_ok(json!({}), &t), ErrorCode::SHAPE, "base_model.model.fc.lora_A.weight");
    // Out-features mismatch.
    let t = vec![
        f32_tensor("base_model.model.fc.lora_A.weight", &[2, 3], &EX_A),
        f32_tensor("base_model.model.fc.lora_B.weight", &[3, 2], &[1.0; 6]),
    ];
    assert_err(load_ok(json!({}), &t), ErrorCode::SHAPE, "base_model.model.fc.lora_B.weight");
    // B rank differs from A rank.
    let t = vec![
        f32_tensor("base_model.model.fc.lora_A.weight", &[2, 3], &EX_A),
        f32_tensor("base_model.model.fc.lora_B.weight", &[2, 1], &[1.0; 2]),
    ];
    assert_err(load_ok(json!({}), &t), ErrorCode::SHAPE, "base_model.model.fc.lora_B.weight");
    // 1-D A.
    let t = vec![
        f32_tensor("base_model.model.fc.lora_A.weight", &[6], &EX_A),
        f32_tensor("base_model.model.fc.lora_B.weight", &[2, 2], &EX_B),
    ];
    assert_err(load_ok(json!({}), &t), ErrorCode::SHAPE, "base_model.model.fc.lora_A.weight");
    // Magnitude of the wrong length.
    let mut t = example_tensors();
    t.push(f32_tensor("base_model.model.fc.lora_magnitude_vector", &[3], &[1.0; 3]));
    assert_err(load_ok(json!({"use_dora": true}), &t), ErrorCode::SHAPE, "base_model.model.fc.lora_magnitude_vector");
}

#[test]
fn non_finite_values() {
    for (bad, idx) in [(f32::NAN, 4), (f32::INFINITY, 1), (f32::NEG_INFINITY, 0)] {
        let mut a = EX_A;
        a[idx] = bad;
        let t = vec![
            f32_tensor("base_model.model.fc.lora_A.weight", &[2, 3], &a),
            f32_tensor("base_model.model.fc.lora_B.weight", &[2, 2], &EX_B),
        ];
        let e = assert_err(load_ok(json!({}), &t), ErrorCode::NOT_FINITE, "base_model.model.fc.lora_A.weight");
        assert!(e.message.contains(&format!("index {idx}")), "{e}");
    }
    let t = vec![
        f32_tensor("base_model.model.fc.lora_A.weight", &[2, 3], &EX_A),
        f32_tensor("base_model.model.fc.lora_B.weight", &[2, 2], &[1.0, f32::NAN, 0.0, 0.0]),
    ];
    assert_err(load_ok(json!({}), &t), ErrorCode::NOT_FINITE, "base_model.model.fc.lora_B.weight");
    // f16 infinity.
    let inf16 = half::f16::INFINITY.to_bits().to_le_bytes();
    let mut bytes = vec![0u8; 12];
    bytes[2..4].copy_from_slice(&inf16);
    let t = vec![
        ("base_model.model.fc.lora_A.weight".to_string(), Dtype::F16, vec![2, 3], bytes),
        f32_tensor("base_model.model.fc.lora_B.weight", &[2, 2], &EX_B),
    ];
    let e = assert_err(load_ok(json!({}), &t), ErrorCode::NOT_FINITE, "base_model.model.fc.lora_A.weight");
    assert!(e.message.contains("index 1"), "{e}");
    // A DoRA row whose norm is zero.
    let model = FakeModel::new(vec![FakeNode::linear("fc", 2, 3, vec![0.0; 6], None)]);
    let t = vec![
        f32_tensor("base_model.model.fc.lora_A.weight", &[2, 3], &EX_A),
        f32_tensor("base_model.model.fc.lora_B.weight", &[2, 2], &[0.0; 4]),
        f32_tensor("base_model.model.fc.lora_magnitude_vector", &[2], &[1.0, 1.0]),
    ];
    let r = load(&model, &config(json!({"use_dora": true})), &t, "");
    assert_err(r, ErrorCode::NOT_FINITE, "base_model.model.fc.lora_magnitude_vector");
}

#[test]
fn dtypes() {
    for (dtype, size) in [(Dtype::I32, 4), (Dtype::F64, 8), (Dtype::U8, 1)] {
        let t = vec![
            ("base_model.model.fc.lora_A.weight".to_string(), dtype, vec![2, 3], vec![0u8; 6 * size]),
            f32_tensor("base_model.model.fc.lora_B.weight", &[2, 2], &EX_B),
        ];
        let e = assert_err(load_ok(json!({}), &t), ErrorCode::TENSOR, "base_model.model.fc.lora_A.weight");
        assert!(e.message.contains(&format!("{dtype:?}")), "{e}");
    }
}

#[test]
fn model_resolution() {
    let t = vec![
        f32_tensor("base_model.model.nope.lora_A.weight", &[2, 3], &EX_A),
        f32_tensor("base_model.model.nope.lora_B.weight", &[2, 2], &EX_B),
    ];
    assert_err(load_ok(json!({}), &t), ErrorCode::UNKNOWN_MODULE, "nope");
    let mut model = example_model();
    model.nodes[0].op = NodeOp::EmbeddingBag;
    assert_err(load(&model, &config(json!({})), &example_tensors(), ""), ErrorCode::UNSUPPORTED, "fc");
}

fn raw_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut f = (header.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(header.as_bytes());
    f.extend_from_slice(data);
    f
}

#[test]
fn hostile_safetensors() {
    let m = example_model();
    let c = config(json!({}));
    let field = "adapter_model.safetensors";
    let go = |bytes: Vec<u8>| graft_plugin_lora::load_bytes("h", c.as_bytes(), bytes, "", &m.view());
    // Truncated: the data section is shorter than the header says.
    let mut good = safetensors_bytes(&example_tensors());
    good.truncate(good.len() - 4);
    assert_err(go(good), ErrorCode::TENSOR, field);
    // Too short for the length prefix; empty.
    assert_err(go(vec![1, 2, 3]), ErrorCode::TENSOR, field);
    assert_err(go(Vec::new()), ErrorCode::TENSOR, field);
    // Header length past EOF (and absurd).
    let mut f = raw_file("{}", &[]);
    f[..8].copy_from_slice(&1000u64.to_le_bytes());
    assert_err(go(f.clone()), ErrorCode::TENSOR, field);
    f[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_err(go(f), ErrorCode::TENSOR, field);
    // Huge declared shape.
    let h = r#"{"base_model.model.fc.lora_A.weight":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,24]}}"#;
    assert_err(go(raw_file(h, &[0; 24])), ErrorCode::TENSOR, field);
    let h =
        r#"{"base_model.model.fc.lora_A.weight":{"dtype":"F32","shape":[1000000000],"data_offsets":[0,4000000000]}}"#;
    assert_err(go(raw_file(h, &[0; 24])), ErrorCode::TENSOR, field);
    // Overlapping offsets.
    let h = r#"{"base_model.model.fc.lora_A.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"base_model.model.fc.lora_B.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]}}"#;
    assert_err(go(raw_file(h, &[0; 24])), ErrorCode::TENSOR, field);
    // Not JSON.
    assert_err(go(raw_file("not json", &[])), ErrorCode::TENSOR, field);
    // Through a mapped directory too.
    let dir = TempDir::new("trunc");
    std::fs::write(dir.path().join("adapter_config.json"), &c).unwrap();
    std::fs::write(dir.path().join("adapter_model.safetensors"), raw_file("{\"a\":", &[])).unwrap();
    assert_err(load_in_dir(&dir), ErrorCode::TENSOR, field);
    std::fs::write(dir.path().join("adapter_model.safetensors"), b"").unwrap();
    assert_err(load_in_dir(&dir), ErrorCode::TENSOR, field);
}

#[test]
fn rank_pattern_selects_module_rank_and_alpha() {
    // Two modules: fc (r=2 by pattern) and top_fc (r=1 by the first matching key).
    let model = FakeModel::new(vec![
        FakeNode::linear("fc", 2, 3, vec![1.0, 0.0, 2.0, 0.0, 1.0, -1.0], None),
        FakeNode::linear("top_fc", 2, 3, vec![1.0; 6], None),
    ]);
    let t = vec![
        f32_tensor("base_model.model.fc.lora_A.weight", &[2, 3], &EX_A),
        f32_tensor("base_model.model.fc.lora_B.weight", &[2, 2], &EX_B),
        f32_tensor("base_model.model.top_fc.lora_A.weight", &[1, 3], &[1.0, 1.0, 1.0]),
        f32_tensor("base_model.model.top_fc.lora_B.weight", &[2, 1], &[1.0, 1.0]),
    ];
    // "top_.*" comes first and wins for top_fc even though ".*fc" (later) also matches it;
    // "fc" in alpha_pattern matches only whole dot-separated suffixes, so not top_fc.
    // Raw text: `json!` would sort the keys.
    let with_patterns = |rank: &str, alpha: &str| {
        config(json!({"r": 8, "lora_alpha": 16}))
            .replace(r#""rank_pattern": {}"#, &format!(r#""rank_pattern": {rank}"#))
            .replace(r#""alpha_pattern": {}"#, &format!(r#""alpha_pattern": {alpha}"#))
    };
    let c = with_patterns(r#"{"top_.*": 1, ".*fc": 2}"#, r#"{"top_fc": 3, "fc": 1}"#);
    assert!(c.contains(r#"{"top_.*": 1, ".*fc": 2}"#));
    let a = load(&model, &c, &t, "").unwrap();
    let info = a.info();
    let got: Vec<(&str, u32, f32)> = info.targets.iter().map(|t| (t.module.as_str(), t.rank, t.scale)).collect();
    assert_eq!(got, vec![("fc", 2, 0.5), ("top_fc", 1, 3.0)]);

    // With the keys in the other order, ".*fc" matches top_fc first: rank 2 expected, 1 found.
    let c = with_patterns(r#"{".*fc": 2, "top_.*": 1}"#, "{}");
    let e = assert_err(load(&model, &c, &t, ""), ErrorCode::SHAPE, "base_model.model.top_fc.lora_A.weight");
    assert!(e.message.contains("pattern key `.*fc`"), "{e}");
}
