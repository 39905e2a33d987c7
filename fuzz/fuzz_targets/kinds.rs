//! Fuzzes the Adapters II kinds (`ssf-pool`, `error-memory`, `routing`) through the whole
//! runtime: kind detection, config and options parsing, safetensors validation, module
//! resolution and target checks at load, then the hooks inside real runs (prefix passes,
//! gathered row groups, stacks, per-request scales, thread splits, both kernel levels),
//! tickets and feedback, and an error memory's saved state.
//!
//! Input layout: one selector byte, then a graft adapter file (a safetensors file whose
//! `__metadata__` key `graft.adapter` holds the kind's JSON config). The selector:
//!
//! | bits | meaning |
//! |---|---|
//! | 0–1 | loader: 0 = `Registry::load_path` (kind from the metadata); 1, 2, 3 = `Registry::load` as `ssf-pool`, `error-memory`, `routing` whatever the metadata says |
//! | 2–3 | batch rows: 1, 3, 8, 37 (37 runs on a 2-thread session, so hooks split into chunks) |
//! | 4–5 | rows' adapter sets: 0 = every row the adapter; 1 = adapter and base rows alternating (a gathered group); 2 = cycling adapter ×1, base, adapter ×0, stack (adapter ×2, adapter ×−0.5); 3 = `RowAdapters::all` |
//! | 6 | kernels: 0 = the best the CPU runs, 1 = scalar |
//! | 7 | options: 0 = `""`, 1 = `{"config": C}` with `C` the metadata's config text verbatim |
//!
//! The file goes to a temporary file (the kinds read paths) and loads against a fixed
//! 6→8→4→1 MLP ([`model`]; `fuzz/examples/seed_corpus.rs` builds the same one). A load
//! error is fine. A loaded adapter is published and run twice on a batch with a zero row
//! and a large row among random ones; every ticket gets a label in between. Errors from
//! runs and feedback are fine too (a config can legally ask for something a run refuses,
//! such as a probability node that holds logits); panics, aborts and sanitizer reports are
//! the findings, and so is a broken promise:
//! - a ticket answered twice, a ticket 0 or a non-finite label must be refused;
//! - an error memory's saved state must reload (same file, same options) and predict
//!   exactly what the memory that saved it predicts; a torn state file must be refused.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use graft::adapters::{LoadedAdapter, Registry, RowAdapters};
use graft::builder::{Matrix, ModelBuilder, WeightFormats};
use graft::graph::Activation;
use graft::kernels::Level;
use graft::{Input, Model, Session, SessionOptions};
use libfuzzer_sys::fuzz_target;

/// Batch sizes selector bits 2–3 choose; at least `PARALLEL_ROWS` rows run on two threads.
const ROWS: [usize; 4] = [1, 3, 8, 37];
/// The host splits hook work across threads from 32 rows.
const PARALLEL_ROWS: usize = 32;
/// Kinds selector bits 0–1 force (index 1–3).
const KINDS: [&str; 3] = ["ssf-pool", "error-memory", "routing"];
/// The id every input's adapter is published under (replacing the previous input's).
const ID: &str = "fuzz";
/// Labels fed back, cycled by row.
const LABELS: [f32; 3] = [1.0, 0.0, 0.3];

/// The fixed model: `x[6] → fc1 → r1 relu → fc2 → r2 relu → fc3 = logit → prob sigmoid`.
/// Keep in sync with `model()` in `fuzz/examples/seed_corpus.rs`.
fn model() -> ModelBuilder {
    let values = |n: usize, seed: f32| (0..n).map(|i| ((i as f32 + seed) * 0.37).sin() * 0.6).collect::<Vec<_>>();
    let mut b = ModelBuilder::new("kinds");
    b.dense_input("x", 6);
    b.linear("fc1", "x", Matrix::new(8, 6, values(48, 1.0)), Some(values(8, 2.0)));
    b.activation("r1", Activation::Relu, "fc1");
    b.linear("fc2", "r1", Matrix::new(4, 8, values(32, 3.0)), Some(values(4, 4.0)));
    b.activation("r2", Activation::Relu, "fc2");
    b.linear("fc3", "r2", Matrix::new(1, 4, values(4, 5.0)), Some(vec![0.1]));
    b.activation("prob", Activation::Sigmoid, "fc3");
    b.output("logit", "fc3");
    b.output("prob", "prob");
    b
}

/// What the selector byte asks for.
#[derive(Clone, Copy, Debug)]
struct Selector {
    /// `None`: detect the kind from the file.
    kind: Option<&'static str>,
    rows: usize,
    pattern: u8,
    scalar: bool,
    config_option: bool,
}

