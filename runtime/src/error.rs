//! The crate's one error type.
//!
//! Every failure a caller can provoke with bad input — a malformed container, a graph that
//! does not type-check, a request with the wrong shape — is a variant here with the names
//! and numbers needed to find the culprit (file, tensor, node, input, row). Nothing on an
//! input-dependent path panics; it returns one of these.

use alloc::string::String;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything that can go wrong in graft, grouped by domain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // variant docs say what each field holds
pub enum Error {
    // === Container: the safetensors envelope ===
    /// The buffer ends before a structure it must contain.
    #[error("container truncated: {what} needs {needed} bytes but only {available} are present")]
    Truncated { what: &'static str, needed: u64, available: u64 },
    /// The declared JSON header length is larger than allowed or than the buffer.
    #[error("container header declares {declared} bytes; limit is {limit}")]
    HeaderTooLarge { declared: u64, limit: u64 },
    /// The header is not valid UTF-8 JSON of the expected shape.
    #[error("container header: {detail}")]
    HeaderJson { detail: String },
    /// A tensor entry in the header is malformed.
    #[error("tensor `{tensor}`: {detail}")]
    TensorEntry { tensor: String, detail: String },
    /// A tensor has a dtype graft does not read.
    #[error("tensor `{tensor}`: unsupported dtype `{dtype}`")]
    UnknownDtype { tensor: String, dtype: String },
    /// A tensor's byte range lies outside the data section.
    #[error("tensor `{tensor}`: bytes {begin}..{end} lie outside the {data_len}-byte data section")]
    TensorOutOfRange { tensor: String, begin: u64, end: u64, data_len: u64 },
    /// Two tensors share bytes.
    #[error("tensors `{first}` and `{second}` overlap")]
    TensorOverlap { first: String, second: String },
    /// Tensors do not cover the data section contiguously (safetensors forbids holes).
    #[error("data section has a hole or trailing bytes at offset {offset}")]
    TensorGap { offset: u64 },
    /// A tensor's data is not aligned as graft requires.
    #[error("tensor `{tensor}`: data offset {offset} is not {align}-byte aligned")]
    Misaligned { tensor: String, offset: u64, align: u64 },
    /// The buffer holding the whole container is not aligned in memory.
    #[error("model buffer at address {address:#x} is not {align}-byte aligned")]
    MisalignedBuffer { address: usize, align: usize },
    /// The file was written by a newer (or unknown) graft format version.
    #[error("graph format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u64, supported: u64 },

    // === Graph: nodes, edges and weights ===
    /// The graph JSON (metadata `graft.graph`) is missing or malformed.
    #[error("graph: {detail}")]
    GraphJson { detail: String },
    /// A node names an operator graft does not know.
    #[error("node `{node}`: unknown op `{op}`")]
    UnknownOp { node: String, op: String },
    /// A node attribute is missing, of the wrong type, or out of range.
    #[error("node `{node}`: attribute `{attribute}`: {detail}")]
    InvalidAttribute { node: String, attribute: String, detail: String },
    /// Two inputs/nodes/outputs share a name.
    #[error("duplicate {kind} name `{name}`")]
    DuplicateName { kind: &'static str, name: String },
    /// An edge refers to a value that no input or node produces.
    #[error("node `{node}`: input `{value}` is not a graph input or node")]
    DanglingEdge { node: String, value: String },
    /// The nodes form a cycle.
    #[error("graph has a cycle through node `{node}`")]
    Cycle { node: String },
    /// A node refers to a tensor the container does not hold.
    #[error("node `{node}`: tensor `{tensor}` is not in the container")]
    MissingTensor { node: String, tensor: String },
    /// A tensor does not have the dtype or shape its use requires.
    #[error("tensor `{tensor}`: expected {expected}, found {actual}")]
    TensorMismatch { tensor: String, expected: String, actual: String },
    /// A node's inputs do not have the widths (or arity) its op requires.
    #[error("node `{node}`: {detail}")]
    ShapeMismatch { node: String, detail: String },
    /// A graph output refers to an unknown value, or there are no outputs.
    #[error("graph output `{output}`: {detail}")]
    InvalidOutput { output: String, detail: String },

    // === Run inputs ===
    /// A run input names no graph input.
    #[error("input `{input}` is not an input of this model (inputs: {known})")]
    UnknownInput { input: String, known: String },
    /// A graph input was not supplied.
    #[error("input `{input}` is missing")]
    MissingInput { input: String },
    /// The same input was supplied twice.
    #[error("input `{input}` was given more than once")]
    DuplicateInput { input: String },
    /// An input has the wrong element type.
    #[error("input `{input}`: expected dtype {expected}, found {actual}")]
    InputDtype { input: String, expected: &'static str, actual: &'static str },
    /// An input has the wrong shape (width, slots, rank or length).
    #[error("input `{input}`: expected shape {expected}, found {actual}")]
    InputShape { input: String, expected: String, actual: String },
    /// Inputs disagree on the batch size.
    #[error("input `{input}` has {rows} rows but other inputs have {expected}")]
    BatchMismatch { input: String, rows: usize, expected: usize },
    /// The batch is larger than the session was planned for.
    #[error("batch of {rows} rows exceeds the session's max_batch {max_batch}")]
    BatchTooLarge { rows: usize, max_batch: usize },
    /// The batch is empty.
    #[error("batch has no rows")]
    EmptyBatch,
    /// A sparse id is outside its embedding table.
    #[error("input `{input}`: id {id} at position {position} is outside table `{table}` with {rows} rows")]
    IdOutOfRange { input: String, position: usize, id: i64, table: String, rows: usize },
    /// Bag offsets are not a valid partition of the bag indices.
    #[error("input `{input}`: {detail}")]
    BadOffsets { input: String, detail: String },
    /// A dense input holds NaN or ±Inf and the session rejects non-finite inputs.
    #[error("input `{input}`: non-finite value {value} at row {row}, column {col}")]
    NonFinite { input: String, row: usize, col: usize, value: f32 },

    // === Sessions and options ===
    /// Invalid session or conversion options.
    #[error("invalid option: {detail}")]
    InvalidOption { detail: String },
    /// A kernel level was requested that this build or CPU cannot run.
    #[error("kernel level `{level}` is not available: {detail}")]
    KernelUnavailable { level: String, detail: String },
    /// A session asked for a CUDA device that cannot be used: graft was built without
    /// the `cuda` feature, the CUDA driver or NVRTC library is missing, there is no
    /// device with that ordinal, or the kernels could not be compiled for it. `detail`
    /// says which.
    #[error("CUDA unavailable: {detail}")]
    CudaUnavailable { detail: String },
    /// A CUDA driver call failed while a GPU session was running (out of memory, a
    /// kernel fault); the session should be dropped.
    #[error("CUDA: {detail}")]
    Cuda { detail: String },
    /// A CUDA session was asked for a model with an op that has no CUDA kernel. graft
    /// never falls back to the CPU in the middle of a graph; run the model on a CPU
    /// session.
    #[error("node `{node}`: op `{op}` has no CUDA kernel (run this model on a CPU session)")]
    OpNotOnDevice { node: String, op: String },
    /// Integer arithmetic of a run had no result (an i64 division by zero).
    #[error("node `{node}`: {detail} at row {row}")]
    Arithmetic { node: String, row: usize, detail: String },
    /// An index computed at run time (a `gather`) fell outside its axis.
    #[error("node `{node}`: index {index} is outside an axis of {bound} at row {row}")]
    IndexOutOfRange { node: String, row: usize, index: i64, bound: usize },
    /// A plan could not be built for a valid graph (a row shape of rank above what the
    /// engine indexes, an i64 division by zero in a constant, …).
    #[error("node `{node}`: {detail}")]
    Unplannable { node: String, detail: String },

    // === Files (std) ===
    /// An I/O error on a named file.
    #[cfg(feature = "std")]
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A container file failed validation; wraps the cause with the file name.
    #[cfg(feature = "std")]
    #[error("{path}: {source}")]
    InFile {
        path: String,
        #[source]
        source: alloc::boxed::Box<Error>,
    },
    /// A `.npy` file is malformed or of an unsupported dtype/layout.
    #[error("npy `{path}`: {detail}")]
    Npy { path: String, detail: String },

    // === Adapters (std) ===
    /// An adapter kind refused an adapter, or failed while running it.
    #[error("adapter `{id}` ({kind}): {code} {field_note}{detail}", field_note = if field.is_empty() { String::new() } else { alloc::format!("`{field}`: ") })]
    Adapter { id: String, kind: String, code: &'static str, field: String, detail: String },
    /// No adapter is registered under this id.
    #[error("adapter `{id}` is not registered (registered: {known})")]
    UnknownAdapter { id: String, known: String },
    /// An id is already registered (`insert`), or is not (`replace`).
    #[error("adapter `{id}`: {detail}")]
    AdapterId { id: String, detail: String },
    /// No adapter kind has this name.
    #[error("adapter kind `{kind}` is not available (kinds: {known})")]
    UnknownAdapterKind { kind: String, known: String },
    /// An adapter or row assignment was made for another model than the one running it.
    #[error("adapter `{id}` was loaded for another model than this session's")]
    AdapterModel { id: String },
    /// A per-row adapter assignment does not fit the batch.
    #[error("row adapters: {detail}")]
    RowAdapters { detail: String },
    /// A plugin file was refused: not a shared library, no graft entry symbol, built
    /// against another interface version, a malformed C table, or a kind name already
    /// taken. `fix` says what to do about it.
    #[error("plugin {path}: {detail} (fix: {fix})")]
    Plugin { path: String, detail: String, fix: String },
    /// An adapter of a plugin kind wrote a non-finite value from finite inputs; the
    /// adapter instance is disabled and the run failed.
    #[error("{0}")]
    PluginFault(alloc::boxed::Box<PluginFault>),
    /// An adapter was disabled after a fault (see [`Error::PluginFault`]); load it
    /// again (or replace it) to use its id.
    #[error("adapter `{id}` ({kind}) is disabled: {reason}")]
    AdapterDisabled { id: String, kind: String, reason: String },
    /// A GPU session was given rows whose adapter cannot run on the device: its kind
    /// exports no device parameters (error memory, routing, FedIns pools, third-party
    /// plugins) or refuses this configuration (DoRA). Nothing ran; graft never falls
    /// back to the CPU in the middle of a graph.
    #[error("adapter `{id}` ({kind}) cannot run on a CUDA session: {detail}")]
    AdapterNotOnDevice { id: String, kind: String, detail: String },

    // === ONNX import ===
    /// An ONNX node uses an op (or an op form) graft cannot import.
    #[error("onnx node `{node}` ({op}): {detail}")]
    OnnxUnsupported { node: String, op: String, detail: String },
    /// The ONNX file could not be read or is inconsistent.
    #[error("onnx: {detail}")]
    Onnx { detail: String },

    // === Files under a live model or adapter, and files graft writes ===
    /// A file a live model maps changed on disk (truncated, rewritten in place, or read
    /// past its end): the run's outputs are discarded and the model stays refused until
    /// it is opened again (README, "Files under a live model"). A file replaced by
    /// rename is not a change: the model keeps the version it opened.
    #[error("{path}: {detail}; the run's outputs were discarded — open the file again to use the new version")]
    FileChanged { path: String, detail: String },
    /// A write target exists and is not a regular file (a device, FIFO, socket or
    /// directory): graft only writes regular files and never renames over anything else.
    #[cfg(feature = "std")]
    #[error("{path}: {source}")]
    NotRegularFile { path: String, source: std::io::Error },

    // === Resources and numerical containment ===
    /// Memory sized by the input or the options could not be obtained (`what` names the
    /// buffer); nothing was allocated in part.
    #[error("cannot allocate {bytes} bytes for {what}")]
    OutOfMemory { what: String, bytes: u128 },
    /// Worker threads could not be started (a thread limit, or memory for their stacks).
    #[error("cannot start {threads} worker thread(s): {detail}")]
    ThreadStart { threads: usize, detail: String },
    /// A model or adapter parameter is NaN or ±Inf, or a scale would make finite
    /// parameters overflow: the file is refused at open/load.
    #[error("tensor `{tensor}`: {detail}")]
    NonFiniteParameter { tensor: String, detail: String },
    /// A row of the outputs holds NaN or ±Inf although the inputs were finite (an overflow
    /// inside the model or an adapter); reported per row by
    /// [`Outputs::row_faults`](crate::Outputs::row_faults).
    #[error("output `{output}`: non-finite value {value} at row {row}, column {col} (from finite inputs)")]
    NonFiniteOutput { output: String, row: usize, col: usize, value: f32 },
}

/// Where an adapter of a plugin kind wrote NaN or ±Inf (see [`Error::PluginFault`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error(
    "plugin {plugin} (kind `{kind}`): adapter `{id}` produced {value} at node `{node}` ({hook} hook, batch row \
     {row}, column {col}) from finite inputs; the adapter is disabled"
)]
pub struct PluginFault {
    /// The plugin file.
    pub plugin: String,
    /// The adapter kind.
    pub kind: String,
    /// The adapter's id.
    pub id: String,
    /// The node (or dense input) the hook ran at.
    pub node: String,
    /// `linear_delta`, `tap` or `post`.
    pub hook: &'static str,
    /// The row of the batch.
    pub row: usize,
    /// The column of the hook's output (the node's value, or the adapter's run state for
    /// a tap).
    pub col: usize,
    /// The value written.
    pub value: f32,
}

/// Firmware logs show the error's message. It is formatted on the device (an
/// allocation), which only happens on error paths.
#[cfg(feature = "defmt")]
impl defmt::Format for Error {
    fn format(&self, f: defmt::Formatter<'_>) {
        defmt::write!(f, "{=str}", alloc::string::ToString::to_string(self).as_str());
    }
}

impl Error {
    /// Attaches a file path to a container/graph validation error.
    #[cfg(feature = "std")]
    pub(crate) fn in_file(self, path: &std::path::Path) -> Error {
        match self {
            e @ (Error::Io { .. } | Error::InFile { .. }) => e,
            e => Error::InFile { path: path.display().to_string(), source: alloc::boxed::Box::new(e) },
        }
    }

    /// Wraps an I/O error with the file it concerns.
    #[cfg(feature = "std")]
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Error {
        Error::Io { path: path.display().to_string(), source }
    }

    /// The innermost error, looking through [`Error::InFile`].
    pub fn root(&self) -> &Error {
        match self {
            #[cfg(feature = "std")]
            Error::InFile { source, .. } => source.root(),
            e => e,
        }
    }
}

/// Builds an [`Error::GraphJson`] from anything printable.
pub(crate) fn graph_err(detail: impl core::fmt::Display) -> Error {
    Error::GraphJson { detail: alloc::format!("{detail}") }
}
