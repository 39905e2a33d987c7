//! The forward and merge against hand computations on a 3→2 layer
//! (`W = [[1, 0, 2], [0, 1, −1]]`, `b = [0.5, −0.5]`, `x = [1, 2, 3]`, so `x·Wᵀ + b = [7.5, −1.5]`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::abi_stable::std_types::{ROption, RSliceMut, RStr};
use graft_plugin_abi::{ABI_VERSION, Adapter, ErrorCode, HookKind, LinearDelta, LoadRequest, MatView, MatViewMut};
use graft_plugin_ia3::{Ia3Adapter, Scaling};

fn example() -> (FakeModel, Ia3Adapter) {
    let model = example_model();
    let a = load(&model, &config(serde_json::json!({})), &example_tensors(), "").unwrap();
    (model, a)
}

#[test]
fn targets_and_info() {
    let (model, a) = example();
    let modules: Vec<_> = a.modules().collect();
    assert_eq!(modules, [("fc", Scaling::Output), ("ff", Scaling::Feedforward)]);
    let t = a.targets();
    assert_eq!(t.len(), 2);
    for (t, name) in t.iter().zip(["fc", "ff"]) {
        assert_eq!(model.nodes[t.node as usize].name, name);
        assert_eq!((t.hook, t.flags), (HookKind::LinearDelta, 0));
    }
    let info = a.info();
    assert_eq!(info.kind.as_str(), "ia3");
    let v: Vec<_> =
        info.targets.iter().map(|t| (t.module.as_str(), t.node.as_str(), t.variant.as_str(), t.bytes)).collect();
    assert_eq!(v, [("fc", "node_fc", "ia3-output", 8), ("ff", "node_ff", "ia3-feedforward", 12)]);
    // Vectors (2 + 3 floats) plus the 2×3 feedforward cache.
    assert_eq!(info.owned_bytes, (2 + 3 + 6) * 4);
    let notes: Vec<&str> = info.notes.iter().map(|n| n.as_str()).collect();
    assert!(notes.contains(&"peft_version=0.21.2"), "{notes:?}");
    assert!(notes.contains(&"feedforward_cache_bytes=24"), "{notes:?}");
    assert_eq!(a.vector(0), Some(&EX_L_OUT[..]));
    assert_eq!(a.vector(1), Some(&EX_L_IN[..]));
}

#[test]
fn output_scaling_scales_the_whole_output_bias_included() {
    let (model, a) = example();
    let fc = model.node("fc");
    assert_eq!(fc.forward(&EX_X), [7.5, -1.5]);
    // (x·Wᵀ + b) ⊙ l = [7.5·2, −1.5·0.5]
    assert_eq!(forward(&a, 0, fc, &EX_X, 1.0), [15.0, -0.75]);
    // l' = 1 + m(l − 1): m = 0.5 → [1.5, 0.75]; m = −1 → [0, 1.5]; m = 0 → identity.
    assert_eq!(forward(&a, 0, fc, &EX_X, 0.5), [11.25, -1.125]);
    assert_eq!(forward(&a, 0, fc, &EX_X, -1.0), [0.0, -2.25]);
    assert_eq!(forward(&a, 0, fc, &EX_X, 0.0), [7.5, -1.5]);
}

#[test]
fn feedforward_scales_the_input_not_the_bias() {
    let (model, a) = example();
    let ff = model.node("ff");
    // x ⊙ l = [2, 0, 1.5] → W·(x ⊙ l) + b = [2 + 3 + 0.5, −1.5 − 0.5]
    assert_eq!(forward(&a, 1, ff, &EX_X, 1.0), [5.5, -2.0]);
    // m = 0.5: l' = [1.5, 0.5, 0.75], x ⊙ l' = [1.5, 1, 2.25] → [1.5 + 4.5 + 0.5, 1 − 2.25 − 0.5]
    assert_eq!(forward(&a, 1, ff, &EX_X, 0.5), [6.5, -1.75]);
    // m = 2: l' = [3, −1, 0], x ⊙ l' = [3, −2, 0] → [3.5, −2.5]
    assert_eq!(forward(&a, 1, ff, &EX_X, 2.0), [3.5, -2.5]);
    assert_eq!(forward(&a, 1, ff, &EX_X, 0.0), [7.5, -1.5]);
}

