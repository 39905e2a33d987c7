//! Hostile files, configurations and calls: every refusal is a typed error naming the
//! field, tensor or file, and nothing panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::abi_stable::std_types::RSliceMut;
use graft_plugin_abi::{Adapter, ErrorCode, MatView, MatViewMut, NodeOp, Post, Tap};
use graft_plugin_routing::{Config, Mode, OutputIs, RoutingAdapter, load_bytes, save_with_metadata};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::{Value, json};

const D: usize = 4;

fn good() -> Synth {
    Synth::random(Config::new("emb", "head", 3, vec![D, 5, 1]), 42)
}

fn model() -> FakeModel {
    routing_model(D, 1)
}

fn load_synth(s: &Synth) -> Result<RoutingAdapter, graft_plugin_abi::PluginError> {
    load(&model(), &s.write("s"), "")
}

/// Writes `s`'s tensors with raw metadata text.
fn with_metadata(s: &Synth, metadata: Option<&str>) -> TempFile {
    let f = TempFile::new("meta");
    let views: Vec<(&str, Vec<usize>, &[f32])> =
        s.tensors.iter().map(|(n, sh, v)| (n.as_str(), sh.clone(), v.as_slice())).collect();
    save_with_metadata(f.path(), metadata, &views).unwrap();
    f
}

/// The config JSON of `s` with `patch` applied (null removes a key).
fn patched(s: &Synth, patch: Value) -> String {
    let mut v: Value = serde_json::from_str(&s.config.to_json()).unwrap();
    for (k, p) in patch.as_object().unwrap() {
        if p.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = p.clone();
        }
    }
    v.to_string()
}

fn load_patched(patch: Value) -> Result<RoutingAdapter, graft_plugin_abi::PluginError> {
    let s = good();
    load(&model(), &with_metadata(&s, Some(&patched(&s, patch))), "")
}

#[test]
fn the_good_file_loads() {
    let a = load_synth(&good()).unwrap();
    assert_eq!(a.config().clusters, 3);
}

#[test]
fn unreadable_and_malformed_files() {
    let m = model();
    let missing = TempFile::new("missing");
    assert_err(load(&m, &missing, ""), ErrorCode::IO, missing.as_str());

    let f = good().write("trunc");
    let bytes = std::fs::read(f.path()).unwrap();
    // Every truncation is refused (header, tensor data, or the length prefix itself).
    for cut in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        let e = load_bytes("cut", &bytes[..cut], "", &m.view()).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::TENSOR, "cut"), "cut at {cut}: {e}");
    }
    let e = load_bytes("junk", b"not a safetensors file at all", "", &m.view()).unwrap_err();
    assert_eq!(e.code, ErrorCode::TENSOR);
    // Trailing garbage is refused too (the header must account for every byte).
    let mut long = bytes.clone();
    long.extend_from_slice(&[0; 8]);
    assert_eq!(load_bytes("long", &long, "", &m.view()).unwrap_err().code, ErrorCode::TENSOR);
}

#[test]
fn corrupted_bytes_never_panic() {
    let m = model();
    let bytes = std::fs::read(good().write("fuzz").path()).unwrap();
    let mut rng = Rng(0xf00d);
    for _ in 0..2000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.next_u64() % 4 {
            let i = (rng.next_u64() % b.len() as u64) as usize;
            b[i] = rng.next_u64() as u8;
        }
        // Any outcome but a panic is fine; a loaded adapter must also run.
        if let Ok(a) = load_bytes("fuzz", &b, "", &m.view()) {
            let x = [0.5f32; D * 3];
            let _ = run(&a, &x, D, &[0.0; 3], 1.0, &[2, 1]);
        }
    }
}

