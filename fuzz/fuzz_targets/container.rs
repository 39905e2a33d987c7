//! Fuzzes the whole load path: container envelope, graph JSON validation, planning and
//! execution.
//!
//! Any bytes go to `Model::from_slice_copy`, which must return (`Ok` or a typed `Err`).
//! When they parse, the model is planned (`max_batch` 4) on every kernel table this CPU
//! has and run on zero-filled inputs of the right shapes (ids 0, one id per bag): a model
//! that validated must plan and run such a batch, so an error there is a finding too —
//! except the typed errors graph version 2 makes part of a valid model's contract: a row
//! shape beyond what the engine indexes (`Unplannable`), and values computed at run time
//! (an index or id out of range, an i64 division by zero). Models whose
//! declared widths would need more than `MAX_FLOATS` floats are parsed but not run
//! (a consistent graph may declare any dense width; allocating for it is not the point).

#![no_main]

use graft::synthetic::GraphInputs;
use graft::{Error, Model, Session, SessionOptions};
use libfuzzer_sys::fuzz_target;

const MAX_BATCH: usize = 4;
const MAX_FLOATS: usize = 1 << 22;

fuzz_target!(|data: &[u8]| {
    match Model::from_slice_copy(data) {
        Ok(model) => run_zeros(&model),
        // Formatting walks every field of the error: it must not panic either.
        Err(e) => drop(e.to_string()),
    }
});

fn run_zeros(model: &Model) {
    let g = model.graph();
    let total = g.row_floats();
    if total.is_none_or(|t| t.saturating_mul(MAX_BATCH) > MAX_FLOATS) {
        return;
    }
    let rows = MAX_BATCH - 1;
    let zeros = GraphInputs::zeros(g, rows);
    let inputs = zeros.inputs();
    for kernels in graft::kernels::available() {
        let options =
            SessionOptions { max_batch: MAX_BATCH, kernels: Some(kernels.level), ..SessionOptions::default() };
        let mut session = match Session::new(model, options) {
            Ok(s) => s,
            Err(Error::Unplannable { .. }) => return,
            Err(e) => panic!("a validated model plans: {e}"),
        };
        let out = match session.run(&inputs) {
            Ok(out) => out,
            Err(Error::IndexOutOfRange { .. } | Error::IdOutOfRange { .. } | Error::Arithmetic { .. }) => return,
            Err(e) => panic!("a validated model runs a valid zero batch: {e}"),
        };
        assert_eq!(out.rows(), rows);
        for (_, view) in out.iter() {
            assert_eq!(view.rows(), rows);
            // Read every output value, so the sanitizer checks the views' bounds.
            for r in 0..rows {
                std::hint::black_box(view.row(r).iter().sum::<f32>());
            }
        }
    }
}
