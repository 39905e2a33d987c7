//! Status codes and the thread-local last-error message.
//!
//! Every fallible function returns a [`graft_status`]. The numbers are part of the ABI:
//! they are grouped in blocks by domain, never renumbered, and a retired code stays here
//! as a comment so its number is not reused. The human-readable detail of the most recent
//! failure on the calling thread is kept in a thread-local and read with
//! [`graft_last_error_message`], as `errno`/`strerror` would be: a status is cheap to
//! branch on, a message is what a log line needs.

use core::ffi::c_char;
use std::cell::RefCell;
use std::ffi::CString;

use graft_rt::Error;

/// What a call did. `GRAFT_STATUS_OK` is zero; every other value is a failure, and
/// `graft_last_error_message()` then describes it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum graft_status {
    /// Success.
    Ok = 0,

    // 1–19: the call itself.
    /// A required pointer argument was NULL.
    NullArgument = 1,
    /// An argument is malformed: not UTF-8, a misaligned buffer, an unknown enum value,
    /// an index past the end, an unknown kernel level name.
    InvalidArgument = 2,
    /// No output has this name.
    NotFound = 3,
    /// The handle is in use on another thread where the API allows one thread at a time
    /// (a session run or read while another thread runs it); nothing was done.
    Busy = 4,

    // 20–39: files and models.
    /// A file could not be read or written.
    Io = 20,
    /// A model container or graph is malformed (truncated, bad header, bad graph).
    ModelInvalid = 21,
    /// A session option is invalid (e.g. `max_batch` 0 or too large for memory).
    InvalidOption = 22,
    /// The requested kernel level is not available on this CPU or build.
    KernelUnavailable = 23,
    /// A CUDA device was requested but cannot be used: the library was built without
    /// CUDA, the driver is missing, or there is no device with that ordinal.
    CudaUnavailable = 24,
    /// Memory or worker threads sized by the model or the options could not be obtained
    /// (e.g. `threads` or `max_batch` far beyond the machine); nothing was allocated.
    ResourceExhausted = 25,

    // 40–59: requests.
    /// An input is missing, unknown, duplicated, or of the wrong dtype or shape, or the
    /// inputs disagree on the batch size.
    InputInvalid = 40,
    /// The batch has more rows than the session's `max_batch`.
    BatchTooLarge = 41,
    /// An id lies outside its embedding table, or bag offsets are malformed.
    IdOutOfRange = 42,
    /// A dense input holds NaN or ±Inf and the session rejects non-finite inputs.
    NonFiniteInput = 43,
    /// A row's outputs hold NaN or ±Inf from finite inputs (see `graft_row_fault`; runs
    /// report these per row and succeed).
    NonFiniteOutput = 44,

    // 60–79: adapters.
    /// An adapter kind refused an adapter's files or options, or failed running it.
    AdapterInvalid = 60,
    /// No adapter is registered under this id.
    UnknownAdapter = 61,
    /// The id is already registered (insert), or is not (replace).
    AdapterIdConflict = 62,
    /// No adapter kind has this name.
    UnknownAdapterKind = 63,
    /// The adapter was disabled after a fault; load or replace it again.
    AdapterDisabled = 64,
    /// The adapter refused a label: an unknown, evicted or already answered ticket, or a
    /// label outside [0, 1].
    FeedbackRejected = 65,
    /// Saved adapter state is torn, or belongs to another model or configuration.
    AdapterState = 66,
    /// The adapters were loaded for another model than the session's, or the per-row
    /// assignment does not match the batch.
    AdapterMismatch = 67,
    /// A GPU session was asked to run an adapter whose kind cannot run on the device
    /// (the CPU is never used mid-graph instead).
    AdapterNotOnDevice = 68,

    // 80–89: plugins.
    /// A plugin file was refused (not a library, no entry symbol, another ABI version,
    /// a kind name already taken).
    PluginLoad = 80,
    /// An adapter of a plugin kind wrote NaN or ±Inf from finite inputs; it is disabled.
    PluginFault = 81,

    // 100–: graft itself.
    /// graft panicked; the panic was caught at the boundary. Please report it.
    Panic = 100,
    /// An error this version of the C API does not classify yet.
    Other = 101,
}

