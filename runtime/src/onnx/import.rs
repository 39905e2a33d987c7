//! ONNX graph → [`ModelBuilder`].
//!
//! The importer walks the ONNX nodes once, in their (required) topological order, keeping
//! for every ONNX value what it is in graft terms: a constant, a `[batch, …]` activation
//! that is some graft value, a sparse ids input, or the `[batch, slots, dim]` result of a
//! `Gather` that is waiting for the reduction that makes it an embedding bag. Activations
//! carry their ONNX shape with the batch dimension kept symbolic, so a `Reshape`,
//! `Flatten`, `Squeeze` or `Unsqueeze` is accepted only when it provably keeps each row's
//! values in place and the batch on axis 0 — then it is a no-op on graft's row-major
//! rows. Constants are decoded once and shared; large parameters are handed to the
//! builder as row generators over the decoded values, so a table is never copied again.
//!
//! Two multi-node patterns are fused before the walk: `MatMul` followed by the `Add` of a
//! constant bias (one linear), and the exact-GELU decomposition torch emits below opset 20
//! (`Div(x, √2)` → `Erf` → `Add 1` → `Mul x` → `Mul 0.5`, in its common orderings).
//!
//! Conventions: axis 0 of every graph input is the batch, whatever size it declares, and
//! every other axis must have a fixed size. Float inputs become dense inputs; int64 and
//! int32 inputs become graft `ids` inputs (passed as i64 at run time). An input that is
//! also an initializer is a constant. ONNX `Gather` wraps negative indices; graft rejects
//! any id outside its table at run time instead, so a padded bag must pad with a real
//! (zero) row, as the torch exports of the fixtures do.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use tract_onnx::pb::{self, NodeProto, attribute_proto::AttributeType, tensor_proto::DataType};

use super::tensor::{self, ConstData, ConstTensor};
use crate::builder::{Matrix, ModelBuilder};
use crate::error::{Error, Result};
use crate::graph::{Activation, BagMode};

/// Imports an ONNX file. The model is named after the file stem.
///
/// Errors: [`Error::Io`] if the file cannot be read, [`Error::Onnx`] if it is not a
/// well-formed ONNX model, [`Error::OnnxUnsupported`] naming the first node (or graph
/// input/output) graft cannot represent exactly, and [`Error::TensorEntry`] for a
/// parameter holding NaN or ±Inf.
pub fn import(path: &Path) -> Result<ModelBuilder> {
    let proto = super::read_proto(path)?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("onnx");
    import_named(proto, stem, Some(path))
}

/// Imports an ONNX model held in memory. The model is named after the ONNX graph.
pub fn import_bytes(bytes: &[u8]) -> Result<ModelBuilder> {
    let proto = super::decode_proto(bytes)?;
    let name = proto.graph.as_ref().map(|g| g.name.clone()).filter(|n| !n.is_empty());
    import_proto(proto, name.as_deref().unwrap_or("onnx"))
}

/// Imports a parsed ONNX model, naming the graft model `name`.
pub fn import_proto(model: pb::ModelProto, name: &str) -> Result<ModelBuilder> {
    import_named(model, name, None)
}

fn import_named(model: pb::ModelProto, name: &str, path: Option<&Path>) -> Result<ModelBuilder> {
    let mut producer = String::from("graft onnx import");
    if let Some(p) = path {
        producer.push_str(&format!(" of {}", p.display()));
    }
    if !model.producer_name.is_empty() {
        producer.push_str(&format!(" (exported by {} {})", model.producer_name, model.producer_version));
    }
    let graph = model.graph.ok_or_else(|| Error::Onnx { detail: "the model has no graph".into() })?;
    let mut builder = ModelBuilder::new(name);
    builder.producer(producer);
    Importer::new(builder, &graph).run(graph)
}

/// What an ONNX value is in graft terms.
#[derive(Clone, Debug)]
enum Val {
    /// A constant tensor.
    Const(Rc<ConstTensor>),
    /// An f32 activation: graft value `id`, ONNX shape `[batch, dims…]`, row-major with
    /// `dims.iter().product()` features per row.
    Dense { id: String, dims: Vec<usize> },
    /// An integer graph input (graft `ids` input `input`), ONNX shape `[batch, dims…]`.
    Ids { input: String, dims: Vec<usize> },
    /// `Gather(table, ids [batch, slots])` = `[batch, slots, dim]`, not yet reduced.
    Gathered(Rc<Gathered>),
}

#[derive(Debug)]
struct Gathered {
    table_name: String,
    table_values: Arc<Vec<f32>>,
    ids: String,
    slots: usize,
    rows: usize,
    dim: usize,
    /// Preferred graft node name for the bag.
    base_name: String,
    /// The Gather node's ONNX name.
    source: String,
}

impl Val {
    fn describe(&self) -> String {
        match self {
            Val::Const(c) => format!("the constant `{}` {:?}", c.name, c.dims),
            Val::Dense { dims, .. } => format!("an f32 activation [batch, {}]", join_dims(dims)),
            Val::Ids { input, dims } => format!("the integer ids input `{input}` [batch, {}]", join_dims(dims)),
            Val::Gathered(g) => {
                format!(
                    "the unreduced lookup into `{}` [batch, {}, {}] (reduce it over axis 1)",
                    g.table_name, g.slots, g.dim
                )
            }
        }
    }
}

fn join_dims(dims: &[usize]) -> String {
    dims.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// Features per row of an activation with non-batch dims `dims`.
fn width(dims: &[usize]) -> usize {
    dims.iter().product()
}

/// Unique graft node names and parameter tensor names.
#[derive(Default)]
struct Names {
    nodes: HashSet<String>,
    tensors: HashSet<String>,
}

impl Names {
    /// Claims `base` (or `base_1`, `base_2`, …) as a node name whose parameter tensors
    /// `<name>.<suffix>` are all still free.
    fn claim(&mut self, base: &str, suffixes: &[&str]) -> String {
        let free = |names: &Names, c: &str| {
            !names.nodes.contains(c) && suffixes.iter().all(|s| !names.tensors.contains(&format!("{c}.{s}")))
        };
        let mut candidate = base.to_string();
        let mut k = 0usize;
        while !free(self, &candidate) {
            k += 1;
            candidate = format!("{base}_{k}");
        }
        for s in suffixes {
            self.tensors.insert(format!("{candidate}.{s}"));
        }
        self.nodes.insert(candidate.clone());
        candidate
    }
}

/// Parameter tensor suffixes each kind of node owns (q8 adds `.weight.scale`).
const LINEAR_TENSORS: &[&str] = &["weight", "bias", "weight.scale"];
const TABLE_TENSORS: &[&str] = &["weight", "weight.scale"];
const NORM_TENSORS: &[&str] = &["weight", "bias"];

/// `/top_fc1/Gemm` → `top_fc1`; `/encoder/layers.0/fc/MatMul` → `encoder.layers.0.fc`;
/// `None` when the name has no module path.
fn module_path(onnx_name: &str) -> Option<String> {
    let parts: Vec<&str> = onnx_name.trim_start_matches('/').split('/').collect();
    if parts.len() < 2 {
        return None;
    }
    let path = parts[..parts.len() - 1].iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join(".");
    let path = sanitize(&path);
    (!path.is_empty()).then_some(path)
}

/// `/bot/Relu_1` → `bot.Relu_1`; characters outside `[A-Za-z0-9_.-]` become `_`.
fn sanitize(name: &str) -> String {
    name.trim_start_matches('/')
        .chars()
        .map(|c| match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') => c,
            _ => '_',
        })
        .collect()
}

