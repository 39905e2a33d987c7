//! Per-row tensor ops: plan-time index tables and their executors.
//!
//! Every tensor op is "the same op on each example": for each row it reads its inputs'
//! row slices (constants: the same slice every row) and writes the output row. Shapes are
//! known at plan time, so [`plan`] turns each op into strides and extents ([`Walk`]s,
//! fixed-size arrays) or, for convolutions, an im2col index table; `run` then only walks
//! them with stack counters and the per-worker scratch, never allocating. Row shapes of
//! rank above [`MAX_RANK`] are refused with [`Error::Unplannable`].

use alloc::string::String;
use alloc::vec::Vec;

use super::exec::Exec;
use super::plan::{Place, Src};
use crate::error::{Error, Result};
use crate::graph::shape::{broadcast_strides, strides};
use crate::graph::{BinaryOp, Graph, InputKind, Op, ReduceOp, UnaryOp, ValueId, ValueType};
use crate::view::{MatMut, MatRef};

/// Highest row-shape rank the engine indexes.
pub(crate) const MAX_RANK: usize = 8;
/// Axes of a walk (tiling splits each axis in two).
const WALK_AXES: usize = 2 * MAX_RANK + 1;

/// A row-major walk over `dims` with `N` stride sets (in elements), axes of extent 1
/// dropped and contiguous neighbours merged at plan time.
#[derive(Clone, Debug)]
pub(crate) struct Walk<const N: usize> {
    rank: usize,
    empty: bool,
    dims: [usize; WALK_AXES],
    strides: [[usize; WALK_AXES]; N],
}

impl<const N: usize> Walk<N> {
    fn new(dims: &[usize], strides: [&[usize]; N]) -> Option<Walk<N>> {
        let mut w = Walk { rank: 0, empty: dims.contains(&0), dims: [1; WALK_AXES], strides: [[0; WALK_AXES]; N] };
        for (i, &d) in dims.iter().enumerate() {
            if d == 1 {
                continue;
            }
            // Merge into the previous axis when every stride set is contiguous across both.
            if w.rank > 0 && (0..N).all(|k| w.strides[k][w.rank - 1] == strides[k][i] * d) {
                w.dims[w.rank - 1] *= d;
                for (ws, s) in w.strides.iter_mut().zip(&strides) {
                    ws[w.rank - 1] = s[i];
                }
                continue;
            }
            if w.rank == WALK_AXES {
                return None;
            }
            w.dims[w.rank] = d;
            for (ws, s) in w.strides.iter_mut().zip(&strides) {
                ws[w.rank] = s[i];
            }
            w.rank += 1;
        }
        Some(w)
    }

    /// Calls `f(offsets, len, inner_strides)` for every innermost run, in row-major order.
    #[inline]
    fn runs(&self, mut f: impl FnMut([usize; N], usize, [usize; N])) {
        if self.empty {
            return;
        }
        if self.rank == 0 {
            f([0; N], 1, [0; N]);
            return;
        }
        let inner = self.rank - 1;
        let inner_strides: [usize; N] = core::array::from_fn(|k| self.strides[k][inner]);
        let mut idx = [0usize; WALK_AXES];
        let mut off = [0usize; N];
        loop {
            f(off, self.dims[inner], inner_strides);
            let mut ax = inner;
            loop {
                if ax == 0 {
                    return;
                }
                ax -= 1;
                idx[ax] += 1;
                for (k, o) in off.iter_mut().enumerate() {
                    *o += self.strides[k][ax];
                }
                if idx[ax] < self.dims[ax] {
                    break;
                }
                for (k, o) in off.iter_mut().enumerate() {
                    *o -= self.strides[k][ax] * self.dims[ax];
                }
                idx[ax] = 0;
            }
        }
    }

    /// Calls `f(offsets)` for every element, in row-major order.
    #[inline]
    fn each(&self, mut f: impl FnMut([usize; N])) {
        self.runs(|off, len, s| {
            for j in 0..len {
                f(core::array::from_fn(|k| off[k] + j * s[k]))
            }
        });
    }

    /// The same walk over `rows` rows whose starts are `row_strides` apart in each stride
    /// set (0: a constant every row reads), so one call covers a whole batch. Merged with
    /// the row's first axis when every operand's rows are contiguous, so element-wise ops
    /// on `[rows, width]` buffers become one long run. `None` if the axes would overflow.
    fn over_rows(&self, rows: usize, row_strides: [usize; N]) -> Option<Walk<N>> {
        let mut w =
            Walk { rank: 1, empty: self.empty || rows == 0, dims: [1; WALK_AXES], strides: [[0; WALK_AXES]; N] };
        w.dims[0] = rows;
        for (k, s) in row_strides.iter().enumerate() {
            w.strides[k][0] = *s;
        }
        for ax in 0..self.rank {
            let merge = w.rank == 1 && (0..N).all(|k| w.strides[k][0] == self.strides[k][ax] * self.dims[ax]);
            if merge {
                w.dims[0] *= self.dims[ax];
                for k in 0..N {
                    w.strides[k][0] = self.strides[k][ax];
                }
                continue;
            }
            if w.rank == WALK_AXES {
                return None;
            }
            w.dims[w.rank] = self.dims[ax];
            for k in 0..N {
                w.strides[k][w.rank] = self.strides[k][ax];
            }
            w.rank += 1;
        }
        Some(w)
    }

    /// Whether the walk is one contiguous run (stride 1 in set `k`).
    fn contiguous(&self, k: usize) -> bool {
        self.rank == 0 || (self.rank == 1 && self.strides[k][0] == 1)
    }
}

