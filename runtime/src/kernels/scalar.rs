//! The portable reference kernels.
//!
//! Plain loops in f32 with sequential accumulation: the definition every fast path is
//! tested against, and the fallback on CPUs without a fast path (`GRAFT_KERNELS=scalar`
//! forces it). They dequantize a weight row once and reuse it across the batch, so they
//! are slow but not pathological.

use super::activation;
use super::{DotKernel, ElementwiseKernel, EmbeddingBagKernel, LinearKernel, NormKernel, WeightMatrix};
use crate::graph::{Activation, BagMode, ReduceOp, UnaryOp};
use crate::view::{MatMut, MatRef};

/// The reference implementation of every family.
#[derive(Debug)]
pub struct Scalar;

impl LinearKernel for Scalar {
    fn scratch_len(&self, w: &WeightMatrix<'_>, _rows: usize) -> usize {
        w.cols
    }

    fn linear(
        &self,
        x: MatRef<'_>,
        w: &WeightMatrix<'_>,
        bias: Option<&[f32]>,
        act: Option<Activation>,
        mut y: MatMut<'_>,
        scratch: &mut [f32],
    ) {
        let wrow = &mut scratch[..w.cols];
        for o in 0..w.rows {
            w.dequant_row(o, wrow);
            let b = bias.map_or(0.0, |b| b[o]);
            for m in 0..x.rows() {
                let mut acc = 0.0f32;
                for (&a, &b) in x.row(m).iter().zip(wrow.iter()) {
                    acc += a * b;
                }
                let v = acc + b;
                y.row_mut(m)[o] = match act {
                    Some(a) => activation::apply(a, v),
                    None => v,
                };
            }
        }
    }

    fn linear_accumulate(
        &self,
        x: MatRef<'_>,
        w: &WeightMatrix<'_>,
        alpha: f32,
        mut y: MatMut<'_>,
        scratch: &mut [f32],
    ) {
        let wrow = &mut scratch[..w.cols];
        for o in 0..w.rows {
            w.dequant_row(o, wrow);
            for m in 0..x.rows() {
                let mut acc = 0.0f32;
                for (&a, &b) in x.row(m).iter().zip(wrow.iter()) {
                    acc += a * b;
                }
                y.row_mut(m)[o] += alpha * acc;
            }
        }
    }
}

impl EmbeddingBagKernel for Scalar {
    fn bag(&self, table: &WeightMatrix<'_>, ids: &[i64], mode: BagMode, out: &mut [f32]) {
        let out = &mut out[..table.cols];
        out.fill(0.0);
        for &id in ids {
            table.accumulate_row(id as usize, out);
        }
        if mode == BagMode::Mean && !ids.is_empty() {
            let n = ids.len() as f32;
            out.iter_mut().for_each(|v| *v /= n);
        }
    }
}

impl ElementwiseKernel for Scalar {
    fn activate(&self, act: Activation, x: &mut [f32]) {
        x.iter_mut().for_each(|v| *v = activation::apply(act, *v));
    }

    fn add(&self, a: &[f32], b: &[f32], y: &mut [f32]) {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = a + b;
        }
    }

    fn mul(&self, a: &[f32], b: &[f32], y: &mut [f32]) {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = a * b;
        }
    }
}

impl DotKernel for Scalar {
    fn dot(&self, a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0.0, |acc, (&a, &b)| acc + a * b)
    }
}

impl NormKernel for Scalar {
    fn layer_norm(&self, x: &[f32], gamma: &[f32], beta: Option<&[f32]>, eps: f32, y: &mut [f32]) {
        let n = x.len() as f32;
        let mean = x.iter().sum::<f32>() / n;
        let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / libm::sqrtf(var + eps);
        for (i, (y, &v)) in y.iter_mut().zip(x).enumerate() {
            let shift = beta.map_or(0.0, |b| b[i]);
            *y = (v - mean) * inv * gamma[i] + shift;
        }
    }
}

impl super::SoftmaxKernel for Scalar {
    fn softmax(&self, x: &mut [f32], log: bool) {
        reference_softmax(x, log);
    }
}

