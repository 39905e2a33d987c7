//! `Device::Cuda` sessions.
//!
//! Two halves:
//! - **Everywhere** (CPU-only CI included): parsing of device names, and the typed
//!   refusal — `Session::new` with a CUDA device that cannot be used returns
//!   `Error::CudaUnavailable` (feature not built, no driver, no such ordinal), never a
//!   panic, and CPU sessions in a `cuda` build are unaffected.
//! - **On a GPU** (`GRAFT_GPU=1`, run by `kernels-cuda/gpu-check.sh`; otherwise each test
//!   prints a `SKIP: … hardware CI only` line and returns — `.ci/run` has no GPU, so
//!   `GRAFT_CI=1` does not turn these skips into failures): GPU sessions against CPU sessions with the scalar
//!   reference kernels — the model of `common` uses every op, so this checks every kernel
//!   (GEMV and GEMM paths, every weight format, odd batch sizes for the tails) end to end;
//!   LoRA (mixed adapters, mixed ranks, base rows, scaled stacks) and static SSF in mixed
//!   batches; the typed refusal of host-only kinds; and a hot swap under load.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Inputs, model};
use graft::Model;
use graft::adapters::{Registry, RowAdapters};
use graft::builder::WeightFormats;
use graft::synthetic::kinds::write_adapter_file;
use graft::synthetic::lora::{LoraSpec, write_peft_lora};
use graft::{Device, Error, Session, SessionOptions};
use serde_json::json;

#[cfg(feature = "cuda")]
fn gpu_enabled(test: &str) -> bool {
    let on = std::env::var("GRAFT_GPU").is_ok_and(|v| v == "1");
    if !on {
        println!(
            "SKIP: {test}: hardware CI only (needs a CUDA GPU; kernels-cuda/gpu-check.sh runs it with GRAFT_GPU=1; .ci/run has no GPU, so GRAFT_CI=1 does not fail this)"
        );
    }
    on
}

#[test]
fn device_names_parse_and_print() {
    assert_eq!(Device::parse("cpu").unwrap(), Device::Cpu);
    assert_eq!(Device::parse("cuda").unwrap(), Device::Cuda(0));
    assert_eq!(Device::parse("cuda:3").unwrap(), Device::Cuda(3));
    assert_eq!(Device::Cuda(3).to_string(), "cuda:3");
    assert_eq!(Device::Cpu.to_string(), "cpu");
    for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x", "CUDA:0", ""] {
        let e = Device::parse(bad).unwrap_err();
        assert!(matches!(e, Error::InvalidOption { .. }), "{bad}: {e}");
        assert!(e.to_string().contains("expected cpu, cuda or cuda:N"), "{e}");
    }
    assert_eq!(SessionOptions::default().device, Device::Cpu);
}

#[test]
fn an_unusable_cuda_device_is_a_typed_error() {
    let m = model(3, WeightFormats::default());
    // No machine has device 4294967295, with or without CUDA.
    let e = Session::new(&m, SessionOptions { device: Device::Cuda(u32::MAX), ..Default::default() }).unwrap_err();
    let Error::CudaUnavailable { detail } = &e else { panic!("expected CudaUnavailable, got {e}") };
    assert!(!detail.is_empty());
    assert!(e.to_string().starts_with("CUDA unavailable: "), "{e}");
    if cfg!(not(feature = "cuda")) {
        assert!(detail.contains("`cuda` feature"), "{detail}");
    }
    assert!(Device::Cuda(u32::MAX).check().is_err());
    assert!(Device::Cpu.check().is_ok());
}

#[test]
fn device_zero_is_refused_here_or_runs_on_a_gpu() {
    let m = model(3, WeightFormats::default());
    let x = Inputs::new(5, 1);
    match Session::new(&m, SessionOptions { max_batch: 8, device: Device::Cuda(0), ..Default::default() }) {
        Err(Error::CudaUnavailable { detail }) => {
            assert!(!gpu_required(), "GRAFT_GPU=1 but cuda:0 is unavailable: {detail}");
            if cfg!(feature = "cuda") {
                // This build has CUDA support: the reason is the machine's.
                assert!(!detail.contains("`cuda` feature"), "{detail}");
            }
        }
        Err(e) => panic!("expected CudaUnavailable or a session, got {e}"),
        Ok(mut s) => {
            assert!(
                cfg!(feature = "cuda") && s.options().device == Device::Cuda(0),
                "a CUDA session without the feature"
            );
            let out = s.run(&x.inputs()).unwrap();
            assert_eq!(out.get("prob").unwrap().len(), 5);
        }
    }
}

