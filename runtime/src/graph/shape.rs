//! Row-shape inference: what each op produces from the row shapes and element types of
//! its inputs.
//!
//! The importer writes every node's shape into the file, and the parser recomputes it
//! here and refuses a file where the two disagree, so the engine can size buffers and
//! index tensors from shapes that are known to be consistent. The rules are the ONNX
//! ones restricted to a single example (the batch is never an axis of a row shape).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{Op, ReduceOp, UnaryOp, ValueType};

/// A value as an op sees it.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    /// Row shape.
    pub shape: &'a [usize],
    /// Element type.
    pub dtype: ValueType,
}

/// Element count of a shape, `None` on overflow.
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// Numpy broadcasting of two shapes (right-aligned; a dim of 1 stretches).
pub fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Row-major strides of `shape`.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Strides that read `shape` broadcast to rank-`rank` output `out` (0 on stretched axes).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = strides(shape);
    let pad = out.len() - shape.len();
    (0..out.len()).map(|i| if i < pad || shape[i - pad] == 1 && out[i] != 1 { 0 } else { own[i - pad] }).collect()
}

/// The shape and type of a tensor op's output. Covers the ops whose result depends on
/// their inputs' shapes only; `declared` is the shape the file states (required by
/// `reshape` and `tile`, whose output shape is an attribute). Weight-reading ops get the
/// weight's `[rows, cols]` in `weight`.
pub fn infer(
    op: &Op,
    ins: &[Operand<'_>],
    declared: Option<&[usize]>,
    weight: Option<(usize, usize)>,
) -> Result<(Vec<usize>, ValueType), String> {
    let arity = |n: usize| -> Result<(), String> {
        if ins.len() == n { Ok(()) } else { Err(format!("{} takes {n} inputs, got {}", op.name(), ins.len())) }
    };
    let f32_only = |o: &Operand<'_>| -> Result<(), String> {
        if o.dtype == ValueType::F32 { Ok(()) } else { Err(format!("{} needs f32 inputs, got i64", op.name())) }
    };
    let axis_ok = |axis: usize, rank: usize| -> Result<(), String> {
        if axis < rank { Ok(()) } else { Err(format!("axis {axis} is out of range for rank {rank}")) }
    };
    match op {
        Op::Embedding { .. } => {
            arity(1)?;
            if ins[0].dtype != ValueType::I64 {
                return Err("embedding ids must be i64".into());
            }
            let (_, cols) = weight.ok_or("embedding needs a table")?;
            let mut s = ins[0].shape.to_vec();
            s.push(cols);
            Ok((s, ValueType::F32))
        }
        Op::Reshape => {
            arity(1)?;
            let d = declared.ok_or("reshape needs a declared `shape`")?;
            if elements(d) != elements(ins[0].shape) {
                return Err(format!("cannot reshape {:?} to {d:?}", ins[0].shape));
            }
            Ok((d.to_vec(), ins[0].dtype))
        }
        Op::Transpose { perm } => {
            arity(1)?;
            let s = ins[0].shape;
            let mut seen = vec![false; s.len()];
            if perm.len() != s.len() || perm.iter().any(|&p| p >= s.len() || core::mem::replace(&mut seen[p], true)) {
                return Err(format!("perm {perm:?} is not a permutation of rank {}", s.len()));
            }
            Ok((perm.iter().map(|&p| s[p]).collect(), ins[0].dtype))
        }
        Op::Slice { axis, start, end, step } => {
            arity(1)?;
            let mut s = ins[0].shape.to_vec();
            axis_ok(*axis, s.len())?;
            if *step == 0 || start > end || *end > s[*axis] {
                return Err(format!("slice {start}..{end} step {step} of an axis of {}", s[*axis]));
            }
            s[*axis] = (end - start).div_ceil(*step);
            Ok((s, ins[0].dtype))
        }
        Op::Gather { axis } => {
            arity(2)?;
            let (data, idx) = (ins[0].shape, ins[1]);
            axis_ok(*axis, data.len())?;
            if idx.dtype != ValueType::I64 {
                return Err("gather indices must be i64".into());
            }
            let mut s = data[..*axis].to_vec();
            s.extend_from_slice(idx.shape);
            s.extend_from_slice(&data[axis + 1..]);
            Ok((s, ins[0].dtype))
        }
        Op::GatherElements { axis } => {
            arity(2)?;
            let (data, idx) = (ins[0].shape, ins[1]);
            axis_ok(*axis, data.len())?;
            if idx.dtype != ValueType::I64 || idx.shape.len() != data.len() {
                return Err("gather_elements indices must be i64 of the data's rank".into());
            }
            if idx.shape.iter().zip(data).enumerate().any(|(i, (&n, &d))| i != *axis && n > d) {
                return Err(format!("indices {:?} exceed data {data:?}", idx.shape));
            }
            Ok((idx.shape.to_vec(), ins[0].dtype))
        }
        Op::Binary(b) => {
            arity(2)?;
            let s = broadcast(ins[0].shape, ins[1].shape)
                .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", ins[0].shape, ins[1].shape))?;
            if ins[0].dtype != ins[1].dtype {
                return Err(format!("{} of {} and {}", b.as_str(), ins[0].dtype.as_str(), ins[1].dtype.as_str()));
            }
            if ins[0].dtype == ValueType::I64 && !b.accepts_i64() {
                return Err(format!("{} is not defined on i64", b.as_str()));
            }
            let dtype = if b.is_comparison() { ValueType::F32 } else { ins[0].dtype };
            Ok((s, dtype))
        }
        Op::Where => {
            arity(3)?;
            f32_only(&ins[0])?;
            if ins[1].dtype != ins[2].dtype {
                return Err("where branches differ in type".into());
            }
            let s = broadcast(ins[0].shape, ins[1].shape)
                .and_then(|s| broadcast(&s, ins[2].shape))
                .ok_or("where operands do not broadcast")?;
            Ok((s, ins[1].dtype))
        }
        Op::Unary(u) => {
            arity(1)?;
            if ins[0].dtype == ValueType::I64 && !matches!(u, UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign) {
                return Err(format!("{} needs f32", u.as_str()));
            }
            Ok((ins[0].shape.to_vec(), ins[0].dtype))
        }
        Op::Cast { to } => {
            arity(1)?;
            Ok((ins[0].shape.to_vec(), *to))
        }
        Op::Reduce { op: r, axes, keepdims } => {
            arity(1)?;
            if ins[0].dtype == ValueType::I64 && !matches!(r, ReduceOp::Sum | ReduceOp::Max | ReduceOp::Min) {
                return Err(format!("reduce {} needs f32", r.as_str()));
            }
            let s = ins[0].shape;
            if axes.is_empty() || axes.windows(2).any(|w| w[0] >= w[1]) || axes.iter().any(|&a| a >= s.len()) {
                return Err(format!("axes {axes:?} must be ascending and within rank {}", s.len()));
            }
            let out = (0..s.len())
                .filter_map(|i| match (axes.contains(&i), keepdims) {
                    (false, _) => Some(s[i]),
                    (true, true) => Some(1),
                    (true, false) => None,
                })
                .collect();
            Ok((out, ins[0].dtype))
        }
        Op::Softmax { axis, .. } => {
            arity(1)?;
            f32_only(&ins[0])?;
            axis_ok(*axis, ins[0].shape.len())?;
            Ok((ins[0].shape.to_vec(), ValueType::F32))
        }
        Op::MatMul => {
            arity(2)?;
            f32_only(&ins[0])?;
            f32_only(&ins[1])?;
            let (a, b) = (ins[0].shape, ins[1].shape);
            if a.len() < 2 || b.len() < 2 {
                return Err(format!("matmul needs rank ≥ 2 operands, got {a:?} and {b:?}"));
            }
            let (m, k) = (a[a.len() - 2], a[a.len() - 1]);
            let (k2, n) = (b[b.len() - 2], b[b.len() - 1]);
            if k != k2 {
                return Err(format!("matmul of {a:?} and {b:?}: inner dims differ"));
            }
            let mut s = broadcast(&a[..a.len() - 2], &b[..b.len() - 2])
                .ok_or_else(|| format!("matmul leading dims of {a:?} and {b:?} do not broadcast"))?;
            s.push(m);
            s.push(n);
            Ok((s, ValueType::F32))
        }
        Op::Tile => {
            arity(1)?;
            let d = declared.ok_or("tile needs a declared `shape`")?;
            let s = ins[0].shape;
            if d.len() != s.len() || d.iter().zip(s).any(|(&o, &i)| i == 0 || o % i != 0) {
                return Err(format!("cannot tile {s:?} to {d:?}"));
            }
            Ok((d.to_vec(), ins[0].dtype))
        }
        Op::Pad { pads, .. } => {
            arity(1)?;
            f32_only(&ins[0])?;
            let s = ins[0].shape;
            if pads.len() != s.len() {
                return Err(format!("{} pads for rank {}", pads.len(), s.len()));
            }
            let out: Option<Vec<usize>> =
                s.iter().zip(pads).map(|(&d, &(a, b))| d.checked_add(a)?.checked_add(b)).collect();
            Ok((out.ok_or("padded shape overflows")?, ValueType::F32))
        }
        Op::TopK { axis, k, indices, .. } => {
            arity(1)?;
            let mut s = ins[0].shape.to_vec();
            axis_ok(*axis, s.len())?;
            if *k == 0 || *k > s[*axis] || u32::try_from(s[*axis]).is_err() {
                return Err(format!("top-{k} of an axis of {}", s[*axis]));
            }
            s[*axis] = *k;
            Ok((s, if *indices { ValueType::I64 } else { ins[0].dtype }))
        }
        Op::Conv { kernel, strides, pads, dilations, group, .. } => {
            arity(1)?;
            f32_only(&ins[0])?;
            let s = ins[0].shape;
            let n = kernel.len();
            if n == 0 || s.len() != n + 1 || strides.len() != n || pads.len() != n || dilations.len() != n {
                return Err(format!("conv of a {s:?} row with a {n}-d kernel"));
            }
            let (rows, cols) = weight.ok_or("conv needs a weight")?;
            let per_group = s[0].checked_div(*group).filter(|_| *group > 0 && s[0].is_multiple_of(*group));
            let per_group = per_group.ok_or_else(|| format!("{} channels in {group} groups", s[0]))?;
            if elements(kernel).and_then(|k| k.checked_mul(per_group)) != Some(cols) || rows % group != 0 {
                return Err(format!("weight [{rows}, {cols}] does not fit {per_group} channels × kernel {kernel:?}"));
            }
            let mut out = vec![rows];
            for i in 0..n {
                // Every size comes from the file: no arithmetic may overflow.
                let span =
                    kernel[i].checked_sub(1).and_then(|k| dilations[i].checked_mul(k)).and_then(|x| x.checked_add(1));
                let padded = s[i + 1].checked_add(pads[i].0).and_then(|x| x.checked_add(pads[i].1));
                match (span, padded) {
                    (Some(span), Some(padded)) if strides[i] > 0 && span <= padded => {
                        out.push((padded - span) / strides[i] + 1)
                    }
                    _ => return Err(format!("kernel {kernel:?} does not fit row {s:?}")),
                }
            }
            Ok((out, ValueType::F32))
        }
        Op::Concat { axis: Some(axis) } => {
            let first = ins.first().ok_or("concat needs inputs")?;
            axis_ok(*axis, first.shape.len())?;
            let mut out = first.shape.to_vec();
            for o in &ins[1..] {
                let same_rest = o.shape.len() == out.len()
                    && o.shape.iter().zip(&out).enumerate().all(|(i, (a, b))| i == *axis || a == b);
                if !same_rest || o.dtype != first.dtype {
                    return Err(format!("concat of {:?} and {:?} along axis {axis}", first.shape, o.shape));
                }
                out[*axis] = out[*axis].checked_add(o.shape[*axis]).ok_or("concat overflows")?;
            }
            Ok((out, first.dtype))
        }
        _ => Err(format!("{} has no tensor shape rule", op.name())),
    }
}
