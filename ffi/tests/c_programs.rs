//! The C API from C and C++: builds `libgraft` and compiles the examples and C tests
//! with `-Wall -Wextra -Werror -pedantic` under AddressSanitizer, UndefinedBehavior-
//! Sanitizer and LeakSanitizer, runs them, and fails on any sanitizer report.
//! `serve.c` and `serve.cpp` must print exactly what the Rust API computes for the same
//! inputs and adapters.
//!
//! Needs a C and a C++ compiler with sanitizer runtimes (`CC`/`CXX`, default `cc`/`c++`):
//! without them each test prints a SKIP line, and fails under `GRAFT_CI=1`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use graft_rt::adapters::{Registry, RowAdapters};
use graft_rt::builder::WeightFormats;
use graft_rt::graph::{Graph, InputKind};
use graft_rt::synthetic::Dlrm;
use graft_rt::synthetic::kinds::write_error_memory;
use graft_rt::synthetic::lora::{LoraSpec, write_peft_lora};
use graft_rt::{Input, Model, Session, SessionOptions, WeightFormat};

const ROWS: usize = 8;

fn ffi_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tmp() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("ffi")
}

fn ci() -> bool {
    std::env::var("GRAFT_CI").is_ok_and(|v| v == "1")
}

/// The compilers, checked once by building a sanitized hello world in C and C++.
fn compilers(test: &str) -> Option<&'static (String, String)> {
    static FOUND: OnceLock<Result<(String, String), String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        let dir = tmp().join("probe");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        for (compiler, file) in [(&cc, "probe.c"), (&cxx, "probe.cpp")] {
            let src = dir.join(file);
            std::fs::write(&src, "int main(void) { return 0; }\n").map_err(|e| e.to_string())?;
            let out = Command::new(compiler)
                .args(["-fsanitize=address,undefined", "-o"])
                .arg(dir.join(format!("{file}.out")))
                .arg(&src)
                .output()
                .map_err(|e| format!("{compiler} did not start: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "{compiler} cannot build with sanitizers: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok((cc, cxx))
    });
    match found {
        Ok(c) => Some(c),
        Err(why) => {
            assert!(!ci(), "{test}: a C/C++ compiler with sanitizers is required when GRAFT_CI=1, but {why}");
            println!("SKIP: {test}: {why}");
            None
        }
    }
}

/// Builds `libgraft.so` and `libgraft.a` (debug) in a target directory of their own
/// (the test's own build does not produce the C libraries, and a nested cargo in the
/// workspace target directory would wait on the outer one's lock), then lays them out
/// as installed: the shared library under its SONAME `libgraft.so.<ABI major>`.
fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ffi-build");
        let out = Command::new(env!("CARGO"))
            .current_dir(ffi_dir())
            .args(["build", "-p", "graft-ffi", "--lib", "--target-dir"])
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET_DIR")
            .output()
            .unwrap();
        assert!(out.status.success(), "cargo build -p graft-ffi failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let header = std::fs::read_to_string(ffi_dir().join("include/graft.h")).unwrap();
        let major = header.lines().find_map(|l| l.strip_prefix("#define GRAFT_ABI_MAJOR ")).unwrap().trim();
        let lib = tmp().join("lib");
        let _ = std::fs::remove_dir_all(&lib);
        std::fs::create_dir_all(&lib).unwrap();
        let soname = format!("libgraft.so.{major}");
        std::fs::copy(target.join("debug/libgraft.so"), lib.join(&soname)).unwrap();
        std::os::unix::fs::symlink(&soname, lib.join("libgraft.so")).unwrap();
        std::fs::copy(target.join("debug/libgraft.a"), lib.join("libgraft.a")).unwrap();
        lib
    })
}

/// The files the programs read: a small DLRM (q8), two users' LoRA adapters plus a
/// second version of user-b, an error memory, the C steering plugin and a source for it.
struct Fixtures {
    model: PathBuf,
    lora_a: PathBuf,
    lora_b: PathBuf,
    lora_b2: PathBuf,
    memory: PathBuf,
    steering_src: PathBuf,
}

fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = tmp().join("fixtures");
        std::fs::create_dir_all(&dir).unwrap();
        let spec = Dlrm { fields: 3, vocab: 50, dim: 16, bottom: vec![64, 16], top: vec![32], ..Dlrm::demo() };
        let model_path = dir.join("dlrm.graft");
        spec.build().write(&model_path, WeightFormats::uniform(WeightFormat::Q8)).unwrap();
        let model = Model::open(&model_path).unwrap();
        let lora = |name: &str, seed| {
            let path = dir.join(name);
            write_peft_lora(&model, &path, &LoraSpec::every_linear(4, seed)).unwrap();
            path
        };
        let memory = dir.join("memory.safetensors");
        write_error_memory(&memory, "top_fc1_relu", "prob", 4, 6, 0.5).unwrap();
        let g = model.graph();
        let node = g.nodes.iter().position(|n| n.name == "top_fc1_relu").unwrap();
        let width = g.value_width(graft_rt::graph::ValueId::Node(node));
        let vector: Vec<String> = (0..width).map(|j| format!("{}", (j % 5) as f32 * 0.1 - 0.2)).collect();
        let steering_src = dir.join("steer.txt");
        std::fs::write(&steering_src, format!("node top_fc1_relu\nalpha 0.5\nvector {}\n", vector.join(" "))).unwrap();
        Fixtures {
            model: model_path,
            lora_a: lora("lora-a", 1),
            lora_b: lora("lora-b", 2),
            lora_b2: lora("lora-b-v2", 3),
            memory,
            steering_src,
        }
    })
}

/// Compiles `sources` into `name` with warnings as errors; `sanitize` adds ASan + UBSan
/// (LSan is part of ASan on Linux); `static_lib` links `libgraft.a` instead of the
/// shared library.
fn compile(name: &str, sources: &[&str], cpp: bool, sanitize: bool, static_lib: bool) -> PathBuf {
    static SERIAL: Mutex<()> = Mutex::new(());
    let (cc, cxx) = compilers(name).unwrap();
    let lib = library();
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let exe = tmp().join("bin").join(name);
    std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
    let mut cmd = Command::new(if cpp { cxx } else { cc });
    cmd.arg(if cpp { "-std=c++17" } else { "-std=c11" })
        .args(["-Wall", "-Wextra", "-Werror", "-pedantic", "-g", "-O1", "-fno-omit-frame-pointer"])
        .arg("-I")
        .arg(ffi_dir().join("include"))
        .arg("-I")
        .arg(ffi_dir().join("examples"));
    if sanitize {
        cmd.args(["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]);
    }
    for s in sources {
        cmd.arg(ffi_dir().join(s));
    }
    cmd.arg("-o").arg(&exe);
    if static_lib {
        cmd.arg(lib.join("libgraft.a")).args(["-lpthread", "-ldl", "-lm", "-lrt", "-lgcc_s", "-lutil"]);
    } else {
        cmd.arg("-L").arg(lib).arg("-lgraft").arg(format!("-Wl,-rpath,{}", lib.display())).arg("-lpthread").arg("-lm");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "compiling {name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    exe
}

/// Runs `exe` and returns its stdout; fails on a nonzero exit or any sanitizer report.
fn run(exe: &Path, args: &[&Path], extra: &[&str]) -> String {
    let out = Command::new(exe)
        .args(args)
        .args(extra)
        // allocator_may_return_null: an impossible allocation fails as malloc does outside
        // ASan (NULL), which graft must turn into a status; ASan would abort instead.
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=1:allocator_may_return_null=1",
        )
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        .env("LSAN_OPTIONS", "report_objects=1")
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}", exe.display(), out.status);
    // The one ASan line that is no report: an impossible allocation returned NULL (see
    // allocator_may_return_null above), and graft turned it into a status.
    let reports: String =
        stderr.lines().filter(|l| !l.contains("AddressSanitizer failed to allocate")).collect::<Vec<_>>().join("\n");
    for report in ["AddressSanitizer", "LeakSanitizer", "runtime error:", "UndefinedBehaviorSanitizer"] {
        assert!(!reports.contains(report), "{}: sanitizer report:\n{stderr}", exe.display());
    }
    stdout.into_owned()
}

/// One input of `common_inputs.h`: its name, values and shape.
struct ExampleInput {
    name: String,
    dense: Vec<f32>,
    ids: Vec<i64>,
    dims: Vec<usize>,
}

impl ExampleInput {
    fn input(&self) -> Input<'_> {
        if self.dense.is_empty() {
            Input::i64(&self.name, &self.ids, &self.dims)
        } else {
            Input::f32(&self.name, &self.dense, &self.dims)
        }
        .unwrap()
    }
}

