//! The adapter registry of one model: ids → loaded adapters, swapped without blocking runs.
//!
//! Readers take a [`Snapshot`] (one atomic load of an `Arc`, via `arc-swap`) and keep it
//! for the whole run, so a run never sees a half-published change and in-flight runs
//! finish on the version they started with; the old version is dropped when its last run
//! ends. Writers build a new snapshot beside the current one and publish it with one
//! atomic store. Loading and validation happen before publication, outside any lock, so
//! a bad adapter never replaces a good one and a slow load never delays a swap.
//!
//! # Plugins and containment
//!
//! [`Registry::load_plugin`] adds a kind from a shared-library file (a Rust
//! `graft-plugin-abi` root module, or a C `graft_plugin.h` table); every refusal — not a
//! shared library, no entry symbol, another interface version, a malformed table, a kind
//! name already taken — is an [`Error::Plugin`] naming the file and the fix. Kinds are
//! published like adapters (a new set swapped in atomically), and no lock is held while
//! a kind's code runs.
//!
//! Adapters of plugin kinds are *checked*: after each successful hook call the executor
//! scans what the hook wrote (the output rows of `linear_delta` and `post`, the state
//! rows of `tap`) and, if it holds NaN or ±Inf although everything the hook read was
//! finite, disables that adapter instance and fails the run with [`Error::PluginFault`]
//! (plugin file, kind, adapter id, node, hook, row, column). A disabled instance is
//! refused by [`RowAdapters`](super::RowAdapters) with [`Error::AdapterDisabled`]; load
//! it again (or [`replace`](Registry::replace) it) to serve the id. Errors a plugin hook
//! returns flow as for any kind ([`Error::Adapter`] with its code and field); the
//! adapter stays enabled. The scan costs one pass over the rows a hook reads and writes,
//! only for plugin adapters; built-in kinds are trusted and pay nothing.
//!
//! What the host cannot contain: a Rust plugin's panic is caught by the plugin's own
//! guard (the interface's contract; the built-in kinds wrap every hook in
//! `catch_unwind`) — a panic that escapes it reaches an `extern "C"` boundary, where
//! Rust aborts the process. A C plugin that crashes, corrupts memory or never returns
//! takes the process with it. Plugin code stays mapped for the life of the process;
//! replacing an adapter replaces its instance, never the code.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::RStr;
use arc_swap::ArcSwap;
use graft_plugin_abi::{AdapterBox, AdapterInfo, HookKind, LoadRequest, ModelView_TO, PluginError, Target};

use super::host::{HostModelView, ModuleMap};
use super::kinds::{KindInfo, KindOrigin, Kinds};
use crate::error::{Error, PluginFault, Result};
use crate::graph::{InputKind, Op};
use crate::model::Model;

/// Marks "no target at this slot" in [`LoadedAdapter`]'s slot index.
const NO_TARGET: u32 = u32::MAX;

/// The position of `hook` in [`LoadedAdapter`]'s per-slot index.
fn hook_index(hook: HookKind) -> usize {
    match hook {
        HookKind::LinearDelta => 0,
        HookKind::Tap => 1,
        HookKind::Post => 2,
    }
}

/// An adapter validated against a model, ready to publish. Immutable; shared by every
/// run that uses it.
pub struct LoadedAdapter {
    id: String,
    kind: String,
    version: u64,
    object: AdapterBox,
    targets: Vec<Target>,
    /// Per slot (graph nodes, then dense inputs) and hook kind: the index into `targets`,
    /// [`NO_TARGET`] where the adapter does not attach.
    by_slot: Vec<[u32; 3]>,
    /// Floats of per-row run state.
    state_floats: usize,
    info: AdapterInfo,
    model: Model,
    /// Where the kind's code comes from; plugin adapters' output is checked.
    origin: KindOrigin,
    /// The fault that disabled the adapter, once one did (a non-finite output).
    disabled: OnceLock<PluginFault>,
}

