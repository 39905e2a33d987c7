//! The three PEFT 0.21.2 fixture adapters of `dlrm_small_lora` load against a model with
//! the dlrm_small linear shapes and report PEFT's ranks, scales and variants.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use graft_plugin_abi::Adapter;
use graft_plugin_abi::LoadRequest;
use graft_plugin_abi::abi_stable::std_types::RStr;
use graft_plugin_lora::{LoraAdapter, load_dir};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// (name, out, in) of the dlrm_small linears.
const LINEARS: [(&str, usize, usize); 5] =
    [("bot_fc1", 32, 8), ("bot_fc2", 16, 32), ("top_fc1", 64, 80), ("top_fc2", 32, 64), ("top_fc3", 1, 32)];

/// Random weights (a fixed LCG), biases included.
fn random_model() -> FakeModel {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    FakeModel::new(
        LINEARS
            .iter()
            .map(|&(n, out, inf)| {
                let w = (0..out * inf).map(|_| next()).collect();
                let b = (0..out).map(|_| next()).collect();
                FakeNode::linear(n, out, inf, w, Some(b))
            })
            .collect(),
    )
}

/// The real dlrm_small base weights.
fn real_model() -> FakeModel {
    let bytes = std::fs::read(fixtures().join("dlrm_small/weights.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let read = |k: &str| -> Vec<f32> {
        st.tensor(k).unwrap().data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    };
    FakeModel::new(
        LINEARS
            .iter()
            .map(|&(n, out, inf)| {
                FakeNode::linear(n, out, inf, read(&format!("{n}.weight")), Some(read(&format!("{n}.bias"))))
            })
            .collect(),
    )
}

fn load_fixture(name: &str, model: &FakeModel) -> LoraAdapter {
    let dir = fixtures().join("dlrm_small_lora/adapters").join(name);
    let source = dir.to_str().unwrap().to_owned();
    let req = LoadRequest { id: RStr::from_str(name), source: RStr::from_str(&source), options: RStr::from_str("") };
    load_dir(&req, &model.view()).unwrap()
}

#[test]
fn fixture_ranks_scales_variants() {
    let model = random_model();
    for (name, modules, rank, scale, variant) in [
        ("lora_a", &["top_fc1", "top_fc2", "top_fc3"][..], 4, 2.0f32, "lora"),
        ("lora_b", &["bot_fc1", "bot_fc2", "top_fc1", "top_fc2", "top_fc3"][..], 16, 4.0, "rslora"),
        ("dora_c", &["top_fc1", "top_fc2", "top_fc3"][..], 8, 2.0, "dora"),
    ] {
        let a = load_fixture(name, &model);
        let info = a.info();
        assert_eq!(info.kind.as_str(), "lora");
        let got: Vec<&str> = info.targets.iter().map(|t| t.module.as_str()).collect();
        assert_eq!(got, modules, "{name}");
        for t in info.targets.iter() {
            assert_eq!((t.rank, t.scale, t.variant.as_str()), (rank, scale, variant), "{name} {}", t.module);
            assert_eq!(t.node.as_str(), format!("node_{}", t.module));
        }
        let targets = a.targets();
        for (t, m) in targets.iter().zip(modules) {
            assert_eq!(model.nodes[t.node as usize].name, *m);
        }
        assert!(info.notes.iter().any(|n| n.as_str() == "peft_version=0.21.2"), "{name}");
        assert!(info.owned_bytes > 0 && info.mapped_bytes == 0, "a small file is read at load, not mapped");
        // The forward runs on every target.
        for (i, m) in modules.iter().enumerate() {
            let layer = model.node(m);
            let x: Vec<f32> = (0..3 * layer.in_features).map(|k| (k as f32 * 0.37).sin()).collect();
            let y = forward(&a, i as u32, layer, &x, 1.0);
            assert!(y.iter().all(|v| v.is_finite()));
        }
    }
}

#[test]
fn dora_c_factors_match_peft_with_the_real_base() {
    // With x = 0 and y = b + 1, DoRA leaves y − b = f = m / n: the factor is observable.
    let model = real_model();
    let a = load_fixture("dora_c", &model);
    let bytes = std::fs::read(fixtures().join("dlrm_small_lora/debug_dora_c_norms.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (i, m) in ["top_fc1", "top_fc2", "top_fc3"].iter().enumerate() {
        let layer = model.node(m);
        let want: Vec<f32> = st
            .tensor(&format!("{m}.mag_over_norm"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let bias = layer.bias.clone().unwrap();
        let x = vec![0f32; layer.in_features];
        let mut y: Vec<f32> = bias.iter().map(|b| b + 1.0).collect();
        run(&a, i as u32, &x, layer.in_features, &mut y, layer.out_features, Some(&bias), 1.0).unwrap();
        let f: Vec<f32> = y.iter().zip(&bias).map(|(y, b)| y - b).collect();
        assert_close(&f, &want, 1e-5);
    }
}
