//! End-to-end engine behaviour on a model that uses every op: results against a naive f64
//! evaluator, the planner's fusions and elisions, determinism (run to run, across thread
//! counts, and independent of batch composition) and every kernel level.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Inputs, everything, model, reference};
use graft::builder::WeightFormats;
use graft::kernels::{self, Level};
use graft::{Model, Q8Math, Session, SessionOptions, WeightFormat};

fn options(threads: usize, kernels: Option<Level>) -> SessionOptions {
    SessionOptions { max_batch: 64, threads, kernels, ..Default::default() }
}

fn run(model: &Model, opts: SessionOptions, x: &Inputs) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut s = Session::new(model, opts).unwrap();
    let out = s.run(&x.inputs()).unwrap();
    (out.get("logit").unwrap().to_vec(), out.get("prob").unwrap().to_vec(), out.get("dots").unwrap().to_vec())
}

#[test]
fn every_op_matches_a_naive_f64_evaluator_at_every_level() {
    let (builder, params) = everything(3);
    let model = Model::from_slice_copy(&builder.to_bytes(WeightFormats::default()).unwrap()).unwrap();
    let x = Inputs::new(37, 11);
    for k in kernels::available() {
        let (logit, prob, dots) = run(&model, options(1, Some(k.level)), &x);
        for r in 0..x.rows {
            let (want, want_dots) = reference(&params, &x, r);
            assert!(
                (logit[r] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "{} row {r}: {} vs {want}",
                k.level,
                logit[r]
            );
            let p = 1.0 / (1.0 + (-want).exp());
            assert!((prob[r] as f64 - p).abs() <= 1e-5, "{} prob row {r}", k.level);
            for (g, w) in dots[r * want_dots.len()..(r + 1) * want_dots.len()].iter().zip(&want_dots) {
                assert!((*g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()), "{} dots row {r}: {g} vs {w}", k.level);
            }
        }
    }
}

#[test]
fn the_planner_fuses_and_elides() {
    let model = model(3, WeightFormats::default());
    let s = Session::new(&model, options(1, None)).unwrap();
    let plan = s.describe().join("\n");
    assert!(plan.contains("linear+relu (`fc1_relu`) `fc1`"), "{plan}");
    // e2, m and fm are consumed only by a concat: no copy step for them.
    for elided in ["emb_2", "squared", "fm"] {
        assert!(!plan.contains(&format!("copy for `{elided}`")), "{elided} was copied:\n{plan}");
    }
    // bot is also an input of dot_interaction, so it is copied into z.
    assert!(plan.contains("copy for `z`"), "{plan}");
}

#[test]
fn single_thread_runs_are_bit_identical() {
    for f in [WeightFormat::F32, WeightFormat::Q8, WeightFormat::Q4] {
        let model = model(5, WeightFormats::uniform(f));
        let x = Inputs::new(64, 1);
        let mut s = Session::new(&model, options(1, None)).unwrap();
        let first = s.run(&x.inputs()).unwrap().get("logit").unwrap().to_vec();
        for _ in 0..5 {
            let again = s.run(&x.inputs()).unwrap().get("logit").unwrap().to_vec();
            assert_eq!(bits(&first), bits(&again), "{f}");
        }
    }
}

#[test]
fn results_do_not_depend_on_threads_or_batch_composition() {
    for f in WeightFormat::ALL.into_iter().filter(|f| *f != WeightFormat::Q8Rowwise) {
        let model = model(8, WeightFormats::uniform(f));
        let x = Inputs::new(64, 2);
        for k in kernels::available() {
            let (one, ..) = run(&model, options(1, Some(k.level)), &x);
            let (two, ..) = run(&model, options(2, Some(k.level)), &x);
            let (three, ..) = run(&model, options(3, Some(k.level)), &x);
            assert_eq!(bits(&one), bits(&two), "{f} {}: 1 vs 2 threads", k.level);
            assert_eq!(bits(&one), bits(&three), "{f} {}: 1 vs 3 threads", k.level);
            for r in [0, 1, 17, 63] {
                let (alone, ..) = run(&model, options(1, Some(k.level)), &x.row(r));
                assert_eq!(alone[0].to_bits(), one[r].to_bits(), "{f} {}: row {r} alone", k.level);
            }
        }
    }
}

/// ggml Q4_0 encode/decode of one row, written from the rule in
/// `tests/fixtures/vectors.json` (not from graft's quantizer): 32-value blocks, the last
/// zero-padded; `m` the first value of largest magnitude, `d = m / −8`, `id = 1/d` (0 for
/// an all-zero block), `code = min(15, trunc(x·id + 8.5))` in f32, the scale stored as f16
/// (round to nearest even) and `dequant = (code − 8) · f16(d)`.
fn q4_0_round_trip(row: &[f32]) -> Vec<f32> {
    let mut out = Vec::with_capacity(row.len());
    for block in row.chunks(32) {
        let mut m = 0.0f32;
        for &x in block {
            if x.abs() > m.abs() {
                m = x;
            }
        }
        let d = m / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let stored = half::f16::from_f32(d).to_f32();
        out.extend(block.iter().map(|&x| ((x * id + 8.5).trunc().min(15.0) - 8.0) * stored));
    }
    out
}

/// Every lossy format is checked against the naive f64 evaluator run on the weights that
/// format stores, decoded independently (IEEE half and bfloat16 round to nearest even,
/// ggml Q4_0): what is left is the engine's own f32 error, held to the f32 tolerance, so
/// a quantized kernel cannot hide behind the quantizer's error. q8 (per-row symmetric
/// linears, FBGEMM row-wise tables) is held to twice its measured distance from f32.
#[test]
fn quantized_formats_match_the_reference_on_their_stored_weights() {
    let x = Inputs::new(64, 4);
    let (_, params) = everything(9);
    type RoundTrip = fn(&[f32]) -> Vec<f32>;
    let formats: [(WeightFormat, RoundTrip); 3] = [
        (WeightFormat::F16, |r| r.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()),
        (WeightFormat::Bf16, |r| r.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect()),
        (WeightFormat::Q4, q4_0_round_trip),
    ];
    for (f, round_trip) in formats {
        let stored = params.stored_as(round_trip);
        for k in kernels::available() {
            let (logit, ..) = run(&model(9, WeightFormats::uniform(f)), options(1, Some(k.level)), &x);
            let mut worst = 0.0f64;
            for (r, &got) in logit.iter().enumerate().take(x.rows) {
                let (want, _) = reference(&stored, &x, r);
                let err = (got as f64 - want).abs();
                worst = worst.max(err / (1.0 + want.abs()));
                assert!(err <= 1e-4 * (1.0 + want.abs()), "{f} {} row {r}: {got} vs {want}", k.level);
            }
            println!("{f} {}: max |Δlogit|/(1+|logit|) vs the reference on stored weights {worst:.1e}", k.level);
        }
    }
    let (reference_f32, ..) = run(&model(9, WeightFormats::default()), options(1, None), &x);
    let (q8, ..) = run(&model(9, WeightFormats::uniform(WeightFormat::Q8)), options(1, None), &x);
    let worst = q8.iter().zip(&reference_f32).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    println!("q8: max |Δlogit| vs f32 {worst:.2e}");
    assert!(worst <= 0.2, "q8: max |Δlogit| {worst} > 0.2");
}

/// `SessionOptions::q8_math` reaches the q8 linears: at every level with an int8 kernel
/// the two modes give different bits (the same otherwise), close to each other, and the
/// int8 mode keeps rows independent of threads and batch.
#[test]
fn q8_math_option_selects_the_path() {
    // A layer long enough for the int8 path (K = 200 ≥ INT8_MIN_K), then a short one.
    let (k, hidden, rows) = (200, 48, 40);
    let mut rng = graft::synthetic::Rng::new(7);
    let mut vals = |n: usize| (0..n).map(|_| rng.uniform() * 2.0 - 1.0).collect::<Vec<f32>>();
    let mut b = graft::builder::ModelBuilder::new("q8_math");
    let x = b.dense_input("x", k);
    let h = b.linear("fc1", &x, graft::builder::Matrix::new(hidden, k, vals(hidden * k)), Some(vals(hidden)));
    let h = b.activation("relu", graft::graph::Activation::Relu, &h);
    let y = b.linear("fc2", &h, graft::builder::Matrix::new(3, hidden, vals(3 * hidden)), None);
    b.output("y", &y);
    let model = Model::from_slice_copy(&b.to_bytes(WeightFormats::uniform(WeightFormat::Q8)).unwrap()).unwrap();
    assert!(k >= kernels::INT8_MIN_K);
    let xs = vals(rows * k);
    let run = |level, q8_math, threads, x: &[f32]| {
        let opts = SessionOptions { q8_math, ..options(threads, Some(level)) };
        let mut s = Session::new(&model, opts).unwrap();
        s.run(&[graft::Input::dense("x", x, k)]).unwrap().get("y").unwrap().to_vec()
    };
    for t in kernels::available() {
        let level = t.level;
        let int8 = run(level, Q8Math::Int8, 1, &xs);
        let exact = run(level, Q8Math::Exact, 1, &xs);
        if t.int8.is_some() {
            assert_ne!(bits(&int8), bits(&exact), "{level}: q8_math ignored");
        } else {
            assert_eq!(bits(&int8), bits(&exact), "{level}: no int8 kernel, exact path");
        }
        let scale = exact.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = int8.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 0.05 * scale, "{level}: int8 vs exact max |Δ| {worst} (outputs up to {scale})");
        assert_eq!(bits(&int8), bits(&run(level, Q8Math::Int8, 2, &xs)), "{level}: 1 vs 2 threads");
        assert_eq!(bits(&int8[15..18]), bits(&run(level, Q8Math::Int8, 1, &xs[5 * k..6 * k])), "{level}: row 5 alone");
    }
}

