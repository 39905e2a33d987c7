//! Library models (the zoo): whole-model latency of the recommender models in
//! `tests/fixtures/zoo/` (torch-rechub / FuxiCTR exports), graft f32 and q8 against ONNX
//! Runtime f32, ONNX Runtime int8 (`scripts/zoo_int8.py`: `quantize_dynamic`, QInt8
//! weights) and tract, all on the same ONNX file, at batch 1, 16 and 256 with 1 thread
//! (and 2 threads at batch 256; ORT's intra-op threads matched, tract single-threaded).
//!
//! Method, per model × batch × threads: a pool of [`POOL`] distinct random batches is
//! prepared before timing (ids uniform over each field's vocabulary, seeded; dense values
//! normal; history sequences right-padded with id 0 like the fixtures), so no run sees the
//! inputs of the run before it. Then rounds (`fair::abba`): each round runs every engine
//! once on the same pool batch, in ABBA order (reversed every other round, rotated every
//! two), timing each engine's turn alone. Reported: the median time per engine and the
//! median of the per-round ratios peer / graft (which cancels the drift of a shared
//! machine). `GRAFT_BENCH_SECONDS` sets the time per configuration (default 2.5). Results
//! go to `target/criterion/zoo_paired.json` (with the machine, date and command) for
//! `scripts/bench-report.py`.
//!
//! Before timing, graft f32's outputs on one pool batch must equal ONNX Runtime f32's
//! within 1e-5 (asserted, also in quick mode), graft q8's within 0.05; the ORT int8 and
//! tract diffs are printed.
//!
//! `cargo bench -p graft --features onnx --bench zoo`; `cargo test --benches` (quick
//! mode) runs one model per family for a few rounds. `GRAFT_ZOO_MODELS=id,id` and
//! `GRAFT_ZOO_ENGINES=graft-f32,ort-f32,...` narrow a run (e.g. for `perf record`).

#![allow(clippy::unwrap_used)]

mod fair;
mod peers;

use std::path::{Path, PathBuf};
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use fair::{Budget, Slot, abba};
use graft::builder::WeightFormats;
use graft::{Input, Model, Session, SessionOptions};
use peers::{NdData, NdFeed, OrtPool, TractPool, quick, scratch};
use serde_json::{Value, json};

/// The benchmarked zoo models (one per family in quick mode: see [`QUICK`]).
const MODELS: [&str; 8] = [
    "rechub_deepfm",
    "rechub_dcnv2",
    "fuxictr_dcnv2",
    "rechub_autoint",
    "fuxictr_autoint",
    "rechub_din",
    "rechub_dssm",
    "rechub_mmoe",
];
/// One model per family: fm, cross, attention, din, two-tower, multi-task.
const QUICK: [&str; 6] =
    ["rechub_deepfm", "fuxictr_dcnv2", "fuxictr_autoint", "rechub_din", "rechub_dssm", "rechub_mmoe"];
/// Distinct random batches per batch size, cycled through while timing.
const POOL: usize = 64;
/// graft f32 against ORT f32 (the fixtures' own torch-vs-ORT tolerance).
const TOL_F32: f32 = 1e-5;
/// graft q8 against ORT f32: a sanity bound (q8 rounds weights to 8 bits).
const TOL_Q8: f32 = 0.05;

fn zoo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/zoo")
}

/// The manifest entry of `id`.
fn spec(manifest: &Value, id: &str) -> Value {
    manifest["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in manifest"))
        .clone()
}

/// splitmix64 with Box–Muller normals: seeded, independent of graft's own generators.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// One random batch of `rows` for the model described by `spec`: ids uniform in
/// `[1, vocab)`, sequences (ids with a row shape) of random length 1..=L right-padded
/// with 0, dense values standard normal.
fn random_batch(spec: &Value, rows: usize, rng: &mut Rng) -> Vec<NdFeed> {
    spec["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|inp| {
            let row: Vec<usize> =
                inp["shape_per_row"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            let per_row: usize = row.iter().product();
            let mut dims = vec![rows];
            dims.extend(&row);
            let data = if inp["dtype"] == "int64" {
                let vocab = inp["vocab"].as_u64().unwrap();
                let mut d = Vec::with_capacity(rows * per_row);
                for _ in 0..rows {
                    let len = if row.is_empty() { 1 } else { 1 + rng.below(per_row as u64) as usize };
                    d.extend((0..per_row).map(|k| if k < len { 1 + rng.below(vocab - 1) as i64 } else { 0 }));
                }
                NdData::I64(d)
            } else {
                NdData::F32((0..rows * per_row).map(|_| rng.normal()).collect())
            };
            NdFeed { name: inp["name"].as_str().unwrap().into(), dims, data }
        })
        .collect()
}

