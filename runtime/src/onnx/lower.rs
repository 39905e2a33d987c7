//! ONNX → graft through tract's typed model.
//!
//! Re-implementing ONNX semantics node by node is where importers go wrong (shape
//! arithmetic, `If` on constant conditions, `Constant(OfShape)`, `Range`, BatchNorm, the
//! dozen ways torch spells a reshape). tract-onnx already normalises all of that: it
//! loads the model with the batch as a symbol `S`, infers every type and shape, folds
//! whatever does not depend on the inputs into constants, and declutters the result into
//! a small typed op set (`EinSum` for every matrix product, `AxisOp` for every layout
//! change, `TypedBinOp`/`ElementWiseOp` for the math). This module lowers *that* graph:
//! one tract node becomes zero (layout no-ops, identity casts), one or a few graft
//! nodes.
//!
//! The batch is folded out of every shape. tract's facts say where `S` sits in each
//! activation (`[S, 8, 16]`, or `[seq, 4·S, d]` inside `nn.MultiheadAttention`); graft's
//! row shape replaces the `c·S` axis by `c`, and each example's block is stored
//! contiguously. An op is lowerable when it treats the batch axis element-wise (which
//! every inference op of a recommender does); one that would mix examples (a reduction,
//! softmax, slice or concat *along* the batch, a reshape that moves the batch off its
//! axis's outer position) is refused with the node, op and reason.
//!
//! Names: a linear (or table, or convolution) is named after its weight — the
//! initializer name (`mlp.mlp.0.weight` → node `mlp.mlp.0`), looked up by content when
//! tract folded a transpose into it (the dynamo exporter's `t` nodes), else the module
//! path of the ONNX node (`/mlp/mlp.0/Gemm` → `mlp.mlp.0`). These are the names PEFT and
//! the other adapter kinds attach to.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path};
use std::sync::Arc;

use serde_json::{Value, json};
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::array::{
    Gather, GatherElements, MultiBroadcastTo, Pad, PadMode, Slice, Tile, Topk, TypedConcat,
};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cast::Cast;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec};
use tract_onnx::tract_core::ops::downsample::Downsample;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::logic::Iff;
use tract_onnx::tract_core::ops::nn::{DataFormat, Reduce, Reducer, RmsNorm, Softmax, SoftmaxKind};
use tract_onnx::tract_core::ops::source::TypedSource;

use crate::builder::{ConstValues, Matrix, ModelBuilder};
use crate::error::{Error, Result};
use crate::graph::{Activation, ValueType};

/// What a tract outlet is in graft terms.
#[derive(Clone, Debug)]
enum Lowered {
    /// A constant (tract folded it).
    Const(Arc<Tensor>),
    /// A per-row value.
    Val(Val),
}

/// A graft value: its name, element type, row shape and where the batch sits in the
/// logical (tract) shape: on axis `batch_axis`, whose logical size is `outer · S · inner`
/// with the batch index between the two (`outer · inner` is the row shape's size
/// there). `outer` is 1 except after torch's `[seq, batch, d] → [seq·batch, d]` views
/// inside attention; it decides which reshapes keep each example's elements in row order.
#[derive(Clone, Debug)]
struct Val {
    name: String,
    dtype: ValueType,
    shape: Vec<usize>,
    batch_axis: usize,
    outer: usize,
}

/// Imports an ONNX file (external data from its folder). The model is named after the
/// file stem.
///
/// Errors: [`Error::Io`] if the file cannot be read, [`Error::Onnx`] if it is not a
/// well-formed ONNX model (or tract cannot type it, or external data is missing or
/// outside the folder), [`Error::OnnxUnsupported`] naming the first node graft cannot
/// represent, with the op and what would make it work, and [`Error::TensorEntry`] for a
/// parameter holding NaN or ±Inf.
pub fn import(path: &Path) -> Result<ModelBuilder> {
    let proto = super::read_proto(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    check_external_data(&proto, dir)?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("onnx");
    lower_proto(proto, stem, Some(dir), Some(path))
}

/// Imports an ONNX model held in memory, named after its graph (external data is
/// refused: there is no folder to read it from).
pub fn import_bytes(bytes: &[u8]) -> Result<ModelBuilder> {
    let proto = super::decode_proto(bytes)?;
    let name = proto.graph.as_ref().map(|g| g.name.clone()).filter(|n| !n.is_empty());
    import_proto(proto, name.as_deref().unwrap_or("onnx"))
}

/// Imports a parsed ONNX model, naming the graft model `name`.
pub fn import_proto(proto: pb::ModelProto, name: &str) -> Result<ModelBuilder> {
    if let Some(t) = initializers(&proto).find(|t| !t.external_data.is_empty()) {
        return Err(Error::Onnx {
            detail: format!("initializer `{}` is stored as external data; convert the file from its folder", t.name),
        });
    }
    lower_proto(proto, name, None, None)
}

fn initializers(proto: &pb::ModelProto) -> impl Iterator<Item = &pb::TensorProto> {
    proto.graph.iter().flat_map(|g| g.initializer.iter())
}

/// External data must name an existing file inside the model's folder.
fn check_external_data(proto: &pb::ModelProto, dir: &Path) -> Result<()> {
    for t in initializers(proto).filter(|t| !t.external_data.is_empty()) {
        let location = t.external_data.iter().find(|e| e.key == "location").map(|e| e.value.as_str());
        let Some(location) = location else {
            return Err(Error::Onnx { detail: format!("initializer `{}`: external data without a location", t.name) });
        };
        let inside = Path::new(location).components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !inside {
            return Err(Error::Onnx {
                detail: format!(
                    "initializer `{}`: external data `{location}` is not a relative path inside the model's folder",
                    t.name
                ),
            });
        }
        let file = dir.join(location);
        if !file.is_file() {
            return Err(Error::Onnx {
                detail: format!("initializer `{}`: external data file {} is missing", t.name, file.display()),
            });
        }
    }
    Ok(())
}

fn tract_err(stage: &str, e: impl std::fmt::Display) -> Error {
    Error::Onnx { detail: format!("{stage}: {e:#}") }
}

fn lower_proto(mut proto: pb::ModelProto, name: &str, dir: Option<&Path>, path: Option<&Path>) -> Result<ModelBuilder> {
    let bags = super::bag_loop::extract(&mut proto);
    let proto = &proto;
    let graph = proto.graph.as_ref().ok_or_else(|| Error::Onnx { detail: "the model has no graph".into() })?;
    // Shapes come from tract's own inference with graft's batch symbol: exporters name
    // the batch differently (`batch`, `s0`, …) in value infos and outputs.
    let mut onnx = tract_onnx::onnx().with_ignore_value_info(true).with_ignore_output_shapes(true);
    super::static_if::register(&mut onnx);
    let dir_str = dir.map(|d| d.to_string_lossy().into_owned());
    let parsed = guarded("tract could not load the model", || onnx.parse(proto, dir_str.as_deref()))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(Error::Onnx { detail: format!("unresolved inputs {:?}", parsed.unresolved_inputs) });
    }
    let mut model = parsed.model;
    let batch = model.symbols.sym("S");
    // Axis 0 of every input is the batch; every other axis must have a fixed size.
    let initializer_names: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let real_inputs: Vec<&pb::ValueInfoProto> =
        graph.input.iter().filter(|i| !initializer_names.contains(i.name.as_str())).collect();
    for (ix, input) in real_inputs.iter().enumerate() {
        let (dt, dims) = input_signature(input)?;
        let mut shape: TVec<TDim> = tvec![batch.to_dim()];
        shape.extend(dims.iter().map(|&d| (d as i64).to_dim()));
        model
            .set_input_fact(ix, InferenceFact::dt_shape(dt, shape))
            .map_err(|e| tract_err(&format!("input `{}`", input.name), e))?;
    }
    let mut typed = guarded("tract could not type the model", || model.into_typed())?;
    guarded("tract could not normalise the model", || declutter(&mut typed))?;

    let mut producer = String::from("graft convert (tract-onnx 0.23 typed model)");
    if let Some(p) = path {
        producer.push_str(&format!(" of {}", p.display()));
    }
    if !proto.producer_name.is_empty() {
        producer.push_str(&format!(" (exported by {} {})", proto.producer_name, proto.producer_version));
    }
    let mut builder = ModelBuilder::new(name);
    builder.producer(producer);
    let params = ParamNames::new(graph, dir);
    let mut loop_bags = Vec::with_capacity(bags.len());
    for bag in bags {
        let t = graph.initializer.iter().find(|t| t.name == bag.table).ok_or_else(|| Error::Onnx {
            detail: format!("embedding bag table `{}` is not an initializer", bag.table),
        })?;
        let resolver = tract_onnx::data_resolver::MmapDataResolver;
        let dir_str = dir.map(|d| d.to_string_lossy().into_owned());
        let table = tract_onnx::tensor::load_tensor(&resolver, t, dir_str.as_deref())
            .map_err(|e| tract_err(&format!("table `{}`", bag.table), e))?;
        if table.rank() != 2 {
            return Err(Error::Onnx { detail: format!("embedding bag table `{}` is not a matrix", bag.table) });
        }
        loop_bags.push((bag, table));
    }
    let mut lowering = Lowering {
        model: &typed,
        batch,
        builder,
        values: HashMap::new(),
        taken: HashSet::new(),
        params,
        absorbed: HashSet::new(),
        loop_bags,
        onnx_nodes: graph.node.iter().map(|n| n.name.clone()).filter(|n| !n.is_empty()).collect(),
    };
    // The lowering indexes tract's graph by its own invariants; should one not hold for
    // some model, that is a typed error, not a crash.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lowering.run())) {
        Ok(result) => result?,
        Err(_) => {
            return Err(Error::Onnx {
                detail: "graft's lowering hit an unexpected tract graph (a graft bug; please report the model)".into(),
            });
        }
    }
    Ok(lowering.builder)
}

