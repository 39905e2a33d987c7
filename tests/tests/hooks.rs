//! The host side of the tap and post hooks, checked with a probe adapter kind defined
//! here: where each hook fires (pre- vs post-activation, dense inputs), the order at one
//! node, per-row state across nodes, the hook-free prefix pass for base taps, tickets
//! mapped back to rows, gathered (non-consecutive) groups and thread counts, and the
//! targets the registry refuses.

mod common_adapters;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RVec};
use common_adapters::{TestResult, bits, scratch};
use graft::adapters::abi::{
    Adapter, Adapter_TO, AdapterInfo, ErrorCode, HookKind, HostKernelsRef, LinearDelta, MatViewMut, PluginError, Post,
    Tap, Target,
};
use graft::adapters::{Registry, RowAdapters};
use graft::builder::{Matrix, ModelBuilder, WeightFormats};
use graft::graph::Activation;
use graft::{Input, Model, Session, SessionOptions};

const IN: usize = 4;
const H1: usize = 8;
const H2: usize = 6;

fn weights(rows: usize, cols: usize, seed: f32) -> Vec<f32> {
    (0..rows * cols).map(|i| (i as f32 * 0.37 + seed).sin() * 0.6).collect()
}

fn bias(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| (i as f32 * 0.21 + seed).cos() * 0.1).collect()
}

/// `x[4] → fc1(8) → r1 relu → fc2(6) → r2 relu → fc3(1) = logit`.
fn model(dir: &std::path::Path) -> TestResult<Model> {
    let mut b = ModelBuilder::new("hooks");
    let x = b.dense_input("x", IN);
    let fc1 = b.linear("fc1", &x, Matrix::new(H1, IN, weights(H1, IN, 0.1)), Some(bias(H1, 0.3)));
    let r1 = b.activation("r1", Activation::Relu, &fc1);
    let fc2 = b.linear("fc2", &r1, Matrix::new(H2, H1, weights(H2, H1, 0.7)), Some(bias(H2, 0.9)));
    let r2 = b.activation("r2", Activation::Relu, &fc2);
    let fc3 = b.linear("fc3", &r2, Matrix::new(1, H2, weights(1, H2, 1.3)), Some(vec![0.05]));
    b.output("logit", &fc3);
    let path = dir.join("hooks.graft");
    b.write(&path, WeightFormats::from_name("f32").ok_or("f32")?)?;
    Ok(Model::open(&path)?)
}

/// The same network in plain f64 with optional edits: `post_fc1` adds to fc1's
/// pre-activation output, `post_r1` to r1's activated output.
fn reference(x: &[f32], post_fc1: f64, post_r1: f64) -> (Vec<f64>, f64) {
    let lin = |x: &[f64], w: &[f32], b: &[f32], out: usize| -> Vec<f64> {
        (0..out)
            .map(|o| b[o] as f64 + x.iter().enumerate().map(|(i, v)| v * w[o * x.len() + i] as f64).sum::<f64>())
            .collect()
    };
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let r1: Vec<f64> = lin(&x, &weights(H1, IN, 0.1), &bias(H1, 0.3), H1)
        .into_iter()
        .map(|v| (v + post_fc1).max(0.0) + post_r1)
        .collect();
    let r2: Vec<f64> = lin(&r1, &weights(H2, H1, 0.7), &bias(H2, 0.9), H2).into_iter().map(|v| v.max(0.0)).collect();
    let logit = lin(&r2, &weights(1, H2, 1.3), &[0.05], 1)[0];
    (r2, logit)
}

/// What the probe does at each of its targets.
#[derive(Clone, Copy, Debug)]
enum Action {
    /// Tap: state = [sum of the row, first value].
    Sum,
    /// Post: y += c.
    Add(f32),
    /// Post: y[0] = state[0] (the tapped sum), ticket = 1 + state[1] (a row id).
    FromState,
    /// Delta: y += c.
    Delta(f32),
}

#[derive(Debug)]
struct Probe {
    targets: Vec<(Target, Action)>,
}

fn err(message: &str) -> PluginError {
    PluginError::new(ErrorCode::BAD_CALL, "", message)
}

