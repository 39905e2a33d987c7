//! `Session::run` allocates nothing: a counting global allocator watches repeated runs of
//! a model that uses every op, on one thread and on a pool of three. `run_with` neither,
//! once the session has seen adapters of that size: mixed rows (gathered groups), DoRA
//! and stacks included.
//!
//! The counter is process-wide, so this file runs without libtest (`harness = false`):
//! libtest's own thread allocates lazily the first time it blocks on its channel, and
//! when the test reached the counted loop first those allocations were counted.

#![allow(clippy::unwrap_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use graft::adapters::{Registry, RowAdapters};
use graft::builder::WeightFormats;
use graft::synthetic::kinds::{SsfPoolSpec, write_error_memory, write_routing, write_ssf_pool};
use graft::synthetic::lora::{LoraSpec, write_peft_lora};
use graft::synthetic::{Dlrm, GraphInputs};
use graft::{Input, Model, Session, SessionOptions, WeightFormat};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    // `cargo nextest` lists tests first; answer in libtest's terse format.
    if std::env::args().any(|a| a == "--list") {
        println!("run_allocates_nothing: test");
        return;
    }
    print!("test run_allocates_nothing ... ");
    run_allocates_nothing();
    println!("ok");
}

fn run_allocates_nothing() {
    // Nothing else runs in this process meanwhile: no libtest threads, pools joined.
    // The everything-model covers every op; the small DLRM's linears are big enough to be
    // split across the pool's threads.
    let dlrm = Dlrm { fields: 3, vocab: 50, dim: 16, bottom: vec![64, 16], top: vec![128], ..Dlrm::demo() };
    for f in [WeightFormat::F32, WeightFormat::Q8, WeightFormat::Q4] {
        let model = common::model(2, WeightFormats::uniform(f));
        let (big, small) = (common::Inputs::new(64, 3), common::Inputs::new(1, 4));
        assert_no_alloc(&model, &big.inputs(), &small.inputs(), &format!("everything {f}"));

        let model = Model::from_slice_copy(&dlrm.build().to_bytes(WeightFormats::uniform(f)).unwrap()).unwrap();
        let (big, small) = (GraphInputs::new(model.graph(), 64, 3), GraphInputs::new(model.graph(), 1, 4));
        assert_no_alloc(&model, &big.inputs(), &small.inputs(), &format!("dlrm {f}"));
        assert_no_alloc_with_adapters(&model, &big.inputs(), &small.inputs(), &format!("dlrm {f} + adapters"));
    }
}

fn assert_no_alloc_with_adapters(model: &Model, big: &[Input<'_>], small: &[Input<'_>], label: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no_alloc_adapters");
    let registry = Registry::new(model);
    for (id, spec) in
        [("lora", LoraSpec::every_linear(8, 1)), ("dora", LoraSpec { dora: true, ..LoraSpec::every_linear(4, 2) })]
    {
        let path = dir.join(id);
        write_peft_lora(model, &path, &spec).unwrap();
        registry.insert(registry.load_peft(id, &path).unwrap()).unwrap();
    }
    // The other kinds: a FedIns pool queried in the same pass and one queried after its
    // site (a prefix pass), routing, and an error memory (tickets and feedback).
    let sites = ["top_fc1"];
    let pool = |query, seed| SsfPoolSpec { query, sites: &sites, pool: 6, top_k: 2, strength: 0.1, seed };
    write_ssf_pool(model, &dir.join("pool.safetensors"), &pool("interaction", 3)).unwrap();
    write_ssf_pool(model, &dir.join("pool-prefix.safetensors"), &pool("top_fc1_relu", 4)).unwrap();
    write_routing(model, &dir.join("route.safetensors"), "interaction", "top_fc2", 3, &[8], 5).unwrap();
    write_error_memory(&dir.join("memory.safetensors"), "top_fc1_relu", "prob", 4, 6, 0.5).unwrap();
    for id in ["pool", "pool-prefix", "route", "memory"] {
        registry.insert(registry.load_path(id, dir.join(format!("{id}.safetensors")), "").unwrap()).unwrap();
    }
    let mut mixed = RowAdapters::new(&registry);
    for r in 0..64 {
        match r % 8 {
            0 => mixed.push("lora").unwrap(),
            1 => mixed.push("dora").unwrap(),
            2 => mixed.push_stack(&[("lora", 0.5), ("dora", 1.5)]).unwrap(),
            3 => mixed.push("pool").unwrap(),
            4 => mixed.push_stack(&[("pool-prefix", 1.0), ("memory", 1.0)]).unwrap(),
            5 => mixed.push("route").unwrap(),
            6 => mixed.push("memory").unwrap(),
            _ => mixed.push_base().unwrap(),
        }
    }
    let one = RowAdapters::all(&registry, "dora").unwrap();
    for threads in [1, 3] {
        let mut s = Session::new(model, SessionOptions { max_batch: 64, threads, ..Default::default() }).unwrap();
        s.run_with(big, &mixed).unwrap();
        s.run_with(small, &one).unwrap();
        ALLOCATIONS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        let mut checksum = 0.0f32;
        let mut tickets = 0;
        for _ in 0..20 {
            let out = s.run_with(big, &mixed).unwrap();
            checksum += out.get("logit").map_or(0.0, |v| v[0]);
            for t in out.tickets() {
                t.feedback((t.row % 2) as f32).unwrap();
                tickets += 1;
            }
            checksum += s.run_with(small, &one).unwrap().get("prob").map_or(0.0, |v| v[0]);
        }
        COUNTING.store(false, Ordering::SeqCst);
        let n = ALLOCATIONS.load(Ordering::SeqCst);
        assert!(checksum.is_finite());
        assert_eq!(tickets, 20 * 16, "two rows in eight carry the memory");
        assert_eq!(n, 0, "{label}, {threads} thread(s): {n} allocations in 40 runs and {tickets} feedbacks");
    }
}

fn assert_no_alloc(model: &Model, big: &[Input<'_>], small: &[Input<'_>], label: &str) {
    for threads in [1, 3] {
        let mut s = Session::new(model, SessionOptions { max_batch: 64, threads, ..Default::default() }).unwrap();
        s.run(big).unwrap();
        ALLOCATIONS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        let mut checksum = 0.0f32;
        for _ in 0..20 {
            checksum += s.run(big).unwrap().get("logit").map_or(0.0, |v| v[0]);
            checksum += s.run(small).unwrap().get("prob").map_or(0.0, |v| v[0]);
        }
        COUNTING.store(false, Ordering::SeqCst);
        let n = ALLOCATIONS.load(Ordering::SeqCst);
        assert!(checksum.is_finite());
        assert_eq!(n, 0, "{label}, {threads} thread(s): {n} allocations in 40 runs");
    }
}
