//! What the fair peer tables share (`--bench models`, `--bench gemv`, `--bench zoo`):
//! the machine as detected at run time, ONNX Runtime int8 models made by
//! `quantize_dynamic`, and an interleaved ABBA timing loop whose results are recorded as
//! JSON next to criterion's output for `scripts/bench-report.py`.
//!
//! Why a custom loop and not criterion groups: criterion times one function after the
//! other, so on a shared VM whose speed drifts by 10–40 % over minutes two engines
//! measured a minute apart are not comparable, and the engine measured first always gets
//! the quieter machine. Here every round runs every engine once on the same input batch,
//! in an order that is rotated by one engine every two rounds and reversed every other
//! round (A B C, C B A, B C A, A C B, …: every pair runs in both orders equally often —
//! ABBA), and ratios are medians of per-round ratios, so drift cancels. Each turn starts
//! with one untimed run on another input, so that an engine's weights are as warm as in a
//! server running it alone (the other engines' turns evict them), while the timed runs
//! read fresh inputs.

#![allow(dead_code, clippy::unwrap_used)] // each bench binary uses a subset

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::peers::{quick, scratch};

/// One timed engine: `run(i)` runs the engine once on ring input `i` (taken modulo the
/// ring length by the engine) and returns a value of its output (kept from the optimizer).
pub struct Slot<'a> {
    pub name: String,
    pub run: Box<dyn FnMut(usize) -> f32 + 'a>,
}

impl<'a> Slot<'a> {
    pub fn new(name: impl Into<String>, run: impl FnMut(usize) -> f32 + 'a) -> Slot<'a> {
        Slot { name: name.into(), run: Box::new(run) }
    }
}

/// The benchmark-name filter given on the command line (`cargo bench --bench gemv --
/// gemv/L3`), if any: criterion's positional argument, which these custom loops honour
/// too (as a substring of their keys).
pub fn filter() -> Option<String> {
    // Criterion options that take a value.
    const VALUED: [&str; 16] = [
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--output-format",
        "--color",
        "--profile-time",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--plotting-backend",
        "--nresamples",
        "--format",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        if VALUED.contains(&args[i].as_str()) {
            i += 2;
            continue;
        }
        if !args[i].starts_with('-') {
            return Some(args[i].clone());
        }
        i += 1;
    }
    None
}

/// Whether the configuration `key` (or a group containing it, as a prefix) is selected
/// by [`filter`].
pub fn selected(key: &str) -> bool {
    filter().is_none_or(|f| key.contains(&f) || f.starts_with(key))
}

/// How long and how one configuration is timed.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Wall time of the rounds (the loop stops at the first even round after it).
    pub time: Duration,
    /// At least this many rounds, whatever the time.
    pub min_rounds: usize,
    /// Pause before each engine's turn (not timed): with several threads, the previous
    /// engine's workers spin for a while after its run returns (ONNX Runtime's and
    /// graft's pools both do) and would steal the cores of the next engine.
    pub settle: Duration,
    /// Untimed runs of ring inputs `0..prepass` by every engine before anything else, so
    /// that no timed run pays a first touch: page faults of a memory-mapped model (graft
    /// maps its file; a page is mapped on first access) or lazy allocations. A ring ≥ 2×
    /// the L3 leaves the caches cold again afterwards.
    pub prepass: usize,
}

impl Budget {
    /// The budget from the environment: `GRAFT_BENCH_SECONDS` per configuration
    /// (default 4; none in quick mode: 2 rounds), settle `GRAFT_BENCH_SETTLE_US` (default
    /// 2000) when `threads > 1`.
    pub fn for_threads(threads: usize) -> Budget {
        Budget::with_default(4.0, threads)
    }

