//! Programmatic model construction: the one place graphs are produced.
//!
//! The ONNX importer, the demo's synthetic DLRM, the benchmarks and the tests all describe
//! a model through [`ModelBuilder`] with f32 parameters, then [`ModelBuilder::write`] it
//! in the requested [`WeightFormats`] — quantizing row by row as bytes stream to disk.
//! Parameters can be generated lazily ([`Matrix::generated`]) so a model far larger than
//! memory can be written.

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::format::{DType, WeightFormat};
use crate::graph::{Activation, BagMode, FORMAT_VERSION, ValueType};
use crate::quant;
use crate::writer::{self, TensorOut};

/// Produces row `r` of a matrix into the buffer.
pub type RowFn = Box<dyn Fn(usize, &mut [f32]) + Send + Sync>;

/// Where a matrix's values come from.
pub enum MatrixData {
    /// Row-major values in memory.
    Dense(Vec<f32>),
    /// Computed row by row when written.
    Generated(RowFn),
}

impl std::fmt::Debug for MatrixData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MatrixData::Dense(v) => write!(f, "Dense({} values)", v.len()),
            MatrixData::Generated(_) => f.write_str("Generated"),
        }
    }
}

/// An f32 matrix `[rows, cols]` (PyTorch `[out, in]` for linears).
pub struct Matrix {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Values.
    pub data: MatrixData,
}

impl std::fmt::Debug for Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matrix").field("rows", &self.rows).field("cols", &self.cols).finish_non_exhaustive()
    }
}

impl Matrix {
    /// A matrix from row-major values.
    ///
    /// # Panics
    /// If `values.len() != rows · cols`.
    pub fn new(rows: usize, cols: usize, values: Vec<f32>) -> Matrix {
        assert_eq!(values.len(), rows * cols, "matrix {rows}x{cols}");
        Matrix { rows, cols, data: MatrixData::Dense(values) }
    }

    /// A matrix whose rows are computed when written.
    pub fn generated(rows: usize, cols: usize, row: impl Fn(usize, &mut [f32]) + Send + Sync + 'static) -> Matrix {
        Matrix { rows, cols, data: MatrixData::Generated(Box::new(row)) }
    }

    fn row(&self, r: usize, out: &mut [f32]) {
        match &self.data {
            MatrixData::Dense(v) => out.copy_from_slice(&v[r * self.cols..(r + 1) * self.cols]),
            MatrixData::Generated(f) => f(r, out),
        }
    }
}

/// What a matrix is used for, which decides its format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Weights of linear and cross layers.
    Linear,
    /// Embedding tables.
    Table,
}

/// The storage formats to write each role in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightFormats {
    /// Format of linear/cross weights (not `q8_rowwise`).
    pub linear: WeightFormat,
    /// Format of embedding tables.
    pub table: WeightFormat,
}

impl WeightFormats {
    /// The formats meant by one command-line name: `q8` stores linears as symmetric q8
    /// and tables as FBGEMM-style `q8_rowwise`; every other name applies to both.
    pub fn from_name(name: &str) -> Option<WeightFormats> {
        let f = WeightFormat::parse(name)?;
        Some(match f {
            WeightFormat::Q8 | WeightFormat::Q8Rowwise => {
                WeightFormats { linear: WeightFormat::Q8, table: WeightFormat::Q8Rowwise }
            }
            f => WeightFormats { linear: f, table: f },
        })
    }

    /// The same format for every role (q8 tables become q8_rowwise).
    pub fn uniform(f: WeightFormat) -> WeightFormats {
        WeightFormats::from_name(f.as_str()).unwrap_or(WeightFormats { linear: f, table: f })
    }

    /// The format for `role`.
    pub fn for_role(&self, role: Role) -> WeightFormat {
        match role {
            Role::Linear => self.linear,
            Role::Table => self.table,
        }
    }
}

impl Default for WeightFormats {
    fn default() -> Self {
        WeightFormats::uniform(WeightFormat::F32)
    }
}

struct MatrixEntry {
    name: String,
    role: Role,
    matrix: Matrix,
}

/// Builds a graph and its parameters, then writes a `.graft` container.
#[derive(Default)]
pub struct ModelBuilder {
    name: Option<String>,
    producer: Option<String>,
    inputs: Vec<Value>,
    nodes: Vec<Map<String, Value>>,
    outputs: Vec<Value>,
    vectors: Vec<(String, Vec<f32>)>,
    matrices: Vec<MatrixEntry>,
    constants: Vec<ConstEntry>,
}