/// tract's declutter without the passes that restructure products for tract's own
/// executor (slicing a linear's output, splitting a linear over a concatenated input):
/// graft keeps each `nn.Linear` one node, since adapters attach to it and its weight is
/// quantized as one matrix.
fn declutter(model: &mut TypedModel) -> TractResult<()> {
    let mut optimizer = tract_onnx::tract_core::optim::Optimizer::declutter();
    optimizer.passes.retain(|p| {
        let pass = format!("{p:?}");
        !["PushSliceUp", "PushSplitDown", "ConcatThenEinsum"].iter().any(|n| pass.contains(n))
    });
    optimizer.optimize(model)
}

/// Runs a tract stage, turning its errors — and its panics, which a malformed model can
/// reach inside tract — into [`Error::Onnx`].
fn guarded<T>(stage: &str, f: impl FnOnce() -> TractResult<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(tract_err(stage, e)),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(Error::Onnx { detail: format!("{stage}: tract failed on this model: {what}") })
        }
    }
}

/// The element type and non-batch dims of a graph input.
fn input_signature(input: &pb::ValueInfoProto) -> Result<(DatumType, Vec<usize>)> {
    use pb::type_proto::Value as T;
    let bad = |detail: String| Error::OnnxUnsupported { node: input.name.clone(), op: "graph input".into(), detail };
    let Some(T::TensorType(tt)) = input.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
        return Err(bad("not a tensor".into()));
    };
    let dt = match pb::tensor_proto::DataType::try_from(tt.elem_type) {
        Ok(pb::tensor_proto::DataType::Float) => f32::datum_type(),
        Ok(pb::tensor_proto::DataType::Int64) => i64::datum_type(),
        Ok(pb::tensor_proto::DataType::Int32) => i32::datum_type(),
        _ => return Err(bad(format!("element type {} (graft takes float32, int64 or int32 inputs)", tt.elem_type))),
    };
    let dims = tt.shape.as_ref().map(|s| s.dim.as_slice()).unwrap_or(&[]);
    if dims.is_empty() {
        return Err(bad("a scalar input has no batch axis (axis 0 must be the batch)".into()));
    }
    let mut out = Vec::with_capacity(dims.len() - 1);
    for (axis, d) in dims.iter().enumerate().skip(1) {
        match d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => out.push(v as usize),
            _ => {
                return Err(bad(format!(
                    "axis {axis} has no fixed size: graft fixes every axis but the batch at convert time \
                     (export with a static size for it)"
                )));
            }
        }
    }
    Ok((dt, out))
}

/// Initializer names by content, so a weight tract derived (transposed) from a named
/// initializer gets its module name back.
struct ParamNames {
    by_hash: HashMap<u64, String>,
    /// Every initializer's name.
    names: HashSet<String>,
}

impl ParamNames {
    fn new(graph: &pb::GraphProto, dir: Option<&Path>) -> ParamNames {
        let mut by_hash = HashMap::new();
        let names = graph.initializer.iter().map(|t| t.name.clone()).collect();
        let resolver = tract_onnx::data_resolver::MmapDataResolver;
        let dir = dir.map(|d| d.to_string_lossy().into_owned());
        for t in &graph.initializer {
            if t.dims.len() != 2 || !t.name.ends_with(".weight") {
                continue;
            }
            let Ok(tensor) = tract_onnx::tensor::load_tensor(&resolver, t, dir.as_deref()) else { continue };
            let Ok(values) = elements_as::<f32>(&tensor) else { continue };
            let (r, c) = (t.dims[0] as usize, t.dims[1] as usize);
            by_hash.entry(hash_matrix(&values, r, c, false)).or_insert_with(|| t.name.clone());
            by_hash.entry(hash_matrix(&values, r, c, true)).or_insert_with(|| t.name.clone());
        }
        ParamNames { by_hash, names }
    }

    fn lookup(&self, values: &[f32], rows: usize, cols: usize) -> Option<&str> {
        self.by_hash.get(&hash_matrix(values, rows, cols, false)).map(String::as_str)
    }
}

/// FNV-1a over the shape and the bits of a row-major matrix, read transposed if asked.
fn hash_matrix(values: &[f32], rows: usize, cols: usize, transposed: bool) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    let (r, c) = if transposed { (cols, rows) } else { (rows, cols) };
    eat(r as u64);
    eat(c as u64);
    for i in 0..r {
        for j in 0..c {
            let v = if transposed { values[j * cols + i] } else { values[i * cols + j] };
            eat(u64::from(v.to_bits()));
        }
    }
    h
}

struct Lowering<'m> {
    model: &'m TypedModel,
    batch: Symbol,
    builder: ModelBuilder,
    values: HashMap<OutletId, Lowered>,
    /// graft names in use (nodes, inputs, constants).
    taken: HashSet<String>,
    params: ParamNames,
    /// tract nodes already lowered into an earlier graft node (a bias add fused into its
    /// linear).
    absorbed: HashSet<usize>,
    /// `nn.EmbeddingBag` loops cut out before tract, with their tables.
    loop_bags: Vec<(super::bag_loop::LoopBag, Tensor)>,
    /// The ONNX node names, to map tract's derived names (`/fc/Gemm.ab`) back.
    onnx_nodes: HashSet<String>,
}

/// `/mlp/mlp.0/Gemm` → `mlp.mlp.0`; `None` without a module path.
fn module_path(onnx_name: &str) -> Option<String> {
    let parts: Vec<&str> = onnx_name.trim_start_matches('/').split('/').collect();
    if parts.len() < 2 {
        return None;
    }
    let path = parts[..parts.len() - 1].iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join(".");
    let path = sanitize(&path);
    (!path.is_empty()).then_some(path)
}

/// Characters outside `[A-Za-z0-9_.-]` become `_`; `/` becomes `.`.
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

/// Refuses a parameter holding NaN or ±Inf, naming the tensor.
fn check_finite(tensor: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::TensorEntry {
            tensor: tensor.into(),
            detail: format!("non-finite value {} at index {i}", values[i]),
        }),
    }
}

/// `mlp.0.weight.0` → `mlp.0.weight`: tract names its copies of a constant
/// `<name>.<n>`.
fn strip_copy_suffix(name: &str) -> &str {
    let mut name = name;
    while let Some((head, tail)) = name.rsplit_once('.')
        && !head.is_empty()
        && !tail.is_empty()
        && tail.bytes().all(|b| b.is_ascii_digit())
    {
        name = head;
    }
    name
}

/// `mlp.mlp.0.weight` → `mlp.mlp.0` (a parameter name that is a module path).
fn param_module(name: &str) -> Option<String> {
    let m = strip_copy_suffix(name).strip_suffix(".weight")?;
    (!m.is_empty() && !m.contains("::")).then(|| sanitize(m))
}

/// Whether permuting `shape` by `perm` only moves axes of size 1 (the elements keep their
/// row-major order: a reshape, which costs nothing, not a transpose).
fn moves_only_unit_axes(shape: &[usize], perm: &[usize]) -> bool {
    let kept = |order: &mut dyn Iterator<Item = usize>| order.filter(|&a| shape[a] != 1).collect::<Vec<_>>();
    kept(&mut (0..shape.len())) == kept(&mut perm.iter().copied())
}

