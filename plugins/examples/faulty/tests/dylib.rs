//! With `--features plugin` (or `old_abi`): the built cdylib loads through abi_stable's
//! checked path, claims the documented `abi_version`, and contains its own panics across
//! the real library boundary. The library is found next to the test executable
//! (`target/<profile>/deps/`), where cargo puts the crate's cdylib.
#![cfg(feature = "plugin")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use graft_plugin_abi::abi_stable::library::lib_header_from_path;
use graft_plugin_abi::abi_stable::sabi_trait::TD_Opaque;
use graft_plugin_abi::abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RStr, RString};
use graft_plugin_abi::{
    ABI_VERSION, AdapterKindModRef, ErrorCode, LoadRequest, ModelView, ModelView_TO, NodeInfo, NodeOp, PluginError,
};

struct Model;

impl ModelView for Model {
    fn resolve(&self, path: RStr<'_>) -> RResult<NodeInfo, PluginError> {
        RResult::ROk(NodeInfo {
            node: 0,
            name: RString::from(path.as_str()),
            op: NodeOp::Linear,
            in_features: 2,
            out_features: 2,
            has_bias: false,
            base_format: RString::from("f32"),
        })
    }
    fn base_weight_row(&self, _: u32, _: usize, _: RSliceMut<'_, f32>) -> RResult<(), PluginError> {
        RResult::RErr(PluginError::new(ErrorCode::BAD_CALL, "", "unused"))
    }
    fn base_bias(&self, _: u32) -> ROption<RSlice<'_, f32>> {
        ROption::RNone
    }
    fn fingerprint(&self) -> u64 {
        1
    }
}

fn library() -> PathBuf {
    let dir = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let name = format!("{}graft_plugin_faulty{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let path = dir.join(&name);
    assert!(path.exists(), "{} not found (cargo builds the cdylib next to the test executable)", path.display());
    path
}

#[test]
fn the_cdylib_loads_and_contains_its_panics() {
    // `lib_header_from_path` + `init_root_module` (not `RootModule::load_from_file`, which
    // caches one library per root-module type for the whole process).
    let header = lib_header_from_path(&library()).unwrap();
    let module: AdapterKindModRef = header.init_root_module().unwrap();
    assert_eq!(module.kind()().as_str(), "faulty");
    let want = if cfg!(feature = "old_abi") { 1 } else { ABI_VERSION };
    assert_eq!(module.abi_version(), want);

    let src = std::env::temp_dir().join(format!("graft-faulty-dylib-{}.json", std::process::id()));
    std::fs::write(&src, r#"{"mode":"panic_on_load","module":"fc"}"#).unwrap();
    let s = src.to_str().unwrap().to_owned();
    let req = LoadRequest { id: RStr::from_str("p"), source: RStr::from_str(&s), options: RStr::from_str("") };
    let e = module.load()(req, ModelView_TO::from_ptr(&Model, TD_Opaque)).into_result().unwrap_err();
    let _ = std::fs::remove_file(&src);
    assert_eq!(e.code, ErrorCode::INTERNAL, "{e}");
}
