//! Unit tests of the ONNX importer and exporter on small hand-built graphs.
//!
//! Each test builds an ONNX model from the protobuf types, imports it, runs the result in
//! a graft session and checks the numbers against a direct computation, so every
//! accepted pattern is checked for meaning, not just for acceptance. The end-to-end
//! parity with ONNX Runtime, tract and torch lives in the `graft-tests` crate.

use std::collections::HashMap;

use tract_onnx::pb::{
    self, AttributeProto, NodeProto, TensorShapeProto, TypeProto, ValueInfoProto, tensor_proto::DataType,
    tensor_shape_proto::dimension,
};

use super::tensor::{f32_proto, i64_proto};
use super::{decode_proto, encode_proto, import_bytes, import_proto, to_proto};
use crate::builder::{Matrix, ModelBuilder, WeightFormats};
use crate::error::{Error, Result};
use crate::graph::{Activation, BagMode, Node, Op, UnaryOp};
use crate::{Input, Model, Session, SessionOptions};

fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        name: name.into(),
        op_type: op.into(),
        attribute,
        ..NodeProto::default()
    }
}

use super::export::{attr_float as float, attr_int as int, attr_ints as ints};

/// A `[batch, dims…]` graph input or output.
fn io(name: &str, elem: DataType, dims: &[i64]) -> ValueInfoProto {
    let dim = |value| pb::tensor_shape_proto::Dimension { denotation: String::new(), value: Some(value) };
    let mut shape = vec![dim(dimension::Value::DimParam("batch".into()))];
    shape.extend(dims.iter().map(|&d| dim(dimension::Value::DimValue(d))));
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim: shape }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn model(
    nodes: Vec<NodeProto>,
    initializer: Vec<pb::TensorProto>,
    input: Vec<ValueInfoProto>,
    output: &[&str],
) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(pb::GraphProto {
            node: nodes,
            name: "test".into(),
            initializer,
            input,
            output: output.iter().map(|o| io(o, DataType::Float, &[1])).collect(),
            ..pb::GraphProto::default()
        }),
        ..pb::ModelProto::default()
    }
}

/// Deterministic pseudo-random values in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    crate::synthetic::Rng::new(seed as u64).symmetric(n, 1.0)
}