impl graft_status {
    fn name(self) -> &'static core::ffi::CStr {
        match self {
            graft_status::Ok => c"GRAFT_STATUS_OK",
            graft_status::NullArgument => c"GRAFT_STATUS_NULL_ARGUMENT",
            graft_status::InvalidArgument => c"GRAFT_STATUS_INVALID_ARGUMENT",
            graft_status::NotFound => c"GRAFT_STATUS_NOT_FOUND",
            graft_status::Busy => c"GRAFT_STATUS_BUSY",
            graft_status::Io => c"GRAFT_STATUS_IO",
            graft_status::ModelInvalid => c"GRAFT_STATUS_MODEL_INVALID",
            graft_status::InvalidOption => c"GRAFT_STATUS_INVALID_OPTION",
            graft_status::KernelUnavailable => c"GRAFT_STATUS_KERNEL_UNAVAILABLE",
            graft_status::CudaUnavailable => c"GRAFT_STATUS_CUDA_UNAVAILABLE",
            graft_status::ResourceExhausted => c"GRAFT_STATUS_RESOURCE_EXHAUSTED",
            graft_status::InputInvalid => c"GRAFT_STATUS_INPUT_INVALID",
            graft_status::BatchTooLarge => c"GRAFT_STATUS_BATCH_TOO_LARGE",
            graft_status::IdOutOfRange => c"GRAFT_STATUS_ID_OUT_OF_RANGE",
            graft_status::NonFiniteInput => c"GRAFT_STATUS_NON_FINITE_INPUT",
            graft_status::NonFiniteOutput => c"GRAFT_STATUS_NON_FINITE_OUTPUT",
            graft_status::AdapterInvalid => c"GRAFT_STATUS_ADAPTER_INVALID",
            graft_status::UnknownAdapter => c"GRAFT_STATUS_UNKNOWN_ADAPTER",
            graft_status::AdapterIdConflict => c"GRAFT_STATUS_ADAPTER_ID_CONFLICT",
            graft_status::UnknownAdapterKind => c"GRAFT_STATUS_UNKNOWN_ADAPTER_KIND",
            graft_status::AdapterDisabled => c"GRAFT_STATUS_ADAPTER_DISABLED",
            graft_status::FeedbackRejected => c"GRAFT_STATUS_FEEDBACK_REJECTED",
            graft_status::AdapterState => c"GRAFT_STATUS_ADAPTER_STATE",
            graft_status::AdapterMismatch => c"GRAFT_STATUS_ADAPTER_MISMATCH",
            graft_status::AdapterNotOnDevice => c"GRAFT_STATUS_ADAPTER_NOT_ON_DEVICE",
            graft_status::PluginLoad => c"GRAFT_STATUS_PLUGIN_LOAD",
            graft_status::PluginFault => c"GRAFT_STATUS_PLUGIN_FAULT",
            graft_status::Panic => c"GRAFT_STATUS_PANIC",
            graft_status::Other => c"GRAFT_STATUS_OTHER",
        }
    }
}

