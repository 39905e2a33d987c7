//! The loaded adapter and its hooks: the unmerged forward (`linear_delta`), the explicit
//! merge, and the inspection summary.
//!
//! The forward never allocates: `t = c·x·Aᵀ` (and, for DoRA, `u` and the per-row factors)
//! live in the scratch the host hands over, and the host kernels do both small GEMMs. The
//! shrink reads `A` in its stored format (f32, f16 or bf16 straight from the mapping). The
//! expand reads `Bᵀ`, transposed to f32 once at load, through the host's `linear_t`: the
//! reduction is only `rank` long, and through the `[out, in]` linear kernel `B` would be
//! transposed into scratch on every call. A host older than `linear_t` gets the stored
//! `B` through `linear`, with the same result up to summation order.

use core::fmt;

use abi_stable::std_types::{RResult, RSliceMut, RString, RVec};
use graft_plugin_abi::{
    Adapter, AdapterInfo, DeviceParams, ErrorCode, HookKind, HostKernelsRef, LinearDelta, MatView, MatViewMut,
    PluginError, Target, TargetInfo, WeightView, guard,
};

use crate::dora::Dora;
use crate::tensors::{Backing, Tensor};
use crate::{KIND, TENSOR_FILE};

/// One adapted linear module.
#[derive(Debug)]
pub(crate) struct Module {
    /// The module path from the tensor keys.
    pub path: String,
    /// The graph node it resolved to.
    pub node: u32,
    /// The node's name.
    pub node_name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub rank: usize,
    /// The scale `s` (override, or `alpha / r`, or `alpha / sqrt(r)`).
    pub scale: f64,
    pub variant: String,
    /// `r × in`.
    pub a: Tensor,
    /// `out × r`.
    pub b: Tensor,
    /// `Bᵀ` as f32, `r × out` (owned; exact for every stored format).
    pub bt: Vec<f32>,
    /// `lora_B.bias` (out), with `lora_bias`.
    pub bias: Option<Vec<f32>>,
    /// With `use_dora`.
    pub dora: Option<Dora>,
    /// Parameter bytes as stored.
    pub bytes: u64,
}

/// A loaded LoRA / rsLoRA / DoRA adapter. Immutable; implements the sabi [`Adapter`].
pub struct LoraAdapter {
    pub(crate) source: String,
    pub(crate) backing: Backing,
    pub(crate) modules: Vec<Module>,
    pub(crate) notes: Vec<String>,
    pub(crate) mapped_bytes: u64,
    pub(crate) owned_bytes: u64,
}

impl fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoraAdapter")
            .field("source", &self.source)
            .field("modules", &self.modules.iter().map(|m| m.path.as_str()).collect::<Vec<_>>())
            .field("mapped_bytes", &self.mapped_bytes)
            .field("owned_bytes", &self.owned_bytes)
            .finish_non_exhaustive()
    }
}

fn bad_call(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::BAD_CALL, field, message)
}

fn internal(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::INTERNAL, field, message)
}

impl Module {
    fn views<'a>(&'a self, backing: &'a [u8]) -> Result<(WeightView<'a>, WeightView<'a>), PluginError> {
        let a = self.a.weight_view(backing, self.rank, self.in_features);
        let b = self.b.weight_view(backing, self.out_features, self.rank);
        a.zip(b).ok_or_else(|| internal(&self.path, "adapter tensors no longer match their validated shapes"))
    }

    /// Floats of scratch before the kernels' share.
    fn own_scratch(&self, rows: usize) -> Option<usize> {
        let t = rows.checked_mul(self.rank)?;
        if self.dora.is_some() {
            rows.checked_mul(self.out_features)?.checked_add(self.out_features)?.checked_add(t)
        } else {
            Some(t)
        }
    }

    /// Floats of scratch the host kernels need: the shrink's, and the expand's when it
    /// goes through `linear` (a host without `linear_t`).
    fn kernel_scratch(&self, rows: usize, kernels: HostKernelsRef, a: WeightView<'_>, b: WeightView<'_>) -> usize {
        let ks = kernels.scratch_floats();
        if kernels.linear_t().is_some() { ks(a, rows) } else { ks(a, rows).max(ks(b, rows)) }
    }

    fn scratch_floats(&self, rows: usize, kernels: HostKernelsRef, backing: &[u8]) -> Option<usize> {
        let (a, b) = self.views(backing).ok()?;
        self.own_scratch(rows)?.checked_add(self.kernel_scratch(rows, kernels, a, b))
    }

    /// `y = t·Bᵀ` (`accumulate`: `y += t·Bᵀ`), through `linear_t` and the load-time `Bᵀ`
    /// when the host has it, else through `linear` and the stored `B`.
    fn expand(
        &self,
        kernels: HostKernelsRef,
        t: MatView<'_>,
        b: WeightView<'_>,
        accumulate: bool,
        y: MatViewMut<'_>,
        scratch: &mut [f32],
    ) -> Result<(), PluginError> {
        let status = match kernels.linear_t() {
            Some(linear_t) => {
                let bt = MatView::new(&self.bt, self.rank, self.out_features, self.out_features)
                    .ok_or_else(|| internal(&self.path, "Bᵀ no longer matches the module's shape"))?;
                linear_t(t, bt, 1.0, accumulate, y)
            }
            None => (kernels.linear())(t, b, 1.0, accumulate, y, RSliceMut::from_mut_slice(scratch)),
        };
        status.check(&self.path, "t·Bᵀ")
    }
}

