//! Adapter kinds from plugin files, end to end on the `dlrm_small` fixture model.
//!
//! C plugins are compiled here from `tests/plugins_c/` with the system C compiler (the
//! tests print a SKIP line without one, and fail under `GRAFT_CI=1`): a good kind (a post
//! adding a constant vector from its source file to a named node) and one broken variant
//! per way a plugin can be wrong. Each refusal or containment is checked with its exact
//! typed error, and the host keeps serving other adapters bit for bit afterwards.
//!
//! Rust plugins are the built-in kinds' own `--features plugin` cdylibs, built here with
//! cargo (in a target directory of its own, see `rust_plugins`): two files give two distinct kinds (abi_stable's per-type root-module cache is
//! not used), the same kind twice is refused, and a plugin-loaded kind computes exactly
//! what the statically linked one does.

mod common_adapters;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common_adapters::{Batch, TestResult, base_model, bits, logits, scratch, session};
use graft::adapters::abi::abi_stable::library::ROOT_MODULE_LOADER_NAME;
use graft::adapters::{KindOrigin, Kinds, Registry, RowAdapters};
use graft::{Error, Input, NanPolicy, Session, SessionOptions, TensorView};
use graft_tests::ci_requires_peers;

const ROWS: usize = 12;
const LIB: &str = std::env::consts::DLL_EXTENSION;

/// The broken variants of `add_vector.c`: (file stem, kind name, `-D` flags).
const C_VARIANTS: [(&str, &str, &[&str]); 8] = [
    ("good", "add-vector", &[]),
    ("major", "broken-major", &["-DABI_MAJOR_VALUE=2"]),
    ("small", "broken-small", &["-DSMALL_TABLE"]),
    ("newer", "newer-minor", &["-DNEWER_MINOR"]),
    ("nullcreate", "null-create", &["-DNULL_CREATE"]),
    ("createerr", "create-error", &["-DCREATE_ERROR"]),
    ("posterr", "post-error", &["-DPOST_ERROR"]),
    ("postnan", "post-nan", &["-DPOST_NAN"]),
];

/// Builds every C plugin once per test binary; `None` (after a SKIP line) without a C
/// compiler.
fn c_plugins(test: &str) -> Option<&'static Path> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(build_c_plugins);
    match built {
        Ok(dir) => Some(dir),
        Err(why) => {
            assert!(!ci_requires_peers(), "{test}: a C compiler is required when GRAFT_CI=1, but {why}");
            println!("SKIP: {test}: no C compiler ({why}); set CC or install cc");
            None
        }
    }
}

/// Compiles the plugins into a fresh directory. Errors only when the compiler cannot be
/// started; a compile failure panics (it is a bug in the sources).
fn build_c_plugins() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sources = root.join("plugins_c");
    let include = root.join("../plugins/abi/include");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin_loading").join("c");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let compile = |source: &str, out: &str, defines: &[&str]| -> Result<(), String> {
        let output = Command::new(&cc)
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I"])
            .arg(&include)
            .args(defines)
            .arg(sources.join(source))
            .arg("-o")
            .arg(dir.join(out))
            .output()
            .map_err(|e| format!("`{cc}` did not start: {e}"))?;
        assert!(output.status.success(), "{cc} {source} {defines:?}:\n{}", String::from_utf8_lossy(&output.stderr));
        Ok(())
    };
    for (stem, kind, flags) in C_VARIANTS {
        let mut defines: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        defines.push(format!("-DKIND_NAME=\"{kind}\""));
        let defines: Vec<&str> = defines.iter().map(String::as_str).collect();
        compile("add_vector.c", &format!("lib{stem}.{LIB}"), &defines)?;
    }
    compile("no_entry.c", &format!("libnoentry.{LIB}"), &[])?;
    std::fs::write(dir.join(format!("notalib.{LIB}")), "this is a text file, not a shared library\n")
        .map_err(|e| e.to_string())?;
    Ok(dir)
}

