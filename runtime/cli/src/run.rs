//! `graft run`: `.npy` inputs in, one `.npy` per graph output out.
//!
//! Inputs are matched to graph inputs by name (`--input dense=dense.npy`, or every
//! `<name>.npy` of `--inputs-dir DIR`). With
//! `--batch N` the rows are fed in batches of N (flat bag inputs are re-based per batch),
//! and the outputs are concatenated back in order. `--adapter ID=PATH` loads adapters (PEFT
//! LoRA directories, graft adapter files; `ID:KIND=PATH` for a plugin kind's own format),
//! `--plugin PATH` / `$GRAFT_PLUGIN_DIR` add kinds from plugins, and `--row-adapters
//! rows.json` picks each row's adapter set.

use std::path::PathBuf;
use std::time::Instant;

use graft::graph::InputKind;
use graft::npy::{self, NpyArray, NpyData};
use graft::{Error, Input, Model, NanPolicy, Result, Session, SessionOptions};

use crate::report::Latencies;

/// Arguments of `graft run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The `.graft` file.
    model: PathBuf,
    /// A graph input as `name=file.npy` (f32 for dense inputs, int64 for ids); repeat per input.
    #[arg(long = "input", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// A directory holding `<input-name>.npy` for every graph input not given by `--input`.
    #[arg(long, value_name = "DIR")]
    inputs_dir: Option<PathBuf>,
    /// Directory for `<output-name>.npy` files.
    #[arg(long, default_value = "out")]
    output_dir: PathBuf,
    /// Threads per batch (0: one per CPU; at most 1024).
    #[arg(long, default_value = "1", value_parser = crate::parse_threads)]
    threads: usize,
    /// Rows per batch, at least 1 (default: all rows in one batch).
    #[arg(long, value_parser = crate::parse_positive)]
    batch: Option<usize>,
    /// Where the graph runs: cpu, cuda or cuda:N (CUDA needs a build with the `cuda`
    /// feature and a machine with the CUDA driver).
    #[arg(long, default_value = "cpu", value_parser = crate::parse_device)]
    device: graft::Device,
    /// Kernel level: auto, scalar, avx2, avx512, avx512-vnni, neon, dotprod, i8mm.
    #[arg(long, default_value = "auto")]
    kernels: String,
    /// q8 linears: `int8` (activations quantized per row, integer dot products) or
    /// `exact` (weights dequantized to f32).
    #[arg(long, default_value = "int8", value_parser = crate::parse_q8_math)]
    q8_math: graft::Q8Math,
    /// Run even if dense inputs hold NaN or ±Inf, and write outputs even where a row is
    /// not finite (by default such a row is an error naming the row, output and column).
    #[arg(long)]
    allow_non_finite: bool,
    #[command(flatten)]
    adapters: crate::adapters::AdapterArgs,
}

struct Loaded {
    name: String,
    kind: InputKind,
    array: NpyArray,
}