/// Writes the builder as f32, runs it and returns every output as rows × width values.
fn run(b: &ModelBuilder, inputs: &[Input<'_>]) -> Result<HashMap<String, Vec<f32>>> {
    let model = Model::from_slice_copy(&b.to_bytes(WeightFormats::default())?)?;
    let mut session = Session::new(&model, SessionOptions { max_batch: 16, threads: 1, ..Default::default() })?;
    let out = session.run(inputs)?;
    Ok(out
        .iter()
        .map(|(name, m)| (name.to_string(), (0..m.rows()).flat_map(|r| m.row(r).to_vec()).collect()))
        .collect())
}

fn graph_of(b: &ModelBuilder) -> Result<crate::graph::Graph> {
    Ok(Model::from_slice_copy(&b.to_bytes(WeightFormats::default())?)?.graph().clone())
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

fn unsupported(r: Result<ModelBuilder>) -> (String, String, String) {
    match r {
        Err(Error::OnnxUnsupported { node, op, detail }) => (node, op, detail),
        other => panic!("expected OnnxUnsupported, got {other:?}"),
    }
}

#[test]
fn matmul_add_fold_and_shape_no_ops() -> Result<()> {
    // x [batch, 2, 3] → Flatten → MatMul(W [6, 4]) + b → Unsqueeze(1) → Squeeze(1) → Relu
    let w = values(24, 1);
    let bias = values(4, 2);
    let m = model(
        vec![
            node("Flatten", "/Flatten", &["x"], &["f"], vec![int("axis", 1)]),
            node("MatMul", "/fc/MatMul", &["f", "onnx::MatMul_7"], &["mm"], vec![]),
            node("Add", "/fc/Add", &["fc.bias", "mm"], &["lin"], vec![]),
            node("Unsqueeze", "/Unsqueeze", &["lin", "axes"], &["u"], vec![]),
            node("Squeeze", "/Squeeze", &["u"], &["s"], vec![ints("axes", &[1])]),
            node("Relu", "/act/Relu", &["s"], &["y"], vec![]),
        ],
        vec![
            f32_proto("onnx::MatMul_7", &[6, 4], &w),
            f32_proto("fc.bias", &[4], &bias),
            i64_proto("axes", &[1], &[1]),
        ],
        vec![io("x", DataType::Float, &[2, 3])],
        &["y"],
    );
    let b = import_proto(m, "t")?;
    let g = graph_of(&b)?;
    // One linear with the bias folded in, named after the module path (the weight
    // initializer has no module name); the relu keeps its ONNX node's name; layout
    // changes cost nothing (reshapes alias their input).
    let linears: Vec<&Node> = g.nodes.iter().filter(|n| matches!(n.op, Op::Linear { .. })).collect();
    assert_eq!(linears.len(), 1);
    assert_eq!(linears[0].name, "fc");
    assert!(matches!(linears[0].op, Op::Linear { bias: Some(_), .. }));
    assert!(g.weight("fc.weight").is_some());
    assert!(g.node("act.Relu").is_some_and(|i| g.nodes[i].op == Op::Activation(Activation::Relu)));
    assert!(g.nodes.iter().all(|n| matches!(n.op, Op::Linear { .. } | Op::Activation(_) | Op::Reshape)));

    let x = values(12, 3);
    let out = run(&b, &[Input::dense("x", &x, 6)])?;
    let want: Vec<f32> = (0..2)
        .flat_map(|r| {
            let (x, w, bias) = (&x, &w, &bias);
            (0..4).map(move |o| (0..6).map(|k| x[r * 6 + k] * w[k * 4 + o]).sum::<f32>() + bias[o]).map(|v| v.max(0.0))
        })
        .collect();
    assert!(close(&out["y"], &want, 1e-5), "{:?} vs {want:?}", out["y"]);
    Ok(())
}

#[test]
fn gemm_attributes_fold_into_parameters() -> Result<()> {
    // transB = 0 (B is [K, N]), alpha = 0.5, beta = 2, C broadcast from [1, N].
    let w = values(15, 4);
    let c = values(5, 5);
    let m = model(
        vec![node(
            "Gemm",
            "Gemm_0",
            &["x", "B", "C"],
            &["y"],
            vec![float("alpha", 0.5), float("beta", 2.0), int("transB", 0)],
        )],
        vec![f32_proto("B", &[3, 5], &w), f32_proto("C", &[1, 5], &c)],
        vec![io("x", DataType::Float, &[3])],
        &["y"],
    );
    let b = import_proto(m, "t")?;
    assert_eq!(graph_of(&b)?.nodes[0].name, "Gemm_0");
    let x = values(6, 6);
    let out = run(&b, &[Input::dense("x", &x, 3)])?;
    let want: Vec<f32> = (0..2)
        .flat_map(|r| {
            let (x, w, c) = (&x, &w, &c);
            (0..5).map(move |o| 0.5 * (0..3).map(|k| x[r * 3 + k] * w[k * 5 + o]).sum::<f32>() + 2.0 * c[o])
        })
        .collect();
    assert!(close(&out["y"], &want, 1e-5), "{:?} vs {want:?}", out["y"]);
    Ok(())
}

#[test]
fn embedding_bags_from_gather_and_reductions() -> Result<()> {
    // ids [batch, 3] → Gather → ReduceSum(axes input) ;
    // ids [batch, 3] → Gather → ReduceMean(keepdims=1) → Flatten ;
    // one [batch] → Gather (a bag of one).
    let table = values(8 * 4, 7);
    let other = values(8 * 4, 70);
    let m = model(
        vec![
            node("Gather", "/emb/Gather", &["emb.weight", "ids"], &["g"], vec![]),
            node("ReduceSum", "/ReduceSum", &["g", "axes"], &["sum"], vec![int("keepdims", 0)]),
            node("Gather", "/emb2/Gather", &["emb.weight", "ids"], &["g2"], vec![int("axis", 0)]),
            node("ReduceMean", "/ReduceMean", &["g2"], &["mean3"], vec![ints("axes", &[-2])]),
            node("Flatten", "/Flatten", &["mean3"], &["mean"], vec![]),
            node("Gather", "/one/Gather", &["T", "ids1"], &["single"], vec![]),
            node("Concat", "/Concat", &["sum", "mean", "single"], &["y"], vec![int("axis", -1)]),
        ],
        vec![f32_proto("emb.weight", &[8, 4], &table), f32_proto("T", &[8, 4], &other), i64_proto("axes", &[1], &[1])],
        vec![io("ids", DataType::Int64, &[3]), io("ids1", DataType::Int32, &[])],
        &["y"],
    );
    let b = import_proto(m, "t")?;
    let g = graph_of(&b)?;
    // A lookup summed over its slots is one bag (a mean is the sum, scaled); a single
    // id is a plain lookup. Tables are named after their initializers.
    let tables: Vec<(&str, &str)> = g
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            Op::EmbeddingBag { mode: BagMode::Sum, .. } => Some((n.name.as_str(), "bag")),
            Op::Embedding { .. } => Some((n.name.as_str(), "lookup")),
            _ => None,
        })
        .collect();
    assert_eq!(tables, [("emb", "bag"), ("emb_1", "bag"), ("one", "lookup")]);
    assert!(g.weight("emb.weight").is_some() && g.weight("emb_1.weight").is_some());

    let ids = [0i64, 3, 3, 7, 1, 2];
    let one = [5i64, 6];
    let out = run(&b, &[Input::ids("ids", &ids, 3), Input::ids("ids1", &one, 1)])?;
    let row = |i: i64| &table[i as usize * 4..i as usize * 4 + 4];
    let mut want = Vec::new();
    for r in 0..2 {
        let s: Vec<f32> = (0..4).map(|d| ids[r * 3..r * 3 + 3].iter().map(|&i| row(i)[d]).sum()).collect();
        want.extend_from_slice(&s);
        want.extend(s.iter().map(|v| v / 3.0));
        want.extend_from_slice(&other[one[r] as usize * 4..one[r] as usize * 4 + 4]);
    }
    assert!(close(&out["y"], &want, 1e-5), "{:?} vs {want:?}", out["y"]);
    Ok(())
}

