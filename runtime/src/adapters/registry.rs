//! The adapter registry of one model: ids → loaded adapters, swapped without blocking runs.
//!
//! Readers take a [`Snapshot`] (one atomic load of an `Arc`, via `arc-swap`) and keep it
//! for the whole run, so a run never sees a half-published change and in-flight runs
//! finish on the version they started with; the old version is dropped when its last run
//! ends. Writers build a new snapshot beside the current one and publish it with one
//! atomic store. Loading and validation happen before publication, outside any lock, so
//! a bad adapter never replaces a good one and a slow load never delays a swap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RStr};
use arc_swap::ArcSwap;
use graft_plugin_abi::{AdapterBox, AdapterInfo, HookKind, LoadRequest, ModelView_TO, PluginError, Target};

use super::host::{HostModelView, ModuleMap};
use super::kinds::Kinds;
use crate::error::{Error, Result};
use crate::graph::Op;
use crate::model::Model;

/// Marks "no target at this node" in [`LoadedAdapter`]'s node index.
const NO_TARGET: u32 = u32::MAX;

/// An adapter validated against a model, ready to publish. Immutable; shared by every
/// run that uses it.
pub struct LoadedAdapter {
    id: String,
    kind: String,
    version: u64,
    object: AdapterBox,
    targets: Vec<Target>,
    /// `node → index into targets`, [`NO_TARGET`] where the adapter does not attach.
    by_node: Vec<u32>,
    info: AdapterInfo,
    model: Model,
}

impl core::fmt::Debug for LoadedAdapter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoadedAdapter")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("version", &self.version)
            .field("targets", &self.targets.len())
            .finish_non_exhaustive()
    }
}

impl LoadedAdapter {
    /// The id it was loaded under.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The kind's name.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// A process-wide load counter: a replaced adapter has a higher version.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The kind's summary (targets, ranks, scales, bytes).
    pub fn info(&self) -> &AdapterInfo {
        &self.info
    }

    /// Where it attaches.
    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// The target index at `node`, if the adapter attaches there.
    pub fn target_at(&self, node: usize) -> Option<u32> {
        self.by_node.get(node).copied().filter(|&t| t != NO_TARGET)
    }

    /// The adapter object, for the executor.
    pub(crate) fn object(&self) -> &AdapterBox {
        &self.object
    }

    /// The model it was validated against.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Converts an error returned by this adapter's hooks.
    pub(crate) fn hook_error(&self, e: PluginError) -> Error {
        plugin_error(&self.id, &self.kind, e)
    }
}

pub(crate) fn plugin_error(id: &str, kind: &str, e: PluginError) -> Error {
    Error::Adapter {
        id: id.into(),
        kind: kind.into(),
        code: e.code.name(),
        field: e.field.into_string(),
        detail: e.message.into_string(),
    }
}

/// One published state of a registry.
#[derive(Debug, Default)]
pub struct Snapshot {
    adapters: HashMap<Arc<str>, Arc<LoadedAdapter>>,
    generation: u64,
}

impl Snapshot {
    /// The adapter registered as `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<LoadedAdapter>> {
        self.adapters.get(id)
    }

    /// The adapter registered as `id`, or an error listing the registered ids.
    pub fn require(&self, id: &str) -> Result<&Arc<LoadedAdapter>> {
        self.get(id).ok_or_else(|| Error::UnknownAdapter { id: id.into(), known: self.ids().join(", ") })
    }

    /// Registered ids, sorted.
    pub fn ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.adapters.keys().map(|k| &**k).collect();
        ids.sort_unstable();
        ids
    }

    /// How many publications preceded this snapshot.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of adapters.
    pub fn len(&self) -> usize {
        self.adapters.len()
    }

    /// Whether no adapter is registered.
    pub fn is_empty(&self) -> bool {
        self.adapters.is_empty()
    }
}

/// The adapters of one model. `Sync`: share it (e.g. in an `Arc`) between serving threads
/// and the thread that swaps adapters.
pub struct Registry {
    model: Model,
    kinds: Kinds,
    modules: ModuleMap,
    current: ArcSwap<Snapshot>,
    /// Serializes writers (readers never take it).
    writer: Mutex<()>,
}

impl core::fmt::Debug for Registry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Registry").field("kinds", &self.kinds).field("adapters", &self.snapshot().ids()).finish()
    }
}

static VERSIONS: AtomicU64 = AtomicU64::new(1);

impl Registry {
    /// An empty registry for `model` with the built-in kinds.
    pub fn new(model: &Model) -> Registry {
        Registry::with_kinds(model, Kinds::builtin())
    }

    /// An empty registry for `model` with the given kinds.
    pub fn with_kinds(model: &Model, kinds: Kinds) -> Registry {
        Registry {
            model: model.clone(),
            kinds,
            modules: ModuleMap::new(),
            current: ArcSwap::from_pointee(Snapshot::default()),
            writer: Mutex::new(()),
        }
    }

