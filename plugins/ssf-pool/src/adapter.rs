//! The loaded adapter and its hooks.
//!
//! - Static SSF: a `Post` per site, `y ← γ ⊙ y + β` with parameters held by the adapter.
//! - Pool (FedIns): the `Tap` at the query node selects each row's entries and writes the
//!   averaged γ/β of every site plus the selected indices into the row's run state; each
//!   site's `Post` reads its slice back; the optional head's `LinearDelta` replaces the
//!   layer output by the mean of the selected heads. The tap computes every similarity of
//!   its call with one host GEMM and recomputes in f64 only the rows whose ranking the f32
//!   error bound cannot certify (see `select.rs`), so its selection is the reference's.
//!
//! Every hook is row-independent (a row's result never depends on which other rows share
//! its call), never allocates (buffers come from the host's scratch), and runs inside
//! [`guard`] so a bug cannot unwind across the ABI.

use core::fmt;
use core::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use abi_stable::std_types::{RResult, RSliceMut, RString, RVec};
use graft_plugin_abi::{
    Adapter, AdapterInfo, DeviceParams, ErrorCode, HookKind, HostKernelsRef, LinearDelta, MatView, MatViewMut, NodeOp,
    PluginError, Post, Tap, Target, TargetInfo, WeightView, guard,
};

use crate::KIND;
use crate::select::{certified_top_k, dot, normalize_into, top_k};

/// One SSF site, resolved.
#[derive(Debug)]
pub(crate) struct Site {
    /// The module path from the config.
    pub path: String,
    pub node: u32,
    pub node_name: String,
    pub op: NodeOp,
    /// The node's `in_features` (a merge checks the weight against it).
    pub in_features: usize,
    /// `C`, the node's output width.
    pub width: usize,
    /// `C` values (static) or `P × C` (pool).
    pub gamma: Vec<f32>,
    /// Same shape as `gamma`.
    pub beta: Vec<f32>,
    /// Pool only: where this site's γ (then β) starts in a state row.
    pub state_offset: usize,
}

/// The FedIns selection, resolved.
#[derive(Debug)]
pub(crate) struct Pool {
    /// The query module path from the config.
    pub path: String,
    pub node: u32,
    pub node_name: String,
    /// `D`, the query width.
    pub width: usize,
    /// `P`, the number of entries.
    pub size: usize,
    pub top_k: usize,
    pub eps: f64,
    pub base_query: bool,
    /// `P × D` keys, normalized at load like the queries (the tap's GEMM weight).
    pub keys: Vec<f32>,
    /// `select::similarity_error_bound(D)`: how far an f32 GEMM similarity can lie from
    /// the reference one.
    pub similarity_bound: f64,
}

impl Pool {
    fn key_matrix(&self) -> Option<WeightView<'_>> {
        WeightView::f32(&self.keys, self.size, self.width)
    }

    /// Ranking slots of the certification: the best `k` plus the runner-up that must
    /// trail them, when there is one.
    fn rank_len(&self) -> usize {
        self.top_k.saturating_add(1).min(self.size)
    }
}

/// Pooled classifier heads at a linear node, resolved.
#[derive(Debug)]
pub(crate) struct Head {
    /// The module path from the config.
    pub path: String,
    pub node: u32,
    pub node_name: String,
    pub in_features: usize,
    pub out_features: usize,
    /// `P × out × in`.
    pub weight: Vec<f32>,
    /// `P × out`, if the config names a bias.
    pub bias: Option<Vec<f32>>,
}

impl Head {
    fn weight_of(&self, p: usize) -> Option<WeightView<'_>> {
        let n = self.out_features * self.in_features;
        WeightView::f32(self.weight.get(p * n..(p + 1) * n)?, self.out_features, self.in_features)
    }
}

/// What a target does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Query,
    Site(usize),
    Head,
}

/// A loaded `ssf-pool` adapter (static SSF or FedIns pool). Immutable; implements the sabi
/// [`Adapter`].
pub struct SsfPoolAdapter {
    source: String,
    sites: Vec<Site>,
    pool: Option<Pool>,
    head: Option<Head>,
    targets: Vec<(Target, Role)>,
    state_floats: usize,
    notes: Vec<String>,
    /// Rows the query tap recomputed in f64 because the f32 ranking was not certified.
    fallback_rows: AtomicU64,
}

