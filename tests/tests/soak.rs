//! Adapter hot swaps under load: serving threads never see a torn or half-published
//! adapter, and a replaced adapter lives exactly as long as the runs holding it.
//!
//! The registry promises (see `runtime/src/adapters/registry.rs`) that a run uses one
//! snapshot from start to end, so every row of a batch sees one version of each adapter,
//! and that the version a run started with outlives a swap until that run lets go. A bug
//! here (a snapshot read twice, an adapter freed while in use, a map published half
//! built) shows up only under contention, so the soak runs several readers against a
//! writer that swaps as often as readers can take snapshots, and checks every output row
//! bit for bit against precomputed expectations. The writer waits, after each swap, until
//! some reader has taken a snapshot of the new generation: every published version is
//! served by at least one run, and the test cannot pass by letting the writer finish
//! before the readers start.

mod common_adapters;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common_adapters::{Batch, TestResult, adapter_dir, base_model, bits, logits, scratch, session};
use graft::adapters::{LoadedAdapter, Registry, RowAdapters};
use graft::synthetic::kinds::{SsfPoolSpec, write_routing, write_ssf_pool};
use graft::synthetic::lora::{LoraSpec, write_peft_lora};

/// Replacements of adapter `x` the writer publishes (LoRA ↔ DoRA).
const SWAPS: u64 = 10_000;
/// Replacements in the cross-kind soak (FedIns pool ↔ AdaptDHM routing).
const KIND_SWAPS: u64 = 3_000;
/// Serving threads, each with its own one-thread session.
const READERS: usize = 4;
/// Rows per batch: small, so that a debug build turns batches over quickly.
const ROWS: usize = 16;

/// Which adapter set row `r` uses: `x` (the swapped one), the base model, or `y`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Use {
    X,
    Base,
    Y,
}

/// Interleaved and uneven, so that every group gathers non-consecutive rows.
fn use_of(r: usize) -> Use {
    match r % 5 {
        0 | 3 => Use::X,
        1 => Use::Base,
        _ => Use::Y,
    }
}

fn assign(registry: &Registry) -> graft::Result<RowAdapters> {
    let mut rows = RowAdapters::new(registry);
    for r in 0..ROWS {
        match use_of(r) {
            Use::X => rows.push("x")?,
            Use::Base => rows.push_base()?,
            Use::Y => rows.push("y")?,
        }
    }
    Ok(rows)
}

/// Two versions of `x` (different seeds; v2 is DoRA with another rank, so the swap
/// changes the kind of work too) and a third adapter `y`, loaded once.
struct Adapters {
    v1: Arc<LoadedAdapter>,
    v2: Arc<LoadedAdapter>,
    y: Arc<LoadedAdapter>,
}

fn load_adapters(registry: &Registry, dir: &std::path::Path) -> TestResult<Adapters> {
    let model = registry.model();
    let (d1, d2) = (dir.join("x_v1"), dir.join("x_v2"));
    write_peft_lora(model, &d1, &LoraSpec::every_linear(4, 101))?;
    write_peft_lora(model, &d2, &LoraSpec { dora: true, ..LoraSpec::every_linear(8, 202) })?;
    Ok(Adapters {
        v1: registry.load_peft("x", &d1)?,
        v2: registry.load_peft("x", &d2)?,
        y: registry.load_peft("y", adapter_dir("lora_b"))?,
    })
}

/// `x` swaps between kinds: a FedIns SSF pool (query: the dense input; per-row state from
/// a tap, posts at two linears) and AdaptDHM routing (a tap at the interaction vector,
/// the logit replaced); `y` is a LoRA adapter.
fn load_kind_adapters(registry: &Registry, dir: &std::path::Path) -> TestResult<Adapters> {
    let model = registry.model();
    let (pool, route) = (dir.join("x_pool.safetensors"), dir.join("x_route.safetensors"));
    let sites = ["top_fc1", "top_fc2"];
    let spec = SsfPoolSpec { query: "dense", sites: &sites, pool: 6, top_k: 2, strength: 0.3, seed: 303 };
    write_ssf_pool(model, &pool, &spec)?;
    write_routing(model, &route, "Concat", "top_fc3", 3, &[8], 404)?;
    Ok(Adapters {
        v1: registry.load_path("x", &pool, "")?,
        v2: registry.load_path("x", &route, "")?,
        y: registry.load_peft("y", adapter_dir("lora_b"))?,
    })
}