#[test]
fn rows_are_independent() {
    let (model, a) = example();
    // Row 2: x = [0, −1, 4], base [8.5, −5.5].
    let x = [1.0, 2.0, 3.0, 0.0, -1.0, 4.0];
    assert_eq!(forward(&a, 0, model.node("fc"), &x, 1.0), [15.0, -0.75, 17.0, -2.75]);
    // x ⊙ l = [0, 0, 2] → [4.5, −2.5]
    assert_eq!(forward(&a, 1, model.node("ff"), &x, 1.0), [5.5, -2.0, 4.5, -2.5]);
}

#[test]
fn strided_views_touch_only_their_columns() {
    let (_, a) = example();
    // x rows 5 apart, y rows 4 apart; the padding must stay untouched.
    let x = [1.0, 2.0, 3.0, 99.0, 99.0, 0.0, -1.0, 4.0, 99.0, 99.0];
    for (target, want) in [(0u32, [15.0, -0.75, 17.0, -2.75]), (1, [5.5, -2.0, 4.5, -2.5])] {
        let mut y = [7.5, -1.5, 42.0, 42.0, 8.5, -5.5, 42.0, 42.0];
        let mut scratch = vec![f32::NAN; a.scratch_floats(target, 2, kernels())];
        let call = LinearDelta {
            target,
            x: MatView::new(&x, 2, 3, 5).unwrap(),
            y: MatViewMut::new(&mut y, 2, 2, 4).unwrap(),
            base_bias: ROption::RNone,
            scale: 1.0,
            state: MatView::empty(2),
            kernels: kernels(),
            scratch: RSliceMut::from_mut_slice(&mut scratch),
        };
        a.linear_delta(call).into_result().unwrap();
        assert_eq!([y[0], y[1], y[4], y[5]], want, "target {target}");
        assert_eq!([y[2], y[3], y[6], y[7]], [42.0; 4], "target {target}");
    }
}

#[test]
fn output_scaling_after_another_adapter_scales_its_delta_too() {
    // PEFT order: IA3 multiplies whatever the wrapped layer returns.
    let (_, a) = example();
    let mut y = [7.5 + 1.0, -1.5 + 1.0];
    run(&a, 0, &EX_X, 3, &mut y, 2, 1.0).unwrap();
    assert_eq!(y, [17.0, -0.25]);
}

#[test]
fn merge_matches_peft_and_the_unmerged_forward() {
    let (model, a) = example();
    for (target, name, want_w, want_b) in [
        (0u32, "fc", [2.0, 0.0, 4.0, 0.0, 0.5, -0.5], [1.0, -0.25]),
        (1, "ff", [2.0, 0.0, 1.0, 0.0, 0.0, -0.5], [0.5, -0.5]),
    ] {
        let layer = model.node(name);
        let mut w = layer.weight.clone();
        let mut b = layer.bias.clone().unwrap();
        a.merge(target, MatViewMut::new(&mut w, 2, 3, 3).unwrap(), RSliceMut::from_mut_slice(&mut b))
            .into_result()
            .unwrap();
        assert_eq!((w.as_slice(), b.as_slice()), (&want_w[..], &want_b[..]), "{name}");
        let merged = FakeNode::linear(name, 2, 3, w, Some(b));
        assert_eq!(merged.forward(&EX_X), forward(&a, target, layer, &EX_X, 1.0), "{name}");
    }
}

