//! The model the faulty kind is loaded against, and source files for it. The stand-in
//! host (fake model, kernels, temp directories) is `graft_plugin_abi::testing`.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub use graft_plugin_abi::testing::{FakeModel, FakeNode, TempDir, kernels};

/// Node 0: linear `fc` 2→2; node 1: activation `act` (width 2); node 2: input `dense`.
/// Graph names are the module paths.
pub fn model() -> FakeModel {
    FakeModel::new(vec![
        FakeNode::linear("fc", 2, 2, vec![0.0; 4], None),
        FakeNode::other("act", 2),
        FakeNode::input("dense", 2),
    ])
    .with_name_prefix("")
}

/// Writes `json` as a source file named `name` in `dir`; returns its path.
pub fn source(dir: &TempDir, name: &str, json: &str) -> String {
    let path = dir.file(&format!("{name}.json"));
    std::fs::write(&path, json).unwrap();
    path
}
