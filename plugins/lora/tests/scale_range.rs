//! Scales whose product leaves the f32 range are refused (issue 15): `lora_alpha: 1e300`
//! and a `scaling` of 1e39 (config or load option) at load, naming the field; a row
//! scale of 3e38 times the module's scale at run time. Before, each loaded or ran and
//! made every output of the adapter's rows ±Inf or NaN.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::ErrorCode;
use serde_json::json;

#[test]
fn a_scale_beyond_f32_is_refused_at_load() {
    let model = example_model();
    // s = alpha / r = 1e300 / 2: finite in f64, +Inf in f32.
    let e = assert_err(
        load(&model, &config(json!({"lora_alpha": 1e300})), &example_tensors(), ""),
        ErrorCode::CONFIG,
        "lora_alpha",
    );
    assert!(e.message.as_str().contains("f32 range"), "{e}");
    assert_err(load(&model, &config(json!({"scaling": 1e39})), &example_tensors(), ""), ErrorCode::CONFIG, "scaling");
    assert_err(
        load(&model, &config(json!({})), &example_tensors(), r#"{"scaling": -1e39}"#),
        ErrorCode::CONFIG,
        "scaling",
    );
    // The largest f32 scale still loads.
    load(&model, &config(json!({})), &example_tensors(), r#"{"scaling": 3.4e38}"#).unwrap();
}

#[test]
fn a_row_scale_whose_product_overflows_is_refused_at_run() {
    let model = example_model();
    let fc = model.node("fc");
    // s = alpha / r = 4 / 2 = 2; a row scale of 3e38 makes 6e38 > f32::MAX.
    let adapter = load(&model, &config(json!({})), &example_tensors(), "").unwrap();
    let mut y = fc.forward(&EX_X);
    let e = run(&adapter, 0, &EX_X, fc.in_features, &mut y, fc.out_features, fc.bias.as_deref(), 3e38);
    let e = assert_err(e, ErrorCode::BAD_CALL, "fc");
    assert!(e.message.as_str().contains("overflows f32"), "{e}");
    // An ordinary row scale runs.
    let mut y = fc.forward(&EX_X);
    run(&adapter, 0, &EX_X, fc.in_features, &mut y, fc.out_features, fc.bias.as_deref(), 1.0).unwrap();
}
