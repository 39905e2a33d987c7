//! The on-disk PTX cache.
//!
//! NVRTC takes tens of milliseconds per module; a serving process should pay that once
//! per machine, not per start. Files are named by a key that hashes the module source,
//! the target arch, the NVRTC version and the compile options, so a changed kernel, a
//! different GPU or a new toolkit never reads a stale entry. Writes go to a temporary
//! file in the same directory and are renamed into place, so a reader never sees half a
//! file and concurrent writers of the same key are harmless. Every file carries its
//! length and a checksum of its PTX; a file that does not verify is ignored and
//! rewritten, never trusted.
//!
//! The directory is `GRAFT_CUDA_CACHE` if set, else `$XDG_CACHE_HOME/graft/cuda`, else
//! `$HOME/.cache/graft/cuda`, else `<temp dir>/graft-cuda`. A cache that cannot be
//! written only costs a recompile next time (the result is the same).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Module, Result, fnv1a64, nvrtc};

const MAGIC: &str = "graft-ptx-cache v1";

/// A cache directory.
#[derive(Clone, Debug)]
pub struct PtxCache {
    dir: PathBuf,
}

impl PtxCache {
    /// The cache in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> PtxCache {
        PtxCache { dir: dir.into() }
    }

    /// The cache at the default location (see the module docs).
    pub fn default_location() -> PtxCache {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let dir = env("GRAFT_CUDA_CACHE")
            .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("graft").join("cuda")))
            .or_else(|| env("HOME").map(|d| d.join(".cache").join("graft").join("cuda")))
            .unwrap_or_else(|| std::env::temp_dir().join("graft-cuda"));
        PtxCache { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache key of `module` for `arch` under NVRTC `version`.
    pub fn key(module: Module, arch: &str, version: (i32, i32)) -> String {
        let ver = format!("{}.{}", version.0, version.1);
        let opts = nvrtc::options(arch).join(" ");
        let h = fnv1a64(&[module.source().as_bytes(), arch.as_bytes(), ver.as_bytes(), opts.as_bytes()]);
        format!("{}-{arch}-nvrtc{ver}-{h:016x}.ptx", module.file_name().trim_end_matches(".cu"))
    }

    /// The PTX of `module` for `arch`: from the cache if a valid entry exists, else
    /// compiled by NVRTC and stored.
    pub fn get_or_compile(&self, module: Module, arch: &str) -> Result<String> {
        let version = nvrtc::version()?;
        let path = self.dir.join(Self::key(module, arch, version));
        if let Some(ptx) = read_entry(&path) {
            return Ok(ptx);
        }
        let compiled = nvrtc::compile(module, arch)?;
        // A cache that cannot be written costs only a recompile next time.
        let _ = write_entry(&self.dir, &path, &compiled.ptx);
        Ok(compiled.ptx)
    }
}

/// Reads and verifies an entry; `None` if missing or corrupt.
pub fn read_entry(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let (header, ptx) = text.split_once('\n')?;
    let mut parts = header.split(' ');
    let (m1, m2, len, sum) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if format!("{m1} {m2}") != MAGIC || parts.next().is_some() {
        return None;
    }
    let len: usize = len.parse().ok()?;
    let sum = u64::from_str_radix(sum, 16).ok()?;
    (ptx.len() == len && fnv1a64(&[ptx.as_bytes()]) == sum).then(|| ptx.to_string())
}

/// Writes an entry atomically (temporary file + rename).
pub fn write_entry(dir: &Path, path: &Path, ptx: &str) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    {
        let mut f = fs::File::create(&tmp)?;
        writeln!(f, "{MAGIC} {} {:016x}", ptx.len(), fnv1a64(&[ptx.as_bytes()]))?;
        f.write_all(ptx.as_bytes())?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("graft-cuda-cache-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn entries_round_trip_and_corruption_is_rejected() {
        let dir = tmpdir("rt");
        let path = dir.join("m.ptx");
        let ptx = ".version 8.8\n.target sm_90\n// body\n";
        write_entry(&dir, &path, ptx).expect("write");
        assert_eq!(read_entry(&path).as_deref(), Some(ptx));

        // Flip one byte of the PTX: the checksum no longer matches.
        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).expect("write");
        assert_eq!(read_entry(&path), None);

        // Truncated, empty, wrong magic.
        let good = format!("{MAGIC} {} {:016x}\n{ptx}", ptx.len(), fnv1a64(&[ptx.as_bytes()]));
        fs::write(&path, &good[..good.len() - 5]).expect("write");
        assert_eq!(read_entry(&path), None);
        fs::write(&path, "").expect("write");
        assert_eq!(read_entry(&path), None);
        fs::write(&path, good.replace("v1", "v0")).expect("write");
        assert_eq!(read_entry(&path), None);
        fs::write(&path, &good).expect("write");
        assert_eq!(read_entry(&path).as_deref(), Some(ptx));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_change_with_arch_version_and_module() {
        let k = PtxCache::key(Module::Linear, "compute_90", (12, 9));
        assert_ne!(k, PtxCache::key(Module::Linear, "compute_87", (12, 9)));
        assert_ne!(k, PtxCache::key(Module::Linear, "compute_90", (12, 8)));
        assert_ne!(k, PtxCache::key(Module::Lora, "compute_90", (12, 9)));
        assert!(k.starts_with("linear-compute_90-nvrtc12.9-"));
    }

    #[test]
    fn default_location_honours_the_override() {
        // Only read here: tests in this binary never set the variable.
        if let Some(d) = std::env::var_os("GRAFT_CUDA_CACHE").filter(|d| !d.is_empty()) {
            assert_eq!(PtxCache::default_location().dir(), Path::new(&d));
        } else {
            assert!(
                PtxCache::default_location().dir().ends_with("cuda")
                    || PtxCache::default_location().dir().ends_with("graft-cuda")
            );
        }
    }
}