    /// [`for_threads`](Self::for_threads) with another default time per configuration.
    pub fn with_default(seconds: f64, threads: usize) -> Budget {
        let secs = std::env::var("GRAFT_BENCH_SECONDS").ok().and_then(|s| s.parse::<f64>().ok());
        let time = if quick() { Duration::ZERO } else { Duration::from_secs_f64(secs.unwrap_or(seconds)) };
        let settle_us = std::env::var("GRAFT_BENCH_SETTLE_US").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
        Budget {
            time,
            min_rounds: if quick() { 2 } else { 20 },
            settle: if threads > 1 { Duration::from_micros(settle_us) } else { Duration::ZERO },
            prepass: 0,
        }
    }
}

/// Per-engine times of an ABBA run.
pub struct Timing {
    pub names: Vec<String>,
    /// `times[engine][round]`: seconds per run (a slot's time divided by `reps`).
    pub times: Vec<Vec<f64>>,
    /// Consecutive runs per slot (so that a slot lasts ≥ 20 µs and the clock's own cost
    /// is negligible); each run of a slot reads the next ring input.
    pub reps: usize,
}

/// The shortest timed slot: one engine's consecutive runs of a round last at least this.
const MIN_SLOT: Duration = Duration::from_micros(20);

/// Runs the ABBA rounds (see the module docs) over `slots` until `budget` is spent.
/// Round `r` gives every engine the ring inputs `r·reps .. (r+1)·reps`.
pub fn abba(slots: &mut [Slot<'_>], budget: Budget) -> Timing {
    let n = slots.len();
    for s in slots.iter_mut() {
        for i in 0..budget.prepass {
            black_box((s.run)(i));
        }
    }
    // Warm-up (3 runs each, 1 in quick mode; inputs the rounds do not start with) and
    // calibration.
    let mut fastest = f64::INFINITY;
    for s in slots.iter_mut() {
        for i in 0..if quick() { 1 } else { 3 } {
            let t = Instant::now();
            black_box((s.run)(usize::MAX / 2 + i));
            fastest = fastest.min(t.elapsed().as_secs_f64());
        }
    }
    let reps = ((MIN_SLOT.as_secs_f64() / fastest.max(1e-9)).ceil() as usize).clamp(1, 4096);
    let mut times = vec![Vec::new(); n];
    let start = Instant::now();
    let mut round = 0usize;
    let max_rounds = 1 << 20;
    while round < budget.min_rounds || !round.is_multiple_of(2) || (start.elapsed() < budget.time && round < max_rounds)
    {
        for j in 0..n {
            let pos = if round.is_multiple_of(2) { j } else { n - 1 - j };
            let k = (pos + round / 2) % n;
            if !budget.settle.is_zero() {
                std::thread::sleep(budget.settle);
            }
            let run = &mut slots[k].run;
            // The turn's untimed first run, on another input (an index the timed runs reach
            // only after about ring/2 rounds): it brings the engine's weights back into the
            // caches the other engines' turns evicted, as in a server that runs one engine
            // all the time, while the timed runs still read fresh inputs.
            black_box(run(usize::MAX / 2 - round));
            let t = Instant::now();
            for i in 0..reps {
                black_box(run(round * reps + i));
            }
            times[k].push(t.elapsed().as_secs_f64() / reps as f64);
        }
        round += 1;
    }
    Timing { names: slots.iter().map(|s| s.name.clone()).collect(), times, reps }
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[((v.len() - 1) as f64 * q).round() as usize] }
}