impl LoraAdapter {
    fn module(&self, target: u32) -> Result<&Module, PluginError> {
        self.modules.get(target as usize).ok_or_else(|| {
            bad_call("target", format!("target {target} out of range: the adapter has {} targets", self.modules.len()))
        })
    }

    /// The module paths, in target order.
    pub fn modules(&self) -> impl Iterator<Item = &str> {
        self.modules.iter().map(|m| m.path.as_str())
    }

    fn delta(&self, mut call: LinearDelta<'_>) -> Result<(), PluginError> {
        let m = self.module(call.target)?;
        let field = m.path.as_str();
        let rows = call.x.rows();
        let (inf, out, r) = (m.in_features, m.out_features, m.rank);
        if call.x.cols() != inf {
            return Err(bad_call(field, format!("x has {} columns, the layer has {inf} inputs", call.x.cols())));
        }
        if call.y.rows() != rows || call.y.cols() != out {
            return Err(bad_call(field, format!("y is {}×{}, expected {rows}×{out}", call.y.rows(), call.y.cols())));
        }
        if !call.scale.is_finite() {
            return Err(bad_call(field, format!("scale multiplier {} is not finite", call.scale)));
        }
        let base_bias = call.base_bias.as_ref().map(|b| b.as_slice()).into_option();
        if let Some(b) = base_bias
            && b.len() != out
        {
            return Err(bad_call(field, format!("base bias has {} values, expected {out}", b.len())));
        }
        if rows == 0 || out == 0 {
            return Ok(());
        }
        let backing = self.backing.bytes();
        let (wa, wb) = m.views(backing)?;
        let linear = call.kernels.linear();
        let need = m
            .own_scratch(rows)
            .and_then(|n| n.checked_add(m.kernel_scratch(rows, call.kernels, wa, wb)))
            .ok_or_else(|| bad_call(field, "scratch size overflows"))?;
        let scratch = call.scratch.as_mut_slice();
        if scratch.len() < need {
            return Err(bad_call(field, format!("scratch has {} floats, the call needs {need}", scratch.len())));
        }
        let t_len = rows * r;
        let (u_len, f_len) = if m.dora.is_some() { (rows * out, out) } else { (0, 0) };
        let (t_buf, rest) = scratch.split_at_mut(t_len);
        let (u_buf, rest) = rest.split_at_mut(u_len);
        let (f_buf, kscratch) = rest.split_at_mut(f_len);

        let c = m.scale * f64::from(call.scale);
        if !c.is_finite() || c.abs() > f64::from(f32::MAX) {
            return Err(bad_call(
                field,
                format!("scale {:e} × row scale {:e} = {c:e} overflows f32", m.scale, call.scale),
            ));
        }
        let cf = c as f32;
        let t = MatViewMut::new(t_buf, rows, r, r).ok_or_else(|| internal(field, "t view"))?;
        linear(call.x, wa, cf, false, t, RSliceMut::from_mut_slice(kscratch)).check(field, "x·Aᵀ")?;
        let t = MatView::new(t_buf, rows, r, r).ok_or_else(|| internal(field, "t view"))?;

        let Some(dora) = &m.dora else {
            m.expand(call.kernels, t, wb, true, call.y.reborrow(), kscratch)?;
            if let Some(bias) = &m.bias {
                for row in 0..rows {
                    for (y, &b) in call.y.row_mut(row).iter_mut().zip(bias) {
                        *y += cf * b;
                    }
                }
            }
            return Ok(());
        };

        // DoRA: u = t·Bᵀ (+ c·b_B); y ← f ⊙ (y − b) + b + f ⊙ u.
        let u = MatViewMut::new(u_buf, rows, out, out).ok_or_else(|| internal(field, "u view"))?;
        m.expand(call.kernels, t, wb, false, u, kscratch)?;
        let factors: &[f32] = if call.scale == 1.0 {
            &dora.factor_at_one
        } else {
            dora.factors_at(c, f_buf).map_err(|o| {
                PluginError::new(
                    ErrorCode::NOT_FINITE,
                    field,
                    format!("DoRA row norm ‖W + c·BA‖ is zero at output row {o} for effective scale {c}"),
                )
            })?;
            f_buf
        };
        for (row, u_row) in u_buf.chunks_exact(out).enumerate().take(rows) {
            let y = call.y.row_mut(row);
            for o in 0..out {
                let b = base_bias.map_or(0.0, |b| b[o]);
                let lora_b = m.bias.as_ref().map_or(0.0, |bb| cf * bb[o]);
                let f = factors[o];
                y[o] = f * (y[o] - b) + b + f * (u_row[o] + lora_b);
            }
        }
        Ok(())
    }

