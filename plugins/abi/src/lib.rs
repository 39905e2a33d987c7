//! # graft-plugin-abi
//!
//! The one interface between graft and adapter kinds. An adapter kind (LoRA, SSF, a
//! third-party kind) is a [`AdapterKindMod`] root module: a prefix-type vtable that only
//! ever grows at the end, so a host built against version *n* loads a kind built against
//! *n + k* and the other way round (a field the other side lacks reads as `None`). The
//! host asks the kind to [`load`](AdapterKindMod::load) an adapter against a
//! [`ModelView`]; what comes back is an [`Adapter`] object, whose hooks the host calls
//! once per (hook point, row group) with row-major views into its arena.
//!
//! Why abi_stable rather than plain `extern "C"`: the layout of every type crossing the
//! boundary is checked when a library is loaded, so a kind built against an incompatible
//! interface is refused with an error instead of corrupting memory. The built-in kinds
//! link statically and still go through exactly these types: there is no private path
//! that a third-party kind could not take.
//!
//! Nothing here depends on the runtime; the runtime and every kind depend on this crate.
//!
//! ## Writing a kind
//! A kind implements [`Adapter`] for its adapter type, writes a loader
//! `fn(&LoadRequest<'_>, &ModelViewRef<'_>) -> Result<A, PluginError>`, and declares its
//! root module with [`adapter_kind_module!`]. Every hook body runs inside [`guard`], so a
//! bug in the kind is an [`ErrorCode::INTERNAL`] error instead of an unwind across the
//! boundary. The `testing` feature (for `[dev-dependencies]`) adds [`testing`]: a fake
//! model, reference host kernels and assertions for testing a kind without a host.

#![warn(missing_docs)]
// `#[sabi_trait]` expands to impls inside a const block (abi_stable 0.11).
#![allow(non_local_definitions)]

mod error;
pub mod files;
mod kind;
pub mod mapguard;
#[cfg(feature = "testing")]
pub mod testing;
mod view;

use abi_stable::library::RootModule;
use abi_stable::sabi_types::{RRef, VersionStrings};
use abi_stable::std_types::{RBox, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec};
use abi_stable::{StableAbi, declare_root_module_statics, package_version_strings, sabi_trait};

pub use abi_stable;
pub use error::{ErrorCode, PluginError};
pub use kind::{guard, guard_load, guard_with, into_adapter_box};

pub use view::{ElemFormat, KernelStatus, MatView, MatViewMut, WeightView};

/// The version of the hook protocol. A host refuses kinds whose `abi_version` differs in
/// the major sense (semantics changed); layout compatibility is checked by abi_stable.
///
/// Version 2 added the `Tap` and `Post` hooks, per-row run state, feedback tickets and
/// state persistence (Adapters II). [`Adapter::device_params`] (GPU sessions) was appended
/// to the vtable later without a version change: it is optional, and its absence in an
/// older kind reads as its default (`UNSUPPORTED`). [`HostKernelsExt::linear_t`] extends the
/// kernel table without a version change too: a kind reads `None` from an older host and
/// falls back to [`HostKernels::linear`].
pub const ABI_VERSION: u32 = 2;

/// Where an adapter attaches. Every hook sees a node's *output* as the graph names it:
/// for a linear that is its pre-activation result (the activation is its own node even
/// when the engine fuses it), for an activation node the activated values.
///
/// At one node the host calls, per row group: every `LinearDelta`, then every `Tap`,
/// then every `Post`, each in the order of the row's adapter set.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookKind {
    /// `y = f(x, y)` right after the base linear at the node (before its activation).
    LinearDelta = 0,
    /// Read the node's output and write per-row run state (a query, a key, a routing
    /// decision). The node may be a graph input. With [`Target::BASE`] the host hands
    /// the base model's value, running a hook-free prefix pass when an earlier hook of
    /// the row's set would have changed it.
    Tap = 1,
    /// Transform the node's output in place, reading the per-row run state (SSF scale and
    /// shift, a routed tower's output, an error-memory compensation).
    Post = 2,
}

