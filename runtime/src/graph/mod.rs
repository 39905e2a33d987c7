//! The validated computation graph of a model.
//!
//! Every value is a batch of per-example tensors: `rows` examples, each a row-major
//! tensor of a fixed *row shape* (f32, or i64 for ids and computed indices), stored as a
//! `[rows, width]` matrix with `width` the row shape's element count. A model exported
//! with a symbolic batch keeps the batch somewhere in each activation's logical shape;
//! the importer folds it out, so the row shape is the logical shape with the batch factor
//! removed (`[batch, 8, 16]` → `[1, 8, 16]`; `[seq, batch·heads, d]` → `[seq, heads, d]`
//! with each example's block stored contiguously). Every op is then "the same op on each
//! example", which is what lets one arena sized for `max_batch` serve any batch, and what
//! lets adapters see any node's output as `[rows, features]`. Constants are per-example
//! invariant values ([`ValueId::Const`]) that every row reads alike.
//!
//! Nodes have one output each, named after the node, so an adapter can attach to a node by
//! the source module name the importer kept (`top_fc1`). [`parse`] turns the container's
//! graph JSON into a [`Graph`] whose nodes are in topological order, whose tensor
//! references exist with the right dtypes and shapes, and whose row shapes are inferred
//! and checked against what the file declares ([`shape`]).

mod parse;
pub mod shape;

pub use parse::parse;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::format::WeightFormat;

/// The graph format version this build reads and writes (2: row shapes, i64 values,
/// constants and the tensor op set; version-1 files are read as they were).
pub const FORMAT_VERSION: u64 = 2;

/// A value: a graph input or a node's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ValueId {
    /// Index into [`Graph::inputs`].
    Input(usize),
    /// Index into [`Graph::nodes`].
    Node(usize),
    /// Index into [`Graph::constants`]: the same tensor for every row.
    Const(usize),
}

/// The element type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ValueType {
    /// f32 (masks and booleans are f32 0.0 / 1.0).
    F32,
    /// i64 (ids, indices).
    I64,
}

impl ValueType {
    /// The name in the graph JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::F32 => "f32",
            ValueType::I64 => "i64",
        }
    }

    /// Parses a JSON name.
    pub fn parse(s: &str) -> Option<ValueType> {
        match s {
            "f32" => Some(ValueType::F32),
            "i64" => Some(ValueType::I64),
            _ => None,
        }
    }

    /// Arena slots (f32-sized) one element takes.
    pub fn slots(self) -> usize {
        match self {
            ValueType::F32 => 1,
            ValueType::I64 => 2,
        }
    }
}

/// A constant tensor: the same value for every row.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ConstDef {
    /// Name (also the container tensor's name).
    pub name: String,
    /// Element type.
    pub dtype: ValueType,
    /// Its shape (a row shape: broadcast against per-row values).
    pub shape: Vec<usize>,
    /// Index of its tensor in the envelope.
    pub tensor: usize,
}

/// What a graph input holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum InputKind {
    /// f32 `[batch, width]`.
    Dense {
        /// Features per row.
        width: usize,
    },
    /// i64 `[batch, slots]` ids, one bag of `slots` ids per row (the padded form).
    Ids {
        /// Ids per row.
        slots: usize,
    },
    /// i64 `[total]` flat ids of all bags, rows concatenated.
    BagIndices,
    /// i64 `[batch]` start of each row's bag in the paired [`InputKind::BagIndices`]
    /// (torch `EmbeddingBag` offsets without the trailing total).
    BagOffsets,
}

impl InputKind {
    /// The name used in the graph JSON.
    pub fn as_str(&self) -> &'static str {
        match self {
            InputKind::Dense { .. } => "dense",
            InputKind::Ids { .. } => "ids",
            InputKind::BagIndices => "bag_indices",
            InputKind::BagOffsets => "bag_offsets",
        }
    }
}

