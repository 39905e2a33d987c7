//! The loaded error memory and its hooks: the key `tap`, the compensating `post`,
//! `feedback`, `save_state`, and inspection.
//!
//! Hot path (`tap`, `post`): no allocation, no lock on the memory. The tap hashes the
//! rows' keys with one GEMM through the host kernels (`x·Rᵀ` into scratch), reads the
//! estimate lock-free (see `sketch`), and leaves `[ê, b_0..b_{L−1}, h]` in the run state;
//! the post compensates and parks each row in the pending ring under a per-slot lock (see
//! `pending`). Cold path (`feedback`, `save_state`): one writer mutex serializes inserts
//! and snapshots; saving also holds a save mutex so two saves never share a temp file.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use abi_stable::std_types::{RResult, RSliceMut, RStr, RString, RVec};
use graft_plugin_abi::{
    Adapter, AdapterInfo, ErrorCode, HookKind, HostKernelsRef, MatViewMut, PluginError, Post, Tap, Target, TargetInfo,
    WeightView, guard,
};

use crate::KIND;
use crate::config::{Config, Units};
use crate::file::config_notes;
use crate::pending::Pending;
use crate::sketch::{KEY_LIMIT, Sketch, Writer};
use crate::state::{self, Identity, Layout};

/// Target index of the key tap.
pub const KEY_TARGET: u32 = 0;
/// Target index of the compensating post.
pub const COMPENSATE_TARGET: u32 = 1;

/// A resolved graph node.
#[derive(Debug, Clone)]
pub(crate) struct NodeRef {
    pub node: u32,
    pub name: String,
}

/// The writer mutex's contents: decay bookkeeping and the buffers an insert copies into.
#[derive(Debug)]
pub(crate) struct WriterState {
    pub writer: Writer,
    pub h: Vec<f32>,
    pub buckets: Vec<u32>,
}

/// Counters for [`ErrorMemory::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub tickets: AtomicU64,
    pub below_threshold: AtomicU64,
    pub feedback_errors: AtomicU64,
}

/// A snapshot of an error memory's activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Errors inserted into the memory (restored ones included).
    pub inserts: u64,
    /// Labels whose error was below `threshold` (answered, not inserted).
    pub below_threshold: u64,
    /// Tickets handed to rows.
    pub tickets_issued: u64,
    /// Recorded rows still awaiting a label (and not yet overwritten).
    pub pending: u64,
    /// `feedback` calls that failed (bad label, unknown/expired/answered ticket).
    pub feedback_errors: u64,
    /// Times the decay weight was renormalized.
    pub renormalizations: u64,
}

/// A loaded error memory. Shared by every run that uses it; implements the sabi [`Adapter`].
pub struct ErrorMemory {
    pub(crate) source: String,
    pub(crate) config: Config,
    /// Key width.
    pub(crate) d: usize,
    pub(crate) key: NodeRef,
    pub(crate) output: NodeRef,
    /// `R`, `[L·p, d]`.
    pub(crate) projections: Vec<f32>,
    pub(crate) sketch: Sketch,
    pub(crate) pending: Pending,
    pub(crate) writer: Mutex<WriterState>,
    pub(crate) save_lock: Mutex<()>,
    pub(crate) identity: Identity,
    pub(crate) counters: Counters,
    pub(crate) restored_from: Option<String>,
}