/// Permutes row-major values of `shape`: output axis `i` is input axis `perm[i]`.
fn permute(values: &[f32], shape: &[usize], perm: &[usize]) -> Vec<f32> {
    let rank = shape.len();
    let strides = crate::graph::shape::strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let total: usize = shape.iter().product();
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; rank];
    for _ in 0..total {
        out.push(values[(0..rank).map(|i| idx[i] * strides[perm[i]]).sum::<usize>()]);
        for i in (0..rank).rev() {
            idx[i] += 1;
            if idx[i] < out_shape[i] {
                break;
            }
            idx[i] = 0;
        }
    }
    out
}

/// A tensor's elements as `D`, row-major (converted if its type differs).
fn elements_as<D: Datum + Copy>(t: &Tensor) -> std::result::Result<Vec<D>, String> {
    let c = t.cast_to::<D>().map_err(|e| e.to_string())?;
    let view = c.to_plain_array_view::<D>().map_err(|e| e.to_string())?;
    Ok(view.iter().copied().collect())
}

/// Converts a constant to graft's element types (bool → f32 mask, i32 → i64).
fn const_values(t: &Tensor) -> std::result::Result<ConstValues, String> {
    let dt = t.datum_type();
    if dt == bool::datum_type() {
        let v = elements_as::<bool>(t)?;
        return Ok(ConstValues::F32(v.iter().map(|&b| f32::from(u8::from(b))).collect()));
    }
    if dt.is_integer() || dt == TDim::datum_type() {
        return Ok(ConstValues::I64(elements_as::<i64>(t)?));
    }
    if dt.is_float() {
        return Ok(ConstValues::F32(elements_as::<f32>(t)?));
    }
    Err(format!("constants of type {dt:?} are not supported"))
}

/// graft's element type for a tract datum type.
fn value_type(dt: DatumType) -> Option<ValueType> {
    if dt == bool::datum_type() || dt.is_float() {
        Some(ValueType::F32)
    } else if dt.is_integer() || dt == TDim::datum_type() {
        Some(ValueType::I64)
    } else {
        None
    }
}

