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
            3 => check_elf_extent(path, &mut file), // ET_DYN
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

/// Checks that every program header segment and every section with file contents lies
/// inside the file, before `dlopen` maps it. The loader maps segments by their declared
/// offsets; a truncated file (a copy into the plugin directory still in progress) maps
/// pages past end-of-file, and touching them kills the process with SIGBUS. Checked here,
/// it is a typed refusal. (A file truncated *after* this check is the one case left:
/// plugin files must not be rewritten while a process may load them — copy, then rename.)
fn check_elf_extent(path: &Path, file: &mut std::fs::File) -> Result<()> {
    let size = file.metadata().map_err(|e| refused(path, format!("cannot stat: {e}"), "check the file"))?.len();
    let truncated = |what: String| {
        refused(
            path,
            format!("a truncated or corrupt ELF file ({what}; the file has {size} bytes)"),
            "copy the complete library again (copy to a temporary name, then rename into the plugin directory)",
        )
    };
    let header = read_at(file, 0, 64).ok_or_else(|| truncated("the ELF header is cut short".into()))?;
    let elf = Elf::new(&header).ok_or_else(|| truncated("unknown ELF class or byte order".into()))?;
    let (phoff, shoff) = (elf.word(&header, elf.off(0x20, 0x1c)), elf.word(&header, elf.off(0x28, 0x20)));
    let field16 = |at64: usize, at32: usize| u64::from(elf.half(&header, elf.off(at64, at32)));
    let (phentsize, mut phnum) = (field16(0x36, 0x2a), field16(0x38, 0x2c));
    let (shentsize, mut shnum) = (field16(0x3a, 0x2e), field16(0x3c, 0x30));
    let table_end = |off: u64, entsize: u64, num: u64| off.checked_add(entsize.checked_mul(num)?);
    let check_table = |what: &str, off: u64, entsize: u64, num: u64| match table_end(off, entsize, num) {
        Some(end) if end <= size => Ok(()),
        _ => Err(truncated(format!("its {what} table ends at byte {off} + {num} × {entsize}"))),
    };
    let (min_ph, min_sh) = if elf.is64 { (56, 64) } else { (32, 40) };
    // Extended numbering: counts that do not fit 16 bits live in section header 0.
    if shoff != 0 && (shnum == 0 || phnum == 0xffff) {
        if shentsize < min_sh {
            return Err(truncated(format!("section header entries of {shentsize} bytes")));
        }
        check_table("section header", shoff, shentsize, 1)?;
        let s0 = read_at(file, shoff, shentsize as usize).ok_or_else(|| truncated("section header 0".into()))?;
        if shnum == 0 {
            shnum = elf.word(&s0, elf.off(0x20, 0x14));
        }
        if phnum == 0xffff {
            phnum = u64::from(elf.u32(&s0, elf.off(0x2c, 0x1c)));
        }
    }
    if phnum > 0 {
        if phentsize < min_ph {
            return Err(truncated(format!("program header entries of {phentsize} bytes")));
        }
        check_table("program header", phoff, phentsize, phnum)?;
        let table = read_at(file, phoff, (phentsize * phnum) as usize)
            .ok_or_else(|| truncated("the program header table cannot be read".into()))?;
        for (i, ph) in table.chunks_exact(phentsize as usize).enumerate() {
            let (offset, filesz) = (elf.word(ph, elf.off(0x08, 0x04)), elf.word(ph, elf.off(0x20, 0x10)));
            if offset.checked_add(filesz).is_none_or(|end| end > size) {
                return Err(truncated(format!(
                    "segment {i} declares bytes {offset}..{}",
                    offset.saturating_add(filesz)
                )));
            }
        }
    }
    if shoff != 0 && shnum > 0 {
        if shentsize < min_sh {
            return Err(truncated(format!("section header entries of {shentsize} bytes")));
        }
        check_table("section header", shoff, shentsize, shnum)?;
        let table = read_at(file, shoff, (shentsize * shnum) as usize)
            .ok_or_else(|| truncated("the section header table cannot be read".into()))?;
        const SHT_NOBITS: u32 = 8;
        for (i, sh) in table.chunks_exact(shentsize as usize).enumerate() {
            if elf.u32(sh, 4) == SHT_NOBITS {
                continue; // .bss and friends occupy no file bytes
            }
            let (offset, len) = (elf.word(sh, elf.off(0x18, 0x10)), elf.word(sh, elf.off(0x20, 0x14)));
            if offset.checked_add(len).is_none_or(|end| end > size) {
                return Err(truncated(format!("section {i} declares bytes {offset}..{}", offset.saturating_add(len))));
            }
        }
    }
    Ok(())
}

