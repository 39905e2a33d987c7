//! Which adapters each row of a batch uses.
//!
//! A row uses an *adapter set*: nothing (the base model), one adapter, or a stack of
//! adapters each with a scale multiplier, applied in order. Rows with the same set form a
//! group; the executor calls each hook once per (hook point, group) — the CPU form of
//! SGMV — instead of once per row, and never co-batches different sets into one call.
//!
//! Ids are resolved against one registry snapshot when rows are added, so an unknown id
//! fails here, before anything runs, and a swap published later cannot change the batch.
//! An adapter instance disabled after a fault (see the registry docs) is refused here,
//! and again when a run starts with an assignment made before the fault.
//! All bookkeeping (groups, the nodes any set touches) is built here too, so `run_with`
//! itself allocates nothing. A server that builds the assignment per request reuses one
//! with [`RowAdapters::refresh`]: it moves to the registry's current snapshot (so the
//! request sees adapters swapped since) and keeps every buffer, so once the buffers have
//! grown to the largest request, building the rows allocates nothing either.

use std::collections::HashMap;
use std::sync::Arc;

use super::registry::{LoadedAdapter, Registry, Snapshot};
use crate::error::{Error, Result};
use crate::model::Model;

/// One adapter of a set and its per-request scale multiplier.
#[derive(Clone, Debug)]
pub struct Member {
    /// The adapter.
    pub adapter: Arc<LoadedAdapter>,
    /// Multiplier on the adapter's own scale (PEFT `set_scale`): 1 leaves it unchanged.
    pub scale: f32,
}

/// The rows of a batch that share one adapter set.
#[derive(Clone, Debug)]
pub struct Group {
    /// The set, applied in order.
    pub members: Vec<Member>,
    /// Row indices, ascending (empty with [`RowAdapters::all`]: every row).
    pub rows: Vec<u32>,
}

impl Group {
    /// The rows as a range, when they are consecutive.
    pub fn contiguous(&self) -> Option<core::ops::Range<usize>> {
        let (&first, &last) = (self.rows.first()?, self.rows.last()?);
        (last - first + 1 == self.rows.len() as u32).then(|| first as usize..last as usize + 1)
    }
}

/// No next group in a hash chain.
const END: usize = usize::MAX;

/// The adapter set of every row of one batch.
#[derive(Clone, Debug)]
pub struct RowAdapters {
    model: Model,
    snapshot: Arc<Snapshot>,
    /// `groups[..live]` are the groups with at least one adapter (base-only rows belong to
    /// no group); the rest are spares, emptied (they keep no adapter alive) and kept for
    /// their buffers.
    groups: Vec<Group>,
    live: usize,
    /// Hash of a set (adapter instances by address, scale bits, in order) → the newest
    /// live group with that hash; `chain[g]` is the next older one (or [`END`]). Sets are
    /// compared member by member, so a hash collision only costs a comparison.
    by_hash: HashMap<u64, usize>,
    chain: Vec<usize>,
    /// The set being resolved (reused, emptied after each row).
    scratch: Vec<Member>,
    /// Rows assigned so far (ignored when `uniform`).
    rows: usize,
    /// One set for every row, whatever the batch size.
    uniform: bool,
    /// Per slot (graph nodes, then inputs): whether any group has an adapter hook there.
    touched: Vec<bool>,
}

fn slot_count(model: &Model) -> usize {
    model.graph().nodes.len() + model.graph().inputs.len()
}

