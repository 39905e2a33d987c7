//! The Adapters II kinds through the whole runtime: ONNX import, the registry, per-row
//! adapter sets and tickets.
//!
//! - `mlp_ssf_pool`: the fixture's FedIns pool on the imported base matches torch
//!   (≤ 1e-5 on logits) in one batch, mixed with base rows, and at 3 threads;
//! - the error memory learns from tickets through `Ticket::feedback`, saves its state
//!   and restores it into a fresh registry with the same estimates;
//! - routing replaces the logit with the routed tower's output.

mod common_adapters;

use common_adapters::{TestResult, bits, open_built, scratch};
use graft::adapters::{Registry, RowAdapters};
use graft::synthetic::kinds::{write_error_memory, write_routing};
use graft::{Input, Model, Session, SessionOptions};
use graft_tests::{fixture, read_f32};

const ROWS: usize = 40;
const IN: usize = 12;

fn pool_model(dir: &std::path::Path) -> TestResult<Model> {
    open_built(&graft::onnx::import(&fixture("mlp_ssf_pool/model.onnx"))?, dir)
}

/// The fixture's `pool_config.json` in the kind's schema (the fixture file carries no
/// `graft.adapter` metadata, so the configuration comes through the load options).
const POOL_OPTIONS: &str = r#"{"config": {"kind": "ssf-pool", "format_version": 1,
    "sites": [{"node": "/fc1/Gemm", "gamma": "gamma_1", "beta": "beta_1"},
              {"node": "/fc2/Gemm", "gamma": "gamma_2", "beta": "beta_2"}],
    "pool": {"keys": "keys", "query": "x", "top_k": 2, "query_eps": 1e-12}}}"#;

fn logits(model: &Model, x: &[f32], rows: &RowAdapters, threads: usize) -> TestResult<Vec<f32>> {
    let mut session = Session::new(model, SessionOptions { max_batch: ROWS, threads, ..Default::default() })?;
    let out = session.run_with(&[Input::dense("x", x, IN)], rows)?;
    Ok(out.get("logit").ok_or("no logit")?.to_vec())
}

#[test]
fn ssf_pool_fixture_matches_torch_through_the_runtime() -> TestResult {
    let dir = scratch("kinds_pool")?;
    let model = pool_model(&dir)?;
    let registry = Registry::new(&model);
    let pool = fixture("mlp_ssf_pool/pool.safetensors");
    let pool = pool.to_str().ok_or("path")?;
    registry.insert(registry.load("ssf-pool", "pool", pool, POOL_OPTIONS)?)?;
    let x = read_f32(&fixture("mlp_ssf_pool/inputs.f32"))?;
    let want = read_f32(&fixture("mlp_ssf_pool/out_pool_logits.f32"))?;
    let base = read_f32(&fixture("mlp_ssf_pool/out_base_logits.f32"))?;
    let all = logits(&model, &x, &RowAdapters::all(&registry, "pool")?, 1)?;
    let worst = all.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 1e-5, "max |Δlogit| {worst}");
    // Every third row base only: pool rows keep their bits, base rows match the base.
    let mut mixed = RowAdapters::new(&registry);
    for r in 0..ROWS {
        if r % 3 == 2 { mixed.push_base()? } else { mixed.push("pool")? }
    }
    for threads in [1, 3] {
        let got = logits(&model, &x, &mixed, threads)?;
        for r in 0..ROWS {
            if r % 3 == 2 {
                assert!((got[r] - base[r]).abs() <= 1e-5, "base row {r}");
            } else {
                assert_eq!(got[r].to_bits(), all[r].to_bits(), "pool row {r} at {threads} threads");
            }
        }
    }
    Ok(())
}

#[test]
fn error_memory_learns_from_tickets_and_restores_its_state() -> TestResult {
    let dir = scratch("kinds_memory")?;
    let model = pool_model(&dir)?;
    let path = dir.join("memory.safetensors");
    // Keyed on the last hidden layer, compensating the logit node as a probability
    // would need a sigmoid node; the fixture's logit is the output, so compensate it in
    // logit units.
    write_error_memory(&path, "/Relu_1", "/fc3/Gemm", 4, 4, 1.0)?;
    let patch = r#"{"config": {"kind": "error-memory", "format_version": 1, "key_node": "/Relu_1",
        "output_node": "/fc3/Gemm", "output_is": "logit", "tables": 4, "bits": 4, "seed": 7,
        "estimate": "pooled", "lambda": 1.0, "space": "prob"}}"#;
    let registry = Registry::new(&model);
    registry.insert(registry.load_path("memory", &path, patch)?)?;
    let x = read_f32(&fixture("mlp_ssf_pool/inputs.f32"))?;
    let rows = RowAdapters::all(&registry, "memory")?;
    let mut session = Session::new(&model, SessionOptions { max_batch: ROWS, threads: 1, ..Default::default() })?;
    let before = {
        let out = session.run_with(&[Input::dense("x", &x, IN)], &rows)?;
        let tickets: Vec<_> = out.tickets().collect();
        assert_eq!(tickets.len(), ROWS, "one ticket per row");
        // Every row clicked: the memory learns that the model under-predicts.
        for t in &tickets {
            t.feedback(1.0)?;
        }
        let answered = tickets[0];
        let again = answered.feedback(1.0).err().ok_or("a ticket answered twice was accepted")?;
        assert!(again.to_string().contains("ticket"), "{again}");
        out.get("logit").ok_or("no logit")?.to_vec()
    };
    let after = session.run_with(&[Input::dense("x", &x, IN)], &rows)?.get("logit").ok_or("no logit")?.to_vec();
    assert!(after.iter().zip(&before).all(|(a, b)| a > b), "the compensation moved every logit up");
    // Save, then restore into a fresh registry: the same compensation.
    let state = dir.join("memory.state");
    registry.snapshot().require("memory")?.save_state(&state)?;
    let fresh = Registry::new(&model);
    let restored =
        patch.replacen("{\"config\"", &format!("{{\"state\": {:?}, \"config\"", state.to_str().ok_or("path")?), 1);
    fresh.insert(fresh.load_path("memory", &path, &restored)?)?;
    let rows = RowAdapters::all(&fresh, "memory")?;
    let again = session.run_with(&[Input::dense("x", &x, IN)], &rows)?.get("logit").ok_or("no logit")?.to_vec();
    assert_eq!(bits(&again), bits(&after));
    // State saved against this model is refused on another one.
    let other_dir = scratch("kinds_memory_other")?;
    let other = open_built(&graft::onnx::import(&fixture("dlrm_small/model.onnx"))?, &other_dir)?;
    let e = Registry::new(&other).load_path("memory", &path, &restored).err().ok_or("restored on another model")?;
    assert!(e.to_string().contains("state") || e.to_string().contains("unknown module"), "{e}");
    Ok(())
}

