//! The Adapters II kinds through the whole runtime: ONNX import, the registry, per-row
//! adapter sets and tickets.
//!
//! - `mlp_ssf_pool`: the fixture's FedIns pool on the imported base matches torch
//!   (≤ 1e-5 on logits) in one batch, mixed with base rows, and at 3 threads;
//! - the error memory learns from tickets through `Ticket::feedback`, saves its state
//!   and restores it into a fresh registry with the same estimates;
//! - routing replaces the logit with the routed tower's output, checked against an f64
//!   reference computed from the fixture's torch weights and the routing file alone.

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

/// The f32 tensors of a safetensors file by name, widened to f64.
fn tensors_f64(path: &std::path::Path) -> TestResult<std::collections::HashMap<String, Vec<f64>>> {
    let bytes = std::fs::read(path)?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(format!("{name}: not f32").into());
            }
            let v = view.data().chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            Ok((name, v.collect()))
        })
        .collect()
}

/// The routed logit of every row, computed here in f64 from the two files alone
/// (algorithms.md §4.1, hard routing, no bias): the base MLP's `/Relu` value
/// `h = relu(W₁x + b₁)` from the fixture's torch state dict, `κ = argmax_j ⟨h, c_j⟩`
/// (ties to the lower index), then `a ← relu(a (W⁰_ℓ ⊙ W^κ_ℓ))` on the hidden layer and
/// `a (W⁰ ⊙ W^κ)` on the last, with the tower weights stored `(in, out)`. Also returns
/// each row's gap between its best and second-best center score.
fn routing_reference(x: &[f32], routing: &std::path::Path, dims: &[usize]) -> TestResult<Vec<(f64, f64)>> {
    let base = tensors_f64(&fixture("mlp_ssf_pool/weights.safetensors"))?;
    let route = tensors_f64(routing)?;
    let get = |m: &std::collections::HashMap<String, Vec<f64>>, k: &str| m.get(k).cloned().ok_or(format!("no `{k}`"));
    let (w1, b1, centers) = (get(&base, "fc1.weight")?, get(&base, "fc1.bias")?, get(&route, "centers")?);
    let (d, k) = (dims[0], centers.len() / dims[0]);
    let mut out = Vec::new();
    for row in x.chunks_exact(IN) {
        // fc1 is stored torch-style [out, in].
        let h: Vec<f64> = (0..d)
            .map(|o| (b1[o] + (0..IN).map(|i| w1[o * IN + i] * f64::from(row[i])).sum::<f64>()).max(0.0))
            .collect();
        let scores: Vec<f64> = (0..k).map(|j| (0..d).map(|i| h[i] * centers[j * d + i]).sum()).collect();
        let kappa = (0..k).fold(0, |best, j| if scores[j] > scores[best] { j } else { best });
        let second = (0..k).filter(|&j| j != kappa).map(|j| scores[j]).fold(f64::NEG_INFINITY, f64::max);
        let mut a = h;
        for l in 0..dims.len() - 1 {
            let (i_n, o_n) = (dims[l], dims[l + 1]);
            let (w0, wk) =
                (get(&route, &format!("shared.{l}.weight"))?, get(&route, &format!("cluster.{kappa}.{l}.weight"))?);
            let last = l + 2 == dims.len();
            a = (0..o_n)
                .map(|o| {
                    let z: f64 = (0..i_n).map(|i| a[i] * w0[i * o_n + o] * wk[i * o_n + o]).sum();
                    if last { z } else { z.max(0.0) }
                })
                .collect();
        }
        out.push((a[0], scores[kappa] - second));
    }
    Ok(out)
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
    // The expectation comes from the files, not from graft: routed rows get the f64
    // tower output, base rows torch's logit.
    let reference = routing_reference(&x, &path, &[48, 8, 1])?;
    let clear = reference.iter().filter(|(_, gap)| *gap > 1e-4).count();
    assert_eq!(clear, ROWS, "every row's routing decision is clear (so f32 rounding cannot flip it)");
    assert!(reference.iter().zip(&base).filter(|((r, _), b)| (r - f64::from(**b)).abs() > 1e-3).count() > ROWS / 2);
    let all = logits(&model, &x, &RowAdapters::all(&registry, "route")?, 1)?;
    let mut mixed = RowAdapters::new(&registry);
    for r in 0..ROWS {
        if r % 2 == 0 { mixed.push("route")? } else { mixed.push_base()? }
    }
    let got = logits(&model, &x, &mixed, 2)?;
    let mut worst = 0.0f64;
    for r in 0..ROWS {
        let routed = reference[r].0;
        let err = (f64::from(all[r]) - routed).abs();
        worst = worst.max(err);
        assert!(err <= 1e-5, "row {r}, every row routed: {} vs f64 reference {routed}", all[r]);
        let want = if r % 2 == 0 { routed } else { f64::from(base[r]) };
        assert!((f64::from(got[r]) - want).abs() <= 1e-5, "row {r}, mixed at 2 threads: {} vs {want}", got[r]);
    }
    println!("routing vs the f64 reference: max |Δlogit| {worst:.2e}");
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