    fn merge_into(
        &self,
        target: u32,
        mut weight: MatViewMut<'_>,
        mut bias: RSliceMut<'_, f32>,
    ) -> Result<(), PluginError> {
        let m = self.module(target)?;
        let field = m.path.as_str();
        let (inf, out, r) = (m.in_features, m.out_features, m.rank);
        if weight.rows() != out || weight.cols() != inf {
            return Err(bad_call(
                field,
                format!("weight is {}×{}, expected {out}×{inf}", weight.rows(), weight.cols()),
            ));
        }
        if bias.len() != out {
            return Err(bad_call(field, format!("bias has {} values, expected {out}", bias.len())));
        }
        let backing = self.backing.bytes();
        let a = m.a.to_f32_vec(backing).ok_or_else(|| internal(field, "lora_A unreadable"))?;
        let b = m.b.to_f32_vec(backing).ok_or_else(|| internal(field, "lora_B unreadable"))?;
        let s = m.scale;
        let bias = bias.as_mut_slice();
        for o in 0..out {
            let f = m.dora.as_ref().map(|d| f64::from(d.factor_at_one[o]));
            let row = weight.row_mut(o);
            for (i, w) in row.iter_mut().enumerate() {
                let d: f64 = (0..r).map(|k| f64::from(b[o * r + k]) * f64::from(a[k * inf + i])).sum();
                let merged = f64::from(*w) + s * d;
                *w = match f {
                    Some(f) => (f * merged) as f32,
                    None => merged as f32,
                };
            }
            if let Some(bb) = &m.bias {
                // Under DoRA the LoRA bias goes through the factor too (it is part of `u`).
                bias[o] += (f.unwrap_or(1.0) * s * f64::from(bb[o])) as f32;
            }
        }
        Ok(())
    }
}

impl Adapter for LoraAdapter {
    fn targets(&self) -> RVec<Target> {
        self.modules.iter().map(|m| Target::new(m.node, HookKind::LinearDelta)).collect()
    }

    fn info(&self) -> AdapterInfo {
        AdapterInfo {
            kind: RString::from(crate::KIND),
            source: RString::from(self.source.as_str()),
            targets: self
                .modules
                .iter()
                .map(|m| TargetInfo {
                    module: RString::from(m.path.as_str()),
                    node: RString::from(m.node_name.as_str()),
                    rank: m.rank as u32,
                    scale: m.scale as f32,
                    variant: RString::from(m.variant.as_str()),
                    bytes: m.bytes,
                })
                .collect(),
            mapped_bytes: self.mapped_bytes,
            owned_bytes: self.owned_bytes,
            notes: self.notes.iter().map(|n| RString::from(n.as_str())).collect(),
        }
    }

    fn scratch_floats(&self, target: u32, rows: usize, kernels: HostKernelsRef) -> usize {
        // An unknown target gets 0 here and BAD_CALL from the call; a size that overflows
        // gets usize::MAX, which no host can allocate.
        self.modules
            .get(target as usize)
            .map_or(0, |m| m.scratch_floats(rows, kernels, self.backing.bytes()).unwrap_or(usize::MAX))
    }

    fn linear_delta(&self, call: LinearDelta<'_>) -> RResult<(), PluginError> {
        guard(KIND, "linear_delta", || {
            let result = self.delta(call);
            // A mapped file that changed during the call: its output is discarded.
            self.backing.check(TENSOR_FILE)?;
            result
        })
    }

    fn merge(&self, target: u32, weight: MatViewMut<'_>, bias: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        guard(KIND, "merge", || {
            let result = self.merge_into(target, weight, bias);
            self.backing.check(TENSOR_FILE)?;
            result
        })
    }

    fn device_params(&self, target: u32) -> RResult<DeviceParams, PluginError> {
        guard(KIND, "device_params", || self.device_params_of(target))
    }
}

impl LoraAdapter {
    /// LoRA, rsLoRA and explicit-scale (ALLoRA-style) modules export `A`, `B` and their
    /// scale as f32. DoRA (its output depends on column norms of the merged weight) and
    /// `lora_bias` have no device form yet and are refused with `UNSUPPORTED` naming the
    /// module, so a GPU session rejects the adapter instead of running it wrong.
    fn device_params_of(&self, target: u32) -> Result<DeviceParams, PluginError> {
        let m = self.module(target)?;
        if m.dora.is_some() {
            return Err(PluginError::new(ErrorCode::UNSUPPORTED, &m.path, "DoRA adapters do not run on GPU sessions"));
        }
        if m.bias.is_some() {
            return Err(PluginError::new(ErrorCode::UNSUPPORTED, &m.path, "lora_bias does not run on GPU sessions"));
        }
        let backing = self.backing.bytes();
        let (a, b) =
            m.a.to_f32_vec(backing)
                .zip(m.b.to_f32_vec(backing))
                .ok_or_else(|| internal(&m.path, "adapter tensors no longer match their validated shapes"))?;
        if a.len() != m.rank * m.in_features || b.len() != m.out_features * m.rank {
            return Err(internal(&m.path, "adapter tensors no longer match their validated shapes"));
        }
        Ok(DeviceParams::LowRank { a: a.into(), b: b.into(), rank: m.rank as u32, scale: m.scale as f32 })
    }
}
