//! Applying adapter hooks inside a run.
//!
//! Hooks fire where a node's value is complete: inside a linear's step for hooks at the
//! linear (its pre-activation output; the fused activation waits for them), and after
//! the last step of any other node (activations, concats, bags) or before the first step
//! for taps on dense inputs. At one point the order is: linear deltas, taps, posts.
//!
//! Each row group's adapters are called once per hook point with row-major views of that
//! group's rows: straight into the arena when the rows are consecutive (the common case:
//! one adapter for the batch, or a batch the caller sorted), otherwise through per-thread
//! gather buffers whose rows are scattered back afterwards (SGMV on a CPU). Large groups
//! are split by rows across the session's threads; a row's result never depends on the
//! split, because hooks and kernels are row-independent.
//!
//! Per-row run state (a FedIns selection, an error-memory key, a routed tower output)
//! lives in one buffer laid out per (group, member) in group row order, so a tap at one
//! node and a post at a later one see the same rows at the same positions with no gather.
//! A tap flagged [`Target::BASE`] must see the base model's value; when a hook of its
//! row's set would run earlier and could change that value, the session first runs a
//! hook-free prefix pass up to the tap. Nothing here allocates in steady state: every
//! buffer is sized before the run and only ever grows.

use std::sync::Mutex;

use abi_stable::std_types::{ROption, RSlice, RSliceMut};
use graft_plugin_abi::{HookKind, HostKernelsRef, LinearDelta, MatView, MatViewMut, Post, Tap, Target};

use super::exec::{Exec, SendPtr, chunk};
use super::plan::{Place, Plan};
use crate::adapters::{Group, Member, RowAdapters};
use crate::error::{Error, Result};
use crate::graph::{Graph, Op};
use crate::view::MatRef;

/// Batches smaller than this run their hooks on the calling thread.
const PAR_MIN_ROWS: usize = 32;
/// Row chunks handed to threads are multiples of this.
const CHUNK_MULTIPLE: usize = 4;

/// Which hooks a pass over the plan runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PassKind {
    /// The hook-free prefix: only the [`Target::BASE`] taps of groups that need it.
    Prefix,
    /// The real pass: every hook except the taps the prefix already ran.
    Main,
}

/// Per group of a run: whether its base taps ran in the prefix, and where its members'
/// bookkeeping starts.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct GroupRun {
    prefix: bool,
    first_member: usize,
}

/// Per (group, member) of a run: offsets of its state rows and tickets.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct MemberRun {
    state: usize,
    floats: usize,
    tickets: usize,
}

/// The buffers a session's adapter hooks use, reused from run to run.
#[derive(Debug, Default)]
pub(crate) struct HookBuffers {
    scratch: Vec<f32>,
    state: Vec<f32>,
    tickets: Vec<u64>,
    groups: Vec<GroupRun>,
    members: Vec<MemberRun>,
    block: usize,
    /// Steps the prefix pass runs, when some group needs one.
    prefix_steps: Option<usize>,
}

/// What a pass with adapters carries.
pub(crate) struct AdapterPass<'a> {
    pub rows: &'a RowAdapters,
    pub kernels: HostKernelsRef,
    pub kind: PassKind,
    /// `threads × block` floats.
    scratch: SendPtr,
    block: usize,
    state: SendPtr,
    tickets: SendTickets,
    groups: &'a [GroupRun],
    members: &'a [MemberRun],
}

/// Threads that share the hook work of a batch.
fn hook_threads(threads: usize, rows: usize) -> usize {
    if rows >= PAR_MIN_ROWS { threads } else { 1 }
}

/// The rows a group covers in a batch of `rows`.
fn group_len(group: &Group, rows: usize) -> usize {
    if group.rows.is_empty() { rows } else { group.rows.len() }
}

/// The width of a slot's value: a node's output, or a dense input.
fn slot_width(g: &Graph, slot: usize) -> usize {
    match g.nodes.get(slot) {
        Some(node) => node.width,
        None => g.value_width(crate::graph::ValueId::Input(slot - g.nodes.len())),
    }
}