fn gpu_required() -> bool {
    std::env::var("GRAFT_GPU").is_ok_and(|v| v == "1")
}

#[test]
fn cpu_sessions_are_unchanged_in_a_cuda_build() {
    let m = model(3, WeightFormats::default());
    let x = Inputs::new(9, 4);
    let mut a = Session::new(&m, SessionOptions { max_batch: 16, ..Default::default() }).unwrap();
    let mut b = Session::new(&m, SessionOptions { max_batch: 16, device: Device::Cpu, ..Default::default() }).unwrap();
    let pa = a.run(&x.inputs()).unwrap().get("prob").unwrap().to_vec();
    let pb = b.run(&x.inputs()).unwrap().get("prob").unwrap().to_vec();
    assert_eq!(pa, pb);
}

/// Four LoRA adapters (ranks 4, 8, 16 and an rsLoRA) and a static SSF adapter at a
/// non-linear node (`cross`) and at a linear one (`head`).
fn lora_registry(m: &Model, dir: &std::path::Path) -> Registry {
    let reg = Registry::new(m);
    for (id, rank, seed) in [("r4", 4usize, 1u64), ("r8", 8, 2), ("r16", 16, 3)] {
        let d = dir.join(id);
        write_peft_lora(m, &d, &LoraSpec::every_linear(rank, seed)).unwrap();
        reg.insert(reg.load_peft(id, &d).unwrap()).unwrap();
    }
    let mut rs = LoraSpec::every_linear(8, 4);
    rs.rslora = true;
    write_peft_lora(m, &dir.join("rs"), &rs).unwrap();
    reg.insert(reg.load_peft("rs", dir.join("rs")).unwrap()).unwrap();
    // Static SSF at a non-linear node (the cross layer) and at the head.
    let c = m.graph().nodes.iter().find(|n| n.name == "cross").unwrap().width;
    let gamma: Vec<f32> = (0..c).map(|i| 1.0 + 0.01 * (i as f32 - 7.0)).collect();
    let beta: Vec<f32> = (0..c).map(|i| 0.02 * (i % 5) as f32 - 0.04).collect();
    let config = json!({"kind": "ssf-pool", "format_version": 1, "sites": [
        {"node": "cross", "gamma": "g0", "beta": "b0"}, {"node": "head", "gamma": "g1", "beta": "b1"}]});
    let path = dir.join("ssf.safetensors");
    write_adapter_file(
        &path,
        &config,
        &[
            ("g0".into(), vec![c], gamma),
            ("b0".into(), vec![c], beta),
            ("g1".into(), vec![1], vec![1.3]),
            ("b1".into(), vec![1], vec![-0.1]),
        ],
    )
    .unwrap();
    reg.insert(reg.load_path("ssf", &path, "").unwrap()).unwrap();
    reg
}

