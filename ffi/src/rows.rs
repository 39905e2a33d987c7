//! `graft_row_adapters`: which adapters each row of a batch uses.
//!
//! An assignment is resolved against the registry's snapshot when it is made (or
//! reset), so every row of a batch sees one consistent set of adapter versions even
//! while another thread swaps them. Rows that share a set are computed together.

use core::ffi::c_char;
use std::sync::Arc;

use graft_rt::adapters::{Registry, RowAdapters};

use crate::boundary::{
    Failure, Handle, Out, Outcome, arg_mut, arg_ref, arg_slice, arg_str, call, free_handle, get, into_handle,
};
use crate::registry::graft_registry;
use crate::status::graft_status;

/// A per-row adapter assignment for `graft_session_run`.
///
/// Lifetime: valid until `graft_row_adapters_free`; independent of the registry handle.
/// Thread-safety: several sessions may run with it at once while no thread modifies it;
/// the push and reset functions need exclusive use.
#[derive(Debug)]
pub struct graft_row_adapters {
    registry: Arc<Registry>,
    /// The stack every row uses, for a uniform assignment (re-resolved by reset).
    uniform: Option<Vec<(String, f32)>>,
    pub(crate) rows: RowAdapters,
}

impl Handle for graft_row_adapters {
    const TAG: u64 = 0x6772_6166_7452_6f77;
    const NAME: &'static str = "graft_row_adapters";
}

/// Reads a stack of `n` ids with their scales (NULL scales: all 1.0).
///
/// # Safety
/// `ids` points to `n` NUL-terminated strings; `scales` is NULL or points to `n` floats.
unsafe fn stack(ids: *const *const c_char, scales: *const f32, n: usize) -> Outcome<Vec<(String, f32)>> {
    // SAFETY: the caller's contract.
    let ids = unsafe { arg_slice(ids, n, "ids") }?;
    let scales = if scales.is_null() {
        None
    } else {
        // SAFETY: the caller's contract.
        Some(unsafe { arg_slice(scales, n, "scales") }?)
    };
    ids.iter()
        .enumerate()
        .map(|(k, &id)| {
            // SAFETY: the caller's contract.
            let id = unsafe { arg_str(id, &format!("ids[{k}]")) }?;
            let scale = scales.map_or(1.0, |s| s[k]);
            if !scale.is_finite() {
                return Err(Failure::invalid(&format!("scales[{k}]"), format!("{scale} is not finite")));
            }
            Ok((id.to_string(), scale))
        })
        .collect()
}

fn borrowed(set: &[(String, f32)]) -> Vec<(&str, f32)> {
    set.iter().map(|(id, s)| (id.as_str(), *s)).collect()
}

/// Creates an empty assignment (add rows in order with the push functions), resolved
/// against the registry's current snapshot.
///
/// # Safety
/// `registry` is a live registry; `out` points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_row_adapters_new(
    registry: *const graft_registry,
    out: *mut *mut graft_row_adapters,
) -> graft_status {
    call("graft_row_adapters_new", || {
        let out = Out::new(out, "out")?;
        // SAFETY: the caller's contract.
        let registry = unsafe { arg_ref(registry, "registry") }?.registry.clone();
        let rows = RowAdapters::new(&registry);
        out.write(into_handle(graft_row_adapters { registry, uniform: None, rows }));
        Ok(())
    })
}

/// Creates an assignment where every row, whatever the batch size, uses the stack of
/// `n` adapters `ids[k]` scaled by `scales[k]` (applied in order; `scales` may be NULL
/// for all 1.0). `n` 0 is the base model.
///
/// # Safety
/// `registry` is a live registry; `ids` points to `n` NUL-terminated strings; `scales`
/// is NULL or points to `n` floats; `out` points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_row_adapters_new_uniform(
    registry: *const graft_registry,
    ids: *const *const c_char,
    scales: *const f32,
    n: usize,
    out: *mut *mut graft_row_adapters,
) -> graft_status {
    call("graft_row_adapters_new_uniform", || {
        let out = Out::new(out, "out")?;
        // SAFETY: the caller's contract.
        let (registry, set) = unsafe { (arg_ref(registry, "registry")?, stack(ids, scales, n)?) };
        let rows = RowAdapters::all_stack(&registry.registry, &borrowed(&set))?;
        out.write(into_handle(graft_row_adapters { registry: registry.registry.clone(), uniform: Some(set), rows }));
        Ok(())
    })
}

