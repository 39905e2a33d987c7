//! CI without a GPU: every `.cu` module must compile with NVRTC for every CI arch with an
//! empty log (no warnings), and `ptxas -v` must assemble the PTX for the matching SM
//! without warnings and without register spills in the hot kernels
//! (`graft_kernels_cuda::HOT_KERNEL_PREFIXES`) and in every `tensor.cu` kernel.
//!
//! NVRTC is found through the dynamic loader (`LD_LIBRARY_PATH` must include the
//! `nvidia/cuda_nvrtc/lib` directory of the `nvidia-cuda-nvrtc-cu12` wheel) and ptxas
//! through `PTXAS` (the `nvidia-cuda-nvcc-cu12` wheel's `nvidia/cuda_nvcc/bin/ptxas`).
//! Without them the test prints `SKIP: …`, or fails when `GRAFT_CI=1`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use graft_kernels_cuda::{CI_ARCHES, Module, is_hot, nvrtc};

fn skip_or_fail(why: &str) {
    let ci = std::env::var("GRAFT_CI").is_ok_and(|v| v == "1");
    assert!(!ci, "nvrtc_and_ptxas: required when GRAFT_CI=1, but {why}");
    println!("SKIP: nvrtc_and_ptxas: {why}");
}

/// Per-kernel facts from a `ptxas -v` report.
#[derive(Debug, Default)]
struct KernelReport {
    registers: u32,
    spill_stores: u32,
    spill_loads: u32,
    stack: u32,
}

/// Parses `ptxas -v` output: "Compiling entry function 'k'", then "N bytes stack frame,
/// N bytes spill stores, N bytes spill loads" and "Used N registers".
fn parse_ptxas(report: &str) -> BTreeMap<String, KernelReport> {
    let mut out: BTreeMap<String, KernelReport> = BTreeMap::new();
    let mut current: Option<String> = None;
    let num_before = |line: &str, word: &str| -> Option<u32> {
        let i = line.find(word)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.entry(name.clone()).or_default();
            current = Some(name);
        } else if let Some(rest) = line.split("Function properties for ").nth(1) {
            current = Some(rest.trim().to_string());
        } else if let Some(k) = current.as_ref().and_then(|c| out.get_mut(c)) {
            if line.contains("spill stores") {
                k.stack = num_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_stores = num_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_loads = num_before(line, "bytes spill loads").unwrap_or(0);
            }
            if let Some(r) = num_before(line, "registers") {
                k.registers = r;
            }
        }
    }
    out
}

#[test]
fn ptxas_report_parser() {
    let sample = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'gemv_q8' for 'sm_90'\n\
ptxas info    : Function properties for gemv_q8\n\
    16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n\
ptxas info    : Used 40 registers, used 0 barriers, 416 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'act_f32' for 'sm_90'\n\
ptxas info    : Function properties for act_f32\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 12 registers, used 0 barriers, 392 bytes cmem[0]\n";
    let r = parse_ptxas(sample);
    let g = &r["gemv_q8"];
    assert_eq!((g.registers, g.stack, g.spill_stores, g.spill_loads), (40, 16, 8, 4));
    assert_eq!(r["act_f32"].registers, 12);
    assert_eq!(r["act_f32"].spill_stores, 0);
}

