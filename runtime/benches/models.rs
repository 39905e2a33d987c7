//! Whole-model latency, peers compared like with like: the demo-size DLRM and the fixture
//! DLRM at batch 1, 16 and 256 (1 and 2 threads), **graft f32 vs ONNX Runtime f32 vs
//! tract f32** on the same ONNX export, **graft q8 vs ONNX Runtime int8**
//! (`quantize_dynamic` of that export: `scripts/zoo_int8.py --onnx`, through `ort`), graft
//! q4 beside both.
//!
//! Inputs: a ring of pre-generated batches, a fresh one every run (dense values normal,
//! ids from the demo's power-law request stream, or uniform with `GRAFT_BENCH_IDS=uniform`),
//! long enough that the table rows it touches are ≥ 2× the L3 cache (so gathers are not
//! served warm from the previous run). A **warm** variant reruns one batch (ring of 1)
//! and is labelled as such. Timing: `fair::abba` (interleaved ABBA rounds, medians of
//! per-round ratios; see `fair/mod.rs` for why not criterion groups). Before timing,
//! graft f32's outputs must equal ONNX Runtime f32's within 1e-4 and graft q8's within
//! 0.05 on the first ring batch.
//!
//! Results: `<criterion dir>/fair_models.json` (keys `<model>/<variant>/batch<b>/t<t>`,
//! plus `_machine`), turned into tables by `scripts/bench-report.py`.
//! `cargo bench -p graft --features onnx --bench models`; `GRAFT_BENCH_SECONDS` sets the
//! time per configuration (default 4).

#![allow(clippy::unwrap_used)]

mod fair;
mod peers;

use std::path::{Path, PathBuf};

use criterion::{Criterion, criterion_group, criterion_main};
use fair::{Budget, Slot, abba};
use graft::builder::{ModelBuilder, WeightFormats};
use graft::synthetic::{Dlrm, Requests, Rng};
use graft::{Input, Model, Q8Math, Session, SessionOptions};
use peers::{NdData, NdFeed, OrtPool, TractPool, quick, scratch};
use serde_json::{Value, json};

const FORMATS: [&str; 3] = ["f32", "q8", "q4"];
/// graft f32 against ONNX Runtime f32 (same math, different summation order).
const TOL_F32: f32 = 1e-4;
/// graft q8 against ONNX Runtime f32: a sanity bound (weights rounded to 8 bits).
const TOL_Q8: f32 = 0.05;
/// The ratios recorded per configuration (`a/b`: time of a over time of b).
const PAIRS: [(&str, &str); 10] = [
    ("ort-f32", "graft-f32"),
    ("tract-f32", "graft-f32"),
    ("ort-int8", "graft-q8"),
    ("ort-f32", "graft-q8"),
    ("ort-int8", "graft-q4"),
    ("ort-f32", "graft-q4"),
    ("ort-f32", "ort-int8"),
    ("graft-f32", "graft-q8"),
    ("ort-int8", "graft-q8-exact"),
    ("graft-q8-exact", "graft-q8"),
];

/// Writes `builder` as `<stem>-<fmt>.graft` for each format and `<stem>.onnx` (f32), once.
fn materialize(stem: &str, builder: impl Fn() -> ModelBuilder) -> (Vec<(&'static str, PathBuf)>, PathBuf) {
    let dir = scratch();
    let graft_paths: Vec<(&str, PathBuf)> = FORMATS
        .iter()
        .map(|&f| {
            let p = dir.join(format!("{stem}-{f}.graft"));
            if !p.exists() {
                builder().write(&p, WeightFormats::from_name(f).unwrap()).unwrap();
            }
            (f, p)
        })
        .collect();
    let onnx = dir.join(format!("{stem}.onnx"));
    if !onnx.exists() {
        let model = Model::open(&graft_paths[0].1).unwrap();
        graft::onnx::export_to_path(&model, &onnx).unwrap();
    }
    (graft_paths, onnx)
}

/// A ring feed as a graft input (`[rows, width]` dense or ids).
fn graft_input(f: &NdFeed) -> Input<'_> {
    match &f.data {
        NdData::F32(d) => Input::dense(&f.name, d, f.dims[1]),
        NdData::I64(d) => Input::ids(&f.name, d, f.dims[1]),
    }
}