impl Lowering<'_> {
    fn unsupported(&self, node: &TypedNode, detail: impl Into<String>) -> Error {
        let op = node.op.name().to_string();
        Error::OnnxUnsupported { node: self.onnx_name(&node.name).to_string(), op, detail: detail.into() }
    }

    /// The ONNX node a tract node comes from: tract names the nodes it derives
    /// `<onnx name>.<suffix>` (`/fc/Gemm.ab`, `/act/Relu.low`, `/Reshape.0`).
    fn onnx_name<'n>(&self, tract_name: &'n str) -> &'n str {
        let mut name = tract_name;
        loop {
            if self.onnx_nodes.contains(name) {
                return name;
            }
            match name.rsplit_once('.') {
                Some((head, _)) if !head.is_empty() => name = head,
                _ => return tract_name,
            }
        }
    }

    /// `name` seen with row shape `to`: itself when `from` already is, else a (free)
    /// `reshape` node named after `base`.
    fn reshaped(&mut self, name: String, from: &[usize], to: &[usize], dtype: ValueType, base: &str) -> String {
        if from == to {
            return name;
        }
        let r = self.claim(base);
        self.builder.tensor_op(&r, "reshape", &[&name], json!({}), to, dtype)
    }

    /// An f32 parameter, refused when it holds NaN or ±Inf (graft never computes with
    /// non-finite weights).
    fn finite(&self, node: &TypedNode, input: usize, values: &[f32]) -> Result<()> {
        let tensor = node.inputs.get(input).map(|o| self.model.node(o.node).name.as_str());
        check_finite(strip_copy_suffix(tensor.unwrap_or(&node.name)), values)
    }

    /// Claims a unique graft name derived from `base`.
    fn claim(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "node".to_string() } else { sanitize(base) };
        let mut candidate = base.clone();
        let mut k = 0;
        while self.taken.contains(&candidate)
            || self.taken.contains(&format!("{candidate}.weight"))
            || self.builder.has_value(&candidate)
        {
            k += 1;
            candidate = format!("{base}_{k}");
        }
        self.taken.insert(candidate.clone());
        self.taken.insert(format!("{candidate}.weight"));
        self.taken.insert(format!("{candidate}.bias"));
        self.taken.insert(format!("{candidate}.weight.scale"));
        candidate
    }

    /// The row shape and batch axis of an outlet's fact.
    fn row_shape(&self, node: &TypedNode, fact: &TypedFact) -> Result<(Vec<usize>, Option<usize>)> {
        let mut shape = Vec::with_capacity(fact.rank());
        let mut batch_axis = None;
        for (axis, d) in fact.shape.iter().enumerate() {
            if let Ok(n) = d.to_i64() {
                shape.push(usize::try_from(n).map_err(|_| self.unsupported(node, format!("negative dim {n}")))?);
                continue;
            }
            // c·S for a constant c ≥ 1.
            let at = |v: i64| d.eval(&SymbolValues::default().with(&self.batch, v)).to_i64().ok();
            match (at(1), at(2), at(7)) {
                (Some(c), Some(c2), Some(c7)) if c > 0 && c2 == 2 * c && c7 == 7 * c && batch_axis.is_none() => {
                    batch_axis = Some(axis);
                    shape.push(c as usize);
                }
                _ => {
                    return Err(self.unsupported(
                        node,
                        format!(
                            "output shape {:?}: axis {axis} is `{d}`, but graft needs the batch as one axis of c·S",
                            fact.shape
                        ),
                    ));
                }
            }
        }
        Ok((shape, batch_axis))
    }

    fn get(&self, node: &TypedNode, ix: usize) -> Result<Lowered> {
        let outlet = node.inputs[ix];
        self.values.get(&outlet).cloned().ok_or_else(|| self.unsupported(node, format!("input {ix} was not lowered")))
    }

    /// The graft name of an input operand, registering a constant if needed.
    fn operand(&mut self, node: &TypedNode, l: &Lowered, hint: &str) -> Result<String> {
        match l {
            Lowered::Val(v) => Ok(v.name.clone()),
            Lowered::Const(t) => {
                let values = const_values(t).map_err(|e| self.unsupported(node, e))?;
                let name = self.claim(&format!("{}.{hint}", node.name));
                let shape: Vec<usize> = t.shape().to_vec();
                Ok(self.builder.constant(&name, &shape, values))
            }
        }
    }

    fn run(&mut self) -> Result<()> {
        let order = self.model.eval_order().map_err(|e| tract_err("tract graph order", e))?;
        for &n in &order {
            let node = self.model.node(n);
            if self.absorbed.contains(&n) {
                continue;
            }
            // Whatever tract folded is a constant, whatever its op.
            if node.outputs.len() == 1
                && let Some(k) = &node.outputs[0].fact.konst
            {
                self.values.insert(OutletId::new(n, 0), Lowered::Const(k.clone()));
                continue;
            }
            self.lower_node(n)?;
        }
        let outputs = self.model.output_outlets().map_err(|e| tract_err("outputs", e))?.to_vec();
        for (i, outlet) in outputs.iter().enumerate() {
            let name = self.model.outlet_label(*outlet).map(str::to_string).unwrap_or_else(|| format!("output_{i}"));
            let node = self.model.node(outlet.node);
            match self.values.get(outlet).cloned() {
                Some(Lowered::Val(v)) => {
                    if v.batch_axis != 0 || v.outer != 1 {
                        return Err(
                            self.unsupported(node, format!("output `{name}` has the batch on axis {}", v.batch_axis))
                        );
                    }
                    let value = if v.dtype == ValueType::I64 {
                        let cast = self.claim(&format!("{name}.f32"));
                        self.builder.tensor_op(
                            &cast,
                            "cast",
                            &[&v.name],
                            json!({"to": "f32"}),
                            &v.shape,
                            ValueType::F32,
                        )
                    } else {
                        v.name
                    };
                    self.builder.output(&name, &value);
                }
                _ => return Err(self.unsupported(node, format!("output `{name}` does not depend on the inputs"))),
            }
        }
        Ok(())
    }

    fn set(&mut self, n: usize, slot: usize, l: Lowered) {
        self.values.insert(OutletId::new(n, slot), l);
    }

    /// Emits a tensor op whose output is outlet `(n, 0)`, with shape from tract's fact.
    fn emit(&mut self, n: usize, op: &str, inputs: &[&str], attrs: Value, name_hint: Option<&str>) -> Result<Val> {
        let node = self.model.node(n);
        let fact = &node.outputs[0].fact;
        let (shape, batch) = self.row_shape(node, fact)?;
        let batch_axis = batch.ok_or_else(|| self.unsupported(node, "the output does not depend on the batch"))?;
        let dtype = value_type(fact.datum_type)
            .ok_or_else(|| self.unsupported(node, format!("values of type {:?}", fact.datum_type)))?;
        let base = name_hint.map(str::to_string).unwrap_or_else(|| self.onnx_name(&node.name).to_string());
        let name = self.claim(&base);
        self.builder.tensor_op(&name, op, inputs, attrs, &shape, dtype);
        self.builder.set_source(&name, self.onnx_name(&node.name));
        // Ops other than reshapes and products keep the batch axis's layout.
        let outer = self.input_outer(node);
        let v = Val { name, dtype, shape, batch_axis, outer };
        self.set(n, 0, Lowered::Val(v.clone()));
        Ok(v)
    }

    fn lower_node(&mut self, n: usize) -> Result<()> {
        let model = self.model;
        let node = model.node(n);
        let op = &node.op;
        if let Some(_src) = op.downcast_ref::<TypedSource>() {
            return self.lower_source(n);
        }
        if let Some(c) = op.downcast_ref::<Const>() {
            self.set(n, 0, Lowered::Const(c.val().clone()));
            return Ok(());
        }
        if let Some(e) = op.downcast_ref::<EinSum>() {
            return self.lower_einsum(n, e);
        }
        if let Some(b) = op.downcast_ref::<TypedBinOp>() {
            return self.lower_binary(n, b);
        }
        if let Some(e) = op.downcast_ref::<ElementWiseOp>() {
            return self.lower_unary(n, e);
        }
        if let Some(a) = op.downcast_ref::<AxisOp>() {
            return self.lower_axis(n, a);
        }
        if let Some(r) = op.downcast_ref::<Reduce>() {
            return self.lower_reduce(n, r);
        }
        if let Some(s) = op.downcast_ref::<Softmax>() {
            let x = self.value_input(n, 0)?;
            let [axis] = s.axes[..] else { return Err(self.unsupported(node, "softmax over several axes")) };
            if axis == x.batch_axis {
                return Err(self.unsupported(node, "softmax along the batch axis mixes examples"));
            }
            let opname = if s.kind == SoftmaxKind::LogSoftmax { "log_softmax" } else { "softmax" };
            self.emit(n, opname, &[&x.name], json!({"axis": axis}), None)?;
            return Ok(());
        }
        if let Some(g) = op.downcast_ref::<Gather>() {
            return self.lower_gather(n, g.axis);
        }
        if let Some(s) = op.downcast_ref::<Slice>() {
            let x = self.value_input(n, 0)?;
            if s.axis == x.batch_axis {
                return Err(self.unsupported(node, "slicing the batch axis"));
            }
            let (start, end) = match (s.start.to_i64(), s.end.to_i64()) {
                (Ok(a), Ok(b)) if a >= 0 && b >= a => (a as usize, b as usize),
                _ => {
                    return Err(
                        self.unsupported(node, format!("slice bounds {}..{} are not constants", s.start, s.end))
                    );
                }
            };
            self.emit(n, "slice", &[&x.name], json!({"axis": s.axis, "start": start, "end": end}), None)?;
            return Ok(());
        }
        if let Some(d) = op.downcast_ref::<Downsample>() {
            let x = self.value_input(n, 0)?;
            if d.axis == x.batch_axis || d.stride <= 0 {
                return Err(self.unsupported(node, "downsampling the batch axis or with a negative stride"));
            }
            let len = x.shape[d.axis];
            let attrs = json!({"axis": d.axis, "start": d.modulo.min(len), "end": len, "step": d.stride});
            self.emit(n, "slice", &[&x.name], attrs, None)?;
            return Ok(());
        }
        if let Some(c) = op.downcast_ref::<TypedConcat>() {
            let mut names = Vec::with_capacity(node.inputs.len());
            for ix in 0..node.inputs.len() {
                let v = self.value_input(n, ix)?;
                if c.axis == v.batch_axis {
                    return Err(self.unsupported(node, "concatenation along the batch axis"));
                }
                names.push(v.name);
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            self.emit(n, "concat", &refs, json!({"axis": c.axis}), None)?;
            return Ok(());
        }
        if op.downcast_ref::<MultiBroadcastTo>().is_some() || op.downcast_ref::<Tile>().is_some() {
            let out_rank = node.outputs[0].fact.rank();
            let name = match self.get(node, 0)? {
                Lowered::Val(v) if v.shape.len() == out_rank => v.name,
                Lowered::Val(_) => {
                    return Err(self.unsupported(node, "a broadcast that adds axes (tract adds them first)"));
                }
                // A constant takes the output's rank (leading 1s) before it is tiled.
                Lowered::Const(t) => {
                    let mut shape = vec![1usize; out_rank.saturating_sub(t.rank())];
                    shape.extend_from_slice(t.shape());
                    let values = const_values(&t).map_err(|e| self.unsupported(node, e))?;
                    let c = self.claim(&format!("{}.value", node.name));
                    self.builder.constant(&c, &shape, values)
                }
            };
            self.emit(n, "tile", &[&name], json!({}), None)?;
            return Ok(());
        }
        if let Some(p) = op.downcast_ref::<Pad>() {
            let x = self.value_input(n, 0)?;
            let PadMode::Constant(v) = &p.mode else { return Err(self.unsupported(node, "only constant padding")) };
            let value = v.cast_to_scalar::<f32>().map_err(|e| self.unsupported(node, e.to_string()))?;
            if p.pads.get(x.batch_axis).is_some_and(|&(a, b)| a != 0 || b != 0) {
                return Err(self.unsupported(node, "padding the batch axis"));
            }
            let flat: Vec<usize> = p.pads.iter().flat_map(|&(a, b)| [a, b]).collect();
            self.emit(n, "pad", &[&x.name], json!({"pads": flat, "value": value}), None)?;
            return Ok(());
        }
        if let Some(t) = op.downcast_ref::<Topk>() {
            return self.lower_topk(n, t);
        }
        if let Some(c) = op.downcast_ref::<Cast>() {
            return self.lower_cast(n, c.to);
        }
        if op.downcast_ref::<Iff>().is_some() {
            let mut names = Vec::with_capacity(3);
            for (ix, hint) in ["cond", "then", "else"].iter().enumerate() {
                let l = self.get(node, ix)?;
                names.push(self.operand(node, &l, hint)?);
            }
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            self.emit(n, "where", &refs, json!({}), None)?;
            return Ok(());
        }
        if let Some(c) = op.downcast_ref::<Conv>() {
            return self.lower_conv(n, c);
        }
        if let Some(g) = op.downcast_ref::<GatherElements>() {
            let (data, idx) = (self.get(node, 0)?, self.get(node, 1)?);
            if let Lowered::Val(d) = &data
                && d.batch_axis == g.axis
            {
                return Err(self.unsupported(node, "gathering along the batch axis"));
            }
            let (x, i) = (self.operand(node, &data, "data")?, self.operand(node, &idx, "indices")?);
            self.emit(n, "gather_elements", &[&x, &i], json!({"axis": g.axis}), None)?;
            return Ok(());
        }
        if let Some(r) = op.downcast_ref::<RmsNorm>() {
            return self.lower_rms_norm(n, r);
        }
        let name = op.name();
        Err(self.unsupported(
            node,
            format!(
                "graft has no lowering for tract's `{name}` ({op:?}); graft converts the ops recommender models \
                 use (see README: ONNX import) — run this model with ONNX Runtime or tract"
            ),
        ))
    }

    /// The `outer` factor of the node's first per-row input (1 if none).
    fn input_outer(&self, node: &TypedNode) -> usize {
        node.inputs
            .iter()
            .find_map(|o| match self.values.get(o) {
                Some(Lowered::Val(v)) => Some(v.outer),
                _ => None,
            })
            .unwrap_or(1)
    }

    /// The per-row value at input `ix` (a constant there is refused).
    fn value_input(&self, n: usize, ix: usize) -> Result<Val> {
        let node = self.model.node(n);
        match self.get(node, ix)? {
            Lowered::Val(v) => Ok(v),
            Lowered::Const(_) => {
                Err(self.unsupported(node, format!("input {ix} is a constant where graft needs a value")))
            }
        }
    }

    fn lower_source(&mut self, n: usize) -> Result<()> {
        let node = self.model.node(n);
        if let Some(i) = self.loop_bags.iter().position(|(b, _)| b.placeholder == node.name) {
            return self.lower_loop_bag(n, i);
        }
        let fact = &node.outputs[0].fact;
        let (shape, batch) = self.row_shape(node, fact)?;
        if batch != Some(0) {
            return Err(self.unsupported(node, "axis 0 of a graph input must be the batch"));
        }
        let name = node.name.clone();
        self.taken.insert(name.clone());
        let dtype = if fact.datum_type.is_float() {
            self.builder.dense_input_shaped(&name, &shape);
            ValueType::F32
        } else if fact.datum_type.is_integer() {
            self.builder.ids_input_shaped(&name, &shape);
            ValueType::I64
        } else {
            return Err(self.unsupported(node, format!("inputs of type {:?}", fact.datum_type)));
        };
        self.set(n, 0, Lowered::Val(Val { name, dtype, shape, batch_axis: 0, outer: 1 }));
        Ok(())
    }

    /// The placeholder of a cut-out `nn.EmbeddingBag` loop: a bag over a flat ids +
    /// offsets input pair.
    fn lower_loop_bag(&mut self, n: usize, i: usize) -> Result<()> {
        let node = self.model.node(n);
        let (bag, table) = self.loop_bags[i].clone();
        let (rows, cols) = (table.shape()[0], table.shape()[1]);
        let values = elements_as::<f32>(&table).map_err(|e| self.unsupported(node, e))?;
        if !self.builder.has_value(&bag.ids) {
            self.builder.bag_inputs(&bag.ids, &bag.offsets);
            self.taken.insert(bag.ids.clone());
            self.taken.insert(bag.offsets.clone());
        }
        let base = param_module(&bag.table).unwrap_or_else(|| sanitize(&bag.table));
        let name = self.claim(&base);
        check_finite(&bag.table, &values)?;
        self.builder.embedding_bag(&name, &[&bag.ids, &bag.offsets], Matrix::new(rows, cols, values), bag.mode);
        self.builder.set_source(&name, &bag.placeholder);
        let shape = self.row_shape(node, &node.outputs[0].fact)?.0;
        let row = format!("{name}.row");
        let name = self.reshaped(name, &[cols], &shape, ValueType::F32, &row);
        self.set(n, 0, Lowered::Val(Val { name, dtype: ValueType::F32, shape, batch_axis: 0, outer: 1 }));
        Ok(())
    }

    fn lower_cast(&mut self, n: usize, to: DatumType) -> Result<()> {
        let node = self.model.node(n);
        let x = self.value_input(n, 0)?;
        let from_bool =
            self.model.outlet_fact(node.inputs[0]).map(|f| f.datum_type == bool::datum_type()).unwrap_or(false);
        let target = value_type(to).ok_or_else(|| self.unsupported(node, format!("cast to {to:?}")))?;
        if to == bool::datum_type() && !from_bool {
            // x != 0  →  not(x == 0)
            let zero = self.claim(&format!("{}.zero", node.name));
            let zv = if x.dtype == ValueType::I64 { ConstValues::I64(vec![0]) } else { ConstValues::F32(vec![0.0]) };
            self.builder.constant(&zero, &[], zv);
            let eq = self.claim(&format!("{}.eq0", node.name));
            self.builder.tensor_op(&eq, "equal", &[&x.name, &zero], json!({}), &x.shape, ValueType::F32);
            self.emit(n, "not", &[&eq], json!({}), None)?;
            return Ok(());
        }
        if target == x.dtype {
            // Same graft type (f32 ↔ bool mask, i32 ↔ i64, f16 ↔ f32): nothing to do.
            self.set(n, 0, Lowered::Val(x));
            return Ok(());
        }
        self.emit(n, "cast", &[&x.name], json!({"to": target.as_str()}), None)?;
        Ok(())
    }

    fn lower_axis(&mut self, n: usize, a: &AxisOp) -> Result<()> {
        let node = self.model.node(n);
        let x = self.value_input(n, 0)?;
        let (shape, batch) = self.row_shape(node, &node.outputs[0].fact)?;
        let batch_axis = batch.ok_or_else(|| self.unsupported(node, "lost the batch axis"))?;
        match a {
            AxisOp::Move(from, to) => {
                let rank = x.shape.len();
                let mut perm: Vec<usize> = (0..rank).collect();
                let moved = perm.remove(*from);
                perm.insert(*to, moved);
                if moves_only_unit_axes(&x.shape, &perm) {
                    let mut v = self.emit(n, "reshape", &[&x.name], json!({}), None)?;
                    v.outer = x.outer;
                    self.set(n, 0, Lowered::Val(v));
                } else {
                    self.emit(n, "transpose", &[&x.name], json!({"perm": perm}), None)?;
                }
            }
            _ => {
                // Add / Rm / Reshape: the same elements. The logical flat index of a row
                // element is `o·S·I + b·I + i` with `O` row elements "before" the batch; a
                // reshape keeps rows intact iff `O` is unchanged.
                let before = |s: &[usize], p: usize| s[..p].iter().product::<usize>();
                let o_in = before(&x.shape, x.batch_axis) * x.outer;
                let p_out = before(&shape, batch_axis);
                let outer = o_in / p_out.max(1);
                if p_out == 0 || o_in % p_out != 0 || shape[batch_axis] % outer.max(1) != 0 {
                    return Err(self.unsupported(
                        node,
                        format!(
                            "reshape of row shape {:?} → {:?} would interleave examples (the batch moves within \
                             the flattened order)",
                            x.shape, shape
                        ),
                    ));
                }
                if shape == x.shape {
                    self.set(n, 0, Lowered::Val(Val { batch_axis, outer, ..x }));
                } else {
                    let mut v = self.emit(n, "reshape", &[&x.name], json!({}), None)?;
                    v.outer = outer;
                    self.set(n, 0, Lowered::Val(v));
                }
            }
        }
        Ok(())
    }

    fn lower_reduce(&mut self, n: usize, r: &Reduce) -> Result<()> {
        let node = self.model.node(n);
        let x = self.value_input(n, 0)?;
        if r.axes.contains(&x.batch_axis) {
            return Err(self.unsupported(node, "reduction over the batch axis mixes examples"));
        }
        let how = match r.reducer {
            Reducer::Sum => "sum",
            Reducer::Max => "max",
            Reducer::Min => "min",
            Reducer::Prod => "prod",
            Reducer::MeanOfSquares => "mean_square",
            other => return Err(self.unsupported(node, format!("reducer {other:?}"))),
        };
        let mut axes: Vec<usize> = r.axes.to_vec();
        axes.sort_unstable();
        axes.dedup();
        self.emit(n, "reduce", &[&x.name], json!({"reduce": how, "axes": axes, "keepdims": true}), None)?;
        Ok(())
    }

    fn lower_unary(&mut self, n: usize, e: &ElementWiseOp) -> Result<()> {
        use tract_onnx::tract_core::ops::{math, nn};
        let node = self.model.node(n);
        let x = self.value_input(n, 0)?;
        let mini = &e.0;
        let act = |a: Activation| (a.as_str(), json!({}));
        let (op, attrs) = match mini.name().as_ref() {
            "GeluExact" => act(Activation::Gelu),
            // tract also matches a cubic-free variant (x² in the tanh argument): not GELU.
            "GeluApproximate" => match mini.downcast_ref::<nn::GeluApproximate>() {
                Some(g) if !g.fast_impl => act(Activation::GeluTanh),
                _ => return Err(self.unsupported(node, "tanh GELU with x² instead of x³ has no graft lowering")),
            },
            "Silu" => act(Activation::Silu),
            "Sigmoid" => act(Activation::Sigmoid),
            "Tanh" => act(Activation::Tanh),
            "Abs" => ("abs", json!({})),
            "Exp" => ("exp", json!({})),
            "Ln" => ("log", json!({})),
            "Sqrt" => ("sqrt", json!({})),
            "Rsqrt" => ("rsqrt", json!({})),
            "Recip" => ("reciprocal", json!({})),
            "Erf" => ("erf", json!({})),
            "Floor" => ("floor", json!({})),
            "Ceil" => ("ceil", json!({})),
            "Round" | "RoundHalfToEven" => ("round", json!({})),
            "Sign" => ("sign", json!({})),
            "Neg" => ("neg", json!({})),
            "Not" => ("not", json!({})),
            "Sin" => ("sin", json!({})),
            "Cos" => ("cos", json!({})),
            "Square" => ("pow_const", json!({"exponent": 2.0})),
            "Softplus" => ("softplus", json!({})),
            "PowConst" => match mini.downcast_ref::<math::PowConst>() {
                Some(p) => ("pow_const", json!({"exponent": p.exponent})),
                None => return Err(self.unsupported(node, "PowConst without its exponent")),
            },
            "LeakyRelu" => match mini.downcast_ref::<nn::LeakyRelu>() {
                Some(p) => ("leaky_relu", json!({"alpha": p.alpha})),
                None => return Err(self.unsupported(node, "LeakyRelu without its alpha")),
            },
            other => return Err(self.unsupported(node, format!("element-wise `{other}` has no graft lowering"))),
        };
        if x.dtype == ValueType::I64 && !matches!(op, "abs" | "neg" | "sign") {
            return Err(self.unsupported(node, format!("{op} of integers")));
        }
        self.emit(n, op, &[&x.name], attrs, None)?;
        Ok(())
    }

    fn lower_binary(&mut self, n: usize, b: &TypedBinOp) -> Result<()> {
        let node = self.model.node(n);
        let (a, c) = (self.get(node, 0)?, self.get(node, 1)?);
        let mini = b.0.name();
        // Relu: max(x, 0).
        if mini == "Max"
            && let (Lowered::Val(x), Lowered::Const(k)) | (Lowered::Const(k), Lowered::Val(x)) = (&a, &c)
            && k.len() == 1
            && k.cast_to_scalar::<f32>().is_ok_and(|v| v == 0.0)
            && x.dtype == ValueType::F32
        {
            let x = x.name.clone();
            self.emit(n, Activation::Relu.as_str(), &[&x], json!({}), None)?;
            return Ok(());
        }
        let (op, swap) = match mini {
            "Add" => ("add", false),
            "Sub" => ("sub", false),
            "SubF" => ("sub", true),
            "Mul" => ("mul", false),
            "Div" => ("div", false),
            "Pow" => ("pow", false),
            "Min" => ("min", false),
            "Max" => ("max", false),
            "Eq" => ("equal", false),
            "LT" => ("less", false),
            "LTE" => ("less_equal", false),
            "GT" => ("greater", false),
            "GTE" => ("greater_equal", false),
            "And" => ("and", false),
            "Or" => ("or", false),
            "Xor" => ("xor", false),
            "NE" => {
                let eq = self.claim(&format!("{}.eq", node.name));
                let (x, y) = (self.operand(node, &a, "a")?, self.operand(node, &c, "b")?);
                let (shape, _) = self.row_shape(node, &node.outputs[0].fact)?;
                self.builder.tensor_op(&eq, "equal", &[&x, &y], json!({}), &shape, ValueType::F32);
                self.emit(n, "not", &[&eq], json!({}), None)?;
                return Ok(());
            }
            other => return Err(self.unsupported(node, format!("binary `{other}` has no graft lowering"))),
        };
        let (x, y) = (self.operand(node, &a, "a")?, self.operand(node, &c, "b")?);
        let (x, y) = if swap { (y, x) } else { (x, y) };
        self.emit(n, op, &[&x, &y], json!({}), None)?;
        Ok(())
    }

    fn lower_gather(&mut self, n: usize, axis: usize) -> Result<()> {
        let node = self.model.node(n);
        let (data, idx) = (self.get(node, 0)?, self.get(node, 1)?);
        match (&data, &idx) {
            (Lowered::Const(table), Lowered::Val(ids))
                if axis == 0 && table.rank() == 2 && table.datum_type().is_float() =>
            {
                if ids.dtype != ValueType::I64 {
                    return Err(self.unsupported(node, "gather indices must be integers"));
                }
                if self.try_bag(n, table, ids)? {
                    return Ok(());
                }
                let (rows, cols) = (table.shape()[0], table.shape()[1]);
                let values = elements_as::<f32>(table).map_err(|e| self.unsupported(node, e))?;
                let base = self.weight_name(node, 0, &values, rows, cols);
                let name = self.claim(&base);
                let (shape, batch) = self.row_shape(node, &node.outputs[0].fact)?;
                let batch_axis = batch.ok_or_else(|| self.unsupported(node, "lost the batch"))?;
                self.finite(node, 0, &values)?;
                self.builder.embedding(&name, &ids.name, Matrix::new(rows, cols, values), &shape);
                self.builder.set_source(&name, self.onnx_name(&node.name));
                self.set(n, 0, Lowered::Val(Val { name, dtype: ValueType::F32, shape, batch_axis, outer: ids.outer }));
                Ok(())
            }
            (Lowered::Val(d), _) if d.batch_axis == axis => {
                Err(self.unsupported(node, "gathering along the batch axis"))
            }
            _ => {
                let (x, i) = (self.operand(node, &data, "data")?, self.operand(node, &idx, "indices")?);
                self.emit(n, "gather", &[&x, &i], json!({"axis": axis}), None)?;
                Ok(())
            }
        }
    }

    /// `x / √(mean(x²) + ε)` along one axis (tract finds it inside LayerNorm and RMSNorm
    /// decompositions).
    fn lower_rms_norm(&mut self, n: usize, r: &RmsNorm) -> Result<()> {
        let node = self.model.node(n);
        let x = self.value_input(n, 0)?;
        if r.axis == x.batch_axis || x.dtype != ValueType::F32 {
            return Err(self.unsupported(node, "normalising along the batch axis"));
        }
        let eps = elements_as::<f32>(&r.eps).map_err(|e| self.unsupported(node, e))?;
        let [eps] = eps[..] else { return Err(self.unsupported(node, "a non-scalar epsilon")) };
        let mut reduced = x.shape.clone();
        reduced[r.axis] = 1;
        let ms = self.claim(&format!("{}.mean_square", node.name));
        let attrs = json!({"reduce": "mean_square", "axes": [r.axis], "keepdims": true});
        self.builder.tensor_op(&ms, "reduce", &[&x.name], attrs, &reduced, ValueType::F32);
        let eps_name = self.claim(&format!("{}.epsilon", node.name));
        self.builder.constant(&eps_name, &[], ConstValues::F32(vec![eps]));
        let var = self.claim(&format!("{}.var", node.name));
        self.builder.tensor_op(&var, "add", &[&ms, &eps_name], json!({}), &reduced, ValueType::F32);
        let inv = self.claim(&format!("{}.rsqrt", node.name));
        self.builder.tensor_op(&inv, "rsqrt", &[&var], json!({}), &reduced, ValueType::F32);
        self.emit(n, "mul", &[&x.name, &inv], json!({}), None)?;
        Ok(())
    }

    /// `Gather(table, ids)` whose only consumer sums over the ids' last axis: an embedding
    /// bag (one kernel, no `[slots, dim]` intermediate). Returns whether it fused.
    fn try_bag(&mut self, n: usize, table: &Tensor, ids: &Val) -> Result<bool> {
        let node = self.model.node(n);
        let [succ] = node.outputs[0].successors[..] else { return Ok(false) };
        let reduce_node = self.model.node(succ.node);
        let Some(reduce) = reduce_node.op.downcast_ref::<Reduce>() else { return Ok(false) };
        let slots_axis = ids.shape.len().saturating_sub(1);
        let one_bag = ids.shape.len() >= 2 && ids.shape[..slots_axis].iter().product::<usize>() == 1;
        if reduce.reducer != Reducer::Sum || reduce.axes[..] != [slots_axis] || !one_bag || slots_axis == ids.batch_axis
        {
            return Ok(false);
        }
        if self.model.output_outlets().map_err(|e| tract_err("outputs", e))?.contains(&OutletId::new(n, 0)) {
            return Ok(false);
        }
        let (rows, cols) = (table.shape()[0], table.shape()[1]);
        let values = elements_as::<f32>(table).map_err(|e| self.unsupported(node, e))?;
        let base = self.weight_name(node, 0, &values, rows, cols);
        let name = self.claim(&base);
        self.finite(node, 0, &values)?;
        self.builder.embedding_bag(&name, &[&ids.name], Matrix::new(rows, cols, values), crate::graph::BagMode::Sum);
        self.builder.set_source(&name, self.onnx_name(&node.name));
        let mut bag_shape = ids.shape[..slots_axis].to_vec();
        bag_shape.push(cols);
        let (shape, batch) = self.row_shape(reduce_node, &reduce_node.outputs[0].fact)?;
        let batch_axis = batch.ok_or_else(|| self.unsupported(reduce_node, "lost the batch"))?;
        let keepdims = format!("{name}.keepdims");
        let out = self.reshaped(name, &bag_shape, &shape, ValueType::F32, &keepdims);
        self.absorbed.insert(succ.node);
        let v = Val { name: out, dtype: ValueType::F32, shape, batch_axis, outer: ids.outer };
        self.values.insert(OutletId::new(succ.node, 0), Lowered::Val(v));
        Ok(true)
    }

    fn lower_topk(&mut self, n: usize, t: &Topk) -> Result<()> {
        let node = self.model.node(n);
        let x = self.value_input(n, 0)?;
        if t.axis == x.batch_axis {
            return Err(self.unsupported(node, "top-k along the batch axis"));
        }
        let k = match self.get(node, 1)? {
            Lowered::Const(k) => k.cast_to_scalar::<i64>().map_err(|e| self.unsupported(node, e.to_string()))?,
            Lowered::Val(_) => return Err(self.unsupported(node, "k must be a constant")),
        };
        for (slot, output) in ["values", "indices"].iter().enumerate() {
            let fact = &node.outputs[slot].fact;
            let (shape, batch) = self.row_shape(node, fact)?;
            let batch_axis = batch.ok_or_else(|| self.unsupported(node, "lost the batch"))?;
            let name = self.claim(&format!("{}.{output}", node.name));
            let dtype = if slot == 0 { x.dtype } else { ValueType::I64 };
            let attrs = json!({"axis": t.axis, "k": k, "largest": t.largest, "output": output});
            self.builder.tensor_op(&name, "topk", &[&x.name], attrs, &shape, dtype);
            self.builder.set_source(&name, self.onnx_name(&node.name));
            self.set(n, slot, Lowered::Val(Val { name, dtype, shape, batch_axis, outer: x.outer }));
        }
        Ok(())
    }

    fn lower_conv(&mut self, n: usize, c: &Conv) -> Result<()> {
        let node = self.model.node(n);
        let x = self.value_input(n, 0)?;
        if c.q_params.is_some() {
            return Err(self.unsupported(node, "quantized convolution"));
        }
        if !matches!(c.pool_spec.data_format, DataFormat::NCHW) || x.batch_axis != 0 {
            return Err(self.unsupported(node, format!("data format {:?} (graft takes NCHW)", c.pool_spec.data_format)));
        }
        let Lowered::Const(kernel) = self.get(node, 1)? else {
            return Err(self.unsupported(node, "the kernel must be a constant"));
        };
        let kshape = kernel.shape().to_vec();
        let spatial = kshape.len().saturating_sub(2);
        let (o, i_per_g, ks): (usize, usize, Vec<usize>) = match c.kernel_fmt {
            KernelFormat::OIHW => (kshape[0], kshape[1], kshape[2..].to_vec()),
            _ => return Err(self.unsupported(node, format!("kernel format {:?}", c.kernel_fmt))),
        };
        let values = elements_as::<f32>(&kernel).map_err(|e| self.unsupported(node, e))?;
        let cols = i_per_g * ks.iter().product::<usize>();
        let bias = match node.inputs.get(2).map(|_| self.get(node, 2)).transpose()? {
            Some(Lowered::Const(b)) => {
                let v = elements_as::<f32>(&b).map_err(|e| self.unsupported(node, e))?;
                match v.len() {
                    1 => Some(vec![v[0]; o]),
                    l if l == o => Some(v.to_vec()),
                    l => return Err(self.unsupported(node, format!("bias of {l} values for {o} channels"))),
                }
            }
            Some(Lowered::Val(_)) => return Err(self.unsupported(node, "the bias must be a constant")),
            None => None,
        };
        let strides = c.pool_spec.strides.clone().map(|s| s.to_vec()).unwrap_or_else(|| vec![1; spatial]);
        let dilations = c.pool_spec.dilations.clone().map(|s| s.to_vec()).unwrap_or_else(|| vec![1; spatial]);
        let pads: Vec<usize> = match &c.pool_spec.padding {
            PaddingSpec::Valid => vec![0; 2 * spatial],
            PaddingSpec::Explicit(b, a) | PaddingSpec::ExplicitOnnxPool(b, a, false) => {
                b.iter().zip(a.iter()).flat_map(|(&x, &y)| [x, y]).collect()
            }
            other => return Err(self.unsupported(node, format!("padding {other:?} (export with explicit pads)"))),
        };
        let (shape, batch) = self.row_shape(node, &node.outputs[0].fact)?;
        let batch_axis = batch.ok_or_else(|| self.unsupported(node, "lost the batch"))?;
        if x.shape.first() != Some(&1) || shape.first() != Some(&1) || x.outer != 1 {
            return Err(self.unsupported(node, "the batch must be the N axis of an NCHW convolution"));
        }
        let base = self.weight_name(node, 1, &values, o, cols);
        let name = self.claim(&base);
        // The row is [1, C, spatial…]: convolve [C, spatial…].
        let chw = self.claim(&format!("{name}.chw"));
        self.builder.tensor_op(&chw, "reshape", &[&x.name], json!({}), &x.shape[1..], ValueType::F32);
        let attrs = json!({"kernel": ks, "strides": strides, "pads": pads, "dilations": dilations, "group": c.group});
        self.finite(node, 1, &values)?;
        self.finite(node, 2, bias.as_deref().unwrap_or(&[]))?;
        self.builder.conv(&name, &chw, Matrix::new(o, cols, values), bias, attrs, &shape[1..]);
        self.builder.set_source(&name, self.onnx_name(&node.name));
        let out = self.claim(&format!("{name}.nchw"));
        self.builder.tensor_op(&out, "reshape", &[&name], json!({}), &shape, ValueType::F32);
        self.set(n, 0, Lowered::Val(Val { name: out, dtype: ValueType::F32, shape, batch_axis, outer: 1 }));
        Ok(())
    }

    /// The module name for a weight-bearing node: its initializer's name, else the ONNX
    /// node's module path, else the node name.
    fn weight_name(&self, node: &TypedNode, input: usize, values: &[f32], rows: usize, cols: usize) -> String {
        let const_name = node.inputs.get(input).map(|o| strip_copy_suffix(&self.model.node(o.node).name));
        // A constant that is an initializer names itself; one tract derived (a transpose
        // folded in) is found by content.
        let derived = const_name.is_none_or(|c| !self.params.names.contains(c));
        const_name
            .and_then(param_module)
            .or_else(|| derived.then(|| self.params.lookup(values, rows, cols).and_then(param_module)).flatten())
            .or_else(|| module_path(self.onnx_name(&node.name)))
            .unwrap_or_else(|| sanitize(self.onnx_name(&node.name)))
    }

    fn lower_einsum(&mut self, n: usize, e: &EinSum) -> Result<()> {
        let node = self.model.node(n);
        if e.q_params.is_some() || node.inputs.len() != 2 {
            return Err(self.unsupported(node, "only two-operand float products"));
        }
        let (a, b) = (self.get(node, 0)?, self.get(node, 1)?);
        let shape_of = |l: &Lowered| -> Vec<usize> {
            match l {
                Lowered::Val(v) => v.shape.clone(),
                Lowered::Const(t) => t.shape().to_vec(),
            }
        };
        let (sa, sb) = (shape_of(&a), shape_of(&b));
        let (out_shape, out_batch) = self.row_shape(node, &node.outputs[0].fact)?;
        let out_batch = out_batch.ok_or_else(|| self.unsupported(node, "lost the batch"))?;
        // Classify every axis: G (both operands and the output), M (a and output), N (b and
        // output), K (contracted). Size-1 axes in one place only are layout (tract's
        // ChangeAxes folds axis insertions and removals into products).
        let (mut g, mut m, mut nn, mut k) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut drop_a, mut drop_b) = (Vec::new(), Vec::new());
        for ax in e.axes.iter_all_axes() {
            if ax.inputs[0].len() > 1 || ax.inputs[1].len() > 1 || ax.outputs[0].len() > 1 {
                return Err(self.unsupported(node, format!("repeated axis `{}` (a diagonal)", ax.repr)));
            }
            let (pa, pb, po) =
                (ax.inputs[0].first().copied(), ax.inputs[1].first().copied(), ax.outputs[0].first().copied());
            match (pa, pb, po) {
                (Some(pa), Some(pb), Some(po)) => g.push((pa, pb, po)),
                (Some(pa), None, Some(po)) => m.push((pa, po)),
                (None, Some(pb), Some(po)) => nn.push((pb, po)),
                (Some(pa), Some(pb), None) => k.push((pa, pb)),
                (Some(pa), None, None) if sa[pa] == 1 => drop_a.push(pa),
                (None, Some(pb), None) if sb[pb] == 1 => drop_b.push(pb),
                (None, None, Some(po)) if out_shape[po] == 1 => {}
                _ => {
                    return Err(self.unsupported(
                        node,
                        format!("axis `{}` is summed outside the product or appears in the output only", ax.repr),
                    ));
                }
            }
        }
        for &(pa, pb, _) in &g {
            if sa[pa] != sb[pb] {
                return Err(self.unsupported(node, "broadcast batch axes in a product"));
            }
        }
        let batch_in = |l: &Lowered| match l {
            Lowered::Val(v) => Some(v.batch_axis),
            Lowered::Const(_) => None,
        };
        if batch_in(&a).is_some_and(|p| k.iter().any(|x| x.0 == p))
            || batch_in(&b).is_some_and(|p| k.iter().any(|x| x.1 == p))
        {
            return Err(self.unsupported(node, "a product contracting the batch axis"));
        }
        // Operand a as [G…, M…, K…], b as [G…, K…, N…] (dropped size-1 axes last).
        let perm_a: Vec<usize> =
            g.iter().map(|x| x.0).chain(m.iter().map(|x| x.0)).chain(k.iter().map(|x| x.0)).chain(drop_a).collect();
        let perm_b: Vec<usize> =
            g.iter().map(|x| x.1).chain(k.iter().map(|x| x.1)).chain(nn.iter().map(|x| x.0)).chain(drop_b).collect();
        let gdims: Vec<usize> = g.iter().map(|x| sa[x.0]).collect();
        let mp = m.iter().map(|x| sa[x.0]).product::<usize>();
        let kp = k.iter().map(|x| sa[x.0]).product::<usize>();
        let np = nn.iter().map(|x| sb[x.0]).product::<usize>();
        // The product's natural output axes [G…, M…, N…], as output positions.
        let natural: Vec<usize> =
            g.iter().map(|x| x.2).chain(m.iter().map(|x| x.1)).chain(nn.iter().map(|x| x.1)).collect();

        // A value times a constant with no batch axes is a linear (quantizable, hookable).
        if g.is_empty()
            && let (Lowered::Val(x), Lowered::Const(w)) = (&a, &b)
            && x.dtype == ValueType::F32
        {
            let wv = elements_as::<f32>(w).map_err(|e| self.unsupported(node, e))?;
            // b laid out [K…, N…] → weight [N, K] (torch's [out, in]).
            let wperm = permute(&wv, &sb, &perm_b);
            let mut weight = vec![0f32; np * kp];
            for kk in 0..kp {
                for j in 0..np {
                    weight[j * kp + kk] = wperm[kk * np + j];
                }
            }
            let x_in = self.arrange(n, x, &perm_a, &[mp, kp], "lhs")?;
            let bias = self.absorb_bias(n, np, nn.last().map(|x| x.1), &out_shape);
            let base = self.weight_name(node, 1, &weight, np, kp);
            let name = self.claim(&base);
            let lin_shape = vec![mp, np];
            self.finite(node, 1, &weight)?;
            self.finite(node, 1, bias.as_deref().unwrap_or(&[]))?;
            self.builder.linear_shaped(&name, &x_in, Matrix::new(np, kp, weight), bias.clone(), &lin_shape);
            self.builder.set_source(&name, self.onnx_name(&node.name));
            let shapes = (
                gdims.as_slice(),
                m.iter().map(|x| sa[x.0]).collect::<Vec<_>>(),
                nn.iter().map(|x| sb[x.0]).collect::<Vec<_>>(),
            );
            return self.finish_product(n, name, lin_shape, &natural, shapes, &out_shape, out_batch, bias.is_some());
        }

        let lhs_shape: Vec<usize> = gdims.iter().copied().chain([mp, kp]).collect();
        let rhs_shape: Vec<usize> = gdims.iter().copied().chain([kp, np]).collect();
        let lhs = self.arrange_any(n, &a, &sa, &perm_a, &lhs_shape, "lhs")?;
        let rhs = self.arrange_any(n, &b, &sb, &perm_b, &rhs_shape, "rhs")?;
        let prod_shape: Vec<usize> = gdims.iter().copied().chain([mp, np]).collect();
        let name = self.claim(&format!("{}.matmul", node.name));
        self.builder.tensor_op(&name, "matmul", &[&lhs, &rhs], json!({}), &prod_shape, ValueType::F32);
        self.builder.set_source(&name, self.onnx_name(&node.name));
        let shapes = (
            gdims.as_slice(),
            m.iter().map(|x| sa[x.0]).collect::<Vec<_>>(),
            nn.iter().map(|x| sb[x.0]).collect::<Vec<_>>(),
        );
        self.finish_product(n, name, prod_shape, &natural, shapes, &out_shape, out_batch, false)
    }

    /// Turns a product's `[G…, M, N]` result into the output: split M and N back into
    /// their axes, order the axes as the output does, then insert its size-1 axes.
    #[allow(clippy::too_many_arguments)]
    fn finish_product(
        &mut self,
        n: usize,
        mut name: String,
        shape: Vec<usize>,
        natural: &[usize],
        (gdims, mdims, ndims): (&[usize], Vec<usize>, Vec<usize>),
        out_shape: &[usize],
        out_batch: usize,
        bias_absorbed: bool,
    ) -> Result<()> {
        let node = self.model.node(n);
        let natural_shape: Vec<usize> = gdims.iter().chain(&mdims).chain(&ndims).copied().collect();
        // Natural axes sorted by output position.
        let mut perm: Vec<usize> = (0..natural.len()).collect();
        perm.sort_by_key(|&i| natural[i]);
        let transpose = perm.iter().enumerate().any(|(i, &p)| i != p) && !moves_only_unit_axes(&natural_shape, &perm);
        let mut current = shape;
        if transpose {
            name = self.reshaped(name, &current, &natural_shape, ValueType::F32, &format!("{}.split", node.name));
            let ordered: Vec<usize> = perm.iter().map(|&i| natural_shape[i]).collect();
            let t = self.claim(&format!("{}.order", node.name));
            self.builder.tensor_op(&t, "transpose", &[&name], json!({"perm": perm}), &ordered, ValueType::F32);
            name = t;
            current = ordered;
        }
        // Without a transpose the elements are already in output order.
        let name = self.reshaped(name, &current, out_shape, ValueType::F32, &format!("{}.out", node.name));
        let outer = self.input_outer(node);
        let v = Val { name, dtype: ValueType::F32, shape: out_shape.to_vec(), batch_axis: out_batch, outer };
        self.set(n, 0, Lowered::Val(v.clone()));
        if bias_absorbed && let Some(succ) = node.outputs[0].successors.first() {
            // The bias add's outlet is this value too.
            self.values.insert(OutletId::new(succ.node, 0), Lowered::Val(v));
        }
        Ok(())
    }

    /// When the product's only consumer adds a constant vector along the output's last
    /// axis, which is the last N axis (a Gemm or Linear bias), takes that vector and marks
    /// the add as absorbed.
    fn absorb_bias(&mut self, n: usize, np: usize, last_n: Option<usize>, out_shape: &[usize]) -> Option<Vec<f32>> {
        let node = self.model.node(n);
        let last = out_shape.len().checked_sub(1)?;
        let along_last = last_n == Some(last) || np == 1;
        if !along_last || node.outputs[0].successors.len() != 1 {
            return None;
        }
        let succ = node.outputs[0].successors[0];
        let add = self.model.node(succ.node);
        let bin = add.op.downcast_ref::<TypedBinOp>()?;
        if bin.0.name() != "Add" || self.model.output_outlets().ok()?.contains(&OutletId::new(n, 0)) {
            return None;
        }
        let other = add.inputs[1 - succ.slot];
        let k = self.model.outlet_fact(other).ok()?.konst.clone()?;
        let ks = k.shape();
        let vector_like = ks.len() <= out_shape.len() && ks.iter().rev().skip(1).all(|&d| d == 1);
        if !vector_like
            || ks.last().copied().unwrap_or(1) != np
            || add.outputs[0].fact.shape != node.outputs[0].fact.shape
        {
            return None;
        }
        let v = elements_as::<f32>(&k).ok()?;
        self.absorbed.insert(succ.node);
        Some(v)
    }

    /// A value permuted by `perm` then reshaped to `shape`; returns its graft name.
    fn arrange(&mut self, n: usize, x: &Val, perm: &[usize], shape: &[usize], hint: &str) -> Result<String> {
        let node = self.model.node(n);
        let mut name = x.name.clone();
        let permuted: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
        let mut current = x.shape.clone();
        if perm.iter().enumerate().any(|(i, &p)| i != p) && !moves_only_unit_axes(&x.shape, perm) {
            let t = self.claim(&format!("{}.{hint}_t", node.name));
            self.builder.tensor_op(&t, "transpose", &[&name], json!({"perm": perm}), &permuted, x.dtype);
            name = t;
            current = permuted;
        }
        Ok(self.reshaped(name, &current, shape, x.dtype, &format!("{}.{hint}_r", node.name)))
    }

    /// Like [`Self::arrange`], for a value or a constant (permuted at convert time).
    fn arrange_any(
        &mut self,
        n: usize,
        l: &Lowered,
        current: &[usize],
        perm: &[usize],
        shape: &[usize],
        hint: &str,
    ) -> Result<String> {
        match l {
            Lowered::Val(v) => self.arrange(n, v, perm, shape, hint),
            Lowered::Const(t) => {
                let node = self.model.node(n);
                let v = elements_as::<f32>(t).map_err(|e| self.unsupported(node, e))?;
                let values = permute(&v, current, perm);
                let name = self.claim(&format!("{}.{hint}", node.name));
                Ok(self.builder.constant(&name, shape, ConstValues::F32(values)))
            }
        }
    }
}