/// What a graph node is, as far as adapters care.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeOp {
    /// A linear layer `y = x·Wᵀ + b`, `W` stored `[out, in]`.
    Linear = 0,
    /// An embedding bag over a table `[rows, dim]`.
    EmbeddingBag = 1,
    /// Anything else (activations, concat, interactions…).
    Other = 2,
    /// A dense graph input (only a [`HookKind::Tap`] may attach to it).
    Input = 3,
}

/// A graph node an adapter file named, resolved by the host.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct NodeInfo {
    /// Node index, stable for the model's life.
    pub node: u32,
    /// The node's name in the graph (may differ from the module path that named it).
    pub name: RString,
    /// The node's operation.
    pub op: NodeOp,
    /// Input features (`W` columns) for a linear; table rows for a bag; 0 otherwise.
    pub in_features: usize,
    /// The width of the node's output (`W` rows for a linear).
    pub out_features: usize,
    /// Whether the base layer has a bias.
    pub has_bias: bool,
    /// The base weight's storage format name (`f32`, `f16`, `q8`, …).
    pub base_format: RString,
}

/// One attachment of an adapter: a hook at a node. An adapter has at most one target
/// per (node, hook).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub struct Target {
    /// The node (from [`NodeInfo::node`]).
    pub node: u32,
    /// The hook.
    pub hook: HookKind,
    /// Bit set of `Target::*` flags.
    pub flags: u32,
}

impl Target {
    /// A [`HookKind::Tap`] that must see the base model's value of its node, computed
    /// with no adapter hooks (FedIns queries).
    pub const BASE: u32 = 1;
    /// A `Post` or `LinearDelta` that reads run state written by the adapter's taps. The
    /// host refuses an adapter where such a hook would run before one of its (non-base)
    /// taps, instead of letting it read zeroed state.
    pub const READS_STATE: u32 = 2;

    /// A target with no flags.
    pub fn new(node: u32, hook: HookKind) -> Target {
        Target { node, hook, flags: 0 }
    }

    /// The same target with `flag` set.
    pub fn with(self, flag: u32) -> Target {
        Target { flags: self.flags | flag, ..self }
    }

    /// Whether `flag` is set.
    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }
}

/// A human-readable summary of one attachment, for `graft adapter inspect`.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct TargetInfo {
    /// The module path the adapter file used.
    pub module: RString,
    /// The graph node it resolved to.
    pub node: RString,
    /// Rank (0 where the kind has none).
    pub rank: u32,
    /// The effective scale the kind applies (before any per-request multiplier).
    pub scale: f32,
    /// Kind-specific variant (`lora`, `rslora`, `dora`, …).
    pub variant: RString,
    /// Bytes of adapter parameters for this attachment.
    pub bytes: u64,
}

/// A summary of a loaded adapter.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct AdapterInfo {
    /// The kind's name.
    pub kind: RString,
    /// Where it was loaded from.
    pub source: RString,
    /// One entry per attachment, in [`Adapter::targets`] order.
    pub targets: RVec<TargetInfo>,
    /// Bytes of parameters mapped from files (not copied).
    pub mapped_bytes: u64,
    /// Bytes the adapter allocated (caches such as DoRA norms).
    pub owned_bytes: u64,
    /// Free-form `key=value` notes (format version, source library, …).
    pub notes: RVec<RString>,
}

/// Whether the operands of a host linear call agree: `x` is `rows × k` and `y` is
/// `rows × n`, for a weight `W` of `n × k` ([`HostKernels::linear`]) or a transposed
/// weight `Wt` of `k × n` ([`HostKernelsExt::linear_t`]). Kernels answer
/// [`KernelStatus::SHAPE_MISMATCH`] when not.
pub fn linear_shapes_agree(x: &MatView<'_>, n: usize, k: usize, y: &MatViewMut<'_>) -> bool {
    x.cols() == k && y.cols() == n && x.rows() == y.rows()
}

