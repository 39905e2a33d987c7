//! The per-row tensor ops on the CPU engine: hand-worked examples (expected values are
//! written out by hand or computed by naive loops in this file, never by graft),
//! broadcasting, i64 paths with typed errors, reshape aliasing, axis concatenation, and
//! batch independence (a row's result does not depend on its batch).

#![allow(clippy::unwrap_used, clippy::float_cmp)]

use graft::builder::{ConstValues, Matrix, ModelBuilder, WeightFormats};
use graft::graph::{BagMode, ValueType};
use graft::{Error, Input, Model, Session, SessionOptions, WeightFormat};
use serde_json::json;

fn model(b: &ModelBuilder) -> Model {
    Model::from_slice_copy(&b.to_bytes(WeightFormats::uniform(WeightFormat::F32)).unwrap()).unwrap()
}

fn session(m: &Model) -> Session {
    Session::new(m, SessionOptions { max_batch: 8, ..Default::default() }).unwrap()
}

/// Runs one dense input `x` (`rows × width`) and returns output `out`.
fn run(m: &Model, x: &[f32], width: usize) -> Result<Vec<f32>, Error> {
    let mut s = session(m);
    let out = s.run(&[Input::dense("x", x, width)])?;
    Ok(out.get("out").unwrap().to_vec())
}

/// Runs `rows` rows (row r = `row(r)`) at once and one at a time; checks they agree and
/// returns the batched result.
fn batch_agrees(m: &Model, width: usize, rows: usize, row: impl Fn(usize) -> Vec<f32>) -> Vec<f32> {
    let x: Vec<f32> = (0..rows).flat_map(&row).collect();
    let all = run(m, &x, width).unwrap();
    let per = all.len() / rows;
    for r in 0..rows {
        let one = run(m, &row(r), width).unwrap();
        assert_eq!(one, all[r * per..(r + 1) * per], "row {r} alone differs from row {r} of the batch");
    }
    all
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "element {i}: {x} vs {y} ({a:?} vs {b:?})");
    }
}

#[test]
fn transpose_slice_tile_pad() {
    let mut b = ModelBuilder::new("t");
    b.dense_input_shaped("x", &[2, 3]);
    b.tensor_op("tr", "transpose", &["x"], json!({"perm": [1, 0]}), &[3, 2], ValueType::F32);
    b.output("out", "tr");
    let m = model(&b);
    // [[1,2,3],[4,5,6]]ᵀ = [[1,4],[2,5],[3,6]]
    assert_eq!(run(&m, &[1., 2., 3., 4., 5., 6.], 6).unwrap(), [1., 4., 2., 5., 3., 6.]);
    let all = batch_agrees(&m, 6, 5, |r| (0..6).map(|i| (r * 10 + i) as f32).collect());
    assert_eq!(&all[6..12], &[10., 13., 11., 14., 12., 15.]);

    let mut b = ModelBuilder::new("s");
    b.dense_input_shaped("x", &[2, 4]);
    b.tensor_op("sl", "slice", &["x"], json!({"axis": 1, "start": 1, "end": 4, "step": 2}), &[2, 2], ValueType::F32);
    b.output("out", "sl");
    let m = model(&b);
    assert_eq!(run(&m, &[0., 1., 2., 3., 4., 5., 6., 7.], 8).unwrap(), [1., 3., 5., 7.]);
    batch_agrees(&m, 8, 5, |r| (0..8).map(|i| (r * i) as f32).collect());

    let mut b = ModelBuilder::new("tile");
    b.dense_input_shaped("x", &[1, 2]);
    b.tensor_op("t", "tile", &["x"], json!({}), &[2, 4], ValueType::F32);
    b.output("out", "t");
    let m = model(&b);
    assert_eq!(run(&m, &[1., 2.], 2).unwrap(), [1., 2., 1., 2., 1., 2., 1., 2.]);
    batch_agrees(&m, 2, 5, |r| vec![r as f32, -(r as f32)]);

    let mut b = ModelBuilder::new("pad");
    b.dense_input_shaped("x", &[2, 2]);
    b.tensor_op("p", "pad", &["x"], json!({"pads": [1, 0, 0, 1], "value": 9.0}), &[3, 3], ValueType::F32);
    b.output("out", "p");
    let m = model(&b);
    // [[9,9,9],[1,2,9],[3,4,9]]
    assert_eq!(run(&m, &[1., 2., 3., 4.], 4).unwrap(), [9., 9., 9., 1., 2., 9., 3., 4., 9.]);
    batch_agrees(&m, 4, 5, |r| vec![r as f32; 4]);
}