#[test]
fn configuration_errors() {
    let s = good();
    let m = model();
    // No metadata and no config option; bad JSON; not an object.
    assert_err(load(&m, &with_metadata(&s, None), ""), ErrorCode::CONFIG, "graft.adapter");
    assert_err(load(&m, &with_metadata(&s, Some("{\"kind\":")), ""), ErrorCode::CONFIG, "graft.adapter");
    assert_err(load(&m, &with_metadata(&s, Some("[1]")), ""), ErrorCode::CONFIG, "graft.adapter");

    for (patch, code, field) in [
        (json!({"use_bais": true}), ErrorCode::CONFIG, "use_bais"),
        (json!({"activation": "gelu"}), ErrorCode::UNSUPPORTED, "activation"),
        (json!({"activation": "Tanh"}), ErrorCode::UNSUPPORTED, "activation"),
        (json!({"mode": "mix"}), ErrorCode::CONFIG, "mode"),
        (json!({"output_is": 1}), ErrorCode::CONFIG, "output_is"),
        (json!({"kind": "lora"}), ErrorCode::CONFIG, "kind"),
        (json!({"kind": null}), ErrorCode::CONFIG, "kind"),
        (json!({"format_version": 2}), ErrorCode::UNSUPPORTED, "format_version"),
        (json!({"format_version": null}), ErrorCode::CONFIG, "format_version"),
        (json!({"clusters": 0}), ErrorCode::CONFIG, "clusters"),
        (json!({"clusters": -3}), ErrorCode::CONFIG, "clusters"),
        (json!({"dims": [4]}), ErrorCode::CONFIG, "dims"),
        (json!({"dims": [4, 0, 1]}), ErrorCode::CONFIG, "dims"),
        (json!({"dims": null}), ErrorCode::CONFIG, "dims"),
        (json!({"input_node": ""}), ErrorCode::CONFIG, "input_node"),
        (json!({"output_node": 5}), ErrorCode::CONFIG, "output_node"),
        (json!({"use_bias": 1}), ErrorCode::CONFIG, "use_bias"),
    ] {
        let e = load_patched(patch.clone()).err();
        assert_eq!(e.as_ref().map(|e| (e.code, e.field.as_str())), Some((code, field)), "{patch}: {e:?}");
    }
}

