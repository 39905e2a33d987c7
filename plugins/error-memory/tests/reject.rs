//! Hostile files, configs, options and calls: every refusal is a typed error naming the
//! field, tensor or file; nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;

use common::*;
use graft_plugin_abi::abi_stable::std_types::{RSliceMut, RStr};
use graft_plugin_abi::{Adapter, ErrorCode, LoadRequest, MatView, MatViewMut, PluginError, Post, Tap};
use graft_plugin_error_memory::{CONFIG_METADATA_KEY, Config, ErrorMemory, Estimate, KIND};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::{Value, json};

const D: usize = 2;

fn base() -> Value {
    json!({"kind": "error-memory", "format_version": 1, "key_node": "h", "output_node": "p", "tables": 2, "bits": 1})
}

fn with(patch: Value) -> Value {
    let mut v = base();
    for (k, x) in patch.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// Writes a file with raw config metadata and raw tensors, then loads it.
fn load_raw(
    dir: &TempDir,
    metadata: Option<&str>,
    tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
    options: &str,
    model: &FakeModel,
) -> Result<ErrorMemory, PluginError> {
    let path = dir.file("raw.safetensors");
    let views: Vec<_> =
        tensors.iter().map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let meta = metadata.map(|m| HashMap::from([(CONFIG_METADATA_KEY.to_owned(), m.to_owned())]));
    safetensors::serialize_to_file(views, meta, std::path::Path::new(&path)).unwrap();
    load(model, &path, options)
}

fn load_config(dir: &TempDir, config: &Value) -> Result<ErrorMemory, PluginError> {
    load_raw(dir, Some(&config.to_string()), &[], "", &memory_model(D))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn bad_config_values() {
    let dir = TempDir::new("cfg");
    load_config(&dir, &base()).unwrap();
    let cases: Vec<(Value, ErrorCode, &str)> = vec![
        (json!({"bits": 0}), ErrorCode::CONFIG, "bits"),
        (json!({"bits": 21}), ErrorCode::CONFIG, "bits"),
        (json!({"bits": 3.5}), ErrorCode::CONFIG, "bits"),
        (json!({"bits": -1}), ErrorCode::CONFIG, "bits"),
        (json!({"tables": 0}), ErrorCode::CONFIG, "tables"),
        (json!({"tables": 257}), ErrorCode::CONFIG, "tables"),
        (json!({"tables": "8"}), ErrorCode::CONFIG, "tables"),
        (json!({"lambda": 2}), ErrorCode::CONFIG, "lambda"),
        (json!({"lambda": -0.1}), ErrorCode::CONFIG, "lambda"),
        (json!({"lambda": null}), ErrorCode::CONFIG, "lambda"),
        (json!({"tau": 0}), ErrorCode::CONFIG, "tau"),
        (json!({"decay": 0}), ErrorCode::CONFIG, "decay"),
        (json!({"decay": 1.5}), ErrorCode::CONFIG, "decay"),
        (json!({"threshold": -1}), ErrorCode::CONFIG, "threshold"),
        (json!({"logit_eps": 0}), ErrorCode::CONFIG, "logit_eps"),
        (json!({"logit_eps": 0.5}), ErrorCode::CONFIG, "logit_eps"),
        (json!({"pending": 0}), ErrorCode::CONFIG, "pending"),
        (json!({"exact_capacity": 0}), ErrorCode::CONFIG, "exact_capacity"),
        (json!({"estimate": "knn"}), ErrorCode::CONFIG, "estimate"),
        (json!({"space": "odds"}), ErrorCode::CONFIG, "space"),
        (json!({"output_is": 1}), ErrorCode::CONFIG, "output_is"),
        (json!({"top_k": 0}), ErrorCode::CONFIG, "top_k"),
        (json!({"estimate": "topk", "top_k": 3}), ErrorCode::CONFIG, "top_k"),
        (json!({"estimate": "exact", "top_k": 5, "exact_capacity": 4}), ErrorCode::CONFIG, "top_k"),
        (json!({"seed": -3}), ErrorCode::CONFIG, "seed"),
        (json!({"projections": ""}), ErrorCode::CONFIG, "projections"),
        (json!({"key_node": ""}), ErrorCode::CONFIG, "key_node"),
        (json!({"kind": "lora"}), ErrorCode::CONFIG, "kind"),
        (json!({"format_version": 2}), ErrorCode::UNSUPPORTED, "format_version"),
        (json!({"tabels": 4}), ErrorCode::CONFIG, "tabels"),
        (json!({"state": "x"}), ErrorCode::CONFIG, "state"),
    ];
    for (patch, code, field) in cases {
        assert_err(load_config(&dir, &with(patch.clone())), code, field);
    }
    for key in ["kind", "format_version", "key_node", "output_node"] {
        let mut v = base();
        v.as_object_mut().unwrap().remove(key);
        assert_err(load_config(&dir, &v), ErrorCode::CONFIG, key);
    }
    // Memory limits: 256 tables of 2^20 buckets.
    assert_err(load_config(&dir, &with(json!({"tables": 256, "bits": 20}))), ErrorCode::CONFIG, "bits");
    assert_err(load_config(&dir, &with(json!({"pending": 1 << 24, "tables": 256}))), ErrorCode::CONFIG, "pending");
    // Within those limits but over the default budget (a tiny file claiming a GiB): refused
    // unless the loader raises the budget; a budget can also be lowered.
    assert_err(load_config(&dir, &with(json!({"tables": 128, "bits": 20}))), ErrorCode::CONFIG, "max_bytes");
    assert_err(
        load_config(&dir, &with(json!({"tables": 1, "bits": 1, "pending": 1 << 24}))),
        ErrorCode::CONFIG,
        "max_bytes",
    );
    let small = with(json!({"tables": 4, "bits": 8}));
    let path = dir.file("small.safetensors");
    let meta = HashMap::from([(CONFIG_METADATA_KEY.to_owned(), small.to_string())]);
    safetensors::serialize_to_file(Vec::<(String, TensorView<'_>)>::new(), Some(meta), std::path::Path::new(&path))
        .unwrap();
    let model = memory_model(D);
    assert!(load(&model, &path, "").is_ok());
    assert_err(load(&model, &path, r#"{"max_bytes": 1000}"#), ErrorCode::CONFIG, "max_bytes");
    assert!(load(&model, &path, r#"{"max_bytes": 1073741824}"#).is_ok());
}

#[test]
fn bad_metadata() {
    let dir = TempDir::new("meta");
    let model = memory_model(D);
    // Not JSON, not an object, a repeated key.
    for bad in ["{not json", "[1, 2]", "\"x\"", r#"{"kind":"error-memory","kind":"error-memory"}"#] {
        assert_err(load_raw(&dir, Some(bad), &[], "", &model), ErrorCode::CONFIG, CONFIG_METADATA_KEY);
    }
    // No config anywhere.
    assert_err(load_raw(&dir, None, &[], "", &model), ErrorCode::CONFIG, CONFIG_METADATA_KEY);
    // The `config` option supplies it (and wins over the file's).
    let a = load_raw(&dir, None, &[], &json!({"config": base()}).to_string(), &model).unwrap();
    assert_eq!(a.config().tables, 2);
    let a = load_raw(
        &dir,
        Some(&base().to_string()),
        &[],
        &json!({"config": with(json!({"tables": 3}))}).to_string(),
        &model,
    )
    .unwrap();
    assert_eq!(a.config().tables, 3);
    // Bad options.
    for (options, field) in [
        ("{", "options"),
        ("[]", "options"),
        (r#"{"stat": "x"}"#, "stat"),
        (r#"{"state": 3}"#, "state"),
        (r#"{"config": 3}"#, "options"),
        (r#"{"config": {"kind": "error-memory"}}"#, "format_version"),
        (r#"{"state": "a", "state": "b"}"#, "options"),
    ] {
        assert_err(load_raw(&dir, Some(&base().to_string()), &[], options, &model), ErrorCode::CONFIG, field);
    }
}

#[test]
fn bad_files() {
    let dir = TempDir::new("files");
    let model = memory_model(D);
    let good = dir.file("good.safetensors");
    graft_plugin_error_memory::save(&good, &Config::new("h", "p"), &[]).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.file("bad.safetensors");
    for cut in [0, 3, 8, 9, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        assert_err(load(&model, &bad, ""), ErrorCode::TENSOR, &bad);
    }
    // A header length pointing far past the end.
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&bad, &huge).unwrap();
    assert_err(load(&model, &bad, ""), ErrorCode::TENSOR, &bad);
    // Missing file, a directory.
    assert_err(load(&model, &dir.file("missing"), ""), ErrorCode::IO, &dir.file("missing"));
    let d = dir.path().to_str().unwrap().to_owned();
    assert_err(load(&model, &d, ""), ErrorCode::IO, &d);
    // Through load_bytes too.
    assert_err(
        graft_plugin_error_memory::load_bytes("x", &bytes[..10], "", &model.view()),
        ErrorCode::TENSOR,
        "<memory:x>",
    );
    graft_plugin_error_memory::load_bytes("x", &bytes, "", &model.view()).unwrap();
}

#[test]
fn bad_projections() {
    let dir = TempDir::new("proj");
    let model = memory_model(D);
    let cfg = with(json!({"projections": "R"})).to_string();
    let good = f32_bytes(&[1.0, 0.0, 0.0, 1.0]);
    load_raw(&dir, Some(&cfg), &[("R", Dtype::F32, vec![2, 2], good.clone())], "", &model).unwrap();
    // NaN and inf.
    for v in [f32::NAN, f32::INFINITY] {
        let t = ("R", Dtype::F32, vec![2, 2], f32_bytes(&[1.0, 0.0, v, 1.0]));
        let e = assert_err(load_raw(&dir, Some(&cfg), &[t], "", &model), ErrorCode::NOT_FINITE, "R");
        assert!(e.message.contains("row 1, column 0"), "{e}");
    }
    // Wrong shapes: rows ≠ L·p, columns ≠ d, 1-D, 3-D.
    for shape in [vec![1, 4], vec![4, 1], vec![4], vec![1, 2, 2]] {
        let t = ("R", Dtype::F32, shape, good.clone());
        assert_err(load_raw(&dir, Some(&cfg), &[t], "", &model), ErrorCode::SHAPE, "R");
    }
    let t = ("R", Dtype::F32, vec![2, 3], f32_bytes(&[0.0; 6]));
    assert_err(load_raw(&dir, Some(&cfg), &[t], "", &model), ErrorCode::SHAPE, "R");
    // Wrong dtype.
    let t = ("R", Dtype::F16, vec![2, 2], vec![0u8; 8]);
    assert_err(load_raw(&dir, Some(&cfg), &[t], "", &model), ErrorCode::TENSOR, "R");
    // Missing, and unknown tensors.
    assert_err(load_raw(&dir, Some(&cfg), &[], "", &model), ErrorCode::TENSOR, "R");
    let extra = ("S", Dtype::F32, vec![1], f32_bytes(&[0.0]));
    assert_err(
        load_raw(&dir, Some(&cfg), &[("R", Dtype::F32, vec![2, 2], good.clone()), extra.clone()], "", &model),
        ErrorCode::TENSOR,
        "S",
    );
    assert_err(load_raw(&dir, Some(&base().to_string()), &[extra], "", &model), ErrorCode::TENSOR, "S");
}

#[test]
fn bad_nodes() {
    let dir = TempDir::new("nodes");
    let model = memory_model(D);
    let load_nodes = |key: &str, out: &str| {
        load_raw(&dir, Some(&with(json!({"key_node": key, "output_node": out})).to_string()), &[], "", &model)
    };
    assert_err(load_nodes("nope", "p"), ErrorCode::UNKNOWN_MODULE, "nope");
    assert_err(load_nodes("h", "nope"), ErrorCode::UNKNOWN_MODULE, "nope");
    // Output width ≠ 1; a graph input as output.
    let e = assert_err(load_nodes("h", "wide"), ErrorCode::SHAPE, "wide");
    assert!(e.message.contains("width 3"), "{e}");
    assert_err(load_nodes("h", "x"), ErrorCode::UNSUPPORTED, "x");
    // A graph input is a fine key; so is the output node itself.
    let a = load_nodes("x", "p").unwrap();
    assert_eq!(a.key_width(), D);
    let a = load_nodes("p", "p").unwrap();
    assert_eq!(a.key_width(), 1);
    let t = a.targets();
    assert_eq!((t[0].node, t[1].node), (2, 2));
    // A zero-width key.
    let mut m = model.clone();
    m.nodes.push(FakeNode::other("empty", 0));
    assert_err(
        load_raw(&dir, Some(&with(json!({"key_node": "empty"})).to_string()), &[], "", &m),
        ErrorCode::SHAPE,
        "empty",
    );
}

fn memory(dir: &TempDir) -> ErrorMemory {
    let mut c = Config::new("h", "p");
    c.tables = 2;
    c.bits = 2;
    build(dir, "m.safetensors", &memory_model(D), &c, &[], "").unwrap()
}

#[test]
fn bad_calls() {
    let dir = TempDir::new("calls");
    let a = memory(&dir);
    let w = a.state_floats();
    assert_eq!(w, 1 + 2 + D);
    let keys = [0.5f32, 0.5, -0.5, 0.5];
    let mut state = vec![0.0f32; 2 * w];
    let mut scratch = vec![0.0f32; a.scratch_floats(0, 2, kernels())];
    let tap_call = |target: u32, x: MatView<'_>, state: &mut [f32], cols: usize, scratch: &mut [f32]| {
        a.tap(Tap {
            target,
            x,
            state: MatViewMut::new(state, 2, cols, cols).unwrap(),
            scale: 1.0,
            kernels: kernels(),
            scratch: RSliceMut::from_mut_slice(scratch),
        })
        .into_result()
    };
    let x = MatView::new(&keys, 2, D, D).unwrap();
    assert_err(tap_call(1, x, &mut state, w, &mut scratch), ErrorCode::BAD_CALL, "target");
    assert_err(
        tap_call(0, MatView::new(&keys, 2, 1, 2).unwrap(), &mut state, w, &mut scratch),
        ErrorCode::BAD_CALL,
        "h",
    );
    assert_err(tap_call(0, x, &mut state, w - 1, &mut scratch), ErrorCode::BAD_CALL, "h");
    let short = scratch.len() - 1;
    assert_err(tap_call(0, x, &mut state, w, &mut scratch[..short]), ErrorCode::BAD_CALL, "h");
    tap_call(0, x, &mut state, w, &mut scratch).unwrap();

    let post_call = |target: u32, y: &mut [f32], state: &[f32], tickets: &mut [u64], scale: f32| {
        a.post(Post {
            target,
            y: MatViewMut::new(y, 2, 1, 1).unwrap(),
            state: MatView::new(state, 2, w, w).unwrap(),
            tickets: RSliceMut::from_mut_slice(tickets),
            scale,
            kernels: kernels(),
            scratch: RSliceMut::from_mut_slice(&mut []),
        })
        .into_result()
    };
    let mut y = [0.5f32, 0.5];
    let mut tickets = [0u64; 2];
    assert_err(post_call(0, &mut y, &state, &mut tickets, 1.0), ErrorCode::BAD_CALL, "target");
    assert_err(post_call(1, &mut y, &state, &mut tickets[..1], 1.0), ErrorCode::BAD_CALL, "p");
    assert_err(post_call(1, &mut y, &state, &mut tickets, f32::NAN), ErrorCode::BAD_CALL, "p");
    // Not a probability (output_is = prob).
    let mut y_bad = [0.5f32, 1.5];
    let e = assert_err(post_call(1, &mut y_bad, &state, &mut tickets, 1.0), ErrorCode::BAD_CALL, "p");
    assert!(e.message.contains("output_is"), "{e}");
    // Run state the tap never wrote.
    let mut garbage = state.clone();
    garbage[1] = 7.0;
    assert_err(post_call(1, &mut y, &garbage, &mut tickets, 1.0), ErrorCode::BAD_CALL, "p");
    garbage[1] = 0.5;
    assert_err(post_call(1, &mut y, &garbage, &mut tickets, 1.0), ErrorCode::BAD_CALL, "p");
    post_call(1, &mut y, &state, &mut tickets, 1.0).unwrap();

    // No linear_delta, no merge.
    let mut wbuf = [0.0f32; 2];
    let mut bias = [0.0f32; 1];
    let r = a.merge(0, MatViewMut::new(&mut wbuf, 1, 2, 2).unwrap(), RSliceMut::from_mut_slice(&mut bias));
    assert_eq!(r.into_result().unwrap_err().code, ErrorCode::UNSUPPORTED);
    assert_eq!(a.scratch_floats(1, 100, kernels()), 0);
    assert_eq!(a.scratch_floats(7, 100, kernels()), 0);
    // Zero rows are fine.
    assert!(tap(&a, &[]).unwrap().is_empty());
}

#[test]
fn root_module_and_inspect() {
    let dir = TempDir::new("root");
    let model = memory_model(D);
    let m = graft_plugin_error_memory::module();
    assert_eq!((m.kind())().as_str(), KIND);
    assert_eq!(m.abi_version(), graft_plugin_abi::ABI_VERSION);
    let path = dir.file("a.safetensors");
    let mut c = Config::new("h", "p");
    c.estimate = Estimate::TopK;
    c.projections = Some("R".into());
    c.tables = 2;
    c.bits = 3;
    let r = vec![0.5f32; 2 * 3 * D];
    graft_plugin_error_memory::save(&path, &c, &[("R", vec![6, D], &r)]).unwrap();
    let req = LoadRequest { id: RStr::from_str("a"), source: RStr::from_str(&path), options: RStr::from_str("") };
    let a = (m.load())(req, model.view()).into_result().unwrap();
    let info = a.info();
    assert_eq!(info.kind.as_str(), KIND);
    assert_eq!(info.targets.len(), 2);
    assert_eq!(info.targets[0].variant.as_str(), "key");
    assert_eq!(info.targets[1].variant.as_str(), "compensate");
    assert_eq!(info.targets[1].node.as_str(), "/p");
    // Sketch: 2 tables × 8 buckets × (2 + d) floats.
    assert_eq!(info.targets[1].bytes, 2 * 8 * (2 + D as u64) * 4);
    assert!(info.notes.iter().any(|n| n.as_str() == "estimate=topk"));
    assert!(info.notes.iter().any(|n| n.as_str() == "lambda=0.5"));
    assert!(info.notes.iter().any(|n| n.as_str() == "inserts=0"));
    // Errors come back through the ABI too.
    let req =
        LoadRequest { id: RStr::from_str("a"), source: RStr::from_str("/nonexistent"), options: RStr::from_str("") };
    assert_eq!((m.load())(req, model.view()).into_result().unwrap_err().code, ErrorCode::IO);

    let i = graft_plugin_error_memory::inspect_file(&path).unwrap();
    assert_eq!(i.kind.as_str(), KIND);
    assert_eq!(i.targets[0].module.as_str(), "h");
    assert_eq!(i.targets[1].bytes, info.targets[1].bytes);
    assert!(i.notes.iter().any(|n| n.as_str() == format!("d={D} (from the projections)")));
    let bad = dir.file("bad.safetensors");
    std::fs::write(&bad, b"garbage").unwrap();
    assert_err(graft_plugin_error_memory::inspect_file(&bad), ErrorCode::TENSOR, &bad);
    // save() validates the config it writes.
    let mut c = Config::new("h", "p");
    c.lambda = 3.0;
    assert_err(graft_plugin_error_memory::save(dir.file("x"), &c, &[]), ErrorCode::CONFIG, "lambda");
}
