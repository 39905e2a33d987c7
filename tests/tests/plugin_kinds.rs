//! Adapter kinds loaded from shared libraries, checked against independent expectations:
//!
//! - the four built-in kinds (`lora`, `ssf-pool`, `error-memory`, `routing`) built as
//!   plugins compute bit for bit what the statically linked kinds do on the same files
//!   (the error memory also after learning from the same feedback);
//! - the Rust example plugin (`ia3`, `plugins/examples/ia3`) reproduces PEFT's (IA)³
//!   outputs on `dlrm_small` (`tests/fixtures/ia3`, ≤ 1e-5), at scale 1 and 0.5;
//! - the C example plugin (`steering`, `plugins/examples/steering-c`) adds its scaled
//!   vector: at the logit exactly, at the last hidden layer as the next linear maps it;
//! - containment with the `faulty` Rust plugin: a hook that panics (caught by the plugin's
//!   guard), returns an error or writes NaN fails its run with a typed error naming the
//!   plugin, the host keeps serving other adapters bit for bit, the NaN one is disabled; a
//!   panic while loading is refused; a plugin built for hook protocol 1 is refused.
//!
//! Needs cargo (the plugins are built at test time) and, for the C plugin, a C compiler
//! (a SKIP line without one; a failure under `GRAFT_CI=1`).

#![allow(clippy::unwrap_used)]

mod common_adapters;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common_adapters::{Batch, TestResult, adapter_dir, base_model, bits, logits, scratch, session};
use graft::adapters::{Kinds, Registry, RowAdapters};
use graft::synthetic::kinds::{SsfPoolSpec, write_error_memory, write_routing, write_ssf_pool};
use graft::{Error, Model};
use graft_tests::{ci_requires_peers, fixture, plugin_builds, read_f32};

const ROWS: usize = 16;

/// Every Rust plugin of the test, built once per test binary.
struct Built {
    builtins: Vec<PathBuf>,
    ia3: PathBuf,
    faulty: PathBuf,
    faulty_old_abi: PathBuf,
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin_kinds");
        let packages = [
            "graft-plugin-lora",
            "graft-plugin-ssf-pool",
            "graft-plugin-error-memory",
            "graft-plugin-routing",
            "graft-plugin-ia3",
            "graft-plugin-faulty",
        ];
        let features: Vec<String> = packages.iter().map(|p| format!("{p}/plugin")).collect();
        let features: Vec<&str> = features.iter().map(String::as_str).collect();
        let target = plugin_builds::target_dir(env!("CARGO_TARGET_TMPDIR"));
        let mut libs = plugin_builds::build(&target, &packages, &features, &out, "").unwrap();
        let old_abi = ["graft-plugin-faulty/old_abi"];
        let old = plugin_builds::build(&target, &["graft-plugin-faulty"], &old_abi, &out, "_old_abi").unwrap();
        let faulty = libs.pop().unwrap();
        let ia3 = libs.pop().unwrap();
        Built { builtins: libs, ia3, faulty, faulty_old_abi: old[0].clone() }
    })
}

/// Kinds loaded from `files` only (no built-in kinds).
fn plugin_kinds(files: &[&Path]) -> TestResult<Kinds> {
    let mut kinds = Kinds::empty();
    for f in files {
        let info = kinds.load_plugin(f)?;
        assert!(info.origin.is_plugin());
    }
    Ok(kinds)
}

#[test]
fn built_in_kinds_as_plugins_compute_what_the_linked_kinds_do() -> TestResult {
    let dir = scratch("plugin_kinds_builtin")?;
    let model = base_model(&dir)?;
    let files: Vec<&Path> = built().builtins.iter().map(PathBuf::as_path).collect();
    let kinds = plugin_kinds(&files)?;
    assert_eq!(kinds.names(), ["lora", "ssf-pool", "error-memory", "routing"]);
    // One adapter of each kind on dlrm_small.
    let sites = ["top_fc1", "top_fc2"];
    let pool = SsfPoolSpec { query: "dense", sites: &sites, pool: 6, top_k: 2, strength: 0.3, seed: 5 };
    write_ssf_pool(&model, &dir.join("pool.safetensors"), &pool)?;
    write_routing(&model, &dir.join("route.safetensors"), "Concat", "top_fc3", 3, &[8], 6)?;
    write_error_memory(&dir.join("memory.safetensors"), "Relu_3", "Sigmoid", 4, 4, 1.0)?;
    let sources: [(&str, PathBuf); 4] = [
        ("lora", adapter_dir("dora_c")),
        ("pool", dir.join("pool.safetensors")),
        ("route", dir.join("route.safetensors")),
        ("memory", dir.join("memory.safetensors")),
    ];
    let batch = Batch::load(ROWS)?;
    let mut s = session(&model, ROWS)?;
    let mut per_registry = Vec::new();
    for registry in [Registry::new(&model), Registry::with_kinds(&model, kinds)] {
        for (id, path) in &sources {
            registry.insert(registry.load_path(id, path, "")?)?;
        }
        let mut outputs = Vec::new();
        for (id, _) in &sources {
            outputs.push(bits(&logits(&mut s, &batch, &RowAdapters::all(&registry, id)?)?));
        }
        // A mixed batch, and the memory after one round of feedback.
        let mut mixed = RowAdapters::new(&registry);
        for r in 0..ROWS {
            mixed.push(sources[r % 4].0)?;
        }
        outputs.push(bits(&logits(&mut s, &batch, &mixed)?));
        let memory = RowAdapters::all(&registry, "memory")?;
        {
            let out = s.run_with(&batch.inputs(), &memory)?;
            for t in out.tickets() {
                t.feedback((t.row % 2) as f32)?;
            }
        }
        let prob = s.run_with(&batch.inputs(), &memory)?.get("prob").ok_or("no prob")?.to_vec();
        outputs.push(bits(&prob));
        per_registry.push(outputs);
    }
    for (i, (linked, plugin)) in per_registry[0].iter().zip(&per_registry[1]).enumerate() {
        assert_eq!(linked, plugin, "configuration {i}: plugin and linked kinds differ");
    }
    Ok(())
}

