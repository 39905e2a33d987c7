//! Sessions: a planned graph, its arena, its kernels and its threads.
//!
//! `Session::new` does every allocation a session will ever make (plan, arena, scratch,
//! worker threads). `run` binds borrowed inputs, validates them completely, executes the
//! plan and returns views of the outputs inside the arena — no allocation, no copies of
//! inputs, no locks on the hot path. With `threads = 1` a session is deterministic and
//! bit-identical run to run; with more threads it is too, because work is split only
//! along rows and output columns, never along a reduction.

use alloc::vec;
use alloc::vec::Vec;

use super::exec::{self, Exec};
use super::input::{self, Input, NanPolicy};
use super::plan::{Ids, Plan, Src, Step};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::kernels::{self, Kernels, Level, Q8Math};
use crate::model::Model;
use crate::view::MatRef;

/// Where a session runs its graph.
///
/// `Cuda(ordinal)` needs a build with the `cuda` feature and a machine with the CUDA
/// driver; otherwise [`Session::new`] returns [`Error::CudaUnavailable`] saying why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Device {
    /// The CPU kernels (the default).
    #[default]
    Cpu,
    /// CUDA device `ordinal`: every step of the graph runs there.
    Cuda(u32),
}

impl Device {
    /// Parses `cpu`, `cuda` (device 0) or `cuda:N`.
    pub fn parse(s: &str) -> Result<Device> {
        let bad = || Error::InvalidOption {
            detail: alloc::format!("device `{s}`: expected cpu, cuda or cuda:N (N = 0, 1, …)"),
        };
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            other => {
                let n = other.strip_prefix("cuda:").ok_or_else(bad)?;
                n.parse::<u32>().map(Device::Cuda).map_err(|_| bad())
            }
        }
    }
}

#[cfg(feature = "std")]
impl Device {
    /// Checks that sessions can run on this device: always true for the CPU; for CUDA,
    /// opens the device (loading the driver, compiling or loading the kernels) and
    /// returns [`Error::CudaUnavailable`] with the reason when that fails.
    pub fn check(self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => super::cuda::open_gpu(ordinal).map(|_| ()),
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => Err(cuda_not_built()),
        }
    }
}

/// The error for `Device::Cuda` in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
fn cuda_not_built() -> Error {
    Error::CudaUnavailable {
        detail:
            "this build of graft has no CUDA support (rebuild with the `cuda` feature, e.g. `cargo build --features \
                 cuda`)"
                .into(),
    }
}

impl core::fmt::Display for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How a session is planned and run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SessionOptions {
    /// Largest batch `run` accepts; the arena is sized for it.
    pub max_batch: usize,
    /// Threads that execute one `run` (the caller plus `threads - 1` workers);
    /// 0 means one per available CPU.
    pub threads: usize,
    /// Kernel level; `None` honours `GRAFT_KERNELS`, else the best the CPU runs.
    pub kernels: Option<Level>,
    /// Treatment of non-finite dense inputs.
    pub nan_policy: NanPolicy,
    /// Where the graph runs (default: the CPU).
    pub device: Device,
    /// How q8 linears multiply (default [`Q8Math::Int8`]: activations quantized per row
    /// to int8, exact integer dot products; [`Q8Math::Exact`] keeps the dequantize-to-f32
    /// path). Other weight formats are unaffected.
    pub q8_math: Q8Math,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            max_batch: 256,
            threads: 1,
            kernels: None,
            nan_policy: NanPolicy::Reject,
            device: Device::Cpu,
            q8_math: Q8Math::default(),
        }
    }
}

