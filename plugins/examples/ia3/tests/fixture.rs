//! The PEFT 0.21.2 fixture (`tests/fixtures/ia3`, made by `scripts/fixtures/gen_ia3.py`):
//! a hand-rolled f32 forward of dlrm_small with the adapter's hooks at `top_fc1..3`
//! reproduces PEFT's logits, unmerged and merged, at multipliers 1, 0.5 and 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use graft_plugin_abi::Adapter;
use graft_plugin_abi::LoadRequest;
use graft_plugin_abi::MatViewMut;
use graft_plugin_abi::abi_stable::std_types::{RSliceMut, RStr};
use graft_plugin_ia3::{Ia3Adapter, Scaling, inspect_dir, load_dir};

const ROWS: usize = 16;
const VOCABS: [usize; 4] = [100, 50, 30, 20];
const LINEARS: [(&str, usize, usize); 5] =
    [("bot_fc1", 32, 8), ("bot_fc2", 16, 32), ("top_fc1", 64, 80), ("top_fc2", 32, 64), ("top_fc3", 1, 32)];
/// f32 paths vs PEFT: the fixture README's suggested tolerance.
const TOL: f32 = 1e-5;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../tests/fixtures")
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn read_f32(path: PathBuf) -> Vec<f32> {
    f32s(&std::fs::read(path).unwrap())
}

struct Dlrm {
    model: FakeModel,
    tables: Vec<Vec<f32>>,
    dense: Vec<f32>,
    ids: Vec<Vec<i64>>,
}

fn dlrm() -> Dlrm {
    let d = fixtures().join("dlrm_small");
    let bytes = std::fs::read(d.join("weights.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let read = |k: &str| f32s(st.tensor(k).unwrap().data());
    let model = FakeModel::new(
        LINEARS
            .iter()
            .map(|&(n, out, inf)| {
                FakeNode::linear(n, out, inf, read(&format!("{n}.weight")), Some(read(&format!("{n}.bias"))))
            })
            .collect(),
    );
    let tables = (0..4).map(|k| read(&format!("emb_f{k}.weight"))).collect();
    let dense = read_f32(d.join("dense.f32"))[..ROWS * 8].to_vec();
    let ids = (0..4)
        .map(|k| {
            let b = std::fs::read(d.join(format!("ids_f{k}_padded.i64"))).unwrap();
            b.chunks_exact(8).take(ROWS * 3).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
        })
        .collect();
    Dlrm { model, tables, dense, ids }
}

fn relu(v: &mut [f32]) {
    for x in v {
        *x = x.max(0.0);
    }
}

impl Dlrm {
    /// Logits for the 16 rows; `hook(name, x, y)` runs after each top linear.
    fn forward(&self, model: &FakeModel, mut hook: impl FnMut(&str, &[f32], &mut Vec<f32>)) -> Vec<f32> {
        let mut h = model.node("bot_fc1").forward(&self.dense);
        relu(&mut h);
        let mut bot = model.node("bot_fc2").forward(&h);
        relu(&mut bot);
        let mut z = vec![0f32; ROWS * 80];
        for r in 0..ROWS {
            z[r * 80..r * 80 + 16].copy_from_slice(&bot[r * 16..(r + 1) * 16]);
            for (k, &vocab) in VOCABS.iter().enumerate() {
                for slot in 0..3 {
                    let id = self.ids[k][r * 3 + slot] as usize;
                    if id < vocab {
                        for c in 0..16 {
                            z[r * 80 + 16 * (k + 1) + c] += self.tables[k][id * 16 + c];
                        }
                    }
                }
            }
        }
        let mut x = z;
        for name in ["top_fc1", "top_fc2", "top_fc3"] {
            let mut y = model.node(name).forward(&x);
            hook(name, &x, &mut y);
            if name != "top_fc3" {
                relu(&mut y);
            }
            x = y;
        }
        x
    }
}

fn load_fixture(model: &FakeModel) -> Ia3Adapter {
    let source = fixtures().join("ia3/adapter").to_str().unwrap().to_owned();
    let req = LoadRequest { id: RStr::from_str("ia3"), source: RStr::from_str(&source), options: RStr::from_str("") };
    load_dir(&req, &model.view()).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn target_of(a: &Ia3Adapter, name: &str) -> u32 {
    a.modules().position(|(p, _)| p == name).unwrap() as u32
}

#[test]
fn the_fixture_loads_with_peft_s_classification() {
    let d = dlrm();
    let a = load_fixture(&d.model);
    assert_eq!(
        a.modules().collect::<Vec<_>>(),
        [("top_fc1", Scaling::Output), ("top_fc2", Scaling::Feedforward), ("top_fc3", Scaling::Output)]
    );
    let info = a.info();
    assert!(info.notes.iter().any(|n| n.as_str() == "peft_version=0.21.2"));
    assert_eq!(info.owned_bytes, (64 + 64 + 1 + 32 * 64) * 4);
    let inspected = inspect_dir(&fixtures().join("ia3/adapter")).unwrap();
    let v: Vec<_> = inspected.targets.iter().map(|t| (t.module.as_str(), t.variant.as_str())).collect();
    assert_eq!(v, [("top_fc1", "ia3-output"), ("top_fc2", "ia3-feedforward"), ("top_fc3", "ia3-output")]);
}

#[test]
fn hooks_reproduce_peft_logits() {
    let d = dlrm();
    let base = d.forward(&d.model, |_, _, _| {});
    let want_base = read_f32(fixtures().join("ia3/base_logits.f32"));
    let diff = max_diff(&base, &want_base);
    eprintln!("hand-rolled base forward vs torch: max |diff| {diff:e}");
    assert!(diff <= TOL, "the test's own forward is off: {diff}");

    let a = load_fixture(&d.model);
    for (m, file) in [(1.0f32, "expected_logits.f32"), (0.5, "expected_logits_m0.5.f32"), (0.0, "base_logits.f32")] {
        let got = d.forward(&d.model, |name, x, y| {
            let layer = d.model.node(name);
            run(&a, target_of(&a, name), x, layer.in_features, y, layer.out_features, m).unwrap();
        });
        let want = read_f32(fixtures().join("ia3").join(file));
        let diff = max_diff(&got, &want);
        eprintln!("ia3 hooks at m = {m} vs {file}: max |diff| {diff:e}");
        assert!(diff <= TOL, "m = {m}: max |diff| {diff} (got {got:?}, want {want:?})");
    }
    // The adapter matters: PEFT's logits are far from the base ones.
    assert!(max_diff(&read_f32(fixtures().join("ia3/expected_logits.f32")), &want_base) > 1.0);
}

#[test]
fn merged_weights_reproduce_peft_logits() {
    let d = dlrm();
    let a = load_fixture(&d.model);
    let mut merged = d.model.clone();
    for (t, (name, _)) in a.modules().enumerate() {
        let layer = merged.nodes.iter_mut().find(|l| l.name == name).unwrap();
        let (out, inf) = (layer.out_features, layer.in_features);
        let mut b = layer.bias.clone().unwrap();
        a.merge(
            t as u32,
            MatViewMut::new(&mut layer.weight, out, inf, inf).unwrap(),
            RSliceMut::from_mut_slice(&mut b),
        )
        .into_result()
        .unwrap();
        layer.bias = Some(b);
    }
    let got = d.forward(&merged, |_, _, _| {});
    let want = read_f32(fixtures().join("ia3/expected_logits.f32"));
    let diff = max_diff(&got, &want);
    eprintln!("merged forward vs expected_logits.f32: max |diff| {diff:e}");
    assert!(diff <= TOL, "max |diff| {diff}");
}
