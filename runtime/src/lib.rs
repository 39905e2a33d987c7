//! # graft
//!
//! An adapter runtime for edge devices. graft memory-maps a (quantized) recommender model
//! once — the `.graft` container is a safetensors file with the graph in its metadata —
//! and runs it with CPU kernels chosen at runtime, planning each session so that `run`
//! allocates nothing.
//!
//! ```no_run
//! use graft::{Input, Model, Session, SessionOptions};
//!
//! let model = Model::open("model.graft")?;
//! let mut session = Session::new(&model, SessionOptions { max_batch: 64, threads: 1, ..Default::default() })?;
//! let dense = vec![0.0f32; 8];
//! let ids = vec![0i64; 3];
//! let out = session.run(&[Input::dense("dense", &dense, 8), Input::ids("ids_f0", &ids, 3)])?;
//! println!("{:?}", out.get("prob"));
//! # Ok::<(), graft::Error>(())
//! ```
//!
//! Crate map: [`container`] (envelope parsing, no_std), [`graph`] (validated graph),
//! [`model`] (mapping and tensor views), [`kernels`] (kernel traits, scalar reference,
//! AVX2, aarch64 NEON/SDOT/SMMLA over `graft-kernels-neon`), [`engine`] (planner, sessions), [`quant`] (q8/q4 rules), `writer` and
//! `builder` (std: producing containers), `onnx` (feature `onnx`: import and export).
//!
//! Without the default `std` feature the crate is `no_std` + `alloc`: it parses and
//! validates containers from a `&'static [u8]` and runs single-threaded scalar kernels
//! (feature `defmt`: `defmt::Format` on the public types and defmt logging instead of
//! `log`, for firmware; `examples/mcu` runs a model on a Cortex-M4F).

#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

#[cfg(target_endian = "big")]
compile_error!("graft reads little-endian containers in place and supports little-endian targets only");

extern crate alloc;

#[macro_use]
mod logging;

#[cfg(feature = "std")]
pub mod adapters;
#[cfg(feature = "std")]
pub mod builder;
pub mod container;
pub mod engine;
pub mod error;
mod finite;
pub mod format;
pub mod graph;
pub mod hash;
pub mod kernels;
pub mod model;
#[cfg(feature = "std")]
pub mod npy;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod quant;
#[cfg(feature = "std")]
pub mod synthetic;
pub mod view;
#[cfg(feature = "std")]
pub mod writer;

pub use engine::{
    Device, Input, MAX_THREADS, NanPolicy, Outputs, RowFault, Session, SessionOptions, Shape, TensorView,
};
pub use error::{Error, Result};
pub use format::{DType, WeightFormat};
pub use kernels::Q8Math;
pub use model::Model;
