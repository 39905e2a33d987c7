//! Whole-model latency: the demo-size DLRM and the fixture DLRM at batch 1, 16 and 256,
//! graft (f32, q8, q4) against ONNX Runtime and tract on the same ONNX model.
//!
//! `cargo bench -p graft --bench models`; `BENCHMARKS.md` summarizes the ratios.

#![allow(clippy::unwrap_used)]

mod peers;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use graft::builder::{ModelBuilder, WeightFormats};
use graft::synthetic::{Dlrm, Requests};
use graft::{Input, Model, Session, SessionOptions};
use peers::{Feed, OrtRunner, TractRunner, quick, scratch};

const FORMATS: [&str; 3] = ["f32", "q8", "q4"];

/// Writes `builder` as `<stem>-<fmt>.graft` for each format and `<stem>.onnx` (f32), once.
fn materialize(stem: &str, builder: impl Fn() -> ModelBuilder) -> (Vec<(&'static str, PathBuf)>, PathBuf) {
    let dir = scratch();
    let graft_paths: Vec<(&str, PathBuf)> = FORMATS
        .iter()
        .map(|&f| {
            let p = dir.join(format!("{stem}-{f}.graft"));
            if !p.exists() {
                builder().write(&p, WeightFormats::from_name(f).unwrap()).unwrap();
            }
            (f, p)
        })
        .collect();
    let onnx = dir.join(format!("{stem}.onnx"));
    if !onnx.exists() {
        let model = Model::open(&graft_paths[0].1).unwrap();
        graft::onnx::export_to_path(&model, &onnx).unwrap();
    }
    (graft_paths, onnx)
}

fn compare(
    c: &mut Criterion,
    group: &str,
    models: &[(&str, PathBuf)],
    onnx: &Path,
    feeds_for: impl Fn(usize) -> Vec<Feed>,
) {
    for batch in [1usize, 16, 256] {
        let feeds = feeds_for(batch);
        let mut g = c.benchmark_group(format!("{group}/batch{batch}"));
        g.throughput(Throughput::Elements(batch as u64));
        g.warm_up_time(Duration::from_millis(if quick() { 10 } else { 1000 }));
        g.measurement_time(Duration::from_millis(if quick() { 50 } else { 3000 }));
        if quick() {
            g.sample_size(10);
        }
        let inputs: Vec<Input<'_>> = feeds
            .iter()
            .map(|f| match f {
                Feed::F32 { name, data, width } => Input::dense(name, data, *width),
                Feed::I64 { name, data, width } => Input::ids(name, data, *width),
            })
            .collect();
        let threads: &[usize] = if batch == 256 { &[1, 2] } else { &[1] };
        for (fmt, path) in models {
            let model = Model::open(path).unwrap();
            for &t in threads {
                let mut s = Session::new(&model, SessionOptions { max_batch: batch, threads: t, ..Default::default() })
                    .unwrap();
                g.bench_function(format!("graft-{fmt}/t{t}"), |b| {
                    b.iter(|| black_box(s.run(&inputs).unwrap().get_index(0).map(|o| o.1.row(0)[0])))
                });
            }
        }
        for &t in threads {
            if let Some(mut ort) = OrtRunner::load(onnx, t) {
                ort.feed(&feeds);
                g.bench_function(format!("ort-f32/t{t}"), |b| b.iter(|| black_box(ort.run())));
            }
        }
        let tract = TractRunner::load(onnx, &feeds);
        g.bench_function("tract-f32/t1", |b| b.iter(|| black_box(tract.run())));
        g.finish();
    }
}

fn demo_dlrm(c: &mut Criterion) {
    let spec = if quick() { Dlrm { vocab: 1000, ..Dlrm::demo() } } else { Dlrm::demo() };
    let stem = format!("dlrm-demo-{}", spec.vocab);
    let (models, onnx) = materialize(&stem, || spec.build());
    let model = Model::open(&models[0].1).unwrap();
    compare(c, "dlrm_demo", &models, &onnx, |batch| {
        let _ = &model;
        Feed::from_inputs(
            &Requests::new(&spec, 7)
                .batch(batch)
                .inputs(&spec, &(0..spec.fields).map(Dlrm::ids_name).collect::<Vec<_>>()),
        )
    });
}

fn fixture_dlrm(c: &mut Criterion) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/dlrm_small");
    let onnx = fixtures.join("model.onnx");
    let (models, _) = materialize("dlrm-fixture", || graft::onnx::import(&onnx).unwrap());
    let read = |name: &str| std::fs::read(fixtures.join(name)).unwrap();
    let dense: Vec<f32> =
        read("dense.f32").chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    let ids: Vec<Vec<i64>> = (0..4)
        .map(|k| {
            read(&format!("ids_f{k}_padded.i64"))
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
        .collect();
    compare(c, "dlrm_fixture", &models, &onnx, |batch| {
        // The fixture has 64 rows; larger batches repeat them.
        let rows = |v: &[f32], w: usize| {
            (0..batch).flat_map(|r| v[(r % 64) * w..(r % 64 + 1) * w].to_vec()).collect::<Vec<_>>()
        };
        let rows_i = |v: &[i64], w: usize| {
            (0..batch).flat_map(|r| v[(r % 64) * w..(r % 64 + 1) * w].to_vec()).collect::<Vec<_>>()
        };
        let mut feeds = vec![Feed::F32 { name: "dense".into(), data: rows(&dense, 8), width: 8 }];
        for (k, v) in ids.iter().enumerate() {
            feeds.push(Feed::I64 { name: format!("ids_f{k}"), data: rows_i(v, 3), width: 3 });
        }
        feeds
    });
}

criterion_group!(benches, fixture_dlrm, demo_dlrm);
criterion_main!(benches);
