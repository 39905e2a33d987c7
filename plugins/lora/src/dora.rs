//! DoRA row norms, cached so that any per-request scale multiplier stays exact.
//!
//! DoRA rescales output row `o` by `m_o / n_o` with `n_o = ‖W_o + c·D_o‖`, `D = B·A` and
//! `c` the effective scale. PEFT recomputes the norm whenever the scale changes
//! (`set_scale`); recomputing it per request would cost `out·in` work. Instead we keep three
//! f64 numbers per row, `ww = ‖W_o‖²`, `wd = ⟨W_o, D_o⟩`, `dd = ‖D_o‖²`, from which
//! `n_o(c) = sqrt(ww + 2c·wd + c²·dd)` for every `c` in O(out), plus the factor at
//! multiplier 1 for the common case.

use abi_stable::std_types::RSliceMut;
use graft_plugin_abi::{ErrorCode, ModelViewRef, NodeInfo, PluginError};

/// Per-row DoRA state of one module.
#[derive(Debug)]
pub struct Dora {
    /// Magnitude vector `m` (out).
    pub magnitude: Vec<f32>,
    ww: Vec<f64>,
    wd: Vec<f64>,
    dd: Vec<f64>,
    /// `m / n` at the module's own scale (multiplier 1).
    pub factor_at_one: Vec<f32>,
}

impl Dora {
    /// Computes the norm terms from the host's dequantized base rows. `a` is `r × in`,
    /// `b` is `out × r` (row-major f32, shapes already checked), `scale` the module's scale `s`.
    pub fn compute(
        model: &ModelViewRef<'_>,
        node: &NodeInfo,
        a: &[f32],
        b: &[f32],
        magnitude: Vec<f32>,
        scale: f64,
        field: &str,
    ) -> Result<Dora, PluginError> {
        let (inf, out) = (node.in_features, node.out_features);
        let rank = b.len().checked_div(out).unwrap_or(0);
        let mut w = vec![0f32; inf];
        let mut d = vec![0f64; inf];
        let mut dora = Dora {
            ww: Vec::with_capacity(out),
            wd: Vec::with_capacity(out),
            dd: Vec::with_capacity(out),
            factor_at_one: Vec::with_capacity(out),
            magnitude,
        };
        for o in 0..out {
            model.base_weight_row(node.node, o, RSliceMut::from_mut_slice(&mut w)).into_result()?;
            d.iter_mut().for_each(|v| *v = 0.0);
            for k in 0..rank {
                let bk = f64::from(b[o * rank + k]);
                for (dv, &av) in d.iter_mut().zip(&a[k * inf..(k + 1) * inf]) {
                    *dv += bk * f64::from(av);
                }
            }
            let (mut ww, mut wd, mut dd, mut direct) = (0f64, 0f64, 0f64, 0f64);
            for (&wv, &dv) in w.iter().zip(&d) {
                let wv = f64::from(wv);
                ww += wv * wv;
                wd += wv * dv;
                dd += dv * dv;
                let v = wv + scale * dv;
                direct += v * v;
            }
            let n = direct.sqrt();
            if !(n.is_finite() && n > 0.0) {
                return Err(PluginError::new(
                    ErrorCode::NOT_FINITE,
                    field,
                    format!("zero or non-finite row norm ‖W + s·BA‖ = {n} at output row {o}; m/n is undefined"),
                ));
            }
            dora.ww.push(ww);
            dora.wd.push(wd);
            dora.dd.push(dd);
            dora.factor_at_one.push((f64::from(dora.magnitude[o]) / n) as f32);
        }
        Ok(dora)
    }

    /// Bytes this cache holds.
    pub fn bytes(&self) -> u64 {
        (self.magnitude.len() * 4 + self.factor_at_one.len() * 4 + self.ww.len() * 24) as u64
    }

    /// Writes `m / n(c)` for effective scale `c` into `out`; `Err(row)` if a norm is zero.
    pub fn factors_at(&self, c: f64, out: &mut [f32]) -> Result<(), usize> {
        for (o, f) in out.iter_mut().enumerate().take(self.ww.len()) {
            let n2 = self.ww[o] + 2.0 * c * self.wd[o] + c * c * self.dd[o];
            let n = n2.max(0.0).sqrt();
            if !(n > 0.0 && n.is_finite()) {
                return Err(o);
            }
            *f = (f64::from(self.magnitude[o]) / n) as f32;
        }
        Ok(())
    }
}