/// The reference softmax: subtract the max, exponentiate, normalize.
pub(crate) fn reference_softmax(x: &mut [f32], log: bool) {
    if x.is_empty() {
        return;
    }
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        let e = libm::expf(*v - max);
        sum += e;
        if !log {
            *v = e;
        }
    }
    if log {
        let shift = max + libm::logf(sum);
        x.iter_mut().for_each(|v| *v -= shift);
    } else {
        let inv = 1.0 / sum;
        x.iter_mut().for_each(|v| *v *= inv);
    }
}

impl super::ReduceKernel for Scalar {
    fn reduce(&self, op: ReduceOp, x: &[f32]) -> f32 {
        match op {
            ReduceOp::Sum => x.iter().sum(),
            ReduceOp::Mean => x.iter().sum::<f32>() / x.len() as f32,
            ReduceOp::Max => x.iter().copied().fold(f32::NEG_INFINITY, |a, b| if b > a || b.is_nan() { b } else { a }),
            ReduceOp::Min => x.iter().copied().fold(f32::INFINITY, |a, b| if b < a || b.is_nan() { b } else { a }),
            ReduceOp::Prod => x.iter().product(),
            ReduceOp::L2 => libm::sqrtf(x.iter().map(|v| v * v).sum()),
            ReduceOp::L1 => x.iter().map(|v| v.abs()).sum(),
            ReduceOp::SumSquare => x.iter().map(|v| v * v).sum(),
            ReduceOp::MeanSquare => x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32,
            ReduceOp::LogSumExp => {
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if max == f32::NEG_INFINITY || !max.is_finite() {
                    return libm::logf(x.iter().map(|&v| libm::expf(v)).sum());
                }
                max + libm::logf(x.iter().map(|&v| libm::expf(v - max)).sum())
            }
        }
    }
}

impl super::MatMulKernel for Scalar {
    fn matmul(&self, a: &[f32], b: &[f32], c: &mut [f32], m: usize, k: usize, n: usize) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    acc += a[i * k + p] * b[p * n + j];
                }
                c[i * n + j] = acc;
            }
        }
    }
}

impl super::UnaryKernel for Scalar {
    fn unary(&self, op: UnaryOp, x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = unary(op, x);
        }
    }
}

/// One unary op on one value (the reference definition).
#[inline]
pub(crate) fn unary(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => libm::expf(x),
        UnaryOp::Log => libm::logf(x),
        UnaryOp::Sqrt => libm::sqrtf(x),
        UnaryOp::Rsqrt => 1.0 / libm::sqrtf(x),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Erf => libm::erff(x),
        UnaryOp::Floor => libm::floorf(x),
        UnaryOp::Ceil => libm::ceilf(x),
        UnaryOp::Round => libm::rintf(x),
        UnaryOp::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x
            }
        }
        UnaryOp::Not => {
            if x == 0.0 {
                1.0
            } else {
                0.0
            }
        }
        UnaryOp::Softplus => {
            // ln(1 + e^x) without overflow: x + ln(1 + e^-x) for large x.
            if x > 20.0 { x + libm::log1pf(libm::expf(-x)) } else { libm::log1pf(libm::expf(x)) }
        }
        UnaryOp::Sin => libm::sinf(x),
        UnaryOp::Cos => libm::cosf(x),
        UnaryOp::LeakyRelu(a) => {
            if x >= 0.0 {
                x
            } else {
                a * x
            }
        }
        UnaryOp::Clip(lo, hi) => {
            if x.is_nan() {
                x
            } else {
                x.max(lo).min(hi)
            }
        }
        UnaryOp::HardSigmoid(a, b) => (a * x + b).clamp(0.0, 1.0),
        UnaryOp::Elu(a) => {
            if x >= 0.0 {
                x
            } else {
                a * (libm::expf(x) - 1.0)
            }
        }
        UnaryOp::PowConst(p) => pow_const(x, p),
    }
}

/// `x^p` for a constant exponent: the small integer and half powers torch models use
/// (`x ** 2` in FM terms, `sqrt`) are exact products or roots, bit-identical to
/// `powf` where `powf` is correctly rounded, and far cheaper.
fn pow_const(x: f32, p: f32) -> f32 {
    match p {
        1.0 => x,
        2.0 => x * x,
        3.0 => x * x * x,
        0.5 => libm::sqrtf(x),
        -1.0 => 1.0 / x,
        _ => libm::powf(x, p),
    }
}