/// A planned tensor op.
#[derive(Clone, Debug)]
pub(crate) enum TensorOp {
    /// `y[dst_base + walk₀] = x[src_base + walk₁]` after filling `y` with `fill`
    /// (transpose, slice, tile, pad, axis concatenation, copies).
    Copy {
        walk: Walk<2>,
        src_base: usize,
        dst_base: usize,
        fill: Option<f32>,
        ty: ValueType,
    },
    /// One table row per id.
    Embedding {
        table: usize,
        ids: usize,
        dim: usize,
    },
    /// `data[pre, d, post]` gathered by `n` indices.
    Gather {
        pre: usize,
        d: usize,
        post: usize,
        n: usize,
        ty: ValueType,
    },
    /// `y[i] = data[i with axis coordinate idx[i]]`; the walk's sets are output (= index)
    /// offsets and data offsets with the axis' stride zeroed.
    GatherElements {
        walk: Walk<2>,
        axis_len: usize,
        axis_stride: usize,
        ty: ValueType,
    },
    /// Broadcast binary op; the walk's sets are output, a, b.
    Binary {
        op: BinaryOp,
        ty: ValueType,
        walk: Walk<3>,
    },
    /// Broadcast select; sets output, cond, a, b.
    Where {
        ty: ValueType,
        walk: Walk<4>,
    },
    Unary {
        op: UnaryOp,
        ty: ValueType,
    },
    Cast {
        from: ValueType,
        to: ValueType,
    },
    /// `outer` walks kept axes of the input; `inner` the reduced ones.
    Reduce {
        op: ReduceOp,
        ty: ValueType,
        outer: Walk<1>,
        inner: Walk<1>,
        len: usize,
    },
    /// Lanes of `n` at `stride`, starting at every offset of `outer`.
    Softmax {
        log: bool,
        outer: Walk<1>,
        n: usize,
        stride: usize,
    },
    /// Lanes: `outer` sets are input, output offsets.
    TopK {
        outer: Walk<2>,
        n: usize,
        in_stride: usize,
        out_stride: usize,
        k: usize,
        largest: bool,
        indices: bool,
    },
    /// Leading dims walk (sets output, a, b in elements), then `[m, k] × [k, n]`.
    MatMul {
        lead: Walk<3>,
        m: usize,
        k: usize,
        n: usize,
    },
    /// im2col GEMM: `table[p·kq + q]` is the input spatial offset of output position `p`
    /// and kernel tap `q` (`u32::MAX`: padding).
    Conv {
        weight: usize,
        bias: Option<usize>,
        group: usize,
        cin_g: usize,
        spatial: usize,
        positions: usize,
        kq: usize,
        out_g: usize,
        table: Vec<u32>,
    },
}

fn unplannable(g: &Graph, node: usize, detail: String) -> Error {
    Error::Unplannable { node: g.nodes[node].name.clone(), detail }
}

fn walk<const N: usize>(g: &Graph, node: usize, dims: &[usize], s: [&[usize]; N]) -> Result<Walk<N>> {
    Walk::new(dims, s).ok_or_else(|| unplannable(g, node, "row shape rank too high".into()))
}

fn prod(s: &[usize]) -> usize {
    s.iter().product()
}

/// Checks that the node and its inputs have row shapes the engine indexes.
pub(crate) fn check_rank(g: &Graph, node: usize) -> Result<()> {
    let n = &g.nodes[node];
    let too_big = n.shape.len() > MAX_RANK || n.inputs.iter().any(|&v| g.value_shape(v).len() > MAX_RANK);
    if too_big {
        return Err(unplannable(g, node, alloc::format!("row shapes of rank above {MAX_RANK} are not supported")));
    }
    Ok(())
}

/// A copy of a whole value (graph input or constant) into a node's row.
pub(crate) fn flat_copy(width: usize, ty: ValueType) -> TensorOp {
    let walk = Walk::new(&[width], [&[1], &[1]]).unwrap_or(Walk {
        rank: 0,
        empty: true,
        dims: [1; WALK_AXES],
        strides: [[0; WALK_AXES]; 2],
    });
    TensorOp::Copy { walk, src_base: 0, dst_base: 0, fill: None, ty }
}

/// Copies input `part` of concat node `node` (along `axis`) into its block of the output.
pub(crate) fn concat_part(g: &Graph, node: usize, axis: usize, part: ValueId, offset: usize) -> Result<TensorOp> {
    let n = &g.nodes[node];
    let s = g.value_shape(part);
    let ost = strides(&n.shape);
    let w = walk(g, node, s, [&ost, &strides(s)])?;
    Ok(TensorOp::Copy { walk: w, src_base: 0, dst_base: offset * ost[axis], fill: None, ty: n.dtype })
}

