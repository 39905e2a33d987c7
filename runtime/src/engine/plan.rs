//! The planner: graph → an ordered list of steps over one pre-sized arena.
//!
//! Planning happens once per session so that `run` only walks a list. It
//! 1. fuses a linear with the activation that is its only consumer (the kernel applies
//!    it while the output tile is in registers; the linear stays a separate hook point),
//! 2. places each value that is consumed only by a `concat` directly inside the concat's
//!    buffer at its column offset, so the concat costs nothing (flattened concats, and
//!    axis concats where every input is one contiguous column block of the row), and
//!    makes a `reshape` of a node share its input's place (no step at all),
//! 3. gives every remaining value a buffer of `max_batch × width` slots (an i64 element
//!    takes two f32-sized slots; places and widths below are in slots) and packs the
//!    buffers into one arena by live range (greedy first fit, largest first),
//! 4. records the scratch each worker needs for dequantizing weight panels.
//!
//! Steps read and write through [`Place`]s, which the executor turns into strided views.
//! [`Plan::check_disjoint`] proves, for every step, that what it writes never overlaps what
//! it reads, which is what makes the executor's raw views sound.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::tensor::{self, TensorOp};
use crate::error::Result;
use crate::graph::{Activation, BagMode, Graph, Op, ValueId, ValueType};
use crate::kernels::LinearKernel;
use crate::model::Model;

/// Arena alignment in floats (64 bytes).
const ALIGN_FLOATS: usize = 16;

/// A region of the arena: `max_batch` rows of `width` floats.
#[derive(Clone, Debug)]
pub(crate) struct Buffer {
    /// Offset in floats from the aligned arena start.
    pub offset: usize,
    /// Row stride in floats.
    pub width: usize,
}

/// Where a value lives: columns `col..col + width` of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    pub buffer: usize,
    pub col: usize,
    pub width: usize,
}

/// Where a step reads a dense value from.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Src {
    /// A caller-supplied dense input.
    Input(usize),
    /// A value in the arena.
    Arena(Place),
    /// A graph constant: the same row for every example.
    Const(usize),
}

/// Where an embedding bag gets its ids.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ids {
    /// `[batch, slots]` ids input.
    Padded { input: usize },
    /// Flat indices plus per-row offsets.
    Bags { indices: usize, offsets: usize },
    /// An i64 value computed by the graph, one bag per row (checked in the step).
    Value { src: Src, value: ValueId },
}

/// Binary element-wise op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinaryOp {
    Add,
    Mul,
}

/// The second operand of a binary op.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Operand {
    Value(Src),
    /// An f32 vector tensor broadcast over rows.
    Tensor(usize),
}

/// One unit of work.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    Linear {
        /// The linear node (hook point for adapters).
        node: usize,
        x: Src,
        weight: usize,
        bias: Option<usize>,
        /// A fused activation and the node it came from.
        act: Option<(Activation, usize)>,
        /// Vectors per row (the linear applies over the last axis of the row shape).
        tokens: usize,
        y: Place,
    },
    Cross {
        node: usize,
        x0: Src,
        xl: Src,
        weight: usize,
        bias: Option<usize>,
        tokens: usize,
        y: Place,
    },
    Bag {
        node: usize,
        table: usize,
        ids: Ids,
        mode: BagMode,
        y: Place,
    },
    Activation {
        node: usize,
        act: Activation,
        x: Src,
        y: Place,
    },
    Binary {
        node: usize,
        op: BinaryOp,
        a: Src,
        b: Operand,
        y: Place,
    },
    Copy {
        node: usize,
        src: Src,
        y: Place,
    },
    LayerNorm {
        node: usize,
        x: Src,
        gamma: usize,
        beta: Option<usize>,
        epsilon: f32,
        y: Place,
    },
    DotInteraction {
        node: usize,
        inputs: Vec<Src>,
        self_interaction: bool,
        y: Place,
    },
    Fm {
        node: usize,
        inputs: Vec<Src>,
        y: Place,
    },
    /// A per-row tensor op (see [`tensor`]).
    Tensor {
        node: usize,
        op: Box<TensorOp>,
        ins: Vec<Src>,
        y: Place,
    },
}

