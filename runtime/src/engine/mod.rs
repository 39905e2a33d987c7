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
pub use session::{Device, Outputs, Session, SessionOptions};
