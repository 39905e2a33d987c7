//! `graft_session`: runs batches and holds the last run's outputs and tickets.
//!
//! Outputs are copied out of the session's arena into buffers sized once at creation,
//! so they stay readable until the next run without tying C callers to Rust borrows;
//! the copy is a few floats per row next to the model itself.

use core::ffi::{c_char, c_void};
use std::ffi::CString;
use std::sync::Arc;

use graft_rt::adapters::LoadedAdapter;
use graft_rt::kernels::Level;
use graft_rt::{Input, NanPolicy, Q8Math, Session, SessionOptions};

use crate::boundary::{
    Failure, Handle, Out, Outcome, arg_mut, arg_ref, arg_slice, arg_str, call, free_handle, get, into_handle, opt_ref,
    opt_str, opt_struct,
};
use crate::model::{graft_dtype, graft_model};
use crate::rows::graft_row_adapters;
use crate::status::graft_status;
use crate::ticket::graft_ticket;

/// A model planned for batches of up to `max_batch` rows, with its own buffers.
///
/// Lifetime: valid until `graft_session_free`; keeps its model alive.
/// Thread-safety: one thread at a time; give each serving thread its own session (they
/// share the model's weights).
#[derive(Debug)]
pub struct graft_session {
    session: Session,
    /// The model's names (output names are handed out; input names must outlive the
    /// model handle).
    names: Arc<crate::model::Names>,
    /// The last run's outputs, `rows × cols[k]` each.
    values: Vec<Vec<f32>>,
    cols: Vec<usize>,
    rows: usize,
    tickets: Vec<(usize, Arc<LoadedAdapter>, u64)>,
    /// The last run's rows whose outputs are not finite (capacity `max_batch`).
    faults: Vec<graft_row_fault>,
    kernels: CString,
    /// Emptied between runs; keeps its capacity.
    inputs: Vec<Input<'static>>,
}

impl Handle for graft_session {
    const TAG: u64 = 0x6772_6166_7453_6573;
    const NAME: &'static str = "graft_session";
}

/// A row of the last run whose outputs hold NaN or ±Inf although its inputs were
/// finite (the model or an adapter overflowed): answer that row with an error and serve
/// the others. Checked under `GRAFT_NAN_POLICY_REJECT`, the default.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct graft_row_fault {
    /// The row of the batch.
    pub row: usize,
    /// The first output of the row that is not finite (index as in `graft_session_output`).
    pub output: usize,
    /// Its column.
    pub col: usize,
    /// The value found there (NaN, +Inf or -Inf).
    pub value: f32,
}

/// What to do with NaN or ±Inf in dense inputs (and outputs).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum graft_nan_policy {
    /// Refuse the batch with `GRAFT_STATUS_NON_FINITE_INPUT` naming input, row, column,
    /// and list rows whose outputs are not finite (`graft_session_row_fault`).
    Reject = 0,
    /// Compute anyway; non-finite values propagate, and outputs are not checked.
    Propagate = 1,
}

/// How q8 linears multiply.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum graft_q8_math {
    /// Activations quantized per row to int8, exact integer dot products (the default;
    /// adds at most `w_scale · x_scale/2 · Σ|w_codes|` per output, `x_scale = max|x|/127`).
    Int8 = 0,
    /// Weights dequantized to f32: only f32 rounding.
    Exact = 1,
}

/// How a session is planned. Start from `graft_session_default_params()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct graft_session_params {
    /// Largest batch a run accepts; buffers are sized for it. Default 256.
    pub max_batch: usize,
    /// Threads one run uses (the caller plus `threads - 1` workers); 0 is one per CPU.
    /// Default 1.
    pub threads: usize,
    /// Kernel level name (`"scalar"`, `"avx2"`, …); NULL or `"auto"` honours the
    /// `GRAFT_KERNELS` environment variable, else picks the best the CPU runs.
    pub kernels: *const c_char,
    /// A `graft_nan_policy`. Default `GRAFT_NAN_POLICY_REJECT`.
    pub nan_policy: u32,
    /// Where the graph runs: `"cpu"`, `"cuda"` or `"cuda:N"`; NULL is the CPU. A CUDA
    /// device needs a library built with the `cuda` feature and a machine with the CUDA
    /// driver, else `graft_session_new` fails with `GRAFT_STATUS_CUDA_UNAVAILABLE`.
    pub device: *const c_char,
    /// A `graft_q8_math` (ABI 1.1). Default `GRAFT_Q8_MATH_INT8`.
    pub q8_math: u32,
}

