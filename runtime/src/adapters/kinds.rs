//! The adapter kinds a registry can load, by name.
//!
//! Every kind — built in, a Rust plugin file, a C plugin file — sits behind one host-side
//! seam, [`AdapterKind`], so the registry and the executor never care where a kind came
//! from. Built-in kinds link statically but still go through the same root-module
//! interface a Rust plugin exports ([`RustModule`]); C plugins are wrapped by
//! `c_kind`. The only thing the host does differently for plugin kinds is *check* their
//! adapters' output (see [`KindOrigin::is_plugin`] and the registry docs).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use graft_plugin_abi::{ABI_VERSION, AdapterBox, AdapterKindModRef, LoadRequest, ModelViewRef, PluginError};

use crate::error::{Error, Result};

/// The environment variable naming a directory of plugins [`Kinds::from_env`] loads.
pub const PLUGIN_DIR_ENV: &str = "GRAFT_PLUGIN_DIR";

/// Where a kind's code comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KindOrigin {
    /// Linked into this build of graft.
    BuiltIn,
    /// A Rust shared library exporting the `graft-plugin-abi` root module.
    RustPlugin {
        /// The file it was loaded from.
        path: PathBuf,
    },
    /// A C (or C++) shared library exporting `graft_plugin_entry` (`graft_plugin.h`).
    CPlugin {
        /// The file it was loaded from.
        path: PathBuf,
        /// The `(abi_major, abi_minor)` of `graft_plugin.h` it was built with.
        abi: (u32, u32),
    },
}

impl KindOrigin {
    /// The plugin file, if the kind came from one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            KindOrigin::BuiltIn => None,
            KindOrigin::RustPlugin { path } | KindOrigin::CPlugin { path, .. } => Some(path),
        }
    }

    /// Whether the kind came from a plugin file (its adapters' output is checked).
    pub fn is_plugin(&self) -> bool {
        !matches!(self, KindOrigin::BuiltIn)
    }

    /// `built-in`, `rust` or `c`.
    pub fn language(&self) -> &'static str {
        match self {
            KindOrigin::BuiltIn => "built-in",
            KindOrigin::RustPlugin { .. } => "rust",
            KindOrigin::CPlugin { .. } => "c",
        }
    }
}

/// The host's view of an adapter kind: one seam for built-in kinds, Rust plugins and C
/// plugins. Implementations must be callable from several threads at once.
pub trait AdapterKind: Send + Sync {
    /// The kind's name (`lora`, `ssf-pool`, a plugin's own), unique in a [`Kinds`].
    fn name(&self) -> &str;

    /// Loads one adapter and validates it against the model.
    fn load(&self, request: LoadRequest<'_>, model: ModelViewRef<'_>) -> core::result::Result<AdapterBox, PluginError>;

    /// Where the kind's code comes from.
    fn origin(&self) -> KindOrigin;

    /// The interface version the kind speaks, for listings (`hook protocol 2`,
    /// `graft_plugin.h 1.0`).
    fn abi(&self) -> String;
}

/// A kind reached through the `graft-plugin-abi` root module: the built-in kinds and Rust
/// plugin files.
pub struct RustModule {
    module: AdapterKindModRef,
    name: String,
    origin: KindOrigin,
}

impl core::fmt::Debug for RustModule {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RustModule").field("name", &self.name).field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl RustModule {
    /// Wraps a root module. Refuses one built for another hook-protocol version: a
    /// built-in kind with [`Error::UnknownAdapterKind`] (a build problem), a plugin file
    /// with [`Error::Plugin`] saying what to rebuild.
    pub fn new(module: AdapterKindModRef, origin: KindOrigin) -> Result<RustModule> {
        let name = (module.kind())().as_str().to_string();
        let version = module.abi_version();
        if version != ABI_VERSION {
            return Err(match origin.path() {
                None => Error::UnknownAdapterKind {
                    kind: name,
                    known: format!("built for hook protocol {version}, this host speaks {ABI_VERSION}"),
                },
                Some(path) => Error::Plugin {
                    path: path.display().to_string(),
                    detail: format!("kind `{name}` speaks hook protocol {version}; this host speaks {ABI_VERSION}"),
                    fix: format!("rebuild the plugin against graft-plugin-abi {}", super::plugin::host_abi_version()),
                },
            });
        }
        Ok(RustModule { module, name, origin })
    }
}

