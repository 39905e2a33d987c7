//! LoRA from PEFT directories, end to end, against PEFT's own outputs.
//!
//! The fixture `dlrm_small_lora` holds three adapters exactly as `save_pretrained` wrote
//! them (LoRA r=4, rsLoRA r=16, DoRA r=8) and the logits PEFT computed with each alone,
//! with `lora_a` at scale 0.5, in one mixed PEFT forward (rows cycling a, b, base) and in
//! a composed mix that includes DoRA rows (which PEFT itself cannot co-batch). graft loads
//! the directories through the plugin interface onto a `.graft` base in every weight
//! format and must reproduce each expectation: within 1e-5 on an f32 base, within the
//! documented budgets of the lossy formats. Mixed batches must also equal, bit for bit,
//! the rows of single-adapter runs, with one thread or several.

mod common;

use std::path::PathBuf;

use common::{TestResult, scratch};
use graft::adapters::{Registry, RowAdapters};
use graft::builder::WeightFormats;
use graft::{Error, Input, Model, Session, SessionOptions};
use graft_tests::{diff, fixture, read_f32, read_i64};

const ROWS: usize = 64;

/// Largest |Δlogit| against PEFT allowed per base format: 1e-5 for f32, and for the lossy
/// formats the same budgets as the base-model parity test (twice the worst error measured
/// there), since the adapters run in f32 beside the quantized base.
const BUDGETS: [(&str, f32); 4] = [("f32", 1e-5), ("f16", 6e-3), ("bf16", 5e-2), ("q8", 2e-1)];

struct Batch {
    dense: Vec<f32>,
    ids: Vec<Vec<i64>>,
}

impl Batch {
    fn load() -> TestResult<Batch> {
        let dense = read_f32(&fixture("dlrm_small/dense.f32"))?;
        let ids =
            (0..4).map(|k| read_i64(&fixture(&format!("dlrm_small/ids_f{k}_padded.i64")))).collect::<Result<_, _>>()?;
        Ok(Batch { dense, ids })
    }

    fn inputs(&self) -> Vec<Input<'_>> {
        let names = ["ids_f0", "ids_f1", "ids_f2", "ids_f3"];
        let mut v = vec![Input::dense("dense", &self.dense, 8)];
        v.extend(self.ids.iter().zip(names).map(|(ids, name)| Input::ids(name, ids, 3)));
        v
    }
}

fn adapter_dir(name: &str) -> PathBuf {
    fixture(&format!("dlrm_small_lora/adapters/{name}"))
}

/// The fixture base model in `format`, written once per test.
fn base_model(test: &str, format: &str) -> TestResult<Model> {
    let builder = graft::onnx::import(&fixture("dlrm_small/model.onnx"))?;
    let path = scratch(test)?.join(format!("base.{format}.graft"));
    builder.write(&path, WeightFormats::from_name(format).ok_or("unknown format")?)?;
    Ok(Model::open(&path)?)
}

/// A registry with the three fixture adapters published under their fixture names.
fn registry(model: &Model) -> TestResult<Registry> {
    let registry = Registry::new(model);
    for name in ["lora_a", "lora_b", "dora_c"] {
        registry.insert(registry.load_peft(name, adapter_dir(name))?)?;
    }
    Ok(registry)
}

/// Logits of one run with per-row adapters.
fn logits(model: &Model, threads: usize, rows: &RowAdapters, batch: &Batch) -> TestResult<Vec<f32>> {
    let mut session = Session::new(model, SessionOptions { max_batch: ROWS, threads, ..Default::default() })?;
    let out = session.run_with(&batch.inputs(), rows)?;
    Ok(out.get("logit").ok_or("no logit output")?.to_vec())
}

/// Row assignment cycling through `names` (`__base__` = no adapter).
fn cycle(registry: &Registry, names: &[&str]) -> TestResult<RowAdapters> {
    let mut rows = RowAdapters::new(registry);
    for r in 0..ROWS {
        match names[r % names.len()] {
            "__base__" => rows.push_base()?,
            id => rows.push(id)?,
        }
    }
    Ok(rows)
}