/// The name of an initializer as a module path: `top_fc1.weight` → `top_fc1`.
fn param_module(init: &str) -> Option<String> {
    init.strip_suffix(".weight").filter(|m| !m.is_empty()).map(sanitize)
}

fn is_default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

/// A node with the helpers for its attributes and errors.
struct N<'a> {
    node: &'a NodeProto,
    index: usize,
}

impl<'a> N<'a> {
    /// The name errors use: the node name, else its first output, else its position.
    fn label(&self) -> String {
        if !self.node.name.is_empty() {
            self.node.name.clone()
        } else if let Some(o) = self.node.output.first().filter(|o| !o.is_empty()) {
            o.clone()
        } else {
            format!("#{}", self.index)
        }
    }

    fn op(&self) -> String {
        if is_default_domain(&self.node.domain) {
            self.node.op_type.clone()
        } else {
            format!("{}:{}", self.node.domain, self.node.op_type)
        }
    }

    fn unsupported(&self, detail: impl Into<String>) -> Error {
        Error::OnnxUnsupported { node: self.label(), op: self.op(), detail: detail.into() }
    }

    fn malformed(&self, detail: impl std::fmt::Display) -> Error {
        Error::Onnx { detail: format!("node `{}` ({}): {detail}", self.label(), self.op()) }
    }

    /// Refuses attributes this importer does not interpret (they could change the meaning).
    fn only_attrs(&self, known: &[&str]) -> Result<()> {
        for a in &self.node.attribute {
            if !known.contains(&a.name.as_str()) {
                return Err(self.unsupported(format!("attribute `{}` is not supported", a.name)));
            }
            if !a.ref_attr_name.is_empty() {
                return Err(self.unsupported(format!("attribute `{}` refers to a function attribute", a.name)));
            }
        }
        Ok(())
    }

    fn attr(&self, name: &str) -> Option<&'a pb::AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    fn attr_int(&self, name: &str, default: i64) -> Result<i64> {
        match self.attr(name) {
            None => Ok(default),
            Some(a) if a.r#type == AttributeType::Int as i32 || a.r#type == AttributeType::Undefined as i32 => Ok(a.i),
            Some(_) => Err(self.malformed(format_args!("attribute `{name}` must be an int"))),
        }
    }

    fn attr_float(&self, name: &str, default: f32) -> Result<f32> {
        let v = match self.attr(name) {
            None => default,
            Some(a) if a.r#type == AttributeType::Float as i32 || a.r#type == AttributeType::Undefined as i32 => a.f,
            Some(_) => {
                return Err(self.malformed(format_args!("attribute `{name}` must be a float")));
            }
        };
        if !v.is_finite() {
            return Err(self.unsupported(format!("attribute `{name}` is not finite ({v})")));
        }
        Ok(v)
    }

    fn attr_ints(&self, name: &str) -> Result<Option<Vec<i64>>> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.r#type == AttributeType::Ints as i32 || a.r#type == AttributeType::Undefined as i32 => {
                Ok(Some(a.ints.clone()))
            }
            Some(_) => Err(self.malformed(format_args!("attribute `{name}` must be a list of ints"))),
        }
    }

    fn attr_string(&self, name: &str) -> Result<Option<String>> {
        match self.attr(name) {
            None => Ok(None),
            Some(a) if a.r#type == AttributeType::String as i32 || a.r#type == AttributeType::Undefined as i32 => {
                String::from_utf8(a.s.clone())
                    .map(Some)
                    .map_err(|_| self.malformed(format_args!("attribute `{name}` is not UTF-8")))
            }
            Some(_) => Err(self.malformed(format_args!("attribute `{name}` must be a string"))),
        }
    }

    /// The name of input `i`, or `None` when absent (ONNX marks a skipped optional input
    /// with an empty name).
    fn input_name(&self, i: usize) -> Option<&'a str> {
        self.node.input.get(i).map(String::as_str).filter(|s| !s.is_empty())
    }

    fn arity(&self, min: usize, max: usize) -> Result<()> {
        let n = self.node.input.iter().rposition(|s| !s.is_empty()).map_or(0, |p| p + 1);
        if n < min || n > max {
            return Err(self.malformed(format_args!("takes {min}..={max} inputs, has {n}")));
        }
        if self.node.output.first().is_none_or(|o| o.is_empty()) {
            return Err(self.malformed("has no output"));
        }
        Ok(())
    }

    fn output(&self) -> &'a str {
        self.node.output.first().map_or("", String::as_str)
    }
}

/// A matched GELU decomposition.
#[derive(Debug)]
struct GeluMatch {
    /// The ONNX value GELU is applied to.
    x: String,
    /// Every node of the pattern, in graph order; the last one is the anchor that emits it.
    members: Vec<usize>,
    /// The Erf node (for naming).
    erf: usize,
}

struct Importer {
    b: ModelBuilder,
    vals: HashMap<String, Val>,
    names: Names,
    /// Nodes consuming each value, by index.
    uses: HashMap<String, Vec<usize>>,
    /// Values exposed as graph outputs.
    outputs: HashSet<String>,
    /// Nodes already handled as part of a fused pattern.
    skip: HashSet<usize>,
    /// Fused GELUs by anchor node.
    gelus: HashMap<usize, GeluMatch>,
    /// Bags emitted for one-slot lookups used as activations, by ONNX value.
    materialized: HashMap<String, String>,
}

