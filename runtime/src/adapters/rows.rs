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
//! itself allocates nothing.

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

/// Identity of a set: adapter instances (by address) and scale bits, in order.
type SetKey = Vec<(usize, u32)>;

/// The adapter set of every row of one batch.
#[derive(Clone, Debug)]
pub struct RowAdapters {
    model: Model,
    snapshot: Arc<Snapshot>,
    /// Groups with at least one adapter; base-only rows belong to no group.
    groups: Vec<Group>,
    by_key: HashMap<SetKey, usize>,
    /// Rows assigned so far (ignored when `uniform`).
    rows: usize,
    /// One set for every row, whatever the batch size.
    uniform: bool,
    /// Per slot (graph nodes, then inputs): whether any group has an adapter hook there.
    touched: Vec<bool>,
}

impl RowAdapters {
    /// An empty assignment against the registry's current snapshot; add rows in order.
    pub fn new(registry: &Registry) -> RowAdapters {
        RowAdapters {
            model: registry.model().clone(),
            snapshot: registry.snapshot(),
            groups: Vec::new(),
            by_key: HashMap::new(),
            rows: 0,
            uniform: false,
            touched: vec![false; registry.model().graph().nodes.len() + registry.model().graph().inputs.len()],
        }
    }

    /// Every row uses the adapter `id` at scale 1.
    pub fn all(registry: &Registry, id: &str) -> Result<RowAdapters> {
        RowAdapters::all_stack(registry, &[(id, 1.0)])
    }

    /// Every row uses the stack `set` (ids with scale multipliers, applied in order).
    pub fn all_stack(registry: &Registry, set: &[(&str, f32)]) -> Result<RowAdapters> {
        let mut rows = RowAdapters::new(registry);
        rows.uniform = true;
        let members = rows.resolve(set)?;
        if !members.is_empty() {
            rows.mark(&members);
            rows.groups.push(Group { members, rows: Vec::new() });
        }
        Ok(rows)
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
        &self.groups
    }

    /// Whether any row has an adapter hook at `slot` (a node index, or the node count
    /// plus an input index).
    pub fn touches(&self, slot: usize) -> bool {
        self.touched.get(slot).copied().unwrap_or(false)
    }

    /// Forgets all rows, keeping the snapshot and allocations.
    pub fn clear(&mut self) {
        self.groups.iter_mut().for_each(|g| g.rows.clear());
        self.rows = 0;
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
        let members = self.resolve(set)?;
        if !members.is_empty() {
            let key: SetKey = members.iter().map(|m| (Arc::as_ptr(&m.adapter) as usize, m.scale.to_bits())).collect();
            let group = match self.by_key.get(&key) {
                Some(&g) => g,
                None => {
                    self.mark(&members);
                    self.groups.push(Group { members, rows: Vec::new() });
                    self.by_key.insert(key, self.groups.len() - 1);
                    self.groups.len() - 1
                }
            };
            self.groups[group].rows.push(row);
        }
        self.rows += 1;
        Ok(())
    }

    fn resolve(&self, set: &[(&str, f32)]) -> Result<Vec<Member>> {
        set.iter()
            .map(|&(id, scale)| {
                if !scale.is_finite() {
                    return Err(Error::RowAdapters { detail: format!("adapter `{id}`: scale {scale} is not finite") });
                }
                let adapter = self.snapshot.require(id)?.clone();
                if !adapter.model().same_as(&self.model) {
                    return Err(Error::AdapterModel { id: id.into() });
                }
                adapter.check_enabled()?;
                Ok(Member { adapter, scale })
            })
            .collect()
    }

    fn mark(&mut self, members: &[Member]) {
        for m in members {
            for t in m.adapter.targets() {
                if let Some(slot) = self.touched.get_mut(t.node as usize) {
                    *slot = true;
                }
            }
        }
    }

    /// Checks the assignment fits a batch of `rows` rows of `model`.
    pub(crate) fn check(&self, model: &Model, rows: usize) -> Result<()> {
        if !self.model.same_as(model) {
            let id = self.groups.first().and_then(|g| g.members.first()).map_or("", |m| m.adapter.id());
            return Err(Error::AdapterModel { id: id.into() });
        }
        if !self.uniform && self.rows != rows {
            return Err(Error::RowAdapters { detail: format!("{} rows assigned for a batch of {rows}", self.rows) });
        }
        // An adapter disabled after this assignment was made (a fault in an earlier run).
        for member in self.groups.iter().flat_map(|g| &g.members) {
            member.adapter.check_enabled()?;
        }
        Ok(())
    }
}
