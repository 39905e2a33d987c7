//! Bad run inputs are refused with the typed [`Error`] that names the input (and row,
//! column or position), and never poison the session.
//!
//! The model has the three input forms: a dense input (`dense`, width 4, into a linear),
//! padded ids (`ids`, 2 slots, table of 10 rows) and a flat bag pair (`bag_idx` +
//! `bag_off`, table of 5 rows). Covered: wrong width, dtype, rank and length; ids out of
//! range (negative, `== vocab`, huge); NaN/±Inf under `NanPolicy::Reject` and
//! `NanPolicy::Propagate`; unknown, missing and duplicate inputs; batch mismatch, batch
//! over `max_batch`, empty batch; bad offsets. After every refusal the same session runs a
//! valid batch and must give exactly the reference result.

#![allow(clippy::unwrap_used)]

use graft::builder::{Matrix, ModelBuilder, WeightFormats};
use graft::graph::BagMode;
use graft::{Error, Input, Model, NanPolicy, Session, SessionOptions, Shape, TensorView};

const MAX_BATCH: usize = 4;
const WIDTH: usize = 4;
const SLOTS: usize = 2;
const IDS_VOCAB: usize = 10;
const BAG_VOCAB: usize = 5;
const DIM: usize = 3;
/// Output width: linear (DIM) + ids bag (DIM) + flat bag (DIM).
const OUT: usize = 3 * DIM;

/// Small multiples of 1/4, so every sum below is exact in f32 in any order.
fn quarters(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7 + seed) % 9) as f32 * 0.25 - 1.0).collect()
}

fn linear_weight() -> Vec<f32> {
    quarters(DIM * WIDTH, 1)
}
fn linear_bias() -> Vec<f32> {
    quarters(DIM, 2)
}
fn ids_table() -> Vec<f32> {
    quarters(IDS_VOCAB * DIM, 3)
}
fn bag_table() -> Vec<f32> {
    quarters(BAG_VOCAB * DIM, 4)
}

fn model() -> Model {
    let mut b = ModelBuilder::new("inputs");
    b.dense_input("dense", WIDTH);
    b.ids_input("ids", SLOTS);
    b.bag_inputs("bag_idx", "bag_off");
    b.linear("fc", "dense", Matrix::new(DIM, WIDTH, linear_weight()), Some(linear_bias()));
    b.embedding_bag("emb_ids", &["ids"], Matrix::new(IDS_VOCAB, DIM, ids_table()), BagMode::Sum);
    b.embedding_bag("emb_bag", &["bag_idx", "bag_off"], Matrix::new(BAG_VOCAB, DIM, bag_table()), BagMode::Sum);
    b.concat("cat", &["fc", "emb_ids", "emb_bag"]);
    b.output("out", "cat");
    Model::from_slice_copy(&b.to_bytes(WeightFormats::default()).unwrap()).unwrap()
}

fn session(nan_policy: NanPolicy) -> Session {
    Session::new(&model(), SessionOptions { max_batch: MAX_BATCH, nan_policy, ..SessionOptions::default() }).unwrap()
}

/// The data of a batch, valid unless a test edits it.
#[derive(Clone, Debug)]
struct Batch {
    rows: usize,
    dense: Vec<f32>,
    ids: Vec<i64>,
    idx: Vec<i64>,
    off: Vec<i64>,
}

impl Batch {
    /// `rows` rows; bags have 2, 0, 1, 3, 2, … ids (row 1's bag is empty).
    fn new(rows: usize) -> Batch {
        let (mut idx, mut off) = (Vec::new(), Vec::new());
        for r in 0..rows {
            off.push(idx.len() as i64);
            idx.extend((0..[2, 0, 1, 3][r % 4]).map(|j| ((r + 2 * j) % BAG_VOCAB) as i64));
        }
        Batch {
            rows,
            dense: quarters(rows * WIDTH, 5),
            ids: (0..rows * SLOTS).map(|i| ((i * 3 + 1) % IDS_VOCAB) as i64).collect(),
            idx,
            off,
        }
    }