#[test]
fn ids_may_be_reshaped_before_the_lookup() -> Result<()> {
    // ids [batch] → Unsqueeze(1) → Gather → [batch, 1, 4] → ReduceSum(axes input) → [batch, 4]
    let table = values(6 * 4, 40);
    let m = model(
        vec![
            node("Unsqueeze", "/Unsqueeze", &["ids", "axes"], &["u"], vec![]),
            node("Gather", "/tab/Gather", &["tab.weight", "u"], &["g"], vec![]),
            node("ReduceSum", "/ReduceSum", &["g", "axes"], &["y"], vec![int("keepdims", 0)]),
            // The same one-slot lookup used directly as an activation [batch, 1, 4].
            node("Squeeze", "/Squeeze", &["g", "axes"], &["sq"], vec![]),
            node("Relu", "/Relu", &["g"], &["r"], vec![]),
            node("Flatten", "/Flatten", &["r"], &["z"], vec![]),
        ],
        vec![f32_proto("tab.weight", &[6, 4], &table), i64_proto("axes", &[1], &[1])],
        vec![io("ids", DataType::Int64, &[])],
        &["y", "sq", "z"],
    );
    let b = import_proto(m, "t")?;
    let ids = [5i64, 0, 2];
    let out = run(&b, &[Input::ids("ids", &ids, 1)])?;
    let want: Vec<f32> = ids.iter().flat_map(|&i| table[i as usize * 4..i as usize * 4 + 4].to_vec()).collect();
    assert_eq!(out["y"], want);
    assert_eq!(out["sq"], want);
    assert_eq!(out["z"], want.iter().map(|v| v.max(0.0)).collect::<Vec<_>>());
    let g = graph_of(&b)?;
    assert!(g.node("tab").is_some(), "the lookup is named after its table");
    Ok(())
}

#[test]
fn torch_erf_gelu_and_layer_norm() -> Result<()> {
    let gamma = values(4, 8);
    let beta = values(4, 9);
    let m = model(
        vec![
            node("Div", "/act/Div", &["x", "sqrt2"], &["d"], vec![]),
            node("Erf", "/act/Erf", &["d"], &["e"], vec![]),
            node("Add", "/act/Add", &["e", "one"], &["p"], vec![]),
            node("Mul", "/act/Mul", &["x", "p"], &["m"], vec![]),
            node("Mul", "/act/Mul_1", &["m", "half"], &["gelu"], vec![]),
            node(
                "LayerNormalization",
                "/ln/LayerNormalization",
                &["gelu", "ln.weight", "ln.bias"],
                &["y"],
                vec![int("axis", -1), float("epsilon", 1e-5)],
            ),
        ],
        vec![
            f32_proto("sqrt2", &[], &[std::f32::consts::SQRT_2]),
            f32_proto("one", &[], &[1.0]),
            f32_proto("half", &[], &[0.5]),
            f32_proto("ln.weight", &[4], &gamma),
            f32_proto("ln.bias", &[4], &beta),
        ],
        vec![io("x", DataType::Float, &[4])],
        &["y", "gelu"],
    );
    let b = import_proto(m, "t")?;
    let g = graph_of(&b)?;
    // tract recognises torch's erf decomposition as one exact GELU.
    assert_eq!(g.nodes.iter().filter(|n| n.op == Op::Activation(Activation::Gelu)).count(), 1);
    assert!(g.nodes.iter().all(|n| !matches!(n.op, Op::Unary(UnaryOp::Erf))));
    assert!(g.weight("ln.weight").is_none(), "layer-norm gains are vectors, not weights");

    let x = values(8, 10);
    let out = run(&b, &[Input::dense("x", &x, 4)])?;
    let gelu: Vec<f32> = x.iter().map(|&v| 0.5 * v * (1.0 + libm::erff(v / std::f32::consts::SQRT_2))).collect();
    assert!(close(&out["gelu"], &gelu, 1e-6));
    let mut want = Vec::new();
    for row in gelu.chunks(4) {
        let mean = row.iter().sum::<f32>() / 4.0;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4.0;
        want.extend(row.iter().enumerate().map(|(i, v)| (v - mean) / (var + 1e-5).sqrt() * gamma[i] + beta[i]));
    }
    assert!(close(&out["y"], &want, 1e-5), "{:?} vs {want:?}", out["y"]);
    Ok(())
}