/// One run input. `data` holds `dims[0]` (rank 1) or `dims[0] × dims[1]` (rank 2)
/// elements of `dtype`, row-major, aligned for the type; it is only read during the run.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct graft_input {
    /// The graph input's name (see `graft_model_input`).
    pub name: *const c_char,
    /// A `graft_dtype`.
    pub dtype: u32,
    /// The elements; may be NULL only when there are none.
    pub data: *const c_void,
    /// 1 or 2.
    pub rank: usize,
    /// The shape; `dims[1]` is ignored for rank 1.
    pub dims: [usize; 2],
}

/// One output of the last run. `data` holds `rows × cols` floats, row-major, owned by
/// the session and valid until its next run or free.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct graft_output {
    /// The output's name, owned by the session.
    pub name: *const c_char,
    /// The values.
    pub data: *const f32,
    /// Rows of the last batch.
    pub rows: usize,
    /// Values per row.
    pub cols: usize,
}

/// The defaults: max_batch 256, one thread, kernels auto, NaN rejected, the CPU, int8
/// q8 math.
#[unsafe(no_mangle)]
pub extern "C" fn graft_session_default_params() -> graft_session_params {
    let d = SessionOptions::default();
    graft_session_params {
        max_batch: d.max_batch,
        threads: d.threads,
        kernels: core::ptr::null(),
        nan_policy: graft_nan_policy::Reject as u32,
        device: core::ptr::null(),
        q8_math: match d.q8_math {
            Q8Math::Int8 => graft_q8_math::Int8 as u32,
            Q8Math::Exact => graft_q8_math::Exact as u32,
        },
    }
}

fn options(p: &graft_session_params) -> Outcome<SessionOptions> {
    // SAFETY: the params contract: `kernels` is NULL or a NUL-terminated string.
    let kernels = match unsafe { opt_str(p.kernels, "params.kernels") }? {
        None | Some("auto") => None,
        Some(name) => Some(Level::parse(name).ok_or_else(|| {
            Failure::invalid("params.kernels", format!("unknown kernel level `{name}` (auto, scalar, avx2, …)"))
        })?),
    };
    let nan_policy = match p.nan_policy {
        x if x == graft_nan_policy::Reject as u32 => NanPolicy::Reject,
        x if x == graft_nan_policy::Propagate as u32 => NanPolicy::Propagate,
        x => return Err(Failure::invalid("params.nan_policy", format!("{x} is not a graft_nan_policy"))),
    };
    // SAFETY: the params contract: `device` is NULL or a NUL-terminated string.
    let device = match unsafe { opt_str(p.device, "params.device") }? {
        None => graft_rt::Device::Cpu,
        Some(name) => graft_rt::Device::parse(name).map_err(|e| Failure::invalid("params.device", e))?,
    };
    let q8_math = match p.q8_math {
        x if x == graft_q8_math::Int8 as u32 => Q8Math::Int8,
        x if x == graft_q8_math::Exact as u32 => Q8Math::Exact,
        x => return Err(Failure::invalid("params.q8_math", format!("{x} is not a graft_q8_math"))),
    };
    Ok(SessionOptions { max_batch: p.max_batch, threads: p.threads, kernels, nan_policy, device, q8_math })
}