impl Adapter for Probe {
    fn targets(&self) -> RVec<Target> {
        self.targets.iter().map(|t| t.0).collect()
    }
    fn info(&self) -> AdapterInfo {
        AdapterInfo {
            kind: "probe".into(),
            source: "".into(),
            targets: RVec::new(),
            mapped_bytes: 0,
            owned_bytes: 0,
            notes: RVec::new(),
        }
    }
    fn scratch_floats(&self, _target: u32, _rows: usize, _kernels: HostKernelsRef) -> usize {
        0
    }
    fn linear_delta(&self, mut call: LinearDelta<'_>) -> RResult<(), PluginError> {
        match self.targets.get(call.target as usize) {
            Some((_, Action::Delta(c))) => {
                add(&mut call.y, *c);
                RResult::ROk(())
            }
            _ => RResult::RErr(err("delta at a non-delta target")),
        }
    }
    fn merge(
        &self,
        _target: u32,
        _weight: MatViewMut<'_>,
        _bias: abi_stable::std_types::RSliceMut<'_, f32>,
    ) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(ErrorCode::UNSUPPORTED, "", "probe"))
    }
    fn state_floats(&self) -> usize {
        2
    }
    fn tap(&self, mut call: Tap<'_>) -> RResult<(), PluginError> {
        if !matches!(self.targets.get(call.target as usize), Some((_, Action::Sum))) {
            return RResult::RErr(err("tap at a non-tap target"));
        }
        for i in 0..call.x.rows() {
            let row = call.x.row(i);
            let (sum, first) = (row.iter().sum::<f32>(), row[0]);
            let state = call.state.row_mut(i);
            state[0] = sum;
            state[1] = first;
        }
        RResult::ROk(())
    }
    fn post(&self, mut call: Post<'_>) -> RResult<(), PluginError> {
        match self.targets.get(call.target as usize) {
            Some((_, Action::Add(c))) => add(&mut call.y, *c),
            Some((_, Action::FromState)) => {
                for i in 0..call.y.rows() {
                    let state = call.state.row(i);
                    call.y.row_mut(i)[0] = state[0];
                    call.tickets[i] = 1 + state[1] as u64;
                }
            }
            _ => return RResult::RErr(err("post at a non-post target")),
        }
        RResult::ROk(())
    }
}

fn add(y: &mut MatViewMut<'_>, c: f32) {
    for i in 0..y.rows() {
        y.row_mut(i).iter_mut().for_each(|v| *v += c);
    }
}

fn slot(model: &Model, name: &str) -> u32 {
    let g = model.graph();
    match g.node(name) {
        Some(n) => n as u32,
        None => (g.nodes.len() + g.inputs.iter().position(|i| i.name == name).unwrap_or(usize::MAX)) as u32,
    }
}

fn probe(registry: &Registry, id: &str, targets: &[(&str, HookKind, u32, Action)]) -> TestResult {
    let model = registry.model();
    let targets = targets
        .iter()
        .map(|&(name, hook, flags, action)| {
            let reads = if matches!(action, Action::FromState) { Target::READS_STATE } else { 0 };
            (Target { node: slot(model, name), hook, flags: flags | reads }, action)
        })
        .collect();
    let object = Adapter_TO::from_value(Probe { targets }, TD_Opaque);
    registry.insert(registry.adopt(id, "probe", object)?)?;
    Ok(())
}

/// Inputs whose first column is the row index (so taps can report it).
fn inputs(rows: usize) -> Vec<f32> {
    (0..rows * IN).map(|i| if i % IN == 0 { (i / IN) as f32 } else { ((i as f32) * 0.13).sin() }).collect()
}

/// Logits and `(row, ticket)` pairs of one run.
type Served = (Vec<f32>, Vec<(usize, u64)>);

fn run(model: &Model, x: &[f32], rows: &RowAdapters, threads: usize) -> TestResult<Served> {
    let n = x.len() / IN;
    let mut session = Session::new(model, SessionOptions { max_batch: n, threads, ..Default::default() })?;
    let out = session.run_with(&[Input::dense("x", x, IN)], rows)?;
    let logits = out.get("logit").ok_or("no logit")?.to_vec();
    let mut tickets: Vec<(usize, u64)> = out.tickets().map(|t| (t.row, t.value)).collect();
    tickets.sort_unstable();
    Ok((logits, tickets))
}

#[test]
fn posts_see_pre_activation_at_a_linear_and_activated_values_at_an_activation() -> TestResult {
    let dir = scratch("hooks_phases")?;
    let model = model(&dir)?;
    let registry = Registry::new(&model);
    probe(&registry, "pre", &[("fc1", HookKind::Post, 0, Action::Add(-0.25))])?;
    probe(&registry, "post", &[("r1", HookKind::Post, 0, Action::Add(-0.25))])?;
    probe(&registry, "delta", &[("fc1", HookKind::LinearDelta, 0, Action::Delta(-0.25))])?;
    let x = inputs(5);
    for (id, fc1, r1) in [("pre", -0.25, 0.0), ("post", 0.0, -0.25), ("delta", -0.25, 0.0)] {
        let (logits, tickets) = run(&model, &x, &RowAdapters::all(&registry, id)?, 1)?;
        assert!(tickets.is_empty());
        for (r, &got) in logits.iter().enumerate() {
            let want = reference(&x[r * IN..(r + 1) * IN], fc1, r1).1;
            assert!((got as f64 - want).abs() < 1e-5, "{id} row {r}: {got} vs {want}");
        }
    }
    Ok(())
}

