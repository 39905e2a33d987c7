//! What the adapter benchmarks share: the demo DLRM as bench models, criterion settings,
//! and interleaved ("paired") ratio measurements recorded as JSON next to criterion's
//! output for `scripts/bench-report.py`.

#![allow(dead_code)] // each bench binary uses a subset

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, SamplingMode};
use graft::adapters::RowAdapters;
use graft::builder::WeightFormats;
use graft::synthetic::Dlrm;
use graft::{Input, Session};

use crate::peers::{quick, scratch};

pub fn settings(g: &mut BenchmarkGroup<'_, WallTime>, batch: usize) {
    g.warm_up_time(Duration::from_millis(if quick() { 10 } else { 1000 }));
    g.measurement_time(Duration::from_millis(if quick() { 50 } else { 3000 }));
    if quick() {
        g.sample_size(10);
    } else if batch > 16 {
        // Milliseconds per iteration: flat sampling keeps a group within its time.
        g.sampling_mode(SamplingMode::Flat).sample_size(30);
    }
}

/// The demo DLRM (tiny tables in quick mode) as f32 and q8 graft files, cached in
/// `target/bench-models` under the names `models.rs` uses.
pub fn demo() -> (Dlrm, Vec<(&'static str, PathBuf)>) {
    let spec = if quick() { Dlrm { vocab: 1000, ..Dlrm::demo() } } else { Dlrm::demo() };
    let dir = scratch();
    let models = ["f32", "q8"]
        .iter()
        .map(|&f| {
            let p = dir.join(format!("dlrm-demo-{}-{f}.graft", spec.vocab));
            if !p.exists() {
                spec.build().write(&p, WeightFormats::from_name(f).unwrap()).unwrap();
            }
            (f, p)
        })
        .collect();
    (spec, models)
}

pub fn ids(spec: &Dlrm) -> Vec<String> {
    (0..spec.fields).map(Dlrm::ids_name).collect()
}

pub fn first(out: graft::Result<graft::Outputs<'_>>) -> Option<f32> {
    out.unwrap().get_index(0).map(|o| o.1.row(0)[0])
}

/// Ratios measured by interleaving: every round times the reference (the base run, or
/// an adapter set) and each configuration once, back to back on the same inputs, so
/// machine drift (which moves separate criterion groups by ±20 % on a shared 2-core VM)
/// hits all configurations alike. Prints and records (`<criterion>/<file>`) the median of
/// each configuration and the median of the per-round ratios to the reference.
pub struct Paired<'a> {
    pub file: &'static str,
    pub key: String,
    pub reference: (&'static str, Option<&'a RowAdapters>),
    pub sets: Vec<(String, &'a RowAdapters)>,
    pub rounds: usize,
    /// Feed every ticket a run issues back with a label (alternating 0/1), inside the
    /// timed region: the cost of an error memory's online insert.
    pub feedback: bool,
}

impl Paired<'_> {
    pub fn run(&self, s: &mut Session, inputs: &[Input<'_>]) {
        let rounds = if quick() { 3 } else { self.rounds };
        let feedback = self.feedback;
        let mut time = |rows: Option<&RowAdapters>| {
            let t = Instant::now();
            match rows {
                Some(r) => {
                    let out = s.run_with(inputs, r).unwrap();
                    if feedback {
                        for t in out.tickets() {
                            t.feedback((t.row % 2) as f32).unwrap();
                        }
                    }
                    black_box(out.get_index(0).map(|o| o.1.row(0)[0]));
                }
                None => {
                    black_box(first(s.run(inputs)));
                }
            };
            t.elapsed().as_secs_f64()
        };
        let mut reference = Vec::with_capacity(rounds);
        let mut times = vec![Vec::with_capacity(rounds); self.sets.len()];
        for _ in 0..rounds {
            reference.push(time(self.reference.1));
            for (i, (_, rows)) in self.sets.iter().enumerate() {
                times[i].push(time(Some(rows)));
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let mut record = serde_json::Map::new();
        let ref_median = median(reference.clone());
        record.insert(format!("{}_us", self.reference.0), (ref_median * 1e6).into());
        let mut line =
            format!("{} paired over {rounds} rounds: {} {:.1} µs", self.key, self.reference.0, ref_median * 1e6);
        for ((name, _), t) in self.sets.iter().zip(&times) {
            let ratio = median(t.iter().zip(&reference).map(|(a, b)| a / b).collect());
            record.insert(format!("{name}_us"), (median(t.clone()) * 1e6).into());
            record.insert(format!("{name}_pct"), ((ratio - 1.0) * 100.0).into());
            line.push_str(&format!(", {name} {:+.1}%", (ratio - 1.0) * 100.0));
        }
        println!("{line}");
        record_json(self.file, &self.key, serde_json::Value::Object(record));
    }
}

/// Where criterion writes (`CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else
/// `target/criterion`).
pub fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("criterion")
}

/// Adds `key: value` to a JSON object file in the criterion directory.
pub fn record_json(file: &str, key: &str, value: serde_json::Value) {
    let dir = criterion_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    let mut all: serde_json::Map<String, serde_json::Value> =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    all.insert(key.into(), value);
    std::fs::write(&path, serde_json::to_vec_pretty(&all).unwrap()).unwrap();
}