fn mixed_rows(reg: &Registry, rows: usize) -> RowAdapters {
    let mut ra = RowAdapters::new(reg);
    for r in 0..rows {
        match r % 7 {
            0 => ra.push_base().unwrap(),
            1 => ra.push("r4").unwrap(),
            2 => ra.push("r8").unwrap(),
            3 => ra.push("r16").unwrap(),
            4 => ra.push("rs").unwrap(),
            5 => ra.push("ssf").unwrap(),
            _ => ra.push_stack(&[("r4", 0.5), ("ssf", 0.7), ("r16", 1.5)]).unwrap(),
        }
    }
    ra
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("graft-cuda-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The adapter set-up of the GPU tests, run on the CPU: every adapter loads and changes
/// the rows it is assigned to (so the GPU comparisons cannot pass vacuously), and the
/// kinds the GPU must refuse load and run on the CPU.
#[test]
fn gpu_test_adapters_load_and_change_their_rows_on_the_cpu() {
    let dir = tmp("cpu-setup");
    let m = model(7, WeightFormats::default());
    let reg = lora_registry(&m, &dir);
    let x = Inputs::new(14, 3);
    let mut s = Session::new(&m, SessionOptions { max_batch: 16, ..Default::default() }).unwrap();
    let with = s.run_with(&x.inputs(), &mixed_rows(&reg, 14)).unwrap().get("logit").unwrap().to_vec();
    let base = s.run(&x.inputs()).unwrap().get("logit").unwrap().to_vec();
    for r in 0..14 {
        let changed = (with[r] - base[r]).abs() > 1e-4;
        assert_eq!(changed, r % 7 != 0, "row {r}: {} vs base {}", with[r], base[r]);
    }
    let path = dir.join("mem.safetensors");
    graft::synthetic::kinds::write_error_memory(&path, "all", "prob", 4, 6, 0.5).unwrap();
    reg.insert(reg.load_path("mem", &path, "").unwrap()).unwrap();
    let mut dora = graft::synthetic::lora::LoraSpec::every_linear(4, 9);
    dora.dora = true;
    graft::synthetic::lora::write_peft_lora(&m, &dir.join("dora"), &dora).unwrap();
    reg.insert(reg.load_peft("dora", dir.join("dora")).unwrap()).unwrap();
    for id in ["mem", "dora"] {
        s.run_with(&x.inputs(), &RowAdapters::all(&reg, id).unwrap()).unwrap();
    }
    // Replacing a published id (what the hot-swap test does under load).
    reg.replace(reg.load_peft("r4", dir.join("r8")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "cuda")]
mod gpu {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use graft::adapters::{Registry, RowAdapters};
    use graft::builder::WeightFormats;
    use graft::kernels::Level;
    use graft::synthetic::lora::{LoraSpec, write_peft_lora};
    use graft::{Device, Error, Session, SessionOptions, WeightFormat};

    use super::common::{Inputs, model};
    use super::{gpu_enabled, lora_registry, mixed_rows, tmp};

    fn cpu(max_batch: usize) -> SessionOptions {
        SessionOptions { max_batch, threads: 1, kernels: Some(Level::Scalar), ..Default::default() }
    }

    fn gpu(max_batch: usize) -> SessionOptions {
        SessionOptions { max_batch, device: Device::Cuda(0), ..Default::default() }
    }

    /// Every output of `a` within `rel` of `b` (relative to 1 + |b|).
    fn close(what: &str, a: &[f32], b: &[f32], rel: f32) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= rel * (1.0 + y.abs()), "{what}[{i}]: gpu {x} vs cpu {y}");
        }
    }

    fn outputs(s: &mut Session, x: &Inputs) -> Vec<(String, Vec<f32>)> {
        let out = s.run(&x.inputs()).unwrap();
        out.iter().map(|(n, v)| (n.to_string(), (0..v.rows()).flat_map(|r| v.row(r).to_vec()).collect())).collect()
    }

    #[test]
    fn every_op_and_format_matches_the_cpu_reference() {
        if !gpu_enabled("every_op_and_format_matches_the_cpu_reference") {
            return;
        }
        let formats = [
            WeightFormats::default(),
            WeightFormats::uniform(WeightFormat::F32),
            WeightFormats::uniform(WeightFormat::F16),
            WeightFormats::uniform(WeightFormat::Bf16),
            WeightFormats::uniform(WeightFormat::Q8),
            WeightFormats::uniform(WeightFormat::Q4),
            WeightFormats { linear: WeightFormat::Q8, table: WeightFormat::Q8Rowwise },
        ];
        for f in formats {
            let m = model(5, f);
            // 1, 3, 16: GEMV (one chunk, a tail, the largest GEMV batch); 17, 100, 256: GEMM
            // with partial tiles.
            for rows in [1usize, 3, 16, 17, 100, 256] {
                let x = Inputs::new(rows, rows as u64);
                let mut c = Session::new(&m, cpu(256)).unwrap();
                let mut g = Session::new(&m, gpu(256)).unwrap();
                let (co, go) = (outputs(&mut c, &x), outputs(&mut g, &x));
                for ((name, cv), (_, gv)) in co.iter().zip(&go) {
                    close(&format!("{f:?} rows {rows} {name}"), gv, cv, 2e-4);
                }
            }
        }
    }

    #[test]
    fn runs_repeat_and_sessions_share_weights() {
        if !gpu_enabled("runs_repeat_and_sessions_share_weights") {
            return;
        }
        let m = model(6, WeightFormats::default());
        let mut a = Session::new(&m, gpu(64)).unwrap();
        let mut b = Session::new(&m, gpu(64)).unwrap();
        let x = Inputs::new(33, 2);
        let first = outputs(&mut a, &x);
        // Same session again, another session of the same model, and a bigger batch in
        // between (flat bag indices grow the device buffer).
        let _ = outputs(&mut a, &Inputs::new(64, 9));
        assert_eq!(outputs(&mut a, &x), first);
        assert_eq!(outputs(&mut b, &x), first);
    }

    #[test]
    fn mixed_adapter_batches_match_the_cpu() {
        if !gpu_enabled("mixed_adapter_batches_match_the_cpu") {
            return;
        }
        let dir = tmp("mixed");
        let m = model(7, WeightFormats::default());
        let reg = lora_registry(&m, &dir);
        // 9 rows: BGMV; 200 rows: SGMV.
        for rows in [9usize, 200] {
            let x = Inputs::new(rows, 3);
            let ra = mixed_rows(&reg, rows);
            let mut c = Session::new(&m, cpu(256)).unwrap();
            let mut g = Session::new(&m, gpu(256)).unwrap();
            let cv = c.run_with(&x.inputs(), &ra).unwrap().get("logit").unwrap().to_vec();
            let gv = g.run_with(&x.inputs(), &ra).unwrap().get("logit").unwrap().to_vec();
            close(&format!("mixed rows {rows}"), &gv, &cv, 5e-4);
            // Every adapter changes its rows (the test would pass vacuously otherwise).
            let base = c.run(&x.inputs()).unwrap().get("logit").unwrap().to_vec();
            for r in 1..7.min(rows) {
                assert!((cv[r] - base[r]).abs() > 1e-4, "row {r} unchanged by its adapter");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn host_only_kinds_are_refused_before_anything_runs() {
        if !gpu_enabled("host_only_kinds_are_refused_before_anything_runs") {
            return;
        }
        let dir = tmp("refuse");
        let m = model(8, WeightFormats::default());
        let reg = Registry::new(&m);
        let path = dir.join("mem.safetensors");
        graft::synthetic::kinds::write_error_memory(&path, "all", "prob", 4, 6, 0.5).unwrap();
        reg.insert(reg.load_path("mem", &path, "").unwrap()).unwrap();
        let mut dora = LoraSpec::every_linear(4, 9);
        dora.dora = true;
        write_peft_lora(&m, &dir.join("dora"), &dora).unwrap();
        reg.insert(reg.load_peft("dora", dir.join("dora")).unwrap()).unwrap();
        let x = Inputs::new(4, 1);
        let mut g = Session::new(&m, gpu(8)).unwrap();
        for (id, kind) in [("mem", "error-memory"), ("dora", "lora")] {
            let ra = RowAdapters::all(&reg, id).unwrap();
            match g.run_with(&x.inputs(), &ra) {
                Err(Error::AdapterNotOnDevice { id: got, kind: k, .. }) => {
                    assert_eq!((got.as_str(), k.as_str()), (id, kind))
                }
                other => panic!("{id}: expected AdapterNotOnDevice, got {:?}", other.map(|_| ())),
            }
        }
        // The session still works afterwards.
        assert_eq!(g.run(&x.inputs()).unwrap().get("prob").unwrap().len(), 4);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn hot_swap_under_load_keeps_snapshot_semantics() {
        if !gpu_enabled("hot_swap_under_load_keeps_snapshot_semantics") {
            return;
        }
        let dir = tmp("swap");
        let m = model(9, WeightFormats::default());
        let reg = Arc::new(Registry::new(&m));
        let (va, vb) = (dir.join("a"), dir.join("b"));
        write_peft_lora(&m, &va, &LoraSpec::every_linear(8, 11)).unwrap();
        write_peft_lora(&m, &vb, &LoraSpec::every_linear(8, 12)).unwrap();
        let x = Inputs::new(32, 5);
        // The two versions' outputs, from the CPU.
        let expect = |v: &std::path::Path| {
            let r = Registry::new(&m);
            r.insert(r.load_peft("u", v).unwrap()).unwrap();
            let mut c = Session::new(&m, cpu(32)).unwrap();
            c.run_with(&x.inputs(), &RowAdapters::all(&r, "u").unwrap()).unwrap().get("logit").unwrap().to_vec()
        };
        let (want_a, want_b) = (expect(&va), expect(&vb));
        reg.insert(reg.load_peft("u", &va).unwrap()).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(AtomicUsize::new(0));
        let servers: Vec<_> = (0..3)
            .map(|_| {
                let (reg, m, stop, started) = (reg.clone(), m.clone(), stop.clone(), started.clone());
                let (want_a, want_b) = (want_a.clone(), want_b.clone());
                std::thread::spawn(move || {
                    let x = Inputs::new(32, 5);
                    let mut g = Session::new(&m, gpu(32)).unwrap();
                    let (mut saw_a, mut saw_b) = (0, 0);
                    while !stop.load(Ordering::Relaxed) {
                        let ra = RowAdapters::all(&reg, "u").unwrap();
                        let v = g.run_with(&x.inputs(), &ra).unwrap().get("logit").unwrap().to_vec();
                        // Each run sees one version entirely, never a mix.
                        let near = |w: &[f32]| v.iter().zip(w).all(|(a, b)| (a - b).abs() <= 5e-4 * (1.0 + b.abs()));
                        if saw_a + saw_b == 0 {
                            started.fetch_add(1, Ordering::Relaxed);
                        }
                        if near(&want_a) {
                            saw_a += 1;
                        } else if near(&want_b) {
                            saw_b += 1;
                        } else {
                            panic!("a run matched neither version: {v:?}");
                        }
                    }
                    (saw_a, saw_b)
                })
            })
            .collect();
        // Swap only once every server is running (session creation may compile kernels).
        while started.load(Ordering::Relaxed) < 3 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for i in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(25));
            let v = if i % 2 == 0 { &vb } else { &va };
            reg.replace(reg.load_peft("u", v).unwrap()).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for s in servers {
            let (a, b) = s.join().unwrap();
            assert!(a > 0 && b > 0, "each server saw both versions ({a}, {b})");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Tensor ops with a `tensor.cu` kernel pass the device check (here: `CudaUnavailable`
/// from opening the device, or a session on a GPU); an op without one (top-k) is still
/// refused with `OpNotOnDevice` before any device is opened (no CPU fallback inside a
/// graph). Without the feature, `CudaUnavailable` as for every CUDA session.
#[test]
fn tensor_ops_run_on_the_device_or_are_refused_by_name() {
    use graft::builder::ModelBuilder;
    use graft::graph::ValueType;
    let mut b = ModelBuilder::new("t");
    b.dense_input_shaped("x", &[2, 3]);
    b.tensor_op("sm", "softmax", &["x"], json!({"axis": 1}), &[2, 3], ValueType::F32);
    b.tensor_op("t", "transpose", &["sm"], json!({"perm": [1, 0]}), &[3, 2], ValueType::F32);
    b.tensor_op("mm", "matmul", &["x", "t"], json!({}), &[2, 2], ValueType::F32);
    b.output("out", "mm");
    let m = Model::from_slice_copy(&b.to_bytes(WeightFormats::default()).unwrap()).unwrap();
    match Session::new(&m, SessionOptions { device: Device::Cuda(0), ..Default::default() }) {
        Err(Error::CudaUnavailable { .. }) => assert!(!gpu_required(), "GRAFT_GPU=1 but cuda:0 is unavailable"),
        Err(e) => panic!("expected CudaUnavailable or a session, got {e:?}"),
        Ok(_) => {} // a GPU: the whole graph runs on it
    }

    let mut b = ModelBuilder::new("k");
    b.dense_input_shaped("x", &[2, 3]);
    b.tensor_op("sm", "softmax", &["x"], json!({"axis": 1}), &[2, 3], ValueType::F32);
    b.tensor_op("k", "topk", &["sm"], json!({"axis": 1, "k": 2, "output": "values"}), &[2, 2], ValueType::F32);
    b.output("out", "k");
    let m = Model::from_slice_copy(&b.to_bytes(WeightFormats::default()).unwrap()).unwrap();
    let e = Session::new(&m, SessionOptions { device: Device::Cuda(0), ..Default::default() }).unwrap_err();
    #[cfg(feature = "cuda")]
    match e {
        Error::OpNotOnDevice { node, op } => assert_eq!((node.as_str(), op.as_str()), ("k", "topk")),
        other => panic!("expected OpNotOnDevice, got {other:?}"),
    }
    #[cfg(not(feature = "cuda"))]
    assert!(matches!(e, Error::CudaUnavailable { .. }), "{e:?}");
    // The CPU runs it.
    assert!(Session::new(&m, SessionOptions::default()).is_ok());
}

/// The imported CTR zoo (`tests/fixtures/zoo`, needs the `onnx` feature too): which models
/// the device takes (printed; without a GPU the check stops at `CudaUnavailable`), and on a
/// GPU (`GRAFT_GPU=1`) `rechub_deepfm` — and every other accepted model — matches a CPU
/// session on the fixture's 8-row batch.
#[cfg(all(feature = "cuda", feature = "onnx"))]
#[test]
fn zoo_models_on_the_device_match_the_cpu() {
    use graft::Input;
    use graft::kernels::Level;
    use graft::npy::NpyData;
    let zoo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/zoo");
    let mut ids: Vec<String> = std::fs::read_dir(&zoo)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("model.onnx").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    assert!(ids.iter().any(|i| i == "rechub_deepfm"), "the zoo fixtures are missing");
    let gpu = gpu_required();
    for id in &ids {
        let dir = zoo.join(id);
        let b = match graft::onnx::import(&dir.join("model.onnx")) {
            Ok(b) => b,
            Err(e) => {
                println!("{id}: not imported ({e})");
                continue;
            }
        };
        let m = Model::from_slice_copy(&b.to_bytes(WeightFormats::default()).unwrap()).unwrap();
        let opts = |device| SessionOptions { max_batch: 8, device, kernels: Some(Level::Scalar), ..Default::default() };
        let mut g = match Session::new(&m, opts(Device::Cuda(0))) {
            Err(Error::OpNotOnDevice { node, op }) => {
                println!("{id}: refused on the device at `{node}` ({op})");
                assert_ne!(id, "rechub_deepfm", "rechub_deepfm must run on the device");
                continue;
            }
            Err(Error::CudaUnavailable { detail }) => {
                assert!(!gpu, "GRAFT_GPU=1 but cuda:0 is unavailable: {detail}");
                println!("{id}: every step has a device kernel (no GPU here: {detail})");
                continue;
            }
            Err(e) => panic!("{id}: {e}"),
            Ok(s) => s,
        };
        let arrays: Vec<(String, graft::npy::NpyArray)> = m
            .graph()
            .inputs
            .iter()
            .map(|d| (d.name.clone(), graft::npy::read(&dir.join(format!("{}.npy", d.name))).unwrap()))
            .collect();
        let inputs: Vec<Input<'_>> = arrays
            .iter()
            .map(|(n, a)| match &a.data {
                NpyData::F32(v) => Input::f32(n, v, &a.shape).unwrap(),
                NpyData::I64(v) => Input::i64(n, v, &a.shape).unwrap(),
            })
            .collect();
        let mut c = Session::new(&m, opts(Device::Cpu)).unwrap();
        let co: Vec<(String, Vec<f32>)> = c
            .run(&inputs)
            .unwrap()
            .iter()
            .map(|(n, v)| (n.to_string(), (0..v.rows()).flat_map(|r| v.row(r).to_vec()).collect()))
            .collect();
        let go = g.run(&inputs).unwrap();
        for (name, want) in &co {
            let got = go.get(name).unwrap();
            assert_eq!(got.len(), want.len(), "{id} {name}");
            for (i, (x, y)) in got.iter().zip(want).enumerate() {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{id} {name}[{i}]: gpu {x} vs cpu {y}");
            }
        }
        println!("{id}: GPU matches the CPU");
    }
}