/// Plans `model` for `params` (NULL: defaults) and allocates everything a run uses.
///
/// # Safety
/// `model` is a live model; `params` NULL or a valid params struct; `out` points to
/// writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_session_new(
    model: *const graft_model,
    params: *const graft_session_params,
    out: *mut *mut graft_session,
) -> graft_status {
    call("graft_session_new", || {
        let out = Out::new(out, "out")?;
        // SAFETY: the caller's contract.
        let (model, params) = unsafe { (arg_ref(model, "model")?, opt_struct(params, "params")?) };
        let options = options(&params.copied().unwrap_or_else(|| graft_session_default_params()))?;
        let session = Session::new(&model.model, options)?;
        let g = model.model.graph();
        let names = model.names.clone();
        let cols: Vec<usize> = g.outputs.iter().map(|o| g.value_width(o.value)).collect();
        let values = cols
            .iter()
            .map(|&c| {
                let n = c.saturating_mul(options.max_batch);
                let mut v = Vec::new();
                v.try_reserve_exact(n).map_err(|_| {
                    Failure::from(graft_rt::Error::OutOfMemory {
                        what: format!("output copies for max_batch {}", options.max_batch),
                        bytes: n as u128 * 4,
                    })
                })?;
                Ok(v)
            })
            .collect::<Outcome<Vec<_>>>()?;
        let mut faults = Vec::new();
        faults.try_reserve_exact(options.max_batch).map_err(|_| {
            Failure::from(graft_rt::Error::OutOfMemory {
                what: format!("row faults for max_batch {}", options.max_batch),
                bytes: options.max_batch as u128 * size_of::<graft_row_fault>() as u128,
            })
        })?;
        let kernels = CString::new(session.kernels().level.as_str()).unwrap_or_default();
        let inputs = Vec::with_capacity(g.inputs.len());
        out.write(into_handle(graft_session {
            session,
            names,
            values,
            cols,
            rows: 0,
            tickets: Vec::new(),
            faults,
            kernels,
            inputs,
        }));
        Ok(())
    })
}

/// Frees a session. NULL is a no-op.
///
/// # Safety
/// `session` is NULL or a session from this library not yet freed and not in use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_session_free(session: *mut graft_session) {
    free_handle(session);
}

/// Converts one C input, borrowing its data for the run.
///
/// # Safety
/// `i` follows the `graft_input` contract.
unsafe fn input<'a>(i: &graft_input, k: usize) -> Outcome<Input<'a>> {
    // SAFETY: the caller's contract.
    let name = unsafe { arg_str(i.name, &format!("inputs[{k}].name")) }?;
    let dims = match i.rank {
        1 => &i.dims[..1],
        2 => &i.dims[..],
        r => return Err(Failure::invalid(&format!("inputs[{k}].rank"), format!("{r} (must be 1 or 2)"))),
    };
    let len = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Failure::invalid(&format!("inputs[{k}].dims"), format!("{dims:?} overflows")))?;
    let what = format!("inputs[{k}].data");
    Ok(match i.dtype {
        x if x == graft_dtype::F32 as u32 => {
            // SAFETY: the caller's contract: `len` f32 at `data`.
            Input::f32(name, unsafe { arg_slice(i.data.cast::<f32>(), len, &what) }?, dims)?
        }
        x if x == graft_dtype::I64 as u32 => {
            // SAFETY: the caller's contract: `len` i64 at `data`.
            Input::i64(name, unsafe { arg_slice(i.data.cast::<i64>(), len, &what) }?, dims)?
        }
        x => return Err(Failure::invalid(&format!("inputs[{k}].dtype"), format!("{x} is not a graft_dtype"))),
    })
}

impl graft_session {
    /// Runs one batch and keeps its outputs and tickets.
    fn run(&mut self, raw: &[graft_input], adapters: Option<&graft_row_adapters>) -> Outcome {
        self.rows = 0;
        self.tickets.clear();
        self.faults.clear();
        let mut inputs: Vec<Input<'_>> = core::mem::take(&mut self.inputs);
        let result = self.run_inputs(raw, adapters, &mut inputs);
        inputs.clear();
        // An empty Vec of a same-layout type: collecting in place keeps the allocation.
        self.inputs = inputs.into_iter().map(|_| unreachable!("emptied above")).collect();
        result
    }

    fn run_inputs<'a>(
        &mut self,
        raw: &'a [graft_input],
        adapters: Option<&graft_row_adapters>,
        inputs: &mut Vec<Input<'a>>,
    ) -> Outcome {
        for (k, i) in raw.iter().enumerate() {
            // SAFETY: the `graft_session_run` contract covers every input.
            inputs.push(unsafe { input(i, k) }?);
        }
        let outputs = match adapters {
            None => self.session.run(inputs)?,
            Some(a) => self.session.run_with(inputs, &a.rows)?,
        };
        for (k, (_, value)) in outputs.iter().enumerate() {
            let buf = &mut self.values[k];
            buf.clear();
            for r in 0..value.rows() {
                buf.extend_from_slice(value.row(r));
            }
        }
        self.tickets.extend(outputs.tickets().map(|t| (t.row, t.adapter.clone(), t.value)));
        self.faults.extend(outputs.row_faults().iter().map(|f| graft_row_fault {
            row: f.row,
            output: f.output,
            col: f.col,
            value: f.value,
        }));
        self.rows = outputs.rows();
        Ok(())
    }
}