impl fmt::Debug for SsfPoolAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SsfPoolAdapter")
            .field("source", &self.source)
            .field("sites", &self.sites.iter().map(|s| s.path.as_str()).collect::<Vec<_>>())
            .field("pool_size", &self.pool.as_ref().map(|p| p.size))
            .field("top_k", &self.pool.as_ref().map(|p| p.top_k))
            .field("head", &self.head.as_ref().map(|h| h.path.as_str()))
            .field("fallback_rows", &self.fallback_rows())
            .finish_non_exhaustive()
    }
}

fn bad_call(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::BAD_CALL, field, message)
}

fn internal(field: &str, message: impl Into<String>) -> PluginError {
    PluginError::new(ErrorCode::INTERNAL, field, message)
}

/// `y ← γ' ⊙ y + β'` with `γ' = 1 + m(γ − 1)`, `β' = mβ`. At `m = 1` the stored γ and β are
/// used as they are (`1 + (γ − 1)` may round differently from `γ`).
fn scale_shift(y: &mut [f32], gamma: &[f32], beta: &[f32], m: f32) {
    let it = y.iter_mut().zip(gamma).zip(beta);
    if m == 1.0 {
        for ((y, &g), &b) in it {
            *y = g * *y + b;
        }
    } else {
        for ((y, &g), &b) in it {
            *y = (1.0 + m * (g - 1.0)) * *y + m * b;
        }
    }
}

/// `out = mean over the selected rows of table (width values per row)`, summed in
/// selection order.
fn mean_into(table: &[f32], width: usize, selection: &[f32], out: &mut [f32]) {
    out.fill(0.0);
    for &idx in selection {
        let p = idx as usize;
        for (o, &v) in out.iter_mut().zip(&table[p * width..(p + 1) * width]) {
            *o += v;
        }
    }
    let k = selection.len() as f32;
    for o in out {
        *o /= k;
    }
}

impl SsfPoolAdapter {
    /// Assembles a validated adapter: targets (query tap, site posts, head) and the state
    /// layout (each site's γ then β, then the selected indices).
    pub(crate) fn new(
        source: String,
        mut sites: Vec<Site>,
        pool: Option<Pool>,
        head: Option<Head>,
        notes: Vec<String>,
    ) -> SsfPoolAdapter {
        let mut targets = Vec::with_capacity(sites.len() + 2);
        let mut state_floats = 0;
        if let Some(p) = &pool {
            let flags = if p.base_query { Target::BASE } else { 0 };
            targets.push((Target { node: p.node, hook: HookKind::Tap, flags }, Role::Query));
            for s in &mut sites {
                s.state_offset = state_floats;
                state_floats += 2 * s.width;
            }
            state_floats += p.top_k;
        }
        // Pool sites and heads read the selection the query tap wrote.
        let reads = if pool.is_some() { Target::READS_STATE } else { 0 };
        targets.extend(
            sites.iter().enumerate().map(|(i, s)| (Target::new(s.node, HookKind::Post).with(reads), Role::Site(i))),
        );
        if let Some(h) = &head {
            targets.push((Target::new(h.node, HookKind::LinearDelta).with(reads), Role::Head));
        }
        SsfPoolAdapter { source, sites, pool, head, targets, state_floats, notes, fallback_rows: AtomicU64::new(0) }
    }

    /// The site module paths, in config order.
    pub fn sites(&self) -> impl Iterator<Item = &str> {
        self.sites.iter().map(|s| s.path.as_str())
    }

    /// Pool size `P` and `top_k`, for a pool.
    pub fn pool_shape(&self) -> Option<(usize, usize)> {
        self.pool.as_ref().map(|p| (p.size, p.top_k))
    }

    /// Rows whose selection the query tap recomputed with the exact f64 similarities since
    /// load, because their f32 ranking was within the f32 error bound (near or exact ties,
    /// a zero or non-finite query). A diagnostic: the selection is the same either way.
    pub fn fallback_rows(&self) -> u64 {
        self.fallback_rows.load(Ordering::Relaxed)
    }

    /// The columns of a state row holding site `site`'s averaged γ (pool only); its β
    /// follows in the next `C` columns.
    pub fn gamma_columns(&self, site: usize) -> Option<Range<usize>> {
        self.pool.as_ref()?;
        let s = self.sites.get(site)?;
        Some(s.state_offset..s.state_offset + s.width)
    }