#[test]
fn routing_replaces_the_logit_per_row() -> TestResult {
    let dir = scratch("kinds_routing")?;
    let model = pool_model(&dir)?;
    let path = dir.join("routing.safetensors");
    write_routing(&model, &path, "/Relu", "/fc3/Gemm", 3, &[8], 5)?;
    let registry = Registry::new(&model);
    registry.insert(registry.load_path("route", &path, "")?)?;
    let x = read_f32(&fixture("mlp_ssf_pool/inputs.f32"))?;
    let base = read_f32(&fixture("mlp_ssf_pool/out_base_logits.f32"))?;
    let all = logits(&model, &x, &RowAdapters::all(&registry, "route")?, 1)?;
    assert!(all.iter().zip(&base).filter(|(a, b)| (*a - *b).abs() > 1e-3).count() > ROWS / 2);
    let mut mixed = RowAdapters::new(&registry);
    for r in 0..ROWS {
        if r % 2 == 0 { mixed.push("route")? } else { mixed.push_base()? }
    }
    let got = logits(&model, &x, &mixed, 2)?;
    for r in 0..ROWS {
        let want = if r % 2 == 0 { all[r] } else { base[r] };
        assert!((got[r] - want).abs() <= 1e-5, "row {r}: {} vs {want}", got[r]);
    }
    Ok(())
}

#[test]
fn static_ssf_folds_exactly_into_its_linears_and_pools_refuse_to_merge() -> TestResult {
    use graft::synthetic::kinds::write_adapter_file;
    let dir = scratch("kinds_ssf_merge")?;
    let model = pool_model(&dir)?;
    let (c1, c2) = (48, 24);
    let ramp = |n: usize, a: f32, b: f32| (0..n).map(|i| a + b * ((i as f32) * 0.37).sin()).collect::<Vec<f32>>();
    let config = serde_json::json!({"kind": "ssf-pool", "format_version": 1, "sites": [
        {"node": "fc1", "gamma": "g1", "beta": "b1"}, {"node": "/fc2/Gemm", "gamma": "g2", "beta": "b2"}]});
    let tensors = [
        ("g1".to_string(), vec![c1], ramp(c1, 1.0, 0.3)),
        ("b1".to_string(), vec![c1], ramp(c1, 0.0, 0.2)),
        ("g2".to_string(), vec![c2], ramp(c2, 1.0, -0.25)),
        ("b2".to_string(), vec![c2], ramp(c2, 0.05, 0.1)),
    ];
    let ssf = dir.join("ssf.safetensors");
    write_adapter_file(&ssf, &config, &tensors)?;
    let registry = Registry::new(&model);
    let adapter = registry.load_path("ssf", &ssf, "")?;
    registry.insert(adapter.clone())?;
    let x = read_f32(&fixture("mlp_ssf_pool/inputs.f32"))?;
    let unmerged = logits(&model, &x, &RowAdapters::all(&registry, "ssf")?, 1)?;
    let base = read_f32(&fixture("mlp_ssf_pool/out_base_logits.f32"))?;
    assert!(unmerged.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-2), "the SSF changes outputs");
    let merged_path = dir.join("merged.graft");
    let report = graft::adapters::merge_to_file(&model, &adapter, &merged_path)?;
    assert_eq!(report.nodes, ["fc1", "fc2"]);
    let merged = Model::open(&merged_path)?;
    let folded = logits(&merged, &x, &RowAdapters::all_stack(&Registry::new(&merged), &[])?, 1)?;
    let worst = folded.iter().zip(&unmerged).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= 1e-5, "folded vs post op: {worst}");
    // A pool's parameters are per row: no fold.
    let pool = fixture("mlp_ssf_pool/pool.safetensors");
    let pool = registry.load("ssf-pool", "pool", pool.to_str().ok_or("path")?, POOL_OPTIONS)?;
    let e = graft::adapters::merge_to_file(&model, &pool, &dir.join("no.graft")).err().ok_or("pool merged")?;
    assert!(e.to_string().contains("graph input") || e.to_string().contains("unsupported"), "{e}");
    Ok(())
}
