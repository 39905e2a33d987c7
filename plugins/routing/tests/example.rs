//! The §4.5 worked example (`algorithms.md`): every number here was computed by hand from
//! the spec, not by this crate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::abi_stable::std_types::{RSliceMut, RStr};
use graft_plugin_abi::{Adapter, ErrorCode, HookKind, LoadRequest, MatViewMut};
use graft_plugin_routing::{Config, KIND, Mode, OutputIs, inspect_file, module};

const X: [f32; 2] = [0.5, 1.0];

/// D = 2, K = 2, dims [2, 2, 1]; weights (in, out) as in the spec.
fn example(output_node: &str, output_is: OutputIs, mode: Mode) -> Synth {
    let mut config = Config::new("emb", output_node, 2, vec![2, 2, 1]);
    config.output_is = output_is;
    config.mode = mode;
    let t = |n: &str, s: &[usize], v: &[f32]| (n.to_owned(), s.to_vec(), v.to_vec());
    Synth {
        config,
        tensors: vec![
            t("centers", &[2, 2], &[1.0, 0.0, 0.6, 0.8]),
            t("shared.0.weight", &[2, 2], &[1.0, 2.0, 0.0, 1.0]),
            t("shared.1.weight", &[2, 1], &[1.0, 1.0]),
            t("cluster.0.0.weight", &[2, 2], &[1.0, 1.0, 1.0, 1.0]),
            t("cluster.0.1.weight", &[2, 1], &[1.0, -1.0]),
            t("cluster.1.0.weight", &[2, 2], &[0.5, 1.0, 2.0, -1.0]),
            t("cluster.1.1.weight", &[2, 1], &[2.0, 1.0]),
        ],
    }
}

/// The same, with cluster 0's tower as the only cluster.
fn only_cluster_zero(output_is: OutputIs) -> Synth {
    let mut s = example("prob", output_is, Mode::Hard);
    s.config.clusters = 1;
    s.config.output_node = if output_is == OutputIs::Prob { "prob" } else { "head" }.into();
    s.tensors.retain(|t| !t.0.starts_with("cluster.1."));
    s.tensors.iter_mut().find(|t| t.0 == "centers").unwrap().1 = vec![1, 2];
    s.tensors.iter_mut().find(|t| t.0 == "centers").unwrap().2 = vec![1.0, 0.0];
    s
}

#[test]
fn hard_prob_routes_to_cluster_one() {
    let model = routing_model(2, 1);
    let s = example("prob", OutputIs::Prob, Mode::Hard);
    let a = load(&model, &s.write("hard-prob"), "").unwrap();
    // y0 is whatever the base model said; m = 1 replaces it.
    let r = run(&a, &X, 2, &[0.9], 1.0, &[1]).unwrap();
    assert!((r.y[0] - 0.622_459).abs() < 1e-6, "{r:?}");
    assert_eq!(r.state[1], 1.0, "κ = 1");
    assert_eq!(a.state_floats(), 2);
}

#[test]
fn hard_logit_is_z() {
    let model = routing_model(2, 1);
    let s = example("head", OutputIs::Logit, Mode::Hard);
    let a = load(&model, &s.write("hard-logit"), "").unwrap();
    let r = run(&a, &X, 2, &[-3.0], 1.0, &[1]).unwrap();
    assert!((r.y[0] - 0.5).abs() < 1e-6, "{r:?}");
    assert_eq!(r.state, [r.y[0], 1.0]);
}

#[test]
fn cluster_zero_check_value() {
    let model = routing_model(2, 1);
    // Through a K = 1 file holding cluster 0's tower.
    let a = load(&model, &only_cluster_zero(OutputIs::Prob).write("k1"), "").unwrap();
    let r = run(&a, &X, 2, &[0.0], 1.0, &[1]).unwrap();
    assert!((r.y[0] - 0.182_426).abs() < 1e-6, "{r:?}");
    let a = load(&model, &only_cluster_zero(OutputIs::Logit).write("k1-logit"), "").unwrap();
    let r = run(&a, &X, 2, &[0.0], 1.0, &[1]).unwrap();
    assert!((r.y[0] + 1.5).abs() < 1e-6, "{r:?}");
    // And by routing: x = [1, 0] scores [1, 0.6] → cluster 0; hidden relu([1, 2]) and
    // z = 1 − 2 = −1, next to the κ = 1 row of the example in the same call.
    let a = load(&model, &example("head", OutputIs::Logit, Mode::Hard).write("two-rows"), "").unwrap();
    let r = run(&a, &[1.0, 0.0, 0.5, 1.0], 2, &[0.0, 0.0], 1.0, &[2]).unwrap();
    assert_eq!(r.state, [-1.0, 0.0, 0.5, 1.0]);
}

