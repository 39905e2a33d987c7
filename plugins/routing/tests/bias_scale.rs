//! Biases (`b = b⁰ + bʲ`) and the per-request multiplier `m`:
//! `y = (1 − m)·y_base + m·y_routed` in the output node's units.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_routing::{Config, OutputIs};

/// D = 2, K = 2, one layer [2, 1]: z = x·(W⁰ ⊙ Wʲ) (+ b⁰ + bʲ), small enough to do by hand.
fn tiny(use_bias: bool) -> Synth {
    let mut config = Config::new("emb", "head", 2, vec![2, 1]);
    config.use_bias = use_bias;
    let t = |n: &str, s: &[usize], v: &[f32]| (n.to_owned(), s.to_vec(), v.to_vec());
    let mut tensors = vec![
        t("centers", &[2, 2], &[1.0, 0.0, 0.0, 1.0]),
        t("shared.0.weight", &[2, 1], &[2.0, 3.0]),
        t("cluster.0.0.weight", &[2, 1], &[1.0, 1.0]),
        t("cluster.1.0.weight", &[2, 1], &[-1.0, 0.5]),
    ];
    if use_bias {
        tensors.push(t("shared.0.bias", &[1], &[0.25]));
        tensors.push(t("cluster.0.0.bias", &[1], &[1.0]));
        tensors.push(t("cluster.1.0.bias", &[1], &[-2.0]));
    }
    Synth { config, tensors }
}

// Rows: [3, 1] → κ 0, z = 3·2 + 1·3 = 9; [1, 2] → κ 1, z = −2 + 3 = 1.
const X: [f32; 4] = [3.0, 1.0, 1.0, 2.0];

#[test]
fn bias_off_and_on() {
    let model = routing_model(2, 1);
    let a = load(&model, &tiny(false).write("nobias"), "").unwrap();
    let r = run(&a, &X, 2, &[0.0, 0.0], 1.0, &[2]).unwrap();
    assert_eq!(r.y, [9.0, 1.0]);
    let a = load(&model, &tiny(true).write("bias"), "").unwrap();
    let r = run(&a, &X, 2, &[0.0, 0.0], 1.0, &[2]).unwrap();
    // + (0.25 + 1) and + (0.25 − 2).
    assert_eq!(r.y, [10.25, -0.75]);
    for chunks in [&[1, 1][..], &[2]] {
        assert_eq!(run(&a, &X, 2, &[0.0, 0.0], 1.0, chunks).unwrap().y, [10.25, -0.75]);
    }
}

#[test]
fn multiplier_blends_in_node_units() {
    let model = routing_model(2, 1);
    let a = load(&model, &tiny(true).write("m"), "").unwrap();
    let base = [4.0f32, -3.5];
    // m = 0: the base output, bit for bit (even a NaN base stays as it was).
    let r = run(&a, &X, 2, &base, 0.0, &[2]).unwrap();
    assert_eq!(r.y, base);
    let r = run(&a, &X, 2, &[f32::NAN, 1.0], 0.0, &[2]).unwrap();
    assert!(r.y[0].is_nan() && r.y[1] == 1.0);
    // m = 0.5: the midpoint; the state still holds the routed values.
    let r = run(&a, &X, 2, &base, 0.5, &[1, 1]).unwrap();
    assert_eq!(r.y, [(4.0 + 10.25) / 2.0, (-3.5 - 0.75) / 2.0]);
    assert_eq!(r.state, [10.25, 0.0, -0.75, 1.0]);
    // m = 1 replaces even a non-finite base.
    let r = run(&a, &X, 2, &[f32::INFINITY, f32::NAN], 1.0, &[2]).unwrap();
    assert_eq!(r.y, [10.25, -0.75]);
    // In probability units: the blend is of probabilities, not logits.
    let mut s = tiny(true);
    s.config.output_is = OutputIs::Prob;
    s.config.output_node = "prob".into();
    let a = load(&model, &s.write("m-prob"), "").unwrap();
    let r = run(&a, &X, 2, &[0.5, 0.5], 0.5, &[2]).unwrap();
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    assert_close(&r.y, &[0.5 * 0.5 + 0.5 * sig(10.25), 0.25 + 0.5 * sig(-0.75)], 1e-6);
}
