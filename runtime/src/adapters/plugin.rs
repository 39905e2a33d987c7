//! Loading adapter kinds from shared-library files.
//!
//! A plugin file is either a Rust library exporting the `graft-plugin-abi` root module
//! (built with abi_stable; the built-in kinds' `--features plugin` cdylibs are such
//! files) or a C library exporting `graft_plugin_entry` (`graft_plugin.h`, wrapped by
//! `c_kind`). This module opens the file once, tells the two apart by their entry
//! symbols, and turns every way a file can be wrong into an [`Error::Plugin`] that names
//! the file, says what is wrong and what to do about it.
//!
//! Rust plugins are loaded with `lib_header_from_path` + `LibHeader::init_root_module`,
//! never `RootModule::load_from_file`: the latter caches one root module per root-module
//! *type* in process-wide statics, so every plugin file after the first would silently
//! come back as the first one. `init_root_module` checks the library's version strings
//! and the layout of every type reachable from the root module, then initializes the
//! module through a lazy cell that lives *in the plugin's own header*, so each file gets
//! its own module.
//!
//! Libraries are never unloaded: code stays mapped for the life of the process (adapter
//! objects, error messages and vtables point into it), including files refused after
//! their code ran. Loading a file runs its static initializers — load only files you
//! trust as much as the host itself; the containment the host offers (typed errors,
//! disabling an adapter that writes NaN) does not survive a plugin that corrupts memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::library::{LibraryError, ROOT_MODULE_LOADER_NAME_WITH_NUL, RootModule, lib_header_from_path};
use graft_plugin_abi::AdapterKindModRef;

use super::c_kind;
use super::kinds::{AdapterKind, KindOrigin, RustModule};
use crate::error::{Error, Result};

/// The `graft-plugin-abi` version this host was built with, as plugins must match it.
pub(crate) fn host_abi_version() -> String {
    <AdapterKindModRef as RootModule>::VERSION_STRINGS.to_string()
}

/// The fix for a Rust plugin built against an incompatible interface.
fn rebuild_rust() -> String {
    format!("rebuild the plugin against graft-plugin-abi {} (the version this host was built with)", host_abi_version())
}

/// An [`Error::Plugin`] about `path`.
pub(crate) fn refused(path: &Path, detail: impl Into<String>, fix: impl Into<String>) -> Error {
    Error::Plugin { path: path.display().to_string(), detail: detail.into(), fix: fix.into() }
}

/// The shared-library extension of this platform (`so`, `dylib`, `dll`).
pub(crate) const LIBRARY_EXTENSION: &str = std::env::consts::DLL_EXTENSION;

/// The shared libraries directly in `dir`, sorted by file name.
pub(crate) fn libraries_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == LIBRARY_EXTENSION) && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// What the first bytes of a file say it is.
fn check_magic(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 20];
    let mut file = std::fs::File::open(path)
        .map_err(|e| refused(path, format!("cannot open: {e}"), "check the path and its permissions"))?;
    let n = file.read(&mut head).map_err(|e| refused(path, format!("cannot read: {e}"), "check the file"))?;
    let head = &head[..n];
    let not_library = |what: &str| {
        refused(
            path,
            format!("not a shared library ({what})"),
            format!("pass a shared library (.{LIBRARY_EXTENSION}) built as a graft plugin"),
        )
    };
    if head.starts_with(b"\x7fELF") {
        // e_type at offset 16, in the file's byte order (EI_DATA at offset 5).
        let e_type = match (head.get(5), head.get(16..18)) {
            (Some(1), Some(t)) => u16::from_le_bytes([t[0], t[1]]),
            (Some(2), Some(t)) => u16::from_be_bytes([t[0], t[1]]),
            _ => return Err(not_library("a truncated ELF header")),
        };
        return match e_type {
            3 => Ok(()), // ET_DYN
            1 => Err(refused(path, "an object file, not a shared library", "link it with `-shared`")),
            2 => Err(refused(path, "an executable, not a shared library", "build the plugin as a shared library")),
            other => Err(not_library(&format!("ELF file type {other}"))),
        };
    }
    const MACH_O: [[u8; 4]; 5] = [
        [0xfe, 0xed, 0xfa, 0xce],
        [0xfe, 0xed, 0xfa, 0xcf],
        [0xce, 0xfa, 0xed, 0xfe],
        [0xcf, 0xfa, 0xed, 0xfe],
        [0xca, 0xfe, 0xba, 0xbe],
    ];
    if head.starts_with(b"MZ") || MACH_O.iter().any(|m| head.starts_with(m)) {
        return Ok(());
    }
    Err(not_library("no ELF, Mach-O or PE header"))
}

