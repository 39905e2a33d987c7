//! A stand-in host for testing a kind on its own (feature `testing`, for
//! `[dev-dependencies]` only): a [`FakeModel`] to load against, scalar reference
//! [`kernels`], a [`TempDir`], and [`assert_err`] / [`assert_close`].
//!
//! Everything here is deliberately simple and slow, so that a test compares a kind
//! against arithmetic it can trust, and deliberately strict where a kind could get the
//! host contract wrong: the fake model reports graph names that differ from module paths,
//! and the kernels use the scratch the kind hands them, so a kind that sizes or slices
//! scratch wrongly fails. Test helpers may panic (`unwrap`) on misuse; none of this is
//! for production code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use half::{bf16, f16};

use crate::{
    ElemFormat, ErrorCode, HostKernels, HostKernelsExt, HostKernelsRef, KernelStatus, MatView, MatViewMut, ModelView,
    ModelView_TO, ModelViewRef, NodeInfo, NodeOp, PluginError, WeightView, linear_shapes_agree,
};

/// One node of a [`FakeModel`].
#[derive(Debug, Clone, PartialEq)]
pub struct FakeNode {
    /// The module path that resolves to it.
    pub name: String,
    /// Its operation.
    pub op: NodeOp,
    /// `W` columns for a linear; 0 otherwise.
    pub in_features: usize,
    /// The width of its output.
    pub out_features: usize,
    /// `[out, in]` row-major (linears only; empty otherwise).
    pub weight: Vec<f32>,
    /// The linear's bias, if it has one.
    pub bias: Option<Vec<f32>>,
}

impl FakeNode {
    /// A linear layer `y = x·Wᵀ + b` with `weight` `[out, inf]`.
    ///
    /// # Panics
    /// If `weight` is not `out · inf` long.
    pub fn linear(name: &str, out: usize, inf: usize, weight: Vec<f32>, bias: Option<Vec<f32>>) -> FakeNode {
        assert_eq!(weight.len(), out * inf, "weight of `{name}`");
        FakeNode { name: name.into(), op: NodeOp::Linear, in_features: inf, out_features: out, weight, bias }
    }

    /// A dense graph input `width` wide.
    pub fn input(name: &str, width: usize) -> FakeNode {
        FakeNode::weightless(name, NodeOp::Input, width)
    }

    /// Any other node (an activation, a concat) with an output `width` wide.
    pub fn other(name: &str, width: usize) -> FakeNode {
        FakeNode::weightless(name, NodeOp::Other, width)
    }

    /// A node of `op` without weights.
    pub fn weightless(name: &str, op: NodeOp, width: usize) -> FakeNode {
        FakeNode { name: name.into(), op, in_features: 0, out_features: width, weight: vec![], bias: None }
    }

    /// The base forward of a linear, `x·Wᵀ + b`, for every row of `x`, in plain f32.
    pub fn forward(&self, x: &[f32]) -> Vec<f32> {
        let rows = x.len() / self.in_features;
        let mut y = vec![0f32; rows * self.out_features];
        for i in 0..rows {
            let xr = &x[i * self.in_features..(i + 1) * self.in_features];
            for o in 0..self.out_features {
                let w = &self.weight[o * self.in_features..(o + 1) * self.in_features];
                let dot: f32 = w.iter().zip(xr).map(|(a, b)| a * b).sum();
                y[i * self.out_features + o] = dot + self.bias.as_ref().map_or(0.0, |b| b[o]);
            }
        }
        y
    }
}

/// A [`ModelView`] over a list of named nodes. A module path resolves to the node of the
/// same name, or through [`aliases`](Self::aliases).
///
/// What it reports is adjustable, so that tests can catch a kind that confuses the pieces
/// of a [`NodeInfo`]: the graph name is [`name_prefix`](Self::name_prefix) + the node's
/// name, and node indices start at [`first_node`](Self::first_node).
#[derive(Debug, Clone)]
pub struct FakeModel {
    /// The nodes; node `first_node + i` is `nodes[i]`.
    pub nodes: Vec<FakeNode>,
    /// Extra module paths, each naming a node by its name.
    pub aliases: HashMap<String, String>,
    /// What [`ModelView::fingerprint`] returns.
    pub fingerprint: u64,
    /// Prepended to a node's name to make the graph name `resolve` reports.
    pub name_prefix: String,
    /// The index of the first node.
    pub first_node: u32,
}