fn lib(dir: &Path, stem: &str) -> PathBuf {
    dir.join(format!("lib{stem}.{LIB}"))
}

/// A vector file for the `add_vector` kinds: the node, then its values.
fn vector_file(dir: &Path, name: &str, node: &str, values: &[f32]) -> TestResult<String> {
    let path = dir.join(name);
    let values: Vec<String> = values.iter().map(|v| format!("{v:e}")).collect();
    std::fs::write(&path, format!("{node}\n{}\n", values.join(" ")))?;
    Ok(path.to_str().ok_or("path")?.to_string())
}

/// The base model's logits for the batch (every row base only).
fn base_logits(registry: &Registry, session: &mut Session, batch: &Batch) -> TestResult<Vec<f32>> {
    let mut rows = RowAdapters::new(registry);
    for _ in 0..batch.rows {
        rows.push_base()?;
    }
    logits(session, batch, &rows)
}

/// Expects an [`Error::Plugin`] about `path` and returns its detail and fix.
fn refusal(result: graft::Result<impl std::fmt::Debug>, path: &Path) -> TestResult<(String, String)> {
    match result {
        Err(Error::Plugin { path: p, detail, fix }) => {
            let file = path.file_name().ok_or("no file name")?.to_str().ok_or("name")?;
            assert!(p.ends_with(file), "error names {p}, not {}", path.display());
            assert!(!fix.is_empty(), "no fix for: {detail}");
            Ok((detail, fix))
        }
        other => Err(format!("{}: expected a plugin refusal, got {other:?}", path.display()).into()),
    }
}

#[test]
fn c_plugin_serves_a_post_exactly_and_per_row() -> TestResult {
    let Some(plugins) = c_plugins("c_plugin_serves_a_post_exactly_and_per_row") else { return Ok(()) };
    let dir = scratch("plugin_c_good")?;
    let model = base_model(&dir)?;
    let registry = Registry::new(&model);
    let good = lib(plugins, "good");
    let info = registry.load_plugin(&good)?;
    assert_eq!(info.name, "add-vector");
    assert_eq!(info.origin, KindOrigin::CPlugin { path: std::fs::canonicalize(&good)?, abi: (1, 0) });
    assert_eq!(info.abi, "graft_plugin.h 1.0");
    assert!(registry.kinds().names().contains(&"add-vector"));

    let plus = vector_file(&dir, "plus.txt", "top.fc3", &[0.25])?;
    let minus = vector_file(&dir, "minus.txt", "top.fc3", &[-1.5])?;
    registry.insert(registry.load("add-vector", "plus", &plus, "")?)?;
    registry.insert(registry.load("add-vector", "minus", &minus, "")?)?;
    let snapshot = registry.snapshot();
    let loaded = snapshot.require("plus")?;
    assert!(loaded.origin().is_plugin());
    assert_eq!(loaded.info().kind.as_str(), "add-vector");
    assert_eq!(loaded.info().targets[0].node.as_str(), "top_fc3");
    assert_eq!(loaded.info().targets[0].variant.as_str(), "post");
    let notes: Vec<&str> = loaded.info().notes.iter().map(|n| n.as_str()).collect();
    assert!(notes.iter().any(|n| n.starts_with("plugin=") && n.ends_with(&format!("libgood.{LIB}"))), "{notes:?}");
    assert!(notes.iter().any(|n| n.starts_with("adds 1 value(s) at node ")), "{notes:?}");

    let batch = Batch::load(ROWS)?;
    let mut session = session(&model, ROWS)?;
    let base = base_logits(&registry, &mut session, &batch)?;
    // y + 1·v in f32: the post is one addition per row.
    let all_plus = logits(&mut session, &batch, &RowAdapters::all(&registry, "plus")?)?;
    let want: Vec<f32> = base.iter().map(|b| b + 0.25).collect();
    assert_eq!(bits(&all_plus), bits(&want));
    // Per-request scale multiplies the vector.
    let half = logits(&mut session, &batch, &RowAdapters::all_stack(&registry, &[("minus", 0.5)])?)?;
    assert_eq!(bits(&half), bits(&base.iter().map(|b| b + 0.5 * -1.5).collect::<Vec<_>>()));
    // Rows with different sets: each row gets exactly its own set's value.
    let mut mixed = RowAdapters::new(&registry);
    for r in 0..ROWS {
        match r % 3 {
            0 => mixed.push_base()?,
            1 => mixed.push("plus")?,
            _ => mixed.push_stack(&[("plus", 1.0), ("minus", 1.0)])?,
        }
    }
    let got = logits(&mut session, &batch, &mixed)?;
    for r in 0..ROWS {
        let want = match r % 3 {
            0 => base[r],
            1 => base[r] + 0.25,
            _ => base[r] + 0.25 + -1.5,
        };
        assert_eq!(got[r].to_bits(), want.to_bits(), "row {r}");
    }
    // Dropping the adapters calls the plugin's destroy (no crash on unload).
    registry.remove("plus")?;
    registry.remove("minus")?;
    drop((snapshot, mixed));
    Ok(())
}

