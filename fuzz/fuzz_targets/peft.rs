//! Fuzzes the PEFT LoRA load path end to end: config parsing, safetensors header
//! validation, key grouping, module resolution, shape/rank/finiteness checks, DoRA norms,
//! and then the forward pass of whatever validated.
//!
//! Input layout: `u32` little-endian config length `n`, then `n` bytes of
//! `adapter_config.json`, then the rest as `adapter_model.safetensors` (short inputs are
//! an empty config). The bytes go to `graft_plugin_lora::load_bytes` against a fixed tiny
//! model (`graft::synthetic::tiny()`: linears `fc` 4→8 and `head` 12→1, embedding bag
//! `emb`), which must return `Ok` or a typed error. An adapter that validated is adopted
//! by the registry (replacing the previous input's) and run on a zero batch with every row using it, at scale 1 and a second
//! multiplier; validation promises the forward path can trust every shape, so an error or
//! a panic there is a finding.

#![no_main]

use std::sync::OnceLock;

use abi_stable::sabi_trait::TD_Opaque;
use graft::adapters::{HostModelView, ModuleMap, Registry, RowAdapters};
use graft::builder::WeightFormats;
use graft::synthetic::GraphInputs;
use graft::{Model, Session, SessionOptions};
use graft_plugin_abi::{Adapter_TO, ModelView_TO};
use libfuzzer_sys::fuzz_target;

const ROWS: usize = 3;

struct World {
    model: Model,
    map: ModuleMap,
    registry: Registry,
    zeros: GraphInputs,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let bytes = graft::synthetic::tiny().to_bytes(WeightFormats::uniform(graft::WeightFormat::F32)).expect("tiny");
        let model = Model::from_slice_copy(&bytes).expect("tiny model opens");
        let registry = Registry::new(&model);
        let zeros = GraphInputs::zeros(model.graph(), ROWS);
        World { model, map: ModuleMap::new(), registry, zeros }
    })
}

/// Splits the input into (config, tensors).
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((len, rest)) = data.split_first_chunk::<4>() else { return (&[], data) };
    let n = (u32::from_le_bytes(*len) as usize).min(rest.len());
    rest.split_at(n)
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let (config, tensors) = split(data);
    let view = HostModelView::new(&w.model, &w.map);
    let loaded =
        graft_plugin_lora::load_bytes("fuzz", config, tensors.to_vec(), "", &ModelView_TO::from_ptr(&view, TD_Opaque));
    let adapter = match loaded {
        Ok(adapter) => adapter,
        // Formatting walks every field of the error: it must not panic either.
        Err(e) => return drop(e.to_string()),
    };
    let adapter = match w.registry.adopt("fuzz", "lora", Adapter_TO::from_value(adapter, TD_Opaque)) {
        Ok(a) => a,
        Err(e) => panic!("the lora kind validated an adapter the host refuses: {e}"),
    };
    w.registry.upsert(adapter).expect("an adapter of this model publishes");
    let inputs = w.zeros.inputs();
    for kernels in graft::kernels::available() {
        let options =
            SessionOptions { max_batch: ROWS, threads: 1, kernels: Some(kernels.level), ..Default::default() };
        let mut session = Session::new(&w.model, options).expect("tiny plans");
        for set in [&[("fuzz", 1.0)][..], &[("fuzz", -0.5), ("fuzz", 2.0)]] {
            let rows = RowAdapters::all_stack(&w.registry, set).expect("published id");
            let out = session.run_with(&inputs, &rows).expect("a validated adapter runs a valid zero batch");
            for (_, view) in out.iter() {
                for r in 0..view.rows() {
                    // Read every output value, so the sanitizer checks the views' bounds.
                    std::hint::black_box(view.row(r).iter().sum::<f32>());
                }
            }
        }
    }
});