/// Where a hook at `slot` runs in a pass, as a sortable key: dense-input taps before
/// everything, hooks at a linear inside its step, hooks at other nodes after their
/// value is complete; ties by node, then delta < tap < post.
fn hook_order(g: &Graph, plan: &Plan, hook: HookKind, slot: usize) -> (usize, u8, usize, u8) {
    let phase = match hook {
        HookKind::LinearDelta => 0,
        HookKind::Tap => 1,
        HookKind::Post => 2,
    };
    match g.nodes.get(slot) {
        None => (0, 0, slot, phase),
        Some(node) => {
            let inside = u8::from(!matches!(node.op, Op::Linear { .. }));
            (plan.ready[slot], inside, slot, phase)
        }
    }
}

/// For a group, the steps a prefix pass must run so that its base taps see base values
/// (`None`: every base tap already precedes every hook that could change its value).
fn prefix_steps(g: &Graph, plan: &Plan, members: &[Member]) -> Option<usize> {
    let targets = || members.iter().flat_map(|m| m.adapter.targets().iter());
    let first_change =
        targets().filter(|t| t.hook != HookKind::Tap).map(|t| hook_order(g, plan, t.hook, t.node as usize)).min()?;
    targets()
        .filter(|t| t.hook == HookKind::Tap && t.has(Target::BASE))
        .map(|t| hook_order(g, plan, t.hook, t.node as usize))
        .filter(|order| *order > first_change)
        .map(|order| order.0)
        .max()
}

/// Grows `v` to at least `len` elements, fallibly (sizes come from adapters' accounting).
fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize, what: &str) -> Result<()> {
    if v.len() < len {
        v.try_reserve_exact(len - v.len())
            .map_err(|_| Error::InvalidOption { detail: alloc::format!("cannot allocate {len} {what}") })?;
        v.resize(len, T::default());
    }
    Ok(())
}

impl HookBuffers {
    /// Sizes everything a run of `adapters` over `rows` rows needs and resets the state
    /// and tickets of the rows it covers.
    pub(crate) fn prepare(
        &mut self,
        g: &Graph,
        plan: &Plan,
        adapters: &RowAdapters,
        kernels: HostKernelsRef,
        rows: usize,
        threads: usize,
    ) -> Result<()> {
        let overflow = || Error::InvalidOption { detail: "adapter run state overflows the address space".into() };
        self.block = scratch_per_thread(g, adapters, kernels, rows, threads).max(1);
        grow(&mut self.scratch, self.block.checked_mul(threads).ok_or_else(overflow)?, "floats of hook scratch")?;
        self.groups.clear();
        self.members.clear();
        self.prefix_steps = None;
        let (mut state, mut tickets) = (0usize, 0usize);
        for group in adapters.groups() {
            let n = group_len(group, rows);
            let prefix = prefix_steps(g, plan, &group.members);
            self.prefix_steps = self.prefix_steps.max(prefix);
            grow_push(&mut self.groups, GroupRun { prefix: prefix.is_some(), first_member: self.members.len() })?;
            for member in &group.members {
                let floats = member.adapter.state_floats();
                grow_push(&mut self.members, MemberRun { state, floats, tickets })?;
                state = n.checked_mul(floats).and_then(|f| f.checked_add(state)).ok_or_else(overflow)?;
                tickets = tickets.checked_add(n).ok_or_else(overflow)?;
            }
        }
        grow(&mut self.state, state, "floats of adapter state")?;
        grow(&mut self.tickets, tickets, "adapter tickets")?;
        self.state[..state].fill(0.0);
        self.tickets[..tickets].fill(0);
        Ok(())
    }

    /// Steps of the prefix pass, if the last prepared run needs one.
    pub(crate) fn prefix_steps(&self) -> Option<usize> {
        self.prefix_steps
    }