    fn inputs(&self) -> Vec<Input<'_>> {
        vec![
            Input::dense("dense", &self.dense, WIDTH),
            Input::ids("ids", &self.ids, SLOTS),
            Input::flat("bag_idx", &self.idx),
            Input::flat("bag_off", &self.off),
        ]
    }

    /// The inputs with the one called `name` replaced (or removed, for `None`).
    fn with<'a>(&'a self, name: &str, replacement: Option<Input<'a>>) -> Vec<Input<'a>> {
        let mut inputs = self.inputs();
        let i = inputs.iter().position(|x| x.name == name).unwrap();
        match replacement {
            Some(r) => inputs[i] = r,
            None => {
                inputs.remove(i);
            }
        }
        inputs
    }

    /// The output computed by hand: `[W·x + b | Σ ids rows | Σ bag rows]` per row.
    fn expected(&self) -> Vec<f32> {
        let (w, bias, t1, t2) = (linear_weight(), linear_bias(), ids_table(), bag_table());
        let rows_sum = |table: &[f32], ids: &[i64]| -> Vec<f32> {
            (0..DIM).map(|d| ids.iter().map(|&i| table[i as usize * DIM + d]).sum()).collect()
        };
        let mut out = Vec::with_capacity(self.rows * OUT);
        for r in 0..self.rows {
            let x = &self.dense[r * WIDTH..(r + 1) * WIDTH];
            out.extend((0..DIM).map(|o| (0..WIDTH).map(|k| x[k] * w[o * WIDTH + k]).sum::<f32>() + bias[o]));
            out.extend(rows_sum(&t1, &self.ids[r * SLOTS..(r + 1) * SLOTS]));
            let end = self.off.get(r + 1).map_or(self.idx.len(), |&e| e as usize);
            out.extend(rows_sum(&t2, &self.idx[self.off[r] as usize..end]));
        }
        out
    }
}

/// A valid batch still gives exactly the reference result.
fn assert_valid_run(s: &mut Session) {
    let b = Batch::new(3);
    let out = s.run(&b.inputs()).expect("valid batch after a refusal");
    assert_eq!(out.get("out").unwrap(), b.expected().as_slice());
}

/// Runs `$inputs`, asserts the error matches `$pattern`, then that the session still works.
macro_rules! assert_rejects {
    ($session:expr, $inputs:expr, $($pattern:tt)+) => {{
        let err = match $session.run(&$inputs) {
            Ok(_) => panic!("accepted: {}", stringify!($inputs)),
            Err(e) => e,
        };
        assert!(matches!(&err, $($pattern)+), "{}\n  expected {}\n  got {err:?} ({err})", stringify!($inputs), stringify!($($pattern)+));
        assert_valid_run(&mut $session);
    }};
}

#[test]
fn valid_batches_match_the_reference() {
    let mut s = session(NanPolicy::Reject);
    for rows in 1..=MAX_BATCH {
        let b = Batch::new(rows);
        let out = s.run(&b.inputs()).unwrap();
        assert_eq!(out.rows(), rows);
        assert_eq!(out.get("out").unwrap(), b.expected().as_slice(), "{rows} rows");
    }
    // Inputs are matched by name, not position.
    let b = Batch::new(2);
    let mut reversed = b.inputs();
    reversed.reverse();
    assert_eq!(s.run(&reversed).unwrap().get("out").unwrap(), b.expected().as_slice());
}

