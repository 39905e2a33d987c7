//! GPU sessions: the CPU plan, executed by CUDA kernels.
//!
//! A `Device::Cuda` session plans exactly like a CPU session ([`Plan`]) and then walks
//! the same steps on the device, so the two paths cannot disagree about fusion, concat
//! elision, buffer liveness or hook order:
//!
//! - **One device arena, laid out like the host arena.** Every buffer has the same float
//!   offset on both sides, so a [`Place`] addresses either. Inputs are copied to pinned
//!   staging memory and uploaded per run; after the last step the buffers holding graph
//!   outputs are downloaded into the host arena at their offsets, and [`Outputs`] reads
//!   them exactly as it does for a CPU session.
//! - **Every step has a kernel** (`graft-kernels-cuda`): linears (GEMV for small batches,
//!   tiled GEMM above [`GEMM_MIN_ROWS`](graft_kernels_cuda::device::GEMM_MIN_ROWS) rows,
//!   weights dequantized in-kernel, bias and a fused activation in the epilogue), embedding
//!   bags, activations, add/mul, concat copies, the cross epilogue, layer norm, DLRM
//!   interactions and FM; linears over several vectors per row as one GEMM over
//!   `rows · tokens` (or one per token block). The per-row tensor ops run on `tensor.cu`:
//!   [`check_on_device`] recomputes the CPU planner's walks from the graph as
//!   [`Strided`] descriptors (copies, transpose, slice, tile, pad, axis-concat parts,
//!   broadcast f32 and i64 binaries, where, unary ops, reductions, softmax, gather,
//!   embedding lookup, batched matmul), and ids / indices computed on the device are
//!   bounds-checked there: a bad one sets a device error word, read back after the run
//!   and returned as the CPU's `IdOutOfRange` / `IndexOutOfRange`. Steps without a
//!   kernel (casts, top-k, gather_elements, convolutions, i64 division) make
//!   `GpuSession::new` fail with `OpNotOnDevice`. Nothing falls back to the CPU mid-graph.
//! - **Weights are uploaded once per model and device** and shared by every session of
//!   that model ([`DeviceWeights`]): the whole container is one device allocation, so a
//!   tensor's device address is the base plus its offset in the file. A process-wide
//!   table keeps weak references; the copy is freed with the last session using it. On
//!   integrated GPUs (Jetson: `CU_DEVICE_ATTRIBUTE_INTEGRATED`) the mapped file is
//!   registered read-only with `cuMemHostRegister` and read in place instead.
//! - **Adapters** run on the device through the kinds' [`DeviceParams`]: LoRA as BGMV (or
//!   SGMV for larger batches) with a per-row adapter index and mixed ranks, static SSF
//!   as a per-row scale-shift. Device copies are cached per [`LoadedAdapter`] instance
//!   (its address, validated through a weak reference): a published new version is a
//!   new instance and gets its own upload — made by the registry before it publishes
//!   ([`preload`], on every device the process has opened; a run that finds no copy makes
//!   it) — while runs holding an older snapshot keep the older copies alive through their
//!   `Arc`s: the CPU registry's snapshot semantics.
//!   An adapter whose kind exports no device parameters makes the run fail with
//!   [`Error::AdapterNotOnDevice`] before anything is launched.

use std::sync::{Arc, Mutex, Weak};

use graft_kernels_cuda::cache::PtxCache;
use graft_kernels_cuda::{
    Act, BinOp, CudaError, DeviceBuffer, Gpu, HostRegistration, LoraLaunch, PinnedBuffer, ReduceCode, Strided,
    TensorBinOp, UnaryCode, WeightFormat as KFormat,
};
use graft_plugin_abi::{DeviceParams, HookKind};

use super::input::{self, Input};
use super::plan::{BinaryOp, Ids, Operand, Place, Plan, Src, Step};
use super::tensor::TensorOp;
use crate::adapters::{LoadedAdapter, RowAdapters};
use crate::error::{Error, Result};
use crate::graph::shape::{broadcast_strides, strides};
use crate::graph::{
    Activation, BagMode, BinaryOp as GraphBinaryOp, Graph, InputKind, Op, ReduceOp, UnaryOp, ValueId, ValueType,
};
use crate::kernels::{WeightData, WeightMatrix};
use crate::model::Model;

/// Batches at least this large use SGMV (rows grouped by adapter) when every rank fits.
const SGMV_MIN_ROWS: usize = 32;

fn unavailable(e: CudaError) -> Error {
    let detail = match e {
        CudaError::Unavailable(why) => why,
        other => other.to_string(),
    };
    Error::CudaUnavailable { detail }
}

fn cuda(e: CudaError) -> Error {
    Error::Cuda { detail: e.to_string() }
}

fn internal(what: &str) -> Error {
    Error::Cuda { detail: format!("GPU executor invariant violated: {what}") }
}

/// Devices opened by this process, by ordinal (opening compiles or loads the kernels).
static GPUS: Mutex<Vec<(u32, Arc<Gpu>)>> = Mutex::new(Vec::new());

/// Opens CUDA device `ordinal` once per process.
pub(crate) fn open_gpu(ordinal: u32) -> Result<Arc<Gpu>> {
    let mut gpus = GPUS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, g)) = gpus.iter().find(|(o, _)| *o == ordinal) {
        return Ok(g.clone());
    }
    let cache = PtxCache::default_location();
    let gpu = Gpu::new(ordinal as usize, &cache).map_err(unavailable)?;
    log::info!(
        "cuda:{ordinal}: {} ({}, {}), kernels cached in {}",
        gpu.name(),
        gpu.arch(),
        if gpu.integrated() { "integrated memory" } else { "discrete memory" },
        cache.dir().display()
    );
    let gpu = Arc::new(gpu);
    gpus.push((ordinal, gpu.clone()));
    Ok(gpu)
}

// ---------------------------------------------------------------------------------------
// Model weights on the device.