/// A graph input.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InputDef {
    /// Name the caller passes it by.
    pub name: String,
    /// Its element type and shape.
    pub kind: InputKind,
    /// Row shape (dense and ids inputs; its element count is the width or slots). Flat
    /// bag inputs are not per-row and have an empty shape.
    pub shape: Vec<usize>,
}

impl InputDef {
    /// The element type the caller passes.
    pub fn dtype(&self) -> ValueType {
        match self.kind {
            InputKind::Dense { .. } => ValueType::F32,
            _ => ValueType::I64,
        }
    }
}

/// A weight matrix `[rows, cols]` in some format, resolved to container tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct WeightDef {
    /// Name (also the name of its main tensor).
    pub name: String,
    /// Storage format.
    pub format: WeightFormat,
    /// Rows (output features of a linear; vocabulary of a table).
    pub rows: usize,
    /// Columns (input features of a linear; embedding dimension of a table).
    pub cols: usize,
    /// Index of the main tensor in the envelope.
    pub data: usize,
    /// Index of the per-row scale tensor (q8 only).
    pub scale: Option<usize>,
}

/// Element-wise activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Activation {
    /// max(x, 0), NaN preserved.
    Relu,
    /// x·Φ(x) with the exact erf.
    Gelu,
    /// The tanh approximation of GELU.
    GeluTanh,
    /// x·σ(x).
    Silu,
    /// 1 / (1 + e^-x).
    Sigmoid,
    /// tanh(x).
    Tanh,
}

impl Activation {
    /// Every activation.
    pub const ALL: [Activation; 6] = [
        Activation::Relu,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Silu,
        Activation::Sigmoid,
        Activation::Tanh,
    ];

    /// The op name in the graph JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_tanh",
            Activation::Silu => "silu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
        }
    }

    /// Parses an op name.
    pub fn parse(s: &str) -> Option<Activation> {
        Activation::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// How an embedding bag reduces its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BagMode {
    /// Sum of the rows (repeated ids count once per occurrence).
    Sum,
    /// Mean of the rows; an empty bag gives zeros.
    Mean,
}

impl BagMode {
    /// The name in the graph JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BagMode::Sum => "sum",
            BagMode::Mean => "mean",
        }
    }
}