impl Step {
    /// A one-line description for `graft inspect --plan`.
    pub fn describe(&self, g: &Graph) -> String {
        let name = |n: usize| g.nodes.get(n).map_or("<output copy>", |node| node.name.as_str());
        let at = |p: Place| alloc::format!("buf{}[{}..{}]", p.buffer, p.col, p.col + p.width);
        let src = |s: Src| match s {
            Src::Input(k) => alloc::format!("input `{}`", g.inputs[k].name),
            Src::Arena(p) => at(p),
            Src::Const(k) => alloc::format!("const `{}`", g.constants[k].name),
        };
        match self {
            Step::Linear { node, x, weight, act, y, .. } => {
                let fused = act.map_or(String::new(), |(a, n)| alloc::format!("+{} (`{}`)", a.as_str(), name(n)));
                alloc::format!(
                    "linear{fused} `{}`: {} x {} -> {}",
                    name(*node),
                    src(*x),
                    g.weights[*weight].name,
                    at(*y)
                )
            }
            Step::Cross { node, x0, xl, y, .. } => {
                alloc::format!("cross `{}`: {}, {} -> {}", name(*node), src(*x0), src(*xl), at(*y))
            }
            Step::Bag { node, table, mode, y, .. } => {
                alloc::format!(
                    "embedding_bag/{} `{}`: {} -> {}",
                    mode.as_str(),
                    name(*node),
                    g.weights[*table].name,
                    at(*y)
                )
            }
            Step::Activation { node, act, x, y } => {
                alloc::format!("{} `{}`: {} -> {}", act.as_str(), name(*node), src(*x), at(*y))
            }
            Step::Binary { node, op, a, y, .. } => {
                alloc::format!("{op:?} `{}`: {} -> {}", name(*node), src(*a), at(*y)).to_lowercase()
            }
            Step::Copy { node, src: s, y } => alloc::format!("copy for `{}`: {} -> {}", name(*node), src(*s), at(*y)),
            Step::LayerNorm { node, x, y, .. } => {
                alloc::format!("layer_norm `{}`: {} -> {}", name(*node), src(*x), at(*y))
            }
            Step::DotInteraction { node, inputs, y, .. } => {
                alloc::format!("dot_interaction `{}`: {} inputs -> {}", name(*node), inputs.len(), at(*y))
            }
            Step::Fm { node, inputs, y } => {
                alloc::format!("fm `{}`: {} inputs -> {}", name(*node), inputs.len(), at(*y))
            }
            Step::Tensor { node, op, ins, y } => {
                let ins: Vec<String> = ins.iter().map(|&s| src(s)).collect();
                alloc::format!("{} `{}`: {} -> {}", op.name(), name(*node), ins.join(", "), at(*y))
            }
        }
    }

    fn output(&self) -> Place {
        match self {
            Step::Linear { y, .. }
            | Step::Cross { y, .. }
            | Step::Bag { y, .. }
            | Step::Activation { y, .. }
            | Step::Binary { y, .. }
            | Step::Copy { y, .. }
            | Step::LayerNorm { y, .. }
            | Step::DotInteraction { y, .. }
            | Step::Fm { y, .. }
            | Step::Tensor { y, .. } => *y,
        }
    }

    fn reads(&self) -> Vec<Src> {
        match self {
            Step::Linear { x, .. } | Step::Activation { x, .. } | Step::LayerNorm { x, .. } => vec![*x],
            Step::Copy { src, .. } => vec![*src],
            Step::Cross { x0, xl, .. } => vec![*x0, *xl],
            Step::Bag { ids: Ids::Value { src, .. }, .. } => vec![*src],
            Step::Bag { .. } => Vec::new(),
            Step::Tensor { ins, .. } => ins.clone(),
            Step::Binary { a, b, .. } => match b {
                Operand::Value(b) => vec![*a, *b],
                Operand::Tensor(_) => vec![*a],
            },
            Step::DotInteraction { inputs, .. } | Step::Fm { inputs, .. } => inputs.clone(),
        }
    }
}

/// A graph output and where to read it.
#[derive(Clone, Debug)]
pub(crate) struct OutputSlot {
    pub name: String,
    pub place: Place,
}

