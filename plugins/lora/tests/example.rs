//! algorithms.md §1.7: the worked example, through a PEFT directory on disk and the test host.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::excessive_precision)] // spec numbers verbatim

mod common;

use common::*;
use graft_plugin_abi::abi_stable::std_types::{RSliceMut, RStr};
use graft_plugin_abi::{Adapter, ErrorCode, LoadRequest, MatViewMut};
use graft_plugin_lora::{LoraAdapter, load_dir};
use safetensors::Dtype;
use serde_json::json;

fn load_from_dir(model: &FakeModel, config_json: &str, tensors: &[RawTensor], options: &str) -> LoraAdapter {
    let dir = TempDir::new("ex");
    write_dir(dir.path(), config_json, tensors);
    let source = dir.path().to_str().unwrap().to_owned();
    let req =
        LoadRequest { id: RStr::from_str("ex"), source: RStr::from_str(&source), options: RStr::from_str(options) };
    load_dir(&req, &model.view()).unwrap()
}

fn example(patch: serde_json::Value, tensors: &[RawTensor], options: &str) -> (FakeModel, LoraAdapter) {
    let model = example_model();
    let adapter = load_from_dir(&model, &config(patch), tensors, options);
    (model, adapter)
}

#[test]
fn lora_rslora_and_scaling_override() {
    let (m, a) = example(json!({}), &example_tensors(), "");
    assert_close(&forward(&a, 0, m.node("fc"), &EX_X, 1.0), &[17.5, 8.5], 1e-5);
    assert_eq!(a.info().targets[0].scale, 2.0);
    assert_eq!(a.info().targets[0].variant.as_str(), "lora");

    let (m, a) = example(json!({"use_rslora": true}), &example_tensors(), "");
    assert_close(&forward(&a, 0, m.node("fc"), &EX_X, 1.0), &[21.642136, 12.642136], 1e-5);
    assert_eq!(a.info().targets[0].variant.as_str(), "rslora");

    // ALLoRA: the config extension, and the load option (which takes precedence).
    let (m, a) = example(json!({"scaling": 1.0}), &example_tensors(), "");
    assert_close(&forward(&a, 0, m.node("fc"), &EX_X, 1.0), &[12.5, 3.5], 1e-5);
    let (m, a) = example(json!({}), &example_tensors(), r#"{"scaling": 1}"#);
    assert_close(&forward(&a, 0, m.node("fc"), &EX_X, 1.0), &[12.5, 3.5], 1e-5);
    let (m, a) = example(json!({"scaling": 7.0}), &example_tensors(), r#"{"scaling": 1}"#);
    assert_close(&forward(&a, 0, m.node("fc"), &EX_X, 1.0), &[12.5, 3.5], 1e-5);
}

#[test]
fn multiplier_equals_scaled_alpha() {
    let (m, a) = example(json!({}), &example_tensors(), "");
    let (_, half_alpha) = example(json!({"lora_alpha": 2}), &example_tensors(), "");
    let x = [1.0, 2.0, 3.0, -0.5, 0.25, 4.0];
    assert_close(&forward(&a, 0, m.node("fc"), &x, 0.5), &forward(&half_alpha, 0, m.node("fc"), &x, 1.0), 1e-6);
    // Multiplier 0 leaves the base output untouched.
    assert_close(&forward(&a, 0, m.node("fc"), &x, 0.0), &m.node("fc").forward(&x), 0.0);
}

#[test]
fn merge_matches_the_example() {
    let (_, a) = example(json!({}), &example_tensors(), "");
    let mut w = vec![1.0, 0.0, 2.0, 0.0, 1.0, -1.0];
    let mut b = vec![0.5, -0.5];
    a.merge(0, MatViewMut::new(&mut w, 2, 3, 3).unwrap(), RSliceMut::from_mut_slice(&mut b)).into_result().unwrap();
    assert_close(&w, &[3.0, 4.0, 2.0, 4.0, 7.0, -3.0], 1e-6);
    assert_close(&b, &[0.5, -0.5], 0.0);
    // W'x + b equals the unmerged result.
    let merged = FakeNode::linear("fc", 2, 3, w, Some(b));
    assert_close(&merged.forward(&EX_X), &[17.5, 8.5], 1e-5);
}

#[test]
fn dora_forward_and_merge() {
    let (m, a) = example(json!({"use_dora": true}), &dora_tensors(), "");
    assert_eq!(a.info().targets[0].variant.as_str(), "dora");
    assert_close(&forward(&a, 0, m.node("fc"), &EX_X, 1.0), &[16.284104, 9.962287], 1e-5);

    let mut w = vec![1.0, 0.0, 2.0, 0.0, 1.0, -1.0];
    let mut b = vec![0.5, -0.5];
    a.merge(0, MatViewMut::new(&mut w, 2, 3, 3).unwrap(), RSliceMut::from_mut_slice(&mut b)).into_result().unwrap();
    assert_close(&w, &[2.785430, 3.713907, 1.856953, 4.649906, 8.137335, -3.487429], 1e-5);
    assert_close(&b, &[0.5, -0.5], 0.0);
    let merged = FakeNode::linear("fc", 2, 3, w, Some(b));
    assert_close(&merged.forward(&EX_X), &[16.284104, 9.962287], 1e-5);
}

/// DoRA reference computed from scratch at effective scale `c`.
fn dora_reference(layer: &FakeNode, x: &[f32], m: &[f64], c: f64) -> Vec<f32> {
    let (inf, out) = (layer.in_features, layer.out_features);
    let (a, b) = (EX_A.map(f64::from), EX_B.map(f64::from));
    let ba = |o: usize, i: usize| (0..2).map(|k| b[o * 2 + k] * a[k * inf + i]).sum::<f64>();
    let rows = x.len() / inf;
    let mut y = vec![0f32; rows * out];
    for o in 0..out {
        let n = (0..inf).map(|i| (f64::from(layer.weight[o * inf + i]) + c * ba(o, i)).powi(2)).sum::<f64>().sqrt();
        let f = m[o] / n;
        for r in 0..rows {
            let xr = &x[r * inf..(r + 1) * inf];
            let wx: f64 = (0..inf).map(|i| f64::from(layer.weight[o * inf + i]) * f64::from(xr[i])).sum();
            let dx: f64 = (0..inf).map(|i| ba(o, i) * f64::from(xr[i])).sum();
            let bias = f64::from(layer.bias.as_ref().unwrap()[o]);
            y[r * out + o] = (f * wx + bias + f * c * dx) as f32;
        }
    }
    y
}

#[test]
fn dora_multiplier_uses_the_exact_norm() {
    let (m, a) = example(json!({"use_dora": true}), &dora_tensors(), "");
    let layer = m.node("fc");
    let x = [1.0, 2.0, 3.0, -0.5, 0.25, 4.0];
    for mult in [1.0f32, 0.5, 0.0, 3.0, -1.0] {
        let got = forward(&a, 0, layer, &x, mult);
        assert_close(&got, &dora_reference(layer, &x, &[5.0, 10.0], 2.0 * f64::from(mult)), 2e-5);
    }
}

#[test]
fn dora_stacks_on_an_earlier_adapter() {
    // y already holds base + another adapter's delta: PEFT rescales all of y − b.
    let (m, a) = example(json!({"use_dora": true}), &dora_tensors(), "");
    let layer = m.node("fc");
    let mut y = layer.forward(&EX_X);
    y[0] += 1.0;
    y[1] -= 2.0;
    run(&a, 0, &EX_X, 3, &mut y, 2, layer.bias.as_deref(), 1.0).unwrap();
    let f = [0.928477f32, 1.162476];
    let want = [f[0] * (7.0 + 1.0) + 0.5 + f[0] * 10.0, f[1] * (-1.0 - 2.0) - 0.5 + f[1] * 10.0];
    assert_close(&y, &want, 1e-4);
}

#[test]
fn lora_bias_forward_and_merge() {
    let mut t = example_tensors();
    t.push(f32_tensor("base_model.model.fc.lora_B.bias", &[2], &[1.0, -3.0]));
    let (m, a) = example(json!({"lora_bias": true}), &t, "");
    assert_eq!(a.info().targets[0].variant.as_str(), "lora+bias");
    assert_close(&forward(&a, 0, m.node("fc"), &EX_X, 1.0), &[19.5, 2.5], 1e-5);
    assert_close(&forward(&a, 0, m.node("fc"), &EX_X, 0.5), &[13.5, 0.5], 1e-5);
    let mut w = vec![1.0, 0.0, 2.0, 0.0, 1.0, -1.0];
    let mut b = vec![0.5, -0.5];
    a.merge(0, MatViewMut::new(&mut w, 2, 3, 3).unwrap(), RSliceMut::from_mut_slice(&mut b)).into_result().unwrap();
    assert_close(&b, &[2.5, -6.5], 1e-6);
}

#[test]
fn half_precision_tensors_are_used_in_place() {
    // Every value of the example is exact in f16 and bf16.
    for (dtype, enc) in [
        (Dtype::F16, (|v: f32| half::f16::from_f32(v).to_bits()) as fn(f32) -> u16),
        (Dtype::BF16, |v: f32| half::bf16::from_f32(v).to_bits()),
    ] {
        let bytes = |v: &[f32]| v.iter().flat_map(|&x| enc(x).to_le_bytes()).collect::<Vec<u8>>();
        let t = vec![
            ("base_model.model.fc.lora_A.weight".to_string(), dtype, vec![2, 3], bytes(&EX_A)),
            ("base_model.model.fc.lora_B.weight".to_string(), dtype, vec![2, 2], bytes(&EX_B)),
            ("base_model.model.fc.lora_magnitude_vector".to_string(), dtype, vec![2], bytes(&[5.0, 10.0])),
        ];
        let (m, a) = example(json!({"use_dora": true}), &t, "");
        assert_close(&forward(&a, 0, m.node("fc"), &EX_X, 1.0), &[16.284104, 9.962287], 1e-5);
        assert_eq!(a.info().targets[0].bytes, 2 * (6 + 4 + 2));
    }
}

#[test]
fn misaligned_tensor_is_copied_and_counted() {
    // A hand-written file whose data section starts at an offset that is 2 mod 4.
    let mut header = r#"{"base_model.model.fc.lora_A.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"base_model.model.fc.lora_B.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[24,40]}}"#.to_string();
    while (8 + header.len()) % 4 != 2 {
        header.push(' ');
    }
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend(f32_bytes(&EX_A));
    file.extend(f32_bytes(&EX_B));
    let dir = TempDir::new("misaligned");
    std::fs::write(dir.path().join("adapter_config.json"), config(json!({}))).unwrap();
    std::fs::write(dir.path().join("adapter_model.safetensors"), file).unwrap();
    let model = example_model();
    let source = dir.path().to_str().unwrap().to_owned();
    let req = LoadRequest { id: RStr::from_str("m"), source: RStr::from_str(&source), options: RStr::from_str("") };
    let a = load_dir(&req, &model.view()).unwrap();
    // A and B copied (40 bytes), plus the load-time Bᵀ (16 bytes) every adapter owns.
    assert_eq!(a.info().owned_bytes, 40 + 16);
    assert_eq!(a.info().mapped_bytes, 0);
    assert_close(&forward(&a, 0, model.node("fc"), &EX_X, 1.0), &[17.5, 8.5], 1e-5);

    // An aligned file is used in place in the bytes read at load (a file of at most
    // COPY_LIMIT is read, not mapped, so it no longer changes under the adapter): owned.
    let a = load_from_dir(&model, &config(json!({})), &example_tensors(), "");
    assert_eq!((a.info().mapped_bytes, a.info().owned_bytes), (0, 56));
}

#[test]
fn expand_without_the_hosts_linear_t_matches_the_example() {
    // An older host's table ends before `linear_t`: the expand goes through `linear` and
    // the stored B. Both tables (and an FMA one) give the worked example's numbers.
    use graft_plugin_abi::testing::{kernels_fma8, kernels_without_linear_t};
    assert!(kernels().linear_t().is_some());
    assert!(kernels_without_linear_t().linear_t().is_none());
    let mut bias = example_tensors();
    bias.push(f32_tensor("base_model.model.fc.lora_B.bias", &[2], &[1.0, -3.0]));
    for (patch, tensors, want) in [
        (json!({}), example_tensors(), [17.5, 8.5]),
        (json!({"use_dora": true}), dora_tensors(), [16.284104, 9.962287]),
        (json!({"lora_bias": true}), bias, [19.5, 2.5]),
    ] {
        let (m, a) = example(patch, &tensors, "");
        for k in [kernels(), kernels_without_linear_t(), kernels_fma8()] {
            assert_close(&forward_on(k, &a, 0, m.node("fc"), &EX_X, 1.0), &want, 1e-5);
        }
        // Two rows at once: each row's result is the one it gets alone, bit for bit.
        let x2 = [EX_X, EX_X.map(|v| -2.0 * v)].concat();
        for k in [kernels(), kernels_without_linear_t()] {
            let y = forward_on(k, &a, 0, m.node("fc"), &x2, 1.0);
            assert_close(&y[..2], &want, 1e-5);
            assert_close(&y[2..], &forward_on(k, &a, 0, m.node("fc"), &x2[3..], 1.0), 0.0);
        }
    }
}

#[test]
fn root_module_loads_through_the_abi() {
    let module = graft_plugin_lora::module();
    assert_eq!(module.abi_version(), graft_plugin_abi::ABI_VERSION);
    assert_eq!((module.kind())().as_str(), "lora");
    let model = example_model();
    let dir = TempDir::new("abi");
    write_dir(dir.path(), &config(json!({})), &example_tensors());
    let source = dir.path().to_str().unwrap().to_owned();
    let req = LoadRequest { id: RStr::from_str("x"), source: RStr::from_str(&source), options: RStr::from_str("") };
    let boxed = (module.load())(req, model.view()).into_result().unwrap();
    let targets = boxed.targets();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].node, 0);
    let info = boxed.info();
    assert_eq!(info.kind.as_str(), "lora");
    assert!(info.notes.iter().any(|n| n.as_str() == "peft_version=0.21.2"));
    assert!(info.notes.iter().any(|n| n.as_str() == "fan_in_fan_out=false"));

    // Errors come back through the boundary too.
    let bad = LoadRequest {
        id: RStr::from_str("x"),
        source: RStr::from_str("/nonexistent/dir"),
        options: RStr::from_str(""),
    };
    let e = (module.load())(bad, model.view()).into_result().err().unwrap();
    assert_eq!(e.code, ErrorCode::IO);
}