#[test]
fn soft_mixture() {
    let model = routing_model(2, 1);
    let a = load(&model, &example("prob", OutputIs::Prob, Mode::Soft).write("soft"), "").unwrap();
    let r = run(&a, &X, 2, &[0.0], 1.0, &[1]).unwrap();
    assert!((r.y[0] - 0.466_536).abs() < 1e-6, "{r:?}");
    assert_eq!(r.state[1], 1.0, "κ is still recorded in soft mode");
    let a = load(&model, &example("head", OutputIs::Logit, Mode::Soft).write("soft-logit"), "").unwrap();
    let r = run(&a, &X, 2, &[0.0], 1.0, &[1]).unwrap();
    let want = (0.466_536f64 / (1.0 - 0.466_536)).ln();
    assert!((f64::from(r.y[0]) - want).abs() < 1e-5, "{r:?} vs {want}");
}

#[test]
fn through_the_root_module() {
    let model = routing_model(2, 1);
    let f = example("prob", OutputIs::Prob, Mode::Hard).write("abi");
    let m = module();
    assert_eq!((m.kind())().as_str(), KIND);
    let req = LoadRequest { id: RStr::from_str("ex"), source: RStr::from_str(f.as_str()), options: RStr::from_str("") };
    let a = (m.load())(req, model.view()).into_result().unwrap();
    let t = a.targets();
    assert_eq!(t.len(), 2);
    assert_eq!((t[0].node, t[0].hook, t[0].flags), (10, HookKind::Tap, 0));
    assert_eq!((t[1].node, t[1].hook), (12, HookKind::Post));
    let r = run(&a, &X, 2, &[0.0], 1.0, &[1]).unwrap();
    assert!((r.y[0] - 0.622_459).abs() < 1e-6);

    let info = a.info();
    assert_eq!(info.kind.as_str(), "routing");
    assert_eq!(info.source.as_str(), f.as_str());
    let variants: Vec<&str> = info.targets.iter().map(|t| t.variant.as_str()).collect();
    assert_eq!(variants, ["route-input", "route-output"]);
    assert_eq!(info.targets[0].module.as_str(), "emb");
    assert_eq!(info.targets[0].node.as_str(), "node_emb");
    assert_eq!(info.targets[1].node.as_str(), "node_prob");
    assert_eq!(info.targets[0].bytes, 16);
    assert_eq!(info.targets[1].bytes, 4 * (4 + 2 + 2 * (4 + 2)));
    let notes: Vec<&str> = info.notes.iter().map(|n| n.as_str()).collect();
    for want in ["clusters=2", "dims=[2, 2, 1]", "mode=hard", "output_is=prob", "state_floats=2"] {
        assert!(notes.contains(&want), "{notes:?} lacks {want}");
    }

    // No merge, no feedback, no state to save.
    let mut w = [0f32; 2];
    let mut b = [0f32; 1];
    let e = a.merge(1, MatViewMut::new(&mut w, 1, 2, 2).unwrap(), RSliceMut::from_mut_slice(&mut b)).into_result();
    assert_eq!(e.map_err(|e| e.code), Err(ErrorCode::UNSUPPORTED));
    assert_eq!(a.feedback(1, 1.0).into_result().map_err(|e| e.code), Err(ErrorCode::UNSUPPORTED));
    assert_eq!(
        a.save_state(RStr::from_str("/nonexistent")).into_result().map_err(|e| e.code),
        Err(ErrorCode::UNSUPPORTED)
    );
}

#[test]
fn inspect_without_a_model() {
    let f = example("head", OutputIs::Logit, Mode::Soft).write("inspect");
    let info = inspect_file(f.path()).unwrap();
    assert_eq!(info.kind.as_str(), "routing");
    assert_eq!(info.targets.len(), 2);
    assert_eq!(info.targets[0].variant.as_str(), "route-input");
    assert_eq!(info.targets[1].module.as_str(), "head");
    assert_eq!(info.targets[1].node.as_str(), "");
    let notes: Vec<&str> = info.notes.iter().map(|n| n.as_str()).collect();
    assert!(notes.contains(&"mode=soft") && notes.contains(&"clusters=2"), "{notes:?}");
    assert_eq!(info.mapped_bytes, 0);
    assert_eq!(info.owned_bytes, 4 * (4 + 2 * (4 + 2)));
    // The same checks as loading.
    let mut s = example("head", OutputIs::Logit, Mode::Hard);
    s.remove("cluster.1.1.weight");
    assert_err(inspect_file(s.write("inspect-bad").path()), ErrorCode::TENSOR, "cluster.1.1.weight");
}