/// The executable plan of a session.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub buffers: Vec<Buffer>,
    pub outputs: Vec<OutputSlot>,
    /// Floats of arena (for `max_batch` rows, buffers 64-byte aligned).
    pub arena_len: usize,
    /// Floats of scratch per worker.
    pub scratch_len: usize,
    /// Where each node's value lives (a fused linear shares its activation's place).
    /// Read by adapter hooks only, which need `std`.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub node_place: Vec<Place>,
    /// Per node: how many steps have run once its value is complete. Adapter hooks at
    /// non-linear nodes fire at that boundary; hooks at a linear fire inside its step.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub ready: Vec<usize>,
    /// The one hook schedule every executor follows (CPU and CUDA).
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub hooks: HookSchedule,
}

/// When adapter hooks at non-linear nodes fire: after step `s` completes, the nodes of
/// `after(s + 1)`, in node order (before the first step: `after(0)`). Hooks at a linear fire
/// inside its own step, between the product and the fused activation, so linears are not
/// listed. Built once with the plan, so the CPU walk and the CUDA executor cannot disagree.
#[derive(Clone, Debug, Default)]
pub(crate) struct HookSchedule {
    /// Non-linear nodes sorted by the step count that completes them.
    nodes: Vec<usize>,
    /// `nodes[start[d]..start[d + 1]]` are complete after exactly `d` steps.
    start: Vec<usize>,
}

impl HookSchedule {
    fn new(g: &Graph, ready: &[usize], steps: usize) -> HookSchedule {
        let mut nodes: Vec<usize> =
            (0..g.nodes.len()).filter(|&n| !matches!(g.nodes[n].op, Op::Linear { .. })).collect();
        nodes.sort_by_key(|&n| (ready[n], n));
        let mut start = vec![0usize; steps + 2];
        for &n in &nodes {
            start[ready[n].min(steps) + 1] += 1;
        }
        for d in 1..start.len() {
            start[d] += start[d - 1];
        }
        HookSchedule { nodes, start }
    }

    /// The nodes whose hooks fire once `done` steps have run.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub fn after(&self, done: usize) -> &[usize] {
        match (self.start.get(done), self.start.get(done + 1)) {
            (Some(&a), Some(&b)) => &self.nodes[a..b],
            _ => &[],
        }
    }
}

/// How each node's output is stored before buffers are assigned.
#[derive(Clone, Copy, Debug)]
enum Home {
    /// Its own buffer.
    Own,
    /// Inside concat node `parent` at slot column `col`.
    InConcat { parent: usize, col: usize },
    /// Written by the linear fused into activation node `act`, which owns the place.
    FusedInto { act: usize },
    /// A reshape sharing node `of`'s place.
    Alias { of: usize },
}

/// Slots per row of a value.
fn slot_width(g: &Graph, v: ValueId) -> usize {
    g.value_width(v) * g.value_type(v).slots()
}

/// Whether a concat is a concatenation of whole rows (each input one contiguous column
/// block of the output row).
fn concat_is_flat(g: &Graph, node: usize) -> bool {
    match g.nodes[node].op {
        Op::Concat { axis: None } => true,
        Op::Concat { axis: Some(a) } => g.nodes[node]
            .inputs
            .iter()
            .all(|&v| g.value_shape(v).get(..a).is_some_and(|s| s.iter().product::<usize>() == 1)),
        _ => false,
    }
}

