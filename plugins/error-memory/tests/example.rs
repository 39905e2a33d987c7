//! The reference spec's worked example (§3.8) and the logit-space round trips, against
//! hand-computed numbers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::Adapter;
use graft_plugin_error_memory::{Config, ErrorMemory, Estimate, Units};

/// `R₀ = [[1, 0]]`, `R₁ = [[0, 1]]` as one `[L·p, d] = [2, 2]` tensor.
const R: [f32; 4] = [1.0, 0.0, 0.0, 1.0];
/// The three samples `(h, y, ŷ)`.
const SAMPLES: [([f32; 2], f32, f32); 3] = [([1.0, 1.0], 1.0, 0.6), ([1.0, -1.0], 0.0, 0.3), ([-1.0, 1.0], 1.0, 0.2)];

fn example_config() -> Config {
    let mut c = Config::new("h", "p");
    c.tables = 2;
    c.bits = 1;
    c.projections = Some("R".into());
    c.lambda = 0.5;
    c
}

fn example(dir: &TempDir, name: &str, c: &Config) -> ErrorMemory {
    let a = build(dir, name, &memory_model(2), c, &[("R", vec![2, 2], &R)], "").unwrap();
    for (h, y, y_hat) in SAMPLES {
        learn(&a, &h, y_hat, y);
    }
    a
}

#[test]
fn worked_example_pooled() {
    let dir = TempDir::new("pooled");
    let a = example(&dir, "pooled.safetensors", &example_config());
    assert_eq!(a.stats().inserts, 3);

    // Bucket sums as §3.8 states, read back from the saved state.
    let state = dir.file("state.safetensors");
    a.save_state(state.as_str().into()).into_result().unwrap();
    let (shape, s) = read_tensor(&state, "S");
    assert_eq!(shape, vec![2, 2]);
    let (_, c) = read_tensor(&state, "C");
    // T0: bucket0 (S=0.8, C=1), bucket1 (S=0.1, C=2); T1: bucket0 (S=−0.3, C=1), bucket1 (S=1.2, C=2).
    let want_s = [0.8f32, 0.1, -0.3, 1.2];
    for (got, want) in s.iter().zip(want_s) {
        assert!((got - want).abs() < 1e-6, "S = {s:?}");
    }
    assert_eq!(c, vec![1.0, 2.0, 1.0, 2.0]);

    // Query h = [2, 0.5], ŷ = 0.5, λ = 0.5: ê = 1.3/4 = 0.325, ŷ' = 0.6625.
    assert!((a.estimate(&[2.0, 0.5]).unwrap() - 0.325).abs() < 1e-6);
    let (y, ticket) = serve(&a, &[2.0, 0.5], 0.5, 1.0);
    assert!((y - 0.6625).abs() < 1e-6, "ŷ' = {y}");
    assert_eq!(ticket, 4);
    // The per-request multiplier scales λ: m = 2 gives 0.5 + 0.325.
    let (y, _) = serve(&a, &[2.0, 0.5], 0.5, 2.0);
    assert!((y - 0.825).abs() < 1e-6, "ŷ' = {y}");
    // Clipping to [0, 1].
    let (y, _) = serve(&a, &[2.0, 0.5], 0.9, 1.0);
    assert_eq!(y, 1.0);
}

#[test]
fn worked_example_exact() {
    let dir = TempDir::new("exact");
    let mut c = example_config();
    c.estimate = Estimate::Exact;
    c.top_k = Some(2);
    c.tau = 1.0;
    let a = example(&dir, "exact.safetensors", &c);
    // cos = [0.857493, 0.514496, −0.514496], N = [0, 1], w = [0.584918, 0.415082],
    // ê = 0.109443, ŷ' = 0.554721.
    assert!((a.estimate(&[2.0, 0.5]).unwrap() - 0.109443).abs() < 1e-6);
    let (y, _) = serve(&a, &[2.0, 0.5], 0.5, 1.0);
    assert!((y - 0.554721).abs() < 1e-6, "ŷ' = {y}");
}

