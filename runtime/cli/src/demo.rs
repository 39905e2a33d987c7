//! `graft demo`: the main job on built-in defaults.
//!
//! 1. builds a DLRM-size CTR model from a fixed seed (26 sparse fields of 100 000 × 64
//!    embedding rows, 13 dense features, bottom MLP 512-256-64, top MLP 1728-512-256-1)
//!    and writes it as a `.graft` file, quantizing row by row as it streams;
//! 2. opens it (mmap: nothing is read) and times the open and the first inference;
//! 3. measures batch-1 latency on one thread;
//! 4. serves a stream of request batches from several threads, one session each, all
//!    sharing the one mapping, and reports throughput, latency percentiles and memory;
//! 5. writes one PEFT LoRA adapter per user (rank 8 on every linear), loads them through
//!    the registry, measures the LoRA overhead at batch 1, then serves the same stream
//!    with every row scored by its own user's adapter (mixed batches) while another
//!    thread hot-swaps one user's adapter between two versions, and reports throughput
//!    against the base run and the swap (publish) latency;
//! 6. loads a FedIns SSF pool and an AdaptDHM routing adapter and measures their batch-1
//!    overhead, then serves a drifting synthetic stream through a ReLoop2 error memory,
//!    feeding labels back, and shows its logloss against the base model's per window.
//!
//! The serving loop is [`serve`]: a per-request closure over a session and a batch, so
//! later stages (per-row adapters, feedback) plug in without changing the harness.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use graft::builder::WeightFormats;
use graft::synthetic::{Batch, Dlrm, Requests};
use graft::{Error, Model, Result, Session, SessionOptions};

use crate::report::{Latencies, bytes, micros, rss_line};

mod adapters;
mod kinds;

use adapters::AdapterStage;

/// Arguments of `graft demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Weight format of the generated model: f32, f16, bf16, q8, q4.
    #[arg(long, default_value = "q8")]
    weights: String,
    /// Sparse fields (one embedding table each).
    #[arg(long, default_value_t = 26)]
    fields: usize,
    /// Rows per embedding table.
    #[arg(long, default_value_t = 100_000)]
    vocab: usize,
    /// Embedding dimension.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Rows per request batch (candidates scored per request).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Request batches to serve.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Serving threads (default: one per CPU).
    #[arg(long)]
    serving_threads: Option<usize>,
    /// Where to write the model (default: a `graft-demo` folder in the temp dir).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Keep the model file afterwards.
    #[arg(long)]
    keep: bool,
    /// Where sessions run: cpu, cuda or cuda:N (CUDA needs a build with the `cuda`
    /// feature and a machine with the CUDA driver).
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: graft::Device,
    /// Kernel level: auto, scalar, avx2, neon, dotprod, i8mm.
    #[arg(long, default_value = "auto")]
    kernels: String,
    /// Per-user LoRA adapters served in mixed batches (0 skips the adapter stage).
    #[arg(long, default_value_t = 8)]
    users: usize,
    /// Rank of the users' adapters.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Skip stage 6 (SSF pool, routing, error memory on a drifting stream).
    #[arg(long)]
    skip_kinds: bool,
    /// Rows of the drifting stream served through the error memory in stage 6.
    #[arg(long, default_value_t = 16384)]
    stream_rows: usize,
}

