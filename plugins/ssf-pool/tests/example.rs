//! The FedIns worked example of algorithms.md §2.4 (selection, averaged SSF, pooled
//! heads), the multiplier semantics of a pool, and the head on rows that select
//! different entries, against an independent per-row f64 reference.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::{Adapter, ErrorCode, HookKind, Target};
use graft_plugin_ssf_pool::{Config, HeadConfig, PoolConfig, SiteConfig, SsfPoolAdapter, inspect_file, save};

const KEYS: [f32; 8] = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, -1.0, 0.5];
// Entries 1 and 3 must not matter.
const GAMMA: [f32; 12] = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 1.2, 0.8, 1.0, 3.0, 3.0, 3.0];
const BETA: [f32; 12] = [0.0, 0.0, 0.0, 9.0, 9.0, 9.0, 0.2, -0.2, 0.0, -9.0, -9.0, -9.0];
// W_p [2, 3] per entry; entries 1 and 3 are noise.
const HEAD_W: [f32; 24] = [
    1.0, 0.0, 0.0, 0.0, 1.0, 0.0, // W0
    5.0, 5.0, 5.0, 5.0, 5.0, 5.0, // W1
    0.0, 0.0, 1.0, 1.0, 0.0, 0.0, // W2
    -7.0, 7.0, -7.0, 7.0, -7.0, 7.0, // W3
];
const HEAD_B: [f32; 8] = [0.0, 0.0, 50.0, 50.0, 1.0, -1.0, -50.0, 50.0];

fn model() -> FakeModel {
    FakeModel::new(vec![
        FakeNode::input("q", 2),
        FakeNode::other("feat", 3),
        FakeNode::linear("head", 2, 3, vec![0.0; 6], None),
    ])
}

fn config() -> Config {
    Config {
        sites: vec![SiteConfig::new("feat", "gamma", "beta")],
        pool: Some(PoolConfig::new("keys", "q", 2)),
        head: Some(HeadConfig { node: "head".into(), weight: "head_w".into(), bias: Some("head_b".into()) }),
    }
}

/// Saves the example with `save` and loads it back through `load_file`.
fn load_example(dir: &TempDir) -> SsfPoolAdapter {
    let path = dir.file("example.safetensors");
    save(
        &path,
        &config(),
        &[
            ("keys", vec![4, 2], &KEYS),
            ("gamma", vec![4, 3], &GAMMA),
            ("beta", vec![4, 3], &BETA),
            ("head_w", vec![4, 2, 3], &HEAD_W),
            ("head_b", vec![4, 2], &HEAD_B),
        ],
    )
    .unwrap();
    load_path(&model(), &path, "").unwrap()
}

#[test]
fn worked_example() {
    let dir = TempDir::new("example");
    let a = load_example(&dir);
    let m = model();
    assert_eq!(
        a.targets().as_slice(),
        [
            Target { node: m.index("q"), hook: HookKind::Tap, flags: Target::BASE },
            Target::new(m.index("feat"), HookKind::Post).with(Target::READS_STATE),
            Target::new(m.index("head"), HookKind::LinearDelta).with(Target::READS_STATE),
        ]
    );
    assert_eq!(a.state_floats(), 3 + 3 + 2);

    let mut state = vec![0f32; a.state_floats()];
    tap(&a, 0, &[2.0, 1.0], 2, &mut state).unwrap();
    assert_eq!(&state[6..], [2.0, 0.0], "I = [2, 0]");
    assert_close(&state[0..3], &[1.1, 0.9, 1.0], 1e-7);
    assert_close(&state[3..6], &[0.1, -0.1, 0.0], 1e-7);

    let mut h = [1.0f32, 2.0, 3.0];
    post(&a, 1, &mut h, 3, &state, 1.0).unwrap();
    assert_close(&h, &[1.2, 1.7, 3.0], 1e-6);

    // The head replaces the layer output whatever it was.
    let mut y = [123.0f32, f32::NAN];
    delta(&a, 2, &h, 3, &mut y, 2, &state, 1.0).unwrap();
    assert_close(&y, &[2.6, 0.95], 1e-6);
}

#[test]
fn multiplier_interpolates_from_identity() {
    let dir = TempDir::new("scale");
    let a = load_example(&dir);
    let mut state = vec![0f32; a.state_floats()];
    tap(&a, 0, &[2.0, 1.0], 2, &mut state).unwrap();

    // γ' = 1 + m(γ − 1) = [1.05, 0.95, 1], β' = mβ = [0.05, −0.05, 0].
    let mut h = [1.0f32, 2.0, 3.0];
    post(&a, 1, &mut h, 3, &state, 0.5).unwrap();
    assert_close(&h, &[1.1, 1.85, 3.0], 1e-6);
    // m = 0: untouched, bit for bit (−0.0 stays −0.0).
    let mut h0 = [1.0f32, -0.0, 3.0];
    post(&a, 1, &mut h0, 3, &state, 0.0).unwrap();
    assert_eq!(h0.map(f32::to_bits), [1.0f32, -0.0, 3.0].map(f32::to_bits));
    // m = 2 extrapolates: γ' = [1.2, 0.8, 1], β' = [0.2, −0.2, 0].
    let mut h2 = [1.0f32, 2.0, 3.0];
    post(&a, 1, &mut h2, 3, &state, 2.0).unwrap();
    assert_close(&h2, &[1.4, 1.4, 3.0], 1e-6);

    // Head: y = (1 − m)·y_base + m·y_head.
    let hf = [1.2f32, 1.7, 3.0];
    let mut y = [4.0f32, -2.0];
    delta(&a, 2, &hf, 3, &mut y, 2, &state, 0.25).unwrap();
    assert_close(&y, &[0.75 * 4.0 + 0.25 * 2.6, 0.75 * -2.0 + 0.25 * 0.95], 1e-6);
    let mut y = [4.0f32, -2.0];
    delta(&a, 2, &hf, 3, &mut y, 2, &state, 0.0).unwrap();
    assert_eq!(y, [4.0, -2.0]);

    for bad in [f32::NAN, f32::INFINITY] {
        assert_err(post(&a, 1, &mut h, 3, &state, bad), ErrorCode::BAD_CALL, "feat");
        assert_err(delta(&a, 2, &hf, 3, &mut y, 2, &state, bad), ErrorCode::BAD_CALL, "head");
    }
}

