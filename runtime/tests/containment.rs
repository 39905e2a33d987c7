//! Issue 15's engine guarantees (README "Reliability"): non-finite parameters are refused
//! at open naming the tensor; a finite input that overflows inside the model becomes a
//! typed per-row error while the other rows stay valid; sizes from the model or the
//! options that cannot be met are typed errors, not aborts; a 200 k-node chain opens,
//! plans and runs (the planner used to be quadratic in the number of buffers).

#![allow(clippy::unwrap_used)]

use graft::builder::{ConstValues, Matrix, ModelBuilder, WeightFormats};
use graft::container::parse_envelope;
use graft::graph::Activation;
use graft::synthetic::GraphInputs;
use graft::{DType, Error, Input, Model, NanPolicy, Session, SessionOptions, WeightFormat};

/// `y = x · [4, -4]ᵀ + 0.5`, one output column, weights stored as `format`.
fn difference_model(format: WeightFormat, bias: f32) -> Vec<u8> {
    assert!(bias.is_finite(), "the writer refuses non-finite parameters");
    let mut b = ModelBuilder::new("difference");
    let x = b.dense_input("x", 2);
    let y = b.linear("fc", &x, Matrix::new(1, 2, vec![4.0, -4.0]), Some(vec![bias]));
    b.output("y", &y);
    b.to_bytes(WeightFormats::uniform(format)).unwrap()
}

/// Overwrites element 0 of the first tensor of `dtype` whose name satisfies `pick`.
fn poison(bytes: &mut [u8], dtype: DType, pick: impl Fn(&str) -> bool, value: f32) -> String {
    let env = parse_envelope(bytes).unwrap();
    let t = env.tensors.iter().find(|t| t.dtype == dtype && pick(&t.name)).unwrap();
    let (name, at) = (t.name.clone(), t.offset);
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
    name
}

#[test]
fn non_finite_parameters_are_refused_at_open_naming_the_tensor() {
    // A NaN bias in an f32 model (the writer refuses one, so the file is patched).
    let mut bytes = difference_model(WeightFormat::F32, 0.5);
    assert!(Model::from_slice_copy(&bytes).is_ok());
    let name = poison(&mut bytes, DType::F32, |n| n == "fc.bias", f32::NAN);
    let e = Model::from_slice_copy(&bytes).unwrap_err();
    match e.root() {
        Error::NonFiniteParameter { tensor, detail } => {
            assert!(*tensor == name && detail.contains("element 0 is NaN"), "{e}")
        }
        other => panic!("expected NonFiniteParameter, got {other}"),
    }
    // An Inf in the f32 side tensors of a q8 model (its row scales): the only float
    // tensors a q8 linear has besides the bias.
    let mut bytes = difference_model(WeightFormat::Q8, 0.5);
    assert!(Model::from_slice_copy(&bytes).is_ok());
    let bias = parse_envelope(&bytes)
        .unwrap()
        .tensors
        .iter()
        .find(|t| t.dtype == DType::F32 && t.elements() == 1 && t.name.contains("bias"))
        .map(|t| t.name.clone());
    let name = poison(&mut bytes, DType::F32, |n| Some(n) != bias.as_deref(), f32::INFINITY);
    let e = Model::from_slice_copy(&bytes).unwrap_err();
    assert!(
        matches!(e.root(), Error::NonFiniteParameter { tensor, detail } if *tensor == name && detail.contains("+Inf")),
        "{e}"
    );
}

#[test]
fn constants_may_be_infinite_but_not_nan_and_q4_scales_are_checked() {
    // `y = x + mask`: an attention-style mask constant may hold -Inf (imported
    // transformers use one), never NaN.
    let mut b = ModelBuilder::new("masked");
    let x = b.dense_input("x", 2);
    let mask = b.constant("mask", &[2], ConstValues::F32(vec![0.0, 0.0]));
    let y = b.add("y", &x, &mask);
    b.output("y", &y);
    let clean = b.to_bytes(WeightFormats::default()).unwrap();
    let mut bytes = clean.clone();
    poison(&mut bytes, DType::F32, |n| n == "mask", f32::NEG_INFINITY);
    let model = Model::from_slice_copy(&bytes).unwrap();
    let mut s = Session::new(&model, SessionOptions { max_batch: 1, ..Default::default() }).unwrap();
    let out = s.run(&[Input::dense("x", &[1.0, 2.0], 2)]).unwrap();
    // A -Inf output from a -Inf constant is a fault of that row, as any non-finite output.
    assert_eq!(out.row_faults().len(), 1);
    let mut bytes = clean;
    poison(&mut bytes, DType::F32, |n| n == "mask", f32::NAN);
    let e = Model::from_slice_copy(&bytes).unwrap_err();
    assert!(matches!(e.root(), Error::NonFiniteParameter { tensor, .. } if tensor == "mask"), "{e}");

    // q4: each 18-byte block starts with its f16 scale; 0x7c00 is +Inf.
    let mut bytes = difference_model(WeightFormat::Q4, 0.5);
    assert!(Model::from_slice_copy(&bytes).is_ok());
    let env = parse_envelope(&bytes).unwrap();
    let t = env.tensors.iter().find(|t| t.dtype == DType::U8 && t.name.starts_with("fc")).unwrap();
    let (name, at) = (t.name.clone(), t.offset);
    bytes[at..at + 2].copy_from_slice(&0x7c00u16.to_le_bytes());
    let e = Model::from_slice_copy(&bytes).unwrap_err();
    assert!(
        matches!(e.root(), Error::NonFiniteParameter { tensor, detail } if *tensor == name && detail.contains("q4 block 0")),
        "{e}"
    );
}