/// Plans a tensor op node. `None` for the ops the planner handles itself.
pub(crate) fn plan(g: &Graph, node: usize) -> Result<Option<TensorOp>> {
    check_rank(g, node)?;
    let n = &g.nodes[node];
    let o = &n.shape[..];
    let ost = strides(o);
    let shape = |k: usize| g.value_shape(n.inputs[k]);
    let ty = |k: usize| g.value_type(n.inputs[k]);
    let op = match &n.op {
        Op::Transpose { perm } => {
            let ist = strides(shape(0));
            let src: Vec<usize> = perm.iter().map(|&p| ist[p]).collect();
            TensorOp::Copy { walk: walk(g, node, o, [&ost, &src])?, src_base: 0, dst_base: 0, fill: None, ty: n.dtype }
        }
        Op::Slice { axis, start, step, .. } => {
            let mut ist = strides(shape(0));
            let src_base = start * ist[*axis];
            ist[*axis] *= step;
            TensorOp::Copy { walk: walk(g, node, o, [&ost, &ist])?, src_base, dst_base: 0, fill: None, ty: n.dtype }
        }
        Op::Tile => {
            let s = shape(0);
            let ist = strides(s);
            let (mut dims, mut dst, mut src) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..o.len() {
                dims.extend([o[i] / s[i], s[i]]);
                dst.extend([s[i] * ost[i], ost[i]]);
                src.extend([0, ist[i]]);
            }
            TensorOp::Copy {
                walk: walk(g, node, &dims, [&dst, &src])?,
                src_base: 0,
                dst_base: 0,
                fill: None,
                ty: n.dtype,
            }
        }
        Op::Pad { pads, value } => {
            let s = shape(0);
            let dst_base = pads.iter().zip(&ost).map(|(p, st)| p.0 * st).sum();
            let w = walk(g, node, s, [&ost, &strides(s)])?;
            TensorOp::Copy { walk: w, src_base: 0, dst_base, fill: Some(*value), ty: n.dtype }
        }
        Op::Embedding { table } => {
            TensorOp::Embedding { table: *table, ids: prod(shape(0)), dim: g.weights[*table].cols }
        }
        Op::Gather { axis } => {
            let d = shape(0);
            TensorOp::Gather {
                pre: prod(&d[..*axis]),
                d: d[*axis],
                post: prod(&d[axis + 1..]),
                n: prod(shape(1)),
                ty: n.dtype,
            }
        }
        Op::GatherElements { axis } => {
            let d = shape(0);
            let mut ds = strides(d);
            let axis_stride = core::mem::replace(&mut ds[*axis], 0);
            TensorOp::GatherElements {
                walk: walk(g, node, o, [&ost, &ds])?,
                axis_len: d[*axis],
                axis_stride,
                ty: n.dtype,
            }
        }
        Op::Binary(op) => {
            let (a, b) = (broadcast_strides(shape(0), o), broadcast_strides(shape(1), o));
            TensorOp::Binary { op: *op, ty: ty(0), walk: walk(g, node, o, [&ost, &a, &b])? }
        }
        Op::Where => {
            let c = broadcast_strides(shape(0), o);
            let (a, b) = (broadcast_strides(shape(1), o), broadcast_strides(shape(2), o));
            TensorOp::Where { ty: n.dtype, walk: walk(g, node, o, [&ost, &c, &a, &b])? }
        }
        Op::Unary(op) => TensorOp::Unary { op: *op, ty: n.dtype },
        Op::Cast { to } => TensorOp::Cast { from: ty(0), to: *to },
        Op::Reduce { op, axes, .. } => {
            let [(kd, ks), (rd, rs)] = split_axes(shape(0), axes);
            TensorOp::Reduce {
                op: *op,
                ty: ty(0),
                outer: walk(g, node, &kd, [&ks])?,
                inner: walk(g, node, &rd, [&rs])?,
                len: prod(&rd),
            }
        }
        Op::Softmax { axis, log } => {
            let s = shape(0);
            let ist = strides(s);
            let (mut d, mut st) = (s.to_vec(), ist.clone());
            d[*axis] = 1;
            st[*axis] = 0;
            TensorOp::Softmax { log: *log, outer: walk(g, node, &d, [&st])?, n: s[*axis], stride: ist[*axis] }
        }
        Op::TopK { axis, k, largest, indices } => {
            let s = shape(0);
            let ist = strides(s);
            let (mut d, mut a, mut b) = (s.to_vec(), ist.clone(), ost.clone());
            d[*axis] = 1;
            a[*axis] = 0;
            b[*axis] = 0;
            TensorOp::TopK {
                outer: walk(g, node, &d, [&a, &b])?,
                n: s[*axis],
                in_stride: ist[*axis],
                out_stride: ost[*axis],
                k: *k,
                largest: *largest,
                indices: *indices,
            }
        }
        Op::MatMul => {
            let (a, b) = (shape(0), shape(1));
            let r = o.len();
            let (m, k, nn) = (a[a.len() - 2], a[a.len() - 1], b[b.len() - 1]);
            let lead = &o[..r - 2];
            let sa: Vec<usize> = broadcast_strides(&a[..a.len() - 2], lead).iter().map(|s| s * m * k).collect();
            let sb: Vec<usize> = broadcast_strides(&b[..b.len() - 2], lead).iter().map(|s| s * k * nn).collect();
            let so: Vec<usize> = strides(lead).iter().map(|s| s * m * nn).collect();
            TensorOp::MatMul { lead: walk(g, node, lead, [&so, &sa, &sb])?, m, k, n: nn }
        }
        Op::Conv { weight, bias, kernel, strides: cs, pads, dilations, group } => {
            let s = shape(0);
            let sp_in = &s[1..];
            let sp_out = &o[1..];
            let positions = prod(sp_out);
            let kq = prod(kernel);
            let too_big =
                positions.checked_mul(kq).is_none_or(|t| t > u32::MAX as usize) || prod(sp_in) >= u32::MAX as usize;
            if too_big {
                return Err(unplannable(g, node, "convolution too large to index".into()));
            }
            let ist = strides(sp_in);
            // Fallible: the sizes come from the file.
            let mut table = Vec::new();
            table
                .try_reserve_exact(positions * kq)
                .map_err(|_| unplannable(g, node, "cannot allocate the convolution's index table".into()))?;
            table.resize(positions * kq, u32::MAX);
            let rank = kernel.len();
            let mut pos = [0usize; MAX_RANK];
            for p in 0..positions {
                let mut tap = [0usize; MAX_RANK];
                for q in 0..kq {
                    let mut off = 0usize;
                    let mut inside = true;
                    for i in 0..rank {
                        let c = (pos[i] * cs[i] + tap[i] * dilations[i]) as isize - pads[i].0 as isize;
                        if c < 0 || c as usize >= sp_in[i] {
                            inside = false;
                            break;
                        }
                        off += c as usize * ist[i];
                    }
                    if inside {
                        table[p * kq + q] = off as u32;
                    }
                    odometer(&mut tap[..rank], kernel);
                }
                odometer(&mut pos[..rank], sp_out);
            }
            let out_g = o[0] / group;
            TensorOp::Conv {
                weight: *weight,
                bias: *bias,
                group: *group,
                cin_g: s[0] / group,
                spatial: prod(sp_in),
                positions,
                kq,
                out_g,
                table,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(op))
}

/// A reduction's two walks over `shape`: the kept axes `(dims, strides)`, then the reduced
/// ones (every executor lays reductions out this way).
pub(crate) fn split_axes(shape: &[usize], axes: &[usize]) -> [(Vec<usize>, Vec<usize>); 2] {
    let st = strides(shape);
    let (mut kept, mut reduced) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for (i, (&d, &s)) in shape.iter().zip(&st).enumerate() {
        let side = if axes.contains(&i) { &mut reduced } else { &mut kept };
        side.0.push(d);
        side.1.push(s);
    }
    [kept, reduced]
}

fn odometer(idx: &mut [usize], dims: &[usize]) {
    for ax in (0..idx.len()).rev() {
        idx[ax] += 1;
        if idx[ax] < dims[ax] {
            return;
        }
        idx[ax] = 0;
    }
}

impl TensorOp {
    /// Floats of per-worker scratch the op needs (besides a linear kernel's, for conv).
    pub fn scratch_len(&self) -> usize {
        match self {
            TensorOp::Reduce { inner, len, .. } if !inner.contiguous(0) => *len,
            TensorOp::Softmax { n, stride, .. } if *stride != 1 => *n,
            TensorOp::TopK { k, .. } => *k,
            TensorOp::Conv { positions, cin_g, kq, out_g, .. } => positions * (cin_g * kq + out_g),
            _ => 0,
        }
    }

    /// A short name for `describe`.
    pub fn name(&self) -> &'static str {
        match self {
            TensorOp::Copy { .. } => "copy",
            TensorOp::Embedding { .. } => "embedding",
            TensorOp::Gather { .. } => "gather",
            TensorOp::GatherElements { .. } => "gather_elements",
            TensorOp::Binary { op, .. } => op.as_str(),
            TensorOp::Where { .. } => "where",
            TensorOp::Unary { op, .. } => op.as_str(),
            TensorOp::Cast { .. } => "cast",
            TensorOp::Reduce { .. } => "reduce",
            TensorOp::Softmax { log: false, .. } => "softmax",
            TensorOp::Softmax { log: true, .. } => "log_softmax",
            TensorOp::TopK { .. } => "topk",
            TensorOp::MatMul { .. } => "matmul",
            TensorOp::Conv { .. } => "conv",
        }
    }
}

/// Where a step reads rows from: `width` slots at `ptr + r·stride` (stride 0: a
/// constant, the same row every time).
#[derive(Clone, Copy)]
pub(super) struct RowSrc {
    ptr: *const f32,
    stride: usize,
    width: usize,
}

// SAFETY: a RowSrc is a shared view of data no one writes during the step that uses it.
unsafe impl Send for RowSrc {}
// SAFETY: as above.
unsafe impl Sync for RowSrc {}

impl RowSrc {
    /// Row `r` as f32 slots.
    ///
    /// # Safety
    /// `r` must be below the run's rows and the source valid for the step.
    #[inline]
    pub(super) unsafe fn f32<'a>(&self, r: usize) -> &'a [f32] {
        // SAFETY: forwarded from the caller and `Exec::row_src`.
        unsafe { core::slice::from_raw_parts(self.ptr.add(r * self.stride), self.width) }
    }

    /// The same source with row `first` as row 0.
    ///
    /// # Safety
    /// `first` must be below the rows the source holds.
    #[inline]
    unsafe fn skip(self, first: usize) -> RowSrc {
        // SAFETY: row `first` starts inside the source (forwarded from the caller).
        RowSrc { ptr: unsafe { self.ptr.add(first * self.stride) }, ..self }
    }

    /// Rows `0..rows` as one f32 slice (row `r` starts at `r · stride`).
    ///
    /// # Safety
    /// As for [`RowSrc::f32`], for every row below `rows`.
    #[inline]
    pub(super) unsafe fn f32_rows<'a>(&self, rows: usize) -> &'a [f32] {
        let len = if rows == 0 { 0 } else { (rows - 1) * self.stride + self.width };
        // SAFETY: forwarded from the caller: every row lies in the source.
        unsafe { core::slice::from_raw_parts(self.ptr, len) }
    }

    /// Row `r` as i64 elements (the source was checked to be 8-byte aligned).
    ///
    /// # Safety
    /// As for [`RowSrc::f32`], and the value must be i64.
    #[inline]
    pub(super) unsafe fn i64<'a>(&self, r: usize) -> &'a [i64] {
        // SAFETY: forwarded; alignment checked when the source was built.
        unsafe { core::slice::from_raw_parts(self.ptr.add(r * self.stride).cast::<i64>(), self.width / 2) }
    }
}

/// Where a step writes rows.
#[derive(Clone, Copy)]
pub(super) struct RowDst {
    ptr: *mut f32,
    stride: usize,
    width: usize,
}

impl RowDst {
    /// # Safety
    /// `r` below the run's rows; no other view of the row lives.
    #[inline]
    unsafe fn f32<'a>(&self, r: usize) -> &'a mut [f32] {
        // SAFETY: forwarded from the caller and `Exec::row_dst`.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(r * self.stride), self.width) }
    }

    /// The same destination with row `first` as row 0.
    ///
    /// # Safety
    /// `first` must be below the rows the destination holds.
    #[inline]
    unsafe fn skip(self, first: usize) -> RowDst {
        // SAFETY: row `first` starts inside the destination (forwarded from the caller).
        RowDst { ptr: unsafe { self.ptr.add(first * self.stride) }, ..self }
    }

    /// Rows `0..rows` as one f32 slice, the gaps between rows included.
    ///
    /// # Safety
    /// As above, for every row below `rows`, and nothing else may access the whole range
    /// while the slice lives — so only for a destination that owns whole rows of its
    /// buffer (`stride == width`), whose range holds nothing else.
    #[inline]
    unsafe fn f32_rows<'a>(&self, rows: usize) -> &'a mut [f32] {
        let len = if rows == 0 { 0 } else { (rows - 1) * self.stride + self.width };
        // SAFETY: forwarded from the caller.
        unsafe { core::slice::from_raw_parts_mut(self.ptr, len) }
    }

    /// # Safety
    /// As above, for an i64 value (alignment checked when built).
    #[inline]
    unsafe fn i64<'a>(&self, r: usize) -> &'a mut [i64] {
        // SAFETY: forwarded; alignment checked when the destination was built.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.add(r * self.stride).cast::<i64>(), self.width / 2) }
    }
}

fn misaligned() -> Error {
    Error::InvalidOption { detail: "executor invariant violated: misaligned i64 value".into() }
}

impl Exec<'_, '_> {
    /// The row source of a value.
    ///
    /// # Safety
    /// Arena places must lie in the arena and not be written while the source is used.
    pub(super) unsafe fn row_src(&self, s: Src) -> Result<RowSrc> {
        let g = self.model.graph();
        let (ptr, stride, width) = match s {
            Src::Input(k) => match g.inputs[k].kind {
                InputKind::Dense { .. } => {
                    let data = super::input::dense(self.inputs, self.binding, k);
                    let w = data.len() / self.rows.max(1);
                    (data.as_ptr(), w, w)
                }
                _ => {
                    let data = super::input::ids(self.inputs, self.binding, k);
                    let w = data.len() / self.rows.max(1);
                    (data.as_ptr().cast::<f32>(), 2 * w, 2 * w)
                }
            },
            Src::Arena(p) => {
                let b = &self.buffers[p.buffer];
                // SAFETY: the place lies in the arena (plan invariant).
                (unsafe { self.base.add(b.offset + p.col) }.cast_const(), b.width, p.width)
            }
            Src::Const(i) => match g.constants[i].dtype {
                ValueType::F32 => {
                    let c = self.model.constant_f32(i)?;
                    (c.as_ptr(), 0, c.len())
                }
                ValueType::I64 => {
                    let c = self.model.constant_i64(i)?;
                    (c.as_ptr().cast::<f32>(), 0, 2 * c.len())
                }
            },
        };
        Ok(RowSrc { ptr, stride, width })
    }

    /// A row source that will be read as i64.
    ///
    /// # Safety
    /// As for [`Exec::row_src`].
    unsafe fn i64_src(&self, s: Src) -> Result<RowSrc> {
        // SAFETY: forwarded.
        let src = unsafe { self.row_src(s)? };
        if !(src.ptr as usize).is_multiple_of(8) || !src.stride.is_multiple_of(2) {
            return Err(misaligned());
        }
        Ok(src)
    }

    /// [`Exec::row_src`] from row `first` on.
    ///
    /// # Safety
    /// As for [`Exec::row_src`], and `first` must be below the run's rows.
    unsafe fn part_src(&self, first: usize, s: Src) -> Result<RowSrc> {
        // SAFETY: forwarded.
        Ok(unsafe { self.row_src(s)?.skip(first) })
    }

    /// [`Exec::i64_src`] from row `first` on.
    ///
    /// # Safety
    /// As for [`Exec::part_src`].
    unsafe fn part_i64_src(&self, first: usize, s: Src) -> Result<RowSrc> {
        // SAFETY: forwarded.
        Ok(unsafe { self.i64_src(s)?.skip(first) })
    }

    /// The row destination of a place.
    ///
    /// # Safety
    /// The place must lie in the arena and be accessed through nothing else during the step.
    pub(super) unsafe fn row_dst(&self, p: Place, ty: ValueType) -> Result<RowDst> {
        let b = &self.buffers[p.buffer];
        // SAFETY: the place lies in the arena (plan invariant).
        let ptr = unsafe { self.base.add(b.offset + p.col) };
        if ty == ValueType::I64 && (!(ptr as usize).is_multiple_of(8) || !b.width.is_multiple_of(2)) {
            return Err(misaligned());
        }
        Ok(RowDst { ptr, stride: b.width, width: p.width })
    }

    fn node_error(&self, node: usize, row: usize, index: i64, bound: usize) -> Error {
        Error::IndexOutOfRange { node: self.model.graph().nodes[node].name.clone(), row, index, bound }
    }

    /// Executes one tensor op over every row.
    ///
    /// # Safety
    /// As for [`Exec::step`]: the plan keeps `y` disjoint from the inputs.
    /// # Safety
    /// As above, and `worker` must be the index of the task running it (its scratch
    /// block), with no other task writing rows of `part` of `y`.
    pub(super) unsafe fn tensor(
        &self,
        node: usize,
        op: &TensorOp,
        ins: &[Src],
        y: Place,
        part: core::ops::Range<usize>,
        worker: usize,
    ) -> Result<()> {
        let g = self.model.graph();
        let out_ty = g.nodes.get(node).map_or(ValueType::F32, |n| n.dtype);
        let out_ty = match op {
            TensorOp::Copy { ty, .. } => *ty,
            _ => out_ty,
        };
        // SAFETY: the caller guarantees the places, that `part` lies within the batch and
        // that scratch block `worker` is this task's alone.
        unsafe {
            let first = part.start;
            let dst = self.row_dst(y, out_ty)?.skip(first);
            let scratch =
                core::slice::from_raw_parts_mut(self.scratch.add(worker * self.scratch_len), self.scratch_len);
            // Rows are counted from `first` below; errors report absolute rows.
            let rows = part.len();
            match op {
                TensorOp::Copy { walk, src_base, dst_base, fill, ty } => {
                    let x = self.part_src(first, ins[0])?;
                    match ty {
                        ValueType::F32 => {
                            for r in 0..rows {
                                let out = dst.f32(r);
                                if let Some(v) = fill {
                                    out.fill(*v);
                                }
                                copy_walk(walk, out, *dst_base, x.f32(r), *src_base);
                            }
                        }
                        ValueType::I64 => {
                            let x = self.part_i64_src(first, ins[0])?;
                            for r in 0..rows {
                                copy_walk(walk, dst.i64(r), *dst_base, x.i64(r), *src_base);
                            }
                        }
                    }
                }
                TensorOp::Embedding { table, ids, dim } => {
                    let w = self.model.weight(*table)?;
                    let x = self.part_i64_src(first, ins[0])?;
                    for r in 0..rows {
                        let (idr, out) = (x.i64(r), dst.f32(r));
                        for j in 0..*ids {
                            let id = idr[j];
                            if id < 0 || id as u64 >= w.rows as u64 {
                                return Err(Error::IdOutOfRange {
                                    input: g.value_name(g.nodes[node].inputs[0]).into(),
                                    position: (first + r) * ids + j,
                                    id,
                                    table: g.weights[*table].name.clone(),
                                    rows: w.rows,
                                });
                            }
                            w.dequant_row(id as usize, &mut out[j * dim..(j + 1) * dim]);
                        }
                    }
                }
                TensorOp::Gather { pre, d, post, n, ty } => {
                    let idx = self.part_i64_src(first, ins[1])?;
                    for r in 0..rows {
                        let ir = idx.i64(r);
                        // Check every index before writing anything of this row.
                        for &i in ir {
                            if wrap(i, *d).is_none() {
                                return Err(self.node_error(node, first + r, i, *d));
                            }
                        }
                        let at = |p: usize, j: usize| (p * d + wrap(ir[j], *d).unwrap_or(0)) * post;
                        match ty {
                            ValueType::F32 => {
                                let (x, out) = (self.part_src(first, ins[0])?.f32(r), dst.f32(r));
                                for p in 0..*pre {
                                    for j in 0..*n {
                                        let o = (p * n + j) * post;
                                        out[o..o + post].copy_from_slice(&x[at(p, j)..at(p, j) + post]);
                                    }
                                }
                            }
                            ValueType::I64 => {
                                let (x, out) = (self.part_i64_src(first, ins[0])?.i64(r), dst.i64(r));
                                for p in 0..*pre {
                                    for j in 0..*n {
                                        let o = (p * n + j) * post;
                                        out[o..o + post].copy_from_slice(&x[at(p, j)..at(p, j) + post]);
                                    }
                                }
                            }
                        }
                    }
                }
                TensorOp::GatherElements { walk, axis_len, axis_stride, ty } => {
                    let idx = self.part_i64_src(first, ins[1])?;
                    for r in 0..rows {
                        let ir = idx.i64(r);
                        if let Some(&bad) = ir.iter().find(|&&i| wrap(i, *axis_len).is_none()) {
                            return Err(self.node_error(node, first + r, bad, *axis_len));
                        }
                        let at = |o: [usize; 2]| o[1] + wrap(ir[o[0]], *axis_len).unwrap_or(0) * axis_stride;
                        match ty {
                            ValueType::F32 => {
                                let (x, out) = (self.part_src(first, ins[0])?.f32(r), dst.f32(r));
                                walk.each(|o| out[o[0]] = x[at(o)]);
                            }
                            ValueType::I64 => {
                                let (x, out) = (self.part_i64_src(first, ins[0])?.i64(r), dst.i64(r));
                                walk.each(|o| out[o[0]] = x[at(o)]);
                            }
                        }
                    }
                }
                TensorOp::Binary { op, ty, walk } => match ty {
                    ValueType::F32 => {
                        let (a, b) = (self.part_src(first, ins[0])?, self.part_src(first, ins[1])?);
                        // One walk over the batch when the output owns whole rows of its
                        // buffer: its span then holds nothing but its own elements, so the
                        // `&mut` over it aliases no input (inputs' spans are shared views).
                        let batched = (dst.stride == dst.width)
                            .then(|| walk.over_rows(rows, [dst.stride, a.stride, b.stride]))
                            .flatten();
                        match batched {
                            Some(all) => binary_f32(*op, &all, dst.f32_rows(rows), a.f32_rows(rows), b.f32_rows(rows)),
                            None => {
                                for r in 0..rows {
                                    binary_f32(*op, walk, dst.f32(r), a.f32(r), b.f32(r));
                                }
                            }
                        }
                    }
                    ValueType::I64 => {
                        let (a, b) = (self.part_i64_src(first, ins[0])?, self.part_i64_src(first, ins[1])?);
                        for r in 0..rows {
                            let ok = if op.is_comparison() {
                                binary_i64_cmp(*op, walk, dst.f32(r), a.i64(r), b.i64(r));
                                true
                            } else {
                                binary_i64(*op, walk, dst.i64(r), a.i64(r), b.i64(r))
                            };
                            if !ok {
                                return Err(Error::Arithmetic {
                                    node: g.nodes[node].name.clone(),
                                    row: first + r,
                                    detail: "i64 division by zero".into(),
                                });
                            }
                        }
                    }
                },
                TensorOp::Where { ty, walk } => {
                    let c = self.part_src(first, ins[0])?;
                    match ty {
                        ValueType::F32 => {
                            let (a, b) = (self.part_src(first, ins[1])?, self.part_src(first, ins[2])?);
                            for r in 0..rows {
                                let (out, c, a, b) = (dst.f32(r), c.f32(r), a.f32(r), b.f32(r));
                                walk.each(|o| out[o[0]] = if c[o[1]] != 0.0 { a[o[2]] } else { b[o[3]] });
                            }
                        }
                        ValueType::I64 => {
                            let (a, b) = (self.part_i64_src(first, ins[1])?, self.part_i64_src(first, ins[2])?);
                            for r in 0..rows {
                                let (out, c, a, b) = (dst.i64(r), c.f32(r), a.i64(r), b.i64(r));
                                walk.each(|o| out[o[0]] = if c[o[1]] != 0.0 { a[o[2]] } else { b[o[3]] });
                            }
                        }
                    }
                }
                TensorOp::Unary { op, ty } => match ty {
                    ValueType::F32 => {
                        let x = self.part_src(first, ins[0])?;
                        if x.stride == x.width && dst.stride == dst.width {
                            // Both sides are one contiguous block of rows.
                            self.kernels.unary.unary(*op, x.f32_rows(rows), dst.f32_rows(rows));
                        } else {
                            for r in 0..rows {
                                self.kernels.unary.unary(*op, x.f32(r), dst.f32(r));
                            }
                        }
                    }
                    ValueType::I64 => {
                        let x = self.part_i64_src(first, ins[0])?;
                        for r in 0..rows {
                            for (y, &v) in dst.i64(r).iter_mut().zip(x.i64(r)) {
                                *y = match op {
                                    UnaryOp::Neg => v.wrapping_neg(),
                                    UnaryOp::Abs => v.wrapping_abs(),
                                    _ => v.signum(),
                                };
                            }
                        }
                    }
                },
                TensorOp::Cast { from, to } => {
                    for r in 0..rows {
                        match (from, to) {
                            (ValueType::F32, ValueType::I64) => {
                                let x = self.part_src(first, ins[0])?.f32(r);
                                // `as` truncates toward zero and saturates (NaN → 0).
                                dst.i64(r).iter_mut().zip(x).for_each(|(y, &v)| *y = v as i64);
                            }
                            (ValueType::I64, ValueType::F32) => {
                                let x = self.part_i64_src(first, ins[0])?.i64(r);
                                dst.f32(r).iter_mut().zip(x).for_each(|(y, &v)| *y = v as f32);
                            }
                            (ValueType::F32, ValueType::F32) => {
                                dst.f32(r).copy_from_slice(self.part_src(first, ins[0])?.f32(r))
                            }
                            (ValueType::I64, ValueType::I64) => {
                                dst.i64(r).copy_from_slice(self.part_i64_src(first, ins[0])?.i64(r))
                            }
                        }
                    }
                }
                TensorOp::Reduce { op, ty, outer, inner, len } => match ty {
                    ValueType::F32 => {
                        let x = self.part_src(first, ins[0])?;
                        for r in 0..rows {
                            let (x, out) = (x.f32(r), dst.f32(r));
                            let mut e = 0;
                            outer.each(|[base]| {
                                let lane: &[f32] = if inner.contiguous(0) {
                                    &x[base..base + len]
                                } else {
                                    let mut k = 0;
                                    inner.each(|[o]| {
                                        scratch[k] = x[base + o];
                                        k += 1;
                                    });
                                    &scratch[..*len]
                                };
                                out[e] = self.kernels.reduce.reduce(*op, lane);
                                e += 1;
                            });
                        }
                    }
                    ValueType::I64 => {
                        let x = self.part_i64_src(first, ins[0])?;
                        for r in 0..rows {
                            let (x, out) = (x.i64(r), dst.i64(r));
                            let mut e = 0;
                            outer.each(|[base]| {
                                let mut acc = match op {
                                    ReduceOp::Max => i64::MIN,
                                    ReduceOp::Min => i64::MAX,
                                    _ => 0,
                                };
                                inner.each(|[o]| {
                                    let v = x[base + o];
                                    acc = match op {
                                        ReduceOp::Max => acc.max(v),
                                        ReduceOp::Min => acc.min(v),
                                        _ => acc.wrapping_add(v),
                                    };
                                });
                                out[e] = acc;
                                e += 1;
                            });
                        }
                    }
                },
                TensorOp::Softmax { log, outer, n, stride } => {
                    let x = self.part_src(first, ins[0])?;
                    for r in 0..rows {
                        let out = dst.f32(r);
                        out.copy_from_slice(x.f32(r));
                        outer.each(|[base]| {
                            if *stride == 1 {
                                self.kernels.softmax.softmax(&mut out[base..base + n], *log);
                            } else {
                                let lane = &mut scratch[..*n];
                                for (j, v) in lane.iter_mut().enumerate() {
                                    *v = out[base + j * stride];
                                }
                                self.kernels.softmax.softmax(lane, *log);
                                for (j, v) in lane.iter().enumerate() {
                                    out[base + j * stride] = *v;
                                }
                            }
                        });
                    }
                }
                TensorOp::TopK { outer, n, in_stride, out_stride, k, largest, indices } => {
                    let order = &mut scratch[..*k];
                    let in_ty = g.value_type(g.nodes[node].inputs[0]);
                    for r in 0..rows {
                        match in_ty {
                            ValueType::F32 => {
                                let x = self.part_src(first, ins[0])?.f32(r);
                                outer.each(|[ib, ob]| {
                                    let at = |j: usize| x[ib + j * in_stride];
                                    let better = |a: usize, b: usize| f32_precedes(at(a), at(b), *largest);
                                    let filled = top_k(*n, better, order);
                                    for (j, &bits) in order[..filled].iter().enumerate() {
                                        let i = bits.to_bits() as usize;
                                        if *indices {
                                            dst.i64(r)[ob + j * out_stride] = i as i64;
                                        } else {
                                            dst.f32(r)[ob + j * out_stride] = at(i);
                                        }
                                    }
                                });
                            }
                            ValueType::I64 => {
                                let x = self.part_i64_src(first, ins[0])?.i64(r);
                                let out = dst.i64(r);
                                outer.each(|[ib, ob]| {
                                    let at = |j: usize| x[ib + j * in_stride];
                                    let better =
                                        |a: usize, b: usize| if *largest { at(a) > at(b) } else { at(a) < at(b) };
                                    let filled = top_k(*n, better, order);
                                    for (j, &bits) in order[..filled].iter().enumerate() {
                                        let i = bits.to_bits() as usize;
                                        out[ob + j * out_stride] = if *indices { i as i64 } else { at(i) };
                                    }
                                });
                            }
                        }
                    }
                }
                TensorOp::MatMul { lead, m, k, n } => {
                    let (a, b) = (self.part_src(first, ins[0])?, self.part_src(first, ins[1])?);
                    for r in 0..rows {
                        let (out, a, b) = (dst.f32(r), a.f32(r), b.f32(r));
                        lead.each(|[o, ia, ib]| {
                            self.kernels.matmul.matmul(
                                &a[ia..ia + m * k],
                                &b[ib..ib + k * n],
                                &mut out[o..o + m * n],
                                *m,
                                *k,
                                *n,
                            );
                        });
                    }
                }
                TensorOp::Conv { weight, bias, group, cin_g, spatial, positions, kq, out_g, table } => {
                    let w = self.model.weight(*weight)?;
                    let bias = bias.map(|b| self.model.vector(b)).transpose()?;
                    let x = self.part_src(first, ins[0])?;
                    let kk = cin_g * kq;
                    let (cols, rest) = scratch.split_at_mut(positions * kk);
                    let (tmp, lin) = rest.split_at_mut(positions * out_g);
                    for r in 0..rows {
                        let (x, out) = (x.f32(r), dst.f32(r));
                        for gi in 0..*group {
                            for p in 0..*positions {
                                for c in 0..*cin_g {
                                    let plane = (gi * cin_g + c) * spatial;
                                    for q in 0..*kq {
                                        let t = table[p * kq + q];
                                        cols[p * kk + c * kq + q] =
                                            if t == u32::MAX { 0.0 } else { x[plane + t as usize] };
                                    }
                                }
                            }
                            let os = gi * out_g..(gi + 1) * out_g;
                            self.kernels.linear.linear(
                                MatRef::new(cols, *positions, kk, kk),
                                &w.rows_range(os.clone()),
                                bias.map(|b| &b[os.clone()]),
                                None,
                                MatMut::new(tmp, *positions, *out_g, *out_g),
                                lin,
                            );
                            for o in 0..*out_g {
                                for p in 0..*positions {
                                    out[(os.start + o) * positions + p] = tmp[p * out_g + o];
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// `i` as an index into an axis of `d` (negative counts from the end, once).
fn wrap(i: i64, d: usize) -> Option<usize> {
    let j = if i < 0 { i.checked_add(d as i64)? } else { i };
    (j >= 0 && (j as u64) < d as u64).then_some(j as usize)
}

fn copy_walk<T: Copy>(w: &Walk<2>, dst: &mut [T], db: usize, src: &[T], sb: usize) {
    w.runs(|off, len, s| {
        let (d0, s0) = (db + off[0], sb + off[1]);
        if s[0] == 1 && s[1] == 1 {
            dst[d0..d0 + len].copy_from_slice(&src[s0..s0 + len]);
        } else {
            for j in 0..len {
                dst[d0 + j * s[0]] = src[s0 + j * s[1]];
            }
        }
    });
}

/// `y = f(a, b)` over a broadcast walk. The common runs — both operands contiguous, or
/// one of them a broadcast scalar — are plain slice loops the compiler vectorizes; other
/// strides take the indexed loop.
#[inline]
fn zip_walk<A: Copy, O>(w: &Walk<3>, y: &mut [O], a: &[A], b: &[A], f: impl Fn(A, A) -> O) {
    w.runs(|off, len, s| {
        let y = &mut y[off[0]..];
        match s {
            [1, 1, 1] => {
                let (y, a, b) = (&mut y[..len], &a[off[1]..off[1] + len], &b[off[2]..off[2] + len]);
                for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                    *y = f(a, b);
                }
            }
            [1, 1, 0] => {
                let (y, a, b) = (&mut y[..len], &a[off[1]..off[1] + len], b[off[2]]);
                for (y, &a) in y.iter_mut().zip(a) {
                    *y = f(a, b);
                }
            }
            [1, 0, 1] => {
                let (y, a, b) = (&mut y[..len], a[off[1]], &b[off[2]..off[2] + len]);
                for (y, &b) in y.iter_mut().zip(b) {
                    *y = f(a, b);
                }
            }
            _ => {
                for j in 0..len {
                    y[j * s[0]] = f(a[off[1] + j * s[1]], b[off[2] + j * s[2]]);
                }
            }
        }
    });
}

fn mask(c: bool) -> f32 {
    if c { 1.0 } else { 0.0 }
}

fn binary_f32(op: BinaryOp, w: &Walk<3>, y: &mut [f32], a: &[f32], b: &[f32]) {
    match op {
        BinaryOp::Add => zip_walk(w, y, a, b, |x, z| x + z),
        BinaryOp::Sub => zip_walk(w, y, a, b, |x, z| x - z),
        BinaryOp::Mul => zip_walk(w, y, a, b, |x, z| x * z),
        BinaryOp::Div => zip_walk(w, y, a, b, |x, z| x / z),
        BinaryOp::Pow => zip_walk(w, y, a, b, libm::powf),
        BinaryOp::Min => zip_walk(w, y, a, b, |x, z| if x.is_nan() || z.is_nan() { f32::NAN } else { x.min(z) }),
        BinaryOp::Max => zip_walk(w, y, a, b, |x, z| if x.is_nan() || z.is_nan() { f32::NAN } else { x.max(z) }),
        BinaryOp::Equal => zip_walk(w, y, a, b, |x, z| mask(x == z)),
        BinaryOp::Less => zip_walk(w, y, a, b, |x, z| mask(x < z)),
        BinaryOp::LessEqual => zip_walk(w, y, a, b, |x, z| mask(x <= z)),
        BinaryOp::Greater => zip_walk(w, y, a, b, |x, z| mask(x > z)),
        BinaryOp::GreaterEqual => zip_walk(w, y, a, b, |x, z| mask(x >= z)),
        BinaryOp::And => zip_walk(w, y, a, b, |x, z| mask(x != 0.0 && z != 0.0)),
        BinaryOp::Or => zip_walk(w, y, a, b, |x, z| mask(x != 0.0 || z != 0.0)),
        BinaryOp::Xor => zip_walk(w, y, a, b, |x, z| mask((x != 0.0) != (z != 0.0))),
        BinaryOp::Prelu => zip_walk(w, y, a, b, |x, z| if x >= 0.0 { x } else { x * z }),
    }
}

fn binary_i64_cmp(op: BinaryOp, w: &Walk<3>, y: &mut [f32], a: &[i64], b: &[i64]) {
    match op {
        BinaryOp::Equal => zip_walk(w, y, a, b, |x, z| mask(x == z)),
        BinaryOp::Less => zip_walk(w, y, a, b, |x, z| mask(x < z)),
        BinaryOp::LessEqual => zip_walk(w, y, a, b, |x, z| mask(x <= z)),
        BinaryOp::Greater => zip_walk(w, y, a, b, |x, z| mask(x > z)),
        _ => zip_walk(w, y, a, b, |x, z| mask(x >= z)),
    }
}

/// Returns false on a division by zero.
fn binary_i64(op: BinaryOp, w: &Walk<3>, y: &mut [i64], a: &[i64], b: &[i64]) -> bool {
    match op {
        BinaryOp::Add => zip_walk(w, y, a, b, i64::wrapping_add),
        BinaryOp::Sub => zip_walk(w, y, a, b, i64::wrapping_sub),
        BinaryOp::Mul => zip_walk(w, y, a, b, i64::wrapping_mul),
        BinaryOp::Min => zip_walk(w, y, a, b, i64::min),
        BinaryOp::Max => zip_walk(w, y, a, b, i64::max),
        BinaryOp::Div => {
            let mut ok = true;
            w.runs(|off, len, s| {
                for j in 0..len {
                    let (x, z) = (a[off[1] + j * s[1]], b[off[2] + j * s[2]]);
                    y[off[0] + j * s[0]] = match x.checked_div(z) {
                        Some(q) => q,
                        None if z == -1 => x.wrapping_neg(),
                        None => {
                            ok = false;
                            0
                        }
                    };
                }
            });
            return ok;
        }
        // The shape rules admit no other i64 op.
        _ => return false,
    }
    true
}

/// Whether `a` strictly precedes `b` in a top-k order (NaN counts as the largest).
fn f32_precedes(a: f32, b: f32, largest: bool) -> bool {
    if largest { (a.is_nan() && !b.is_nan()) || a > b } else { (!a.is_nan() && b.is_nan()) || a < b }
}

/// The first `order.len()` lane positions `0..n` under `better(a, b)` ("a strictly
/// precedes b"), sorted, into `order` (as f32 bit patterns; ties keep the lower position
/// first). Returns how many were found (`min(k, n)`).
fn top_k(n: usize, better: impl Fn(usize, usize) -> bool, order: &mut [f32]) -> usize {
    let k = order.len();
    let pos_of = |v: f32| v.to_bits() as usize;
    let mut filled = 0;
    for j in 0..n {
        if filled == k && !better(j, pos_of(order[k - 1])) {
            continue;
        }
        // Insert after every element it does not strictly precede (keeps ties stable).
        let mut pos = filled.min(k - 1);
        while pos > 0 && better(j, pos_of(order[pos - 1])) {
            pos -= 1;
        }
        let mut t = filled.min(k - 1);
        while t > pos {
            order[t] = order[t - 1];
            t -= 1;
        }
        order[pos] = f32::from_bits(j as u32);
        filled = (filled + 1).min(k);
    }
    filled
}
