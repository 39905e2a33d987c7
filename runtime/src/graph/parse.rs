//! Graph JSON → validated [`Graph`].
//!
//! The schema (version 1):
//!
//! ```json
//! { "version": 1, "name": "dlrm", "producer": "graft convert model.onnx",
//!   "inputs":  [ {"name": "dense", "kind": "dense", "width": 13},
//!                {"name": "ids_f0", "kind": "ids", "slots": 3},
//!                {"name": "idx_f1", "kind": "bag_indices"}, {"name": "off_f1", "kind": "bag_offsets"} ],
//!   "weights": { "top_fc1.weight": {"format": "q8", "shape": [512, 1728]} },
//!   "nodes":   [ {"name": "top_fc1", "op": "linear", "inputs": ["z"],
//!                 "weight": "top_fc1.weight", "bias": "top_fc1.bias", "source": "/top_fc1/Gemm"} ],
//!   "outputs": [ {"name": "logit", "value": "top_fc3"} ] }
//! ```
//!
//! Op attributes: `linear`/`cross` {`weight`, `bias`?}; `embedding_bag` {`table`, `mode`:
//! sum|mean}; `add` {`bias`?}; `mul` {`scale`?}; `layer_norm` {`gamma`, `beta`?,
//! `epsilon`}; `dot_interaction` {`self_interaction`?}; activations, `concat` and `fm`
//! take none. Unknown keys are errors, so a file that relies on a feature this build
//! lacks is refused instead of misread.
//!
//! Version 2 adds: an optional `shape` (row shape) on inputs; `constants`, a list of
//! container tensor names (f32 or i64) that node inputs may name; optional `shape` and
//! `dtype` on nodes (checked against the inferred ones; required by `reshape`/`tile`);
//! `concat` {`axis`?} and the tensor ops `embedding` {`table`}, `reshape`, `transpose`
//! {`perm`}, `slice` {`axis`, `start`, `end`, `step`?}, `gather` {`axis`}, the binary ops
//! (`add` … `prelu`, see [`BinaryOp`]), `where`, the unary ops ([`UnaryOp`]; `leaky_relu`
//! {`alpha`}, `clip` {`min`, `max`}, `hard_sigmoid` {`alpha`, `beta`}, `elu` {`alpha`},
//! `pow_const` {`exponent`}), `cast` {`to`}, `reduce` {`reduce`, `axes`, `keepdims`},
//! `softmax`/`log_softmax` {`axis`}, `matmul`, `tile`, `pad` {`pads`, `value`?}, `topk`
//! {`axis`, `k`, `largest`, `output`: values|indices} and `conv` {`weight`, `bias`?,
//! `kernel`, `strides`, `pads`, `dilations`, `group`}.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::{Map, Value};

use super::shape::{self, Operand};
use super::{
    Activation, BagMode, BinaryOp, ConstDef, FORMAT_VERSION, Graph, InputDef, InputKind, Node, Op, OutputDef, ReduceOp,
    UnaryOp, ValueId, ValueType, WeightDef,
};
use crate::container::Envelope;
use crate::error::{Error, Result, graph_err};
use crate::format::{DType, WeightFormat};

/// Parses and validates graph JSON against the container's tensors.
pub fn parse(json: &str, env: &Envelope) -> Result<Graph> {
    let root: Map<String, Value> =
        serde_json::from_str(json).map_err(|e| graph_err(format_args!("invalid JSON: {e}")))?;
    for key in root.keys() {
        if !matches!(
            key.as_str(),
            "version" | "name" | "producer" | "inputs" | "weights" | "constants" | "nodes" | "outputs"
        ) {
            return Err(graph_err(format_args!("unknown top-level key `{key}`")));
        }
    }
    let version = root.get("version").and_then(Value::as_u64).ok_or_else(|| graph_err("missing integer `version`"))?;
    if version == 0 || version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
    }
    let name = opt_string(&root, "name")?;
    let producer = opt_string(&root, "producer")?;

    let inputs = parse_inputs(array(&root, "inputs")?)?;
    let weights = parse_weights(&root, env)?;
    let constants = parse_constants(&root, env)?;
    let (nodes, outputs, declared) = parse_nodes(&root, &inputs, &weights, &constants, env)?;
    let mut graph = Graph { name, producer, inputs, weights, constants, nodes, outputs };
    let declared = topo_sort(&mut graph, declared)?;
    infer_shapes(&mut graph, env, &declared)?;
    Ok(graph)
}

fn array<'a>(root: &'a Map<String, Value>, key: &str) -> Result<&'a Vec<Value>> {
    root.get(key).and_then(Value::as_array).ok_or_else(|| graph_err(format_args!("missing array `{key}`")))
}

fn opt_string(root: &Map<String, Value>, key: &str) -> Result<Option<String>> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(graph_err(format_args!("`{key}` must be a string"))),
    }
}