/// The int8 ONNX files of `ids` (`target/bench-models/zoo-int8/<id>.onnx`), written by
/// `scripts/zoo_int8.py` where missing; `None` per model where that is impossible.
fn int8_models(ids: &[&str]) -> Vec<Option<PathBuf>> {
    let dir = scratch().join("zoo-int8");
    let path = |id: &str| dir.join(format!("{id}.onnx"));
    let missing: Vec<&str> = ids.iter().copied().filter(|id| !path(id).exists()).collect();
    if !missing.is_empty() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        match fair::python() {
            Err(why) => fair::skip("ONNX Runtime int8 benchmarks", &why),
            Ok(python) => {
                let out = Command::new(&python)
                    .arg(root.join("scripts/zoo_int8.py"))
                    .arg(&dir)
                    .args(&missing)
                    .output()
                    .unwrap();
                print!("{}", String::from_utf8_lossy(&out.stdout));
                if !out.status.success() {
                    let err = String::from_utf8_lossy(&out.stderr);
                    assert!(std::env::var("GRAFT_CI").map_or(true, |v| v != "1"), "scripts/zoo_int8.py failed: {err}");
                    println!(
                        "SKIP: ONNX Runtime int8 benchmarks: scripts/zoo_int8.py failed: {}",
                        err.trim_end().lines().last().unwrap_or("")
                    );
                }
            }
        }
    }
    ids.iter().map(|id| Some(path(id)).filter(|p| p.exists())).collect()
}

/// graft's outputs as flat row-major vectors, in the order of `names`.
fn graft_outputs(s: &mut Session, inputs: &[Input<'_>], names: &[String]) -> Vec<Vec<f32>> {
    let out = s.run(inputs).unwrap();
    let all: Vec<(String, Vec<f32>)> =
        out.iter().map(|(n, v)| (n.to_string(), (0..v.rows()).flat_map(|r| v.row(r).to_vec()).collect())).collect();
    names
        .iter()
        .enumerate()
        .map(|(i, n)| all.iter().find(|(m, _)| m == n).map_or_else(|| all[i].1.clone(), |(_, v)| v.clone()))
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "output count");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "output length");
            x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max)
        })
        .fold(0.0, f32::max)
}

