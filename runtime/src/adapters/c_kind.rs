//! C plugins: the `graft_plugin.h` table behind the host's [`AdapterKind`] seam.
//!
//! A C library exports `graft_plugin_entry`, which returns a static, versioned table of
//! function pointers. This module mirrors the header's structs (`#[repr(C)]`, checked
//! against a C compiler by the drift test below), negotiates the version, and wraps
//! each instance the table creates in a [`CAdapter`] that implements the Rust
//! [`Adapter`] trait — so the registry, the executor and every tool see a C adapter
//! exactly as they see a Rust one.
//!
//! Version negotiation: the host speaks 1.0. It refuses another major (the meaning of
//! fields changed) and a table whose `struct_size` does not cover the 1.0 fields; a
//! newer minor is accepted, and fields past the 1.0 table are ignored.
//!
//! Nothing from the plugin is trusted blindly: strings it returns are read only within
//! their arrays (or up to a bound), target lists are bounded and validated, required
//! slots are checked for NULL once, and the callbacks the host lends it (the model view)
//! catch panics so nothing unwinds into C. What the host cannot contain is a plugin that
//! corrupts memory or never returns.

use core::ffi::{c_char, c_void};
use core::ptr::NonNull;
use std::ffi::CString;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSliceMut, RStr, RString, RVec};
use graft_plugin_abi::{
    Adapter, Adapter_TO, AdapterBox, AdapterInfo, ErrorCode, HookKind, HostKernelsRef, LinearDelta, LoadRequest,
    MatView, MatViewMut, ModelViewRef, PluginError, Post, Tap, Target, TargetInfo,
};

use super::kinds::{AdapterKind, KindOrigin};
use super::plugin::refused;
use crate::error::Result;

/// The symbol a C plugin exports (NUL-terminated for `dlsym`).
pub(crate) const ENTRY_SYMBOL: &[u8] = b"graft_plugin_entry\0";
/// `GRAFT_PLUGIN_ABI_MAJOR` of the header this host implements.
pub(crate) const ABI_MAJOR: u32 = 1;
/// `GRAFT_PLUGIN_ABI_MINOR` of the header this host implements.
pub(crate) const ABI_MINOR: u32 = 0;
/// The most targets one C adapter may declare.
const MAX_TARGETS: usize = 4096;
/// The longest kind name read from a table (bytes, without the NUL).
const MAX_NAME: usize = 255;
/// The longest module path the host reads from a `resolve` call.
const MAX_PATH: usize = 4096;
/// Bytes of the buffer lent to `describe`.
const DESCRIBE_BYTES: usize = 1024;
/// Every `GRAFT_TARGET_*` flag of 1.0.
const KNOWN_FLAGS: u32 = Target::BASE | Target::READS_STATE;

// ---- Mirrors of graft_plugin.h (1.0) -------------------------------------------------

/// `graft_plugin_error`.
#[repr(C)]
pub(crate) struct RawError {
    code: i32,
    field: [c_char; 128],
    message: [c_char; 384],
}

/// `graft_mat`.
#[repr(C)]
pub(crate) struct RawMat {
    data: *const f32,
    rows: usize,
    cols: usize,
    stride: usize,
}

/// `graft_mat_mut`.
#[repr(C)]
pub(crate) struct RawMatMut {
    data: *mut f32,
    rows: usize,
    cols: usize,
    stride: usize,
}

/// `graft_node_info`.
#[repr(C)]
pub(crate) struct RawNodeInfo {
    node: u32,
    op: u32,
    in_features: usize,
    out_features: usize,
    has_bias: i32,
    name: [c_char; 128],
}

/// `graft_target`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct RawTarget {
    node: u32,
    hook: u32,
    flags: u32,
}

type ResolveFn = unsafe extern "C" fn(*mut c_void, *const c_char, *mut RawNodeInfo, *mut RawError) -> i32;
type WeightRowFn = unsafe extern "C" fn(*mut c_void, u32, usize, *mut f32, usize) -> i32;
type FingerprintFn = unsafe extern "C" fn(*mut c_void) -> u64;

/// `graft_model_view`.
#[repr(C)]
pub(crate) struct RawModelView {
    ctx: *mut c_void,
    resolve: ResolveFn,
    base_weight_row: WeightRowFn,
    fingerprint: FingerprintFn,
}

/// `graft_hook_call`.
#[repr(C)]
pub(crate) struct RawHookCall {
    target: u32,
    x: RawMat,
    y: RawMatMut,
    state: RawMatMut,
    bias: *const f32,
    tickets: *mut u64,
    scale: f32,
    scratch: *mut f32,
    scratch_len: usize,
}

