//! Stage 5 of the demo: per-user LoRA adapters in mixed batches, with a hot swap.
//!
//! Each user gets a PEFT directory written by `graft::synthetic::lora` (the same format
//! `save_pretrained` writes) and loaded through the registry like any PEFT adapter. The
//! serving loop is the demo's [`serve`](super::serve) harness; only the per-request
//! closure changes: it assigns every row to its user and calls `run_with`. Meanwhile a
//! swapper thread republishes user 0's adapter, alternating two versions, and times each
//! publication.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use graft::adapters::{Registry, RowAdapters};
use graft::synthetic::lora::{LoraSpec, write_peft_lora};
use graft::synthetic::{Batch, Dlrm};
use graft::{Model, Result, Session, SessionOptions};

use super::{Args, serve};
use crate::report::{Latencies, bytes, micros};

/// Everything the stage needs from the earlier ones.
pub struct AdapterStage<'a> {
    pub model: &'a Model,
    pub spec: &'a Dlrm,
    pub dir: &'a Path,
    pub args: &'a Args,
    pub options: SessionOptions,
    pub workers: usize,
    pub names: &'a [String],
    pub singles: &'a [Batch],
    /// Rows/s of the base-model serving run.
    pub base_rate: f64,
}

/// Median batch-1 latencies of the base model and of `rows`' adapters over `pairs`
/// requests, timed alternately on the same inputs. Each request runs once untimed first,
/// so both timed runs find its table rows in cache.
pub fn batch1_medians(
    s: &AdapterStage<'_>,
    session: &mut Session,
    rows: &RowAdapters,
    pairs: usize,
) -> Result<(Duration, Duration)> {
    let (mut base, mut with) = (Latencies::default(), Latencies::default());
    for i in 0..pairs {
        let inputs = s.singles[i % s.singles.len()].inputs(s.spec, s.names);
        session.run(&inputs)?;
        let t = Instant::now();
        session.run(&inputs)?;
        base.push(t.elapsed());
        let t = Instant::now();
        session.run_with(&inputs, rows)?;
        with.push(t.elapsed());
    }
    Ok((base.quantile(0.5), with.quantile(0.5)))
}

/// Every 8th row of a request scores with the base model (a user without an adapter).
const BASE_EVERY: usize = 8;
/// Pause between two publications of the swapper.
const SWAP_PERIOD: Duration = Duration::from_micros(500);

pub fn stage(s: &AdapterStage<'_>) -> Result<()> {
    let (users, rank) = (s.args.users, s.args.rank.max(1));
    let root = s.dir.join("adapters");
    println!("adapters — {users} users, LoRA r={rank} on every linear, PEFT directories");
    let t = Instant::now();
    let mut file_bytes = 0;
    for u in 0..=users {
        // Directory `users` holds the second version of user 0's adapter.
        let seed = 1000 + u as u64;
        file_bytes += write_peft_lora(s.model, &root.join(format!("user{u}")), &LoraSpec::every_linear(rank, seed))?;
    }
    let written = t.elapsed();
    let registry = Registry::new(s.model);
    let t = Instant::now();
    for u in 0..users {
        registry.insert(registry.load_peft(&format!("user{u}"), root.join(format!("user{u}")))?)?;
    }
    let load = t.elapsed();
    let v1 = registry.snapshot().require("user0")?.clone();
    let v2 = registry.load_peft("user0", root.join(format!("user{users}")))?;
    println!(
        "load    {users} adapters ({} of tensors, read and verified) in {} ({} each; files written in {:.2?})",
        bytes(file_bytes as usize * users / (users + 1)),
        micros(load),
        micros(load / users as u32),
        written
    );

    // LoRA overhead at batch 1: the same requests, alternating base and one user's adapter.
    let mut session = Session::new(s.model, s.options)?;
    let one = RowAdapters::all(&registry, "user1")?;
    let (b50, l50) = batch1_medians(s, &mut session, &one, 2000)?;
    println!(
        "batch 1 base p50 {}, with LoRA r={rank} p50 {}: overhead {:+.1}%",
        micros(b50),
        micros(l50),
        (l50.as_secs_f64() / b50.as_secs_f64() - 1.0) * 100.0
    );

    // Mixed batches with a hot swap.
    let serving = AtomicBool::new(true);
    let mut swaps = Latencies::default();
    let stats = std::thread::scope(|scope| {
        let swapper = scope.spawn(|| {
            let mut lat = Latencies::default();
            let mut flip = false;
            while serving.load(Ordering::Relaxed) {
                let next = if flip { v1.clone() } else { v2.clone() };
                flip = !flip;
                let t = Instant::now();
                let published = registry.replace(next);
                lat.push(t.elapsed());
                if published.is_err() {
                    break;
                }
                std::thread::sleep(SWAP_PERIOD);
            }
            lat
        });
        let ids: Vec<String> = (0..users).map(|u| format!("user{u}")).collect();
        let result = serve(s.model, s.spec, s.workers, s.args.requests, s.args.batch, s.options, |session, batch| {
            // Each request takes the registry's current snapshot and assigns every row
            // (a candidate for one user) that user's adapter.
            let mut rows = RowAdapters::new(&registry);
            for r in 0..batch.rows {
                if r % BASE_EVERY == BASE_EVERY - 1 {
                    rows.push_base()?;
                } else {
                    rows.push(&ids[r % users])?;
                }
            }
            session.run_with(&batch.inputs(s.spec, s.names), &rows).map(|_| ())
        });
        serving.store(false, Ordering::Relaxed);
        if let Ok(lat) = swapper.join() {
            swaps = lat;
        }
        result
    })?;
    let mut lat = stats.latencies;
    let rows = s.args.requests * s.args.batch;
    let rate = rows as f64 / stats.elapsed.as_secs_f64();
    println!(
        "serve   {} mixed requests × {} rows ({users} users + base rows) on {} thread(s): {:.0} rows/s ({:+.1}% time per row vs base)",
        s.args.requests,
        s.args.batch,
        s.workers,
        rate,
        (s.base_rate / rate - 1.0) * 100.0
    );
    println!("        request latency {}", lat.summary());
    println!(
        "swap    user0 republished {} times while serving: publish p50 {}, p99 {}, max {}",
        swaps.len(),
        micros(swaps.quantile(0.5)),
        micros(swaps.quantile(0.99)),
        micros(swaps.quantile(1.0))
    );
    if !s.args.keep {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}