#[test]
fn binary_broadcasting_and_where() {
    let mut b = ModelBuilder::new("bin");
    b.dense_input_shaped("x", &[2, 3]);
    b.constant("row", &[3], ConstValues::F32(vec![1., 2., 3.]));
    b.constant("col", &[2, 1], ConstValues::F32(vec![10., 100.]));
    b.tensor_op("d", "sub", &["x", "row"], json!({}), &[2, 3], ValueType::F32);
    b.tensor_op("m", "mul", &["d", "col"], json!({}), &[2, 3], ValueType::F32);
    b.tensor_op("gt", "greater", &["m", "row"], json!({}), &[2, 3], ValueType::F32);
    b.constant("zero", &[1], ConstValues::F32(vec![0.]));
    b.tensor_op("w", "where", &["gt", "m", "zero"], json!({}), &[2, 3], ValueType::F32);
    b.output("out", "w");
    let m = model(&b);
    // x = [[1,5,3],[0,2,9]]; d = x - [1,2,3] = [[0,3,0],[-1,0,6]]; m = d * [[10],[100]] =
    // [[0,30,0],[-100,0,600]]; m > [1,2,3] = [[0,1,0],[0,0,1]]; where → [[0,30,0],[0,0,600]].
    assert_eq!(run(&m, &[1., 5., 3., 0., 2., 9.], 6).unwrap(), [0., 30., 0., 0., 0., 600.]);
    batch_agrees(&m, 6, 5, |r| (0..6).map(|i| (i as f32 - r as f32) * 1.5).collect());

    // Same-shape value × value takes the fast elementwise step.
    let mut b = ModelBuilder::new("fast");
    b.dense_input_shaped("x", &[2, 2]);
    b.tensor_op("n", "neg", &["x"], json!({}), &[2, 2], ValueType::F32);
    b.tensor_op("a", "add", &["x", "n"], json!({}), &[2, 2], ValueType::F32);
    b.tensor_op("p", "mul", &["x", "x"], json!({}), &[2, 2], ValueType::F32);
    b.tensor_op("s", "add", &["a", "p"], json!({}), &[2, 2], ValueType::F32);
    b.output("out", "s");
    let m = model(&b);
    assert_eq!(run(&m, &[1., -2., 3., 0.5], 4).unwrap(), [1., 4., 9., 0.25]);
}

#[test]
fn unary_cast_and_i64_arithmetic() {
    let mut b = ModelBuilder::new("u");
    b.dense_input_shaped("x", &[4]);
    b.tensor_op("e", "erf", &["x"], json!({}), &[4], ValueType::F32);
    b.output("out", "e");
    let m = model(&b);
    let x = [0.0f32, 0.5, -1.0, 2.0];
    // erf values from tables: erf(0.5) = 0.5204999, erf(1) = 0.8427008, erf(2) = 0.9953223.
    close(&run(&m, &x, 4).unwrap(), &[0.0, 0.520_499_9, -0.842_700_8, 0.995_322_3], 1e-6);

    let mut b = ModelBuilder::new("clip");
    b.dense_input_shaped("x", &[4]);
    b.tensor_op("c", "clip", &["x"], json!({"min": -0.5, "max": 1.0}), &[4], ValueType::F32);
    b.tensor_op("s", "sqrt", &["c"], json!({}), &[4], ValueType::F32);
    b.output("out", "s");
    let m = model(&b);
    let y = run(&m, &[0.25, 4.0, 0.0, 0.64], 4).unwrap();
    close(&y, &[0.5, 1.0, 0.0, 0.8], 1e-6);

    // f32 → i64 truncates toward zero; i64 abs, add, div; i64 output read as f32.
    let mut b = ModelBuilder::new("i64");
    b.dense_input_shaped("x", &[3]);
    b.tensor_op("i", "cast", &["x"], json!({"to": "i64"}), &[3], ValueType::I64);
    b.tensor_op("a", "abs", &["i"], json!({}), &[3], ValueType::I64);
    b.constant("k", &[1], ConstValues::I64(vec![3]));
    b.tensor_op("s", "add", &["a", "k"], json!({}), &[3], ValueType::I64);
    b.constant("two", &[3], ConstValues::I64(vec![2, 2, -2]));
    b.tensor_op("d", "div", &["s", "two"], json!({}), &[3], ValueType::I64);
    b.tensor_op("f", "cast", &["d"], json!({"to": "f32"}), &[3], ValueType::F32);
    b.output("out", "f");
    let m = model(&b);
    // cast [-2.7, 5.9, 0.3] = [-2, 5, 0]; abs = [2, 5, 0]; +3 = [5, 8, 3]; / [2,2,-2] = [2, 4, -1].
    assert_eq!(run(&m, &[-2.7, 5.9, 0.3], 3).unwrap(), [2., 4., -1.]);
    batch_agrees(&m, 3, 5, |r| vec![r as f32 * 1.3, -(r as f32), 7.5]);

    let mut b = ModelBuilder::new("div0");
    b.dense_input_shaped("x", &[2]);
    b.tensor_op("i", "cast", &["x"], json!({"to": "i64"}), &[2], ValueType::I64);
    b.constant("one", &[2], ConstValues::I64(vec![10, 10]));
    b.tensor_op("d", "div", &["one", "i"], json!({}), &[2], ValueType::I64);
    b.tensor_op("f", "cast", &["d"], json!({"to": "f32"}), &[2], ValueType::F32);
    b.output("out", "f");
    let m = model(&b);
    assert_eq!(run(&m, &[2.0, 5.0], 2).unwrap(), [5., 2.]);
    assert!(run(&m, &[2.0, 0.5], 2).is_err(), "i64 division by zero is an error");
}