impl Importer {
    fn new(b: ModelBuilder, graph: &pb::GraphProto) -> Importer {
        let mut uses: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, node) in graph.node.iter().enumerate() {
            for input in node.input.iter().filter(|s| !s.is_empty()) {
                let list = uses.entry(input.clone()).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        let outputs = graph.output.iter().map(|o| o.name.clone()).collect();
        Importer {
            b,
            vals: HashMap::new(),
            names: Names::default(),
            uses,
            outputs,
            skip: HashSet::new(),
            gelus: HashMap::new(),
            materialized: HashMap::new(),
        }
    }

    fn run(mut self, mut graph: pb::GraphProto) -> Result<ModelBuilder> {
        if !graph.sparse_initializer.is_empty() {
            return Err(Error::Onnx { detail: "sparse initializers are not supported".into() });
        }
        if graph.output.is_empty() {
            return Err(Error::Onnx { detail: "the graph has no outputs".into() });
        }
        let initializers = std::mem::take(&mut graph.initializer);
        let mut init_names = HashSet::new();
        for t in initializers {
            let c = tensor::decode(t)?;
            init_names.insert(c.name.clone());
            self.define_const(c)?;
        }
        for vi in &graph.input {
            if !init_names.contains(&vi.name) {
                self.graph_input(vi)?;
            }
        }
        for (i, node) in graph.node.iter().enumerate() {
            if node.op_type == "Constant" && is_default_domain(&node.domain) {
                self.constant(&N { node, index: i })?;
                self.skip.insert(i);
            }
        }
        self.find_gelus(&graph.node);

        for (i, node) in graph.node.iter().enumerate() {
            if self.skip.contains(&i) {
                continue;
            }
            let n = N { node, index: i };
            if let Some(m) = self.gelus.remove(&i) {
                self.fused_gelu(&graph.node, &m)?;
                continue;
            }
            self.node(&n, &graph.node)?;
        }

        for vo in &graph.output {
            let bad =
                |detail: String| Error::OnnxUnsupported { node: vo.name.clone(), op: "graph output".into(), detail };
            let val = self
                .vals
                .get(&vo.name)
                .cloned()
                .ok_or_else(|| Error::Onnx { detail: format!("graph output `{}` is never produced", vo.name) })?;
            let id = match val {
                Val::Dense { id, .. } => id,
                Val::Gathered(g) if g.slots == 1 => self.materialize(&vo.name, &g)?.0,
                other => {
                    return Err(bad(format!(
                        "graft outputs are f32 [batch, features] values, this is {}",
                        other.describe()
                    )));
                }
            };
            self.b.output(&vo.name, &id);
        }
        Ok(self.b)
    }

    fn define(&mut self, n: &N<'_>, name: &str, v: Val) -> Result<()> {
        if self.vals.insert(name.to_string(), v).is_some() {
            return Err(n.malformed(format_args!("value `{name}` is defined twice")));
        }
        Ok(())
    }

    fn define_const(&mut self, c: ConstTensor) -> Result<()> {
        let name = c.name.clone();
        if self.vals.insert(name.clone(), Val::Const(Rc::new(c))).is_some() {
            return Err(Error::Onnx { detail: format!("value `{name}` is defined twice") });
        }
        Ok(())
    }

    fn graph_input(&mut self, vi: &pb::ValueInfoProto) -> Result<()> {
        let bad = |detail: String| Error::OnnxUnsupported { node: vi.name.clone(), op: "graph input".into(), detail };
        let Some(pb::type_proto::Value::TensorType(tt)) = vi.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            return Err(bad("only tensor inputs are supported".into()));
        };
        let shape = tt.shape.as_ref().ok_or_else(|| bad("the input has no shape".into()))?;
        if shape.dim.is_empty() {
            return Err(bad("scalar inputs are not supported; inputs are [batch, …]".into()));
        }
        let mut dims = Vec::with_capacity(shape.dim.len() - 1);
        for (axis, d) in shape.dim.iter().enumerate().skip(1) {
            match d.value {
                Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => dims.push(v as usize),
                _ => {
                    return Err(bad(format!(
                        "dimension {axis} must be a known positive size (only axis 0, the batch, may be symbolic)"
                    )));
                }
            }
        }
        let n = width(&dims);
        if self.names.nodes.contains(&vi.name) {
            return Err(Error::Onnx { detail: format!("graph input `{}` is declared twice", vi.name) });
        }
        self.names.nodes.insert(vi.name.clone());
        let val = match DataType::try_from(tt.elem_type) {
            Ok(DataType::Float) => {
                self.b.dense_input(&vi.name, n);
                Val::Dense { id: vi.name.clone(), dims }
            }
            Ok(DataType::Int64 | DataType::Int32) => {
                self.b.ids_input(&vi.name, n);
                Val::Ids { input: vi.name.clone(), dims }
            }
            Ok(other) => {
                return Err(bad(format!(
                    "element type {} is not supported (float inputs become dense features, int64/int32 inputs ids)",
                    other.as_str_name()
                )));
            }
            Err(_) => return Err(bad(format!("unknown element type {}", tt.elem_type))),
        };
        if self.vals.insert(vi.name.clone(), val).is_some() {
            return Err(Error::Onnx { detail: format!("graph input `{}` is defined twice", vi.name) });
        }
        Ok(())
    }

    /// Evaluates a `Constant` node.
    fn constant(&mut self, n: &N<'_>) -> Result<()> {
        if n.node.attribute.len() != 1 || n.node.output.len() != 1 {
            return Err(n.malformed("a Constant node has exactly one attribute and one output"));
        }
        let a = &n.node.attribute[0];
        let name = n.output().to_string();
        let scalar = |data: ConstData| ConstTensor { name: name.clone(), dims: Vec::new(), data };
        let vector = |len: usize, data: ConstData| ConstTensor { name: name.clone(), dims: vec![len], data };
        let c = match a.name.as_str() {
            "value" => {
                let mut t = a.t.clone().ok_or_else(|| n.malformed("attribute `value` holds no tensor"))?;
                t.name = name.clone();
                tensor::decode(t)?
            }
            "value_float" => scalar(ConstData::F32(Arc::new(vec![a.f]))),
            "value_floats" => vector(a.floats.len(), ConstData::F32(Arc::new(a.floats.clone()))),
            "value_int" => scalar(ConstData::I64(vec![a.i])),
            "value_ints" => vector(a.ints.len(), ConstData::I64(a.ints.clone())),
            other => return Err(n.unsupported(format!("Constant with `{other}` is not supported"))),
        };
        self.define_const(c)
    }

    /// Looks up input `i` of a node.
    fn val(&self, n: &N<'_>, i: usize) -> Result<Val> {
        let name = n.input_name(i).ok_or_else(|| n.malformed(format_args!("input {i} is missing")))?;
        self.vals.get(name).cloned().ok_or_else(|| {
            n.malformed(format_args!(
                "input `{name}` is not produced by any earlier node, graph input or initializer (nodes must be topologically sorted)"
            ))
        })
    }

    fn const_input(&self, n: &N<'_>, i: usize, what: &str) -> Result<Rc<ConstTensor>> {
        match self.val(n, i)? {
            Val::Const(c) => Ok(c),
            other => Err(
                n.unsupported(format!("{what} must be a constant (initializer or Constant), got {}", other.describe()))
            ),
        }
    }

    /// Input `i` as an activation `(graft value, dims)`.
    fn dense(&mut self, n: &N<'_>, i: usize) -> Result<(String, Vec<usize>)> {
        match self.val(n, i)? {
            Val::Dense { id, dims } => Ok((id, dims)),
            Val::Gathered(g) if g.slots == 1 => {
                let name = n.input_name(i).unwrap_or_default().to_string();
                self.materialize(&name, &g)
            }
            other => Err(n.unsupported(format!("expects an f32 [batch, …] activation, got {}", other.describe()))),
        }
    }

