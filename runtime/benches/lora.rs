//! LoRA adapters (DESIGN §10): overhead of LoRA on every linear over the base model,
//! mixed batches of 8 adapters against one adapter, adapter swap (publish) latency under
//! load, and ONNX Runtime's own multi-LoRA on the same model.
//!
//! Groups (read by `scripts/bench-report.py`):
//! - `lora_overhead/<fmt>/batch<b>/t<t>`: `base` (`Session::run`), `none` (`run_with`
//!   with an empty adapter set) and `r<rank>` (`run_with`, one PEFT adapter of that rank
//!   on all 6 linears of the demo DLRM);
//! - `lora_mixed/<fmt>/r<rank>`: batch 256, `single` (one adapter for all rows),
//!   `mixed8-sorted` (8 adapters, 32 consecutive rows each), `mixed8-roundrobin` (row i
//!   uses adapter i mod 8) and `base`; `lora_mixed/ort-f32/r<rank>`: ORT `single` (one
//!   run of 256 rows) and `mixed8` (8 runs of 32 rows, one adapter each);
//! - `lora_swap/<size>/readers<n>`: mean of `Registry::replace` while `n` threads run
//!   batches; p50/p99/max of 10 000 timed swaps (one per 20 µs) are printed and written to
//!   `<criterion dir>/lora_swap_percentiles.json`;
//! - `lora_peer/batch<b>/t<t>`: `ort-plain` (plain export), `ort-lora-r<rank>` (ORT's
//!   LoRA inputs with the adapter active) and `ort-lora-r<rank>-off` (same session, no
//!   adapter).
//!
//! `cargo bench -p graft --features onnx --bench lora`; `BENCHMARKS.md` summarizes it.

#![allow(clippy::unwrap_used)]

mod adapted;
mod peers;

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use adapted::{Paired, demo, first, ids, record_json, settings};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use graft::adapters::{LoadedAdapter, Registry, RowAdapters};
use graft::builder::WeightFormats;
use graft::synthetic::lora::{LoraSpec, write_peft_lora};
use graft::synthetic::{Dlrm, Requests};
use graft::{Input, Model, Session, SessionOptions};
use peers::{Feed, OrtLoraRunner, OrtRunner, ort_lora_adapter, ort_lora_files, quick, scratch};

const RANKS: [usize; 4] = [4, 8, 16, 64];
const MIXED_RANKS: [usize; 2] = [8, 16];
const MIXED_ADAPTERS: usize = 8;
/// Interval between timed swaps in `lora_swap`.
const SWAP_PERIOD: Duration = Duration::from_micros(20);
/// PEFT `lora_alpha = 2 r` (LoraSpec::every_linear): scale 2, also given to ORT.
const SCALE: f32 = 2.0;

/// A PEFT directory of rank `rank` on every linear of `model`, written once.
fn peft_dir(stem: &str, model: &Model, rank: usize, seed: u64) -> PathBuf {
    let dir = scratch().join(format!("lora-{stem}-r{rank}-s{seed}"));
    if !dir.join("adapter_config.json").exists() {
        write_peft_lora(model, &dir, &LoraSpec::every_linear(rank, seed)).unwrap();
    }
    dir
}

