//! Stage 6 of the demo: the Adapters II kinds on the same model.
//!
//! - a FedIns SSF pool (per-row top-2 of 16 entries by cosine against the base value of
//!   the interaction vector, scale-shift after both hidden top layers), and an AdaptDHM
//!   routing adapter (4 clusters over the interaction vector, towers replacing the
//!   logit): batch-1 overhead of each, measured alternately with the base run;
//! - a ReLoop2 error memory keyed on the bottom MLP's output (the dense-feature
//!   representation), fed with simulated labels from a stream whose click rate drifts
//!   away from what the base model predicts in one region of the dense-feature space:
//!   per window, the logloss of the base prediction and of the compensated one, with
//!   each batch's labels fed back after its predictions.
//!
//! The synthetic ground truth is `p = σ(z + drift · tanh(3 u·x / ‖x‖))`, with `z` the
//! base logit, `x` the request's dense features and `u` a fixed random direction;
//! `drift` ramps from 0 to 1.5 over the first half of the stream. The base model cannot
//! follow it; the memory learns the error per LSH bucket of the representation of `x`.

use std::time::Instant;

use graft::adapters::{Registry, RowAdapters};
use graft::synthetic::kinds::{SsfPoolSpec, write_error_memory, write_routing, write_ssf_pool};
use graft::synthetic::{Batch, Rng};
use graft::{Error, Result, Session};

use super::adapters::{AdapterStage, batch1_medians};
use crate::report::{Latencies, micros};

/// Windows the drifting stream is reported in.
const WINDOWS: usize = 8;
/// Batch-1 runs per configuration in the overhead measurement.
const PAIRS: usize = 1000;

