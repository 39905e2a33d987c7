//! `graft_model`: an opened model container and what its graph asks of callers.

use core::ffi::{c_char, c_void};
use std::ffi::CString;
use std::sync::Arc;

use graft_rt::Model;
use graft_rt::graph::InputKind;

use crate::boundary::{Failure, Handle, Out, Outcome, arg_slice, arg_str, call, free_handle, get, into_handle};
use crate::status::graft_status;

/// A model opened from a `.graft` container.
///
/// Lifetime: valid until `graft_model_free`; sessions and registries made from it keep
/// the model (and its file mapping) alive on their own, so it may be freed first. The
/// input and output names it hands out stay valid until the model and every session and
/// registry made from it are freed.
/// Thread-safety: immutable; may be used from any number of threads at once.
#[derive(Debug)]
pub struct graft_model {
    pub(crate) model: Model,
    pub(crate) names: Arc<Names>,
}

/// The C strings of a model's input and output names, shared by every handle made from
/// the model so that a name outlives the handle it was read from.
#[derive(Debug)]
pub(crate) struct Names {
    inputs: Vec<CString>,
    pub(crate) outputs: Vec<CString>,
}

impl Handle for graft_model {
    const TAG: u64 = 0x6772_6166_744d_6f64;
    const NAME: &'static str = "graft_model";
}

impl graft_model {
    fn new(model: Model) -> Outcome<graft_model> {
        let c_name = |name: &str| {
            CString::new(name).map_err(|_| {
                Failure::new(graft_status::ModelInvalid, format!("name `{}` contains a NUL byte", name.escape_debug()))
            })
        };
        let g = model.graph();
        let inputs = g.inputs.iter().map(|i| c_name(&i.name)).collect::<Outcome<_>>()?;
        let outputs = g.outputs.iter().map(|o| c_name(&o.name)).collect::<Outcome<_>>()?;
        Ok(graft_model { model, names: Arc::new(Names { inputs, outputs }) })
    }
}

/// Element types of inputs.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum graft_dtype {
    /// 32-bit IEEE float.
    F32 = 1,
    /// 64-bit signed integer (ids, offsets).
    I64 = 2,
}

/// What a graph input holds.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum graft_input_kind {
    /// f32 `[batch, width]` features.
    Dense = 1,
    /// i64 `[batch, width]` ids: one bag of `width` ids per row.
    Ids = 2,
    /// i64 `[total]` ids of all bags, rows concatenated.
    BagIndices = 3,
    /// i64 `[batch]` start of each row's bag in the paired indices input.
    BagOffsets = 4,
}

/// One graph input, as `graft_model_input` describes it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct graft_input_info {
    /// The name `graft_input.name` must carry; owned by the model.
    pub name: *const c_char,
    /// A `graft_input_kind`.
    pub kind: u32,
    /// A `graft_dtype`.
    pub dtype: u32,
    /// Values per row: features (dense) or ids (padded ids); 0 for flat inputs.
    pub width: usize,
    /// Ids must lie in `[0, id_bound)`: the rows of the smallest table the input feeds;
    /// 0 where the input holds no ids.
    pub id_bound: usize,
}

/// Opens the `.graft` file at `path` by memory-mapping it: nothing beyond the header and
/// graph is read, so open time does not grow with the weights. On success `*out` owns a
/// new model.
///
/// # Safety
/// `path` is a NUL-terminated string; `out` points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_model_open(path: *const c_char, out: *mut *mut graft_model) -> graft_status {
    call("graft_model_open", || {
        let out = Out::new(out, "out")?;
        // SAFETY: the caller's contract.
        let path = unsafe { arg_str(path, "path") }?;
        out.write(into_handle(graft_model::new(Model::open(path)?)?));
        Ok(())
    })
}

/// Opens a model from `len` bytes of a `.graft` container in memory. The bytes are
/// copied (into aligned storage), so the buffer may be reused as soon as this returns.
///
/// # Safety
/// `data` points to `len` readable bytes; `out` points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_model_from_buffer(
    data: *const c_void,
    len: usize,
    out: *mut *mut graft_model,
) -> graft_status {
    call("graft_model_from_buffer", || {
        let out = Out::new(out, "out")?;
        // SAFETY: the caller's contract.
        let bytes = unsafe { arg_slice(data.cast::<u8>(), len, "data") }?;
        out.write(into_handle(graft_model::new(Model::from_slice_copy(bytes)?)?));
        Ok(())
    })
}

/// Frees a model. NULL is a no-op.
///
/// # Safety
/// `model` is NULL or a model from this library not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_model_free(model: *mut graft_model) {
    free_handle(model);
}

/// Writes the number of graph inputs to `*out`.
///
/// # Safety
/// `model` is a live model; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_model_input_count(model: *const graft_model, out: *mut usize) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe { get("graft_model_input_count", model, "model", out, |m| Ok(m.names.inputs.len())) }
}

/// Describes graph input `index` (0-based, graph order) into `*out`. The name is owned
/// by the model and stays valid until the model and every session and registry made
/// from it are freed (handles may be freed in any order).
///
/// # Safety
/// `model` is a live model; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_model_input(
    model: *const graft_model,
    index: usize,
    out: *mut graft_input_info,
) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe {
        get("graft_model_input", model, "model", out, |m| {
            let g = m.model.graph();
            let def = g.inputs.get(index).ok_or_else(|| {
                Failure::invalid("index", format!("{index} is past the model's {} inputs", g.inputs.len()))
            })?;
            let (kind, dtype, width) = match def.kind {
                InputKind::Dense { width } => (graft_input_kind::Dense, graft_dtype::F32, width),
                InputKind::Ids { slots } => (graft_input_kind::Ids, graft_dtype::I64, slots),
                InputKind::BagIndices => (graft_input_kind::BagIndices, graft_dtype::I64, 0),
                InputKind::BagOffsets => (graft_input_kind::BagOffsets, graft_dtype::I64, 0),
            };
            Ok(graft_input_info {
                name: m.names.inputs[index].as_ptr(),
                kind: kind as u32,
                dtype: dtype as u32,
                width,
                id_bound: g.id_bound(index).unwrap_or(0),
            })
        })
    }
}

/// Writes the number of graph outputs to `*out`.
///
/// # Safety
/// `model` is a live model; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_model_output_count(model: *const graft_model, out: *mut usize) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe { get("graft_model_output_count", model, "model", out, |m| Ok(m.names.outputs.len())) }
}

/// Writes the name of graph output `index` to `*out` (owned by the model, valid until
/// the model and every session and registry made from it are freed).
///
/// # Safety
/// `model` is a live model; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_model_output_name(
    model: *const graft_model,
    index: usize,
    out: *mut *const c_char,
) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe {
        get("graft_model_output_name", model, "model", out, |m| {
            let name = m.names.outputs.get(index).ok_or_else(|| {
                Failure::invalid("index", format!("{index} is past the model's {} outputs", m.names.outputs.len()))
            })?;
            Ok(name.as_ptr())
        })
    }
}
