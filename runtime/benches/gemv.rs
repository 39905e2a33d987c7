//! Batch-1 GEMV on 4096 × 4096 (the design's reference size; its q8 form fits a 32 MiB
//! L3) and 8192 × 8192 (larger than any cache in every format but q4): achieved weight
//! bytes per second for graft f32/q8/q4, ONNX Runtime and tract (f32), next to this
//! machine's memory bandwidth measured in the same run (a streaming read and a memcpy of
//! 256 MiB).
//!
//! `cargo bench -p graft --bench gemv`.

#![allow(clippy::unwrap_used)]

mod peers;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use graft::builder::{Matrix, ModelBuilder, WeightFormats};
use graft::synthetic::Rng;
use graft::{Input, Model, Session, SessionOptions};
use peers::{Feed, OrtRunner, TractRunner, quick, scratch};

fn gemv(c: &mut Criterion) {
    let sizes: &[usize] = if quick() { &[256] } else { &[4096, 8192] };
    for &n in sizes {
        gemv_size(c, n);
    }
    bandwidth(c);
}

fn gemv_size(c: &mut Criterion, n: usize) {
    let dir = scratch();
    let build = || {
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
    };
    let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.1).collect();
    let feeds = vec![Feed::F32 { name: "x".into(), data: x.clone(), width: n }];
    let mut g = c.benchmark_group(format!("gemv_{n}x{n}"));
    g.warm_up_time(Duration::from_millis(if quick() { 10 } else { 1000 }));
    g.measurement_time(Duration::from_millis(if quick() { 50 } else { 3000 }));
    for fmt in ["f32", "q8", "q4"] {
        let path = dir.join(format!("gemv-{n}-{fmt}.graft"));
        if !path.exists() {
            build().write(&path, WeightFormats::from_name(fmt).unwrap()).unwrap();
        }
        let model = Model::open(&path).unwrap();
        let bytes = model.weight(0).unwrap().stored_bytes();
        let mut s = Session::new(&model, SessionOptions { max_batch: 1, ..Default::default() }).unwrap();
        let inputs = [Input::dense("x", &x, n)];
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function(format!("graft-{fmt}"), |b| {
            b.iter(|| black_box(s.run(&inputs).unwrap().get("y").map(|y| y[0])))
        });
    }
    let onnx = dir.join(format!("gemv-{n}.onnx"));
    if !onnx.exists() {
        graft::onnx::export_to_path(&Model::open(dir.join(format!("gemv-{n}-f32.graft"))).unwrap(), &onnx).unwrap();
    }
    g.throughput(Throughput::Bytes((n * n * 4) as u64));
    if let Some(mut ort) = OrtRunner::load(&onnx, 1) {
        ort.feed(&feeds);
        g.bench_function("ort-f32", |b| b.iter(|| black_box(ort.run())));
    }
    let tract = TractRunner::load(&onnx, &feeds);
    g.bench_function("tract-f32", |b| b.iter(|| black_box(tract.run())));
    g.finish();
}

/// The machine's bandwidth, same run: a streaming f32 read (sum) and a memcpy.
fn bandwidth(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_bandwidth");
    g.warm_up_time(Duration::from_millis(if quick() { 10 } else { 1000 }));
    g.measurement_time(Duration::from_millis(if quick() { 50 } else { 3000 }));
    let len = if quick() { 1 << 20 } else { 64 << 20 };
    let src: Vec<f32> = (0..len).map(|i| i as f32).collect();
    let mut dst = vec![0.0f32; len];
    g.throughput(Throughput::Bytes((len * 4) as u64));
    g.bench_function("memory-read", |b| {
        b.iter(|| {
            black_box(src.chunks_exact(16).fold([0.0f32; 16], |mut acc, c| {
                for (a, v) in acc.iter_mut().zip(c) {
                    *a += v;
                }
                acc
            }))
        })
    });
    g.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(dst[len - 1])
        })
    });
    g.finish();
}

criterion_group!(benches, gemv);
criterion_main!(benches);
