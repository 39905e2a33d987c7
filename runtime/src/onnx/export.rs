//! graft model → ONNX (opset 17, IR version 8).
//!
//! The benchmarks and parity tests need ONNX Runtime and tract to run *the same model*
//! graft runs, including after quantization. So the exporter writes every weight as f32
//! produced by [`WeightMatrix::dequant_row`] — bit for bit the values graft's kernels
//! multiply with — and maps each graft op onto standard opset-17 operators whose
//! arithmetic matches graft's reference formulas (GELU as `0.5·x · (1 + erf(x·(1/√2)))`,
//! SiLU as `x · σ(x)`, a cross layer as `Gemm`, `Mul`, `Add`). Opset 17 and IR version 8
//! keep the files loadable by every maintained runtime.
//!
//! Not exportable: `dot_interaction` and `fm` (no single standard op; a decomposition
//! would not be a fair peer) and embedding bags over flat indices + offsets (ONNX has no
//! ragged bag op short of a `Loop`). Each is refused with [`Error::OnnxUnsupported`]
//! naming the graft node. Weights are embedded, so a model must stay under protobuf's
//! 2 GiB limit.
//!
//! [`to_proto_with_lora`] writes the same model prepared for ONNX Runtime's own LoRA
//! mechanism ("multi-LoRA"), so that ORT can be measured against graft's LoRA: each
//! targeted linear `y = x·Wᵀ + b` becomes `y = x·Wᵀ + b + scale · (x·A)·B`, where `A`
//! `[in, r]` and `B` `[r, out]` are *graph inputs* named `<node>.lora_A` / `<node>.lora_B`
//! that also have zero initializers of the same names. ONNX treats such an input as an
//! overridable default: without an adapter the model runs and equals the plain export;
//! with an adapter file (see [`super::adapter_format`]) whose tensors carry those names
//! active in the run options, ORT feeds them in place of the zeros. A following
//! activation is a separate graft node, so it applies after the LoRA sum, as in PyTorch.
//!
//! [`WeightMatrix::dequant_row`]: crate::kernels::WeightMatrix::dequant_row

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use tract_onnx::pb::{
    self, AttributeProto, NodeProto, OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto,
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
};

use super::tensor::{f32_proto, i64_proto};
use crate::error::{Error, Result};
use crate::graph::{Activation, BagMode, Graph, InputKind, Op, ValueId};
use crate::model::Model;

/// The opset the exporter targets.
pub const OPSET: i64 = 17;
/// The IR version it writes.
pub const IR_VERSION: i64 = 8;
/// The name of the dynamic batch dimension.
const BATCH: &str = "batch";

/// Writes `model` as ONNX protobuf to `out`.
pub fn export(model: &Model, out: &mut dyn Write) -> Result<()> {
    let bytes = super::encode_proto(&to_proto(model)?)?;
    out.write_all(&bytes).map_err(|e| Error::Io { path: "<onnx output>".into(), source: e })
}

/// Writes `model` as an ONNX file at `path`.
pub fn export_to_path(model: &Model, path: &Path) -> Result<()> {
    let bytes = super::encode_proto(&to_proto(model)?)?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Builds the ONNX model for `model` without serializing it.
pub fn to_proto(model: &Model) -> Result<pb::ModelProto> {
    finish(model, Exporter::new(model).build()?)
}

/// The linears to export with ONNX Runtime LoRA inputs (see [`to_proto_with_lora`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoraInputs {
    /// `(linear node name, rank, scale)`: the node's output gains `scale · (x·A)·B`.
    pub targets: Vec<(String, usize, f32)>,
}