#[test]
fn reshape_keeps_batch_or_is_refused() -> Result<()> {
    let shaped = |target: &[i64]| {
        model(
            vec![node("Reshape", "/Reshape", &["x", "shape"], &["y"], vec![])],
            vec![i64_proto("shape", &[target.len()], target)],
            vec![io("x", DataType::Float, &[2, 3])],
            &["y"],
        )
    };
    // `[-1]` flattens the batch outermost (`[6·batch]`): each example stays one block.
    for ok in [&[0, -1][..], &[-1, 6], &[0, 3, 2], &[0, 0, 3], &[-1, 1, 6], &[-1]] {
        import_proto(shaped(ok), "t")?;
    }
    // `[6, batch]` or `[3, -1]` would interleave examples; tract refuses `[0, 4]` itself.
    for bad in [&[6, -1][..], &[3, -1]] {
        let (node, op, _) = unsupported(import_proto(shaped(bad), "t"));
        assert_eq!((node.as_str(), op.as_str()), ("/Reshape", "Reshape"));
    }
    assert!(matches!(import_proto(shaped(&[0, 4]), "t"), Err(Error::Onnx { .. })));
    Ok(())
}

#[test]
fn unsupported_forms_name_the_node_and_op() {
    let one = |n: NodeProto, init: Vec<pb::TensorProto>| {
        import_proto(model(vec![n], init, vec![io("x", DataType::Float, &[4])], &["y"]), "t")
    };
    // Every form below would mix the examples of a batch (or has no per-row meaning):
    // graft refuses it, naming the ONNX node and op.
    let cases = [
        (one(node("ReduceSum", "/rs", &["x"], &["y"], vec![int("keepdims", 0)]), vec![]), "/rs", "Reduce<Sum>"),
        (one(node("Softmax", "/sm/Softmax", &["x"], &["y"], vec![int("axis", 0)]), vec![]), "/sm/Softmax", "Softmax"),
        (one(node("Concat", "/cat", &["x", "x"], &["y"], vec![int("axis", 0)]), vec![]), "/cat", "Concat"),
        (
            one(
                node("Slice", "/sl", &["x", "st", "en", "ax"], &["y"], vec![]),
                vec![i64_proto("st", &[1], &[0]), i64_proto("en", &[1], &[1]), i64_proto("ax", &[1], &[0])],
            ),
            "/sl",
            "Slice",
        ),
    ];
    for (result, want_node, want_op) in cases {
        let (node, op, detail) = unsupported(result);
        assert_eq!((node.as_str(), op.as_str()), (want_node, want_op), "{detail}");
        assert!(detail.contains("batch"), "{detail}");
    }
}