/// The example inputs of `common_inputs.h`, built in Rust.
fn example_inputs(g: &Graph, rows: usize, salt: usize) -> Vec<ExampleInput> {
    g.inputs
        .iter()
        .enumerate()
        .map(|(k, def)| match def.kind {
            InputKind::Dense { width } => {
                let v = (0..rows * width)
                    .map(|i| {
                        let (r, c) = (i / width, i % width);
                        (((r * width + c) * 37 + salt * 11) % 101) as f32 / 50.0 - 1.0
                    })
                    .collect();
                ExampleInput { name: def.name.clone(), dense: v, ids: Vec::new(), dims: vec![rows, width] }
            }
            kind => {
                let bound = g.id_bound(k).unwrap_or(1).max(1);
                let per_row = if let InputKind::Ids { slots } = kind { slots } else { 1 };
                let ids = (0..rows * per_row)
                    .map(|i| {
                        let (r, c) = (i / per_row, i % per_row);
                        match kind {
                            InputKind::BagOffsets => r as i64,
                            _ => ((r * 31 + c * 17 + k * 7 + salt * 5) % bound) as i64,
                        }
                    })
                    .collect();
                let dims = if matches!(kind, InputKind::Ids { .. }) { vec![rows, per_row] } else { vec![rows] };
                ExampleInput { name: def.name.clone(), dense: Vec::new(), ids, dims }
            }
        })
        .collect()
}

type Values = BTreeMap<(u32, String, usize, usize), f32>;

/// What serve.c computes, through the Rust API.
fn serve_in_rust(f: &Fixtures) -> Values {
    let model = Model::open(&f.model).unwrap();
    let registry = Registry::new(&model);
    for (id, path) in [("user-a", &f.lora_a), ("user-b", &f.lora_b), ("memory", &f.memory)] {
        registry.insert(registry.load_path(id, path, "").unwrap()).unwrap();
    }
    let mut session = Session::new(&model, SessionOptions { max_batch: 64, threads: 2, ..Default::default() }).unwrap();
    let data = example_inputs(model.graph(), ROWS, 0);
    let inputs: Vec<Input<'_>> = data.iter().map(ExampleInput::input).collect();
    let assign = |registry: &Registry| {
        let mut rows = RowAdapters::new(registry);
        for r in 0..ROWS {
            match r % 4 {
                0 => rows.push_base(),
                1 => rows.push("user-a"),
                2 => rows.push("user-b"),
                _ => rows.push_stack(&[("user-a", 0.5), ("memory", 1.0)]),
            }
            .unwrap();
        }
        rows
    };
    let mut values = Values::new();
    for run in [1u32, 2] {
        if run == 2 {
            registry.replace(registry.load_path("user-b", &f.lora_b2, "").unwrap()).unwrap();
        }
        let rows = assign(&registry);
        let out = session.run_with(&inputs, &rows).unwrap();
        for (name, m) in out.iter() {
            for r in 0..m.rows() {
                for (c, v) in m.row(r).iter().enumerate() {
                    values.insert((run, name.to_string(), r, c), *v);
                }
            }
        }
        if run == 1 {
            for t in out.tickets() {
                t.feedback((t.row % 2) as f32).unwrap();
            }
        }
    }
    values
}

fn parse_serve(stdout: &str) -> Values {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("run "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let value: f64 = f[4].parse().unwrap();
            ((f[0].parse().unwrap(), f[1].to_string(), f[2].parse().unwrap(), f[3].parse().unwrap()), value as f32)
        })
        .collect()
}

fn serve_args(f: &Fixtures) -> Vec<&Path> {
    vec![&f.model, &f.lora_a, &f.lora_b, &f.lora_b2, &f.memory]
}

fn assert_same(what: &str, got: &Values, want: &Values) {
    assert_eq!(got.len(), want.len(), "{what}: printed {} values, the Rust API computed {}", got.len(), want.len());
    for (key, w) in want {
        let g = got.get(key).unwrap_or_else(|| panic!("{what}: no value for {key:?}"));
        assert!(g.to_bits() == w.to_bits(), "{what}: {key:?} is {g}, the Rust API computes {w}");
    }
}