fn parse_inputs(list: &[Value]) -> Result<Vec<InputDef>> {
    let mut inputs: Vec<InputDef> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let obj = v.as_object().ok_or_else(|| graph_err(format_args!("input #{i} is not an object")))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| graph_err(format_args!("input #{i} has no string `name`")))?;
        let field = |key: &str| -> Result<usize> {
            obj.get(key)
                .and_then(Value::as_u64)
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| graph_err(format_args!("input `{name}` needs a positive integer `{key}`")))
        };
        let kind_str = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        let (kind, allowed): (InputKind, &[&str]) = match kind_str {
            "dense" => (InputKind::Dense { width: field("width")? }, &["width", "shape"]),
            "ids" => (InputKind::Ids { slots: field("slots")? }, &["slots", "shape"]),
            "bag_indices" => (InputKind::BagIndices, &[]),
            "bag_offsets" => (InputKind::BagOffsets, &[]),
            other => return Err(graph_err(format_args!("input `{name}` has unknown kind `{other}`"))),
        };
        let shape = match (kind, obj.get("shape")) {
            (InputKind::Dense { width } | InputKind::Ids { slots: width }, None) => alloc::vec![width],
            (InputKind::Dense { width } | InputKind::Ids { slots: width }, Some(v)) => {
                let dims = dims_of(v).ok_or_else(|| graph_err(format_args!("input `{name}`: bad `shape`")))?;
                if shape::elements(&dims) != Some(width) {
                    return Err(graph_err(format_args!("input `{name}`: shape {dims:?} does not hold {width} values")));
                }
                dims
            }
            _ => Vec::new(),
        };
        if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "name" | "kind") && !allowed.contains(&k.as_str())) {
            return Err(graph_err(format_args!("input `{name}` has unknown field `{k}`")));
        }
        if inputs.iter().any(|d| d.name == name) {
            return Err(Error::DuplicateName { kind: "input", name: name.to_string() });
        }
        inputs.push(InputDef { name: name.to_string(), kind, shape });
    }
    Ok(inputs)
}

fn parse_weights(root: &Map<String, Value>, env: &Envelope) -> Result<Vec<WeightDef>> {
    let map = match root.get("weights") {
        None => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(graph_err("`weights` must be an object")),
    };
    let mut weights = Vec::with_capacity(map.len());
    for (name, v) in map {
        let obj = v.as_object().ok_or_else(|| graph_err(format_args!("weight `{name}` is not an object")))?;
        if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "format" | "shape")) {
            return Err(graph_err(format_args!("weight `{name}` has unknown field `{k}`")));
        }
        let format_str = obj.get("format").and_then(Value::as_str).unwrap_or("");
        let format = WeightFormat::parse(format_str)
            .ok_or_else(|| graph_err(format_args!("weight `{name}` has unknown format `{format_str}`")))?;
        let shape: Option<Vec<usize>> = obj
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect());
        let Some([rows, cols]) = shape.as_deref().and_then(|s| <[usize; 2]>::try_from(s).ok()) else {
            return Err(graph_err(format_args!("weight `{name}` needs `shape: [rows, cols]`")));
        };
        if rows == 0 || cols == 0 {
            return Err(graph_err(format_args!("weight `{name}` has an empty shape")));
        }
        // Row sizes are computed in bytes (`cols + 8` for q8_rowwise): refuse column counts
        // no container can hold before that arithmetic can overflow.
        if cols.checked_add(crate::quant::Q8_ROWWISE_TRAILER).and_then(|c| c.checked_mul(4)).is_none() {
            return Err(graph_err(format_args!("weight `{name}` has {cols} columns, more than a container can hold")));
        }
        let (dtype, per_row) = format.main_tensor(cols);
        let data = expect_tensor(env, name, name, dtype, &[rows, per_row])?;
        let scale = if format.has_scale_tensor() {
            let scale_name = format!("{name}.scale");
            Some(expect_tensor(env, name, &scale_name, DType::F32, &[rows])?)
        } else {
            None
        };
        weights.push(WeightDef { name: name.clone(), format, rows, cols, data, scale });
    }
    Ok(weights)
}

/// A JSON array of non-negative integers.
fn dims_of(v: &Value) -> Option<Vec<usize>> {
    v.as_array()?.iter().map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok())).collect()
}

fn parse_constants(root: &Map<String, Value>, env: &Envelope) -> Result<Vec<ConstDef>> {
    let list = match root.get("constants") {
        None => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(graph_err("`constants` must be an array of tensor names")),
    };
    let mut out: Vec<ConstDef> = Vec::with_capacity(list.len());
    for v in list {
        let name = v.as_str().ok_or_else(|| graph_err("`constants` entries must be strings"))?;
        let &tensor = env
            .by_name
            .get(name)
            .ok_or_else(|| Error::MissingTensor { node: "constants".into(), tensor: name.to_string() })?;
        let info = &env.tensors[tensor];
        let dtype = match info.dtype {
            DType::F32 => ValueType::F32,
            DType::I64 => ValueType::I64,
            other => {
                return Err(Error::TensorMismatch {
                    tensor: name.to_string(),
                    expected: "F32 or I64 (a constant)".into(),
                    actual: format!("{other}"),
                });
            }
        };
        if out.iter().any(|c| c.name == name) {
            return Err(Error::DuplicateName { kind: "constant", name: name.to_string() });
        }
        out.push(ConstDef { name: name.to_string(), dtype, shape: info.shape.clone(), tensor });
    }
    Ok(out)
}