impl LoraInputs {
    /// Every linear node of `model`, in graph order, with one rank and scale.
    pub fn every_linear(model: &Model, rank: usize, scale: f32) -> LoraInputs {
        let targets = model
            .graph()
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Linear { .. }))
            .map(|n| (n.name.clone(), rank, scale))
            .collect();
        LoraInputs { targets }
    }

    /// The graph input (and adapter parameter) holding `A` `[in, r]` of `node`.
    pub fn a_name(node: &str) -> String {
        format!("{node}.lora_A")
    }

    /// The graph input (and adapter parameter) holding `B` `[r, out]` of `node`.
    pub fn b_name(node: &str) -> String {
        format!("{node}.lora_B")
    }

    /// The name and dims of every LoRA input, `A` then `B` for each target in order — what
    /// an adapter file for the exported model must contain. Fails as
    /// [`to_proto_with_lora`] does for a target that is not a linear of `model`.
    pub fn parameter_dims(&self, model: &Model) -> Result<Vec<(String, Vec<usize>)>> {
        let resolved = self.resolve(model.graph())?;
        let mut dims = Vec::with_capacity(2 * self.targets.len());
        for (name, _, _) in &self.targets {
            let Some(target) = resolved.get(name) else { continue };
            let w = &model.graph().weights[target.weight];
            dims.push((LoraInputs::a_name(name), vec![w.cols, target.rank]));
            dims.push((LoraInputs::b_name(name), vec![target.rank, w.rows]));
        }
        Ok(dims)
    }

    /// Checks the targets against `g`: node name → its LoRA.
    fn resolve(&self, g: &Graph) -> Result<HashMap<String, LoraTarget>> {
        let mut out = HashMap::with_capacity(self.targets.len());
        for (name, rank, scale) in &self.targets {
            let bad = |detail: String| Error::Onnx { detail: format!("LoRA target `{name}`: {detail}") };
            let node = g.nodes.iter().find(|n| &n.name == name).ok_or_else(|| bad("no node has this name".into()))?;
            let Op::Linear { weight, .. } = node.op else {
                return Err(Error::OnnxUnsupported {
                    node: name.clone(),
                    op: node.op.name().into(),
                    detail: "ONNX Runtime LoRA inputs are exported for linear nodes only".into(),
                });
            };
            if *rank == 0 {
                return Err(bad("the rank must be at least 1".into()));
            }
            if !scale.is_finite() {
                return Err(bad(format!("the scale {scale} is not finite")));
            }
            let target = LoraTarget { weight, rank: *rank, scale: *scale };
            if out.insert(name.clone(), target).is_some() {
                return Err(bad("targeted more than once".into()));
            }
        }
        Ok(out)
    }
}

/// One resolved LoRA target.
#[derive(Clone, Copy, Debug)]
struct LoraTarget {
    weight: usize,
    rank: usize,
    scale: f32,
}

/// Builds the ONNX model for `model` with ONNX Runtime LoRA inputs on the linears named
/// in `lora`: for each, graph inputs `<node>.lora_A` `[in, r]` and `<node>.lora_B`
/// `[r, out]` (f32, zero-initialized defaults) and `y = x·Wᵀ + b + scale·(x·A)·B`.
///
/// Fails with [`Error::OnnxUnsupported`] for a target that is not a linear node, and with
/// [`Error::Onnx`] for an unknown or repeated target, a zero rank, a non-finite scale, or
/// a LoRA input name already used by the model; otherwise as [`to_proto`].
pub fn to_proto_with_lora(model: &Model, lora: &LoraInputs) -> Result<pb::ModelProto> {
    let mut exporter = Exporter::new(model);
    exporter.lora = lora.resolve(model.graph())?;
    let graph = exporter.build()?;
    finish(model, graph)
}

fn finish(model: &Model, graph: pb::GraphProto) -> Result<pb::ModelProto> {
    Ok(pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET }],
        producer_name: "graft".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: model.graph().producer.clone().unwrap_or_default(),
        graph: Some(graph),
        ..pb::ModelProto::default()
    })
}

struct Exporter<'m> {
    model: &'m Model,
    g: &'m Graph,
    /// Every tensor name in use (values, initializers, intermediates).
    used: HashSet<String>,
    /// The ONNX tensor holding each graft node's output.
    node_tensor: Vec<String>,
    nodes: Vec<NodeProto>,
    initializers: Vec<pb::TensorProto>,
    /// Lazily created shared scalar constants.
    scalars: Vec<(u32, String)>,
    axes_1: Option<String>,
    /// Linears exported with ONNX Runtime LoRA inputs, by node name.
    lora: HashMap<String, LoraTarget>,
    /// The LoRA graph inputs, appended after the model's own.
    lora_inputs: Vec<ValueInfoProto>,
}