    /// The columns of a state row holding site `site`'s averaged β (pool only).
    pub fn beta_columns(&self, site: usize) -> Option<Range<usize>> {
        let g = self.gamma_columns(site)?;
        Some(g.end..g.end + g.len())
    }

    /// The columns of a state row holding the selected entry indices, best first, as f32
    /// (pool only).
    pub fn selection_columns(&self) -> Option<Range<usize>> {
        let p = self.pool.as_ref()?;
        Some(self.state_floats - p.top_k..self.state_floats)
    }

    fn role(&self, target: u32, hook: HookKind) -> Result<Role, PluginError> {
        let Some(&(t, role)) = self.targets.get(target as usize) else {
            return Err(bad_call(
                "target",
                format!("target {target} out of range: the adapter has {} targets", self.targets.len()),
            ));
        };
        if t.hook != hook {
            return Err(bad_call("target", format!("target {target} is a {:?} hook, not {hook:?}", t.hook)));
        }
        Ok(role)
    }

    fn pool_parts(&self, field: &str) -> Result<&Pool, PluginError> {
        self.pool.as_ref().ok_or_else(|| internal(field, "pool target without a pool"))
    }

    fn check_state(&self, field: &str, rows: usize, state_rows: usize, state_cols: usize) -> Result<(), PluginError> {
        if state_rows != rows || state_cols != self.state_floats {
            return Err(bad_call(
                field,
                format!(
                    "state is {state_rows}×{state_cols}, expected {rows}×{} (rows × state_floats)",
                    self.state_floats
                ),
            ));
        }
        Ok(())
    }

    fn check_scale(field: &str, m: f32) -> Result<(), PluginError> {
        if m.is_finite() { Ok(()) } else { Err(bad_call(field, format!("scale multiplier {m} is not finite"))) }
    }

    /// Scratch of the query tap over `rows` rows: the normalized queries (`rows × D`), their
    /// similarities (`rows × P`), the ranking slots, then the kernel's own scratch.
    fn query_scratch(pool: &Pool, rows: usize, kernels: &HostKernelsRef) -> Option<usize> {
        let ks = (kernels.scratch_floats())(pool.key_matrix()?, rows);
        rows.checked_mul(pool.width)?
            .checked_add(rows.checked_mul(pool.size)?)?
            .checked_add(pool.rank_len())?
            .checked_add(ks)
    }

    fn tap_rows(&self, mut call: Tap<'_>) -> Result<(), PluginError> {
        if self.role(call.target, HookKind::Tap)? != Role::Query {
            return Err(internal("tap", "tap target is not the query"));
        }
        let pool = self.pool_parts("tap")?;
        let field = pool.path.as_str();
        let rows = call.x.rows();
        let (d, p, k) = (pool.width, pool.size, pool.top_k);
        if call.x.cols() != d {
            return Err(bad_call(field, format!("x has {} columns, the query is {d} wide", call.x.cols())));
        }
        self.check_state(field, rows, call.state.rows(), call.state.cols())?;
        let need =
            Self::query_scratch(pool, rows, &call.kernels).ok_or_else(|| bad_call(field, "scratch size overflows"))?;
        let scratch = call.scratch.as_mut_slice();
        if scratch.len() < need {
            return Err(bad_call(field, format!("scratch has {} floats, the call needs {need}", scratch.len())));
        }
        if rows == 0 {
            return Ok(());
        }
        let (queries, rest) = scratch.split_at_mut(rows * d);
        let (sims, rest) = rest.split_at_mut(rows * p);
        let (rank, kscratch) = rest.split_at_mut(pool.rank_len());

        // Every similarity of the call in one f32 GEMM: sims = Q̂·K̂ᵀ.
        for (i, q) in queries.chunks_exact_mut(d).enumerate() {
            normalize_into(call.x.row(i), pool.eps, q);
        }
        let keys = pool.key_matrix().ok_or_else(|| internal(field, "keys no longer match their shape"))?;
        let qv = MatView::new(queries, rows, d, d).ok_or_else(|| internal(field, "query view"))?;
        let sv = MatViewMut::new(sims, rows, p, p).ok_or_else(|| internal(field, "similarity view"))?;
        (call.kernels.linear())(qv, keys, 1.0, false, sv, RSliceMut::from_mut_slice(kscratch)).check(field, "Q̂·K̂ᵀ")?;

        let selection_start = self.state_floats - k;
        let mut fallbacks = 0u64;
        for (i, (query, row_sims)) in queries.chunks_exact(d).zip(sims.chunks_exact_mut(p)).enumerate() {
            let (params, selection) = call.state.row_mut(i).split_at_mut(selection_start);
            if certified_top_k(row_sims, pool.similarity_bound, rank) {
                selection.copy_from_slice(&rank[..k]);
            } else {
                // Within the f32 error bound of a tie: the reference similarities decide.
                for (s, key) in row_sims.iter_mut().zip(pool.keys.chunks_exact(d)) {
                    *s = dot(query, key);
                }
                top_k(row_sims, selection);
                fallbacks += 1;
            }
            for site in &self.sites {
                let c = site.width;
                let (g, b) = params[site.state_offset..site.state_offset + 2 * c].split_at_mut(c);
                mean_into(&site.gamma, c, selection, g);
                mean_into(&site.beta, c, selection, b);
            }
        }
        if fallbacks > 0 {
            self.fallback_rows.fetch_add(fallbacks, Ordering::Relaxed);
        }
        Ok(())
    }