#[test]
fn bad_calls_are_refused_without_touching_y() {
    let (_, a) = example();
    let mut y = [1.0f32, 2.0];
    assert_err(run(&a, 7, &EX_X, 3, &mut y, 2, 1.0), ErrorCode::BAD_CALL, "target");
    assert_err(run(&a, 0, &EX_X, 3, &mut y, 2, f32::NAN), ErrorCode::BAD_CALL, "fc");
    assert_err(run(&a, 1, &EX_X, 3, &mut y, 2, f32::INFINITY), ErrorCode::BAD_CALL, "ff");
    assert_err(run(&a, 0, &[1.0, 2.0], 2, &mut y, 2, 1.0), ErrorCode::BAD_CALL, "fc");
    let mut y3 = [1.0f32, 2.0, 3.0];
    assert_err(run(&a, 0, &EX_X, 3, &mut y3, 3, 1.0), ErrorCode::BAD_CALL, "fc");
    assert_eq!(y, [1.0, 2.0]);
    // Too little scratch (the output case needs `out` floats, the feedforward case the kernel's share).
    for target in [0u32, 1] {
        let mut short = vec![0f32; a.scratch_floats(target, 1, kernels()) - 1];
        let call = LinearDelta {
            target,
            x: MatView::new(&EX_X, 1, 3, 3).unwrap(),
            y: MatViewMut::new(&mut y, 1, 2, 2).unwrap(),
            base_bias: ROption::RNone,
            scale: 0.5,
            state: MatView::empty(1),
            kernels: kernels(),
            scratch: RSliceMut::from_mut_slice(&mut short),
        };
        let e = a.linear_delta(call).into_result().unwrap_err();
        assert_eq!(e.code, ErrorCode::BAD_CALL, "{e}");
    }
    assert_eq!(y, [1.0, 2.0]);
    let mut w = vec![0f32; 6];
    let mut b = vec![0f32; 3];
    let e = a.merge(0, MatViewMut::new(&mut w, 2, 3, 3).unwrap(), RSliceMut::from_mut_slice(&mut b)).into_result();
    assert_err(e, ErrorCode::BAD_CALL, "fc");
}

#[test]
fn zero_rows_is_a_no_op() {
    let (_, a) = example();
    run(&a, 1, &[], 3, &mut [], 2, 1.0).unwrap();
}

#[test]
fn root_module_loads_a_directory_through_the_abi() {
    let m = graft_plugin_ia3::module();
    assert_eq!(m.abi_version(), ABI_VERSION);
    assert_eq!(m.kind()().as_str(), "ia3");
    let dir = TempDir::new("root");
    write_dir(dir.path(), &config(serde_json::json!({})), &example_tensors());
    let model = example_model();
    let source = dir.path().to_str().unwrap().to_owned();
    let req = LoadRequest { id: RStr::from_str("x"), source: RStr::from_str(&source), options: RStr::from_str("{}") };
    let boxed = m.load()(req, model.view()).into_result().unwrap();
    assert_eq!(boxed.targets().len(), 2);
    let mut y = model.node("fc").forward(&EX_X);
    let mut scratch = vec![0f32; boxed.scratch_floats(0, 1, kernels())];
    let call = LinearDelta {
        target: 0,
        x: MatView::new(&EX_X, 1, 3, 3).unwrap(),
        y: MatViewMut::new(&mut y, 1, 2, 2).unwrap(),
        base_bias: ROption::RNone,
        scale: 1.0,
        state: MatView::empty(1),
        kernels: kernels(),
        scratch: RSliceMut::from_mut_slice(&mut scratch),
    };
    boxed.linear_delta(call).into_result().unwrap();
    assert_eq!(y, [15.0, -0.75]);
    // Errors come back as values through the module too.
    let bad = LoadRequest {
        id: RStr::from_str("x"),
        source: RStr::from_str("/nonexistent/ia3"),
        options: RStr::from_str(""),
    };
    let e = m.load()(bad, model.view()).into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::IO);
}