/// An operator with its parameters (indices into [`Graph::weights`] for matrices and
/// into the envelope's tensors for f32 vectors).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `y = x Wᵀ + b`, W `[out, in]` in any format.
    Linear {
        /// Weight index.
        weight: usize,
        /// Optional f32 `[out]` bias tensor.
        bias: Option<usize>,
    },
    /// Sum or mean of table rows per bag; inputs are `[ids]` or `[indices, offsets]`.
    EmbeddingBag {
        /// Table weight index (`[vocab, dim]`).
        table: usize,
        /// Reduction.
        mode: BagMode,
    },
    /// Element-wise activation.
    Activation(Activation),
    /// Concatenation in input order: along a row-shape axis, or (`None`, the version-1
    /// form) of the flattened rows.
    Concat {
        /// Row-shape axis.
        axis: Option<usize>,
    },
    /// `a + b`, or `a + bias` broadcast over rows.
    Add {
        /// f32 `[width]` tensor when the op has one input.
        bias: Option<usize>,
    },
    /// `a ⊙ b`, or `a ⊙ scale` broadcast over rows.
    Mul {
        /// f32 `[width]` tensor when the op has one input.
        scale: Option<usize>,
    },
    /// Layer normalization over the feature axis.
    LayerNorm {
        /// f32 `[width]` gain.
        gamma: usize,
        /// Optional f32 `[width]` shift.
        beta: Option<usize>,
        /// Added to the variance.
        epsilon: f32,
    },
    /// DLRM interaction: the first input, then the pairwise dot products of all inputs
    /// (strict lower triangle, row-major: (1,0), (2,0), (2,1), …).
    DotInteraction {
        /// Also emit each vector's dot with itself (the diagonal).
        self_interaction: bool,
    },
    /// Factorization-machine second-order term: `½ Σ_d ((Σ_f v_fd)² − Σ_f v_fd²)` → `[batch, 1]`.
    Fm,
    /// DCN-v2 cross layer: `x0 ⊙ (W xl + b) + xl`, inputs `[x0, xl]`, W `[d, d]`.
    Cross {
        /// Weight index.
        weight: usize,
        /// Optional f32 `[d]` bias tensor.
        bias: Option<usize>,
    },
    /// One table row per id: i64 ids of row shape `s` → f32 `s + [dim]`.
    Embedding {
        /// Table weight index (`[vocab, dim]`).
        table: usize,
    },
    /// The same elements under another row shape (the node's shape); costs nothing.
    Reshape,
    /// Row-shape axis permutation: output axis `i` is input axis `perm[i]`.
    Transpose {
        /// The permutation.
        perm: Vec<usize>,
    },
    /// `start..end` by `step` (≥ 1) along one axis.
    Slice {
        /// Row-shape axis.
        axis: usize,
        /// First index.
        start: usize,
        /// One past the last index.
        end: usize,
        /// Stride.
        step: usize,
    },
    /// ONNX `Gather`: inputs `[data, indices]` (i64; negative indices count from the
    /// end); output shape `data[..axis] + indices + data[axis+1..]`.
    Gather {
        /// Row-shape axis of `data`.
        axis: usize,
    },
    /// ONNX `GatherElements`: inputs `[data, indices]` of one rank; output `i` reads
    /// `data` at `i` with the `axis` coordinate replaced by `indices[i]`.
    GatherElements {
        /// Row-shape axis.
        axis: usize,
    },
    /// Element-wise binary op with numpy broadcasting of the two row shapes.
    Binary(BinaryOp),
    /// `cond ? a : b` element-wise with broadcasting; inputs `[cond, a, b]`, `cond` an f32
    /// mask (non-zero is true).
    Where,
    /// Element-wise unary op (f32).
    Unary(UnaryOp),
    /// Element type conversion (f32 → i64 truncates toward zero, as torch `.long()`).
    Cast {
        /// Target type.
        to: ValueType,
    },
    /// Reduction over row-shape axes.
    Reduce {
        /// How.
        op: ReduceOp,
        /// Axes, ascending.
        axes: Vec<usize>,
        /// Keep reduced axes as size 1.
        keepdims: bool,
    },
    /// (Log-)softmax along one axis.
    Softmax {
        /// Row-shape axis.
        axis: usize,
        /// Log-softmax instead.
        log: bool,
    },
    /// Batched matrix product of two values (or a value and a constant): `[.., m, k] ×
    /// [.., k, n]`, leading axes broadcast. A product with a constant 2-d right operand is
    /// a [`Op::Linear`] instead (quantizable, an adapter hook point).
    MatMul,
    /// Repeats the input to the node's shape: every input axis divides the output axis
    /// (ONNX `Expand`, `Tile`, broadcasts).
    Tile,
    /// Constant padding: `pads[i] = (before, after)` per axis.
    Pad {
        /// Elements added before and after each axis.
        pads: Vec<(usize, usize)>,
        /// Fill value.
        value: f32,
    },
    /// The `k` largest (or smallest) along an axis, sorted; values or their indices.
    TopK {
        /// Row-shape axis.
        axis: usize,
        /// How many.
        k: usize,
        /// Largest first (else smallest first).
        largest: bool,
        /// Emit the indices (i64) instead of the values.
        indices: bool,
    },
    /// N-d convolution of a `[channels, spatial…]` row (an im2col GEMM): weight
    /// `[out, in/group · Π kernel]`.
    Conv {
        /// Weight index.
        weight: usize,
        /// Optional f32 `[out]` bias tensor.
        bias: Option<usize>,
        /// Kernel extent per spatial axis.
        kernel: Vec<usize>,
        /// Stride per spatial axis.
        strides: Vec<usize>,
        /// `(before, after)` zero padding per spatial axis.
        pads: Vec<(usize, usize)>,
        /// Dilation per spatial axis.
        dilations: Vec<usize>,
        /// Channel groups.
        group: usize,
    },
}