type CreateFn = unsafe extern "C" fn(*const c_char, *const c_char, *const RawModelView, *mut RawError) -> *mut c_void;
type DestroyFn = unsafe extern "C" fn(*mut c_void);
type TargetsFn = unsafe extern "C" fn(*mut c_void, *mut RawTarget, usize) -> usize;
type StateFloatsFn = unsafe extern "C" fn(*mut c_void) -> usize;
type ScratchFloatsFn = unsafe extern "C" fn(*mut c_void, u32, usize) -> usize;
type HookFn = unsafe extern "C" fn(*mut c_void, *const RawHookCall, *mut RawError) -> i32;
type FeedbackFn = unsafe extern "C" fn(*mut c_void, u64, f32, *mut RawError) -> i32;
type DescribeFn = unsafe extern "C" fn(*mut c_void, *mut c_char, usize);

/// The version header every `graft_plugin` table starts with, whatever its major.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RawHeader {
    abi_major: u32,
    abi_minor: u32,
    struct_size: usize,
}

/// `graft_plugin`, version 1.0 (every field is a 1.0 field).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RawPlugin {
    abi_major: u32,
    abi_minor: u32,
    struct_size: usize,
    name: *const c_char,
    create: Option<CreateFn>,
    destroy: Option<DestroyFn>,
    targets: Option<TargetsFn>,
    state_floats: Option<StateFloatsFn>,
    scratch_floats: Option<ScratchFloatsFn>,
    linear_delta: Option<HookFn>,
    tap: Option<HookFn>,
    post: Option<HookFn>,
    feedback: Option<FeedbackFn>,
    describe: Option<DescribeFn>,
}

type EntryFn = unsafe extern "C" fn() -> *const RawPlugin;

// ---- Strings across the boundary -----------------------------------------------------

impl RawError {
    fn new() -> RawError {
        RawError { code: 0, field: [0; 128], message: [0; 384] }
    }

    /// The plugin's report as a typed error; `fallback` when it left the message empty.
    fn to_plugin_error(&self, code: ErrorCode, fallback: &str) -> PluginError {
        let message = text_in(&self.message);
        PluginError::new(code, text_in(&self.field), if message.is_empty() { fallback.to_string() } else { message })
    }
}

/// The NUL-terminated text in `buf`, never reading past it (no NUL: the whole array).
#[allow(clippy::unnecessary_cast)] // `c_char` is i8 on x86-64 but u8 on aarch64
fn text_in(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Writes `text` into `buf`, truncated at a character boundary, NUL-terminated.
fn write_text(buf: &mut [c_char], text: &str) {
    let Some(room) = buf.len().checked_sub(1) else { return };
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    for (dst, &b) in buf.iter_mut().zip(&text.as_bytes()[..end]) {
        *dst = b as c_char;
    }
    buf[end] = 0;
}

/// Reads a NUL-terminated string of at most `max` bytes from a plugin pointer.
///
/// # Safety
/// `ptr` must be non-null and readable up to its NUL or `max + 1` bytes, whichever
/// comes first.
#[allow(clippy::unnecessary_cast)] // `c_char` is i8 on x86-64 but u8 on aarch64
unsafe fn bounded_c_str(ptr: *const c_char, max: usize) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    for i in 0..=max {
        // SAFETY: within the caller's guarantee (we stop at the NUL or after max + 1).
        let b = unsafe { ptr.add(i).read() } as u8;
        if b == 0 {
            return Some(bytes);
        }
        bytes.push(b);
    }
    None
}

// ---- Loading a table -----------------------------------------------------------------

/// The slots of an accepted table (required ones checked non-NULL).
#[derive(Clone, Copy)]
struct Table {
    create: CreateFn,
    destroy: DestroyFn,
    targets: TargetsFn,
    state_floats: Option<StateFloatsFn>,
    scratch_floats: Option<ScratchFloatsFn>,
    linear_delta: Option<HookFn>,
    tap: Option<HookFn>,
    post: Option<HookFn>,
    feedback: Option<FeedbackFn>,
    describe: Option<DescribeFn>,
}

impl Table {
    fn hook(&self, hook: HookKind) -> Option<HookFn> {
        match hook {
            HookKind::LinearDelta => self.linear_delta,
            HookKind::Tap => self.tap,
            HookKind::Post => self.post,
        }
    }
}

/// What every instance of a C kind shares.
struct Shared {
    name: String,
    path: PathBuf,
    abi: (u32, u32),
    table: Table,
}

/// A C plugin's kind.
pub(crate) struct CKind {
    shared: Arc<Shared>,
}

impl core::fmt::Debug for CKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CKind")
            .field("name", &self.shared.name)
            .field("path", &self.shared.path)
            .field("abi", &self.shared.abi)
            .finish()
    }
}

