//! Atomic file replacement shared by every writer of graft files (`graft convert`,
//! `graft adapter merge`, `graft demo`, the kinds' `save_state`).
//!
//! Why one implementation: each writer used to pick its own temporary name
//! (`<path>.tmp.<pid>`, `<path>.tmp-<pid>`, `model.graft.tmp`), so two savers in one
//! process collided on the name, a killed save left its temporary file behind forever,
//! and the final rename replaced whatever `path` was — a device node included. Here:
//!
//! - **Only regular files are written.** A `path` that exists (after following symlinks)
//!   and is not a regular file — a device, FIFO, socket or directory — is refused before
//!   anything is created ([`check_target`]).
//! - **Unique temporary names.** `<name>.tmp.<pid>.<n>` in `path`'s directory, created with
//!   `O_EXCL`, `n` from a process-wide counter: two savers to one path (threads or
//!   processes) each write their own file; the last rename wins and each rename installs
//!   a complete file, so the result is one saver's whole file, never a mix.
//! - **Cleanup.** The temporary file is removed on every error path. Files left by a
//!   killed saver (`<name>.tmp.<pid>` or `<name>.tmp.<pid>.<n>`) are removed when the next
//!   save of `path` starts, or when [`remove_stale_temps`] is called at start-up, once their
//!   pid is not alive (`kill(pid, 0)` answers `ESRCH`). A live pid's file is never touched,
//!   whoever owns it; on systems without that check nothing is removed.
//! - **Durability.** The file is fsynced before the rename and the directory after it.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Refuses a `path` that exists and is not a regular file (following symlinks).
///
/// The error is `io::ErrorKind::InvalidInput` and names what the path is.
pub fn check_target(path: &Path) -> io::Result<()> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(meta) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is {}, not a regular file; graft only writes regular files", path.display(), describe(&meta)),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// What kind of file `meta` describes, for error messages.
fn describe(meta: &fs::Metadata) -> &'static str {
    if meta.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// The directory `path` lives in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `<name>.tmp.` for `path`, the prefix of every temporary file of it.
fn temp_prefix(path: &Path) -> io::Result<OsString> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", path.display())))?;
    let mut prefix = name.to_os_string();
    prefix.push(".tmp.");
    Ok(prefix)
}

/// Whether process `pid` is alive; `None` when this platform cannot tell.
fn pid_alive(pid: u32) -> Option<bool> {
    #[cfg(unix)]
    {
        let pid = libc::pid_t::try_from(pid).ok()?;
        if pid <= 0 {
            return None;
        }
        // SAFETY: signal 0 performs only the existence and permission checks; no signal
        // is sent.
        if unsafe { libc::kill(pid, 0) } == 0 {
            return Some(true);
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::ESRCH) => Some(false),
            _ => Some(true), // EPERM: alive, someone else's
        }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        None
    }
}

