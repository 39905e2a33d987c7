//! `Session::run` allocates nothing: a counting global allocator watches repeated runs of
//! a model that uses every op, on one thread and on a pool of three. `run_with` neither,
//! once the session has seen adapters of that size: mixed rows (gathered groups), DoRA
//! and stacks included. Nor does building the rows per request: between requests an
//! adapter is swapped (outside the count), and each request refreshes one reused
//! `RowAdapters` to the new snapshot, assigns its 64 rows, runs and sends feedback —
//! every request must see the version swapped in just before it.
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

        let model = tensor_model(f);
        let big: Vec<f32> = (0..64 * 12).map(|i| (i % 4) as f32 + 0.25).collect();
        let small: Vec<f32> = vec![1.5; 12];
        let (big, small) = ([Input::dense("x", &big, 12)], [Input::dense("x", &small, 12)]);
        assert_no_alloc(&model, &big, &small, &format!("tensor ops {f}"));
    }
}

/// A model using the tensor ops: computed ids, gather/embedding, transposes, slices,
/// broadcasts, reductions, softmax, matmuls, top-k, pad, tile, conv and an i64 output.
fn tensor_model(f: WeightFormat) -> Model {
    use graft::builder::{ConstValues, Matrix, ModelBuilder};
    use graft::graph::{BagMode, ValueType};
    use serde_json::json;
    let mut b = ModelBuilder::new("tensor");
    b.dense_input_shaped("x", &[3, 4]);
    b.tensor_op("ids", "cast", &["x"], json!({"to": "i64"}), &[3, 4], ValueType::I64);
    b.embedding("emb", "ids", Matrix::new(8, 4, (0..32).map(|i| i as f32 / 32.0).collect()), &[3, 4, 4]);
    b.tensor_op("bag_ids", "reshape", &["ids"], json!({}), &[12], ValueType::I64);
    b.embedding_bag("bag", &["bag_ids"], Matrix::new(8, 4, (0..32).map(|i| i as f32).collect()), BagMode::Mean);
    b.constant("sel", &[2], ConstValues::I64(vec![2, -1]));
    b.tensor_op("g", "gather", &["emb", "sel"], json!({"axis": 1}), &[3, 2, 4], ValueType::F32);
    b.tensor_op("t", "transpose", &["g"], json!({"perm": [0, 2, 1]}), &[3, 4, 2], ValueType::F32);
    b.tensor_op("mm", "matmul", &["g", "t"], json!({}), &[3, 2, 2], ValueType::F32);
    b.tensor_op("sm", "softmax", &["mm"], json!({"axis": 1}), &[3, 2, 2], ValueType::F32);
    b.tensor_op(
        "r",
        "reduce",
        &["sm"],
        json!({"reduce": "sum", "axes": [0, 2], "keepdims": false}),
        &[2],
        ValueType::F32,
    );
    b.tensor_op("sl", "slice", &["x"], json!({"axis": 1, "start": 0, "end": 4, "step": 2}), &[3, 2], ValueType::F32);
    b.tensor_op("tl", "tile", &["r"], json!({}), &[4], ValueType::F32);
    b.tensor_op("pd", "pad", &["sl"], json!({"pads": [0, 1, 1, 1], "value": 0.5}), &[4, 4], ValueType::F32);
    b.tensor_op("gt", "greater", &["pd", "tl"], json!({}), &[4, 4], ValueType::F32);
    b.tensor_op("w", "where", &["gt", "pd", "tl"], json!({}), &[4, 4], ValueType::F32);
    let attrs = json!({"kernel": [3], "strides": [1], "pads": [1, 1], "dilations": [1], "group": 1});
    b.conv(
        "conv",
        "w",
        Matrix::new(2, 12, (0..24).map(|i| i as f32 / 24.0).collect()),
        Some(vec![0.1, 0.2]),
        attrs,
        &[2, 4],
    );
    b.tensor_op("e", "exp", &["conv"], json!({}), &[2, 4], ValueType::F32);
    b.tensor_op("k", "topk", &["e"], json!({"axis": 1, "k": 2, "output": "indices"}), &[2, 2], ValueType::I64);
    b.tensor_op("kf", "cast", &["k"], json!({"to": "f32"}), &[2, 2], ValueType::F32);
    b.tensor_op("flat", "reshape", &["e"], json!({}), &[8], ValueType::F32);
    b.tensor_op("cat", "concat", &["flat", "bag"], json!({"axis": 0}), &[12], ValueType::F32);
    b.linear("logit", "cat", Matrix::new(1, 12, vec![0.1; 12]), Some(vec![0.0]));
    b.output("logit", "logit");
    b.output("prob", "sm");
    b.output("top", "kf");
    Model::from_slice_copy(&b.to_bytes(WeightFormats::uniform(f)).unwrap()).unwrap()
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
    assign_mixed(&mut mixed);
    let one = RowAdapters::all(&registry, "dora").unwrap();
    // Two versions of `lora`, swapped in turn before every per-request build below.
    let versions: Vec<_> = [11, 12]
        .iter()
        .map(|&seed| {
            let path = dir.join(format!("lora-v{seed}"));
            write_peft_lora(model, &path, &LoraSpec::every_linear(8, seed)).unwrap();
            registry.load_peft("lora", &path).unwrap()
        })
        .collect();
    let mut request = RowAdapters::new(&registry);
    let mut request_one = RowAdapters::new(&registry);
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

        // Per request: swap, then refresh + assign + run + feedback, counted. The first
        // two requests (one per version) warm the buffers up.
        let mut counted = 0;
        for k in 0..22 {
            let current = &versions[k % 2];
            registry.replace(current.clone()).unwrap();
            let count = k >= 2;
            if count {
                ALLOCATIONS.store(0, Ordering::SeqCst);
                COUNTING.store(true, Ordering::SeqCst);
            }
            request.refresh(&registry);
            assign_mixed(&mut request);
            let out = s.run_with(big, &request).unwrap();
            checksum += out.get("logit").map_or(0.0, |v| v[0]);
            for t in out.tickets() {
                t.feedback((t.row % 2) as f32).unwrap();
            }
            request_one.refresh_all(&registry, &[("lora", 0.5), ("dora", 1.0)]).unwrap();
            checksum += s.run_with(small, &request_one).unwrap().get("prob").map_or(0.0, |v| v[0]);
            COUNTING.store(false, Ordering::SeqCst);
            if count {
                counted += ALLOCATIONS.load(Ordering::SeqCst);
            }
            // Each build saw the version published just before it, and only that one.
            let served = |rows: &RowAdapters| {
                rows.groups()
                    .iter()
                    .flat_map(|g| &g.members)
                    .filter(|m| m.adapter.id() == "lora")
                    .all(|m| std::sync::Arc::ptr_eq(&m.adapter, current))
            };
            assert!(served(&request) && served(&request_one), "{label}: request {k} missed the swap");
            assert_eq!(request.groups().len(), 7, "{label}: seven distinct sets in the mixed rows");
        }
        assert!(checksum.is_finite());
        assert_eq!(counted, 0, "{label}, {threads} thread(s): {counted} allocations in 20 per-request builds and runs");
    }
}

/// The mixed assignment of every kind used above (rows cycle through eight sets).
fn assign_mixed(rows: &mut RowAdapters) {
    for r in 0..64 {
        match r % 8 {
            0 => rows.push("lora").unwrap(),
            1 => rows.push("dora").unwrap(),
            2 => rows.push_stack(&[("lora", 0.5), ("dora", 1.5)]).unwrap(),
            3 => rows.push("pool").unwrap(),
            4 => rows.push_stack(&[("pool-prefix", 1.0), ("memory", 1.0)]).unwrap(),
            5 => rows.push("route").unwrap(),
            6 => rows.push("memory").unwrap(),
            _ => rows.push_base().unwrap(),
        }
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