/// Where a model's bytes live on the device.
#[derive(Debug)]
enum Store {
    /// A device copy of the whole container.
    Copied(#[allow(dead_code)] DeviceBuffer),
    /// The host mapping, registered read-only (integrated GPUs).
    Mapped(#[allow(dead_code)] HostRegistration),
}

/// A model's container bytes on one device, shared by all its sessions there.
#[derive(Debug)]
pub(crate) struct DeviceWeights {
    /// Keeps the host bytes alive (and, for `Mapped`, mapped) as long as the device view.
    model: Model,
    ordinal: u32,
    base: u64,
    _store: Store,
}

impl DeviceWeights {
    /// The device address of a host slice inside the model's bytes.
    fn addr_of<T>(&self, host: &[T]) -> Result<u64> {
        let bytes = self.model.bytes();
        let start = bytes.as_ptr() as usize;
        let p = host.as_ptr() as usize;
        let len = core::mem::size_of_val(host);
        if p < start || p + len > start + bytes.len() {
            return Err(internal("a tensor lies outside the model's bytes"));
        }
        Ok(self.base + (p - start) as u64)
    }
}

static WEIGHTS: Mutex<Vec<Weak<DeviceWeights>>> = Mutex::new(Vec::new());

/// The device view of `model`'s weights on `gpu`, shared with every other session of the
/// same model there, created (uploaded or registered) on first use.
fn weights_for(gpu: &Gpu, ordinal: u32, model: &Model) -> Result<Arc<DeviceWeights>> {
    let mut table = WEIGHTS.lock().unwrap_or_else(|p| p.into_inner());
    table.retain(|w| w.strong_count() > 0);
    if let Some(w) = table.iter().filter_map(Weak::upgrade).find(|w| w.ordinal == ordinal && w.model.same_as(model)) {
        return Ok(w);
    }
    let bytes = model.bytes();
    let mut registered = None;
    if gpu.integrated() {
        // SAFETY: the registration lives in a DeviceWeights that holds a clone of the
        // model, so the bytes stay mapped and are never written (models are immutable).
        match unsafe { HostRegistration::register(gpu, bytes.as_ptr(), bytes.len()) } {
            Ok(r) => registered = Some(r),
            Err(e) => log::warn!("cuda:{ordinal}: registering the mapped model failed ({e}); copying it instead"),
        }
    }
    let (base, store) = match registered {
        Some(r) => (r.device_ptr(), Store::Mapped(r)),
        None => {
            let buf = DeviceBuffer::upload(gpu, bytes).map_err(cuda)?;
            (buf.ptr(), Store::Copied(buf))
        }
    };
    log::debug!(
        "cuda:{ordinal}: model weights {} ({} bytes)",
        if matches!(store, Store::Mapped(_)) { "mapped in place" } else { "uploaded" },
        bytes.len()
    );
    let w = Arc::new(DeviceWeights { model: model.clone(), ordinal, base, _store: store });
    table.push(Arc::downgrade(&w));
    Ok(w)
}

// ---------------------------------------------------------------------------------------
// Adapters on the device.

/// One target of an adapter on the device.
#[derive(Debug)]
enum DeviceTarget {
    LowRank {
        a: DeviceBuffer,
        b: DeviceBuffer,
        rank: usize,
        scale: f32,
        in_features: usize,
        out_features: usize,
    },
    ScaleShift {
        gamma: DeviceBuffer,
        beta: DeviceBuffer,
        width: usize,
    },
    /// The kind refused (the reason, for the error).
    Refused(String),
}

/// An adapter instance's parameters on one device.
#[derive(Debug)]
struct DeviceAdapter {
    ordinal: u32,
    source: Weak<LoadedAdapter>,
    targets: Vec<DeviceTarget>,
}

static ADAPTERS: Mutex<Vec<Arc<DeviceAdapter>>> = Mutex::new(Vec::new());

fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// The device copy of `adapter` on `gpu`, uploaded the first time any session on that
/// device sees this instance.
fn device_adapter(gpu: &Gpu, ordinal: u32, adapter: &Arc<LoadedAdapter>) -> Result<Arc<DeviceAdapter>> {
    let mut table = ADAPTERS.lock().unwrap_or_else(|p| p.into_inner());
    table.retain(|d| d.source.strong_count() > 0);
    if let Some(d) =
        table.iter().find(|d| d.ordinal == ordinal && d.source.upgrade().is_some_and(|s| Arc::ptr_eq(&s, adapter)))
    {
        return Ok(d.clone());
    }
    let mut targets = Vec::with_capacity(adapter.targets().len());
    for (t, target) in adapter.targets().iter().enumerate() {
        let params = match adapter.object().device_params(t as u32) {
            abi_stable::std_types::RResult::ROk(p) => p,
            abi_stable::std_types::RResult::RErr(e) => {
                targets.push(DeviceTarget::Refused(e.to_string()));
                continue;
            }
        };
        let g = adapter.model().graph();
        let node = g.nodes.get(target.node as usize);
        let dt = match (params, target.hook) {
            (DeviceParams::LowRank { a, b, rank, scale }, HookKind::LinearDelta) => {
                let rank = rank as usize;
                let (in_features, out_features) = match node.map(|n| (&n.op, n)) {
                    Some((Op::Linear { weight, .. }, n)) => (g.weights[*weight].cols, n.width),
                    _ => (0, 0),
                };
                if rank == 0 || a.len() != rank * in_features || b.len() != out_features * rank {
                    DeviceTarget::Refused(format!(
                        "low-rank parameters of target {t} do not match the node ({} and {} values for rank {rank}, \
                         {in_features} inputs, {out_features} outputs)",
                        a.len(),
                        b.len()
                    ))
                } else {
                    DeviceTarget::LowRank {
                        a: DeviceBuffer::upload(gpu, f32_bytes(&a)).map_err(cuda)?,
                        b: DeviceBuffer::upload(gpu, f32_bytes(&b)).map_err(cuda)?,
                        rank,
                        scale,
                        in_features,
                        out_features,
                    }
                }
            }
            (DeviceParams::ScaleShift { gamma, beta }, HookKind::Post) => {
                let width = node.map_or(0, |n| n.width);
                if gamma.len() != width || beta.len() != width {
                    DeviceTarget::Refused(format!(
                        "scale-shift parameters of target {t} have {} and {} values for a {width}-wide node",
                        gamma.len(),
                        beta.len()
                    ))
                } else {
                    DeviceTarget::ScaleShift {
                        gamma: DeviceBuffer::upload(gpu, f32_bytes(&gamma)).map_err(cuda)?,
                        beta: DeviceBuffer::upload(gpu, f32_bytes(&beta)).map_err(cuda)?,
                        width,
                    }
                }
            }
            (_, hook) => DeviceTarget::Refused(format!("target {t}: device parameters do not fit a {hook:?} hook")),
        };
        targets.push(dt);
    }
    let d = Arc::new(DeviceAdapter { ordinal, source: Arc::downgrade(adapter), targets });
    table.push(d.clone());
    Ok(d)
}

/// Uploads `adapter` to every device this process has opened, before the registry
/// publishes it, so the first GPU run after a publish or swap finds its device copy ready
/// instead of paying for the upload. A kind that cannot run on the device is left for
/// the run to report ([`Error::AdapterNotOnDevice`]); an upload failure is logged and
/// retried by the first run that needs the adapter.
pub(crate) fn preload(adapter: &Arc<LoadedAdapter>) {
    let gpus: Vec<(u32, Arc<Gpu>)> = GPUS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (ordinal, gpu) in gpus {
        if let Err(e) = device_adapter(&gpu, ordinal, adapter) {
            log::warn!("cuda:{ordinal}: uploading adapter `{}` on publish failed: {e}", adapter.id());
        }
    }
}

// ---------------------------------------------------------------------------------------
// Per-run launch data.

/// Small per-run arrays (adapter indices, pointer tables) packed into one upload.
#[derive(Debug, Default)]
struct Blob {
    bytes: Vec<u8>,
}

impl Blob {
    fn push<T: bytemuck::Pod>(&mut self, v: &[T]) -> usize {
        let off = self.bytes.len().div_ceil(16) * 16;
        self.bytes.resize(off, 0);
        self.bytes.extend_from_slice(bytemuck::cast_slice(v));
        off
    }
}

/// One hook application, resolved to blob offsets before anything is launched.
#[derive(Debug)]
enum HookLaunch {
    /// LoRA at a linear's output place.
    Lora {
        x: Src,
        y: Place,
        idx: usize,
        a: usize,
        b: usize,
        ranks: usize,
        scales: usize,
        row_scale: usize,
        max_rank: usize,
        k: usize,
        n: usize,
        sgmv: Option<(usize, usize, usize, usize)>,
    },
    /// SSF at a node's place.
    Ssf { y: Place, idx: usize, gamma: usize, beta: usize, row_scale: usize, n: usize },
}

/// A device input buffer and its pinned staging copy.
#[derive(Debug)]
struct DeviceInput {
    dev: DeviceBuffer,
    staging: PinnedBuffer,
}

/// A grow-only device buffer plus pinned staging (per-run blobs, LoRA intermediates).
#[derive(Debug)]
struct Growable {
    dev: DeviceBuffer,
    staging: Option<PinnedBuffer>,
}

impl Growable {
    fn new(gpu: &Gpu, bytes: usize, staged: bool) -> Result<Growable> {
        Ok(Growable {
            dev: DeviceBuffer::zeroed(gpu, bytes).map_err(cuda)?,
            staging: if staged { Some(PinnedBuffer::zeroed(gpu, bytes).map_err(cuda)?) } else { None },
        })
    }

    /// Makes room for `bytes` (the stream is idle between runs, so freeing is safe).
    fn reserve(&mut self, gpu: &Gpu, bytes: usize) -> Result<()> {
        if bytes > self.dev.len() {
            *self = Growable::new(gpu, bytes.next_power_of_two(), self.staging.is_some())?;
        }
        Ok(())
    }
}

/// A tensor step ([`Step::Tensor`]) resolved for the device when the session is made:
/// the CPU planner's walks, recomputed from the graph as `tensor.cu`'s [`Strided`]
/// descriptors (element units; i64 copies are turned into 32-bit word walks).
#[derive(Clone, Debug)]
enum DevTensor {
    /// Optional fill of the whole output row (bits), then a strided word copy.
    Copy { walk: Strided, src_base: usize, dst_base: usize, fill: Option<u32>, words: usize },
    /// Broadcast f32 binary op; sets output, a, b.
    Binary { op: TensorBinOp, walk: Strided },
    /// Not a tensor step: an embedding bag over ids computed by the graph (`slots` a row),
    /// first made safe by `sanitize_ids` into the step's scratch; `slot` is its error word.
    BagIds { slot: usize, slots: usize },
    /// Broadcast select on an f32 mask; sets output, cond, a, b; `wide`: i64 values.
    Where { walk: Strided, wide: bool },
    /// Broadcast i64 op (wrapping arithmetic, min / max → i64; comparisons → f32 masks).
    BinaryI64 { op: TensorBinOp, walk: Strided, mask: bool },
    /// Element-wise f32 op over the whole row.
    Unary { op: UnaryCode, params: (f32, f32) },
    /// Lanes of `outer`, each reducing over `inner` (input offsets).
    Reduce { op: ReduceCode, outer: Strided, inner: Strided },
    /// (Log-)softmax lanes of `n` at `stride`.
    Softmax { log: bool, outer: Strided, n: usize, stride: usize },
    /// Table rows by i64 ids; `slot` is the step's device error word.
    Lookup { table: usize, ids: usize, slot: usize },
    /// Gather along an axis of `[pre, d, post]` (words: `post` doubled for i64 data) by
    /// `n` i64 indices a row; `slot` is the step's device error word.
    Gather { pre: usize, d: usize, post: usize, n: usize, slot: usize },
    /// Batched matmul; `lead` sets output, a, b.
    MatMul { lead: Strided, m: usize, k: usize, n: usize },
}

fn unary_code(op: UnaryOp) -> (UnaryCode, (f32, f32)) {
    let (code, p) = match op {
        UnaryOp::Neg => (0, (0.0, 0.0)),
        UnaryOp::Abs => (1, (0.0, 0.0)),
        UnaryOp::Exp => (2, (0.0, 0.0)),
        UnaryOp::Log => (3, (0.0, 0.0)),
        UnaryOp::Sqrt => (4, (0.0, 0.0)),
        UnaryOp::Rsqrt => (5, (0.0, 0.0)),
        UnaryOp::Reciprocal => (6, (0.0, 0.0)),
        UnaryOp::Erf => (7, (0.0, 0.0)),
        UnaryOp::Floor => (8, (0.0, 0.0)),
        UnaryOp::Ceil => (9, (0.0, 0.0)),
        UnaryOp::Round => (10, (0.0, 0.0)),
        UnaryOp::Sign => (11, (0.0, 0.0)),
        UnaryOp::Not => (12, (0.0, 0.0)),
        UnaryOp::Softplus => (13, (0.0, 0.0)),
        UnaryOp::Sin => (14, (0.0, 0.0)),
        UnaryOp::Cos => (15, (0.0, 0.0)),
        UnaryOp::LeakyRelu(a) => (16, (a, 0.0)),
        UnaryOp::Clip(lo, hi) => (17, (lo, hi)),
        UnaryOp::HardSigmoid(a, b) => (18, (a, b)),
        UnaryOp::Elu(a) => (19, (a, 0.0)),
        UnaryOp::PowConst(p) => (20, (p, 0.0)),
    };
    (UnaryCode::Op(code), p)
}

fn binary_code(op: GraphBinaryOp) -> TensorBinOp {
    match op {
        GraphBinaryOp::Add => TensorBinOp::Add,
        GraphBinaryOp::Sub => TensorBinOp::Sub,
        GraphBinaryOp::Mul => TensorBinOp::Mul,
        GraphBinaryOp::Div => TensorBinOp::Div,
        GraphBinaryOp::Pow => TensorBinOp::Pow,
        GraphBinaryOp::Min => TensorBinOp::Min,
        GraphBinaryOp::Max => TensorBinOp::Max,
        GraphBinaryOp::Equal => TensorBinOp::Equal,
        GraphBinaryOp::Less => TensorBinOp::Less,
        GraphBinaryOp::LessEqual => TensorBinOp::LessEqual,
        GraphBinaryOp::Greater => TensorBinOp::Greater,
        GraphBinaryOp::GreaterEqual => TensorBinOp::GreaterEqual,
        GraphBinaryOp::And => TensorBinOp::And,
        GraphBinaryOp::Or => TensorBinOp::Or,
        GraphBinaryOp::Xor => TensorBinOp::Xor,
        GraphBinaryOp::Prelu => TensorBinOp::Prelu,
    }
}

fn reduce_code(op: ReduceOp) -> ReduceCode {
    match op {
        ReduceOp::Sum => ReduceCode::Sum,
        ReduceOp::Mean => ReduceCode::Mean,
        ReduceOp::Max => ReduceCode::Max,
        ReduceOp::Min => ReduceCode::Min,
        ReduceOp::Prod => ReduceCode::Prod,
        ReduceOp::L2 => ReduceCode::L2,
        ReduceOp::L1 => ReduceCode::L1,
        ReduceOp::SumSquare => ReduceCode::SumSquare,
        ReduceOp::MeanSquare => ReduceCode::MeanSquare,
        ReduceOp::LogSumExp => ReduceCode::LogSumExp,
    }
}

/// Whether `s` is where the plan reads value `v` from.
fn src_is(plan: &Plan, s: Src, v: ValueId) -> bool {
    match (s, v) {
        (Src::Input(a), ValueId::Input(b)) | (Src::Const(a), ValueId::Const(b)) => a == b,
        (Src::Arena(p), ValueId::Node(k)) => plan.node_place.get(k) == Some(&p),
        _ => false,
    }
}

/// The copy walk (dims, destination strides, source strides, in elements) of a `Copy`
/// step of `node`, recomputed as `tensor::plan` / `tensor::concat_part` build it; `None`
/// for a flat copy of a whole value.
fn copy_walk(g: &Graph, plan: &Plan, node: usize, ins: &[Src], dst_base: usize) -> Option<CopyDims> {
    let n = g.nodes.get(node)?;
    let o = &n.shape[..];
    let ost = strides(o);
    let shape0 = || n.inputs.first().map(|&v| g.value_shape(v)).unwrap_or(&[]);
    Some(match &n.op {
        Op::Transpose { perm } => {
            let ist = strides(shape0());
            (o.to_vec(), ost, perm.iter().map(|&p| ist.get(p).copied().unwrap_or(0)).collect())
        }
        Op::Slice { axis, step, .. } => {
            let mut ist = strides(shape0());
            *ist.get_mut(*axis)? *= step;
            (o.to_vec(), ost, ist)
        }
        Op::Tile => {
            let s = shape0();
            let ist = strides(s);
            let (mut dims, mut dst, mut src) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..o.len().min(s.len()) {
                dims.extend([o[i] / s[i].max(1), s[i]]);
                dst.extend([s[i] * ost[i], ost[i]]);
                src.extend([0, ist[i]]);
            }
            (dims, dst, src)
        }
        Op::Pad { .. } => {
            let s = shape0();
            (s.to_vec(), ost, strides(s))
        }
        Op::Concat { axis: Some(axis) } => {
            // Flat concats copy whole values (and elide node inputs).
            let flat = n
                .inputs
                .iter()
                .all(|&v| g.value_shape(v).get(..*axis).is_some_and(|s| s.iter().product::<usize>() == 1));
            if flat {
                return None;
            }
            let mut offset = 0;
            let mut found = None;
            for &v in &n.inputs {
                let here = offset * ost.get(*axis).copied().unwrap_or(0) == dst_base;
                if here && (found.is_none() || ins.first().is_some_and(|&s| src_is(plan, s, v))) {
                    found = Some(v);
                }
                offset += g.value_shape(v).get(*axis).copied().unwrap_or(0);
            }
            let s = g.value_shape(found?);
            (s.to_vec(), ost, strides(s))
        }
        _ => return None,
    })
}

type CopyDims = (Vec<usize>, Vec<usize>, Vec<usize>);

/// Resolves a tensor step for the device; `None` when `tensor.cu` has no kernel for it.
fn device_tensor(
    model: &Model,
    plan: &Plan,
    (node, op, ins, y): (usize, &TensorOp, &[Src], Place),
    lookups: &mut usize,
) -> Option<DevTensor> {
    let g = model.graph();
    let n = g.nodes.get(node);
    let shape = |k: usize| n.and_then(|n| n.inputs.get(k)).map(|&v| g.value_shape(v)).unwrap_or(&[]);
    let f32_in = |k: usize| n.and_then(|n| n.inputs.get(k)).is_some_and(|&v| g.value_type(v) == ValueType::F32);
    Some(match op {
        TensorOp::Copy { src_base, dst_base, fill, ty, .. } => {
            let wide = *ty == ValueType::I64;
            let (mut dims, mut dst, mut src) = match copy_walk(g, plan, node, ins, *dst_base) {
                Some(w) => w,
                // A whole value: its slots (i64: word pairs) in order.
                None => {
                    return Some(DevTensor::Copy {
                        walk: Strided::new(&[y.width], &[&[1], &[1]])?,
                        src_base: 0,
                        dst_base: 0,
                        fill: None,
                        words: y.width,
                    });
                }
            };
            let (mut sb, mut db) = (*src_base, *dst_base);
            if wide {
                // i64 elements as two 32-bit words: double every stride, add the pair axis.
                for v in dst.iter_mut().chain(src.iter_mut()) {
                    *v *= 2;
                }
                dims.push(2);
                dst.push(1);
                src.push(1);
                sb *= 2;
                db *= 2;
            }
            DevTensor::Copy {
                walk: Strided::new(&dims, &[&dst, &src])?,
                src_base: sb,
                dst_base: db,
                // The CPU fills f32 pads only.
                fill: if wide { None } else { fill.map(f32::to_bits) },
                words: y.width,
            }
        }
        TensorOp::Binary { op, ty: ValueType::F32, .. } => {
            let o = &n?.shape[..];
            let (a, b) = (broadcast_strides(shape(0), o), broadcast_strides(shape(1), o));
            DevTensor::Binary { op: binary_code(*op), walk: Strided::new(o, &[&strides(o), &a, &b])? }
        }
        TensorOp::Binary { op, ty: ValueType::I64, .. } => {
            if !binary_code(*op).has_i64_kernel() {
                return None; // i64 division (an error on zero) stays on the CPU
            }
            let o = &n?.shape[..];
            let (a, b) = (broadcast_strides(shape(0), o), broadcast_strides(shape(1), o));
            let walk = Strided::new(o, &[&strides(o), &a, &b])?;
            DevTensor::BinaryI64 { op: binary_code(*op), walk, mask: op.is_comparison() }
        }
        TensorOp::Where { ty, .. } if f32_in(0) => {
            let o = &n?.shape[..];
            let c = broadcast_strides(shape(0), o);
            let (a, b) = (broadcast_strides(shape(1), o), broadcast_strides(shape(2), o));
            DevTensor::Where { walk: Strided::new(o, &[&strides(o), &c, &a, &b])?, wide: *ty == ValueType::I64 }
        }
        TensorOp::Unary { op, ty: ValueType::F32 } => {
            let (op, params) = unary_code(*op);
            DevTensor::Unary { op, params }
        }
        TensorOp::Reduce { op, ty: ValueType::F32, .. } => {
            let Op::Reduce { axes, .. } = &n?.op else { return None };
            let [(kd, ks), (rd, rs)] = super::tensor::split_axes(shape(0), axes);
            DevTensor::Reduce {
                op: reduce_code(*op),
                outer: Strided::new(&kd, &[&ks])?,
                inner: Strided::new(&rd, &[&rs])?,
            }
        }
        TensorOp::Softmax { log, n: len, stride, .. } if f32_in(0) => {
            let Op::Softmax { axis, .. } = &n?.op else { return None };
            let s = shape(0);
            let (mut d, mut st) = (s.to_vec(), strides(s));
            *d.get_mut(*axis)? = 1;
            st[*axis] = 0;
            DevTensor::Softmax { log: *log, outer: Strided::new(&d, &[&st])?, n: *len, stride: *stride }
        }
        TensorOp::Embedding { table, ids, .. } => {
            *lookups += 1;
            DevTensor::Lookup { table: *table, ids: *ids, slot: *lookups - 1 }
        }
        TensorOp::Gather { pre, d, post, n: count, ty } => {
            *lookups += 1;
            let post = if *ty == ValueType::I64 { 2 * post } else { *post };
            DevTensor::Gather { pre: *pre, d: *d, post, n: *count, slot: *lookups - 1 }
        }
        TensorOp::MatMul { m, k, n: nn, .. } if f32_in(0) && f32_in(1) => {
            let o = &n?.shape[..];
            let (a, b) = (shape(0), shape(1));
            let (r, ra, rb) = (o.len(), a.len(), b.len());
            if r < 2 || ra < 2 || rb < 2 {
                return None;
            }
            let lead = &o[..r - 2];
            let sa: Vec<usize> = broadcast_strides(&a[..ra - 2], lead).iter().map(|s| s * m * k).collect();
            let sb: Vec<usize> = broadcast_strides(&b[..rb - 2], lead).iter().map(|s| s * k * nn).collect();
            let so: Vec<usize> = strides(lead).iter().map(|s| s * m * nn).collect();
            DevTensor::MatMul { lead: Strided::new(lead, &[&so, &sa, &sb])?, m: *m, k: *k, n: *nn }
        }
        // Gathers, where, casts, top-k, convolutions and i64 arithmetic stay on the CPU.
        _ => return None,
    })
}

/// Refuses a plan with a step the device has no kernel for (tensor ops without a
/// `tensor.cu` kernel — casts, top-k, gather_elements, convolutions, i64 division, i64
/// unary ops —, layer norms over an inner axis, constant operands): graft never falls back
/// to the CPU inside a graph. (Adapters on linears over several vectors per row are
/// refused per run, in `prepare_hooks`.)
/// Returns, per step, the device form of each tensor step and the number of embedding
/// lookups and gathers (one device error word each).
fn check_on_device(model: &Model, plan: &Plan) -> Result<(Vec<Option<DevTensor>>, usize)> {
    let g = model.graph();
    let refuse = |node: usize, what: Option<&TensorOp>| {
        let (name, op) = match g.nodes.get(node) {
            Some(n) => (n.name.clone(), String::from(n.op.name())),
            None => (String::from("<graph output>"), String::from(what.map_or("cast", |t| t.name()))),
        };
        Err(Error::OpNotOnDevice { node: name, op })
    };
    let is_const = |s: &Src| matches!(s, Src::Const(_));
    let mut tensors = Vec::with_capacity(plan.steps.len());
    let mut lookups = 0;
    for step in &plan.steps {
        let mut dev = None;
        match step {
            Step::Tensor { node, op, ins, y } => match device_tensor(model, plan, (*node, op, ins, *y), &mut lookups) {
                Some(d) => dev = Some(d),
                None => return refuse(*node, Some(op)),
            },
            Step::Linear { node, x, .. } if is_const(x) => return refuse(*node, None),
            Step::Bag { ids: Ids::Value { value, .. }, .. } => {
                lookups += 1;
                dev = Some(DevTensor::BagIds { slot: lookups - 1, slots: g.value_width(*value) });
            }
            Step::LayerNorm { node, gamma, y, .. } if model.vector(*gamma)?.len() != y.width => {
                return refuse(*node, None);
            }
            _ => {}
        }
        tensors.push(dev);
    }
    // Aliased reshapes emit no step: the device arena has the host's layout.
    Ok((tensors, lookups))
}

/// The device side of one session.
pub(crate) struct GpuSession {
    gpu: Arc<Gpu>,
    ordinal: u32,
    stream: Arc<graft_kernels_cuda::cudarc::driver::CudaStream>,
    weights: Arc<DeviceWeights>,
    arena: DeviceBuffer,
    inputs: Vec<DeviceInput>,
    /// Per step: the pointer and stride tables of a dot interaction or FM.
    tables: Vec<Option<(DeviceBuffer, DeviceBuffer)>>,
    /// Per step: the device form of a tensor step (or of a bag over computed ids).
    tensors: Vec<Option<DevTensor>>,
    /// Per step: the dense, checked copy of a bag's computed ids (`max_batch × slots` i64).
    bag_ids: Vec<Option<DeviceBuffer>>,
    /// One u64 error word per embedding lookup (device) and its pinned mirror: reset to
    /// `u64::MAX` before each run, read back after it.
    errs: Option<(DeviceBuffer, PinnedBuffer)>,
    blob: Growable,
    lora_t: Growable,
}

impl core::fmt::Debug for GpuSession {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GpuSession").field("ordinal", &self.ordinal).field("arena", &self.arena).finish_non_exhaustive()
    }
}

fn act_code(a: Option<Activation>) -> Act {
    match a {
        None => Act::None,
        Some(Activation::Relu) => Act::Relu,
        Some(Activation::Gelu) => Act::Gelu,
        Some(Activation::GeluTanh) => Act::GeluTanh,
        Some(Activation::Silu) => Act::Silu,
        Some(Activation::Sigmoid) => Act::Sigmoid,
        Some(Activation::Tanh) => Act::Tanh,
    }
}

impl GpuSession {
    /// Opens the device, shares (or uploads) the model's weights and allocates the
    /// device arena (`arena_floats`, laid out like the host arena) and input buffers.
    pub(crate) fn new(
        model: &Model,
        plan: &Plan,
        ordinal: u32,
        max_batch: usize,
        arena_floats: usize,
    ) -> Result<GpuSession> {
        let (tensors, lookups) = check_on_device(model, plan)?;
        let gpu = open_gpu(ordinal)?;
        let weights = weights_for(&gpu, ordinal, model)?;
        let stream = gpu.new_stream().map_err(unavailable)?;
        let arena = DeviceBuffer::zeroed(&gpu, arena_floats * 4).map_err(unavailable)?;
        let g = model.graph();
        let mut inputs = Vec::with_capacity(g.inputs.len());
        for def in &g.inputs {
            let bytes = match def.kind {
                InputKind::Dense { width } => max_batch * width * 4,
                InputKind::Ids { slots } => max_batch * slots * 8,
                InputKind::BagOffsets => max_batch * 8,
                // Grows with the ids of a run (see `upload_inputs`).
                InputKind::BagIndices => max_batch * 8 * 8,
            };
            inputs.push(DeviceInput {
                dev: DeviceBuffer::zeroed(&gpu, bytes).map_err(unavailable)?,
                staging: PinnedBuffer::zeroed(&gpu, bytes).map_err(unavailable)?,
            });
        }
        let mut bag_ids = Vec::with_capacity(tensors.len());
        for t in &tensors {
            bag_ids.push(match t {
                Some(DevTensor::BagIds { slots, .. }) => {
                    Some(DeviceBuffer::zeroed(&gpu, (max_batch * slots * 8).max(8)).map_err(unavailable)?)
                }
                _ => None,
            });
        }
        let errs = if lookups > 0 {
            Some((
                DeviceBuffer::zeroed(&gpu, lookups * 8).map_err(unavailable)?,
                PinnedBuffer::zeroed(&gpu, lookups * 8).map_err(unavailable)?,
            ))
        } else {
            None
        };
        let mut s = GpuSession {
            blob: Growable::new(&gpu, 4096, true)?,
            lora_t: Growable::new(&gpu, 4096, false)?,
            gpu,
            ordinal,
            stream,
            weights,
            arena,
            inputs,
            tables: Vec::new(),
            tensors,
            bag_ids,
            errs,
        };
        // Interaction inputs live at fixed addresses (arena places, dense inputs), so
        // their pointer tables are built once.
        let mut tables = Vec::with_capacity(plan.steps.len());
        for step in &plan.steps {
            tables.push(match step {
                Step::DotInteraction { inputs, .. } | Step::Fm { inputs, .. } => {
                    let mut ptrs = Vec::with_capacity(inputs.len());
                    let mut lds = Vec::with_capacity(inputs.len());
                    for &src in inputs {
                        let (p, ld) = s.src(plan, model, src)?;
                        ptrs.push(p);
                        lds.push(i32::try_from(ld).map_err(|_| internal("stride"))?);
                    }
                    let p = DeviceBuffer::upload(&s.gpu, bytemuck::cast_slice(&ptrs)).map_err(unavailable)?;
                    let l = DeviceBuffer::upload(&s.gpu, bytemuck::cast_slice(&lds)).map_err(unavailable)?;
                    Some((p, l))
                }
                _ => None,
            });
        }
        s.tables = tables;
        Ok(s)
    }

