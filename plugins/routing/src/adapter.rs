//! The loaded adapter and its two hooks.
//!
//! The `Tap` at the input node does all the work for a call's rows: it routes every row,
//! runs the towers and leaves each row's routed output (and κ) in the run state. The
//! `Post` at the output node only blends that state into the node's value. Splitting it
//! this way keeps the tower next to the representation it reads, and lets the host run
//! any nodes in between unchanged.
//!
//! Hard mode routes a call's rows with one host GEMM of scores `X·Cᵀ`, certified row by
//! row against the f32 error bound with an f64 fallback (see [`route`]), then batches by
//! cluster without allocating: a counting sort of the rows by κ into scratch, then per
//! cluster a gather of its rows, the tower layer by layer through the host `linear` kernel
//! (two ping-pong activation buffers), and a scatter of the results to the rows' state.
//! Soft mode scores every row in f64, runs every tower over all rows and accumulates the
//! probability mixture straight into the state.

use core::fmt;

use abi_stable::std_types::{RResult, RSliceMut, RString, RVec};
use graft_plugin_abi::{
    Adapter, AdapterInfo, ErrorCode, HookKind, HostKernelsRef, MatView, MatViewMut, NodeOp, PluginError, Post, Tap,
    Target, TargetInfo, WeightView, guard,
};

use crate::KIND;
use crate::config::{Config, Mode, OutputIs};
use crate::route;

/// Target index of the `Tap` at the input node.
const TAP: u32 = 0;
/// Target index of the `Post` at the output node.
const POST: u32 = 1;

/// A graph node the adapter attaches to.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub id: u32,
    pub name: String,
    pub op: NodeOp,
    pub out_features: usize,
}

/// One folded tower layer: `a ↦ a·Wᵀ (+ b)`, `W` stored `[outputs, inputs]`.
#[derive(Debug)]
pub(crate) struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
}

impl Layer {
    fn view(&self) -> Option<WeightView<'_>> {
        WeightView::f32(&self.weight, self.outputs, self.inputs)
    }
}

/// A loaded AdaptDHM routing adapter. Immutable; implements the sabi [`Adapter`].
pub struct RoutingAdapter {
    source: String,
    config: Config,
    input: Node,
    output: Node,
    /// `K × D`, as stored.
    centers: Vec<f32>,
    /// Error bounds of the centers' f32 scores; `None` when `D` is too wide to certify
    /// them (every row then takes the f64 path).
    bound: Option<route::ScoreBound>,
    /// `K` towers of `dims.len() − 1` folded layers.
    towers: Vec<Vec<Layer>>,
    /// The widest activation (`max(dims)`).
    max_width: usize,
    center_bytes: u64,
    tower_bytes: u64,
}

impl fmt::Debug for RoutingAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoutingAdapter")
            .field("source", &self.source)
            .field("input", &self.input.name)
            .field("output", &self.output.name)
            .field("clusters", &self.config.clusters)
            .field("dims", &self.config.dims)
            .field("mode", &self.config.mode)
            .finish_non_exhaustive()
    }
}

fn bad_call(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::BAD_CALL, field, message)
}

fn internal(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::INTERNAL, field, message)
}

/// Scratch floats reinterpreted as row indices and bucket bounds.
fn as_indices(floats: &mut [f32]) -> &mut [u32] {
    // SAFETY: f32 and u32 have the same size and alignment and every bit pattern is a valid
    // value of both, so the same memory is a valid `[u32]` of the same length; the new
    // slice takes over the exclusive borrow of `floats` for its whole lifetime.
    unsafe { core::slice::from_raw_parts_mut(floats.as_mut_ptr().cast::<u32>(), floats.len()) }
}

/// How a `Tap` call's scratch is cut up (lengths in floats).
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Hard: κ per row. Soft: 0.
    kappa: usize,
    /// Hard: `K + 1` bucket bounds. Soft: 0.
    bounds: usize,
    /// Hard: row indices sorted by cluster. Soft: 0.
    order: usize,
    /// `rows × K`. Hard: the f32 scores of the GEMM. Soft: the f64 scores, then the
    /// mixture weights.
    scores: usize,
    /// Each of the two activation buffers: `rows × max(dims)`.
    activation: usize,
    /// The host kernel's share: its largest need over the layers.
    kernel: usize,
}