/// Resolves `tensor` and checks its dtype and shape; `user` names who needs it.
fn expect_tensor(env: &Envelope, user: &str, tensor: &str, dtype: DType, shape: &[usize]) -> Result<usize> {
    let &index = env
        .by_name
        .get(tensor)
        .ok_or_else(|| Error::MissingTensor { node: user.to_string(), tensor: tensor.to_string() })?;
    let info = &env.tensors[index];
    if info.dtype != dtype || info.shape != shape {
        return Err(Error::TensorMismatch {
            tensor: tensor.to_string(),
            expected: format!("{dtype} {shape:?}"),
            actual: format!("{} {:?}", info.dtype, info.shape),
        });
    }
    Ok(index)
}

/// A node as read, before sorting: op with unresolved vector tensors' shapes.
struct RawNode {
    name: String,
    op: Op,
    inputs: Vec<ValueId>,
    source: Option<String>,
}

/// What a node's JSON states about its output, checked once shapes are inferred.
#[derive(Clone, Debug, Default)]
struct Declared {
    shape: Option<Vec<usize>>,
    dtype: Option<ValueType>,
}

type ParsedNodes = (Vec<Node>, Vec<OutputDef>, Vec<Declared>);

fn parse_nodes(
    root: &Map<String, Value>,
    inputs: &[InputDef],
    weights: &[WeightDef],
    constants: &[ConstDef],
    env: &Envelope,
) -> Result<ParsedNodes> {
    let list = array(root, "nodes")?;
    // Names first, so edges may point forward in the list.
    let mut names: BTreeMap<&str, ValueId> =
        inputs.iter().enumerate().map(|(i, d)| (d.name.as_str(), ValueId::Input(i))).collect();
    for (i, c) in constants.iter().enumerate() {
        if names.insert(c.name.as_str(), ValueId::Const(i)).is_some() {
            return Err(Error::DuplicateName { kind: "constant", name: c.name.clone() });
        }
    }
    let mut objects = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let obj = v.as_object().ok_or_else(|| graph_err(format_args!("node #{i} is not an object")))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| graph_err(format_args!("node #{i} has no string `name`")))?;
        if names.insert(name, ValueId::Node(i)).is_some() {
            return Err(Error::DuplicateName { kind: "node", name: name.to_string() });
        }
        objects.push((name, obj));
    }

    let mut raw = Vec::with_capacity(objects.len());
    let mut declared = Vec::with_capacity(objects.len());
    for (name, obj) in objects {
        let attrs = Attrs { node: name, obj, weights, env };
        let op_name = obj.get("op").and_then(Value::as_str).ok_or_else(|| attrs.invalid("op", "missing string"))?;
        let edges =
            obj.get("inputs").and_then(Value::as_array).ok_or_else(|| attrs.invalid("inputs", "missing array"))?;
        let mut node_inputs = Vec::with_capacity(edges.len());
        for e in edges {
            let value = e.as_str().ok_or_else(|| attrs.invalid("inputs", "entries must be strings"))?;
            let id = names
                .get(value)
                .ok_or_else(|| Error::DanglingEdge { node: name.to_string(), value: value.to_string() })?;
            node_inputs.push(*id);
        }
        let source = match obj.get("source") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(attrs.invalid("source", "must be a string")),
        };
        let shape = match obj.get("shape") {
            None => None,
            Some(v) => Some(dims_of(v).ok_or_else(|| attrs.invalid("shape", "must be a list of sizes"))?),
        };
        let dtype = match obj.get("dtype") {
            None => None,
            Some(v) => Some(
                v.as_str().and_then(ValueType::parse).ok_or_else(|| attrs.invalid("dtype", "must be f32 or i64"))?,
            ),
        };
        let op = attrs.op(op_name)?;
        raw.push(RawNode { name: name.to_string(), op, inputs: node_inputs, source });
        declared.push(Declared { shape, dtype });
    }

    let outs = array(root, "outputs")?;
    if outs.is_empty() {
        return Err(Error::InvalidOutput { output: String::new(), detail: "the graph has no outputs".into() });
    }
    let mut outputs: Vec<OutputDef> = Vec::with_capacity(outs.len());
    for (i, v) in outs.iter().enumerate() {
        let obj = v.as_object().ok_or_else(|| graph_err(format_args!("output #{i} is not an object")))?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| graph_err(format_args!("output #{i} has no string `name`")))?;
        let value = obj.get("value").and_then(Value::as_str).ok_or_else(|| Error::InvalidOutput {
            output: name.to_string(),
            detail: "missing string `value`".into(),
        })?;
        let id = *names.get(value).ok_or_else(|| Error::InvalidOutput {
            output: name.to_string(),
            detail: format!("value `{value}` is not a graph input or node"),
        })?;
        if outputs.iter().any(|o| o.name == name) {
            return Err(Error::DuplicateName { kind: "output", name: name.to_string() });
        }
        outputs.push(OutputDef { name: name.to_string(), value: id });
    }

    let nodes = raw
        .into_iter()
        .map(|r| Node {
            name: r.name,
            op: r.op,
            inputs: r.inputs,
            width: 0,
            shape: Vec::new(),
            dtype: ValueType::F32,
            source: r.source,
        })
        .collect();
    Ok((nodes, outputs, declared))
}

