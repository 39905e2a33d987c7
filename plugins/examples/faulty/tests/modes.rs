//! Each mode misbehaves as documented, and always as a value: no panic escapes a hook or
//! `load`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::abi_stable::std_types::{ROption, RSliceMut, RStr};
use graft_plugin_abi::{
    ABI_VERSION, AdapterBox, ErrorCode, HookKind, LinearDelta, LoadRequest, MatView, MatViewMut, PluginError, Post,
};

fn load(name: &str, json: &str) -> Result<AdapterBox, PluginError> {
    let dir = TempDir::new("faulty");
    let source = source(&dir, name, json);
    let req = LoadRequest { id: RStr::from_str(name), source: RStr::from_str(&source), options: RStr::from_str("") };
    graft_plugin_faulty::module().load()(req, model().view()).into_result()
}

fn delta(a: &AdapterBox, y: &mut [f32]) -> Result<(), PluginError> {
    let x = [1.0f32, 2.0];
    a.linear_delta(LinearDelta {
        target: 0,
        x: MatView::new(&x, 1, 2, 2).unwrap(),
        y: MatViewMut::new(y, 1, 2, 2).unwrap(),
        base_bias: ROption::RNone,
        scale: 1.0,
        state: MatView::empty(1),
        kernels: kernels(),
        scratch: RSliceMut::from_mut_slice(&mut []),
    })
    .into_result()
}

fn post(a: &AdapterBox, y: &mut [f32]) -> Result<(), PluginError> {
    let mut tickets = [0u64; 2];
    a.post(Post {
        target: 0,
        y: MatViewMut::new(y, 2, 1, 1).unwrap(),
        state: MatView::empty(2),
        tickets: RSliceMut::from_mut_slice(&mut tickets),
        scale: 1.0,
        kernels: kernels(),
        scratch: RSliceMut::from_mut_slice(&mut []),
    })
    .into_result()
}

#[test]
fn module_identity() {
    let m = graft_plugin_faulty::module();
    assert_eq!(m.kind()().as_str(), "faulty");
    assert_eq!(m.abi_version(), graft_plugin_faulty::CLAIMED_ABI_VERSION);
    assert_eq!(graft_plugin_faulty::CLAIMED_ABI_VERSION, if cfg!(feature = "old_abi") { 1 } else { ABI_VERSION });
}

#[test]
fn every_mode_does_what_it_says() {
    let ok = load("ok", r#"{"mode":"ok","module":"fc"}"#).unwrap();
    assert_eq!(ok.targets()[0].hook, HookKind::LinearDelta);
    let mut y = [1.5f32, -2.0];
    delta(&ok, &mut y).unwrap();
    assert_eq!(y, [1.5, -2.0]);

    let err = load("error", r#"{"mode":"error","module":"fc"}"#).unwrap();
    let e = delta(&err, &mut y).unwrap_err();
    assert_eq!((e.code, e.field.as_str()), (ErrorCode::BAD_CALL, "faulty"));

    let panics = load("panic", r#"{"mode":"panic","module":"fc"}"#).unwrap();
    let e = delta(&panics, &mut y).unwrap_err();
    assert_eq!((e.code, e.field.as_str()), (ErrorCode::INTERNAL, "linear_delta"));
    // The adapter still answers afterwards (the guard left nothing poisoned).
    assert_eq!(delta(&panics, &mut y).unwrap_err().code, ErrorCode::INTERNAL);

    let nan = load("nan", r#"{"mode":"nan","module":"fc"}"#).unwrap();
    delta(&nan, &mut y).unwrap();
    assert!(y.iter().all(|v| v.is_nan()));
}

#[test]
fn post_hooks_misbehave_too() {
    let nan = load("post-nan", r#"{"mode":"nan","module":"act"}"#).unwrap();
    assert_eq!(nan.targets()[0].hook, HookKind::Post);
    let mut y = [1.0f32, 2.0];
    post(&nan, &mut y).unwrap();
    assert!(y.iter().all(|v| v.is_nan()));
    let panics = load("post-panic", r#"{"mode":"panic","module":"fc","hook":"post"}"#).unwrap();
    assert_eq!(post(&panics, &mut y).unwrap_err().code, ErrorCode::INTERNAL);
    // A call for the hook the adapter does not have is a bad call, not a panic.
    assert_eq!(delta(&panics, &mut [0.0, 0.0]).unwrap_err().code, ErrorCode::BAD_CALL);
}

#[test]
fn a_panicking_load_is_an_internal_error() {
    let e = load("pol", r#"{"mode":"panic_on_load","module":"fc"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::INTERNAL);
    assert!(e.message.contains("panic_on_load"), "{e}");
}

#[test]
fn bad_sources_are_refused() {
    for (json, code, field) in [
        (r#"{"mode":"explode","module":"fc"}"#, ErrorCode::CONFIG, "mode"),
        (r#"{"module":"fc"}"#, ErrorCode::CONFIG, "mode"),
        (r#"{"mode":"ok"}"#, ErrorCode::CONFIG, "module"),
        (r#"{"mode":"ok","module":"fc","extra":1}"#, ErrorCode::CONFIG, "extra"),
        (r#"{"mode":"ok","module":"fc","hook":"tap"}"#, ErrorCode::CONFIG, "hook"),
        (r#"{"mode":"ok","module":"act","hook":"linear_delta"}"#, ErrorCode::UNSUPPORTED, "hook"),
        (r#"{"mode":"ok","module":"dense"}"#, ErrorCode::UNSUPPORTED, "hook"),
        (r#"{"mode":"ok","module":"nope"}"#, ErrorCode::UNKNOWN_MODULE, "nope"),
        ("[1]", ErrorCode::CONFIG, "source"),
        ("", ErrorCode::CONFIG, "source"),
    ] {
        let e = load("bad", json).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (code, field), "{json}: {e}");
    }
    let req = LoadRequest {
        id: RStr::from_str("x"),
        source: RStr::from_str("/nonexistent/faulty.json"),
        options: RStr::from_str(""),
    };
    let e = graft_plugin_faulty::module().load()(req, model().view()).into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::IO);
}