/// 1. LoRA on every linear vs the base model.
fn overhead(c: &mut Criterion) {
    let (spec, models) = demo();
    let names = ids(&spec);
    let stem = format!("dlrm-demo-{}", spec.vocab);
    for (fmt, path) in &models {
        let model = Model::open(path).unwrap();
        let registry = Registry::new(&model);
        for &r in &RANKS {
            let a = registry.load_peft(&format!("r{r}"), peft_dir(&stem, &model, r, 11)).unwrap();
            registry.insert(a).unwrap();
        }
        for (batch, threads) in [(1usize, 1usize), (256, 1), (256, 2)] {
            let data = Requests::new(&spec, 7).batch(batch);
            let inputs: Vec<Input<'_>> = data.inputs(&spec, &names);
            let mut g = c.benchmark_group(format!("lora_overhead/{fmt}/batch{batch}/t{threads}"));
            g.throughput(Throughput::Elements(batch as u64));
            settings(&mut g, batch);
            let mut s =
                Session::new(&model, SessionOptions { max_batch: batch, threads, ..Default::default() }).unwrap();
            g.bench_function("base", |b| b.iter(|| black_box(first(s.run(&inputs)))));
            // The adapter path with an empty set: its fixed cost, no LoRA arithmetic.
            let none = RowAdapters::all_stack(&registry, &[]).unwrap();
            g.bench_function("none", |b| b.iter(|| black_box(first(s.run_with(&inputs, &none)))));
            for &r in &RANKS {
                let rows = RowAdapters::all(&registry, &format!("r{r}")).unwrap();
                g.bench_function(format!("r{r}"), |b| b.iter(|| black_box(first(s.run_with(&inputs, &rows)))));
            }
            g.finish();
            let sets: Vec<(String, RowAdapters)> = RANKS
                .iter()
                .map(|r| (format!("r{r}"), RowAdapters::all(&registry, &format!("r{r}")).unwrap()))
                .collect();
            Paired {
                file: "lora_overhead_paired.json",
                key: format!("lora_overhead/{fmt}/batch{batch}/t{threads}"),
                reference: ("base", None),
                sets: sets.iter().map(|(n, r)| (n.clone(), r)).collect(),
                rounds: if batch == 1 { 4000 } else { 120 },
                feedback: false,
            }
            .run(&mut s, &inputs);
        }
    }
}

/// 2. Batch 256 with 8 adapters (per-row groups) vs one adapter; ORT needs a run per adapter.
fn mixed(c: &mut Criterion) {
    let (spec, models) = demo();
    let names = ids(&spec);
    let stem = format!("dlrm-demo-{}", spec.vocab);
    let batch = 256;
    let data = Requests::new(&spec, 7).batch(batch);
    let inputs: Vec<Input<'_>> = data.inputs(&spec, &names);
    for (fmt, path) in &models {
        let model = Model::open(path).unwrap();
        let registry = Registry::new(&model);
        for &r in &MIXED_RANKS {
            for k in 0..MIXED_ADAPTERS {
                let dir = peft_dir(&stem, &model, r, 100 + k as u64);
                registry.insert(registry.load_peft(&format!("r{r}-{k}"), dir).unwrap()).unwrap();
            }
        }
        let mut s =
            Session::new(&model, SessionOptions { max_batch: batch, threads: 1, ..Default::default() }).unwrap();
        for &r in &MIXED_RANKS {
            let id = |k: usize| format!("r{r}-{k}");
            let single = RowAdapters::all(&registry, &id(0)).unwrap();
            let mut sorted = RowAdapters::new(&registry);
            let mut round_robin = RowAdapters::new(&registry);
            for row in 0..batch {
                sorted.push(&id(row * MIXED_ADAPTERS / batch)).unwrap();
                round_robin.push(&id(row % MIXED_ADAPTERS)).unwrap();
            }
            assert_eq!(sorted.groups().len(), MIXED_ADAPTERS);
            assert!(sorted.groups().iter().all(|g| g.contiguous().is_some()));
            assert!(round_robin.groups().iter().all(|g| g.contiguous().is_none()));
            let mut g = c.benchmark_group(format!("lora_mixed/{fmt}/r{r}"));
            g.throughput(Throughput::Elements(batch as u64));
            settings(&mut g, batch);
            g.bench_function("base", |b| b.iter(|| black_box(first(s.run(&inputs)))));
            g.bench_function("single", |b| b.iter(|| black_box(first(s.run_with(&inputs, &single)))));
            g.bench_function("mixed8-sorted", |b| b.iter(|| black_box(first(s.run_with(&inputs, &sorted)))));
            g.bench_function("mixed8-roundrobin", |b| b.iter(|| black_box(first(s.run_with(&inputs, &round_robin)))));
            g.finish();
            Paired {
                file: "lora_mixed_paired.json",
                key: format!("lora_mixed/{fmt}/r{r}"),
                reference: ("single", Some(&single)),
                sets: vec![("mixed8-sorted".into(), &sorted), ("mixed8-roundrobin".into(), &round_robin)],
                rounds: 120,
                feedback: false,
            }
            .run(&mut s, &inputs);
        }
    }

    // ORT: one adapter set per run, so 8 runs of 32 rows.
    let model = Model::open(&models[0].1).unwrap();
    let feeds = Feed::from_inputs(&inputs);
    let chunk = batch / MIXED_ADAPTERS;
    let chunks: Vec<Vec<Feed>> =
        (0..MIXED_ADAPTERS).map(|k| feeds.iter().map(|f| f.slice_rows(k * chunk..(k + 1) * chunk)).collect()).collect();
    for &r in &MIXED_RANKS {
        let (onnx, adapter) = ort_lora_files(&model, r, SCALE, 100);
        let Some(mut ort) = OrtLoraRunner::load(&onnx, &adapter, &feeds, 1) else { return };
        drop(onnx);
        for k in 1..MIXED_ADAPTERS {
            assert_eq!(ort.add_adapter(&ort_lora_adapter(&model, r, SCALE, 100 + k as u64)), k);
        }
        ort.feed_chunks(&chunks);
        let mut g = c.benchmark_group(format!("lora_mixed/ort-f32/r{r}"));
        g.throughput(Throughput::Elements(batch as u64));
        settings(&mut g, batch);
        g.bench_function("single", |b| b.iter(|| black_box(ort.run())));
        g.bench_function("mixed8", |b| {
            b.iter(|| (0..MIXED_ADAPTERS).map(|k| black_box(ort.run_chunk(k, k))).sum::<f32>())
        });
        g.finish();
    }
}

