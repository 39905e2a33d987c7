//! The execution engine: plan once, run many times without allocating.

#[cfg(feature = "std")]
mod adapt;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod exec;
mod input;
mod plan;
#[cfg(feature = "std")]
mod pool;
mod session;
mod tensor;

pub use input::{Input, NanPolicy, Shape, TensorView};

// The std/no_std line of the engine, drawn once: adapters exist only with `std`. Without
// it these name a type with no values, so signatures need no per-parameter cfg pairs and
// `Option<…>` of them is always `None`.

/// The adapters a walk runs: the row sets and which pass.
#[cfg(feature = "std")]
pub(crate) type RunAdapters<'a> = (&'a crate::adapters::RowAdapters, adapt::PassKind);
/// The adapters a walk runs (none without `std`).
#[cfg(not(feature = "std"))]
pub(crate) type RunAdapters<'a> = (core::convert::Infallible, core::marker::PhantomData<&'a ()>);

/// The row sets a run's outputs keep, for their tickets.
#[cfg(feature = "std")]
pub(crate) type OutputAdapters<'a> = &'a crate::adapters::RowAdapters;
/// The row sets a run's outputs keep (none without `std`).
#[cfg(not(feature = "std"))]
pub(crate) type OutputAdapters<'a> = (core::convert::Infallible, core::marker::PhantomData<&'a ()>);
pub use session::{Device, MAX_THREADS, Outputs, RowFault, Session, SessionOptions};