#[test]
fn broken_c_plugins_are_refused_with_the_reason() -> TestResult {
    let Some(plugins) = c_plugins("broken_c_plugins_are_refused_with_the_reason") else { return Ok(()) };
    let dir = scratch("plugin_c_refused")?;
    let model = base_model(&dir)?;
    let registry = Registry::new(&model);
    let builtin = registry.kinds().names().len();

    let (detail, fix) = refusal(registry.load_plugin(lib(plugins, "major")), &lib(plugins, "major"))?;
    assert_eq!(detail, "built against graft_plugin.h 2.0; this host speaks 1.0 (major versions must match)");
    assert_eq!(fix, "rebuild the plugin against graft_plugin.h 1.x (this host speaks 1.0)");

    let (detail, _) = refusal(registry.load_plugin(lib(plugins, "small")), &lib(plugins, "small"))?;
    let v1 = 4 * 2 + 12 * size_of::<usize>(); // two u32, then twelve pointer-sized fields
    let post = 4 * 2 + 9 * size_of::<usize>(); // offsetof(graft_plugin, post)
    assert_eq!(
        detail,
        format!("its table (struct_size {post}) is smaller than the {v1} bytes of a graft_plugin.h 1.0 table")
    );

    let (detail, fix) = refusal(registry.load_plugin(lib(plugins, "nullcreate")), &lib(plugins, "nullcreate"))?;
    assert_eq!(detail, "kind `null-create`: the required slot `create` is NULL");
    assert!(fix.contains("implement `create`, `destroy` and `targets`"), "{fix}");

    let (detail, _) = refusal(registry.load_plugin(lib(plugins, "noentry")), &lib(plugins, "noentry"))?;
    assert_eq!(
        detail,
        format!("exports neither `{ROOT_MODULE_LOADER_NAME}` (Rust plugins) nor `graft_plugin_entry` (C plugins)")
    );

    let text = plugins.join(format!("notalib.{LIB}"));
    let (detail, _) = refusal(registry.load_plugin(&text), &text)?;
    assert_eq!(detail, "not a shared library (no ELF, Mach-O or PE header)");

    let missing = plugins.join(format!("libmissing.{LIB}"));
    let (detail, _) = refusal(registry.load_plugin(&missing), &missing)?;
    assert!(detail.starts_with("cannot open:"), "{detail}");

    // Nothing was added, and the host still loads and serves a good plugin.
    assert_eq!(registry.kinds().names().len(), builtin);
    registry.load_plugin(lib(plugins, "good"))?;
    // The same kind twice is refused as a duplicate, naming where the first came from.
    let (detail, _) = refusal(registry.load_plugin(lib(plugins, "good")), &lib(plugins, "good"))?;
    assert!(detail.starts_with("kind `add-vector`: an adapter kind of this name is already registered (from "));
    // A newer minor with a larger table is accepted (unknown trailing fields ignored).
    let newer = registry.load_plugin(lib(plugins, "newer"))?;
    assert_eq!(newer.origin, KindOrigin::CPlugin { path: std::fs::canonicalize(lib(plugins, "newer"))?, abi: (1, 7) });
    assert_eq!(registry.kinds().names().len(), builtin + 2);

    let batch = Batch::load(ROWS)?;
    let mut session = session(&model, ROWS)?;
    let base = base_logits(&registry, &mut session, &batch)?;
    let v = vector_file(&dir, "v.txt", "top_fc3", &[2.0])?;
    registry.insert(registry.load("newer-minor", "v", &v, "")?)?;
    let got = logits(&mut session, &batch, &RowAdapters::all(&registry, "v")?)?;
    assert_eq!(bits(&got), bits(&base.iter().map(|b| b + 2.0).collect::<Vec<_>>()));
    Ok(())
}