    /// The pass over the last prepared run.
    pub(crate) fn pass<'a>(
        &'a mut self,
        rows: &'a RowAdapters,
        kernels: HostKernelsRef,
        kind: PassKind,
    ) -> AdapterPass<'a> {
        AdapterPass {
            rows,
            kernels,
            kind,
            scratch: SendPtr(self.scratch.as_mut_ptr()),
            block: self.block,
            state: SendPtr(self.state.as_mut_ptr()),
            tickets: SendTickets(self.tickets.as_mut_ptr()),
            groups: &self.groups,
            members: &self.members,
        }
    }

    /// The nonzero tickets the last run of `adapters` (over `rows` rows) issued.
    pub(crate) fn tickets<'a>(
        &'a self,
        adapters: &'a RowAdapters,
        rows: usize,
    ) -> impl Iterator<Item = crate::adapters::Ticket<'a>> + 'a {
        adapters.groups().iter().zip(&self.groups).flat_map(move |(group, run)| {
            group.members.iter().enumerate().flat_map(move |(m, member)| {
                let start = self.members.get(run.first_member + m).map_or(usize::MAX, |r| r.tickets);
                (0..group_len(group, rows)).filter_map(move |i| {
                    let value = *self.tickets.get(start.checked_add(i)?)?;
                    let row = if group.rows.is_empty() { i } else { group.rows[i] as usize };
                    (value != 0).then_some(crate::adapters::Ticket { row, adapter: &member.adapter, value })
                })
            })
        })
    }
}

/// Pushes without reallocating in steady state; a first growth is fallible.
fn grow_push<T>(v: &mut Vec<T>, item: T) -> Result<()> {
    if v.len() == v.capacity() {
        v.try_reserve(v.len().max(4))
            .map_err(|_| Error::InvalidOption { detail: "cannot allocate adapter run bookkeeping".into() })?;
    }
    v.push(item);
    Ok(())
}

/// Floats of scratch each thread needs to run every hook of `adapters` on a batch of
/// `rows`: gather buffers for the widest hook point plus the largest hook scratch.
fn scratch_per_thread(
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
                let slot = target.node as usize;
                let width = match (target.hook, g.nodes.get(slot).map(|n| &n.op)) {
                    (HookKind::LinearDelta, Some(Op::Linear { weight, .. })) => {
                        let w = &g.weights[*weight];
                        w.cols + w.rows
                    }
                    (HookKind::LinearDelta, _) => continue,
                    _ => slot_width(g, slot),
                };
                let hook = member.adapter.object().scratch_floats(t as u32, chunk_rows, kernels);
                need = need.max(chunk_rows.saturating_mul(width).saturating_add(hook));
            }
        }
    }
    need
}

impl AdapterPass<'_> {
    /// The target of `member` for `hook` at `slot`, if this pass runs it.
    fn selected(&self, group: GroupRun, member: &Member, hook: HookKind, slot: usize) -> Option<u32> {
        let t = member.adapter.target_at(hook, slot)?;
        let base_tap = hook == HookKind::Tap
            && group.prefix
            && member.adapter.targets().get(t as usize).is_some_and(|t| t.has(Target::BASE));
        let runs = match self.kind {
            PassKind::Prefix => base_tap,
            PassKind::Main => !base_tap,
        };
        runs.then_some(t)
    }
}