/// `(variant, batches, threads)`: `fresh` (the ring) or `warm` (ring input 0 only).
type Variant<'a> = (&'a str, &'a [usize], &'a [usize]);

/// The configurations of `variants` that the command line's filter selects, as
/// `(key, variant, batch, threads)`.
fn configs<'a>(name: &str, variants: &[Variant<'a>]) -> Vec<(String, &'a str, usize, usize)> {
    let mut out = Vec::new();
    for &(variant, batches, threads) in variants {
        for &b in batches {
            for &t in threads {
                let key = format!("{name}/{variant}/batch{b}/t{t}");
                if fair::selected(&key) {
                    out.push((key, variant, b, t));
                }
            }
        }
    }
    out
}

/// What one model's runs share.
struct Bench<'a> {
    name: &'a str,
    models: &'a [(&'static str, PathBuf)],
    onnx: &'a Path,
    int8: Option<&'a Path>,
    /// Output compared across engines.
    output: &'a str,
    /// The selected configurations ([`configs`]).
    configs: Vec<(String, &'a str, usize, usize)>,
    /// How the ring was made (recorded).
    ids: &'a str,
}

fn run_model(
    bench: &Bench<'_>,
    ring_for: &dyn Fn(usize) -> Vec<Vec<NdFeed>>,
    record: &mut serde_json::Map<String, Value>,
) {
    let graft_models: Vec<(&str, Model)> = bench.models.iter().map(|(f, p)| (*f, Model::open(p).unwrap())).collect();
    let mut batches: Vec<usize> = bench.configs.iter().map(|c| c.2).collect();
    batches.sort_unstable();
    batches.dedup();
    for batch in batches {
        let sets = ring_for(batch);
        let inputs: Vec<Vec<Input<'_>>> = sets.iter().map(|s| s.iter().map(graft_input).collect()).collect();
        let tract = TractPool::load(bench.onnx, &sets);
        if let Err(e) = &tract {
            println!("{}: tract cannot run batch {batch}: {e}", bench.name);
        }
        let mut threads: Vec<usize> = bench.configs.iter().filter(|c| c.2 == batch).map(|c| c.3).collect();
        threads.sort_unstable();
        threads.dedup();
        for t in threads {
            let options = SessionOptions { max_batch: batch, threads: t, ..Default::default() };
            let mut sessions: Vec<(String, Session)> =
                graft_models.iter().map(|(f, m)| (format!("graft-{f}"), Session::new(m, options).unwrap())).collect();
            // q8 in its default mode above; the exact dequantize-to-f32 path beside it.
            if let Some((_, m)) = graft_models.iter().find(|(f, _)| *f == "q8") {
                let exact = SessionOptions { q8_math: Q8Math::Exact, ..options };
                sessions.push(("graft-q8-exact".into(), Session::new(m, exact).unwrap()));
            }
            let level = sessions[0].1.kernels().level.as_str();
            let mut ort_f32 = OrtPool::load(bench.onnx, t);
            let mut ort_int8 = bench.int8.and_then(|p| OrtPool::load(p, t));
            if let Some(q) = ort_int8.as_mut() {
                q.feed_sets(&sets);
            }
            let mut notes = serde_json::Map::new();
            notes.insert("graft_level".into(), json!(level));
            notes.insert("q8_math".into(), json!(options.q8_math.as_str()));
            notes.insert("ring".into(), json!(sets.len()));
            notes.insert("ids".into(), json!(bench.ids));
            // Correctness on ring batch 0, against ONNX Runtime f32.
            if let Some(o) = ort_f32.as_mut() {
                o.feed_sets(&sets);
                let reference = o.outputs(0, &[bench.output.to_string()]).unwrap().remove(0);
                for (name, s) in sessions.iter_mut() {
                    let got = s.run(&inputs[0]).unwrap().get(bench.output).unwrap().to_vec();
                    let d = max_diff(&got, &reference);
                    let tol = match name.as_str() {
                        "graft-f32" => Some(TOL_F32),
                        "graft-q8" | "graft-q8-exact" => Some(TOL_Q8),
                        _ => None,
                    };
                    if let Some(tol) = tol {
                        assert!(d <= tol, "{}: {name} differs from ONNX Runtime f32 by {d} (> {tol})", bench.name);
                    }
                    notes.insert(format!("{name}_max_diff"), json!(d));
                }
                if let Some(q) = ort_int8.as_mut() {
                    let got = q.outputs(0, &[bench.output.to_string()]).unwrap().remove(0);
                    notes.insert("ort-int8_max_diff".into(), json!(max_diff(&got, &reference)));
                }
                if let Ok(tp) = &tract
                    && let Ok(got) = tp.outputs(0)
                    && let Some(g) = got.iter().find(|g| g.len() == reference.len())
                {
                    notes.insert("tract-f32_max_diff".into(), json!(max_diff(g, &reference)));
                }
            }
            for (key, variant, _, _) in bench.configs.iter().filter(|c| c.2 == batch && c.3 == t) {
                // The warm variant reads ring input 0 every run.
                let warm = *variant == "warm";
                let pick = move |i: usize| if warm { 0 } else { i };
                let mut slots: Vec<Slot<'_>> = Vec::new();
                for (name, s) in sessions.iter_mut() {
                    let inputs = &inputs;
                    slots.push(Slot::new(name.clone(), move |i| {
                        let out = s.run(&inputs[pick(i) % inputs.len()]).unwrap();
                        out.get_index(0).map_or(0.0, |o| o.1.row(0)[0])
                    }));
                }
                if let Some(o) = ort_f32.as_mut() {
                    slots.push(Slot::new("ort-f32", move |i| o.run(pick(i))));
                }
                if let Some(q) = ort_int8.as_mut() {
                    slots.push(Slot::new("ort-int8", move |i| q.run(pick(i))));
                }
                if t == 1
                    && let Ok(tp) = &tract
                {
                    slots.push(Slot::new("tract-f32", move |i| tp.run(pick(i))));
                }
                // Fresh: every engine first runs the whole ring once, untimed (page faults of
                // graft's mapped tables and ORT's lazy allocations happen there, not in the
                // timed runs; a real server reaches that state after its first minutes).
                let prepass = if warm { 0 } else { inputs.len() };
                let timing = abba(&mut slots, Budget { prepass, ..Budget::for_threads(t) });
                let mut r = timing.record(key, &PAIRS);
                r.extend(notes.clone());
                if warm {
                    r.insert("ring".into(), json!(1));
                }
                record.insert(key.clone(), Value::Object(r));
            }
        }
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "output length");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Ring length for batches whose gathers read `rows_touched_per_batch` bytes of table rows
/// each (counted in f32): the rows touched by the ring are ≥ 2× L3, at least 16 batches,
/// at most 8192 (4 in quick mode).
fn ring_len(rows_touched_per_batch: usize) -> usize {
    if quick() {
        return 4;
    }
    let l3 = fair::cache_bytes(3, 32 << 20);
    (2 * l3).div_ceil(rows_touched_per_batch.max(1)).clamp(16, 8192)
}

fn demo_dlrm(record: &mut serde_json::Map<String, Value>) {
    // Test mode (a debug build) runs every path once on small batches.
    let (all, warm): (&[usize], &[usize]) = if quick() { (&[1, 16], &[1]) } else { (&[1, 16, 256], &[1, 16, 256]) };
    let configs = configs("dlrm_demo", &[("fresh", all, &[1, 2]), ("warm", warm, &[1])]);
    if configs.is_empty() {
        return;
    }
    let spec = if quick() { Dlrm { vocab: 1000, ..Dlrm::demo() } } else { Dlrm::demo() };
    let stem = format!("dlrm-demo-{}", spec.vocab);
    let (models, onnx) = materialize(&stem, || spec.build());
    let int8 = fair::ort_int8(&onnx);
    let uniform = std::env::var("GRAFT_BENCH_IDS").is_ok_and(|v| v == "uniform");
    let names: Vec<String> = (0..spec.fields).map(Dlrm::ids_name).collect();
    let ring_for = |batch: usize| {
        let len = ring_len(batch * spec.fields * spec.bag * spec.dim * 4);
        let mut requests = Requests::new(&spec, 7 + batch as u64);
        let mut rng = Rng::new(0x5eed ^ batch as u64);
        (0..len)
            .map(|_| {
                let mut b = requests.batch(batch);
                if uniform {
                    b.ids.iter_mut().flatten().for_each(|id| *id = rng.below(spec.vocab as u64) as i64);
                }
                let mut feeds =
                    vec![NdFeed { name: "dense".into(), dims: vec![batch, spec.dense], data: NdData::F32(b.dense) }];
                for (name, ids) in names.iter().zip(b.ids) {
                    feeds.push(NdFeed { name: name.clone(), dims: vec![batch, spec.bag], data: NdData::I64(ids) });
                }
                feeds
            })
            .collect()
    };
    let bench = Bench {
        name: "dlrm_demo",
        models: &models,
        onnx: &onnx,
        int8: int8.as_deref(),
        output: "prob",
        configs,
        ids: if uniform { "uniform" } else { "power-law (the demo's request stream)" },
    };
    run_model(&bench, &ring_for, record);
}

fn fixture_dlrm(record: &mut serde_json::Map<String, Value>) {
    let variants: &[Variant<'_>] = if quick() {
        &[("fresh", &[1, 16], &[1]), ("fresh", &[16], &[2])]
    } else {
        &[("fresh", &[1, 16, 256], &[1]), ("fresh", &[256], &[2])]
    };
    let configs = configs("dlrm_fixture", variants);
    if configs.is_empty() {
        return;
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/dlrm_small");
    let src = fixtures.join("model.onnx");
    let (models, _) = materialize("dlrm-fixture", || graft::onnx::import(&src).unwrap());
    // The int8 twin is made from a copy in the scratch directory (not beside the fixture).
    let onnx = scratch().join("dlrm-fixture-src.onnx");
    let stale = |a: &Path, b: &Path| {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        m(a).is_none() || m(a) < m(b)
    };
    if stale(&onnx, &src) {
        std::fs::copy(&src, &onnx).unwrap();
    }
    let int8 = fair::ort_int8(&onnx);
    let read = |name: &str| std::fs::read(fixtures.join(name)).unwrap();
    let dense: Vec<f32> =
        read("dense.f32").chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let ids: Vec<Vec<i64>> = (0..4)
        .map(|k| {
            read(&format!("ids_f{k}_padded.i64"))
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
        .collect();
    // The fixture has 64 rows (tables of 20–100 rows: always cached); each ring batch
    // draws its rows at random from them.
    let ring_for = |batch: usize| {
        let mut rng = Rng::new(11 + batch as u64);
        (0..if quick() { 4 } else { 64 })
            .map(|_| {
                let rows: Vec<usize> = (0..batch).map(|_| rng.below(64) as usize).collect();
                let mut feeds = vec![NdFeed {
                    name: "dense".into(),
                    dims: vec![batch, 8],
                    data: NdData::F32(rows.iter().flat_map(|&r| dense[r * 8..(r + 1) * 8].to_vec()).collect()),
                }];
                for (k, v) in ids.iter().enumerate() {
                    feeds.push(NdFeed {
                        name: format!("ids_f{k}"),
                        dims: vec![batch, 3],
                        data: NdData::I64(rows.iter().flat_map(|&r| v[r * 3..(r + 1) * 3].to_vec()).collect()),
                    });
                }
                feeds
            })
            .collect()
    };
    let output = Model::open(&models[0].1).unwrap().graph().outputs[0].name.clone();
    let bench = Bench {
        name: "dlrm_fixture",
        models: &models,
        onnx: &onnx,
        int8: int8.as_deref(),
        output: &output,
        configs,
        ids: "fixture rows drawn at random",
    };
    run_model(&bench, &ring_for, record);
}

fn models(_c: &mut Criterion) {
    let mut record = serde_json::Map::new();
    let mut machine = fair::machine();
    println!("models: {machine}");
    fixture_dlrm(&mut record);
    demo_dlrm(&mut record);
    if record.is_empty() {
        return;
    }
    fair::finish_machine(&mut machine, &record);
    record.insert("_machine".into(), machine);
    fair::write_record("fair_models", record);
}

criterion_group!(benches, models);
criterion_main!(benches);
