//! Decay: the global-weight implementation against a naive reference that multiplies every
//! bucket by ρ before each insert, across several renormalizations.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::Adapter;
use graft_plugin_error_memory::{Config, Estimate};

const D: usize = 3;
const L: usize = 3;
const P: usize = 2;
const B: usize = 1 << P;

/// The naive sketch: f64 cells, every cell decayed by ρ before each insert.
struct Naive {
    s: Vec<f64>,
    c: Vec<f64>,
    k: Vec<f64>,
}

fn buckets(r: &[f32], h: &[f32]) -> Vec<usize> {
    (0..L)
        .map(|l| {
            (0..P).fold(0, |b, t| {
                let row = &r[(l * P + t) * D..(l * P + t + 1) * D];
                let dot: f64 = row.iter().zip(h).map(|(a, x)| f64::from(*a) * f64::from(*x)).sum();
                b | (usize::from(dot >= 0.0) << t)
            })
        })
        .collect()
}

impl Naive {
    fn insert(&mut self, rho: f64, bk: &[usize], h: &[f32], e: f64) {
        for v in self.s.iter_mut().chain(self.c.iter_mut()).chain(self.k.iter_mut()) {
            *v *= rho;
        }
        for (l, &b) in bk.iter().enumerate() {
            let i = l * B + b;
            self.s[i] += e;
            self.c[i] += 1.0;
            for (k, x) in self.k[i * D..(i + 1) * D].iter_mut().zip(h) {
                *k += f64::from(*x);
            }
        }
    }

    fn pooled(&self, bk: &[usize]) -> f64 {
        let (n, d) =
            bk.iter().enumerate().fold((0.0, 0.0), |(n, d), (l, &b)| (n + self.s[l * B + b], d + self.c[l * B + b]));
        if d > 0.0 { n / d } else { 0.0 }
    }

    /// Top-k over the hit buckets, k = L, τ = 1.
    fn top_k(&self, bk: &[usize], h: &[f32]) -> f64 {
        let hn: f64 = h.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let mut cand: Vec<(f64, f64)> = Vec::new();
        for (l, &b) in bk.iter().enumerate() {
            let i = l * B + b;
            if self.c[i] <= 0.0 {
                continue;
            }
            let key: Vec<f64> = (0..D).map(|j| self.k[i * D + j] / self.c[i]).collect();
            let kn = key.iter().map(|x| x * x).sum::<f64>().sqrt();
            let dot: f64 = key.iter().zip(h).map(|(a, x)| a * f64::from(*x)).sum();
            cand.push((dot / (hn.max(1e-12) * kn.max(1e-12)), self.s[i] / self.c[i]));
        }
        let m = cand.iter().map(|c| c.0).fold(f64::NEG_INFINITY, f64::max);
        let (num, den) = cand.iter().fold((0.0, 0.0), |(n, d), &(c, e)| (n + (c - m).exp() * e, d + (c - m).exp()));
        if den > 0.0 { num / den } else { 0.0 }
    }
}

fn run(estimate: Estimate, rho: f64, inserts: usize) {
    let dir = TempDir::new("decay");
    let mut rng = Rng(0x9e37_79b9);
    let r = rng.vec(L * P * D);
    let mut c = Config::new("h", "p");
    c.tables = L as u32;
    c.bits = P as u32;
    c.decay = rho;
    c.estimate = estimate;
    c.projections = Some("R".into());
    let a = build(&dir, "d.safetensors", &memory_model(D), &c, &[("R", vec![L * P, D], &r)], "").unwrap();
    let mut naive = Naive { s: vec![0.0; L * B], c: vec![0.0; L * B], k: vec![0.0; L * B * D] };
    let queries: Vec<Vec<f32>> = (0..8).map(|_| rng.vec(D)).collect();
    for step in 0..inserts {
        // Keys from a few clusters so buckets are revisited at different ages.
        let mut h = rng.vec(D);
        if step % 3 == 0 {
            h = queries[step % queries.len()].iter().map(|x| x + 0.01 * rng.signed()).collect();
        }
        let y_hat = rng.next_f32();
        let label = if rng.next_f32() < 0.5 { 0.0 } else { 1.0 };
        learn(&a, &h, y_hat, label);
        naive.insert(rho, &buckets(&r, &h), &h, f64::from(label) - f64::from(y_hat));
        if step % 25 == 24 || step == inserts - 1 {
            for q in &queries {
                let bk = buckets(&r, q);
                let want = match estimate {
                    Estimate::TopK => naive.top_k(&bk, q),
                    _ => naive.pooled(&bk),
                };
                let got = a.estimate(q).unwrap();
                assert!((got - want).abs() < 1e-4, "step {step}: got {got}, naive {want}");
                // The tap path agrees with the helper.
                let state = tap(&a, q).unwrap();
                assert!((f64::from(state[0]) - got).abs() < 1e-6);
            }
        }
    }
    assert_eq!(a.stats().inserts, inserts as u64);
}

#[test]
fn pooled_decay_matches_naive() {
    // ρ = 0.9 renormalizes every ⌈ln(1e10)/ln(1/0.9)⌉ = 219 inserts.
    run(Estimate::Pooled, 0.9, 700);
}

#[test]
fn topk_decay_matches_naive() {
    run(Estimate::TopK, 0.9, 700);
}

#[test]
fn no_decay_is_plain_averaging() {
    run(Estimate::Pooled, 1.0, 200);
}

#[test]
fn strong_decay_matches_naive() {
    // ρ = 0.5: a renormalization every 34 inserts.
    run(Estimate::Pooled, 0.5, 300);
}

#[test]
fn renormalizations_happen() {
    let dir = TempDir::new("renorm");
    let mut c = Config::new("h", "p");
    c.tables = 1;
    c.bits = 1;
    c.decay = 0.5;
    let a = build(&dir, "r.safetensors", &memory_model(1), &c, &[], "").unwrap();
    for i in 0..100 {
        learn(&a, &[1.0], 0.5, if i % 2 == 0 { 1.0 } else { 0.0 });
    }
    // 0.5^−34 > 1e10: a renormalization every 34 inserts.
    assert_eq!(a.stats().renormalizations, 2);
    // The last insert (label 0, e = −0.5) weighs 1, the one before 1/2, …:
    // ê = −0.5·(1 − 1/2 + 1/4 − …) / (1 + 1/2 + 1/4 + …) = −0.5·(2/3)/2 = −1/6.
    assert!((a.estimate(&[1.0]).unwrap() + 1.0 / 6.0).abs() < 1e-6);
    let info = a.info();
    assert!(info.notes.iter().any(|n| n.as_str() == "decay=0.5"));
}