/// Reads and checks the table of the C plugin in `library` (loaded from `path`).
pub(crate) fn open(path: &Path, library: &'static libloading::Library) -> Result<Arc<dyn AdapterKind>> {
    let fix_header =
        format!("rebuild the plugin against graft_plugin.h {ABI_MAJOR}.x (this host speaks {ABI_MAJOR}.{ABI_MINOR})");
    // SAFETY: `graft_plugin_entry` has this signature by graft_plugin.h's contract; the
    // library is never unloaded, so the function stays valid.
    let entry = unsafe { library.get::<EntryFn>(ENTRY_SYMBOL) }
        .map_err(|e| refused(path, format!("no `graft_plugin_entry`: {e}"), "export `graft_plugin_entry`"))?;
    // SAFETY: as above; the entry point takes no arguments.
    let table = unsafe { entry() };
    if table.is_null() {
        return Err(refused(path, "`graft_plugin_entry` returned NULL", "return a pointer to a static graft_plugin"));
    }
    if !table.is_aligned() {
        return Err(refused(
            path,
            "`graft_plugin_entry` returned a misaligned pointer",
            "return a static graft_plugin",
        ));
    }
    // SAFETY: the header (three fields every major starts with) is the least a non-NULL
    // table must provide; the pointer is aligned and static by the header's contract.
    let header = unsafe { table.cast::<RawHeader>().read() };
    if header.abi_major != ABI_MAJOR {
        return Err(refused(
            path,
            format!(
                "built against graft_plugin.h {}.{}; this host speaks {ABI_MAJOR}.{ABI_MINOR} (major versions must match)",
                header.abi_major, header.abi_minor
            ),
            fix_header,
        ));
    }
    let known = size_of::<RawPlugin>();
    if header.struct_size < known {
        return Err(refused(
            path,
            format!(
                "its table (struct_size {}) is smaller than the {known} bytes of a graft_plugin.h {ABI_MAJOR}.0 table",
                header.struct_size
            ),
            "set struct_size to sizeof(graft_plugin) and compile against the graft_plugin.h the host ships",
        ));
    }
    // SAFETY: the plugin vouched for `struct_size >= known` bytes at an aligned, static
    // address; fields past the 1.0 table (a newer minor) are not read.
    let raw = unsafe { table.read() };
    let name = read_name(path, raw.name)?;
    let missing = |slot: &str| {
        refused(
            path,
            format!("kind `{name}`: the required slot `{slot}` is NULL"),
            "implement `create`, `destroy` and `targets` (graft_plugin.h)",
        )
    };
    let shared = Shared {
        table: Table {
            create: raw.create.ok_or_else(|| missing("create"))?,
            destroy: raw.destroy.ok_or_else(|| missing("destroy"))?,
            targets: raw.targets.ok_or_else(|| missing("targets"))?,
            state_floats: raw.state_floats,
            scratch_floats: raw.scratch_floats,
            linear_delta: raw.linear_delta,
            tap: raw.tap,
            post: raw.post,
            feedback: raw.feedback,
            describe: raw.describe,
        },
        name,
        path: path.to_path_buf(),
        abi: (header.abi_major, header.abi_minor),
    };
    Ok(Arc::new(CKind { shared: Arc::new(shared) }))
}

fn read_name(path: &Path, name: *const c_char) -> Result<String> {
    let fix = "set `name` to a short, NUL-terminated UTF-8 string literal";
    if name.is_null() {
        return Err(refused(path, "the kind's `name` is NULL", fix));
    }
    // SAFETY: a non-NULL `name` points to a NUL-terminated string (graft_plugin.h); the
    // read stops at the NUL or after MAX_NAME + 1 bytes.
    let bytes = unsafe { bounded_c_str(name, MAX_NAME) }
        .ok_or_else(|| refused(path, format!("the kind's `name` is longer than {MAX_NAME} bytes"), fix))?;
    let name = String::from_utf8(bytes).map_err(|_| refused(path, "the kind's `name` is not UTF-8", fix))?;
    if name.is_empty() {
        return Err(refused(path, "the kind's `name` is empty", fix));
    }
    Ok(name)
}