/// A constant tensor's values.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstValues {
    /// f32 elements, row-major.
    F32(Vec<f32>),
    /// i64 elements, row-major.
    I64(Vec<i64>),
}

struct ConstEntry {
    name: String,
    shape: Vec<usize>,
    values: ConstValues,
}

impl std::fmt::Debug for ModelBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelBuilder")
            .field("name", &self.name)
            .field("nodes", &self.nodes.len())
            .field("matrices", &self.matrices.len())
            .finish_non_exhaustive()
    }
}

impl ModelBuilder {
    /// An empty model.
    pub fn new(name: impl Into<String>) -> ModelBuilder {
        ModelBuilder { name: Some(name.into()), ..ModelBuilder::default() }
    }

    /// Records what produced the model (tool, source file).
    pub fn producer(&mut self, producer: impl Into<String>) -> &mut Self {
        self.producer = Some(producer.into());
        self
    }

    /// Adds an f32 `[batch, width]` input.
    pub fn dense_input(&mut self, name: &str, width: usize) -> String {
        self.inputs.push(json!({"name": name, "kind": "dense", "width": width}));
        name.into()
    }

    /// Adds an i64 `[batch, slots]` ids input.
    pub fn ids_input(&mut self, name: &str, slots: usize) -> String {
        self.inputs.push(json!({"name": name, "kind": "ids", "slots": slots}));
        name.into()
    }

    /// Adds an f32 input with row shape `shape`.
    pub fn dense_input_shaped(&mut self, name: &str, shape: &[usize]) -> String {
        let width: usize = shape.iter().product();
        self.inputs.push(json!({"name": name, "kind": "dense", "width": width, "shape": shape}));
        name.into()
    }

    /// Adds an i64 input with row shape `shape`.
    pub fn ids_input_shaped(&mut self, name: &str, shape: &[usize]) -> String {
        let slots: usize = shape.iter().product();
        self.inputs.push(json!({"name": name, "kind": "ids", "slots": slots, "shape": shape}));
        name.into()
    }

    /// Adds a constant tensor (the same for every row) that nodes may read by `name`.
    ///
    /// # Panics
    /// If the element count does not match `shape`.
    pub fn constant(&mut self, name: &str, shape: &[usize], values: ConstValues) -> String {
        let n = match &values {
            ConstValues::F32(v) => v.len(),
            ConstValues::I64(v) => v.len(),
        };
        assert_eq!(n, shape.iter().product::<usize>(), "constant `{name}` {shape:?}");
        self.constants.push(ConstEntry { name: name.into(), shape: shape.to_vec(), values });
        name.into()
    }

    /// Adds a tensor op `op` (see `graph::parse` for names and attributes) with its output
    /// row shape and type declared (checked when the model is opened).
    pub fn tensor_op(
        &mut self,
        name: &str,
        op: &str,
        inputs: &[&str],
        attrs: Value,
        shape: &[usize],
        dtype: ValueType,
    ) -> String {
        let mut attrs = match attrs {
            Value::Object(a) => a,
            _ => Map::new(),
        };
        attrs.insert("shape".into(), json!(shape));
        attrs.insert("dtype".into(), dtype.as_str().into());
        self.node(name, op, inputs, Value::Object(attrs))
    }

    /// One table row per id (`<name>.weight` is the table): ids of row shape `s` give
    /// `s + [dim]`.
    pub fn embedding(&mut self, name: &str, ids: &str, table: Matrix, out_shape: &[usize]) -> String {
        let t = self.matrix(format!("{name}.weight"), Role::Table, table);
        self.tensor_op(name, "embedding", &[ids], json!({"table": t}), out_shape, ValueType::F32)
    }

    /// A `linear` over the last axis of a value of any row shape, declaring its output shape.
    pub fn linear_shaped(
        &mut self,
        name: &str,
        x: &str,
        weight: Matrix,
        bias: Option<Vec<f32>>,
        out_shape: &[usize],
    ) -> String {
        let node = self.linear(name, x, weight, bias);
        if let Some(n) = self.nodes.iter_mut().find(|n| n.get("name").and_then(Value::as_str) == Some(name)) {
            n.insert("shape".into(), json!(out_shape));
        }
        node
    }

