//! A random K = 4, dims [16, 32, 8, 1] model against a naive per-row f64 reference
//! computed from the stored tensors, over 37 rows in one call and in uneven chunks; with
//! two identical centers, so every row that scores best on them must go to the lower one;
//! and with centers too close for f32 scores to rank, which must still route as the f64
//! reference does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_routing::{Config, Mode, OutputIs};

const ROWS: usize = 37;
const D: usize = 16;
const CHUNKINGS: &[&[usize]] = &[&[37], &[1, 5, 13, 18], &[20, 17], &[3, 1, 1, 32], &[1; 37]];

fn synth(mode: Mode, output_is: OutputIs, use_bias: bool, seed: u64) -> Synth {
    let mut config =
        Config::new("emb", if output_is == OutputIs::Prob { "prob" } else { "head" }, 4, vec![D, 32, 8, 1]);
    config.mode = mode;
    config.output_is = output_is;
    config.use_bias = use_bias;
    let mut s = Synth::random(config, seed);
    // Centers 1 and 2 identical: κ = 2 is unreachable; their towers differ.
    let mut c = s.get("centers").to_vec();
    let (one, two) = c.split_at_mut(2 * D);
    two[..D].copy_from_slice(&one[D..]);
    s.set("centers", c);
    s
}

fn rows(seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed);
    (0..ROWS * D).map(|_| rng.uniform()).collect()
}

fn check(s: &Synth, tag: &str) {
    let model = routing_model(D, 1);
    let a = load(&model, &s.write(tag), "").unwrap();
    let x = rows(0x5eed_1234);
    let want: Vec<(Vec<f64>, usize)> = x.chunks_exact(D).map(|r| s.reference(r)).collect();
    let kappas: Vec<usize> = want.iter().map(|w| w.1).collect();
    assert!(!kappas.contains(&2), "the tie must go to the lower index");
    for j in [0, 1, 3] {
        assert!(kappas.contains(&j), "cluster {j} unused; the test would not cover it: {kappas:?}");
    }
    let want_y: Vec<f64> = want.iter().flat_map(|w| w.0.clone()).collect();
    let y0 = vec![7.0f32; ROWS];
    for chunks in CHUNKINGS {
        let r = run(&a, &x, D, &y0, 1.0, chunks).unwrap();
        assert_close(&r.y, &want_y, 1e-5);
        let got_k: Vec<usize> = r.state.chunks_exact(2).map(|s| s[1] as usize).collect();
        assert_eq!(got_k, kappas, "chunks {chunks:?}");
        // The state holds the routed value before the multiplier.
        let routed: Vec<f32> = r.state.chunks_exact(2).map(|s| s[0]).collect();
        assert_eq!(routed, r.y);
    }
}

#[test]
fn hard_logit_matches_reference() {
    check(&synth(Mode::Hard, OutputIs::Logit, false, 1), "hard-logit");
}

#[test]
fn hard_prob_matches_reference() {
    check(&synth(Mode::Hard, OutputIs::Prob, false, 2), "hard-prob");
}

#[test]
fn soft_matches_reference() {
    check(&synth(Mode::Soft, OutputIs::Prob, false, 3), "soft-prob");
    check(&synth(Mode::Soft, OutputIs::Logit, false, 4), "soft-logit");
}

#[test]
fn biased_towers_match_reference() {
    check(&synth(Mode::Hard, OutputIs::Logit, true, 5), "hard-bias");
    check(&synth(Mode::Soft, OutputIs::Prob, true, 6), "soft-bias");
}

#[test]
fn wider_output_and_one_cluster() {
    // out = 3 (several output columns), and K = 1 (every call is one bucket).
    for (k, dims) in [(3, vec![5, 4, 3]), (1, vec![6, 2]), (2, vec![3, 7, 7, 7, 2])] {
        let mut config = Config::new("emb", "head", k, dims.clone());
        config.use_bias = true;
        let s = Synth::random(config, 99 + k as u64);
        let (d, out) = (dims[0], *dims.last().unwrap());
        let model = routing_model(d, out);
        let a = load(&model, &s.write("wide"), "").unwrap();
        let mut rng = Rng(7);
        let x: Vec<f32> = (0..9 * d).map(|_| rng.uniform()).collect();
        let want: Vec<f64> = x.chunks_exact(d).flat_map(|r| s.reference(r).0).collect();
        for chunks in [&[9][..], &[4, 5], &[1; 9]] {
            let r = run(&a, &x, d, &vec![0.0; 9 * out], 1.0, chunks).unwrap();
            assert_close(&r.y, &want, 1e-5);
        }
    }
}

#[test]
fn near_tie_centers_route_as_the_f64_reference() {
    // Center 1 is center 0 with some elements one ulp up and others one ulp down: for rows
    // near center 0 the exact gap (~1e-9, either sign) is far below the f32 GEMM's
    // rounding, so the f32 scores rank the pair at random and only the f64 fallback ranks
    // it right. Rows near center 3 are clear cases.
    let d = 96;
    let mut config = Config::new("emb", "head", 4, vec![d, 8, 1]);
    config.use_bias = true;
    let mut s = Synth::random(config, 21);
    let mut c = s.get("centers").to_vec();
    for i in 0..d {
        let bits = c[i].to_bits();
        c[d + i] = f32::from_bits(match i % 5 {
            0 => bits + 1,
            2 => bits - 1,
            _ => bits,
        });
    }
    s.set("centers", c.clone());
    let model = routing_model(d, 1);
    let a = load(&model, &s.write("near-tie"), "").unwrap();
    let mut rng = Rng(0xface);
    let rows = 60;
    let x: Vec<f32> = (0..rows)
        .flat_map(|i| {
            let center = if i % 4 == 3 { 3 } else { 0 };
            c[center * d..(center + 1) * d].iter().map(|v| v + 0.02 * rng.uniform()).collect::<Vec<_>>()
        })
        .collect();
    let want: Vec<(Vec<f64>, usize)> = x.chunks_exact(d).map(|r| s.reference(r)).collect();
    let kappas: Vec<usize> = want.iter().map(|w| w.1).collect();
    assert!(kappas.contains(&0) && kappas.contains(&1) && kappas.contains(&3), "{kappas:?}");
    // The test kernel's f32 scores (summed in order) misrank the pair on some rows.
    let f32_score = |r: &[f32], j: usize| -> f32 { r.iter().zip(&c[j * d..(j + 1) * d]).map(|(a, b)| a * b).sum() };
    let misranked =
        x.chunks_exact(d).zip(&kappas).filter(|(r, k)| **k < 2 && f32_score(r, 1 - **k) > f32_score(r, **k));
    assert!(misranked.count() > 0, "the f32 scores rank every row right; the test would not exercise the fallback");
    let want_y: Vec<f64> = want.iter().flat_map(|w| w.0.clone()).collect();
    for chunks in [&[60][..], &[1, 7, 52], &[1; 60]] {
        let r = run(&a, &x, d, &vec![0.0; rows], 1.0, chunks).unwrap();
        let got: Vec<usize> = r.state.chunks_exact(2).map(|s| s[1] as usize).collect();
        assert_eq!(got, kappas, "chunks {chunks:?}");
        assert_close(&r.y, &want_y, 1e-5);
    }
}