pub(super) fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..AttributeProto::default() }
}

pub(super) fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f: v, ..AttributeProto::default() }
}

pub(super) fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..AttributeProto::default()
    }
}

fn value_info(name: &str, elem: DataType, width: usize) -> ValueInfoProto {
    let dims = [dimension::Value::DimParam(BATCH.into()), dimension::Value::DimValue(width as i64)];
    tensor_info(name, elem, dims)
}

/// A 2-D tensor value info.
fn tensor_info(name: &str, elem: DataType, dims: [dimension::Value; 2]) -> ValueInfoProto {
    let dim = |value| pb::tensor_shape_proto::Dimension { denotation: String::new(), value: Some(value) };
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim: dims.into_iter().map(dim).collect() }),
            })),
        }),
        doc_string: String::new(),
    }
}

impl<'m> Exporter<'m> {
    fn new(model: &'m Model) -> Exporter<'m> {
        Exporter {
            model,
            g: model.graph(),
            used: HashSet::new(),
            node_tensor: Vec::new(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            scalars: Vec::new(),
            axes_1: None,
            lora: HashMap::new(),
            lora_inputs: Vec::new(),
        }
    }

    fn unsupported(&self, node: usize, detail: &str) -> Error {
        let n = &self.g.nodes[node];
        Error::OnnxUnsupported { node: n.name.clone(), op: n.op.name().into(), detail: detail.into() }
    }

    /// `base` if unused, else `base_1`, `base_2`, …; the result is reserved.
    fn fresh(&mut self, base: &str) -> String {
        let mut candidate = base.to_string();
        let mut k = 0usize;
        while self.used.contains(&candidate) {
            k += 1;
            candidate = format!("{base}_{k}");
        }
        self.used.insert(candidate.clone());
        candidate
    }

    fn value(&self, v: ValueId) -> &str {
        match v {
            ValueId::Input(i) => &self.g.inputs[i].name,
            ValueId::Node(i) => &self.node_tensor[i],
            ValueId::Const(i) => &self.g.constants[i].name,
        }
    }

    fn emit(&mut self, op: &str, name: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            name: name.into(),
            op_type: op.into(),
            attribute,
            ..NodeProto::default()
        });
    }

    /// A shared f32 scalar initializer.
    fn scalar(&mut self, v: f32) -> String {
        if let Some((_, name)) = self.scalars.iter().find(|(bits, _)| *bits == v.to_bits()) {
            return name.clone();
        }
        let name = self.fresh(&format!("graft.const.{v}"));
        self.initializers.push(f32_proto(&name, &[], &[v]));
        self.scalars.push((v.to_bits(), name.clone()));
        name
    }

    /// An f32 vector tensor of the container as an initializer named after it.
    fn vector(&mut self, tensor: usize) -> Result<String> {
        let values = self.model.vector(tensor)?;
        let base = self.model.envelope().tensors[tensor].name.clone();
        let name = self.fresh(&base);
        self.initializers.push(f32_proto(&name, &[values.len()], values));
        Ok(name)
    }

    /// A weight matrix, dequantized exactly as graft's kernels see it.
    fn matrix(&mut self, weight: usize) -> Result<String> {
        let w = self.model.weight(weight)?;
        let mut values = vec![0.0f32; w.rows * w.cols];
        if w.cols > 0 {
            for (r, row) in values.chunks_exact_mut(w.cols).enumerate() {
                w.dequant_row(r, row);
            }
        }
        let name = self.fresh(&self.g.weights[weight].name.clone());
        self.initializers.push(f32_proto(&name, &[w.rows, w.cols], &values));
        Ok(name)
    }