impl core::fmt::Debug for LoadedAdapter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LoadedAdapter")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("version", &self.version)
            .field("targets", &self.targets.len())
            .field("origin", &self.origin)
            .field("disabled", &self.disabled.get())
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

    /// The index of the adapter's `hook` target at `slot` (a node index, or the graph's
    /// node count plus a dense input's index), if it has one.
    pub fn target_at(&self, hook: HookKind, slot: usize) -> Option<u32> {
        self.by_slot.get(slot).map(|hooks| hooks[hook_index(hook)]).filter(|&t| t != NO_TARGET)
    }

    /// Whether the adapter has any hook at `slot`.
    pub fn attaches_at(&self, slot: usize) -> bool {
        self.by_slot.get(slot).is_some_and(|hooks| hooks.iter().any(|&t| t != NO_TARGET))
    }

    /// Floats of per-row state a run keeps for this adapter.
    pub fn state_floats(&self) -> usize {
        self.state_floats
    }

    /// Hands the observed `label` of a row to the adapter that issued `ticket` for it
    /// (see [`Outputs::tickets`](crate::Outputs::tickets)). Error memories learn from it;
    /// an unknown, answered or evicted ticket is an [`Error::Adapter`] with code `ticket`.
    pub fn feedback(&self, ticket: u64, label: f32) -> Result<()> {
        self.object.feedback(ticket, label).into_result().map_err(|e| self.hook_error(e))
    }

    /// Writes the adapter's online state (an error memory's sketch) to `path`
    /// atomically; kinds without state refuse with code `unsupported`.
    pub fn save_state(&self, path: &std::path::Path) -> Result<()> {
        let path = path.to_str().ok_or_else(|| Error::InvalidOption {
            detail: format!("state path {} is not valid UTF-8", path.display()),
        })?;
        self.object.save_state(RStr::from_str(path)).into_result().map_err(|e| self.hook_error(e))
    }

    /// Where the adapter's kind comes from.
    pub fn origin(&self) -> &KindOrigin {
        &self.origin
    }

    /// The fault that disabled this instance, if one did (see the module docs).
    pub fn disabled(&self) -> Option<&PluginFault> {
        self.disabled.get()
    }

    /// Refuses a disabled instance with [`Error::AdapterDisabled`].
    pub(crate) fn check_enabled(&self) -> Result<()> {
        match self.disabled() {
            None => Ok(()),
            Some(fault) => {
                Err(Error::AdapterDisabled { id: self.id.clone(), kind: self.kind.clone(), reason: fault.to_string() })
            }
        }
    }

    /// Whether the executor checks this adapter's hook output (plugin kinds).
    pub(crate) fn is_checked(&self) -> bool {
        self.origin.is_plugin()
    }

    /// Disables the instance after a hook wrote `value` at `(row, col)` of its output at
    /// `node` from finite inputs, and returns the run's error. The first fault sticks:
    /// threads that find one concurrently all report it.
    pub(crate) fn fault(&self, node: &str, hook: HookKind, row: usize, col: usize, value: f32) -> Error {
        let hook = match hook {
            HookKind::LinearDelta => "linear_delta",
            HookKind::Tap => "tap",
            HookKind::Post => "post",
        };
        let plugin = self.origin.path().map_or_else(|| "(built in)".to_string(), |p| p.display().to_string());
        let fault = self.disabled.get_or_init(|| PluginFault {
            plugin,
            kind: self.kind.clone(),
            id: self.id.clone(),
            node: node.into(),
            hook,
            row,
            col,
            value,
        });
        Error::PluginFault(Box::new(fault.clone()))
    }

    /// The adapter object, for the executor.
    pub(crate) fn object(&self) -> &AdapterBox {
        &self.object
    }

    /// The model it was validated against.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Converts an error returned by this adapter's hooks; for a kind loaded from a file
    /// the detail names the plugin file.
    pub(crate) fn hook_error(&self, e: PluginError) -> Error {
        let mut e = plugin_error(&self.id, &self.kind, e);
        if let (Some(path), Error::Adapter { detail, .. }) = (self.origin.path(), &mut e) {
            *detail = format!("{detail} (plugin {})", path.display());
        }
        e
    }
}

