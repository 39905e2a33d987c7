//! `graft_registry`: the adapters of one model, swapped while other threads serve.
//!
//! A registry publishes immutable snapshots: loads, replaces and removes build the next
//! snapshot and publish it atomically, and a run keeps the snapshot its row assignment
//! was made from, so a swap never changes a batch in flight. Plugin libraries stay
//! mapped for the life of the process (their kinds may have live adapters anywhere).

use core::ffi::c_char;
use std::sync::Arc;

use graft_rt::adapters::{LoadedAdapter, Registry};

use crate::boundary::{
    Handle, Out, Outcome, arg_ref, arg_str, call, free_handle, get, into_handle, opt_str, opt_struct,
};
use crate::model::graft_model;
use crate::status::graft_status;

/// The adapters of one model.
///
/// Lifetime: valid until `graft_registry_free`; row assignments made from it keep what
/// they need alive, so it may be freed before them.
/// Thread-safety: every function may be called from any number of threads at once;
/// writers are serialized and readers never wait.
#[derive(Debug)]
pub struct graft_registry {
    pub(crate) registry: Arc<Registry>,
    /// Keeps the model's input and output names valid while the registry lives.
    _names: Arc<crate::model::Names>,
}

impl Handle for graft_registry {
    const TAG: u64 = 0x6772_6166_7452_6567;
    const NAME: &'static str = "graft_registry";
}

/// How `graft_registry_insert` / `graft_registry_replace` read an adapter.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct graft_adapter_params {
    /// The adapter kind (`"lora"`, `"ssf-pool"`, `"error-memory"`, `"routing"`, or a
    /// plugin's kind); NULL detects it: a directory is a PEFT LoRA, a safetensors file
    /// names its kind in its `graft.adapter` metadata.
    pub kind: *const c_char,
    /// Kind-specific options as a JSON object (e.g. `{"state": "memory.state"}` for an
    /// error memory); NULL for none.
    pub options: *const c_char,
}

/// The defaults: kind detected from the file, no options.
#[unsafe(no_mangle)]
pub extern "C" fn graft_adapter_default_params() -> graft_adapter_params {
    graft_adapter_params { kind: core::ptr::null(), options: core::ptr::null() }
}

/// Creates an empty registry for `model` with the built-in kinds.
///
/// # Safety
/// `model` is a live model; `out` points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_registry_new(model: *const graft_model, out: *mut *mut graft_registry) -> graft_status {
    call("graft_registry_new", || {
        let out = Out::new(out, "out")?;
        // SAFETY: the caller's contract.
        let model = unsafe { arg_ref(model, "model") }?;
        out.write(into_handle(graft_registry {
            registry: Arc::new(Registry::new(&model.model)),
            _names: model.names.clone(),
        }));
        Ok(())
    })
}

/// Frees a registry. NULL is a no-op. Adapters still used by row assignments or tickets
/// live on until those are freed.
///
/// # Safety
/// `registry` is NULL or a registry from this library not yet freed, used by no other
/// thread now.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_registry_free(registry: *mut graft_registry) {
    free_handle(registry);
}

/// Loads the adapter-kind plugin at `path` (a Rust abi_stable library or a C library
/// exporting `graft_plugin_entry`) and makes its kind available to later loads.
///
/// # Safety
/// `registry` is a live registry; `path` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_registry_load_plugin(
    registry: *const graft_registry,
    path: *const c_char,
) -> graft_status {
    call("graft_registry_load_plugin", || {
        // SAFETY: the caller's contract.
        let (registry, path) = unsafe { (arg_ref(registry, "registry")?, arg_str(path, "path")?) };
        registry.registry.load_plugin(path)?;
        Ok(())
    })
}

/// Reads the adapter at `path` and checks it against the model; publishes nothing.
///
/// # Safety
/// As for the exported functions that call it.
unsafe fn load<'a>(
    registry: *const graft_registry,
    id: *const c_char,
    path: *const c_char,
    params: *const graft_adapter_params,
) -> Outcome<(crate::boundary::Shared<'a, graft_registry>, Arc<LoadedAdapter>)> {
    // SAFETY: the caller's contract.
    let (registry, id, path, params) = unsafe {
        (arg_ref(registry, "registry")?, arg_str(id, "id")?, arg_str(path, "path")?, opt_struct(params, "params")?)
    };
    let params = params.copied().unwrap_or_else(|| graft_adapter_default_params());
    // SAFETY: strings in the params follow the same contract as the arguments.
    let (kind, options) = unsafe { (opt_str(params.kind, "params.kind")?, opt_str(params.options, "params.options")?) };
    let options = options.unwrap_or("");
    let adapter = match kind {
        Some(kind) => registry.registry.load(kind, id, path, options)?,
        None => registry.registry.load_path(id, path, options)?,
    };
    Ok((registry, adapter))
}