#[test]
fn serve_c_and_cpp_print_what_the_rust_api_computes() {
    if compilers("serve examples").is_none() {
        return;
    }
    let f = fixtures();
    let want = serve_in_rust(f);
    assert!(want.keys().any(|k| k.0 == 2) && want.len() >= 2 * ROWS);
    // The swap and the labels change rows 2 (user-b) and 3 (the memory) between runs.
    let changed = |row: usize| want[&(1, "prob".into(), row, 0)] != want[&(2, "prob".into(), row, 0)];
    assert!(changed(2) && changed(3) && !changed(1), "the fixture should make the swap and the feedback visible");

    let c = run(&compile("serve", &["examples/serve.c"], false, true, false), &serve_args(f), &[]);
    assert!(c.contains("feedback 2"), "serve.c answers one ticket per memory row:\n{c}");
    assert_same("serve.c", &parse_serve(&c), &want);
    let cpp = run(&compile("serve_cpp", &["examples/serve.cpp"], true, true, false), &serve_args(f), &[]);
    assert_same("serve.cpp", &parse_serve(&cpp), &want);
}

#[test]
fn serve_links_against_the_static_library() {
    if compilers("static link").is_none() {
        return;
    }
    let f = fixtures();
    let out = run(&compile("serve_static", &["examples/serve.c"], false, false, true), &serve_args(f), &[]);
    assert_same("serve.c (static)", &parse_serve(&out), &serve_in_rust(f));
}

#[test]
fn every_function_refuses_null_and_invalid_arguments() {
    if compilers("C API argument checks").is_none() {
        return;
    }
    let f = fixtures();
    let (cc, _) = compilers("C API argument checks").unwrap();
    // The C steering kind from plugins/examples, built as a plugin library.
    let plugin = tmp().join("bin").join("libgraft_steering.so");
    std::fs::create_dir_all(plugin.parent().unwrap()).unwrap();
    let out = Command::new(cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-shared", "-fPIC", "-o"])
        .arg(&plugin)
        .arg(ffi_dir().join("../plugins/examples/steering-c/steering.c"))
        .output()
        .unwrap();
    assert!(out.status.success(), "steering plugin: {}", String::from_utf8_lossy(&out.stderr));
    let scratch = tmp().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let exe = compile("test_api", &["tests/c/test_api.c"], false, true, false);
    let stdout = run(&exe, &[&f.model, &f.lora_a, &f.memory, &plugin, &f.steering_src, &scratch], &[]);
    assert!(stdout.contains(" 0 failures"), "{stdout}");
    println!("{stdout}");
}

#[test]
fn four_threads_serve_while_a_fifth_swaps() {
    if compilers("threads").is_none() {
        return;
    }
    let f = fixtures();
    let exe = compile("test_threads", &["tests/c/test_threads.c"], false, true, false);
    let stdout = run(&exe, &serve_args(f), &["150"]);
    println!("{stdout}");
    assert!(stdout.contains("600 runs"), "{stdout}");
}

#[test]
fn handles_are_checked_names_outlive_the_model_and_a_shared_session_is_busy() {
    if compilers("handles").is_none() {
        return;
    }
    let f = fixtures();
    let exe = compile("test_handles", &["tests/c/test_handles.c"], false, true, false);
    let stdout = run(&exe, &[&f.model], &["300"]);
    println!("{stdout}");
    assert!(stdout.contains(" 0 failures") || stdout.contains("\n0 failures"), "{stdout}");
}

#[test]
fn the_argument_test_calls_every_function_of_the_header() {
    let header = std::fs::read_to_string(ffi_dir().join("include/graft.h")).unwrap();
    let test = std::fs::read_to_string(ffi_dir().join("tests/c/test_api.c")).unwrap();
    // Declarations start in column 0: `<return type> graft_name(`.
    let functions: Vec<&str> = header
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()) && !l.starts_with("typedef"))
        .filter_map(|l| l.split_once('(').map(|(head, _)| head))
        .filter_map(|head| head.rsplit([' ', '*']).next())
        .filter(|name| name.starts_with("graft_"))
        .collect();
    assert!(functions.len() > 30, "found only {functions:?} in graft.h");
    let missing: Vec<_> = functions.iter().filter(|f| !test.contains(&format!("{f}("))).collect();
    assert!(missing.is_empty(), "tests/c/test_api.c never calls {missing:?}");
}