/// (expectation file, row assignment) for every configuration the fixture records.
fn cases(registry: &Registry) -> TestResult<Vec<(&'static str, RowAdapters)>> {
    Ok(vec![
        ("dlrm_small/out_base_logits.f32", cycle(registry, &["__base__"])?),
        ("dlrm_small_lora/out_lora_a_logits.f32", RowAdapters::all(registry, "lora_a")?),
        ("dlrm_small_lora/out_lora_b_logits.f32", RowAdapters::all(registry, "lora_b")?),
        ("dlrm_small_lora/out_dora_c_logits.f32", RowAdapters::all(registry, "dora_c")?),
        ("dlrm_small_lora/out_lora_a_scale0.5_logits.f32", RowAdapters::all_stack(registry, &[("lora_a", 0.5)])?),
        ("dlrm_small_lora/out_mixed_logits.f32", cycle(registry, &["lora_a", "lora_b", "__base__"])?),
        (
            "dlrm_small_lora/out_mixed4_composed_logits.f32",
            cycle(registry, &["lora_a", "lora_b", "__base__", "dora_c"])?,
        ),
    ])
}

#[test]
fn every_peft_expectation_on_every_base_format() -> TestResult {
    let batch = Batch::load()?;
    let mut failures = Vec::new();
    for (format, budget) in BUDGETS {
        let model = base_model("lora_expectations", format)?;
        let registry = registry(&model)?;
        for (file, rows) in cases(&registry)? {
            let want = read_f32(&fixture(file))?;
            let one = logits(&model, 1, &rows, &batch)?;
            let d = diff(&one, &want);
            println!("  {format:<5} {file:<52} {d}");
            if d.max_abs > budget {
                failures.push(format!("{format} {file}: {d} exceeds {budget:e}"));
            }
            // Hooks split across threads must not change a bit.
            let three = logits(&model, 3, &rows, &batch)?;
            if one.iter().map(|v| v.to_bits()).ne(three.iter().map(|v| v.to_bits())) {
                failures.push(format!("{format} {file}: 3 threads differ from 1"));
            }
        }
    }
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

/// Every row of a mixed batch equals, bit for bit, the same row run with its adapter set
/// alone: grouping (and gathering non-consecutive rows) changes nothing.
#[test]
fn mixed_rows_equal_single_adapter_rows_bitwise() -> TestResult {
    let batch = Batch::load()?;
    let model = base_model("lora_mixed_bitwise", "q8")?;
    let registry = registry(&model)?;
    let names = ["lora_a", "lora_b", "__base__", "dora_c", "lora_a"];
    let mixed = logits(&model, 1, &cycle(&registry, &names)?, &batch)?;
    for name in ["lora_a", "lora_b", "dora_c"] {
        let alone = logits(&model, 1, &RowAdapters::all(&registry, name)?, &batch)?;
        for r in (0..ROWS).filter(|r| names[r % names.len()] == name) {
            assert_eq!(mixed[r].to_bits(), alone[r].to_bits(), "row {r} ({name})");
        }
    }
    let base = logits(&model, 1, &cycle(&registry, &["__base__"])?, &batch)?;
    let mut plain = Session::new(&model, SessionOptions { max_batch: ROWS, threads: 1, ..Default::default() })?;
    let plain = plain.run(&batch.inputs())?.get("logit").ok_or("no logit")?.to_vec();
    assert_eq!(base, plain, "base-only rows equal a plain run");
    for r in (0..ROWS).filter(|r| names[r % names.len()] == "__base__") {
        assert_eq!(mixed[r].to_bits(), plain[r].to_bits(), "base row {r}");
    }
    Ok(())
}

/// A scale override at load time (ALLoRA-style `scaling`) and a per-request multiplier
/// reach the same PEFT expectation: `lora_a` at 0.5 × alpha/r = 1.0.
#[test]
fn scale_override_and_multiplier_agree_with_peft() -> TestResult {
    let batch = Batch::load()?;
    let model = base_model("lora_scale", "f32")?;
    let registry = Registry::new(&model);
    let dir = adapter_dir("lora_a");
    let dir = dir.to_str().ok_or("path")?;
    registry.insert(registry.load("lora", "fixed", dir, r#"{"scaling": 1.0}"#)?)?;
    let want = read_f32(&fixture("dlrm_small_lora/out_lora_a_scale0.5_logits.f32"))?;
    let got = logits(&model, 1, &RowAdapters::all(&registry, "fixed")?, &batch)?;
    assert!(diff(&got, &want).max_abs <= 1e-5, "{}", diff(&got, &want));
    // A stack: the same adapter twice at 0.25 each adds up to one at 0.5.
    registry.insert(registry.load_peft("a", adapter_dir("lora_a"))?)?;
    let stacked = logits(&model, 1, &RowAdapters::all_stack(&registry, &[("a", 0.25), ("a", 0.25)])?, &batch)?;
    assert!(diff(&stacked, &want).max_abs <= 1e-5, "{}", diff(&stacked, &want));
    Ok(())
}

#[test]
fn misuse_is_a_typed_error() -> TestResult {
    let batch = Batch::load()?;
    let model = base_model("lora_misuse", "f32")?;
    let registry = registry(&model)?;
    let mut rows = RowAdapters::new(&registry);
    assert!(matches!(rows.push("nobody"), Err(Error::UnknownAdapter { ref id, .. }) if id == "nobody"));
    rows.push("lora_a")?;
    let mut session = Session::new(&model, SessionOptions { max_batch: ROWS, ..Default::default() })?;
    assert!(matches!(session.run_with(&batch.inputs(), &rows), Err(Error::RowAdapters { .. })));
    assert!(matches!(RowAdapters::all_stack(&registry, &[("lora_a", f32::NAN)]), Err(Error::RowAdapters { .. })));
    // An adapter validated against another model (even an identical file) is refused.
    let other = base_model("lora_misuse_other", "f32")?;
    let foreign = Registry::new(&other).load_peft("lora_a", adapter_dir("lora_a"))?;
    assert!(matches!(registry.replace(foreign), Err(Error::AdapterModel { .. })));
    let mut other_session = Session::new(&other, SessionOptions { max_batch: ROWS, ..Default::default() })?;
    let all = RowAdapters::all(&registry, "lora_a")?;
    assert!(matches!(other_session.run_with(&batch.inputs(), &all), Err(Error::AdapterModel { .. })));
    // insert refuses a taken id; replace refuses a missing one; remove then works once.
    assert!(matches!(
        registry.insert(registry.load_peft("lora_a", adapter_dir("lora_a"))?),
        Err(Error::AdapterId { .. })
    ));
    assert!(matches!(
        registry.replace(registry.load_peft("new", adapter_dir("lora_a"))?),
        Err(Error::UnknownAdapter { .. })
    ));
    registry.remove("lora_b")?;
    assert!(matches!(registry.remove("lora_b"), Err(Error::UnknownAdapter { .. })));
    assert!(matches!(registry.load("ssf", "x", "/nowhere", ""), Err(Error::UnknownAdapterKind { .. })));
    Ok(())
}

/// An explicit merge into a float base computes what the unmerged path computes; a
/// quantized base is refused.
#[test]
fn merge_into_float_bases_only() -> TestResult {
    let batch = Batch::load()?;
    for format in ["f32", "f16"] {
        let model = base_model("lora_merge", format)?;
        let registry = registry(&model)?;
        for name in ["lora_a", "lora_b", "dora_c"] {
            let adapter = registry.snapshot().require(name)?.clone();
            let path = scratch("lora_merge")?.join(format!("merged.{format}.{name}.graft"));
            let report = graft::adapters::merge_to_file(&model, &adapter, &path)?;
            assert!(!report.nodes.is_empty());
            let merged = Model::open(&path)?;
            let mut session =
                Session::new(&merged, SessionOptions { max_batch: ROWS, threads: 1, ..Default::default() })?;
            let got = session.run(&batch.inputs())?.get("logit").ok_or("no logit")?.to_vec();
            let unmerged = logits(&model, 1, &RowAdapters::all(&registry, name)?, &batch)?;
            let d = diff(&got, &unmerged);
            assert!(d.max_abs <= 1e-4, "{format} {name}: merged vs unmerged {d}");
        }
    }
    let q8 = base_model("lora_merge", "q8")?;
    let adapter = Registry::new(&q8).load_peft("a", adapter_dir("lora_a"))?;
    let refused = graft::adapters::merge_to_file(&q8, &adapter, &scratch("lora_merge")?.join("q8.graft"));
    assert!(
        matches!(refused, Err(Error::InvalidOption { ref detail }) if detail.contains("re-quantize")),
        "{refused:?}"
    );
    Ok(())
}