impl Plan {
    /// Plans `model` for batches of up to `max_batch` rows.
    pub fn new(model: &Model, max_batch: usize, linear: &dyn LinearKernel) -> Result<Plan> {
        let g = model.graph();
        let (home, absorbed) = decide_homes(g);
        let (mut buffers, place) = resolve_places(g, &home)?;
        let (mut steps, ready) = emit_steps(g, &home, &absorbed, &place, &mut buffers)?;

        // Graph outputs are f32: node values are read in place; inputs and constants are
        // copied to a buffer; i64 values are converted into one.
        let mut outputs = Vec::with_capacity(g.outputs.len());
        for o in &g.outputs {
            let i64_value = g.value_type(o.value) == ValueType::I64;
            let place = match o.value {
                ValueId::Node(k) if !i64_value => place[k],
                ValueId::Input(k) if !i64_value => {
                    let y = new_buffer(&mut buffers, g.value_width(o.value));
                    steps.push(Step::Copy { node: usize::MAX, src: Src::Input(k), y });
                    y
                }
                v => {
                    let y = new_buffer(&mut buffers, g.value_width(v));
                    let src = match v {
                        ValueId::Node(k) => Src::Arena(place[k]),
                        ValueId::Input(k) => Src::Input(k),
                        ValueId::Const(k) => Src::Const(k),
                    };
                    let op = if i64_value {
                        TensorOp::Cast { from: ValueType::I64, to: ValueType::F32 }
                    } else {
                        tensor::flat_copy(g.value_width(v), ValueType::F32)
                    };
                    steps.push(Step::Tensor { node: usize::MAX, op: Box::new(op), ins: vec![src], y });
                    y
                }
            };
            outputs.push(OutputSlot { name: o.name.clone(), place });
        }

        // Buffers beyond the nodes' (materialized constants, output copies) were not in
        // the session's up-front size check.
        if buffers.iter().any(|b| b.width.checked_mul(max_batch).is_none_or(|n| n > isize::MAX as usize / 4)) {
            return Err(crate::error::Error::InvalidOption {
                detail: alloc::format!("the model's activations for max_batch {max_batch} exceed the address space"),
            });
        }
        let (first, last) = live_ranges(&steps, &outputs, buffers.len());
        let together = LiveTogether::new(&first, &last);
        let arena_len = pack_arena(&mut buffers, &together, max_batch)?;
        let mut scratch_len = 0;
        for step in &steps {
            let need = match step {
                Step::Linear { weight, tokens, .. } | Step::Cross { weight, tokens, .. } => {
                    linear.scratch_len(&model.weight(*weight)?, max_batch.saturating_mul(*tokens))
                }
                Step::Tensor { op, .. } if let TensorOp::Conv { weight, positions, out_g, .. } = &**op => {
                    let w = model.weight(*weight)?;
                    op.scratch_len() + linear.scratch_len(&w.rows_range(0..*out_g), *positions)
                }
                Step::Tensor { op, .. } => op.scratch_len(),
                _ => 0,
            };
            scratch_len = scratch_len.max(need);
        }
        let hooks = HookSchedule::new(g, &ready, steps.len());
        let plan = Plan { steps, buffers, outputs, arena_len, scratch_len, node_place: place, ready, hooks };
        plan.check_disjoint(max_batch, &together)?;
        Ok(plan)
    }

    /// Checks that no step writes memory it reads, and that buffers live at the same
    /// time never overlap in the arena.
    fn check_disjoint(&self, max_batch: usize, together: &LiveTogether) -> Result<()> {
        let extent = |b: usize| {
            let buf = &self.buffers[b];
            buf.offset..buf.offset + buf.width * max_batch
        };
        for a in 0..self.buffers.len() {
            for &b in together.of(a) {
                let (ea, eb) = (extent(a), extent(b));
                if ea.start < eb.end && eb.start < ea.end {
                    return Err(internal("arena buffers overlap"));
                }
            }
        }
        for step in &self.steps {
            let out = step.output();
            for r in step.reads() {
                if let Src::Arena(p) = r
                    && p.buffer == out.buffer
                    && p.col < out.col + out.width
                    && out.col < p.col + p.width
                {
                    return Err(internal("a step reads what it writes"));
                }
            }
        }
        Ok(())
    }
}

fn new_buffer(buffers: &mut Vec<Buffer>, width: usize) -> Place {
    buffers.push(Buffer { offset: 0, width });
    Place { buffer: buffers.len() - 1, col: 0, width }
}