/// The status a runtime error maps to.
pub(crate) fn status_of(e: &Error) -> graft_status {
    use graft_status as S;
    match e {
        Error::Io { .. } | Error::Npy { .. } => S::Io,
        Error::InFile { source, .. } => match status_of(source) {
            S::Other => S::ModelInvalid,
            inner => inner,
        },
        Error::Truncated { .. }
        | Error::HeaderTooLarge { .. }
        | Error::HeaderJson { .. }
        | Error::TensorEntry { .. }
        | Error::UnknownDtype { .. }
        | Error::TensorOutOfRange { .. }
        | Error::TensorOverlap { .. }
        | Error::TensorGap { .. }
        | Error::Misaligned { .. }
        | Error::MisalignedBuffer { .. }
        | Error::UnsupportedVersion { .. }
        | Error::GraphJson { .. }
        | Error::UnknownOp { .. }
        | Error::InvalidAttribute { .. }
        | Error::DuplicateName { .. }
        | Error::DanglingEdge { .. }
        | Error::Cycle { .. }
        | Error::MissingTensor { .. }
        | Error::TensorMismatch { .. }
        | Error::ShapeMismatch { .. }
        | Error::InvalidOutput { .. }
        | Error::NonFiniteParameter { .. } => S::ModelInvalid,
        Error::OutOfMemory { .. } | Error::ThreadStart { .. } => S::ResourceExhausted,
        Error::NonFiniteOutput { .. } => S::NonFiniteOutput,
        Error::UnknownInput { .. }
        | Error::MissingInput { .. }
        | Error::DuplicateInput { .. }
        | Error::InputDtype { .. }
        | Error::InputShape { .. }
        | Error::BatchMismatch { .. }
        | Error::EmptyBatch => S::InputInvalid,
        Error::BatchTooLarge { .. } => S::BatchTooLarge,
        Error::IdOutOfRange { .. } | Error::BadOffsets { .. } => S::IdOutOfRange,
        Error::NonFinite { .. } => S::NonFiniteInput,
        Error::InvalidOption { .. } => S::InvalidOption,
        Error::KernelUnavailable { .. } => S::KernelUnavailable,
        Error::CudaUnavailable { .. } => S::CudaUnavailable,
        Error::AdapterNotOnDevice { .. } => S::AdapterNotOnDevice,
        Error::Adapter { code, .. } => match *code {
            "io" => S::Io,
            "ticket" => S::FeedbackRejected,
            "state" => S::AdapterState,
            _ => S::AdapterInvalid,
        },
        Error::UnknownAdapter { .. } => S::UnknownAdapter,
        Error::AdapterId { .. } => S::AdapterIdConflict,
        Error::UnknownAdapterKind { .. } => S::UnknownAdapterKind,
        Error::AdapterModel { .. } | Error::RowAdapters { .. } => S::AdapterMismatch,
        Error::Plugin { .. } => S::PluginLoad,
        Error::PluginFault(_) => S::PluginFault,
        Error::AdapterDisabled { .. } => S::AdapterDisabled,
        _ => S::Other,
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Records `message` as this thread's last error (interior NULs are escaped).
pub(crate) fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // A thread being torn down has no slot left; the status still reports the failure.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = Some(text));
}

/// The message of the most recent failed call on the calling thread, or "" if none
/// failed yet. Successful calls leave it unchanged. The string is owned by graft and
/// stays valid until the next failing call on the same thread.
#[unsafe(no_mangle)]
pub extern "C" fn graft_last_error_message() -> *const c_char {
    crate::boundary::infallible(c"".as_ptr(), || {
        LAST_ERROR.try_with(|slot| slot.borrow().as_ref().map_or(c"".as_ptr(), |m| m.as_ptr())).unwrap_or(c"".as_ptr())
    })
}

/// The name of a status code (`"GRAFT_STATUS_OK"`, …), or `"GRAFT_STATUS_UNKNOWN"` for a
/// number this library does not define. Static storage; never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn graft_status_name(status: u32) -> *const c_char {
    crate::boundary::infallible(c"GRAFT_STATUS_UNKNOWN".as_ptr(), || {
        ALL.iter().find(|s| **s as u32 == status).map_or(c"GRAFT_STATUS_UNKNOWN", |s| s.name()).as_ptr()
    })
}

/// Every status, for lookups by number.
const ALL: [graft_status; 29] = [
    graft_status::Ok,
    graft_status::NullArgument,
    graft_status::InvalidArgument,
    graft_status::NotFound,
    graft_status::Busy,
    graft_status::Io,
    graft_status::ModelInvalid,
    graft_status::InvalidOption,
    graft_status::KernelUnavailable,
    graft_status::CudaUnavailable,
    graft_status::ResourceExhausted,
    graft_status::InputInvalid,
    graft_status::BatchTooLarge,
    graft_status::IdOutOfRange,
    graft_status::NonFiniteInput,
    graft_status::NonFiniteOutput,
    graft_status::AdapterInvalid,
    graft_status::UnknownAdapter,
    graft_status::AdapterIdConflict,
    graft_status::UnknownAdapterKind,
    graft_status::AdapterDisabled,
    graft_status::FeedbackRejected,
    graft_status::AdapterState,
    graft_status::AdapterMismatch,
    graft_status::AdapterNotOnDevice,
    graft_status::PluginLoad,
    graft_status::PluginFault,
    graft_status::Panic,
    graft_status::Other,
];

#[cfg(test)]
pub(crate) fn tests_all() -> [graft_status; 29] {
    ALL
}