#[test]
fn load_options() {
    let s = good();
    let m = model();
    // The option's config is used for a file without metadata, and wins over the file's.
    let mut soft = s.config.clone();
    soft.mode = Mode::Soft;
    soft.output_is = OutputIs::Prob;
    let opt = format!(r#"{{"config":{}}}"#, soft.to_json());
    let a = load(&m, &with_metadata(&s, None), &opt).unwrap();
    assert_eq!(a.config(), &soft);
    let a = load(&m, &s.write("opt"), &opt).unwrap();
    assert_eq!(a.config().mode, Mode::Soft);
    // Bad options.
    assert_err(load(&m, &s.write("o1"), "{"), ErrorCode::CONFIG, "options");
    assert_err(load(&m, &s.write("o2"), "[]"), ErrorCode::CONFIG, "options");
    assert_err(load(&m, &s.write("o3"), r#"{"scaling":1}"#), ErrorCode::CONFIG, "scaling");
    assert_err(load(&m, &s.write("o4"), r#"{"config":{"kind":"routing"}}"#), ErrorCode::CONFIG, "format_version");
}

#[test]
fn tensor_errors() {
    // Wrong shapes.
    let mut s = good();
    s.tensors.iter_mut().find(|t| t.0 == "centers").unwrap().1 = vec![D, 3];
    assert_err(load_synth(&s), ErrorCode::SHAPE, "centers");
    let mut s = good();
    // The PyTorch layout (out, in) instead of (in, out).
    s.tensors.iter_mut().find(|t| t.0 == "shared.0.weight").unwrap().1 = vec![5, D];
    assert_err(load_synth(&s), ErrorCode::SHAPE, "shared.0.weight");
    let mut s = good();
    let t = s.tensors.iter_mut().find(|t| t.0 == "cluster.2.1.weight").unwrap();
    t.1 = vec![5];
    assert_err(load_synth(&s), ErrorCode::SHAPE, "cluster.2.1.weight");

    // Non-finite values.
    for (name, v) in
        [("cluster.1.0.weight", f32::NAN), ("centers", f32::INFINITY), ("shared.1.weight", f32::NEG_INFINITY)]
    {
        let mut s = good();
        let mut vals = s.get(name).to_vec();
        vals[2] = v;
        s.set(name, vals);
        let e = assert_err(load_synth(&s), ErrorCode::NOT_FINITE, name);
        assert!(e.message.contains("index 2"), "{e}");
    }
    // Finite factors whose product overflows.
    let mut s = good();
    s.set("shared.0.weight", vec![1e30; D * 5]);
    s.set("cluster.2.0.weight", vec![1e30; D * 5]);
    assert_err(load_synth(&s), ErrorCode::NOT_FINITE, "cluster.2.0.weight");

    // Missing and extra tensors.
    let mut s = good();
    s.remove("cluster.2.1.weight");
    assert_err(load_synth(&s), ErrorCode::TENSOR, "cluster.2.1.weight");
    let mut s = good();
    s.remove("centers");
    assert_err(load_synth(&s), ErrorCode::TENSOR, "centers");
    let mut s = good();
    s.tensors.push(("cluster.3.0.weight".into(), vec![D, 5], vec![0.0; D * 5]));
    assert_err(load_synth(&s), ErrorCode::TENSOR, "cluster.3.0.weight");
    let mut s = good();
    s.tensors.push(("shared.0.bias".into(), vec![5], vec![0.0; 5]));
    let e = assert_err(load_synth(&s), ErrorCode::TENSOR, "shared.0.bias");
    assert!(e.message.contains("use_bias"), "{e}");
    // use_bias without the biases.
    let mut s = good();
    s.config.use_bias = true;
    assert_err(load_synth(&s), ErrorCode::TENSOR, "shared.0.bias");

    // Another dtype.
    let s = good();
    let f = TempFile::new("f16");
    let meta = std::collections::HashMap::from([("graft.adapter".to_owned(), s.config.to_json())]);
    let data: Vec<Vec<u8>> = s
        .tensors
        .iter()
        .map(|(n, _, v)| {
            if n == "centers" {
                v.iter().flat_map(|_| [0u8, 0]).collect()
            } else {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
        })
        .collect();
    let views: Vec<(&str, TensorView<'_>)> = s
        .tensors
        .iter()
        .zip(&data)
        .map(|((n, sh, _), b)| {
            let dt = if n == "centers" { Dtype::F16 } else { Dtype::F32 };
            (n.as_str(), TensorView::new(dt, sh.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, Some(meta), f.path()).unwrap();
    assert_err(load(&model(), &f, ""), ErrorCode::TENSOR, "centers");

    // `save` refuses values that do not fill the shape.
    let e = graft_plugin_routing::save(TempFile::new("bad").path(), &s.config, &[("centers", vec![2, 2], &[1.0][..])]);
    assert_err(e, ErrorCode::TENSOR, "centers");
}

#[test]
fn model_errors() {
    let s = good();
    let f = s.write("model");
    // Node widths that contradict dims.
    assert_err(load(&routing_model(D + 1, 1), &f, ""), ErrorCode::SHAPE, "dims");
    assert_err(load(&routing_model(D, 2), &f, ""), ErrorCode::SHAPE, "dims");
    // Unknown nodes: the host's error passes through.
    let mut s2 = s.clone();
    s2.config.output_node = "nope".into();
    assert_err(load_synth(&s2), ErrorCode::UNKNOWN_MODULE, "nope");
    // The output cannot be a graph input; the input may be any node.
    let mut s3 = s.clone();
    s3.config.output_node = "emb".into();
    s3.config.dims = vec![D, 5, D];
    let s3 = Synth::random(s3.config, 1);
    assert_err(load(&routing_model(D, 1), &s3.write("in-out"), ""), ErrorCode::UNSUPPORTED, "output_node");
    let mut m = model();
    m.nodes[0].op = NodeOp::Other;
    load(&m, &f, "").unwrap();
}

#[test]
fn bad_calls() {
    let a = load_synth(&good()).unwrap();
    let k = kernels();
    let x = [0.25f32; 2 * D];
    let mut state = [0f32; 4];
    let need = a.scratch_floats(0, 2, k);
    let mut scratch = vec![0f32; need];
    let tap = |target: u32, x: MatView<'_>, state: MatViewMut<'_>, scratch: &mut [f32]| {
        a.tap(Tap { target, x, state, scale: 1.0, kernels: k, scratch: RSliceMut::from_mut_slice(scratch) })
            .into_result()
    };
    let xv = || MatView::new(&x, 2, D, D).unwrap();
    // The wrong target, a short scratch, the wrong widths.
    assert_err(
        tap(1, xv(), MatViewMut::new(&mut state, 2, 2, 2).unwrap(), &mut scratch),
        ErrorCode::BAD_CALL,
        "target",
    );
    assert_err(
        tap(0, xv(), MatViewMut::new(&mut state, 2, 2, 2).unwrap(), &mut scratch[..need - 1]),
        ErrorCode::BAD_CALL,
        "emb",
    );
    assert_err(
        tap(0, MatView::new(&x, 2, D - 1, D).unwrap(), MatViewMut::new(&mut state, 2, 2, 2).unwrap(), &mut scratch),
        ErrorCode::BAD_CALL,
        "emb",
    );
    assert_err(tap(0, xv(), MatViewMut::new(&mut state, 2, 1, 2).unwrap(), &mut scratch), ErrorCode::BAD_CALL, "emb");
    assert_err(tap(0, xv(), MatViewMut::new(&mut state, 1, 2, 2).unwrap(), &mut scratch), ErrorCode::BAD_CALL, "emb");
    // Zero rows is a no-op with no scratch.
    tap(0, MatView::new(&x, 0, D, D).unwrap(), MatViewMut::new(&mut state, 0, 2, 2).unwrap(), &mut []).unwrap();
    tap(0, xv(), MatViewMut::new(&mut state, 2, 2, 2).unwrap(), &mut scratch).unwrap();

    let mut y = [0f32; 2];
    let mut tickets = [0u64; 2];
    let mut post = |target: u32, cols: usize, scale: f32| {
        a.post(Post {
            target,
            y: MatViewMut::new(&mut y, 2 / cols, cols, cols).unwrap(),
            state: MatView::new(&state, 2, 2, 2).unwrap(),
            tickets: RSliceMut::from_mut_slice(&mut tickets),
            scale,
            kernels: k,
            scratch: RSliceMut::from_mut_slice(&mut []),
        })
        .into_result()
    };
    assert_err(post(0, 1, 1.0), ErrorCode::BAD_CALL, "target");
    assert_err(post(1, 2, 1.0), ErrorCode::BAD_CALL, "head");
    assert_err(post(1, 1, f32::NAN), ErrorCode::BAD_CALL, "head");
    assert_err(post(1, 1, f32::INFINITY), ErrorCode::BAD_CALL, "head");
    post(1, 1, 1.0).unwrap();
    assert_eq!(y, [state[0], state[2]]);
    // Unknown targets ask for no scratch.
    assert_eq!(a.scratch_floats(7, 100, k), 0);
}

#[test]
fn nan_inputs_propagate() {
    let s = good();
    let a = load_synth(&s).unwrap();
    let mut x = [0.5f32; 2 * D];
    x[1] = f32::NAN;
    let r = run(&a, &x, D, &[0.0, 0.0], 1.0, &[2]).unwrap();
    assert!(r.y[0].is_nan(), "{r:?}");
    assert_eq!(r.state[1], 0.0, "an all-NaN score row goes to cluster 0");
    let (want, _) = s.reference(&x[D..]);
    assert_close(&r.y[1..], &want, 1e-5);
}