pub fn main(args: Args) -> Result<()> {
    let formats = WeightFormats::from_name(&args.weights)
        .ok_or_else(|| Error::InvalidOption { detail: format!("unknown weight format `{}`", args.weights) })?;
    if args.fields == 0 || args.vocab == 0 || args.dim == 0 || args.batch == 0 {
        return Err(Error::InvalidOption { detail: "fields, vocab, dim and batch must be positive".into() });
    }
    // Fail before building a model when the device cannot be used.
    args.device.check()?;
    let spec = Dlrm { fields: args.fields, vocab: args.vocab, dim: args.dim, ..Dlrm::demo() };
    let dir = args.model_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("graft-demo"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io { path: dir.display().to_string(), source: e })?;
    let path = dir.join(format!("dlrm-{}x{}x{}-{}.graft", spec.fields, spec.vocab, spec.dim, args.weights));

    println!("graft demo — DLRM-style CTR model, {} weights", args.weights);
    println!(
        "  {} dense → bottom MLP {:?}; {} fields × {} rows × {} dims (bags of {} ids); top MLP {}-{}-1",
        spec.dense,
        spec.bottom,
        spec.fields,
        spec.vocab,
        spec.dim,
        spec.bag,
        spec.interaction_width(),
        spec.top.iter().map(ToString::to_string).collect::<Vec<_>>().join("-")
    );

    // 1. Build and write.
    let t = Instant::now();
    let size = spec.build().write(&path, formats)?;
    println!("build   {} in {:.2?} → {}", bytes(size as usize), t.elapsed(), path.display());

    // 2. Open (mmap + validation) and first inference.
    let mut open_times = Vec::new();
    let mut model = None;
    for _ in 0..5 {
        let t = Instant::now();
        model = Some(Model::open(&path)?);
        open_times.push(t.elapsed());
    }
    let model = model.ok_or_else(|| Error::InvalidOption { detail: "model did not open".into() })?;
    let open = open_times.iter().min().copied().unwrap_or_default();
    let table_bytes: usize = model
        .graph()
        .weights
        .iter()
        .filter(|w| w.name.starts_with("emb_"))
        .map(|w| model.envelope().tensors[w.data].len)
        .sum();
    println!("open    {} (mmap + header + graph validation; {} of tables not read)", micros(open), bytes(table_bytes));
    println!("        rss after open {}", rss_line());
    let options = SessionOptions {
        max_batch: args.batch.max(1),
        threads: 1,
        kernels: crate::parse_level(&args.kernels)?,
        device: args.device,
        ..Default::default()
    };
    let t = Instant::now();
    let mut session = Session::new(&model, options)?;
    let plan_time = t.elapsed();
    let mut requests = Requests::new(&spec, 1);
    let names: Vec<String> = (0..spec.fields).map(Dlrm::ids_name).collect();
    let first = requests.batch(1);
    let t = Instant::now();
    session.run(&first.inputs(&spec, &names))?;
    println!(
        "session {} to plan ({} kernels, {} activation memory); first inference {}",
        micros(plan_time),
        session.kernels().level,
        bytes(session.memory_bytes()),
        micros(t.elapsed())
    );

    // 3. Batch-1 latency.
    let singles: Vec<Batch> = (0..256).map(|_| requests.batch(1)).collect();
    let mut lat = Latencies::default();
    for i in 0..2000 {
        let b = &singles[i % singles.len()];
        let t = Instant::now();
        session.run(&b.inputs(&spec, &names))?;
        lat.push(t.elapsed());
    }
    println!("batch 1 latency (1 thread): {}", lat.summary());

    // 4. Serving.
    let workers =
        args.serving_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let stats = serve(&model, &spec, workers, args.requests, args.batch, options, |session, batch| {
        session.run(&batch.inputs(&spec, &names)).map(|_| ())
    })?;
    let mut lat = stats.latencies;
    let rows = args.requests * args.batch;
    println!(
        "serve   {} requests × {} rows on {workers} thread(s) in {:.2?}: {:.0} rows/s, {:.0} requests/s",
        args.requests,
        args.batch,
        stats.elapsed,
        rows as f64 / stats.elapsed.as_secs_f64(),
        args.requests as f64 / stats.elapsed.as_secs_f64()
    );
    println!("        request latency {}", lat.summary());
    println!(
        "memory  rss {} after serving, for a {} model file (table pages fault in as ids touch them)",
        rss_line(),
        bytes(size as usize)
    );
    let stage = AdapterStage {
        model: &model,
        spec: &spec,
        dir: &dir,
        args: &args,
        options,
        workers,
        names: &names,
        singles: &singles,
        base_rate: rows as f64 / stats.elapsed.as_secs_f64(),
    };
    if args.users > 0 {
        adapters::stage(&stage)?;
    }
    if !args.skip_kinds {
        if args.device == graft::Device::Cpu {
            kinds::stage(&stage)?;
        } else {
            // FedIns pools, routing and the error memory keep per-row state on the host;
            // GPU sessions refuse them (Error::AdapterNotOnDevice) rather than fall back.
            println!(
                "kinds   skipped on {}: ssf-pool pools, routing and error-memory run on the CPU only",
                args.device
            );
        }
    }
    drop(session);
    drop(model);
    if !args.keep {
        let _ = std::fs::remove_file(&path);
    }
    Ok(())
}

/// What [`serve`] measured.
pub struct ServeStats {
    pub elapsed: Duration,
    pub latencies: Latencies,
}

/// Serves `requests` batches of `rows` rows from `workers` threads, each with its own
/// session on `model`; `handle` runs one request. Inputs are generated before timing.
pub fn serve(
    model: &Model,
    spec: &Dlrm,
    workers: usize,
    requests: usize,
    rows: usize,
    options: SessionOptions,
    handle: impl Fn(&mut Session, &Batch) -> Result<()> + Sync,
) -> Result<ServeStats> {
    let next = AtomicUsize::new(0);
    let start_line = std::sync::Barrier::new(workers + 1);
    let mut started = Instant::now();
    let per_worker: Vec<Result<Latencies>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let (next, start_line, handle) = (&next, &start_line, &handle);
                s.spawn(move || -> Result<Latencies> {
                    let setup = (|| {
                        let session = Session::new(model, options)?;
                        let mut stream = Requests::new(spec, 100 + w as u64);
                        let batches: Vec<Batch> = (0..64).map(|_| stream.batch(rows)).collect();
                        Ok::<_, Error>((session, batches))
                    })();
                    start_line.wait();
                    let (mut session, batches) = setup?;
                    let mut lat = Latencies::default();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= requests {
                            return Ok(lat);
                        }
                        let t = Instant::now();
                        handle(&mut session, &batches[i % batches.len()])?;
                        lat.push(t.elapsed());
                    }
                })
            })
            .collect();
        start_line.wait();
        started = Instant::now();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| Err(Error::InvalidOption { detail: "a serving thread panicked".into() }))
            })
            .collect()
    });
    let elapsed = started.elapsed();
    let mut latencies = Latencies::default();
    for l in per_worker {
        latencies.extend(l?);
    }
    Ok(ServeStats { elapsed, latencies })
}