pub fn main(args: Args) -> Result<()> {
    let model = Model::open(&args.model)?;
    let g = model.graph();
    // Outputs of an earlier run in the same directory must never pass for this run's:
    // they go before anything is computed, so a failure below leaves none behind.
    for o in &g.outputs {
        let path = output_path(&args.output_dir, &o.name)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::Io { path: path.display().to_string(), source: e });
            }
            _ => {}
        }
    }
    let mut loaded: Vec<Loaded> = Vec::new();
    for spec in &args.inputs {
        let (name, file) = spec
            .split_once('=')
            .ok_or_else(|| Error::InvalidOption { detail: format!("--input `{spec}` is not NAME=FILE") })?;
        let k = g.input(name).ok_or_else(|| Error::UnknownInput {
            input: name.into(),
            known: g.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", "),
        })?;
        loaded.push(Loaded { name: name.into(), kind: g.inputs[k].kind, array: npy::read(file.as_ref())? });
    }
    if let Some(dir) = &args.inputs_dir {
        for def in &g.inputs {
            if loaded.iter().any(|l| l.name == def.name) {
                continue;
            }
            let file = dir.join(format!("{}.npy", def.name));
            if !file.is_file() {
                return Err(Error::MissingInput { input: format!("{} (no {} either)", def.name, file.display()) });
            }
            loaded.push(Loaded { name: def.name.clone(), kind: def.kind, array: npy::read(&file)? });
        }
    }
    let rows = total_rows(&loaded)?;
    if rows == 0 {
        let first = loaded.iter().find(|l| l.kind != InputKind::BagIndices).map_or("", |l| l.name.as_str());
        return Err(Error::InvalidOption {
            detail: format!("input `{first}` has 0 rows: there is nothing to run (no outputs were written)"),
        });
    }
    let batch = args.batch.unwrap_or(rows);
    let options = SessionOptions {
        max_batch: batch.min(rows.max(1)),
        threads: args.threads,
        kernels: crate::parse_level(&args.kernels)?,
        nan_policy: if args.allow_non_finite { NanPolicy::Propagate } else { NanPolicy::Reject },
        device: args.device,
        q8_math: args.q8_math,
    };
    let plan = args.adapters.plan(&model, rows)?;
    let mut session = Session::new(&model, options)?;
    let mut outputs: Vec<(String, usize, Vec<f32>)> = Vec::new();
    let mut latencies = Latencies::default();
    let mut faults: Vec<Error> = Vec::new();
    let start = Instant::now();
    let mut row = 0;
    while row < rows {
        let end = (row + batch).min(rows);
        let slices = slice_batch(&loaded, row, end)?;
        let inputs: Vec<Input<'_>> = slices.iter().map(Slice::input).collect::<Result<_>>()?;
        let row_adapters = plan.rows(row, end)?;
        let t = Instant::now();
        let out = match &row_adapters {
            Some(r) => session.run_with(&inputs, r)?,
            None => session.run(&inputs)?,
        };
        latencies.push(t.elapsed());
        for f in out.row_faults() {
            if let Some(Error::NonFiniteOutput { output, col, value, .. }) = out.row_error(f.row) {
                faults.push(Error::NonFiniteOutput { output, row: row + f.row, col, value });
            }
        }
        if outputs.is_empty() {
            outputs = out.iter().map(|(n, v)| (n.to_string(), v.cols(), Vec::new())).collect();
        }
        for ((_, _, acc), (_, view)) in outputs.iter_mut().zip(out.iter()) {
            for r in 0..view.rows() {
                acc.extend_from_slice(view.row(r));
            }
        }
        row = end;
    }
    let elapsed = start.elapsed();
    if !faults.is_empty() {
        for f in faults.iter().skip(1).take(9) {
            eprintln!("row error: {f}");
        }
        eprintln!(
            "{} of {rows} rows produced NaN or ±Inf from finite inputs; no outputs were written \
             (--allow-non-finite writes them as computed)",
            faults.len()
        );
        return Err(faults.swap_remove(0));
    }
    std::fs::create_dir_all(&args.output_dir)
        .map_err(|e| Error::Io { path: args.output_dir.display().to_string(), source: e })?;
    println!(
        "{}: {rows} rows in {} batch(es) of ≤{batch}, {:.2?} total, {} kernels, {} thread(s)",
        args.model.display(),
        latencies.len(),
        elapsed,
        session.kernels().level,
        session.options().threads
    );
    if let Some(line) = plan.describe() {
        println!("{line}");
    }
    println!("batch latency: {}", latencies.summary());
    for (name, width, data) in &outputs {
        let path = output_path(&args.output_dir, name)?;
        npy::write_f32(&path, &[rows, *width], data)?;
        let mean = data.iter().map(|&v| v as f64).sum::<f64>() / data.len().max(1) as f64;
        let head: Vec<String> = data.iter().take(4).map(|v| format!("{v:.6}")).collect();
        println!("  {name:<16} [{rows}, {width}]  mean {mean:.6}  first [{}]  -> {}", head.join(", "), path.display());
    }
    Ok(())
}

