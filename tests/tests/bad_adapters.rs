//! Broken PEFT adapters are refused with a typed error naming the culprit — never a
//! panic, never a half-loaded adapter, and never at the cost of the adapter already
//! being served.
//!
//! Adapters come from users and training pipelines, so every way an adapter directory can
//! be wrong must end in `Error::Adapter { code, field, .. }` with the code of the failure
//! class (`io`, `config`, `tensor`, `shape`, `not finite`, `unknown module`,
//! `unsupported`) and a `field` naming the config key, tensor or file to fix. Every case
//! starts from a valid adapter for the `dlrm_small` fixture model (the fixture's
//! `lora_a`, or `dora_c` for DoRA cases) and breaks one thing; the table runs every case
//! under `catch_unwind` and reports all mismatches and panics at once. Between cases the
//! registry keeps serving a good adapter under the same id the broken ones try to load
//! as, and its outputs must not change by a bit. Separate tests cover module-name
//! resolution: dotted PEFT names, an explicit module map, and ambiguous paths.

mod common_adapters;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common_adapters::{
    Batch, TestResult, adapter_dir, base_builder, base_model, bits, logits, open_built, scratch, session,
};
use graft::Error;
use graft::adapters::{LoadedAdapter, ModuleMap, Registry, RowAdapters};
use graft_plugin_lora::{CONFIG_FILE, LEGACY_FILE, MAX_CONFIG_BYTES, REJECTED_KEYS, TENSOR_FILE};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde_json::{Value, json};

const ROWS: usize = 16;

/// The full tensor key of `suffix` (`lora_A.weight`, …) for `module`.
fn key(module: &str, suffix: &str) -> String {
    format!("base_model.model.{module}.{suffix}")
}

/// One tensor of an adapter file.
#[derive(Clone, Debug)]
struct Tensor {
    key: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl Tensor {
    fn f32(key: String, shape: &[usize], value: f32) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor { key, dtype: Dtype::F32, shape: shape.to_vec(), data: value.to_le_bytes().repeat(n) }
    }

    /// Sets element `i` of an f32 tensor.
    fn set(&mut self, i: usize, value: f32) {
        self.data[4 * i..4 * i + 4].copy_from_slice(&value.to_le_bytes());
    }
}

/// A PEFT adapter held in memory: its config and its tensors.
#[derive(Clone, Debug)]
struct Peft {
    config: Value,
    tensors: Vec<Tensor>,
}

impl Peft {
    /// A fixture adapter (`lora_a`: LoRA r=4 on top_fc1..3; `dora_c`: DoRA r=8).
    fn fixture(name: &str) -> TestResult<Peft> {
        let dir = adapter_dir(name);
        let config = serde_json::from_slice(&std::fs::read(dir.join(CONFIG_FILE))?)?;
        let bytes = std::fs::read(dir.join(TENSOR_FILE))?;
        let file = SafeTensors::deserialize(&bytes)?;
        let mut tensors: Vec<Tensor> = file
            .tensors()
            .into_iter()
            .map(|(key, v)| Tensor { key, dtype: v.dtype(), shape: v.shape().to_vec(), data: v.data().to_vec() })
            .collect();
        tensors.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Peft { config, tensors })
    }

    fn tensor(&mut self, key: &str) -> &mut Tensor {
        match self.tensors.iter().position(|t| t.key == key) {
            Some(i) => &mut self.tensors[i],
            None => panic!("the base adapter has no tensor {key}"),
        }
    }

    fn remove(&mut self, key: &str) {
        self.tensors.retain(|t| t.key != key);
    }

    fn replace(&mut self, t: Tensor) {
        self.remove(&t.key);
        self.tensors.push(t);
    }

    /// Renames module `from` to `to` in every key.
    fn rename(&mut self, from: &str, to: &str) {
        let (from, to) = (format!("base_model.model.{from}."), format!("base_model.model.{to}."));
        for t in &mut self.tensors {
            if let Some(rest) = t.key.strip_prefix(&from) {
                t.key = format!("{to}{rest}");
            }
        }
    }

    /// The tensor file as `safetensors` writes it.
    fn safetensors(&self) -> TestResult<Vec<u8>> {
        let views = self
            .tensors
            .iter()
            .map(|t| Ok((t.key.clone(), TensorView::new(t.dtype, t.shape.clone(), &t.data)?)))
            .collect::<TestResult<Vec<_>>>()?;
        let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        Ok(safetensors::serialize(views, Some(metadata))?)
    }

    fn files(&self) -> TestResult<Files> {
        Ok(Files { config: Some(serde_json::to_vec_pretty(&self.config)?), tensors: Some(self.safetensors()?) })
    }
}