#[test]
fn wrong_shapes_dtypes_and_ranks() {
    let mut s = session(NanPolicy::Reject);
    let b = Batch::new(3);
    let wide = vec![0.0f32; 12];
    assert_rejects!(
        s,
        b.with("dense", Some(Input::dense("dense", &wide, 6))),
        Error::InputShape { input, expected, actual } if input == "dense" && expected == "[batch, 4]" && actual == "[2, 6]"
    );
    assert_rejects!(
        s,
        b.with("dense", Some(Input::dense("dense", &b.dense[..10], WIDTH))),
        Error::InputShape { input, .. } if input == "dense"
    );
    assert_rejects!(
        s,
        b.with("dense", Some(Input::i64("dense", &[0; 12], &[3, 4]).unwrap())),
        Error::InputDtype { input, expected: "f32", actual: "i64" } if input == "dense"
    );
    assert_rejects!(
        s,
        b.with("ids", Some(Input::f32("ids", &[0.0; 6], &[3, 2]).unwrap())),
        Error::InputDtype { input, expected: "i64", actual: "f32" } if input == "ids"
    );
    assert_rejects!(
        s,
        b.with("bag_off", Some(Input::f32("bag_off", &[0.0; 3], &[3]).unwrap())),
        Error::InputDtype { input, expected: "i64", actual: "f32" } if input == "bag_off"
    );
    assert_rejects!(
        s,
        b.with("ids", Some(Input::flat("ids", &b.ids))),
        Error::InputShape { input, expected, .. } if input == "ids" && expected == "[batch, 2]"
    );
    assert_rejects!(
        s,
        b.with("bag_off", Some(Input::i64("bag_off", &b.off, &[1, 3]).unwrap())),
        Error::InputShape { input, expected, .. } if input == "bag_off" && expected == "[batch]"
    );
    assert_rejects!(
        s,
        b.with("bag_idx", Some(Input::i64("bag_idx", &b.idx, &[1, 3]).unwrap())),
        Error::InputShape { input, .. } if input == "bag_idx"
    );
    // A view whose declared shape disagrees with its data (built by hand, bypassing the
    // checked constructors).
    let lying = Input { name: "dense", tensor: TensorView::F32 { data: &b.dense[..8], shape: Shape::matrix(3, 4) } };
    assert_rejects!(
        s,
        b.with("dense", Some(lying)),
        Error::InputShape { input, actual, .. } if input == "dense" && actual == "8 elements"
    );
    // The checked constructors refuse ranks outside 1..=8, and lengths that do not match
    // the shape.
    let checked: [(&str, &str, graft::Result<Input<'_>>); 4] = [
        ("rank 9", "dense", Input::f32("dense", &b.dense, &[1, 3, 4, 1, 1, 1, 1, 1, 1])),
        ("rank 0", "ids", Input::i64("ids", &b.ids, &[])),
        ("short data", "dense", Input::f32("dense", &b.dense[..11], &[3, 4])),
        ("overflowing dims", "ids", Input::i64("ids", &b.ids, &[usize::MAX, 2])),
    ];
    for (what, name, result) in checked {
        let err = result.unwrap_err();
        assert!(matches!(&err, Error::InputShape { input, .. } if input == name), "{what}: {err:?}");
    }
    assert!(matches!(
        Input::f32("dense", &b.dense, &[1, 3, 4, 1, 1, 1, 1, 1, 1]),
        Err(Error::InputShape { expected, .. }) if expected.contains("rank")
    ));
    // A rank-3 tensor is bound only when its trailing dims are the input's row shape (or
    // the flat width): `[1, 3, 4]` is not a `[batch, 12]` input.
    assert_rejects!(
        s,
        b.with("dense", Input::f32("dense", &b.dense, &[1, 3, 4]).ok()),
        Error::InputShape { input, .. } if input == "dense"
    );
}

#[test]
fn ids_out_of_range_name_input_position_and_table() {
    let mut s = session(NanPolicy::Reject);
    for id in [-1, IDS_VOCAB as i64, i64::MAX, i64::MIN] {
        let mut b = Batch::new(3);
        b.ids[3] = id;
        assert_rejects!(
            s,
            b.inputs(),
            Error::IdOutOfRange { input, position: 3, id: got, table, rows: IDS_VOCAB }
                if input == "ids" && *got == id && table == "emb_ids.weight"
        );
    }
    for id in [-3, BAG_VOCAB as i64, i64::MAX] {
        let mut b = Batch::new(3);
        *b.idx.last_mut().unwrap() = id;
        let position = b.idx.len() - 1;
        assert_rejects!(
            s,
            b.inputs(),
            Error::IdOutOfRange { input, position: p, id: got, table, rows: BAG_VOCAB }
                if input == "bag_idx" && *p == position && *got == id && table == "emb_bag.weight"
        );
    }
}

#[test]
fn non_finite_dense_values() {
    let cases = [(f32::NAN, 1, 2), (f32::INFINITY, 0, 3), (f32::NEG_INFINITY, 2, 0)];
    let mut reject = session(NanPolicy::Reject);
    let mut propagate = session(NanPolicy::Propagate);
    for (value, row, col) in cases {
        let mut b = Batch::new(3);
        b.dense[row * WIDTH + col] = value;
        assert_rejects!(
            reject,
            b.inputs(),
            Error::NonFinite { input, row: r, col: c, value: v }
                if input == "dense" && *r == row && *c == col && v.to_bits() == value.to_bits()
        );

        // Propagate: the run succeeds; the linear's outputs of that row are non-finite
        // (±Inf, or NaN where a weight is 0), everything else is exactly the reference.
        let out = propagate.run(&b.inputs()).unwrap().get("out").unwrap().to_vec();
        let expected = b.expected();
        for (i, (&got, &want)) in out.iter().zip(&expected).enumerate() {
            let (r, c) = (i / OUT, i % OUT);
            if r == row && c < DIM {
                assert!(!got.is_finite(), "{value} at ({row}, {col}): out[{r}][{c}] = {got}");
            } else {
                assert_eq!(got, want, "{value} at ({row}, {col}): out[{r}][{c}]");
            }
        }
        assert_valid_run(&mut propagate);
    }
    // A NaN anywhere comes out as NaN, not silently as 0 or a clamped value.
    let mut b = Batch::new(2);
    b.dense.fill(f32::NAN);
    let out = propagate.run(&b.inputs()).unwrap();
    assert!(out.get("out").unwrap().chunks(OUT).all(|row| row[..DIM].iter().all(|v| v.is_nan())));
}

#[test]
fn unknown_missing_and_duplicate_inputs() {
    let mut s = session(NanPolicy::Reject);
    let b = Batch::new(3);
    let mut extra = b.inputs();
    extra.push(Input::dense("bogus", &b.dense, WIDTH));
    assert_rejects!(
        s,
        extra,
        Error::UnknownInput { input, known } if input == "bogus" && known == "dense, ids, bag_idx, bag_off"
    );
    assert_rejects!(s, b.with("ids", None), Error::MissingInput { input } if input == "ids");
    assert_rejects!(s, b.with("dense", Some(Input::dense("Dense", &b.dense, WIDTH))), Error::MissingInput { input } if input == "dense");
    assert_rejects!(s, [], Error::MissingInput { input } if input == "dense");
    let mut twice = b.inputs();
    twice.push(Input::dense("dense", &b.dense, WIDTH));
    assert_rejects!(s, twice, Error::DuplicateInput { input } if input == "dense");
}

#[test]
fn batch_sizes() {
    let mut s = session(NanPolicy::Reject);
    let (b3, b2) = (Batch::new(3), Batch::new(2));
    assert_rejects!(
        s,
        b3.with("ids", Some(Input::ids("ids", &b2.ids, SLOTS))),
        Error::BatchMismatch { input, rows: 2, expected: 3 } if input == "ids"
    );
    assert_rejects!(
        s,
        b3.with("dense", Some(Input::dense("dense", &b2.dense, WIDTH))),
        Error::BatchMismatch { input, rows: 3, expected: 2 } if input == "ids"
    );
    assert_rejects!(s, Batch::new(MAX_BATCH + 1).inputs(), Error::BatchTooLarge { rows: 5, max_batch: MAX_BATCH });
    assert_rejects!(s, Batch::new(0).inputs(), Error::EmptyBatch);
    // max_batch itself is checked when the session is made.
    let err = Session::new(&model(), SessionOptions { max_batch: 0, ..SessionOptions::default() }).unwrap_err();
    assert!(matches!(err, Error::InvalidOption { .. }), "{err:?}");
}

#[test]
fn bad_offsets() {
    let mut s = session(NanPolicy::Reject);
    let b = Batch::new(3);
    assert_eq!(b.off, [0, 2, 2], "the offsets the cases below edit");
    let cases: [(&[i64], &str); 4] = [
        (&[1, 2, 2], "first offset must be 0"),
        (&[0, 3, 2], "offset 2 (2) is below offset 1 (3)"),
        (&[0, -1, 2], "offset 1 (-1) is below offset 0 (0)"),
        (&[0, 2, 9], "last offset 9 is past the 3 indices"),
    ];
    for (off, message) in cases {
        assert_rejects!(
            s,
            b.with("bag_off", Some(Input::flat("bag_off", off))),
            Error::BadOffsets { input, detail } if input == "bag_off" && detail.contains(message)
        );
    }
    // One offset per row: a wrong count is a batch-size disagreement.
    assert_rejects!(
        s,
        b.with("bag_off", Some(Input::flat("bag_off", &[0, 2]))),
        Error::BatchMismatch { input, rows: 2, expected: 3 } if input == "bag_off"
    );
    // Offsets ending exactly at the indices (an empty last bag) are valid.
    let mut edge = b.clone();
    edge.off = vec![0, 1, edge.idx.len() as i64];
    assert_eq!(s.run(&edge.inputs()).unwrap().get("out").unwrap(), edge.expected().as_slice());
}
