//! Static SSF: the post, the multiplier, and the exact fold into a linear layer
//! (algorithms.md §2.2, including its worked example).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::abi_stable::std_types::RSliceMut;
use graft_plugin_abi::{Adapter, ErrorCode, HookKind, MatViewMut, PluginError, Target};
use graft_plugin_ssf_pool::{Config, SiteConfig, SsfPoolAdapter, inspect_file, save};

const W: [f32; 6] = [1.0, 0.0, 2.0, 0.0, 1.0, -1.0];
const B: [f32; 2] = [0.5, -0.5];
const X: [f32; 3] = [1.0, 2.0, 3.0];
const GAMMA: [f32; 2] = [2.0, 0.5];
const BETA: [f32; 2] = [0.1, -0.2];

fn model() -> FakeModel {
    FakeModel::new(vec![
        FakeNode::input("x", 3),
        FakeNode::linear("fc", 2, 3, W.to_vec(), Some(B.to_vec())),
        FakeNode::other("act", 2),
    ])
}

fn load_static(shape: &[usize]) -> SsfPoolAdapter {
    let config = Config::ssf(vec![SiteConfig::new("fc", "g", "b"), SiteConfig::new("act", "g2", "b2")]);
    let bytes = file_bytes(
        Some(&config.to_json()),
        &[
            f32_tensor("g", shape, &GAMMA),
            f32_tensor("b", shape, &BETA),
            f32_tensor("g2", &[2], &[-1.0, 3.0]),
            f32_tensor("b2", &[2], &[0.0, 1.0]),
        ],
    );
    load(&model(), &bytes, "").unwrap()
}

fn merge(
    a: &SsfPoolAdapter,
    target: u32,
    w: &mut [f32],
    b: &mut [f32],
    out: usize,
    inf: usize,
) -> Result<(), PluginError> {
    a.merge(target, MatViewMut::new(w, out, inf, inf).unwrap(), RSliceMut::from_mut_slice(b)).into_result()
}

#[test]
fn worked_example_post_and_fold() {
    for shape in [&[2usize][..], &[1, 2][..]] {
        let a = load_static(shape);
        let m = model();
        assert_eq!(a.state_floats(), 0);
        assert_eq!(
            a.targets().as_slice(),
            [Target::new(m.index("fc"), HookKind::Post), Target::new(m.index("act"), HookKind::Post)]
        );
        // Unfolded: base y = [7.5, −1.5] → γ⊙y + β = [15.1, −0.95].
        let mut y = m.node("fc").forward(&X);
        assert_eq!(y, [7.5, -1.5]);
        post(&a, 0, &mut y, 2, &[], 1.0).unwrap();
        assert_close(&y, &[15.1, -0.95], 1e-6);
        // Folded: W' = [[2,0,4],[0,0.5,−0.5]], b' = [1.1, −0.45], exactly.
        let (mut w, mut b) = (W, B);
        merge(&a, 0, &mut w, &mut b, 2, 3).unwrap();
        assert_eq!(w, [2.0, 0.0, 4.0, 0.0, 0.5, -0.5]);
        assert_eq!(b, [2.0 * 0.5 + 0.1, 0.5 * -0.5 - 0.2]);
        assert_close(&b, &[1.1, -0.45], 1e-7);
        let folded = FakeNode::linear("fc", 2, 3, w.to_vec(), Some(b.to_vec())).forward(&X);
        assert_close(&folded, &y, 1e-6);
    }
}

#[test]
fn fold_matches_post_on_random_layers() {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    };
    for _ in 0..20 {
        let (out, inf, rows) = (5, 7, 4);
        let w: Vec<f32> = (0..out * inf).map(|_| rnd()).collect();
        let b: Vec<f32> = (0..out).map(|_| rnd()).collect();
        let g: Vec<f32> = (0..out).map(|_| rnd()).collect();
        let be: Vec<f32> = (0..out).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..rows * inf).map(|_| rnd()).collect();
        let m = FakeModel::new(vec![FakeNode::linear("fc", out, inf, w.clone(), Some(b.clone()))]);
        let config = Config::ssf(vec![SiteConfig::new("fc", "g", "b")]);
        let bytes = file_bytes(Some(&config.to_json()), &[f32_tensor("g", &[out], &g), f32_tensor("b", &[out], &be)]);
        let a = load(&m, &bytes, "").unwrap();
        let mut y = m.nodes[0].forward(&x);
        post(&a, 0, &mut y, out, &[], 1.0).unwrap();
        let (mut w2, mut b2) = (w.clone(), b.clone());
        merge(&a, 0, &mut w2, &mut b2, out, inf).unwrap();
        let folded = FakeNode::linear("fc", out, inf, w2, Some(b2)).forward(&x);
        let scale = y.iter().fold(1f32, |acc, v| acc.max(v.abs()));
        assert_close(&folded, &y, 1e-5 * scale);
    }
}