    /// A convolution (`conv` attributes in `attrs`; `<name>.weight` is `[out, in/group · Π kernel]`).
    pub fn conv(
        &mut self,
        name: &str,
        x: &str,
        weight: Matrix,
        bias: Option<Vec<f32>>,
        attrs: Value,
        out_shape: &[usize],
    ) -> String {
        let w = self.matrix(format!("{name}.weight"), Role::Linear, weight);
        let mut attrs = match attrs {
            Value::Object(a) => a,
            _ => Map::new(),
        };
        attrs.insert("weight".into(), w.into());
        if let Some(b) = bias {
            attrs.insert("bias".into(), self.vector(format!("{name}.bias"), b).into());
        }
        self.tensor_op(name, "conv", &[x], Value::Object(attrs), out_shape, ValueType::F32)
    }

    /// Layer normalization over the last axis of a value of any row shape.
    pub fn layer_norm_shaped(
        &mut self,
        name: &str,
        x: &str,
        gamma: Vec<f32>,
        beta: Option<Vec<f32>>,
        epsilon: f32,
        shape: &[usize],
    ) -> String {
        let node = self.layer_norm(name, x, gamma, beta, epsilon);
        if let Some(n) = self.nodes.iter_mut().find(|n| n.get("name").and_then(Value::as_str) == Some(name)) {
            n.insert("shape".into(), json!(shape));
        }
        node
    }

    /// Whether a node, input or constant is called `name`.
    pub fn has_value(&self, name: &str) -> bool {
        let is = |v: &Value| v.get("name").and_then(Value::as_str) == Some(name);
        self.inputs.iter().any(is)
            || self.nodes.iter().any(|n| n.get("name").and_then(Value::as_str) == Some(name))
            || self.constants.iter().any(|c| c.name == name)
    }

    /// Adds a pair of flat bag inputs (`indices [total]`, `offsets [batch]`).
    pub fn bag_inputs(&mut self, indices: &str, offsets: &str) -> [String; 2] {
        self.inputs.push(json!({"name": indices, "kind": "bag_indices"}));
        self.inputs.push(json!({"name": offsets, "kind": "bag_offsets"}));
        [indices.into(), offsets.into()]
    }

    fn node(&mut self, name: &str, op: &str, inputs: &[&str], attrs: Value) -> String {
        let mut obj = Map::new();
        obj.insert("name".into(), name.into());
        obj.insert("op".into(), op.into());
        obj.insert("inputs".into(), inputs.iter().map(|s| Value::from(*s)).collect());
        if let Value::Object(a) = attrs {
            obj.extend(a);
        }
        self.nodes.push(obj);
        name.into()
    }

    fn vector(&mut self, name: String, values: Vec<f32>) -> String {
        self.vectors.push((name.clone(), values));
        name
    }

    fn matrix(&mut self, name: String, role: Role, matrix: Matrix) -> String {
        self.matrices.push(MatrixEntry { name: name.clone(), role, matrix });
        name
    }