#[test]
fn gather_and_embedding_from_cast_ids() {
    let mut b = ModelBuilder::new("g");
    b.dense_input_shaped("x", &[3, 2]);
    b.constant("idx", &[2], ConstValues::I64(vec![2, -3]));
    b.tensor_op("g", "gather", &["x", "idx"], json!({"axis": 0}), &[2, 2], ValueType::F32);
    b.output("out", "g");
    let m = model(&b);
    // rows 2 and -3 (= 0) of [[1,2],[3,4],[5,6]]
    assert_eq!(run(&m, &[1., 2., 3., 4., 5., 6.], 6).unwrap(), [5., 6., 1., 2.]);
    batch_agrees(&m, 6, 5, |r| (0..6).map(|i| (r + i) as f32).collect());

    // Float-packed ids → cast → gather along axis 1 of a constant, with range checks.
    let mut b = ModelBuilder::new("g2");
    b.dense_input_shaped("x", &[2]);
    b.tensor_op("i", "cast", &["x"], json!({"to": "i64"}), &[2], ValueType::I64);
    b.constant("data", &[2, 3], ConstValues::F32(vec![0., 1., 2., 10., 11., 12.]));
    b.tensor_op("g", "gather", &["data", "i"], json!({"axis": 1}), &[2, 2], ValueType::F32);
    b.output("out", "g");
    let m = model(&b);
    assert_eq!(run(&m, &[2.0, -1.0], 2).unwrap(), [2., 2., 12., 12.]);
    assert_eq!(run(&m, &[1.0, 0.0, 0.0, 2.0], 2).unwrap(), [1., 0., 11., 10., 0., 2., 10., 12.]);
    match run(&m, &[0.0, 0.0, 1.0, 3.0], 2) {
        Err(Error::IndexOutOfRange { node, row: 1, index: 3, bound: 3 }) => assert_eq!(node, "g"),
        other => panic!("expected IndexOutOfRange, got {other:?}"),
    }
    assert!(matches!(run(&m, &[-4.0, 0.0], 2), Err(Error::IndexOutOfRange { index: -4, .. })));

    // Embedding of cast ids: one table row per id.
    let mut b = ModelBuilder::new("e");
    b.dense_input_shaped("x", &[3]);
    b.tensor_op("i", "cast", &["x"], json!({"to": "i64"}), &[3], ValueType::I64);
    let table = Matrix::new(4, 2, vec![0., 0.5, 1., 1.5, 2., 2.5, 3., 3.5]);
    b.embedding("emb", "i", table, &[3, 2]);
    b.output("out", "emb");
    let m = model(&b);
    assert_eq!(run(&m, &[3.0, 0.0, 1.9], 3).unwrap(), [3., 3.5, 0., 0.5, 1., 1.5]);
    batch_agrees(&m, 3, 5, |r| vec![(r % 4) as f32, ((r + 1) % 4) as f32, 0.0]);
    assert!(matches!(run(&m, &[0.0, 4.0, 0.0], 3), Err(Error::IdOutOfRange { id: 4, position: 1, rows: 4, .. })));
    assert!(matches!(run(&m, &[0.0, 0.0, -1.0], 3), Err(Error::IdOutOfRange { id: -1, .. })));

    // Embedding bag over computed ids (one bag per row).
    let mut b = ModelBuilder::new("bag");
    b.dense_input_shaped("x", &[1, 3]);
    b.tensor_op("i", "cast", &["x"], json!({"to": "i64"}), &[1, 3], ValueType::I64);
    let table = Matrix::new(4, 2, vec![0., 0.5, 1., 1.5, 2., 2.5, 3., 3.5]);
    b.embedding_bag("bag", &["i"], table, BagMode::Sum);
    b.output("out", "bag");
    let m = model(&b);
    assert_eq!(run(&m, &[1.0, 2.0, 2.0], 3).unwrap(), [5., 6.5]);
    batch_agrees(&m, 3, 5, |r| vec![(r % 4) as f32, 3.0, 0.0]);
    assert!(matches!(run(&m, &[1.0, 2.0, 9.0], 3), Err(Error::IdOutOfRange { id: 9, .. })));
}

