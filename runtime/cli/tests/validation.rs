//! The `graft` binary's argument and input validation (issue 15, README "Reliability"):
//! `bench`/`run` numbers are checked by clap (`--seconds 1e300` used to panic, NaN was
//! accepted, `--batch 0` silently became 1), a 0-row input is an error that leaves no
//! stale outputs, a row whose outputs overflow is reported by row, and `--input
//! /dev/zero` fails at once instead of reading until memory runs out.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use graft::builder::{Matrix, ModelBuilder, WeightFormats};
use graft::npy;

fn graft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_graft")).args(args).env_remove("GRAFT_PLUGIN_DIR").output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("graft-cli-validation-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `y = 4·x0 − 4·x1 + 0.5` as an f32 model in `dir`.
fn model(dir: &Path) -> String {
    let mut b = ModelBuilder::new("difference");
    let x = b.dense_input("x", 2);
    let y = b.linear("fc", &x, Matrix::new(1, 2, vec![4.0, -4.0]), Some(vec![0.5]));
    b.output("y", &y);
    let path = dir.join("m.graft");
    b.write(&path, WeightFormats::uniform(graft::WeightFormat::F32)).unwrap();
    path.to_str().unwrap().to_string()
}

/// Fails with a usage error naming `flag` (clap's exit code 2), never a panic.
fn refused(args: &[&str], flag: &str) {
    let o = graft(args);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
    assert!(e.contains(flag) && !e.contains("panicked"), "{args:?}: {e}");
}

#[test]
fn numeric_flags_are_validated() {
    let dir = scratch("flags");
    let m = model(&dir);
    for bad in ["1e300", "NaN", "inf", "0", "-1", "abc"] {
        refused(&["bench", &m, &format!("--seconds={bad}")], "--seconds");
    }
    refused(&["bench", &m, "--batch", "0"], "--batch");
    refused(&["bench", &m, "--threads", "100000"], "--threads");
    refused(&["run", &m, "--batch", "0"], "--batch");
    refused(&["run", &m, "--threads", "100000"], "--threads");
    // A valid short bench still runs.
    let o = graft(&["bench", &m, "--seconds", "0.05", "--batch", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("batch 3"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zero_rows_fail_and_leave_no_stale_outputs() {
    let dir = scratch("zero");
    let m = model(&dir);
    let (x, out) = (dir.join("x.npy"), dir.join("out"));
    npy::write_f32(&x, &[2, 2], &[1.0, 2.0, 3.0, 4.0]).unwrap();
    let input = format!("x={}", x.display());
    let args = ["run", &m, "--input", &input, "--output-dir", out.to_str().unwrap()];
    assert!(graft(&args).status.success());
    assert!(out.join("y.npy").exists());
    // The same command on 0 rows: an error, and the earlier y.npy is gone.
    npy::write_f32(&x, &[0, 2], &[]).unwrap();
    let o = graft(&args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("0 rows"), "{}", stderr(&o));
    assert!(!out.join("y.npy").exists(), "a stale output survived a failed run");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_overflowing_row_is_reported_by_row() {
    let dir = scratch("overflow");
    let m = model(&dir);
    let (x, out) = (dir.join("x.npy"), dir.join("out"));
    // Row 1 is finite but 4·1e38 overflows f32.
    npy::write_f32(&x, &[3, 2], &[1.0, 2.0, 1e38, -1e38, 0.0, 0.0]).unwrap();
    let input = format!("x={}", x.display());
    let args = ["run", &m, "--input", &input, "--output-dir", out.to_str().unwrap(), "--batch", "2"];
    let o = graft(&args);
    let e = stderr(&o);
    assert!(!o.status.success());
    assert!(e.contains("output `y`") && e.contains("row 1") && e.contains("1 of 3 rows"), "{e}");
    assert!(!out.join("y.npy").exists());
    // --allow-non-finite writes the values as computed.
    let mut allowed = args.to_vec();
    allowed.push("--allow-non-finite");
    let o = graft(&allowed);
    assert!(o.status.success(), "{}", stderr(&o));
    let npy::NpyData::F32(y) = npy::read(&out.join("y.npy")).unwrap().data else { panic!("f32") };
    assert_eq!((y[0], y[2]), (4.0 - 8.0 + 0.5, 0.5));
    assert!(y[1].is_infinite());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_endless_input_fails_at_once() {
    let dir = scratch("devzero");
    let m = model(&dir);
    let o = graft(&["run", &m, "--input", "x=/dev/zero", "--output-dir", dir.join("out").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/dev/zero") && stderr(&o).contains("bad magic"), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}