fn record_percentiles(key: &str, value: serde_json::Value) {
    record_json("lora_swap_percentiles.json", key, value);
}

/// 3. Publish latency of `Registry::replace` while readers run batches continuously.
fn swap(c: &mut Criterion) {
    let sizes: &[(&str, usize)] = if quick() { &[("1MB", 1 << 20)] } else { &[("10MB", 10 << 20), ("1GB", 1 << 30)] };
    let swaps = if quick() { 100 } else { 10_000 };
    for &(label, bytes) in sizes {
        // The model `open.rs` benchmarks (same spec and file name: a cached 1 GB file is reused).
        let spec = Dlrm { top: vec![64], bottom: vec![64], ..Dlrm::with_table_bytes(bytes) };
        let path = scratch().join(format!("open-{label}.graft"));
        if !path.exists() {
            spec.build().write(&path, WeightFormats::default()).unwrap();
        }
        let model = Model::open(&path).unwrap();
        let registry = Registry::new(&model);
        let versions: Vec<Arc<LoadedAdapter>> = (0..2)
            .map(|v| registry.load_peft("live", peft_dir(&format!("open-{label}"), &model, 8, 200 + v)).unwrap())
            .collect();
        registry.insert(versions[0].clone()).unwrap();
        let names = ids(&spec);
        let batch = 16;
        for readers in [1usize, 2] {
            let stop = AtomicBool::new(false);
            let runs = AtomicU64::new(0);
            std::thread::scope(|scope| {
                for t in 0..readers {
                    let (spec, model, registry, names, stop, runs) = (&spec, &model, &registry, &names, &stop, &runs);
                    scope.spawn(move || {
                        let data = Requests::new(spec, 30 + t as u64).batch(batch);
                        let inputs = data.inputs(spec, names);
                        let mut s =
                            Session::new(model, SessionOptions { max_batch: batch, ..Default::default() }).unwrap();
                        while !stop.load(Ordering::Relaxed) {
                            // Each batch resolves the live adapter against the current snapshot.
                            let rows = RowAdapters::all(registry, "live").unwrap();
                            black_box(first(s.run_with(&inputs, &rows)));
                            runs.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                while runs.load(Ordering::Relaxed) < readers as u64 {
                    std::thread::yield_now();
                }

                let mut times: Vec<u64> = Vec::with_capacity(swaps);
                let before = runs.load(Ordering::Relaxed);
                let started = Instant::now();
                for i in 0..swaps {
                    let next = versions[(i + 1) % 2].clone();
                    // One swap every SWAP_PERIOD (busy wait), so the swaps overlap many
                    // reader batches instead of finishing within one.
                    while started.elapsed() < SWAP_PERIOD * i as u32 {
                        std::hint::spin_loop();
                    }
                    let t0 = Instant::now();
                    let old = registry.replace(next).unwrap();
                    let dt = t0.elapsed();
                    black_box(old);
                    times.push(dt.as_nanos() as u64);
                }
                let wall = started.elapsed();
                let batches = runs.load(Ordering::Relaxed) - before;
                times.sort_unstable();
                let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
                let (p50, p99, max) = (pct(0.50), pct(0.99), *times.last().unwrap());
                let mean = times.iter().sum::<u64>() as f64 / times.len() as f64;
                println!(
                    "lora_swap/{label}/readers{readers}: {swaps} swaps: p50 {:.2} µs, p99 {:.2} µs, max {:.2} µs, \
                     mean {:.2} µs ({batches} reader batches of {batch} meanwhile)",
                    p50 as f64 / 1e3,
                    p99 as f64 / 1e3,
                    max as f64 / 1e3,
                    mean / 1e3
                );
                if !quick() {
                    record_percentiles(
                        &format!("{label}/readers{readers}"),
                        serde_json::json!({
                            "swaps": swaps, "p50_ns": p50, "p99_ns": p99, "max_ns": max, "mean_ns": mean,
                            "reader_batches": batches, "batch": batch, "wall_ns": wall.as_nanos() as u64,
                        }),
                    );
                }

                let mut g = c.benchmark_group(format!("lora_swap/{label}/readers{readers}"));
                settings(&mut g, 1);
                let mut i = 0usize;
                g.bench_function("publish", |b| {
                    b.iter(|| {
                        i += 1;
                        black_box(registry.replace(versions[i % 2].clone()).unwrap())
                    })
                });
                g.finish();
                stop.store(true, Ordering::Relaxed);
            });
        }
    }
}

/// 4. ONNX Runtime's own LoRA (graph inputs + `.onnx_adapter`) on the same model.
fn peer(c: &mut Criterion) {
    let (spec, models) = demo();
    let names = ids(&spec);
    let model = Model::open(&models[0].1).unwrap();
    let onnx_path = scratch().join(format!("dlrm-demo-{}.onnx", spec.vocab));
    if !onnx_path.exists() {
        graft::onnx::export_to_path(&model, &onnx_path).unwrap();
    }
    let configs: [(usize, usize); 3] = [(1, 1), (256, 1), (256, 2)];
    let feeds_for = |batch: usize| Feed::from_inputs(&Requests::new(&spec, 7).batch(batch).inputs(&spec, &names));
    fn group(c: &mut Criterion, batch: usize, threads: usize) -> BenchmarkGroup<'_, WallTime> {
        let mut g = c.benchmark_group(format!("lora_peer/batch{batch}/t{threads}"));
        g.throughput(Throughput::Elements(batch as u64));
        settings(&mut g, batch);
        g
    }
    for threads in [1usize, 2] {
        let Some(mut ort) = OrtRunner::load(&onnx_path, threads) else { return };
        for &(batch, _) in configs.iter().filter(|c| c.1 == threads) {
            ort.feed(&feeds_for(batch));
            let mut g = group(c, batch, threads);
            g.bench_function("ort-plain", |b| b.iter(|| black_box(ort.run())));
            g.finish();
        }
    }
    for &r in &MIXED_RANKS {
        let (onnx, adapter) = ort_lora_files(&model, r, SCALE, 11);
        for threads in [1usize, 2] {
            let Some(mut ort) = OrtLoraRunner::load(&onnx, &adapter, &feeds_for(1), threads) else { return };
            for &(batch, _) in configs.iter().filter(|c| c.1 == threads) {
                ort.feed(&feeds_for(batch));
                let mut g = group(c, batch, threads);
                g.bench_function(format!("ort-lora-r{r}"), |b| b.iter(|| black_box(ort.run())));
                g.bench_function(format!("ort-lora-r{r}-off"), |b| b.iter(|| black_box(ort.run_base())));
                g.finish();
            }
        }
    }
}

criterion_group!(benches, overhead, mixed, swap, peer);
criterion_main!(benches);