/// `len` bytes of `file` at `offset`, or `None` if the file is shorter.
fn read_at(file: &mut std::fs::File, offset: u64, len: usize) -> Option<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).ok()?;
    buf.resize(len, 0);
    file.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Field access for one ELF file's class (32/64-bit) and byte order.
struct Elf {
    is64: bool,
    little: bool,
}

impl Elf {
    fn new(header: &[u8]) -> Option<Elf> {
        let is64 = match header.get(4)? {
            1 => false,
            2 => true,
            _ => return None,
        };
        let little = match header.get(5)? {
            1 => true,
            2 => false,
            _ => return None,
        };
        Some(Elf { is64, little })
    }

    /// The offset of a field in this class.
    fn off(&self, at64: usize, at32: usize) -> usize {
        if self.is64 { at64 } else { at32 }
    }

    fn bytes<const N: usize>(&self, b: &[u8], at: usize) -> [u8; N] {
        // Callers pass offsets inside tables whose length was checked; a short slice
        // reads as zeros rather than panicking.
        let mut out = [0u8; N];
        if let Some(src) = b.get(at..at + N) {
            out.copy_from_slice(src);
        }
        out
    }

    fn half(&self, b: &[u8], at: usize) -> u16 {
        let v = self.bytes::<2>(b, at);
        if self.little { u16::from_le_bytes(v) } else { u16::from_be_bytes(v) }
    }

    fn u32(&self, b: &[u8], at: usize) -> u32 {
        let v = self.bytes::<4>(b, at);
        if self.little { u32::from_le_bytes(v) } else { u32::from_be_bytes(v) }
    }

    /// An address-sized field (`Elf64_Off`/`Elf64_Xword`, or their 32-bit forms).
    fn word(&self, b: &[u8], at: usize) -> u64 {
        if !self.is64 {
            return u64::from(self.u32(b, at));
        }
        let v = self.bytes::<8>(b, at);
        if self.little { u64::from_le_bytes(v) } else { u64::from_be_bytes(v) }
    }
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

    /// A shared library this process has mapped (libc, or whatever comes first).
    #[cfg(target_os = "linux")]
    fn some_shared_library() -> PathBuf {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let lib = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.starts_with('/') && p.contains(".so"))
            .unwrap();
        PathBuf::from(lib)
    }

    /// A library cut short anywhere — inside its segments (where `dlopen` would map pages
    /// past end-of-file and the process would die of SIGBUS) or only in its trailing
    /// section headers — is refused before `dlopen` with a typed error; the whole file
    /// passes the same check.
    #[test]
    #[cfg(target_os = "linux")]
    fn truncated_libraries_are_refused_before_dlopen() {
        let dir = std::env::temp_dir().join(format!("graft-plugin-truncated-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = std::fs::read(some_shared_library()).unwrap();
        let whole = dir.join("whole.so");
        std::fs::write(&whole, &bytes).unwrap();
        let mut file = std::fs::File::open(&whole).unwrap();
        check_elf_extent(&whole, &mut file).unwrap();
        let n = bytes.len();
        for cut in [64, 200, n / 3, n / 2, n * 9 / 10, n - 1] {
            let path = dir.join(format!("cut{cut}.so"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let err = open(&path).err().unwrap();
            assert!(
                matches!(&err, Error::Plugin { detail, fix, .. }
                    if detail.contains("truncated or corrupt ELF") && fix.contains("rename")),
                "cut at {cut} of {n}: {err}"
            );
        }
        // A section table pointing past the end (a corrupt, not short, header) too.
        let mut corrupt = bytes.clone();
        corrupt[0x28..0x30].copy_from_slice(&(n as u64).to_le_bytes()); // e_shoff (ELF64 LE)
        let path = dir.join("corrupt.so");
        std::fs::write(&path, &corrupt).unwrap();
        assert!(matches!(open(&path), Err(Error::Plugin { detail, .. }) if detail.contains("section header table")));
        std::fs::remove_dir_all(&dir).unwrap();
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