#[test]
fn bad_calls_are_errors() {
    let (m, a) = example(json!({"use_dora": true}), &dora_tensors(), "");
    let layer = m.node("fc");
    let mut y = layer.forward(&EX_X);
    assert_err(run(&a, 1, &EX_X, 3, &mut y, 2, None, 1.0), ErrorCode::BAD_CALL, "target");
    assert_err(run(&a, 0, &EX_X[..2], 2, &mut y[..1], 1, None, 1.0), ErrorCode::BAD_CALL, "fc");
    assert_err(run(&a, 0, &EX_X, 3, &mut y, 2, Some(&[1.0]), 1.0), ErrorCode::BAD_CALL, "fc");
    assert_err(run(&a, 0, &EX_X, 3, &mut y, 2, None, f32::NAN), ErrorCode::BAD_CALL, "fc");
    // Short scratch.
    use graft_plugin_abi::{LinearDelta, MatView};
    let need = a.scratch_floats(0, 1, kernels());
    assert_eq!(need, 2 + 2 + 2 + 3);
    let mut scratch = vec![0f32; need - 1];
    let call = LinearDelta {
        target: 0,
        x: MatView::new(&EX_X, 1, 3, 3).unwrap(),
        y: MatViewMut::new(&mut y, 1, 2, 2).unwrap(),
        base_bias: None.into(),
        scale: 1.0,
        state: MatView::empty(1),
        kernels: kernels(),
        scratch: RSliceMut::from_mut_slice(&mut scratch),
    };
    assert_err(a.linear_delta(call).into_result(), ErrorCode::BAD_CALL, "fc");
    // Merge shape checks.
    let mut w = vec![0f32; 4];
    let mut b = vec![0f32; 2];
    let r = a.merge(0, MatViewMut::new(&mut w, 2, 2, 2).unwrap(), RSliceMut::from_mut_slice(&mut b)).into_result();
    assert_err(r, ErrorCode::BAD_CALL, "fc");
}