/// What each reader counted.
#[derive(Default, Debug)]
struct Tally {
    batches: u64,
    rows: u64,
    v1_batches: u64,
    v2_batches: u64,
    /// `x` rows matching the other version than the batch's snapshot holds, or neither.
    torn_rows: u64,
    /// Base or `y` rows that differ from their fixed expectation.
    wrong_fixed_rows: u64,
    errors: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.batches += other.batches;
        self.rows += other.rows;
        self.v1_batches += other.v1_batches;
        self.v2_batches += other.v2_batches;
        self.torn_rows += other.torn_rows;
        self.wrong_fixed_rows += other.wrong_fixed_rows;
        self.errors.extend(other.errors);
    }
}

#[test]
fn hot_swaps_never_tear_rows() -> TestResult {
    soak("soak_hot_swaps", load_adapters, SWAPS)
}

#[test]
fn hot_swaps_across_kinds_never_tear_rows() -> TestResult {
    soak("soak_kind_swaps", load_kind_adapters, KIND_SWAPS)
}

type MakeAdapters = fn(&Registry, &std::path::Path) -> TestResult<Adapters>;

/// Readers serve mixed batches while the writer alternates `x` between two versions
/// `swaps` times; every row is checked bit for bit.
fn soak(name: &str, make: MakeAdapters, swaps_wanted: u64) -> TestResult {
    let dir = scratch(name)?;
    let model = base_model(&dir)?;
    let registry = Registry::new(&model);
    let Adapters { v1, v2, y } = make(&registry, &dir)?;
    let batch = Batch::load(ROWS)?;

    // Expectations, one thread: the mixed batch with x = v1, then with x = v2.
    registry.insert(v1.clone())?;
    registry.insert(y)?;
    let mut s = session(&model, ROWS)?;
    let want_v1 = bits(&logits(&mut s, &batch, &assign(&registry)?)?);
    registry.replace(v2.clone())?;
    let want_v2 = bits(&logits(&mut s, &batch, &assign(&registry)?)?);
    registry.replace(v1.clone())?;
    for r in 0..ROWS {
        if use_of(r) == Use::X {
            assert_ne!(want_v1[r], want_v2[r], "row {r}: the two versions of x must be distinguishable");
        } else {
            assert_eq!(want_v1[r], want_v2[r], "row {r} does not use x, so it cannot depend on it");
        }
    }
    let (v1_id, v2_id) = (v1.version(), v2.version());

    let writer_done = AtomicBool::new(false);
    let failed = AtomicBool::new(false);
    // The newest snapshot generation a reader has taken; the writer waits for it to reach
    // each generation it publishes.
    let observed = AtomicU64::new(0);
    let total = Mutex::new(Tally::default());
    let mut swaps = 0u64;

    // Readers wake the writer when they take a generation it waits for (it sleeps between
    // swaps rather than spin, so the two cores go to the readers).
    let writer = std::thread::current();
    std::thread::scope(|scope| -> TestResult {
        for _ in 0..READERS {
            let writer = writer.clone();
            let (registry, model, batch, want_v1, want_v2) = (&registry, &model, &batch, &want_v1, &want_v2);
            let (writer_done, failed, observed, total) = (&writer_done, &failed, &observed, &total);
            scope.spawn(move || {
                let mut t = Tally::default();
                let mut read = || -> TestResult {
                    let mut s = session(model, ROWS)?;
                    while !writer_done.load(Ordering::Acquire) && !failed.load(Ordering::Relaxed) {
                        // A fresh snapshot per batch, as a server would take per request.
                        let rows = assign(registry)?;
                        let generation = rows.snapshot().generation();
                        if observed.fetch_max(generation, Ordering::AcqRel) < generation {
                            writer.unpark();
                        }
                        let version = rows.snapshot().require("x")?.version();
                        let want = match version {
                            v if v == v1_id => {
                                t.v1_batches += 1;
                                want_v1
                            }
                            v if v == v2_id => {
                                t.v2_batches += 1;
                                want_v2
                            }
                            v => return Err(format!("snapshot holds an unknown version {v} of x").into()),
                        };
                        let got = bits(&logits(&mut s, batch, &rows)?);
                        for (r, (&g, &w)) in got.iter().zip(want).enumerate() {
                            match (use_of(r), g == w) {
                                (_, true) => {}
                                (Use::X, false) => t.torn_rows += 1,
                                (_, false) => t.wrong_fixed_rows += 1,
                            }
                        }
                        t.batches += 1;
                        t.rows += got.len() as u64;
                    }
                    Ok(())
                };
                if let Err(e) = read() {
                    t.errors.push(e.to_string());
                    failed.store(true, Ordering::Relaxed);
                    writer.unpark();
                }
                total.lock().unwrap_or_else(|p| p.into_inner()).add(t);
            });
        }

        // The writer: alternate v2, v1, v2, … under the same id.
        let result = (|| -> TestResult {
            for i in 0..swaps_wanted {
                let next = if i % 2 == 0 { &v2 } else { &v1 };
                let old = registry.replace(next.clone())?;
                if Arc::ptr_eq(&old, next) {
                    return Err(format!("swap {i} replaced a version with itself").into());
                }
                swaps += 1;
                // This thread is the only writer, so the current generation is its own.
                let published = registry.snapshot().generation();
                while observed.load(Ordering::Acquire) < published {
                    if failed.load(Ordering::Relaxed) {
                        return Err("a reader failed; the writer stops".into());
                    }
                    // A timeout only as a safety net against a lost wake-up; no timing is measured.
                    std::thread::park_timeout(std::time::Duration::from_millis(50));
                }
            }
            Ok(())
        })();
        writer_done.store(true, Ordering::Release);
        result
    })?;

    let t = total.into_inner().unwrap_or_else(|p| p.into_inner());
    println!(
        "{name}: {swaps} swaps, {READERS} readers, {} batches of {ROWS} rows ({} rows checked), \
         x=v1 in {} batches, x=v2 in {} batches, {} torn x rows, {} wrong base/y rows",
        t.batches, t.rows, t.v1_batches, t.v2_batches, t.torn_rows, t.wrong_fixed_rows
    );
    assert!(t.errors.is_empty(), "reader errors: {:?}", t.errors);
    assert_eq!(swaps, swaps_wanted);
    assert_eq!(t.torn_rows, 0, "x rows matching neither the batch's version nor any version");
    assert_eq!(t.wrong_fixed_rows, 0, "base or y rows changed while x was swapped");
    // The writer waited until a reader took every generation it published, and the
    // swaps alternate: each version was served at least SWAPS/2 times.
    assert!(t.v2_batches >= swaps_wanted / 2, "v2 served in only {} batches", t.v2_batches);
    assert!(t.v1_batches >= swaps_wanted / 2, "v1 served in only {} batches", t.v1_batches);
    assert_eq!(t.rows, t.batches * ROWS as u64);
    // The registry holds the last published version; nothing else keeps old ones alive.
    assert!(Arc::ptr_eq(registry.snapshot().require("x")?, &v1), "v1 was published last");
    Ok(())
}