/// Decides where each node's value lives (fusion, concat elision, reshape aliasing).
/// Also returns, per node, whether it is an activation computed by the linear fused into it.
fn decide_homes(g: &Graph) -> (Vec<Home>, Vec<bool>) {
    let uses = g.node_use_counts();
    let is_output = |i: usize| g.outputs.iter().any(|o| o.value == ValueId::Node(i));
    let mut home = vec![Home::Own; g.nodes.len()];
    let mut absorbed = vec![false; g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        if let Op::Activation(_) = node.op
            && let [ValueId::Node(l)] = node.inputs[..]
            && matches!(g.nodes[l].op, Op::Linear { .. })
            && uses[l] == 1
            && !is_output(l)
        {
            home[l] = Home::FusedInto { act: i };
            absorbed[i] = true;
        }
        if let Op::Reshape = node.op
            && let [ValueId::Node(p)] = node.inputs[..]
        {
            home[i] = Home::Alias { of: p };
        }
    }
    for (c, node) in g.nodes.iter().enumerate() {
        if !concat_is_flat(g, c) {
            continue;
        }
        let mut col = 0;
        for v in &node.inputs {
            if let ValueId::Node(p) = *v {
                let once = node.inputs.iter().filter(|&&u| u == *v).count() == 1;
                if uses[p] == 1 && once && !is_output(p) && matches!(home[p], Home::Own) {
                    home[p] = Home::InConcat { parent: c, col };
                }
            }
            col += slot_width(g, *v);
        }
    }
    (home, absorbed)
}

/// Gives every `Own` value a buffer and resolves the others to a place inside their
/// concat's or activation's, or their reshape input's (following chains iteratively).
fn resolve_places(g: &Graph, home: &[Home]) -> Result<(Vec<Buffer>, Vec<Place>)> {
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut place: Vec<Option<Place>> = vec![None; g.nodes.len()];
    for i in (0..g.nodes.len()).rev() {
        if let Home::Own = home[i] {
            place[i] = Some(new_buffer(&mut buffers, g.nodes[i].width * g.nodes[i].dtype.slots()));
        }
    }
    let mut chain = Vec::new();
    for i in 0..g.nodes.len() {
        let mut at = i;
        // Walk to a placed node, then place the chain back to front.
        while place[at].is_none() {
            if chain.len() > g.nodes.len() {
                return Err(internal("cyclic placement"));
            }
            chain.push(at);
            at = match home[at] {
                Home::InConcat { parent, .. } => parent,
                Home::FusedInto { act } => act,
                Home::Alias { of } => of,
                Home::Own => return Err(internal("unplaced own node")),
            };
        }
        while let Some(n) = chain.pop() {
            let width = g.nodes[n].width * g.nodes[n].dtype.slots();
            place[n] = Some(match home[n] {
                Home::InConcat { parent, col } => {
                    let p = place[parent].ok_or_else(|| internal("concat placed before its parts"))?;
                    Place { buffer: p.buffer, col: p.col + col, width }
                }
                Home::FusedInto { act } => place[act].ok_or_else(|| internal("activation placed late"))?,
                Home::Alias { of } => place[of].ok_or_else(|| internal("reshape placed early"))?,
                Home::Own => return Err(internal("own node in a chain")),
            });
        }
    }
    let place = place.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| internal("unplaced node"))?;
    Ok((buffers, place))
}

