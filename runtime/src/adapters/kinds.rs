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

    /// The kinds built into this build of graft (`lora` with the default features).
    pub fn builtin() -> Kinds {
        #[allow(unused_mut)]
        let mut kinds = Kinds::empty();
        #[cfg(feature = "lora")]
        if let Err(e) = kinds.register(graft_plugin_lora::module()) {
            log::error!("built-in LoRA kind refused: {e}");
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