/// Element-wise binary ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a − b
    Sub,
    /// a · b
    Mul,
    /// a / b (i64: truncating; division by zero is an error)
    Div,
    /// a^b (f32)
    Pow,
    /// min(a, b)
    Min,
    /// max(a, b)
    Max,
    /// a == b → 1.0 / 0.0
    Equal,
    /// a < b
    Less,
    /// a ≤ b
    LessEqual,
    /// a > b
    Greater,
    /// a ≥ b
    GreaterEqual,
    /// a ∧ b on masks
    And,
    /// a ∨ b on masks
    Or,
    /// a ⊕ b on masks
    Xor,
    /// PReLU: a ≥ 0 ? a : a · b
    Prelu,
}

impl BinaryOp {
    /// Every binary op.
    pub const ALL: [BinaryOp; 16] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Pow,
        BinaryOp::Min,
        BinaryOp::Max,
        BinaryOp::Equal,
        BinaryOp::Less,
        BinaryOp::LessEqual,
        BinaryOp::Greater,
        BinaryOp::GreaterEqual,
        BinaryOp::And,
        BinaryOp::Or,
        BinaryOp::Xor,
        BinaryOp::Prelu,
    ];

    /// The name in the graph JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Min => "min",
            BinaryOp::Max => "max",
            BinaryOp::Equal => "equal",
            BinaryOp::Less => "less",
            BinaryOp::LessEqual => "less_equal",
            BinaryOp::Greater => "greater",
            BinaryOp::GreaterEqual => "greater_equal",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
            BinaryOp::Xor => "xor",
            BinaryOp::Prelu => "prelu",
        }
    }

    /// Parses a JSON name.
    pub fn parse(s: &str) -> Option<BinaryOp> {
        BinaryOp::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether the result is an f32 mask whatever the operand type.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Equal | BinaryOp::Less | BinaryOp::LessEqual | BinaryOp::Greater | BinaryOp::GreaterEqual
        )
    }

    /// Whether it takes f32 masks only.
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor)
    }

    /// Whether it is defined on i64 operands.
    pub fn accepts_i64(self) -> bool {
        !matches!(self, BinaryOp::Pow | BinaryOp::Prelu) && !self.is_logical()
    }
}

/// Element-wise unary ops (f32), with their parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum UnaryOp {
    /// −x
    Neg,
    /// |x|
    Abs,
    /// eˣ
    Exp,
    /// ln x
    Log,
    /// √x
    Sqrt,
    /// 1/√x
    Rsqrt,
    /// 1/x
    Reciprocal,
    /// erf(x)
    Erf,
    /// ⌊x⌋
    Floor,
    /// ⌈x⌉
    Ceil,
    /// Round half to even.
    Round,
    /// sign(x)
    Sign,
    /// 1 − x on masks (logical not)
    Not,
    /// ln(1 + eˣ)
    Softplus,
    /// sin x
    Sin,
    /// cos x
    Cos,
    /// x ≥ 0 ? x : α·x
    LeakyRelu(f32),
    /// min(max(x, lo), hi)
    Clip(f32, f32),
    /// max(0, min(1, α·x + β))
    HardSigmoid(f32, f32),
    /// x ≥ 0 ? x : α·(eˣ − 1)
    Elu(f32),
    /// x^p for a constant exponent
    PowConst(f32),
}

impl UnaryOp {
    /// The name in the graph JSON (parameters are attributes `alpha`, `beta`, `min`,
    /// `max`, `exponent`).
    pub fn as_str(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Reciprocal => "reciprocal",
            UnaryOp::Erf => "erf",
            UnaryOp::Floor => "floor",
            UnaryOp::Ceil => "ceil",
            UnaryOp::Round => "round",
            UnaryOp::Sign => "sign",
            UnaryOp::Not => "not",
            UnaryOp::Softplus => "softplus",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::LeakyRelu(_) => "leaky_relu",
            UnaryOp::Clip(..) => "clip",
            UnaryOp::HardSigmoid(..) => "hard_sigmoid",
            UnaryOp::Elu(_) => "elu",
            UnaryOp::PowConst(_) => "pow_const",
        }
    }
}

