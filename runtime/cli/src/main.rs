//! `graft`: convert ONNX recommender models, inspect containers, run them on `.npy`
//! inputs, benchmark them, load adapter-kind plugins, and run the serving demo.

mod adapters;
mod bench;
mod convert;
mod demo;
mod inspect;
mod plugins;
mod report;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The graft command line.
#[derive(Debug, Parser)]
#[command(name = "graft", version, about = "Adapter runtime for edge recommender models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert an ONNX model to a `.graft` container.
    Convert(convert::Args),
    /// List a container's inputs, outputs, nodes and tensors.
    Inspect(inspect::Args),
    /// Run a model on `.npy` inputs and write `.npy` outputs.
    Run(run::Args),
    /// Measure latency and throughput of a model on synthetic inputs.
    Bench(bench::Args),
    /// Inspect adapters.
    Adapter(adapters::Args),
    /// Load and list adapter-kind plugins (Rust or C shared libraries).
    Plugin(plugins::Args),
    /// Build a DLRM-size model, open it and serve request batches from several threads.
    Demo(demo::Args),
}

fn main() -> ExitCode {
    restore_sigpipe();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert(a) => convert::main(a),
        Command::Inspect(a) => inspect::main(a),
        Command::Run(a) => run::main(a),
        Command::Bench(a) => bench::main(a),
        Command::Demo(a) => demo::main(a),
        Command::Adapter(a) => adapters::main(a),
        Command::Plugin(a) => plugins::main(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Makes `graft inspect m.graft | head` end quietly when the reader goes away, as C
/// tools do, instead of panicking on the failed write (Rust ignores SIGPIPE by default).
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Parses a `--device` value: `cpu`, `cuda` or `cuda:N` (clap reports a bad one with
/// the usage line).
fn parse_device(s: &str) -> Result<graft::Device, String> {
    graft::Device::parse(s).map_err(|e| match e {
        graft::Error::InvalidOption { detail } => detail,
        other => other.to_string(),
    })
}

/// Parses a count that must be at least 1 (`--batch`): clap reports 0, negatives and
/// non-numbers with the usage line instead of the command quietly running something else.
fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{s}` is not a whole number ({e})")),
    }
}

/// Parses a `--threads` value: 0 (one per CPU) up to [`graft::MAX_THREADS`].
fn parse_threads(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n <= graft::MAX_THREADS => Ok(n),
        Ok(n) => Err(format!("{n} threads is more than graft runs ({} at most; 0 is one per CPU)", graft::MAX_THREADS)),
        Err(e) => Err(format!("`{s}` is not a whole number ({e})")),
    }
}

/// Parses a duration in seconds: finite, positive, and at most a year (NaN, ±Inf, 0,
/// negatives and `1e300` are refused rather than turned into a panic or a no-op).
fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    const YEAR: f64 = 365.0 * 86_400.0;
    let v: f64 = s.trim().parse().map_err(|e| format!("`{s}` is not a number ({e})"))?;
    if !v.is_finite() || v <= 0.0 || v > YEAR {
        return Err(format!("`{s}`: expected a number of seconds above 0 and at most {YEAR}"));
    }
    std::time::Duration::try_from_secs_f64(v).map_err(|e| format!("`{s}`: {e}"))
}

/// Parses a `--kernels` value: `auto` (honour `GRAFT_KERNELS`, else detect) or a level.
fn parse_level(s: &str) -> graft::Result<Option<graft::kernels::Level>> {
    match s {
        "auto" => Ok(None),
        other => graft::kernels::Level::parse(other).map(Some).ok_or_else(|| graft::Error::KernelUnavailable {
            level: other.into(),
            detail: "expected auto, scalar, avx2, avx512, avx512-vnni, neon, dotprod or i8mm".into(),
        }),
    }
}

/// Parses a `--q8-math` value: `int8` or `exact` (clap reports a bad one with the usage
/// line).
fn parse_q8_math(s: &str) -> Result<graft::Q8Math, String> {
    graft::Q8Math::parse(s).ok_or_else(|| format!("`{s}`: expected int8 or exact"))
}
