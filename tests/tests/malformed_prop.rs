//! Property: no byte-level corruption of a valid container makes graft panic.
//!
//! Starting from [`common_bad::small_model`] in each weight format, random mutations —
//! bit flips, byte overwrites, digit swaps inside the header (which keep the JSON valid
//! and so reach the offset, shape and graph checks), truncations and length-prefix
//! changes — are applied, and `Model::from_slice_copy` must return, `Ok` or `Err`. When it
//! parses, the model must also plan and run a zero batch on every kernel table
//! (`common_bad::run_zeros`) with no panic and no error. The cargo-fuzz target
//! `fuzz/fuzz_targets/container.rs` explores the same space without a time limit.

#![allow(clippy::unwrap_used)]

mod common_bad;

use std::sync::LazyLock;

use graft::Model;
use proptest::prelude::*;
use proptest::sample::Index;

static VALID: LazyLock<Vec<Vec<u8>>> =
    LazyLock::new(|| ["f32", "f16", "bf16", "q8", "q4"].map(common_bad::small_container).to_vec());

#[derive(Clone, Debug)]
enum Mutation {
    /// Flips one bit anywhere.
    Flip(Index, u8),
    /// Overwrites one byte anywhere.
    Set(Index, u8),
    /// Replaces one ASCII digit of the header with another digit.
    Digit(Index, u8),
    /// Cuts the buffer short.
    Truncate(Index),
    /// Adds a (wrapping, possibly negative) delta to the header length prefix.
    LengthDelta(i16),
    /// Replaces the length prefix.
    Length(u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0..8u8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, v)| Mutation::Set(i, v)),
        6 => (any::<Index>(), 0..10u8).prop_map(|(i, d)| Mutation::Digit(i, d)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => any::<i16>().prop_map(Mutation::LengthDelta),
        1 => any::<u64>().prop_map(Mutation::Length),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let header_len = |b: &[u8]| b.get(..8).map_or(0, |l| u64::from_le_bytes(l.try_into().unwrap()));
    let len = bytes.len();
    match *m {
        _ if bytes.is_empty() => {}
        Mutation::Flip(i, bit) => bytes[i.index(len)] ^= 1 << bit,
        Mutation::Set(i, v) => bytes[i.index(len)] = v,
        Mutation::Digit(i, d) => {
            let end = header_len(bytes).saturating_add(8).min(len as u64) as usize;
            let digits: Vec<usize> = (8.min(end)..end).filter(|&k| bytes[k].is_ascii_digit()).collect();
            if !digits.is_empty() {
                bytes[digits[i.index(digits.len())]] = b'0' + d;
            }
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(len)),
        Mutation::LengthDelta(_) | Mutation::Length(_) if len < 8 => {}
        Mutation::LengthDelta(d) => {
            let len = header_len(bytes).wrapping_add_signed(d.into());
            bytes[..8].copy_from_slice(&len.to_le_bytes());
        }
        Mutation::Length(len) => bytes[..8].copy_from_slice(&len.to_le_bytes()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_containers_never_panic(
        which in 0..5usize,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let mut bytes = VALID[which].clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        if let Ok(model) = Model::from_slice_copy(&bytes) {
            for rows in [1, 4] {
                if let Err(e) = common_bad::run_zeros(&model, rows) {
                    prop_assert!(false, "parsed, but a valid zero batch of {} rows failed: {:?}", rows, e);
                }
            }
        }
    }
}