#[test]
fn worked_example_topk() {
    // The hit buckets as pseudo-samples: T0 b1 has key ([1,1]+[1,−1])/2 = [1,0] and error
    // 0.05; T1 b1 has key [0,1] and error 0.6.
    let dir = TempDir::new("topk");
    let mut c = example_config();
    c.estimate = Estimate::TopK;
    let a = example(&dir, "topk.safetensors", &c);
    let q = [2.0f64, 0.5];
    let qn = (q[0] * q[0] + q[1] * q[1]).sqrt();
    let (c0, c1) = (q[0] / qn, q[1] / qn);
    let w0 = 1.0 / (1.0 + (c1 - c0).exp());
    let want = w0 * 0.05 + (1.0 - w0) * 0.6;
    assert!((a.estimate(&[2.0, 0.5]).unwrap() - want).abs() < 1e-6);
    let (y, _) = serve(&a, &[2.0, 0.5], 0.5, 1.0);
    assert!((f64::from(y) - (0.5 + 0.5 * want)).abs() < 1e-6);

    // k = 1 takes only the closer bucket (T0): ê = 0.05.
    let mut c = c.clone();
    c.top_k = Some(1);
    let a = example(&dir, "topk1.safetensors", &c);
    assert!((a.estimate(&[2.0, 0.5]).unwrap() - 0.05).abs() < 1e-6);
}

#[test]
fn empty_memory_leaves_output_untouched() {
    let dir = TempDir::new("empty");
    for output_is in [Units::Prob, Units::Logit] {
        for space in [Units::Prob, Units::Logit] {
            let mut c = example_config();
            c.output_is = output_is;
            c.space = space;
            let a = build(&dir, "e.safetensors", &memory_model(2), &c, &[("R", vec![2, 2], &R)], "").unwrap();
            for v in [0.0f32, 0.3, 1.0] {
                let v = if output_is == Units::Logit { v * 40.0 - 20.0 } else { v };
                assert_eq!(serve(&a, &[1.0, 1.0], v, 1.0).0, v);
            }
        }
    }
}

const EPS: f64 = 1e-6;

