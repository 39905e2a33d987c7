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
//!   interactions and FM. Nothing falls back to the CPU mid-graph.
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
    Act, BinOp, CudaError, DeviceBuffer, Gpu, HostRegistration, LoraLaunch, PinnedBuffer, WeightFormat as KFormat,
};
use graft_plugin_abi::{DeviceParams, HookKind};

use super::input::{self, Input};
use super::plan::{BinaryOp, Ids, Operand, Place, Plan, Src, Step};
use crate::adapters::{LoadedAdapter, RowAdapters};
use crate::error::{Error, Result};
use crate::graph::{Activation, BagMode, InputKind, Op};
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

/// Refuses a plan with a step the device has no kernel for (every tensor op, linears
/// and crosses over several vectors per row, computed bag ids, layer norms over an inner
/// axis, constant operands): graft never falls back to the CPU inside a graph.
fn check_on_device(model: &Model, plan: &Plan) -> Result<()> {
    let g = model.graph();
    let refuse = |node: usize| {
        let (name, op) = match g.nodes.get(node) {
            Some(n) => (n.name.clone(), String::from(n.op.name())),
            None => (String::from("<graph output>"), String::from("cast")),
        };
        Err(Error::OpNotOnDevice { node: name, op })
    };
    let is_const = |s: &Src| matches!(s, Src::Const(_));
    for step in &plan.steps {
        match step {
            Step::Tensor { node, .. } => return refuse(*node),
            Step::Linear { node, tokens, x, .. } if *tokens > 1 || is_const(x) => return refuse(*node),
            Step::Cross { node, tokens, .. } if *tokens > 1 => return refuse(*node),
            Step::Bag { node, ids: super::plan::Ids::Value { .. }, .. } => return refuse(*node),
            Step::LayerNorm { node, gamma, y, .. } if model.vector(*gamma)?.len() != y.width => return refuse(*node),
            _ => {}
        }
    }
    // Aliased reshapes emit no step: the device arena has the host's layout.
    Ok(())
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
        check_on_device(model, plan)?;
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
        result.and(synced)
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
        for (s, step) in plan.steps.iter().enumerate() {
            self.step(model, plan, inputs, binding, rows, s, step, adapters, hooks)?;
            if hooked {
                fire(self, s + 1)?;
            }
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
        // and offsets were checked on the host by `Session::check_ids`.
        unsafe {
            match step {
                Step::Linear { node, x, weight, bias, act, y, .. } => {
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
                    gpu.linear(st, fmt, xp, ldx, wp, sp, bp, fused, yp, ldy, (rows, w.rows, w.cols)).map_err(cuda)?;
                    if hooked {
                        self.apply_hooks(plan, model, rows, hooks, *node, HookKind::LinearDelta)?;
                        self.apply_hooks(plan, model, rows, hooks, *node, HookKind::Post)?;
                        if let Some((a, _)) = act {
                            gpu.activation(st, act_code(Some(*a)), yp, ldy, yp, ldy, rows, y.width).map_err(cuda)?;
                        }
                    }
                }
                Step::Cross { x0, xl, weight, bias, y, .. } => {
                    let w = model.weight(*weight)?;
                    let (wp, sp, fmt) = self.weight(&w)?;
                    let bp = match bias {
                        Some(b) => self.weights.addr_of(model.vector(*b)?)?,
                        None => 0,
                    };
                    let ((x0p, ld0), (xlp, ldl), (yp, ldy)) = (src(*x0)?, src(*xl)?, dst(*y)?);
                    gpu.linear(st, fmt, xlp, ldl, wp, sp, bp, Act::None, yp, ldy, (rows, w.rows, w.cols))
                        .map_err(cuda)?;
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
                        // Refused by `check_on_device`.
                        Ids::Value { .. } => return Err(internal("computed bag ids on the device")),
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
                // Refused by `check_on_device`.
                Step::Tensor { .. } => return Err(internal("tensor op on the device")),
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
        for slot in 0..nodes {
            if !adapters.touches(slot) {
                continue;
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