/// Host kernels handed to adapters, already dispatched to the best instruction set.
/// Calls are single-threaded and allocation-free: the host parallelizes across row
/// chunks and hands each call its own scratch.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostKernelsRef)))]
pub struct HostKernels {
    /// The instruction-set level (`scalar`, `avx2`, `neon`, …).
    pub level: extern "C" fn() -> RStr<'static>,
    /// Floats of scratch one [`linear`](Self::linear) call over `rows` rows of `w` needs.
    pub scratch_floats: extern "C" fn(w: WeightView<'_>, rows: usize) -> usize,
    /// `y = alpha · x·Wᵀ`, or `y += alpha · x·Wᵀ` with `accumulate`. `x` is
    /// `rows × w.cols`, `y` is `rows × w.rows`; per-row results do not depend on `rows`.
    /// Products and sums are real f32 arithmetic (no TF32/bf16 shortcuts for f32 weights),
    /// so a kind may bound the error of a result by the usual `γ_n` of f32 dot products
    /// (the FedIns and routing kinds certify their selections with it).
    #[sabi(last_prefix_field)]
    pub linear: extern "C" fn(
        x: MatView<'_>,
        w: WeightView<'_>,
        alpha: f32,
        accumulate: bool,
        y: MatViewMut<'_>,
        scratch: RSliceMut<'_, f32>,
    ) -> KernelStatus,
}

/// The host kernel table as hosts build it now: [`HostKernels`] with fields appended at the
/// end. Kinds receive it as a [`HostKernelsRef`] and read the appended fields through
/// [`HostKernelsRef::linear_t`], which returns `None` for a table an older host built.
///
/// Why a second type instead of new fields on [`HostKernels`]: abi_stable's load-time
/// layout check lets a library's prefix type have *more* fields than the host's, never
/// fewer. [`HostKernels`] sits in the signatures a plugin is checked against, so growing
/// it would make every host refuse the kinds built before the growth. It stays frozen;
/// this table carries the growth and is never named in a signature, so kinds of every
/// age load, and the appended fields are found at run time from the accessibility bits
/// abi_stable stores with every table (the same mechanism its own accessors use).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostKernelsExtRef)))]
pub struct HostKernelsExt {
    /// As [`HostKernels::level`].
    pub level: extern "C" fn() -> RStr<'static>,
    /// As [`HostKernels::scratch_floats`].
    pub scratch_floats: extern "C" fn(w: WeightView<'_>, rows: usize) -> usize,
    /// As [`HostKernels::linear`].
    #[sabi(last_prefix_field)]
    pub linear: extern "C" fn(
        x: MatView<'_>,
        w: WeightView<'_>,
        alpha: f32,
        accumulate: bool,
        y: MatViewMut<'_>,
        scratch: RSliceMut<'_, f32>,
    ) -> KernelStatus,
    /// `y = alpha · x·Wt`, or `y += alpha · x·Wt` with `accumulate`, for a weight a kind
    /// keeps transposed: `wt` is `x.cols × y.cols` (`Wt[k, o] = W[o, k]`). A low-rank
    /// kind transposes its up-projection once at load and expands through this, instead
    /// of having [`linear`](HostKernels::linear) transpose a `K = rank` weight on every
    /// call. Outputs sit in the SIMD lanes and each is one sequential chain over `k` from
    /// zero (FMA at SIMD levels, multiply-then-add at the scalar level), then scaled by
    /// `alpha` and stored or added, so per-row results do not depend on `rows` and the
    /// error bound is the usual `γ_K`. No scratch.
    pub linear_t:
        extern "C" fn(x: MatView<'_>, wt: MatView<'_>, alpha: f32, accumulate: bool, y: MatViewMut<'_>) -> KernelStatus,
}

/// [`HostKernelsExt::linear_t`]'s signature.
pub type LinearTFn =
    extern "C" fn(x: MatView<'_>, wt: MatView<'_>, alpha: f32, accumulate: bool, y: MatViewMut<'_>) -> KernelStatus;

impl HostKernelsExtRef {
    /// The table as kinds receive it.
    pub fn as_host_kernels(self) -> HostKernelsRef {
        // SAFETY: `HostKernelsExt` is `repr(C)` and its prefix fields (up to
        // `last_prefix_field`) are exactly `HostKernels`'s, so every prefix read through
        // the returned reference reads the same field at the same offset; the metadata
        // header in front of the table does not depend on the table's type.
        HostKernelsRef(unsafe { self.0.cast() })
    }
}

impl HostKernelsRef {
    /// [`HostKernelsExt::linear_t`], if the host that built this table has it (`None` for
    /// a table built by a host older than it).
    pub fn linear_t(self) -> Option<LinearTFn> {
        // SAFETY: the extended view serves one accessor call, which reads the table's own
        // accessibility bits (recorded by whichever type built it) and reads the field
        // only when its builder had it — that is, when the table was built as a
        // `HostKernelsExt`, whose layout this view then matches exactly.
        HostKernelsExtRef(unsafe { self.0.cast() }).linear_t()
    }
}

/// The model as an adapter sees it while it is being loaded.
#[sabi_trait]
pub trait ModelView {
    /// Resolves a module path from an adapter file (`top_fc1`, `encoder.layer.0.fc`) to a
    /// node, with the host's name mapping and overrides. Unknown paths are an error
    /// naming the path.
    fn resolve(&self, module_path: RStr<'_>) -> RResult<NodeInfo, PluginError>;

    /// Writes row `row` of the node's base weight, dequantized to f32, into `out`
    /// (`in_features` values).
    fn base_weight_row(&self, node: u32, row: usize, out: RSliceMut<'_, f32>) -> RResult<(), PluginError>;

    /// The node's base bias, if it has one.
    fn base_bias(&self, node: u32) -> ROption<RSlice<'_, f32>>;

    /// A fingerprint of the model: graft's host returns XXH64 of every byte of the
    /// container (graph, tensor index and all weights), computed on first call. Persistent
    /// adapter state records it and refuses to restore against another model.
    #[sabi(last_prefix_field)]
    fn fingerprint(&self) -> u64;
}

/// A [`ModelView`] borrowed for one `load` call.
pub type ModelViewRef<'a> = ModelView_TO<'a, RRef<'a, ()>>;

/// One `linear_delta` call: a contiguous (or host-gathered) group of rows that share an
/// adapter set, at one target.
#[repr(C)]
#[derive(StableAbi)]
pub struct LinearDelta<'a> {
    /// Index into [`Adapter::targets`].
    pub target: u32,
    /// The layer input, `rows × in_features`.
    pub x: MatView<'a>,
    /// The layer output so far (base result plus earlier adapters of the row's set),
    /// `rows × out_features`; the hook updates it in place.
    pub y: MatViewMut<'a>,
    /// The base layer's bias, if any.
    pub base_bias: ROption<RSlice<'a, f32>>,
    /// Per-request multiplier on the adapter's own scale (PEFT `set_scale` semantics).
    pub scale: f32,
    /// The rows' run state (`rows × state_floats`), as earlier taps left it.
    pub state: MatView<'a>,
    /// Host kernels.
    pub kernels: HostKernelsRef,
    /// At least [`Adapter::scratch_floats`]`(target, rows)` floats.
    pub scratch: RSliceMut<'a, f32>,
}

/// One `tap` call: a group of rows' values at a node, to turn into run state.
#[repr(C)]
#[derive(StableAbi)]
pub struct Tap<'a> {
    /// Index into [`Adapter::targets`].
    pub target: u32,
    /// The node's output for these rows, `rows × out_features`.
    pub x: MatView<'a>,
    /// The rows' run state, `rows × state_floats`, zeroed before the first tap of a run.
    pub state: MatViewMut<'a>,
    /// Per-request multiplier.
    pub scale: f32,
    /// Host kernels.
    pub kernels: HostKernelsRef,
    /// At least [`Adapter::scratch_floats`]`(target, rows)` floats.
    pub scratch: RSliceMut<'a, f32>,
}

/// One `post` call: a group of rows' values at a node, transformed in place.
#[repr(C)]
#[derive(StableAbi)]
pub struct Post<'a> {
    /// Index into [`Adapter::targets`].
    pub target: u32,
    /// The node's output for these rows, `rows × out_features`, updated in place.
    pub y: MatViewMut<'a>,
    /// The rows' run state, `rows × state_floats`.
    pub state: MatView<'a>,
    /// One ticket per row, 0 on entry. A kind that learns from feedback writes a nonzero
    /// ticket; the caller passes it back to [`Adapter::feedback`] with the label.
    pub tickets: RSliceMut<'a, u64>,
    /// Per-request multiplier.
    pub scale: f32,
    /// Host kernels.
    pub kernels: HostKernelsRef,
    /// At least [`Adapter::scratch_floats`]`(target, rows)` floats.
    pub scratch: RSliceMut<'a, f32>,
}

/// A loaded adapter instance: immutable once published, shared by every run that uses it
/// (a kind with online state, such as an error memory, synchronizes it internally and
/// never blocks a hook). Hooks are called concurrently from several threads, on disjoint
/// rows.
#[sabi_trait]
pub trait Adapter: Send + Sync + Debug {
    /// Where the adapter attaches; `target` indices in calls refer to this list.
    fn targets(&self) -> RVec<Target>;

    /// A summary for inspection and logs.
    fn info(&self) -> AdapterInfo;

    /// Floats of scratch a hook call (of any kind) at `target` over `rows` rows needs.
    fn scratch_floats(&self, target: u32, rows: usize, kernels: HostKernelsRef) -> usize;

    /// Applies the adapter at a [`HookKind::LinearDelta`] target.
    fn linear_delta(&self, call: LinearDelta<'_>) -> RResult<(), PluginError> {
        RResult::RErr(unsupported_hook("linear_delta", call.target))
    }

    /// Folds the adapter into the node's dequantized base weight `[out, in]` and bias
    /// (`out` values, zeros when the base has none), for an explicit merge.
    fn merge(&self, target: u32, weight: MatViewMut<'_>, bias: RSliceMut<'_, f32>) -> RResult<(), PluginError>;

    /// Floats of per-row state a run keeps for this adapter (0: none).
    fn state_floats(&self) -> usize {
        0
    }

    /// Applies the adapter at a [`HookKind::Tap`] target.
    fn tap(&self, call: Tap<'_>) -> RResult<(), PluginError> {
        RResult::RErr(unsupported_hook("tap", call.target))
    }

    /// Applies the adapter at a [`HookKind::Post`] target.
    fn post(&self, call: Post<'_>) -> RResult<(), PluginError> {
        RResult::RErr(unsupported_hook("post", call.target))
    }

    /// The observed label for a row that got `ticket` from [`post`](Self::post).
    fn feedback(&self, ticket: u64, label: f32) -> RResult<(), PluginError> {
        let _ = label;
        RResult::RErr(PluginError::new(
            ErrorCode::UNSUPPORTED,
            "",
            format!("ticket {ticket}: this kind takes no feedback"),
        ))
    }

    /// Writes the adapter's online state to `path` atomically (temporary file, fsync,
    /// rename). Kinds without state return [`ErrorCode::UNSUPPORTED`].
    #[sabi(last_prefix_field)]
    fn save_state(&self, path: RStr<'_>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(ErrorCode::UNSUPPORTED, path.as_str(), "this kind has no state to save"))
    }

    /// The parameters of `target` in a form a GPU host runs with its own kernels
    /// ([`DeviceParams`]), so the adapter never needs host hooks in the middle of a
    /// device graph. Appended after the first prefix (see the crate docs): a kind built
    /// before it has no entry, and the host gets this default, `UNSUPPORTED`, which makes
    /// a GPU session refuse rows using that kind with a typed error.
    fn device_params(&self, target: u32) -> RResult<DeviceParams, PluginError> {
        RResult::RErr(unsupported_hook("device_params", target))
    }
}

/// An adapter's parameters at one target, ready to upload to a device
/// ([`Adapter::device_params`]). Values are f32, row-major.
#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub enum DeviceParams {
    /// At a [`HookKind::LinearDelta`] target: `y += scale · m · (x·Aᵀ)·Bᵀ`, where `m` is
    /// the per-request multiplier (LoRA, rsLoRA, ALLoRA-style scales).
    LowRank {
        /// `A`, `rank × in_features`.
        a: RVec<f32>,
        /// `B`, `out_features × rank`.
        b: RVec<f32>,
        /// The rank.
        rank: u32,
        /// The adapter's own scale (before the per-request multiplier).
        scale: f32,
    },
    /// At a [`HookKind::Post`] target: `y ← γ' ⊙ y + β'` with `γ' = 1 + m(γ − 1)`,
    /// `β' = mβ` (`m = 1`: `γ ⊙ y + β`; `m = 0`: untouched) — static SSF.
    ScaleShift {
        /// `γ`, `out_features` values.
        gamma: RVec<f32>,
        /// `β`, `out_features` values.
        beta: RVec<f32>,
    },
}

fn unsupported_hook(hook: &str, target: u32) -> PluginError {
    PluginError::new(ErrorCode::UNSUPPORTED, "", format!("target {target}: this kind has no {hook} hook"))
}

/// An owned adapter object.
pub type AdapterBox = Adapter_TO<'static, RBox<()>>;

/// What to load: the adapter's id, its files, and kind-specific options.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct LoadRequest<'a> {
    /// The id it will be registered under (for error messages).
    pub id: RStr<'a>,
    /// A file or directory path, as the kind expects.
    pub source: RStr<'a>,
    /// A JSON object of kind-specific options, or empty.
    pub options: RStr<'a>,
}

/// The root module every adapter kind exports (the built-in kinds too).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = AdapterKindModRef)))]
pub struct AdapterKindMod {
    /// [`ABI_VERSION`] the kind was built against.
    pub abi_version: u32,
    /// The kind's name (`lora`, `ssf`, …), unique in a host.
    pub kind: extern "C" fn() -> RStr<'static>,
    /// Loads one adapter and validates it against the model.
    #[sabi(last_prefix_field)]
    pub load: extern "C" fn(request: LoadRequest<'_>, model: ModelViewRef<'_>) -> RResult<AdapterBox, PluginError>,
}

impl core::fmt::Debug for HostKernels {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostKernels").field("level", &(self.level)()).finish_non_exhaustive()
    }
}

impl core::fmt::Debug for HostKernelsExt {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostKernelsExt").field("level", &(self.level)()).finish_non_exhaustive()
    }
}

impl core::fmt::Debug for LinearDelta<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LinearDelta")
            .field("target", &self.target)
            .field("x", &self.x)
            .field("y", &self.y)
            .field("scale", &self.scale)
            .finish_non_exhaustive()
    }
}

impl core::fmt::Debug for Tap<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tap").field("target", &self.target).field("x", &self.x).finish_non_exhaustive()
    }
}

impl core::fmt::Debug for Post<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Post").field("target", &self.target).field("y", &self.y).finish_non_exhaustive()
    }
}

impl core::fmt::Debug for AdapterKindMod {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AdapterKindMod").field("abi_version", &self.abi_version).field("kind", &(self.kind)()).finish()
    }
}

impl RootModule for AdapterKindModRef {
    declare_root_module_statics! {AdapterKindModRef}
    const BASE_NAME: &'static str = "graft_adapter_kind";
    const NAME: &'static str = "graft adapter kind";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
