//! graft's C ABI: `include/graft.h` for C and C++ applications.
//!
//! The header is generated from this crate by cbindgen and checked in; the `header`
//! test fails when the two drift (`GRAFT_BLESS=1` rewrites it). Conventions, after
//! llama.h and rustls-ffi:
//! - functions are `graft_<object>_<verb>`; objects are opaque handles made by
//!   `_new`/`_open` and released by `_free`, where `_free(NULL)` is a no-op;
//! - fallible functions return a [`graft_status`](status::graft_status) and write
//!   results through out-parameters only on success; `graft_last_error_message()` says
//!   what went wrong, per thread;
//! - parameter structs come from `graft_*_default_params()` and are passed by pointer
//!   (NULL for the defaults);
//! - every exported body runs inside a panic boundary and checks every pointer
//!   ([`boundary`]);
//! - each handle's documentation states its lifetime and thread-safety.
//!
//! One module per C object; the library builds as `libgraft.so` and `libgraft.a`.

#![allow(non_camel_case_types)] // C names: graft_model, graft_status, …

mod boundary;
pub mod model;
pub mod registry;
pub mod rows;
pub mod session;
pub mod status;
pub mod ticket;

use core::ffi::c_char;

/// Major version of the C ABI: bumped when a function, struct or status changes
/// incompatibly.
pub const GRAFT_ABI_MAJOR: u32 = 1;
/// Minor version of the C ABI: bumped when functions or statuses are added.
pub const GRAFT_ABI_MINOR: u32 = 1;

/// The library version, e.g. `"0.1.0"` (the header's `GRAFT_VERSION` is what the
/// application was compiled against). Static storage.
#[unsafe(no_mangle)]
pub extern "C" fn graft_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The C ABI version of the library as `(GRAFT_ABI_MAJOR << 16) | GRAFT_ABI_MINOR`.
/// An application built against a header with the same major and a minor no greater
/// than the library's can use it.
#[unsafe(no_mangle)]
pub extern "C" fn graft_abi_version() -> u32 {
    (GRAFT_ABI_MAJOR << 16) | GRAFT_ABI_MINOR
}