/// Every library [`open`] loaded, for the life of the process.
static OPENED: std::sync::Mutex<Vec<&'static libloading::Library>> = std::sync::Mutex::new(Vec::new());

/// Opens a library, resolving every symbol now so a missing dependency fails here rather
/// than at the first call (where it would abort the process).
fn open_library(path: &Path) -> core::result::Result<libloading::Library, libloading::Error> {
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
        // SAFETY: loading a library runs its initializers; that is what loading a plugin
        // means, and the caller asked for this file (see the module docs).
        unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }.map(Into::into)
    }
    #[cfg(not(unix))]
    {
        // SAFETY: as above.
        unsafe { libloading::Library::new(path) }
    }
}

/// Opens the plugin at `path` and returns its kind (not yet added to any [`Kinds`]).
///
/// [`Kinds`]: super::Kinds
pub(crate) fn open(path: &Path) -> Result<Arc<dyn AdapterKind>> {
    check_magic(path)?;
    // An absolute path: `dlopen` searches the library path for a bare file name.
    let path = std::fs::canonicalize(path)
        .map_err(|e| refused(path, format!("cannot resolve the path: {e}"), "check the path"))?;
    let library = open_library(&path).map_err(|e| {
        refused(
            &path,
            format!("cannot load: {e}"),
            "build it for this platform and make its dependencies resolvable (check with `ldd`)",
        )
    })?;
    // Never unloaded (module docs): adapters and error values point into it. Kept in a
    // process-wide list so leak checkers (LeakSanitizer, valgrind) see it as reachable.
    let library: &'static libloading::Library = Box::leak(Box::new(library));
    OPENED.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(library);
    // SAFETY: only the symbols' presence is tested; neither is called or read here.
    let rust = unsafe { library.get::<unsafe extern "C" fn()>(ROOT_MODULE_LOADER_NAME_WITH_NUL.as_bytes()) }.is_ok();
    // SAFETY: as above.
    let c = unsafe { library.get::<unsafe extern "C" fn()>(c_kind::ENTRY_SYMBOL) }.is_ok();
    let rust_symbol = ROOT_MODULE_LOADER_NAME_WITH_NUL.trim_end_matches('\0');
    match (rust, c) {
        (true, false) => open_rust(&path),
        (false, true) => c_kind::open(&path, library),
        (true, true) => Err(refused(
            &path,
            format!("exports both `{rust_symbol}` (a Rust plugin) and `graft_plugin_entry` (a C plugin)"),
            "export exactly one of the two entry points",
        )),
        (false, false) => Err(refused(
            &path,
            format!("exports neither `{rust_symbol}` (Rust plugins) nor `graft_plugin_entry` (C plugins)"),
            "build a Rust kind with its `plugin` feature (`#[export_root_module]`), or export \
             `graft_plugin_entry` from a C plugin (graft_plugin.h)",
        )),
    }
}

/// Loads a Rust plugin's root module with abi_stable's version and layout checks.
fn open_rust(path: &Path) -> Result<Arc<dyn AdapterKind>> {
    let module = lib_header_from_path(path)
        .and_then(|header| header.init_root_module::<AdapterKindModRef>())
        .map_err(|e| library_error(path, e))?;
    Ok(Arc::new(RustModule::new(module, KindOrigin::RustPlugin { path: path.to_path_buf() })?))
}

/// At most this many bytes of an abi_stable layout report go into an error.
const MAX_REPORT: usize = 4000;

fn shorten(mut text: String) -> String {
    let text_len = text.trim_end().len();
    text.truncate(text_len);
    if text.len() > MAX_REPORT {
        let mut end = MAX_REPORT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" …");
    }
    text.trim_start().to_string()
}

/// Maps each way abi_stable can refuse a library to a typed error with a fix.
pub(crate) fn library_error(path: &Path, e: LibraryError) -> Error {
    let (detail, fix) = describe(e);
    refused(path, detail, fix)
}