/// `device_params` (what GPU sessions run): base + scale·B(A·x) must equal the host
/// forward for LoRA, rsLoRA and an explicit scale; DoRA and lora_bias are refused.
#[test]
fn device_params_reproduce_the_forward() {
    use graft_plugin_abi::DeviceParams;
    for patch in [json!({}), json!({"use_rslora": true}), json!({"scaling": 1.0})] {
        let (m, a) = example(patch.clone(), &example_tensors(), "");
        let DeviceParams::LowRank { a: fa, b: fb, rank, scale } = a.device_params(0).into_result().unwrap() else {
            panic!("{patch}: not low-rank")
        };
        let (r, node) = (rank as usize, m.node("fc"));
        let base = node.forward(&EX_X);
        let t: Vec<f32> = (0..r).map(|i| (0..3).map(|k| fa[i * 3 + k] * EX_X[k]).sum()).collect();
        let y: Vec<f32> =
            (0..base.len()).map(|o| base[o] + scale * (0..r).map(|i| fb[o * r + i] * t[i]).sum::<f32>()).collect();
        assert_close(&y, &forward(&a, 0, node, &EX_X, 1.0), 1e-5);
    }
    let mut dora = example_tensors();
    dora.push(f32_tensor("base_model.model.fc.lora_magnitude_vector", &[2], &[5.0, 10.0]));
    let (_, a) = example(json!({"use_dora": true}), &dora, "");
    let e = a.device_params(0).into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::UNSUPPORTED);
    let mut biased = example_tensors();
    biased.push(f32_tensor("base_model.model.fc.lora_B.bias", &[2], &[1.0, -3.0]));
    let (_, a) = example(json!({"lora_bias": true}), &biased, "");
    assert_eq!(a.device_params(0).into_result().unwrap_err().code, ErrorCode::UNSUPPORTED);
    assert!(a.device_params(7).into_result().is_err());
}