/// Runs one batch. `inputs` holds `n_inputs` inputs matched to the graph by name (all
/// graph inputs, any order). `adapters` NULL runs the base model; otherwise each row uses
/// its assigned adapters (the assignment must have as many rows as the batch, unless it
/// is uniform). On success the outputs and tickets of this run replace the previous
/// ones; on failure there are none. Under `GRAFT_NAN_POLICY_REJECT` a run succeeds
/// even when some rows' outputs are not finite: check `graft_session_row_fault_count`
/// and answer those rows with an error. A session used by another thread at the same
/// time gives `GRAFT_STATUS_BUSY` (and nothing runs).
///
/// # Safety
/// `session` is a live session no other thread uses now; `inputs` points to `n_inputs`
/// inputs following the `graft_input` contract; `adapters` is NULL or a live assignment
/// no thread modifies during the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_session_run(
    session: *mut graft_session,
    inputs: *const graft_input,
    n_inputs: usize,
    adapters: *const graft_row_adapters,
) -> graft_status {
    call("graft_session_run", || {
        // SAFETY: the caller's contract.
        let (mut s, raw, adapters) = unsafe {
            (arg_mut(session, "session")?, arg_slice(inputs, n_inputs, "inputs")?, opt_ref(adapters, "adapters")?)
        };
        s.run(raw, adapters.as_deref())
    })
}

/// Writes the number of outputs to `*out`.
///
/// # Safety
/// `session` is a live session; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_session_output_count(session: *const graft_session, out: *mut usize) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe { get("graft_session_output_count", session, "session", out, |s| Ok(s.names.outputs.len())) }
}

fn output(s: &graft_session, k: usize) -> graft_output {
    graft_output { name: s.names.outputs[k].as_ptr(), data: s.values[k].as_ptr(), rows: s.rows, cols: s.cols[k] }
}

/// Describes output `index` of the last run into `*out` (`rows` is 0 before the first
/// successful run and after a failed one).
///
/// # Safety
/// `session` is a live session; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_session_output(
    session: *const graft_session,
    index: usize,
    out: *mut graft_output,
) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe {
        get("graft_session_output", session, "session", out, |s| {
            if index >= s.names.outputs.len() {
                let n = s.names.outputs.len();
                return Err(Failure::invalid("index", format!("{index} is past the {n} outputs")));
            }
            Ok(output(s, index))
        })
    }
}

/// Describes the output named `name` of the last run into `*out`;
/// `GRAFT_STATUS_NOT_FOUND` if the model has no such output.
///
/// # Safety
/// `session` is a live session; `name` a NUL-terminated string; `out` points to
/// writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_session_output_by_name(
    session: *const graft_session,
    name: *const c_char,
    out: *mut graft_output,
) -> graft_status {
    call("graft_session_output_by_name", || {
        let out = Out::new(out, "out")?;
        // SAFETY: the caller's contract.
        let (s, name) = unsafe { (arg_ref(session, "session")?, arg_str(name, "name")?) };
        let k = s.names.outputs.iter().position(|n| n.to_bytes() == name.as_bytes()).ok_or_else(|| {
            let known: Vec<_> = s.names.outputs.iter().map(|n| n.to_string_lossy()).collect();
            Failure::new(graft_status::NotFound, format!("no output `{name}` (outputs: {})", known.join(", ")))
        })?;
        out.write(output(&s, k));
        Ok(())
    })
}

/// Writes the number of feedback tickets the last run issued to `*out`: one per row
/// served by an adapter that learns from labels (an error memory).
///
/// # Safety
/// `session` is a live session; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_session_ticket_count(session: *const graft_session, out: *mut usize) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe { get("graft_session_ticket_count", session, "session", out, |s| Ok(s.tickets.len())) }
}