    /// Device address and row stride (floats) of a dense value.
    fn src(&self, plan: &Plan, model: &Model, s: Src) -> Result<(u64, usize)> {
        match s {
            Src::Input(k) => {
                let width = model.graph().value_width(crate::graph::ValueId::Input(k));
                Ok((self.inputs.get(k).ok_or_else(|| internal("input index"))?.dev.ptr(), width))
            }
            Src::Arena(p) => self.dst(plan, p),
            Src::Const(_) => Err(internal("constant operand on the device")),
        }
    }

    fn dst(&self, plan: &Plan, p: Place) -> Result<(u64, usize)> {
        let b = plan.buffers.get(p.buffer).ok_or_else(|| internal("buffer index"))?;
        Ok((self.arena.ptr() + ((b.offset + p.col) * 4) as u64, b.width))
    }

    /// Device address, scale address (q8) and kernel format of a weight.
    fn weight(&self, w: &WeightMatrix<'_>) -> Result<(u64, u64, KFormat)> {
        let wts = &self.weights;
        Ok(match w.data {
            WeightData::F32(d) => (wts.addr_of(d)?, 0, KFormat::F32),
            WeightData::F16(d) => (wts.addr_of(d)?, 0, KFormat::F16),
            WeightData::Bf16(d) => (wts.addr_of(d)?, 0, KFormat::Bf16),
            WeightData::Q8 { codes, scales } => (wts.addr_of(codes)?, wts.addr_of(scales)?, KFormat::Q8),
            WeightData::Q8Rowwise(d) => (wts.addr_of(d)?, 0, KFormat::Q8Rowwise),
            WeightData::Q4(d) => (wts.addr_of(d)?, 0, KFormat::Q4),
        })
    }