    /// Sets the module-name overrides used by later loads.
    pub fn set_module_map(&mut self, map: ModuleMap) {
        self.modules = map;
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The kinds this registry can load.
    pub fn kinds(&self) -> &Kinds {
        &self.kinds
    }

    /// The current snapshot; hold it for as long as a consistent view is needed.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Loads an adapter of `kind` from `source` (a PEFT directory for `lora`) and
    /// validates it against the model. Nothing is published: pass the result to
    /// [`insert`](Self::insert) or [`replace`](Self::replace).
    pub fn load(&self, kind: &str, id: &str, source: &str, options: &str) -> Result<Arc<LoadedAdapter>> {
        let module = self.kinds.require(kind)?;
        let view = HostModelView::new(&self.model, &self.modules);
        let request =
            LoadRequest { id: RStr::from_str(id), source: RStr::from_str(source), options: RStr::from_str(options) };
        match (module.load())(request, ModelView_TO::from_ptr(&view, TD_Opaque)) {
            RResult::ROk(object) => self.adopt(id, kind, object),
            RResult::RErr(e) => Err(plugin_error(id, kind, e)),
        }
    }

    /// Loads a PEFT LoRA directory: `load("lora", id, dir, "")`.
    pub fn load_peft(&self, id: &str, dir: impl AsRef<std::path::Path>) -> Result<Arc<LoadedAdapter>> {
        let dir = dir.as_ref();
        let source = dir.to_str().ok_or_else(|| Error::InvalidOption {
            detail: format!("adapter path {} is not valid UTF-8", dir.display()),
        })?;
        self.load("lora", id, source, "")
    }

    /// Wraps an adapter object a kind produced (e.g. from bytes rather than files),
    /// checking that its targets exist in this model and fit their hooks.
    pub fn adopt(&self, id: &str, kind: &str, object: AdapterBox) -> Result<Arc<LoadedAdapter>> {
        let g = self.model.graph();
        let targets: Vec<Target> = object.targets().into_iter().collect();
        let info = object.info();
        let bad = |detail: String| Error::Adapter {
            id: id.into(),
            kind: kind.into(),
            code: "bad target",
            field: String::new(),
            detail,
        };
        let mut by_node = vec![NO_TARGET; g.nodes.len()];
        for (i, t) in targets.iter().enumerate() {
            let node = g.nodes.get(t.node as usize).ok_or_else(|| bad(format!("target {i}: no node {}", t.node)))?;
            match (t.hook, &node.op) {
                (HookKind::LinearDelta, Op::Linear { .. }) => {}
                (hook, op) => return Err(bad(format!("{hook:?} cannot attach to {} node `{}`", op.name(), node.name))),
            }
            if by_node[t.node as usize] != NO_TARGET {
                return Err(bad(format!("two targets at node `{}`", node.name)));
            }
            by_node[t.node as usize] = i as u32;
        }
        Ok(Arc::new(LoadedAdapter {
            id: id.into(),
            kind: kind.into(),
            version: VERSIONS.fetch_add(1, Ordering::Relaxed),
            object,
            targets,
            by_node,
            info,
            model: self.model.clone(),
        }))
    }

    fn check_model(&self, adapter: &LoadedAdapter) -> Result<()> {
        if adapter.model.same_as(&self.model) { Ok(()) } else { Err(Error::AdapterModel { id: adapter.id.clone() }) }
    }

    /// Publishes a change computed from the current snapshot. Writers are serialized;
    /// readers are never blocked.
    fn publish<T>(&self, change: impl FnOnce(&mut HashMap<Arc<str>, Arc<LoadedAdapter>>) -> Result<T>) -> Result<T> {
        let _writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = self.current.load();
        let mut adapters = current.adapters.clone();
        let out = change(&mut adapters)?;
        self.current.store(Arc::new(Snapshot { adapters, generation: current.generation + 1 }));
        Ok(out)
    }

    /// Publishes a new id. Fails if the id is taken.
    pub fn insert(&self, adapter: Arc<LoadedAdapter>) -> Result<()> {
        self.check_model(&adapter)?;
        self.publish(|map| {
            if map.contains_key(adapter.id()) {
                return Err(Error::AdapterId {
                    id: adapter.id.clone(),
                    detail: "already registered; use replace".into(),
                });
            }
            map.insert(Arc::from(adapter.id()), adapter);
            Ok(())
        })
    }

    /// Swaps the adapter under an existing id; returns the previous one. Runs already
    /// holding the old version finish with it.
    pub fn replace(&self, adapter: Arc<LoadedAdapter>) -> Result<Arc<LoadedAdapter>> {
        self.check_model(&adapter)?;
        self.publish(|map| match map.get_mut(adapter.id()) {
            Some(slot) => Ok(core::mem::replace(slot, adapter)),
            None => Err(Error::UnknownAdapter { id: adapter.id.clone(), known: "(use insert for a new id)".into() }),
        })
    }

    /// Inserts or replaces; returns the previous adapter under the id, if any.
    pub fn upsert(&self, adapter: Arc<LoadedAdapter>) -> Result<Option<Arc<LoadedAdapter>>> {
        self.check_model(&adapter)?;
        self.publish(|map| Ok(map.insert(Arc::from(adapter.id()), adapter)))
    }

    /// Unpublishes an id; returns the adapter.
    pub fn remove(&self, id: &str) -> Result<Arc<LoadedAdapter>> {
        self.publish(|map| {
            map.remove(id).ok_or_else(|| Error::UnknownAdapter { id: id.into(), known: "(not registered)".into() })
        })
    }
}