    /// A one-slot lookup `[batch, 1, dim]` is its own sum: emit the bag once per ONNX value
    /// and use it wherever an activation of that shape is expected. The value itself stays
    /// a lookup, so a reduction over its slot axis is still recognized.
    fn materialize(&mut self, value: &str, g: &Gathered) -> Result<(String, Vec<usize>)> {
        let id = match self.materialized.get(value) {
            Some(id) => id.clone(),
            None => {
                let id = self.bag(g, BagMode::Sum, &g.source)?;
                self.materialized.insert(value.to_string(), id.clone());
                id
            }
        };
        Ok((id, vec![1, g.dim]))
    }

    fn bag(&mut self, g: &Gathered, mode: BagMode, source: &str) -> Result<String> {
        let name = self.names.claim(&g.base_name, TABLE_TENSORS);
        let values = Arc::clone(&g.table_values);
        let cols = g.dim;
        let table = Matrix::generated(g.rows, cols, move |r, out| copy_row(&values, r, cols, 1.0, out));
        self.b.embedding_bag(&name, &[&g.ids], table, mode);
        self.b.set_source(&name, source);
        Ok(name)
    }

    fn node(&mut self, n: &N<'_>, all: &[NodeProto]) -> Result<()> {
        if !is_default_domain(&n.node.domain) {
            return Err(n.unsupported(format!("operators of domain `{}` are not supported", n.node.domain)));
        }
        if n.node.output.len() > 1 && n.node.op_type != "LayerNormalization" {
            return Err(n.unsupported("nodes with more than one output are not supported"));
        }
        match n.node.op_type.as_str() {
            "Gemm" => self.gemm(n),
            "MatMul" => self.matmul(n, all),
            "Add" => self.binary(n, true),
            "Mul" => self.binary(n, false),
            "Relu" => self.activation(n, Activation::Relu),
            "Sigmoid" => self.activation(n, Activation::Sigmoid),
            "Tanh" => self.activation(n, Activation::Tanh),
            "Gelu" => {
                n.only_attrs(&["approximate"])?;
                match n.attr_string("approximate")?.as_deref().unwrap_or("none") {
                    "none" => self.activation(n, Activation::Gelu),
                    "tanh" => self.activation(n, Activation::GeluTanh),
                    other => Err(n.unsupported(format!("approximate = `{other}`"))),
                }
            }
            "Concat" => self.concat(n),
            "Gather" => self.gather(n),
            "ReduceSum" => self.reduce(n, BagMode::Sum),
            "ReduceMean" => self.reduce(n, BagMode::Mean),
            "LayerNormalization" => self.layer_norm(n),
            "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" | "Identity" => self.relayout(n),
            "Cast" => self.cast(n),
            "Erf" => Err(n.unsupported(
                "Erf is supported only inside the exact GELU pattern 0.5·x·(1 + erf(x/√2)) with single-use intermediates",
            )),
            other => Err(n.unsupported(format!("operator `{other}` is not supported by graft"))),
        }
    }

    fn activation(&mut self, n: &N<'_>, act: Activation) -> Result<()> {
        if act != Activation::Gelu && act != Activation::GeluTanh {
            n.only_attrs(&[])?;
        }
        n.arity(1, 1)?;
        let (x, dims) = self.dense(n, 0)?;
        let name = self.names.claim(&sanitize(&n.label()), &[]);
        self.b.activation(&name, act, &x);
        self.b.set_source(&name, &n.label());
        self.define(n, n.output(), Val::Dense { id: name, dims })
    }

    fn fused_gelu(&mut self, all: &[NodeProto], m: &GeluMatch) -> Result<()> {
        let erf = N { node: &all[m.erf], index: m.erf };
        let last = *m.members.last().unwrap_or(&m.erf);
        let anchor = N { node: &all[last], index: last };
        let (x, dims) = match self.vals.get(&m.x).cloned() {
            Some(Val::Dense { id, dims }) => (id, dims),
            Some(Val::Gathered(g)) if g.slots == 1 => self.materialize(&m.x, &g)?,
            Some(other) => {
                return Err(erf.unsupported(format!("GELU of {} is not supported", other.describe())));
            }
            None => {
                return Err(erf.malformed(format_args!("input `{}` is not produced by an earlier node", m.x)));
            }
        };
        let base = module_path(&erf.node.name).unwrap_or_else(|| "gelu".into());
        let name = self.names.claim(&base, &[]);
        self.b.activation(&name, Activation::Gelu, &x);
        let source = m.members.iter().map(|&i| N { node: &all[i], index: i }.label()).collect::<Vec<_>>().join("+");
        self.b.set_source(&name, &source);
        self.define(&anchor, anchor.output(), Val::Dense { id: name, dims })
    }

    /// Naming preference for parameterized nodes: the weight initializer's module, then
    /// the ONNX node's module path, then the sanitized node name.
    fn param_name(n: &N<'_>, init: &str) -> String {
        param_module(init).or_else(|| module_path(&n.node.name)).unwrap_or_else(|| sanitize(&n.label()))
    }

    fn gemm(&mut self, n: &N<'_>) -> Result<()> {
        n.only_attrs(&["alpha", "beta", "transA", "transB"])?;
        n.arity(2, 3)?;
        let alpha = n.attr_float("alpha", 1.0)?;
        let beta = n.attr_float("beta", 1.0)?;
        if n.attr_int("transA", 0)? != 0 {
            return Err(n.unsupported("transA = 1 is not supported (the activation must be [batch, K])"));
        }
        let trans_b = n.attr_int("transB", 0)? != 0;
        let (x, dims) = self.dense(n, 0)?;
        if dims.len() != 1 {
            return Err(n.malformed(format_args!("input A must be rank 2, is [batch, {}]", join_dims(&dims))));
        }
        let w = self.const_input(n, 1, "input B")?;
        let bias = match n.input_name(2) {
            None => None,
            Some(_) => Some(self.const_input(n, 2, "input C")?),
        };
        let linear = self.linear_params(n, &w, trans_b, alpha, dims[0])?;
        let bias = match bias {
            Some(c) if beta != 0.0 => Some(self.row_vector(n, &c, &[linear.rows], beta)?),
            _ => None,
        };
        let name = self.names.claim(&Importer::param_name(n, &w.name), LINEAR_TENSORS);
        let rows = linear.rows;
        self.b.linear(&name, &x, linear, bias);
        self.b.set_source(&name, &n.label());
        self.define(n, n.output(), Val::Dense { id: name, dims: vec![rows] })
    }

