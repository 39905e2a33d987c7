//! Borrowed run inputs and their validation against the graph.
//!
//! Inputs are passed by name as borrowed slices (no copy, no allocation). Validation
//! happens before any computation, so a bad request leaves nothing half-written: each
//! input must exist once, have the graph's dtype and shape, agree on the batch size,
//! keep ids inside their tables, and (by default) hold only finite dense values.

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;

use crate::error::{Error, Result};
use crate::graph::{Graph, InputKind};

/// The highest rank of a run input (the batch axis included).
pub const MAX_INPUT_RANK: usize = 8;

/// A tensor shape of rank 1 to [`MAX_INPUT_RANK`] (stored inline: binding allocates
/// nothing).
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Shape {
    dims: [usize; MAX_INPUT_RANK],
    rank: u8,
}

impl Shape {
    /// A rank-1 shape.
    pub fn vector(len: usize) -> Shape {
        Shape::from_dims(&[len]).unwrap_or(Shape { dims: [0; MAX_INPUT_RANK], rank: 1 })
    }

    /// A rank-2 shape.
    pub fn matrix(rows: usize, cols: usize) -> Shape {
        let mut dims = [1; MAX_INPUT_RANK];
        dims[0] = rows;
        dims[1] = cols;
        Shape { dims, rank: 2 }
    }

    /// Builds a shape from a slice of 1 to [`MAX_INPUT_RANK`] dims.
    pub fn from_dims(dims: &[usize]) -> Option<Shape> {
        if dims.is_empty() || dims.len() > MAX_INPUT_RANK {
            return None;
        }
        let mut out = [1; MAX_INPUT_RANK];
        out[..dims.len()].copy_from_slice(dims);
        Some(Shape { dims: out, rank: dims.len() as u8 })
    }

    /// The dims.
    pub fn dims(&self) -> &[usize] {
        &self.dims[..self.rank as usize]
    }

    /// Number of elements.
    pub fn elements(&self) -> Option<usize> {
        self.dims().iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.dims())
    }
}

/// A borrowed tensor.
#[derive(Clone, Copy, Debug)]
pub enum TensorView<'a> {
    /// f32 data.
    F32 {
        /// Elements, row-major.
        data: &'a [f32],
        /// Shape.
        shape: Shape,
    },
    /// i64 data.
    I64 {
        /// Elements, row-major.
        data: &'a [i64],
        /// Shape.
        shape: Shape,
    },
}

impl TensorView<'_> {
    fn dtype(&self) -> &'static str {
        match self {
            TensorView::F32 { .. } => "f32",
            TensorView::I64 { .. } => "i64",
        }
    }

    fn shape(&self) -> Shape {
        match self {
            TensorView::F32 { shape, .. } | TensorView::I64 { shape, .. } => *shape,
        }
    }

    fn len(&self) -> usize {
        match self {
            TensorView::F32 { data, .. } => data.len(),
            TensorView::I64 { data, .. } => data.len(),
        }
    }
}

/// A named run input.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The graph input it binds to.
    pub name: &'a str,
    /// The data.
    pub tensor: TensorView<'a>,
}

impl<'a> Input<'a> {
    /// Dense features `[data.len() / width, width]`.
    pub fn dense(name: &'a str, data: &'a [f32], width: usize) -> Input<'a> {
        let rows = data.len().checked_div(width).unwrap_or(0);
        Input { name, tensor: TensorView::F32 { data, shape: Shape::matrix(rows, width) } }
    }

    /// Padded ids `[data.len() / slots, slots]`.
    pub fn ids(name: &'a str, data: &'a [i64], slots: usize) -> Input<'a> {
        let rows = data.len().checked_div(slots).unwrap_or(0);
        Input { name, tensor: TensorView::I64 { data, shape: Shape::matrix(rows, slots) } }
    }

    /// A rank-1 i64 tensor (bag indices or offsets).
    pub fn flat(name: &'a str, data: &'a [i64]) -> Input<'a> {
        Input { name, tensor: TensorView::I64 { data, shape: Shape::vector(data.len()) } }
    }

    /// An f32 tensor of explicit shape (rank 1 to [`MAX_INPUT_RANK`], batch first).
    pub fn f32(name: &'a str, data: &'a [f32], dims: &[usize]) -> Result<Input<'a>> {
        let shape = checked_shape(name, dims, data.len())?;
        Ok(Input { name, tensor: TensorView::F32 { data, shape } })
    }

    /// An i64 tensor of explicit shape (rank 1 to [`MAX_INPUT_RANK`], batch first).
    pub fn i64(name: &'a str, data: &'a [i64], dims: &[usize]) -> Result<Input<'a>> {
        let shape = checked_shape(name, dims, data.len())?;
        Ok(Input { name, tensor: TensorView::I64 { data, shape } })
    }
}

fn checked_shape(name: &str, dims: &[usize], len: usize) -> Result<Shape> {
    let shape = Shape::from_dims(dims).ok_or_else(|| Error::InputShape {
        input: name.to_string(),
        expected: format!("rank 1 to {MAX_INPUT_RANK}"),
        actual: format!("{dims:?}"),
    })?;
    if shape.elements() != Some(len) {
        return Err(Error::InputShape {
            input: name.to_string(),
            expected: format!("{dims:?} ({} elements)", shape.elements().unwrap_or(usize::MAX)),
            actual: format!("{len} elements"),
        });
    }
    Ok(shape)
}

