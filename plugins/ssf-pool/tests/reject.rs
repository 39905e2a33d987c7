//! Hostile inputs: every refusal is a typed error naming the field, tensor or file, and
//! nothing panics (damaged files are swept byte by byte).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::abi_stable::std_types::RStr;
use graft_plugin_abi::{Adapter, ErrorCode, LoadRequest};
use safetensors::Dtype;
use serde_json::{Value, json};

/// The pool example: query `q` (2 wide), site `feat` (3), head `head` (3→2), P = 4.
fn model() -> FakeModel {
    let mut m = FakeModel::new(vec![
        FakeNode::input("q", 2),
        FakeNode::other("feat", 3),
        FakeNode::linear("head", 2, 3, vec![0.0; 6], None),
        FakeNode::other("act", 2),
    ]);
    m.aliases.insert("feat_alias".into(), "feat".into());
    m
}

fn config() -> Value {
    json!({
        "kind": "ssf-pool", "format_version": 1,
        "sites": [{"node": "feat", "gamma": "gamma", "beta": "beta"}],
        "pool": {"keys": "keys", "query": "q", "top_k": 2},
        "head": {"node": "head", "weight": "hw", "bias": "hb"}
    })
}

fn tensors() -> Vec<RawTensor> {
    vec![
        f32_tensor("keys", &[4, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.5]),
        f32_tensor("gamma", &[4, 3], &[1.0; 12]),
        f32_tensor("beta", &[4, 3], &[0.0; 12]),
        f32_tensor("hw", &[4, 2, 3], &[0.5; 24]),
        f32_tensor("hb", &[4, 2], &[0.0; 8]),
    ]
}

/// `config` with `patch` applied at a JSON pointer (`None` removes the entry).
fn patched(pointer: &str, value: Option<Value>) -> Value {
    let mut c = config();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let obj = c.pointer_mut(parent).unwrap().as_object_mut().unwrap();
    match value {
        Some(v) => obj.insert(key.to_string(), v),
        None => obj.remove(key),
    };
    c
}

fn load_with(
    config: &Value,
    tensors: &[RawTensor],
) -> Result<graft_plugin_ssf_pool::SsfPoolAdapter, graft_plugin_abi::PluginError> {
    load(&model(), &file_bytes(Some(&config.to_string()), tensors), "")
}

fn replace(name: &str, t: RawTensor) -> Vec<RawTensor> {
    tensors().into_iter().map(|x| if x.0 == name { t.clone() } else { x }).collect()
}

#[test]
fn the_baseline_loads() {
    let a = load_with(&config(), &tensors()).unwrap();
    assert_eq!(a.targets().len(), 3);
}

#[test]
fn damaged_files_never_panic() {
    let good = file_bytes(Some(&config().to_string()), &tensors());
    let m = model();
    // Every truncation.
    for n in 0..good.len() {
        let e = load(&m, &good[..n], "").unwrap_err();
        assert_eq!(e.code, ErrorCode::TENSOR, "truncated at {n}: {e}");
        assert_eq!(e.field.as_str(), "<memory:test>");
    }
    // Every single-byte corruption: any outcome but a panic.
    for i in 0..good.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] ^= flip;
            let _ = load(&m, &bad, "");
        }
    }
    // Garbage.
    let mut s = 12345u32;
    for len in [0usize, 1, 7, 8, 9, 64, 1000] {
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                s = s.wrapping_mul(1103515245).wrapping_add(12345);
                (s >> 16) as u8
            })
            .collect();
        assert_eq!(load(&m, &junk, "").unwrap_err().code, ErrorCode::TENSOR);
    }
    // A header that claims more than the file holds.
    let mut huge = good.clone();
    huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_eq!(load(&m, &huge, "").unwrap_err().code, ErrorCode::TENSOR);
}