/// A model planned for batches of up to `max_batch` rows. Not `Sync`: give each serving
/// thread its own session (they share the model's mapping).
#[derive(Debug)]
pub struct Session {
    model: Model,
    plan: Plan,
    kernels: &'static Kernels,
    options: SessionOptions,
    /// Backing store; `arena_start` is its first 64-byte-aligned float.
    arena: Vec<f32>,
    arena_start: usize,
    /// `threads × plan.scratch_len` floats.
    scratch: Vec<f32>,
    binding: Vec<usize>,
    /// The last run's rows whose outputs are not finite (at most one entry per row;
    /// capacity `max_batch`, so checking allocates nothing).
    faults: Vec<RowFault>,
    #[cfg(feature = "std")]
    pool: Option<super::pool::Pool>,
    /// Hook scratch, per-row adapter state and tickets, grown (rarely) when a run's
    /// adapters need more.
    #[cfg(feature = "std")]
    hooks: super::adapt::HookBuffers,
    /// The device side of a `Device::Cuda` session.
    #[cfg(feature = "cuda")]
    gpu: Option<alloc::boxed::Box<super::cuda::GpuSession>>,
}

impl Session {
    /// Plans `model` and allocates everything `run` will use.
    pub fn new(model: &Model, options: SessionOptions) -> Result<Session> {
        if options.max_batch == 0 {
            return Err(Error::InvalidOption { detail: "max_batch must be at least 1".into() });
        }
        check_activation_size(model.graph(), options.max_batch)?;
        #[cfg(not(feature = "cuda"))]
        if let Device::Cuda(_) = options.device {
            return Err(cuda_not_built());
        }
        if options.threads > MAX_THREADS {
            return Err(Error::InvalidOption {
                detail: alloc::format!(
                    "threads {} is more than {MAX_THREADS} (0 starts one per available CPU)",
                    options.threads
                ),
            });
        }
        let threads = resolve_threads(options.threads).min(MAX_THREADS);
        let kernels = match options.kernels {
            Some(level) => kernels::select(level)?,
            None => kernels::from_env()?,
        };
        let plan = Plan::new(model, options.max_batch, &kernels::LinearDispatch { kernels, math: options.q8_math })?;
        let floats =
            plan.buffers.iter().map(|b| b.offset + b.width * options.max_batch).max().unwrap_or(0).max(plan.arena_len);
        // Fallible: the widths come from the file, so an absurd model must not abort.
        let arena =
            zeroed(floats.saturating_add(16), || alloc::format!("activations of max_batch {}", options.max_batch))?;
        let arena_start = arena.as_ptr().align_offset(64).min(15);
        let scratch = zeroed(plan.scratch_len.max(1).saturating_mul(threads), || {
            alloc::format!("kernel scratch of {threads} thread(s)")
        })?;
        #[cfg(feature = "std")]
        let pool = if threads > 1 {
            Some(
                super::pool::Pool::new(threads)
                    .map_err(|e| Error::ThreadStart { threads: threads - 1, detail: alloc::format!("{e}") })?,
            )
        } else {
            None
        };
        #[cfg(feature = "cuda")]
        let gpu = match options.device {
            Device::Cpu => None,
            Device::Cuda(ordinal) => Some(alloc::boxed::Box::new(super::cuda::GpuSession::new(
                model,
                &plan,
                ordinal,
                options.max_batch,
                floats,
            )?)),
        };
        log_debug!(
            "session: {} steps, arena {} KiB, scratch {} KiB, kernels {}, {} thread(s)",
            plan.steps.len(),
            floats * 4 / 1024,
            scratch.len() * 4 / 1024,
            kernels.level,
            threads
        );
        let mut faults = Vec::new();
        faults.try_reserve_exact(options.max_batch).map_err(|_| Error::OutOfMemory {
            what: alloc::format!("row fault list of max_batch {}", options.max_batch),
            bytes: options.max_batch as u128 * core::mem::size_of::<RowFault>() as u128,
        })?;
        Ok(Session {
            model: model.clone(),
            binding: vec![0; model.graph().inputs.len()],
            faults,
            plan,
            kernels,
            options: SessionOptions { threads, ..options },
            arena,
            arena_start,
            scratch,
            #[cfg(feature = "std")]
            pool,
            #[cfg(feature = "std")]
            hooks: Default::default(),
            #[cfg(feature = "cuda")]
            gpu,
        })
    }

    /// The model this session runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The options it was created with (`threads` resolved).
    pub fn options(&self) -> &SessionOptions {
        &self.options
    }