impl Exec<'_, '_> {
    /// Runs every group's `hook` hooks at `slot`. `x` is what the hook reads (a linear's
    /// input for deltas, the node's value for taps); `y` is the place it updates (the
    /// linear's output for deltas, the node's value for posts).
    ///
    /// # Safety
    /// `y` must be a place of the current step's output (or a completed node's value that
    /// no other view accesses), disjoint from `x`, with `rows` rows in the arena; the
    /// pass's buffers must have been prepared for this run and be used by nothing else.
    pub(super) unsafe fn hooks(
        &self,
        pass: &AdapterPass<'_>,
        hook: HookKind,
        slot: usize,
        x: Option<MatRef<'_>>,
        y: Option<Place>,
        bias: Option<&[f32]>,
    ) -> Result<()> {
        let y_at = y.map(|p| {
            let buffer = &self.buffers[p.buffer];
            // SAFETY: the place lies in the arena (caller).
            (SendPtr(unsafe { self.base.add(buffer.offset + p.col) }), buffer.width, p.width)
        });
        let rows = self.rows;
        let parts = hook_threads(self.threads(), rows);
        let (block, groups, kernels) = (pass.block, pass.rows.groups(), pass.kernels);
        let (scratch, state) = (pass.scratch, pass.state);
        let tickets = pass.tickets;
        let failure: Mutex<Option<Error>> = Mutex::new(None);
        let task = |t: usize| {
            let (scratch, state, tickets) = (scratch, state, tickets);
            // SAFETY: task t is the only user of scratch block t during this call.
            let scratch = unsafe { core::slice::from_raw_parts_mut(scratch.0.add(t * block), block) };
            for (group, &run) in groups.iter().zip(pass.groups) {
                if !group.members.iter().any(|m| pass.selected(run, m, hook, slot).is_some()) {
                    continue;
                }
                let n = group_len(group, rows);
                let part = chunk(n, parts, t, CHUNK_MULTIPLE);
                if part.is_empty() {
                    continue;
                }
                let contiguous = if group.rows.is_empty() { Some(0..rows) } else { group.contiguous() };
                let len = part.len();
                let (in_w, out_w) = (x.map_or(0, |x| x.cols()), y_at.map_or(0, |(_, _, w)| w));
                let gathered = contiguous.is_none();
                let (gx, rest) = scratch.split_at_mut(if gathered { len * in_w } else { 0 });
                let (gy, hook_scratch) = rest.split_at_mut(if gathered { len * out_w } else { 0 });
                let row_of = |i: usize| match &contiguous {
                    Some(range) => range.start + part.start + i,
                    None => group.rows[part.start + i] as usize,
                };
                // Views of this chunk's rows: in place, or gathered.
                let xv = match x {
                    None => MatView::empty(len),
                    Some(x) if !gathered => {
                        // SAFETY: rows row_of(0).. row_of(0)+len lie in the batch; x is only read.
                        unsafe { MatView::from_raw_parts(x.row(row_of(0)).as_ptr(), len, in_w, x.stride()) }
                    }
                    Some(x) => {
                        for i in 0..len {
                            gx[i * in_w..(i + 1) * in_w].copy_from_slice(x.row(row_of(i)));
                        }
                        // SAFETY: gx is this task's scratch, sized len × in_w.
                        unsafe { MatView::from_raw_parts(gx.as_ptr(), len, in_w, in_w) }
                    }
                };
                let mut yv = match y_at {
                    // SAFETY: an empty view reads and writes nothing.
                    None => unsafe { MatViewMut::from_raw_parts(gy.as_mut_ptr(), len, 0, 0) },
                    Some((ptr, stride, w)) if !gathered => {
                        // SAFETY: these rows belong to this task's chunk alone (chunks and
                        // groups are disjoint) and lie in the batch.
                        unsafe { MatViewMut::from_raw_parts(ptr.0.add(row_of(0) * stride), len, w, stride) }
                    }
                    Some((ptr, stride, w)) => {
                        for i in 0..len {
                            // SAFETY: row row_of(i) belongs to this task's chunk alone.
                            let src = unsafe { core::slice::from_raw_parts(ptr.0.add(row_of(i) * stride), w) };
                            gy[i * w..(i + 1) * w].copy_from_slice(src);
                        }
                        // SAFETY: gy is this task's scratch, sized len × w.
                        unsafe { MatViewMut::from_raw_parts(gy.as_mut_ptr(), len, w, w) }
                    }
                };
                for (m, member) in group.members.iter().enumerate() {
                    let Some(target) = pass.selected(run, member, hook, slot) else { continue };
                    let Some(&mrun) = pass.members.get(run.first_member + m) else { continue };
                    let floats = mrun.floats;
                    // SAFETY: the member's state holds n × floats values (prepared for this
                    // run); this chunk's rows part are this task's alone.
                    let state_ptr = unsafe { state.0.add(mrun.state + part.start * floats) };
                    let scratch = RSliceMut::from_mut_slice(&mut *hook_scratch);
                    let object = member.adapter.object();
                    // Plugin adapters are checked: were the rows a hook updates in place
                    // finite before it ran (a NaN it merely propagates is not its fault)?
                    let checked = member.adapter.is_checked();
                    let y_was_finite = checked && hook != HookKind::Tap && first_non_finite(&yv.as_view()).is_none();
                    let result = match hook {
                        HookKind::LinearDelta => object.linear_delta(LinearDelta {
                            target,
                            x: xv,
                            y: yv.reborrow(),
                            base_bias: bias.map(RSlice::from_slice).map_or(ROption::RNone, ROption::RSome),
                            scale: member.scale,
                            // SAFETY: as above; read-only here.
                            state: unsafe { MatView::from_raw_parts(state_ptr, len, floats, floats) },
                            kernels,
                            scratch,
                        }),
                        HookKind::Tap => object.tap(Tap {
                            target,
                            x: xv,
                            // SAFETY: as above; no other view of these state rows exists.
                            state: unsafe { MatViewMut::from_raw_parts(state_ptr, len, floats, floats) },
                            scale: member.scale,
                            kernels,
                            scratch,
                        }),
                        HookKind::Post => object.post(Post {
                            target,
                            y: yv.reborrow(),
                            // SAFETY: as above; read-only here.
                            state: unsafe { MatView::from_raw_parts(state_ptr, len, floats, floats) },
                            // SAFETY: the member's tickets hold n values; part is this task's.
                            tickets: RSliceMut::from_mut_slice(unsafe {
                                core::slice::from_raw_parts_mut(tickets.0.add(mrun.tickets + part.start), len)
                            }),
                            scale: member.scale,
                            kernels,
                            scratch,
                        }),
                    };
                    if let Err(e) = result.into_result() {
                        let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(member.adapter.hook_error(e));
                        return;
                    }
                    if checked {
                        // SAFETY: as for the call above; the hook has returned, so these
                        // state rows are only read.
                        let state = unsafe { MatView::from_raw_parts(state_ptr, len, floats, floats) };
                        let written = match hook {
                            HookKind::Tap => first_non_finite(&state),
                            _ => first_non_finite(&yv.as_view()).filter(|_| y_was_finite),
                        };
                        // What the hook read: x, and for non-taps the state its taps left.
                        let inputs_finite = || {
                            first_non_finite(&xv).is_none()
                                && (hook == HookKind::Tap || first_non_finite(&state).is_none())
                        };
                        if let Some((i, col, value)) = written
                            && inputs_finite()
                        {
                            let node = slot_name(self.model.graph(), slot);
                            let error = member.adapter.fault(&node, hook, row_of(i), col, value);
                            failure.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(error);
                            return;
                        }
                    }
                }
                if let (Some((ptr, stride, w)), true) = (y_at, gathered) {
                    for i in 0..len {
                        // SAFETY: row row_of(i) belongs to this task's chunk alone.
                        let dst = unsafe { core::slice::from_raw_parts_mut(ptr.0.add(row_of(i) * stride), w) };
                        dst.copy_from_slice(&gy[i * w..(i + 1) * w]);
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

/// The first NaN or ±Inf of `m`, as (row, column, value). Rows are screened with a
/// branch-free exponent test (vectorizable) before any is searched.
fn first_non_finite(m: &MatView<'_>) -> Option<(usize, usize, f32)> {
    const EXPONENT: u32 = 0x7f80_0000;
    (0..m.rows()).find_map(|r| {
        let row = m.row(r);
        let any = row.iter().fold(false, |acc, v| acc | (v.to_bits() & EXPONENT == EXPONENT));
        if !any {
            return None;
        }
        row.iter().position(|v| !v.is_finite()).map(|c| (r, c, row[c]))
    })
}

/// The name of a hook slot: a node, or a dense graph input.
fn slot_name(g: &Graph, slot: usize) -> String {
    match g.nodes.get(slot) {
        Some(node) => node.name.clone(),
        None => g.inputs.get(slot - g.nodes.len()).map_or_else(|| format!("slot {slot}"), |i| i.name.clone()),
    }
}

/// Ticket storage shared by the tasks of one hook call.
#[derive(Clone, Copy)]
struct SendTickets(*mut u64);
// SAFETY: tasks write disjoint ticket ranges (their own chunk of their own group).
unsafe impl Send for SendTickets {}
// SAFETY: as above.
unsafe impl Sync for SendTickets {}