impl AdapterKind for CKind {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn load(&self, request: LoadRequest<'_>, model: ModelViewRef<'_>) -> core::result::Result<AdapterBox, PluginError> {
        let c_string = |field: &str, text: RStr<'_>| {
            CString::new(text.as_str())
                .map_err(|_| PluginError::new(ErrorCode::CONFIG, field, "contains a NUL byte, which C cannot take"))
        };
        let source = c_string("source", request.source)?;
        let options = c_string("options", request.options)?;
        let context = ViewContext { model: &model, resolved: Mutex::new(Vec::new()) };
        let view = RawModelView {
            ctx: (&context as *const ViewContext<'_, '_>).cast_mut().cast(),
            resolve: view_resolve,
            base_weight_row: view_base_weight_row,
            fingerprint: view_fingerprint,
        };
        let mut err = RawError::new();
        // SAFETY: `create` is a non-NULL slot of an accepted table; the strings, the
        // view and `err` outlive the call (the view is valid during `create` only).
        let instance = unsafe { (self.shared.table.create)(source.as_ptr(), options.as_ptr(), &view, &mut err) };
        let Some(instance) = NonNull::new(instance) else {
            // `create` reports its code through the error it was lent (CONFIG when unset).
            let code = match u32::try_from(err.code) {
                Ok(code @ 1..=12) => ErrorCode(code),
                _ => ErrorCode::CONFIG,
            };
            return Err(err.to_plugin_error(code, "create returned NULL without a message"));
        };
        let mut adapter = CAdapter {
            shared: Arc::clone(&self.shared),
            instance,
            source: request.source.as_str().to_string(),
            targets: Vec::new(),
            names: context.resolved.into_inner().unwrap_or_else(|p| p.into_inner()),
            state_floats: 0,
        };
        // From here on, dropping `adapter` destroys the instance exactly once.
        adapter.targets = adapter.read_targets()?;
        adapter.state_floats = match self.shared.table.state_floats {
            // SAFETY: an accepted slot, called with the instance it created.
            Some(f) => unsafe { f(adapter.instance.as_ptr()) },
            None => 0,
        };
        Ok(Adapter_TO::from_value(adapter, TD_Opaque))
    }

    fn origin(&self) -> KindOrigin {
        KindOrigin::CPlugin { path: self.shared.path.clone(), abi: self.shared.abi }
    }

    fn abi(&self) -> String {
        format!("graft_plugin.h {}.{}", self.shared.abi.0, self.shared.abi.1)
    }
}

// ---- The model view lent to `create` -------------------------------------------------

/// What `graft_model_view.ctx` points to during one `create` call.
struct ViewContext<'a, 'm> {
    model: &'a ModelViewRef<'m>,
    /// Nodes the plugin resolved, for `info()`'s node names (a mutex, not a cell: a
    /// plugin may resolve from a helper thread while `create` runs).
    resolved: Mutex<Vec<(u32, String)>>,
}

/// Runs `f`, turning a panic into an `INTERNAL` status: nothing may unwind into C.
fn no_unwind(err: *mut RawError, f: impl FnOnce() -> core::result::Result<(), PluginError>) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(PluginError::new(ErrorCode::INTERNAL, "", "the host's model view panicked (a graft bug)"))
    });
    match outcome {
        Ok(()) => 0,
        Err(e) => {
            // SAFETY: a non-NULL `err` is the plugin's `graft_plugin_error` for this call.
            if let Some(err) = unsafe { err.as_mut() } {
                err.code = i32::try_from(e.code.0).unwrap_or(ErrorCode::INTERNAL.0 as i32);
                write_text(&mut err.field, e.field.as_str());
                write_text(&mut err.message, e.message.as_str());
            }
            i32::try_from(e.code.0).unwrap_or(ErrorCode::INTERNAL.0 as i32)
        }
    }
}

unsafe extern "C" fn view_resolve(
    ctx: *mut c_void,
    name: *const c_char,
    out: *mut RawNodeInfo,
    err: *mut RawError,
) -> i32 {
    no_unwind(err, || {
        let bad = |what: &str| PluginError::new(ErrorCode::BAD_CALL, "", format!("resolve: {what}"));
        if name.is_null() || out.is_null() {
            return Err(bad("NULL name or output"));
        }
        // SAFETY: `ctx` is the `ViewContext` of the `create` call in progress.
        let context = unsafe { &*ctx.cast::<ViewContext<'_, '_>>() };
        // SAFETY: `name` is a NUL-terminated string (graft_plugin.h); the read is bounded.
        let path = unsafe { bounded_c_str(name, MAX_PATH) }.ok_or_else(|| bad("name too long"))?;
        let path = String::from_utf8(path).map_err(|_| bad("name is not UTF-8"))?;
        let info = context.model.resolve(RStr::from_str(&path)).into_result()?;
        // SAFETY: `out` is a writable `graft_node_info` (graft_plugin.h).
        let out = unsafe { &mut *out };
        out.node = info.node;
        out.op = info.op as u32;
        out.in_features = info.in_features;
        out.out_features = info.out_features;
        out.has_bias = i32::from(info.has_bias);
        write_text(&mut out.name, info.name.as_str());
        context.resolved.lock().unwrap_or_else(|p| p.into_inner()).push((info.node, info.name.into_string()));
        Ok(())
    })
}

unsafe extern "C" fn view_base_weight_row(ctx: *mut c_void, node: u32, row: usize, out: *mut f32, len: usize) -> i32 {
    no_unwind(core::ptr::null_mut(), || {
        if out.is_null() && len > 0 {
            return Err(PluginError::new(ErrorCode::BAD_CALL, "", "base_weight_row: NULL output"));
        }
        // SAFETY: `ctx` is the `ViewContext` of the `create` call in progress.
        let context = unsafe { &*ctx.cast::<ViewContext<'_, '_>>() };
        let out = if len == 0 {
            &mut [][..]
        } else {
            // SAFETY: the plugin lends `len` writable floats at `out` (graft_plugin.h).
            unsafe { core::slice::from_raw_parts_mut(out, len) }
        };
        context.model.base_weight_row(node, row, RSliceMut::from_mut_slice(out)).into_result()
    })
}

