//! Open + first inference against model size (10 MB, 100 MB, 1 GB of embedding tables):
//! graft maps the file and touches only the rows a request needs; ONNX Runtime and tract
//! read and prepare the whole model. Files are in the page cache (warm) for every engine.
//!
//! `cargo bench -p graft --bench open`.

#![allow(clippy::unwrap_used)]

mod peers;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use graft::builder::WeightFormats;
use graft::synthetic::{Dlrm, Requests};
use graft::{Model, Session, SessionOptions};
use peers::{Feed, OrtRunner, TractRunner, quick, scratch};

fn open(c: &mut Criterion) {
    let sizes: &[(&str, usize)] =
        if quick() { &[("1MB", 1 << 20)] } else { &[("10MB", 10 << 20), ("100MB", 100 << 20), ("1GB", 1 << 30)] };
    for &(label, bytes) in sizes {
        let spec = Dlrm { top: vec![64], bottom: vec![64], ..Dlrm::with_table_bytes(bytes) };
        let dir = scratch();
        let path = dir.join(format!("open-{label}.graft"));
        let onnx = dir.join(format!("open-{label}.onnx"));
        if !path.exists() {
            spec.build().write(&path, WeightFormats::default()).unwrap();
        }
        if !onnx.exists() {
            graft::onnx::export_to_path(&Model::open(&path).unwrap(), &onnx).unwrap();
        }
        let names: Vec<String> = (0..spec.fields).map(Dlrm::ids_name).collect();
        let batch = Requests::new(&spec, 3).batch(1);
        let feeds = Feed::from_inputs(&batch.inputs(&spec, &names));

        let mut g = c.benchmark_group(format!("open_first_inference/{label}"));
        g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(if quick() {
            1
        } else {
            5
        }));
        g.bench_function("graft", |b| {
            b.iter(|| {
                let model = Model::open(&path).unwrap();
                let mut s = Session::new(&model, SessionOptions { max_batch: 1, ..Default::default() }).unwrap();
                black_box(s.run(&batch.inputs(&spec, &names)).unwrap().get("prob").map(|p| p[0]))
            })
        });
        if OrtRunner::load(&onnx, 1).is_some() {
            g.bench_function("ort", |b| {
                b.iter(|| {
                    let mut ort = OrtRunner::load(&onnx, 1).unwrap();
                    ort.feed(&feeds);
                    black_box(ort.run())
                })
            });
        }
        g.bench_function("tract", |b| b.iter(|| black_box(TractRunner::load(&onnx, &feeds).run())));
        g.finish();
    }
}

criterion_group!(benches, open);
criterion_main!(benches);