/// `DIR/<output>.npy`, for an output name that is one plain file name: a model's output
/// called `../x` must not make `run` write (or remove) a file outside `--output-dir`.
fn output_path(dir: &std::path::Path, name: &str) -> Result<PathBuf> {
    let file = format!("{name}.npy");
    let mut parts = std::path::Path::new(&file).components();
    match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(_)), None) => Ok(dir.join(file)),
        _ => Err(Error::InvalidOption {
            detail: format!("output `{name}` is not a plain file name; graft run writes `<output>.npy` files"),
        }),
    }
}

/// The batch size implied by the inputs (dense/ids rows, or offsets length).
fn total_rows(loaded: &[Loaded]) -> Result<usize> {
    let mut rows = None;
    for l in loaded {
        let n = match l.kind {
            InputKind::BagIndices => continue,
            InputKind::BagOffsets => l.array.shape.first().copied().unwrap_or(0),
            InputKind::Dense { .. } | InputKind::Ids { .. } => l.array.shape.first().copied().unwrap_or(0),
        };
        match rows {
            None => rows = Some(n),
            Some(r) if r == n => {}
            Some(r) => return Err(Error::BatchMismatch { input: l.name.clone(), rows: n, expected: r }),
        }
    }
    rows.ok_or(Error::EmptyBatch)
}

/// One input's rows `start..end`.
struct Slice<'a> {
    name: &'a str,
    shape: Vec<usize>,
    data: SliceData<'a>,
}

enum SliceData<'a> {
    F32(&'a [f32]),
    I64(std::borrow::Cow<'a, [i64]>),
}

impl Slice<'_> {
    fn input(&self) -> Result<Input<'_>> {
        match &self.data {
            SliceData::F32(d) => Input::f32(self.name, d, &self.shape),
            SliceData::I64(d) => Input::i64(self.name, d, &self.shape),
        }
    }
}

fn slice_batch(loaded: &[Loaded], start: usize, end: usize) -> Result<Vec<Slice<'_>>> {
    let offsets_of = |indices: &str| -> Option<&Loaded> {
        // A bag_indices input pairs with the offsets input whose name matches best; in
        // graft graphs offsets follow their indices, so take the next offsets input.
        let pos = loaded.iter().position(|l| l.name == indices)?;
        loaded[pos + 1..].iter().chain(loaded[..pos].iter()).find(|l| l.kind == InputKind::BagOffsets)
    };
    let mut out = Vec::with_capacity(loaded.len());
    for l in loaded {
        let a = &l.array;
        let per_row: usize = a.shape.iter().skip(1).product();
        let row_shape = |n: usize| -> Vec<usize> {
            let mut s = a.shape.clone();
            if let Some(first) = s.first_mut() {
                *first = n;
            }
            s
        };
        let data = match (&a.data, l.kind) {
            (NpyData::F32(d), _) => SliceData::F32(d.get(start * per_row..end * per_row).unwrap_or(&[])),
            (NpyData::I64(d), InputKind::BagOffsets) => {
                let base = d.get(start).copied().unwrap_or(0);
                SliceData::I64(d.get(start..end).unwrap_or(&[]).iter().map(|&o| o - base).collect())
            }
            (NpyData::I64(d), InputKind::BagIndices) => {
                let off = offsets_of(&l.name).ok_or_else(|| Error::InvalidOption {
                    detail: format!("bag input `{}` needs its offsets input too", l.name),
                })?;
                let NpyData::I64(offsets) = &off.array.data else {
                    return Err(Error::InputDtype { input: off.name.clone(), expected: "i64", actual: "f32" });
                };
                let clamp = |o: Option<&i64>| o.map_or(d.len(), |&o| (o.max(0) as usize).min(d.len()));
                let (from, to) =
                    (clamp(offsets.get(start)), if end < offsets.len() { clamp(offsets.get(end)) } else { d.len() });
                let range = d.get(from..to.max(from)).unwrap_or(&[]);
                out.push(Slice { name: &l.name, shape: vec![range.len()], data: SliceData::I64(range.into()) });
                continue;
            }
            (NpyData::I64(d), _) => SliceData::I64(d.get(start * per_row..end * per_row).unwrap_or(&[]).into()),
        };
        out.push(Slice { name: &l.name, shape: row_shape(end - start), data });
    }
    Ok(out)
}
