//! The loaded adapter and its hooks: the unmerged forward (`linear_delta`), the explicit
//! merge, and the inspection summary.
//!
//! The forward never allocates: the interpolated vector `l'` of an output-scaling module
//! lives in the host's scratch, and a feedforward module's `m·x·W_Δᵀ` is one call of the
//! host's `linear` kernel on the cache built at load.

use core::fmt;

use abi_stable::std_types::{RResult, RSliceMut, RString, RVec};
use graft_plugin_abi::{
    Adapter, AdapterInfo, ErrorCode, HookKind, HostKernelsRef, LinearDelta, MatViewMut, PluginError, Target,
    TargetInfo, WeightView, guard,
};

use crate::KIND;

/// Where a module applies its vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scaling {
    /// `y = (x·Wᵀ + b) ⊙ l` (vector `[out, 1]`).
    Output,
    /// `y = (x ⊙ l)·Wᵀ + b` (vector `[1, in]`, PEFT's `feedforward_modules`).
    Feedforward,
}

impl Scaling {
    fn name(self) -> &'static str {
        match self {
            Scaling::Output => "ia3-output",
            Scaling::Feedforward => "ia3-feedforward",
        }
    }
}

/// One adapted linear module.
pub(crate) struct Module {
    /// The module path from the tensor key.
    pub path: String,
    /// The graph node it resolved to.
    pub node: u32,
    /// The node's name.
    pub node_name: String,
    pub in_features: usize,
    pub out_features: usize,
    pub scaling: Scaling,
    /// The vector `l` (`out` values for output scaling, `in` for feedforward).
    pub l: Vec<f32>,
    /// Feedforward only: `W·diag(l − 1)`, `out × in` row-major; empty otherwise.
    pub delta_weight: Vec<f32>,
    /// Bytes of the vector as stored in the file.
    pub stored_bytes: u64,
}

/// A loaded (IA)³ adapter. Immutable; implements the sabi [`Adapter`].
pub struct Ia3Adapter {
    pub(crate) source: String,
    pub(crate) modules: Vec<Module>,
    pub(crate) notes: Vec<String>,
    pub(crate) owned_bytes: u64,
}

impl fmt::Debug for Ia3Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ia3Adapter")
            .field("source", &self.source)
            .field("modules", &self.modules().collect::<Vec<_>>())
            .field("owned_bytes", &self.owned_bytes)
            .finish_non_exhaustive()
    }
}

fn bad_call(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::BAD_CALL, field, message)
}

impl Module {
    fn delta_view(&self) -> Option<WeightView<'_>> {
        WeightView::f32(&self.delta_weight, self.out_features, self.in_features)
    }

    /// Floats of scratch one call over `rows` rows needs.
    fn scratch_floats(&self, rows: usize, kernels: HostKernelsRef) -> Option<usize> {
        match self.scaling {
            Scaling::Output => Some(self.out_features),
            Scaling::Feedforward => self.delta_view().map(|w| (kernels.scratch_floats())(w, rows)),
        }
    }
}

impl Ia3Adapter {
    fn module(&self, target: u32) -> Result<&Module, PluginError> {
        self.modules.get(target as usize).ok_or_else(|| {
            bad_call("target", format!("target {target} out of range: the adapter has {} targets", self.modules.len()))
        })
    }

    /// The module paths and their scaling, in target order.
    pub fn modules(&self) -> impl Iterator<Item = (&str, Scaling)> {
        self.modules.iter().map(|m| (m.path.as_str(), m.scaling))
    }

    /// The vector `l` of a target, as loaded (f32).
    pub fn vector(&self, target: u32) -> Option<&[f32]> {
        self.modules.get(target as usize).map(|m| m.l.as_slice())
    }