/// The two files of an adapter directory (`None`: the file is absent).
#[derive(Clone, Debug, Default)]
struct Files {
    config: Option<Vec<u8>>,
    tensors: Option<Vec<u8>>,
}

/// A tensor file split into its header JSON and data, for byte-level damage.
fn split_safetensors(bytes: &[u8]) -> TestResult<(Value, Vec<u8>)> {
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    Ok((serde_json::from_slice(&bytes[8..8 + n])?, bytes[8 + n..].to_vec()))
}

/// A tensor file with the given header JSON and data (no validation, no padding).
fn raw_safetensors(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// `[[[…]]]` nested `depth` deep.
fn nested_arrays(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

/// What a case loads, and the error it must produce.
struct Case {
    name: String,
    /// `None`: the source is a regular file, not a directory.
    files: Option<Files>,
    /// Also write a legacy `adapter_model.bin`.
    legacy: bool,
    options: &'static str,
    code: &'static str,
    /// The expected `field`; `None` means "the source path".
    field: Option<String>,
}

fn case(name: impl Into<String>, files: Files, code: &'static str, field: impl Into<String>) -> Case {
    Case { name: name.into(), files: Some(files), legacy: false, options: "", code, field: Some(field.into()) }
}

/// A case that edits the config of `base`.
fn config_case(
    base: &Peft,
    name: impl Into<String>,
    edit: impl FnOnce(&mut Value),
    code: &'static str,
    field: impl Into<String>,
) -> TestResult<Case> {
    let mut p = base.clone();
    edit(&mut p.config);
    Ok(case(name, p.files()?, code, field))
}

/// A case that edits the tensors of `base`.
fn tensor_case(
    base: &Peft,
    name: impl Into<String>,
    edit: impl FnOnce(&mut Peft),
    code: &'static str,
    field: impl Into<String>,
) -> TestResult<Case> {
    let mut p = base.clone();
    edit(&mut p);
    Ok(case(name, p.files()?, code, field))
}

/// A case whose config file holds exactly `text`.
fn config_text_case(base: &Peft, name: &str, text: Vec<u8>, code: &'static str, field: &str) -> TestResult<Case> {
    let mut files = base.files()?;
    files.config = Some(text);
    Ok(case(name, files, code, field))
}

/// A case whose tensor file holds exactly `bytes`.
fn tensor_bytes_case(base: &Peft, name: &str, bytes: Vec<u8>) -> TestResult<Case> {
    let mut files = base.files()?;
    files.tensors = Some(bytes);
    Ok(case(name, files, "tensor", TENSOR_FILE))
}

fn cases() -> TestResult<Vec<Case>> {
    let lora = Peft::fixture("lora_a")?;
    let dora = Peft::fixture("dora_c")?;
    let (a1, b1) = (key("top_fc1", "lora_A.weight"), key("top_fc1", "lora_B.weight"));
    let (a2, b3) = (key("top_fc2", "lora_A.weight"), key("top_fc3", "lora_B.weight"));
    let m1 = key("top_fc1", "lora_magnitude_vector");
    let mut v = Vec::new();

    // --- Shapes against the model and the config.
    v.push(tensor_case(
        &lora,
        "A in_features != node inputs",
        |p| p.replace(Tensor::f32(a1.clone(), &[4, 79], 0.1)),
        "shape",
        &a1,
    )?);
    v.push(tensor_case(
        &lora,
        "B out_features != node outputs",
        |p| p.replace(Tensor::f32(b1.clone(), &[63, 4], 0.1)),
        "shape",
        &b1,
    )?);
    v.push(tensor_case(
        &lora,
        "A and B ranks disagree",
        |p| p.replace(Tensor::f32(b1.clone(), &[64, 3], 0.1)),
        "shape",
        &b1,
    )?);
    v.push(tensor_case(&lora, "A is 1-D", |p| p.replace(Tensor::f32(a1.clone(), &[320], 0.1)), "shape", &a1)?);
    v.push(tensor_case(&lora, "A is 3-D", |p| p.replace(Tensor::f32(a1.clone(), &[1, 4, 80], 0.1)), "shape", &a1)?);
    v.push(tensor_case(
        &lora,
        "rank 0",
        |p| {
            p.replace(Tensor::f32(a1.clone(), &[0, 80], 0.0));
            p.replace(Tensor::f32(b1.clone(), &[64, 0], 0.0));
        },
        "shape",
        &a1,
    )?);
    v.push(config_case(&lora, "config r != tensor rank", |c| c["r"] = json!(8), "shape", &a1)?);
    v.push(config_case(
        &lora,
        "rank_pattern != tensor rank",
        |c| c["rank_pattern"] = json!({"top_fc2": 2}),
        "shape",
        &a2,
    )?);
    v.push(tensor_case(&lora, "lora_A missing", |p| p.remove(&a2), "tensor", &a2)?);
    v.push(tensor_case(&lora, "lora_B missing", |p| p.remove(&b3), "tensor", &b3)?);
    v.push(tensor_case(&lora, "no tensors at all", |p| p.tensors.clear(), "config", TENSOR_FILE)?);

    // --- Keys.
    v.push(tensor_case(
        &lora,
        "unknown module",
        |p| {
            p.tensors.push(Tensor::f32(key("top_fc9", "lora_A.weight"), &[4, 32], 0.1));
            p.tensors.push(Tensor::f32(key("top_fc9", "lora_B.weight"), &[1, 4], 0.1));
        },
        "unknown module",
        "top_fc9",
    )?);
    v.push(tensor_case(
        &lora,
        "LoRA on an embedding_bag node",
        |p| {
            p.tensors.push(Tensor::f32(key("emb_f0", "lora_A.weight"), &[4, 101], 0.1));
            p.tensors.push(Tensor::f32(key("emb_f0", "lora_B.weight"), &[16, 4], 0.1));
        },
        "unsupported",
        "emb_f0",
    )?);
    v.push(tensor_case(
        &lora,
        "LoRA on a relu node",
        |p| {
            p.tensors.push(Tensor::f32(key("Relu_2", "lora_A.weight"), &[4, 64], 0.1));
            p.tensors.push(Tensor::f32(key("Relu_2", "lora_B.weight"), &[64, 4], 0.1));
        },
        "unsupported",
        "Relu_2",
    )?);
    v.push(tensor_case(
        &lora,
        "two module paths for one node (top.fc1 and top_fc1)",
        |p| {
            p.tensors.push(Tensor::f32(key("top.fc1", "lora_A.weight"), &[4, 80], 0.1));
            p.tensors.push(Tensor::f32(key("top.fc1", "lora_B.weight"), &[64, 4], 0.1));
        },
        "config",
        "top_fc1",
    )?);
    let emb_a = key("emb_f0", "lora_embedding_A");
    v.push(tensor_case(
        &lora,
        "embedding LoRA keys",
        |p| {
            p.tensors.push(Tensor::f32(emb_a.clone(), &[4, 101], 0.1));
            p.tensors.push(Tensor::f32(key("emb_f0", "lora_embedding_B"), &[16, 4], 0.1));
        },
        "unsupported",
        &emb_a,
    )?);
    let unknown = key("top_fc1", "lora_C.weight");
    v.push(tensor_case(
        &lora,
        "unknown tensor key",
        |p| p.tensors.push(Tensor::f32(unknown.clone(), &[4], 0.0)),
        "tensor",
        &unknown,
    )?);
    let unprefixed = "top_fc1.lora_A.weight".to_string();
    v.push(tensor_case(
        &lora,
        "key without the PEFT prefix",
        |p| p.tensors.push(Tensor::f32(unprefixed.clone(), &[4, 80], 0.0)),
        "tensor",
        &unprefixed,
    )?);
    let bare = "base_model.model.lora_A.weight".to_string();
    v.push(tensor_case(
        &lora,
        "key with an empty module path",
        |p| p.tensors.push(Tensor::f32(bare.clone(), &[4, 80], 0.0)),
        "tensor",
        &bare,
    )?);

    // --- Values and dtypes.
    v.push(tensor_case(&lora, "NaN weight", |p| p.tensor(&a2).set(5, f32::NAN), "not finite", &a2)?);
    v.push(tensor_case(&lora, "+Inf weight", |p| p.tensor(&b3).set(3, f32::INFINITY), "not finite", &b3)?);
    v.push(tensor_case(&lora, "-Inf weight", |p| p.tensor(&a1).set(0, f32::NEG_INFINITY), "not finite", &a1)?);
    v.push(tensor_case(
        &lora,
        "f16 NaN weight",
        |p| {
            let mut data = vec![0u8; 4 * 80 * 2];
            data[6..8].copy_from_slice(&0x7e00u16.to_le_bytes());
            p.replace(Tensor { key: a1.clone(), dtype: Dtype::F16, shape: vec![4, 80], data });
        },
        "not finite",
        &a1,
    )?);
    v.push(tensor_case(
        &lora,
        "bf16 +Inf weight",
        |p| {
            let mut data = vec![0u8; 64 * 4 * 2];
            data[10..12].copy_from_slice(&0x7f80u16.to_le_bytes());
            p.replace(Tensor { key: b1.clone(), dtype: Dtype::BF16, shape: vec![64, 4], data });
        },
        "not finite",
        &b1,
    )?);
    for (dtype, size) in [(Dtype::F64, 8), (Dtype::I64, 8), (Dtype::I32, 4), (Dtype::U8, 1), (Dtype::BOOL, 1)] {
        v.push(tensor_case(
            &lora,
            format!("dtype {dtype:?}"),
            |p| p.replace(Tensor { key: a1.clone(), dtype, shape: vec![4, 80], data: vec![0; 320 * size] }),
            "tensor",
            &a1,
        )?);
    }

    // --- DoRA.
    v.push(tensor_case(
        &lora,
        "lora_magnitude_vector without use_dora",
        |p| p.tensors.push(Tensor::f32(m1.clone(), &[64], 1.0)),
        "tensor",
        &m1,
    )?);
    v.push(tensor_case(&dora, "use_dora without a magnitude", |p| p.remove(&m1), "tensor", &m1)?);
    v.push(tensor_case(
        &dora,
        "magnitude of the wrong length",
        |p| p.replace(Tensor::f32(m1.clone(), &[63], 1.0)),
        "shape",
        &m1,
    )?);
    v.push(tensor_case(&dora, "NaN magnitude", |p| p.tensor(&m1).set(7, f32::NAN), "not finite", &m1)?);
    let bias1 = key("top_fc1", "lora_B.bias");
    v.push(config_case(&lora, "lora_bias without bias tensors", |c| c["lora_bias"] = json!(true), "tensor", &bias1)?);
    v.push(tensor_case(
        &lora,
        "bias tensor without lora_bias",
        |p| p.tensors.push(Tensor::f32(bias1.clone(), &[64], 0.0)),
        "tensor",
        &bias1,
    )?);
    let mut biased = lora.clone();
    biased.config["lora_bias"] = json!(true);
    for m in ["top_fc1", "top_fc2", "top_fc3"] {
        let out = biased.tensor(&key(m, "lora_B.weight")).shape[0];
        biased.tensors.push(Tensor::f32(key(m, "lora_B.bias"), &[out], 0.0));
    }
    v.push(tensor_case(
        &biased,
        "bias of the wrong length",
        |p| p.replace(Tensor::f32(bias1.clone(), &[65], 0.0)),
        "shape",
        &bias1,
    )?);

    // --- Missing and foreign files.
    let mut files = lora.files()?;
    files.config = None;
    v.push(case("adapter_config.json missing", files, "io", CONFIG_FILE));
    let mut files = lora.files()?;
    files.tensors = None;
    v.push(case("adapter_model.safetensors missing", files, "io", TENSOR_FILE));
    let mut only_bin =
        case("only adapter_model.bin", Files { tensors: None, ..lora.files()? }, "unsupported", LEGACY_FILE);
    only_bin.legacy = true;
    v.push(only_bin);
    v.push(Case { name: "source is a file".into(), files: None, legacy: false, options: "", code: "io", field: None });
    v.push(Case {
        name: "source directory does not exist".into(),
        files: None,
        legacy: false,
        options: "missing",
        code: "io",
        field: None,
    });

    // --- The tensor file's bytes.
    let good = lora.safetensors()?;
    let (header, data) = split_safetensors(&good)?;
    let mut huge = header.clone();
    huge[&a1]["shape"] = json!([1u64 << 20, 1u64 << 20]);
    v.push(tensor_bytes_case(
        &lora,
        "shape claiming 2^40 elements",
        raw_safetensors(&serde_json::to_vec(&huge)?, &data),
    )?);
    let mut overflow = header.clone();
    overflow[&a1]["shape"] = json!([1u64 << 62, 1u64 << 62]);
    v.push(tensor_bytes_case(
        &lora,
        "shape overflowing usize",
        raw_safetensors(&serde_json::to_vec(&overflow)?, &data),
    )?);
    let mut far = header.clone();
    far[&b3]["data_offsets"] = json!([4352, 1u64 << 40]);
    v.push(tensor_bytes_case(&lora, "data offsets far past EOF", raw_safetensors(&serde_json::to_vec(&far)?, &data))?);
    let mut overlap = header.clone();
    overlap[&b1]["data_offsets"] = overlap[&a1]["data_offsets"].clone();
    v.push(tensor_bytes_case(
        &lora,
        "overlapping data offsets",
        raw_safetensors(&serde_json::to_vec(&overlap)?, &data),
    )?);
    let mut past = good.clone();
    let n = u64::from_le_bytes(good[..8].try_into()?);
    past[..8].copy_from_slice(&(n + good.len() as u64).to_le_bytes());
    v.push(tensor_bytes_case(&lora, "header length past EOF", past)?);
    let mut max_len = good.clone();
    max_len[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    v.push(tensor_bytes_case(&lora, "header length u64::MAX", max_len)?);
    v.push(tensor_bytes_case(&lora, "truncated data", good[..good.len() - 100].to_vec())?);
    v.push(tensor_bytes_case(&lora, "truncated header", good[..40].to_vec())?);
    v.push(tensor_bytes_case(&lora, "shorter than the length prefix", good[..5].to_vec())?);
    v.push(tensor_bytes_case(&lora, "empty tensor file", Vec::new())?);
    v.push(tensor_bytes_case(&lora, "header is not JSON", raw_safetensors(b"{\"a\": nope}", &[]))?);
    v.push(tensor_bytes_case(&lora, "header is not UTF-8", raw_safetensors(&[b'{', 0xff, 0xfe, b'}'], &[]))?);
    let deep_header = format!(r#"{{"__metadata__":{{"format":"pt"}},"x":{}}}"#, nested_arrays(100_000));
    v.push(tensor_bytes_case(&lora, "header nests arrays 100k deep", raw_safetensors(deep_header.as_bytes(), &[]))?);

    // --- The config's bytes and types.
    v.push(config_text_case(&lora, "config is not JSON", b"peft_type: LORA".to_vec(), "config", CONFIG_FILE)?);
    v.push(config_text_case(&lora, "config is empty", Vec::new(), "config", CONFIG_FILE)?);
    v.push(config_text_case(&lora, "config is an array", b"[1, 2]".to_vec(), "config", CONFIG_FILE)?);
    v.push(config_text_case(&lora, "config is a string", b"\"LORA\"".to_vec(), "config", CONFIG_FILE)?);
    v.push(config_text_case(
        &lora,
        "config is not UTF-8",
        b"{\"peft_type\": \"\xff\"}".to_vec(),
        "config",
        CONFIG_FILE,
    )?);
    let mut big = serde_json::to_vec(&lora.config)?;
    big.pop(); // the closing brace
    big.extend_from_slice(format!(r#","padding":"{}"}}"#, "x".repeat(2 << 20)).as_bytes());
    assert!(big.len() as u64 > MAX_CONFIG_BYTES);
    v.push(config_text_case(&lora, "2 MiB config", big, "config", CONFIG_FILE)?);
    // Hostile nesting: serde_json stops at depth 128 when it builds values; where the
    // loader only skips a value (`rank_pattern` of the wrong type), serde_json skips
    // without recursion, and the error is the type error. Either way, no stack overflow.
    let deep = |at: &str| format!(r#"{{"peft_type":"LORA","r":4,"lora_alpha":8,{at}}}"#);
    let arrays = nested_arrays(100_000);
    for (name, text, field) in [
        ("config nests arrays 100k deep", deep(&format!(r#""extra":{arrays}"#)), CONFIG_FILE),
        (
            "rank_pattern value nests arrays 100k deep",
            deep(&format!(r#""rank_pattern":{{"top_fc1":{arrays}}}"#)),
            CONFIG_FILE,
        ),
        ("rank_pattern nests arrays 100k deep", deep(&format!(r#""rank_pattern":{arrays}"#)), "rank_pattern"),
        ("config is arrays 100k deep", arrays.clone(), CONFIG_FILE),
        (
            "config nests objects 100k deep",
            deep(&format!(r#""extra":{}1{}"#, r#"{"a":"#.repeat(100_000), "}".repeat(100_000))),
            CONFIG_FILE,
        ),
    ] {
        v.push(config_text_case(&lora, name, text.into_bytes(), "config", field)?);
    }
    for (field, value) in [
        ("r", json!("eight")),
        ("r", json!(0)),
        ("r", json!(-4)),
        ("r", json!(4.5)),
        ("r", json!(1u64 << 40)),
        ("lora_alpha", json!("8")),
        ("lora_alpha", json!([8])),
        ("use_dora", json!("yes")),
        ("use_rslora", json!(1)),
        ("lora_bias", json!({})),
        ("fan_in_fan_out", json!("false")),
        ("rank_pattern", json!([["top_fc1", 4]])),
        ("rank_pattern", json!({"top_fc1": "4"})),
        ("rank_pattern", json!({"(": 4})),
        ("rank_pattern", json!({"a{1000}{1000}{1000}": 4})),
        ("alpha_pattern", json!({"top_fc1": null})),
        ("alpha_pattern", json!({"[": 8})),
        ("scaling", json!("one")),
        ("peft_type", json!(7)),
        ("bias", json!(false)),
        ("modules_to_save", json!("head")),
    ] {
        v.push(config_case(&lora, format!("{field} = {value}"), |c| c[field] = value.clone(), "config", field)?);
    }
    v.push(config_case(
        &lora,
        "peft_type missing",
        |c| {
            if let Some(o) = c.as_object_mut() {
                o.remove("peft_type");
            }
        },
        "config",
        "peft_type",
    )?);
    for value in ["LOHA", "lora", "IA3", ""] {
        v.push(config_case(
            &lora,
            format!("peft_type = {value:?}"),
            |c| c["peft_type"] = json!(value),
            "unsupported",
            "peft_type",
        )?);
    }

    // --- Variants graft does not implement.
    let rejected: &[(&str, Value)] = &[
        ("use_bdlora", json!(true)),
        ("use_bdlora", json!({"block_size": 4})),
        ("alora_invocation_tokens", json!([1, 2, 3])),
        ("layer_replication", json!([[0, 2]])),
        ("trainable_token_indices", json!([0, 5])),
        ("trainable_token_indices", json!({"embed": [1]})),
        ("target_parameters", json!(["top_fc1.weight"])),
        ("use_qalora", json!(true)),
        ("velora_config", json!({"rank": 2})),
        ("arrow_config", json!({"top_k": 2})),
        ("megatron_config", json!({"tp": 2})),
        ("kasa_config", json!({"a": 1})),
        ("monteclora_config", json!({"a": 1})),
        ("use_qalora", json!(1)),
        ("target_parameters", json!("top_fc1.weight")),
    ];
    for (field, value) in rejected {
        v.push(config_case(&lora, format!("{field} = {value}"), |c| c[*field] = value.clone(), "unsupported", *field)?);
    }
    for field in REJECTED_KEYS {
        v.push(config_case(&lora, format!("{field} = true"), |c| c[*field] = json!(true), "unsupported", *field)?);
    }
    v.push(config_case(
        &lora,
        "modules_to_save = [\"classifier\"]",
        |c| c["modules_to_save"] = json!(["classifier"]),
        "unsupported",
        "modules_to_save",
    )?);
    for bias in ["all", "lora_only"] {
        v.push(config_case(&lora, format!("bias = {bias:?}"), |c| c["bias"] = json!(bias), "unsupported", "bias")?);
    }

    // --- Load options.
    for (options, field) in
        [("{", "options"), ("[1]", "options"), (r#"{"scale": 1}"#, "scale"), (r#"{"scaling": "x"}"#, "scaling")]
    {
        let mut c = case(format!("options {options}"), lora.files()?, "config", field);
        c.options = options;
        v.push(c);
    }
    Ok(v)
}

/// Writes a case's directory (or file) under `root`; returns the source path.
fn materialize(root: &Path, index: usize, c: &Case) -> TestResult<PathBuf> {
    let path = root.join(format!("case{index:03}"));
    match &c.files {
        None if c.options == "missing" => {}
        None => std::fs::write(&path, b"not a directory")?,
        Some(files) => {
            std::fs::create_dir_all(&path)?;
            if let Some(config) = &files.config {
                std::fs::write(path.join(CONFIG_FILE), config)?;
            }
            if let Some(tensors) = &files.tensors {
                std::fs::write(path.join(TENSOR_FILE), tensors)?;
            }
            if c.legacy {
                std::fs::write(path.join(LEGACY_FILE), b"\x80\x02}q\x00.")?;
            }
        }
    }
    Ok(path)
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

/// The good adapter every case tries to displace, and what it computes.
struct Served {
    adapter: Arc<LoadedAdapter>,
    logits: Vec<u32>,
}

fn check_served(
    registry: &Registry,
    model: &graft::Model,
    batch: &Batch,
    served: &Served,
) -> TestResult<Option<String>> {
    let now = registry.snapshot();
    let Some(current) = now.get("x") else { return Ok(Some("`x` is no longer registered".into())) };
    if !Arc::ptr_eq(current, &served.adapter) {
        return Ok(Some(format!("`x` is now version {}", current.version())));
    }
    let got = bits(&logits(&mut session(model, ROWS)?, batch, &RowAdapters::all(registry, "x")?)?);
    Ok((got != served.logits).then(|| "`x` computes different logits".to_string()))
}

#[test]
fn every_broken_adapter_is_a_typed_error() -> TestResult {
    let root = scratch("bad_adapters_table")?;
    let model = base_model(&root)?;
    let registry = Registry::new(&model);
    let batch = Batch::load(ROWS)?;
    registry.insert(registry.load_peft("x", adapter_dir("lora_a"))?)?;
    let adapter = registry.snapshot().require("x")?.clone();
    let logits0 = bits(&logits(&mut session(&model, ROWS)?, &batch, &RowAdapters::all(&registry, "x")?)?);
    let served = Served { adapter, logits: logits0 };

    let cases = cases()?;
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let path = materialize(&root, i, c)?;
        let source = path.to_str().ok_or("scratch path is not UTF-8")?;
        let options = if c.options == "missing" { "" } else { c.options };
        let result = catch_unwind(AssertUnwindSafe(|| registry.load("lora", "x", source, options)));
        let want_field = c.field.clone().unwrap_or_else(|| source.to_string());
        let outcome = match result {
            Err(p) => Err(format!("PANICKED: {}", panic_message(&*p))),
            Ok(Ok(a)) => {
                // Even a wrongly accepted adapter must not be published by a load.
                Err(format!("loaded (version {}) instead of failing", a.version()))
            }
            Ok(Err(Error::Adapter { code, field, detail, .. })) if code == c.code && field == want_field => {
                println!("  ok  {:<52} {code} `{field}`: {detail}", c.name);
                Ok(())
            }
            Ok(Err(e)) => Err(format!("wrong error {e:?}")),
        };
        if let Err(why) = outcome {
            failures.push(format!("{} (want {} `{}`): {why}", c.name, c.code, want_field));
        }
        if let Some(why) = check_served(&registry, &model, &batch, &served)? {
            failures.push(format!("{}: the good adapter was disturbed: {why}", c.name));
        }
    }
    println!("{} cases, {} failures", cases.len(), failures.len());
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    Ok(())
}

/// Module paths resolve through the built-in rules (`top.fc1` → node `top_fc1`) and
/// through an explicit [`ModuleMap`]; either way the adapter computes exactly what the
/// fixture's own names compute.
#[test]
fn dotted_and_mapped_module_names_resolve() -> TestResult {
    let root = scratch("bad_adapters_names")?;
    let model = base_model(&root)?;
    let batch = Batch::load(ROWS)?;
    let reference = Registry::new(&model);
    reference.insert(reference.load_peft("x", adapter_dir("lora_a"))?)?;
    let want = bits(&logits(&mut session(&model, ROWS)?, &batch, &RowAdapters::all(&reference, "x")?)?);

    let write = |name: &str, renames: &[(&str, &str)]| -> TestResult<PathBuf> {
        let mut p = Peft::fixture("lora_a")?;
        for (from, to) in renames {
            p.rename(from, to);
        }
        let dir = root.join(name);
        let files = p.files()?;
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(CONFIG_FILE), files.config.ok_or("config")?)?;
        std::fs::write(dir.join(TENSOR_FILE), files.tensors.ok_or("tensors")?)?;
        Ok(dir)
    };
    let run = |registry: &Registry, dir: &Path| -> TestResult<Vec<u32>> {
        registry.upsert(registry.load_peft("x", dir)?)?;
        Ok(bits(&logits(&mut session(&model, ROWS)?, &batch, &RowAdapters::all(registry, "x")?)?))
    };

    let dotted = write("dotted", &[("top_fc1", "top.fc1"), ("top_fc2", "top.fc2"), ("top_fc3", "top.fc3")])?;
    assert_eq!(run(&Registry::new(&model), &dotted)?, want, "top.fcN resolves to top_fcN");

    let renames = [("top_fc1", "decoder.mlp.0.proj"), ("top_fc2", "decoder.mlp.1.proj"), ("top_fc3", "head.out")];
    let mapped = write("mapped", &renames)?;
    match Registry::new(&model).load_peft("x", &mapped) {
        Err(Error::Adapter { code: "unknown module", field, .. }) => assert_eq!(field, "decoder.mlp.0.proj"),
        other => panic!("unmapped names must be an unknown-module error, got {other:?}"),
    }
    let mut map = ModuleMap::new();
    for (node, path) in renames {
        map.insert(path, node);
    }
    let mut registry = Registry::new(&model);
    registry.set_module_map(map.clone());
    assert_eq!(run(&registry, &mapped)?, want, "the module map resolves every path");

    // The map is consulted first: sending a path to a missing node is an error naming
    // the path, even where a built-in rule would have matched.
    map.insert("top.fc1", "no_such_node");
    let mut registry = Registry::new(&model);
    registry.set_module_map(map);
    match registry.load_peft("x", &dotted) {
        Err(Error::Adapter { code: "unknown module", field, detail, .. }) => {
            assert_eq!(field, "top.fc1");
            assert!(detail.contains("no_such_node"), "{detail}");
        }
        other => panic!("a map entry to a missing node must be an unknown-module error, got {other:?}"),
    }
    Ok(())
}

/// A module path that matches two nodes (here: two nodes recording the same source
/// name) is refused rather than attached to either.
#[test]
fn ambiguous_module_paths_are_refused() -> TestResult {
    let root = scratch("bad_adapters_ambiguous")?;
    let mut builder = base_builder()?;
    builder.set_source("top_fc1", "shared.proj");
    builder.set_source("top_fc2", "shared.proj");
    let model = open_built(&builder, &root)?;
    let mut p = Peft::fixture("lora_a")?;
    p.rename("top_fc1", "shared.proj");
    let dir = root.join("ambiguous");
    std::fs::create_dir_all(&dir)?;
    let files = p.files()?;
    std::fs::write(dir.join(CONFIG_FILE), files.config.ok_or("config")?)?;
    std::fs::write(dir.join(TENSOR_FILE), files.tensors.ok_or("tensors")?)?;
    let registry = Registry::new(&model);
    match catch_unwind(AssertUnwindSafe(|| registry.load_peft("x", &dir))) {
        Ok(Err(Error::Adapter { code: "unknown module", field, detail, .. })) => {
            assert_eq!(field, "shared.proj");
            assert!(detail.contains("top_fc1") && detail.contains("top_fc2"), "{detail}");
        }
        Ok(other) => panic!("an ambiguous path must be an unknown-module error, got {other:?}"),
        Err(_) => panic!("loading an ambiguous path panicked"),
    }
    // A module map entry settles it.
    let mut map = ModuleMap::new();
    map.insert("shared.proj", "top_fc1");
    let mut registry = Registry::new(&model);
    registry.set_module_map(map);
    let adapter = registry.load_peft("x", &dir)?;
    assert_eq!(adapter.targets().len(), 3);
    Ok(())
}