#[test]
fn reductions_softmax_topk() {
    let mut b = ModelBuilder::new("r");
    b.dense_input_shaped("x", &[2, 3]);
    b.tensor_op("s", "reduce", &["x"], json!({"reduce": "sum", "axes": [1], "keepdims": false}), &[2], ValueType::F32);
    b.tensor_op(
        "mx",
        "reduce",
        &["x"],
        json!({"reduce": "max", "axes": [0], "keepdims": true}),
        &[1, 3],
        ValueType::F32,
    );
    b.tensor_op(
        "mn",
        "reduce",
        &["x"],
        json!({"reduce": "mean", "axes": [0, 1], "keepdims": false}),
        &[],
        ValueType::F32,
    );
    b.tensor_op("l2", "reduce", &["x"], json!({"reduce": "l2", "axes": [0], "keepdims": false}), &[3], ValueType::F32);
    b.tensor_op("c", "concat", &["s", "l2"], json!({"axis": 0}), &[5], ValueType::F32);
    b.output("out", "c");
    b.output("mx", "mx");
    b.output("mn", "mn");
    let m = model(&b);
    let x = [1., -2., 3., 4., 0., -6.];
    // sums per row [2, -2]; l2 per column [√17, 2, √45]; max per column [4, 0, 3]; mean 0.
    close(&run(&m, &x, 6).unwrap(), &[2., -2., 17f32.sqrt(), 2., 45f32.sqrt()], 1e-6);
    let mut s = session(&m);
    let out = s.run(&[Input::dense("x", &x, 6)]).unwrap();
    assert_eq!(out.get("mx").unwrap(), [4., 0., 3.]);
    assert_eq!(out.get("mn").unwrap(), [0.]);
    batch_agrees(&m, 6, 5, |r| (0..6).map(|i| ((r * 7 + i * 3) % 5) as f32 - 2.0).collect());

    // Softmax along a strided axis (0) and log-softmax along the last, against naive loops.
    let mut b = ModelBuilder::new("sm");
    b.dense_input_shaped("x", &[2, 3]);
    b.tensor_op("a", "softmax", &["x"], json!({"axis": 0}), &[2, 3], ValueType::F32);
    b.tensor_op("l", "log_softmax", &["x"], json!({"axis": 1}), &[2, 3], ValueType::F32);
    b.tensor_op("c", "concat", &["a", "l"], json!({"axis": 0}), &[4, 3], ValueType::F32);
    b.output("out", "c");
    let m = model(&b);
    let x = [1.0f32, 2.0, 3.0, 2.0, 0.0, 90.0];
    let mut want = vec![0.0f32; 12];
    for c in 0..3 {
        let (a, bb) = (x[c] as f64, x[3 + c] as f64);
        let mx = a.max(bb);
        let z = (a - mx).exp() + (bb - mx).exp();
        want[c] = ((a - mx).exp() / z) as f32;
        want[3 + c] = ((bb - mx).exp() / z) as f32;
    }
    for r in 0..2 {
        let row: Vec<f64> = x[r * 3..r * 3 + 3].iter().map(|&v| v as f64).collect();
        let mx = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = mx + row.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
        for c in 0..3 {
            want[6 + r * 3 + c] = (row[c] - lse) as f32;
        }
    }
    close(&run(&m, &x, 6).unwrap(), &want, 1e-5);
    batch_agrees(&m, 6, 5, |r| (0..6).map(|i| (r as f32 - i as f32) * 0.7).collect());

    // Top-k values and indices (ties: lower index first).
    let mut b = ModelBuilder::new("topk");
    b.dense_input_shaped("x", &[5]);
    b.tensor_op("v", "topk", &["x"], json!({"axis": 0, "k": 3, "largest": true}), &[3], ValueType::F32);
    b.tensor_op(
        "i",
        "topk",
        &["x"],
        json!({"axis": 0, "k": 3, "largest": true, "output": "indices"}),
        &[3],
        ValueType::I64,
    );
    b.tensor_op(
        "s",
        "topk",
        &["x"],
        json!({"axis": 0, "k": 2, "largest": false, "output": "indices"}),
        &[2],
        ValueType::I64,
    );
    b.tensor_op("fi", "cast", &["i"], json!({"to": "f32"}), &[3], ValueType::F32);
    b.tensor_op("fs", "cast", &["s"], json!({"to": "f32"}), &[2], ValueType::F32);
    b.output("out", "v");
    b.output("idx", "fi");
    b.output("small", "fs");
    let m = model(&b);
    let x = [3.0, 7.0, 3.0, 7.0, -1.0];
    let mut s = session(&m);
    let out = s.run(&[Input::dense("x", &x, 5)]).unwrap();
    assert_eq!(out.get("out").unwrap(), [7., 7., 3.]);
    assert_eq!(out.get("idx").unwrap(), [1., 3., 0.]);
    assert_eq!(out.get("small").unwrap(), [4., 0.]);
    batch_agrees(&m, 5, 5, |r| (0..5).map(|i| ((r * 3 + i * 2) % 4) as f32).collect());
}

