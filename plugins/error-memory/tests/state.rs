//! Persistence: save → restore gives the same memory; every damaged or foreign state file
//! is a `STATE` error that says why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::{Adapter, ErrorCode, PluginError};
use graft_plugin_error_memory::{Config, ErrorMemory, Estimate, STATE_METADATA_KEY};

const D: usize = 4;

fn config(estimate: Estimate) -> Config {
    let mut c = Config::new("h", "p");
    c.tables = 3;
    c.bits = 3;
    c.seed = 11;
    c.estimate = estimate;
    c.decay = 0.95;
    c.exact_capacity = 16;
    c
}

fn fill(a: &ErrorMemory, rng: &mut Rng, n: usize) {
    for _ in 0..n {
        let h = rng.vec(D);
        let y_hat = rng.next_f32();
        learn(a, &h, y_hat, if rng.next_f32() < 0.3 { 1.0 } else { 0.0 });
    }
}

fn save(a: &ErrorMemory, path: &str) -> Result<(), PluginError> {
    a.save_state(path.into()).into_result()
}

fn options(path: &str) -> String {
    serde_json::json!({ "state": path }).to_string()
}

#[test]
fn restore_reproduces_estimates() {
    for estimate in [Estimate::Pooled, Estimate::TopK, Estimate::Exact] {
        let dir = TempDir::new("restore");
        let model = memory_model(D);
        let c = config(estimate);
        let a = build(&dir, "a.safetensors", &model, &c, &[], "").unwrap();
        let mut rng = Rng(77);
        fill(&a, &mut rng, 40); // more than exact_capacity: the ring has wrapped
        let state = dir.file("mem.state");
        save(&a, &state).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 2, "only the adapter and the state file remain: {names:?}");

        let b = load(&model, &dir.file("a.safetensors"), &options(&state)).unwrap();
        assert_eq!(b.stats().inserts, 40);
        assert!(b.info().notes.iter().any(|n| n.as_str().starts_with("state=restored from")));
        let queries: Vec<Vec<f32>> = (0..10).map(|_| rng.vec(D)).collect();
        for q in &queries {
            assert_eq!(a.estimate(q).unwrap().to_bits(), b.estimate(q).unwrap().to_bits(), "{estimate:?}");
            assert_eq!(tap(&a, q).unwrap(), tap(&b, q).unwrap());
        }
        // The decay weight was restored too: the same new samples keep them identical.
        let mut ra = Rng(5);
        let mut rb = Rng(5);
        fill(&a, &mut ra, 7);
        fill(&b, &mut rb, 7);
        for q in &queries {
            assert_eq!(a.estimate(q).unwrap().to_bits(), b.estimate(q).unwrap().to_bits(), "{estimate:?}");
        }
        // Query-time settings may change across a restart.
        let mut c2 = c.clone();
        c2.lambda = 0.1;
        c2.tau = 2.0;
        c2.decay = 0.5;
        c2.pending = 3;
        let b2 = build(&dir, "b.safetensors", &model, &c2, &[], &options(&state)).unwrap();
        assert_eq!(b2.stats().inserts, 40);
        // Pending tickets are not persisted: the new instance starts at ticket 1.
        assert_err(b2.feedback(5, 1.0).into_result(), ErrorCode::TICKET, "ticket");
    }
}