#[test]
fn adapter_errors_from_c_plugins_are_typed_and_leave_the_host_serving() -> TestResult {
    let Some(plugins) = c_plugins("adapter_errors_from_c_plugins_are_typed_and_leave_the_host_serving") else {
        return Ok(());
    };
    let dir = scratch("plugin_c_errors")?;
    let model = base_model(&dir)?;
    let registry = Registry::new(&model);
    for stem in ["good", "createerr", "posterr"] {
        registry.load_plugin(lib(plugins, stem))?;
    }
    let v = vector_file(&dir, "v.txt", "top.fc3", &[0.5])?;

    // `create` fails: the plugin's field and message, code `config` (1.0 has no code).
    match registry.load("create-error", "refused", &v, "") {
        Err(Error::Adapter { id, kind, code, field, detail }) => {
            assert_eq!(
                (id.as_str(), kind.as_str(), code, field.as_str()),
                ("refused", "create-error", "config", "source")
            );
            assert_eq!(detail, "this plugin refuses every adapter");
        }
        other => return Err(format!("expected a create error, got {other:?}").into()),
    }
    // The host's own resolve error reaches the plugin and comes back with its field.
    let nowhere = vector_file(&dir, "nowhere.txt", "no.such.node", &[0.5])?;
    match registry.load("add-vector", "nowhere", &nowhere, "") {
        Err(Error::Adapter { field, detail, .. }) => {
            assert_eq!(field, "no.such.node");
            assert!(detail.contains("matches no node"), "{detail}");
        }
        other => return Err(format!("expected an unknown-module error, got {other:?}").into()),
    }
    // A wrong vector length is the plugin's own refusal.
    let long = vector_file(&dir, "long.txt", "top.fc3", &[0.5, 1.0])?;
    assert!(matches!(registry.load("add-vector", "long", &long, ""),
        Err(Error::Adapter { field, detail, .. }) if field == "values" && detail.starts_with("more values")));

    registry.insert(registry.load("add-vector", "good", &v, "")?)?;
    registry.insert(registry.load("post-error", "bad", &v, "")?)?;
    let batch = Batch::load(ROWS)?;
    let mut session = session(&model, ROWS)?;
    let base = base_logits(&registry, &mut session, &batch)?;
    let good_before = logits(&mut session, &batch, &RowAdapters::all(&registry, "good")?)?;
    let mut mixed = RowAdapters::new(&registry);
    for r in 0..ROWS {
        if r % 2 == 0 { mixed.push("good")? } else { mixed.push("bad")? }
    }
    match session.run_with(&batch.inputs(), &mixed) {
        Err(Error::Adapter { id, kind, code, field, detail }) => {
            assert_eq!((id.as_str(), kind.as_str(), code, field.as_str()), ("bad", "post-error", "tensor", "values"));
            let plugin = lib(plugins, "posterr").canonicalize()?;
            assert_eq!(detail, format!("post refuses to run (plugin {})", plugin.display()));
        }
        other => return Err(format!("expected a post error, got {:?}", other.map(|_| ())).into()),
    }
    // A returned error does not disable the adapter; the session and the other adapter
    // keep their exact results.
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.require("bad")?.disabled(), None);
    assert!(RowAdapters::all(&registry, "bad").is_ok());
    assert_eq!(bits(&logits(&mut session, &batch, &RowAdapters::all(&registry, "good")?)?), bits(&good_before));
    assert_eq!(bits(&base_logits(&registry, &mut session, &batch)?), bits(&base));
    Ok(())
}