impl Default for FakeModel {
    fn default() -> FakeModel {
        FakeModel::new(vec![])
    }
}

impl FakeModel {
    /// The fingerprint of a model that did not set one.
    pub const FINGERPRINT: u64 = 0x6661_6b65;

    /// A model of `nodes`, with graph names `node_<name>`, indices from 0 and
    /// [`FINGERPRINT`](Self::FINGERPRINT).
    pub fn new(nodes: Vec<FakeNode>) -> FakeModel {
        FakeModel {
            nodes,
            aliases: HashMap::new(),
            fingerprint: FakeModel::FINGERPRINT,
            name_prefix: "node_".into(),
            first_node: 0,
        }
    }

    /// The same model with another fingerprint.
    pub fn with_fingerprint(self, fingerprint: u64) -> FakeModel {
        FakeModel { fingerprint, ..self }
    }

    /// The same model with graph names `prefix` + name.
    pub fn with_name_prefix(self, prefix: &str) -> FakeModel {
        FakeModel { name_prefix: prefix.into(), ..self }
    }

    /// The same model with node indices starting at `first`.
    pub fn with_first_node(self, first: u32) -> FakeModel {
        FakeModel { first_node: first, ..self }
    }

    /// The same model where `path` also resolves to the node `name`.
    pub fn with_alias(mut self, path: &str, name: &str) -> FakeModel {
        self.aliases.insert(path.into(), name.into());
        self
    }

    /// A borrowed view to hand a kind's loader.
    pub fn view(&self) -> ModelViewRef<'_> {
        ModelView_TO::from_ptr(self, TD_Opaque)
    }

    /// The node named `name`.
    ///
    /// # Panics
    /// If there is none.
    pub fn node(&self, name: &str) -> &FakeNode {
        &self.nodes[self.position(name)]
    }

    /// The index `resolve` reports for the node named `name`.
    ///
    /// # Panics
    /// If there is none.
    pub fn index(&self, name: &str) -> u32 {
        self.first_node + self.position(name) as u32
    }

    fn position(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no node `{name}`"))
    }

    fn by_index(&self, node: u32) -> Result<&FakeNode, PluginError> {
        node.checked_sub(self.first_node)
            .and_then(|i| self.nodes.get(i as usize))
            .ok_or_else(|| PluginError::new(ErrorCode::BAD_CALL, "", format!("no node {node} in this model")))
    }
}

impl ModelView for FakeModel {
    fn resolve(&self, module_path: RStr<'_>) -> RResult<NodeInfo, PluginError> {
        let path = module_path.as_str();
        let name = self.aliases.get(path).map_or(path, String::as_str);
        match self.nodes.iter().position(|n| n.name == name) {
            Some(i) => {
                let n = &self.nodes[i];
                RResult::ROk(NodeInfo {
                    node: self.first_node + i as u32,
                    name: RString::from(format!("{}{}", self.name_prefix, n.name)),
                    op: n.op,
                    in_features: n.in_features,
                    out_features: n.out_features,
                    has_bias: n.bias.is_some(),
                    base_format: RString::from("f32"),
                })
            }
            None => RResult::RErr(PluginError::new(ErrorCode::UNKNOWN_MODULE, path, "no node with that name")),
        }
    }

    fn base_weight_row(&self, node: u32, row: usize, mut out: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        let copied = self.by_index(node).and_then(|n| {
            let cols = n.in_features;
            let src = n.weight.get(row * cols..(row + 1) * cols).filter(|_| n.op == NodeOp::Linear);
            match src {
                Some(src) if src.len() == out.len() => {
                    out.as_mut_slice().copy_from_slice(src);
                    Ok(())
                }
                _ => Err(PluginError::new(
                    ErrorCode::BAD_CALL,
                    n.name.as_str(),
                    format!("no weight row {row} of {cols} values (asked for {})", out.len()),
                )),
            }
        });
        copied.into()
    }

