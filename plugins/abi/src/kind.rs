//! Helpers for writing an adapter kind: the pieces every kind needs around its own logic.
//!
//! A kind must never let a panic unwind across the boundary (that is undefined behaviour
//! for an `extern "C"` entry point, and would take the host down with it), and every kind
//! exports the same root module around its loader. Both are easy to get subtly wrong, so
//! they live here once: [`guard`] for hook bodies, [`guard_load`] for the loader, and
//! [`adapter_kind_module!`](crate::adapter_kind_module) for the root module. A kind that
//! needs something else (its own panic message, another `abi_version`) builds the same
//! thing from [`guard_with`] and [`into_adapter_box`].

use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::RResult;

use crate::{Adapter, Adapter_TO, AdapterBox, ErrorCode, LoadRequest, ModelViewRef, PluginError};

/// Runs `f`, turning a panic into the error `on_panic` builds, so that it never crosses
/// the boundary. `on_panic` runs only after a panic: the normal path allocates nothing.
pub fn guard_with<T>(
    on_panic: impl FnOnce() -> PluginError,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.into(),
        Err(_) => RResult::RErr(on_panic()),
    }
}

/// Runs a hook body `f` of the kind named `kind`, turning a panic into an
/// [`ErrorCode::INTERNAL`] error whose field is `what` (the hook: `"linear_delta"`,
/// `"tap"`, …). Wrap every [`Adapter`] method that does work in it.
///
/// ```
/// use graft_plugin_abi::{ErrorCode, PluginError, guard};
///
/// let ok = guard("mine", "tap", || Ok::<_, PluginError>(1));
/// assert_eq!(ok.into_result(), Ok(1));
/// let e = guard("mine", "tap", || -> Result<(), PluginError> { panic!("a bug") }).into_result().unwrap_err();
/// assert_eq!((e.code, e.field.as_str()), (ErrorCode::INTERNAL, "tap"));
/// assert_eq!(e.message.as_str(), "the mine kind panicked (a bug); the call was abandoned");
/// ```
pub fn guard<T>(kind: &str, what: &str, f: impl FnOnce() -> Result<T, PluginError>) -> RResult<T, PluginError> {
    guard_with(
        || {
            PluginError::new(
                ErrorCode::INTERNAL,
                what,
                format!("the {kind} kind panicked (a bug); the call was abandoned"),
            )
        },
        f,
    )
}

/// Boxes a loaded adapter as the object [`AdapterKindMod::load`](crate::AdapterKindMod::load)
/// returns (opaque: the host cannot downcast it).
pub fn into_adapter_box<A: Adapter + 'static>(adapter: A) -> AdapterBox {
    Adapter_TO::from_value(adapter, TD_Opaque)
}

/// The body of a kind's `load` entry point: runs `loader` on the request, boxes what it
/// loaded, and turns a panic into an [`ErrorCode::INTERNAL`] error naming the source.
/// [`adapter_kind_module!`](crate::adapter_kind_module) calls it for you.
pub fn guard_load<A: Adapter + 'static>(
    kind: &str,
    request: LoadRequest<'_>,
    model: ModelViewRef<'_>,
    loader: impl FnOnce(&LoadRequest<'_>, &ModelViewRef<'_>) -> Result<A, PluginError>,
) -> RResult<AdapterBox, PluginError> {
    guard_with(
        || {
            PluginError::new(
                ErrorCode::INTERNAL,
                request.source.as_str(),
                format!("the {kind} kind panicked while loading (a bug); nothing was loaded"),
            )
        },
        || loader(&request, &model).map(into_adapter_box),
    )
}

/// Defines a kind's root module: `pub fn module() -> AdapterKindModRef` (built on first
/// use, then shared) for static linking, and, when the calling crate's `plugin` feature
/// is on, the exported `graft_adapter_kind_root` symbol that makes its `cdylib` loadable
/// as a plugin.
///
/// - `kind`: the kind's name, a `&'static str` expression (usually a `KIND` constant).
/// - `load`: the loader, a path to a
///   `fn(&LoadRequest<'_>, &ModelViewRef<'_>) -> Result<A, PluginError>` where `A` is the
///   kind's [`Adapter`]. It runs inside [`guard_load`].
///
/// The module claims [`ABI_VERSION`](crate::ABI_VERSION). A kind that needs another
/// `abi_version` or its own panic message writes the same few items by hand from
/// [`guard_with`] and [`into_adapter_box`] (see the `faulty` example kind).
///
/// The `plugin` feature is the calling crate's: declare it in its `Cargo.toml` (off by
/// default, since two statically linked kinds exporting the symbol would collide). The
/// crate must also depend on `abi_stable` itself, whose `export_root_module` the export
/// uses.
///
/// ```ignore
/// pub const KIND: &str = "mine";
///
/// fn load_file(request: &LoadRequest<'_>, model: &ModelViewRef<'_>) -> Result<MyAdapter, PluginError> {
///     /* … */
/// }
///
/// graft_plugin_abi::adapter_kind_module!(kind = KIND, load = load_file);
/// ```
#[macro_export]
macro_rules! adapter_kind_module {
    (kind = $kind:expr, load = $load:path $(,)?) => {
        /// The kind's root module, for static linking (built on first use, then shared).
        pub fn module() -> $crate::AdapterKindModRef {
            // Names the caller's `kind` and `load` paths cannot collide with.
            extern "C" fn graft_kind_name() -> $crate::abi_stable::std_types::RStr<'static> {
                $crate::abi_stable::std_types::RStr::from_str($kind)
            }

            extern "C" fn graft_kind_load(
                request: $crate::LoadRequest<'_>,
                model: $crate::ModelViewRef<'_>,
            ) -> $crate::abi_stable::std_types::RResult<$crate::AdapterBox, $crate::PluginError> {
                $crate::guard_load($kind, request, model, $load)
            }

            static GRAFT_KIND_MODULE: ::std::sync::OnceLock<$crate::AdapterKindModRef> = ::std::sync::OnceLock::new();
            *GRAFT_KIND_MODULE.get_or_init(|| {
                $crate::abi_stable::prefix_type::PrefixTypeTrait::leak_into_prefix($crate::AdapterKindMod {
                    abi_version: $crate::ABI_VERSION,
                    kind: graft_kind_name,
                    load: graft_kind_load,
                })
            })
        }

        /// The exported root module of the `plugin` build.
        #[cfg(feature = "plugin")]
        #[$crate::abi_stable::export_root_module]
        pub fn graft_adapter_kind_root() -> $crate::AdapterKindModRef {
            module()
        }
    };
}