#[test]
fn a_plugin_writing_nan_is_disabled_and_the_others_keep_serving() -> TestResult {
    let Some(plugins) = c_plugins("a_plugin_writing_nan_is_disabled_and_the_others_keep_serving") else {
        return Ok(());
    };
    let dir = scratch("plugin_c_nan")?;
    let model = base_model(&dir)?;
    let registry = Registry::new(&model);
    registry.load_plugin(lib(plugins, "good"))?;
    registry.load_plugin(lib(plugins, "postnan"))?;
    let v = vector_file(&dir, "v.txt", "top.fc3", &[0.5])?;
    registry.insert(registry.load("add-vector", "good", &v, "")?)?;
    registry.insert(registry.load("post-nan", "nan", &v, "")?)?;

    let batch = Batch::load(ROWS)?;
    let mut session = session(&model, ROWS)?;
    let good_before = logits(&mut session, &batch, &RowAdapters::all(&registry, "good")?)?;
    // Rows 0..6 use `good`, rows 6.. use `nan`: the NaN lands in the last `nan` row.
    let mut mixed = RowAdapters::new(&registry);
    for r in 0..ROWS {
        if r < 6 { mixed.push("good")? } else { mixed.push("nan")? }
    }
    let made_before = RowAdapters::all(&registry, "nan")?;
    let fault = match session.run_with(&batch.inputs(), &mixed) {
        Err(Error::PluginFault(fault)) => fault,
        other => return Err(format!("expected a plugin fault, got {:?}", other.map(|_| ())).into()),
    };
    let path = std::fs::canonicalize(lib(plugins, "postnan"))?;
    assert_eq!(fault.plugin, path.display().to_string());
    assert_eq!((fault.kind.as_str(), fault.id.as_str(), fault.node.as_str()), ("post-nan", "nan", "top_fc3"));
    assert_eq!((fault.hook, fault.row, fault.col), ("post", ROWS - 1, 0));
    assert!(fault.value.is_nan());
    let message = Error::PluginFault(fault.clone()).to_string();
    assert!(
        message.contains("produced NaN at node `top_fc3` (post hook") && message.ends_with("the adapter is disabled")
    );

    // Disabled: refused when rows are added, and at run time for assignments made before.
    let snapshot = registry.snapshot();
    assert_eq!(snapshot.require("nan")?.disabled().map(|f| f.to_string()), Some(message.clone()));
    for refused in [RowAdapters::all(&registry, "nan").map(|_| ()), RowAdapters::new(&registry).push("nan")] {
        match refused {
            Err(Error::AdapterDisabled { id, kind, reason }) => {
                assert_eq!((id.as_str(), kind.as_str(), reason.as_str()), ("nan", "post-nan", message.as_str()));
            }
            other => return Err(format!("expected a disabled adapter, got {other:?}").into()),
        }
    }
    assert!(matches!(session.run_with(&batch.inputs(), &made_before), Err(Error::AdapterDisabled { .. })));
    // The other adapter of the same session serves exactly as before.
    assert_eq!(bits(&logits(&mut session, &batch, &RowAdapters::all(&registry, "good")?)?), bits(&good_before));
    // Replacing the id loads a fresh, enabled instance.
    registry.replace(registry.load("post-nan", "nan", &v, "")?)?;
    assert_eq!(registry.snapshot().require("nan")?.disabled(), None);
    Ok(())
}

