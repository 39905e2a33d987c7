//! # graft-plugin-faulty
//!
//! The `faulty` adapter kind misbehaves on purpose, so that the host's containment of
//! plugins can be tested: each failure a real plugin could have is one `mode`, and the host
//! must stay up, refuse or disable the adapter, and say which plugin failed and why.
//!
//! ## Source file
//! `LoadRequest.source` is a JSON file (at most 64 KiB):
//!
//! | key | type | default | meaning |
//! |---|---|---|---|
//! | `mode` | string | required | `"ok"`, `"error"`, `"panic"`, `"nan"` or `"panic_on_load"` |
//! | `module` | string | required | the node to attach to, resolved through the host |
//! | `hook` | string | `"linear_delta"` on a linear node, else `"post"` | `"linear_delta"` or `"post"` |
//!
//! Unknown keys are a `CONFIG` error naming the key. Load options must be `""` or `{}`.
//!
//! ## Modes (what every hook call does)
//! - `ok`: nothing (the output is left as it is: the adapter adds 0).
//! - `error`: returns a `BAD_CALL` error (`field` = `faulty`).
//! - `panic`: panics inside the hook; the kind's guard catches it and returns an
//!   `INTERNAL` error, as every well-behaved Rust kind must (a panic never unwinds across
//!   the ABI).
//! - `nan`: writes NaN into every value of `y`.
//! - `panic_on_load`: `load` itself panics; the root module's guard returns `INTERNAL`.
//!
//! ## Builds
//! - `--features plugin`: a loadable cdylib, `abi_version` = the current
//!   [`ABI_VERSION`].
//! - `--features old_abi` (implies `plugin`): the same library, but its root module claims
//!   `abi_version: 1`, which the host must refuse with a message naming the version.
//!   abi_stable's layout check passes (the types are today's); only the protocol version
//!   is old.

// `Adapter` is a `#[sabi_trait]`; its impl may expand to items the lint flags.
#![allow(non_local_definitions)]

mod adapter;
mod spec;

use std::sync::OnceLock;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RStr};
use graft_plugin_abi::{
    ABI_VERSION, AdapterBox, AdapterKindMod, AdapterKindModRef, ErrorCode, LoadRequest, ModelViewRef, PluginError,
    guard_with, into_adapter_box,
};

pub use adapter::FaultyAdapter;
pub use spec::{MAX_SOURCE_BYTES, Mode, Spec, load};

/// The kind's name.
pub const KIND: &str = "faulty";

/// The `abi_version` the exported module claims: 1 with `old_abi`, else the current one.
pub const CLAIMED_ABI_VERSION: u32 = if cfg!(feature = "old_abi") { 1 } else { ABI_VERSION };

// The root module is written out rather than declared with
// `graft_plugin_abi::adapter_kind_module!`: this kind claims another `abi_version` under
// `old_abi`, and its panic message names the mode that caused it, since the panic is the
// point here, not a bug.

extern "C" fn kind() -> RStr<'static> {
    RStr::from_str(KIND)
}

extern "C" fn load_entry(request: LoadRequest<'_>, model: ModelViewRef<'_>) -> RResult<AdapterBox, PluginError> {
    guard_with(
        || {
            PluginError::new(
                ErrorCode::INTERNAL,
                request.source.as_str(),
                "the faulty kind panicked while loading (mode panic_on_load); nothing was loaded",
            )
        },
        || load(&request, &model).map(into_adapter_box),
    )
}

/// The `faulty` kind's root module, claiming [`CLAIMED_ABI_VERSION`].
pub fn module() -> AdapterKindModRef {
    static MODULE: OnceLock<AdapterKindModRef> = OnceLock::new();
    *MODULE
        .get_or_init(|| AdapterKindMod { abi_version: CLAIMED_ABI_VERSION, kind, load: load_entry }.leak_into_prefix())
}

/// The exported root module of the `plugin` (or `old_abi`) build.
#[cfg(feature = "plugin")]
#[abi_stable::export_root_module]
pub fn graft_adapter_kind_root() -> AdapterKindModRef {
    module()
}