/// Reductions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ReduceOp {
    /// Σ
    Sum,
    /// mean
    Mean,
    /// max
    Max,
    /// min
    Min,
    /// Π
    Prod,
    /// √Σx²
    L2,
    /// Σ|x|
    L1,
    /// Σx²
    SumSquare,
    /// mean of x²
    MeanSquare,
    /// ln Σ eˣ
    LogSumExp,
}

impl ReduceOp {
    /// Every reduction.
    pub const ALL: [ReduceOp; 10] = [
        ReduceOp::Sum,
        ReduceOp::Mean,
        ReduceOp::Max,
        ReduceOp::Min,
        ReduceOp::Prod,
        ReduceOp::L2,
        ReduceOp::L1,
        ReduceOp::SumSquare,
        ReduceOp::MeanSquare,
        ReduceOp::LogSumExp,
    ];

    /// The name in the graph JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::Prod => "prod",
            ReduceOp::L2 => "l2",
            ReduceOp::L1 => "l1",
            ReduceOp::SumSquare => "sum_square",
            ReduceOp::MeanSquare => "mean_square",
            ReduceOp::LogSumExp => "log_sum_exp",
        }
    }

    /// Parses a JSON name.
    pub fn parse(s: &str) -> Option<ReduceOp> {
        ReduceOp::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

impl Op {
    /// The op name in the graph JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Linear { .. } => "linear",
            Op::EmbeddingBag { .. } => "embedding_bag",
            Op::Activation(a) => a.as_str(),
            Op::Concat { .. } => "concat",
            Op::Add { .. } => "add",
            Op::Mul { .. } => "mul",
            Op::LayerNorm { .. } => "layer_norm",
            Op::DotInteraction { .. } => "dot_interaction",
            Op::Fm => "fm",
            Op::Cross { .. } => "cross",
            Op::Embedding { .. } => "embedding",
            Op::Reshape => "reshape",
            Op::Transpose { .. } => "transpose",
            Op::Slice { .. } => "slice",
            Op::Gather { .. } => "gather",
            Op::GatherElements { .. } => "gather_elements",
            Op::Binary(b) => b.as_str(),
            Op::Where => "where",
            Op::Unary(u) => u.as_str(),
            Op::Cast { .. } => "cast",
            Op::Reduce { .. } => "reduce",
            Op::Softmax { log: false, .. } => "softmax",
            Op::Softmax { log: true, .. } => "log_softmax",
            Op::MatMul => "matmul",
            Op::Tile => "tile",
            Op::Pad { .. } => "pad",
            Op::TopK { .. } => "topk",
            Op::Conv { .. } => "conv",
        }
    }

    /// The weight matrix the op reads, if any.
    pub fn weight(&self) -> Option<usize> {
        match self {
            Op::Linear { weight, .. } | Op::Cross { weight, .. } | Op::Conv { weight, .. } => Some(*weight),
            Op::EmbeddingBag { table, .. } | Op::Embedding { table } => Some(*table),
            _ => None,
        }
    }
}

/// A node: one op, its inputs, and the row shape of its output.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Stable name (adapters attach here).
    pub name: String,
    /// The operator.
    pub op: Op,
    /// Inputs in op order.
    pub inputs: Vec<ValueId>,
    /// Output width (elements per row: the product of `shape`).
    pub width: usize,
    /// Output row shape.
    pub shape: Vec<usize>,
    /// Output element type.
    pub dtype: ValueType,
    /// Where the node came from (e.g. the ONNX node name), for diagnostics.
    pub source: Option<String>,
}

/// A named graph output.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OutputDef {
    /// Name the caller reads it by.
    pub name: String,
    /// The value it exposes.
    pub value: ValueId,
}

