//! Adapter kinds built as shared-library plugins for the plugin tests.
//!
//! The kinds are built with cargo into a target directory of their own (under the test
//! target's temp dir): building them with `--features plugin` in the workspace's target
//! directory would overwrite the unhashed `deps/libgraft_plugin_*.rlib` that `graft`
//! itself links against (crates with a `cdylib` type have no hash in their file names),
//! breaking later builds there. Each library is copied out right after its build, since a
//! later build with other features writes the same file name. The first build compiles
//! the kinds' dependencies (about a minute); later ones reuse them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shared-library file name of a crate's cdylib on this platform.
pub fn library_file(crate_name: &str) -> String {
    format!("{}{}.{}", std::env::consts::DLL_PREFIX, crate_name.replace('-', "_"), std::env::consts::DLL_EXTENSION)
}

/// The target directory the plugin builds share, under a test binary's temp dir (pass
/// `env!("CARGO_TARGET_TMPDIR")`, which only test targets see).
pub fn target_dir(test_tmpdir: &str) -> PathBuf {
    Path::new(test_tmpdir).join("plugin-builds")
}

/// Builds `packages` (cargo package names) with `features` (e.g. `graft-plugin-lora/plugin`)
/// into `target` and copies each library into `out` under `<stem><suffix>.<ext>`; returns
/// the copies in `packages` order.
pub fn build(
    target: &Path,
    packages: &[&str],
    features: &[&str],
    out: &Path,
    suffix: &str,
) -> Result<Vec<PathBuf>, String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or("no workspace directory")?;
    let mut command = Command::new(env!("CARGO"));
    command.current_dir(workspace).args(["build", "--lib"]);
    for p in packages {
        command.args(["-p", p]);
    }
    let output = command
        .args(["--features", &features.join(",")])
        .arg("--target-dir")
        .arg(target)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .map_err(|e| format!("cargo did not start: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo build of {packages:?} failed:\n{}", String::from_utf8_lossy(&output.stderr)));
    }
    std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
    packages
        .iter()
        .map(|p| {
            let file = library_file(p);
            let stem = file.rsplit_once('.').map_or(file.as_str(), |(s, _)| s);
            let to = out.join(format!("{stem}{suffix}.{}", std::env::consts::DLL_EXTENSION));
            std::fs::copy(target.join("debug").join(&file), &to).map_err(|e| format!("{file}: {e}"))?;
            Ok(to)
        })
        .collect()
}