#[test]
fn malformed_models_are_typed_errors() {
    assert!(matches!(import_bytes(b"definitely not a protobuf \xff\xff\xff"), Err(Error::Onnx { .. })));
    assert!(matches!(import_bytes(&[]), Err(Error::Onnx { .. })), "an empty message has no graph");
    // An op no ONNX domain defines.
    let m = model(
        vec![NodeProto { domain: "example.bogus".into(), ..node("Frobnicate", "f", &["x"], &["y"], vec![]) }],
        vec![],
        vec![io("x", DataType::Float, &[4])],
        &["y"],
    );
    assert!(matches!(import_proto(m, "t"), Err(Error::Onnx { .. })));
    // Non-finite weights.
    let m = model(
        vec![node("Gemm", "/fc/Gemm", &["x", "fc.weight"], &["y"], vec![int("transB", 1)])],
        vec![f32_proto("fc.weight", &[1, 4], &[0.0, f32::INFINITY, 0.0, 0.0])],
        vec![io("x", DataType::Float, &[4])],
        &["y"],
    );
    let r = import_proto(m, "t");
    assert!(matches!(&r, Err(Error::TensorEntry { tensor, .. }) if tensor == "fc.weight"), "{r:?}");
    // Shape mismatch between an activation and a weight.
    let m = model(
        vec![node("Gemm", "/fc/Gemm", &["x", "fc.weight"], &["y"], vec![int("transB", 1)])],
        vec![f32_proto("fc.weight", &[1, 3], &[0.0; 3])],
        vec![io("x", DataType::Float, &[4])],
        &["y"],
    );
    assert!(matches!(import_proto(m, "t"), Err(Error::Onnx { .. })));
    // A non-batch axis without a fixed size.
    let mut m =
        model(vec![node("Relu", "r", &["x"], &["y"], vec![])], vec![], vec![io("x", DataType::Float, &[4])], &["y"]);
    if let Some(pb::type_proto::Value::TensorType(t)) =
        m.graph.as_mut().and_then(|g| g.input[0].r#type.as_mut()).and_then(|t| t.value.as_mut())
        && let Some(shape) = t.shape.as_mut()
    {
        shape.dim[1].value = Some(pb::tensor_shape_proto::dimension::Value::DimParam("n".into()));
    }
    let (node, _, detail) = unsupported(import_proto(m, "t"));
    assert_eq!(node, "x");
    assert!(detail.contains("fixed size"), "{detail}");
}

/// A model with every exportable op.
fn every_op_model() -> ModelBuilder {
    let mut b = ModelBuilder::new("every_op");
    b.dense_input("x", 8);
    b.ids_input("ids_a", 3);
    b.ids_input("ids_b", 2);
    let l1 = b.linear("l1", "x", Matrix::new(16, 8, values(128, 11)), Some(values(16, 12)));
    let r = b.activation("r", Activation::Relu, &l1);
    let s = b.activation("s", Activation::Sigmoid, &l1);
    let t = b.activation("t", Activation::Tanh, &l1);
    let g = b.activation("g", Activation::Gelu, &l1);
    let gt = b.activation("gt", Activation::GeluTanh, &l1);
    let si = b.activation("si", Activation::Silu, &l1);
    let e1 = b.embedding_bag("e1", &["ids_a"], Matrix::new(10, 16, values(160, 13)), BagMode::Sum);
    let e2 = b.embedding_bag("e2", &["ids_b"], Matrix::new(7, 16, values(112, 14)), BagMode::Mean);
    let a = b.add("a", &r, &e1);
    let m = b.mul("m", &s, &e2);
    let ab = b.add_bias("ab", &t, values(16, 15));
    let ms = b.mul_scale("ms", &g, values(16, 16));
    let c = b.concat("c", &[&a, &m, &ab, &ms, &gt, &si]);
    let ln = b.layer_norm("ln", &c, values(96, 17), Some(values(96, 18)), 1e-5);
    let l2 = b.linear("l2", &ln, Matrix::new(16, 96, values(16 * 96, 19)), Some(values(16, 20)));
    let x1 = b.cross("x1", &l2, &l2, Matrix::new(16, 16, values(256, 21)), Some(values(16, 22)));
    let x2 = b.cross("x2", &l2, &x1, Matrix::new(16, 16, values(256, 23)), None);
    let out = b.linear("out", &x2, Matrix::new(1, 16, values(16, 24)), Some(vec![0.1]));
    let p = b.activation("p", Activation::Sigmoid, &out);
    b.output("logit", &out).output("prob", &p).output("hidden", &ln).output("x1", &x1);
    b
}

#[test]
fn export_then_import_reproduces_the_model() -> Result<()> {
    let b = every_op_model();
    let original = Model::from_slice_copy(&b.to_bytes(WeightFormats::default())?)?;
    let bytes = encode_proto(&to_proto(&original)?)?;
    let proto = decode_proto(&bytes)?;
    let graph = proto.graph.as_ref().map(|g| g.node.iter().map(|n| n.op_type.clone()).collect::<Vec<_>>());
    assert!(graph.is_some_and(|ops| ops.iter().any(|o| o == "Erf") && ops.iter().any(|o| o == "ReduceMean")));

    let reimported = import_bytes(&bytes)?;
    let x = values(8 * 4, 30);
    let ids_a = [0i64, 1, 9, 3, 3, 3, 0, 0, 0, 9, 8, 7];
    let ids_b = [6i64, 0, 1, 1, 2, 5, 4, 3];
    let inputs = [Input::dense("x", &x, 8), Input::ids("ids_a", &ids_a, 3), Input::ids("ids_b", &ids_b, 2)];
    let want = run(&b, &inputs)?;
    let got = run(&reimported, &inputs)?;
    // The re-imported graph computes the cross layers and layer norm with other (equally
    // exact) op orders: compare relative to the values' scale (logits reach ~6e3).
    for name in ["logit", "prob", "hidden", "x1"] {
        let scale = want[name].iter().fold(1.0f32, |m, v| m.max(v.abs()));
        assert!(close(&got[name], &want[name], 1e-6 * scale), "{name}: {:?} vs {:?}", got[name], want[name]);
    }
    // The exact GELU decomposition comes back as one node, named after an ONNX node of
    // the graft node's decomposition (`g/Erf` → `g.Erf`).
    let g = graph_of(&reimported)?;
    assert!(g.nodes.iter().any(|n| n.name.starts_with("g.") && n.op == Op::Activation(Activation::Gelu)));
    assert!(g.nodes.iter().any(|n| n.name == "l1" && matches!(n.op, Op::Linear { .. })));
    Ok(())
}

#[test]
fn export_refuses_what_onnx_cannot_express() -> Result<()> {
    let mut b = ModelBuilder::new("dot");
    b.dense_input("x", 4);
    b.dense_input("z", 4);
    let d = b.dot_interaction("interact", &["x", "z"], false);
    b.output("y", &d);
    let m = Model::from_slice_copy(&b.to_bytes(WeightFormats::default())?)?;
    assert!(
        matches!(to_proto(&m), Err(Error::OnnxUnsupported { node, op, .. }) if node == "interact" && op == "dot_interaction")
    );

    let mut b = ModelBuilder::new("flat");
    let [i, o] = b.bag_inputs("idx", "off");
    let e = b.embedding_bag("emb", &[&i, &o], Matrix::new(4, 2, vec![0.0; 8]), BagMode::Sum);
    b.output("y", &e);
    let m = Model::from_slice_copy(&b.to_bytes(WeightFormats::default())?)?;
    assert!(matches!(to_proto(&m), Err(Error::OnnxUnsupported { node, .. }) if node == "emb"));
    Ok(())
}

// ONNX Runtime LoRA: the adapter file format and the LoRA-input export.

use super::adapter_format::write_onnx_adapter;
use super::{LoraInputs, to_proto_with_lora};

/// The ONNX Runtime environment of this test binary (one per process), or `None` after
/// printing a SKIP line when `ORT_DYLIB_PATH` names no library — a failure when
/// `GRAFT_CI=1`, as in the `graft-tests` crate.
fn ort_env(test: &str) -> Option<&'static ort::environment::Environment> {
    static ENV: std::sync::OnceLock<std::result::Result<ort::environment::Environment, String>> =
        std::sync::OnceLock::new();
    let env = ENV.get_or_init(|| {
        let path = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()).ok_or("ORT_DYLIB_PATH is not set")?;
        if !std::path::Path::new(&path).is_file() {
            return Err(format!("ORT_DYLIB_PATH={} is not a file", path.to_string_lossy()));
        }
        let builder = ort::init_from(&path).map_err(|e| format!("loading {}: {e}", path.to_string_lossy()))?;
        builder.with_name("graft-onnx-tests").build().map_err(|e| e.to_string())
    });
    match env {
        Ok(env) => Some(env),
        Err(why) => {
            let ci = std::env::var("GRAFT_CI").is_ok_and(|v| v == "1");
            assert!(!ci, "{test}: ONNX Runtime is required when GRAFT_CI=1, but {why}");
            println!("SKIP: {test}: ONNX Runtime library not found (set ORT_DYLIB_PATH) ({why})");
            None
        }
    }
}

