//! The Adapters II kinds (DESIGN §10, next to the LoRA figures): per-kind overhead over
//! the base model at batch 1 and 256 on the demo DLRM, measured interleaved with the base
//! run (`adapted::Paired`).
//!
//! Configurations, recorded under `kinds_overhead/<fmt>/batch<b>/t1` in
//! `<criterion dir>/kinds_overhead_paired.json` and as criterion groups of the same name:
//! - `lora-r8`: PEFT LoRA r=8 on every linear (the reference adapter);
//! - `ssf-pool`: FedIns pool (16 entries, top-2) queried at the interaction vector,
//!   which precedes both scale-shift sites, so the query comes from the same pass;
//! - `ssf-pool-prefix`: the same pool queried at the last hidden layer, after the sites:
//!   the host runs a hook-free prefix pass first (FedIns's second backbone pass);
//! - `routing`: AdaptDHM, 4 clusters over the interaction vector, tower 1728-64-1;
//! - `memory`: ReLoop2 error memory (8 tables × 10 bits) keyed on the last hidden layer:
//!   LSH lookup and compensation;
//! - `memory+feedback`: the same plus one label fed back per row (LSH insert).
//!
//! `cargo bench -p graft --features onnx --bench kinds`; `BENCHMARKS.md` summarizes it.

#![allow(clippy::unwrap_used)]

mod adapted;
mod peers;

use std::hint::black_box;

use adapted::{Paired, demo, first, ids, settings};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use graft::adapters::{Registry, RowAdapters};
use graft::synthetic::Requests;
use graft::synthetic::kinds::{SsfPoolSpec, write_error_memory, write_routing, write_ssf_pool};
use graft::synthetic::lora::{LoraSpec, write_peft_lora};
use graft::{Input, Model, Session, SessionOptions};
use peers::scratch;

/// Loads every configuration into `registry`; returns their ids.
fn load_kinds(model: &Model, registry: &Registry, stem: &str) -> Vec<&'static str> {
    let dir = scratch().join(format!("kinds-{stem}"));
    let hidden = "top_fc2_relu";
    let sites = ["top_fc1", "top_fc2"];
    let lora = dir.join("lora-r8");
    if !lora.join("adapter_config.json").exists() {
        write_peft_lora(model, &lora, &LoraSpec::every_linear(8, 11)).unwrap();
    }
    let pool = |query, seed| SsfPoolSpec { query, sites: &sites, pool: 16, top_k: 2, strength: 0.1, seed };
    write_ssf_pool(model, &dir.join("pool.safetensors"), &pool("interaction", 61)).unwrap();
    write_ssf_pool(model, &dir.join("pool-prefix.safetensors"), &pool(hidden, 62)).unwrap();
    write_routing(model, &dir.join("routing.safetensors"), "interaction", "top_fc3", 4, &[64], 63).unwrap();
    write_error_memory(&dir.join("memory.safetensors"), hidden, "prob", 8, 10, 0.5).unwrap();
    let files = [
        ("lora-r8", lora),
        ("ssf-pool", dir.join("pool.safetensors")),
        ("ssf-pool-prefix", dir.join("pool-prefix.safetensors")),
        ("routing", dir.join("routing.safetensors")),
        ("memory", dir.join("memory.safetensors")),
    ];
    for (id, path) in &files {
        registry.insert(registry.load_path(id, path, "").unwrap()).unwrap();
    }
    files.iter().map(|(id, _)| *id).collect()
}

fn overhead(c: &mut Criterion) {
    let (spec, models) = demo();
    let names = ids(&spec);
    for (fmt, path) in &models {
        let model = Model::open(path).unwrap();
        let registry = Registry::new(&model);
        let kinds = load_kinds(&model, &registry, &format!("{}-{fmt}", spec.vocab));
        let sets: Vec<(&str, RowAdapters)> =
            kinds.iter().map(|&id| (id, RowAdapters::all(&registry, id).unwrap())).collect();
        for batch in [1usize, 256] {
            let data = Requests::new(&spec, 7).batch(batch);
            let inputs: Vec<Input<'_>> = data.inputs(&spec, &names);
            let key = format!("kinds_overhead/{fmt}/batch{batch}/t1");
            let mut s =
                Session::new(&model, SessionOptions { max_batch: batch, threads: 1, ..Default::default() }).unwrap();
            let mut g = c.benchmark_group(&key);
            g.throughput(Throughput::Elements(batch as u64));
            settings(&mut g, batch);
            g.bench_function("base", |b| b.iter(|| black_box(first(s.run(&inputs)))));
            for (id, rows) in &sets {
                g.bench_function(*id, |b| b.iter(|| black_box(first(s.run_with(&inputs, rows)))));
            }
            g.finish();
            let rounds = if batch == 1 { 3000 } else { 100 };
            Paired {
                file: "kinds_overhead_paired.json",
                key: key.clone(),
                reference: ("base", None),
                sets: sets.iter().map(|(id, rows)| (id.to_string(), rows)).collect(),
                rounds,
                feedback: false,
            }
            .run(&mut s, &inputs);
            let memory = &sets.iter().find(|(id, _)| *id == "memory").unwrap().1;
            Paired {
                file: "kinds_overhead_paired.json",
                key: format!("{key}/feedback"),
                reference: ("base", None),
                sets: vec![("memory+feedback".to_string(), memory)],
                rounds,
                feedback: true,
            }
            .run(&mut s, &inputs);
        }
    }
}

criterion_group!(benches, overhead);
criterion_main!(benches);