impl Layout {
    fn total(&self) -> Option<usize> {
        [self.kappa, self.bounds, self.order, self.scores, self.activation, self.activation, self.kernel]
            .into_iter()
            .try_fold(0usize, |n, x| n.checked_add(x))
    }
}

/// Where the first tower layer reads from.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// The call's `x` (every row, in order).
    Direct(MatView<'a>),
    /// Rows gathered into the second activation buffer.
    Gathered,
}

impl RoutingAdapter {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        source: &str,
        config: Config,
        input: Node,
        output: Node,
        centers: Vec<f32>,
        towers: Vec<Vec<Layer>>,
        center_bytes: u64,
        tower_bytes: u64,
    ) -> RoutingAdapter {
        let max_width = config.dims.iter().copied().max().unwrap_or(0);
        let bound = route::ScoreBound::new(&centers, config.input_width());
        RoutingAdapter {
            source: source.to_owned(),
            config,
            input,
            output,
            centers,
            bound,
            towers,
            max_width,
            center_bytes,
            tower_bytes,
        }
    }

    /// The configuration it was loaded with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Floats of run state per row: the routed output (`dims.last()` values), then κ.
    fn state_width(&self) -> usize {
        self.config.output_width() + 1
    }

    /// The centers as the score GEMM's weight (`[K, D]`).
    fn centers_view(&self) -> Option<WeightView<'_>> {
        WeightView::f32(&self.centers, self.config.clusters, self.config.input_width())
    }

    /// Whether hard routing scores through the host GEMM (as [`Self::route_rows`] decides):
    /// more than one cluster (one cluster is always κ = 0) and a width whose f32 scores can
    /// be certified.
    fn gemm_scores(&self) -> bool {
        self.config.mode == Mode::Hard && self.config.clusters > 1 && self.bound.is_some()
    }

    fn layout(&self, rows: usize, kernels: &HostKernelsRef) -> Option<Layout> {
        let k = self.config.clusters;
        let hard = self.config.mode == Mode::Hard;
        // Hard mode keeps row indices as u32 in scratch.
        if hard && u32::try_from(rows).is_err() {
            return None;
        }
        let ks = kernels.scratch_floats();
        let mut kernel = if self.gemm_scores() { ks(self.centers_view()?, rows) } else { 0 };
        for layer in self.towers.first()? {
            kernel = kernel.max(ks(layer.view()?, rows));
        }
        Some(Layout {
            kappa: if hard { rows } else { 0 },
            bounds: if hard { k.checked_add(1)? } else { 0 },
            order: if hard { rows } else { 0 },
            scores: rows.checked_mul(k)?,
            activation: rows.checked_mul(self.max_width)?,
            kernel,
        })
    }

    /// Routes every row of `x` into `kappa` (hard mode): one GEMM for all scores, then
    /// [`route::decide`]. Returns how many rows took the f64 fallback.
    fn route_rows(
        &self,
        x: MatView<'_>,
        kernels: &HostKernelsRef,
        scores: &mut [f32],
        kernel_scratch: &mut [f32],
        kappa: &mut [u32],
    ) -> Result<usize, PluginError> {
        let (rows, k) = (x.rows(), self.config.clusters);
        let field = self.config.input_node.as_str();
        if k == 1 {
            kappa.fill(0);
            return Ok(0);
        }
        let Some(bound) = &self.bound else {
            for (i, slot) in kappa.iter_mut().enumerate().take(rows) {
                *slot = route::nearest(x.row(i), &self.centers, None) as u32;
            }
            return Ok(rows);
        };
        let w = self.centers_view().ok_or_else(|| internal(field, "centers no longer match their shape"))?;
        let need = (kernels.scratch_floats())(w, rows);
        if kernel_scratch.len() < need {
            return Err(bad_call(
                field,
                format!("kernel scratch has {} floats, the score GEMM needs {need}", kernel_scratch.len()),
            ));
        }
        let scores = scores.get_mut(..rows * k).ok_or_else(|| internal(field, "score buffer too short"))?;
        let y = MatViewMut::new(scores, rows, k, k).ok_or_else(|| internal(field, "score view"))?;
        (kernels.linear())(x, w, 1.0, false, y, RSliceMut::from_mut_slice(kernel_scratch))
            .check(field, "the score GEMM")?;
        Ok(route::decide(x, &self.centers, bound, scores, kappa))
    }

    /// Runs `tower` over `n` rows. Layer ℓ writes `a` when ℓ is even and `b` when odd and
    /// reads the other (layer 0 reads `input`); returns whether the result is in `a`.
    #[allow(clippy::too_many_arguments)]
    fn run_tower(
        &self,
        tower: &[Layer],
        n: usize,
        input: Input<'_>,
        a: &mut [f32],
        b: &mut [f32],
        kernel_scratch: &mut [f32],
        kernels: &HostKernelsRef,
    ) -> Result<bool, PluginError> {
        let field = self.config.input_node.as_str();
        let linear = kernels.linear();
        let ks = kernels.scratch_floats();
        let last = tower.len().saturating_sub(1);
        for (l, layer) in tower.iter().enumerate() {
            let (src, dst): (&[f32], &mut [f32]) = if l.is_multiple_of(2) { (&*b, &mut *a) } else { (&*a, &mut *b) };
            let x = match input {
                Input::Direct(x) if l == 0 => x,
                _ => src
                    .get(..n * layer.inputs)
                    .and_then(|s| MatView::new(s, n, layer.inputs, layer.inputs))
                    .ok_or_else(|| internal(field, "activation buffer too short"))?,
            };
            let y_buf =
                dst.get_mut(..n * layer.outputs).ok_or_else(|| internal(field, "activation buffer too short"))?;
            if let Some(bias) = &layer.bias {
                for row in y_buf.chunks_exact_mut(layer.outputs) {
                    row.copy_from_slice(bias);
                }
            }
            let w = layer.view().ok_or_else(|| internal(field, "tower weight no longer matches its shape"))?;
            let need = ks(w, n);
            if kernel_scratch.len() < need {
                return Err(bad_call(
                    field,
                    format!("kernel scratch has {} floats, layer {l} needs {need}", kernel_scratch.len()),
                ));
            }
            let y = MatViewMut::new(y_buf, n, layer.outputs, layer.outputs)
                .ok_or_else(|| internal(field, "activation view"))?;
            let status = linear(x, w, 1.0, layer.bias.is_some(), y, RSliceMut::from_mut_slice(kernel_scratch));
            status.check(field, format_args!("tower layer {l}"))?;
            if l != last {
                // ReLU that keeps NaN (as torch does): `f32::max` would turn it into 0.
                for v in dst[..n * layer.outputs].iter_mut() {
                    if *v < 0.0 {
                        *v = 0.0;
                    }
                }
            }
        }
        Ok(last.is_multiple_of(2))
    }

    /// Refuses run state that is not `rows × state_width`.
    fn check_state(&self, field: &str, rows: usize, state_rows: usize, state_cols: usize) -> Result<(), PluginError> {
        let sw = self.state_width();
        if state_rows != rows || state_cols != sw {
            return Err(bad_call(field, format!("state is {state_rows}×{state_cols}, expected {rows}×{sw}")));
        }
        Ok(())
    }

    /// Validates a `Tap` call and hands its scratch to the mode's routine.
    fn tap_rows(&self, mut call: Tap<'_>) -> Result<(), PluginError> {
        let field = self.config.input_node.as_str();
        if call.target != TAP {
            return Err(bad_call(
                "target",
                format!("target {} has no tap hook (the tap is target {TAP})", call.target),
            ));
        }
        let (rows, d) = (call.x.rows(), self.config.input_width());
        if call.x.cols() != d {
            return Err(bad_call(field, format!("x has {} columns, the routing input is {d} wide", call.x.cols())));
        }
        self.check_state(field, rows, call.state.rows(), call.state.cols())?;
        if rows == 0 {
            return Ok(());
        }
        if self.config.mode == Mode::Hard && u32::try_from(rows).is_err() {
            return Err(bad_call(field, format!("{rows} rows in one call; hard routing indexes rows with u32")));
        }
        let layout = self.layout(rows, &call.kernels).ok_or_else(|| bad_call(field, "scratch size overflows"))?;
        let need = layout.total().ok_or_else(|| bad_call(field, "scratch size overflows"))?;
        let scratch = call.scratch.as_mut_slice();
        if scratch.len() < need {
            return Err(bad_call(field, format!("scratch has {} floats, the call needs {need}", scratch.len())));
        }
        match self.config.mode {
            Mode::Hard => self.tap_hard(call.x, call.state.reborrow(), &call.kernels, layout, scratch),
            Mode::Soft => self.tap_soft(call.x, call.state.reborrow(), &call.kernels, layout, scratch),
        }
    }

    fn tap_hard(
        &self,
        x: MatView<'_>,
        mut state: MatViewMut<'_>,
        kernels: &HostKernelsRef,
        layout: Layout,
        scratch: &mut [f32],
    ) -> Result<(), PluginError> {
        let (rows, d, out, k) = (x.rows(), self.config.input_width(), self.config.output_width(), self.config.clusters);
        let (kappa, rest) = scratch.split_at_mut(layout.kappa);
        let (bounds, rest) = rest.split_at_mut(layout.bounds);
        let (order, rest) = rest.split_at_mut(layout.order);
        let (scores, rest) = rest.split_at_mut(layout.scores);
        let (a, rest) = rest.split_at_mut(layout.activation);
        let (b, kernel_scratch) = rest.split_at_mut(layout.activation);
        let (kappa, bounds, order) = (as_indices(kappa), as_indices(bounds), as_indices(order));

        self.route_rows(x, kernels, scores, kernel_scratch, kappa)?;
        // Counting sort by κ: bounds[j + 1] counts, then prefix sums give bucket starts.
        bounds.fill(0);
        for &j in kappa.iter() {
            bounds[j as usize + 1] += 1;
        }
        for j in 0..k {
            bounds[j + 1] += bounds[j];
        }
        // Stable placement; afterwards bounds[j] is the end of bucket j.
        for (i, &j) in kappa.iter().enumerate() {
            let slot = &mut bounds[j as usize];
            order[*slot as usize] = i as u32;
            *slot += 1;
        }

        let mut start = 0usize;
        for (j, tower) in self.towers.iter().enumerate() {
            let end = bounds[j] as usize;
            let members = &order[start..end];
            start = end;
            let n = members.len();
            if n == 0 {
                continue;
            }
            // A bucket holding every row holds them in order (the sort is stable).
            let input = if n == rows {
                Input::Direct(x)
            } else {
                for (dst, &i) in b.chunks_exact_mut(d).zip(members) {
                    dst.copy_from_slice(x.row(i as usize));
                }
                Input::Gathered
            };
            let in_a = self.run_tower(tower, n, input, a, b, kernel_scratch, kernels)?;
            let result: &[f32] = if in_a { a } else { b };
            let prob = self.config.output_is == OutputIs::Prob;
            for (z, &i) in result.chunks_exact(out).zip(members) {
                let s = state.row_mut(i as usize);
                for (dst, &z) in s.iter_mut().zip(z) {
                    *dst = if prob { route::sigmoid(z) } else { z };
                }
                s[out] = j as f32;
            }
        }
        Ok(())
    }

    fn tap_soft(
        &self,
        x: MatView<'_>,
        mut state: MatViewMut<'_>,
        kernels: &HostKernelsRef,
        layout: Layout,
        scratch: &mut [f32],
    ) -> Result<(), PluginError> {
        let (rows, out, k) = (x.rows(), self.config.output_width(), self.config.clusters);
        let (weights, rest) = scratch.split_at_mut(layout.scores);
        let (a, rest) = rest.split_at_mut(layout.activation);
        let (b, kernel_scratch) = rest.split_at_mut(layout.activation);

        for (i, w) in weights.chunks_exact_mut(k).enumerate().take(rows) {
            let j = route::nearest(x.row(i), &self.centers, Some(w));
            route::softmax(w);
            let s = state.row_mut(i);
            s[..out].fill(0.0);
            s[out] = j as f32;
        }
        // p = Σ_j r_j σ(z_j), accumulated in the state.
        for (j, tower) in self.towers.iter().enumerate() {
            let in_a = self.run_tower(tower, rows, Input::Direct(x), a, b, kernel_scratch, kernels)?;
            let result: &[f32] = if in_a { a } else { b };
            for (i, z) in result.chunks_exact(out).enumerate().take(rows) {
                let r = weights[i * k + j];
                for (dst, &z) in state.row_mut(i).iter_mut().zip(z) {
                    *dst += r * route::sigmoid(z);
                }
            }
        }
        if self.config.output_is == OutputIs::Logit {
            for i in 0..rows {
                for v in state.row_mut(i)[..out].iter_mut() {
                    *v = route::logit(*v);
                }
            }
        }
        Ok(())
    }

    /// Blends the routed output left in the state into the output node's value.
    fn post_rows(&self, mut call: Post<'_>) -> Result<(), PluginError> {
        let field = self.config.output_node.as_str();
        if call.target != POST {
            return Err(bad_call(
                "target",
                format!("target {} has no post hook (the post is target {POST})", call.target),
            ));
        }
        let (rows, out) = (call.y.rows(), self.config.output_width());
        if call.y.cols() != out {
            return Err(bad_call(field, format!("y has {} columns, the routed output is {out} wide", call.y.cols())));
        }
        self.check_state(field, rows, call.state.rows(), call.state.cols())?;
        let m = call.scale;
        if !m.is_finite() {
            return Err(bad_call(field, format!("multiplier {m} is not finite")));
        }
        if m == 0.0 {
            return Ok(());
        }
        for i in 0..rows {
            let routed = call.state.row(i);
            for (y, &r) in call.y.row_mut(i).iter_mut().zip(routed) {
                *y = route::blend(*y, r, m);
            }
        }
        Ok(())
    }

    fn target_infos(&self) -> RVec<TargetInfo> {
        [
            (&self.config.input_node, &self.input.name, "route-input", self.center_bytes),
            (&self.config.output_node, &self.output.name, "route-output", self.tower_bytes),
        ]
        .into_iter()
        .map(|(module, node, variant, bytes)| TargetInfo {
            module: RString::from(module.as_str()),
            node: RString::from(node.as_str()),
            rank: 0,
            scale: 1.0,
            variant: RString::from(variant),
            bytes,
        })
        .collect()
    }

    /// The summary; also what `inspect_file` reports (with unresolved node names).
    pub(crate) fn summary(&self) -> AdapterInfo {
        let c = &self.config;
        let owned = (self.centers.len()
            + self.towers.iter().flatten().map(|l| l.weight.len() + l.bias.as_ref().map_or(0, Vec::len)).sum::<usize>())
            as u64
            * 4;
        let notes = [
            format!("format_version={}", crate::FORMAT_VERSION),
            format!("clusters={}", c.clusters),
            format!("dims={:?}", c.dims),
            format!("mode={}", c.mode.name()),
            format!("output_is={}", c.output_is.name()),
            format!("activation={}", c.activation.name()),
            format!("use_bias={}", c.use_bias),
            format!("state_floats={}", self.state_width()),
        ];
        AdapterInfo {
            kind: RString::from(crate::KIND),
            source: RString::from(self.source.as_str()),
            targets: self.target_infos(),
            mapped_bytes: 0,
            owned_bytes: owned,
            notes: notes.into_iter().map(RString::from).collect(),
        }
    }
}