/// x [6] → fc1 (8×6, bias) → GELU → fc2 (3×8, bias) → y.
fn lora_model(w1: Vec<f32>, w2: Vec<f32>) -> Result<Model> {
    let mut b = ModelBuilder::new("lora");
    b.dense_input("x", 6);
    b.linear("fc1", "x", Matrix::new(8, 6, w1), Some(values(8, 42)));
    b.activation("act", Activation::Gelu, "fc1");
    b.linear("fc2", "act", Matrix::new(3, 8, w2), Some(values(3, 43)));
    b.output("y", "fc2");
    Model::from_slice_copy(&b.to_bytes(WeightFormats::default())?)
}

/// `W + scale · (A·B)ᵀ` for W `[out, in]`, A `[in, r]`, B `[r, out]`.
fn merge(w: &[f32], a: &[f32], b: &[f32], (fan_out, fan_in, r): (usize, usize, usize), scale: f32) -> Vec<f32> {
    let mut merged = w.to_vec();
    for o in 0..fan_out {
        for i in 0..fan_in {
            let ab: f32 = (0..r).map(|k| a[i * r + k] * b[k * fan_out + o]).sum();
            merged[o * fan_in + i] += scale * ab;
        }
    }
    merged
}

/// Runs `onnx` in ONNX Runtime on x `[rows, 6]`, with `adapter` active if given.
fn ort_run(
    env: &ort::environment::Environment,
    onnx: &pb::ModelProto,
    x: &[f32],
    adapter: Option<&[u8]>,
) -> std::result::Result<Vec<f32>, ort::Error> {
    let bytes = encode_proto(onnx).map_err(|e| ort::Error::new(e.to_string()))?;
    let mut session = ort::session::Session::builder(env)?.commit_from_memory(&bytes)?;
    let input = ort::value::Tensor::from_array(([x.len() / 6, 6], x.to_vec()))?;
    let mut options = ort::session::RunOptions::new()?;
    if let Some(bytes) = adapter {
        options.add_adapter(&ort::session::Adapter::from_memory(bytes, None)?)?;
    }
    let out = session.run_with_options(ort::inputs!["x" => input], &options)?;
    let (_, y) = out["y"].try_extract_tensor::<f32>()?;
    Ok(y.to_vec())
}

