//! The boundary every exported function goes through.
//!
//! Three rules keep C callers safe, and they live here so no function can forget them:
//! - a panic never unwinds into C: each body runs under `catch_unwind` and a panic
//!   becomes `GRAFT_STATUS_PANIC` with its message as the last error;
//! - every pointer argument is checked before use: NULL gives
//!   `GRAFT_STATUS_NULL_ARGUMENT` naming the parameter, a misaligned buffer or a string
//!   that is not UTF-8 gives `GRAFT_STATUS_INVALID_ARGUMENT`;
//! - out-parameters are checked first and written last, so a failed call leaves the
//!   caller's variables untouched (no partial successes).
//!
//! Handles are plain `Box`es of the `graft_*` structs, which cbindgen declares opaque.

use core::ffi::{CStr, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::status::{graft_status, set_last_error, status_of};

/// Why a call failed: its status and the message for `graft_last_error_message`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: graft_status,
    pub message: String,
}

impl Failure {
    pub fn new(status: graft_status, message: impl Into<String>) -> Failure {
        Failure { status, message: message.into() }
    }

    pub fn null(what: &str) -> Failure {
        Failure::new(graft_status::NullArgument, format!("`{what}` is NULL"))
    }

    pub fn invalid(what: &str, detail: impl core::fmt::Display) -> Failure {
        Failure::new(graft_status::InvalidArgument, format!("`{what}`: {detail}"))
    }
}

impl From<graft_rt::Error> for Failure {
    fn from(e: graft_rt::Error) -> Failure {
        Failure { status: status_of(&e), message: e.to_string() }
    }
}

pub(crate) type Outcome<T = ()> = Result<T, Failure>;

/// Runs the body of the exported function `name`; maps failures and panics to a status
/// and records the message.
pub(crate) fn call(name: &str, body: impl FnOnce() -> Outcome) -> graft_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => graft_status::Ok,
        Ok(Err(failure)) => {
            set_last_error(&format!("{name}: {}", failure.message));
            failure.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".into());
            set_last_error(&format!("{name}: graft panicked (please report): {what}"));
            graft_status::Panic
        }
    }
}

/// Runs a body that cannot fail (getters of static data, frees); a panic returns
/// `fallback`.
pub(crate) fn infallible<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// Drops a handle made by [`into_handle`]; NULL is a no-op.
pub(crate) fn free_handle<T>(handle: *mut T) {
    if handle.is_null() {
        return;
    }
    // SAFETY: non-NULL handles of type T come from `into_handle` (Box::into_raw), and
    // the API documents that each is freed once.
    infallible((), || drop(unsafe { Box::from_raw(handle) }));
}

/// Moves `value` to the heap for C.
pub(crate) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// A checked out-parameter: non-NULL and aligned, written once on success.
pub(crate) struct Out<T>(*mut T);

impl<T> Out<T> {
    pub fn new(ptr: *mut T, what: &str) -> Outcome<Out<T>> {
        check_ptr(ptr.cast_const(), what)?;
        Ok(Out(ptr))
    }

    pub fn write(self, value: T) {
        // SAFETY: checked non-NULL and aligned in `new`; the caller provides writable
        // storage for a T (the documented contract of every out-parameter). `write`
        // does not read or drop the old contents, which may be uninitialized.
        unsafe { self.0.write(value) }
    }
}

fn check_ptr<T>(ptr: *const T, what: &str) -> Outcome {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    if !ptr.is_aligned() {
        return Err(Failure::invalid(what, format!("misaligned for {}-byte alignment", align_of::<T>())));
    }
    Ok(())
}

/// Borrows `*ptr`.
///
/// # Safety
/// A non-NULL `ptr` must point to a live, initialized `T` (for handles: one made by this
/// library and not yet freed) that nothing mutates for `'a`.
pub(crate) unsafe fn arg_ref<'a, T>(ptr: *const T, what: &str) -> Outcome<&'a T> {
    check_ptr(ptr, what)?;
    // SAFETY: non-NULL and aligned (checked); liveness is the caller's contract.
    Ok(unsafe { &*ptr })
}

/// Borrows `*ptr` mutably.
///
/// # Safety
/// As [`arg_ref`], and nothing else may access `*ptr` for `'a` (a handle is used by one
/// thread at a time where the API says so).
pub(crate) unsafe fn arg_mut<'a, T>(ptr: *mut T, what: &str) -> Outcome<&'a mut T> {
    check_ptr(ptr.cast_const(), what)?;
    // SAFETY: non-NULL and aligned (checked); exclusivity is the caller's contract.
    Ok(unsafe { &mut *ptr })
}