/// A validated graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// Free-form model name.
    pub name: Option<String>,
    /// Free-form producer string (tool and source file).
    pub producer: Option<String>,
    /// Inputs.
    pub inputs: Vec<InputDef>,
    /// Weight matrices.
    pub weights: Vec<WeightDef>,
    /// Constant tensors.
    pub constants: Vec<ConstDef>,
    /// Nodes, topologically sorted.
    pub nodes: Vec<Node>,
    /// Outputs.
    pub outputs: Vec<OutputDef>,
}

impl Graph {
    /// The ids an id input accepts: the rows of the smallest embedding table it feeds
    /// (ids must be valid for every consumer). `None` for dense inputs, offsets, and id
    /// inputs no table reads.
    pub fn id_bound(&self, input: usize) -> Option<usize> {
        self.nodes
            .iter()
            .filter_map(|n| match n.op {
                Op::EmbeddingBag { table, .. } | Op::Embedding { table }
                    if n.inputs.contains(&ValueId::Input(input)) =>
                {
                    Some(self.weights[table].rows)
                }
                _ => None,
            })
            .min()
    }

    /// The name of a value.
    pub fn value_name(&self, v: ValueId) -> &str {
        match v {
            ValueId::Input(i) => &self.inputs[i].name,
            ValueId::Node(i) => &self.nodes[i].name,
            ValueId::Const(i) => &self.constants[i].name,
        }
    }

    /// The width of a value: elements per row (ids inputs report their slots, flat
    /// inputs 1, constants their element count).
    pub fn value_width(&self, v: ValueId) -> usize {
        match v {
            ValueId::Input(i) => match self.inputs[i].kind {
                InputKind::Dense { width } => width,
                InputKind::Ids { slots } => slots,
                InputKind::BagIndices | InputKind::BagOffsets => 1,
            },
            ValueId::Node(i) => self.nodes[i].width,
            ValueId::Const(i) => self.constants[i].shape.iter().product(),
        }
    }

    /// The row shape of a value (flat bag inputs: empty).
    pub fn value_shape(&self, v: ValueId) -> &[usize] {
        match v {
            ValueId::Input(i) => &self.inputs[i].shape,
            ValueId::Node(i) => &self.nodes[i].shape,
            ValueId::Const(i) => &self.constants[i].shape,
        }
    }

    /// The element type of a value.
    pub fn value_type(&self, v: ValueId) -> ValueType {
        match v {
            ValueId::Input(i) => self.inputs[i].dtype(),
            ValueId::Node(i) => self.nodes[i].dtype,
            ValueId::Const(i) => self.constants[i].dtype,
        }
    }

    /// Finds a node by name.
    pub fn node(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Finds an input by name.
    pub fn input(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|i| i.name == name)
    }

    /// Finds a weight by name.
    pub fn weight(&self, name: &str) -> Option<usize> {
        self.weights.iter().position(|w| w.name == name)
    }

    /// Floats one batch row of this graph touches at most: every input and node value
    /// side by side (`None` on overflow). Bounds a session's activation memory before it
    /// is planned, whatever widths a file declares.
    pub fn row_floats(&self) -> Option<usize> {
        let inputs = (0..self.inputs.len()).map(|k| self.value_width(ValueId::Input(k)));
        inputs
            .chain(self.nodes.iter().map(|n| n.width.saturating_mul(n.dtype.slots())))
            .try_fold(0usize, |acc, w| acc.checked_add(w))
    }

    /// The number of times each node's output is consumed (by nodes and outputs).
    pub fn node_use_counts(&self) -> Vec<usize> {
        let mut uses = alloc::vec![0usize; self.nodes.len()];
        let all = self.nodes.iter().flat_map(|n| n.inputs.iter()).chain(self.outputs.iter().map(|o| &o.value));
        for v in all {
            if let ValueId::Node(i) = v {
                uses[*i] += 1;
            }
        }
        uses
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueId::Input(i) => write!(f, "input#{i}"),
            ValueId::Node(i) => write!(f, "node#{i}"),
            ValueId::Const(i) => write!(f, "const#{i}"),
        }
    }
}