    /// The kernel table in use.
    pub fn kernels(&self) -> &'static Kernels {
        self.kernels
    }

    /// Bytes of activation memory (arena + scratch) this session holds.
    pub fn memory_bytes(&self) -> usize {
        (self.arena.len() + self.scratch.len()) * 4
    }

    /// One line per planned step: what runs, on which node, reading and writing where.
    /// Shows fusions (`linear+relu`), elided concatenations (no step) and arena sizes.
    pub fn describe(&self) -> Vec<alloc::string::String> {
        let g = self.model.graph();
        let mut lines = Vec::with_capacity(self.plan.steps.len() + 1);
        lines.push(alloc::format!(
            "{} steps, {} buffers, arena {} KiB, scratch {} KiB per thread, kernels {}",
            self.plan.steps.len(),
            self.plan.buffers.len(),
            self.arena.len() * 4 / 1024,
            self.plan.scratch_len * 4 / 1024,
            self.kernels.level
        ));
        for step in &self.plan.steps {
            lines.push(step.describe(g));
        }
        lines
    }

    /// Runs one batch. Inputs are matched to graph inputs by name; the outputs borrow the
    /// session until dropped. Under [`NanPolicy::Reject`] rows whose outputs are NaN or
    /// ±Inf are listed by [`Outputs::row_faults`]: the run succeeds so the other rows can
    /// be served (use [`Outputs::check`] to treat the batch as one answer).
    pub fn run(&mut self, inputs: &[Input<'_>]) -> Result<Outputs<'_>> {
        let rows = self.bind(inputs)?;
        #[cfg(feature = "cuda")]
        if let Some(gpu) = self.gpu.as_mut() {
            gpu.run(&self.model, &self.plan, inputs, &self.binding, rows, None, &mut self.arena[self.arena_start..])?;
            self.model.check_file()?;
            return Ok(self.outputs(rows, None));
        }
        // SAFETY: `bind` validated the inputs for this batch.
        unsafe { self.walk(inputs, rows, None, self.plan.steps.len())? };
        // The model's file changed on disk since open (README, "Files under a live
        // model"): outputs may mix versions or read zeros; discard them. One fstat.
        self.model.check_file()?;
        Ok(self.outputs(rows, None))
    }

    /// Runs one batch where each row uses its own adapter set (base only, one adapter,
    /// or a scaled stack) from `adapters`. Rows that share a set are processed together;
    /// every row's result equals running its set alone. Kinds that learn from labels
    /// issue per-row tickets, read from [`Outputs::tickets`]. Allocation-free once the
    /// session has seen adapters of this size (hook buffers only grow).
    #[cfg(feature = "std")]
    pub fn run_with<'s>(
        &'s mut self,
        inputs: &[Input<'_>],
        adapters: &'s crate::adapters::RowAdapters,
    ) -> Result<Outputs<'s>> {
        use super::adapt::PassKind;
        let rows = self.bind(inputs)?;
        adapters.check(&self.model, rows)?;
        #[cfg(feature = "cuda")]
        if let Some(gpu) = self.gpu.as_mut() {
            // Kinds that issue tickets never run on the device, so there are none to expose.
            let host = &mut self.arena[self.arena_start..];
            gpu.run(&self.model, &self.plan, inputs, &self.binding, rows, Some(adapters), host)?;
            self.model.check_file()?;
            return Ok(self.outputs(rows, None));
        }
        let kernels = crate::adapters::host_kernels(self.kernels.level);
        self.hooks.prepare(self.model.graph(), &self.plan, adapters, kernels, rows, self.options.threads)?;
        if let Some(end) = self.hooks.prefix_steps() {
            // SAFETY: `bind` validated the inputs; the hook buffers were prepared for
            // this run and are used by nothing else.
            unsafe { self.walk(inputs, rows, Some((adapters, PassKind::Prefix)), end)? };
        }
        // SAFETY: as above.
        unsafe { self.walk(inputs, rows, Some((adapters, PassKind::Main)), self.plan.steps.len())? };
        // The model's file changed on disk since open (README, "Files under a live
        // model"): outputs may mix versions or read zeros; discard them. One fstat.
        self.model.check_file()?;
        Ok(self.outputs(rows, Some(adapters)))
    }

    fn outputs<'s>(&'s mut self, rows: usize, adapters: Option<super::OutputAdapters<'s>>) -> Outputs<'s> {
        self.check_outputs(rows);
        Outputs { session: self, rows, adapters }
    }

    /// Records the rows whose outputs hold NaN or ±Inf (under [`NanPolicy::Reject`], whose
    /// inputs were all finite: an overflow inside the model or an adapter). Rows are
    /// screened with a branch-free exponent test; only a flagged row is searched.
    fn check_outputs(&mut self, rows: usize) {
        self.faults.clear();
        if self.options.nan_policy != NanPolicy::Reject {
            return;
        }
        const EXPONENT: u32 = 0x7f80_0000;
        let base = &self.arena[self.arena_start..];
        for row in 0..rows {
            for (output, slot) in self.plan.outputs.iter().enumerate() {
                let buf = &self.plan.buffers[slot.place.buffer];
                let start = buf.offset + row * buf.width + slot.place.col;
                let Some(values) = base.get(start..start + slot.place.width) else { continue };
                if !values.iter().fold(false, |acc, v| acc | (v.to_bits() & EXPONENT == EXPONENT)) {
                    continue;
                }
                if let Some(col) = values.iter().position(|v| !v.is_finite())
                    && self.faults.len() < self.faults.capacity()
                {
                    self.faults.push(RowFault { row, output, col, value: values[col] });
                    break;
                }
            }
        }
    }

    /// Binds and validates inputs; returns the batch size.
    fn bind(&mut self, inputs: &[Input<'_>]) -> Result<usize> {
        let rows = input::bind(self.model.graph(), inputs, self.options.nan_policy, &mut self.binding)?;
        if rows > self.options.max_batch {
            return Err(Error::BatchTooLarge { rows, max_batch: self.options.max_batch });
        }
        self.check_ids(inputs, rows)?;
        Ok(rows)
    }

    /// Executes steps `0..end` of the plan on bound inputs, with the hooks of every node
    /// complete by then when adapters are given.
    ///
    /// # Safety
    /// `inputs` must have passed [`Session::bind`] for `rows` rows, and with adapters the
    /// hook buffers must have been prepared for this run.
    unsafe fn walk(
        &mut self,
        inputs: &[Input<'_>],
        rows: usize,
        adapters: Option<super::RunAdapters<'_>>,
        end: usize,
    ) -> Result<()> {
        #[cfg(feature = "std")]
        let kernels = crate::adapters::host_kernels(self.kernels.level);
        let hooked = adapters.is_some();
        let exec = Exec {
            model: &self.model,
            kernels: self.kernels,
            q8_math: self.options.q8_math,
            buffers: &self.plan.buffers,
            // SAFETY: arena_start < 16 and the arena has 16 floats of slack.
            base: unsafe { self.arena.as_mut_ptr().add(self.arena_start) },
            scratch: self.scratch.as_mut_ptr(),
            scratch_len: self.plan.scratch_len.max(1),
            inputs,
            binding: &self.binding,
            rows,
            #[cfg(feature = "std")]
            pool: self.pool.as_ref(),
            #[cfg(feature = "std")]
            adapters: adapters.map(|(rows, kind)| self.hooks.pass(rows, kernels, kind)),
        };
        // Hooks at every node complete after `done` steps (the plan's one schedule).
        let fire = |done: usize| -> Result<()> {
            #[cfg(feature = "std")]
            for &node in self.plan.hooks.after(done) {
                // SAFETY: the node's value is complete and no step is running.
                unsafe { exec.slot_hooks(node, Some(self.plan.node_place[node]))? };
            }
            #[cfg(not(feature = "std"))]
            let _ = done;
            Ok(())
        };
        if hooked {
            #[cfg(feature = "std")]
            {
                let nodes = self.model.graph().nodes.len();
                for k in 0..self.model.graph().inputs.len() {
                    // SAFETY: inputs were bound; taps only read them.
                    unsafe { exec.slot_hooks(nodes + k, None)? };
                }
            }
            fire(0)?;
        }
        for (s, step) in self.plan.steps[..end.min(self.plan.steps.len())].iter().enumerate() {
            // SAFETY: the plan was checked by `Plan::check_disjoint` (no step writes what it
            // reads, live buffers do not overlap), places are within the arena sized for
            // max_batch >= rows, and inputs were validated by `bind` and `check_ids`.
            unsafe { exec.step(step)? };
            if hooked {
                fire(s + 1)?;
            }
        }
        Ok(())
    }

    /// Checks every id against its table and every offsets array against its indices
    /// before anything is computed.
    fn check_ids(&self, inputs: &[Input<'_>], rows: usize) -> Result<()> {
        let g = self.model.graph();
        for step in &self.plan.steps {
            let (table, input, data) = match step {
                Step::Bag { table, ids, .. } => match *ids {
                    Ids::Padded { input } => (*table, input, input::ids(inputs, &self.binding, input)),
                    Ids::Bags { indices, offsets } => {
                        let idx = input::ids(inputs, &self.binding, indices);
                        exec::check_offsets(
                            &g.inputs[offsets].name,
                            input::ids(inputs, &self.binding, offsets),
                            idx.len(),
                            rows,
                        )?;
                        (*table, indices, idx)
                    }
                    // Ids computed by the graph are checked inside the step.
                    Ids::Value { .. } => continue,
                },
                // A lookup straight from a graph input is checked before anything runs too.
                Step::Tensor { op, ins, .. } => match (&**op, ins.first()) {
                    (super::tensor::TensorOp::Embedding { table, .. }, Some(Src::Input(k))) => {
                        (*table, *k, input::ids(inputs, &self.binding, *k))
                    }
                    _ => continue,
                },
                _ => continue,
            };
            let vocab = g.weights[table].rows;
            if let Some(position) = data.iter().position(|&id| id < 0 || id as u64 >= vocab as u64) {
                return Err(Error::IdOutOfRange {
                    input: g.inputs[input].name.clone(),
                    position,
                    id: data[position],
                    table: g.weights[table].name.clone(),
                    rows: vocab,
                });
            }
        }
        Ok(())
    }
}

/// Refuses `max_batch` when the activations of `g` could not even be addressed: node and
/// input widths come from the graph JSON (a dense input's width is backed by no tensor),
/// and the planner multiplies them by `max_batch` unchecked. The bound is the planner's
/// worst case: every node, and every output that copies an input, in its own buffer.
fn check_activation_size(g: &Graph, max_batch: usize) -> Result<()> {
    // Each value may get its own 64-byte-aligned buffer: 16 floats of slack per value.
    let slack = (g.inputs.len() + g.nodes.len()) * 16;
    let floats = g.row_floats().and_then(|f| f.checked_mul(max_batch)?.checked_add(slack));
    match floats {
        Some(n) if n <= isize::MAX as usize / 4 => Ok(()),
        _ => Err(Error::InvalidOption {
            detail: alloc::format!("the model's activations for max_batch {max_batch} exceed the address space"),
        }),
    }
}

/// The most threads one session runs (`SessionOptions::threads`); more is refused with
/// [`Error::InvalidOption`] rather than attempted (each worker costs a stack and a
/// scratch block, and no CPU graft targets has this many cores).
pub const MAX_THREADS: usize = 1024;

/// `len` zeroed floats, or [`Error::OutOfMemory`] naming `what` (sizes come from the
/// model file and the options, so an absurd one must not abort the process).
pub(crate) fn zeroed(len: usize, what: impl FnOnce() -> alloc::string::String) -> Result<Vec<f32>> {
    let mut v = Vec::new();
    if len > isize::MAX as usize / 4 || v.try_reserve_exact(len).is_err() {
        return Err(Error::OutOfMemory { what: what(), bytes: len as u128 * 4 });
    }
    v.resize(len, 0.0f32);
    Ok(v)
}

fn resolve_threads(threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    #[cfg(feature = "std")]
    {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
    #[cfg(not(feature = "std"))]
    {
        1
    }
}

/// A row of a run whose outputs hold NaN or ±Inf although its inputs were finite (the
/// model or an adapter overflowed). The other rows of the batch are valid; answer this
/// one with [`Outputs::row_error`]. Checked under [`NanPolicy::Reject`] (the default);
/// [`NanPolicy::Propagate`] turns the check off.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RowFault {
    /// The row of the batch.
    pub row: usize,
    /// The index of the first output of the row that is not finite (graph order).
    pub output: usize,
    /// Its column.
    pub col: usize,
    /// The value found there.
    pub value: f32,
}

/// The outputs of one run, borrowed from the session's arena.
#[derive(Debug)]
pub struct Outputs<'s> {
    session: &'s Session,
    rows: usize,
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    adapters: Option<super::OutputAdapters<'s>>,
}

impl<'s> Outputs<'s> {
    /// Rows in this batch.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of outputs.
    pub fn len(&self) -> usize {
        self.session.plan.outputs.len()
    }

    /// Whether there are no outputs (never, for a valid graph).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Output `i` as `(name, rows × width view)`.
    pub fn get_index(&self, i: usize) -> Option<(&'s str, MatRef<'s>)> {
        let slot = self.session.plan.outputs.get(i)?;
        let buf = &self.session.plan.buffers[slot.place.buffer];
        let start = self.session.arena_start + buf.offset + slot.place.col;
        let data = &self.session.arena[start..start + self.rows * buf.width];
        Some((slot.name.as_str(), MatRef::new(data, self.rows, slot.place.width, buf.width)))
    }

    /// The output called `name`, as `rows × width` row-major values.
    pub fn get(&self, name: &str) -> Option<&'s [f32]> {
        let i = self.session.plan.outputs.iter().position(|o| o.name == name)?;
        self.get_index(i).and_then(|(_, v)| v.as_slice())
    }

    /// Iterates `(name, view)` over all outputs in graph order.
    pub fn iter(&self) -> impl Iterator<Item = (&'s str, MatRef<'s>)> + '_ {
        (0..self.len()).filter_map(|i| self.get_index(i))
    }

    /// The rows whose outputs hold NaN or ±Inf, in row order, one entry per row (empty
    /// under [`NanPolicy::Propagate`]). A serving loop answers these rows with
    /// [`Outputs::row_error`] and the others with their values.
    pub fn row_faults(&self) -> &'s [RowFault] {
        &self.session.faults
    }

    /// The typed error of `row` ([`Error::NonFiniteOutput`]) if its outputs are not finite.
    pub fn row_error(&self, row: usize) -> Option<Error> {
        let faults = &self.session.faults;
        let i = faults.binary_search_by_key(&row, |f| f.row).ok()?;
        Some(self.fault_error(&faults[i]))
    }

    /// `Ok` when every row is finite, else the first faulty row's error — for callers that
    /// treat a batch as one answer.
    pub fn check(&self) -> Result<()> {
        match self.session.faults.first() {
            Some(f) => Err(self.fault_error(f)),
            None => Ok(()),
        }
    }

    fn fault_error(&self, f: &RowFault) -> Error {
        let output = self.session.plan.outputs.get(f.output).map(|o| o.name.clone()).unwrap_or_default();
        Error::NonFiniteOutput { output, row: f.row, col: f.col, value: f.value }
    }

    /// The feedback tickets adapters issued in this run (rows served by an error memory),
    /// in group order. Pass each row's label to [`Ticket::feedback`](crate::adapters::Ticket::feedback)
    /// once it is known.
    #[cfg(feature = "std")]
    pub fn tickets(&self) -> impl Iterator<Item = crate::adapters::Ticket<'s>> + 's {
        let (session, rows) = (self.session, self.rows);
        self.adapters.into_iter().flat_map(move |a| session.hooks.tickets(a, rows))
    }
}