impl Timing {
    fn col(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Median seconds per run of `name`.
    pub fn median(&self, name: &str) -> Option<f64> {
        self.col(name).map(|k| median(&mut self.times[k].clone()))
    }

    /// Median, 25th and 75th percentile of the per-round ratios `a / b` (time of `a` over
    /// time of `b`: > 1 means `b` is faster).
    pub fn ratio(&self, a: &str, b: &str) -> Option<[f64; 3]> {
        let (a, b) = (self.col(a)?, self.col(b)?);
        let mut r: Vec<f64> = self.times[a].iter().zip(&self.times[b]).map(|(x, y)| x / y).collect();
        Some([median(&mut r), quantile(&mut r, 0.25), quantile(&mut r, 0.75)])
    }

    /// The record of one configuration: rounds, reps, `<engine>_us` medians and
    /// `<a>/<b>` ratios (median, p25, p75) for each pair of `pairs` that ran; printed as
    /// one line too.
    pub fn record(&self, key: &str, pairs: &[(&str, &str)]) -> serde_json::Map<String, Value> {
        let mut r = serde_json::Map::new();
        r.insert("rounds".into(), json!(self.times.first().map_or(0, Vec::len)));
        r.insert("reps".into(), json!(self.reps));
        let mut line = format!("{key}:");
        for name in &self.names {
            let m = self.median(name).unwrap();
            r.insert(format!("{name}_us"), json!(m * 1e6));
            line += &format!(" {name} {}", fmt_secs(m));
        }
        for (a, b) in pairs {
            if let Some([m, lo, hi]) = self.ratio(a, b) {
                r.insert(format!("{a}/{b}"), json!([m, lo, hi]));
                line += &format!(" | {a}/{b} {m:.2}×");
            }
        }
        println!("{line}");
        r
    }
}

pub fn fmt_secs(s: f64) -> String {
    if s < 1e-3 { format!("{:.1} µs", s * 1e6) } else { format!("{:.2} ms", s * 1e3) }
}

/// Where criterion writes (`CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else
/// `target/criterion`).
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("criterion")
}

/// Writes `record` as `<criterion dir>/<stem>.json` (`<stem>_quick.json` in quick mode,
/// whose timings mean nothing and must not replace a real run's).
pub fn write_record(stem: &str, record: serde_json::Map<String, Value>) {
    let dir = criterion_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let file = if quick() { format!("{stem}_quick.json") } else { format!("{stem}.json") };
    std::fs::write(dir.join(&file), serde_json::to_vec_pretty(&Value::Object(record)).unwrap()).unwrap();
    println!("wrote {}", dir.join(file).display());
}

/// Cache sizes of CPU 0 from sysfs: `(level, bytes)` of the data/unified caches.
pub fn caches() -> Vec<(u32, usize)> {
    let mut out = Vec::new();
    for i in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{i}");
        let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).ok().map(|s| s.trim().to_string());
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else { break };
        if kind == "Instruction" {
            continue;
        }
        let (num, mult) = match size.chars().last() {
            Some('K') => (&size[..size.len() - 1], 1 << 10),
            Some('M') => (&size[..size.len() - 1], 1 << 20),
            Some('G') => (&size[..size.len() - 1], 1 << 30),
            _ => (size.as_str(), 1),
        };
        if let (Ok(level), Ok(n)) = (level.parse(), num.parse::<usize>()) {
            out.push((level, n * mult));
        }
    }
    out
}