#[test]
fn lora_export_declares_overridable_inputs() -> Result<()> {
    let model = lora_model(values(48, 40), values(24, 41))?;
    let lora = LoraInputs { targets: vec![("fc1".into(), 2, 0.5), ("fc2".into(), 3, 2.0)] };
    let proto = to_proto_with_lora(&model, &lora)?;
    let g = proto.graph.as_ref().expect("a graph");
    let inputs: Vec<&str> = g.input.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(inputs, ["x", "fc1.lora_A", "fc1.lora_B", "fc2.lora_A", "fc2.lora_B"]);
    let init = |name: &str| g.initializer.iter().find(|t| t.name == name).map(|t| (t.dims.clone(), t.raw_data.clone()));
    assert_eq!(init("fc1.lora_A"), Some((vec![6, 2], vec![0; 48])));
    assert_eq!(init("fc2.lora_B"), Some((vec![3, 3], vec![0; 36])));
    let dims = lora.parameter_dims(&model)?;
    assert_eq!(dims[0], ("fc1.lora_A".to_string(), vec![6, 2]));
    assert_eq!(dims[3], ("fc2.lora_B".to_string(), vec![3, 3]));
    // The activation still reads the LoRA sum, i.e. the node's own output tensor.
    let add = g.node.iter().find(|n| n.name == "fc1/lora/Add").expect("the LoRA add");
    assert!(g.node.iter().any(|n| n.op_type == "Erf" || n.input.first() == add.output.first()));
    assert_eq!(LoraInputs::every_linear(&model, 4, 1.0).targets.len(), 2);

    let refused = |targets: Vec<(String, usize, f32)>| to_proto_with_lora(&model, &LoraInputs { targets });
    assert!(matches!(refused(vec![("act".into(), 2, 1.0)]), Err(Error::OnnxUnsupported { node, .. }) if node == "act"));
    assert!(matches!(refused(vec![("nope".into(), 2, 1.0)]), Err(Error::Onnx { .. })));
    assert!(matches!(refused(vec![("fc1".into(), 0, 1.0)]), Err(Error::Onnx { .. })));
    assert!(matches!(refused(vec![("fc1".into(), 1, f32::NAN)]), Err(Error::Onnx { .. })));
    assert!(matches!(refused(vec![("fc1".into(), 1, 1.0), ("fc1".into(), 2, 1.0)]), Err(Error::Onnx { .. })));
    Ok(())
}

#[test]
fn adapter_file_layout() {
    let a = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let bytes = write_onnx_adapter(&[("pa".into(), vec![3, 2], &a)], 3, 5);
    assert_eq!(&bytes[4..8], b"TORT");
    assert_eq!(bytes.len() % 8, 0);
    // The f32 payload is stored contiguously, little-endian.
    let raw: Vec<u8> = a.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(bytes.windows(raw.len()).any(|w| w == raw.as_slice()));
    // Matches the bytes ONNX Runtime 1.32's own writer produced for these parameters
    // (`AdapterFormat` with adapter version 3, model version 5).
    let two = write_onnx_adapter(&[("pa".into(), vec![3, 2], &a), ("pbb".into(), vec![1, 3], &[7.0, 8.0, 9.0])], 3, 5);
    let reference: [u32; 48] = [
        0x00000008, 0x54524f54, 0xffffffa0, 0x00000001, 0x00000003, 0x00000005, 0x00000004, 0x00000002, 0x00000054,
        0x00000004, 0xffffffc0, 0x00000034, 0x0000001c, 0x00000001, 0x00000004, 0x0000000c, 0x40e00000, 0x41000000,
        0x41100000, 0x00000002, 0x00000001, 0x00000000, 0x00000003, 0x00000000, 0x00000003, 0x00626270, 0x0014000c,
        0x00080004, 0x0010000c, 0x0000000c, 0x00000040, 0x00000028, 0x00000001, 0x00000004, 0x00000018, 0x3f800000,
        0x40000000, 0x40400000, 0x40800000, 0x40a00000, 0x40c00000, 0x00000002, 0x00000003, 0x00000000, 0x00000002,
        0x00000000, 0x00000002, 0x00006170,
    ];
    let reference: Vec<u8> = reference.iter().flat_map(|w| w.to_le_bytes()).collect();
    assert_eq!(two, reference);
}

/// Where the workspace's Python venv (ONNX Runtime wheel + numpy) would be.
fn venv_python() -> std::path::PathBuf {
    match std::env::var_os("VENV") {
        Some(v) => std::path::PathBuf::from(v).join("bin/python"),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
    }
}

