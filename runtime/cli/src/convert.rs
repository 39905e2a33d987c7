//! `graft convert`: ONNX → `.graft`, quantizing weights on the way.

use std::path::PathBuf;
use std::time::Instant;

use graft::builder::WeightFormats;
use graft::{Error, Model, Result};

/// Arguments of `graft convert`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model.
    input: PathBuf,
    /// The `.graft` file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Weight format: f32, f16, bf16, q8 (linears int8 per row, tables 8-bit rowwise) or q4.
    #[arg(long, default_value = "f32")]
    weights: String,
}

pub fn main(args: Args) -> Result<()> {
    let formats = WeightFormats::from_name(&args.weights).ok_or_else(|| Error::InvalidOption {
        detail: format!("unknown weight format `{}` (f32, f16, bf16, q8, q4)", args.weights),
    })?;
    let start = Instant::now();
    let mut builder = graft::onnx::import(&args.input)?;
    builder.producer(format!("graft {} convert {}", env!("CARGO_PKG_VERSION"), args.input.display()));
    let bytes = builder.write(&args.output, formats)?;
    let model = Model::open(&args.output)?;
    let g = model.graph();
    println!(
        "wrote {} ({} bytes, {} nodes, {} weights as linear={} table={}) in {:.2?}",
        args.output.display(),
        bytes,
        g.nodes.len(),
        g.weights.len(),
        formats.linear,
        formats.table,
        start.elapsed()
    );
    Ok(())
}
