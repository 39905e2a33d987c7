//! `graft inspect`: what a container holds, and optionally how a session plans it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use graft::graph::{InputKind, Op};
use graft::{Model, Result, Session, SessionOptions};

use crate::report::bytes;

/// Arguments of `graft inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The `.graft` file.
    model: PathBuf,
    /// Also print the execution plan of a session (fusions, elided concats, arena).
    #[arg(long)]
    plan: bool,
}

pub fn main(args: Args) -> Result<()> {
    let start = Instant::now();
    let model = Model::open(&args.model)?;
    let opened = start.elapsed();
    let g = model.graph();
    let env = model.envelope();
    println!(
        "{}: {} ({}), opened in {opened:.2?}",
        args.model.display(),
        bytes(model.bytes().len()),
        g.name.as_deref().unwrap_or("unnamed")
    );
    if let Some(p) = &g.producer {
        println!("producer: {p}");
    }

    println!("\ninputs:");
    let dims = |s: &[usize]| s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ");
    for i in &g.inputs {
        let shape = match i.kind {
            InputKind::Dense { .. } => format!("f32 [batch, {}]", dims(&i.shape)),
            InputKind::Ids { .. } => format!("i64 [batch, {}]", dims(&i.shape)),
            InputKind::BagIndices => "i64 [total ids]".into(),
            InputKind::BagOffsets => "i64 [batch]".into(),
        };
        println!("  {:<24} {:<12} {shape}", i.name, i.kind.as_str());
    }
    println!("\noutputs:");
    for o in &g.outputs {
        println!("  {:<24} = {:<24} f32 [batch, {}]", o.name, g.value_name(o.value), dims(g.value_shape(o.value)));
    }

    println!("\nnodes ({}, topological order):", g.nodes.len());
    for n in &g.nodes {
        let inputs: Vec<&str> = n.inputs.iter().map(|&v| g.value_name(v)).collect();
        let param = match &n.op {
            Op::Linear { weight, .. }
            | Op::Cross { weight, .. }
            | Op::Conv { weight, .. }
            | Op::Embedding { table: weight }
            | Op::EmbeddingBag { table: weight, .. } => {
                let w = &g.weights[*weight];
                let stored = env.tensors[w.data].len + w.scale.map_or(0, |s| env.tensors[s].len);
                format!("{} {}x{} {} ({})", w.name, w.rows, w.cols, w.format, bytes(stored))
            }
            _ => String::new(),
        };
        let source = n.source.as_deref().map(|s| format!("  <- {s}")).unwrap_or_default();
        let out = format!("{} [{}]", n.dtype.as_str(), dims(&n.shape));
        println!("  {:<24} {:<16} [{}] -> {:<12} {param}{source}", n.name, n.op.name(), inputs.join(", "), out);
    }

    let mut by_format: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for w in &g.weights {
        let stored = env.tensors[w.data].len + w.scale.map_or(0, |s| env.tensors[s].len);
        let e = by_format.entry(w.format.as_str()).or_default();
        e.0 += 1;
        e.1 += stored;
    }
    println!("\nweights by format:");
    for (f, (n, b)) in &by_format {
        println!("  {f:<10} {n:>4} weights  {}", bytes(*b));
    }
    let mut by_dtype: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for t in &env.tensors {
        let e = by_dtype.entry(t.dtype.as_str()).or_default();
        e.0 += 1;
        e.1 += t.len;
    }
    println!(
        "tensors: {} ({})",
        env.tensors.len(),
        by_dtype.iter().map(|(d, (n, b))| format!("{n} {d}, {}", bytes(*b))).collect::<Vec<_>>().join("; ")
    );
    for t in &env.tensors {
        let shape = format!("{:?}", t.shape);
        println!("  {:<40} {:<5} {shape:<16} {:>12} B @ {}", t.name, t.dtype.as_str(), t.len, t.offset);
    }
    if args.plan {
        let session = Session::new(&model, SessionOptions::default())?;
        println!("\nplan (max_batch {}):", session.options().max_batch);
        for line in session.describe() {
            println!("  {line}");
        }
    }
    Ok(())
}