/// Bytes of cache level `level` (per core for L1/L2, as sysfs reports it), or `default`
/// where sysfs does not say.
pub fn cache_bytes(level: u32, default: usize) -> usize {
    caches().into_iter().find(|c| c.0 == level).map_or(default, |c| c.1)
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The machine as detected now: CPU model, CPUs, the SIMD flags that matter to these
/// kernels (from the kernel's `/proc/cpuinfo`, i.e. what CPUID reports on this machine),
/// caches (sysfs), ONNX Runtime's version, the date, the load average and the command
/// (`GRAFT_BENCH_COMMAND`, set by `scripts/bench-report.py --run`, else this process's
/// arguments). [`finish_machine`] adds the kernel levels graft's sessions ran.
pub fn machine() -> Value {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |key: &str| {
        info.lines().find(|l| l.starts_with(key)).and_then(|l| l.split(':').nth(1)).map(|v| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| std::env::consts::ARCH.into());
    let flags = field("flags").or_else(|| field("Features")).unwrap_or_default();
    let has: Vec<&str> = [
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_int8",
        "asimddp",
        "i8mm",
    ]
    .into_iter()
    .filter(|f| flags.split_whitespace().any(|x| x == *f))
    .collect();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let caches: Vec<Value> = caches().into_iter().map(|(l, b)| json!({ "level": l, "bytes": b })).collect();
    let ort = crate::peers::ort_version();
    let command = std::env::var("GRAFT_BENCH_COMMAND").unwrap_or_else(|_| {
        let args: Vec<String> = std::env::args().skip(1).collect();
        format!("{} {}", std::env::args().next().unwrap_or_default(), args.join(" "))
    });
    json!({
        "model": model,
        "cpus": cpus,
        "flags": has,
        "caches": caches,
        "kernels_env": std::env::var("GRAFT_KERNELS").ok(),
        "ort": ort,
        "date": utc_now(),
        "loadavg_start": loadavg(),
        "command": command,
    })
}

/// Completes a [`machine`] record at the end of a run: the load average then, and the
/// kernel levels graft ran (the `graft_level` of every configuration in `record`).
pub fn finish_machine(m: &mut Value, record: &serde_json::Map<String, Value>) {
    m["loadavg_end"] = json!(loadavg());
    let mut levels: Vec<&str> = record.values().filter_map(|r| r["graft_level"].as_str()).collect();
    levels.sort_unstable();
    levels.dedup();
    m["graft_level"] = json!(levels.join(", "));
}

/// A Python with `onnx` and `onnxruntime.quantization`: `GRAFT_ZOO_PYTHON`, else
/// `.venv/bin/python` (what CI creates), `scripts/zoo/.venv/bin/python`, `python3`.
pub fn python() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut candidates: Vec<PathBuf> = std::env::var_os("GRAFT_ZOO_PYTHON").map(PathBuf::from).into_iter().collect();
    candidates.push(root.join(".venv/bin/python"));
    candidates.push(root.join("scripts/zoo/.venv/bin/python"));
    candidates.push("python3".into());
    candidates
        .into_iter()
        .find(|p| {
            Command::new(p)
                .args(["-c", "import onnx, onnxruntime.quantization"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .ok_or_else(|| {
            "no python with `onnx` and `onnxruntime` (set GRAFT_ZOO_PYTHON; pip install onnxruntime onnx)".into()
        })
}

/// Prints a SKIP line for `what` (an assertion failure when `GRAFT_CI=1`).
pub fn skip(what: &str, why: &str) {
    assert!(std::env::var("GRAFT_CI").map_or(true, |v| v != "1"), "{what} is required when GRAFT_CI=1: {why}");
    println!("SKIP: {what}: {why}");
}

/// The ONNX Runtime int8 twin of `onnx` (`<stem>-int8.onnx` beside it): made by
/// `scripts/zoo_int8.py --onnx` (`quantize_dynamic`, QInt8 weights, after rewriting
/// `Gemm` as `MatMul` + `Add`, checked exact) where missing or older than `onnx`. `None`
/// (with a SKIP line) where no suitable Python exists or the script fails.
pub fn ort_int8(onnx: &Path) -> Option<PathBuf> {
    let dst = onnx.with_file_name(format!("{}-int8.onnx", onnx.file_stem().unwrap().to_string_lossy()));
    let fresh = |p: &Path| {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        matches!((m(p), m(onnx)), (Some(a), Some(b)) if a >= b)
    };
    if fresh(&dst) {
        return Some(dst);
    }
    let python = match python() {
        Ok(p) => p,
        Err(why) => {
            skip("ONNX Runtime int8 benchmarks", &why);
            return None;
        }
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/zoo_int8.py");
    let t = Instant::now();
    let out = Command::new(&python).arg(&script).arg("--onnx").arg(onnx).arg(&dst).output().unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        skip(
            "ONNX Runtime int8 benchmarks",
            &format!("scripts/zoo_int8.py failed: {}", err.trim_end().lines().last().unwrap_or("")),
        );
        return None;
    }
    println!("made {} in {:.1} s", dst.display(), t.elapsed().as_secs_f64());
    Some(dst)
}

/// A file in the bench-model directory.
pub fn model_path(name: &str) -> PathBuf {
    scratch().join(name)
}