    fn post_rows(&self, mut call: Post<'_>) -> Result<(), PluginError> {
        let Role::Site(s) = self.role(call.target, HookKind::Post)? else {
            return Err(internal("post", "post target is not a site"));
        };
        let site = &self.sites[s];
        let field = site.path.as_str();
        let (rows, c, m) = (call.y.rows(), site.width, call.scale);
        if call.y.cols() != c {
            return Err(bad_call(field, format!("y has {} columns, the site is {c} wide", call.y.cols())));
        }
        Self::check_scale(field, m)?;
        if self.pool.is_some() {
            self.check_state(field, rows, call.state.rows(), call.state.cols())?;
        }
        if m == 0.0 {
            return Ok(());
        }
        for i in 0..rows {
            let y = call.y.row_mut(i);
            if self.pool.is_some() {
                let st = call.state.row(i);
                let (g, b) = st[site.state_offset..site.state_offset + 2 * c].split_at(c);
                scale_shift(y, g, b, m);
            } else {
                scale_shift(y, &site.gamma, &site.beta, m);
            }
        }
        Ok(())
    }

    /// Checks that every state row holds a valid selection (what the query tap writes).
    fn check_selections(&self, field: &str, state: &MatView<'_>, pool: &Pool) -> Result<(), PluginError> {
        let range = self.state_floats - pool.top_k..self.state_floats;
        for i in 0..state.rows() {
            if let Some(&v) =
                state.row(i)[range.clone()].iter().find(|&&v| !(v >= 0.0 && v < pool.size as f32 && v.fract() == 0.0))
            {
                return Err(bad_call(
                    field,
                    format!(
                        "state row {i} selects entry {v}, not an index below {} (did the query tap run?)",
                        pool.size
                    ),
                ));
            }
        }
        Ok(())
    }

    fn head_scratch(&self, head: &Head, rows: usize, kernels: &HostKernelsRef) -> Option<usize> {
        let ks = (kernels.scratch_floats())(head.weight_of(0)?, rows);
        rows.checked_mul(head.in_features)?.checked_add(rows.checked_mul(head.out_features)?)?.checked_add(ks)
    }