#[test]
fn matmul_value_value_and_const() {
    let mut b = ModelBuilder::new("mm");
    b.dense_input_shaped("x", &[2, 3]);
    b.tensor_op("t", "transpose", &["x"], json!({"perm": [1, 0]}), &[3, 2], ValueType::F32);
    b.tensor_op("g", "matmul", &["x", "t"], json!({}), &[2, 2], ValueType::F32);
    b.constant("w", &[3, 1], ConstValues::F32(vec![1., 0., -1.]));
    b.tensor_op("p", "matmul", &["x", "w"], json!({}), &[2, 1], ValueType::F32);
    b.tensor_op("c", "concat", &["g", "p"], json!({"axis": 1}), &[2, 3], ValueType::F32);
    b.output("out", "c");
    let m = model(&b);
    let x = [1., 2., 3., 4., 5., 6.];
    // x·xᵀ = [[14, 32], [32, 77]]; x·[1,0,-1]ᵀ = [-2, -2].
    assert_eq!(run(&m, &x, 6).unwrap(), [14., 32., -2., 32., 77., -2.]);
    batch_agrees(&m, 6, 5, |r| (0..6).map(|i| (r + i) as f32 * 0.5).collect());

    // Batched with broadcast leading dims: [2, 2, 2] × [2, 1] (constant) and a wider
    // product checked against a naive loop (exercises the vector kernel's full blocks).
    let mut b = ModelBuilder::new("mm3");
    b.dense_input_shaped("x", &[2, 2, 2]);
    b.constant("w", &[1, 2, 1], ConstValues::F32(vec![1., 10.]));
    b.tensor_op("p", "matmul", &["x", "w"], json!({}), &[2, 2, 1], ValueType::F32);
    b.output("out", "p");
    let m = model(&b);
    assert_eq!(run(&m, &[1., 2., 3., 4., 5., 6., 7., 8.], 8).unwrap(), [21., 43., 65., 87.]);

    let (mm, k, n) = (3usize, 5usize, 41usize);
    let wv: Vec<f32> = (0..k * n).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
    let mut b = ModelBuilder::new("mmw");
    b.dense_input_shaped("x", &[mm, k]);
    b.constant("w", &[k, n], ConstValues::F32(wv.clone()));
    b.tensor_op("p", "matmul", &["x", "w"], json!({}), &[mm, n], ValueType::F32);
    b.output("out", "p");
    let m = model(&b);
    let xv: Vec<f32> = (0..mm * k).map(|i| ((i * 3) % 7) as f32 * 0.5 - 1.0).collect();
    let mut want = vec![0.0f32; mm * n];
    for i in 0..mm {
        for j in 0..n {
            want[i * n + j] = (0..k).map(|p| xv[i * k + p] as f64 * wv[p * n + j] as f64).sum::<f64>() as f32;
        }
    }
    close(&run(&m, &xv, mm * k).unwrap(), &want, 1e-5);
}

#[test]
fn conv_1d_and_grouped_2d() {
    // 1-d: one channel of 5, kernel 3, pads (1, 1), stride 2 → 3 outputs.
    let mut b = ModelBuilder::new("c1");
    b.dense_input_shaped("x", &[1, 5]);
    let attrs = json!({"kernel": [3], "strides": [2], "pads": [1, 1], "dilations": [1], "group": 1});
    b.conv("conv", "x", Matrix::new(1, 3, vec![1., 2., 3.]), Some(vec![0.5]), attrs, &[1, 3]);
    b.output("out", "conv");
    let m = model(&b);
    // padded x = [0,1,2,3,4,5,0]; windows at 0, 2, 4: [0,1,2]·[1,2,3] = 8, [2,3,4] = 20,
    // [4,5,0] = 14; + 0.5.
    assert_eq!(run(&m, &[1., 2., 3., 4., 5.], 5).unwrap(), [8.5, 20.5, 14.5]);
    batch_agrees(&m, 5, 5, |r| (0..5).map(|i| (r * i) as f32 - 2.0).collect());

    // 2-d, 2 groups of 1 channel, 3×3 input, 2×2 kernel, dilation 1, no padding.
    let mut b = ModelBuilder::new("c2");
    b.dense_input_shaped("x", &[2, 3, 3]);
    let attrs = json!({"kernel": [2, 2], "strides": [1, 1], "pads": [0, 0, 0, 0], "dilations": [1, 1], "group": 2});
    let w = Matrix::new(2, 4, vec![1., 0., 0., 1., 0., 1., 1., 0.]);
    b.conv("conv", "x", w, None, attrs, &[2, 2, 2]);
    b.output("out", "conv");
    let m = model(&b);
    let x: Vec<f32> = (0..18).map(|i| i as f32).collect();
    // naive reference
    let mut want = vec![0.0f32; 8];
    let wv = [[1., 0., 0., 1.], [0., 1., 1., 0.]];
    for o in 0..2 {
        for i in 0..2 {
            for j in 0..2 {
                let mut acc = 0.0;
                for di in 0..2 {
                    for dj in 0..2 {
                        acc += wv[o][di * 2 + dj] * x[o * 9 + (i + di) * 3 + (j + dj)];
                    }
                }
                want[o * 4 + i * 2 + j] = acc;
            }
        }
    }
    assert_eq!(run(&m, &x, 18).unwrap(), want);
    batch_agrees(&m, 18, 5, |r| (0..18).map(|i| ((r + i) % 5) as f32).collect());
}