impl Selector {
    fn new(byte: u8) -> Selector {
        Selector {
            kind: match byte & 3 {
                0 => None,
                k => Some(KINDS[usize::from(k) - 1]),
            },
            rows: ROWS[usize::from((byte >> 2) & 3)],
            pattern: (byte >> 4) & 3,
            scalar: byte & 0x40 != 0,
            config_option: byte & 0x80 != 0,
        }
    }

    /// The session for this input: scalar or best kernels, one or two threads.
    fn session(self) -> usize {
        usize::from(self.scalar) * 2 + usize::from(self.rows >= PARALLEL_ROWS)
    }
}

struct World {
    registry: Registry,
    /// Indexed by [`Selector::session`].
    sessions: Mutex<Vec<Session>>,
    /// Dense `x` values for the largest batch; a batch of `n` rows uses the first `n`.
    x: Vec<f32>,
    dir: PathBuf,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let bytes = model().to_bytes(WeightFormats::uniform(graft::WeightFormat::F32)).expect("the model builds");
        let model = Model::from_slice_copy(&bytes).expect("the model opens");
        let available = graft::kernels::available();
        let best = available.last().map_or(Level::Scalar, |k| k.level);
        let max_rows = ROWS.iter().copied().max().unwrap_or(1);
        let mut sessions = Vec::new();
        for level in [best, Level::Scalar] {
            for threads in [1, 2] {
                let options =
                    SessionOptions { max_batch: max_rows, threads, kernels: Some(level), ..Default::default() };
                sessions.push(Session::new(&model, options).expect("the model plans"));
            }
        }
        let mut rng = graft::synthetic::Rng::new(7);
        let mut x: Vec<f32> = (0..max_rows * 6).map(|_| rng.normal()).collect();
        // Row 1 is all zeros (zero queries and keys: norm floors, ties); row 2 is large.
        x.iter_mut().skip(6).take(6).for_each(|v| *v = 0.0);
        x.iter_mut().skip(12).take(6).for_each(|v| *v *= 1e4);
        let dir = std::env::temp_dir().join(format!("graft-fuzz-kinds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        World { registry: Registry::new(&model), sessions: Mutex::new(sessions), x, dir }
    })
}

/// The `graft.adapter` metadata of a safetensors file, as raw text (for the `config`
/// option), if the header gets that far.
fn metadata_config(file: &[u8]) -> Option<String> {
    let (len, rest) = file.split_first_chunk::<8>()?;
    let len = usize::try_from(u64::from_le_bytes(*len)).ok()?;
    let header: serde_json::Value = serde_json::from_slice(rest.get(..len)?).ok()?;
    header.get("__metadata__")?.get(graft::adapters::ADAPTER_METADATA_KEY)?.as_str().map(str::to_string)
}

/// The rows' adapter sets for `pattern`.
fn row_sets(registry: &Registry, rows: usize, pattern: u8) -> graft::Result<RowAdapters> {
    if pattern == 3 {
        return RowAdapters::all(registry, ID);
    }
    let mut sets = RowAdapters::new(registry);
    for r in 0..rows {
        let set: &[(&str, f32)] = match (pattern, r % 4) {
            (0, _) => &[(ID, 1.0)],
            (1, 0 | 2) | (2, 0) => &[(ID, 1.0)],
            (1, _) | (2, 1) => &[],
            (2, 2) => &[(ID, 0.0)],
            _ => &[(ID, 2.0), (ID, -0.5)],
        };
        sets.push_stack(set)?;
    }
    Ok(sets)
}

