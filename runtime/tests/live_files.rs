//! Model files that change on disk while a model maps them (README, "Files under a live
//! model"): a truncation is a typed `FileChanged` error for the run, not SIGBUS; an
//! in-place rewrite is a typed error, never outputs mixing two versions; a rename over the
//! path is not a change (the model keeps serving the version it opened, bit for bit).
//! Also: the fingerprint covers every byte.

#![allow(clippy::unwrap_used)]

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use graft::builder::WeightFormats;
use graft::synthetic::{Dlrm, GraphInputs};
use graft::{Error, Model, Session, SessionOptions};

const ROWS: usize = 256;

/// A ~1 MiB f32 DLRM: several pages of embedding tables that random ids read all over.
fn spec() -> Dlrm {
    Dlrm { dense: 13, bottom: vec![32, 16], fields: 4, vocab: 4096, dim: 16, bag: 2, top: vec![32], seed: 7 }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("graft-live-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_model(path: &Path, seed: u64) {
    Dlrm { seed, ..spec() }.build().write(path, WeightFormats::from_name("f32").unwrap()).unwrap();
}

fn run(session: &mut Session, x: &GraphInputs) -> graft::Result<Vec<u32>> {
    let out = session.run(&x.inputs())?;
    Ok(out.get("logit").unwrap().iter().map(|v| v.to_bits()).collect())
}

fn file_changed(result: graft::Result<Vec<u32>>) -> String {
    match result {
        Err(Error::FileChanged { detail, .. }) => detail,
        other => panic!("expected FileChanged, got {:?}", other.map(|v| v.len())),
    }
}

#[test]
fn a_truncated_model_is_a_typed_error_not_sigbus() {
    let dir = scratch("truncate");
    let path = dir.join("m.graft");
    write_model(&path, 1);
    let model = Model::open(&path).unwrap();
    let x = GraphInputs::new(model.graph(), ROWS, 3);
    let mut session = Session::new(&model, SessionOptions::default()).unwrap();
    let before = run(&mut session, &x).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
    // The next run reads tables past the new end: zero pages, flagged, refused.
    let detail = file_changed(run(&mut session, &x));
    assert!(detail.contains("truncated") || detail.contains("changed size"), "{detail}");
    // Sticky: the model stays refused, for new sessions too.
    file_changed(run(&mut session, &x));
    assert!(matches!(model.check_file(), Err(Error::FileChanged { .. })));
    // Reading the mapping directly past the end hits the guard instead of SIGBUS.
    let tail = &model.bytes()[model.bytes().len() - 1];
    assert_eq!(*tail, 0);
    // Reopened after a complete rewrite, it serves again.
    drop(session);
    drop(model);
    write_model(&path, 1);
    let model = Model::open(&path).unwrap();
    let mut session = Session::new(&model, SessionOptions::default()).unwrap();
    assert_eq!(run(&mut session, &x).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_in_place_rewrite_is_a_typed_error_never_a_mix() {
    let dir = scratch("rewrite");
    let path = dir.join("m.graft");
    let other = dir.join("other.graft");
    write_model(&path, 1);
    write_model(&other, 2); // same layout and size, other weights
    let model = Model::open(&path).unwrap();
    let x = GraphInputs::new(model.graph(), ROWS, 3);
    let mut session = Session::new(&model, SessionOptions::default()).unwrap();
    run(&mut session, &x).unwrap();
    // Timestamps have a granularity of a few milliseconds: rewrite well after the last write.
    std::thread::sleep(Duration::from_millis(50));
    // `cp other.graft m.graft` without the truncation: the mapping sees the new bytes.
    let bytes = std::fs::read(&other).unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&bytes).unwrap();
    drop(f);
    let detail = file_changed(run(&mut session, &x));
    assert!(detail.contains("modified in place"), "{detail}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A writer rewrites the file (alternating two versions of identical layout), then
/// truncates it, while runs go on: every run either returns exactly the outputs of the version opened or fails
/// with `FileChanged`; after the first failure every run fails.
#[test]
fn runs_racing_a_rewrite_see_one_version_or_fail() {
    let dir = scratch("race");
    let path = dir.join("m.graft");
    let other = dir.join("other.graft");
    write_model(&path, 1);
    write_model(&other, 2);
    let original = std::fs::read(&path).unwrap();
    let replacement = std::fs::read(&other).unwrap();
    let model = Model::open(&path).unwrap();
    let x = GraphInputs::new(model.graph(), ROWS, 3);
    let mut session = Session::new(&model, SessionOptions::default()).unwrap();
    let want = run(&mut session, &x).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(20));
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            // Chunk by chunk, so runs overlap half-written states.
            for bytes in [&replacement, &original, &replacement] {
                for (i, chunk) in bytes.chunks(64 << 10).enumerate() {
                    f.seek(SeekFrom::Start((i * (64 << 10)) as u64)).unwrap();
                    f.write_all(chunk).unwrap();
                }
            }
            // Then a truncation, as `cp` starts with: later runs fault past the end.
            f.set_len(original.len() as u64 / 3).unwrap();
            stop.store(true, std::sync::atomic::Ordering::Release);
        });
        let (mut ok, mut refused) = (0, 0);
        while !stop.load(std::sync::atomic::Ordering::Acquire) || ok + refused < 10 {
            match run(&mut session, &x) {
                Ok(got) => {
                    assert_eq!(refused, 0, "a run succeeded after the change was seen");
                    assert!(got == want, "a successful run did not compute the opened version");
                    ok += 1;
                }
                Err(Error::FileChanged { .. }) => refused += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(refused > 0, "the rewrite was never noticed ({ok} runs)");
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_rename_over_the_path_is_not_a_change() {
    let dir = scratch("rename");
    let path = dir.join("m.graft");
    let staged = dir.join("staged.graft");
    write_model(&path, 1);
    let model = Model::open(&path).unwrap();
    let x = GraphInputs::new(model.graph(), ROWS, 3);
    let mut session = Session::new(&model, SessionOptions::default()).unwrap();
    let before = run(&mut session, &x).unwrap();
    write_model(&staged, 2);
    std::fs::rename(&staged, &path).unwrap();
    assert_eq!(run(&mut session, &x).unwrap(), before, "the opened version keeps serving");
    // The new version is seen only by opening it.
    let fresh = Model::open(&path).unwrap();
    let mut s2 = Session::new(&fresh, SessionOptions::default()).unwrap();
    assert_ne!(run(&mut s2, &x).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two models that differ in one byte of one tensor, far from where a sampling
/// fingerprint looks (not in the first, middle or last 4 KiB), have different
/// fingerprints; the fingerprint is XXH64 of the whole file.
#[test]
fn the_fingerprint_covers_every_byte() {
    let dir = scratch("fingerprint");
    let path = dir.join("m.graft");
    write_model(&path, 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let model = Model::open(&path).unwrap();
    let table = model.envelope().tensors.iter().max_by_key(|t| t.len).unwrap().clone();
    assert!(table.len > 4 * 4096 * 2, "the table must be larger than the samples");
    let at = table.offset + table.len / 4 + 1;
    bytes[at] ^= 0x01;
    let edited = dir.join("edited.graft");
    std::fs::write(&edited, &bytes).unwrap();
    let other = Model::open(&edited).unwrap();
    assert_ne!(model.fingerprint(), other.fingerprint());
    assert_eq!(other.fingerprint(), graft::hash::xxh64(&bytes, 0));
    assert_eq!(model.fingerprint(), Model::from_slice_copy(&std::fs::read(&path).unwrap()).unwrap().fingerprint());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(feature = "lora")]
mod peft {
    use graft::adapters::{Registry, RowAdapters};
    use graft::synthetic::lora::{LoraSpec, write_peft_lora};

    use super::*;

    const FILE: &str = "adapter_model.safetensors";

    fn run_with(model: &Model, registry: &Registry, x: &GraphInputs) -> graft::Result<Vec<u32>> {
        let mut session = Session::new(model, SessionOptions { threads: 1, max_batch: ROWS, ..Default::default() })?;
        let rows = RowAdapters::all(registry, "u")?;
        let out = session.run_with(&x.inputs(), &rows)?;
        Ok(out.get("logit").unwrap().iter().map(|v| v.to_bits()).collect())
    }

    /// A PEFT file (of at most `COPY_LIMIT` bytes) is read once at load: truncating it,
    /// writing NaN into it or rewriting it afterwards changes nothing the adapter computes
    /// (on a mapping these were SIGBUS or NaN outputs with success). Loading it again
    /// through the registry is how a new version is taken.
    #[test]
    fn a_small_adapter_file_changed_after_load_changes_nothing() {
        let dir = scratch("peft-small");
        let path = dir.join("m.graft");
        write_model(&path, 1);
        let model = Model::open(&path).unwrap();
        let x = GraphInputs::new(model.graph(), ROWS, 3);
        let adapter = dir.join("u");
        let size = write_peft_lora(&model, &adapter, &LoraSpec::every_linear(8, 5)).unwrap();
        assert!(size <= graft_plugin_lora::COPY_LIMIT);
        let registry = Registry::new(&model);
        registry.insert(registry.load_peft("u", &adapter).unwrap()).unwrap();
        let want = run_with(&model, &registry, &x).unwrap();
        assert_ne!(want, run(&mut Session::new(&model, SessionOptions::default()).unwrap(), &x).unwrap());

        let file = adapter.join(FILE);
        let original = std::fs::read(&file).unwrap();
        // NaN over the whole data section, in place.
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        let header = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
        f.seek(SeekFrom::Start(header as u64)).unwrap();
        f.write_all(&f32::NAN.to_le_bytes().repeat((original.len() - header) / 4)).unwrap();
        assert_eq!(run_with(&model, &registry, &x).unwrap(), want, "NaN written after load");
        f.set_len(16).unwrap();
        drop(f);
        assert_eq!(run_with(&model, &registry, &x).unwrap(), want, "truncated after load");
        // The new version is taken only by loading it again: here it is refused (torn).
        assert!(registry.load_peft("u", &adapter).is_err());
        std::fs::write(&file, &original).unwrap();
        registry.upsert(registry.load_peft("u", &adapter).unwrap()).unwrap();
        assert_eq!(run_with(&model, &registry, &x).unwrap(), want);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A PEFT file larger than `COPY_LIMIT` stays mapped: truncating it makes the next run
    /// with the adapter a typed adapter error (the SIGBUS guard's zero pages are never
    /// returned as outputs), rewriting it in place too; runs of the base alone go on.
    #[test]
    fn a_large_mapped_adapter_file_changed_after_load_is_a_typed_error() {
        let dir = scratch("peft-large");
        let path = dir.join("m.graft");
        let spec = Dlrm { top: vec![4096], ..spec() };
        spec.build().write(&path, graft::builder::WeightFormats::from_name("f32").unwrap()).unwrap();
        let model = Model::open(&path).unwrap();
        let x = GraphInputs::new(model.graph(), 4, 3); // few rows: the adapter is large
        let lora = LoraSpec::every_linear(1024, 5);
        let adapter = dir.join("u");
        let size = write_peft_lora(&model, &adapter, &lora).unwrap();
        assert!(size > graft_plugin_lora::COPY_LIMIT, "{size} bytes");
        let registry = Registry::new(&model);
        registry.insert(registry.load_peft("u", &adapter).unwrap()).unwrap();
        let want = run_with(&model, &registry, &x).unwrap();
        assert_eq!(run_with(&model, &registry, &x).unwrap(), want);

        let file = adapter.join(FILE);
        std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(size / 3).unwrap();
        match run_with(&model, &registry, &x) {
            Err(Error::Adapter { code, detail, .. }) => {
                assert_eq!(code, "io");
                assert!(detail.contains("truncated") || detail.contains("changed size"), "{detail}");
            }
            other => panic!("expected a typed adapter error, got {:?}", other.map(|v| v.len())),
        }
        let base = run(&mut Session::new(&model, SessionOptions::default()).unwrap(), &x);
        assert!(base.is_ok(), "the base model is unaffected");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// A model path that is a FIFO is refused at once (opening it would block until a writer
/// appears), and so is a directory.
#[test]
#[cfg(unix)]
fn a_model_path_that_is_not_a_regular_file_is_refused() {
    let dir = scratch("fifo");
    let fifo = dir.join("m.graft");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for path in [&fifo, &dir] {
        match Model::open(path) {
            Err(Error::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput),
            other => panic!("{}: {other:?}", path.display()),
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