#[test]
fn concat_axes_and_reshape_alias() {
    for (axis, shape, want) in [
        (0usize, [4usize, 3usize], vec![1., 2., 3., 4., 5., 6., -1., -2., -3., -4., -5., -6.]),
        (1, [2, 6], vec![1., 2., 3., -1., -2., -3., 4., 5., 6., -4., -5., -6.]),
    ] {
        let mut b = ModelBuilder::new("cat");
        b.dense_input_shaped("x", &[2, 3]);
        b.tensor_op("a", "abs", &["x"], json!({}), &[2, 3], ValueType::F32);
        b.tensor_op("n0", "abs", &["x"], json!({}), &[2, 3], ValueType::F32);
        b.tensor_op("n", "neg", &["n0"], json!({}), &[2, 3], ValueType::F32);
        b.tensor_op("c", "concat", &["a", "n"], json!({"axis": axis}), &shape, ValueType::F32);
        b.output("out", "c");
        let m = model(&b);
        assert_eq!(run(&m, &[1., -2., 3., -4., 5., -6.], 6).unwrap(), want, "axis {axis}");
        batch_agrees(&m, 6, 5, |r| (0..6).map(|i| (r * 6 + i) as f32).collect());
        let plan = session(&m).describe();
        let copies = plan.iter().filter(|l| l.starts_with("copy")).count();
        if axis == 0 {
            assert_eq!(copies, 0, "axis-0 concat of whole rows is elided: {plan:?}");
        } else {
            assert_eq!(copies, 2, "axis-1 concat copies each part: {plan:?}");
        }
    }

    // A reshape of a node costs nothing: no step at all.
    let mut b = ModelBuilder::new("rs");
    b.dense_input_shaped("x", &[2, 3]);
    b.tensor_op("n", "neg", &["x"], json!({}), &[2, 3], ValueType::F32);
    b.tensor_op("r", "reshape", &["n"], json!({}), &[3, 2], ValueType::F32);
    b.tensor_op("s", "softmax", &["r"], json!({"axis": 1}), &[3, 2], ValueType::F32);
    b.output("out", "s");
    b.output("flat", "r");
    let m = model(&b);
    let plan = session(&m).describe();
    assert_eq!(plan.len(), 3, "header, neg, softmax: {plan:?}");
    assert!(plan.iter().all(|l| !l.contains("copy") && !l.contains("reshape")), "{plan:?}");
    let x = [0., 0., 1., -1., 2., 2.];
    let y = run(&m, &x, 6).unwrap();
    // rows of the reshaped negation: [0,0], [-1,1], [-2,-2]
    let e = (2.0f64).exp();
    close(&y, &[0.5, 0.5, (1.0 / (1.0 + e)) as f32, (e / (1.0 + e)) as f32, 0.5, 0.5], 1e-6);
    let mut s = session(&m);
    assert_eq!(s.run(&[Input::dense("x", &x, 6)]).unwrap().get("flat").unwrap(), [-0., -0., -1., 1., -2., -2.]);
}

#[test]
fn linear_and_layer_norm_over_last_axis() {
    let mut b = ModelBuilder::new("lin");
    b.dense_input_shaped("x", &[2, 3]);
    let w = Matrix::new(2, 3, vec![1., 0., -1., 0.5, 0.5, 0.5]);
    b.linear_shaped("fc", "x", w, Some(vec![0., 1.]), &[2, 2]);
    b.layer_norm_shaped("ln", "fc", vec![1., 2.], Some(vec![0., 1.]), 0.0, &[2, 2]);
    b.output("out", "ln");
    b.output("fc", "fc");
    let m = model(&b);
    let x = [1., 2., 3., 4., 6., 8.];
    let mut s = session(&m);
    let out = s.run(&[Input::dense("x", &x, 6)]).unwrap();
    // token 0: [1-3, 3+1] = [-2, 4]; token 1: [4-8, 9+1] = [-4, 10]
    assert_eq!(out.get("fc").unwrap(), [-2., 4., -4., 10.]);
    // normalizing two values gives [-1, 1]; × gamma [1, 2] + beta [0, 1] = [-1, 3]
    close(out.get("out").unwrap(), &[-1., 3., -1., 3.], 1e-6);
    batch_agrees(&m, 6, 5, |r| (0..6).map(|i| (r * 2 + i * i) as f32).collect());
}