fn describe(e: LibraryError) -> (String, String) {
    match e {
        LibraryError::OpenError { err, .. } => (
            format!("cannot load: {err}"),
            "build it for this platform and make its dependencies resolvable (check with `ldd`)".into(),
        ),
        LibraryError::GetSymbolError { symbol, err, .. } => (
            format!("no `{}` symbol: {err}", String::from_utf8_lossy(&symbol).trim_end_matches('\0')),
            "build the kind with its `plugin` feature, which exports the root module (`#[export_root_module]`)".into(),
        ),
        LibraryError::ParseVersionError(e) => {
            (format!("its graft-plugin-abi version strings do not parse: {e}"), rebuild_rust())
        }
        LibraryError::IncompatibleVersionNumber { expected_version, actual_version, .. } => (
            format!("built against graft-plugin-abi {actual_version}; this host uses {expected_version}"),
            rebuild_rust(),
        ),
        LibraryError::RootModule { err, .. } => (
            shorten(format!("its root-module function failed: {err}")),
            "fix the plugin's `graft_adapter_kind_root` (it panicked or returned an error)".into(),
        ),
        LibraryError::AbiInstability(report) => (
            shorten(format!("its interface types are laid out differently from this host's: {report}")),
            rebuild_rust(),
        ),
        LibraryError::InvalidAbiHeader(header) => (
            format!("built with an incompatible abi_stable (library ABI {}.{})", header.abi_major, header.abi_minor),
            format!("{} (which uses abi_stable 0.11)", rebuild_rust()),
        ),
        LibraryError::InvalidCAbi { expected, found } => (
            format!("its compiler lays out C types differently (expected {expected}, found {found})"),
            "build the plugin with the same Rust toolchain and target as the host".into(),
        ),
        LibraryError::Many(errors) => {
            let (details, fixes): (Vec<String>, Vec<String>) = errors.into_iter().map(describe).unzip();
            let mut fixes: Vec<String> = fixes;
            fixes.dedup();
            (shorten(details.join("; ")), fixes.join("; "))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use abi_stable::sabi_types::VersionNumber;

    use super::*;

    fn detail_and_fix(e: LibraryError) -> (String, String) {
        match library_error(Path::new("/p/libx.so"), e) {
            Error::Plugin { path, detail, fix } => {
                assert_eq!(path, "/p/libx.so");
                (detail, fix)
            }
            other => panic!("not a plugin error: {other}"),
        }
    }

    #[test]
    fn version_mismatch_says_what_to_rebuild_against() {
        let (detail, fix) = detail_and_fix(LibraryError::IncompatibleVersionNumber {
            library_name: "graft adapter kind",
            expected_version: VersionNumber { major: 0, minor: 1, patch: 0 },
            actual_version: VersionNumber { major: 0, minor: 2, patch: 3 },
        });
        assert_eq!(detail, "built against graft-plugin-abi 0.2.3; this host uses 0.1.0");
        assert!(fix.contains(&format!("graft-plugin-abi {}", host_abi_version())), "{fix}");
        assert_eq!(host_abi_version(), env!("CARGO_PKG_VERSION"), "graft and graft-plugin-abi share the version");
    }

    #[test]
    fn many_errors_join_and_deduplicate_fixes() {
        let v = |minor| VersionNumber { major: 0, minor, patch: 0 };
        let one = || LibraryError::IncompatibleVersionNumber {
            library_name: "x",
            expected_version: v(1),
            actual_version: v(2),
        };
        let (detail, fix) = detail_and_fix(LibraryError::Many(vec![one(), one()].into()));
        assert_eq!(detail.matches("built against").count(), 2, "{detail}");
        assert_eq!(fix, rebuild_rust());
    }

    #[test]
    fn files_that_are_not_libraries_are_refused_before_dlopen() {
        let dir = std::env::temp_dir().join(format!("graft-plugin-magic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = dir.join("notes.so");
        std::fs::write(&text, "just text").unwrap();
        let err = open(&text).err().unwrap();
        assert!(matches!(&err, Error::Plugin { detail, .. } if detail.contains("not a shared library")), "{err}");
        let empty = dir.join("empty.so");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(open(&empty), Err(Error::Plugin { .. })));
        let mut object = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
        object.extend_from_slice(&1u16.to_le_bytes());
        let obj = dir.join("object.so");
        std::fs::write(&obj, &object).unwrap();
        let err = open(&obj).err().unwrap();
        assert!(matches!(&err, Error::Plugin { fix, .. } if fix.contains("-shared")), "{err}");
        let missing = open(&dir.join("missing.so")).err().unwrap();
        assert!(matches!(&missing, Error::Plugin { detail, .. } if detail.contains("cannot open")), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