#[test]
fn adapter_file_round_trips_through_onnx_runtime_python() {
    let test = "adapter_file_round_trips_through_onnx_runtime_python";
    let python = venv_python();
    let has_ort = std::process::Command::new(&python)
        .args(["-c", "import onnxruntime, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_ort {
        let ci = std::env::var("GRAFT_CI").is_ok_and(|v| v == "1");
        assert!(!ci, "{test}: the Python venv with onnxruntime is required when GRAFT_CI=1 ({})", python.display());
        println!("SKIP: {test}: no Python with onnxruntime at {} (set VENV)", python.display());
        return;
    }
    let (a, b, c) = (values(5 * 3, 50), values(3 * 7, 51), values(1, 52));
    let params: Vec<(String, Vec<usize>, &[f32])> = vec![
        ("layer.lora_A".into(), vec![5, 3], &a),
        ("layer.lora_B".into(), vec![3, 7], &b),
        ("s".into(), vec![1], &c),
    ];
    let ours = write_onnx_adapter(&params, 7, 0);
    let dir = std::env::temp_dir().join(format!("graft-adapter-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let (ours_path, theirs_path) = (dir.join("ours.onnx_adapter"), dir.join("theirs.onnx_adapter"));
    std::fs::write(&ours_path, &ours).expect("writing the adapter");
    // Python reads our file, checks it, and writes the same parameters with ORT's writer.
    let script = r#"
import sys, numpy as np, onnxruntime as ort
ours, theirs, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
f = ort.AdapterFormat.read_adapter(ours)
assert f.get_format_version() == 1 and f.get_adapter_version() == 7 and f.get_model_version() == 0
p = f.get_parameters()
assert sorted(p) == sorted(names), sorted(p)
arrays = {n: np.array(p[n].numpy(), dtype=np.float32) for n in names}
for n, v in arrays.items(): print(n, list(v.shape), " ".join(repr(float(x)) for x in v.ravel()))
w = ort.AdapterFormat(); w.set_adapter_version(7); w.set_model_version(0)
w.set_parameters({n: ort.OrtValue.ortvalue_from_numpy(arrays[n]) for n in names})
w.export_adapter(theirs)
"#;
    let names = params.iter().map(|p| p.0.as_str()).collect::<Vec<_>>().join(",");
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(&ours_path)
        .arg(&theirs_path)
        .arg(&names)
        .output()
        .expect("running python");
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (name, dims, data) in &params {
        let line = stdout.lines().find(|l| l.split(' ').next() == Some(name.as_str())).expect("a parameter line");
        let shape = format!("{:?}", dims);
        assert!(line.contains(&shape), "{line} vs {shape}");
        let read: Vec<f32> = line.split(' ').skip(1 + dims.len()).map(|v| v.parse().expect("a float")).collect();
        assert_eq!(read, *data, "{name}");
    }
    let theirs = std::fs::read(&theirs_path).expect("ORT's adapter");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(ours, theirs, "byte-identical to ONNX Runtime's writer");
}

#[test]
fn onnx_runtime_applies_a_lora_adapter() -> Result<()> {
    let test = "onnx_runtime_applies_a_lora_adapter";
    let Some(env) = ort_env(test) else { return Ok(()) };
    let (w1, w2) = (values(48, 40), values(24, 41));
    let model = lora_model(w1.clone(), w2.clone())?;
    let (r1, s1, r2, s2) = (2usize, 0.5f32, 3usize, 2.0f32);
    let lora = LoraInputs { targets: vec![("fc1".into(), r1, s1), ("fc2".into(), r2, s2)] };
    let (a1, b1) = (values(6 * r1, 60), values(r1 * 8, 61));
    let (a2, b2) = (values(8 * r2, 62), values(r2 * 3, 63));
    let adapter = write_onnx_adapter(
        &[
            ("fc1.lora_A".into(), vec![6, r1], &a1),
            ("fc1.lora_B".into(), vec![r1, 8], &b1),
            ("fc2.lora_A".into(), vec![8, r2], &a2),
            ("fc2.lora_B".into(), vec![r2, 3], &b2),
        ],
        1,
        1,
    );
    let merged = lora_model(merge(&w1, &a1, &b1, (8, 6, r1), s1), merge(&w2, &a2, &b2, (3, 8, r2), s2))?;

    let x = values(5 * 6, 64);
    let lora_proto = to_proto_with_lora(&model, &lora)?;
    let ort_err = |e: ort::Error| Error::Onnx { detail: format!("ONNX Runtime: {e}") };
    let with_adapter = ort_run(env, &lora_proto, &x, Some(&adapter)).map_err(ort_err)?;
    let without = ort_run(env, &lora_proto, &x, None).map_err(ort_err)?;
    let plain = ort_run(env, &to_proto(&model)?, &x, None).map_err(ort_err)?;
    let merged_out = ort_run(env, &to_proto(&merged)?, &x, None).map_err(ort_err)?;

    assert_eq!(with_adapter.len(), 15);
    assert!(close(&with_adapter, &merged_out, 1e-4), "adapter {with_adapter:?} vs merged {merged_out:?}");
    assert!(close(&without, &plain, 1e-6), "no adapter {without:?} vs plain {plain:?}");
    // The adapter changes the output, so the comparison above is not vacuous.
    let moved = with_adapter.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(moved > 0.05, "the adapter barely changed the output ({moved})");
    Ok(())
}