#[test]
fn nan_a_plugin_only_propagates_is_not_its_fault() -> TestResult {
    let Some(plugins) = c_plugins("nan_a_plugin_only_propagates_is_not_its_fault") else { return Ok(()) };
    let dir = scratch("plugin_c_propagate")?;
    let model = base_model(&dir)?;
    let registry = Registry::new(&model);
    registry.load_plugin(lib(plugins, "good"))?;
    let v = vector_file(&dir, "v.txt", "top.fc3", &[0.5])?;
    registry.insert(registry.load("add-vector", "good", &v, "")?)?;
    let batch = Batch::load(ROWS)?;
    let mut inputs = batch.inputs();
    let mut dense: Vec<f32> = match &inputs[0].tensor {
        TensorView::F32 { data, .. } => data.to_vec(),
        _ => return Err("the first input is not dense".into()),
    };
    dense[3 * 8] = f32::NAN; // row 3
    inputs[0] = Input::dense("dense", &dense, 8);
    let options =
        SessionOptions { max_batch: ROWS, threads: 1, nan_policy: NanPolicy::Propagate, ..Default::default() };
    let mut session = Session::new(&model, options)?;
    let rows = RowAdapters::all(&registry, "good")?;
    let out = session.run_with(&inputs, &rows)?;
    let logit = out.get("logit").ok_or("no logit")?;
    assert!(logit.to_vec()[3].is_nan());
    assert_eq!(registry.snapshot().require("good")?.disabled(), None);
    Ok(())
}

#[test]
fn a_plugin_directory_loads_each_library_and_reports_each_refusal() -> TestResult {
    let Some(plugins) = c_plugins("a_plugin_directory_loads_each_library_and_reports_each_refusal") else {
        return Ok(());
    };
    let dir = scratch("plugin_dir")?;
    for (from, to) in [("libgood", "c_good"), ("libmajor", "a_major"), ("notalib", "b_text")] {
        std::fs::copy(plugins.join(format!("{from}.{LIB}")), dir.join(format!("{to}.{LIB}")))?;
    }
    std::fs::write(dir.join("README.txt"), "not scanned")?;
    let mut kinds = Kinds::empty();
    let loads = kinds.load_dir(&dir)?;
    let names: Vec<String> =
        loads.iter().map(|l| l.path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string()).collect();
    assert_eq!(names, [format!("a_major.{LIB}"), format!("b_text.{LIB}"), format!("c_good.{LIB}")]);
    assert!(matches!(&loads[0].result, Err(Error::Plugin { detail, .. }) if detail.contains("graft_plugin.h 2.0")));
    assert!(
        matches!(&loads[1].result, Err(Error::Plugin { detail, .. }) if detail.starts_with("not a shared library"))
    );
    assert!(matches!(&loads[2].result, Ok(info) if info.name == "add-vector"));
    assert_eq!(kinds.names(), ["add-vector"]);
    assert!(matches!(Kinds::empty().load_dir(dir.join("missing")), Err(Error::Io { .. })));
    Ok(())
}

/// A plugin copied into the directory only in part (cut inside its segments, where
/// `dlopen` used to die of SIGBUS, or only in its trailing section headers) is reported
/// with a typed refusal and skipped; the complete plugin beside it loads and serves.
#[test]
fn a_truncated_plugin_in_the_directory_is_refused_and_skipped() -> TestResult {
    let Some(plugins) = c_plugins("a_truncated_plugin_in_the_directory_is_refused_and_skipped") else {
        return Ok(());
    };
    let dir = scratch("plugin_dir_truncated")?;
    let good = std::fs::read(lib(plugins, "good"))?;
    for (name, len) in [("a_third", good.len() / 3), ("b_most", good.len() - 100)] {
        std::fs::write(dir.join(format!("{name}.{LIB}")), &good[..len])?;
    }
    std::fs::write(dir.join(format!("c_good.{LIB}")), &good)?;
    let mut kinds = Kinds::empty();
    let loads = kinds.load_dir(&dir)?;
    assert_eq!(loads.len(), 3);
    for load in &loads[..2] {
        let (detail, fix) = refusal(load.result.as_ref().map(|_| ()).map_err(clone_plugin_error), &load.path)?;
        assert!(detail.starts_with("a truncated or corrupt ELF file"), "{detail}");
        assert!(fix.contains("rename"), "{fix}");
    }
    assert!(matches!(&loads[2].result, Ok(info) if info.name == "add-vector"));
    assert_eq!(kinds.names(), ["add-vector"]);
    Ok(())
}