    fn build(mut self) -> Result<pb::GraphProto> {
        let g = self.g;
        // Graph inputs keep their names; graph outputs are reserved so no internal tensor
        // takes one.
        let mut inputs = Vec::with_capacity(g.inputs.len());
        for def in &g.inputs {
            self.used.insert(def.name.clone());
            inputs.push(match def.kind {
                InputKind::Dense { width } => value_info(&def.name, DataType::Float, width),
                InputKind::Ids { slots } => value_info(&def.name, DataType::Int64, slots),
                InputKind::BagIndices | InputKind::BagOffsets => {
                    let user = g.nodes.iter().position(|n| {
                        n.inputs.iter().any(|v| matches!(v, ValueId::Input(k) if g.inputs[*k].name == def.name))
                    });
                    let detail =
                        "embedding bags over flat indices + offsets have no ONNX equivalent; use a padded `ids` input";
                    return Err(match user {
                        Some(i) => self.unsupported(i, detail),
                        None => Error::OnnxUnsupported {
                            node: def.name.clone(),
                            op: def.kind.as_str().into(),
                            detail: detail.into(),
                        },
                    });
                }
            });
        }
        // LoRA inputs must carry exactly the names the adapter file uses.
        for name in g.nodes.iter().filter(|n| self.lora.contains_key(&n.name)).map(|n| &n.name) {
            for input in [LoraInputs::a_name(name), LoraInputs::b_name(name)] {
                if !self.used.insert(input.clone()) {
                    return Err(Error::Onnx {
                        detail: format!("LoRA target `{name}`: its input name `{input}` is already a graph input"),
                    });
                }
            }
        }
        for o in &g.outputs {
            if !self.used.insert(o.name.clone()) {
                return Err(Error::OnnxUnsupported {
                    node: o.name.clone(),
                    op: "output".into(),
                    detail: "an ONNX graph output cannot share its name with a graph input".into(),
                });
            }
        }
        // Each node's result tensor: its own name when free, or the name of the single
        // graph output that exposes it under that name.
        for (i, node) in g.nodes.iter().enumerate() {
            let exposed_as_self = g.outputs.iter().any(|o| o.name == node.name && o.value == ValueId::Node(i));
            let name = if exposed_as_self { node.name.clone() } else { self.fresh(&node.name) };
            self.used.insert(name.clone());
            self.node_tensor.push(name);
        }
        for i in 0..g.nodes.len() {
            self.node(i)?;
        }
        let mut outputs = Vec::with_capacity(g.outputs.len());
        for o in &g.outputs {
            let src = self.value(o.value).to_string();
            if src != o.name {
                let name = self.fresh(&format!("{}/Identity", o.name));
                self.emit("Identity", &name, &[&src], &o.name, Vec::new());
            }
            outputs.push(value_info(&o.name, DataType::Float, g.value_width(o.value)));
        }
        inputs.append(&mut self.lora_inputs);
        Ok(pb::GraphProto {
            node: self.nodes,
            name: g.name.clone().unwrap_or_else(|| "graft".into()),
            initializer: self.initializers,
            input: inputs,
            output: outputs,
            ..pb::GraphProto::default()
        })
    }