#[test]
fn nvrtc_and_ptxas() {
    if !graft_kernels_cuda::nvrtc_available() {
        return skip_or_fail(
            "libnvrtc was not found (put the nvidia-cuda-nvrtc-cu12 wheel's lib dir on LD_LIBRARY_PATH)",
        );
    }
    let Some(ptxas) = std::env::var_os("PTXAS").filter(|p| !p.is_empty()).map(PathBuf::from) else {
        return skip_or_fail("PTXAS is not set (the nvidia-cuda-nvcc-cu12 wheel's nvidia/cuda_nvcc/bin/ptxas)");
    };
    let version = nvrtc::version().expect("NVRTC version");
    println!("NVRTC {}.{}, ptxas {}", version.0, version.1, ptxas.display());
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("graft-kernels-cuda-ptx");
    std::fs::create_dir_all(&out_dir).expect("create the PTX directory");
    let mut failures = Vec::new();
    for arch in CI_ARCHES {
        let sm = arch.replace("compute_", "sm_");
        for module in Module::ALL {
            let t = std::time::Instant::now();
            let compiled = match nvrtc::compile(module, arch) {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("{e}"));
                    continue;
                }
            };
            if !compiled.log.is_empty() {
                failures.push(format!("NVRTC warnings in {} for {arch}:\n{}", module.file_name(), compiled.log));
            }
            let stem = module.file_name().trim_end_matches(".cu");
            let ptx_path = out_dir.join(format!("{stem}_{arch}.ptx"));
            std::fs::write(&ptx_path, &compiled.ptx).expect("write PTX");
            let nvrtc_ms = t.elapsed().as_millis();
            let run = Command::new(&ptxas)
                .arg("-v")
                .arg(format!("-arch={sm}"))
                .arg(&ptx_path)
                .arg("-o")
                .arg(out_dir.join(format!("{stem}_{sm}.cubin")))
                .output()
                .expect("run ptxas");
            let report = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
            if !run.status.success() {
                failures.push(format!("ptxas failed on {stem} for {sm}:\n{report}"));
                continue;
            }
            if report.lines().any(|l| l.to_ascii_lowercase().contains("warning")) {
                failures.push(format!("ptxas warnings on {stem} for {sm}:\n{report}"));
            }
            let kernels = parse_ptxas(&report);
            println!("{stem} {sm}: NVRTC + ptxas {nvrtc_ms} ms (NVRTC part), {} kernels", kernels.len());
            for name in module.kernels() {
                let Some(k) = kernels.get(&name) else {
                    failures.push(format!("{name} missing from ptxas' report for {stem} {sm}"));
                    continue;
                };
                let hot = is_hot(&name);
                // The tensor-op kernels are held to the same rule (a stack frame is
                // allowed: sinf / cosf keep their slow-path reduction table there).
                let no_spills = hot || module == Module::Tensor;
                println!(
                    "  {name:<22} {:>3} regs, stack {:>4} B, spills {}/{} B{}",
                    k.registers,
                    k.stack,
                    k.spill_stores,
                    k.spill_loads,
                    if hot { "  [hot]" } else { "" }
                );
                if no_spills && (k.spill_stores > 0 || k.spill_loads > 0) {
                    failures.push(format!(
                        "kernel {name} spills on {sm}: {} B stores, {} B loads",
                        k.spill_stores, k.spill_loads
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} problem(s):\n{}", failures.len(), failures.join("\n"));
}

/// The on-disk cache with the real NVRTC: a miss compiles and stores, a hit returns the
/// stored PTX, and a corrupted entry is recompiled and rewritten, never returned.
#[test]
fn ptx_cache_round_trip_with_nvrtc() {
    use graft_kernels_cuda::cache::{PtxCache, read_entry};
    if !graft_kernels_cuda::nvrtc_available() {
        return skip_or_fail(
            "libnvrtc was not found (put the nvidia-cuda-nvrtc-cu12 wheel's lib dir on LD_LIBRARY_PATH)",
        );
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ptx-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cache = PtxCache::new(&dir);
    let version = nvrtc::version().expect("NVRTC version");
    let entry = dir.join(PtxCache::key(Module::Elementwise, "compute_87", version));
    let first = cache.get_or_compile(Module::Elementwise, "compute_87").expect("compile");
    assert!(first.contains(".target sm_87"), "not sm_87 PTX");
    assert_eq!(read_entry(&entry).as_deref(), Some(first.as_str()), "the miss was not stored");
    // A hit returns the stored text: make it recognisable (and still valid) to tell.
    let marked = format!("{first}\n// cached\n");
    graft_kernels_cuda::cache::write_entry(&dir, &entry, &marked).expect("write");
    assert_eq!(cache.get_or_compile(Module::Elementwise, "compute_87").expect("hit"), marked);
    // Corrupt the entry: it is recompiled (the fresh PTX, not the marked one) and rewritten.
    let mut bytes = std::fs::read(&entry).expect("read");
    let n = bytes.len();
    bytes[n - 20] ^= 0x20;
    std::fs::write(&entry, &bytes).expect("write");
    assert_eq!(cache.get_or_compile(Module::Elementwise, "compute_87").expect("recompile"), first);
    assert_eq!(read_entry(&entry).as_deref(), Some(first.as_str()));
    let _ = std::fs::remove_dir_all(&dir);
}