    fn delta(&self, mut call: LinearDelta<'_>) -> Result<(), PluginError> {
        let m = self.module(call.target)?;
        let field = m.path.as_str();
        let rows = call.x.rows();
        let (inf, out) = (m.in_features, m.out_features);
        if call.x.cols() != inf {
            return Err(bad_call(field, format!("x has {} columns, the layer has {inf} inputs", call.x.cols())));
        }
        if call.y.rows() != rows || call.y.cols() != out {
            return Err(bad_call(field, format!("y is {}×{}, expected {rows}×{out}", call.y.rows(), call.y.cols())));
        }
        let multiplier = call.scale;
        if !multiplier.is_finite() {
            return Err(bad_call(field, format!("scale multiplier {multiplier} is not finite")));
        }
        let need = m.scratch_floats(rows, call.kernels).ok_or_else(|| {
            PluginError::new(ErrorCode::INTERNAL, field, "feedforward cache no longer matches its layer")
        })?;
        let scratch = call.scratch.as_mut_slice();
        if scratch.len() < need {
            return Err(bad_call(field, format!("scratch has {} floats, the call needs {need}", scratch.len())));
        }
        if rows == 0 || out == 0 || multiplier == 0.0 {
            return Ok(());
        }

        match m.scaling {
            Scaling::Output => {
                // l' = 1 + m·(l − 1), rounded once from f64 (exactly l at m = 1).
                let scale: &[f32] = if multiplier == 1.0 {
                    &m.l
                } else {
                    let buf = &mut scratch[..out];
                    let mf = f64::from(multiplier);
                    for (s, &l) in buf.iter_mut().zip(&m.l) {
                        *s = (1.0 + mf * (f64::from(l) - 1.0)) as f32;
                    }
                    buf
                };
                for row in 0..rows {
                    for (y, &s) in call.y.row_mut(row).iter_mut().zip(scale) {
                        *y *= s;
                    }
                }
                Ok(())
            }
            Scaling::Feedforward => {
                // W·(x ⊙ l') = W·x + m·(x·W_Δᵀ); the host already added W·x + b.
                let w = m.delta_view().ok_or_else(|| {
                    PluginError::new(ErrorCode::INTERNAL, field, "feedforward cache no longer matches its layer")
                })?;
                let status = (call.kernels.linear())(
                    call.x,
                    w,
                    multiplier,
                    true,
                    call.y.reborrow(),
                    RSliceMut::from_mut_slice(scratch),
                );
                if status.is_ok() {
                    Ok(())
                } else {
                    Err(PluginError::new(
                        ErrorCode::KERNEL,
                        field,
                        format!("host kernel refused m·x·W_Δᵀ: status {}", status.0),
                    ))
                }
            }
        }
    }

    fn merge_into(
        &self,
        target: u32,
        mut weight: MatViewMut<'_>,
        mut bias: RSliceMut<'_, f32>,
    ) -> Result<(), PluginError> {
        let m = self.module(target)?;
        let field = m.path.as_str();
        let (inf, out) = (m.in_features, m.out_features);
        if weight.rows() != out || weight.cols() != inf {
            return Err(bad_call(
                field,
                format!("weight is {}×{}, expected {out}×{inf}", weight.rows(), weight.cols()),
            ));
        }
        let bias = bias.as_mut_slice();
        if bias.len() != out {
            return Err(bad_call(field, format!("bias has {} values, expected {out}", bias.len())));
        }
        match m.scaling {
            Scaling::Output => {
                for (o, (&l, b)) in m.l.iter().zip(bias.iter_mut()).enumerate() {
                    for w in weight.row_mut(o) {
                        *w *= l;
                    }
                    *b *= l;
                }
            }
            Scaling::Feedforward => {
                for o in 0..out {
                    for (w, &l) in weight.row_mut(o).iter_mut().zip(&m.l) {
                        *w *= l;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Adapter for Ia3Adapter {
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
                    rank: 0,
                    scale: 1.0,
                    variant: RString::from(m.scaling.name()),
                    bytes: m.stored_bytes,
                })
                .collect(),
            mapped_bytes: 0,
            owned_bytes: self.owned_bytes,
            notes: self.notes.iter().map(|n| RString::from(n.as_str())).collect(),
        }
    }

    fn scratch_floats(&self, target: u32, rows: usize, kernels: HostKernelsRef) -> usize {
        // An unknown target gets 0 here and BAD_CALL from the call.
        self.modules.get(target as usize).map_or(0, |m| m.scratch_floats(rows, kernels).unwrap_or(usize::MAX))
    }

    fn linear_delta(&self, call: LinearDelta<'_>) -> RResult<(), PluginError> {
        guard(KIND, "linear_delta", || self.delta(call))
    }

    fn merge(&self, target: u32, weight: MatViewMut<'_>, bias: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        guard(KIND, "merge", || self.merge_into(target, weight, bias))
    }
}