/// The pid in a temporary file's suffix (`<pid>` or `<pid>.<n>`), if it is one of ours.
fn temp_pid(suffix: &str) -> Option<u32> {
    let (pid, rest) = match suffix.split_once('.') {
        Some((pid, n)) => (pid, Some(n)),
        None => (suffix, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || rest.is_some_and(|n| !digits(n)) {
        return None;
    }
    pid.parse().ok()
}

/// Removes temporary files of `path` left by savers that are no longer running. Returns
/// the files removed. Safe to call at any time: files of live processes are kept.
pub fn remove_stale_temps(path: &Path) -> io::Result<Vec<PathBuf>> {
    let prefix = temp_prefix(path)?;
    let prefix = prefix.to_string_lossy();
    let dir = parent_of(path);
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let own = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(suffix) = name.to_str().and_then(|n| n.strip_prefix(&*prefix)) else { continue };
        let Some(pid) = temp_pid(suffix) else { continue };
        if pid == own || pid_alive(pid) != Some(false) {
            continue;
        }
        // Only regular files: a directory or device under a matching name is not ours.
        if entry.file_type().is_ok_and(|t| t.is_file()) && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

/// Per-process sequence number of temporary files.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Creates a new temporary file for `path` with a name no other saver uses.
fn create_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    let prefix = temp_prefix(path)?;
    loop {
        let mut name = prefix.clone();
        name.push(format!("{}.{}", std::process::id(), SEQUENCE.fetch_add(1, Ordering::Relaxed)));
        let tmp = path.with_file_name(name);
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            // A file of a previous process with a recycled pid: take the next number.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io::Error::new(e.kind(), format!("cannot create {}: {e}", tmp.display()))),
        }
    }
}

/// Atomically replaces `path` with what `fill` writes: refuses a non-regular target,
/// removes stale temporary files of `path`, writes a unique temporary file, fsyncs it,
/// renames it onto `path` and fsyncs the directory. On any error the temporary file is
/// removed and `path` is untouched.
///
/// Errors from `fill` are returned as they are; others carry the path they concern.
pub fn write_atomic<T>(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<T>) -> io::Result<T> {
    check_target(path)?;
    // Best effort: a directory we cannot list still gets the write attempted.
    let _ = remove_stale_temps(path);
    let (tmp, mut file) = create_temp(path)?;
    let result = (|| {
        let value = fill(&mut file)?;
        file.sync_all().map_err(|e| io::Error::new(e.kind(), format!("cannot fsync {}: {e}", tmp.display())))?;
        drop(file);
        // The target may have become a device between the check and now; checking again
        // narrows (does not close) that window. `rename` never writes into a device: it
        // replaces the directory entry, which is what the first check guards.
        check_target(path)?;
        fs::rename(&tmp, path).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot rename {} onto {}: {e}", tmp.display(), path.display()))
        })?;
        Ok(value)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_dir(parent_of(path))?;
    result
}

/// Bytes an unprivileged writer may still put on the file system holding `dir`
/// (`statvfs`: `f_bavail · f_frsize`); `None` when this platform or file system cannot say.
pub fn available_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: `statvfs` is plain data; all-zero is a valid value to be overwritten.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        #[allow(clippy::useless_conversion)] // the field widths differ between platforms
        Some(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot fsync directory {}: {e}", dir.display())))
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(()) // directories cannot be opened for fsync here; the rename is still atomic
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("graft-files-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A pid that is not running: the largest pid the kernel would hand out is above
    /// every live one on a test machine, and we check it with the same call anyway.
    fn dead_pid() -> u32 {
        (4_000_000..4_194_304).rev().find(|&p| pid_alive(p) == Some(false)).unwrap()
    }

    #[test]
    fn temp_suffixes_parse() {
        assert_eq!(temp_pid("123"), Some(123));
        assert_eq!(temp_pid("123.7"), Some(123));
        assert_eq!(temp_pid("123."), None);
        assert_eq!(temp_pid("x123"), None);
        assert_eq!(temp_pid("123.7.1"), None);
        assert_eq!(temp_pid(""), None);
    }

    #[test]
    fn refuses_devices_fifos_and_directories() {
        let dir = scratch("targets");
        let err = write_atomic(Path::new("/dev/null"), |f| f.write_all(b"x")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("character device"), "{err}");
        assert!(!fs::metadata("/dev/null").unwrap().is_file());
        let link = dir.join("null-link");
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        assert!(write_atomic(&link, |f| f.write_all(b"x")).is_err());
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the symlink was replaced");
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = write_atomic(&fifo, |f| f.write_all(b"x")).unwrap_err();
        assert!(err.to_string().contains("FIFO"), "{err}");
        let err = write_atomic(&dir, |f| f.write_all(b"x")).unwrap_err();
        assert!(err.to_string().contains("directory") || err.kind() == io::ErrorKind::InvalidInput, "{err}");
        // Nothing was left next to the refused targets.
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_fill_leaves_target_and_no_temp() {
        let dir = scratch("fail");
        let path = dir.join("state.bin");
        fs::write(&path, b"old").unwrap();
        let err = write_atomic(&path, |f| {
            f.write_all(b"half")?;
            Err::<(), _>(io::Error::other("producer failed"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "producer failed");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stale_temps_of_dead_pids_are_removed_live_ones_kept() {
        let dir = scratch("stale");
        let path = dir.join("memory.safetensors");
        let dead = dead_pid();
        let stale_old = dir.join(format!("memory.safetensors.tmp.{dead}"));
        let stale_new = dir.join(format!("memory.safetensors.tmp.{dead}.3"));
        let live = dir.join(format!("memory.safetensors.tmp.{}.9", std::process::id()));
        let init = dir.join("memory.safetensors.tmp.1"); // pid 1 is always alive
        let other = dir.join(format!("other.tmp.{dead}"));
        for p in [&stale_old, &stale_new, &live, &init, &other] {
            fs::write(p, b"partial").unwrap();
        }
        write_atomic(&path, |f| f.write_all(b"new")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!stale_old.exists() && !stale_new.exists());
        assert!(live.exists() && init.exists() && other.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_savers_to_one_path_never_mix() {
        let dir = scratch("race");
        let path = dir.join("shared.bin");
        let payload = |i: u8| vec![i; 1 << 20];
        std::thread::scope(|s| {
            for i in 1..=8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..4 {
                        write_atomic(path, |f| f.write_all(&payload(i))).unwrap();
                    }
                });
            }
        });
        let bytes = fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 1 << 20);
        assert!(bytes.iter().all(|&b| b == bytes[0]), "a mix of savers' bytes");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "temporary files left");
        fs::remove_dir_all(&dir).unwrap();
    }
}
