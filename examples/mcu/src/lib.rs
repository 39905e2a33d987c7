//! graft on a microcontroller: a model embedded in flash as a `static` byte array,
//! parsed in place and run without `std`.
//!
//! `model.graft` (committed next to this crate, 1 KiB) holds one q8 linear layer
//! `y = x · Wᵀ + b` with 8 inputs and 4 outputs; `tests/model.rs` rebuilds it with
//! graft's `ModelBuilder` and fails if the committed bytes drift. The container parser
//! reads tensors in place, so the bytes must be aligned as [`graft::model::BUFFER_ALIGN`]
//! requires: [`Aligned`] gives the static a 64-byte alignment (the container's own tensor
//! alignment), and nothing is copied. The session needs a heap (`alloc`) for its plan and
//! arena: the firmware (`src/main.rs`) gives it a 32 KiB one.
//!
//! Build the firmware: `cargo build -p graft-mcu-example --target thumbv7em-none-eabihf
//! --features firmware` (defmt over RTT; graft logs through defmt too). On a host,
//! `cargo run -p graft-mcu-example` runs the same code with std.

#![no_std]

extern crate alloc;

use graft::{Error, Input, Model, Result, Session, SessionOptions};

/// Width of the input `x`.
pub const INPUTS: usize = 8;
/// Outputs of the layer.
pub const OUTPUTS: usize = 4;

/// A value with 64-byte alignment.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Aligned<T: ?Sized>(pub T);

static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!("../model.graft"));

/// The embedded container.
pub fn model_bytes() -> &'static [u8] {
    &MODEL.0
}

/// The example's weights: `w[o][k]` and `b[o]`, small exact binary fractions.
pub fn weights() -> ([[f32; INPUTS]; OUTPUTS], [f32; OUTPUTS]) {
    let w = core::array::from_fn(|o| core::array::from_fn(|k| (((o * INPUTS + k) * 7 % 13) as f32 - 6.0) / 8.0));
    let b = core::array::from_fn(|o| o as f32 * 0.25 - 0.5);
    (w, b)
}

/// Parses the embedded model and runs its linear layer on one input row.
pub fn run(x: &[f32; INPUTS]) -> Result<[f32; OUTPUTS]> {
    let model = Model::from_bytes(model_bytes())?;
    let mut session = Session::new(&model, SessionOptions { max_batch: 1, threads: 1, ..Default::default() })?;
    let out = session.run(&[Input::dense("x", x, INPUTS)])?;
    let y = out.get("y").ok_or_else(|| Error::MissingInput { input: "y".into() })?;
    let mut result = [0.0; OUTPUTS];
    result.copy_from_slice(&y[..OUTPUTS]);
    Ok(result)
}