unsafe extern "C" fn view_fingerprint(ctx: *mut c_void) -> u64 {
    // SAFETY: `ctx` is the `ViewContext` of the `create` call in progress.
    catch_unwind(AssertUnwindSafe(|| unsafe { &*ctx.cast::<ViewContext<'_, '_>>() }.model.fingerprint())).unwrap_or(0)
}

// ---- Instances ------------------------------------------------------------------------

/// One adapter a C plugin created. Dropping it calls the plugin's `destroy` once.
pub(crate) struct CAdapter {
    shared: Arc<Shared>,
    instance: NonNull<c_void>,
    source: String,
    targets: Vec<Target>,
    /// Node names the plugin resolved while loading.
    names: Vec<(u32, String)>,
    state_floats: usize,
}

// SAFETY: graft_plugin.h requires a plugin's hooks to be callable from several threads
// at once (on disjoint rows); the instance pointer is only ever handed back to it.
unsafe impl Send for CAdapter {}
// SAFETY: as above.
unsafe impl Sync for CAdapter {}

impl core::fmt::Debug for CAdapter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CAdapter")
            .field("kind", &self.shared.name)
            .field("source", &self.source)
            .field("targets", &self.targets.len())
            .finish_non_exhaustive()
    }
}

impl Drop for CAdapter {
    fn drop(&mut self) {
        // SAFETY: the instance came from this table's `create` and is destroyed once,
        // after its last use (the registry drops an adapter when no run holds it).
        unsafe { (self.shared.table.destroy)(self.instance.as_ptr()) }
    }
}

/// An `INTERNAL` error: the plugin broke graft_plugin.h's contract.
fn contract(message: String) -> PluginError {
    PluginError::new(ErrorCode::INTERNAL, "", message)
}

impl CAdapter {
    /// Asks the plugin for its targets (bounded) and checks each one.
    fn read_targets(&self) -> core::result::Result<Vec<Target>, PluginError> {
        let call = |buffer: &mut [RawTarget]| {
            // SAFETY: an accepted slot; `buffer` has room for `buffer.len()` targets.
            unsafe { (self.shared.table.targets)(self.instance.as_ptr(), buffer.as_mut_ptr(), buffer.len()) }
        };
        let mut buffer = vec![RawTarget::default(); 64];
        let mut count = call(&mut buffer);
        if count > MAX_TARGETS {
            return Err(contract(format!("`targets` reports {count} targets (at most {MAX_TARGETS})")));
        }
        if count > buffer.len() {
            buffer.resize(count, RawTarget::default());
            let again = call(&mut buffer);
            if again != count {
                return Err(contract(format!("`targets` reported {count} targets, then {again}")));
            }
            count = again;
        }
        buffer[..count]
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let hook = match t.hook {
                    0 => HookKind::LinearDelta,
                    1 => HookKind::Tap,
                    2 => HookKind::Post,
                    other => return Err(contract(format!("target {i}: unknown hook {other}"))),
                };
                if t.flags & !KNOWN_FLAGS != 0 {
                    return Err(contract(format!("target {i}: unknown flag bits {:#x}", t.flags & !KNOWN_FLAGS)));
                }
                if self.shared.table.hook(hook).is_none() {
                    return Err(contract(format!(
                        "target {i} is a {hook:?} hook, but the `{}` slot is NULL",
                        hook_name(hook)
                    )));
                }
                Ok(Target { node: t.node, hook, flags: t.flags })
            })
            .collect()
    }

    /// Forwards one hook call.
    fn call(&self, hook: HookKind, call: &RawHookCall) -> RResult<(), PluginError> {
        let Some(f) = self.shared.table.hook(hook) else {
            return RResult::RErr(PluginError::new(
                ErrorCode::UNSUPPORTED,
                "",
                format!("target {}: kind `{}` has no {} hook", call.target, self.shared.name, hook_name(hook)),
            ));
        };
        let mut err = RawError::new();
        // SAFETY: an accepted slot, called with this instance; every pointer in `call`
        // covers the rows and columns it states for the duration of the call.
        let code = unsafe { f(self.instance.as_ptr(), call, &mut err) };
        status(code, &err, hook_name(hook))
    }

    fn node_name(&self, node: u32) -> String {
        self.names.iter().find(|(n, _)| *n == node).map_or_else(String::new, |(_, name)| name.clone())
    }

    fn describe(&self) -> Option<String> {
        let describe = self.shared.table.describe?;
        let mut buffer = [0 as c_char; DESCRIBE_BYTES];
        // SAFETY: an accepted slot; `buffer` holds `DESCRIBE_BYTES` bytes.
        unsafe { describe(self.instance.as_ptr(), buffer.as_mut_ptr(), buffer.len()) };
        Some(text_in(&buffer)).filter(|text| !text.is_empty())
    }
}

