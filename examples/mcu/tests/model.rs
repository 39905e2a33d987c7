//! The committed `model.graft` is exactly what graft's builder writes for the example's
//! weights (set `GRAFT_MCU_WRITE=1` to regenerate it), and running it from the static
//! array gives the layer's result.

#![allow(clippy::unwrap_used)]

use graft::WeightFormat;
use graft::builder::{Matrix, ModelBuilder, WeightFormats};
use graft_mcu_example::{INPUTS, OUTPUTS, model_bytes, run, weights};

fn build() -> Vec<u8> {
    let (w, b) = weights();
    let mut m = ModelBuilder::new("mcu-linear");
    m.producer("graft examples/mcu");
    let x = m.dense_input("x", INPUTS);
    let y = m.linear("fc", &x, Matrix::new(OUTPUTS, INPUTS, w.iter().flatten().copied().collect()), Some(b.to_vec()));
    m.output("y", &y);
    m.to_bytes(WeightFormats::uniform(WeightFormat::Q8)).unwrap()
}

#[test]
fn embedded_model_is_what_the_builder_writes() {
    let bytes = build();
    if std::env::var("GRAFT_MCU_WRITE").is_ok_and(|v| v == "1") {
        std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/model.graft"), &bytes).unwrap();
    }
    assert!(bytes == model_bytes(), "model.graft is stale: rerun with GRAFT_MCU_WRITE=1");
}

#[test]
fn the_static_model_runs_the_layer() {
    let x = [0.5f32, -1.0, 0.25, 2.0, 0.0, -0.75, 1.5, 1.0];
    let y = run(&x).unwrap();
    let (w, b) = weights();
    for o in 0..OUTPUTS {
        let want: f32 = w[o].iter().zip(&x).map(|(w, x)| w * x).sum::<f32>() + b[o];
        // q8 weights: at most half a step (amax/254) per weight.
        let amax = w[o].iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let bound = amax / 254.0 * x.iter().map(|v| v.abs()).sum::<f32>() + 1e-5;
        assert!((y[o] - want).abs() <= bound, "y[{o}] = {} vs {want}", y[o]);
    }
}