/// Takes ticket `index` of the last run as a new handle in `*out`; pass the row's label
/// to it with `graft_ticket_feedback` once known, from any thread, then free it.
///
/// # Safety
/// `session` is a live session; `out` points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_session_ticket(
    session: *const graft_session,
    index: usize,
    out: *mut *mut graft_ticket,
) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe {
        get("graft_session_ticket", session, "session", out, |s| {
            let (row, adapter, value) = s.tickets.get(index).ok_or_else(|| {
                Failure::invalid("index", format!("{index} is past the last run's {} tickets", s.tickets.len()))
            })?;
            Ok(into_handle(graft_ticket::new(*row, adapter.clone(), *value)))
        })
    }
}

/// Writes the name of the kernel level the session runs (`"scalar"`, `"avx2"`, …) to
/// `*out`; owned by the session.
///
/// # Safety
/// `session` is a live session; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_session_kernels(session: *const graft_session, out: *mut *const c_char) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe { get("graft_session_kernels", session, "session", out, |s| Ok(s.kernels.as_ptr())) }
}

/// Writes the number of rows of the last run whose outputs are not finite to `*out`
/// (0 after a failed run, and always 0 under `GRAFT_NAN_POLICY_PROPAGATE`).
///
/// # Safety
/// `session` is a live session; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_session_row_fault_count(session: *const graft_session, out: *mut usize) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe { get("graft_session_row_fault_count", session, "session", out, |s| Ok(s.faults.len())) }
}

/// Describes row fault `index` of the last run (row order, one per row) into `*out`.
///
/// # Safety
/// `session` is a live session; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_session_row_fault(
    session: *const graft_session,
    index: usize,
    out: *mut graft_row_fault,
) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe {
        get("graft_session_row_fault", session, "session", out, |s| {
            s.faults.get(index).copied().ok_or_else(|| {
                Failure::invalid("index", format!("{index} is past the last run's {} row faults", s.faults.len()))
            })
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::{graft_model_free, graft_model_from_buffer, graft_model_input_count};
    use graft_rt::builder::{Matrix, ModelBuilder, WeightFormats};

    fn model() -> *mut graft_model {
        let mut b = ModelBuilder::new("m");
        let x = b.dense_input("x", 2);
        let y = b.linear("fc", &x, Matrix::new(1, 2, vec![4.0, -4.0]), Some(vec![0.5]));
        b.output("y", &y);
        let bytes = b.to_bytes(WeightFormats::default()).unwrap();
        let mut m = core::ptr::null_mut();
        // SAFETY: a valid buffer and out-pointer.
        assert_eq!(unsafe { graft_model_from_buffer(bytes.as_ptr().cast(), bytes.len(), &mut m) }, graft_status::Ok);
        m
    }

    #[test]
    fn a_session_in_use_is_busy_and_a_handle_of_another_type_is_refused() {
        let m = model();
        let mut s = core::ptr::null_mut();
        // SAFETY: live handles and valid out-pointers throughout.
        unsafe {
            assert_eq!(graft_session_new(m, core::ptr::null(), &mut s), graft_status::Ok);
            let x = [1.0f32, 2.0, 1e38, -1e38];
            let input = graft_input {
                name: c"x".as_ptr(),
                dtype: graft_dtype::F32 as u32,
                data: x.as_ptr().cast(),
                rank: 2,
                dims: [2, 2],
            };
            {
                // Another thread's run in progress, as the use counter sees it.
                let _running = crate::boundary::arg_mut(s, "session").unwrap();
                assert_eq!(graft_session_run(s, &input, 1, core::ptr::null()), graft_status::Busy);
                let mut n = 0usize;
                assert_eq!(graft_session_row_fault_count(s, &mut n), graft_status::Busy);
            }
            assert_eq!(graft_session_run(s, &input, 1, core::ptr::null()), graft_status::Ok);
            let (mut n, mut fault) = (0usize, graft_row_fault { row: 9, output: 9, col: 9, value: 0.0 });
            assert_eq!(graft_session_row_fault_count(s, &mut n), graft_status::Ok);
            assert_eq!(n, 1);
            assert_eq!(graft_session_row_fault(s, 0, &mut fault), graft_status::Ok);
            assert_eq!((fault.row, fault.output, fault.col), (1, 0, 0));
            assert!(fault.value.is_infinite());
            // A session passed as a model.
            let mut count = 0usize;
            let status = graft_model_input_count(s.cast_const().cast(), &mut count);
            assert_eq!(status, graft_status::InvalidArgument);
            graft_session_free(s);
            graft_model_free(m);
        }
    }
}
