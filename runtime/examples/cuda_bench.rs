//! A short GPU benchmark for `kernels-cuda/gpu-check.sh` (needs a CUDA GPU and the
//! `cuda` feature): prints one line per measurement.
//!
//! 1. q8 GEMV (batch 1, 8192 × 8192): achieved GB/s of weight traffic, against a
//!    device-to-device copy of the same bytes (read + write) — the bandwidth ceiling.
//! 2. BGMV LoRA: 64 adapters of rank 16 on a 1024 → 1024 layer, 256 rows, one adapter
//!    index per row.
//! 3. End to end: the demo DLRM (q8 weights, `--vocab` rows per table) at batch 1 and 256,
//!    GPU session against a CPU session with one thread per core.
//!
//! With `--export DIR` it also writes the model's weights dequantized to f32 (`.npy`),
//! its shape (`spec.json`), a batch of 256 inputs and the GPU session's outputs, for
//! `kernels-cuda/bench_torch.py` to run the same model in PyTorch and compare.
//!
//! Usage: `cargo run --release -p graft --features cuda --example cuda_bench -- [--vocab N] [--export DIR]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use graft::builder::WeightFormats;
use graft::synthetic::{Dlrm, Requests, Rng};
use graft::{Device, Model, Session, SessionOptions, WeightFormat};
use graft_kernels_cuda::cache::PtxCache;
use graft_kernels_cuda::{Act, DeviceBuffer, Gpu, LoraLaunch, WeightFormat as KFormat};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let vocab: usize = arg("--vocab").map_or(Ok(20_000), |v| v.parse())?;
    let export = arg("--export").map(PathBuf::from);

    let gpu = Gpu::new(0, &PtxCache::default_location())?;
    println!("device   cuda:0 {} ({}, integrated: {})", gpu.name(), gpu.arch(), gpu.integrated());
    let stream = gpu.new_stream()?;
    let mut rng = Rng::new(7);

    // 1. q8 GEMV vs device-to-device copy.
    let (n, k) = (8192usize, 8192usize);
    let codes: Vec<u8> = (0..n * k).map(|_| (rng.below(255) as i32 - 127) as i8 as u8).collect();
    let scales: Vec<f32> = (0..n).map(|_| 0.01 + 0.001 * rng.uniform()).collect();
    let x: Vec<f32> = (0..k).map(|_| rng.normal()).collect();
    let w_dev = DeviceBuffer::upload(&gpu, &codes)?;
    let s_dev = DeviceBuffer::upload(&gpu, bytemuck::cast_slice(&scales))?;
    let x_dev = DeviceBuffer::upload(&gpu, bytemuck::cast_slice(&x))?;
    let y_dev = DeviceBuffer::zeroed(&gpu, n * 4)?;
    let copy_dst = DeviceBuffer::zeroed(&gpu, n * k)?;
    let iters = 50;
    let time = |f: &dyn Fn() -> Res<()>| -> Res<Duration> {
        f()?; // warm-up
        stream.synchronize()?;
        let t = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        stream.synchronize()?;
        Ok(t.elapsed() / iters)
    };
    let gemv = time(&|| {
        // SAFETY: all buffers above hold the shapes passed (8192 × 8192 codes, 8192 scales,
        // 8192 inputs, 8192 outputs).
        unsafe {
            gpu.linear(
                &stream,
                KFormat::Q8,
                x_dev.ptr(),
                k,
                w_dev.ptr(),
                s_dev.ptr(),
                0,
                Act::None,
                y_dev.ptr(),
                n,
                (1, n, k),
            )
        }?;
        Ok(())
    })?;
    let copy = time(&|| {
        // SAFETY: both buffers hold n · k bytes and do not overlap.
        unsafe { gpu.copy_device_async(&stream, copy_dst.ptr(), w_dev.ptr(), n * k) }?;
        Ok(())
    })?;
    let bytes = (n * k + n * 4) as f64;
    let gemv_gbs = bytes / gemv.as_secs_f64() / 1e9;
    let copy_gbs = 2.0 * (n * k) as f64 / copy.as_secs_f64() / 1e9;
    println!(
        "gemv_q8  8192x8192 batch 1: {:.1} us, {gemv_gbs:.0} GB/s of weights; d2d copy {copy_gbs:.0} GB/s (r+w); ratio {:.0}%",
        gemv.as_secs_f64() * 1e6,
        100.0 * gemv_gbs / copy_gbs
    );

    // 2. BGMV: 64 adapters, rank 16, 1024 -> 1024, 256 rows.
    let (adapters, rank, dim, rows) = (64usize, 16usize, 1024usize, 256usize);
    let mut a_bufs = Vec::new();
    let mut b_bufs = Vec::new();
    for _ in 0..adapters {
        let a: Vec<f32> = (0..rank * dim).map(|_| 0.05 * rng.normal()).collect();
        let b: Vec<f32> = (0..dim * rank).map(|_| 0.05 * rng.normal()).collect();
        a_bufs.push(DeviceBuffer::upload(&gpu, bytemuck::cast_slice(&a))?);
        b_bufs.push(DeviceBuffer::upload(&gpu, bytemuck::cast_slice(&b))?);
    }
    let ptrs = |v: &[DeviceBuffer]| v.iter().map(|b| b.ptr()).collect::<Vec<u64>>();
    let a_ptrs = DeviceBuffer::upload(&gpu, bytemuck::cast_slice(&ptrs(&a_bufs)))?;
    let b_ptrs = DeviceBuffer::upload(&gpu, bytemuck::cast_slice(&ptrs(&b_bufs)))?;
    let ranks = DeviceBuffer::upload(&gpu, bytemuck::cast_slice(&vec![rank as i32; adapters]))?;
    let lscales = DeviceBuffer::upload(&gpu, bytemuck::cast_slice(&vec![2.0f32; adapters]))?;
    let idx: Vec<i32> = (0..rows).map(|r| (r % adapters) as i32).collect();
    let idx_dev = DeviceBuffer::upload(&gpu, bytemuck::cast_slice(&idx))?;
    let xs: Vec<f32> = (0..rows * dim).map(|_| rng.normal()).collect();
    let xs_dev = DeviceBuffer::upload(&gpu, bytemuck::cast_slice(&xs))?;
    let ys_dev = DeviceBuffer::zeroed(&gpu, rows * dim * 4)?;
    let t_dev = DeviceBuffer::zeroed(&gpu, rows * rank * 4)?;
    let launch = LoraLaunch {
        x: xs_dev.ptr(),
        ldx: dim,
        y: ys_dev.ptr(),
        ldy: dim,
        t: t_dev.ptr(),
        idx: idx_dev.ptr(),
        a_ptrs: a_ptrs.ptr(),
        b_ptrs: b_ptrs.ptr(),
        ranks: ranks.ptr(),
        scales: lscales.ptr(),
        row_scale: 0,
        segments: None,
        m: rows,
        k: dim,
        n: dim,
        max_rank: rank,
    };
    let bgmv = time(&|| {
        // SAFETY: every table and buffer above matches the launch description.
        unsafe { gpu.lora(&stream, &launch) }?;
        Ok(())
    })?;
    let flops = 2.0 * 2.0 * (rows * rank * dim) as f64;
    println!(
        "bgmv     64 adapters r16 1024->1024, 256 rows: {:.1} us ({:.0} GFLOP/s)",
        bgmv.as_secs_f64() * 1e6,
        flops / bgmv.as_secs_f64() / 1e9
    );

    // 3. End to end.
    let spec = Dlrm { vocab, ..Dlrm::demo() };
    let dir = std::env::temp_dir().join(format!("graft-cuda-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("dlrm-q8.graft");
    spec.build().write(&path, WeightFormats { linear: WeightFormat::Q8, table: WeightFormat::Q8Rowwise })?;
    let model = Model::open(&path)?;
    let names: Vec<String> = (0..spec.fields).map(Dlrm::ids_name).collect();
    let mut requests = Requests::new(&spec, 11);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    for batch in [1usize, 256] {
        let b = requests.batch(batch);
        let mut cpu = Session::new(&model, SessionOptions { max_batch: 256, threads, ..Default::default() })?;
        let mut gpu_s =
            Session::new(&model, SessionOptions { max_batch: 256, device: Device::Cuda(0), ..Default::default() })?;
        let measure = |s: &mut Session| -> Res<Duration> {
            s.run(&b.inputs(&spec, &names))?;
            let reps = if batch == 1 { 200 } else { 50 };
            let t = Instant::now();
            for _ in 0..reps {
                s.run(&b.inputs(&spec, &names))?;
            }
            Ok(t.elapsed() / reps)
        };
        let (c, g) = (measure(&mut cpu)?, measure(&mut gpu_s)?);
        let cp = cpu.run(&b.inputs(&spec, &names))?.get("prob").map(<[f32]>::to_vec).unwrap_or_default();
        let gp = gpu_s.run(&b.inputs(&spec, &names))?.get("prob").map(<[f32]>::to_vec).unwrap_or_default();
        let diff = cp.iter().zip(&gp).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        println!(
            "e2e      dlrm q8 batch {batch}: gpu {:.1} us ({:.0} rows/s), cpu x{threads} {:.1} us ({:.0} rows/s), speedup {:.1}x, max |dprob| {diff:.2e}",
            g.as_secs_f64() * 1e6,
            batch as f64 / g.as_secs_f64(),
            c.as_secs_f64() * 1e6,
            batch as f64 / c.as_secs_f64(),
            c.as_secs_f64() / g.as_secs_f64()
        );
        if let (Some(out), 256) = (&export, batch) {
            export_for_torch(out, &model, &spec, &b, &gp)?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Writes the dequantized weights, the shape, one batch and graft's outputs for it.
fn export_for_torch(
    out: &std::path::Path,
    model: &Model,
    spec: &Dlrm,
    b: &graft::synthetic::Batch,
    prob: &[f32],
) -> Res<()> {
    use graft::npy;
    std::fs::create_dir_all(out)?;
    let g = model.graph();
    for (i, w) in g.weights.iter().enumerate() {
        let m = model.weight(i)?;
        let mut data = vec![0.0f32; m.rows * m.cols];
        for r in 0..m.rows {
            m.dequant_row(r, &mut data[r * m.cols..(r + 1) * m.cols]);
        }
        npy::write_f32(&out.join(format!("{}.npy", w.name)), &[m.rows, m.cols], &data)?;
    }
    for node in &g.nodes {
        if let graft::graph::Op::Linear { bias: Some(t), .. } = node.op {
            let v = model.vector(t)?;
            npy::write_f32(&out.join(format!("{}.bias.npy", node.name)), &[v.len()], v)?;
        }
    }
    let linears: Vec<(String, String)> = g
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            graft::graph::Op::Linear { weight, .. } => Some((n.name.clone(), g.weights[weight].name.clone())),
            _ => None,
        })
        .collect();
    let tables: Vec<String> = g
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            graft::graph::Op::EmbeddingBag { table, .. } => Some(g.weights[table].name.clone()),
            _ => None,
        })
        .collect();
    let spec_json = format!(
        "{{\"dense\": {}, \"bottom\": {:?}, \"top\": {:?}, \"fields\": {}, \"bag\": {}, \"linears\": [{}], \"tables\": [{}]}}",
        spec.dense,
        spec.bottom,
        spec.top,
        spec.fields,
        spec.bag,
        linears.iter().map(|(n, w)| format!("[\"{n}\", \"{w}\"]")).collect::<Vec<_>>().join(", "),
        tables.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ")
    );
    std::fs::write(out.join("spec.json"), spec_json)?;
    npy::write_f32(&out.join("input_dense.npy"), &[b.rows, spec.dense], &b.dense)?;
    for (f, ids) in b.ids.iter().enumerate() {
        npy::write_i64(&out.join(format!("input_ids_{f}.npy")), &[b.rows, spec.bag], ids)?;
    }
    npy::write_f32(&out.join("graft_prob.npy"), &[prob.len()], prob)?;
    Ok(())
}