pub fn stage(s: &AdapterStage<'_>) -> Result<()> {
    let root = s.dir.join("kinds");
    let (top, last) = (s.spec.top.len(), s.spec.top.len() + 1);
    let sites: Vec<String> = (1..=top).map(|i| format!("top_fc{i}")).collect();
    let site_refs: Vec<&str> = sites.iter().map(String::as_str).collect();
    let logit = format!("top_fc{last}");
    let key = format!("bot_fc{}_relu", s.spec.bottom.len());
    let pool = SsfPoolSpec { query: "interaction", sites: &site_refs, pool: 16, top_k: 2, strength: 0.1, seed: 61 };
    write_ssf_pool(s.model, &root.join("pool.safetensors"), &pool)?;
    write_routing(s.model, &root.join("routing.safetensors"), "interaction", &logit, 4, &[64], 62)?;
    write_error_memory(&root.join("memory.safetensors"), &key, "prob", 8, 6, 1.0)?;
    let registry = Registry::new(s.model);
    for id in ["pool", "routing", "memory"] {
        let t = Instant::now();
        let adapter = registry.load_path(id, root.join(format!("{id}.safetensors")), "")?;
        let notes: Vec<&str> = adapter.info().notes.iter().map(|n| n.as_str()).collect();
        println!("kinds   {id}: {} loaded in {} ({})", adapter.kind(), micros(t.elapsed()), notes.join(", "));
        registry.insert(adapter)?;
    }
    let mut session = Session::new(s.model, s.options)?;
    for id in ["pool", "routing"] {
        let rows = RowAdapters::all(&registry, id)?;
        let (b, w) = batch1_medians(s, &mut session, &rows, PAIRS.min(s.args.requests.max(10) * 10))?;
        println!(
            "        {id:<8} batch 1 p50 {} vs base {}: overhead {:+.1}%",
            micros(w),
            micros(b),
            (w.as_secs_f64() / b.as_secs_f64() - 1.0) * 100.0
        );
    }
    drifting_stream(s, &registry, &mut session)?;
    if !s.args.keep {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// The memory's gain over the base in percent: the relative logloss reduction, positive
/// when the memory's logloss is lower, negative when it is worse.
fn gain_percent(base: f64, memory: f64) -> f64 {
    (1.0 - memory / base) * 100.0
}

fn logloss(p: f64, y: f64) -> f64 {
    let p = p.clamp(1e-7, 1.0 - 1e-7);
    -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
}

/// Serves the drifting stream with the error memory, feeding labels back per batch.
fn drifting_stream(s: &AdapterStage<'_>, registry: &Registry, session: &mut Session) -> Result<()> {
    let memory = RowAdapters::all(registry, "memory")?;
    let batch_rows = s.args.batch;
    let mut stream = graft::synthetic::Requests::new(s.spec, 4242);
    let mut labels_rng = Rng::new(4343);
    let dense = s.spec.dense;
    let mut direction_rng = Rng::new(4444);
    let direction: Vec<f64> = (0..dense).map(|_| direction_rng.normal() as f64).collect();
    let window = (s.args.stream_rows / WINDOWS).max(batch_rows);
    let total = window * WINDOWS;
    println!(
        "memory  drifting stream: {WINDOWS} windows × {window} rows, labels fed back after each batch of {batch_rows}"
    );
    println!("        {:>6} {:>8} {:>13} {:>13} {:>8}", "window", "drift", "logloss base", "with memory", "gain");
    // Per window: summed base logloss, summed memory logloss, rows.
    let (mut served, mut sums) = (0usize, (0.0f64, 0.0f64, 0usize));
    let mut feedback = Latencies::default();
    while served < total {
        let batch: Batch = stream.batch(batch_rows);
        let inputs = batch.inputs(s.spec, s.names);
        let drift = 1.5 * (served as f64 / (total as f64 / 2.0)).min(1.0);
        let base_logits: Vec<f64> = {
            let out = session.run(&inputs)?;
            let z = out.get("logit").ok_or_else(|| Error::InvalidOption { detail: "no logit output".into() })?;
            z.iter().map(|&v| v as f64).collect()
        };
        let labels: Vec<f32> = (0..batch_rows)
            .map(|r| {
                let x = &batch.dense[r * dense..(r + 1) * dense];
                let norm = x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt().max(1e-9);
                let side = (3.0 * x.iter().zip(&direction).map(|(&a, b)| a as f64 * b).sum::<f64>() / norm).tanh();
                let p = sigmoid(base_logits[r] + drift * side);
                if (labels_rng.uniform() as f64) < p { 1.0 } else { 0.0 }
            })
            .collect();
        let out = session.run_with(&inputs, &memory)?;
        let probs = out.get("prob").ok_or_else(|| Error::InvalidOption { detail: "no prob output".into() })?;
        for r in 0..batch_rows {
            sums.0 += logloss(sigmoid(base_logits[r]), labels[r] as f64);
            sums.1 += logloss(probs[r] as f64, labels[r] as f64);
            sums.2 += 1;
        }
        let t = Instant::now();
        for ticket in out.tickets() {
            ticket.feedback(labels[ticket.row])?;
        }
        feedback.push(t.elapsed() / batch_rows as u32);
        served += batch_rows;
        if sums.2 >= window {
            let (b, m) = (sums.0 / sums.2 as f64, sums.1 / sums.2 as f64);
            println!("        {:>6} {drift:>8.2} {b:>13.4} {m:>13.4} {:>+7.1}%", served / window, gain_percent(b, m));
            sums = (0.0, 0.0, 0);
        }
    }
    println!("        feedback p50 {} per label (LSH insert)", micros(feedback.quantile(0.5)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::gain_percent;

    /// Hand-worked: base 0.5, memory 0.4 is a 20 % reduction (a gain); memory 0.6 is 20 %
    /// worse (a loss), so the column's sign says which way the memory moved logloss.
    #[test]
    fn gain_is_positive_when_the_memory_lowers_logloss() {
        assert!((gain_percent(0.5, 0.4) - 20.0).abs() < 1e-12);
        assert!((gain_percent(0.5, 0.6) + 20.0).abs() < 1e-12);
        assert_eq!(gain_percent(0.5, 0.5), 0.0);
    }
}