    /// Runs the plan on bound, validated inputs and downloads the outputs into `host`
    /// (the host arena from its aligned start).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn run(
        &mut self,
        model: &Model,
        plan: &Plan,
        inputs: &[Input<'_>],
        binding: &[usize],
        rows: usize,
        adapters: Option<&RowAdapters>,
        host: &mut [f32],
    ) -> Result<()> {
        self.gpu.context().bind_to_thread().map_err(|e| cuda(e.into()))?;
        // Resolve every adapter before launching anything: a refusal leaves no partial run.
        let mut keep: Vec<Arc<DeviceAdapter>> = Vec::new();
        let mut blob = Blob::default();
        let hooks = match adapters {
            Some(a) => self.prepare_hooks(model, plan, a, rows, &mut keep, &mut blob)?,
            None => Vec::new(),
        };
        let result = self.launch_all(model, plan, inputs, binding, rows, adapters, &hooks, &blob, host);
        // Whatever happened, nothing may still be reading the staging buffers or the
        // adapters' device copies when this returns.
        let synced = self.stream.synchronize().map_err(|e| cuda(e.into()));
        drop(keep);
        result.and(synced)?;
        self.check_lookups(model, plan, inputs, binding, rows)
    }

    /// After a synchronized run: the first embedding lookup or gather (in step order)
    /// that met an id or index out of range, as the CPU reports it (`IdOutOfRange` /
    /// `IndexOutOfRange` with the smallest bad position of that step).
    fn check_lookups(
        &self,
        model: &Model,
        plan: &Plan,
        inputs: &[Input<'_>],
        binding: &[usize],
        rows: usize,
    ) -> Result<()> {
        let Some((_, staging)) = &self.errs else { return Ok(()) };
        let words: &[u64] = bytemuck::cast_slice(staging.as_slice());
        for (s, step) in plan.steps.iter().enumerate() {
            let Some(Some(dev)) = self.tensors.get(s) else { continue };
            let (node, src) = match step {
                Step::Tensor { node, ins, .. } => {
                    (*node, ins.get(usize::from(matches!(dev, DevTensor::Gather { .. }))))
                }
                Step::Bag { node, ids: Ids::Value { src, .. }, .. } => (*node, Some(src)),
                _ => continue,
            };
            let (slot, per_row) = match dev {
                DevTensor::Lookup { slot, ids, .. } => (*slot, *ids),
                DevTensor::Gather { slot, n, .. } => (*slot, *n),
                DevTensor::BagIds { slot, slots } => (*slot, *slots),
                _ => continue,
            };
            let pos = words.get(slot).copied().unwrap_or(u64::MAX);
            if pos == u64::MAX {
                continue;
            }
            let g = model.graph();
            let pos = usize::try_from(pos).map_err(|_| internal("lookup error word"))?;
            let (r, j) = (pos / per_row.max(1), pos % per_row.max(1));
            let src = *src.ok_or_else(|| internal("lookup ids"))?;
            let (ip, ldw) = self.tsrc(plan, model, inputs, binding, rows, src)?;
            let mut id = [0u8; 8];
            let at = ip + ((r * (ldw / 2) + j) * 8) as u64;
            // SAFETY: the run checked that this address holds the id the kernel read; `id`
            // is a local buffer the stream is synchronized on before it is read.
            unsafe { self.gpu.download_async(&self.stream, &mut id, at) }.map_err(cuda)?;
            self.stream.synchronize().map_err(|e| cuda(e.into()))?;
            let (table, input) = match (dev, step) {
                (DevTensor::Lookup { table, .. }, _) => {
                    (*table, g.nodes.get(node).and_then(|n| n.inputs.first()).map_or("", |&v| g.value_name(v)))
                }
                (DevTensor::BagIds { .. }, Step::Bag { table, ids: Ids::Value { value, .. }, .. }) => {
                    (*table, g.value_name(*value))
                }
                (DevTensor::Gather { d, .. }, _) => {
                    let name = g.nodes.get(node).map_or_else(String::new, |n| n.name.clone());
                    return Err(Error::IndexOutOfRange {
                        node: name,
                        row: r,
                        index: i64::from_le_bytes(id),
                        bound: *d,
                    });
                }
                _ => continue,
            };
            let w = model.weight(table)?;
            return Err(Error::IdOutOfRange {
                input: input.into(),
                position: pos,
                id: i64::from_le_bytes(id),
                table: g.weights[table].name.clone(),
                rows: w.rows,
            });
        }
        Ok(())
    }

    /// Device address and row stride (32-bit words; 0 for a constant) of a tensor step's
    /// operand, any type (i64 values take two words per element).
    fn tsrc(
        &self,
        plan: &Plan,
        model: &Model,
        inputs: &[Input<'_>],
        binding: &[usize],
        rows: usize,
        s: Src,
    ) -> Result<(u64, usize)> {
        let g = model.graph();
        match s {
            Src::Input(k) => {
                let dev = self.inputs.get(k).ok_or_else(|| internal("input index"))?.dev.ptr();
                let ld = match g.inputs[k].kind {
                    InputKind::Dense { .. } => input::dense(inputs, binding, k).len() / rows.max(1),
                    _ => 2 * input::ids(inputs, binding, k).len() / rows.max(1),
                };
                Ok((dev, ld))
            }
            Src::Arena(p) => self.dst(plan, p),
            Src::Const(i) => {
                let addr = match g.constants.get(i).ok_or_else(|| internal("constant index"))?.dtype {
                    ValueType::F32 => self.weights.addr_of(model.constant_f32(i)?)?,
                    ValueType::I64 => self.weights.addr_of(model.constant_i64(i)?)?,
                };
                Ok((addr, 0))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn launch_all(
        &mut self,
        model: &Model,
        plan: &Plan,
        inputs: &[Input<'_>],
        binding: &[usize],
        rows: usize,
        adapters: Option<&RowAdapters>,
        hooks: &[(usize, HookKind, Vec<HookLaunch>)],
        blob: &Blob,
        host: &mut [f32],
    ) -> Result<()> {
        self.upload_inputs(model, inputs, binding)?;
        if !blob.bytes.is_empty() {
            self.blob.reserve(&self.gpu, blob.bytes.len())?;
            let staging = self.blob.staging.as_mut().ok_or_else(|| internal("blob staging"))?;
            staging.as_mut_slice()[..blob.bytes.len()].copy_from_slice(&blob.bytes);
            // SAFETY: the device buffer holds at least blob.len() bytes; the pinned
            // staging outlives the copy (the run synchronizes before returning).
            unsafe {
                self.gpu.upload_async(&self.stream, self.blob.dev.ptr(), &staging.as_slice()[..blob.bytes.len()])
            }
            .map_err(cuda)?;
        }
        let hooked = adapters.is_some();
        // The plan's one hook schedule, as on the CPU.
        let fire = |this: &Self, done: usize| -> Result<()> {
            for &node in plan.hooks.after(done) {
                this.apply_hooks(plan, model, rows, hooks, node, HookKind::Post)?;
            }
            Ok(())
        };
        if hooked {
            fire(self, 0)?;
        }
        if let Some((dev, staging)) = self.errs.as_mut() {
            staging.as_mut_slice().fill(0xff);
            // SAFETY: the device word array and its staging have the same size; the
            // staging is only written again after the run synchronizes.
            unsafe { self.gpu.upload_async(&self.stream, dev.ptr(), staging.as_slice()) }.map_err(cuda)?;
        }
        for (s, step) in plan.steps.iter().enumerate() {
            self.step(model, plan, inputs, binding, rows, s, step, adapters, hooks)?;
            if hooked {
                fire(self, s + 1)?;
            }
        }
        if let Some((dev, staging)) = self.errs.as_mut() {
            // SAFETY: same sizes; the staging is read only after the stream synchronizes
            // (`run`), and the upload above was queued before on the same stream.
            unsafe { self.gpu.download_async(&self.stream, staging.as_mut_slice(), dev.ptr()) }.map_err(cuda)?;
        }
        // Download the buffers that hold outputs into the host arena, at the same offsets.
        let mut done: Vec<usize> = Vec::with_capacity(plan.outputs.len());
        for o in &plan.outputs {
            if done.contains(&o.place.buffer) {
                continue;
            }
            done.push(o.place.buffer);
            let b = &plan.buffers[o.place.buffer];
            let len = rows * b.width;
            let dst =
                host.get_mut(b.offset..b.offset + len).ok_or_else(|| internal("output outside the host arena"))?;
            // SAFETY: the device range lies in the arena (same layout as the host one);
            // `dst` is not touched until the stream is synchronized at the end of `run`.
            unsafe {
                self.gpu.download_async(
                    &self.stream,
                    bytemuck::cast_slice_mut(dst),
                    self.arena.ptr() + (b.offset * 4) as u64,
                )
            }
            .map_err(cuda)?;
        }
        Ok(())
    }

    /// Copies every bound input into its pinned staging buffer and uploads it.
    fn upload_inputs(&mut self, model: &Model, inputs: &[Input<'_>], binding: &[usize]) -> Result<()> {
        let g = model.graph();
        for k in 0..g.inputs.len() {
            let bytes: &[u8] = match g.inputs[k].kind {
                InputKind::Dense { .. } => bytemuck::cast_slice(input::dense(inputs, binding, k)),
                _ => bytemuck::cast_slice(input::ids(inputs, binding, k)),
            };
            let gpu = &self.gpu;
            let d = self.inputs.get_mut(k).ok_or_else(|| internal("input index"))?;
            if bytes.len() > d.dev.len() {
                // Only flat bag indices have no fixed bound; the stream is idle here.
                let cap = bytes.len().next_power_of_two();
                *d = DeviceInput {
                    dev: DeviceBuffer::zeroed(gpu, cap).map_err(cuda)?,
                    staging: PinnedBuffer::zeroed(gpu, cap).map_err(cuda)?,
                };
            }
            d.staging.as_mut_slice()[..bytes.len()].copy_from_slice(bytes);
            // SAFETY: the device buffer holds at least bytes.len() bytes; the pinned
            // staging is not written again before the run synchronizes.
            unsafe { gpu.upload_async(&self.stream, d.dev.ptr(), &d.staging.as_slice()[..bytes.len()]) }
                .map_err(cuda)?;
        }
        Ok(())
    }

    /// Launches one step.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        model: &Model,
        plan: &Plan,
        inputs: &[Input<'_>],
        binding: &[usize],
        rows: usize,
        index: usize,
        step: &Step,
        adapters: Option<&RowAdapters>,
        hooks: &[(usize, HookKind, Vec<HookLaunch>)],
    ) -> Result<()> {
        let (gpu, st) = (&*self.gpu, &*self.stream);
        let src = |s: Src| self.src(plan, model, s);
        let dst = |p: Place| self.dst(plan, p);
        // SAFETY: for every launch below, addresses come from the device arena laid out by a
        // plan that passed `check_disjoint` (outputs never overlap inputs, places lie in
        // the arena sized for max_batch >= rows), from the input buffers sized for this
        // run's data, or from the model's device bytes at each tensor's offset (the
        // tensors were validated against their shapes when the model was opened). Ids
        // and offsets were checked on the host by `Session::check_ids`. Tensor steps use
        // the CPU planner's own walks (recomputed by `device_tensor` from the same graph
        // shapes), so they address exactly the elements the CPU executor does inside the
        // same places; constants are read in the model's device bytes with row stride 0;
        // ids and indices computed by the graph are bounds-checked by the lookup, gather
        // and sanitize kernels themselves (device error words), never read out of range.
        unsafe {
            match step {
                Step::Linear { node, x, weight, bias, act, tokens, y } => {
                    let w = model.weight(*weight)?;
                    let (wp, sp, fmt) = self.weight(&w)?;
                    let bp = match bias {
                        Some(b) => self.weights.addr_of(model.vector(*b)?)?,
                        None => 0,
                    };
                    let (xp, ldx) = src(*x)?;
                    let (yp, ldy) = dst(*y)?;
                    let hooked = adapters.is_some_and(|a| a.touches(*node));
                    let fused = if hooked { Act::None } else { act_code(act.map(|a| a.0)) };
                    self.linear_tokens(fmt, (xp, ldx), (wp, sp, bp), fused, (yp, ldy), &w, rows, *tokens)?;
                    if hooked {
                        self.apply_hooks(plan, model, rows, hooks, *node, HookKind::LinearDelta)?;
                        self.apply_hooks(plan, model, rows, hooks, *node, HookKind::Post)?;
                        if let Some((a, _)) = act {
                            gpu.activation(st, act_code(Some(*a)), yp, ldy, yp, ldy, rows, y.width).map_err(cuda)?;
                        }
                    }
                }
                Step::Cross { x0, xl, weight, bias, tokens, y, .. } => {
                    let w = model.weight(*weight)?;
                    let (wp, sp, fmt) = self.weight(&w)?;
                    let bp = match bias {
                        Some(b) => self.weights.addr_of(model.vector(*b)?)?,
                        None => 0,
                    };
                    let ((x0p, ld0), (xlp, ldl), (yp, ldy)) = (src(*x0)?, src(*xl)?, dst(*y)?);
                    self.linear_tokens(fmt, (xlp, ldl), (wp, sp, bp), Act::None, (yp, ldy), &w, rows, *tokens)?;
                    gpu.cross(st, x0p, ld0, xlp, ldl, yp, ldy, rows, y.width).map_err(cuda)?;
                }
                Step::Bag { table, ids, mode, y, .. } => {
                    let w = model.weight(*table)?;
                    let (wp, sp, fmt) = self.weight(&w)?;
                    let (yp, ldy) = dst(*y)?;
                    let mean = *mode == BagMode::Mean;
                    match *ids {
                        Ids::Padded { input } => {
                            let n = input::ids(inputs, binding, input).len();
                            let slots = n.checked_div(rows).unwrap_or(0);
                            let ip = self.inputs[input].dev.ptr();
                            gpu.bag(st, fmt, wp, sp, w.cols, ip, 0, slots, n, mean, yp, ldy, rows).map_err(cuda)?;
                        }
                        Ids::Bags { indices, offsets } => {
                            let n = input::ids(inputs, binding, indices).len();
                            let (ip, op) = (self.inputs[indices].dev.ptr(), self.inputs[offsets].dev.ptr());
                            gpu.bag(st, fmt, wp, sp, w.cols, ip, op, 0, n, mean, yp, ldy, rows).map_err(cuda)?;
                        }
                        Ids::Value { src: s, .. } => {
                            let (Some(Some(DevTensor::BagIds { slot, slots })), Some(Some(buf)), Some((errs, _))) =
                                (self.tensors.get(index), self.bag_ids.get(index), self.errs.as_ref())
                            else {
                                return Err(internal("computed bag ids without a device plan"));
                            };
                            let (ip, ldw) = self.tsrc(plan, model, inputs, binding, rows, s)?;
                            if !ip.is_multiple_of(8) || !ldw.is_multiple_of(2) {
                                return Err(internal("misaligned i64 ids"));
                            }
                            let err = errs.ptr() + (*slot * 8) as u64;
                            gpu.sanitize_ids(st, ip, ldw / 2, *slots, rows, w.rows, buf.ptr(), err).map_err(cuda)?;
                            let n = rows * slots;
                            gpu.bag(st, fmt, wp, sp, w.cols, buf.ptr(), 0, *slots, n, mean, yp, ldy, rows)
                                .map_err(cuda)?;
                        }
                    }
                }
                Step::Activation { act, x, y, .. } => {
                    let ((xp, ldx), (yp, ldy)) = (src(*x)?, dst(*y)?);
                    gpu.activation(st, act_code(Some(*act)), xp, ldx, yp, ldy, rows, y.width).map_err(cuda)?;
                }
                Step::Binary { op, a, b, y, .. } => {
                    let ((ap, lda), (yp, ldy)) = (src(*a)?, dst(*y)?);
                    let (bp, ldb) = match b {
                        Operand::Value(s) => src(*s)?,
                        Operand::Tensor(t) => (self.weights.addr_of(model.vector(*t)?)?, 0),
                    };
                    let op = match op {
                        BinaryOp::Add => BinOp::Add,
                        BinaryOp::Mul => BinOp::Mul,
                    };
                    gpu.binary(st, op, ap, lda, bp, ldb, yp, ldy, rows, y.width).map_err(cuda)?;
                }
                Step::Copy { src: s, y, .. } => {
                    let ((xp, ldx), (yp, ldy)) = (src(*s)?, dst(*y)?);
                    gpu.copy(st, xp, ldx, yp, ldy, rows, y.width).map_err(cuda)?;
                }
                Step::LayerNorm { x, gamma, beta, epsilon, y, .. } => {
                    let gp = self.weights.addr_of(model.vector(*gamma)?)?;
                    let bp = match beta {
                        Some(b) => self.weights.addr_of(model.vector(*b)?)?,
                        None => 0,
                    };
                    let ((xp, ldx), (yp, ldy)) = (src(*x)?, dst(*y)?);
                    gpu.layer_norm(st, xp, ldx, gp, bp, *epsilon, yp, ldy, rows, y.width).map_err(cuda)?;
                }
                Step::DotInteraction { inputs: ins, self_interaction, y, .. } => {
                    let (p, l) = self.tables[index].as_ref().ok_or_else(|| internal("interaction table"))?;
                    let d = ins.first().map(|&s| self.width_of(plan, model, s)).unwrap_or(0);
                    let (yp, ldy) = dst(*y)?;
                    gpu.dot_interaction(st, p.ptr(), l.ptr(), ins.len(), d, *self_interaction, yp, ldy, rows)
                        .map_err(cuda)?;
                }
                Step::Fm { inputs: ins, y, .. } => {
                    let (p, l) = self.tables[index].as_ref().ok_or_else(|| internal("interaction table"))?;
                    let d = ins.first().map(|&s| self.width_of(plan, model, s)).unwrap_or(0);
                    let (yp, ldy) = dst(*y)?;
                    gpu.fm(st, p.ptr(), l.ptr(), ins.len(), d, yp, ldy, rows).map_err(cuda)?;
                }
                Step::Tensor { ins, y, .. } => {
                    let dev = self.tensors.get(index).and_then(Option::as_ref);
                    // Steps without a device form were refused by `check_on_device`.
                    let dev = dev.ok_or_else(|| internal("tensor op without a device kernel"))?;
                    let ts = |k: usize| -> Result<(u64, usize)> {
                        let s = *ins.get(k).ok_or_else(|| internal("tensor operand"))?;
                        self.tsrc(plan, model, inputs, binding, rows, s)
                    };
                    let (yp, ldy) = dst(*y)?;
                    match dev {
                        DevTensor::Copy { walk, src_base, dst_base, fill, words } => {
                            let (xp, ldx) = ts(0)?;
                            if let Some(bits) = fill {
                                gpu.fill_u32(st, yp, ldy, rows, *words, *bits).map_err(cuda)?;
                            }
                            gpu.strided_copy(st, xp, ldx, *src_base, yp, ldy, *dst_base, rows, walk).map_err(cuda)?;
                        }
                        DevTensor::Binary { op, walk } => {
                            let ((ap, lda), (bp, ldb)) = (ts(0)?, ts(1)?);
                            gpu.binary_strided(st, *op, ap, lda, bp, ldb, yp, ldy, rows, walk).map_err(cuda)?;
                        }
                        DevTensor::BinaryI64 { op, walk, mask } => {
                            let ((ap, lda), (bp, ldb)) = (ts(0)?, ts(1)?);
                            let aligned = |p: u64, ld: usize| p.is_multiple_of(8) && ld.is_multiple_of(2);
                            if !aligned(ap, lda) || !aligned(bp, ldb) || (!mask && !aligned(yp, ldy)) {
                                return Err(internal("misaligned i64 operands"));
                            }
                            let ldy = if *mask { ldy } else { ldy / 2 };
                            gpu.binary_strided_i64(st, *op, ap, lda / 2, bp, ldb / 2, yp, ldy, rows, walk)
                                .map_err(cuda)?;
                        }
                        DevTensor::Where { walk, wide } => {
                            let (c, a, b) = (ts(0)?, ts(1)?, ts(2)?);
                            gpu.select(st, c, a, b, (yp, ldy), rows, walk, *wide).map_err(cuda)?;
                        }
                        DevTensor::Unary { op, params } => {
                            let (xp, ldx) = ts(0)?;
                            gpu.unary(st, *op, *params, xp, ldx, yp, ldy, rows, y.width).map_err(cuda)?;
                        }
                        DevTensor::Reduce { op, outer, inner } => {
                            let (xp, ldx) = ts(0)?;
                            gpu.reduce(st, *op, xp, ldx, yp, ldy, rows, outer, inner).map_err(cuda)?;
                        }
                        DevTensor::Softmax { log, outer, n, stride } => {
                            let (xp, ldx) = ts(0)?;
                            gpu.softmax(st, *log, xp, ldx, yp, ldy, rows, outer, *n, *stride).map_err(cuda)?;
                        }
                        DevTensor::Lookup { table, ids, slot } => {
                            let w = model.weight(*table)?;
                            let (wp, sp, fmt) = self.weight(&w)?;
                            let (ip, ldw) = ts(0)?;
                            if !ip.is_multiple_of(8) || !ldw.is_multiple_of(2) {
                                return Err(internal("misaligned i64 ids"));
                            }
                            let (errs, _) = self.errs.as_ref().ok_or_else(|| internal("lookup error words"))?;
                            let err = errs.ptr() + (*slot * 8) as u64;
                            gpu.lookup(st, fmt, (wp, sp, w.rows, w.cols), ip, ldw / 2, *ids, yp, ldy, rows, err)
                                .map_err(cuda)?;
                        }
                        DevTensor::Gather { pre, d, post, n, slot } => {
                            let ((xp, ldx), (ip, ldw)) = (ts(0)?, ts(1)?);
                            if !ip.is_multiple_of(8) || !ldw.is_multiple_of(2) {
                                return Err(internal("misaligned i64 indices"));
                            }
                            let (errs, _) = self.errs.as_ref().ok_or_else(|| internal("gather error words"))?;
                            let err = errs.ptr() + (*slot * 8) as u64;
                            gpu.gather(st, xp, ldx, ip, ldw / 2, yp, ldy, rows, (*pre, *d, *post, *n), err)
                                .map_err(cuda)?;
                        }
                        DevTensor::MatMul { lead, m, k, n } => {
                            let ((ap, lda), (bp, ldb)) = (ts(0)?, ts(1)?);
                            gpu.matmul(st, ap, lda, bp, ldb, yp, ldy, rows, lead, (*m, *k, *n)).map_err(cuda)?;
                        }
                        DevTensor::BagIds { .. } => return Err(internal("bag ids planned for a tensor step")),
                    }
                }
            }
        }
        Ok(())
    }

    /// A linear over `tokens` vectors per row, as the CPU's `linear_tokens`: one launch over
    /// `rows · tokens` rows when both views are dense (or one row), else one per token
    /// column block.
    #[allow(clippy::too_many_arguments)]
    fn linear_tokens(
        &self,
        fmt: KFormat,
        (xp, ldx): (u64, usize),
        (wp, sp, bp): (u64, u64, u64),
        act: Act,
        (yp, ldy): (u64, usize),
        w: &WeightMatrix<'_>,
        rows: usize,
        tokens: usize,
    ) -> Result<()> {
        let (gpu, st) = (&*self.gpu, &*self.stream);
        let (i, o) = (w.cols, w.rows);
        // SAFETY: the caller's step addresses (see `step`): `x` holds `rows` rows of
        // `tokens · i` values at stride `ldx`, `y` `rows` rows of `tokens · o` at `ldy`, so
        // each launch below addresses a sub-view of those (a dense `[rows · tokens, i]`
        // view when the strides equal the widths, else one token's column block).
        unsafe {
            if tokens <= 1 {
                gpu.linear(st, fmt, xp, ldx, wp, sp, bp, act, yp, ldy, (rows, o, i)).map_err(cuda)?;
            } else if rows <= 1 || (ldx == tokens * i && ldy == tokens * o) {
                gpu.linear(st, fmt, xp, i, wp, sp, bp, act, yp, o, (rows * tokens, o, i)).map_err(cuda)?;
            } else {
                for t in 0..tokens {
                    let (xt, yt) = (xp + (t * i * 4) as u64, yp + (t * o * 4) as u64);
                    gpu.linear(st, fmt, xt, ldx, wp, sp, bp, act, yt, ldy, (rows, o, i)).map_err(cuda)?;
                }
            }
        }
        Ok(())
    }

    /// The width (columns) of a dense value.
    fn width_of(&self, _plan: &Plan, model: &Model, s: Src) -> usize {
        match s {
            Src::Input(k) => model.graph().value_width(crate::graph::ValueId::Input(k)),
            Src::Arena(p) => p.width,
            Src::Const(_) => 0,
        }
    }

    /// Resolves every hook the run will apply, uploads missing adapter copies, and
    /// writes the per-run arrays into `blob`. Fails, before anything is launched, on an
    /// adapter that cannot run on the device.
    fn prepare_hooks(
        &mut self,
        model: &Model,
        plan: &Plan,
        adapters: &RowAdapters,
        rows: usize,
        keep: &mut Vec<Arc<DeviceAdapter>>,
        blob: &mut Blob,
    ) -> Result<Vec<(usize, HookKind, Vec<HookLaunch>)>> {
        let g = model.graph();
        let nodes = g.nodes.len();
        // Every member must be fully device-capable, whichever nodes this plan reaches.
        let mut resolved: Vec<(usize, usize)> = Vec::new(); // (adapter address, keep index)
        for member in adapters.groups().iter().flat_map(|gr| &gr.members) {
            let a = &member.adapter;
            let key = Arc::as_ptr(a) as usize;
            if resolved.iter().any(|&(k, _)| k == key) {
                continue;
            }
            if a.state_floats() > 0 || a.targets().iter().any(|t| t.hook == HookKind::Tap) {
                return Err(refused(a, "its kind keeps per-row run state (taps) on the host"));
            }
            let d = device_adapter(&self.gpu, self.ordinal, a)?;
            if let Some(DeviceTarget::Refused(why)) = d.targets.iter().find(|t| matches!(t, DeviceTarget::Refused(_))) {
                return Err(refused(a, why));
            }
            resolved.push((key, keep.len()));
            keep.push(d);
        }
        let device_of = |a: &Arc<LoadedAdapter>| -> Result<&Arc<DeviceAdapter>> {
            let key = Arc::as_ptr(a) as usize;
            let (_, i) = resolved.iter().find(|&&(k, _)| k == key).ok_or_else(|| internal("unresolved adapter"))?;
            Ok(&keep[*i])
        };
        let all_rows: Vec<u32> = (0..rows as u32).collect();
        let rows_of = |gr: &crate::adapters::Group| -> Vec<u32> {
            if adapters.is_uniform() { all_rows.clone() } else { gr.rows.clone() }
        };
        let mut out = Vec::new();
        // Linears over several vectors per row: the device hook paths address one vector
        // per row, so adapters there stay on the CPU (a typed refusal, nothing launched).
        let multi = |slot: usize| {
            plan.steps.iter().any(|s| {
                matches!(s, Step::Linear { node, tokens, .. } | Step::Cross { node, tokens, .. } if *node == slot && *tokens > 1)
            })
        };
        for slot in 0..nodes {
            if !adapters.touches(slot) {
                continue;
            }
            if multi(slot) {
                let member = adapters.groups().iter().flat_map(|gr| &gr.members).find(|m| {
                    [HookKind::LinearDelta, HookKind::Post].iter().any(|&h| m.adapter.target_at(h, slot).is_some())
                });
                if let Some(m) = member {
                    return Err(refused(
                        &m.adapter,
                        "it targets a linear over several vectors per row (tokens), which has no device hook path",
                    ));
                }
            }
            for hook in [HookKind::LinearDelta, HookKind::Post] {
                let mut launches = Vec::new();
                for pass in 0.. {
                    // Per group: its `pass`-th member with a target of this hook here.
                    let mut any = false;
                    let mut idx = vec![-1i32; rows];
                    let mut row_scale = vec![0.0f32; rows];
                    let mut table: Vec<(usize, u32)> = Vec::new(); // (keep index, target)
                    let mut segments: Vec<(Vec<u32>, i32)> = Vec::new();
                    for gr in adapters.groups() {
                        let Some((member, t)) =
                            gr.members.iter().filter_map(|m| m.adapter.target_at(hook, slot).map(|t| (m, t))).nth(pass)
                        else {
                            continue;
                        };
                        any = true;
                        let dev = device_of(&member.adapter)?;
                        let ki = keep.iter().position(|k| Arc::ptr_eq(k, dev)).ok_or_else(|| internal("keep"))?;
                        let entry = match table.iter().position(|&e| e == (ki, t)) {
                            Some(e) => e,
                            None => {
                                table.push((ki, t));
                                table.len() - 1
                            }
                        };
                        let group_rows = rows_of(gr);
                        for &r in &group_rows {
                            let r = r as usize;
                            if r < rows {
                                idx[r] = entry as i32;
                                row_scale[r] = member.scale;
                            }
                        }
                        segments.push((group_rows, entry as i32));
                    }
                    if !any {
                        break;
                    }
                    let place = plan.node_place[slot];
                    let launch = match hook {
                        HookKind::LinearDelta => {
                            let Some(Step::Linear { x, .. }) =
                                plan.steps.iter().find(|s| matches!(s, Step::Linear { node, .. } if *node == slot))
                            else {
                                return Err(internal("linear hook without a linear step"));
                            };
                            let (mut a_ptrs, mut b_ptrs, mut ranks, mut scales) = (vec![], vec![], vec![], vec![]);
                            let (mut max_rank, mut k, mut n) = (0usize, 0usize, 0usize);
                            for &(ki, t) in &table {
                                let Some(DeviceTarget::LowRank { a, b, rank, scale, in_features, out_features }) =
                                    keep[ki].targets.get(t as usize)
                                else {
                                    return Err(internal("linear delta target is not low-rank"));
                                };
                                a_ptrs.push(a.ptr());
                                b_ptrs.push(b.ptr());
                                ranks.push(*rank as i32);
                                scales.push(*scale);
                                max_rank = max_rank.max(*rank);
                                (k, n) = (*in_features, *out_features);
                            }
                            if n != place.width {
                                return Err(internal("low-rank output width"));
                            }
                            let sgmv = (rows >= SGMV_MIN_ROWS && max_rank <= graft_kernels_cuda::device::SGMV_MAX_RANK)
                                .then(|| {
                                    let perm: Vec<i32> =
                                        segments.iter().flat_map(|(r, _)| r.iter().map(|&r| r as i32)).collect();
                                    let mut bounds = vec![0i32];
                                    for (r, _) in &segments {
                                        bounds.push(bounds[bounds.len() - 1] + r.len() as i32);
                                    }
                                    let seg_adapter: Vec<i32> = segments.iter().map(|&(_, e)| e).collect();
                                    (blob.push(&perm), blob.push(&bounds), blob.push(&seg_adapter), segments.len())
                                });
                            HookLaunch::Lora {
                                x: *x,
                                y: place,
                                idx: blob.push(&idx),
                                a: blob.push(&a_ptrs),
                                b: blob.push(&b_ptrs),
                                ranks: blob.push(&ranks),
                                scales: blob.push(&scales),
                                row_scale: blob.push(&row_scale),
                                max_rank,
                                k,
                                n,
                                sgmv,
                            }
                        }
                        _ => {
                            let (mut gammas, mut betas) = (vec![], vec![]);
                            for &(ki, t) in &table {
                                let Some(DeviceTarget::ScaleShift { gamma, beta, width }) =
                                    keep[ki].targets.get(t as usize)
                                else {
                                    return Err(internal("post target is not a scale-shift"));
                                };
                                if *width != place.width {
                                    return Err(internal("scale-shift width"));
                                }
                                gammas.push(gamma.ptr());
                                betas.push(beta.ptr());
                            }
                            HookLaunch::Ssf {
                                y: place,
                                idx: blob.push(&idx),
                                gamma: blob.push(&gammas),
                                beta: blob.push(&betas),
                                row_scale: blob.push(&row_scale),
                                n: place.width,
                            }
                        }
                    };
                    launches.push(launch);
                }
                if !launches.is_empty() {
                    out.push((slot, hook, launches));
                }
            }
        }
        let t_bytes = rows
            * out
                .iter()
                .flat_map(|(_, _, l)| l)
                .map(|l| if let HookLaunch::Lora { max_rank, .. } = l { *max_rank } else { 0 })
                .max()
                .unwrap_or(0)
            * 4;
        self.lora_t.reserve(&self.gpu, t_bytes)?;
        Ok(out)
    }

    /// Launches the prepared hooks of `hook` at `slot`.
    fn apply_hooks(
        &self,
        plan: &Plan,
        model: &Model,
        rows: usize,
        hooks: &[(usize, HookKind, Vec<HookLaunch>)],
        slot: usize,
        hook: HookKind,
    ) -> Result<()> {
        let Some((_, _, launches)) = hooks.iter().find(|(s, h, _)| *s == slot && *h == hook) else { return Ok(()) };
        let base = self.blob.dev.ptr();
        for l in launches {
            match l {
                HookLaunch::Lora { x, y, idx, a, b, ranks, scales, row_scale, max_rank, k, n, sgmv } => {
                    let (xp, ldx) = self.src(plan, model, *x)?;
                    let (yp, ldy) = self.dst(plan, *y)?;
                    let launch = LoraLaunch {
                        x: xp,
                        ldx,
                        y: yp,
                        ldy,
                        t: self.lora_t.dev.ptr(),
                        idx: base + *idx as u64,
                        a_ptrs: base + *a as u64,
                        b_ptrs: base + *b as u64,
                        ranks: base + *ranks as u64,
                        scales: base + *scales as u64,
                        row_scale: base + *row_scale as u64,
                        segments: sgmv.map(|(p, s, sa, n)| (base + p as u64, base + s as u64, base + sa as u64, n)),
                        m: rows,
                        k: *k,
                        n: *n,
                        max_rank: *max_rank,
                    };
                    // SAFETY: the tables were uploaded into the blob at these offsets for
                    // this run; every pointer in them is a live adapter copy held by the
                    // run; `t` holds rows · max_rank floats (reserved in prepare_hooks);
                    // x and y are disjoint arena places (or an input) per the plan.
                    unsafe { self.gpu.lora(&self.stream, &launch) }.map_err(cuda)?;
                }
                HookLaunch::Ssf { y, idx, gamma, beta, row_scale, n } => {
                    let (yp, ldy) = self.dst(plan, *y)?;
                    // SAFETY: as for LoRA; y is the node's place, updated in place.
                    unsafe {
                        self.gpu.ssf(
                            &self.stream,
                            yp,
                            ldy,
                            base + *idx as u64,
                            base + *gamma as u64,
                            base + *beta as u64,
                            base + *row_scale as u64,
                            *n,
                            rows,
                        )
                    }
                    .map_err(cuda)?;
                }
            }
        }
        Ok(())
    }
}

fn refused(a: &LoadedAdapter, why: &str) -> Error {
    Error::AdapterNotOnDevice { id: a.id().into(), kind: a.kind().into(), detail: why.into() }
}

/// Without a GPU: the device plans of tensor steps, replayed on the host exactly as
/// `tensor.cu` executes them (`Strided::offsets` is the kernels' `ts_offsets`; row
/// strides, bases, word copies and constants as launched), must give the CPU session's
/// outputs. This checks `device_tensor`'s recomputation of the CPU planner's walks, which
/// the emulated kernels (kernels-cuda/tests/emu) cannot see.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::too_many_lines)]
mod tests {
    use super::*;
    use crate::builder::{ConstValues, Matrix, ModelBuilder, WeightFormats};
    use crate::{Session, SessionOptions};
    use serde_json::json;

    /// Rows of words of a source: (data, first word, row stride).
    fn source(
        model: &Model,
        plan: &Plan,
        arena: &[u32],
        ins: &[Vec<u32>],
        rows: usize,
        s: Src,
    ) -> (Vec<u32>, usize, usize) {
        match s {
            Src::Input(k) => (ins[k].clone(), 0, ins[k].len() / rows),
            Src::Arena(p) => (arena.to_vec(), plan.buffers[p.buffer].offset + p.col, plan.buffers[p.buffer].width),
            Src::Const(i) => {
                let words = match model.graph().constants[i].dtype {
                    ValueType::F32 => model.constant_f32(i).unwrap().iter().map(|v| v.to_bits()).collect(),
                    ValueType::I64 => i64_words(model.constant_i64(i).unwrap()),
                };
                (words, 0, 0)
            }
        }
    }

    fn i64_words(v: &[i64]) -> Vec<u32> {
        v.iter().flat_map(|&x| [x as u64 as u32, ((x as u64) >> 32) as u32]).collect()
    }

    fn binary(op: TensorBinOp, a: f32, b: f32) -> f32 {
        let m = |c: bool| if c { 1.0 } else { 0.0 };
        match op {
            TensorBinOp::Add => a + b,
            TensorBinOp::Sub => a - b,
            TensorBinOp::Mul => a * b,
            TensorBinOp::Div => a / b,
            TensorBinOp::Greater => m(a > b),
            TensorBinOp::Max => a.max(b),
            TensorBinOp::Prelu => {
                if a >= 0.0 {
                    a
                } else {
                    a * b
                }
            }
            other => panic!("{other:?} is not in the replay models"),
        }
    }

    /// Runs the plan on the host through the device forms; returns the arena words.
    fn replay(model: &Model, plan: &Plan, tensors: &[Option<DevTensor>], ins: &[Vec<u32>], rows: usize) -> Vec<u32> {
        // Stale words, as in a device arena reused between runs.
        let mut arena = vec![0xdead_beef_u32; plan.arena_len + 64];
        for (s, step) in plan.steps.iter().enumerate() {
            let (ins_s, y) = match step {
                Step::Tensor { ins, y, .. } => (ins.clone(), *y),
                Step::Binary { a, b: Operand::Value(b), y, .. } => (vec![*a, *b], *y),
                Step::Copy { src, y, .. } => (vec![*src], *y),
                Step::Linear { x, y, act: None, .. } => (vec![*x], *y),
                Step::Bag { ids: Ids::Value { src, .. }, y, .. } => (vec![*src], *y),
                other => panic!("step {other:?} is not in the replay models"),
            };
            let src: Vec<_> = ins_s.iter().map(|&x| source(model, plan, &arena, ins, rows, x)).collect();
            let (yb, ldy) = (plan.buffers[y.buffer].offset + y.col, plan.buffers[y.buffer].width);
            let f = |k: usize, r: usize, off: usize| f32::from_bits(src[k].0[src[k].1 + r * src[k].2 + off]);
            for r in 0..rows {
                let out = yb + r * ldy;
                match (step, tensors[s].as_ref()) {
                    (Step::Binary { op, .. }, _) => {
                        for e in 0..y.width {
                            let (a, b) = (f(0, r, e), f(1, r, e));
                            let v = if *op == BinaryOp::Add { a + b } else { a * b };
                            arena[out + e] = v.to_bits();
                        }
                    }
                    (Step::Linear { weight, bias, tokens, .. }, _) => {
                        // `linear_tokens`' three launch shapes, each as its own loop.
                        let w = model.weight(*weight).unwrap();
                        let bias = bias.map(|b| model.vector(b).unwrap());
                        let (i, o, ldx) = (w.cols, w.rows, src[0].2);
                        let mut wr = vec![0.0f32; i];
                        let lin = |arena: &mut Vec<u32>, xb: usize, yb: usize, wr: &mut Vec<f32>| {
                            for oo in 0..o {
                                w.dequant_row(oo, wr);
                                let mut acc = bias.map_or(0.0, |b| b[oo]);
                                for (c, wv) in wr.iter().enumerate() {
                                    acc += f32::from_bits(src[0].0[xb + c]) * wv;
                                }
                                arena[yb + oo] = acc.to_bits();
                            }
                        };
                        if *tokens <= 1 {
                            lin(&mut arena, src[0].1 + r * ldx, out, &mut wr);
                        } else if rows <= 1 || (ldx == tokens * i && ldy == tokens * o) {
                            for t in 0..*tokens {
                                let q = r * tokens + t; // row of the [rows · tokens, i] view
                                lin(&mut arena, src[0].1 + q * i, yb + q * o, &mut wr);
                            }
                        } else {
                            for t in 0..*tokens {
                                lin(&mut arena, src[0].1 + r * ldx + t * i, out + t * o, &mut wr);
                            }
                        }
                    }
                    (Step::Bag { table, mode, .. }, Some(DevTensor::BagIds { slots, .. })) => {
                        let w = model.weight(*table).unwrap();
                        let mut acc = vec![0.0f32; w.cols];
                        let mut row = vec![0.0f32; w.cols];
                        for j in 0..*slots {
                            let at = src[0].1 + r * src[0].2 + 2 * j;
                            let id = (u64::from(src[0].0[at]) | (u64::from(src[0].0[at + 1]) << 32)) as usize;
                            w.dequant_row(id, &mut row);
                            acc.iter_mut().zip(&row).for_each(|(a, v)| *a += v);
                        }
                        for (c, v) in acc.iter().enumerate() {
                            let v = if *mode == BagMode::Mean { v / *slots as f32 } else { *v };
                            arena[out + c] = v.to_bits();
                        }
                    }
                    (Step::Copy { .. }, _) => {
                        for e in 0..y.width {
                            arena[out + e] = f(0, r, e).to_bits();
                        }
                    }
                    (_, Some(DevTensor::Copy { walk, src_base, dst_base, fill, words })) => {
                        if let Some(bits) = fill {
                            arena[out..out + words].fill(*bits);
                        }
                        for e in 0..walk.total() {
                            let o = walk.offsets(e);
                            arena[out + dst_base + o[0]] = src[0].0[src[0].1 + r * src[0].2 + src_base + o[1]];
                        }
                    }
                    (_, Some(DevTensor::Binary { op, walk })) => {
                        for e in 0..walk.total() {
                            let o = walk.offsets(e);
                            arena[out + o[0]] = binary(*op, f(0, r, o[1]), f(1, r, o[2])).to_bits();
                        }
                    }
                    (_, Some(DevTensor::BinaryI64 { op, walk, mask })) => {
                        let w = |k: usize, off: usize| {
                            let at = src[k].1 + r * src[k].2 + 2 * off;
                            (u64::from(src[k].0[at]) | (u64::from(src[k].0[at + 1]) << 32)) as i64
                        };
                        for e in 0..walk.total() {
                            let o = walk.offsets(e);
                            let (a, b) = (w(0, o[1]), w(1, o[2]));
                            if *mask {
                                let c = match op {
                                    TensorBinOp::Equal => a == b,
                                    TensorBinOp::Less => a < b,
                                    other => panic!("{other:?} is not in the replay models"),
                                };
                                arena[out + o[0]] = if c { 1.0f32 } else { 0.0 }.to_bits();
                            } else {
                                let v = match op {
                                    TensorBinOp::Add => a.wrapping_add(b),
                                    TensorBinOp::Min => a.min(b),
                                    other => panic!("{other:?} is not in the replay models"),
                                };
                                arena[out + 2 * o[0]] = v as u64 as u32;
                                arena[out + 2 * o[0] + 1] = ((v as u64) >> 32) as u32;
                            }
                        }
                    }
                    (_, Some(DevTensor::Where { walk, wide })) => {
                        let w = if *wide { 2 } else { 1 };
                        for e in 0..walk.total() {
                            let o = walk.offsets(e);
                            let k = if f(0, r, o[1]) != 0.0 { 1 } else { 2 };
                            for h in 0..w {
                                arena[out + o[0] * w + h] = src[k].0[src[k].1 + r * src[k].2 + o[k + 1] * w + h];
                            }
                        }
                    }
                    (_, Some(DevTensor::Unary { op, .. })) => {
                        for e in 0..y.width {
                            let x = f(0, r, e);
                            let v = match op {
                                UnaryCode::Op(2) => x.exp(),
                                UnaryCode::Op(0) => -x,
                                other => panic!("{other:?} is not in the replay models"),
                            };
                            arena[out + e] = v.to_bits();
                        }
                    }
                    (_, Some(DevTensor::Reduce { op, outer, inner })) => {
                        for j in 0..outer.total() {
                            let base = outer.offsets(j)[0];
                            let lane: Vec<f32> =
                                (0..inner.total()).map(|i| f(0, r, base + inner.offsets(i)[0])).collect();
                            let v = match op {
                                ReduceCode::Sum => lane.iter().sum::<f32>(),
                                ReduceCode::Mean => lane.iter().sum::<f32>() / lane.len() as f32,
                                ReduceCode::Max => lane.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                                other => panic!("{other:?} is not in the replay models"),
                            };
                            arena[out + j] = v.to_bits();
                        }
                    }
                    (_, Some(DevTensor::Softmax { log, outer, n, stride })) => {
                        for j in 0..outer.total() {
                            let base = outer.offsets(j)[0];
                            let lane: Vec<f32> = (0..*n).map(|i| f(0, r, base + i * stride)).collect();
                            let max = lane.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                            let sum: f32 = lane.iter().map(|v| (v - max).exp()).sum();
                            for (i, v) in lane.iter().enumerate() {
                                let y = if *log { v - (max + sum.ln()) } else { (v - max).exp() * (1.0 / sum) };
                                arena[out + base + i * stride] = y.to_bits();
                            }
                        }
                    }
                    (_, Some(DevTensor::Lookup { table, ids, .. })) => {
                        let w = model.weight(*table).unwrap();
                        for j in 0..*ids {
                            let (lo, hi) = (
                                src[0].0[src[0].1 + r * src[0].2 + 2 * j],
                                src[0].0[src[0].1 + r * src[0].2 + 2 * j + 1],
                            );
                            let id = (u64::from(lo) | (u64::from(hi) << 32)) as usize;
                            let mut row = vec![0.0f32; w.cols];
                            w.dequant_row(id, &mut row);
                            for (c, v) in row.iter().enumerate() {
                                arena[out + j * w.cols + c] = v.to_bits();
                            }
                        }
                    }
                    (_, Some(DevTensor::Gather { pre, d, post, n, .. })) => {
                        for p in 0..*pre {
                            for j in 0..*n {
                                let at = src[1].1 + r * src[1].2 + 2 * j;
                                let i = (u64::from(src[1].0[at]) | (u64::from(src[1].0[at + 1]) << 32)) as i64;
                                let i = if i < 0 { i + *d as i64 } else { i } as usize;
                                for q in 0..*post {
                                    arena[out + (p * n + j) * post + q] =
                                        src[0].0[src[0].1 + r * src[0].2 + (p * d + i) * post + q];
                                }
                            }
                        }
                    }
                    (_, Some(DevTensor::MatMul { lead, m, k, n })) => {
                        for l in 0..lead.total() {
                            let o = lead.offsets(l);
                            for i in 0..*m {
                                for jj in 0..*n {
                                    let mut acc = 0.0f32;
                                    for p in 0..*k {
                                        acc += f(0, r, o[1] + i * k + p) * f(1, r, o[2] + p * n + jj);
                                    }
                                    arena[out + o[0] + i * n + jj] = acc.to_bits();
                                }
                            }
                        }
                    }
                    (other, _) => panic!("no device form for {other:?}"),
                }
            }
        }
        arena
    }

    fn check(model: &Model, dense: &[(&str, Vec<f32>, usize)], ids: &[(&str, Vec<i64>, usize)], rows: usize) {
        let kernels = crate::kernels::select(crate::kernels::Level::Scalar).unwrap();
        let plan = Plan::new(model, rows, kernels.linear).unwrap();
        let (tensors, _) = check_on_device(model, &plan).unwrap();
        let g = model.graph();
        let words: Vec<Vec<u32>> = g
            .inputs
            .iter()
            .map(|def| {
                if let Some((_, v, _)) = dense.iter().find(|d| d.0 == def.name) {
                    v.iter().map(|x| x.to_bits()).collect()
                } else {
                    i64_words(&ids.iter().find(|d| d.0 == def.name).unwrap().1)
                }
            })
            .collect();
        let arena = replay(model, &plan, &tensors, &words, rows);
        let mut inputs: Vec<Input<'_>> = dense.iter().map(|(n, v, w)| Input::dense(n, v, *w)).collect();
        inputs.extend(ids.iter().map(|(n, v, s)| Input::ids(n, v, *s)));
        let opts =
            SessionOptions { max_batch: rows, kernels: Some(crate::kernels::Level::Scalar), ..Default::default() };
        let mut cpu = Session::new(model, opts).unwrap();
        let out = cpu.run(&inputs).unwrap();
        for (i, o) in plan.outputs.iter().enumerate() {
            let (name, want) = out.get_index(i).unwrap();
            let b = &plan.buffers[o.place.buffer];
            for r in 0..rows {
                for (c, w) in want.row(r).iter().enumerate() {
                    let got = f32::from_bits(arena[b.offset + o.place.col + r * b.width + c]);
                    assert!((got - w).abs() <= 1e-5 * (1.0 + w.abs()), "{name}[{r}, {c}]: replay {got}, cpu {w}");
                }
            }
        }
    }

    #[test]
    fn device_plans_of_tensor_ops_replay_like_the_cpu() {
        let mut b = ModelBuilder::new("replay");
        b.dense_input_shaped("x", &[3, 4]);
        b.ids_input_shaped("ids", &[2, 3]);
        b.constant("c", &[4], ConstValues::F32(vec![0.5, -1.0, 2.0, 0.25]));
        b.tensor_op("t", "transpose", &["x"], json!({"perm": [1, 0]}), &[4, 3], ValueType::F32);
        b.tensor_op("mm", "matmul", &["x", "t"], json!({}), &[3, 3], ValueType::F32);
        b.tensor_op("sm", "softmax", &["mm"], json!({"axis": 0}), &[3, 3], ValueType::F32);
        b.tensor_op("lsm", "log_softmax", &["x"], json!({"axis": 1}), &[3, 4], ValueType::F32);
        let red = json!({"reduce": "sum", "axes": [1], "keepdims": false});
        b.tensor_op("r", "reduce", &["x"], red, &[3], ValueType::F32);
        let mx = json!({"reduce": "max", "axes": [0], "keepdims": true});
        b.tensor_op("rm", "reduce", &["t"], mx, &[1, 3], ValueType::F32);
        b.tensor_op(
            "sl",
            "slice",
            &["x"],
            json!({"axis": 1, "start": 1, "end": 4, "step": 2}),
            &[3, 2],
            ValueType::F32,
        );
        b.tensor_op("tl", "tile", &["r"], json!({}), &[6], ValueType::F32);
        b.tensor_op("pd", "pad", &["sl"], json!({"pads": [0, 1, 1, 1], "value": 0.5}), &[4, 4], ValueType::F32);
        b.tensor_op("gt", "greater", &["x", "c"], json!({}), &[3, 4], ValueType::F32);
        b.tensor_op("sub", "sub", &["c", "x"], json!({}), &[3, 4], ValueType::F32);
        b.tensor_op("pr", "prelu", &["sub", "c"], json!({}), &[3, 4], ValueType::F32);
        b.tensor_op("e", "exp", &["sl"], json!({}), &[3, 2], ValueType::F32);
        b.tensor_op("cat", "concat", &["x", "pr", "e"], json!({"axis": 1}), &[3, 10], ValueType::F32);
        b.tensor_op("it", "transpose", &["ids"], json!({"perm": [1, 0]}), &[3, 2], ValueType::I64);
        b.embedding("emb", "it", Matrix::new(7, 4, (0..28).map(|i| i as f32 / 7.0).collect()), &[3, 2, 4]);
        b.tensor_op("em", "matmul", &["emb", "t"], json!({}), &[3, 2, 3], ValueType::F32);
        b.tensor_op("a3", "reshape", &["x"], json!({}), &[3, 2, 2], ValueType::F32);
        b.tensor_op("b3", "reshape", &["sub"], json!({}), &[3, 2, 2], ValueType::F32);
        b.tensor_op("cat2", "concat", &["a3", "b3"], json!({"axis": 1}), &[3, 4, 2], ValueType::F32);
        b.constant("sel", &[3], ConstValues::I64(vec![2, -3, 0]));
        b.tensor_op("g", "gather", &["cat2", "sel"], json!({"axis": 1}), &[3, 3, 2], ValueType::F32);
        b.tensor_op("gi", "gather", &["ids", "sel"], json!({"axis": 1}), &[2, 3], ValueType::I64);
        b.embedding("emb2", "gi", Matrix::new(7, 2, (0..14).map(|i| i as f32).collect()), &[2, 3, 2]);
        b.constant("five", &[3], ConstValues::I64(vec![5, 1, 6]));
        b.tensor_op("ieq", "equal", &["ids", "five"], json!({}), &[2, 3], ValueType::F32);
        b.tensor_op("ilt", "less", &["five", "ids"], json!({}), &[2, 3], ValueType::F32);
        b.tensor_op("imin", "min", &["ids", "five"], json!({}), &[2, 3], ValueType::I64);
        b.tensor_op("iadd", "add", &["imin", "gi"], json!({}), &[2, 3], ValueType::I64);
        b.embedding("emb3", "iadd", Matrix::new(13, 2, (0..26).map(|i| i as f32).collect()), &[2, 3, 2]);
        // Linears over 3 vectors a row: dense (`lin`), and into a flat concat's block (`lc`,
        // row stride above the width: one launch per token).
        let wm = |o: usize| Matrix::new(o, 4, (0..o * 4).map(|v| (v % 5) as f32 / 4.0 - 0.5).collect());
        b.linear_shaped("lin", "x", wm(5), Some(vec![0.1, 0.2, 0.3, 0.4, 0.5]), &[3, 5]);
        b.linear_shaped("lc", "lin_in", wm(2), None, &[3, 2]);
        b.tensor_op("lin_in", "sub", &["x", "c"], json!({}), &[3, 4], ValueType::F32);
        b.tensor_op("fc", "concat", &["lc", "r"], json!({}), &[9], ValueType::F32);
        b.tensor_op("wh", "where", &["gt", "x", "c"], json!({}), &[3, 4], ValueType::F32);
        b.constant("zero3", &[3], ConstValues::I64(vec![0, 1, 2]));
        b.tensor_op("wi", "where", &["ilt", "zero3", "ids"], json!({}), &[2, 3], ValueType::I64);
        b.embedding("emb4", "wi", Matrix::new(7, 1, (0..7).map(|i| i as f32).collect()), &[2, 3, 1]);
        let outputs = ["sm", "lsm", "rm", "tl", "pd", "gt", "cat", "em", "cat2", "g", "emb2", "ieq", "ilt", "emb3"];
        let bag_table = Matrix::new(13, 3, (0..39).map(|i| i as f32 / 8.0).collect());
        b.tensor_op("iflat", "reshape", &["iadd"], json!({}), &[6], ValueType::I64);
        b.embedding_bag("bagc", &["iflat"], bag_table, BagMode::Mean);
        for o in outputs.into_iter().chain(["lin", "fc", "wh", "emb4", "bagc"]) {
            b.output(o, o);
        }
        let model = Model::from_slice_copy(&b.to_bytes(WeightFormats::default()).unwrap()).unwrap();
        let rows = 3;
        let x: Vec<f32> = (0..rows * 12).map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0).collect();
        let ids: Vec<i64> = (0..rows * 6).map(|i| (i * 5 % 7) as i64).collect();
        check(&model, &[("x", x, 12)], &[("ids", ids, 6)], rows);
    }

    #[test]
    fn ops_without_a_kernel_are_refused() {
        let mut b = ModelBuilder::new("refused");
        b.dense_input_shaped("x", &[2, 3]);
        b.tensor_op("k", "topk", &["x"], json!({"axis": 1, "k": 2, "output": "values"}), &[2, 2], ValueType::F32);
        b.output("out", "k");
        let model = Model::from_slice_copy(&b.to_bytes(WeightFormats::default()).unwrap()).unwrap();
        let kernels = crate::kernels::select(crate::kernels::Level::Scalar).unwrap();
        let plan = Plan::new(&model, 4, kernels.linear).unwrap();
        match check_on_device(&model, &plan) {
            Err(Error::OpNotOnDevice { node, op }) => assert_eq!((node.as_str(), op.as_str()), ("k", "topk")),
            other => panic!("expected OpNotOnDevice, got {other:?}"),
        }
    }
}