#[test]
fn high_rank_is_refused() {
    let mut b = ModelBuilder::new("rank");
    b.dense_input_shaped("x", &[1; 9]);
    b.tensor_op("n", "neg", &["x"], json!({}), &[1; 9], ValueType::F32);
    b.output("out", "n");
    let m = model(&b);
    let e = Session::new(&m, SessionOptions::default()).unwrap_err();
    assert!(matches!(e, Error::Unplannable { .. }), "{e:?}");
}

#[test]
fn same_shape_constant_operand() {
    let mut b = ModelBuilder::new("cadd");
    b.dense_input_shaped("x", &[2, 2]);
    b.constant("c", &[2, 2], ConstValues::F32(vec![1., 2., 3., 4.]));
    b.tensor_op("a", "add", &["x", "c"], json!({}), &[2, 2], ValueType::F32);
    b.tensor_op("m", "mul", &["c", "a"], json!({}), &[2, 2], ValueType::F32);
    b.output("out", "m");
    let m = model(&b);
    // (x + c) ⊙ c with x = [1, 1, 0, -1]: [2·1, 3·2, 3·3, 3·4]
    assert_eq!(run(&m, &[1., 1., 0., -1.], 4).unwrap(), [2., 6., 9., 12.]);
    batch_agrees(&m, 4, 5, |r| vec![r as f32; 4]);
}

#[test]
fn adapters_refuse_i64_nodes_and_see_tokens_of_multi_vector_linears() {
    use graft::adapters::{Registry, RowAdapters};
    use graft::synthetic::kinds::{SsfPoolSpec, write_ssf_pool};
    use graft::synthetic::lora::{LoraSpec, write_peft_lora};

    // The same linear over 2 vectors per row, and over 1: a LoRA on it must act on each
    // vector as on a row of its own.
    let build = |tokens: usize| {
        let mut b = ModelBuilder::new("ad");
        b.dense_input_shaped("x", &[tokens, 3]);
        b.tensor_op("ids", "cast", &["x"], json!({"to": "i64"}), &[tokens, 3], ValueType::I64);
        b.tensor_op("back", "cast", &["ids"], json!({"to": "f32"}), &[tokens, 3], ValueType::F32);
        b.linear_shaped("fc", "back", Matrix::new(2, 3, vec![1., -1., 0.5, 0.25, 2., -3.]), None, &[tokens, 2]);
        b.output("out", "fc");
        model(&b)
    };
    let (m2, m1) = (build(2), build(1));
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tensor_ops_adapters");
    let spec = LoraSpec::every_linear(2, 1);
    write_peft_lora(&m2, &dir.join("lora2"), &spec).unwrap();
    write_peft_lora(&m1, &dir.join("lora1"), &spec).unwrap();
    let (r2, r1) = (Registry::new(&m2), Registry::new(&m1));
    r2.insert(r2.load_peft("lora", dir.join("lora2")).unwrap()).unwrap();
    r1.insert(r1.load_peft("lora", dir.join("lora1")).unwrap()).unwrap();
    let x = [1., 2., 3., -4., 0., 7., 5., 5., -1., 2., 2., 2.];
    let mut s2 = session(&m2);
    let (with, base) = {
        let rows = RowAdapters::all(&r2, "lora").unwrap();
        let with = s2.run_with(&[Input::dense("x", &x, 6)], &rows).unwrap().get("out").unwrap().to_vec();
        (with, s2.run(&[Input::dense("x", &x, 6)]).unwrap().get("out").unwrap().to_vec())
    };
    let mut s1 = session(&m1);
    let rows1 = RowAdapters::all(&r1, "lora").unwrap();
    let per_token = s1.run_with(&[Input::dense("x", &x, 3)], &rows1).unwrap().get("out").unwrap().to_vec();
    assert_ne!(with, base, "the LoRA changes the output");
    close(&with, &per_token, 1e-6);

    let spec = SsfPoolSpec { query: "x", sites: &["ids"], pool: 2, top_k: 1, strength: 0.1, seed: 1 };
    write_ssf_pool(&m2, &dir.join("pool.safetensors"), &spec).unwrap();
    let e = r2.load_path("pool", dir.join("pool.safetensors"), "").unwrap_err();
    assert!(matches!(e, Error::Adapter { .. }) && e.to_string().contains("i64"), "{e}");
}

/// Row-major multi-index of flat `i` in `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for a in (0..shape.len()).rev() {
        idx[a] = i % shape[a];
        i /= shape[a];
    }
    idx
}

fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
}