/// Refuses an adapter whose state-reading hooks ([`Target::READS_STATE`]) would run
/// before one of its taps: they would read state the tap has not written yet. Base taps
/// are exempt: when anything precedes them the host runs them in a prefix pass. Hooks run
/// in node order (dense inputs first), then delta, tap, post.
fn check_tap_order(g: &crate::graph::Graph, targets: &[Target]) -> core::result::Result<(), String> {
    let order = |t: &Target| {
        let slot = t.node as usize;
        let rank = if slot >= g.nodes.len() { 0 } else { slot + 1 };
        (rank, hook_index(t.hook))
    };
    let name = |t: &Target| g.nodes.get(t.node as usize).map_or("a dense input", |n| n.name.as_str()).to_string();
    let last_tap = targets.iter().filter(|t| t.hook == HookKind::Tap && !t.has(Target::BASE)).max_by_key(|t| order(t));
    let first_reader =
        targets.iter().filter(|t| t.hook != HookKind::Tap && t.has(Target::READS_STATE)).min_by_key(|t| order(t));
    match (last_tap, first_reader) {
        (Some(tap), Some(reader)) if order(reader) < order(tap) => Err(format!(
            "its {:?} at `{}` runs before its tap at `{}`, so it would read state the tap has not written \
             (tap an earlier node, or flag the tap BASE)",
            reader.hook,
            name(reader),
            name(tap)
        )),
        _ => Ok(()),
    }
}

/// The metadata key of a graft adapter file's configuration (a JSON object whose `kind`
/// names the adapter kind).
pub const ADAPTER_METADATA_KEY: &str = "graft.adapter";

/// The largest safetensors header [`detect_kind`] reads.
const MAX_HEADER: u64 = 64 << 20;

/// The adapter kind of `path`: `lora` for a directory with `adapter_config.json` (PEFT),
/// else the `kind` in a safetensors file's `graft.adapter` metadata. Reads the header only.
pub fn detect_kind(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let io = |e: std::io::Error| Error::Io { path: path.display().to_string(), source: e };
    let bad = |detail: String| Error::InvalidOption { detail: format!("{}: {detail}", path.display()) };
    if path.is_dir() {
        return if path.join("adapter_config.json").is_file() {
            Ok("lora".into())
        } else {
            Err(bad("a directory without adapter_config.json is not a PEFT adapter".into()))
        };
    }
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| bad("too short for a safetensors header".into()))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER {
        return Err(bad(format!("safetensors header of {len} bytes (at most {MAX_HEADER})")));
    }
    let mut header = Vec::new();
    file.take(len).read_to_end(&mut header).map_err(io)?;
    if header.len() as u64 != len {
        return Err(bad("truncated safetensors header".into()));
    }
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(format!("safetensors header is not JSON: {e}")))?;
    let config = header
        .get("__metadata__")
        .and_then(|m| m.get(ADAPTER_METADATA_KEY))
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| bad(format!("no `{ADAPTER_METADATA_KEY}` metadata: not a graft adapter file")))?;
    let config: serde_json::Value =
        serde_json::from_str(config).map_err(|e| bad(format!("`{ADAPTER_METADATA_KEY}` is not JSON: {e}")))?;
    config
        .get("kind")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad(format!("`{ADAPTER_METADATA_KEY}` has no \"kind\"")))
}

/// A ticket an adapter issued for one row of a run (an error memory's pending
/// prediction). Pass the row's observed label back with [`Ticket::feedback`]; the label
/// reaches the adapter instance that made the prediction, even if the id has since been
/// replaced.
#[derive(Clone, Copy, Debug)]
pub struct Ticket<'a> {
    /// The row of the batch.
    pub row: usize,
    /// The adapter that issued it.
    pub adapter: &'a Arc<LoadedAdapter>,
    /// The adapter's ticket value (nonzero).
    pub value: u64,
}