    /// `W` as graft's `[out, in]` matrix from an ONNX weight stored `[out, in]` (`out_in`,
    /// Gemm with transB = 1) or `[in, out]` (MatMul, Gemm with transB = 0), scaled by
    /// `alpha`; `k` is the activation's feature count.
    fn linear_params(&self, n: &N<'_>, w: &ConstTensor, out_in: bool, alpha: f32, k: usize) -> Result<Matrix> {
        let values = w
            .f32s()
            .cloned()
            .ok_or_else(|| n.unsupported(format!("weight `{}` is not a floating-point tensor", w.name)))?;
        let &[d0, d1] = w.dims.as_slice() else {
            return Err(n.malformed(format_args!("weight `{}` must be rank 2, is {:?}", w.name, w.dims)));
        };
        let (rows, cols) = if out_in { (d0, d1) } else { (d1, d0) };
        if cols != k {
            return Err(
                n.malformed(format_args!("weight `{}` {:?} does not match the input's {k} features", w.name, w.dims))
            );
        }
        if rows == 0 || cols == 0 {
            return Err(n.unsupported(format!("weight `{}` {:?} is empty", w.name, w.dims)));
        }
        w.check_finite()?;
        if alpha != 1.0 && values.iter().any(|v| !(v * alpha).is_finite()) {
            return Err(n.unsupported(format!("alpha = {alpha} overflows weight `{}`", w.name)));
        }
        Ok(if out_in {
            Matrix::generated(rows, cols, move |r, out| copy_row(&values, r, cols, alpha, out))
        } else {
            Matrix::generated(rows, cols, move |r, out| {
                for (o, v) in out.iter_mut().zip(values.iter().skip(r).step_by(rows)) {
                    *o = v * alpha;
                }
            })
        })
    }

    /// A constant broadcast (numpy rules) against an activation `[batch, dims…]`, flattened
    /// to one row of `width(dims)` values and scaled by `scale`. Constants that vary along
    /// the batch axis are refused.
    fn row_vector(&self, n: &N<'_>, c: &ConstTensor, dims: &[usize], scale: f32) -> Result<Vec<f32>> {
        let values = c.f32s().ok_or_else(|| n.unsupported(format!("constant `{}` is not floating-point", c.name)))?;
        c.check_finite()?;
        let rank = dims.len() + 1;
        if c.dims.len() > rank {
            return Err(n.unsupported(format!(
                "constant `{}` {:?} has a higher rank than the activation [batch, {}]",
                c.name,
                c.dims,
                join_dims(dims)
            )));
        }
        // Align the constant's dims to the right of [batch, dims…].
        let lead = rank - c.dims.len();
        let mut cdims = vec![1usize; rank];
        cdims[lead..].copy_from_slice(&c.dims);
        if cdims[0] != 1 {
            return Err(n.unsupported(format!(
                "constant `{}` {:?} varies along the batch axis; graft applies one vector to every row",
                c.name, c.dims
            )));
        }
        for (axis, (&cd, &d)) in cdims[1..].iter().zip(dims).enumerate() {
            if cd != 1 && cd != d {
                return Err(n.malformed(format_args!(
                    "constant `{}` {:?} does not broadcast against [batch, {}] (axis {})",
                    c.name,
                    c.dims,
                    join_dims(dims),
                    axis + 1
                )));
            }
        }
        // Strides of the constant over the activation's non-batch axes (0 where broadcast).
        let mut strides = vec![0usize; dims.len()];
        let mut s = 1usize;
        for axis in (0..dims.len()).rev() {
            if cdims[axis + 1] != 1 {
                strides[axis] = s;
            }
            s *= cdims[axis + 1];
        }
        let total = width(dims);
        let mut out = Vec::with_capacity(total);
        let mut index = vec![0usize; dims.len()];
        for _ in 0..total {
            let offset: usize = index.iter().zip(&strides).map(|(i, s)| i * s).sum();
            let v = values.get(offset).copied().ok_or_else(|| n.malformed("constant broadcast out of range"))?;
            out.push(v * scale);
            for axis in (0..dims.len()).rev() {
                index[axis] += 1;
                if index[axis] < dims[axis] {
                    break;
                }
                index[axis] = 0;
            }
        }
        if out.iter().any(|v| !v.is_finite()) {
            return Err(n.unsupported(format!("scaling constant `{}` by {scale} overflows", c.name)));
        }
        Ok(out)
    }

    fn matmul(&mut self, n: &N<'_>, all: &[NodeProto]) -> Result<()> {
        n.only_attrs(&[])?;
        n.arity(2, 2)?;
        let (x, dims) = match self.val(n, 0)? {
            Val::Const(_) => {
                return Err(n.unsupported("only activation × constant weight is supported (input A is a constant)"));
            }
            _ => self.dense(n, 0)?,
        };
        if dims.len() != 1 {
            return Err(n.unsupported(format!(
                "input A must be [batch, K], is [batch, {}] (batched MatMul is not a linear)",
                join_dims(&dims)
            )));
        }
        let w = self.const_input(n, 1, "input B (the weight)")?;
        let linear = self.linear_params(n, &w, false, 1.0, dims[0])?;
        let rows = linear.rows;

        // Fold `Add(MatMul(x, W), b)` when the Add is the MatMul's only consumer.
        let mut bias = None;
        let mut defined = n.output().to_string();
        let mut source = n.label();
        let fold = self.single_consumer(n.output()).filter(|&a| {
            all.get(a)
                .is_some_and(|add| add.op_type == "Add" && is_default_domain(&add.domain) && add.attribute.is_empty())
        });
        if let Some(a) = fold {
            let add = N { node: &all[a], index: a };
            let other = match (add.input_name(0), add.input_name(1)) {
                (Some(l), Some(r)) if l == n.output() && r != n.output() => Some(r),
                (Some(l), Some(r)) if r == n.output() && l != n.output() => Some(l),
                _ => None,
            };
            if let Some(Val::Const(c)) = other.and_then(|o| self.vals.get(o)).cloned()
                && add.node.output.len() == 1
                && let Ok(b) = self.row_vector(&add, &c, &[rows], 1.0)
            {
                bias = Some(b);
                defined = add.output().to_string();
                source = format!("{source}+{}", add.label());
                self.skip.insert(a);
            }
        }
        let name = self.names.claim(&Importer::param_name(n, &w.name), LINEAR_TENSORS);
        self.b.linear(&name, &x, linear, bias);
        self.b.set_source(&name, &source);
        self.define(n, &defined, Val::Dense { id: name, dims: vec![rows] })
    }

    fn single_consumer(&self, value: &str) -> Option<usize> {
        if self.outputs.contains(value) {
            return None;
        }
        match self.uses.get(value).map(Vec::as_slice) {
            Some(&[only]) => Some(only),
            _ => None,
        }
    }