/// The kernel level of the first graft engine.
fn engines_level(engines: &[(String, Engine<'_>)]) -> &'static str {
    engines
        .iter()
        .find_map(|(_, e)| match e {
            Engine::Graft(s, _) => Some(s.kernels().level.as_str()),
            _ => None,
        })
        .unwrap_or("?")
}

/// A timed engine of one configuration.
enum Engine<'a> {
    Graft(Box<Session>, &'a [Vec<Input<'a>>]),
    Ort(OrtPool),
    Tract(&'a TractPool),
}

impl Engine<'_> {
    fn run(&mut self, i: usize) -> f32 {
        match self {
            Engine::Graft(s, inputs) => {
                let out = s.run(&inputs[i % inputs.len()]).unwrap();
                out.get_index(0).map_or(0.0, |o| o.1.row(0)[0])
            }
            Engine::Ort(o) => o.run(i),
            Engine::Tract(t) => t.run(i),
        }
    }
}

fn zoo(_c: &mut Criterion) {
    let manifest: Value = serde_json::from_slice(&std::fs::read(zoo_dir().join("manifest.json")).unwrap()).unwrap();
    // GRAFT_ZOO_MODELS=a,b narrows the run (e.g. to profile one model).
    let only = std::env::var("GRAFT_ZOO_MODELS").ok();
    let ids: Vec<&str> = if quick() { QUICK.to_vec() } else { MODELS.to_vec() }
        .into_iter()
        .filter(|id| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == *id)))
        .collect();
    let batches: &[usize] = if quick() { &[1, 16] } else { &[1, 16, 256] };
    let pool = if quick() { 4 } else { POOL };
    let mut machine = fair::machine();
    println!("zoo: {machine}");
    let int8 = int8_models(&ids);
    let mut record = serde_json::Map::new();
    let dir = scratch().join("zoo");
    std::fs::create_dir_all(&dir).unwrap();
    for (id, int8) in ids.iter().zip(&int8) {
        let spec = spec(&manifest, id);
        let onnx = zoo_dir().join(id).join(spec["files"]["onnx"].as_str().unwrap());
        let out_names: Vec<String> =
            spec["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap().to_string()).collect();
        // Imported afresh each run: the importer changes faster than the fixtures.
        let builder = graft::onnx::import(&onnx).unwrap_or_else(|e| panic!("graft cannot import {id}: {e}"));
        let models: Vec<(&str, Model)> = ["f32", "q8"]
            .into_iter()
            .map(|f| {
                let p = dir.join(format!("{id}-{f}.graft"));
                builder.write(&p, WeightFormats::from_name(f).unwrap()).unwrap();
                (f, Model::open(&p).unwrap())
            })
            .collect();
        for &batch in batches {
            let seed = spec["seed"].as_u64().unwrap_or(7) ^ (batch as u64) << 32;
            let mut rng = Rng(seed);
            let sets: Vec<Vec<NdFeed>> = (0..pool).map(|_| random_batch(&spec, batch, &mut rng)).collect();
            let inputs: Vec<Vec<Input<'_>>> = sets.iter().map(|s| s.iter().map(NdFeed::input).collect()).collect();
            let tract = TractPool::load(&onnx, &sets);
            let last = *batches.last().unwrap();
            let threads: &[usize] = if batch == last { &[1, 2] } else { &[1] };
            for &t in threads {
                let key = format!("{id}/batch{batch}/t{t}");
                let options = SessionOptions { max_batch: batch, threads: t, ..Default::default() };
                let mut engines: Vec<(String, Engine<'_>)> = models
                    .iter()
                    .map(|(f, m)| {
                        (format!("graft-{f}"), Engine::Graft(Box::new(Session::new(m, options).unwrap()), &inputs))
                    })
                    .collect();
                let mut notes = serde_json::Map::new();
                notes.insert("graft_level".into(), json!(engines_level(&engines)));
                // Correctness first, on pool batch 0.
                let mut ort = OrtPool::load(&onnx, t);
                let mut reference = None;
                if let Some(o) = ort.as_mut() {
                    o.feed_sets(&sets);
                    match o.outputs(0, &out_names) {
                        Ok(r) => reference = Some(r),
                        Err(e) => {
                            // The export itself is at fault (e.g. a Squeeze that drops the
                            // batch axis at batch 1): no ORT figures for this configuration.
                            println!("zoo: ONNX Runtime cannot run {key}: {e}");
                            notes.insert("ort".into(), json!(format!("cannot run: {e}")));
                            ort = None;
                        }
                    }
                }
                if let Some(reference) = &reference {
                    for (name, e) in engines.iter_mut() {
                        let Engine::Graft(s, _) = e else { unreachable!() };
                        let got = graft_outputs(s, &inputs[0], &out_names);
                        let d = max_diff(&got, reference);
                        let tol = if name == "graft-f32" { TOL_F32 } else { TOL_Q8 };
                        assert!(d <= tol, "{key}: {name} differs from ONNX Runtime f32 by {d} (> {tol})");
                        notes.insert(format!("{name}_max_diff"), json!(d));
                    }
                }
                if let Some(o) = ort {
                    engines.push(("ort-f32".into(), Engine::Ort(o)));
                }
                if let (Some(p), Some(reference)) = (int8, &reference)
                    && let Some(mut q) = OrtPool::load(p, t)
                {
                    q.feed_sets(&sets);
                    match q.outputs(0, &out_names) {
                        Ok(got) => {
                            notes.insert("ort-int8_max_diff".into(), json!(max_diff(&got, reference)));
                            engines.push(("ort-int8".into(), Engine::Ort(q)));
                        }
                        Err(e) => println!("zoo: ONNX Runtime int8 cannot run {key}: {e}"),
                    }
                }
                // tract: single-threaded only; a model it cannot load or run is reported.
                if t == 1 {
                    match tract.as_ref().map_err(String::clone).map(|tp| (tp, tp.outputs(0))) {
                        Ok((tp, Ok(got))) => {
                            if let Some(reference) = reference.as_ref().filter(|r| r.len() == got.len()) {
                                notes.insert("tract-f32_max_diff".into(), json!(max_diff(&got, reference)));
                            }
                            engines.push(("tract-f32".into(), Engine::Tract(tp)));
                        }
                        Ok((_, Err(e))) | Err(e) => {
                            println!("zoo: tract cannot run {key}: {e}");
                            notes.insert("tract".into(), json!(format!("cannot run: {e}")));
                        }
                    }
                }
                // GRAFT_ZOO_ENGINES=graft-f32,... times only those (e.g. under `perf`).
                if let Ok(keep) = std::env::var("GRAFT_ZOO_ENGINES") {
                    engines.retain(|(n, _)| keep.split(',').any(|k| k == n));
                }
                if engines.is_empty() {
                    continue;
                }
                let mut slots: Vec<Slot<'_>> =
                    engines.iter_mut().map(|(n, e)| Slot::new(n.clone(), move |i| e.run(i))).collect();
                // Every engine runs the pool once first (no first touch in the timed runs).
                let timing = abba(&mut slots, Budget { prepass: pool, ..Budget::with_default(2.5, t) });
                drop(slots);
                let mut r = notes;
                r.insert("rounds".into(), json!(timing.times[0].len()));
                let mut line = format!("zoo {key:<32}");
                for n in &timing.names {
                    let m = timing.median(n).unwrap();
                    r.insert(format!("{n}_us"), json!(m * 1e6));
                    line += &format!(" {n} {:>9.1} µs", m * 1e6);
                }
                for (peer, ours) in [("ort-f32", "graft-f32"), ("ort-int8", "graft-q8"), ("tract-f32", "graft-f32")] {
                    if let Some([m, _, _]) = timing.ratio(peer, ours) {
                        r.insert(format!("{peer}/{ours}"), json!(m));
                        line += &format!(" | {peer}/{ours} {m:.2}×");
                    }
                }
                println!("{line}");
                record.insert(key, Value::Object(r));
            }
        }
    }
    fair::finish_machine(&mut machine, &record);
    record.insert("_machine".into(), machine);
    fair::write_record("zoo_paired", record);
}

criterion_group!(benches, zoo);
criterion_main!(benches);
