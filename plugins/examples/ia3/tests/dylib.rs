//! With `--features plugin`: the built cdylib loads through abi_stable's checked path and
//! computes what the statically linked kind computes. The library is found next to the
//! test executable (`target/<profile>/deps/`), where cargo puts the crate's cdylib.
#![cfg(feature = "plugin")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use graft_plugin_abi::abi_stable::library::lib_header_from_path;
use graft_plugin_abi::abi_stable::std_types::RStr;
use graft_plugin_abi::{ABI_VERSION, AdapterKindModRef, LoadRequest};

#[test]
fn the_cdylib_loads_and_computes_the_same() {
    let dir = std::env::current_exe().unwrap().parent().unwrap().to_path_buf();
    let lib = dir.join(format!("{}graft_plugin_ia3{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX));
    assert!(lib.exists(), "{} not found", lib.display());
    let module: AdapterKindModRef = lib_header_from_path(&lib).unwrap().init_root_module().unwrap();
    assert_eq!((module.kind()().as_str(), module.abi_version()), ("ia3", ABI_VERSION));

    let tmp = TempDir::new("dylib");
    write_dir(tmp.path(), &config(serde_json::json!({})), &example_tensors());
    let model = example_model();
    let source = tmp.path().to_str().unwrap().to_owned();
    let req = LoadRequest { id: RStr::from_str("d"), source: RStr::from_str(&source), options: RStr::from_str("") };
    let adapter = module.load()(req, model.view()).into_result().unwrap();
    for (target, name, want) in [(0u32, "fc", [15.0, -0.75]), (1, "ff", [5.5, -2.0])] {
        let mut y = model.node(name).forward(&EX_X);
        run(&adapter, target, &EX_X, 3, &mut y, 2, 1.0).unwrap();
        assert_eq!(y, want, "{name}");
    }
}