/// Typed access to one node's attributes.
struct Attrs<'a> {
    node: &'a str,
    obj: &'a Map<String, Value>,
    weights: &'a [WeightDef],
    env: &'a Envelope,
}

impl Attrs<'_> {
    fn invalid(&self, attribute: &str, detail: impl Into<String>) -> Error {
        Error::InvalidAttribute { node: self.node.to_string(), attribute: attribute.to_string(), detail: detail.into() }
    }

    fn only(&self, allowed: &[&str]) -> Result<()> {
        for k in self.obj.keys() {
            if !matches!(k.as_str(), "name" | "op" | "inputs" | "source" | "shape" | "dtype")
                && !allowed.contains(&k.as_str())
            {
                return Err(self.invalid(k, "unknown attribute for this op"));
            }
        }
        Ok(())
    }

    fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.invalid(key, "must be a string")),
        }
    }

    fn weight(&self, key: &str) -> Result<usize> {
        let name = self.string(key)?.ok_or_else(|| self.invalid(key, "missing"))?;
        self.weights
            .iter()
            .position(|w| w.name == name)
            .ok_or_else(|| Error::MissingTensor { node: self.node.to_string(), tensor: name.to_string() })
    }

    /// An f32 vector tensor; its length is checked once widths are known.
    fn vector(&self, key: &str) -> Result<Option<usize>> {
        let Some(name) = self.string(key)? else { return Ok(None) };
        let &index = self
            .env
            .by_name
            .get(name)
            .ok_or_else(|| Error::MissingTensor { node: self.node.to_string(), tensor: name.to_string() })?;
        let info = &self.env.tensors[index];
        if info.dtype != DType::F32 || info.shape.len() != 1 {
            return Err(Error::TensorMismatch {
                tensor: name.to_string(),
                expected: "F32 [n]".into(),
                actual: format!("{} {:?}", info.dtype, info.shape),
            });
        }
        Ok(Some(index))
    }

    fn usize_attr(&self, key: &str) -> Result<usize> {
        self.obj
            .get(key)
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.invalid(key, "missing or not a non-negative integer"))
    }

    fn usize_list(&self, key: &str) -> Result<Vec<usize>> {
        self.obj.get(key).and_then(dims_of).ok_or_else(|| self.invalid(key, "missing or not a list of sizes"))
    }

    fn pairs(&self, key: &str) -> Result<Vec<(usize, usize)>> {
        let flat = self.usize_list(key)?;
        if flat.len() % 2 != 0 {
            return Err(self.invalid(key, "needs (before, after) pairs"));
        }
        Ok(flat.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }

    fn f32_attr(&self, key: &str, default: Option<f32>) -> Result<f32> {
        match (self.obj.get(key), default) {
            (None, Some(d)) => Ok(d),
            (v, _) => v
                .and_then(Value::as_f64)
                .map(|x| x as f32)
                .filter(|x| !x.is_nan())
                .ok_or_else(|| self.invalid(key, "missing or not a number")),
        }
    }

    fn bool_attr(&self, key: &str, default: bool) -> Result<bool> {
        match self.obj.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(self.invalid(key, "must be a boolean")),
        }
    }

    fn unary(&self, op: &str) -> Result<Option<UnaryOp>> {
        let plain = match op {
            "neg" => UnaryOp::Neg,
            "abs" => UnaryOp::Abs,
            "exp" => UnaryOp::Exp,
            "log" => UnaryOp::Log,
            "sqrt" => UnaryOp::Sqrt,
            "rsqrt" => UnaryOp::Rsqrt,
            "reciprocal" => UnaryOp::Reciprocal,
            "erf" => UnaryOp::Erf,
            "floor" => UnaryOp::Floor,
            "ceil" => UnaryOp::Ceil,
            "round" => UnaryOp::Round,
            "sign" => UnaryOp::Sign,
            "not" => UnaryOp::Not,
            "softplus" => UnaryOp::Softplus,
            "sin" => UnaryOp::Sin,
            "cos" => UnaryOp::Cos,
            "leaky_relu" => {
                self.only(&["alpha"])?;
                return Ok(Some(UnaryOp::LeakyRelu(self.f32_attr("alpha", Some(0.01))?)));
            }
            "clip" => {
                self.only(&["min", "max"])?;
                let (lo, hi) =
                    (self.f32_attr("min", Some(f32::NEG_INFINITY))?, self.f32_attr("max", Some(f32::INFINITY))?);
                return Ok(Some(UnaryOp::Clip(lo, hi)));
            }
            "hard_sigmoid" => {
                self.only(&["alpha", "beta"])?;
                return Ok(Some(UnaryOp::HardSigmoid(
                    self.f32_attr("alpha", Some(0.2))?,
                    self.f32_attr("beta", Some(0.5))?,
                )));
            }
            "elu" => {
                self.only(&["alpha"])?;
                return Ok(Some(UnaryOp::Elu(self.f32_attr("alpha", Some(1.0))?)));
            }
            "pow_const" => {
                self.only(&["exponent"])?;
                return Ok(Some(UnaryOp::PowConst(self.f32_attr("exponent", None)?)));
            }
            _ => return Ok(None),
        };
        self.only(&[])?;
        Ok(Some(plain))
    }

    fn op(&self, op: &str) -> Result<Op> {
        if let Some(a) = Activation::parse(op) {
            self.only(&[])?;
            return Ok(Op::Activation(a));
        }
        if let Some(u) = self.unary(op)? {
            return Ok(Op::Unary(u));
        }
        // `add`/`mul` with one input and a tensor operand keep their version-1 meaning.
        if let Some(b) = BinaryOp::parse(op).filter(|b| !matches!(b, BinaryOp::Add | BinaryOp::Mul)) {
            self.only(&[])?;
            return Ok(Op::Binary(b));
        }
        Ok(match op {
            "linear" | "cross" => {
                self.only(&["weight", "bias"])?;
                let (weight, bias) = (self.weight("weight")?, self.vector("bias")?);
                if op == "linear" { Op::Linear { weight, bias } } else { Op::Cross { weight, bias } }
            }
            "embedding_bag" => {
                self.only(&["table", "mode"])?;
                let mode = match self.string("mode")?.unwrap_or("sum") {
                    "sum" => BagMode::Sum,
                    "mean" => BagMode::Mean,
                    other => return Err(self.invalid("mode", format!("`{other}` is not sum or mean"))),
                };
                Op::EmbeddingBag { table: self.weight("table")?, mode }
            }
            "concat" => {
                self.only(&["axis"])?;
                let axis = if self.obj.contains_key("axis") { Some(self.usize_attr("axis")?) } else { None };
                Op::Concat { axis }
            }
            "embedding" => {
                self.only(&["table"])?;
                Op::Embedding { table: self.weight("table")? }
            }
            "reshape" => {
                self.only(&[])?;
                Op::Reshape
            }
            "tile" => {
                self.only(&[])?;
                Op::Tile
            }
            "matmul" => {
                self.only(&[])?;
                Op::MatMul
            }
            "where" => {
                self.only(&[])?;
                Op::Where
            }
            "transpose" => {
                self.only(&["perm"])?;
                Op::Transpose { perm: self.usize_list("perm")? }
            }
            "slice" => {
                self.only(&["axis", "start", "end", "step"])?;
                let step = if self.obj.contains_key("step") { self.usize_attr("step")? } else { 1 };
                Op::Slice {
                    axis: self.usize_attr("axis")?,
                    start: self.usize_attr("start")?,
                    end: self.usize_attr("end")?,
                    step,
                }
            }
            "gather" => {
                self.only(&["axis"])?;
                Op::Gather { axis: self.usize_attr("axis")? }
            }
            "gather_elements" => {
                self.only(&["axis"])?;
                Op::GatherElements { axis: self.usize_attr("axis")? }
            }
            "cast" => {
                self.only(&["to"])?;
                let to = self
                    .string("to")?
                    .and_then(ValueType::parse)
                    .ok_or_else(|| self.invalid("to", "must be f32 or i64"))?;
                Op::Cast { to }
            }
            "reduce" => {
                self.only(&["reduce", "axes", "keepdims"])?;
                let how = self.string("reduce")?.unwrap_or("");
                let op =
                    ReduceOp::parse(how).ok_or_else(|| self.invalid("reduce", format!("unknown reduction `{how}`")))?;
                Op::Reduce { op, axes: self.usize_list("axes")?, keepdims: self.bool_attr("keepdims", false)? }
            }
            "softmax" | "log_softmax" => {
                self.only(&["axis"])?;
                Op::Softmax { axis: self.usize_attr("axis")?, log: op == "log_softmax" }
            }
            "pad" => {
                self.only(&["pads", "value"])?;
                let value = self.f32_attr("value", Some(0.0))?;
                if !value.is_finite() {
                    return Err(self.invalid("value", "must be finite"));
                }
                Op::Pad { pads: self.pairs("pads")?, value }
            }
            "topk" => {
                self.only(&["axis", "k", "largest", "output"])?;
                let indices = match self.string("output")?.unwrap_or("values") {
                    "values" => false,
                    "indices" => true,
                    other => return Err(self.invalid("output", format!("`{other}` is not values or indices"))),
                };
                Op::TopK {
                    axis: self.usize_attr("axis")?,
                    k: self.usize_attr("k")?,
                    largest: self.bool_attr("largest", true)?,
                    indices,
                }
            }
            "conv" => {
                self.only(&["weight", "bias", "kernel", "strides", "pads", "dilations", "group"])?;
                Op::Conv {
                    weight: self.weight("weight")?,
                    bias: self.vector("bias")?,
                    kernel: self.usize_list("kernel")?,
                    strides: self.usize_list("strides")?,
                    pads: self.pairs("pads")?,
                    dilations: self.usize_list("dilations")?,
                    group: self.usize_attr("group")?,
                }
            }
            "fm" => {
                self.only(&[])?;
                Op::Fm
            }
            "add" if self.obj.contains_key("bias") => {
                self.only(&["bias"])?;
                Op::Add { bias: self.vector("bias")? }
            }
            "mul" if self.obj.contains_key("scale") => {
                self.only(&["scale"])?;
                Op::Mul { scale: self.vector("scale")? }
            }
            "add" => {
                self.only(&[])?;
                Op::Binary(BinaryOp::Add)
            }
            "mul" => {
                self.only(&[])?;
                Op::Binary(BinaryOp::Mul)
            }
            "layer_norm" => {
                self.only(&["gamma", "beta", "epsilon"])?;
                let gamma = self.vector("gamma")?.ok_or_else(|| self.invalid("gamma", "missing"))?;
                let epsilon = match self.obj.get("epsilon") {
                    None => 1e-5,
                    Some(v) => v
                        .as_f64()
                        .map(|e| e as f32)
                        .filter(|e| e.is_finite() && *e >= 0.0)
                        .ok_or_else(|| self.invalid("epsilon", "must be a finite non-negative number"))?,
                };
                Op::LayerNorm { gamma, beta: self.vector("beta")?, epsilon }
            }
            "dot_interaction" => {
                self.only(&["self_interaction"])?;
                let self_interaction = match self.obj.get("self_interaction") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(self.invalid("self_interaction", "must be a boolean")),
                };
                Op::DotInteraction { self_interaction }
            }
            other => return Err(Error::UnknownOp { node: self.node.to_string(), op: other.to_string() }),
        })
    }
}