    fn base_bias(&self, node: u32) -> ROption<RSlice<'_, f32>> {
        self.by_index(node).ok().and_then(|n| n.bias.as_deref()).map(RSlice::from_slice).into()
    }

    fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

extern "C" fn level() -> RStr<'static> {
    RStr::from_str("test-scalar")
}

/// Floats of scratch the scalar kernel needs: one decoded weight row, plus one per row of
/// `x` when `PER_ROW` (so a kind that sizes scratch for the wrong row count is caught).
extern "C" fn scalar_scratch_floats<const PER_ROW: bool>(w: WeightView<'_>, rows: usize) -> usize {
    if PER_ROW { w.cols() + rows } else { w.cols() }
}

/// Writes row `j` of `w`, converted to f32, into `out` (`w.cols()` long).
fn decode_row(w: &WeightView<'_>, j: usize, out: &mut [f32]) {
    let span = j * w.cols()..(j + 1) * w.cols();
    match (w.format(), w.as_f32(), w.as_u16()) {
        (ElemFormat::F32, Some(v), _) => out.copy_from_slice(&v[span]),
        (ElemFormat::F16, _, Some(v)) => {
            out.iter_mut().zip(&v[span]).for_each(|(o, &b)| *o = f16::from_bits(b).to_f32())
        }
        (ElemFormat::Bf16, _, Some(v)) => {
            out.iter_mut().zip(&v[span]).for_each(|(o, &b)| *o = bf16::from_bits(b).to_f32())
        }
        _ => unreachable!("a WeightView's data matches its format"),
    }
}

/// `y (+)= alpha · x·Wᵀ`, one weight row at a time decoded into the head of `scratch`,
/// each dot product summed left to right in f32.
extern "C" fn scalar_linear<const PER_ROW: bool>(
    x: MatView<'_>,
    w: WeightView<'_>,
    alpha: f32,
    accumulate: bool,
    mut y: MatViewMut<'_>,
    mut scratch: RSliceMut<'_, f32>,
) -> KernelStatus {
    if !linear_shapes_agree(&x, w.rows(), w.cols(), &y) {
        return KernelStatus::SHAPE_MISMATCH;
    }
    let scratch = scratch.as_mut_slice();
    if scratch.len() < scalar_scratch_floats::<PER_ROW>(w, x.rows()) {
        return KernelStatus::SCRATCH_TOO_SMALL;
    }
    let wrow = &mut scratch[..w.cols()];
    for j in 0..w.rows() {
        decode_row(&w, j, wrow);
        for i in 0..x.rows() {
            let dot: f32 = x.row(i).iter().zip(wrow.iter()).map(|(a, b)| a * b).sum();
            let yr = y.row_mut(i);
            yr[j] = if accumulate { yr[j] + alpha * dot } else { alpha * dot };
        }
    }
    KernelStatus::OK
}

/// `y (+)= alpha · x·Wt` with `wt` stored `x.cols × y.cols`: per output one chain over `k`
/// from zero, multiply-then-add (or FMA with `FUSED`), then scaled by `alpha`.
extern "C" fn scalar_linear_t<const FUSED: bool>(
    x: MatView<'_>,
    wt: MatView<'_>,
    alpha: f32,
    accumulate: bool,
    mut y: MatViewMut<'_>,
) -> KernelStatus {
    if !linear_shapes_agree(&x, wt.cols(), wt.rows(), &y) {
        return KernelStatus::SHAPE_MISMATCH;
    }
    for i in 0..x.rows() {
        for o in 0..wt.cols() {
            let mut acc = 0f32;
            for (k, &xv) in x.row(i).iter().enumerate() {
                let w = wt.row(k)[o];
                acc = if FUSED { xv.mul_add(w, acc) } else { acc + xv * w };
            }
            let yr = y.row_mut(i);
            yr[o] = if accumulate { yr[o] + alpha * acc } else { alpha * acc };
        }
    }
    KernelStatus::OK
}