impl fmt::Debug for ErrorMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorMemory")
            .field("source", &self.source)
            .field("key", &self.key.name)
            .field("output", &self.output.name)
            .field("d", &self.d)
            .field("tables", &self.config.tables)
            .field("bits", &self.config.bits)
            .field("estimate", &self.config.estimate)
            .field("inserts", &self.sketch.inserts.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn bad_call(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::BAD_CALL, field, message)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded data stays usable after a panic elsewhere (counters and buffers; a
    // half-applied insert only skews one sample), so poisoning is not propagated.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

/// `logit(clamp(p, eps, 1 − eps))`, in f64.
fn logit(p: f64, eps: f64) -> f64 {
    let p = p.clamp(eps, 1.0 - eps);
    (p / (1.0 - p)).ln()
}

impl ErrorMemory {
    /// The configuration (defaults filled in).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The key width `d`.
    pub fn key_width(&self) -> usize {
        self.d
    }

    /// Floats of run state per row: `1 + L + d`.
    fn state_width(&self) -> usize {
        1 + self.config.tables as usize + self.d
    }

    /// The projection matrix `R`, `[L·p, d]` (row `l·p + t` is hyperplane `t` of table `l`).
    pub fn projections(&self) -> &[f32] {
        &self.projections
    }

    /// Activity counters (the pending count is a scan of the ring).
    pub fn stats(&self) -> Stats {
        Stats {
            inserts: self.sketch.inserts.load(Ordering::Relaxed),
            below_threshold: self.counters.below_threshold.load(Ordering::Relaxed),
            tickets_issued: self.counters.tickets.load(Ordering::Relaxed),
            pending: self.pending.outstanding(),
            feedback_errors: self.counters.feedback_errors.load(Ordering::Relaxed),
            renormalizations: lock(&self.writer).writer.renormalizations,
        }
    }

    /// The bucket of `h` in every table, computed here in f64 (the tap uses the host
    /// kernels, which can differ only for a projection within rounding of zero).
    pub fn buckets(&self, h: &[f32]) -> Result<Vec<u32>, PluginError> {
        if h.len() != self.d {
            return Err(bad_call("key", format!("{} values, the key node has width {}", h.len(), self.d)));
        }
        let bits = self.config.bits as usize;
        Ok(self
            .projections
            .chunks_exact(self.d * bits)
            .map(|table| {
                table.chunks_exact(self.d).enumerate().fold(0u32, |b, (t, r)| {
                    let dot: f64 = r.iter().zip(h).map(|(&a, &x)| f64::from(a) * f64::from(x)).sum();
                    b | (u32::from(dot >= 0.0) << t)
                })
            })
            .collect())
    }

    /// `ê(h)` as the tap would compute it (allocates; for tests and diagnostics).
    pub fn estimate(&self, h: &[f32]) -> Result<f64, PluginError> {
        let buckets: Vec<f32> = self.buckets(h)?.into_iter().map(|b| b as f32).collect();
        if h.iter().any(|x| !x.is_finite()) {
            return Ok(0.0);
        }
        let mut scratch = vec![0.0; self.sketch.scratch_floats()];
        Ok(self.sketch.estimate(h, &buckets, &mut scratch))
    }

    fn layout(&self) -> Layout {
        Layout {
            tables: self.sketch.tables,
            buckets: self.sketch.buckets,
            d: self.d,
            key_sums: self.config.estimate == crate::config::Estimate::TopK,
            exact: (self.config.estimate == crate::config::Estimate::Exact).then(|| self.sketch.exact_capacity()),
        }
    }

    /// Replaces the (empty) memory with the state saved at `path` (at load).
    pub(crate) fn restore(&mut self, path: &str) -> Result<(), PluginError> {
        let data = state::load(path, &self.layout(), &self.identity)?;
        let w = self.writer.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.sketch.restore(&mut w.writer, &data);
        self.restored_from = Some(path.to_owned());
        Ok(())
    }

    fn projection_view(&self) -> Result<WeightView<'_>, PluginError> {
        let rows = (self.config.tables * self.config.bits) as usize;
        WeightView::f32(&self.projections, rows, self.d)
            .ok_or_else(|| PluginError::new(ErrorCode::INTERNAL, "projections", "no longer [L·p, d]"))
    }

    fn tap_scratch(&self, rows: usize, kernels: HostKernelsRef) -> Option<usize> {
        let lp = (self.config.tables * self.config.bits) as usize;
        let kernel = (kernels.scratch_floats())(self.projection_view().ok()?, rows);
        rows.checked_mul(lp)?.checked_add(kernel)?.checked_add(self.sketch.scratch_floats())
    }

    fn tap_rows(&self, mut call: Tap<'_>) -> Result<(), PluginError> {
        let field = self.config.key_node.as_str();
        if call.target != KEY_TARGET {
            return Err(bad_call("target", format!("target {} has no tap (the key tap is target 0)", call.target)));
        }
        let rows = call.x.rows();
        if call.x.cols() != self.d {
            return Err(bad_call(field, format!("x has {} columns, the key width is {}", call.x.cols(), self.d)));
        }
        let width = self.state_width();
        if call.state.rows() != rows || call.state.cols() != width {
            let (r, c) = (call.state.rows(), call.state.cols());
            return Err(bad_call(field, format!("run state is {r}×{c}, expected {rows}×{width}")));
        }
        if rows == 0 {
            return Ok(());
        }
        let need = self.tap_scratch(rows, call.kernels).ok_or_else(|| bad_call(field, "scratch size overflows"))?;
        let scratch = call.scratch.as_mut_slice();
        if scratch.len() < need {
            return Err(bad_call(field, format!("scratch has {} floats, the call needs {need}", scratch.len())));
        }
        let (tables, bits) = (self.config.tables as usize, self.config.bits as usize);
        let lp = tables * bits;
        let (proj, rest) = scratch.split_at_mut(rows * lp);
        let (estimate_scratch, kernel_scratch) = rest.split_at_mut(self.sketch.scratch_floats());
        let y = MatViewMut::new(proj, rows, lp, lp)
            .ok_or_else(|| PluginError::new(ErrorCode::INTERNAL, field, "projection buffer view"))?;
        let status = (call.kernels.linear())(
            call.x,
            self.projection_view()?,
            1.0,
            false,
            y,
            RSliceMut::from_mut_slice(kernel_scratch),
        );
        if !status.is_ok() {
            return Err(PluginError::new(
                ErrorCode::KERNEL,
                field,
                format!("host kernel refused x·Rᵀ: status {}", status.0),
            ));
        }
        for (i, dots) in proj.chunks_exact(lp).enumerate() {
            let h = call.x.row(i);
            let state = call.state.row_mut(i);
            let (e_hat, rest) = state.split_at_mut(1);
            let (buckets, key) = rest.split_at_mut(tables);
            for (bucket, table) in buckets.iter_mut().zip(dots.chunks_exact(bits)) {
                let b = table.iter().enumerate().fold(0u32, |b, (t, &v)| b | (u32::from(v >= 0.0) << t));
                *bucket = b as f32; // < 2^20: exact
            }
            key.copy_from_slice(h);
            e_hat[0] = if h.iter().all(|x| x.is_finite()) {
                self.sketch.estimate(h, buckets, estimate_scratch) as f32
            } else {
                0.0 // a broken key neither reads nor (in post) writes the memory
            };
        }
        Ok(())
    }

    /// Whether run-state buckets are what a tap wrote (integers below 2^p).
    fn buckets_valid(&self, buckets: &[f32]) -> bool {
        let limit = self.sketch.buckets as f32;
        buckets.iter().all(|&b| b >= 0.0 && b < limit && b.fract() == 0.0)
    }

    /// The compensated output for node value `v` (base probability `p`) and shift `delta`.
    fn compensate(&self, v: f32, p: f64, delta: f64) -> f32 {
        let eps = self.config.logit_eps;
        match (self.config.space, self.config.output_is) {
            (Units::Prob, Units::Prob) => (p + delta).clamp(0.0, 1.0) as f32,
            (Units::Prob, Units::Logit) => logit((p + delta).clamp(0.0, 1.0), eps) as f32,
            (Units::Logit, Units::Prob) => sigmoid(logit(p, eps) + delta) as f32,
            // The node holds z itself: shift it exactly rather than through σ and back.
            (Units::Logit, Units::Logit) => (f64::from(v) + delta) as f32,
        }
    }

    fn post_rows(&self, mut call: Post<'_>) -> Result<(), PluginError> {
        let field = self.config.output_node.as_str();
        if call.target != COMPENSATE_TARGET {
            return Err(bad_call("target", format!("target {} has no post (the post is target 1)", call.target)));
        }
        let rows = call.y.rows();
        if call.y.cols() != 1 {
            return Err(bad_call(field, format!("y has {} columns, the compensated node has width 1", call.y.cols())));
        }
        let width = self.state_width();
        if call.state.rows() != rows || call.state.cols() != width {
            let (r, c) = (call.state.rows(), call.state.cols());
            return Err(bad_call(field, format!("run state is {r}×{c}, expected {rows}×{width}")));
        }
        if call.tickets.len() != rows {
            return Err(bad_call(field, format!("{} tickets for {rows} rows", call.tickets.len())));
        }
        if !call.scale.is_finite() {
            return Err(bad_call(field, format!("scale multiplier {} is not finite", call.scale)));
        }
        if rows == 0 {
            return Ok(());
        }
        let tables = self.config.tables as usize;
        // Validate every row first, so a refused call changes nothing.
        for i in 0..rows {
            if !self.buckets_valid(&call.state.row(i)[1..1 + tables]) {
                return Err(bad_call(
                    field,
                    format!("run state row {i} holds bucket indices the key tap never writes"),
                ));
            }
            let v = call.y.row(i)[0];
            if self.config.output_is == Units::Prob && v.is_finite() && !(0.0..=1.0).contains(&v) {
                return Err(bad_call(
                    field,
                    format!("row {i}: {v} is not a probability; set output_is = \"logit\" if the node holds logits"),
                ));
            }
        }
        let gain = self.config.lambda * f64::from(call.scale);
        let first = self.pending.reserve(rows);
        let tickets = call.tickets.as_mut_slice();
        let mut issued = 0u64;
        for (i, ticket) in tickets.iter_mut().enumerate() {
            *ticket = 0;
            let state = call.state.row(i);
            let (e_hat, buckets, h) = (state[0], &state[1..1 + tables], &state[1 + tables..]);
            let v = call.y.row(i)[0];
            if !v.is_finite() {
                continue; // the base output is broken: leave it, learn nothing from it
            }
            let p = match self.config.output_is {
                Units::Prob => f64::from(v),
                Units::Logit => sigmoid(f64::from(v)),
            };
            let delta = gain * f64::from(e_hat);
            if delta != 0.0 && delta.is_finite() {
                call.y.row_mut(i)[0] = self.compensate(v, p, delta);
            }
            if h.iter().all(|x| x.is_finite() && x.abs() <= KEY_LIMIT) {
                let t = first + i as u64;
                self.pending.record(t, h, buckets, p as f32);
                *ticket = t;
                issued += 1;
            }
        }
        self.counters.tickets.fetch_add(issued, Ordering::Relaxed);
        Ok(())
    }

    fn feedback_one(&self, ticket: u64, label: f32) -> Result<(), PluginError> {
        if !label.is_finite() || !(0.0..=1.0).contains(&label) {
            return Err(bad_call("label", format!("ticket {ticket}: label {label} is not a finite value in [0, 1]")));
        }
        let mut guard = lock(&self.writer);
        let w = &mut *guard;
        let y_hat = f64::from(self.pending.take(ticket, &mut w.h, &mut w.buckets)?);
        let y = f64::from(label);
        let e = match self.config.space {
            Units::Prob => y - y_hat,
            Units::Logit => logit(y, self.config.logit_eps) - logit(y_hat, self.config.logit_eps),
        };
        if e.abs() >= self.config.threshold {
            self.sketch.insert(&mut w.writer, &w.h, &w.buckets, e);
        } else {
            self.counters.below_threshold.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn save(&self, path: &str) -> Result<(), PluginError> {
        if path.is_empty() {
            return Err(bad_call("path", "empty state path"));
        }
        let _one_save = lock(&self.save_lock);
        let data = {
            let w = lock(&self.writer);
            self.sketch.snapshot(&w.writer)
        };
        state::save(path, &data, &self.layout(), &self.identity)
    }
}

impl Adapter for ErrorMemory {
    fn targets(&self) -> RVec<Target> {
        RVec::from(vec![
            Target::new(self.key.node, HookKind::Tap),
            Target::new(self.output.node, HookKind::Post).with(Target::READS_STATE),
        ])
    }

    fn info(&self) -> AdapterInfo {
        let c = &self.config;
        let target = |module: &str, node: &NodeRef, variant: &str, scale: f32, bytes: u64| TargetInfo {
            module: RString::from(module),
            node: RString::from(node.name.as_str()),
            rank: 0,
            scale,
            variant: RString::from(variant),
            bytes,
        };
        let projection_bytes = self.projections.len() as u64 * 4;
        let mut notes = config_notes(c);
        notes.push(format!("d={}", self.d));
        notes.push(format!("inserts={}", self.sketch.inserts.load(Ordering::Relaxed)));
        notes.push(format!("sketch_bytes={}", self.sketch.bytes()));
        notes.push(format!("pending_bytes={}", self.pending.bytes()));
        notes.push(format!("model_fingerprint={:016x}", self.identity.fingerprint));
        notes.push(format!("config_hash={:016x}", self.identity.config_hash));
        if let Some(p) = &self.restored_from {
            notes.push(format!("state=restored from {p}"));
        }
        AdapterInfo {
            kind: RString::from(crate::KIND),
            source: RString::from(self.source.as_str()),
            targets: RVec::from(vec![
                target(&c.key_node, &self.key, "key", 1.0, projection_bytes),
                target(&c.output_node, &self.output, "compensate", c.lambda as f32, self.sketch.bytes()),
            ]),
            mapped_bytes: 0,
            owned_bytes: self.sketch.bytes() + self.pending.bytes() + projection_bytes,
            notes: notes.into_iter().map(RString::from).collect(),
        }
    }

    fn scratch_floats(&self, target: u32, rows: usize, kernels: HostKernelsRef) -> usize {
        // The post needs none; an unknown target gets 0 here and BAD_CALL from the call; a
        // size that overflows gets usize::MAX, which no host can allocate.
        if target == KEY_TARGET { self.tap_scratch(rows, kernels).unwrap_or(usize::MAX) } else { 0 }
    }

    fn merge(&self, target: u32, _weight: MatViewMut<'_>, _bias: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(
            ErrorCode::UNSUPPORTED,
            "",
            format!("target {target}: an error memory learns online and cannot be merged into weights"),
        ))
    }

    fn state_floats(&self) -> usize {
        self.state_width()
    }

    fn tap(&self, call: Tap<'_>) -> RResult<(), PluginError> {
        guard(KIND, "tap", || self.tap_rows(call))
    }

    fn post(&self, call: Post<'_>) -> RResult<(), PluginError> {
        guard(KIND, "post", || self.post_rows(call))
    }

    fn feedback(&self, ticket: u64, label: f32) -> RResult<(), PluginError> {
        let r = guard(KIND, "feedback", || self.feedback_one(ticket, label));
        if r.is_err() {
            self.counters.feedback_errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn save_state(&self, path: RStr<'_>) -> RResult<(), PluginError> {
        guard(KIND, "save_state", || self.save(path.as_str()))
    }
}