/// One step per node in topological order; fused activations, elided concats and
/// aliased reshapes emit none, concats copy only their non-elided parts. Also returns,
/// per node, the number of steps emitted once it is complete.
fn emit_steps(
    g: &Graph,
    home: &[Home],
    absorbed: &[bool],
    place: &[Place],
    buffers: &mut Vec<Buffer>,
) -> Result<(Vec<Step>, Vec<usize>)> {
    let src = |v: ValueId| match v {
        ValueId::Input(k) => Src::Input(k),
        ValueId::Node(k) => Src::Arena(place[k]),
        ValueId::Const(k) => Src::Const(k),
    };
    let mut steps = Vec::with_capacity(g.nodes.len());
    let mut ready = Vec::with_capacity(g.nodes.len());
    // The fixed-function steps read arena or input views: constants they read are first
    // copied into a buffer of their own.
    let mut dense = |v: ValueId, steps: &mut Vec<Step>, node: usize| -> Src {
        match v {
            ValueId::Const(k) => {
                let width = g.value_width(v);
                let ty = g.value_type(v);
                let y = new_buffer(buffers, width * ty.slots());
                steps.push(Step::Tensor {
                    node,
                    op: Box::new(tensor::flat_copy(width, ty)),
                    ins: vec![Src::Const(k)],
                    y,
                });
                Src::Arena(y)
            }
            v => src(v),
        }
    };
    for (i, node) in g.nodes.iter().enumerate() {
        if i > 0 {
            ready.push(steps.len());
        }
        tensor::check_rank(g, i)?;
        let y = place[i];
        let tokens = |cols: usize| g.value_width(node.inputs[0]).checked_div(cols).unwrap_or(1).max(1);
        match &node.op {
            Op::Linear { weight, bias } => {
                let act = match home[i] {
                    Home::FusedInto { act } => match g.nodes[act].op {
                        Op::Activation(a) => Some((a, act)),
                        _ => None,
                    },
                    _ => None,
                };
                let x = dense(node.inputs[0], &mut steps, i);
                let tokens = tokens(g.weights[*weight].cols);
                steps.push(Step::Linear { node: i, x, weight: *weight, bias: *bias, act, tokens, y });
            }
            Op::Activation(act) => {
                if !absorbed[i] {
                    let x = dense(node.inputs[0], &mut steps, i);
                    steps.push(Step::Activation { node: i, act: *act, x, y });
                }
            }
            Op::Cross { weight, bias } => {
                let x0 = dense(node.inputs[0], &mut steps, i);
                let xl = dense(node.inputs[1], &mut steps, i);
                let tokens = tokens(g.weights[*weight].cols);
                steps.push(Step::Cross { node: i, x0, xl, weight: *weight, bias: *bias, tokens, y });
            }
            Op::EmbeddingBag { table, mode } => {
                let ids = match node.inputs[..] {
                    [ValueId::Input(input)] => Ids::Padded { input },
                    [ValueId::Input(indices), ValueId::Input(offsets)] => Ids::Bags { indices, offsets },
                    [v @ ValueId::Node(_)] | [v @ ValueId::Const(_)] if g.value_type(v) == ValueType::I64 => {
                        Ids::Value { src: dense(v, &mut steps, i), value: v }
                    }
                    _ => return Err(internal("embedding_bag inputs")),
                };
                steps.push(Step::Bag { node: i, table: *table, ids, mode: *mode, y });
            }
            Op::Concat { axis } => {
                if concat_is_flat(g, i) {
                    let mut col = 0;
                    for v in &node.inputs {
                        let width = slot_width(g, *v);
                        let elided = matches!(v, ValueId::Node(p) if matches!(home[*p], Home::InConcat { parent, .. } if parent == i));
                        let dst = Place { buffer: y.buffer, col: y.col + col, width };
                        match *v {
                            _ if elided => {}
                            ValueId::Node(_) => steps.push(Step::Copy { node: i, src: src(*v), y: dst }),
                            v => {
                                let op = tensor::flat_copy(g.value_width(v), g.value_type(v));
                                steps.push(Step::Tensor { node: i, op: Box::new(op), ins: vec![src(v)], y: dst });
                            }
                        }
                        col += width;
                    }
                } else {
                    let axis = axis.ok_or_else(|| internal("flattened concat"))?;
                    let mut offset = 0;
                    for v in &node.inputs {
                        let op = tensor::concat_part(g, i, axis, *v, offset)?;
                        steps.push(Step::Tensor { node: i, op: Box::new(op), ins: vec![src(*v)], y });
                        offset += g.value_shape(*v)[axis];
                    }
                }
            }
            Op::Add { bias: t } | Op::Mul { scale: t } => {
                let op = if matches!(node.op, Op::Add { .. }) { BinaryOp::Add } else { BinaryOp::Mul };
                let b = match t {
                    Some(t) => Operand::Tensor(*t),
                    None => Operand::Value(dense(node.inputs[1], &mut steps, i)),
                };
                let a = dense(node.inputs[0], &mut steps, i);
                steps.push(Step::Binary { node: i, op, a, b, y });
            }
            Op::Binary(op @ (crate::graph::BinaryOp::Add | crate::graph::BinaryOp::Mul))
                if node
                    .inputs
                    .iter()
                    .all(|&v| g.value_shape(v) == &node.shape[..] && g.value_type(v) == ValueType::F32)
                    && !matches!(node.inputs[0], ValueId::Const(_)) =>
            {
                let op = if *op == crate::graph::BinaryOp::Add { BinaryOp::Add } else { BinaryOp::Mul };
                let b = match node.inputs[1] {
                    ValueId::Const(k) => Operand::Tensor(g.constants[k].tensor),
                    v => Operand::Value(src(v)),
                };
                steps.push(Step::Binary { node: i, op, a: src(node.inputs[0]), b, y });
            }
            Op::LayerNorm { gamma, beta, epsilon } => {
                let x = dense(node.inputs[0], &mut steps, i);
                steps.push(Step::LayerNorm { node: i, x, gamma: *gamma, beta: *beta, epsilon: *epsilon, y })
            }
            Op::DotInteraction { self_interaction } => {
                let inputs = node.inputs.iter().map(|&v| dense(v, &mut steps, i)).collect();
                steps.push(Step::DotInteraction { node: i, inputs, self_interaction: *self_interaction, y });
            }
            Op::Fm => {
                let inputs = node.inputs.iter().map(|&v| dense(v, &mut steps, i)).collect();
                steps.push(Step::Fm { node: i, inputs, y })
            }
            Op::Reshape => match home[i] {
                Home::Alias { .. } => {}
                _ => {
                    let v = node.inputs[0];
                    let op = tensor::flat_copy(g.value_width(v), g.value_type(v));
                    steps.push(Step::Tensor { node: i, op: Box::new(op), ins: vec![src(v)], y });
                }
            },
            _ => {
                let op = tensor::plan(g, i)?.ok_or_else(|| internal("op without a plan"))?;
                let ins = node.inputs.iter().map(|&v| src(v)).collect();
                steps.push(Step::Tensor { node: i, op: Box::new(op), ins, y });
            }
        }
    }
    if !g.nodes.is_empty() {
        ready.push(steps.len());
    }
    Ok((steps, ready))
}