impl AdapterKind for RustModule {
    fn name(&self) -> &str {
        &self.name
    }

    fn load(&self, request: LoadRequest<'_>, model: ModelViewRef<'_>) -> core::result::Result<AdapterBox, PluginError> {
        (self.module.load())(request, model).into_result()
    }

    fn origin(&self) -> KindOrigin {
        self.origin.clone()
    }

    fn abi(&self) -> String {
        format!("hook protocol {}", self.module.abi_version())
    }
}

/// What a loaded kind is, for listings and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindInfo {
    /// The kind's name.
    pub name: String,
    /// Where its code comes from.
    pub origin: KindOrigin,
    /// The interface version it speaks (`hook protocol 2`, `graft_plugin.h 1.0`).
    pub abi: String,
}

impl KindInfo {
    fn of(kind: &dyn AdapterKind) -> KindInfo {
        KindInfo { name: kind.name().to_string(), origin: kind.origin(), abi: kind.abi() }
    }
}

/// The outcome of loading one file of a plugin directory.
#[derive(Debug)]
pub struct PluginLoad {
    /// The file.
    pub path: PathBuf,
    /// The kind it added, or why it was refused.
    pub result: Result<KindInfo>,
}

/// A set of adapter kinds, by name. Cloning is cheap (the kinds are shared).
#[derive(Clone)]
pub struct Kinds {
    kinds: Vec<Arc<dyn AdapterKind>>,
}

impl core::fmt::Debug for Kinds {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list().entries(self.kinds.iter().map(|k| k.name())).finish()
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
        Kinds { kinds: Vec::new() }
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
                log_error!("built-in adapter kind refused: {}", e);
            }
        }
        kinds
    }

    /// The built-in kinds plus every plugin in `$GRAFT_PLUGIN_DIR`, if it is set and not
    /// empty, with one [`PluginLoad`] per plugin file. A refused file does not stop the
    /// others; an unreadable directory is an error.
    pub fn from_env() -> Result<(Kinds, Vec<PluginLoad>)> {
        let mut kinds = Kinds::builtin();
        let loads = match std::env::var_os(PLUGIN_DIR_ENV).filter(|d| !d.is_empty()) {
            Some(dir) => kinds.load_dir(dir)?,
            None => Vec::new(),
        };
        Ok((kinds, loads))
    }

    /// Adds a root module as a built-in kind (linked into this program). Refuses a kind
    /// built for another hook-protocol version, and a second kind of the same name.
    pub fn register(&mut self, module: AdapterKindModRef) -> Result<()> {
        self.add(Arc::new(RustModule::new(module, KindOrigin::BuiltIn)?)).map(|_| ())
    }

    /// Adds any [`AdapterKind`]. Refuses a second kind of the same name.
    pub fn add(&mut self, kind: Arc<dyn AdapterKind>) -> Result<KindInfo> {
        let info = KindInfo::of(&*kind);
        if let Some(existing) = self.get(&info.name) {
            let detail = match existing.origin().path() {
                Some(path) => format!("an adapter kind of this name is already registered (from {})", path.display()),
                None => "an adapter kind of this name is already registered (built in)".to_string(),
            };
            return Err(match info.origin.path() {
                Some(path) => Error::Plugin {
                    path: path.display().to_string(),
                    detail: format!("kind `{}`: {detail}", info.name),
                    fix: "load each kind once; rename one of the kinds if they differ".into(),
                },
                None => Error::AdapterId { id: info.name, detail },
            });
        }
        self.kinds.push(kind);
        Ok(info)
    }

    /// Loads the plugin at `path` — a Rust library exporting the `graft-plugin-abi` root
    /// module, or a C library exporting `graft_plugin_entry` — and adds its kind. Every
    /// refusal is an [`Error::Plugin`] naming the file, what is wrong and what to do.
    ///
    /// The kind's [`KindOrigin`] records the file's canonical path. The library stays
    /// mapped for the life of the process, even when it is refused after its code ran
    /// (graft never unloads plugin code).
    pub fn load_plugin(&mut self, path: impl AsRef<Path>) -> Result<KindInfo> {
        let kind = super::plugin::open(path.as_ref())?;
        self.add(kind)
    }

    /// Loads every shared library (`.so`, `.dylib` or `.dll`, as the platform names them)
    /// directly in `dir`, in file-name order. Returns one [`PluginLoad`] per file: a
    /// refused file does not stop the others. An unreadable directory is an error.
    pub fn load_dir(&mut self, dir: impl AsRef<Path>) -> Result<Vec<PluginLoad>> {
        let files = super::plugin::libraries_in(dir.as_ref())?;
        Ok(files
            .into_iter()
            .map(|path| {
                let result = self.load_plugin(&path);
                if let Err(e) = &result {
                    log_warn!("adapter plugin refused: {}", e);
                }
                PluginLoad { path, result }
            })
            .collect())
    }

    /// The kind called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn AdapterKind>> {
        self.kinds.iter().find(|k| k.name() == name).cloned()
    }

    /// The kind called `name`, or an error listing the known kinds.
    pub fn require(&self, name: &str) -> Result<Arc<dyn AdapterKind>> {
        self.get(name).ok_or_else(|| Error::UnknownAdapterKind { kind: name.into(), known: self.names().join(", ") })
    }

    /// Names of every kind, in registration order.
    pub fn names(&self) -> Vec<&str> {
        self.kinds.iter().map(|k| k.name()).collect()
    }

    /// Every kind's summary, in registration order.
    pub fn infos(&self) -> Vec<KindInfo> {
        self.kinds.iter().map(|k| KindInfo::of(&**k)).collect()
    }
}