    fn binary(&mut self, n: &N<'_>, add: bool) -> Result<()> {
        n.only_attrs(&[])?;
        n.arity(2, 2)?;
        let (a, b) = (self.val(n, 0)?, self.val(n, 1)?);
        let label = n.label();
        let (id, dims) = match (&a, &b) {
            (Val::Const(_), Val::Const(_)) => {
                return Err(n.unsupported("both operands are constants (fold constants before importing)"));
            }
            (Val::Const(c), _) | (_, Val::Const(c)) => {
                let c = Rc::clone(c);
                let x_index = if matches!(a, Val::Const(_)) { 1 } else { 0 };
                let (x, dims) = self.dense(n, x_index)?;
                let v = self.row_vector(n, &c, &dims, 1.0)?;
                let name = self.names.claim(&sanitize(&label), &[if add { "bias" } else { "scale" }]);
                if add {
                    self.b.add_bias(&name, &x, v);
                } else {
                    self.b.mul_scale(&name, &x, v);
                }
                (name, dims)
            }
            _ => {
                let (x, xd) = self.dense(n, 0)?;
                let (y, yd) = self.dense(n, 1)?;
                if xd != yd {
                    return Err(n.unsupported(format!(
                        "operands [batch, {}] and [batch, {}] differ; broadcasting between activations is not supported",
                        join_dims(&xd),
                        join_dims(&yd)
                    )));
                }
                let name = self.names.claim(&sanitize(&label), &[]);
                if add {
                    self.b.add(&name, &x, &y);
                } else {
                    self.b.mul(&name, &x, &y);
                }
                (name, xd)
            }
        };
        self.b.set_source(&id, &label);
        self.define(n, n.output(), Val::Dense { id, dims })
    }

    fn concat(&mut self, n: &N<'_>) -> Result<()> {
        n.only_attrs(&["axis"])?;
        n.arity(1, usize::MAX)?;
        let count = n.node.input.len();
        let mut parts = Vec::with_capacity(count);
        for i in 0..count {
            parts.push(self.dense(n, i)?);
        }
        let rank = parts[0].1.len() + 1;
        if parts.iter().any(|(_, d)| d.len() + 1 != rank) {
            return Err(n.malformed("inputs have different ranks"));
        }
        let axis = normalize_axis(n, n.attr_int("axis", 1)?, rank)?;
        if axis == 0 {
            return Err(n.unsupported("concatenation along the batch axis is not supported"));
        }
        // Concatenating along `axis` appends whole rows only when every axis between the
        // batch and `axis` has size 1.
        let d = axis - 1;
        let mut out = parts[0].1.clone();
        out[d] = 0;
        for (_, dims) in &parts {
            if dims[..d].iter().any(|&x| x != 1) {
                return Err(n.unsupported(format!(
                    "concatenation along axis {axis} of [batch, {}] interleaves rows; only feature concatenation is supported",
                    join_dims(dims)
                )));
            }
            if dims[d + 1..] != out[d + 1..] {
                return Err(n.malformed("inputs differ outside the concatenation axis"));
            }
            out[d] += dims[d];
        }
        if parts.len() == 1 {
            let (id, _) = parts.swap_remove(0);
            return self.define(n, n.output(), Val::Dense { id, dims: out });
        }
        let name = self.names.claim(&sanitize(&n.label()), &[]);
        let ids: Vec<&str> = parts.iter().map(|(id, _)| id.as_str()).collect();
        self.b.concat(&name, &ids);
        self.b.set_source(&name, &n.label());
        self.define(n, n.output(), Val::Dense { id: name, dims: out })
    }

    fn gather(&mut self, n: &N<'_>) -> Result<()> {
        n.only_attrs(&["axis"])?;
        n.arity(2, 2)?;
        let table = self.const_input(n, 0, "the table (input 0)")?;
        let (ids, idims) = match self.val(n, 1)? {
            Val::Ids { input, dims } => (input, dims),
            other => {
                return Err(n.unsupported(format!(
                    "indices must be an integer graph input [batch] or [batch, slots], got {}",
                    other.describe()
                )));
            }
        };
        let values = table
            .f32s()
            .cloned()
            .ok_or_else(|| n.unsupported(format!("table `{}` is not floating-point", table.name)))?;
        let &[rows, dim] = table.dims.as_slice() else {
            return Err(
                n.unsupported(format!("table `{}` must be rank 2 [vocab, dim], is {:?}", table.name, table.dims))
            );
        };
        if normalize_axis(n, n.attr_int("axis", 0)?, 2)? != 0 {
            return Err(n.unsupported("only row lookups (axis 0) are supported"));
        }
        if rows == 0 || dim == 0 {
            return Err(n.unsupported(format!("table `{}` {:?} is empty", table.name, table.dims)));
        }
        table.check_finite()?;
        let base_name =
            param_module(&table.name).or_else(|| module_path(&n.node.name)).unwrap_or_else(|| sanitize(&n.label()));
        let g = Gathered {
            table_values: values,
            table_name: table.name.clone(),
            ids,
            slots: width(&idims),
            rows,
            dim,
            base_name,
            source: n.label(),
        };
        match idims.len() {
            0 => {
                // [batch] ids: each row's lookup is a bag of one.
                let id = self.bag(&g, BagMode::Sum, &n.label())?;
                self.define(n, n.output(), Val::Dense { id, dims: vec![dim] })
            }
            1 => self.define(n, n.output(), Val::Gathered(Rc::new(g))),
            _ => Err(n.unsupported(format!(
                "indices [batch, {}] have more than one slot axis; reshape them to [batch, slots]",
                join_dims(&idims)
            ))),
        }
    }

    fn reduce(&mut self, n: &N<'_>, mode: BagMode) -> Result<()> {
        n.only_attrs(&["axes", "keepdims", "noop_with_empty_axes"])?;
        n.arity(1, 2)?;
        let g = match self.val(n, 0)? {
            Val::Gathered(g) => g,
            other => {
                return Err(n.unsupported(format!(
                    "only the embedding-bag pattern Gather(table, ids [batch, slots]) → reduce over axis 1 is supported; the input is {}",
                    other.describe()
                )));
            }
        };
        // Opset 18 (ReduceMean) and 13 (ReduceSum) moved `axes` from an attribute to an input.
        let axes = match (n.input_name(1), n.attr_ints("axes")?) {
            (Some(_), Some(_)) => {
                return Err(n.malformed("axes are given both as attribute and input"));
            }
            (Some(_), None) => {
                let c = self.const_input(n, 1, "axes")?;
                c.i64s().map(<[i64]>::to_vec).ok_or_else(|| n.malformed("axes must be integers"))?
            }
            (None, Some(a)) => a,
            (None, None) => Vec::new(),
        };
        if axes.is_empty() {
            return Err(n.unsupported("reducing over all axes is not supported; reduce over axis 1 (the slots)"));
        }
        let axes = axes.iter().map(|&a| normalize_axis(n, a, 3)).collect::<Result<Vec<_>>>()?;
        if axes != [1] {
            return Err(n.unsupported(format!(
                "only a reduction over axis 1 (the slots) of [batch, slots, dim] is an embedding bag; axes are {axes:?}"
            )));
        }
        let keep = n.attr_int("keepdims", 1)? != 0;
        let source = format!("{}+{}", g.source, n.label());
        let id = self.bag(&g, mode, &source)?;
        let dims = if keep { vec![1, g.dim] } else { vec![g.dim] };
        self.define(n, n.output(), Val::Dense { id, dims })
    }