#[test]
fn an_overflow_inside_the_model_is_a_typed_per_row_error() {
    let model = Model::from_slice_copy(&difference_model(WeightFormat::F32, 0.5)).unwrap();
    // Rows 1 and 3 are finite inputs whose products overflow f32 (4·1e38 = +Inf, and
    // +Inf − Inf = NaN); rows 0 and 2 are ordinary.
    let x = [1.0f32, 2.0, 1e38, -1e38, -0.25, 0.5, 1e38, 1e38];
    let want = [4.0 * 1.0 - 4.0 * 2.0 + 0.5, 4.0 * -0.25 - 4.0 * 0.5 + 0.5];
    let input = [Input::dense("x", &x, 2)];

    let mut s = Session::new(&model, SessionOptions { max_batch: 8, ..Default::default() }).unwrap();
    let out = s.run(&input).unwrap();
    let rows: Vec<usize> = out.row_faults().iter().map(|f| f.row).collect();
    assert_eq!(rows, [1, 3], "{:?}", out.row_faults());
    assert!(out.row_error(0).is_none() && out.row_error(2).is_none());
    match out.row_error(1) {
        Some(Error::NonFiniteOutput { output, row: 1, col: 0, value }) => {
            assert_eq!(output, "y");
            assert!(!value.is_finite());
        }
        other => panic!("row 1: {other:?}"),
    }
    assert!(matches!(out.check(), Err(Error::NonFiniteOutput { row: 1, .. })));
    let y = out.get("y").unwrap();
    assert_eq!([y[0], y[2]], want, "the finite rows are served");

    // `--allow-non-finite` / NanPolicy::Propagate: no check, the values as computed.
    let opts = SessionOptions { max_batch: 8, nan_policy: NanPolicy::Propagate, ..Default::default() };
    let mut s = Session::new(&model, opts).unwrap();
    let out = s.run(&input).unwrap();
    assert!(out.row_faults().is_empty() && out.check().is_ok());
    assert!(!out.get("y").unwrap()[1].is_finite());
}

#[test]
fn sizes_that_cannot_be_met_are_typed_errors() {
    let model = Model::from_slice_copy(&difference_model(WeightFormat::F32, 0.5)).unwrap();
    let session =
        |max_batch, threads| Session::new(&model, SessionOptions { max_batch, threads, ..Default::default() });
    let e = session(4, 100_000).unwrap_err();
    assert!(matches!(e, Error::InvalidOption { ref detail } if detail.contains("100000")), "{e}");
    let e = session(usize::MAX / 2, 1).unwrap_err();
    assert!(matches!(e, Error::InvalidOption { .. } | Error::OutOfMemory { .. }), "{e}");

    // A model declaring a 2^40-wide dense input: 4 TiB of activations per row.
    let mut b = ModelBuilder::new("wide");
    let x = b.dense_input("x", 1 << 40);
    let y = b.activation("act", Activation::Relu, &x);
    b.output("y", &y);
    let wide = Model::from_slice_copy(&b.to_bytes(WeightFormats::default()).unwrap()).unwrap();
    let e = Session::new(&wide, SessionOptions { max_batch: 1, ..Default::default() }).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { .. } | Error::InvalidOption { .. }), "{e}");
    let e = GraphInputs::try_new(wide.graph(), 1, 0).unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { ref what, .. } if what.contains("`x`")), "{e}");
}

#[test]
fn a_200k_node_chain_opens_plans_and_runs() {
    // Alternating ReLU and sigmoid: after the first sigmoid every value lies in (0, 1),
    // so the result is the sigmoid iterated ~100 k times — computed here in f64.
    const N: usize = 200_000;
    let mut b = ModelBuilder::new("chain");
    let mut x = b.dense_input("x", 4);
    for i in 0..N {
        let act = if i % 2 == 0 { Activation::Relu } else { Activation::Sigmoid };
        x = b.activation(&format!("n{i}"), act, &x);
    }
    b.output("y", &x);
    let model = Model::from_slice_copy(&b.to_bytes(WeightFormats::default()).unwrap()).unwrap();
    assert_eq!(model.graph().nodes.len(), N);
    let mut s = Session::new(&model, SessionOptions { max_batch: 2, ..Default::default() }).unwrap();
    let input = [-1.0f32, 0.0, 0.5, 3.0, 10.0, -10.0, 1.0, 2.0];
    let out = s.run(&[Input::dense("x", &input, 4)]).unwrap();
    let y = out.get("y").unwrap();
    for (i, (&got, &v)) in y.iter().zip(&input).enumerate() {
        let mut want = f64::from(v);
        for k in 0..N {
            want = if k % 2 == 0 { want.max(0.0) } else { 1.0 / (1.0 + (-want).exp()) };
        }
        assert!((f64::from(got) - want).abs() <= 1e-5, "element {i}: {got} vs {want}");
    }
}