/// Borrows an optional argument: NULL is `None`.
///
/// # Safety
/// As [`arg_ref`] for a non-NULL `ptr`.
pub(crate) unsafe fn opt_ref<'a, T>(ptr: *const T, what: &str) -> Outcome<Option<&'a T>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    unsafe { arg_ref(ptr, what) }.map(Some)
}

/// Borrows a NUL-terminated UTF-8 string.
///
/// # Safety
/// A non-NULL `ptr` must point to a NUL-terminated string that stays unchanged for `'a`.
pub(crate) unsafe fn arg_str<'a>(ptr: *const c_char, what: &str) -> Outcome<&'a str> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: non-NULL; NUL termination and liveness are the caller's contract.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str().map_err(|e| Failure::invalid(what, format!("not UTF-8 ({e})")))
}

/// Borrows an optional string: NULL is `None`.
///
/// # Safety
/// As [`arg_str`] for a non-NULL `ptr`.
pub(crate) unsafe fn opt_str<'a>(ptr: *const c_char, what: &str) -> Outcome<Option<&'a str>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    unsafe { arg_str(ptr, what) }.map(Some)
}

/// Borrows `len` elements at `ptr`; NULL is accepted only for `len == 0`.
///
/// # Safety
/// A non-NULL `ptr` must point to `len` initialized `T`s that nothing mutates for `'a`.
pub(crate) unsafe fn arg_slice<'a, T>(ptr: *const T, len: usize, what: &str) -> Outcome<&'a [T]> {
    if ptr.is_null() {
        return if len == 0 { Ok(&[]) } else { Err(Failure::null(what)) };
    }
    check_ptr(ptr, what)?;
    if len.checked_mul(size_of::<T>()).is_none_or(|bytes| bytes > isize::MAX as usize) {
        return Err(Failure::invalid(what, format!("{len} elements exceed the address space")));
    }
    // SAFETY: non-NULL, aligned, size within isize::MAX (checked); validity and liveness
    // of the `len` elements are the caller's contract.
    Ok(unsafe { core::slice::from_raw_parts(ptr, len) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: the library returns a NUL-terminated string it owns.
        unsafe { CStr::from_ptr(crate::status::graft_last_error_message()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_with_its_message() {
        let status = call("graft_test_call", || panic!("boom at {}", 42));
        assert_eq!(status, graft_status::Panic);
        let message = last_error();
        assert!(message.contains("graft_test_call") && message.contains("boom at 42"), "{message}");
    }

    #[test]
    fn failures_name_the_function_and_success_keeps_the_last_message() {
        assert_eq!(call("graft_a", || Err(Failure::null("out"))), graft_status::NullArgument);
        assert_eq!(last_error(), "graft_a: `out` is NULL");
        assert_eq!(call("graft_b", || Ok(())), graft_status::Ok);
        assert_eq!(last_error(), "graft_a: `out` is NULL");
    }

    #[test]
    fn pointers_are_checked_before_use() {
        let floats = [1.0f32, 2.0];
        // SAFETY: every pointer below is NULL, misaligned (rejected before any read), or
        // points to `floats`.
        unsafe {
            assert!(arg_slice::<f32>(core::ptr::null(), 0, "x").is_ok_and(|s| s.is_empty()));
            assert_eq!(arg_slice::<f32>(core::ptr::null(), 1, "x").unwrap_err().status, graft_status::NullArgument);
            let misaligned = floats.as_ptr().cast::<u8>().add(1).cast::<f32>();
            assert_eq!(arg_slice(misaligned, 1, "x").unwrap_err().status, graft_status::InvalidArgument);
            assert_eq!(
                arg_slice(floats.as_ptr(), usize::MAX / 2, "x").unwrap_err().status,
                graft_status::InvalidArgument
            );
            assert_eq!(arg_str(c"\xff".as_ptr(), "s").unwrap_err().status, graft_status::InvalidArgument);
            assert_eq!(arg_ref::<u64>(core::ptr::null(), "h").unwrap_err().status, graft_status::NullArgument);
        }
        let mut slot = 7u32;
        assert!(Out::new(core::ptr::null_mut::<u32>(), "out").is_err());
        Out::new(&mut slot, "out").map(|o| o.write(9)).unwrap_or_default();
        assert_eq!(slot, 9);
    }

    #[test]
    fn status_names_cover_every_code() {
        for s in super::super::status::tests_all() {
            // SAFETY: static NUL-terminated strings.
            let name = unsafe { CStr::from_ptr(crate::status::graft_status_name(s as u32)) };
            assert!(name.to_str().is_ok_and(|n| n.starts_with("GRAFT_STATUS_") && n != "GRAFT_STATUS_UNKNOWN"));
        }
        // SAFETY: as above.
        let unknown = unsafe { CStr::from_ptr(crate::status::graft_status_name(4242)) };
        assert_eq!(unknown.to_str(), Ok("GRAFT_STATUS_UNKNOWN"));
    }
}
