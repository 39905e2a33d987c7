//! The `mlp_ssf_pool` fixture (tests/fixtures/README.md §3): a 12-48-24-1 MLP with a
//! FedIns SSF pool (P = 6, top-2 by cosine with the raw input as query), 40 rows including
//! an all-zero query and exact ties. The MLP runs by hand here, calling the tap and the
//! posts where the host would; the expected values come from torch.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use graft_plugin_abi::abi_stable::std_types::RStr;
use graft_plugin_abi::{Adapter, HookKind, LoadRequest, NodeOp, Target};
use graft_plugin_ssf_pool::SsfPoolAdapter;
use safetensors::SafeTensors;

const ROWS: usize = 40;
const D: usize = 12;
const C1: usize = 48;
const C2: usize = 24;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mlp_ssf_pool")
}

fn tensor(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap();
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn model() -> FakeModel {
    let bytes = std::fs::read(dir().join("weights.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let linear = |name: &str, key: &str, out: usize, inf: usize| {
        FakeNode::linear(
            name,
            out,
            inf,
            tensor(&st, &format!("{key}.weight")),
            Some(tensor(&st, &format!("{key}.bias"))),
        )
    };
    FakeModel::new(vec![
        FakeNode::input("x", D),
        linear("/fc1/Gemm", "fc1", C1, D),
        linear("/fc2/Gemm", "fc2", C2, C1),
        linear("/fc3/Gemm", "fc3", 1, C2),
    ])
}

/// The config the fixture's `pool_config.json` describes, as a load option (the fixture
/// file has no `graft.adapter` metadata).
const OPTIONS: &str = r#"{"config": {
    "kind": "ssf-pool", "format_version": 1,
    "sites": [ {"node": "/fc1/Gemm", "gamma": "gamma_1", "beta": "beta_1"},
               {"node": "/fc2/Gemm", "gamma": "gamma_2", "beta": "beta_2"} ],
    "pool": { "keys": "keys", "query": "x", "top_k": 2, "query_eps": 1e-12 } }}"#;

fn load_fixture(m: &FakeModel) -> SsfPoolAdapter {
    load_path(m, dir().join("pool.safetensors").to_str().unwrap(), OPTIONS).unwrap()
}

fn relu(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = x.max(0.0));
}

/// The MLP over `x` with the adapter's hooks: tap at the input, post after each of fc1 and
/// fc2 (before the ReLU). Returns (state, logits).
fn forward(a: &SsfPoolAdapter, m: &FakeModel, x: &[f32], scale: f32) -> (Vec<f32>, Vec<f32>) {
    let rows = x.len() / D;
    let sf = a.state_floats();
    let mut state = vec![0f32; rows * sf];
    tap(a, 0, x, D, &mut state).unwrap();
    let mut h1 = m.node("/fc1/Gemm").forward(x);
    post(a, 1, &mut h1, C1, &state, scale).unwrap();
    relu(&mut h1);
    let mut h2 = m.node("/fc2/Gemm").forward(&h1);
    post(a, 2, &mut h2, C2, &state, scale).unwrap();
    relu(&mut h2);
    (state, m.node("/fc3/Gemm").forward(&h2))
}

/// `forward` over row chunks of the given sizes, concatenated.
fn forward_chunked(a: &SsfPoolAdapter, m: &FakeModel, x: &[f32], chunks: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let (mut state, mut logits, mut start) = (Vec::new(), Vec::new(), 0);
    for &n in chunks {
        let (s, l) = forward(a, m, &x[start * D..(start + n) * D], 1.0);
        state.extend(s);
        logits.extend(l);
        start += n;
    }
    assert_eq!(start, ROWS);
    (state, logits)
}