/// Summarizes an adapter of a built-in kind without a model: a PEFT directory, or a graft
/// adapter file (kind from its metadata). Node names stay empty; load it against a model
/// to resolve them.
// Without any built-in kind every path is refused, which leaves the rest unused.
#[cfg_attr(
    not(any(feature = "lora", feature = "ssf-pool", feature = "error-memory", feature = "routing")),
    allow(unreachable_code, unused_variables)
)]
pub fn inspect_path(path: &std::path::Path) -> Result<graft_plugin_abi::AdapterInfo> {
    let kind = super::registry::detect_kind(path)?;
    let source = path.to_str().ok_or_else(|| Error::InvalidOption {
        detail: format!("adapter path {} is not valid UTF-8", path.display()),
    })?;
    let result: core::result::Result<_, graft_plugin_abi::PluginError> = match kind.as_str() {
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

#[cfg(all(test, feature = "lora", feature = "ssf-pool", feature = "error-memory", feature = "routing"))]
mod tests {
    use super::*;

    #[test]
    fn built_in_kinds_are_registered_once_each() {
        let mut kinds = Kinds::builtin();
        assert_eq!(kinds.names(), ["lora", "ssf-pool", "error-memory", "routing"]);
        for info in kinds.infos() {
            assert_eq!((info.origin, info.abi.as_str()), (KindOrigin::BuiltIn, "hook protocol 2"));
        }
        assert!(
            matches!(kinds.register(graft_plugin_lora::module()), Err(Error::AdapterId { id, .. }) if id == "lora")
        );
        assert_eq!(kinds.names().len(), 4);
        assert!(
            matches!(kinds.require("nope"), Err(Error::UnknownAdapterKind { known, .. }) if known.contains("routing"))
        );
        assert!(!KindOrigin::BuiltIn.is_plugin() && KindOrigin::BuiltIn.path().is_none());
    }
}