/// First write and last use (step index) of every buffer; outputs live to the end.
fn live_ranges(steps: &[Step], outputs: &[OutputSlot], buffers: usize) -> (Vec<usize>, Vec<usize>) {
    let mut first = vec![usize::MAX; buffers];
    let mut last = vec![0usize; buffers];
    for (s, step) in steps.iter().enumerate() {
        let out = step.output();
        first[out.buffer] = first[out.buffer].min(s);
        last[out.buffer] = last[out.buffer].max(s);
        for r in step.reads() {
            if let Src::Arena(p) = r {
                last[p.buffer] = last[p.buffer].max(s);
            }
        }
    }
    for o in outputs {
        last[o.place.buffer] = steps.len();
    }
    (first, last)
}

/// For every buffer, the other buffers whose live ranges intersect its own (each pair
/// listed on both sides). Built by one sweep over the buffers in order of first write:
/// O(n log n + pairs), where a pairwise test would be O(n²) — a 200 k-node chain has
/// 200 k buffers but only a few live at any step.
struct LiveTogether {
    /// `pairs[start[b]..start[b + 1]]` are the buffers live together with `b`.
    start: Vec<usize>,
    pairs: Vec<usize>,
    /// Entries of the live list visited while building (the sweep's work, for tests).
    #[cfg_attr(not(test), allow(dead_code))]
    scanned: usize,
}

impl LiveTogether {
    fn new(first: &[usize], last: &[usize]) -> LiveTogether {
        use alloc::collections::BinaryHeap;
        use core::cmp::Reverse;
        let n = first.len();
        // Buffers no step writes (first > last) are never live.
        let mut order: Vec<usize> = (0..n).filter(|&b| first[b] <= last[b]).collect();
        order.sort_unstable_by_key(|&b| (first[b], b));
        let mut live: BinaryHeap<Reverse<(usize, usize)>> = BinaryHeap::new();
        // Live set in insertion order, with a flag so expired entries are skipped.
        let mut alive = vec![false; n];
        let mut active: Vec<usize> = Vec::new();
        let mut edges: Vec<(usize, usize)> = Vec::new();
        let mut scanned = 0;
        for &b in &order {
            while let Some(&Reverse((end, a))) = live.peek() {
                if end >= first[b] {
                    break;
                }
                live.pop();
                alive[a] = false;
            }
            // Compact the active list when expired entries dominate it (amortized O(1)).
            if active.len() > 2 * live.len() + 8 {
                active.retain(|&a| alive[a]);
            }
            scanned += active.len();
            for &a in &active {
                if alive[a] {
                    edges.push((a, b));
                }
            }
            live.push(Reverse((last[b], b)));
            alive[b] = true;
            active.push(b);
        }
        let mut start = vec![0usize; n + 1];
        for &(a, b) in &edges {
            start[a + 1] += 1;
            start[b + 1] += 1;
        }
        for i in 1..=n {
            start[i] += start[i - 1];
        }
        let mut fill = start.clone();
        let mut pairs = vec![0usize; edges.len() * 2];
        for &(a, b) in &edges {
            pairs[fill[a]] = b;
            fill[a] += 1;
            pairs[fill[b]] = a;
            fill[b] += 1;
        }
        LiveTogether { start, pairs, scanned }
    }

