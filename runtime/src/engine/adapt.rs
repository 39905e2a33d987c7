//! Applying adapter hooks inside a run.
//!
//! After the base linear at a node some row group attaches to, each group's adapters are
//! called once with row-major views of that group's rows: straight into the arena when
//! the rows are consecutive (the common case: one adapter for the batch, or a batch the
//! caller sorted), otherwise through per-thread gather buffers whose rows are scattered
//! back afterwards (SGMV on a CPU). Large groups are split by rows across the session's
//! threads; a row's result never depends on the split, because hooks and kernels are
//! row-independent. Nothing here allocates: buffers were sized before the run.

use std::sync::Mutex;

use abi_stable::std_types::{ROption, RSlice, RSliceMut};
use graft_plugin_abi::{HostKernelsRef, LinearDelta, MatView, MatViewMut};

use super::exec::{Exec, SendPtr, chunk};
use super::plan::Place;
use crate::adapters::{Group, RowAdapters};
use crate::error::{Error, Result};
use crate::graph::{Graph, Op};
use crate::view::MatRef;

/// Batches smaller than this run their hooks on the calling thread.
const PAR_MIN_ROWS: usize = 32;
/// Row chunks handed to threads are multiples of this.
const CHUNK_MULTIPLE: usize = 4;

/// What a run with adapters carries.
pub(crate) struct AdapterPass<'a> {
    pub rows: &'a RowAdapters,
    pub kernels: HostKernelsRef,
    /// `threads × block` floats.
    pub scratch: *mut f32,
    pub block: usize,
}

/// Threads that share the hook work of a batch.
fn hook_threads(threads: usize, rows: usize) -> usize {
    if rows >= PAR_MIN_ROWS { threads } else { 1 }
}

/// The rows a group covers in a batch of `rows`.
fn group_len(group: &Group, rows: usize) -> usize {
    if group.rows.is_empty() { rows } else { group.rows.len() }
}

/// Floats of scratch each thread needs to run every hook of `adapters` on a batch of
/// `rows`: a gather buffer for the widest adapted layer plus the largest hook scratch.
pub(crate) fn scratch_per_thread(
    g: &Graph,
    adapters: &RowAdapters,
    kernels: HostKernelsRef,
    rows: usize,
    threads: usize,
) -> usize {
    let parts = hook_threads(threads, rows);
    let mut need = 0;
    for group in adapters.groups() {
        let n = group_len(group, rows);
        let per = n.div_ceil(parts).div_ceil(CHUNK_MULTIPLE) * CHUNK_MULTIPLE;
        let chunk_rows = per.min(n);
        for member in &group.members {
            for (t, target) in member.adapter.targets().iter().enumerate() {
                let Some(node) = g.nodes.get(target.node as usize) else { continue };
                let Op::Linear { weight, .. } = node.op else { continue };
                let w = &g.weights[weight];
                let gather = chunk_rows * (w.cols + w.rows);
                let hook = member.adapter.object().scratch_floats(t as u32, chunk_rows, kernels);
                need = need.max(gather.saturating_add(hook));
            }
        }
    }
    need
}

impl Exec<'_, '_> {
    /// Runs every group's adapters at linear `node`, whose input is `x` and whose output
    /// (base result, before any activation) is at `y`.
    ///
    /// # Safety
    /// `y` must be a place of the current step's output, disjoint from `x`, with `rows`
    /// rows in the arena; `pass.scratch` must hold `threads × pass.block` floats that
    /// nothing else uses during the call.
    pub(super) unsafe fn adapt_linear(
        &self,
        pass: &AdapterPass<'_>,
        node: usize,
        x: MatRef<'_>,
        bias: Option<&[f32]>,
        y: Place,
    ) -> Result<()> {
        let buffer = &self.buffers[y.buffer];
        // SAFETY: the place lies in the arena (caller).
        let y_ptr = SendPtr(unsafe { self.base.add(buffer.offset + y.col) });
        let (y_stride, out, inp) = (buffer.width, y.width, x.cols());
        let rows = self.rows;
        let parts = hook_threads(self.threads(), rows);
        let scratch = SendPtr(pass.scratch);
        let (block, groups, kernels) = (pass.block, pass.rows.groups(), pass.kernels);
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        let task = |t: usize| {
            let (y_ptr, scratch) = (y_ptr, scratch);
            // SAFETY: task t is the only user of scratch block t during this call.
            let scratch = unsafe { core::slice::from_raw_parts_mut(scratch.0.add(t * block), block) };
            for group in groups {
                if !group.members.iter().any(|m| m.adapter.target_at(node).is_some()) {
                    continue;
                }
                let n = group_len(group, rows);
                let part = chunk(n, parts, t, CHUNK_MULTIPLE);
                if part.is_empty() {
                    continue;
                }
                let contiguous = if group.rows.is_empty() { Some(0..rows) } else { group.contiguous() };
                let len = part.len();
                let (gx, rest) = scratch.split_at_mut(if contiguous.is_some() { 0 } else { len * inp });
                let (gy, hook_scratch) = rest.split_at_mut(if contiguous.is_some() { 0 } else { len * out });
                // Views of this chunk's rows: in place, or gathered.
                let (xv, mut yv) = match &contiguous {
                    Some(range) => {
                        let first = range.start + part.start;
                        // SAFETY: rows first..first+len are this task's alone (chunks and
                        // groups are disjoint) and lie in the batch.
                        unsafe {
                            (
                                MatView::from_raw_parts(x.row(first).as_ptr(), len, inp, x.stride()),
                                MatViewMut::from_raw_parts(y_ptr.0.add(first * y_stride), len, out, y_stride),
                            )
                        }
                    }
                    None => {
                        for (i, &r) in group.rows[part.clone()].iter().enumerate() {
                            gx[i * inp..(i + 1) * inp].copy_from_slice(x.row(r as usize));
                            // SAFETY: row r belongs to this task's chunk alone.
                            let src = unsafe { core::slice::from_raw_parts(y_ptr.0.add(r as usize * y_stride), out) };
                            gy[i * out..(i + 1) * out].copy_from_slice(src);
                        }
                        // SAFETY: gx/gy are this task's scratch, sized len × inp / len × out.
                        unsafe {
                            (
                                MatView::from_raw_parts(gx.as_ptr(), len, inp, inp),
                                MatViewMut::from_raw_parts(gy.as_mut_ptr(), len, out, out),
                            )
                        }
                    }
                };
                for member in &group.members {
                    let Some(target) = member.adapter.target_at(node) else { continue };
                    let call = LinearDelta {
                        target,
                        x: xv,
                        y: yv.reborrow(),
                        base_bias: bias.map(RSlice::from_slice).map_or(ROption::RNone, ROption::RSome),
                        scale: member.scale,
                        state: MatView::empty(len),
                        kernels,
                        scratch: RSliceMut::from_mut_slice(hook_scratch),
                    };
                    if let Err(e) = member.adapter.object().linear_delta(call).into_result() {
                        let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(member.adapter.hook_error(e));
                        return;
                    }
                }
                if contiguous.is_none() {
                    for (i, &r) in group.rows[part.clone()].iter().enumerate() {
                        // SAFETY: row r belongs to this task's chunk alone.
                        let dst = unsafe { core::slice::from_raw_parts_mut(y_ptr.0.add(r as usize * y_stride), out) };
                        dst.copy_from_slice(&gy[i * out..(i + 1) * out]);
                    }
                }
            }
        };
        if parts == 1 {
            task(0);
        } else {
            self.parallel(parts, &task);
        }
        match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
