//! Helpers shared by the bad-input suites (`malformed`, `malformed_prop`,
//! `safetensors_compat`): a small valid model and a "run it with zeros" driver.

#![allow(dead_code)] // each test binary uses a different subset

use graft::builder::{ModelBuilder, WeightFormats};
use graft::synthetic::GraphInputs;
use graft::{Model, Session, SessionOptions};

/// `dense[4] → fc (linear 4→8, bias) → act (relu)`, `ids[2] → emb (embedding_bag, table
/// 10×4)`, `cat = concat(act, emb)` (width 12), `head` (linear 12→1, bias) → output
/// `score`. Every tensor kind the container knows (bias vectors, linear weights, a
/// table) and every alignment pad appears.
pub fn small_model() -> ModelBuilder {
    graft::synthetic::tiny()
}

/// [`small_model`] serialized in the weight format called `format` (`f32`, `q8`, …).
pub fn small_container(format: &str) -> Vec<u8> {
    let formats = WeightFormats::from_name(format).expect("known format");
    small_model().to_bytes(formats).expect("valid model serializes")
}

/// Activation floats beyond which [`run_zeros`] declines to plan a session (a mutated
/// header may declare absurd but consistent widths; allocating for them is not the
/// point of these tests).
pub const MAX_FLOATS: usize = 1 << 22;

/// Plans `model` with `max_batch` 4 on every available kernel table and runs it on
/// `rows` rows of zeros (ids 0, one id per bag). Returns the number of runs made; `Ok(0)`
/// when the model is too large to try. A model that parsed must plan and run: any error
/// here is returned to the caller, which decides whether it is acceptable.
pub fn run_zeros(model: &Model, rows: usize) -> graft::Result<usize> {
    let g = model.graph();
    let total = g.row_floats();
    if total.is_none_or(|t| t.saturating_mul(4) > MAX_FLOATS) {
        return Ok(0);
    }
    let zeros = GraphInputs::zeros(g, rows);
    let inputs = zeros.inputs();
    let mut runs = 0;
    for kernels in graft::kernels::available() {
        let options = SessionOptions { max_batch: 4, kernels: Some(kernels.level), ..SessionOptions::default() };
        let mut session = Session::new(model, options)?;
        let out = session.run(&inputs)?;
        assert_eq!(out.rows(), rows);
        assert_eq!(out.len(), g.outputs.len());
        runs += 1;
    }
    Ok(runs)
}