/// Kahn's algorithm, stable with respect to file order; rewrites every `ValueId::Node`
/// and returns the declarations in the new order.
fn topo_sort(g: &mut Graph, declared: Vec<Declared>) -> Result<Vec<Declared>> {
    let n = g.nodes.len();
    let mut indegree = alloc::vec![0usize; n];
    let mut consumers: Vec<Vec<usize>> = alloc::vec![Vec::new(); n];
    for (i, node) in g.nodes.iter().enumerate() {
        for v in &node.inputs {
            if let ValueId::Node(p) = *v {
                indegree[i] += 1;
                consumers[p].push(i);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &c in &consumers[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.insert(c);
            }
        }
    }
    if order.len() < n {
        let stuck = (0..n).find(|&i| indegree[i] > 0).unwrap_or(0);
        return Err(Error::Cycle { node: g.nodes[stuck].name.clone() });
    }
    let mut new_index = alloc::vec![0usize; n];
    for (new, &old) in order.iter().enumerate() {
        new_index[old] = new;
    }
    let remap = |v: &mut ValueId| {
        if let ValueId::Node(i) = v {
            *i = new_index[*i];
        }
    };
    let mut old: Vec<Option<Node>> = core::mem::take(&mut g.nodes).into_iter().map(Some).collect();
    let mut old_declared: Vec<Option<Declared>> = declared.into_iter().map(Some).collect();
    let mut sorted_declared = Vec::with_capacity(n);
    for &i in &order {
        if let Some(mut node) = old[i].take() {
            node.inputs.iter_mut().for_each(remap);
            g.nodes.push(node);
            sorted_declared.push(old_declared[i].take().unwrap_or_default());
        }
    }
    g.outputs.iter_mut().for_each(|o| remap(&mut o.value));
    Ok(sorted_declared)
}

/// Computes every node's row shape and type in topological order, checks arities,
/// shapes and parameter lengths, and checks what the file declares against them.
fn infer_shapes(g: &mut Graph, env: &Envelope, declared: &[Declared]) -> Result<()> {
    for (i, declared) in declared.iter().enumerate() {
        let (shape, dtype) = node_shape(g, i, env, declared)?;
        let node = &g.nodes[i];
        if let Some(d) = &declared.shape
            && *d != shape
        {
            return Err(Error::ShapeMismatch {
                node: node.name.clone(),
                detail: format!("declared shape {d:?}, but {} gives {shape:?}", node.op.name()),
            });
        }
        if let Some(t) = declared.dtype
            && t != dtype
        {
            return Err(Error::ShapeMismatch {
                node: node.name.clone(),
                detail: format!("declared dtype {}, but {} gives {}", t.as_str(), node.op.name(), dtype.as_str()),
            });
        }
        let width = shape::elements(&shape).filter(|w| w.checked_mul(dtype.slots()).is_some()).ok_or_else(|| {
            Error::ShapeMismatch { node: node.name.clone(), detail: format!("shape {shape:?} overflows") }
        })?;
        let node = &mut g.nodes[i];
        node.width = width;
        node.shape = shape;
        node.dtype = dtype;
    }
    for o in &g.outputs {
        let dense = match o.value {
            ValueId::Input(k) => matches!(g.inputs[k].kind, InputKind::Dense { .. }),
            ValueId::Node(k) => g.nodes[k].dtype == ValueType::F32,
            ValueId::Const(_) => false,
        };
        if !dense {
            return Err(Error::InvalidOutput {
                output: o.name.clone(),
                detail: "outputs must be f32 values computed per row (not ids or constants)".into(),
            });
        }
    }
    Ok(())
}

fn node_shape(g: &Graph, i: usize, env: &Envelope, declared: &Declared) -> Result<(Vec<usize>, ValueType)> {
    let node = &g.nodes[i];
    let mismatch = |detail: String| Error::ShapeMismatch { node: node.name.clone(), detail };
    let arity = |want: core::ops::RangeInclusive<usize>| -> Result<()> {
        if want.contains(&node.inputs.len()) {
            Ok(())
        } else {
            Err(mismatch(format!("{} takes {want:?} inputs, got {}", node.op.name(), node.inputs.len())))
        }
    };
    // Version-1 ops read per-row f32 values (inputs or nodes), never constants.
    let dense = |v: ValueId| -> Result<&[usize]> {
        match v {
            ValueId::Input(k) => match g.inputs[k].kind {
                InputKind::Dense { .. } => Ok(&g.inputs[k].shape),
                _ => Err(mismatch(format!(
                    "input `{}` is {} ids, but {} needs dense features",
                    g.inputs[k].name,
                    g.inputs[k].kind.as_str(),
                    node.op.name()
                ))),
            },
            ValueId::Node(k) if g.nodes[k].dtype == ValueType::F32 => Ok(&g.nodes[k].shape),
            ValueId::Node(k) => {
                Err(mismatch(format!("`{}` is i64, but {} needs f32", g.nodes[k].name, node.op.name())))
            }
            ValueId::Const(k) => Err(mismatch(format!(
                "{} cannot read the constant `{}` (use a tensor op)",
                node.op.name(),
                g.constants[k].name
            ))),
        }
    };
    let width_of = |v: ValueId| dense(v).map(|s| s.iter().product::<usize>());
    let vector_len = |t: usize, want: usize, what: &str| -> Result<()> {
        let info = &env.tensors[t];
        if info.shape[0] == want {
            Ok(())
        } else {
            Err(Error::TensorMismatch {
                tensor: info.name.clone(),
                expected: format!("F32 [{want}] ({what} of `{}`)", node.name),
                actual: format!("{} {:?}", info.dtype, info.shape),
            })
        }
    };
    let widths = |vs: &[ValueId]| vs.iter().map(|&v| width_of(v)).collect::<Result<Vec<_>>>();
    let f32_of = |s: Vec<usize>| Ok((s, ValueType::F32));

    match &node.op {
        Op::Linear { weight, bias } | Op::Cross { weight, bias } => {
            let is_cross = matches!(node.op, Op::Cross { .. });
            arity(if is_cross { 2..=2 } else { 1..=1 })?;
            let w = &g.weights[*weight];
            if w.format == WeightFormat::Q8Rowwise {
                return Err(mismatch(format!("weight `{}`: q8_rowwise is for embedding tables", w.name)));
            }
            let x = dense(node.inputs[0])?;
            if x.last() != Some(&w.cols) {
                return Err(mismatch(format!("input shape {x:?} but weight `{}` has {} columns", w.name, w.cols)));
            }
            if is_cross {
                if w.rows != w.cols {
                    return Err(mismatch(format!(
                        "cross weight `{}` must be square, is {}x{}",
                        w.name, w.rows, w.cols
                    )));
                }
                if dense(node.inputs[1])? != x {
                    return Err(mismatch("cross inputs must have the same shape".into()));
                }
            }
            if let Some(b) = bias {
                vector_len(*b, w.rows, "bias")?;
            }
            let mut out = x.to_vec();
            if let Some(last) = out.last_mut() {
                *last = w.rows;
            }
            f32_of(out)
        }
        Op::EmbeddingBag { table, .. } => {
            let t = &g.weights[*table];
            let ids_shape = match node.inputs[..] {
                [ValueId::Input(k)] if matches!(g.inputs[k].kind, InputKind::Ids { .. }) => &g.inputs[k].shape,
                [ValueId::Node(k)] if g.nodes[k].dtype == ValueType::I64 && !g.nodes[k].shape.is_empty() => {
                    &g.nodes[k].shape
                }
                [ValueId::Input(a), ValueId::Input(b)]
                    if g.inputs[a].kind == InputKind::BagIndices && g.inputs[b].kind == InputKind::BagOffsets =>
                {
                    return f32_of(alloc::vec![t.cols]);
                }
                _ => {
                    return Err(mismatch(
                        "embedding_bag takes one i64 ids value or a `bag_indices`, `bag_offsets` pair".into(),
                    ));
                }
            };
            let (last, lead) = ids_shape.split_last().ok_or_else(|| mismatch("ids have no slot axis".into()))?;
            if lead.iter().product::<usize>() != 1 || *last == 0 {
                return Err(mismatch(format!("embedding_bag takes one bag per row, ids have shape {ids_shape:?}")));
            }
            let mut out = lead.to_vec();
            out.push(t.cols);
            f32_of(out)
        }
        Op::Activation(_) => {
            arity(1..=1)?;
            f32_of(dense(node.inputs[0])?.to_vec())
        }
        Op::Concat { axis: None } => {
            arity(1..=usize::MAX)?;
            let w = widths(&node.inputs)?
                .iter()
                .try_fold(0usize, |acc, &w| acc.checked_add(w))
                .ok_or_else(|| mismatch("concatenated width overflows".into()))?;
            f32_of(alloc::vec![w])
        }
        Op::Add { bias: Some(t) } | Op::Mul { scale: Some(t) } => {
            arity(1..=1)?;
            let x = dense(node.inputs[0])?;
            vector_len(*t, x.iter().product(), "operand")?;
            f32_of(x.to_vec())
        }
        Op::Add { bias: None } | Op::Mul { scale: None } => {
            arity(2..=2)?;
            let (a, b) = (dense(node.inputs[0])?, dense(node.inputs[1])?);
            if a != b {
                return Err(mismatch(format!("operand shapes differ: {a:?} vs {b:?}")));
            }
            f32_of(a.to_vec())
        }
        Op::LayerNorm { gamma, beta, .. } => {
            arity(1..=1)?;
            let x = dense(node.inputs[0])?;
            let last = *x.last().ok_or_else(|| mismatch("layer_norm of a scalar".into()))?;
            vector_len(*gamma, last, "gamma")?;
            if let Some(b) = beta {
                vector_len(*b, last, "beta")?;
            }
            f32_of(x.to_vec())
        }
        Op::DotInteraction { self_interaction } => {
            arity(2..=usize::MAX)?;
            let ins = widths(&node.inputs)?;
            if ins.iter().any(|&w| w != ins[0]) {
                return Err(mismatch(format!("dot_interaction inputs must share a width, got {ins:?}")));
            }
            let f = ins.len();
            let pairs = f * (f - 1) / 2 + if *self_interaction { f } else { 0 };
            let w = ins[0].checked_add(pairs).ok_or_else(|| mismatch("output width overflows".into()))?;
            f32_of(alloc::vec![w])
        }
        Op::Fm => {
            arity(2..=usize::MAX)?;
            let ins = widths(&node.inputs)?;
            if ins.iter().any(|&w| w != ins[0]) {
                return Err(mismatch(format!("fm inputs must share a width, got {ins:?}")));
            }
            f32_of(alloc::vec![1])
        }
        op => {
            let mut operands = Vec::with_capacity(node.inputs.len());
            for &v in &node.inputs {
                if let ValueId::Input(k) = v
                    && matches!(g.inputs[k].kind, InputKind::BagIndices | InputKind::BagOffsets)
                {
                    return Err(mismatch(format!(
                        "`{}` is a flat bag input; only embedding_bag reads it",
                        g.inputs[k].name
                    )));
                }
                operands.push(Operand { shape: g.value_shape(v), dtype: g.value_type(v) });
            }
            let weight = op.weight().map(|w| (g.weights[w].rows, g.weights[w].cols));
            if let Op::Conv { bias: Some(b), .. } = op {
                vector_len(*b, weight.map_or(0, |w| w.0), "bias")?;
            }
            if let Op::Conv { weight: w, .. } = op
                && g.weights[*w].format == WeightFormat::Q8Rowwise
            {
                return Err(mismatch("q8_rowwise is for embedding tables".into()));
            }
            shape::infer(op, &operands, declared.shape.as_deref(), weight).map_err(mismatch)
        }
    }
}
