//! Feedback tickets: every way a ticket or label can be wrong is a typed error, and none of
//! them touches the memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::{Adapter, ErrorCode};
use graft_plugin_error_memory::{Config, ErrorMemory};

fn memory(dir: &TempDir, pending: u32) -> ErrorMemory {
    let mut c = Config::new("h", "p");
    c.tables = 2;
    c.bits = 2;
    c.pending = pending;
    build(dir, "t.safetensors", &memory_model(3), &c, &[], "").unwrap()
}

fn feedback(a: &ErrorMemory, ticket: u64, label: f32) -> Result<(), graft_plugin_abi::PluginError> {
    a.feedback(ticket, label).into_result()
}

#[test]
fn ticket_errors() {
    let dir = TempDir::new("tickets");
    let a = memory(&dir, 4);
    let state = tap(&a, &[0.1, 0.2, 0.3, -0.5, 0.1, 0.0]).unwrap();
    let mut y = [0.4f32, 0.9];
    let tickets = post(&a, &state, &mut y, 1.0).unwrap();
    assert_eq!(tickets, vec![1, 2], "tickets start at 1 and increase");

    // Unknown: 0 and never issued.
    for t in [0, 3, u64::MAX] {
        let e = assert_err(feedback(&a, t, 1.0), ErrorCode::TICKET, "ticket");
        assert!(e.message.contains("unknown"), "{e}");
    }
    // Bad labels: NaN, ±inf, outside [0, 1]. The ticket stays answerable.
    for label in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 2.0, -0.5, 1.000_001] {
        assert_err(feedback(&a, 1, label), ErrorCode::BAD_CALL, "label");
    }
    assert_eq!(a.stats().inserts, 0);

    // Answered twice.
    feedback(&a, 1, 1.0).unwrap();
    let e = assert_err(feedback(&a, 1, 0.0), ErrorCode::TICKET, "ticket");
    assert!(e.message.contains("already answered"), "{e}");
    assert_eq!(a.stats().inserts, 1);

    // Expired after the ring (4 entries) wraps: tickets 3..=7 overwrite ticket 2's slot.
    for _ in 0..5 {
        let (_, t) = serve(&a, &[1.0, 1.0, 1.0], 0.5, 1.0);
        assert!(t >= 3);
    }
    let e = assert_err(feedback(&a, 2, 1.0), ErrorCode::TICKET, "ticket");
    assert!(e.message.contains("expired (ring of 4)"), "{e}");
    // The newest four are still answerable.
    for t in 4..=7 {
        feedback(&a, t, 0.0).unwrap();
    }
    let s = a.stats();
    assert_eq!((s.inserts, s.tickets_issued, s.pending), (5, 7, 0));
    assert_eq!(s.feedback_errors, 3 + 6 + 1 + 1);
}

#[test]
fn rows_that_cannot_be_learned_get_no_ticket() {
    let dir = TempDir::new("noticket");
    let a = memory(&dir, 16);
    // A NaN key, a huge key, a NaN output: ticket 0, output untouched, nothing stored.
    let keys = [f32::NAN, 0.0, 0.0, 1e13, 0.0, 0.0, 0.5, 0.5, 0.5];
    let state = tap(&a, &keys).unwrap();
    assert_eq!(state[0], 0.0, "a non-finite key estimates 0");
    let mut y = [0.25f32, 0.25, f32::NAN];
    let tickets = post(&a, &state, &mut y, 1.0).unwrap();
    assert_eq!(tickets, vec![0, 0, 0]);
    assert_eq!(y[..2], [0.25, 0.25]);
    assert!(y[2].is_nan());
    // Their reserved ticket numbers are unknown to feedback.
    for t in 1..=3 {
        assert_err(feedback(&a, t, 1.0), ErrorCode::TICKET, "ticket");
    }
    assert_eq!(a.stats().tickets_issued, 0);
}

#[test]
fn tickets_are_per_instance() {
    let dir = TempDir::new("inst");
    let a = memory(&dir, 8);
    let b = memory(&dir, 8);
    let (_, ta) = serve(&a, &[1.0, 0.0, 0.0], 0.5, 1.0);
    let (_, tb) = serve(&b, &[1.0, 0.0, 0.0], 0.5, 1.0);
    assert_eq!((ta, tb), (1, 1));
    feedback(&a, ta, 1.0).unwrap();
    // b's ticket 1 is its own, still open.
    feedback(&b, tb, 0.0).unwrap();
    assert!((a.estimate(&[1.0, 0.0, 0.0]).unwrap() - 0.5).abs() < 1e-6);
    assert!((b.estimate(&[1.0, 0.0, 0.0]).unwrap() + 0.5).abs() < 1e-6);
}