/// What to do with NaN or ±Inf in dense inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NanPolicy {
    /// Refuse the batch with [`Error::NonFinite`] naming the input, row and column
    /// (the default: a non-finite feature is almost always an upstream bug, and a NaN
    /// score silently ranks an item first or last).
    #[default]
    Reject,
    /// Compute anyway; non-finite values propagate as IEEE arithmetic dictates.
    Propagate,
}

/// Binds `inputs` to the graph's inputs: `binding[k]` is the index in `inputs` of graph
/// input `k`. Returns the batch size. Checks presence, dtype, shape and finiteness.
pub(crate) fn bind(g: &Graph, inputs: &[Input<'_>], nan: NanPolicy, binding: &mut [usize]) -> Result<usize> {
    for (k, def) in g.inputs.iter().enumerate() {
        // Callers usually pass inputs in graph order: try the same position first.
        let found = match inputs.get(k) {
            Some(i) if i.name == def.name => Some(k),
            _ => inputs.iter().position(|i| i.name == def.name),
        };
        binding[k] = found.ok_or_else(|| Error::MissingInput { input: def.name.clone() })?;
    }
    if inputs.len() != g.inputs.len() {
        for (j, input) in inputs.iter().enumerate() {
            if let Some(k) = g.input(input.name) {
                if binding[k] != j {
                    return Err(Error::DuplicateInput { input: input.name.to_string() });
                }
            } else {
                return Err(unknown_input(g, input.name));
            }
        }
    }

    let mut rows: Option<usize> = None;
    let mut agree = |name: &str, n: usize| -> Result<()> {
        match rows {
            None => {
                rows = Some(n);
                Ok(())
            }
            Some(expected) if expected == n => Ok(()),
            Some(expected) => Err(Error::BatchMismatch { input: name.to_string(), rows: n, expected }),
        }
    };
    for (k, def) in g.inputs.iter().enumerate() {
        let input = &inputs[binding[k]];
        let t = &input.tensor;
        let shape = t.shape();
        if shape.elements() != Some(t.len()) {
            return Err(Error::InputShape {
                input: def.name.clone(),
                expected: format!("{shape:?} ({} elements)", shape.elements().unwrap_or(usize::MAX)),
                actual: format!("{} elements", t.len()),
            });
        }
        let want_dtype = if matches!(def.kind, InputKind::Dense { .. }) { "f32" } else { "i64" };
        if t.dtype() != want_dtype {
            return Err(Error::InputDtype { input: def.name.clone(), expected: want_dtype, actual: t.dtype() });
        }
        let bad_shape =
            |expected: String| Error::InputShape { input: def.name.clone(), expected, actual: format!("{shape:?}") };
        // Dense and ids inputs: the batch, then the row shape — as the model declares it
        // (an imported model's `[1, …]` row may drop its leading 1, the batch's own axis),
        // flattened to `[batch, width]`, or `[batch]` for one value per row.
        let expected_row = || {
            let dims: alloc::vec::Vec<String> = def.shape.iter().map(|d| d.to_string()).collect();
            format!("[batch, {}]", dims.join(", "))
        };
        let row_ok = |rest: &[usize], w: usize| {
            rest == def.shape.as_slice()
                || (def.shape.first() == Some(&1) && rest == &def.shape[1..])
                || rest == [w]
                || (rest.is_empty() && w == 1)
        };
        match def.kind {
            InputKind::Dense { width: w } | InputKind::Ids { slots: w } => match shape.dims() {
                [n, rest @ ..] if row_ok(rest, w) => agree(&def.name, *n)?,
                _ => return Err(bad_shape(expected_row())),
            },
            InputKind::BagOffsets => match shape.dims() {
                [n] => agree(&def.name, *n)?,
                _ => return Err(bad_shape("[batch]".into())),
            },
            InputKind::BagIndices => {
                if shape.dims().len() != 1 {
                    return Err(bad_shape("[total ids]".into()));
                }
            }
        }
        if let (NanPolicy::Reject, TensorView::F32 { data, shape }) = (nan, t)
            && let Some(pos) = data.iter().position(|v| !v.is_finite())
        {
            let width = match def.kind {
                InputKind::Dense { width } => width.max(1),
                _ => shape.dims().last().copied().unwrap_or(1).max(1),
            };
            return Err(Error::NonFinite {
                input: def.name.clone(),
                row: pos / width,
                col: pos % width,
                value: data[pos],
            });
        }
    }
    let n = rows.ok_or(Error::EmptyBatch)?;
    if n == 0 {
        return Err(Error::EmptyBatch);
    }
    Ok(n)
}

fn unknown_input(g: &Graph, name: &str) -> Error {
    let mut known = String::new();
    for (i, d) in g.inputs.iter().enumerate() {
        if i > 0 {
            known.push_str(", ");
        }
        known.push_str(&d.name);
    }
    Error::UnknownInput { input: name.to_string(), known }
}

/// The i64 data of input `k` (validated to be i64 by [`bind`]).
pub(crate) fn ids<'a>(inputs: &[Input<'a>], binding: &[usize], k: usize) -> &'a [i64] {
    match inputs[binding[k]].tensor {
        TensorView::I64 { data, .. } => data,
        TensorView::F32 { .. } => &[],
    }
}

/// The f32 data of input `k` (validated to be f32 by [`bind`]).
pub(crate) fn dense<'a>(inputs: &[Input<'a>], binding: &[usize], k: usize) -> &'a [f32] {
    match inputs[binding[k]].tensor {
        TensorView::F32 { data, .. } => data,
        TensorView::I64 { .. } => &[],
    }
}