    fn head_rows(&self, mut call: LinearDelta<'_>) -> Result<(), PluginError> {
        if self.role(call.target, HookKind::LinearDelta)? != Role::Head {
            return Err(internal("linear_delta", "linear_delta target is not the head"));
        }
        let head = self.head.as_ref().ok_or_else(|| internal("linear_delta", "head target without a head"))?;
        let pool = self.pool_parts("linear_delta")?;
        let field = head.path.as_str();
        let (rows, inf, out, m) = (call.x.rows(), head.in_features, head.out_features, call.scale);
        if call.x.cols() != inf {
            return Err(bad_call(field, format!("x has {} columns, the head has {inf} inputs", call.x.cols())));
        }
        if call.y.rows() != rows || call.y.cols() != out {
            return Err(bad_call(field, format!("y is {}×{}, expected {rows}×{out}", call.y.rows(), call.y.cols())));
        }
        Self::check_scale(field, m)?;
        self.check_state(field, rows, call.state.rows(), call.state.cols())?;
        if rows == 0 || m == 0.0 {
            return Ok(());
        }
        self.check_selections(field, &call.state, pool)?;
        let need =
            self.head_scratch(head, rows, &call.kernels).ok_or_else(|| bad_call(field, "scratch size overflows"))?;
        let scratch = call.scratch.as_mut_slice();
        if scratch.len() < need {
            return Err(bad_call(field, format!("scratch has {} floats, the call needs {need}", scratch.len())));
        }
        let (x_rows, rest) = scratch.split_at_mut(rows * inf);
        let (y_rows, kscratch) = rest.split_at_mut(rows * out);

        // y ← (1 − m)·y, then += m·mean_p(W_p x + b_p). At m = 1 the head replaces y.
        for i in 0..rows {
            let y = call.y.row_mut(i);
            if m == 1.0 {
                y.fill(0.0);
            } else {
                y.iter_mut().for_each(|v| *v *= 1.0 - m);
            }
        }
        let alpha = m / pool.top_k as f32;
        let selection = self.state_floats - pool.top_k..self.state_floats;
        let linear = call.kernels.linear();
        // One GEMM per pool entry over the rows that selected it: each head is read once
        // per call, not once per row.
        for p in 0..pool.size {
            let pf = p as f32;
            let count = |i: usize| call.state.row(i)[selection.clone()].iter().filter(|&&v| v == pf).count();
            let mut n = 0;
            for i in 0..rows {
                if count(i) > 0 {
                    x_rows[n * inf..(n + 1) * inf].copy_from_slice(call.x.row(i));
                    n += 1;
                }
            }
            if n == 0 {
                continue;
            }
            let w = head.weight_of(p).ok_or_else(|| internal(field, "head weight no longer matches its shape"))?;
            let xv = MatView::new(&x_rows[..n * inf], n, inf, inf).ok_or_else(|| internal(field, "x view"))?;
            let yv = MatViewMut::new(&mut y_rows[..n * out], n, out, out).ok_or_else(|| internal(field, "y view"))?;
            linear(xv, w, alpha, false, yv, RSliceMut::from_mut_slice(kscratch)).check(field, "x·W_pᵀ")?;
            let bias = head.bias.as_ref().map(|b| &b[p * out..(p + 1) * out]);
            let mut j = 0;
            for i in 0..rows {
                let c = count(i);
                if c == 0 {
                    continue;
                }
                let c = c as f32;
                let src = &y_rows[j * out..(j + 1) * out];
                let y = call.y.row_mut(i);
                match bias {
                    Some(b) => y.iter_mut().zip(src).zip(b).for_each(|((y, &s), &b)| *y += c * (s + alpha * b)),
                    None => y.iter_mut().zip(src).for_each(|(y, &s)| *y += c * s),
                }
                j += 1;
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
        let Some(&(_, role)) = self.targets.get(target as usize) else {
            return Err(bad_call(
                "target",
                format!("target {target} out of range: the adapter has {} targets", self.targets.len()),
            ));
        };
        if self.pool.is_some() {
            return Err(PluginError::new(
                ErrorCode::UNSUPPORTED,
                "merge",
                "an SSF pool selects parameters per instance; it cannot be folded into the base weights",
            ));
        }
        let Role::Site(s) = role else {
            return Err(internal("merge", "static adapter target is not a site"));
        };
        let site = &self.sites[s];
        let field = site.path.as_str();
        if site.op != NodeOp::Linear {
            return Err(PluginError::new(
                ErrorCode::UNSUPPORTED,
                field,
                format!("node `{}` is not a linear layer; SSF folds into linear layers only", site.node_name),
            ));
        }
        let (c, inf) = (site.width, site.in_features);
        if weight.rows() != c || weight.cols() != inf {
            return Err(bad_call(field, format!("weight is {}×{}, expected {c}×{inf}", weight.rows(), weight.cols())));
        }
        if bias.len() != c {
            return Err(bad_call(field, format!("bias has {} values, expected {c}", bias.len())));
        }
        // γ⊙(Wx + b) + β = (diag(γ)W)x + (γ⊙b + β): the same f32 expression as the post.
        for (o, b) in bias.as_mut_slice().iter_mut().enumerate() {
            let g = site.gamma[o];
            weight.row_mut(o).iter_mut().for_each(|w| *w *= g);
            *b = g * *b + site.beta[o];
        }
        Ok(())
    }

    fn target_info(&self, role: Role) -> TargetInfo {
        let (module, node, variant, bytes) = match role {
            Role::Query => {
                let p = self.pool.as_ref();
                (
                    p.map_or("", |p| p.path.as_str()),
                    p.map_or("", |p| p.node_name.as_str()),
                    "fedins-query",
                    p.map_or(0, |p| p.keys.len()),
                )
            }
            Role::Site(i) => {
                let s = &self.sites[i];
                let variant = if self.pool.is_some() { "ssf-pool" } else { "ssf" };
                (s.path.as_str(), s.node_name.as_str(), variant, s.gamma.len() + s.beta.len())
            }
            Role::Head => {
                let h = self.head.as_ref();
                (
                    h.map_or("", |h| h.path.as_str()),
                    h.map_or("", |h| h.node_name.as_str()),
                    "fedins-head",
                    h.map_or(0, |h| h.weight.len() + h.bias.as_ref().map_or(0, Vec::len)),
                )
            }
        };
        TargetInfo {
            module: RString::from(module),
            node: RString::from(node),
            rank: 0,
            scale: 1.0,
            variant: RString::from(variant),
            bytes: (bytes * 4) as u64,
        }
    }
}

impl Adapter for SsfPoolAdapter {
    fn targets(&self) -> RVec<Target> {
        self.targets.iter().map(|&(t, _)| t).collect()
    }

    fn info(&self) -> AdapterInfo {
        let targets: RVec<TargetInfo> = self.targets.iter().map(|&(_, role)| self.target_info(role)).collect();
        let owned_bytes = targets.iter().map(|t| t.bytes).sum();
        AdapterInfo {
            kind: RString::from(crate::KIND),
            source: RString::from(self.source.as_str()),
            targets,
            mapped_bytes: 0,
            owned_bytes,
            notes: self.notes.iter().map(|n| RString::from(n.as_str())).collect(),
        }
    }

    fn scratch_floats(&self, target: u32, rows: usize, kernels: HostKernelsRef) -> usize {
        // An unknown target gets 0 here and BAD_CALL from the call; a size that overflows
        // gets usize::MAX, which no host can allocate.
        match self.targets.get(target as usize).map(|&(_, role)| role) {
            Some(Role::Query) => {
                self.pool.as_ref().map_or(0, |p| Self::query_scratch(p, rows, &kernels).unwrap_or(usize::MAX))
            }
            Some(Role::Head) => {
                self.head.as_ref().map_or(0, |h| self.head_scratch(h, rows, &kernels).unwrap_or(usize::MAX))
            }
            Some(Role::Site(_)) | None => 0,
        }
    }

    fn linear_delta(&self, call: LinearDelta<'_>) -> RResult<(), PluginError> {
        guard(KIND, "linear_delta", || self.head_rows(call))
    }

    fn merge(&self, target: u32, weight: MatViewMut<'_>, bias: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        guard(KIND, "merge", || self.merge_into(target, weight, bias))
    }

    fn state_floats(&self) -> usize {
        self.state_floats
    }

    fn tap(&self, call: Tap<'_>) -> RResult<(), PluginError> {
        guard(KIND, "tap", || self.tap_rows(call))
    }

    fn post(&self, call: Post<'_>) -> RResult<(), PluginError> {
        guard(KIND, "post", || self.post_rows(call))
    }

    fn device_params(&self, target: u32) -> RResult<DeviceParams, PluginError> {
        guard(KIND, "device_params", || self.device_params_of(target))
    }
}

impl SsfPoolAdapter {
    /// Static SSF sites export γ and β. A pool (FedIns) selects parameters per row on the
    /// host and is refused with `UNSUPPORTED`, as is its pooled head.
    fn device_params_of(&self, target: u32) -> Result<DeviceParams, PluginError> {
        let role = self.targets.get(target as usize).map(|&(_, r)| r).ok_or_else(|| {
            bad_call("target", format!("target {target} out of range: the adapter has {} targets", self.targets.len()))
        })?;
        match role {
            Role::Site(s) if self.pool.is_none() => {
                let site = &self.sites[s];
                Ok(DeviceParams::ScaleShift { gamma: site.gamma.clone().into(), beta: site.beta.clone().into() })
            }
            _ => Err(PluginError::new(
                ErrorCode::UNSUPPORTED,
                "pool",
                "FedIns pools select parameters per row on the host and do not run on GPU sessions",
            )),
        }
    }
}
