//! torch's legacy export of `nn.EmbeddingBag`, recognised as the bag it is.
//!
//! With offsets, `torch.onnx.export(dynamo=False)` writes an `nn.EmbeddingBag` as an ONNX
//! `Loop` over the bags whose body slices the flat ids between two offsets, gathers the
//! table rows and reduces them (`ReduceSum`/`ReduceMean` over axis 0). tract cannot type
//! a `Loop`, and running one per bag would be slow anyway. Before tract sees the model,
//! each such loop is cut out: its output becomes a placeholder graph input, the flat ids
//! and offsets inputs it read (and the shape arithmetic that fed it) are removed, and
//! the lowering emits graft's own `embedding_bag` over a `bag_indices`/`bag_offsets`
//! input pair where the placeholder appears.

use std::collections::HashSet;

use tract_onnx::pb::{self, GraphProto, NodeProto};

use crate::graph::BagMode;

/// One recognised bag.
#[derive(Clone, Debug)]
pub(super) struct LoopBag {
    /// The placeholder input that stands for the loop's output (`[batch, dim]`).
    pub placeholder: String,
    /// The flat ids graph input.
    pub ids: String,
    /// The per-bag offsets graph input.
    pub offsets: String,
    /// The table initializer.
    pub table: String,
    /// Reduction.
    pub mode: BagMode,
}

fn body(node: &NodeProto) -> Option<&GraphProto> {
    node.attribute.iter().find(|a| a.name == "body").and_then(|a| a.g.as_ref())
}

/// Recognises one `Loop` node as an embedding bag: its body gathers rows of an
/// initializer at `Slice(<graph input>, …)` and reduces them over axis 0.
fn recognise(graph: &GraphProto, node: &NodeProto) -> Option<LoopBag> {
    if node.op_type != "Loop" || node.output.len() != 1 {
        return None;
    }
    let body = body(node)?;
    let is_input = |name: &str| graph.input.iter().any(|i| i.name == name);
    let is_init = |name: &str| graph.initializer.iter().any(|t| t.name == name);
    let slice = body.node.iter().find(|n| n.op_type == "Slice" && n.input.first().is_some_and(|i| is_input(i)))?;
    let gather = body.node.iter().find(|n| {
        n.op_type == "Gather" && n.input.len() == 2 && is_init(&n.input[0]) && n.input[1] == slice.output[0]
    })?;
    let reduce = body.node.iter().find(|n| n.input.first() == gather.output.first())?;
    let mode = match reduce.op_type.as_str() {
        "ReduceSum" => BagMode::Sum,
        "ReduceMean" => BagMode::Mean,
        _ => return None,
    };
    let ids = slice.input[0].clone();
    // The offsets input: the other integer graph input the loop's inputs derive from.
    let offsets = graph
        .node
        .iter()
        .filter(|n| n.op_type == "Concat")
        .flat_map(|n| n.input.iter())
        .find(|i| is_input(i) && **i != ids)?
        .clone();
    Some(LoopBag { placeholder: node.output[0].clone(), ids, offsets, table: gather.input[0].clone(), mode })
}

/// Cuts every recognised bag loop out of `model` (see the module docs). Returns the bags;
/// the model is unchanged when there are none.
pub(super) fn extract(model: &mut pb::ModelProto) -> Vec<LoopBag> {
    let Some(graph) = model.graph.as_mut() else { return Vec::new() };
    let bags: Vec<LoopBag> = graph.node.iter().filter_map(|n| recognise(graph, n)).collect();
    if bags.is_empty() {
        return bags;
    }
    let dims = |bag: &LoopBag| {
        graph.initializer.iter().find(|t| t.name == bag.table).and_then(|t| t.dims.get(1).copied()).unwrap_or(0)
    };
    let placeholders: Vec<pb::ValueInfoProto> = bags
        .iter()
        .map(|b| value_info(&b.placeholder, pb::tensor_proto::DataType::Float as i32, &[None, Some(dims(b))]))
        .collect();
    let cut: HashSet<&str> = bags.iter().map(|b| b.placeholder.as_str()).collect();
    graph.node.retain(|n| !n.output.iter().any(|o| cut.contains(o.as_str())));
    graph.input.extend(placeholders);
    let flat: HashSet<String> = bags.iter().flat_map(|b| [b.ids.clone(), b.offsets.clone()]).collect();
    prune(graph, &flat);
    bags
}

fn value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{Dimension, dimension::Value};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => Value::DimValue(*v),
                None => Value::DimParam("batch".into()),
            }),
            ..Dimension::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..pb::TypeProto::default()
        }),
        ..pb::ValueInfoProto::default()
    }
}

/// Removes nodes whose outputs nothing uses, then the `removable` graph inputs nothing
/// reads any more.
fn prune(graph: &mut GraphProto, removable: &HashSet<String>) {
    loop {
        let mut used: HashSet<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        for n in &graph.node {
            used.extend(n.input.iter().cloned());
            for a in &n.attribute {
                if let Some(g) = &a.g {
                    collect_reads(g, &mut used);
                }
            }
        }
        let before = graph.node.len();
        graph.node.retain(|n| n.output.iter().any(|o| used.contains(o)));
        if graph.node.len() == before {
            graph.input.retain(|i| used.contains(&i.name) || !removable.contains(&i.name));
            return;
        }
    }
}

fn collect_reads(g: &GraphProto, used: &mut HashSet<String>) {
    for n in &g.node {
        used.extend(n.input.iter().cloned());
        for a in &n.attribute {
            if let Some(sub) = &a.g {
                collect_reads(sub, used);
            }
        }
    }
}
