//! `graft bench`: latency and throughput of one model on random inputs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use graft::synthetic::GraphInputs;
use graft::{Model, Result, Session, SessionOptions};

use crate::report::{Latencies, micros};

/// Arguments of `graft bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The `.graft` file.
    model: PathBuf,
    /// Rows per batch (at least 1).
    #[arg(long, default_value = "1", value_parser = crate::parse_positive)]
    batch: usize,
    /// Threads per batch (0: one per CPU; at most 1024).
    #[arg(long, default_value = "1", value_parser = crate::parse_threads)]
    threads: usize,
    /// Seconds to measure after a short warm-up (above 0, at most a year).
    #[arg(long, default_value = "3", value_parser = crate::parse_seconds)]
    seconds: Duration,
    /// Kernel level: auto, scalar, avx2, avx512, avx512-vnni, neon, dotprod, i8mm.
    #[arg(long, default_value = "auto")]
    kernels: String,
    /// q8 linears: `int8` (activations quantized per row, integer dot products) or
    /// `exact` (weights dequantized to f32).
    #[arg(long, default_value = "int8", value_parser = crate::parse_q8_math)]
    q8_math: graft::Q8Math,
}

pub fn main(args: Args) -> Result<()> {
    let model = Model::open(&args.model)?;
    let options = SessionOptions {
        max_batch: args.batch,
        threads: args.threads,
        kernels: crate::parse_level(&args.kernels)?,
        q8_math: args.q8_math,
        ..Default::default()
    };
    let mut session = Session::new(&model, options)?;
    let data = GraphInputs::try_new(model.graph(), args.batch, 42)?;
    let inputs = data.inputs();
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        session.run(&inputs)?;
    }
    let mut lat = Latencies::default();
    let start = Instant::now();
    let budget = args.seconds;
    while start.elapsed() < budget {
        let t = Instant::now();
        session.run(&inputs)?;
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    let runs = lat.len();
    println!(
        "{}: batch {}, {} thread(s), {} kernels: {runs} runs, mean {}, {}, {:.0} rows/s",
        args.model.display(),
        args.batch,
        session.options().threads,
        session.kernels().level,
        micros(total / runs.max(1) as u32),
        lat.summary(),
        (runs * args.batch) as f64 / total.as_secs_f64()
    );
    Ok(())
}