    fn node(&mut self, i: usize) -> Result<()> {
        let g = self.g;
        let node = &g.nodes[i];
        let out = self.node_tensor[i].clone();
        let inputs: Vec<String> = node.inputs.iter().map(|&v| self.value(v).to_string()).collect();
        let x = inputs.first().cloned().unwrap_or_default();
        let step = |this: &mut Self, op: &str| this.fresh(&format!("{}/{op}", node.name));
        // Values are exported as `[batch, width]`: ops over the last axis are exact only
        // when a row is one vector along it.
        let one_vector = node.shape.last().is_some_and(|&d| d == node.width);
        if matches!(node.op, Op::Linear { .. } | Op::Cross { .. } | Op::LayerNorm { .. }) && !one_vector {
            return Err(
                self.unsupported(i, "an op over the last axis of a row holding several vectors is not exported")
            );
        }
        match &node.op {
            // Every value is exported as `[batch, width]`: a reshape of a row changes nothing.
            Op::Reshape => {
                let name = step(self, "Identity");
                self.emit("Identity", &name, &[&x], &out, Vec::new());
            }
            Op::Linear { weight, bias } => {
                let w = self.matrix(*weight)?;
                let mut ins = vec![x.clone(), w];
                if let Some(b) = bias {
                    ins.push(self.vector(*b)?);
                }
                let name = step(self, "Gemm");
                let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
                match self.lora.get(&node.name).copied() {
                    None => self.emit("Gemm", &name, &refs, &out, vec![attr_int("transB", 1)]),
                    Some(lora) => {
                        let base = step(self, "Gemm_out");
                        self.emit("Gemm", &name, &refs, &base, vec![attr_int("transB", 1)]);
                        self.lora_delta(i, lora, &x, &base, &out);
                    }
                }
            }
            Op::EmbeddingBag { table, mode } => {
                if inputs.len() != 1 {
                    return Err(self.unsupported(
                        i,
                        "embedding bags over flat indices + offsets have no ONNX equivalent; use a padded `ids` input",
                    ));
                }
                let t = self.matrix(*table)?;
                let gathered = step(self, "Gather_out");
                let gather_name = step(self, "Gather");
                self.emit("Gather", &gather_name, &[&t, &x], &gathered, Vec::new());
                match mode {
                    BagMode::Sum => {
                        let axes = match &self.axes_1 {
                            Some(a) => a.clone(),
                            None => {
                                let a = self.fresh("graft.axes_1");
                                self.initializers.push(i64_proto(&a, &[1], &[1]));
                                self.axes_1 = Some(a.clone());
                                a
                            }
                        };
                        let name = step(self, "ReduceSum");
                        self.emit("ReduceSum", &name, &[&gathered, &axes], &out, vec![attr_int("keepdims", 0)]);
                    }
                    BagMode::Mean => {
                        let name = step(self, "ReduceMean");
                        let attrs = vec![attr_ints("axes", &[1]), attr_int("keepdims", 0)];
                        self.emit("ReduceMean", &name, &[&gathered], &out, attrs);
                    }
                }
            }
            Op::Activation(act) => self.activation(i, *act, &x, &out),
            Op::Concat { axis } => {
                // Only concatenations of whole rows are a concat along ONNX axis 1 of the
                // exported `[batch, width]` tensors.
                let flat = match axis {
                    None => true,
                    Some(a) => node.inputs.iter().all(|&v| g.value_shape(v)[..*a].iter().product::<usize>() == 1),
                };
                if !flat {
                    return Err(self.unsupported(i, "concat along an inner axis of a row is not exported"));
                }
                let name = step(self, "Concat");
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                self.emit("Concat", &name, &refs, &out, vec![attr_int("axis", 1)]);
            }
            Op::Add { bias: param } | Op::Mul { scale: param } => {
                let op = if matches!(node.op, Op::Add { .. }) { "Add" } else { "Mul" };
                let rhs = match param {
                    Some(t) => self.vector(*t)?,
                    None => inputs.get(1).cloned().unwrap_or_default(),
                };
                let name = step(self, op);
                self.emit(op, &name, &[&x, &rhs], &out, Vec::new());
            }
            Op::LayerNorm { gamma, beta, epsilon } => {
                let mut ins = vec![x.clone(), self.vector(*gamma)?];
                if let Some(b) = beta {
                    ins.push(self.vector(*b)?);
                }
                let name = step(self, "LayerNormalization");
                let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
                let attrs = vec![attr_int("axis", -1), attr_float("epsilon", *epsilon)];
                self.emit("LayerNormalization", &name, &refs, &out, attrs);
            }
            Op::Cross { weight, bias } => {
                // x0 ⊙ (W·xl + b) + xl
                let xl = inputs.get(1).cloned().unwrap_or_default();
                let w = self.matrix(*weight)?;
                let mut ins = vec![xl.clone(), w];
                if let Some(b) = bias {
                    ins.push(self.vector(*b)?);
                }
                let (lin, lin_name) = (step(self, "Gemm_out"), step(self, "Gemm"));
                let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
                self.emit("Gemm", &lin_name, &refs, &lin, vec![attr_int("transB", 1)]);
                let (prod, prod_name) = (step(self, "Mul_out"), step(self, "Mul"));
                self.emit("Mul", &prod_name, &[&x, &lin], &prod, Vec::new());
                let add_name = step(self, "Add");
                self.emit("Add", &add_name, &[&prod, &xl], &out, Vec::new());
            }
            Op::DotInteraction { .. } => {
                return Err(self.unsupported(i, "dot_interaction has no single ONNX operator and is not exported"));
            }
            Op::Fm => {
                return Err(self.unsupported(i, "fm has no single ONNX operator and is not exported"));
            }
            // Element-wise ops of operands of the output's shape are layout-free: they map
            // to the same ONNX op on the exported `[batch, width]` tensors.
            Op::Binary(b)
                if node
                    .inputs
                    .iter()
                    .all(|&v| !matches!(v, ValueId::Const(_)) && g.value_shape(v) == &node.shape[..])
                    && g.value_type(node.inputs[0]) == crate::graph::ValueType::F32
                    && onnx_binary(*b).is_some() =>
            {
                let op = onnx_binary(*b).unwrap_or("Add");
                let name = step(self, op);
                let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
                self.emit(op, &name, &refs, &out, Vec::new());
            }
            Op::Unary(u) if node.dtype == crate::graph::ValueType::F32 && onnx_unary(*u).is_some() => {
                let op = onnx_unary(*u).unwrap_or("Neg");
                let name = step(self, op);
                self.emit(op, &name, &[&x], &out, Vec::new());
            }
            other => {
                return Err(self.unsupported(
                    i,
                    &format!("`{}` is not exported to ONNX (only element-wise tensor ops are)", other.name()),
                ));
            }
        }
        Ok(())
    }