impl Adapter for RoutingAdapter {
    fn targets(&self) -> RVec<Target> {
        RVec::from(vec![
            Target::new(self.input.id, HookKind::Tap),
            Target::new(self.output.id, HookKind::Post).with(Target::READS_STATE),
        ])
    }

    fn info(&self) -> AdapterInfo {
        self.summary()
    }

    fn scratch_floats(&self, target: u32, rows: usize, kernels: HostKernelsRef) -> usize {
        // The post needs none; an unknown target gets 0 here and BAD_CALL from the call; a
        // size that overflows gets usize::MAX, which no host can allocate.
        if target != TAP {
            return 0;
        }
        self.layout(rows, &kernels).and_then(|l| l.total()).unwrap_or(usize::MAX)
    }

    fn merge(&self, target: u32, _weight: MatViewMut<'_>, _bias: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(
            ErrorCode::UNSUPPORTED,
            "",
            format!("target {target}: a routed tower depends on each row's cluster and cannot merge into base weights"),
        ))
    }

    fn state_floats(&self) -> usize {
        self.state_width()
    }

    fn tap(&self, call: Tap<'_>) -> RResult<(), PluginError> {
        guard(KIND, "tap", || self.tap_rows(call))
    }

    fn post(&self, call: Post<'_>) -> RResult<(), PluginError> {
        guard(KIND, "post", || self.post_rows(call))
    }
}
