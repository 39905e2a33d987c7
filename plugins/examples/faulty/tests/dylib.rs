//! With `--features plugin` (or `old_abi`): the built cdylib loads through abi_stable's
//! checked path, claims the documented `abi_version`, and contains its own panics across
//! the real library boundary. The library is found next to the test executable
//! (`target/<profile>/deps/`), where cargo puts the crate's cdylib.
#![cfg(feature = "plugin")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use graft_plugin_abi::abi_stable::library::lib_header_from_path;
use graft_plugin_abi::abi_stable::std_types::RStr;
use graft_plugin_abi::{ABI_VERSION, AdapterKindModRef, ErrorCode, LoadRequest};

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

    let dir = TempDir::new("faulty-dylib");
    let source = source(&dir, "p", r#"{"mode":"panic_on_load","module":"fc"}"#);
    let req = LoadRequest { id: RStr::from_str("p"), source: RStr::from_str(&source), options: RStr::from_str("") };
    let e = module.load()(req, model().view()).into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::INTERNAL, "{e}");
}