/// Runs one batch; returns every output value (row-major, output by output) and the
/// tickets issued, or `None` when the run refused.
fn run(session: &mut Session, inputs: &[Input<'_>], sets: &RowAdapters) -> Option<(Vec<f32>, Vec<Issued>)> {
    // Formatting walks every field of the error: it must not panic either.
    let out = session.run_with(inputs, sets).map_err(|e| drop(e.to_string())).ok()?;
    let mut values = Vec::new();
    for (_, view) in out.iter() {
        for r in 0..view.rows() {
            values.extend_from_slice(view.row(r));
        }
    }
    let tickets =
        out.tickets().map(|t| Issued { row: t.row, adapter: Arc::clone(t.adapter), value: t.value }).collect();
    Some((values, tickets))
}

/// A ticket detached from the run's outputs.
struct Issued {
    row: usize,
    adapter: Arc<LoadedAdapter>,
    value: u64,
}

/// Feeds every ticket its row's label, checking the promised refusals on the way.
fn feedback(tickets: &[Issued]) {
    for (i, t) in tickets.iter().enumerate() {
        if i == 0 {
            assert!(t.adapter.feedback(t.value, f32::NAN).is_err(), "a NaN label was accepted");
        }
        if let Err(e) = t.adapter.feedback(t.value, LABELS[t.row % LABELS.len()]) {
            // Fine: the ring of pending tickets may be smaller than the batch.
            drop(e.to_string());
            continue;
        }
        assert!(t.adapter.feedback(t.value, 0.5).is_err(), "ticket {} was answered twice", t.value);
    }
}

/// `{"config": C, "state": path}` or `{"state": path}`.
fn state_options(config: Option<&str>, state: &Path) -> Option<String> {
    let state = serde_json::to_string(state.to_str()?).ok()?;
    Some(match config {
        Some(c) => format!(r#"{{"config": {c}, "state": {state}}}"#),
        None => format!(r#"{{"state": {state}}}"#),
    })
}

/// Saves the published error memory's state, reloads it into a fresh instance and checks
/// that it predicts exactly what the saved one does; a torn copy must be refused.
fn round_trip_state(
    w: &World,
    session: &mut Session,
    inputs: &[Input<'_>],
    load: &dyn Fn(&str) -> graft::Result<Arc<LoadedAdapter>>,
    adapter: &LoadedAdapter,
    config: Option<&str>,
    sel: Selector,
) {
    let state = w.dir.join("state.safetensors");
    if let Err(e) = adapter.save_state(&state) {
        return drop(e.to_string());
    }
    let sets = row_sets(&w.registry, sel.rows, sel.pattern).expect("the id is published");
    // Predictions do not change the memory (only labels do), so this is what it saved.
    let Some((expected, _)) = run(session, inputs, &sets) else { return };
    let Some(options) = state_options(config, &state) else { return };
    let restored = match load(&options) {
        Ok(a) => a,
        Err(e) => panic!("an error memory cannot reload the state it saved: {e}"),
    };
    w.registry.upsert(restored).expect("an adapter of this model publishes");
    let sets = row_sets(&w.registry, sel.rows, sel.pattern).expect("the id is published");
    if let Some((values, _)) = run(session, inputs, &sets) {
        let same =
            values.len() == expected.len() && values.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "the restored memory predicts differently:\n{values:?}\nvs\n{expected:?}");
    }

    let Ok(bytes) = std::fs::read(&state) else { return };
    let torn = w.dir.join("state-torn.safetensors");
    if std::fs::write(&torn, &bytes[..bytes.len() / 2]).is_err() {
        return;
    }
    let Some(options) = state_options(config, &torn) else { return };
    assert!(load(&options).is_err(), "a torn state file ({} of {} bytes) loaded", bytes.len() / 2, bytes.len());
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, file)) = data.split_first() else { return };
    let sel = Selector::new(selector);
    let w = world();
    let path = w.dir.join("adapter.safetensors");
    if std::fs::write(&path, file).is_err() {
        return;
    }
    let config = if sel.config_option { metadata_config(file) } else { None };
    let options = config.as_deref().map_or(String::new(), |c| format!(r#"{{"config": {c}}}"#));
    let load = |options: &str| -> graft::Result<Arc<LoadedAdapter>> {
        match sel.kind {
            None => w.registry.load_path(ID, &path, options),
            Some(kind) => {
                let source = path.to_str().ok_or_else(|| graft::Error::InvalidOption { detail: "path".into() })?;
                w.registry.load(kind, ID, source, options)
            }
        }
    };
    let adapter = match load(&options) {
        Ok(adapter) => adapter,
        Err(e) => return drop(e.to_string()),
    };
    std::hint::black_box(format!("{adapter:?} {:?}", adapter.info()));
    w.registry.upsert(Arc::clone(&adapter)).expect("an adapter of this model publishes");
    assert!(adapter.feedback(0, 0.5).is_err(), "ticket 0 was accepted");

    let mut sessions = w.sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let Some(session) = sessions.get_mut(sel.session()) else { return };
    let inputs = [Input::dense("x", &w.x[..sel.rows * 6], 6)];
    let sets = row_sets(&w.registry, sel.rows, sel.pattern).expect("the id is published");
    // Twice: the second run sees what the first run's labels taught.
    let Some((_, tickets)) = run(session, &inputs, &sets) else { return };
    feedback(&tickets);
    let Some((_, tickets)) = run(session, &inputs, &sets) else { return };
    feedback(&tickets);

    if adapter.kind() == "error-memory" {
        round_trip_state(w, session, &inputs, &load, &adapter, config.as_deref(), sel);
    } else if let Err(e) = adapter.save_state(&w.dir.join("state.safetensors")) {
        drop(e.to_string());
    }
});
