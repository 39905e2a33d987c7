//! Executes plan steps over the arena.
//!
//! Each step turns its [`Place`]s into strided views of the arena and calls one kernel
//! family. Large linears and embedding bags are split across the session's threads by
//! rows or by output columns (never along a reduction, so results do not depend on the
//! split); everything else runs on the calling thread.

use core::ops::Range;

use super::input::{self, Input};
use super::plan::{BinaryOp, Buffer, Ids, Operand, Place, Src, Step};
use super::tensor::RowSrc;
use crate::error::{Error, Result};
use crate::graph::{Activation, BagMode};
use crate::kernels::{Kernels, WeightMatrix};
use crate::model::Model;
use crate::view::{MatMut, MatRef};

/// Multiply-adds below which a linear runs on one thread.
const PAR_MIN_MACS: usize = 1 << 17;
/// Rows below which embedding bags run on one thread.
const PAR_MIN_BAG_ROWS: usize = 32;
/// Output elements (rows × row width) below which a tensor op runs on one thread.
#[cfg(feature = "std")]
const PAR_MIN_TENSOR_ELEMENTS: usize = 1 << 13;
/// How many table rows (ids) the executor keeps in flight with software prefetch while
/// it sums embedding bags: whole bags are prefetched ahead until this many ids are
/// pending, so the distance adapts to the bag size. On the demo's tables (26 × 100 000 ×
/// 64 q8, 2 ids per bag, fresh uniform ids, batch 256) one interleaved run on a shared
/// 2-core AMD EPYC VM gave, in ids ahead: 8 → 81 ns per id, 16 → 62, 24 → 49, 32 → 47,
/// 48 → 52 (none: 175); later runs on the loaded machine could not separate 8 from 48.
const PREFETCH_IDS: usize = 32;

/// A raw pointer that may cross threads; every use documents why it is exclusive.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub(super) *mut f32);
// SAFETY: SendPtr is only dereferenced into disjoint blocks by tasks of one `Pool::run`.
unsafe impl Send for SendPtr {}
// SAFETY: as above.
unsafe impl Sync for SendPtr {}

/// An executor shared by the tasks of one pool job.
#[cfg(feature = "std")]
struct SyncExec<'e, 'a, 'i>(&'e Exec<'a, 'i>);
// SAFETY: the tasks of a tensor step only read through the executor (model, inputs,
// arena places of the step's inputs) and write disjoint row blocks of the step's output
// and their own scratch blocks; the adapter pass is not touched.
#[cfg(feature = "std")]
unsafe impl Sync for SyncExec<'_, '_, '_> {}

/// Everything one `run` needs to execute steps.
pub(crate) struct Exec<'a, 'i> {
    pub model: &'a Model,
    pub kernels: &'static Kernels,
    /// How q8 linears multiply ([`Kernels::linear_for`]).
    pub q8_math: crate::kernels::Q8Math,
    pub buffers: &'a [Buffer],
    pub base: *mut f32,
    pub scratch: *mut f32,
    pub scratch_len: usize,
    pub inputs: &'a [Input<'i>],
    pub binding: &'a [usize],
    pub rows: usize,
    #[cfg(feature = "std")]
    pub pool: Option<&'a super::pool::Pool>,
    /// Adapters of this run, if any.
    #[cfg(feature = "std")]
    pub adapters: Option<super::adapt::AdapterPass<'a>>,
}

impl Exec<'_, '_> {
    pub(super) fn threads(&self) -> usize {
        #[cfg(feature = "std")]
        if let Some(p) = self.pool {
            return p.threads();
        }
        1
    }

    /// Runs `f(0..tasks)`, on the pool if there is one.
    pub(super) fn parallel(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        #[cfg(feature = "std")]
        if let Some(p) = self.pool {
            p.run(tasks, f);
            return;
        }
        (0..tasks).for_each(f);
    }