/// Cosine top-2 and the averaged head, in f64, row by row.
fn reference(q: &[f32], h: &[f32], y_base: &[f32], m: f64) -> ([usize; 2], Vec<f64>, Vec<f64>) {
    let norm = |v: &[f32]| v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt().max(1e-12);
    let nq = norm(q);
    let mut sims: Vec<(f64, usize)> = (0..4)
        .map(|p| {
            let k = &KEYS[p * 2..p * 2 + 2];
            let nk = norm(k);
            (q.iter().zip(k).map(|(&a, &b)| f64::from(a) / nq * f64::from(b) / nk).sum(), p)
        })
        .collect();
    sims.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    let sel = [sims[0].1, sims[1].1];
    let gamma: Vec<f64> = (0..3).map(|c| sel.iter().map(|&p| f64::from(GAMMA[p * 3 + c])).sum::<f64>() / 2.0).collect();
    let y: Vec<f64> = (0..2)
        .map(|o| {
            let head: f64 = sel
                .iter()
                .map(|&p| {
                    let w = &HEAD_W[p * 6 + o * 3..p * 6 + o * 3 + 3];
                    w.iter().zip(h).map(|(&w, &x)| f64::from(w) * f64::from(x)).sum::<f64>()
                        + f64::from(HEAD_B[p * 2 + o])
                })
                .sum::<f64>()
                / 2.0;
            (1.0 - m) * f64::from(y_base[o]) + m * head
        })
        .collect();
    (sel, gamma, y)
}

#[test]
fn head_over_rows_with_different_selections() {
    let dir = TempDir::new("rows");
    let a = load_example(&dir);
    let sf = a.state_floats();
    // Rows chosen to select different entry pairs, plus the zero query ([0, 1]).
    let q: Vec<f32> = vec![2.0, 1.0, 0.0, 1.0, -1.0, 0.4, 0.0, 0.0, 1.0, 1.0, -3.0, 1.0, 0.5, 2.0];
    let rows = q.len() / 2;
    let h: Vec<f32> = (0..rows * 3).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
    let y_base: Vec<f32> = (0..rows * 2).map(|i| (i as f32 * 0.11).cos()).collect();
    let mut state = vec![0f32; rows * sf];
    tap(&a, 0, &q, 2, &mut state).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for m in [1.0f32, 0.3] {
        let mut y = y_base.clone();
        delta(&a, 2, &h, 3, &mut y, 2, &state, m).unwrap();
        for i in 0..rows {
            let (sel, gamma, want) =
                reference(&q[i * 2..i * 2 + 2], &h[i * 3..i * 3 + 3], &y_base[i * 2..i * 2 + 2], f64::from(m));
            let row = &state[i * sf..(i + 1) * sf];
            assert_eq!([row[6] as usize, row[7] as usize], sel, "row {i}");
            seen.insert(sel);
            for c in 0..3 {
                assert!((f64::from(row[c]) - gamma[c]).abs() < 1e-6, "row {i}");
            }
            for o in 0..2 {
                assert!((f64::from(y[i * 2 + o]) - want[o]).abs() < 1e-5, "row {i}: {} vs {}", y[i * 2 + o], want[o]);
            }
        }
        // Row chunks give the same bits.
        let mut y_split = y_base.clone();
        let cut = 3;
        delta(&a, 2, &h[..cut * 3], 3, &mut y_split[..cut * 2], 2, &state[..cut * sf], m).unwrap();
        delta(&a, 2, &h[cut * 3..], 3, &mut y_split[cut * 2..], 2, &state[cut * sf..], m).unwrap();
        assert_eq!(y_split, y);
    }
    assert!(seen.len() >= 4, "{seen:?}");
    assert!(seen.contains(&[0, 1]), "the zero row");
}

#[test]
fn inspect_without_a_model() {
    let dir = TempDir::new("inspect");
    let _ = load_example(&dir);
    let info = inspect_file(&dir.file("example.safetensors")).unwrap();
    assert_eq!(info.kind.as_str(), "ssf-pool");
    let summary: Vec<(&str, &str, u64)> =
        info.targets.iter().map(|t| (t.module.as_str(), t.variant.as_str(), t.bytes)).collect();
    assert_eq!(
        summary,
        [("q", "fedins-query", 8 * 4), ("feat", "ssf-pool", 24 * 4), ("head", "fedins-head", (24 + 8) * 4)]
    );
    let notes: Vec<&str> = info.notes.iter().map(|n| n.as_str()).collect();
    for want in ["pool_size=4", "top_k=2", "config=file", "format_version=1"] {
        assert!(notes.contains(&want), "{notes:?}");
    }
    assert!(notes.iter().any(|n| n.contains("without a model")));
    assert_err(inspect_file(&dir.file("missing.safetensors")), ErrorCode::IO, &dir.file("missing.safetensors"));
}