#[test]
fn bad_config_text() {
    let m = model();
    for text in ["{", "[]", "null", "\"ssf-pool\"", r#"{"kind":"ssf-pool","kind":"ssf-pool"}"#] {
        let bytes = file_bytes(Some(text), &tensors());
        assert_err(load(&m, &bytes, ""), ErrorCode::CONFIG, "graft.adapter");
    }
    // No metadata at all, and no option.
    assert_err(load(&m, &file_bytes(None, &tensors()), ""), ErrorCode::CONFIG, "graft.adapter");
    // Options: not JSON, not an object, unknown option.
    let bytes = file_bytes(Some(&config().to_string()), &tensors());
    assert_err(load(&m, &bytes, "{"), ErrorCode::CONFIG, "options");
    assert_err(load(&m, &bytes, "[1]"), ErrorCode::CONFIG, "options");
    assert_err(load(&m, &bytes, r#"{"scale": 2}"#), ErrorCode::CONFIG, "options.scale");
    // The option's config takes precedence over the file's.
    let opt = json!({"config": patched("/pool/top_k", Some(json!(1)))}).to_string();
    let a = load(&m, &bytes, &opt).unwrap();
    assert_eq!(a.pool_shape(), Some((4, 1)));
    let opt = json!({"config": patched("/pool/top_k", Some(json!(9)))}).to_string();
    assert_err(load(&m, &bytes, &opt), ErrorCode::CONFIG, "pool.top_k");
}

#[test]
fn bad_config_values() {
    let cases: Vec<(Value, ErrorCode, &str)> = vec![
        (patched("/kind", Some(json!("lora"))), ErrorCode::CONFIG, "kind"),
        (patched("/kind", None), ErrorCode::CONFIG, "kind"),
        (patched("/format_version", Some(json!(2))), ErrorCode::UNSUPPORTED, "format_version"),
        (patched("/format_version", None), ErrorCode::CONFIG, "format_version"),
        (patched("/sits", Some(json!([]))), ErrorCode::CONFIG, "sits"),
        (patched("/sites", Some(json!([]))), ErrorCode::CONFIG, "sites"),
        (patched("/sites/0/shift", Some(json!("beta"))), ErrorCode::CONFIG, "sites[0].shift"),
        (patched("/sites/0/gamma", Some(json!(3))), ErrorCode::CONFIG, "sites[0].gamma"),
        (patched("/pool/top_k", Some(json!(0))), ErrorCode::CONFIG, "pool.top_k"),
        (patched("/pool/top_k", Some(json!(5))), ErrorCode::CONFIG, "pool.top_k"),
        (patched("/pool/top_k", Some(json!(1.5))), ErrorCode::CONFIG, "pool.top_k"),
        (patched("/pool/topk", Some(json!(2))), ErrorCode::CONFIG, "pool.topk"),
        (patched("/pool/query_eps", Some(json!(0.0))), ErrorCode::CONFIG, "pool.query_eps"),
        (patched("/pool/query_eps", Some(json!("tiny"))), ErrorCode::CONFIG, "pool.query_eps"),
        (patched("/pool/base_query", Some(json!("yes"))), ErrorCode::CONFIG, "pool.base_query"),
        (patched("/head/activation", Some(json!("relu"))), ErrorCode::CONFIG, "head.activation"),
        (patched("/pool", None), ErrorCode::CONFIG, "head"),
    ];
    for (c, code, field) in cases {
        assert_err(load_with(&c, &tensors()), code, field);
    }
}

#[test]
fn bad_nodes() {
    let unknown = |ptr: &str| patched(ptr, Some(json!("nope")));
    let e = assert_err(load_with(&unknown("/sites/0/node"), &tensors()), ErrorCode::UNKNOWN_MODULE, "sites[0].node");
    assert!(e.message.contains("nope"), "{e}");
    assert_err(load_with(&unknown("/pool/query"), &tensors()), ErrorCode::UNKNOWN_MODULE, "pool.query");
    assert_err(load_with(&unknown("/head/node"), &tensors()), ErrorCode::UNKNOWN_MODULE, "head.node");
    // A site at a graph input; a head at a non-linear node or at the query node.
    assert_err(
        load_with(&patched("/sites/0/node", Some(json!("q"))), &tensors()),
        ErrorCode::UNSUPPORTED,
        "sites[0].node",
    );
    assert_err(load_with(&patched("/head/node", Some(json!("act"))), &tensors()), ErrorCode::UNSUPPORTED, "head.node");
    let mut m = model();
    m.nodes[0] = FakeNode::linear("q", 2, 3, vec![0.0; 6], None);
    let c = patched("/head/node", Some(json!("q")));
    let r = load(&m, &file_bytes(Some(&c.to_string()), &tensors()), "");
    assert_err(r, ErrorCode::CONFIG, "head.node");
    // Two paths naming one node.
    let c = patched(
        "/sites",
        Some(json!([
            {"node": "feat", "gamma": "gamma", "beta": "beta"},
            {"node": "feat_alias", "gamma": "gamma", "beta": "beta"}
        ])),
    );
    assert_err(load_with(&c, &tensors()), ErrorCode::CONFIG, "sites[1].node");
}

#[test]
fn bad_tensors() {
    // Missing, unreferenced, wrong dtype.
    let without = |name: &str| tensors().into_iter().filter(|t| t.0 != name).collect::<Vec<_>>();
    assert_err(load_with(&config(), &without("beta")), ErrorCode::TENSOR, "beta");
    assert_err(load_with(&config(), &without("keys")), ErrorCode::TENSOR, "keys");
    assert_err(load_with(&config(), &without("hb")), ErrorCode::TENSOR, "hb");
    let mut extra = tensors();
    extra.push(f32_tensor("gamma_2", &[4, 3], &[1.0; 12]));
    assert_err(load_with(&config(), &extra), ErrorCode::TENSOR, "gamma_2");
    let f16 = ("gamma".to_string(), Dtype::F16, vec![4, 3], vec![0u8; 24]);
    let e = assert_err(load_with(&config(), &replace("gamma", f16)), ErrorCode::TENSOR, "gamma");
    assert!(e.message.contains("F16"), "{e}");
    let i64s = ("keys".to_string(), Dtype::I64, vec![4, 2], vec![0u8; 64]);
    assert_err(load_with(&config(), &replace("keys", i64s)), ErrorCode::TENSOR, "keys");

    // Wrong shapes.
    let shapes: Vec<(&str, RawTensor)> = vec![
        ("gamma", f32_tensor("gamma", &[4, 4], &[1.0; 16])),
        ("gamma", f32_tensor("gamma", &[3, 3], &[1.0; 9])),
        ("gamma", f32_tensor("gamma", &[12], &[1.0; 12])),
        ("beta", f32_tensor("beta", &[1, 4, 3], &[0.0; 12])),
        ("keys", f32_tensor("keys", &[4, 3], &[1.0; 12])),
        ("keys", f32_tensor("keys", &[8], &[1.0; 8])),
        ("hw", f32_tensor("hw", &[4, 3, 2], &[0.5; 24])),
        ("hw", f32_tensor("hw", &[4, 6], &[0.5; 24])),
        ("hb", f32_tensor("hb", &[4, 3], &[0.0; 12])),
    ];
    for (name, t) in shapes {
        assert_err(load_with(&config(), &replace(name, t)), ErrorCode::SHAPE, name);
    }
    // An empty pool.
    let c = patched("/pool/top_k", Some(json!(1)));
    let empty: Vec<RawTensor> = vec![
        f32_tensor("keys", &[0, 2], &[]),
        f32_tensor("gamma", &[0, 3], &[]),
        f32_tensor("beta", &[0, 3], &[]),
        f32_tensor("hw", &[0, 2, 3], &[]),
        f32_tensor("hb", &[0, 2], &[]),
    ];
    assert_err(load_with(&c, &empty), ErrorCode::SHAPE, "keys");
    // A static site must not carry a pool axis.
    let mut c = config();
    c.as_object_mut().unwrap().remove("pool");
    c.as_object_mut().unwrap().remove("head");
    let t = vec![f32_tensor("gamma", &[4, 3], &[1.0; 12]), f32_tensor("beta", &[4, 3], &[0.0; 12])];
    assert_err(load_with(&c, &t), ErrorCode::SHAPE, "gamma");

    // Non-finite values.
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut g = [1.0f32; 12];
        g[7] = bad;
        let e = assert_err(
            load_with(&config(), &replace("gamma", f32_tensor("gamma", &[4, 3], &g))),
            ErrorCode::NOT_FINITE,
            "gamma",
        );
        assert!(e.message.contains("index 7"), "{e}");
        let mut k = [1.0f32; 8];
        k[0] = bad;
        assert_err(
            load_with(&config(), &replace("keys", f32_tensor("keys", &[4, 2], &k))),
            ErrorCode::NOT_FINITE,
            "keys",
        );
    }
}

#[test]
fn bad_files_through_load_file() {
    let dir = TempDir::new("files");
    let m = model();
    let missing = dir.file("missing.safetensors");
    assert_err(load_path(&m, &missing, ""), ErrorCode::IO, &missing);
    assert_err(load_path(&m, dir.path().to_str().unwrap(), ""), ErrorCode::IO, dir.path().to_str().unwrap());
    let junk = dir.file("junk.safetensors");
    std::fs::write(&junk, b"definitely not safetensors").unwrap();
    assert_err(load_path(&m, &junk, ""), ErrorCode::TENSOR, &junk);
    // Through the ABI too.
    let req = LoadRequest { id: RStr::from_str("x"), source: RStr::from_str(&junk), options: RStr::from_str("") };
    let e = (graft_plugin_ssf_pool::module().load())(req, m.view()).into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::TENSOR);
}

