//! The adapter kinds a registry can load, by name.
//!
//! Built-in kinds (LoRA) link statically but are registered through the same root-module
//! interface a shared-library plugin exports, so the host has exactly one way in.

use graft_plugin_abi::{ABI_VERSION, AdapterKindModRef};

use crate::error::{Error, Result};

/// A set of adapter kinds, each a plugin-ABI root module.
#[derive(Clone)]
pub struct Kinds {
    modules: Vec<(String, AdapterKindModRef)>,
}

impl core::fmt::Debug for Kinds {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.modules.iter().map(|(name, _)| name)).finish()
    }
}

impl Default for Kinds {
    fn default() -> Kinds {
        Kinds::builtin()
    }
}

impl Kinds {
    /// No kinds at all.
    pub fn empty() -> Kinds {
        Kinds { modules: Vec::new() }
    }

    /// The kinds built into this build of graft (with the default features: `lora`,
    /// `ssf-pool`, `error-memory`, `routing`).
    pub fn builtin() -> Kinds {
        #[allow(unused_mut)]
        let mut kinds = Kinds::empty();
        let modules: [Option<fn() -> AdapterKindModRef>; 4] = [
            #[cfg(feature = "lora")]
            Some(graft_plugin_lora::module),
            #[cfg(not(feature = "lora"))]
            None,
            #[cfg(feature = "ssf-pool")]
            Some(graft_plugin_ssf_pool::module),
            #[cfg(not(feature = "ssf-pool"))]
            None,
            #[cfg(feature = "error-memory")]
            Some(graft_plugin_error_memory::module),
            #[cfg(not(feature = "error-memory"))]
            None,
            #[cfg(feature = "routing")]
            Some(graft_plugin_routing::module),
            #[cfg(not(feature = "routing"))]
            None,
        ];
        for module in modules.into_iter().flatten().map(|m| m()) {
            if let Err(e) = kinds.register(module) {
                log::error!("built-in adapter kind refused: {e}");
            }
        }
        kinds
    }

    /// Adds a kind. Refuses a kind built for another hook-protocol version, and a second
    /// kind of the same name.
    pub fn register(&mut self, module: AdapterKindModRef) -> Result<()> {
        let name = (module.kind())().as_str().to_string();
        if module.abi_version() != ABI_VERSION {
            return Err(Error::UnknownAdapterKind {
                kind: name,
                known: format!("built for hook protocol {}, this host speaks {ABI_VERSION}", module.abi_version()),
            });
        }
        if self.get(&name).is_some() {
            return Err(Error::AdapterId {
                id: name,
                detail: "an adapter kind of this name is already registered".into(),
            });
        }
        self.modules.push((name, module));
        Ok(())
    }

    /// The kind called `name`.
    pub fn get(&self, name: &str) -> Option<AdapterKindModRef> {
        self.modules.iter().find(|(n, _)| n == name).map(|(_, m)| *m)
    }

    /// The kind called `name`, or an error listing the known kinds.
    pub fn require(&self, name: &str) -> Result<AdapterKindModRef> {
        self.get(name).ok_or_else(|| Error::UnknownAdapterKind { kind: name.into(), known: self.names().join(", ") })
    }

    /// Names of every kind, in registration order.
    pub fn names(&self) -> Vec<&str> {
        self.modules.iter().map(|(n, _)| n.as_str()).collect()
    }
}

/// Summarizes an adapter of a built-in kind without a model: a PEFT directory, or a graft
/// adapter file (kind from its metadata). Node names stay empty; load it against a model
/// to resolve them.
pub fn inspect_path(path: &std::path::Path) -> Result<graft_plugin_abi::AdapterInfo> {
    let kind = super::registry::detect_kind(path)?;
    let source = path.to_str().ok_or_else(|| Error::InvalidOption {
        detail: format!("adapter path {} is not valid UTF-8", path.display()),
    })?;
    let result = match kind.as_str() {
        #[cfg(feature = "lora")]
        "lora" => graft_plugin_lora::inspect_dir(source),
        #[cfg(feature = "ssf-pool")]
        "ssf-pool" => graft_plugin_ssf_pool::inspect_file(source),
        #[cfg(feature = "error-memory")]
        "error-memory" => graft_plugin_error_memory::inspect_file(source),
        #[cfg(feature = "routing")]
        "routing" => graft_plugin_routing::inspect_file(source),
        _ => return Err(Error::UnknownAdapterKind { kind, known: Kinds::builtin().names().join(", ") }),
    };
    result.map_err(|e| super::registry::plugin_error("inspect", &kind, e))
}