/// Frees an assignment. NULL is a no-op.
///
/// # Safety
/// `rows` is NULL or an assignment from this library not yet freed and not in use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_row_adapters_free(rows: *mut graft_row_adapters) {
    free_handle(rows);
}

/// Clears the rows and re-resolves against the registry's current snapshot, picking up
/// adapters swapped since (a uniform assignment keeps its stack). Keeps the assignment's
/// buffers (the Rust `RowAdapters::refresh`, which the counting-allocator test checks
/// allocates nothing once warmed up) instead of building a new assignment; call it per
/// request to serve the newest versions.
///
/// # Safety
/// `rows` is a live assignment no other thread uses now.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_row_adapters_reset(rows: *mut graft_row_adapters) -> graft_status {
    call("graft_row_adapters_reset", || {
        // SAFETY: the caller's contract.
        let mut r = unsafe { arg_mut(rows, "rows") }?;
        let r = &mut *r;
        match &r.uniform {
            Some(set) => r.rows.refresh_all(&r.registry, set)?,
            None => r.rows.refresh(&r.registry),
        }
        Ok(())
    })
}

fn appendable(r: &graft_row_adapters) -> Outcome {
    if r.uniform.is_some() {
        return Err(Failure::invalid(
            "rows",
            "a uniform assignment covers every row; make one with graft_row_adapters_new",
        ));
    }
    Ok(())
}

/// Appends a row served by the base model alone.
///
/// # Safety
/// `rows` is a live assignment no other thread uses now.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_row_adapters_push_base(rows: *mut graft_row_adapters) -> graft_status {
    call("graft_row_adapters_push_base", || {
        // SAFETY: the caller's contract.
        let mut r = unsafe { arg_mut(rows, "rows") }?;
        let r = &mut *r;
        appendable(r)?;
        r.rows.push_base()?;
        Ok(())
    })
}

/// Appends a row served by adapter `id` at scale 1.
///
/// # Safety
/// `rows` is a live assignment no other thread uses now; `id` a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_row_adapters_push(rows: *mut graft_row_adapters, id: *const c_char) -> graft_status {
    call("graft_row_adapters_push", || {
        // SAFETY: the caller's contract.
        let (mut r, id) = unsafe { (arg_mut(rows, "rows")?, arg_str(id, "id")?) };
        let r = &mut *r;
        appendable(r)?;
        r.rows.push(id)?;
        Ok(())
    })
}

/// Appends a row served by the stack of `n` adapters `ids[k]` scaled by `scales[k]`
/// (`scales` may be NULL for all 1.0; `n` 0 is the base model).
///
/// # Safety
/// `rows` is a live assignment no other thread uses now; `ids` points to `n`
/// NUL-terminated strings; `scales` is NULL or points to `n` floats.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_row_adapters_push_stack(
    rows: *mut graft_row_adapters,
    ids: *const *const c_char,
    scales: *const f32,
    n: usize,
) -> graft_status {
    call("graft_row_adapters_push_stack", || {
        // SAFETY: the caller's contract.
        let (mut r, set) = unsafe { (arg_mut(rows, "rows")?, stack(ids, scales, n)?) };
        let r = &mut *r;
        appendable(r)?;
        r.rows.push_stack(&borrowed(&set))?;
        Ok(())
    })
}

/// Writes the number of rows assigned so far to `*out` (0 for a uniform assignment).
///
/// # Safety
/// `rows` is a live assignment; `out` points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn graft_row_adapters_len(rows: *const graft_row_adapters, out: *mut usize) -> graft_status {
    // SAFETY: the caller's contract.
    unsafe { get("graft_row_adapters_len", rows, "rows", out, |r| Ok(r.rows.len())) }
}