#[test]
fn multiplier_semantics() {
    let a = load_static(&[2]);
    let base = [7.5f32, -1.5];
    let run = |m: f32| {
        let mut y = base;
        post(&a, 0, &mut y, 2, &[], m).map(|_| y)
    };
    // γ' = 1 + m(γ − 1), β' = mβ.
    assert_close(&run(0.5).unwrap(), &[1.5 * 7.5 + 0.05, 0.75 * -1.5 - 0.1], 1e-6);
    assert_close(&run(2.0).unwrap(), &[3.0 * 7.5 + 0.2, 0.0 * -1.5 - 0.4], 1e-6);
    assert_close(&run(-1.0).unwrap(), &[0.0 * 7.5 - 0.1, 1.5 * -1.5 + 0.2], 1e-6);
    assert_eq!(run(0.0).unwrap(), base);
    assert_eq!(run(1.0).unwrap(), [2.0 * 7.5 + 0.1, 0.5 * -1.5 - 0.2]);
    assert_err(run(f32::NAN), ErrorCode::BAD_CALL, "fc");
    assert_err(run(f32::NEG_INFINITY), ErrorCode::BAD_CALL, "fc");
    // Several rows at once, each transformed the same way.
    let mut y = [1.0f32, 1.0, 0.0, 0.0, -2.0, 4.0];
    post(&a, 0, &mut y, 2, &[], 1.0).unwrap();
    assert_close(&y, &[2.1, 0.3, 0.1, -0.2, -3.9, 1.8], 1e-6);
}

#[test]
fn non_linear_site_posts_but_does_not_fold() {
    let a = load_static(&[2]);
    let mut y = [2.0f32, 2.0];
    post(&a, 1, &mut y, 2, &[], 1.0).unwrap();
    assert_eq!(y, [-2.0, 7.0]);
    let (mut w, mut b) = ([0f32; 4], [0f32; 2]);
    assert_err(merge(&a, 1, &mut w, &mut b, 2, 2), ErrorCode::UNSUPPORTED, "act");
}

#[test]
fn merge_refuses_bad_calls() {
    let a = load_static(&[2]);
    let (mut w, mut b) = (W, B);
    assert_err(merge(&a, 0, &mut w[..4], &mut b, 2, 2), ErrorCode::BAD_CALL, "fc");
    assert_err(merge(&a, 0, &mut w, &mut b[..1], 2, 3), ErrorCode::BAD_CALL, "fc");
    assert_err(merge(&a, 7, &mut w, &mut b, 2, 3), ErrorCode::BAD_CALL, "target");
    assert_eq!((w, b), (W, B), "a refused merge leaves the weights alone");
}

#[test]
fn save_inspect_and_load_round_trip() {
    let dir = TempDir::new("static");
    let path = dir.file("ssf.safetensors");
    let config = Config::ssf(vec![SiteConfig::new("fc", "g", "b")]);
    save(&path, &config, &[("g", vec![2], &GAMMA), ("b", vec![1, 2], &BETA)]).unwrap();
    let info = inspect_file(&path).unwrap();
    assert_eq!(info.targets.len(), 1);
    assert_eq!((info.targets[0].variant.as_str(), info.targets[0].bytes), ("ssf", 16));
    let a = load_path(&model(), &path, "").unwrap();
    let mut y = [7.5f32, -1.5];
    post(&a, 0, &mut y, 2, &[], 1.0).unwrap();
    assert_close(&y, &[15.1, -0.95], 1e-6);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");

    // save refuses what it cannot describe.
    assert_err(save(&path, &config, &[("g", vec![3], &GAMMA), ("b", vec![2], &BETA)]), ErrorCode::TENSOR, "g");
    assert_err(save(&path, &config, &[("g", vec![2], &GAMMA)]), ErrorCode::TENSOR, "b");
    assert_err(save(&path, &Config::ssf(vec![]), &[]), ErrorCode::CONFIG, "sites");
    let nowhere = dir.file("no/such/dir/x.safetensors");
    assert_err(save(&nowhere, &config, &[("g", vec![2], &GAMMA), ("b", vec![2], &BETA)]), ErrorCode::IO, &nowhere);
}

/// `device_params` (what GPU sessions run) exports each site's γ and β as loaded.
#[test]
fn device_params_export_gamma_and_beta() {
    use graft_plugin_abi::DeviceParams;
    let a = load_static(&[2]);
    match a.device_params(0).into_result().unwrap() {
        DeviceParams::ScaleShift { gamma, beta } => {
            assert_eq!(gamma.as_slice(), &GAMMA);
            assert_eq!(beta.as_slice(), &BETA);
        }
        other => panic!("expected scale-shift, got {other:?}"),
    }
    match a.device_params(1).into_result().unwrap() {
        DeviceParams::ScaleShift { gamma, beta } => {
            assert_eq!(gamma.as_slice(), &[-1.0, 3.0]);
            assert_eq!(beta.as_slice(), &[0.0, 1.0]);
        }
        other => panic!("expected scale-shift, got {other:?}"),
    }
    assert!(a.device_params(9).into_result().is_err());
}
