//! The portable reference kernels.
//!
//! Plain loops in f32 with sequential accumulation: the definition every fast path is
//! tested against, and the fallback on CPUs without a fast path (`GRAFT_KERNELS=scalar`
//! forces it). They dequantize a weight row once and reuse it across the batch, so they
//! are slow but not pathological.

use super::activation;
use super::{DotKernel, ElementwiseKernel, EmbeddingBagKernel, LinearKernel, NormKernel, WeightMatrix};
use crate::graph::{Activation, BagMode};
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