    fn layer_norm(&mut self, n: &N<'_>) -> Result<()> {
        n.only_attrs(&["axis", "epsilon", "stash_type"])?;
        n.arity(2, 3)?;
        for extra in n.node.output.iter().skip(1).filter(|o| !o.is_empty()) {
            if self.uses.contains_key(extra) || self.outputs.contains(extra) {
                return Err(
                    n.unsupported(format!("the Mean/InvStdDev output `{extra}` is used; graft computes only Y"))
                );
            }
        }
        let (x, dims) = self.dense(n, 0)?;
        let rank = dims.len() + 1;
        let axis = normalize_axis(n, n.attr_int("axis", -1)?, rank)?;
        if axis == 0 || dims[..axis - 1].iter().any(|&d| d != 1) {
            return Err(n.unsupported(format!(
                "normalizing axes {axis}.. of [batch, {}] is not a per-row normalization over all features",
                join_dims(&dims)
            )));
        }
        let epsilon = n.attr_float("epsilon", 1e-5)?;
        if epsilon < 0.0 {
            return Err(n.unsupported(format!("epsilon {epsilon} is negative")));
        }
        let scale = self.const_input(n, 1, "Scale")?;
        let w = width(&dims);
        let vector = |this: &Self, c: &ConstTensor| -> Result<Vec<f32>> {
            if c.len() != w {
                return Err(n.malformed(format_args!("`{}` {:?} does not have {w} elements", c.name, c.dims)));
            }
            this.row_vector(n, c, &dims, 1.0)
        };
        let gamma = vector(self, &scale)?;
        let beta = match n.input_name(2) {
            Some(_) => {
                let b = self.const_input(n, 2, "B")?;
                Some(vector(self, &b)?)
            }
            None => None,
        };
        let name = self.names.claim(&Importer::param_name(n, &scale.name), NORM_TENSORS);
        self.b.layer_norm(&name, &x, gamma, beta, epsilon);
        self.b.set_source(&name, &n.label());
        self.define(n, n.output(), Val::Dense { id: name, dims })
    }

    /// Shape-only ops: accepted when they keep every row's values in order and the batch
    /// alone on axis 0.
    fn relayout(&mut self, n: &N<'_>) -> Result<()> {
        let op = n.node.op_type.as_str();
        match op {
            "Identity" => n.only_attrs(&[])?,
            "Flatten" => n.only_attrs(&["axis"])?,
            "Reshape" => n.only_attrs(&["allowzero"])?,
            _ => n.only_attrs(&["axes"])?,
        }
        n.arity(1, if matches!(op, "Identity" | "Flatten") { 1 } else { 2 })?;
        let v = self.val(n, 0)?;
        if op == "Identity" {
            return self.define(n, n.output(), v);
        }
        let v = match v {
            Val::Gathered(g) if g.slots == 1 => {
                let (id, dims) = self.dense(n, 0)?;
                Val::Dense { id, dims }
            }
            v => v,
        };
        let dims = match &v {
            Val::Dense { dims, .. } | Val::Ids { dims, .. } => dims.clone(),
            other => {
                return Err(n.unsupported(format!("{op} of {} is not supported", other.describe())));
            }
        };
        let rank = dims.len() + 1;
        let new_dims = match op {
            "Flatten" => {
                let axis = normalize_axis_inclusive(n, n.attr_int("axis", 1)?, rank)?;
                if axis == 0 || dims[..axis - 1].iter().any(|&d| d != 1) {
                    return Err(n.unsupported(format!(
                        "Flatten at axis {axis} of [batch, {}] merges the batch with features",
                        join_dims(&dims)
                    )));
                }
                vec![width(&dims[axis - 1..])]
            }
            "Reshape" => {
                let shape = self.const_input(n, 1, "the target shape")?;
                let target = shape.i64s().ok_or_else(|| n.malformed("the target shape must be integers"))?;
                reshape_dims(n, &dims, target, n.attr_int("allowzero", 0)? != 0)?
            }
            "Squeeze" => {
                let axes = self.axes(n)?;
                match axes {
                    None => dims.iter().copied().filter(|&d| d != 1).collect(),
                    Some(axes) => {
                        let axes = axes.iter().map(|&a| normalize_axis(n, a, rank)).collect::<Result<HashSet<_>>>()?;
                        if axes.contains(&0) {
                            return Err(n.unsupported("squeezing the batch axis is not supported"));
                        }
                        if let Some(&a) = axes.iter().find(|&&a| dims[a - 1] != 1) {
                            return Err(n.malformed(format_args!("axis {a} has size {}, not 1", dims[a - 1])));
                        }
                        dims.iter().enumerate().filter(|(i, _)| !axes.contains(&(i + 1))).map(|(_, &d)| d).collect()
                    }
                }
            }
            _ => {
                let axes = self.axes(n)?.ok_or_else(|| n.malformed("Unsqueeze needs axes"))?;
                let out_rank = rank + axes.len();
                let axes = axes.iter().map(|&a| normalize_axis(n, a, out_rank)).collect::<Result<HashSet<_>>>()?;
                if axes.len() != out_rank - rank {
                    return Err(n.malformed("repeated axes"));
                }
                if axes.contains(&0) {
                    return Err(n.unsupported("inserting an axis before the batch axis is not supported"));
                }
                let mut rest = dims.iter().copied();
                (1..out_rank).map(|a| if axes.contains(&a) { 1 } else { rest.next().unwrap_or(1) }).collect()
            }
        };
        let v = match v {
            Val::Dense { id, .. } => Val::Dense { id, dims: new_dims },
            Val::Ids { input, .. } => Val::Ids { input, dims: new_dims },
            other => other,
        };
        self.define(n, n.output(), v)
    }

    /// `axes` of Squeeze/Unsqueeze: an input from opset 13, an attribute before.
    fn axes(&self, n: &N<'_>) -> Result<Option<Vec<i64>>> {
        match (n.input_name(1), n.attr_ints("axes")?) {
            (Some(_), Some(_)) => Err(n.malformed("axes are given both as attribute and input")),
            (Some(_), None) => {
                let c = self.const_input(n, 1, "axes")?;
                Ok(Some(c.i64s().ok_or_else(|| n.malformed("axes must be integers"))?.to_vec()))
            }
            (None, a) => Ok(a),
        }
    }

    fn cast(&mut self, n: &N<'_>) -> Result<()> {
        n.only_attrs(&["to", "saturate"])?;
        n.arity(1, 1)?;
        let to = DataType::try_from(i32::try_from(n.attr_int("to", 0)?).unwrap_or(-1));
        let v = self.val(n, 0)?;
        match (&v, to) {
            (Val::Ids { .. }, Ok(DataType::Int64 | DataType::Int32)) | (Val::Dense { .. }, Ok(DataType::Float)) => {
                self.define(n, n.output(), v)
            }
            (_, to) => Err(n.unsupported(format!(
                "Cast of {} to {} is not supported (only casts that keep ids integer or activations f32)",
                v.describe(),
                to.map_or("an unknown type", |t| t.as_str_name())
            ))),
        }
    }

