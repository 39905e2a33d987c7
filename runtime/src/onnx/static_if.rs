//! ONNX `If` whose condition is known once shapes are: the taken branch, inlined.
//!
//! torch's legacy exporter writes `x.squeeze(d)` (and a few other shape-dependent
//! choices) as `If(Equal(Shape(x)[d], 1), Squeeze, Identity)`. With every axis but the
//! batch fixed at convert time, tract's inference knows the condition, but its typed
//! translation still keeps both branches in one `IfThenElse`, which refuses branches of
//! different ranks. This builder replaces tract's: same parsing and inference, and when
//! the condition is a constant the typed model gets only the taken branch's nodes. A
//! condition that depends on the batch is left to tract (and refused there).

use std::collections::HashMap;

use tract_hir::internal::*;
use tract_onnx::model::{ParseResult, ParsingContext};
use tract_onnx::ops::logic::If;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_core::ops::source::TypedSource;

/// Registers the builder for `If` in place of tract's.
pub(super) fn register(onnx: &mut tract_onnx::Onnx) {
    onnx.op_register.insert("If", static_if);
}

fn static_if(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let then_graph = node.attribute.iter().find(|a| a.name == "then_branch").and_then(|a| a.g.as_ref());
    let else_graph = node.attribute.iter().find(|a| a.name == "else_branch").and_then(|a| a.g.as_ref());
    let (Some(then_graph), Some(else_graph)) = (then_graph, else_graph) else {
        bail!("If without then_branch / else_branch")
    };
    let ParseResult { model: then_body, unresolved_inputs: then_unresolved, .. } = ctx.parse_graph(then_graph)?;
    let ParseResult { model: else_body, unresolved_inputs: else_unresolved, .. } = ctx.parse_graph(else_graph)?;
    let mut unresolved: Vec<String> = then_unresolved.iter().chain(else_unresolved.iter()).cloned().collect();
    unresolved.sort();
    unresolved.dedup();
    let position = |name: &String| unresolved.iter().position(|s| s == name).map(|p| p + 1);
    let then_map: Option<Vec<usize>> = then_unresolved.iter().map(position).collect();
    let else_map: Option<Vec<usize>> = else_unresolved.iter().map(position).collect();
    let (Some(then_map), Some(else_map)) = (then_map, else_map) else { bail!("If: unresolved branch input") };
    let inner = If::new(then_body, then_map.clone(), else_body, else_map.clone());
    Ok((Box::new(StaticIf { inner, then_map, else_map }), unresolved))
}

/// tract's `If` plus its input mappings (tract keeps them private).
#[derive(Debug, Clone)]
struct StaticIf {
    inner: If,
    then_map: Vec<usize>,
    else_map: Vec<usize>,
}

// Like tract's own `If`: two branch ops are never merged as equal.
impl PartialEq for StaticIf {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}
impl Eq for StaticIf {}

impl Op for StaticIf {
    fn name(&self) -> StaticName {
        "If".into()
    }

    not_a_typed_op!();
}

impl EvalOp for StaticIf {
    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        self.inner.eval_out_of_plan(inputs)
    }

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.inner.eval(ctx, inputs)
    }
}

impl InferenceOp for StaticIf {
    fn infer_facts(
        &mut self,
        inputs: TVec<&InferenceFact>,
        outputs: TVec<&InferenceFact>,
        observed: TVec<&InferenceFact>,
    ) -> TractResult<(TVec<InferenceFact>, TVec<InferenceFact>, TVec<InferenceFact>)> {
        self.inner.infer_facts(inputs, outputs, observed)
    }

    fn nboutputs(&self) -> TractResult<usize> {
        self.inner.nboutputs()
    }

    as_op!();

    fn to_typed(
        &self,
        source: &InferenceModel,
        node: &InferenceNode,
        target: &mut TypedModel,
        mapping: &HashMap<OutletId, OutletId>,
    ) -> TractResult<TVec<OutletId>> {
        let cond_outlet = node.inputs.first().ok_or_else(|| format_err!("If without a condition"))?;
        let cond = source.outlet_fact(*cond_outlet)?.value.concretize();
        let Some(cond) = cond else { return self.inner.to_typed(source, node, target, mapping) };
        let (body, map) = if cond.cast_to_scalar::<bool>()? {
            (&self.inner.then_body, &self.then_map)
        } else {
            (&self.inner.else_body, &self.else_map)
        };
        let body = body.clone().into_typed()?;
        let mut wired: HashMap<OutletId, OutletId> = HashMap::new();
        for (ix, outlet) in body.input_outlets()?.iter().enumerate() {
            let outer = map.get(ix).and_then(|&m| node.inputs.get(m)).and_then(|o| mapping.get(o));
            wired.insert(*outlet, *outer.ok_or_else(|| format_err!("If: branch input {ix} is not wired"))?);
        }
        for n in body.eval_order()? {
            let inner = body.node(n);
            if inner.op_is::<TypedSource>() {
                continue;
            }
            let inputs = inner
                .inputs
                .iter()
                .map(|o| wired.get(o).copied().ok_or_else(|| format_err!("If: branch node input not wired")))
                .collect::<TractResult<TVec<OutletId>>>()?;
            let outs = target.wire_node(format!("{}.{}", node.name, inner.name), inner.op.clone(), &inputs)?;
            for (slot, o) in outs.iter().enumerate() {
                wired.insert(OutletId::new(n, slot), *o);
            }
        }
        body.output_outlets()?
            .iter()
            .map(|o| wired.get(o).copied().ok_or_else(|| format_err!("If: branch output not wired")))
            .collect()
    }
}
