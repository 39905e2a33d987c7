//! The `graft` binary against a faulty environment (issue 15, README "Reliability"):
//! a truncated plugin in `$GRAFT_PLUGIN_DIR` is reported and skipped (it used to kill
//! every `graft run --adapter` with SIGBUS), write targets that are not regular files are
//! refused by `adapter merge` and `convert`, and `demo` refuses a model the file system
//! cannot hold before writing anything.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn graft() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_graft"));
    c.env_remove("GRAFT_PLUGIN_DIR");
    c
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "graft failed ({:?}):\n{}", o.status, text(&o));
    text(&o)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("graft-cli-hardening-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The fixture model converted to an f32 `.graft` in `dir`.
fn model(dir: &Path) -> PathBuf {
    let path = dir.join("m.graft");
    let onnx = fixtures().join("dlrm_small/model.onnx");
    ok(graft()
        .args(["convert", onnx.to_str().unwrap(), "-o", path.to_str().unwrap(), "--weights", "f32"])
        .output()
        .unwrap());
    path
}

fn run_args(model: &Path, out: &Path) -> Vec<String> {
    let fx = fixtures().join("dlrm_small");
    let mut args = vec!["run".into(), model.display().to_string(), "--output-dir".into(), out.display().to_string()];
    args.push("--input".into());
    args.push(format!("dense={}", fx.join("dense.npy").display()));
    for k in 0..4 {
        args.push("--input".into());
        args.push(format!("ids_f{k}={}", fx.join(format!("ids_f{k}_padded.npy")).display()));
    }
    args
}

/// A shared library of this system (whatever `/proc/self/maps` lists first), cut to a
/// third: `dlopen` of it maps segments past end-of-file and dies of SIGBUS.
fn truncated_library(to: &Path) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let lib = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.starts_with('/') && p.contains(".so"))
        .unwrap();
    let bytes = std::fs::read(lib).unwrap();
    std::fs::write(to, &bytes[..bytes.len() / 3]).unwrap();
}

#[test]
#[cfg(target_os = "linux")]
fn a_truncated_plugin_in_the_plugin_dir_is_skipped_and_peft_still_runs() {
    let dir = scratch("plugin-dir");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    truncated_library(&plugins.join(format!("libhalfcopied.{}", std::env::consts::DLL_EXTENSION)));
    let model = model(&dir);
    let adapter = fixtures().join("dlrm_small_lora/adapters/lora_a");
    let out = dir.join("out");
    let mut args = run_args(&model, &out);
    args.extend(["--adapter".into(), format!("lora_a={}", adapter.display())]);
    let printed = ok(graft().args(&args).env("GRAFT_PLUGIN_DIR", &plugins).output().unwrap());
    assert!(printed.contains("warning: $GRAFT_PLUGIN_DIR") && printed.contains("libhalfcopied"), "{printed}");
    assert!(printed.contains("truncated or corrupt ELF"), "{printed}");
    assert!(out.join("logit.npy").exists());
    // `plugin list` reports it and still lists the built-in kinds.
    let listed = text(&graft().args(["plugin", "list", "--plugin-dir", plugins.to_str().unwrap()]).output().unwrap());
    assert!(listed.contains("lora") && listed.contains("truncated"), "{listed}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `adapter merge -o` and `convert -o` refuse a device (directly or through a symlink)
/// and a FIFO, and leave them as they were; a regular file is still replaced.
#[test]
fn write_targets_that_are_not_regular_files_are_refused() {
    let dir = scratch("targets");
    let model = model(&dir);
    let adapter = fixtures().join("dlrm_small_lora/adapters/lora_a");
    let link = dir.join("null-link.graft");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    let fifo = dir.join("fifo.graft");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for target in [Path::new("/dev/null"), &link, &fifo] {
        let merge = graft()
            .args(["adapter", "merge", model.to_str().unwrap(), "--adapter", adapter.to_str().unwrap(), "-o"])
            .arg(target)
            .output()
            .unwrap();
        assert!(!merge.status.success(), "merge onto {} succeeded", target.display());
        assert!(text(&merge).contains("not a regular file"), "{}", text(&merge));
        let onnx = fixtures().join("dlrm_small/model.onnx");
        let convert = graft().args(["convert", onnx.to_str().unwrap(), "-o"]).arg(target).output().unwrap();
        assert!(!convert.status.success() && text(&convert).contains("not a regular file"), "{}", text(&convert));
    }
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    let merged = dir.join("merged.graft");
    std::fs::write(&merged, b"old").unwrap();
    ok(graft()
        .args(["adapter", "merge", model.to_str().unwrap(), "--adapter", adapter.to_str().unwrap(), "-o"])
        .arg(&merged)
        .output()
        .unwrap());
    assert!(std::fs::metadata(&merged).unwrap().len() > 1000);
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains(".tmp")), "temporary files left: {names:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `demo --vocab 2^40` asks for petabytes: refused before a byte is written, no
/// temporary file left behind.
#[test]
fn demo_refuses_a_model_the_disk_cannot_hold() {
    let dir = scratch("demo");
    let o = graft()
        .args(["demo", "--vocab", &(1u64 << 40).to_string(), "--model-dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(text(&o).contains("the container needs") && text(&o).contains("free"), "{}", text(&o));
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "files left in the model dir");
    let _ = std::fs::remove_dir_all(&dir);
}