#[test]
fn state_flows_from_a_tap_to_a_later_post_and_tickets_name_their_rows() -> TestResult {
    let dir = scratch("hooks_state")?;
    let model = model(&dir)?;
    let registry = Registry::new(&model);
    // Tap r2 (the last hidden layer), replace the logit by the tapped sum; the ticket
    // encodes the row index tapped from the input's first column.
    probe(&registry, "sum", &[("r2", HookKind::Tap, 0, Action::Sum), ("fc3", HookKind::Post, 0, Action::FromState)])?;
    probe(&registry, "input", &[("x", HookKind::Tap, 0, Action::Sum), ("fc3", HookKind::Post, 0, Action::FromState)])?;
    let x = inputs(40);
    let mut rows = RowAdapters::new(&registry);
    for r in 0..40 {
        match r % 3 {
            0 => rows.push("sum")?,
            1 => rows.push("input")?,
            _ => rows.push_base()?,
        }
    }
    let (logits, tickets) = run(&model, &x, &rows, 1)?;
    for (r, &got) in logits.iter().enumerate() {
        let row = &x[r * IN..(r + 1) * IN];
        let (r2, base) = reference(row, 0.0, 0.0);
        let want = match r % 3 {
            0 => r2.iter().sum::<f64>(),
            1 => row.iter().map(|&v| v as f64).sum(),
            _ => base,
        };
        assert!((got as f64 - want).abs() < 1e-5, "row {r}: {got} vs {want}");
    }
    // The "sum" adapter's ticket is 1 + r2[0] truncated; the "input" one is 1 + r.
    let input_rows: Vec<(usize, u64)> = tickets.iter().copied().filter(|&(r, _)| r % 3 == 1).collect();
    assert_eq!(input_rows, (0..40).filter(|r| r % 3 == 1).map(|r| (r, 1 + r as u64)).collect::<Vec<_>>());
    assert_eq!(tickets.iter().filter(|&&(r, _)| r % 3 == 2).count(), 0, "base rows get no tickets");
    // Gathered groups and threads change nothing.
    for threads in [2, 3] {
        let (again, tickets_again) = run(&model, &x, &rows, threads)?;
        assert_eq!(bits(&again), bits(&logits), "{threads} threads");
        assert_eq!(tickets_again, tickets);
    }
    Ok(())
}

#[test]
fn base_taps_see_the_base_value_through_a_prefix_pass() -> TestResult {
    let dir = scratch("hooks_prefix")?;
    let model = model(&dir)?;
    let registry = Registry::new(&model);
    let edit = ("fc1", HookKind::Post, 0, Action::Add(0.5));
    let out = ("fc3", HookKind::Post, 0, Action::FromState);
    probe(&registry, "base", &[edit, ("r2", HookKind::Tap, Target::BASE, Action::Sum), out])?;
    probe(&registry, "served", &[edit, ("r2", HookKind::Tap, 0, Action::Sum), out])?;
    // Another adapter's edit earlier in the row's stack must not leak into a base tap.
    probe(&registry, "edit", &[("fc1", HookKind::Post, 0, Action::Add(0.5))])?;
    probe(&registry, "query", &[("r2", HookKind::Tap, Target::BASE, Action::Sum), out])?;
    let x = inputs(9);
    let mut rows = RowAdapters::new(&registry);
    for r in 0..9 {
        match r % 3 {
            0 => rows.push("base")?,
            1 => rows.push("served")?,
            _ => rows.push_stack(&[("edit", 1.0), ("query", 1.0)])?,
        }
    }
    for threads in [1, 2] {
        let (logits, _) = run(&model, &x, &rows, threads)?;
        for (r, &got) in logits.iter().enumerate() {
            let row = &x[r * IN..(r + 1) * IN];
            let edited = r % 3 == 1;
            let want: f64 = reference(row, if edited { 0.5 } else { 0.0 }, 0.0).0.iter().sum();
            assert!((got as f64 - want).abs() < 1e-5, "row {r}: {got} vs {want}");
        }
    }
    Ok(())
}

#[test]
fn targets_that_do_not_fit_their_node_are_refused() -> TestResult {
    let dir = scratch("hooks_refused")?;
    let model = model(&dir)?;
    let registry = Registry::new(&model);
    let cases: [&[(&str, HookKind, u32, Action)]; 5] = [
        // A post that would read state before its tap wrote it.
        &[("fc1", HookKind::Post, 0, Action::FromState), ("r2", HookKind::Tap, 0, Action::Sum)],
        &[("r1", HookKind::LinearDelta, 0, Action::Delta(1.0))],
        &[("x", HookKind::Post, 0, Action::Add(1.0))],
        &[("x", HookKind::LinearDelta, 0, Action::Delta(1.0))],
        &[("r2", HookKind::Tap, 0, Action::Sum), ("r2", HookKind::Tap, 0, Action::Sum)],
    ];
    for (i, targets) in cases.iter().enumerate() {
        let e = probe(&registry, &format!("bad{i}"), targets).err().ok_or(format!("case {i} was accepted"))?;
        assert!(e.to_string().contains("bad target"), "case {i}: {e}");
    }
    let far = Target { node: 1000, hook: HookKind::Tap, flags: 0 };
    let object = Adapter_TO::from_value(Probe { targets: vec![(far, Action::Sum)] }, TD_Opaque);
    assert!(registry.adopt("far", "probe", object).is_err());
    Ok(())
}