/// The scalar reference kernels: f32, f16 and bf16 weights, a dot product summed left to
/// right in f32, and scratch for one decoded weight row (`w.cols()` floats).
pub fn kernels() -> HostKernelsRef {
    static K: OnceLock<HostKernelsRef> = OnceLock::new();
    *K.get_or_init(|| {
        HostKernelsExt {
            level,
            scratch_floats: scalar_scratch_floats::<false>,
            linear: scalar_linear::<false>,
            linear_t: scalar_linear_t::<false>,
        }
        .leak_into_prefix()
        .as_host_kernels()
    })
}

/// As [`kernels`], but asking for one more float of scratch per row of `x`: a kind that
/// sizes scratch for a different row count than it calls with is refused.
pub fn kernels_row_scratch() -> HostKernelsRef {
    static K: OnceLock<HostKernelsRef> = OnceLock::new();
    *K.get_or_init(|| {
        HostKernelsExt {
            level,
            scratch_floats: scalar_scratch_floats::<true>,
            linear: scalar_linear::<true>,
            linear_t: scalar_linear_t::<false>,
        }
        .leak_into_prefix()
        .as_host_kernels()
    })
}

extern "C" fn fma8_level() -> RStr<'static> {
    RStr::from_str("test-fma8")
}

extern "C" fn no_scratch(_w: WeightView<'_>, _rows: usize) -> usize {
    0
}

/// `y (+)= alpha · x·Wᵀ` (f32 weights only) with 8 FMA lanes per dot product, combined
/// pairwise, as a SIMD kernel sums.
extern "C" fn fma8_linear(
    x: MatView<'_>,
    w: WeightView<'_>,
    alpha: f32,
    accumulate: bool,
    mut y: MatViewMut<'_>,
    _scratch: RSliceMut<'_, f32>,
) -> KernelStatus {
    let Some(wf) = w.as_f32() else { return KernelStatus::SHAPE_MISMATCH };
    if !linear_shapes_agree(&x, w.rows(), w.cols(), &y) {
        return KernelStatus::SHAPE_MISMATCH;
    }
    let cols = w.cols();
    for i in 0..x.rows() {
        for j in 0..w.rows() {
            let wr = &wf[j * cols..(j + 1) * cols];
            let mut lanes = [0f32; 8];
            for (c, (a, b)) in x.row(i).iter().zip(wr).enumerate() {
                lanes[c % 8] = a.mul_add(*b, lanes[c % 8]);
            }
            let dot = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
            let yr = y.row_mut(i);
            yr[j] = if accumulate { yr[j] + alpha * dot } else { alpha * dot };
        }
    }
    KernelStatus::OK
}

/// A second kernel table whose sums differ from [`kernels`]' in the last bits, like a
/// SIMD host's: 8 FMA lanes per dot product, combined pairwise. f32 weights only, no
/// scratch. A kind whose results must not depend on the kernel's summation order (or
/// that bounds its rounding error) is tested against both.
pub fn kernels_fma8() -> HostKernelsRef {
    static K: OnceLock<HostKernelsRef> = OnceLock::new();
    *K.get_or_init(|| {
        HostKernelsExt {
            level: fma8_level,
            scratch_floats: no_scratch,
            linear: fma8_linear,
            linear_t: scalar_linear_t::<true>,
        }
        .leak_into_prefix()
        .as_host_kernels()
    })
}

/// The kernel table as a host built before [`HostKernelsExt`] lends it: the same
/// reference kernels in a plain [`HostKernels`], so [`HostKernelsRef::linear_t`] is `None`
/// and a kind must take its fallback.
pub fn kernels_without_linear_t() -> HostKernelsRef {
    static K: OnceLock<HostKernelsRef> = OnceLock::new();
    *K.get_or_init(|| {
        HostKernels { level, scratch_floats: scalar_scratch_floats::<false>, linear: scalar_linear::<false> }
            .leak_into_prefix()
    })
}