impl Ticket<'_> {
    /// Feeds the row's observed label back to the adapter.
    pub fn feedback(&self, label: f32) -> Result<()> {
        self.adapter.feedback(self.value, label)
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
    /// Swapped, like adapters, when a plugin adds a kind; readers never wait.
    kinds: ArcSwap<Kinds>,
    modules: ModuleMap,
    current: ArcSwap<Snapshot>,
    /// Serializes writers (readers never take it).
    writer: Mutex<()>,
}

impl core::fmt::Debug for Registry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Registry")
            .field("kinds", &**self.kinds.load())
            .field("adapters", &self.snapshot().ids())
            .finish()
    }
}

static VERSIONS: AtomicU64 = AtomicU64::new(1);

/// The most per-row run state an adapter may ask for (16 Mi floats = 64 MiB per row).
const MAX_STATE_FLOATS: usize = 1 << 24;

impl Registry {
    /// An empty registry for `model` with the built-in kinds.
    pub fn new(model: &Model) -> Registry {
        Registry::with_kinds(model, Kinds::builtin())
    }

    /// An empty registry for `model` with the given kinds.
    pub fn with_kinds(model: &Model, kinds: Kinds) -> Registry {
        Registry {
            model: model.clone(),
            kinds: ArcSwap::from_pointee(kinds),
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

    /// The kinds this registry can load (a snapshot: a later plugin load does not
    /// change it).
    pub fn kinds(&self) -> Arc<Kinds> {
        self.kinds.load_full()
    }

    /// Loads the plugin at `path` (see [`Kinds::load_plugin`]) and makes its kind
    /// available to later loads. Refuses a kind whose name is already taken.
    pub fn load_plugin(&self, path: impl AsRef<std::path::Path>) -> Result<KindInfo> {
        // Opening the library runs its code: do it before taking the writer lock.
        let kind = super::plugin::open(path.as_ref())?;
        let _writer = self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut kinds = Kinds::clone(&self.kinds.load());
        let info = kinds.add(kind)?;
        self.kinds.store(Arc::new(kinds));
        Ok(info)
    }

    /// The current snapshot; hold it for as long as a consistent view is needed.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Loads an adapter of `kind` from `source` (a PEFT directory for `lora`) and
    /// validates it against the model. Nothing is published: pass the result to
    /// [`insert`](Self::insert) or [`replace`](Self::replace).
    pub fn load(&self, kind: &str, id: &str, source: &str, options: &str) -> Result<Arc<LoadedAdapter>> {
        // A clone of the kind: no lock is held while its code runs.
        let module = self.kinds.load().require(kind)?;
        let view = HostModelView::new(&self.model, &self.modules);
        let request =
            LoadRequest { id: RStr::from_str(id), source: RStr::from_str(source), options: RStr::from_str(options) };
        match module.load(request, ModelView_TO::from_ptr(&view, TD_Opaque)) {
            Ok(object) => self.adopt_from(id, kind, object, module.origin()),
            Err(e) => Err(plugin_error(id, kind, e)),
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

    /// Loads an adapter from a path of any registered kind, detected by
    /// [`detect_kind`]: a PEFT directory is `lora`; a safetensors file names its kind in
    /// its `graft.adapter` metadata.
    pub fn load_path(&self, id: &str, path: impl AsRef<std::path::Path>, options: &str) -> Result<Arc<LoadedAdapter>> {
        let path = path.as_ref();
        let kind = detect_kind(path)?;
        let source = path.to_str().ok_or_else(|| Error::InvalidOption {
            detail: format!("adapter path {} is not valid UTF-8", path.display()),
        })?;
        self.load(&kind, id, source, options)
    }

    /// Wraps an adapter object a kind produced (e.g. from bytes rather than files),
    /// checking that its targets exist in this model and fit their hooks. The adapter's
    /// output is checked (see the module docs) when `kind` names a plugin kind of this
    /// registry.
    pub fn adopt(&self, id: &str, kind: &str, object: AdapterBox) -> Result<Arc<LoadedAdapter>> {
        let origin = self.kinds.load().get(kind).map_or(KindOrigin::BuiltIn, |k| k.origin());
        self.adopt_from(id, kind, object, origin)
    }

    fn adopt_from(&self, id: &str, kind: &str, object: AdapterBox, origin: KindOrigin) -> Result<Arc<LoadedAdapter>> {
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
        let slots = g.nodes.len() + g.inputs.len();
        let mut by_slot = vec![[NO_TARGET; 3]; slots];
        for (i, t) in targets.iter().enumerate() {
            let slot = t.node as usize;
            let (name, fits) = if let Some(node) = g.nodes.get(slot) {
                // Hooks see `[rows, width]` f32 views: i64 values have none.
                if node.dtype == crate::graph::ValueType::I64 {
                    return Err(bad(format!(
                        "target {i}: {:?} cannot attach to i64 node `{}` (hooks see f32 values only)",
                        t.hook, node.name
                    )));
                }
                let fits = match t.hook {
                    HookKind::LinearDelta => matches!(node.op, Op::Linear { .. }),
                    // A reshape of a node shares its input's memory: a Post there would
                    // also rewrite the input as its other consumers see it.
                    HookKind::Post => {
                        !(matches!(node.op, Op::Reshape) && matches!(node.inputs[..], [crate::graph::ValueId::Node(_)]))
                    }
                    HookKind::Tap => true,
                };
                (format!("{} node `{}`", node.op.name(), node.name), fits)
            } else if let Some(input) = g.inputs.get(slot - g.nodes.len()) {
                let dense = matches!(input.kind, InputKind::Dense { .. });
                (format!("input `{}`", input.name), dense && t.hook == HookKind::Tap)
            } else {
                return Err(bad(format!("target {i}: no node or input {}", t.node)));
            };
            if !fits {
                return Err(bad(format!("{:?} cannot attach to {name}", t.hook)));
            }
            let entry = &mut by_slot[slot][hook_index(t.hook)];
            if *entry != NO_TARGET {
                return Err(bad(format!("two {:?} targets at {name}", t.hook)));
            }
            *entry = i as u32;
        }
        check_tap_order(g, &targets).map_err(bad)?;
        let state_floats = object.state_floats();
        // The host allocates rows × state floats per run: refuse absurd claims up front.
        if state_floats > MAX_STATE_FLOATS {
            return Err(bad(format!("{state_floats} floats of per-row state (at most {MAX_STATE_FLOATS})")));
        }
        Ok(Arc::new(LoadedAdapter {
            id: id.into(),
            kind: kind.into(),
            version: VERSIONS.fetch_add(1, Ordering::Relaxed),
            object,
            targets,
            by_slot,
            state_floats,
            info,
            model: self.model.clone(),
            origin,
            disabled: OnceLock::new(),
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
        #[cfg(feature = "cuda")]
        crate::engine::cuda::preload(&adapter);
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
        #[cfg(feature = "cuda")]
        crate::engine::cuda::preload(&adapter);
        self.publish(|map| match map.get_mut(adapter.id()) {
            Some(slot) => Ok(core::mem::replace(slot, adapter)),
            None => Err(Error::UnknownAdapter { id: adapter.id.clone(), known: "(use insert for a new id)".into() }),
        })
    }

    /// Inserts or replaces; returns the previous adapter under the id, if any.
    pub fn upsert(&self, adapter: Arc<LoadedAdapter>) -> Result<Option<Arc<LoadedAdapter>>> {
        self.check_model(&adapter)?;
        #[cfg(feature = "cuda")]
        crate::engine::cuda::preload(&adapter);
        self.publish(|map| Ok(map.insert(Arc::from(adapter.id()), adapter)))
    }

    /// Unpublishes an id; returns the adapter.
    pub fn remove(&self, id: &str) -> Result<Arc<LoadedAdapter>> {
        self.publish(|map| {
            map.remove(id).ok_or_else(|| Error::UnknownAdapter { id: id.into(), known: "(not registered)".into() })
        })
    }
}