#[test]
fn targets_state_and_info() {
    let m = model();
    let a = load_fixture(&m);
    let t = a.targets();
    assert_eq!(t.len(), 3);
    assert_eq!(t[0], Target { node: m.index("x"), hook: HookKind::Tap, flags: Target::BASE });
    assert_eq!(t[1], Target::new(m.index("/fc1/Gemm"), HookKind::Post).with(Target::READS_STATE));
    assert_eq!(t[2], Target::new(m.index("/fc2/Gemm"), HookKind::Post).with(Target::READS_STATE));
    assert_eq!(m.node("x").op, NodeOp::Input);
    assert_eq!(a.state_floats(), 2 * C1 + 2 * C2 + 2);
    assert_eq!(a.gamma_columns(0), Some(0..C1));
    assert_eq!(a.beta_columns(1), Some(2 * C1 + C2..2 * C1 + 2 * C2));
    assert_eq!(a.selection_columns(), Some(2 * C1 + 2 * C2..2 * C1 + 2 * C2 + 2));
    assert_eq!(a.pool_shape(), Some((6, 2)));

    let info = a.info();
    assert_eq!(info.kind.as_str(), "ssf-pool");
    let variants: Vec<&str> = info.targets.iter().map(|t| t.variant.as_str()).collect();
    assert_eq!(variants, ["fedins-query", "ssf-pool", "ssf-pool"]);
    assert_eq!(info.targets[0].bytes, 6 * 12 * 4);
    assert_eq!(info.targets[1].bytes, 2 * 6 * 48 * 4);
    assert!(info.targets.iter().all(|t| t.rank == 0));
    let notes: Vec<&str> = info.notes.iter().map(|n| n.as_str()).collect();
    for want in ["pool_size=6", "top_k=2", "config=load option", "base_query=true", "query=x"] {
        assert!(notes.contains(&want), "{notes:?}");
    }
    // A pool has no fold into the weights.
    let mut w = vec![0f32; C1 * D];
    let mut b = vec![0f32; C1];
    let r = a.merge(
        1,
        graft_plugin_abi::MatViewMut::new(&mut w, C1, D, D).unwrap(),
        graft_plugin_abi::abi_stable::std_types::RSliceMut::from_mut_slice(&mut b),
    );
    assert_err(r.into_result(), graft_plugin_abi::ErrorCode::UNSUPPORTED, "merge");
}

#[test]
fn selection_state_and_logits_match_torch() {
    let m = model();
    let a = load_fixture(&m);
    let x = read_f32(&dir().join("inputs.f32"));
    assert_eq!(x.len(), ROWS * D);
    let (state, logits) = forward(&a, &m, &x, 1.0);
    let sf = a.state_floats();

    // Selection: exact on every row, order included (ties, the zero row, near-key rows).
    let want_idx = read_i64(&dir().join("topk_indices.i64"));
    let sel = a.selection_columns().unwrap();
    for i in 0..ROWS {
        let got: Vec<i64> = state[i * sf..][sel.clone()].iter().map(|&v| v as i64).collect();
        assert_eq!(got, want_idx[i * 2..i * 2 + 2], "row {i}");
        assert!(state[i * sf..][sel.clone()].iter().all(|v| v.fract() == 0.0));
    }
    assert_eq!(&want_idx[35 * 2..36 * 2], [0, 1], "the zero row selects [0, 1]");
    assert_eq!(&want_idx[36 * 2..38 * 2], [1, 4, 1, 4], "first-place ties");

    // Averaged γ/β per row: bit for bit (a uniform mean of two f32 entries, as torch
    // computes it), as the README states.
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    for (site, c) in [(0usize, C1), (1, C2)] {
        let n = site + 1;
        let want_g = read_f32(&dir().join(format!("expected_gamma_{n}.f32")));
        let want_b = read_f32(&dir().join(format!("expected_beta_{n}.f32")));
        for i in 0..ROWS {
            let row = &state[i * sf..(i + 1) * sf];
            let (g, b) = (&row[a.gamma_columns(site).unwrap()], &row[a.beta_columns(site).unwrap()]);
            assert_eq!(bits(g), bits(&want_g[i * c..(i + 1) * c]), "γ site {n} row {i}: {g:?}");
            assert_eq!(bits(b), bits(&want_b[i * c..(i + 1) * c]), "β site {n} row {i}: {b:?}");
        }
    }

    // Logits of the adapted MLP (measured 7.2e-7; the README states it).
    let want = read_f32(&dir().join("out_pool_logits.f32"));
    let worst = logits.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
    println!("pool logits vs torch: max |Δ| {worst:.2e}");
    assert!(worst <= 1e-6, "pool logits vs torch: max |Δ| {worst} > 1e-6");
    // The pool really changes the outputs (the fixture's own sanity check).
    let base = read_f32(&dir().join("out_base_logits.f32"));
    let mean_diff: f32 = logits.iter().zip(&base).map(|(a, b)| (a - b).abs()).sum::<f32>() / ROWS as f32;
    assert!(mean_diff > 0.02, "{mean_diff}");
}