/// A run that took its snapshot before a swap finishes on the old version, and the old
/// version is freed exactly when the last holder lets go.
#[test]
fn replaced_adapter_serves_its_holders_then_drops() -> TestResult {
    let dir = scratch("soak_in_flight")?;
    let model = base_model(&dir)?;
    let registry = Registry::new(&model);
    let Adapters { v1, v2, y } = load_adapters(&registry, &dir)?;
    registry.insert(y)?;
    let batch = Batch::load(ROWS)?;
    let mut s = session(&model, ROWS)?;

    // Expectations from registries of their own.
    let want = |adapter: &Arc<LoadedAdapter>| -> TestResult<Vec<u32>> {
        let own = Registry::new(&model);
        own.insert(adapter.clone())?;
        Ok(bits(&logits(&mut session(&model, ROWS)?, &batch, &RowAdapters::all(&own, "x")?)?))
    };
    let (want_v1, want_v2) = (want(&v1)?, want(&v2)?);
    assert_ne!(want_v1, want_v2);

    let v1_weak = Arc::downgrade(&v1);
    registry.insert(v1)?; // the registry now holds the only strong reference
    assert_eq!(v1_weak.strong_count(), 1);
    let held = RowAdapters::all(&registry, "x")?;
    assert!(v1_weak.strong_count() > 1, "the row assignment holds v1");

    let old = registry.replace(v2)?;
    assert!(Arc::ptr_eq(&old, &v1_weak.upgrade().ok_or("v1 dropped while held")?));
    drop(old);
    // Published: new assignments see v2; the held one still runs v1, bit for bit.
    assert_eq!(bits(&logits(&mut s, &batch, &RowAdapters::all(&registry, "x")?)?), want_v2);
    assert_eq!(bits(&logits(&mut s, &batch, &held)?), want_v1, "a held assignment keeps its version");
    assert!(v1_weak.strong_count() > 0, "v1 is alive while an assignment holds it");

    // A clone of the assignment (another in-flight request on the same snapshot) is a
    // holder too.
    let clone = held.clone();
    drop(held);
    assert!(v1_weak.strong_count() > 0, "the clone still holds v1");
    assert_eq!(bits(&logits(&mut s, &batch, &clone)?), want_v1);
    drop(clone);
    assert_eq!(v1_weak.strong_count(), 0, "v1 is freed when its last holder goes");
    assert_eq!(bits(&logits(&mut s, &batch, &RowAdapters::all(&registry, "x")?)?), want_v2);
    Ok(())
}
