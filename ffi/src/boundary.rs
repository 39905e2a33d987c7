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
//! Handles are `Box`es of a [`Slot`] around the `graft_*` structs (which cbindgen
//! declares opaque). The slot starts with a type tag, checked on every use, so a handle
//! of another type (a session passed as a model) or a freed handle whose memory was not
//! reused yet is refused with `GRAFT_STATUS_INVALID_ARGUMENT` instead of being read as
//! the wrong struct; a free overwrites the tag with a poison value first. A use counter
//! next to it detects a handle used from two threads at once where the API forbids it
//! (a run while another thread runs or reads the same session): the late call gets
//! `GRAFT_STATUS_BUSY` instead of a data race. Both are one atomic operation per call.

use core::cell::UnsafeCell;
use core::ffi::{CStr, c_char};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

/// The shape of every getter: checks `out`, borrows `handle`, computes the value from it
/// and writes it on success.
///
/// # Safety
/// `handle` follows [`arg_ref`]'s contract; `out` points to writable storage for a `T`.
pub(crate) unsafe fn get<H: Handle, T>(
    name: &str,
    handle: *const H,
    what: &str,
    out: *mut T,
    value: impl FnOnce(&H) -> Outcome<T>,
) -> graft_status {
    call(name, || {
        let out = Out::new(out, "out")?;
        // SAFETY: the caller's contract.
        let h = unsafe { arg_ref(handle, what) }?;
        out.write(value(&h)?);
        Ok(())
    })
}

/// Runs a body that cannot fail (getters of static data, frees); a panic returns
/// `fallback`.
pub(crate) fn infallible<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// A C handle type: its tag and the name used in messages.
pub(crate) trait Handle: Sized {
    /// A value no other handle type (and not [`POISON`]) uses.
    const TAG: u64;
    /// `graft_model`, …
    const NAME: &'static str;
}

/// The tag of a freed handle.
const POISON: u64 = 0xdead_f7ee_dead_f7ee;

/// The use counter's writer bit; below it, the number of readers.
const WRITER: usize = 1 << (usize::BITS - 1);

/// What a handle pointer points to. `repr(C)` keeps the tag at offset 0 for every `T`,
/// so the tag of any graft handle can be read before its type is known.
#[repr(C)]
pub(crate) struct Slot<T> {
    tag: AtomicU64,
    users: AtomicUsize,
    value: UnsafeCell<T>,
}

/// Drops a handle made by [`into_handle`]; NULL is a no-op. A handle of another type, an
/// already freed one, or one in use on another thread is left alone (the last error
/// says why): leaking it is the only safe answer a `void` function has.
pub(crate) fn free_handle<T: Handle>(handle: *mut T) {
    if handle.is_null() {
        return;
    }
    infallible((), || {
        let name = format!("{}_free", T::NAME);
        // SAFETY: the caller's contract (a pointer from this library); `slot` reads only
        // the tag through an atomic before trusting the type.
        match unsafe { slot(handle.cast_const(), "handle") } {
            Err(failure) => set_last_error(&format!("{name}: {}", failure.message)),
            Ok(s) => {
                if s.users.compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed).is_err() {
                    set_last_error(&format!("{name}: the {} is in use on another thread; not freed", T::NAME));
                    return;
                }
                s.tag.store(POISON, Ordering::Release);
                // SAFETY: the tag proved this is a live `Slot<T>` from `into_handle`
                // (Box::into_raw), and no other call holds it (users was 0).
                drop(unsafe { Box::from_raw(handle.cast::<Slot<T>>()) });
            }
        }
    });
}

/// Moves `value` to the heap for C.
pub(crate) fn into_handle<T: Handle>(value: T) -> *mut T {
    let slot = Slot { tag: AtomicU64::new(T::TAG), users: AtomicUsize::new(0), value: UnsafeCell::new(value) };
    Box::into_raw(Box::new(slot)).cast::<T>()
}

/// The slot behind a handle pointer, after checking NULL, alignment and the tag.
///
/// # Safety
/// A non-NULL `ptr` must point to readable memory of at least 8 bytes (any live graft
/// handle qualifies; a freed one is detected while its memory is not reused).
unsafe fn slot<'a, T: Handle>(ptr: *const T, what: &str) -> Outcome<&'a Slot<T>> {
    let ptr = ptr.cast::<Slot<T>>();
    check_ptr(ptr, what)?;
    // SAFETY: non-NULL and aligned; every graft handle starts with an `AtomicU64` tag.
    let tag = unsafe { &*ptr.cast::<AtomicU64>() }.load(Ordering::Acquire);
    if tag != T::TAG {
        let found = match tag {
            POISON => "a freed handle".to_string(),
            t => HANDLE_NAMES
                .iter()
                .find(|(k, _)| *k == t)
                .map_or_else(|| "not a graft handle".to_string(), |(_, n)| format!("a {n}")),
        };
        return Err(Failure::invalid(what, format!("expected a {}, found {found}", T::NAME)));
    }
    // SAFETY: the tag says this is a live `Slot<T>` made by `into_handle`.
    Ok(unsafe { &*ptr })
}