/// Loads the adapter at `path` (a PEFT directory or a kind's safetensors file) and
/// publishes it under the new id `id`. Fails with `GRAFT_STATUS_ADAPTER_ID_CONFLICT` if
/// the id is taken. `params` may be NULL (defaults).
///
/// # Safety
/// `registry` is a live registry; `id`, `path` NUL-terminated strings; `params` NULL or
/// a valid params struct whose strings are NULL or NUL-terminated.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_registry_insert(
    registry: *const graft_registry,
    id: *const c_char,
    path: *const c_char,
    params: *const graft_adapter_params,
) -> graft_status {
    call("graft_registry_insert", || {
        // SAFETY: the caller's contract.
        let (registry, adapter) = unsafe { load(registry, id, path, params) }?;
        registry.registry.insert(adapter)?;
        Ok(())
    })
}

/// Loads the adapter at `path` and swaps it in under the existing id `id` (hot swap).
/// Runs already using the old version finish with it; later row assignments see the new
/// one. Fails with `GRAFT_STATUS_ADAPTER_ID_CONFLICT` if the id is not registered.
///
/// # Safety
/// As `graft_registry_insert`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_registry_replace(
    registry: *const graft_registry,
    id: *const c_char,
    path: *const c_char,
    params: *const graft_adapter_params,
) -> graft_status {
    call("graft_registry_replace", || {
        // SAFETY: the caller's contract.
        let (registry, adapter) = unsafe { load(registry, id, path, params) }?;
        registry.registry.replace(adapter).map_err(|e| match e {
            graft_rt::Error::UnknownAdapter { id, .. } => {
                graft_rt::Error::AdapterId { id, detail: "is not registered; use graft_registry_insert".into() }
            }
            e => e,
        })?;
        Ok(())
    })
}

/// Unpublishes `id`. Runs and tickets holding the adapter keep it until they finish.
///
/// # Safety
/// `registry` is a live registry; `id` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_registry_remove(registry: *const graft_registry, id: *const c_char) -> graft_status {
    call("graft_registry_remove", || {
        // SAFETY: the caller's contract.
        let (registry, id) = unsafe { (arg_ref(registry, "registry")?, arg_str(id, "id")?) };
        registry.registry.remove(id)?;
        Ok(())
    })
}

/// Writes the number of published adapters to `*out`.
///
/// # Safety
/// `registry` is a live registry; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_registry_count(registry: *const graft_registry, out: *mut usize) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe { get("graft_registry_count", registry, "registry", out, |r| Ok(r.registry.snapshot().len())) }
}

/// Writes the generation of the current snapshot to `*out`: it grows by one with every
/// insert, replace and remove.
///
/// # Safety
/// `registry` is a live registry; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_registry_generation(registry: *const graft_registry, out: *mut u64) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe { get("graft_registry_generation", registry, "registry", out, |r| Ok(r.registry.snapshot().generation())) }
}

/// Saves the learned state of adapter `id` (an error memory's buckets) to `path`:
/// written to a temporary file, synced, then renamed, so a crash leaves the old file or
/// the new one. Load it back with the options `{"state": "<path>"}`. Kinds without
/// state fail with `GRAFT_STATUS_ADAPTER_INVALID`.
///
/// # Safety
/// `registry` is a live registry; `id`, `path` NUL-terminated strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_registry_save_state(
    registry: *const graft_registry,
    id: *const c_char,
    path: *const c_char,
) -> graft_status {
    call("graft_registry_save_state", || {
        // SAFETY: the caller's contract.
        let (registry, id, path) =
            unsafe { (arg_ref(registry, "registry")?, arg_str(id, "id")?, arg_str(path, "path")?) };
        registry.registry.snapshot().require(id)?.save_state(std::path::Path::new(path))?;
        Ok(())
    })
}