#[test]
fn ia3_plugin_reproduces_peft() -> TestResult {
    let dir = scratch("plugin_kinds_ia3")?;
    let model = base_model(&dir)?;
    let registry = Registry::new(&model);
    let info = registry.load_plugin(&built().ia3)?;
    assert_eq!(info.name, "ia3");
    let adapter = fixture("ia3/adapter");
    registry.insert(registry.load("ia3", "ia3", adapter.to_str().ok_or("path")?, "")?)?;
    let batch = Batch::load(ROWS)?;
    let mut s = session(&model, ROWS)?;
    for (scale, expected) in [(1.0f32, "ia3/expected_logits.f32"), (0.5, "ia3/expected_logits_m0.5.f32")] {
        let got = logits(&mut s, &batch, &RowAdapters::all_stack(&registry, &[("ia3", scale)])?)?;
        let want = read_f32(&fixture(expected))?;
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        println!("ia3 plugin at scale {scale}: max |Δlogit| vs PEFT {worst:.2e}");
        assert!(worst <= 1e-5, "scale {scale}: {worst}");
    }
    Ok(())
}

/// The C example plugin, compiled once; `None` after a SKIP line without a C compiler.
fn steering_plugin() -> Option<&'static Path> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin_kinds");
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        let lib = out.join(format!("libgraft_steering.{}", std::env::consts::DLL_EXTENSION));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let output = Command::new(&cc)
            .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared", "-fPIC"])
            .arg(root.join("plugins/examples/steering-c/steering.c"))
            .arg("-o")
            .arg(&lib)
            .output()
            .map_err(|e| format!("`{cc}` did not start: {e}"))?;
        assert!(output.status.success(), "steering.c:\n{}", String::from_utf8_lossy(&output.stderr));
        Ok(lib)
    });
    match built {
        Ok(lib) => Some(lib),
        Err(why) => {
            assert!(!ci_requires_peers(), "a C compiler is required when GRAFT_CI=1, but {why}");
            println!("SKIP: steering C plugin: no C compiler ({why}); set CC or install cc");
            None
        }
    }
}

#[test]
fn steering_c_plugin_adds_its_vector() -> TestResult {
    let Some(lib) = steering_plugin() else { return Ok(()) };
    let dir = scratch("plugin_kinds_steering")?;
    let model = base_model(&dir)?;
    let registry = Registry::new(&model);
    assert_eq!(registry.load_plugin(lib)?.name, "steering");
    let hidden: Vec<f32> = (0..32).map(|i| ((i as f32) * 0.7).sin()).collect();
    let text = |node: &str, v: &[f32]| {
        let values: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
        format!("node {node}\nalpha 0.5\nvector {}\n", values.join(" "))
    };
    std::fs::write(dir.join("logit.txt"), text("top_fc3", &[1.25]))?;
    std::fs::write(dir.join("hidden.txt"), text("Relu_3", &hidden))?;
    for (id, file) in [("logit", "logit.txt"), ("hidden", "hidden.txt")] {
        let path = dir.join(file);
        registry.insert(registry.load("steering", id, path.to_str().ok_or("path")?, "")?)?;
        let info = registry.snapshot().require(id)?.info().clone();
        assert!(info.notes.iter().any(|n| n.as_str().contains("steering node=")), "{:?}", info.notes);
    }
    let batch = Batch::load(ROWS)?;
    let mut s = session(&model, ROWS)?;
    let base = logits(&mut s, &batch, &RowAdapters::all_stack(&registry, &[])?)?;
    // At the logit: + alpha · scale · v exactly.
    let got = logits(&mut s, &batch, &RowAdapters::all_stack(&registry, &[("logit", 2.0)])?)?;
    for (g, b) in got.iter().zip(&base) {
        assert_eq!(*g, b + 0.5 * 2.0 * 1.25);
    }
    // At the last hidden layer (after its ReLU): the logit moves by top_fc3's weights · (alpha · v).
    let w3 = top_fc3_weights(&model)?;
    let shift: f64 = w3.iter().zip(&hidden).map(|(w, v)| f64::from(*w) * 0.5 * f64::from(*v)).sum();
    let got = logits(&mut s, &batch, &RowAdapters::all(&registry, "hidden")?)?;
    for (r, (g, b)) in got.iter().zip(&base).enumerate() {
        assert!((f64::from(*g) - (f64::from(*b) + shift)).abs() <= 1e-5, "row {r}: {g} vs {b} + {shift}");
    }
    // A vector of the wrong width is refused with the plugin's own reason.
    std::fs::write(dir.join("short.txt"), text("Relu_3", &hidden[..5]))?;
    let short = dir.join("short.txt");
    let e = registry.load("steering", "short", short.to_str().ok_or("path")?, "").err().ok_or("accepted")?;
    assert!(matches!(&e, Error::Adapter { code: "shape", field, .. } if field == "vector"), "{e:?}");
    Ok(())
}