/// `PluginLoad::result` borrowed as an owned result for [`refusal`].
fn clone_plugin_error(e: &Error) -> Error {
    match e {
        Error::Plugin { path, detail, fix } => {
            Error::Plugin { path: path.clone(), detail: detail.clone(), fix: fix.clone() }
        }
        other => Error::InvalidOption { detail: other.to_string() },
    }
}

/// The routing and ssf-pool kinds built as plugins.
fn rust_plugins(dir: &Path) -> TestResult<(PathBuf, PathBuf)> {
    let packages = ["graft-plugin-routing", "graft-plugin-ssf-pool"];
    let features = ["graft-plugin-routing/plugin", "graft-plugin-ssf-pool/plugin"];
    let target = graft_tests::plugin_builds::target_dir(env!("CARGO_TARGET_TMPDIR"));
    let built = graft_tests::plugin_builds::build(&target, &packages, &features, dir, "")?;
    Ok((built[0].clone(), built[1].clone()))
}

#[test]
fn rust_plugin_files_are_distinct_kinds_with_the_built_in_results() -> TestResult {
    let dir = scratch("plugin_rust")?;
    let (routing, ssf) = rust_plugins(&dir)?;
    let mut kinds = Kinds::empty();
    let first = kinds.load_plugin(&routing)?;
    let second = kinds.load_plugin(&ssf)?;
    assert_eq!((first.name.as_str(), second.name.as_str()), ("routing", "ssf-pool"));
    assert_eq!(first.origin, KindOrigin::RustPlugin { path: std::fs::canonicalize(&routing)? });
    assert_eq!(second.origin, KindOrigin::RustPlugin { path: std::fs::canonicalize(&ssf)? });
    assert_eq!(first.abi, "hook protocol 2");
    // The same kind again — the same file, or a copy — is a duplicate.
    let (detail, _) = refusal(kinds.load_plugin(&routing), &routing)?;
    assert!(detail.starts_with("kind `routing`: an adapter kind of this name is already registered"), "{detail}");
    let copy = dir.join(format!("copy.{LIB}"));
    std::fs::copy(&routing, &copy)?;
    refusal(kinds.load_plugin(&copy), &copy)?;
    // Beside the built-in kinds, a plugin of a built-in kind's name is refused too.
    let mut builtin = Kinds::builtin();
    let (detail, _) = refusal(builtin.load_plugin(&ssf), &ssf)?;
    assert!(detail.ends_with("already registered (built in)"), "{detail}");

    // The plugin-loaded routing kind computes exactly what the linked one does.
    let model = base_model(&dir)?;
    let route = dir.join("route.safetensors");
    graft::synthetic::kinds::write_routing(&model, &route, "Concat", "top_fc3", 3, &[8], 404)?;
    let batch = Batch::load(ROWS)?;
    let mut session = session(&model, ROWS)?;
    let mut outputs = Vec::new();
    for registry in [Registry::new(&model), Registry::with_kinds(&model, kinds)] {
        registry.insert(registry.load_path("route", &route, "")?)?;
        assert_eq!(registry.snapshot().require("route")?.origin().is_plugin(), outputs.len() == 1);
        outputs.push(logits(&mut session, &batch, &RowAdapters::all(&registry, "route")?)?);
    }
    assert_eq!(bits(&outputs[0]), bits(&outputs[1]));
    assert_ne!(bits(&outputs[0]), bits(&base_logits(&Registry::new(&model), &mut session, &batch)?));
    Ok(())
}