#[test]
fn saved_tensors_have_documented_shapes() {
    let dir = TempDir::new("shapes");
    let model = memory_model(D);
    for (estimate, names) in [
        (Estimate::Pooled, vec!["C", "S"]),
        (Estimate::TopK, vec!["C", "K", "S"]),
        (Estimate::Exact, vec!["C", "S", "exact_e", "exact_h"]),
    ] {
        let a = build(&dir, "a.safetensors", &model, &config(estimate), &[], "").unwrap();
        fill(&a, &mut Rng(3), 5);
        let path = dir.file("s.state");
        save(&a, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut got: Vec<_> = st.names().into_iter().map(str::to_owned).collect();
        got.sort();
        assert_eq!(got, names);
        assert_eq!(read_tensor(&path, "S").0, vec![3, 8]);
        if estimate == Estimate::TopK {
            assert_eq!(read_tensor(&path, "K").0, vec![3, 8, D]);
        }
        if estimate == Estimate::Exact {
            assert_eq!(read_tensor(&path, "exact_h").0, vec![5, D]);
        }
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(meta.metadata().as_ref().unwrap().get(STATE_METADATA_KEY).unwrap()).unwrap();
        assert_eq!(json["format_version"], 1);
        assert_eq!(json["inserts"], 5);
        assert_eq!(json["model_fingerprint"], "0123456789abcdef");
        assert!(json["checksum"].as_str().unwrap().len() == 16);
    }
}

fn state_error(model: &FakeModel, adapter: &str, state: &str) -> PluginError {
    assert_err(load(model, adapter, &options(state)), ErrorCode::STATE, "state")
}

#[test]
fn damaged_and_foreign_state_is_refused() {
    let dir = TempDir::new("damaged");
    let model = memory_model(D);
    let a = build(&dir, "a.safetensors", &model, &config(Estimate::TopK), &[], "").unwrap();
    fill(&a, &mut Rng(9), 20);
    let state = dir.file("good.state");
    save(&a, &state).unwrap();
    let adapter = dir.file("a.safetensors");
    let good = std::fs::read(&state).unwrap();

    // Torn: truncated at several points.
    let bad = dir.file("bad.state");
    for cut in [0, 4, 8, 20, good.len() / 2, good.len() - 4, good.len() - 1] {
        std::fs::write(&bad, &good[..cut]).unwrap();
        let e = state_error(&model, &adapter, &bad);
        assert!(e.message.contains("torn"), "cut {cut}: {e}");
    }
    // A flipped byte in the tensor data.
    let mut flipped = good.clone();
    let last = flipped.len() - 3;
    flipped[last] ^= 0x10;
    std::fs::write(&bad, &flipped).unwrap();
    let e = state_error(&model, &adapter, &bad);
    assert!(e.message.contains("checksum mismatch"), "{e}");
    // Trailing garbage.
    let mut longer = good.clone();
    longer.extend_from_slice(b"xx");
    std::fs::write(&bad, &longer).unwrap();
    assert!(state_error(&model, &adapter, &bad).message.contains("torn"));

    // Another model.
    let mut other = model.clone();
    other.fingerprint ^= 1;
    let e = state_error(&other, &adapter, &state);
    assert!(e.message.contains("another model"), "{e}");
    // Another configuration: bits, seed, estimate, space.
    let mut changes: Vec<Config> = Vec::new();
    let base = config(Estimate::TopK);
    let mut c = base.clone();
    c.bits = 4;
    changes.push(c);
    let mut c = base.clone();
    c.seed = 12;
    changes.push(c);
    let mut c = base.clone();
    c.space = graft_plugin_error_memory::Units::Logit;
    changes.push(c);
    let mut c = base.clone();
    c.estimate = Estimate::Pooled;
    changes.push(c);
    for c in changes {
        let p = dir.file("other.safetensors");
        graft_plugin_error_memory::save(&p, &c, &[]).unwrap();
        let e = state_error(&model, &p, &state);
        assert!(e.message.contains("another configuration"), "{c:?}: {e}");
    }
    // Another key width.
    let wide = memory_model(D + 1);
    let e = state_error(&wide, &adapter, &state);
    assert!(e.message.contains("another configuration"), "{e}");

    // Not a state file at all: an adapter file.
    let e = state_error(&model, &adapter, &adapter);
    assert!(e.message.contains("not an error-memory state"), "{e}");
    // Missing file: an I/O error.
    assert_err(load(&model, &adapter, &options(&dir.file("missing.state"))), ErrorCode::IO, "state");
    // The good file still restores.
    load(&model, &adapter, &options(&state)).unwrap();
}

#[test]
fn save_errors_and_overwrite() {
    let dir = TempDir::new("save");
    let model = memory_model(D);
    let a = build(&dir, "a.safetensors", &model, &config(Estimate::Pooled), &[], "").unwrap();
    fill(&a, &mut Rng(1), 3);
    // A directory that does not exist: an I/O error, nothing left behind.
    let missing = dir.path().join("no/such/dir/s.state");
    assert_err(save(&a, missing.to_str().unwrap()), ErrorCode::IO, "state");
    assert_err(save(&a, ""), ErrorCode::BAD_CALL, "path");
    // Saving twice overwrites atomically.
    let path = dir.file("s.state");
    save(&a, &path).unwrap();
    fill(&a, &mut Rng(2), 3);
    save(&a, &path).unwrap();
    let b = load(&model, &dir.file("a.safetensors"), &options(&path)).unwrap();
    assert_eq!(b.stats().inserts, 6);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// A pid no process has (Linux: no `/proc/<pid>`), for a killed saver's leftovers.
#[cfg(target_os = "linux")]
fn dead_pid() -> u32 {
    (4_000_000..4_194_304).rev().find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).unwrap()
}

/// A save killed mid-write leaves `<path>.tmp.<pid>`; the next restore (start-up) or save
/// removes it once that pid is gone, and keeps a live process's temporary file.
#[test]
#[cfg(target_os = "linux")]
fn killed_save_leftovers_are_removed() {
    let dir = TempDir::new("stale");
    let model = memory_model(D);
    let a = build(&dir, "a.safetensors", &model, &config(Estimate::Pooled), &[], "").unwrap();
    fill(&a, &mut Rng(1), 3);
    let path = dir.file("s.state");
    save(&a, &path).unwrap();
    let stale = format!("{path}.tmp.{}", dead_pid());
    let stale_numbered = format!("{path}.tmp.{}.4", dead_pid());
    let live = format!("{path}.tmp.1"); // init never exits
    for p in [&stale, &stale_numbered, &live] {
        std::fs::write(p, vec![0u8; 4096]).unwrap();
    }
    load(&model, &dir.file("a.safetensors"), &options(&path)).unwrap();
    assert!(!std::path::Path::new(&stale).exists() && !std::path::Path::new(&stale_numbered).exists());
    assert!(std::path::Path::new(&live).exists(), "a live pid's file is not ours to remove");
    std::fs::write(&stale, b"again").unwrap();
    save(&a, &path).unwrap();
    assert!(!std::path::Path::new(&stale).exists(), "a save removes leftovers too");
    std::fs::remove_file(&live).unwrap();
}

/// Two memories of one process saving to one path at the same time (the same pid, so
/// the old `<path>.tmp.<pid>` name collided and one save failed) both succeed, every
/// time, and the file is always one of them, whole.
#[test]
fn concurrent_saves_to_one_path_both_succeed() {
    let dir = TempDir::new("concurrent");
    let model = memory_model(D);
    let a = build(&dir, "a.safetensors", &model, &config(Estimate::Pooled), &[], "").unwrap();
    let b = build(&dir, "b.safetensors", &model, &config(Estimate::Pooled), &[], "").unwrap();
    fill(&a, &mut Rng(1), 5);
    fill(&b, &mut Rng(2), 9);
    let path = dir.file("shared.state");
    std::thread::scope(|s| {
        for memory in [&a, &b] {
            let path = &path;
            s.spawn(move || {
                for _ in 0..25 {
                    save(memory, path).unwrap();
                }
            });
        }
    });
    let restored = load(&model, &dir.file("a.safetensors"), &options(&path)).unwrap();
    assert!([5, 9].contains(&restored.stats().inserts), "{}", restored.stats().inserts);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 3, "temporary files left: {names:?}");
}

/// Only regular files are written: a device (through a symlink too) or a FIFO is refused
/// with an `IO` error and left as it was.
#[test]
#[cfg(unix)]
fn device_targets_are_refused() {
    use std::os::unix::fs::FileTypeExt;
    let dir = TempDir::new("device");
    let model = memory_model(D);
    let a = build(&dir, "a.safetensors", &model, &config(Estimate::Pooled), &[], "").unwrap();
    fill(&a, &mut Rng(1), 3);
    let link = dir.path().join("null");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    for target in ["/dev/null", link.to_str().unwrap()] {
        let err = save(&a, target).unwrap_err();
        assert_eq!(err.code, ErrorCode::IO, "{target}");
        assert!(err.message.as_str().contains("not a regular file"), "{}", err.message);
    }
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