    /// `out = base + scale · (x·A)·B` for linear node `i`, declaring `A` and `B` as graph
    /// inputs with zero defaults.
    fn lora_delta(&mut self, i: usize, lora: LoraTarget, x: &str, base: &str, out: &str) {
        let node_name = self.g.nodes[i].name.clone();
        let step = |this: &mut Self, op: &str| this.fresh(&format!("{node_name}/lora/{op}"));
        let w = &self.g.weights[lora.weight];
        let (fan_in, fan_out, r) = (w.cols, w.rows, lora.rank);
        let (a, b) = (LoraInputs::a_name(&node_name), LoraInputs::b_name(&node_name));
        for (name, rows, cols) in [(&a, fan_in, r), (&b, r, fan_out)] {
            let dims = [dimension::Value::DimValue(rows as i64), dimension::Value::DimValue(cols as i64)];
            self.lora_inputs.push(tensor_info(name, DataType::Float, dims));
            self.initializers.push(f32_proto(name, &[rows, cols], &vec![0.0; rows * cols]));
        }
        let scale = self.scalar(lora.scale);
        let (xa, xa_name) = (step(self, "MatMul_out"), step(self, "MatMul"));
        self.emit("MatMul", &xa_name, &[x, &a], &xa, Vec::new());
        let (xab, xab_name) = (step(self, "MatMul_1_out"), step(self, "MatMul_1"));
        self.emit("MatMul", &xab_name, &[&xa, &b], &xab, Vec::new());
        let (delta, delta_name) = (step(self, "Mul_out"), step(self, "Mul"));
        self.emit("Mul", &delta_name, &[&xab, &scale], &delta, Vec::new());
        let add_name = step(self, "Add");
        self.emit("Add", &add_name, &[base, &delta], out, Vec::new());
    }