    /// Finds exact-GELU decompositions (torch's opset < 20 export, and graft's own export).
    fn find_gelus(&mut self, nodes: &[NodeProto]) {
        let producer: HashMap<&str, usize> = nodes
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.output.iter().filter(|o| !o.is_empty()).map(move |o| (o.as_str(), i)))
            .collect();
        let op_is = |i: usize, op: &str, inputs: usize| {
            nodes.get(i).is_some_and(|n| {
                n.op_type == op
                    && is_default_domain(&n.domain)
                    && n.attribute.is_empty()
                    && n.input.len() == inputs
                    && n.output.len() == 1
            })
        };
        let const_near = |v: &str, target: f32| match self.vals.get(v) {
            Some(Val::Const(c)) => c.scalar_f32().is_some_and(|x| (x - target).abs() <= 1e-6 * target.abs().max(1.0)),
            _ => false,
        };
        // For a binary node, the operand that is not `v` (None if both or neither are).
        let other = |i: usize, v: &str| -> Option<String> {
            let n = &nodes[i];
            match (n.input[0].as_str(), n.input[1].as_str()) {
                (a, b) if a == v && b != v => Some(b.to_string()),
                (a, b) if b == v && a != v => Some(a.to_string()),
                _ => None,
            }
        };
        // For a binary node with one constant operand near `target`, the other operand.
        let with_const = |i: usize, target: f32| -> Option<String> {
            let n = &nodes[i];
            if const_near(&n.input[1], target) {
                Some(n.input[0].clone())
            } else if const_near(&n.input[0], target) {
                Some(n.input[1].clone())
            } else {
                None
            }
        };
        let mut claimed: HashSet<usize> = HashSet::new();
        for (e, erf) in nodes.iter().enumerate() {
            if !op_is(e, "Erf", 1) {
                continue;
            }
            let m = (|| -> Option<GeluMatch> {
                let a = erf.input[0].as_str();
                let d = *producer.get(a)?;
                if self.single_consumer(a) != Some(e) {
                    return None;
                }
                let x = if op_is(d, "Div", 2) {
                    const_near(&nodes[d].input[1], std::f32::consts::SQRT_2).then(|| nodes[d].input[0].clone())?
                } else if op_is(d, "Mul", 2) {
                    with_const(d, std::f32::consts::FRAC_1_SQRT_2)?
                } else {
                    return None;
                };
                let p = self.single_consumer(&erf.output[0]).filter(|&p| op_is(p, "Add", 2))?;
                if other(p, &erf.output[0]).is_none_or(|c| !const_near(&c, 1.0)) {
                    return None;
                }
                let po = nodes[p].output[0].as_str();
                let m1 = self.single_consumer(po).filter(|&m| op_is(m, "Mul", 2))?;
                let m1_other = other(m1, po)?;
                let m1o = nodes[m1].output[0].as_str();
                let members = if m1_other == x {
                    // (x · (1 + erf)) · 0.5
                    let m2 = self.single_consumer(m1o).filter(|&m| op_is(m, "Mul", 2))?;
                    if other(m2, m1o).is_none_or(|c| !const_near(&c, 0.5)) {
                        return None;
                    }
                    vec![d, e, p, m1, m2]
                } else if const_near(&m1_other, 0.5) {
                    // x · ((1 + erf) · 0.5)
                    let m2 = self.single_consumer(m1o).filter(|&m| op_is(m, "Mul", 2))?;
                    if other(m2, m1o)? != x {
                        return None;
                    }
                    vec![d, e, p, m1, m2]
                } else {
                    // (x · 0.5) · (1 + erf)
                    let h = *producer.get(m1_other.as_str())?;
                    if !op_is(h, "Mul", 2) || with_const(h, 0.5)? != x || self.single_consumer(&m1_other) != Some(m1) {
                        return None;
                    }
                    let mut v = vec![d, e, p, h, m1];
                    v.sort_unstable();
                    v
                };
                Some(GeluMatch { x, members, erf: e })
            })();
            if let Some(m) = m
                && m.members.iter().all(|i| !claimed.contains(i) && !self.skip.contains(i))
            {
                claimed.extend(m.members.iter().copied());
                let anchor = *m.members.iter().max().unwrap_or(&e);
                for &i in &m.members {
                    if i != anchor {
                        self.skip.insert(i);
                    }
                }
                let mut m = m;
                m.members.sort_unstable();
                self.gelus.insert(anchor, m);
            }
        }
    }
}

/// Copies row `r` of a row-major `[_, cols]` matrix, scaled, into `out`.
fn copy_row(values: &[f32], r: usize, cols: usize, scale: f32, out: &mut [f32]) {
    let row = values.get(r * cols..(r + 1) * cols).unwrap_or(&[]);
    for (o, &v) in out.iter_mut().zip(row) {
        *o = v * scale;
    }
}

/// An axis in `[-rank, rank)` → `[0, rank)`.
fn normalize_axis(n: &N<'_>, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if !(-r..r).contains(&axis) {
        return Err(n.malformed(format_args!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
}

/// An axis in `[-rank, rank]` → `[0, rank]` (Flatten allows `rank`).
fn normalize_axis_inclusive(n: &N<'_>, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if !(-r..=r).contains(&axis) {
        return Err(n.malformed(format_args!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(if axis < 0 { (axis + r) as usize } else { axis as usize })
}

/// Resolves a Reshape target against `[batch, dims…]`, requiring the batch to stay alone
/// on axis 0; returns the new non-batch dims.
fn reshape_dims(n: &N<'_>, dims: &[usize], target: &[i64], allowzero: bool) -> Result<Vec<usize>> {
    let total = width(dims);
    let Some((&first, rest)) = target.split_first() else {
        return Err(n.unsupported("reshaping to a scalar drops the batch axis"));
    };
    let keeps_batch = (first == 0 && !allowzero) || first == -1;
    if !keeps_batch {
        return Err(n.unsupported(format!(
            "target shape {target:?} does not keep the batch on axis 0 (its first entry must be 0 or -1)"
        )));
    }
    let mut out = Vec::with_capacity(rest.len());
    let mut infer = None;
    for (i, &t) in rest.iter().enumerate() {
        match t {
            0 if !allowzero => {
                let d = dims
                    .get(i)
                    .copied()
                    .ok_or_else(|| n.malformed(format_args!("target {target:?} copies a missing axis")))?;
                out.push(d);
            }
            -1 if first != -1 && infer.is_none() => {
                infer = Some(i);
                out.push(1);
            }
            t if t > 0 => out.push(t as usize),
            _ => {
                return Err(n.unsupported(format!("target shape {target:?} is not a batch-preserving reshape")));
            }
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(n.malformed(format_args!("cannot infer -1 in {target:?} for {total} features")));
        }
        out[i] = total / known;
    }
    if width(&out) != total {
        return Err(n.unsupported(format!(
            "target shape {target:?} does not keep {total} features per batch row (input [batch, {}])",
            join_dims(dims)
        )));
    }
    Ok(out)
}
