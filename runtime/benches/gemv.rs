//! Batch-1 GEMV at three sizes chosen from this machine's caches (sysfs): a weight **in
//! L2** (f32 ≤ half the L2), **in L3** (f32 ≤ half the L3) and **≥ 4× L3** (every format,
//! q4 included, up to n = 16384, where the f32 ONNX file reaches 1 GiB). Engines: graft
//! f32/q8/q4, ONNX Runtime f32 and int8 (`quantize_dynamic` of the same export), tract
//! f32. Each is reported against the streaming-read bandwidth of its own level, measured
//! in the same run: a vectorized sum over a buffer of exactly the engine's weight bytes
//! (`read-<fmt>` slots, AVX-512 or AVX2 where the CPU has them), timed in the same
//! interleaved ABBA rounds as the engines (`fair::abba`). Inputs: a ring of 8 fresh x
//! vectors.
//!
//! Results: `<criterion dir>/fair_gemv.json` (keys `gemv/<level>`, plus `_machine`), turned
//! into tables by `scripts/bench-report.py`. `cargo bench -p graft --features onnx
//! --bench gemv`; `GRAFT_BENCH_SECONDS` sets the time per level (default 4).
//!
//! More engines fit as more [`Slot`]s with an entry in `bytes` (e.g. an int8-activation
//! graft mode); a new streaming-read size is one more `read-<name>` slot.

#![allow(clippy::unwrap_used)]

mod fair;
mod peers;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fair::{Budget, Slot, abba};
use graft::builder::{Matrix, ModelBuilder, WeightFormats};
use graft::synthetic::Rng;
use graft::{Input, Model, Q8Math, Session, SessionOptions};
use peers::{NdData, NdFeed, OrtPool, TractPool, quick, scratch};
use serde_json::{Value, json};

/// Largest n: the f32 ONNX export stays at 1 GiB (protobuf files end at 2 GiB, and ONNX
/// Runtime and tract each hold a copy).
const MAX_N: usize = 16384;

/// `(level, n)` for this machine.
fn sizes() -> Vec<(&'static str, usize)> {
    if quick() {
        return vec![("L2", 64), ("L3", 128), ("DRAM", 192)];
    }
    let l2 = fair::cache_bytes(2, 1 << 20);
    let l3 = fair::cache_bytes(3, 32 << 20);
    // Largest multiple of 64 whose f32 weight fits in half the cache.
    let fit = |cache: usize| ((((cache / 2 / 4) as f64).sqrt() as usize) / 64 * 64).max(64);
    // Smallest multiple of 1024 whose q4 weight (18 bytes per 32 values) is ≥ 4× L3.
    let mut dram = 1024;
    while dram * dram / 32 * 18 < 4 * l3 && dram < MAX_N {
        dram += 1024;
    }
    vec![("L2", fit(l2)), ("L3", fit(l3)), ("DRAM", dram)]
}

/// Sum of `x`, read once front to back with the widest loads this CPU has; returns which
/// kernel ran with the sum.
fn stream_sum(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return unsafe { x86::sum_avx512(x) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { x86::sum_avx2(x) };
        }
    }
    // Portable: 16 independent lanes, which the compiler keeps in vector registers.
    let mut acc = [0.0f32; 16];
    for c in x.chunks_exact(16) {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + x.chunks_exact(16).remainder().iter().sum::<f32>()
}