#[test]
fn bad_calls() {
    let a = load_with(&config(), &tensors()).unwrap();
    let sf = a.state_floats();
    assert_eq!(sf, 3 + 3 + 2);
    let q = [2.0f32, 1.0, 0.0, 1.0];
    let mut state = vec![0f32; 2 * sf];

    // Wrong target index or hook kind.
    assert_err(tap(&a, 9, &q, 2, &mut state), ErrorCode::BAD_CALL, "target");
    assert_err(tap(&a, 1, &q, 2, &mut state), ErrorCode::BAD_CALL, "target");
    let mut y = [1.0f32; 6];
    assert_err(post(&a, 0, &mut y, 3, &state, 1.0), ErrorCode::BAD_CALL, "target");
    assert_err(post(&a, 3, &mut y, 3, &state, 1.0), ErrorCode::BAD_CALL, "target");
    let mut out = [0f32; 4];
    assert_err(delta(&a, 1, &y, 3, &mut out, 2, &state, 1.0), ErrorCode::BAD_CALL, "target");
    assert_eq!(a.scratch_floats(9, 4, kernels()), 0);

    // Wrong widths.
    assert_err(tap(&a, 0, &[1.0; 6], 3, &mut state[..2 * sf]), ErrorCode::BAD_CALL, "q");
    assert_err(post(&a, 1, &mut [1.0; 4], 2, &state, 1.0), ErrorCode::BAD_CALL, "feat");

    // Short scratch and state.
    let mut short = vec![0f32; a.scratch_floats(0, 2, kernels()) - 1];
    assert_err(tap_with(&a, 0, &q, 2, &mut state, sf, &mut short), ErrorCode::BAD_CALL, "q");
    let mut scratch = scratch_for(&a, 0, 2);
    let mut short_state = vec![0f32; 2 * (sf - 1)];
    assert_err(tap_with(&a, 0, &q, 2, &mut short_state, sf - 1, &mut scratch), ErrorCode::BAD_CALL, "q");
    assert_err(tap_with(&a, 0, &q, 2, &mut state, 0, &mut scratch), ErrorCode::BAD_CALL, "q");
    assert_err(post_with(&a, 1, &mut y, 3, &short_state, sf - 1, 1.0), ErrorCode::BAD_CALL, "feat");
    assert_err(post_with(&a, 1, &mut y, 3, &[], 0, 1.0), ErrorCode::BAD_CALL, "feat");

    // The head: short scratch, a state the tap never wrote sensibly.
    tap(&a, 0, &q, 2, &mut state).unwrap();
    let h = [1.0f32; 6];
    let need = a.scratch_floats(2, 2, kernels());
    let mut short = vec![0f32; need - 1];
    assert_err(delta_with(&a, 2, &h, 3, &mut out, 2, &state, 1.0, &mut short), ErrorCode::BAD_CALL, "head");
    assert_err(delta(&a, 2, &h[..4], 2, &mut out, 2, &state, 1.0), ErrorCode::BAD_CALL, "head");
    for garbage in [4.0f32, -1.0, 1.5, f32::NAN, 1e30] {
        let mut bad = state.clone();
        bad[sf - 1] = garbage;
        let e = assert_err(delta(&a, 2, &h, 3, &mut out, 2, &bad, 1.0), ErrorCode::BAD_CALL, "head");
        assert!(e.message.contains("row 0"), "{e}");
    }
    // The valid state works, and zero rows are a no-op.
    delta(&a, 2, &h, 3, &mut out, 2, &state, 1.0).unwrap();
    tap(&a, 0, &[], 2, &mut []).unwrap();
    post(&a, 1, &mut [], 3, &[], 1.0).unwrap();
}