/// FNV-1a over the members' identities; equal sets hash equally.
fn set_hash(members: &[Member]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for m in members {
        for word in [Arc::as_ptr(&m.adapter) as usize as u64, u64::from(m.scale.to_bits())] {
            h = (h ^ word).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn same_set(a: &[Member], b: &[Member]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| Arc::ptr_eq(&x.adapter, &y.adapter) && x.scale.to_bits() == y.scale.to_bits())
}

impl RowAdapters {
    /// An empty assignment against the registry's current snapshot; add rows in order.
    pub fn new(registry: &Registry) -> RowAdapters {
        RowAdapters {
            model: registry.model().clone(),
            snapshot: registry.snapshot(),
            groups: Vec::new(),
            live: 0,
            by_hash: HashMap::new(),
            chain: Vec::new(),
            scratch: Vec::new(),
            rows: 0,
            uniform: false,
            touched: vec![false; slot_count(registry.model())],
        }
    }

    /// Every row uses the adapter `id` at scale 1.
    pub fn all(registry: &Registry, id: &str) -> Result<RowAdapters> {
        RowAdapters::all_stack(registry, &[(id, 1.0)])
    }

    /// Every row uses the stack `set` (ids with scale multipliers, applied in order).
    pub fn all_stack(registry: &Registry, set: &[(&str, f32)]) -> Result<RowAdapters> {
        let mut rows = RowAdapters::new(registry);
        rows.make_uniform(set)?;
        Ok(rows)
    }

    /// Moves to the registry's current snapshot and forgets every row and set (an
    /// all-rows assignment becomes an empty per-row one), keeping every buffer: the
    /// per-request form of [`RowAdapters::new`]. Rows added next see the adapters
    /// published up to now, and the previous snapshot's adapters are no longer kept
    /// alive by this assignment. Allocates nothing unless `registry` serves a different
    /// model than before (then the per-node table is resized).
    pub fn refresh(&mut self, registry: &Registry) {
        self.forget();
        self.uniform = false;
        self.snapshot = registry.snapshot();
        if !self.model.same_as(registry.model()) {
            self.model = registry.model().clone();
            self.touched.resize(slot_count(&self.model), false);
        }
    }

    /// [`refresh`](Self::refresh), then every row uses the stack `set`: the per-request
    /// form of [`RowAdapters::all_stack`]. On an error (an unknown or disabled id, a
    /// non-finite scale) the assignment is left empty and per-row.
    /// `set` may hold `&str` or owned `String` ids.
    pub fn refresh_all<S: AsRef<str>>(&mut self, registry: &Registry, set: &[(S, f32)]) -> Result<()> {
        self.refresh(registry);
        self.make_uniform(set)
    }

    fn make_uniform<S: AsRef<str>>(&mut self, set: &[(S, f32)]) -> Result<()> {
        self.resolve(set)?;
        if !self.scratch.is_empty() {
            self.mark_scratch();
            self.new_group();
        }
        self.uniform = true;
        Ok(())
    }

    /// The snapshot ids were resolved against.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// The model the assignment was made for.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Rows assigned (0 for [`RowAdapters::all`], which fits any batch).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no rows were assigned.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Whether one set applies to every row of any batch.
    pub fn is_uniform(&self) -> bool {
        self.uniform
    }

    /// Groups with at least one adapter.
    pub fn groups(&self) -> &[Group] {
        &self.groups[..self.live]
    }

    /// Whether any row has an adapter hook at `slot` (a node index, or the node count
    /// plus an input index).
    pub fn touches(&self, slot: usize) -> bool {
        self.touched.get(slot).copied().unwrap_or(false)
    }

    /// Forgets all rows and sets, keeping the snapshot and every buffer (an all-rows
    /// assignment keeps its set: it has no rows to forget). Use
    /// [`refresh`](Self::refresh) to also see adapters swapped since the assignment was
    /// made.
    pub fn clear(&mut self) {
        if !self.uniform {
            self.forget();
        }
    }

    /// Empties the live groups into spares and resets the bookkeeping; frees nothing.
    fn forget(&mut self) {
        for g in &mut self.groups[..self.live] {
            g.members.clear();
            g.rows.clear();
        }
        self.live = 0;
        self.by_hash.clear();
        self.rows = 0;
        self.touched.fill(false);
    }

    /// The next row uses the base model only.
    pub fn push_base(&mut self) -> Result<()> {
        self.push_stack(&[])
    }

    /// The next row uses adapter `id` at scale 1.
    pub fn push(&mut self, id: &str) -> Result<()> {
        self.push_stack(&[(id, 1.0)])
    }

    /// The next row uses a stack of adapters with scale multipliers, applied in order.
    pub fn push_stack(&mut self, set: &[(&str, f32)]) -> Result<()> {
        if self.uniform {
            return Err(Error::RowAdapters { detail: "rows cannot be added to an all-rows assignment".into() });
        }
        let row = u32::try_from(self.rows)
            .map_err(|_| Error::RowAdapters { detail: "more than 2^32 rows in one batch".into() })?;
        self.resolve(set)?;
        if !self.scratch.is_empty() {
            let hash = set_hash(&self.scratch);
            let mut next = self.by_hash.get(&hash).copied().unwrap_or(END);
            while next != END && !same_set(&self.groups[next].members, &self.scratch) {
                next = self.chain[next];
            }
            let group = if next != END {
                self.scratch.clear();
                next
            } else {
                self.mark_scratch();
                let g = self.new_group();
                self.chain[g] = self.by_hash.insert(hash, g).unwrap_or(END);
                g
            };
            self.groups[group].rows.push(row);
        }
        self.rows += 1;
        Ok(())
    }

    /// Resolves `set` into `scratch` (emptied on error, so no adapter is kept alive).
    fn resolve<S: AsRef<str>>(&mut self, set: &[(S, f32)]) -> Result<()> {
        let (snapshot, model, scratch) = (&self.snapshot, &self.model, &mut self.scratch);
        scratch.clear();
        let resolved = set.iter().try_for_each(|(id, scale)| {
            let (id, scale) = (id.as_ref(), *scale);
            if !scale.is_finite() {
                return Err(Error::RowAdapters { detail: format!("adapter `{id}`: scale {scale} is not finite") });
            }
            let adapter = snapshot.require(id)?;
            if !adapter.model().same_as(model) {
                return Err(Error::AdapterModel { id: id.into() });
            }
            adapter.check_enabled()?;
            scratch.push(Member { adapter: adapter.clone(), scale });
            Ok(())
        });
        if resolved.is_err() {
            scratch.clear();
        }
        resolved
    }

    /// Marks the slots the set in `scratch` hooks.
    fn mark_scratch(&mut self) {
        for m in &self.scratch {
            for t in m.adapter.targets() {
                if let Some(slot) = self.touched.get_mut(t.node as usize) {
                    *slot = true;
                }
            }
        }
    }

    /// Makes the set in `scratch` a new live group with no rows, reusing a spare; returns
    /// its index (its chain link is [`END`]).
    fn new_group(&mut self) -> usize {
        let g = self.live;
        if g == self.groups.len() {
            self.groups.push(Group { members: Vec::new(), rows: Vec::new() });
            self.chain.push(END);
        }
        self.groups[g].members.append(&mut self.scratch);
        self.chain[g] = END;
        self.live += 1;
        g
    }

    /// Checks the assignment fits a batch of `rows` rows of `model`.
    pub(crate) fn check(&self, model: &Model, rows: usize) -> Result<()> {
        if !self.model.same_as(model) {
            let id = self.groups().first().and_then(|g| g.members.first()).map_or("", |m| m.adapter.id());
            return Err(Error::AdapterModel { id: id.into() });
        }
        if !self.uniform && self.rows != rows {
            return Err(Error::RowAdapters { detail: format!("{} rows assigned for a batch of {rows}", self.rows) });
        }
        // An adapter disabled after this assignment was made (a fault in an earlier run).
        for member in self.groups().iter().flat_map(|g| &g.members) {
            member.adapter.check_enabled()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::builder::WeightFormats;
    use crate::synthetic::lora::{LoraSpec, write_peft_lora};

    /// A registry on the tiny model with LoRA adapters `a` and `b`, and a second version
    /// of `a` (loaded, not published).
    fn setup(test: &str) -> (Registry, Arc<LoadedAdapter>) {
        let dir = std::env::temp_dir().join(format!("graft-rows-{test}-{}", std::process::id()));
        let model =
            Model::from_slice_copy(&crate::synthetic::tiny().to_bytes(WeightFormats::default()).unwrap()).unwrap();
        let registry = Registry::new(&model);
        let load = |id: &str, name: &str, seed| {
            let path = dir.join(name);
            write_peft_lora(&model, &path, &LoraSpec::every_linear(2, seed)).unwrap();
            registry.load_peft(id, &path).unwrap()
        };
        registry.insert(load("a", "a1", 1)).unwrap();
        registry.insert(load("b", "b", 2)).unwrap();
        let a2 = load("a", "a2", 3);
        let _ = std::fs::remove_dir_all(&dir);
        (registry, a2)
    }

    fn rows_of(r: &RowAdapters) -> Vec<Vec<u32>> {
        r.groups().iter().map(|g| g.rows.clone()).collect()
    }

    #[test]
    fn sets_group_by_instance_scale_and_order() {
        let (registry, _) = setup("group");
        let mut r = RowAdapters::new(&registry);
        r.push("a").unwrap();
        r.push_stack(&[("a", 1.0), ("b", 1.0)]).unwrap();
        r.push_base().unwrap();
        r.push_stack(&[("b", 1.0), ("a", 1.0)]).unwrap();
        r.push_stack(&[("a", 0.5)]).unwrap();
        r.push("a").unwrap();
        r.push_stack(&[("a", 1.0), ("b", 1.0)]).unwrap();
        // a; a+b; b+a (order matters); a×0.5 (scale matters); the base row is in no group.
        assert_eq!(rows_of(&r), [vec![0, 5], vec![1, 6], vec![3], vec![4]]);
        assert_eq!(r.len(), 7);
    }

    #[test]
    fn refresh_sees_the_swap_and_releases_the_old_snapshot() {
        let (registry, a2) = setup("refresh");
        let a1 = registry.snapshot().require("a").unwrap().clone();
        let mut r = RowAdapters::new(&registry);
        for _ in 0..3 {
            r.push("a").unwrap();
            r.push("b").unwrap();
        }
        registry.replace(a2.clone()).unwrap();
        // clear() keeps the old snapshot: the rows still get the old `a`.
        r.clear();
        r.push("a").unwrap();
        assert!(Arc::ptr_eq(&r.groups()[0].members[0].adapter, &a1));
        r.refresh(&registry);
        assert!(r.groups().is_empty() && r.is_empty() && !r.is_uniform());
        // Only the test's clone keeps the old version alive now (the registry replaced it,
        // and the assignment moved to the new snapshot, spares included).
        assert_eq!(Arc::strong_count(&a1), 1);
        r.push("b").unwrap();
        r.push("a").unwrap();
        r.push("a").unwrap();
        assert_eq!(rows_of(&r), [vec![0], vec![1, 2]]);
        assert!(Arc::ptr_eq(&r.groups()[1].members[0].adapter, &a2));
    }

    #[test]
    fn refresh_all_is_uniform_and_an_error_leaves_it_empty() {
        let (registry, _) = setup("all");
        let mut r = RowAdapters::new(&registry);
        r.push("a").unwrap();
        r.refresh_all(&registry, &[("b", 0.5)]).unwrap();
        assert!(r.is_uniform() && r.is_empty());
        assert_eq!(r.groups().len(), 1);
        assert!(r.groups()[0].rows.is_empty() && r.groups()[0].members[0].scale == 0.5);
        assert!(r.push("a").is_err(), "rows cannot be added to an all-rows assignment");
        r.clear();
        assert_eq!(r.groups().len(), 1, "an all-rows assignment keeps its set on clear()");
        let owned = [("nope".to_string(), 1.0)];
        assert!(matches!(r.refresh_all(&registry, &owned), Err(Error::UnknownAdapter { .. })));
        assert!(!r.is_uniform() && r.groups().is_empty());
        assert!(matches!(r.refresh_all(&registry, &[("a", f32::NAN)]), Err(Error::RowAdapters { .. })));
        r.push("a").unwrap();
        assert_eq!(rows_of(&r), [vec![0]]);
    }
}