fn hook_name(hook: HookKind) -> &'static str {
    match hook {
        HookKind::LinearDelta => "linear_delta",
        HookKind::Tap => "tap",
        HookKind::Post => "post",
    }
}

/// A C status as a Rust result: 0 is success, other values are `ErrorCode`s.
fn status(code: i32, err: &RawError, what: &str) -> RResult<(), PluginError> {
    match u32::try_from(code) {
        Ok(0) => RResult::ROk(()),
        Ok(code) => RResult::RErr(err.to_plugin_error(ErrorCode(code), &format!("{what} failed with status {code}"))),
        Err(_) => RResult::RErr(err.to_plugin_error(ErrorCode::INTERNAL, &format!("{what} returned status {code}"))),
    }
}

impl RawMat {
    fn of(m: &MatView<'_>) -> RawMat {
        RawMat { data: m.as_ptr(), rows: m.rows(), cols: m.cols(), stride: m.stride() }
    }

    fn empty() -> RawMat {
        RawMat { data: core::ptr::null(), rows: 0, cols: 0, stride: 0 }
    }
}

impl RawMatMut {
    fn of(m: &mut MatViewMut<'_>) -> RawMatMut {
        RawMatMut { data: m.as_mut_ptr(), rows: m.rows(), cols: m.cols(), stride: m.stride() }
    }

    /// Run state the hook may only read (post, linear_delta): graft_plugin.h has one
    /// matrix type for it, so it is lent through a `*mut` it must not write.
    fn read_only(m: &MatView<'_>) -> RawMatMut {
        RawMatMut { data: m.as_ptr().cast_mut(), rows: m.rows(), cols: m.cols(), stride: m.stride() }
    }

    fn empty() -> RawMatMut {
        RawMatMut { data: core::ptr::null_mut(), rows: 0, cols: 0, stride: 0 }
    }
}

/// The scratch as graft_plugin.h wants it: NULL when empty.
fn scratch_of(scratch: &mut RSliceMut<'_, f32>) -> (*mut f32, usize) {
    let len = scratch.len();
    (if len == 0 { core::ptr::null_mut() } else { scratch.as_mut_slice().as_mut_ptr() }, len)
}

/// Runs a trait method body, turning a host-side panic into an `INTERNAL` error: the
/// sabi_trait shims are `extern "C"`, so an unwind would abort the process.
fn guard<T>(what: &str, f: impl FnOnce() -> RResult<T, PluginError>) -> RResult<T, PluginError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        RResult::RErr(PluginError::new(
            ErrorCode::INTERNAL,
            "",
            format!("{what}: the C plugin host panicked (a graft bug)"),
        ))
    })
}

impl Adapter for CAdapter {
    fn targets(&self) -> RVec<Target> {
        self.targets.iter().copied().collect()
    }

    fn info(&self) -> AdapterInfo {
        let targets = self
            .targets
            .iter()
            .map(|t| {
                let node = self.node_name(t.node);
                TargetInfo {
                    module: RString::from(if node.is_empty() { format!("node {}", t.node) } else { node.clone() }),
                    node: RString::from(node),
                    rank: 0,
                    scale: 1.0,
                    variant: RString::from(hook_name(t.hook)),
                    bytes: 0,
                }
            })
            .collect();
        let mut notes: RVec<RString> = RVec::new();
        notes.push(RString::from(format!("plugin={}", self.shared.path.display())));
        notes.push(RString::from(format!("abi=graft_plugin.h {}.{}", self.shared.abi.0, self.shared.abi.1)));
        if let Some(text) = self.describe() {
            notes.push(RString::from(text));
        }
        AdapterInfo {
            kind: RString::from(self.shared.name.as_str()),
            source: RString::from(self.source.as_str()),
            targets,
            mapped_bytes: 0,
            owned_bytes: 0,
            notes,
        }
    }

    fn scratch_floats(&self, target: u32, rows: usize, _kernels: HostKernelsRef) -> usize {
        match self.shared.table.scratch_floats {
            // SAFETY: an accepted slot, called with this instance.
            Some(f) => unsafe { f(self.instance.as_ptr(), target, rows) },
            None => 0,
        }
    }

    fn linear_delta(&self, mut call: LinearDelta<'_>) -> RResult<(), PluginError> {
        guard("linear_delta", || {
            let (scratch, scratch_len) = scratch_of(&mut call.scratch);
            let bias = call.base_bias.as_ref().map_or(core::ptr::null(), |b| b.as_slice().as_ptr());
            let raw = RawHookCall {
                target: call.target,
                x: RawMat::of(&call.x),
                y: RawMatMut::of(&mut call.y),
                state: RawMatMut::read_only(&call.state),
                bias,
                tickets: core::ptr::null_mut(),
                scale: call.scale,
                scratch,
                scratch_len,
            };
            self.call(HookKind::LinearDelta, &raw)
        })
    }