    fn activation(&mut self, i: usize, act: Activation, x: &str, out: &str) {
        let node_name = self.g.nodes[i].name.clone();
        let step = |this: &mut Self, op: &str| this.fresh(&format!("{node_name}/{op}"));
        match act {
            Activation::Relu | Activation::Sigmoid | Activation::Tanh => {
                let op = match act {
                    Activation::Relu => "Relu",
                    Activation::Sigmoid => "Sigmoid",
                    _ => "Tanh",
                };
                let name = step(self, op);
                self.emit(op, &name, &[x], out, Vec::new());
            }
            Activation::Silu => {
                // x · σ(x)
                let (s, s_name) = (step(self, "Sigmoid_out"), step(self, "Sigmoid"));
                self.emit("Sigmoid", &s_name, &[x], &s, Vec::new());
                let name = step(self, "Mul");
                self.emit("Mul", &name, &[x, &s], out, Vec::new());
            }
            Activation::Gelu => {
                // (0.5 · x) · (1 + erf(x · (1/√2))), the order graft evaluates it in.
                let (c, one, half) = (self.scalar(std::f32::consts::FRAC_1_SQRT_2), self.scalar(1.0), self.scalar(0.5));
                let (a, a_name) = (step(self, "Mul_out"), step(self, "Mul"));
                self.emit("Mul", &a_name, &[x, &c], &a, Vec::new());
                let (e, e_name) = (step(self, "Erf_out"), step(self, "Erf"));
                self.emit("Erf", &e_name, &[&a], &e, Vec::new());
                let (p, p_name) = (step(self, "Add_out"), step(self, "Add"));
                self.emit("Add", &p_name, &[&e, &one], &p, Vec::new());
                let (h, h_name) = (step(self, "Mul_1_out"), step(self, "Mul_1"));
                self.emit("Mul", &h_name, &[x, &half], &h, Vec::new());
                let name = step(self, "Mul_2");
                self.emit("Mul", &name, &[&h, &p], out, Vec::new());
            }
            Activation::GeluTanh => {
                // (0.5 · x) · (1 + tanh(√(2/π) · (x + 0.044715 · x³)))
                let (k, c, one, half) =
                    (self.scalar(0.797_884_6), self.scalar(0.044_715), self.scalar(1.0), self.scalar(0.5));
                let chain = |this: &mut Self, op: &str, tag: &str, ins: &[&str]| -> String {
                    let (o, n) = (step(this, &format!("{tag}_out")), step(this, tag));
                    this.emit(op, &n, ins, &o, Vec::new());
                    o
                };
                let cx = chain(self, "Mul", "Mul", &[&c, x]);
                let cxx = chain(self, "Mul", "Mul_1", &[&cx, x]);
                let cxxx = chain(self, "Mul", "Mul_2", &[&cxx, x]);
                let inner = chain(self, "Add", "Add", &[x, &cxxx]);
                let scaled = chain(self, "Mul", "Mul_3", &[&k, &inner]);
                let t = chain(self, "Tanh", "Tanh", &[&scaled]);
                let p = chain(self, "Add", "Add_1", &[&one, &t]);
                let h = chain(self, "Mul", "Mul_4", &[&half, x]);
                let name = step(self, "Mul_5");
                self.emit("Mul", &name, &[&h, &p], out, Vec::new());
            }
        }
    }
}

/// The ONNX op of a same-shape f32 binary op, where one exists.
fn onnx_binary(b: crate::graph::BinaryOp) -> Option<&'static str> {
    use crate::graph::BinaryOp as B;
    Some(match b {
        B::Add => "Add",
        B::Sub => "Sub",
        B::Mul => "Mul",
        B::Div => "Div",
        B::Pow => "Pow",
        B::Min => "Min",
        B::Max => "Max",
        _ => return None,
    })
}

/// The ONNX op of a parameterless f32 unary op, where one exists.
fn onnx_unary(u: crate::graph::UnaryOp) -> Option<&'static str> {
    use crate::graph::UnaryOp as U;
    Some(match u {
        U::Neg => "Neg",
        U::Abs => "Abs",
        U::Exp => "Exp",
        U::Log => "Log",
        U::Sqrt => "Sqrt",
        U::Reciprocal => "Reciprocal",
        U::Erf => "Erf",
        U::Floor => "Floor",
        U::Ceil => "Ceil",
        U::Round => "Round",
        U::Sign => "Sign",
        U::Softplus => "Softplus",
        U::Sin => "Sin",
        U::Cos => "Cos",
        _ => return None,
    })
}
