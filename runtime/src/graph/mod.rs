//! The validated computation graph of a model.
//!
//! Every value is a row-major `[batch, width]` f32 matrix (recommender graphs are
//! per-example vectors end to end), except the sparse inputs, which are i64 ids. Nodes
//! have one output each, named after the node, so an adapter can attach to a node by the
//! source module name the importer kept (`top_fc1`). [`parse`] turns the container's graph
//! JSON into a [`Graph`] whose nodes are in topological order, whose tensor references
//! exist with the right dtypes and shapes, and whose widths are all known.

mod parse;

pub use parse::parse;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::format::WeightFormat;

/// The graph format version this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

/// A value: a graph input or a node's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ValueId {
    /// Index into [`Graph::inputs`].
    Input(usize),
    /// Index into [`Graph::nodes`].
    Node(usize),
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
    /// Concatenation along the feature axis, in input order.
    Concat,
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
}

impl Op {
    /// The op name in the graph JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Linear { .. } => "linear",
            Op::EmbeddingBag { .. } => "embedding_bag",
            Op::Activation(a) => a.as_str(),
            Op::Concat => "concat",
            Op::Add { .. } => "add",
            Op::Mul { .. } => "mul",
            Op::LayerNorm { .. } => "layer_norm",
            Op::DotInteraction { .. } => "dot_interaction",
            Op::Fm => "fm",
            Op::Cross { .. } => "cross",
        }
    }
}

/// A node: one op, its inputs, and the width of its output.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Stable name (adapters attach here).
    pub name: String,
    /// The operator.
    pub op: Op,
    /// Inputs in op order.
    pub inputs: Vec<ValueId>,
    /// Output width (features per row).
    pub width: usize,
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
                Op::EmbeddingBag { table, .. } if n.inputs.contains(&ValueId::Input(input)) => {
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
        }
    }

    /// The width of a value (ids inputs report their slots, flat inputs 1).
    pub fn value_width(&self, v: ValueId) -> usize {
        match v {
            ValueId::Input(i) => match self.inputs[i].kind {
                InputKind::Dense { width } => width,
                InputKind::Ids { slots } => slots,
                InputKind::BagIndices | InputKind::BagOffsets => 1,
            },
            ValueId::Node(i) => self.nodes[i].width,
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
        inputs.chain(self.nodes.iter().map(|n| n.width)).try_fold(0usize, |acc, w| acc.checked_add(w))
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
        }
    }
}