fn logit(p: f64) -> f64 {
    let p = p.clamp(EPS, 1.0 - EPS);
    (p / (1.0 - p)).ln()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// One sample `h = [1, 1]` with base prediction `ŷ` and label `y`; every query at
/// `[1, 1]` then recalls exactly its error.
fn one_sample(dir: &TempDir, output_is: Units, space: Units, base: f32, label: f32) -> ErrorMemory {
    let mut c = example_config();
    c.output_is = output_is;
    c.space = space;
    let a = build(dir, "l.safetensors", &memory_model(2), &c, &[("R", vec![2, 2], &R)], "").unwrap();
    let (_, t) = serve(&a, &[1.0, 1.0], base, 1.0);
    a.feedback(t, label).into_result().unwrap();
    a
}

#[test]
fn logit_space_with_logit_output() {
    let dir = TempDir::new("ll");
    // Base z = 0.4, label 1: e = logit(1 − 1e−6) − 0.4.
    let a = one_sample(&dir, Units::Logit, Units::Logit, 0.4, 1.0);
    let e = logit(1.0) - logit(sigmoid(0.4));
    assert!((a.estimate(&[1.0, 1.0]).unwrap() - e).abs() < 1e-4);
    // z' = z + λ·ê, shifted directly.
    let (z, _) = serve(&a, &[1.0, 1.0], -1.0, 1.0);
    assert!((f64::from(z) - (-1.0 + 0.5 * e)).abs() < 1e-4, "z' = {z}");
}

#[test]
fn logit_space_with_prob_output() {
    let dir = TempDir::new("lp");
    let a = one_sample(&dir, Units::Prob, Units::Logit, 0.8, 0.0);
    let e = logit(0.0) - logit(0.8);
    assert!((a.estimate(&[1.0, 1.0]).unwrap() - e).abs() < 1e-4);
    let (y, _) = serve(&a, &[1.0, 1.0], 0.3, 1.0);
    let want = sigmoid(logit(0.3) + 0.5 * e);
    assert!((f64::from(y) - want).abs() < 1e-6, "ŷ' = {y}, want {want}");
}

#[test]
fn prob_space_with_logit_output() {
    let dir = TempDir::new("pl");
    // Base z = 0 (ŷ = 0.5), label 1: e = 0.5 in probability units.
    let a = one_sample(&dir, Units::Logit, Units::Prob, 0.0, 1.0);
    assert!((a.estimate(&[1.0, 1.0]).unwrap() - 0.5).abs() < 1e-6);
    // z = 0.2: ŷ' = σ(0.2) + 0.25, written back as a logit.
    let (z, _) = serve(&a, &[1.0, 1.0], 0.2, 1.0);
    let want = logit(sigmoid(0.2) + 0.25);
    assert!((f64::from(z) - want).abs() < 1e-5, "z' = {z}, want {want}");
    // Round trip: σ(z') is the compensated probability.
    assert!((sigmoid(f64::from(z)) - (sigmoid(0.2) + 0.25)).abs() < 1e-6);
    // A compensated probability past 1 clamps to logit(1 − eps).
    let (z, _) = serve(&a, &[1.0, 1.0], 5.0, 2.0);
    assert!((f64::from(z) - logit(1.0)).abs() < 1e-3, "z' = {z}");
}

#[test]
fn base_prediction_is_recorded_uncompensated() {
    let dir = TempDir::new("base");
    let a = one_sample(&dir, Units::Prob, Units::Prob, 0.6, 1.0); // e = 0.4
    // Served at 0.6 again the row is compensated to 0.8, but its error is still
    // measured from 0.6: label 1 inserts another 0.4, so ê stays 0.4.
    let (y, t) = serve(&a, &[1.0, 1.0], 0.6, 1.0);
    assert!((y - 0.8).abs() < 1e-6);
    a.feedback(t, 1.0).into_result().unwrap();
    assert!((a.estimate(&[1.0, 1.0]).unwrap() - 0.4).abs() < 1e-6);
}

#[test]
fn threshold_skips_small_errors() {
    let dir = TempDir::new("thr");
    let mut c = example_config();
    c.threshold = 0.35;
    let a = build(&dir, "t.safetensors", &memory_model(2), &c, &[("R", vec![2, 2], &R)], "").unwrap();
    learn(&a, &[1.0, 1.0], 0.7, 1.0); // e = 0.3: answered, not stored
    learn(&a, &[1.0, 1.0], 0.6, 1.0); // e = 0.4: stored
    let s = a.stats();
    assert_eq!((s.inserts, s.below_threshold, s.pending), (1, 1, 0));
    assert!((a.estimate(&[1.0, 1.0]).unwrap() - 0.4).abs() < 1e-6);
}

#[test]
fn seeded_projections_are_portable() {
    // The generator is specified bit for bit; these are its first values for seed 0
    // (SplitMix64 → Box–Muller cosine branch → f32).
    let r = graft_plugin_error_memory::projections_from_seed(0, 1, 1, 3);
    let mut rng = graft_plugin_error_memory::SplitMix64::new(0);
    let want: Vec<f32> = (0..3)
        .map(|_| {
            let u1 = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
            let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    assert_eq!(r, want);
    // A seeded adapter uses them: its buckets match a hand computation.
    let dir = TempDir::new("seed");
    let mut c = Config::new("h", "p");
    c.tables = 3;
    c.bits = 4;
    c.seed = 42;
    let a = build(&dir, "s.safetensors", &memory_model(5), &c, &[], "").unwrap();
    let r = graft_plugin_error_memory::projections_from_seed(42, 3, 4, 5);
    assert_eq!(a.projections(), r.as_slice());
    let h = [0.3f32, -1.2, 0.5, 2.0, -0.1];
    let want: Vec<u32> = (0..3)
        .map(|l| {
            (0..4).fold(0, |b, t| {
                let row = &r[(l * 4 + t) * 5..(l * 4 + t + 1) * 5];
                let dot: f64 = row.iter().zip(&h).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
                b | (u32::from(dot >= 0.0) << t)
            })
        })
        .collect();
    assert_eq!(a.buckets(&h).unwrap(), want);
    // The tap writes the same buckets into the run state, then the key.
    let state = tap(&a, &h).unwrap();
    assert_eq!(state.len(), 1 + 3 + 5);
    assert_eq!(&state[1..4], want.iter().map(|&b| b as f32).collect::<Vec<_>>().as_slice());
    assert_eq!(&state[4..], &h);
}