    /// A read view of a dense value.
    ///
    /// # Safety
    /// `Src::Arena` places must lie in the arena and not be written while the view lives.
    unsafe fn src(&self, s: Src) -> MatRef<'_> {
        match s {
            Src::Input(k) => {
                let data = input::dense(self.inputs, self.binding, k);
                MatRef::dense(data, data.len() / self.rows)
            }
            Src::Arena(p) => {
                let b = &self.buffers[p.buffer];
                // SAFETY: the caller guarantees the place is inside the arena and unaliased
                // by writers for the view's life.
                unsafe { MatRef::from_raw_parts(self.base.add(b.offset + p.col), self.rows, p.width, b.width) }
            }
            // The planner copies constants into the arena before fixed-function steps;
            // this view (stride 0: every row the same) is for completeness.
            Src::Const(k) => match self.model.constant_f32(k) {
                // SAFETY: stride 0 reads the constant's `len` floats for every row.
                Ok(c) => unsafe { MatRef::from_raw_parts(c.as_ptr(), self.rows, c.len(), 0) },
                Err(_) => MatRef::dense(&[], 1),
            },
        }
    }

    /// A write view of an arena place.
    ///
    /// # Safety
    /// The place must lie in the arena and not be accessed through any other view while
    /// this one lives.
    unsafe fn dst(&self, p: Place) -> MatMut<'_> {
        let b = &self.buffers[p.buffer];
        // SAFETY: forwarded from the caller.
        unsafe { MatMut::from_raw_parts(self.base.add(b.offset + p.col), self.rows, p.width, b.width) }
    }

    /// Executes one step.
    ///
    /// # Safety
    /// The step must come from a plan that passed `Plan::check_disjoint` for an arena of
    /// at least `rows` rows, and the inputs must have passed `bind` and the id checks.
    pub unsafe fn step(&self, step: &Step) -> Result<()> {
        // SAFETY: for every `src`/`dst` below, the plan guarantees each step's output
        // place is disjoint from its input places and inside the arena.
        unsafe {
            match step {
                Step::Linear { node, x, weight, bias, act, tokens, y } => {
                    let w = self.model.weight(*weight)?;
                    let bias = bias.map(|b| self.model.vector(b)).transpose()?;
                    #[cfg(feature = "std")]
                    if let Some(pass) = self.adapters.as_ref().filter(|p| p.rows.touches(*node)) {
                        // Hooks see the pre-activation output, so the fused activation
                        // waits until they have run.
                        use graft_plugin_abi::HookKind;
                        self.linear_tokens(*x, &w, bias, None, *y, *tokens);
                        // Several vectors per row: the delta sees each token's `[rows, in]` /
                        // `[rows, out]` column block in turn, which is the `[rows·t, …]` view
                        // with row groups expanded by t (deltas are row-wise).
                        let (i, o) = (w.cols, w.rows);
                        for t in 0..(*tokens).max(1) {
                            let xt =
                                if *tokens > 1 { self.src(*x).cols_range(t * i..(t + 1) * i) } else { self.src(*x) };
                            let yt =
                                if *tokens > 1 { Place { buffer: y.buffer, col: y.col + t * o, width: o } } else { *y };
                            self.hooks(pass, HookKind::LinearDelta, *node, Some(xt), Some(yt), bias)?;
                        }
                        self.hooks(pass, HookKind::Tap, *node, Some(self.src(Src::Arena(*y))), None, None)?;
                        self.hooks(pass, HookKind::Post, *node, None, Some(*y), None)?;
                        if let Some((act, _)) = act {
                            let ew = self.kernels.elementwise;
                            self.dst(*y).for_each_row(|_, row| ew.activate(*act, row));
                        }
                        return Ok(());
                    }
                    #[cfg(not(feature = "std"))]
                    let _ = node;
                    self.linear_tokens(*x, &w, bias, act.map(|a| a.0), *y, *tokens);
                }
                Step::Cross { x0, xl, weight, bias, tokens, y, .. } => {
                    let w = self.model.weight(*weight)?;
                    let bias = bias.map(|b| self.model.vector(b)).transpose()?;
                    self.linear_tokens(*xl, &w, bias, None, *y, *tokens);
                    let (x0, xl) = (self.src(*x0), self.src(*xl));
                    let mut out = self.dst(*y);
                    for r in 0..self.rows {
                        let (a, l, y) = (x0.row(r), xl.row(r), out.row_mut(r));
                        for d in 0..y.len() {
                            y[d] = a[d] * y[d] + l[d];
                        }
                    }
                }
                Step::Bag { table, ids, mode, y, .. } => {
                    let w = self.model.weight(*table)?;
                    let value = match ids {
                        Ids::Value { src, value } => {
                            let rs = self.row_src(*src)?;
                            // Ids computed by the graph were not seen by `check_ids`.
                            for r in 0..self.rows {
                                let row = rs.i64(r);
                                if let Some(j) = row.iter().position(|&id| id < 0 || id as u64 >= w.rows as u64) {
                                    let g = self.model.graph();
                                    return Err(Error::IdOutOfRange {
                                        input: g.value_name(*value).into(),
                                        position: r * row.len() + j,
                                        id: row[j],
                                        table: g.weights[*table].name.clone(),
                                        rows: w.rows,
                                    });
                                }
                            }
                            Some(rs)
                        }
                        _ => None,
                    };
                    self.bags(&w, *ids, value, *mode, self.dst(*y));
                }
                Step::Tensor { node, op, ins, y } => self.tensor_step(*node, op, ins, *y)?,
                Step::Activation { act, x, y, .. } => {
                    let (x, mut y) = (self.src(*x), self.dst(*y));
                    for r in 0..self.rows {
                        let out = y.row_mut(r);
                        out.copy_from_slice(x.row(r));
                        self.kernels.elementwise.activate(*act, out);
                    }
                }
                Step::Binary { op, a, b, y, .. } => {
                    let (a, mut y) = (self.src(*a), self.dst(*y));
                    let tensor = match b {
                        Operand::Tensor(t) => Some(self.model.vector(*t)?),
                        Operand::Value(_) => None,
                    };
                    let b_view = match b {
                        Operand::Value(s) => Some(self.src(*s)),
                        Operand::Tensor(_) => None,
                    };
                    let ew = self.kernels.elementwise;
                    for r in 0..self.rows {
                        let rhs = match (tensor, b_view) {
                            (Some(t), _) => t,
                            (None, Some(v)) => v.row(r),
                            (None, None) => return Err(internal("binary operand")),
                        };
                        match op {
                            BinaryOp::Add => ew.add(a.row(r), rhs, y.row_mut(r)),
                            BinaryOp::Mul => ew.mul(a.row(r), rhs, y.row_mut(r)),
                        }
                    }
                }
                Step::Copy { src, y, .. } => {
                    let (x, mut y) = (self.src(*src), self.dst(*y));
                    for r in 0..self.rows {
                        y.row_mut(r).copy_from_slice(x.row(r));
                    }
                }
                Step::LayerNorm { x, gamma, beta, epsilon, y, .. } => {
                    let gamma = self.model.vector(*gamma)?;
                    let beta = beta.map(|b| self.model.vector(b)).transpose()?;
                    let (x, mut y) = (self.src(*x), self.dst(*y));
                    let d = gamma.len().max(1);
                    for r in 0..self.rows {
                        let (xr, yr) = (x.row(r), y.row_mut(r));
                        // Normalize each vector of the last axis.
                        for (xc, yc) in xr.chunks(d).zip(yr.chunks_mut(d)) {
                            self.kernels.norm.layer_norm(xc, gamma, beta, *epsilon, yc);
                        }
                    }
                }
                Step::DotInteraction { inputs, self_interaction, y, .. } => {
                    let mut out = self.dst(*y);
                    let extra = usize::from(*self_interaction);
                    for r in 0..self.rows {
                        let row = out.row_mut(r);
                        let first = self.src(inputs[0]).row(r);
                        row[..first.len()].copy_from_slice(first);
                        let mut k = first.len();
                        for (i, &a) in inputs.iter().enumerate() {
                            let vi = self.src(a).row(r);
                            for &b in &inputs[..i + extra] {
                                row[k] = self.kernels.dot.dot(vi, self.src(b).row(r));
                                k += 1;
                            }
                        }
                    }
                }
                Step::Fm { inputs, y, .. } => {
                    let mut out = self.dst(*y);
                    let dim = self.src(inputs[0]).cols();
                    for r in 0..self.rows {
                        let mut acc = 0.0f32;
                        for d in 0..dim {
                            let (mut sum, mut squares) = (0.0f32, 0.0f32);
                            for s in inputs {
                                let v = self.src(*s).row(r)[d];
                                sum += v;
                                squares += v * v;
                            }
                            acc += sum * sum - squares;
                        }
                        out.row_mut(r)[0] = 0.5 * acc;
                    }
                }
            }
        }
        Ok(())
    }

    /// A tensor op, its rows split across the pool when the batch is big enough. Every
    /// tensor op is the same op on each row, so row blocks are independent and the result
    /// does not depend on the split; a failure reports the lowest failing block's error.
    ///
    /// # Safety
    /// As for [`Exec::step`].
    unsafe fn tensor_step(&self, node: usize, op: &super::tensor::TensorOp, ins: &[Src], y: Place) -> Result<()> {
        let (rows, threads) = (self.rows, self.threads());
        #[cfg(feature = "std")]
        if threads > 1 && rows >= 2 * threads && rows.saturating_mul(y.width) >= PAR_MIN_TENSOR_ELEMENTS {
            use std::sync::{Mutex, PoisonError};
            let failure: Mutex<Option<(usize, Error)>> = Mutex::new(None);
            let this = SyncExec(self);
            let task = |t: usize| {
                let this = &this;
                let part = chunk(rows, threads, t, 1);
                if part.is_empty() {
                    return;
                }
                let start = part.start;
                // SAFETY: task t alone writes rows `part` of `y` and uses scratch block t;
                // everything else is only read during the job.
                if let Err(e) = unsafe { this.0.tensor(node, op, ins, y, part, t) } {
                    let mut first = failure.lock().unwrap_or_else(PoisonError::into_inner);
                    if first.as_ref().is_none_or(|(at, _)| start < *at) {
                        *first = Some((start, e));
                    }
                }
            };
            self.parallel(threads, &task);
            return match failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
                Some((_, e)) => Err(e),
                None => Ok(()),
            };
        }
        let _ = threads;
        // SAFETY: forwarded from the caller; the calling thread owns scratch block 0.
        unsafe { self.tensor(node, op, ins, y, 0..rows, 0) }
    }

    /// Runs the tap and post hooks at a completed non-linear node (hooks at a linear run
    /// inside its step), or the taps at a dense input (`slot` past the last node).
    ///
    /// # Safety
    /// The node's value must be complete and not accessed through any other view; the
    /// pass must have been prepared for this run.
    #[cfg(feature = "std")]
    pub unsafe fn slot_hooks(&self, slot: usize, place: Option<Place>) -> Result<()> {
        use graft_plugin_abi::HookKind;
        let Some(pass) = self.adapters.as_ref().filter(|p| p.rows.touches(slot)) else { return Ok(()) };
        // SAFETY: forwarded from the caller: the value is complete and unaliased.
        unsafe {
            match place {
                Some(place) => {
                    self.hooks(pass, HookKind::Tap, slot, Some(self.src(Src::Arena(place))), None, None)?;
                    self.hooks(pass, HookKind::Post, slot, None, Some(place), None)
                }
                None => {
                    let input = slot - self.model.graph().nodes.len();
                    self.hooks(pass, HookKind::Tap, slot, Some(self.src(Src::Input(input))), None, None)
                }
            }
        }
    }

    /// A linear over the last axis of rows holding `tokens` vectors each: one
    /// `[rows·tokens, in]` product when both sides are contiguous, else one per token.
    ///
    /// # Safety
    /// As for [`Exec::step`]: `x` and `y` are disjoint places of the plan.
    unsafe fn linear_tokens(
        &self,
        x: Src,
        w: &WeightMatrix<'_>,
        bias: Option<&[f32]>,
        act: Option<Activation>,
        y: Place,
        tokens: usize,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            let (xv, mut yv) = (self.src(x), self.dst(y));
            if tokens <= 1 {
                self.linear(xv, w, bias, act, yv);
                return;
            }
            let (i, o) = (w.cols, w.rows);
            let rows = self.rows;
            if rows <= 1 || xv.stride() == xv.cols() && yv.stride() == yv.cols() {
                let xm = MatRef::from_raw_parts(xv.as_ptr(), rows * tokens, i, i);
                let ym = MatMut::from_raw_parts(yv.as_mut_ptr(), rows * tokens, o, o);
                self.linear(xm, w, bias, act, ym);
            } else {
                let (xs, ys) = (xv.stride(), yv.stride());
                for t in 0..tokens {
                    let xm = MatRef::from_raw_parts(xv.as_ptr().add(t * i), rows, i, xs);
                    let ym = MatMut::from_raw_parts(yv.as_mut_ptr().add(t * o), rows, o, ys);
                    self.linear(xm, w, bias, act, ym);
                }
            }
        }
    }

    /// A linear, split across threads when it is big enough.
    fn linear(
        &self,
        x: MatRef<'_>,
        w: &WeightMatrix<'_>,
        bias: Option<&[f32]>,
        act: Option<Activation>,
        mut y: MatMut<'_>,
    ) {
        let kernel = self.kernels.linear_for(w, self.q8_math);
        let threads = self.threads();
        let macs = x.rows() * w.rows * w.cols;
        if threads == 1 || macs < PAR_MIN_MACS {
            // SAFETY: the calling thread owns scratch block 0 while no pool job runs.
            let scratch = unsafe { core::slice::from_raw_parts_mut(self.scratch, self.scratch_len) };
            kernel.linear(x, w, bias, act, y, scratch);
            return;
        }
        let by_rows = x.rows() >= threads * 8;
        let (ptr, rows, cols, stride) = (SendPtr(y.as_mut_ptr()), y.rows(), y.cols(), y.stride());
        let scratch = SendPtr(self.scratch);
        let scratch_len = self.scratch_len;
        let task = move |t: usize| {
            let (ptr, scratch) = (ptr, scratch);
            // SAFETY: task t is the only user of scratch block t during this job.
            let scratch = unsafe { core::slice::from_raw_parts_mut(scratch.0.add(t * scratch_len), scratch_len) };
            if by_rows {
                let r = chunk(rows, threads, t, 4);
                // SAFETY: tasks own disjoint row blocks of `y`.
                let y = unsafe { MatMut::from_raw_parts(ptr.0.add(r.start * stride), r.len(), cols, stride) };
                kernel.linear(x.rows_range(r), w, bias, act, y, scratch);
            } else {
                // Blocks of a multiple of 16 columns (64 bytes): where `y`'s rows are
                // line-aligned, two threads never store into one cache line.
                let o = chunk(w.rows, threads, t, 16);
                // SAFETY: tasks own disjoint column blocks of `y`.
                let y = unsafe { MatMut::from_raw_parts(ptr.0.add(o.start), rows, o.len(), stride) };
                kernel.linear(x, &w.rows_range(o.clone()), bias.map(|b| &b[o]), act, y, scratch);
            }
        };
        self.parallel(threads, &task);
    }

    /// Embedding bags for every row, split by rows across threads when worthwhile.
    fn bags(&self, table: &WeightMatrix<'_>, ids: Ids, value: Option<RowSrc>, mode: BagMode, mut y: MatMut<'_>) {
        let kernel = self.kernels.bag;
        let rows = self.rows;
        let (ptr, cols, stride) = (SendPtr(y.as_mut_ptr()), y.cols(), y.stride());
        let (inputs, binding) = (self.inputs, self.binding);
        let threads = if rows >= PAR_MIN_BAG_ROWS { self.threads() } else { 1 };
        let task = move |t: usize| {
            let ptr = ptr;
            let r = chunk(rows, threads, t, 1);
            // SAFETY: tasks own disjoint row blocks of `y`.
            let mut y = unsafe { MatMut::from_raw_parts(ptr.0.add(r.start * stride), r.len(), cols, stride) };
            let bag_of = |row: usize| -> &[i64] {
                match ids {
                    Ids::Padded { input } => {
                        let data = input::ids(inputs, binding, input);
                        let slots = data.len() / rows;
                        &data[row * slots..(row + 1) * slots]
                    }
                    Ids::Bags { indices, offsets } => {
                        let (idx, off) = (input::ids(inputs, binding, indices), input::ids(inputs, binding, offsets));
                        let start = off[row] as usize;
                        let end = if row + 1 < rows { off[row + 1] as usize } else { idx.len() };
                        &idx[start..end]
                    }
                    // SAFETY: the source is a checked i64 value of this step's plan and
                    // `row < rows`.
                    Ids::Value { .. } => value.map_or(&[][..], |v| unsafe { v.i64(row) }),
                }
            };
            // Random rows of a large table miss cache and TLB: keep about PREFETCH_IDS
            // rows of the next bags in flight while one is summed (the first bags too).
            // An empty bag counts as one, so the window always moves.
            let (mut next, mut in_flight) = (r.start, 0usize);
            for (i, row) in r.clone().enumerate() {
                while next < r.end && in_flight < PREFETCH_IDS {
                    let ahead = bag_of(next);
                    kernel.prefetch(table, ahead);
                    in_flight += ahead.len().max(1);
                    next += 1;
                }
                let ids = bag_of(row);
                kernel.bag(table, ids, mode, y.row_mut(i));
                in_flight = in_flight.saturating_sub(ids.len().max(1));
            }
        };
        if threads == 1 {
            task(0);
        } else {
            self.parallel(threads, &task);
        }
    }
}