    fn merge(&self, target: u32, _weight: MatViewMut<'_>, _bias: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(
            ErrorCode::UNSUPPORTED,
            "",
            format!("target {target}: C plugins (graft_plugin.h 1.0) cannot be merged; serve them unmerged"),
        ))
    }

    fn state_floats(&self) -> usize {
        self.state_floats
    }

    fn tap(&self, mut call: Tap<'_>) -> RResult<(), PluginError> {
        guard("tap", || {
            let (scratch, scratch_len) = scratch_of(&mut call.scratch);
            let raw = RawHookCall {
                target: call.target,
                x: RawMat::of(&call.x),
                y: RawMatMut::empty(),
                state: RawMatMut::of(&mut call.state),
                bias: core::ptr::null(),
                tickets: core::ptr::null_mut(),
                scale: call.scale,
                scratch,
                scratch_len,
            };
            self.call(HookKind::Tap, &raw)
        })
    }

    fn post(&self, mut call: Post<'_>) -> RResult<(), PluginError> {
        guard("post", || {
            let (scratch, scratch_len) = scratch_of(&mut call.scratch);
            let raw = RawHookCall {
                target: call.target,
                x: RawMat::empty(),
                y: RawMatMut::of(&mut call.y),
                state: RawMatMut::read_only(&call.state),
                bias: core::ptr::null(),
                tickets: call.tickets.as_mut_slice().as_mut_ptr(),
                scale: call.scale,
                scratch,
                scratch_len,
            };
            self.call(HookKind::Post, &raw)
        })
    }

    fn feedback(&self, ticket: u64, label: f32) -> RResult<(), PluginError> {
        let Some(f) = self.shared.table.feedback else {
            return RResult::RErr(PluginError::new(
                ErrorCode::UNSUPPORTED,
                "",
                format!("ticket {ticket}: kind `{}` takes no feedback", self.shared.name),
            ));
        };
        let mut err = RawError::new();
        // SAFETY: an accepted slot, called with this instance.
        let code = unsafe { f(self.instance.as_ptr(), ticket, label, &mut err) };
        status(code, &err, "feedback")
    }

    fn save_state(&self, path: RStr<'_>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(
            ErrorCode::UNSUPPORTED,
            path.as_str(),
            "C plugins (graft_plugin.h 1.0) have no state to save",
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use core::mem::offset_of;
    use std::collections::BTreeMap;
    use std::process::Command;

    use graft_plugin_abi::NodeOp;

    use super::*;

    #[test]
    fn error_text_is_read_within_its_array() {
        let mut err = RawError::new();
        err.field.fill(b'f' as c_char); // no NUL at all
        write_text(&mut err.message, "bad value");
        let e = err.to_plugin_error(ErrorCode::TENSOR, "unused");
        assert_eq!(e.field.len(), 128);
        assert_eq!(e.message.as_str(), "bad value");
        let mut small = [1 as c_char; 4];
        write_text(&mut small, "héllo");
        assert_eq!(text_in(&small), "h\u{e9}"); // 3 bytes fit, on a char boundary
        write_text(&mut small, "ab");
        assert_eq!(text_in(&small), "ab");
        let empty = RawError::new();
        assert_eq!(empty.to_plugin_error(ErrorCode::IO, "fallback").message.as_str(), "fallback");
    }

    #[test]
    fn statuses_map_to_codes() {
        let err = RawError::new();
        assert!(status(0, &err, "post").is_ok());
        assert_eq!(status(4, &err, "post").unwrap_err().code, ErrorCode::SHAPE);
        let negative = status(-1, &err, "post").unwrap_err();
        assert_eq!(negative.code, ErrorCode::INTERNAL);
        assert!(negative.message.contains("-1"));
    }

    /// The Rust mirrors, as `name size` / `struct.field offset` lines.
    fn rust_layout() -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        macro_rules! layout {
            ($c:literal, $t:ty, [$($f:ident),*]) => {
                m.insert(format!("{}.sizeof", $c), size_of::<$t>());
                m.insert(format!("{}.alignof", $c), align_of::<$t>());
                $( m.insert(format!("{}.{}", $c, stringify!($f)), offset_of!($t, $f)); )*
            };
        }
        layout!("graft_plugin_error", RawError, [code, field, message]);
        layout!("graft_mat", RawMat, [data, rows, cols, stride]);
        layout!("graft_mat_mut", RawMatMut, [data, rows, cols, stride]);
        layout!("graft_node_info", RawNodeInfo, [node, op, in_features, out_features, has_bias, name]);
        layout!("graft_target", RawTarget, [node, hook, flags]);
        layout!("graft_model_view", RawModelView, [ctx, resolve, base_weight_row, fingerprint]);
        layout!("graft_hook_call", RawHookCall, [target, x, y, state, bias, tickets, scale, scratch, scratch_len]);
        layout!(
            "graft_plugin",
            RawPlugin,
            [
                abi_major,
                abi_minor,
                struct_size,
                name,
                create,
                destroy,
                targets,
                state_floats,
                scratch_floats,
                linear_delta,
                tap,
                post,
                feedback,
                describe
            ]
        );
        m.insert("GRAFT_PLUGIN_ABI_MAJOR".into(), ABI_MAJOR as usize);
        m.insert("GRAFT_PLUGIN_ABI_MINOR".into(), ABI_MINOR as usize);
        m.insert("GRAFT_TARGET_BASE".into(), Target::BASE as usize);
        m.insert("GRAFT_TARGET_READS_STATE".into(), Target::READS_STATE as usize);
        m.insert("GRAFT_HOOK_LINEAR_DELTA".into(), HookKind::LinearDelta as usize);
        m.insert("GRAFT_HOOK_TAP".into(), HookKind::Tap as usize);
        m.insert("GRAFT_HOOK_POST".into(), HookKind::Post as usize);
        let codes = [
            ("IO", ErrorCode::IO),
            ("CONFIG", ErrorCode::CONFIG),
            ("TENSOR", ErrorCode::TENSOR),
            ("SHAPE", ErrorCode::SHAPE),
            ("NOT_FINITE", ErrorCode::NOT_FINITE),
            ("UNKNOWN_MODULE", ErrorCode::UNKNOWN_MODULE),
            ("UNSUPPORTED", ErrorCode::UNSUPPORTED),
            ("KERNEL", ErrorCode::KERNEL),
            ("INTERNAL", ErrorCode::INTERNAL),
            ("BAD_CALL", ErrorCode::BAD_CALL),
            ("TICKET", ErrorCode::TICKET),
            ("STATE", ErrorCode::STATE),
        ];
        for (name, code) in codes {
            m.insert(format!("GRAFT_PLUGIN_{name}"), code.0 as usize);
        }
        for (name, op) in [
            ("LINEAR", NodeOp::Linear),
            ("EMBEDDING_BAG", NodeOp::EmbeddingBag),
            ("OTHER", NodeOp::Other),
            ("INPUT", NodeOp::Input),
        ] {
            m.insert(format!("GRAFT_NODE_{name}"), op as usize);
        }
        m
    }

    /// The same lines from a C compiler reading graft_plugin.h.
    fn c_program(rust: &BTreeMap<String, usize>) -> String {
        let mut body = String::new();
        for key in rust.keys() {
            let expr = match key.split_once('.') {
                None => format!("(size_t)({key})"),
                Some((ty, "sizeof")) => format!("sizeof({ty})"),
                Some((ty, "alignof")) => format!("_Alignof({ty})"),
                Some((ty, field)) => format!("offsetof({ty}, {field})"),
            };
            body.push_str(&format!("    printf(\"{key} %zu\\n\", {expr});\n"));
        }
        format!(
            "#include <stddef.h>\n#include <stdio.h>\n#include \"graft_plugin.h\"\nint main(void) {{\n{body}    return 0;\n}}\n"
        )
    }

    /// Fails the drift check when no C compiler is found and `GRAFT_CI=1`, else skips.
    fn no_compiler(why: &str) {
        let ci = std::env::var("GRAFT_CI").is_ok_and(|v| v == "1");
        assert!(!ci, "c_layout_matches_graft_plugin_h: a C compiler is required when GRAFT_CI=1, but {why}");
        println!("SKIP: c_layout_matches_graft_plugin_h: no C compiler ({why}); set CC or install cc");
    }

    #[test]
    fn c_layout_matches_graft_plugin_h() {
        let rust = rust_layout();
        let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/abi/include");
        let dir = std::env::temp_dir().join(format!("graft-c-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let source = dir.join("layout.c");
        let exe = dir.join("layout");
        std::fs::write(&source, c_program(&rust)).unwrap();
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let built = Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(&include)
            .arg(&source)
            .arg("-o")
            .arg(&exe)
            .output();
        let built = match built {
            Ok(out) => out,
            Err(e) => return no_compiler(&format!("`{cc}` did not start: {e}")),
        };
        assert!(built.status.success(), "{cc} failed:\n{}", String::from_utf8_lossy(&built.stderr));
        let out = Command::new(&exe).output().unwrap();
        assert!(out.status.success());
        let c: BTreeMap<String, usize> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|line| {
                let (k, v) = line.split_once(' ').unwrap();
                (k.to_string(), v.parse().unwrap())
            })
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        let drift: Vec<String> = rust
            .iter()
            .filter(|(k, v)| c.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: Rust {v}, C {:?}", c.get(k)))
            .collect();
        assert!(drift.is_empty(), "graft_plugin.h and the Rust mirrors in c_kind.rs disagree:\n{}", drift.join("\n"));
        assert_eq!(c.len(), rust.len());
    }
}