    /// The buffers live at some step together with `b`.
    fn of(&self, b: usize) -> &[usize] {
        match (self.start.get(b), self.start.get(b + 1)) {
            (Some(&from), Some(&to)) => &self.pairs[from..to],
            _ => &[],
        }
    }
}

/// Assigns arena offsets (greedy first fit, largest buffer first) so that buffers live at
/// the same time never overlap. Returns the arena length in floats.
fn pack_arena(buffers: &mut [Buffer], together: &LiveTogether, max_batch: usize) -> Result<usize> {
    let sizes: Vec<usize> = buffers.iter().map(|b| round_up(b.width * max_batch, ALIGN_FLOATS)).collect();
    let mut order: Vec<usize> = (0..buffers.len()).collect();
    order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]).then(a.cmp(&b)));
    let mut placed = vec![false; buffers.len()];
    let mut arena_len = 0;
    let mut overlapping: Vec<usize> = Vec::new();
    let mut candidates: Vec<usize> = Vec::new();
    for &b in &order {
        // Candidate offsets: 0 and the end of every live-overlapping placed buffer.
        overlapping.clear();
        overlapping.extend(together.of(b).iter().copied().filter(|&p| placed[p]));
        candidates.clear();
        candidates.extend(overlapping.iter().map(|&p| buffers[p].offset + sizes[p]));
        candidates.push(0);
        candidates.sort_unstable();
        let offset = candidates
            .iter()
            .copied()
            .find(|&off| {
                overlapping.iter().all(|&p| off + sizes[b] <= buffers[p].offset || buffers[p].offset + sizes[p] <= off)
            })
            .ok_or_else(|| internal("no arena offset"))?;
        buffers[b].offset = offset;
        arena_len = arena_len.max(offset + sizes[b]);
        placed[b] = true;
    }
    Ok(arena_len)
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

fn internal(what: &str) -> crate::error::Error {
    crate::error::Error::InvalidOption { detail: alloc::format!("planner invariant violated: {what}") }
}

#[cfg(test)]
mod tests {
    use super::LiveTogether;

    /// Brute force: every pair of intervals that intersect.
    fn pairs(first: &[usize], last: &[usize]) -> alloc::vec::Vec<(usize, usize)> {
        let mut out = alloc::vec::Vec::new();
        for a in 0..first.len() {
            for b in 0..first.len() {
                if a != b && first[a] <= last[a] && first[b] <= last[b] && first[a] <= last[b] && first[b] <= last[a] {
                    out.push((a, b));
                }
            }
        }
        out
    }

    #[test]
    fn live_together_matches_the_pairwise_test() {
        // Hand-made ranges: nested, touching (inclusive ends), disjoint, never written.
        let first = [0, 1, 3, 3, 6, usize::MAX, 2];
        let last = [4, 2, 3, 7, 6, 8, 9];
        let t = LiveTogether::new(&first, &last);
        let mut got: alloc::vec::Vec<(usize, usize)> =
            (0..first.len()).flat_map(|a| t.of(a).iter().map(move |&b| (a, b))).collect();
        got.sort_unstable();
        assert_eq!(got, pairs(&first, &last));
    }

    #[test]
    fn a_long_chain_costs_linear_work() {
        // A 200 k-node chain: buffer i is written at step i and read at step i + 1. The
        // old pairwise check and first-fit scan did ~n²/2 = 2·10¹⁰ tests here.
        let n = 200_000;
        let first: alloc::vec::Vec<usize> = (0..n).collect();
        let last: alloc::vec::Vec<usize> = (0..n).map(|i| i + 1).collect();
        let t = LiveTogether::new(&first, &last);
        assert_eq!(t.pairs.len(), 2 * (n - 1));
        assert!(t.scanned <= 12 * n, "the sweep visited {} live entries for {n} buffers", t.scanned);
    }
}
