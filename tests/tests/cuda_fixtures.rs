//! Fixture parity on a GPU: the `dlrm_small` base model (imported from its ONNX file) and
//! the `dlrm_small_lora` PEFT adapters, run by a `Device::Cuda(0)` session, against the
//! logits PyTorch/PEFT recorded in the fixtures — base, each LoRA adapter alone, a
//! scaled adapter and a mixed batch (rows cycling lora_a, lora_b, base). DoRA (`dora_c`)
//! is refused on GPU sessions with `AdapterNotOnDevice`, which is checked too.
//!
//! Needs the `cuda` feature and `GRAFT_GPU=1` (kernels-cuda/gpu-check.sh sets both);
//! otherwise it prints a `SKIP: … hardware CI only` line (`.ci/run` has no GPU, so this
//! skip is not a failure under `GRAFT_CI=1`).

#![cfg(feature = "cuda")]

mod common;

use common::{TestResult, scratch};
use graft::adapters::{Registry, RowAdapters};
use graft::builder::WeightFormats;
use graft::{Device, Error, Input, Model, Session, SessionOptions};
use graft_tests::{fixture, read_f32, read_i64};

const ROWS: usize = 64;

fn inputs<'a>(dense: &'a [f32], ids: &'a [Vec<i64>]) -> Vec<Input<'a>> {
    let names = ["ids_f0", "ids_f1", "ids_f2", "ids_f3"];
    let mut v = vec![Input::dense("dense", dense, 8)];
    v.extend(ids.iter().zip(names).map(|(ids, name)| Input::ids(name, ids, 3)));
    v
}

#[test]
fn fixtures_match_pytorch_on_the_gpu() -> TestResult<()> {
    if !std::env::var("GRAFT_GPU").is_ok_and(|v| v == "1") {
        println!(
            "SKIP: fixtures_match_pytorch_on_the_gpu: hardware CI only (needs a CUDA GPU; kernels-cuda/gpu-check.sh runs it with GRAFT_GPU=1; .ci/run has no GPU, so GRAFT_CI=1 does not fail this)"
        );
        return Ok(());
    }
    let dense = read_f32(&fixture("dlrm_small/dense.f32"))?;
    let ids: Vec<Vec<i64>> =
        (0..4).map(|k| read_i64(&fixture(&format!("dlrm_small/ids_f{k}_padded.i64")))).collect::<Result<_, _>>()?;
    let builder = graft::onnx::import(&fixture("dlrm_small/model.onnx"))?;
    let path = scratch("cuda_fixtures")?.join("base.f32.graft");
    builder.write(&path, WeightFormats::from_name("f32").ok_or("f32")?)?;
    let model = Model::open(&path)?;
    let registry = Registry::new(&model);
    for name in ["lora_a", "lora_b", "dora_c"] {
        registry.insert(registry.load_peft(name, fixture(&format!("dlrm_small_lora/adapters/{name}")))?)?;
    }
    let cycle = |names: &[&str]| -> TestResult<RowAdapters> {
        let mut rows = RowAdapters::new(&registry);
        for r in 0..ROWS {
            match names[r % names.len()] {
                "__base__" => rows.push_base()?,
                id => rows.push(id)?,
            }
        }
        Ok(rows)
    };
    let cases = vec![
        ("dlrm_small/out_base_logits.f32", cycle(&["__base__"])?),
        ("dlrm_small_lora/out_lora_a_logits.f32", RowAdapters::all(&registry, "lora_a")?),
        ("dlrm_small_lora/out_lora_b_logits.f32", RowAdapters::all(&registry, "lora_b")?),
        ("dlrm_small_lora/out_lora_a_scale0.5_logits.f32", RowAdapters::all_stack(&registry, &[("lora_a", 0.5)])?),
        ("dlrm_small_lora/out_mixed_logits.f32", cycle(&["lora_a", "lora_b", "__base__"])?),
    ];
    let mut session =
        Session::new(&model, SessionOptions { max_batch: ROWS, device: Device::Cuda(0), ..Default::default() })?;
    for (file, rows) in &cases {
        let want = read_f32(&fixture(file))?;
        let got = session.run_with(&inputs(&dense, &ids), rows)?.get("logit").ok_or("no logit")?.to_vec();
        assert_eq!(got.len(), want.len(), "{file}");
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        // f32 base, f32 adapters: the GPU's reduction order differs from PyTorch's.
        assert!(worst <= 1e-4, "{file}: max |dlogit| {worst}");
        println!("{file}: max |dlogit| {worst:.2e}");
    }
    match session.run_with(&inputs(&dense, &ids), &RowAdapters::all(&registry, "dora_c")?) {
        Err(Error::AdapterNotOnDevice { id, .. }) => assert_eq!(id, "dora_c"),
        other => panic!("DoRA on a GPU session: expected AdapterNotOnDevice, got {:?}", other.map(|_| ())),
    }
    Ok(())
}