/// Every handle type's tag and name, to say what was passed instead.
const HANDLE_NAMES: [(u64, &str); 5] = [
    (<crate::model::graft_model as Handle>::TAG, "graft_model"),
    (<crate::session::graft_session as Handle>::TAG, "graft_session"),
    (<crate::registry::graft_registry as Handle>::TAG, "graft_registry"),
    (<crate::rows::graft_row_adapters as Handle>::TAG, "graft_row_adapters"),
    (<crate::ticket::graft_ticket as Handle>::TAG, "graft_ticket"),
];

/// A shared borrow of a handle; other readers may hold one at the same time, a writer
/// may not.
pub(crate) struct Shared<'a, T>(&'a Slot<T>);

impl<T> core::ops::Deref for Shared<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the reader count excludes writers for the borrow's lifetime.
        unsafe { &*self.0.value.get() }
    }
}

impl<T> Drop for Shared<'_, T> {
    fn drop(&mut self) {
        self.0.users.fetch_sub(1, Ordering::Release);
    }
}

/// The exclusive borrow of a handle.
pub(crate) struct Exclusive<'a, T>(&'a Slot<T>);

impl<T> core::ops::Deref for Exclusive<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the writer bit excludes every other borrow.
        unsafe { &*self.0.value.get() }
    }
}

impl<T> core::ops::DerefMut for Exclusive<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the writer bit excludes every other borrow.
        unsafe { &mut *self.0.value.get() }
    }
}

impl<T> Drop for Exclusive<'_, T> {
    fn drop(&mut self) {
        self.0.users.store(0, Ordering::Release);
    }
}

fn busy<T: Handle>(what: &str) -> Failure {
    Failure::new(
        graft_status::Busy,
        format!("`{what}`: this {} is in use on another thread (use one per thread, or serialize calls)", T::NAME),
    )
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

/// Borrows the handle `ptr` shared.
///
/// # Safety
/// A non-NULL `ptr` must be a handle made by this library (see [`slot`]).
pub(crate) unsafe fn arg_ref<'a, T: Handle>(ptr: *const T, what: &str) -> Outcome<Shared<'a, T>> {
    // SAFETY: forwarded contract.
    let s = unsafe { slot(ptr, what) }?;
    let mut users = s.users.load(Ordering::Relaxed);
    loop {
        if users & WRITER != 0 {
            return Err(busy::<T>(what));
        }
        match s.users.compare_exchange_weak(users, users + 1, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => return Ok(Shared(s)),
            Err(now) => users = now,
        }
    }
}

/// Borrows the handle `ptr` exclusively: `GRAFT_STATUS_BUSY` if another thread uses it.
///
/// # Safety
/// As [`arg_ref`].
pub(crate) unsafe fn arg_mut<'a, T: Handle>(ptr: *mut T, what: &str) -> Outcome<Exclusive<'a, T>> {
    // SAFETY: forwarded contract.
    let s = unsafe { slot(ptr.cast_const(), what) }?;
    match s.users.compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed) {
        Ok(_) => Ok(Exclusive(s)),
        Err(_) => Err(busy::<T>(what)),
    }
}

/// Borrows an optional handle: NULL is `None`.
///
/// # Safety
/// As [`arg_ref`] for a non-NULL `ptr`.
pub(crate) unsafe fn opt_ref<'a, T: Handle>(ptr: *const T, what: &str) -> Outcome<Option<Shared<'a, T>>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    unsafe { arg_ref(ptr, what) }.map(Some)
}

/// Borrows an optional plain struct (parameters): NULL is `None`.
///
/// # Safety
/// A non-NULL `ptr` must point to a live, initialized `T` that nothing mutates for `'a`.
pub(crate) unsafe fn opt_struct<'a, T>(ptr: *const T, what: &str) -> Outcome<Option<&'a T>> {
    if ptr.is_null() {
        return Ok(None);
    }
    check_ptr(ptr, what)?;
    // SAFETY: non-NULL and aligned (checked); validity is the caller's contract.
    Ok(Some(unsafe { &*ptr }))
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
            assert_eq!(
                arg_ref::<crate::model::graft_model>(core::ptr::null(), "h").err().map(|f| f.status),
                Some(graft_status::NullArgument)
            );
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