/// The `t`-th of `parts` near-equal chunks of `0..n`, boundaries rounded to `multiple`.
pub(super) fn chunk(n: usize, parts: usize, t: usize, multiple: usize) -> Range<usize> {
    let per = n.div_ceil(parts).div_ceil(multiple) * multiple;
    let start = (t * per).min(n);
    start..((t + 1) * per).min(n)
}

/// Checks torch-style offsets: `offsets[0] == 0`, non-decreasing, within the indices.
pub(crate) fn check_offsets(name: &str, offsets: &[i64], n_indices: usize, rows: usize) -> Result<()> {
    let bad = |detail: alloc::string::String| Error::BadOffsets { input: name.into(), detail };
    if offsets.len() != rows {
        return Err(bad(alloc::format!("{} offsets for {rows} rows", offsets.len())));
    }
    if offsets.first() != Some(&0) {
        return Err(bad("the first offset must be 0".into()));
    }
    for (i, pair) in offsets.windows(2).enumerate() {
        if pair[1] < pair[0] {
            return Err(bad(alloc::format!("offset {} ({}) is below offset {i} ({})", i + 1, pair[1], pair[0])));
        }
    }
    if let Some(&last) = offsets.last()
        && last as u64 > n_indices as u64
    {
        return Err(bad(alloc::format!("last offset {last} is past the {n_indices} indices")));
    }
    Ok(())
}