#[test]
fn rows_are_independent_of_chunking() {
    let m = model();
    let a = load_fixture(&m);
    let x = read_f32(&dir().join("inputs.f32"));
    let whole = forward(&a, &m, &x, 1.0);
    for chunks in [&[7, 33][..], &[1; ROWS][..], &[13, 1, 5, 21][..], &[0, 40, 0][..]] {
        let split = forward_chunked(&a, &m, &x, chunks);
        // Bitwise: a row's result never depends on the rows it shares a call with.
        assert_eq!(
            split.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            whole.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{chunks:?}"
        );
        assert_eq!(
            split.1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            whole.1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{chunks:?}"
        );
    }
}

#[test]
fn tie_rows_take_the_exact_fallback() {
    let m = model();
    let a = load_fixture(&m);
    let x = read_f32(&dir().join("inputs.f32"));
    let sf = a.state_floats();
    // One row per call, so the counter says which rows the f32 ranking could not certify.
    let mut fell_back = Vec::new();
    for i in 0..ROWS {
        let before = a.fallback_rows();
        let mut state = vec![0f32; sf];
        tap(&a, 0, &x[i * D..(i + 1) * D], D, &mut state).unwrap();
        match a.fallback_rows() - before {
            0 => {}
            1 => fell_back.push(i),
            n => panic!("row {i}: {n} fallbacks for one row"),
        }
    }
    // The zero query (35) and the exact ties for first (36, 37) and second place (38, 39)
    // must be decided by the f64 reference; every other row of the fixture (D = 12) is
    // clear of the f32 error bound and must not pay for it.
    assert_eq!(fell_back, [35, 36, 37, 38, 39]);
    // The whole batch falls back on exactly the same rows.
    let before = a.fallback_rows();
    forward(&a, &m, &x, 1.0);
    assert_eq!(a.fallback_rows() - before, fell_back.len() as u64);
}

#[test]
fn multiplier_zero_gives_the_base_model() {
    let m = model();
    let a = load_fixture(&m);
    let x = read_f32(&dir().join("inputs.f32"));
    let (_, logits) = forward(&a, &m, &x, 0.0);
    assert_close(&logits, &read_f32(&dir().join("out_base_logits.f32")), 1e-5);
    // Halfway lies between base and pool on every row only approximately (ReLU), but
    // must differ from both.
    let (_, half) = forward(&a, &m, &x, 0.5);
    let (_, full) = forward(&a, &m, &x, 1.0);
    assert!(half.iter().zip(&full).any(|(h, f)| (h - f).abs() > 1e-3));
    assert!(half.iter().zip(&logits).any(|(h, b)| (h - b).abs() > 1e-3));
}

#[test]
fn through_the_root_module() {
    let m = model();
    let path = dir().join("pool.safetensors");
    let source = path.to_str().unwrap();
    let module = graft_plugin_ssf_pool::module();
    assert_eq!((module.kind())().as_str(), "ssf-pool");
    assert_eq!(module.abi_version(), graft_plugin_abi::ABI_VERSION);
    let req =
        LoadRequest { id: RStr::from_str("pool"), source: RStr::from_str(source), options: RStr::from_str(OPTIONS) };
    let boxed = (module.load())(req, m.view()).into_result().unwrap();
    let x = read_f32(&dir().join("inputs.f32"));
    let sf = boxed.state_floats();
    let mut state = vec![0f32; ROWS * sf];
    tap(&boxed, 0, &x, D, &mut state).unwrap();
    let want_idx = read_i64(&dir().join("topk_indices.i64"));
    for i in 0..ROWS {
        assert_eq!([state[i * sf + sf - 2] as i64, state[i * sf + sf - 1] as i64], want_idx[i * 2..i * 2 + 2]);
    }
    // Without the config option the fixture file has no config: a typed error.
    let req = LoadRequest { id: RStr::from_str("pool"), source: RStr::from_str(source), options: RStr::from_str("") };
    let e = (module.load())(req, m.view()).into_result().unwrap_err();
    assert_eq!((e.code, e.field.as_str()), (graft_plugin_abi::ErrorCode::CONFIG, "graft.adapter"));
}