fn top_fc3_weights(model: &Model) -> TestResult<Vec<f32>> {
    let g = model.graph();
    let node = g.node("top_fc3").ok_or("no top_fc3")?;
    let graft::graph::Op::Linear { weight, .. } = g.nodes[node].op else { return Err("not linear".into()) };
    let w = model.weight(weight)?;
    let mut row = vec![0.0; w.cols];
    w.dequant_row(0, &mut row);
    Ok(row)
}

#[test]
fn faulty_plugins_are_contained() -> TestResult {
    let dir = scratch("plugin_kinds_faulty")?;
    let model = base_model(&dir)?;
    let registry = Registry::new(&model);
    assert_eq!(registry.load_plugin(&built().faulty)?.name, "faulty");
    // A plugin built for hook protocol 1 is refused, naming the versions.
    let e = Registry::new(&model).load_plugin(&built().faulty_old_abi).err().ok_or("old ABI accepted")?;
    let text = e.to_string();
    assert!(text.contains("protocol 1") && text.contains('2'), "{text}");

    registry.insert(registry.load_peft("good", adapter_dir("lora_a"))?)?;
    let spec = |mode: &str| -> TestResult<String> {
        let path = dir.join(format!("{mode}.json"));
        std::fs::write(&path, format!(r#"{{"mode": "{mode}", "module": "top_fc2"}}"#))?;
        Ok(path.to_str().ok_or("path")?.to_string())
    };
    for mode in ["panic", "error", "nan"] {
        registry.insert(registry.load("faulty", mode, &spec(mode)?, "")?)?;
    }
    let e = registry.load("faulty", "boom", &spec("panic_on_load")?, "").err().ok_or("a panicking load succeeded")?;
    assert!(matches!(&e, Error::Adapter { code: "internal", .. }), "{e:?}");

    let batch = Batch::load(ROWS)?;
    let mut s = session(&model, ROWS)?;
    let good = bits(&logits(&mut s, &batch, &RowAdapters::all(&registry, "good")?)?);
    let plugin = built().faulty.canonicalize()?.display().to_string();
    for (mode, code) in [("panic", "internal"), ("error", "bad call")] {
        // The faulty adapter on half the rows: the run fails, naming the plugin and why.
        let mut rows = RowAdapters::new(&registry);
        for r in 0..ROWS {
            if r % 2 == 0 { rows.push(mode)? } else { rows.push("good")? }
        }
        let e = s.run_with(&batch.inputs(), &rows).err().ok_or(format!("{mode}: the run succeeded"))?;
        match &e {
            Error::Adapter { id, kind, code: c, detail, .. } => {
                assert_eq!((id.as_str(), kind.as_str(), *c), (mode, "faulty", code), "{e:?}");
                assert!(detail.contains(&plugin), "{mode}: the error does not name the plugin file: {detail}");
            }
            other => return Err(format!("{mode}: unexpected error {other:?}").into()),
        }
        // The host keeps serving the others bit for bit.
        assert_eq!(bits(&logits(&mut s, &batch, &RowAdapters::all(&registry, "good")?)?), good, "{mode}");
    }
    // NaN: the run fails, the adapter is disabled, and later assignments are refused.
    let e = s.run_with(&batch.inputs(), &RowAdapters::all(&registry, "nan")?).err().ok_or("NaN accepted")?;
    assert!(matches!(&e, Error::PluginFault(f) if f.id == "nan" && f.plugin == plugin), "{e:?}");
    let snapshot = registry.snapshot();
    assert!(snapshot.require("nan")?.disabled().is_some());
    assert!(matches!(RowAdapters::all(&registry, "nan"), Err(Error::AdapterDisabled { .. })));
    assert_eq!(bits(&logits(&mut s, &batch, &RowAdapters::all(&registry, "good")?)?), good);
    Ok(())
}