/// A directory under the system temp directory, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory whose name contains `tag`.
    ///
    /// # Panics
    /// If it cannot be created.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("graft-test-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path of `name` inside it, as a string (the form a `LoadRequest` takes).
    ///
    /// # Panics
    /// If the path is not UTF-8.
    pub fn file(&self, name: &str) -> String {
        let path = self.0.join(name);
        path.to_str().unwrap_or_else(|| panic!("{} is not UTF-8", path.display())).to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Asserts that `result` is an error with `code` on `field`, and returns it.
///
/// # Panics
/// If it is `Ok` or another error.
#[track_caller]
pub fn assert_err<T: std::fmt::Debug>(result: Result<T, PluginError>, code: ErrorCode, field: &str) -> PluginError {
    match result {
        Ok(v) => panic!("expected {} error on `{field}`, got Ok({v:?})", code.name()),
        Err(e) => {
            assert_eq!((e.code, e.field.as_str()), (code, field), "wrong error: {e}");
            e
        }
    }
}

/// Asserts that `got` and `want` have the same length and differ by at most `tol` in
/// every element.
///
/// # Panics
/// If they do not.
#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "index {i}: got {g}, want {w} (tol {tol}); {got:?} vs {want:?}");
    }
}

/// The kernel table as kinds built before [`HostKernelsExt`] declared it (for the test
/// that it never grows).
#[cfg(test)]
#[allow(dead_code)] // only its layout is used
mod v1 {
    use super::*;

    #[repr(C)]
    #[derive(abi_stable::StableAbi)]
    #[sabi(kind(Prefix(prefix_ref = HostKernelsRef)))]
    pub struct HostKernels {
        pub level: extern "C" fn() -> RStr<'static>,
        pub scratch_floats: extern "C" fn(w: WeightView<'_>, rows: usize) -> usize,
        #[sabi(last_prefix_field)]
        pub linear: extern "C" fn(
            x: MatView<'_>,
            w: WeightView<'_>,
            alpha: f32,
            accumulate: bool,
            y: MatViewMut<'_>,
            scratch: RSliceMut<'_, f32>,
        ) -> KernelStatus,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use abi_stable::StableAbi;
    use abi_stable::abi_stability::abi_checking::check_layout_compatibility;

    use super::*;

    /// The table kinds are checked against at load is the one kinds were built against
    /// before `linear_t` existed, in both directions (abi_stable refuses a library whose
    /// prefix type has fewer fields than the host's, so growing `HostKernels` itself
    /// would lock out every older kind), and `linear_t` is found at run time exactly in
    /// tables built as `HostKernelsExt`.
    #[test]
    fn kinds_built_before_linear_t_still_load_and_see_the_same_table() {
        let now = <HostKernelsRef as StableAbi>::LAYOUT;
        let before = <v1::HostKernelsRef as StableAbi>::LAYOUT;
        check_layout_compatibility(now, before).expect("a host now loads a kind built before");
        check_layout_compatibility(before, now).expect("a host built before loads a kind built now");
        // What a grown HostKernels would have caused: the ext table as the checked type.
        let grown = <crate::HostKernelsExtRef as StableAbi>::LAYOUT;
        assert!(check_layout_compatibility(grown, before).is_err());

        assert!(kernels_without_linear_t().linear_t().is_none());
        for k in [kernels(), kernels_row_scratch(), kernels_fma8()] {
            assert!(k.linear_t().is_some());
        }
        // The prefix reads the same functions through either view.
        let k = kernels();
        assert_eq!((k.level())().as_str(), "test-scalar");
        let x = [1.0f32, 2.0];
        let wt = [3.0f32, 4.0, 5.0, 6.0];
        let mut y = [1.0f32, 1.0];
        let status = (k.linear_t().unwrap())(
            MatView::new(&x, 1, 2, 2).unwrap(),
            MatView::new(&wt, 2, 2, 2).unwrap(),
            0.5,
            true,
            MatViewMut::new(&mut y, 1, 2, 2).unwrap(),
        );
        assert_eq!(status, KernelStatus::OK);
        // y += 0.5 · [1·3 + 2·5, 1·4 + 2·6] = 1 + [6.5, 8].
        assert_eq!(y, [7.5, 9.0]);
    }
}