#[test]
fn forced_scalar_level_is_honoured() {
    let model = model(1, WeightFormats::default());
    let s = Session::new(&model, options(1, Some(Level::Scalar))).unwrap();
    assert_eq!(s.kernels().level, Level::Scalar);
}

/// A session without a forced level runs `GRAFT_KERNELS` when set, else the best level
/// the CPU has; `GRAFT_EXPECT_LEVEL` (set by CI, e.g. `i8mm` under `qemu-aarch64 -cpu max`)
/// pins the answer, so the suite proves which kernels the engine really dispatched to.
/// Every level the CPU lacks is refused with an error that names what is missing.
#[test]
fn session_level_follows_the_environment_or_detection() {
    let model = model(1, WeightFormats::default());
    let forced = std::env::var(kernels::KERNELS_ENV).ok().filter(|v| !v.trim().is_empty() && v.trim() != "auto");
    let want = match forced {
        Some(v) => Level::parse(v.trim()).unwrap(),
        None => Level::detect(),
    };
    match Session::new(&model, options(1, None)) {
        Ok(s) => {
            assert_eq!(s.kernels().level, want);
            println!("session kernel level: {}", s.kernels().level);
        }
        // GRAFT_KERNELS named a level this CPU lacks: refused, naming what is missing.
        Err(e) => {
            assert!(std::env::var("GRAFT_EXPECT_LEVEL").is_err(), "GRAFT_EXPECT_LEVEL set, but no session: {e}");
            assert!(!want.is_available(), "{e}");
            assert!(e.to_string().contains(want.requires()), "{e}");
            println!("session refused {want}: {e}");
        }
    }
    if let Ok(expect) = std::env::var("GRAFT_EXPECT_LEVEL") {
        assert_eq!(want.as_str(), expect, "GRAFT_EXPECT_LEVEL");
    }
    for level in Level::ALL {
        match Session::new(&model, options(1, Some(level))) {
            Ok(s) => assert!(level.is_available() && s.kernels().level == level),
            Err(e) => {
                assert!(!level.is_available(), "{level}: {e}");
                assert!(e.to_string().contains(level.requires()), "{e}");
            }
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn the_arena_reuses_dead_buffers() {
    // A 12-layer MLP: only an input and an output buffer are live at a time, so the arena
    // must stay far below the sum of all activations.
    let (layers, width, batch) = (12, 64, 32);
    let mut b = graft::builder::ModelBuilder::new("deep");
    let mut x = b.dense_input("x", width);
    for l in 0..layers {
        let w = graft::builder::Matrix::new(width, width, vec![0.01; width * width]);
        let y = b.linear(&format!("fc{l}"), &x, w, None);
        x = b.activation(&format!("act{l}"), graft::graph::Activation::Tanh, &y);
    }
    b.output("y", &x);
    let model = Model::from_slice_copy(&b.to_bytes(WeightFormats::default()).unwrap()).unwrap();
    let s = Session::new(&model, SessionOptions { max_batch: batch, ..Default::default() }).unwrap();
    let one_buffer = width * batch * 4;
    assert!(s.memory_bytes() <= 3 * one_buffer, "{} bytes for {layers} layers", s.memory_bytes());
}