#[test]
fn broadcasting_and_permutations_against_naive_loops() {
    let cases: [(&[usize], &[usize]); 6] = [
        (&[2, 3, 4], &[4]),
        (&[2, 1, 4], &[3, 1]),
        (&[1, 3, 1], &[2, 1, 5]),
        (&[2, 3, 4], &[2, 3, 4]),
        (&[5], &[2, 1]),
        (&[2, 2, 1, 3], &[1, 2, 3, 1]),
    ];
    for (sa, sb) in cases {
        let rank = sa.len().max(sb.len());
        let pad =
            |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, rank - s.len()).chain(s.iter().copied()).collect() };
        let (pa, pb) = (pad(sa), pad(sb));
        let out: Vec<usize> = pa.iter().zip(&pb).map(|(&a, &b)| a.max(b)).collect();
        let (na, nb, no) = (sa.iter().product::<usize>(), sb.iter().product::<usize>(), out.iter().product::<usize>());
        let bv: Vec<f32> = (0..nb).map(|i| i as f32 * 0.5 - 1.0).collect();
        let mut b = ModelBuilder::new("bc");
        b.dense_input_shaped("x", sa);
        b.constant("c", sb, ConstValues::F32(bv.clone()));
        b.tensor_op("s", "sub", &["x", "c"], json!({}), &out, ValueType::F32);
        b.tensor_op("m", "max", &["c", "s"], json!({}), &out, ValueType::F32);
        b.output("out", "m");
        let m = model(&b);
        let row = |r: usize| -> Vec<f32> { (0..na).map(|i| ((i * 7 + r * 3) % 11) as f32 - 4.0).collect() };
        let got = batch_agrees(&m, na, 5, row);
        for r in 0..5 {
            let xv = row(r);
            for o in 0..no {
                let idx = unravel(o, &out);
                let ia: Vec<usize> = idx.iter().zip(&pa).map(|(&i, &d)| if d == 1 { 0 } else { i }).collect();
                let ib: Vec<usize> = idx.iter().zip(&pb).map(|(&i, &d)| if d == 1 { 0 } else { i }).collect();
                let (a, c) = (xv[ravel(&ia, &pa)], bv[ravel(&ib, &pb)]);
                assert_eq!(got[r * no + o], c.max(a - c), "{sa:?} vs {sb:?} at {idx:?}");
            }
        }
    }

    for (shape, perm) in [
        (vec![2, 3, 4], vec![2, 0, 1]),
        (vec![2, 3, 4], vec![0, 2, 1]),
        (vec![2, 1, 3, 2], vec![3, 1, 0, 2]),
        (vec![4, 1, 1], vec![1, 2, 0]),
    ] {
        let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let n: usize = shape.iter().product();
        let mut b = ModelBuilder::new("perm");
        b.dense_input_shaped("x", &shape);
        b.tensor_op("t", "transpose", &["x"], json!({"perm": perm}), &out, ValueType::F32);
        b.output("out", "t");
        let m = model(&b);
        let got = batch_agrees(&m, n, 5, |r| (0..n).map(|i| (i * 10 + r) as f32).collect());
        for r in 0..5 {
            for o in 0..n {
                let idx = unravel(o, &out);
                let mut src = vec![0; shape.len()];
                for (i, &p) in perm.iter().enumerate() {
                    src[p] = idx[i];
                }
                assert_eq!(got[r * n + o], (ravel(&src, &shape) * 10 + r) as f32, "{shape:?} {perm:?}");
            }
        }
    }
}

#[test]
fn strided_reductions_and_softmax_against_naive_loops() {
    let shape = [2usize, 3, 4];
    let mut b = ModelBuilder::new("red");
    b.dense_input_shaped("x", &shape);
    b.tensor_op(
        "s",
        "reduce",
        &["x"],
        json!({"reduce": "sum", "axes": [0, 2], "keepdims": true}),
        &[1, 3, 1],
        ValueType::F32,
    );
    b.tensor_op("sm", "softmax", &["x"], json!({"axis": 1}), &shape, ValueType::F32);
    b.tensor_op("f", "reshape", &["s"], json!({}), &[3], ValueType::F32);
    b.tensor_op("g", "reshape", &["sm"], json!({}), &[24], ValueType::F32);
    b.tensor_op("c", "concat", &["f", "g"], json!({"axis": 0}), &[27], ValueType::F32);
    b.output("out", "c");
    let m = model(&b);
    let row = |r: usize| -> Vec<f32> { (0..24).map(|i| ((i * 5 + r) % 9) as f32 * 0.25).collect() };
    let got = batch_agrees(&m, 24, 5, row);
    for r in 0..5 {
        let x = row(r);
        let at = |i: usize, j: usize, k: usize| x[(i * 3 + j) * 4 + k] as f64;
        let mut want = vec![0.0f64; 27];
        for (j, w) in want.iter_mut().take(3).enumerate() {
            *w = (0..2).flat_map(|i| (0..4).map(move |k| (i, k))).map(|(i, k)| at(i, j, k)).sum();
        }
        for i in 0..2 {
            for k in 0..4 {
                let z: f64 = (0..3).map(|j| at(i, j, k).exp()).sum();
                for j in 0..3 {
                    want[3 + (i * 3 + j) * 4 + k] = at(i, j, k).exp() / z;
                }
            }
        }
        let want: Vec<f32> = want.iter().map(|&v| v as f32).collect();
        close(&got[r * 27..(r + 1) * 27], &want, 1e-5);
    }
}
