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

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::{Map, Value};

use super::{Activation, BagMode, FORMAT_VERSION, Graph, InputDef, InputKind, Node, Op, OutputDef, ValueId, WeightDef};
use crate::container::Envelope;
use crate::error::{Error, Result, graph_err};
use crate::format::{DType, WeightFormat};

/// Parses and validates graph JSON against the container's tensors.
pub fn parse(json: &str, env: &Envelope) -> Result<Graph> {
    let root: Map<String, Value> =
        serde_json::from_str(json).map_err(|e| graph_err(format_args!("invalid JSON: {e}")))?;
    for key in root.keys() {
        if !matches!(key.as_str(), "version" | "name" | "producer" | "inputs" | "weights" | "nodes" | "outputs") {
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
    let (nodes, outputs) = parse_nodes(&root, &inputs, &weights, env)?;
    let mut graph = Graph { name, producer, inputs, weights, nodes, outputs };
    topo_sort(&mut graph)?;
    infer_widths(&mut graph, env)?;
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
            "dense" => (InputKind::Dense { width: field("width")? }, &["width"]),
            "ids" => (InputKind::Ids { slots: field("slots")? }, &["slots"]),
            "bag_indices" => (InputKind::BagIndices, &[]),
            "bag_offsets" => (InputKind::BagOffsets, &[]),
            other => return Err(graph_err(format_args!("input `{name}` has unknown kind `{other}`"))),
        };
        if let Some(k) = obj.keys().find(|k| !matches!(k.as_str(), "name" | "kind") && !allowed.contains(&k.as_str())) {
            return Err(graph_err(format_args!("input `{name}` has unknown field `{k}`")));
        }
        if inputs.iter().any(|d| d.name == name) {
            return Err(Error::DuplicateName { kind: "input", name: name.to_string() });
        }
        inputs.push(InputDef { name: name.to_string(), kind });
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

fn parse_nodes(
    root: &Map<String, Value>,
    inputs: &[InputDef],
    weights: &[WeightDef],
    env: &Envelope,
) -> Result<(Vec<Node>, Vec<OutputDef>)> {
    let list = array(root, "nodes")?;
    // Names first, so edges may point forward in the list.
    let mut names: BTreeMap<&str, ValueId> =
        inputs.iter().enumerate().map(|(i, d)| (d.name.as_str(), ValueId::Input(i))).collect();
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
        let op = attrs.op(op_name)?;
        raw.push(RawNode { name: name.to_string(), op, inputs: node_inputs, source });
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
        .map(|r| Node { name: r.name, op: r.op, inputs: r.inputs, width: 0, source: r.source })
        .collect();
    Ok((nodes, outputs))
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
            if !matches!(k.as_str(), "name" | "op" | "inputs" | "source") && !allowed.contains(&k.as_str()) {
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

    fn op(&self, op: &str) -> Result<Op> {
        if let Some(a) = Activation::parse(op) {
            self.only(&[])?;
            return Ok(Op::Activation(a));
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
                self.only(&[])?;
                Op::Concat
            }
            "fm" => {
                self.only(&[])?;
                Op::Fm
            }
            "add" => {
                self.only(&["bias"])?;
                Op::Add { bias: self.vector("bias")? }
            }
            "mul" => {
                self.only(&["scale"])?;
                Op::Mul { scale: self.vector("scale")? }
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

/// Kahn's algorithm, stable with respect to file order; rewrites every `ValueId::Node`.
fn topo_sort(g: &mut Graph) -> Result<()> {
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
    for &i in &order {
        if let Some(mut node) = old[i].take() {
            node.inputs.iter_mut().for_each(remap);
            g.nodes.push(node);
        }
    }
    g.outputs.iter_mut().for_each(|o| remap(&mut o.value));
    Ok(())
}

/// Computes every node's width in topological order and checks arities, widths and
/// parameter lengths.
fn infer_widths(g: &mut Graph, env: &Envelope) -> Result<()> {
    for i in 0..g.nodes.len() {
        let width = node_width(g, i, env)?;
        g.nodes[i].width = width;
    }
    for o in &g.outputs {
        if let ValueId::Input(k) = o.value
            && !matches!(g.inputs[k].kind, InputKind::Dense { .. })
        {
            return Err(Error::InvalidOutput {
                output: o.name.clone(),
                detail: "outputs must be dense f32 values".into(),
            });
        }
    }
    Ok(())
}

fn node_width(g: &Graph, i: usize, env: &Envelope) -> Result<usize> {
    let node = &g.nodes[i];
    let mismatch = |detail: String| Error::ShapeMismatch { node: node.name.clone(), detail };
    let arity = |want: core::ops::RangeInclusive<usize>| -> Result<()> {
        if want.contains(&node.inputs.len()) {
            Ok(())
        } else {
            Err(mismatch(format!("{} takes {want:?} inputs, got {}", node.op.name(), node.inputs.len())))
        }
    };
    let dense = |v: ValueId| -> Result<usize> {
        match v {
            ValueId::Input(k) => match g.inputs[k].kind {
                InputKind::Dense { width } => Ok(width),
                _ => Err(mismatch(format!(
                    "input `{}` is {} ids, but {} needs dense features",
                    g.inputs[k].name,
                    g.inputs[k].kind.as_str(),
                    node.op.name()
                ))),
            },
            ValueId::Node(k) => Ok(g.nodes[k].width),
        }
    };
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
    let widths = |vs: &[ValueId]| vs.iter().map(|&v| dense(v)).collect::<Result<Vec<_>>>();

    match &node.op {
        Op::Linear { weight, bias } | Op::Cross { weight, bias } => {
            let is_cross = matches!(node.op, Op::Cross { .. });
            arity(if is_cross { 2..=2 } else { 1..=1 })?;
            let w = &g.weights[*weight];
            if w.format == WeightFormat::Q8Rowwise {
                return Err(mismatch(format!("weight `{}`: q8_rowwise is for embedding tables", w.name)));
            }
            let ins = widths(&node.inputs)?;
            if ins.iter().any(|&x| x != w.cols) {
                return Err(mismatch(format!("input widths {ins:?} but weight `{}` has {} columns", w.name, w.cols)));
            }
            if is_cross && w.rows != w.cols {
                return Err(mismatch(format!("cross weight `{}` must be square, is {}x{}", w.name, w.rows, w.cols)));
            }
            if let Some(b) = bias {
                vector_len(*b, w.rows, "bias")?;
            }
            Ok(w.rows)
        }
        Op::EmbeddingBag { table, .. } => {
            let t = &g.weights[*table];
            let kinds: Vec<Option<InputKind>> = node
                .inputs
                .iter()
                .map(|v| match v {
                    ValueId::Input(k) => Some(g.inputs[*k].kind),
                    ValueId::Node(_) => None,
                })
                .collect();
            match kinds.as_slice() {
                [Some(InputKind::Ids { .. })] | [Some(InputKind::BagIndices), Some(InputKind::BagOffsets)] => {}
                _ => {
                    return Err(mismatch(
                        "embedding_bag takes one `ids` input or a `bag_indices`, `bag_offsets` pair".into(),
                    ));
                }
            }
            Ok(t.cols)
        }
        Op::Activation(_) => {
            arity(1..=1)?;
            dense(node.inputs[0])
        }
        Op::Concat => {
            arity(1..=usize::MAX)?;
            widths(&node.inputs)?
                .iter()
                .try_fold(0usize, |acc, &w| acc.checked_add(w))
                .ok_or_else(|| mismatch("concatenated width overflows".into()))
        }
        Op::Add { bias: param } | Op::Mul { scale: param } => {
            let ins = widths(&node.inputs)?;
            match (param, ins.as_slice()) {
                (Some(t), [w]) => {
                    vector_len(*t, *w, "operand")?;
                    Ok(*w)
                }
                (None, [a, b]) if a == b => Ok(*a),
                (None, [a, b]) => Err(mismatch(format!("operand widths differ: {a} vs {b}"))),
                _ => Err(mismatch(format!("{} takes two inputs, or one input and a tensor operand", node.op.name()))),
            }
        }
        Op::LayerNorm { gamma, beta, .. } => {
            arity(1..=1)?;
            let w = dense(node.inputs[0])?;
            vector_len(*gamma, w, "gamma")?;
            if let Some(b) = beta {
                vector_len(*b, w, "beta")?;
            }
            Ok(w)
        }
        Op::DotInteraction { self_interaction } => {
            arity(2..=usize::MAX)?;
            let ins = widths(&node.inputs)?;
            if ins.iter().any(|&w| w != ins[0]) {
                return Err(mismatch(format!("dot_interaction inputs must share a width, got {ins:?}")));
            }
            let f = ins.len();
            let pairs = f * (f - 1) / 2 + if *self_interaction { f } else { 0 };
            ins[0].checked_add(pairs).ok_or_else(|| mismatch("output width overflows".into()))
        }
        Op::Fm => {
            arity(2..=usize::MAX)?;
            let ins = widths(&node.inputs)?;
            if ins.iter().any(|&w| w != ins[0]) {
                return Err(mismatch(format!("fm inputs must share a width, got {ins:?}")));
            }
            Ok(1)
        }
    }
}