fn internal(what: &str) -> Error {
    Error::InvalidOption { detail: alloc::format!("executor invariant violated: {what}") }
}

#[cfg(test)]
mod tests {
    use super::chunk;

    /// The opt-in huge-page hint reaches the mapped tables at or above the size given and
    /// nothing else (it is advice: no result can depend on it).
    #[cfg(all(feature = "std", target_os = "linux"))]
    #[test]
    #[allow(clippy::unwrap_used)]
    fn huge_page_hint_reaches_only_large_mapped_tables() {
        use crate::Model;
        use crate::builder::WeightFormats;
        let path = std::env::temp_dir().join(format!("graft-huge-hint-{}.graft", std::process::id()));
        crate::synthetic::tiny().write(&path, WeightFormats::default()).unwrap();
        let mapped = Model::open(&path).unwrap();
        assert_eq!(mapped.advise_huge_pages(usize::MAX), 0);
        assert_eq!(mapped.advise_huge_pages(0), 1); // the one table (10 × 4)
        let copied = Model::from_slice_copy(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(copied.advise_huge_pages(0), 0); // not a mapping
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn chunks_cover_exactly() {
        for n in 0..50 {
            for parts in 1..5 {
                let covered: usize = (0..parts).map(|t| chunk(n, parts, t, 4).len()).sum();
                assert_eq!(covered, n);
            }
        }
    }
}
