//! Taps and posts on several threads while other threads feed labels back: no panic, every
//! ticket answered exactly once, every answer inserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::mpsc;

use common::*;
use graft_plugin_abi::{Adapter, ErrorCode};
use graft_plugin_error_memory::{Config, Estimate};

const D: usize = 6;
const POSTERS: usize = 4;
const CALLS: usize = 60;
const ROWS: usize = 8;

fn hammer(estimate: Estimate) {
    let dir = TempDir::new("conc");
    let mut c = Config::new("h", "p");
    c.tables = 4;
    c.bits = 3;
    c.estimate = estimate;
    c.decay = 0.7; // renormalizations during the run
    c.exact_capacity = 64;
    let a = build(&dir, "c.safetensors", &memory_model(D), &c, &[], "").unwrap();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..2).map(|_| mpsc::channel::<Vec<u64>>()).unzip();

    let answered: Vec<Vec<u64>> = std::thread::scope(|s| {
        let a = &a;
        for (p, tx) in (0..POSTERS).zip(senders.iter().cycle()) {
            let tx = tx.clone();
            s.spawn(move || {
                let mut rng = Rng(1000 + p as u64);
                for _ in 0..CALLS {
                    // This thread's rows, as one call of ROWS rows.
                    let keys = rng.vec(ROWS * D);
                    let state = tap(a, &keys).unwrap();
                    for row in state.chunks_exact(a.state_floats()) {
                        // A read that overlapped inserts may be skewed (documented), never broken.
                        assert!(row[0].is_finite(), "ê = {}", row[0]);
                    }
                    let mut y: Vec<f32> = (0..ROWS).map(|_| rng.next_f32()).collect();
                    let tickets = post(a, &state, &mut y, 1.0).unwrap();
                    assert!(tickets.iter().all(|&t| t != 0));
                    assert!(y.iter().all(|v| (0.0..=1.0).contains(v)));
                    tx.send(tickets).unwrap();
                }
            });
        }
        drop(senders);
        let feeders: Vec<_> = receivers
            .into_iter()
            .enumerate()
            .map(|(f, rx)| {
                s.spawn(move || {
                    let mut done = Vec::new();
                    for tickets in rx {
                        for t in tickets {
                            let label = if (t + f as u64).is_multiple_of(3) { 1.0 } else { 0.0 };
                            a.feedback(t, label).into_result().unwrap();
                            done.push(t);
                        }
                    }
                    done
                })
            })
            .collect();
        feeders.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut all: Vec<u64> = answered.into_iter().flatten().collect();
    let total = POSTERS * CALLS * ROWS;
    assert_eq!(all.len(), total);
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (1..=total as u64).collect::<Vec<_>>(), "tickets are unique and dense");
    let s = a.stats();
    assert_eq!((s.inserts, s.tickets_issued, s.pending, s.feedback_errors), (total as u64, total as u64, 0, 0));
    if estimate == Estimate::Pooled {
        assert!(s.renormalizations > 0);
    }
    // A second answer for any ticket is refused.
    for t in [1, total as u64 / 2, total as u64] {
        let e = assert_err(a.feedback(t, 1.0).into_result(), ErrorCode::TICKET, "ticket");
        assert!(e.message.contains("already answered"));
    }
}

#[test]
fn concurrent_pooled() {
    hammer(Estimate::Pooled);
}

#[test]
fn concurrent_topk() {
    hammer(Estimate::TopK);
}

#[test]
fn concurrent_exact() {
    hammer(Estimate::Exact);
}

#[test]
fn concurrent_save_while_learning() {
    let dir = TempDir::new("conc-save");
    let mut c = Config::new("h", "p");
    c.tables = 2;
    c.bits = 4;
    let a = build(&dir, "c.safetensors", &memory_model(D), &c, &[], "").unwrap();
    let path = dir.file("s.state");
    std::thread::scope(|s| {
        let a = &a;
        s.spawn(move || {
            let mut rng = Rng(4);
            for _ in 0..300 {
                learn(a, &rng.vec(D), rng.next_f32(), 1.0);
            }
        });
        for _ in 0..2 {
            let path = path.clone();
            s.spawn(move || {
                for _ in 0..10 {
                    a.save_state(path.as_str().into()).into_result().unwrap();
                }
            });
        }
    });
    // Whatever snapshot landed last is a valid state.
    let b =
        load(&memory_model(D), &dir.file("c.safetensors"), &serde_json::json!({"state": path}).to_string()).unwrap();
    assert!(b.stats().inserts <= 300);
}