    /// Sets the `source` (e.g. the ONNX node name) of the node named `node`.
    pub fn set_source(&mut self, node: &str, source: &str) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.get("name").and_then(Value::as_str) == Some(node)) {
            n.insert("source".into(), source.into());
        }
    }

    /// `y = x Wᵀ + b`; parameters are stored as `<name>.weight` and `<name>.bias`.
    pub fn linear(&mut self, name: &str, x: &str, weight: Matrix, bias: Option<Vec<f32>>) -> String {
        let w = self.matrix(format!("{name}.weight"), Role::Linear, weight);
        let mut attrs = json!({"weight": w});
        if let Some(b) = bias {
            attrs["bias"] = self.vector(format!("{name}.bias"), b).into();
        }
        self.node(name, "linear", &[x], attrs)
    }

    /// DCN-v2 cross layer `x0 ⊙ (W xl + b) + xl`.
    pub fn cross(&mut self, name: &str, x0: &str, xl: &str, weight: Matrix, bias: Option<Vec<f32>>) -> String {
        let w = self.matrix(format!("{name}.weight"), Role::Linear, weight);
        let mut attrs = json!({"weight": w});
        if let Some(b) = bias {
            attrs["bias"] = self.vector(format!("{name}.bias"), b).into();
        }
        self.node(name, "cross", &[x0, xl], attrs)
    }

    /// Embedding bag over `ids` (one ids input, or indices + offsets); the table is
    /// stored as `<name>.weight`.
    pub fn embedding_bag(&mut self, name: &str, ids: &[&str], table: Matrix, mode: BagMode) -> String {
        let t = self.matrix(format!("{name}.weight"), Role::Table, table);
        self.node(name, "embedding_bag", ids, json!({"table": t, "mode": mode.as_str()}))
    }

    /// An activation.
    pub fn activation(&mut self, name: &str, act: Activation, x: &str) -> String {
        self.node(name, act.as_str(), &[x], Value::Null)
    }

    /// Concatenation along features.
    pub fn concat(&mut self, name: &str, inputs: &[&str]) -> String {
        self.node(name, "concat", inputs, Value::Null)
    }

    /// `a + b`.
    pub fn add(&mut self, name: &str, a: &str, b: &str) -> String {
        self.node(name, "add", &[a, b], Value::Null)
    }

    /// `a + bias` (broadcast over rows), bias stored as `<name>.bias`.
    pub fn add_bias(&mut self, name: &str, a: &str, bias: Vec<f32>) -> String {
        let b = self.vector(format!("{name}.bias"), bias);
        self.node(name, "add", &[a], json!({"bias": b}))
    }

    /// `a ⊙ b`.
    pub fn mul(&mut self, name: &str, a: &str, b: &str) -> String {
        self.node(name, "mul", &[a, b], Value::Null)
    }

    /// `a ⊙ scale` (broadcast over rows), scale stored as `<name>.scale`.
    pub fn mul_scale(&mut self, name: &str, a: &str, scale: Vec<f32>) -> String {
        let s = self.vector(format!("{name}.scale"), scale);
        self.node(name, "mul", &[a], json!({"scale": s}))
    }

    /// Layer normalization with `<name>.weight` (gamma) and `<name>.bias` (beta).
    pub fn layer_norm(&mut self, name: &str, x: &str, gamma: Vec<f32>, beta: Option<Vec<f32>>, epsilon: f32) -> String {
        let g = self.vector(format!("{name}.weight"), gamma);
        let mut attrs = json!({"gamma": g, "epsilon": epsilon});
        if let Some(b) = beta {
            attrs["beta"] = self.vector(format!("{name}.bias"), b).into();
        }
        self.node(name, "layer_norm", &[x], attrs)
    }

    /// DLRM dot interaction.
    pub fn dot_interaction(&mut self, name: &str, inputs: &[&str], self_interaction: bool) -> String {
        self.node(name, "dot_interaction", inputs, json!({"self_interaction": self_interaction}))
    }

    /// Factorization-machine second-order term.
    pub fn fm(&mut self, name: &str, inputs: &[&str]) -> String {
        self.node(name, "fm", inputs, Value::Null)
    }

    /// Exposes `value` as graph output `name`.
    pub fn output(&mut self, name: &str, value: &str) -> &mut Self {
        self.outputs.push(json!({"name": name, "value": value}));
        self
    }

    /// The graph JSON for the given formats.
    pub fn graph_json(&self, formats: WeightFormats) -> Result<String> {
        let mut weights = Map::new();
        for m in &self.matrices {
            let f = self.format_of(m, formats)?;
            weights.insert(m.name.clone(), json!({"format": f.as_str(), "shape": [m.matrix.rows, m.matrix.cols]}));
        }
        let mut root = Map::new();
        root.insert("version".into(), FORMAT_VERSION.into());
        if let Some(n) = &self.name {
            root.insert("name".into(), n.clone().into());
        }
        if let Some(p) = &self.producer {
            root.insert("producer".into(), p.clone().into());
        }
        root.insert("inputs".into(), Value::Array(self.inputs.clone()));
        root.insert("weights".into(), Value::Object(weights));
        if !self.constants.is_empty() {
            root.insert("constants".into(), self.constants.iter().map(|c| Value::from(c.name.as_str())).collect());
        }
        root.insert("nodes".into(), self.nodes.iter().cloned().map(Value::Object).collect());
        root.insert("outputs".into(), Value::Array(self.outputs.clone()));
        serde_json::to_string(&Value::Object(root)).map_err(|e| Error::GraphJson { detail: e.to_string() })
    }

    fn format_of(&self, m: &MatrixEntry, formats: WeightFormats) -> Result<WeightFormat> {
        let f = formats.for_role(m.role);
        if m.role == Role::Linear && f == WeightFormat::Q8Rowwise {
            return Err(Error::InvalidOption { detail: "q8_rowwise is a table format; use q8 for linears".into() });
        }
        Ok(f)
    }

    /// The tensors to write, each quantizing its rows as it streams.
    fn tensors(&self, formats: WeightFormats) -> Result<Vec<TensorOut<'_>>> {
        let mut out = Vec::with_capacity(self.matrices.len() * 2 + self.vectors.len());
        for (name, values) in &self.vectors {
            check_finite(name, values)?;
            out.push(TensorOut::f32(name.clone(), vec![values.len()], values));
        }
        for c in &self.constants {
            match &c.values {
                ConstValues::F32(v) => {
                    // ±inf are legitimate (attention masks); NaN never is.
                    if let Some(i) = v.iter().position(|x| x.is_nan()) {
                        return Err(Error::TensorEntry { tensor: c.name.clone(), detail: format!("NaN at index {i}") });
                    }
                    out.push(TensorOut::f32(c.name.clone(), c.shape.clone(), v))
                }
                ConstValues::I64(v) => {
                    let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    out.push(TensorOut::bytes(c.name.clone(), DType::I64, c.shape.clone(), bytes));
                }
            }
        }
        for m in &self.matrices {
            let f = self.format_of(m, formats)?;
            let (rows, cols) = (m.matrix.rows, m.matrix.cols);
            let (dtype, per_row) = f.main_tensor(cols);
            let scales = Rc::new(RefCell::new(Vec::with_capacity(if f == WeightFormat::Q8 { rows } else { 0 })));
            let sink = Rc::clone(&scales);
            let name = m.name.clone();
            let matrix = &m.matrix;
            let producer = Box::new(move |w: &mut dyn std::io::Write| -> std::io::Result<()> {
                let mut row = vec![0.0f32; cols];
                let mut bytes = vec![0u8; f.row_bytes(cols)];
                for r in 0..rows {
                    matrix.row(r, &mut row);
                    if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("tensor `{name}` has a non-finite value at row {r}, column {c}"),
                        ));
                    }
                    encode_row(f, &row, &mut bytes, &mut sink.borrow_mut());
                    w.write_all(&bytes)?;
                }
                Ok(())
            });
            out.push(TensorOut { name: m.name.clone(), dtype, shape: vec![rows, per_row], producer });
            if f == WeightFormat::Q8 {
                out.push(TensorOut {
                    name: format!("{}.scale", m.name),
                    dtype: DType::F32,
                    shape: vec![rows],
                    producer: Box::new(move |w| w.write_all(bytemuck::cast_slice(&scales.borrow()))),
                });
            }
        }
        Ok(out)
    }

    /// Writes the model to `path` in `formats`. Returns the file size.
    pub fn write(&self, path: &Path, formats: WeightFormats) -> Result<u64> {
        let json = self.graph_json(formats)?;
        writer::write_file(path, &json, self.tensors(formats)?).map_err(|e| e.in_file(path))
    }

    /// Serializes the model to memory.
    pub fn to_bytes(&self, formats: WeightFormats) -> Result<Vec<u8>> {
        let json = self.graph_json(formats)?;
        let mut out = Vec::new();
        writer::write_container(&mut out, &json, self.tensors(formats)?)?;
        Ok(out)
    }
}

/// Encodes one f32 row in format `f`; q8 scales are pushed to `scales`.
fn encode_row(f: WeightFormat, row: &[f32], bytes: &mut [u8], scales: &mut Vec<f32>) {
    match f {
        WeightFormat::F32 => bytes.copy_from_slice(bytemuck::cast_slice(row)),
        WeightFormat::F16 | WeightFormat::Bf16 => {
            for (dst, &v) in bytes.chunks_exact_mut(2).zip(row) {
                let bits = if f == WeightFormat::F16 { quant::f16_from_f32(v) } else { quant::bf16_from_f32(v) };
                dst.copy_from_slice(&bits.to_le_bytes());
            }
        }
        WeightFormat::Q8 => {
            let codes: &mut [i8] = bytemuck::cast_slice_mut(bytes);
            scales.push(quant::q8_quantize_row(row, codes));
        }
        WeightFormat::Q8Rowwise => quant::q8_rowwise_quantize_row(row, bytes),
        WeightFormat::Q4 => quant::q4_quantize_row(row, bytes),
    }
}

fn check_finite(name: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(Error::TensorEntry { tensor: name.into(), detail: format!("non-finite value at index {i}") }),
        None => Ok(()),
    }
}