/// The read kernel [`stream_sum`] uses here.
fn read_kernel() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "avx512 (8 × 16-lane accumulators)";
        }
        if std::is_x86_feature_detected!("avx2") {
            return "avx2 (8 × 8-lane accumulators)";
        }
    }
    "portable (16 lanes, auto-vectorized)"
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Eight independent 16-lane accumulators (enough to keep two loads per cycle in
    /// flight against the add latency); 512 bytes per iteration.
    #[target_feature(enable = "avx512f")]
    pub fn sum_avx512(x: &[f32]) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 8];
        let chunks = x.chunks_exact(128);
        let tail: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c` holds 128 floats, so floats 16k..16k+16 are in bounds.
                *a = _mm512_add_ps(*a, unsafe { _mm512_loadu_ps(c.as_ptr().add(16 * k)) });
            }
        }
        let mut total = _mm512_setzero_ps();
        for a in acc {
            total = _mm512_add_ps(total, a);
        }
        _mm512_reduce_add_ps(total) + tail
    }

    /// Eight independent 8-lane accumulators; 256 bytes per iteration.
    #[target_feature(enable = "avx2")]
    pub fn sum_avx2(x: &[f32]) -> f32 {
        let mut acc = [_mm256_setzero_ps(); 8];
        let chunks = x.chunks_exact(64);
        let tail: f32 = chunks.remainder().iter().sum();
        for c in chunks {
            for (k, a) in acc.iter_mut().enumerate() {
                // SAFETY: `c` holds 64 floats, so floats 8k..8k+8 are in bounds.
                *a = _mm256_add_ps(*a, unsafe { _mm256_loadu_ps(c.as_ptr().add(8 * k)) });
            }
        }
        let mut lanes = [0.0f32; 8];
        for a in acc {
            let mut v = [0.0f32; 8];
            // SAFETY: `v` holds 8 floats.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), a) };
            lanes.iter_mut().zip(v).for_each(|(l, x)| *l += x);
        }
        lanes.iter().sum::<f32>() + tail
    }
}

fn build(n: usize) -> ModelBuilder {
    let mut b = ModelBuilder::new("gemv");
    b.dense_input("x", n);
    let y = b.linear(
        "fc",
        "x",
        Matrix::generated(n, n, |r, out| {
            let mut rng = Rng::new(r as u64);
            out.iter_mut().for_each(|v| *v = rng.normal() * 0.02);
        }),
        None,
    );
    b.output("y", &y);
    b
}

fn gemv_level(level: &str, n: usize, record: &mut serde_json::Map<String, Value>) {
    let dir = scratch();
    let paths: Vec<(&str, std::path::PathBuf)> = ["f32", "q8", "q4"]
        .into_iter()
        .map(|fmt| {
            let path = dir.join(format!("gemv-{n}-{fmt}.graft"));
            if !path.exists() {
                build(n).write(&path, WeightFormats::from_name(fmt).unwrap()).unwrap();
            }
            (fmt, path)
        })
        .collect();
    let onnx = dir.join(format!("gemv-{n}.onnx"));
    if !onnx.exists() {
        graft::onnx::export_to_path(&Model::open(&paths[0].1).unwrap(), &onnx).unwrap();
    }
    let int8 = fair::ort_int8(&onnx);
    let models: Vec<(&str, Model)> = paths.iter().map(|(f, p)| (*f, Model::open(p).unwrap())).collect();

    let mut rng = Rng::new(n as u64);
    let sets: Vec<Vec<NdFeed>> = (0..8)
        .map(|_| {
            vec![NdFeed {
                name: "x".into(),
                dims: vec![1, n],
                data: NdData::F32((0..n).map(|_| rng.normal()).collect()),
            }]
        })
        .collect();
    let inputs: Vec<[Input<'_>; 1]> = sets
        .iter()
        .map(|s| match &s[0].data {
            NdData::F32(x) => [Input::dense("x", x, n)],
            NdData::I64(_) => unreachable!(),
        })
        .collect();
    let mut bytes = serde_json::Map::new();
    let mut sessions: Vec<(String, Session)> = Vec::new();
    for (fmt, m) in &models {
        bytes.insert(format!("graft-{fmt}"), json!(m.weight(0).unwrap().stored_bytes()));
        sessions.push((
            format!("graft-{fmt}"),
            Session::new(m, SessionOptions { max_batch: 1, threads: 1, ..Default::default() }).unwrap(),
        ));
    }
    // q8 in its default mode above; the exact dequantize-to-f32 path beside it.
    let q8 = &models.iter().find(|(f, _)| *f == "q8").unwrap().1;
    bytes.insert("graft-q8-exact".into(), bytes["graft-q8"].clone());
    let exact = SessionOptions { max_batch: 1, threads: 1, q8_math: Q8Math::Exact, ..Default::default() };
    sessions.push(("graft-q8-exact".into(), Session::new(q8, exact).unwrap()));
    let graft_level = sessions[0].1.kernels().level.as_str();
    let q8_math = SessionOptions::default().q8_math.as_str();
    let f32_bytes = n * n * 4;
    bytes.insert("ort-f32".into(), json!(f32_bytes));
    bytes.insert("tract-f32".into(), json!(f32_bytes));
    // quantize_dynamic: int8 codes, one scale and zero point for the tensor.
    bytes.insert("ort-int8".into(), json!(n * n + 5));

    let mut ort_f32 = OrtPool::load(&onnx, 1);
    let mut ort_int8 = int8.as_deref().and_then(|p| OrtPool::load(p, 1));
    if let Some(q) = ort_int8.as_mut() {
        q.feed_sets(&sets);
    }
    let tract = TractPool::load(&onnx, &sets);
    // Correctness on x₀ against ONNX Runtime f32 (relative to the largest output).
    let mut notes = serde_json::Map::new();
    if let Some(o) = ort_f32.as_mut() {
        o.feed_sets(&sets);
        let reference = o.outputs(0, &["y".to_string()]).unwrap().remove(0);
        let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for (name, s) in sessions.iter_mut() {
            let got = s.run(&inputs[0]).unwrap().get("y").unwrap().to_vec();
            let d = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale;
            let tol = match name.as_str() {
                "graft-f32" => 1e-4,
                "graft-q8" | "graft-q8-exact" => 0.05,
                _ => 0.5,
            };
            assert!(d <= tol, "gemv {n}: {name} differs from ONNX Runtime f32 by {d} of the largest output");
            notes.insert(format!("{name}_rel_diff"), json!(d));
        }
        if let Some(q) = ort_int8.as_mut() {
            let got = q.outputs(0, &["y".to_string()]).unwrap().remove(0);
            let d = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max) / scale;
            notes.insert("ort-int8_rel_diff".into(), json!(d));
        }
    }

    // Streaming-read buffers, one per distinct weight size.
    let read_sizes: Vec<(String, usize)> = ["f32", "q8", "q4"]
        .iter()
        .map(|f| (format!("read-{f}"), bytes[&format!("graft-{f}")].as_u64().unwrap() as usize))
        .collect();
    let buffers: Vec<Vec<f32>> =
        read_sizes.iter().map(|(_, b)| (0..b / 4).map(|i| (i % 64) as f32).collect()).collect();

    let mut slots: Vec<Slot<'_>> = Vec::new();
    for (name, s) in sessions.iter_mut() {
        let inputs = &inputs;
        slots.push(Slot::new(name.clone(), move |i| {
            let out = s.run(&inputs[i % inputs.len()]).unwrap();
            out.get_index(0).map_or(0.0, |o| o.1.row(0)[0])
        }));
    }
    if let Some(o) = ort_f32.as_mut() {
        slots.push(Slot::new("ort-f32", move |i| o.run(i)));
    }
    if let Some(q) = ort_int8.as_mut() {
        slots.push(Slot::new("ort-int8", move |i| q.run(i)));
    }
    match &tract {
        Ok(tp) => slots.push(Slot::new("tract-f32", move |i| tp.run(i))),
        Err(e) => println!("gemv {n}: tract cannot run it: {e}"),
    }
    for ((name, _), buf) in read_sizes.iter().zip(&buffers) {
        slots.push(Slot::new(name.clone(), move |_| stream_sum(black_box(buf))));
    }
    let key = format!("gemv/{level}");
    let pairs = [
        ("read-f32", "graft-f32"),
        ("read-f32", "ort-f32"),
        ("read-f32", "tract-f32"),
        ("read-q8", "graft-q8"),
        ("read-q8", "graft-q8-exact"),
        ("read-q8", "ort-int8"),
        ("read-q4", "graft-q4"),
        ("ort-f32", "graft-f32"),
        ("tract-f32", "graft-f32"),
        ("ort-int8", "graft-q8"),
        ("ort-int8", "graft-q4"),
    ];
    let timing = abba(&mut slots, Budget::for_threads(1));
    let mut r = timing.record(&key, &pairs);
    r.extend(notes);
    r.insert("n".into(), json!(n));
    r.insert("bytes".into(), Value::Object(bytes));
    r.insert(
        "read_bytes".into(),
        json!(read_sizes.iter().map(|(k, b)| (k.clone(), json!(b))).collect::<serde_json::Map<_, _>>()),
    );
    r.insert("graft_level".into(), json!(graft_level));
    r.insert("q8_math".into(), json!(q8_math));
    record.insert(key, Value::Object(r));
}

fn gemv(_c: &mut Criterion) {
    let mut record = serde_json::Map::new();
    let mut machine = fair::machine();
    machine["read_kernel"] = json!(read_kernel());
    println!("gemv: {machine}");
    for (level, n) in sizes() {
        if fair::selected(&format!("gemv/{level}")) {
            gemv_level(level, n, &mut record);
        }
    }
    if record.is_empty() {
        return;
    }
    fair::finish_machine(&mut machine, &record);
    record.insert("_machine".into(), machine);
    fair::write_record("fair_gemv", record);
}

/// Kernel levels side by side (issue 14): batch-1 GEMV straight through the linear kernel
/// of every level this CPU runs, one thread, on weights of at least 128 MiB (4× a 32 MiB
/// L3) next to [`stream_sum`] over 256 MiB in the same run; and batch 16 / 256 on a
/// 1024 × 1024 weight. No session, no threads, no model files.
/// `cargo bench -p graft --features onnx --bench gemv -- kernel_`.
fn kernel_levels(c: &mut Criterion) {
    use std::time::Duration;

    use criterion::Throughput;
    use graft::kernels::{self, WeightData, WeightMatrix};
    use graft::quant;
    use graft::view::{MatMut, MatRef};

    let levels: Vec<_> = kernels::available().into_iter().filter(|k| k.level != kernels::Level::Scalar).collect();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut g = c.benchmark_group("kernel_gemv_dram");
    g.sample_size(10);
    g.warm_up_time(Duration::from_millis(if quick() { 10 } else { 500 }));
    g.measurement_time(Duration::from_millis(if quick() { 50 } else { 2000 }));
    let big = if quick() { 512 } else { 16384 };
    // (format, rows, cols): each ≥ 128 MiB stored (q4: 144 MiB).
    for (fmt, n, k) in [("f32", big / 2, big / 2), ("f16", big / 2, big), ("q8", big, big), ("q4", big, big)] {
        let (mut f32s, mut halves, mut codes, mut scales, mut bytes) = (vec![], vec![], vec![], vec![], vec![]);
        match fmt {
            "f32" => f32s = (0..n * k).map(|_| (next() % 2001) as f32 * 1e-3 - 1.0).collect(),
            "f16" => halves = (0..n * k).map(|_| quant::f16_from_f32((next() % 2001) as f32 * 1e-3 - 1.0)).collect(),
            "q8" => {
                codes = (0..n * k).map(|_| next() as i8).collect();
                scales = vec![0.01f32; n];
            }
            _ => {
                bytes = (0..n * graft::WeightFormat::Q4.row_bytes(k)).map(|_| next() as u8).collect();
                for b in bytes.chunks_exact_mut(quant::Q4_BLOCK_BYTES) {
                    b[..2].copy_from_slice(&0x2000u16.to_le_bytes());
                }
            }
        }
        let data = match fmt {
            "f32" => WeightData::F32(&f32s),
            "f16" => WeightData::F16(&halves),
            "q8" => WeightData::Q8 { codes: &codes, scales: &scales },
            _ => WeightData::Q4(&bytes),
        };
        let w = WeightMatrix { data, rows: n, cols: k };
        let x: Vec<f32> = (0..k).map(|i| (i % 7) as f32 * 0.1).collect();
        let mut y = vec![0.0f32; n];
        g.throughput(Throughput::Bytes(w.stored_bytes() as u64));
        for kern in &levels {
            let mut scratch = vec![0.0f32; kern.linear.scratch_len(&w, 1).max(1)];
            g.bench_function(format!("{}-{fmt}", kern.level), |b| {
                b.iter(|| {
                    kern.linear.linear(MatRef::dense(&x, k), &w, None, None, MatMut::dense(&mut y, n), &mut scratch);
                    black_box(y[0])
                })
            });
        }
    }
    let src: Vec<f32> = (0..if quick() { 1 << 20 } else { 64 << 20 }).map(|i| i as f32).collect();
    g.throughput(Throughput::Bytes((src.len() * 4) as u64));
    g.bench_function("memory-read", |b| b.iter(|| black_box(stream_sum(&src))));
    g.finish();

    let mut g = c.benchmark_group("kernel_gemm");
    g.warm_up_time(Duration::from_millis(if quick() { 10 } else { 300 }));
    g.measurement_time(Duration::from_millis(if quick() { 50 } else { 1500 }));
    let (n, k) = (1024, 1024);
    let f32s: Vec<f32> = (0..n * k).map(|_| (next() % 2001) as f32 * 1e-3 - 1.0).collect();
    let codes: Vec<i8> = (0..n * k).map(|_| next() as i8).collect();
    let scales = vec![0.01f32; n];
    for (fmt, data) in [("f32", WeightData::F32(&f32s)), ("q8", WeightData::Q8 { codes: &codes, scales: &scales })] {
        let w = WeightMatrix { data, rows: n, cols: k };
        for m in [16usize, 256] {
            let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
            let mut y = vec![0.0f32; m * n];
            g.throughput(Throughput::Elements((2 * m * n * k) as u64));
            for kern in &levels {
                let mut scratch = vec![0.0f32; kern.linear.scratch_len(&w, m).max(1)];
                g.bench_function(format!("{}-{fmt}-batch{m}", kern.level), |b| {
                    b.iter(|| {
                        kern.linear.linear(
                            MatRef::dense(&x, k),
                            &w,
                            None,
                            None,
                            MatMut::dense(&mut y, n),
                            &mut scratch,
                        );
                        black_box(y[0])
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, gemv);
criterion_group!(kernel_benches, kernel_levels);
criterion_main!(benches, kernel_benches);
