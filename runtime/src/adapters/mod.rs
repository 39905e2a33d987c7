//! The adapter host: kinds, the per-model registry, per-row adapter sets, and the
//! services (kernels, model view) lent to kinds.
//!
//! graft reaches every adapter kind — the built-in LoRA included — through the stable
//! plugin interface of `graft-plugin-abi`, never through a private shortcut. A kind loads
//! an adapter against a [`HostModelView`] (module names resolved by the host, base
//! weights dequantized on request) and returns an object whose hooks the executor calls
//! once per (hook point, row group). The [`Registry`] publishes adapters with atomic
//! snapshot swaps, so serving threads never wait for a load or a swap.
//!
//! Kinds come from three places behind one seam ([`AdapterKind`]): the built-in kinds,
//! Rust plugin files (abi_stable root modules) and C plugin files (`graft_plugin.h`),
//! loaded with [`Registry::load_plugin`], [`Kinds::load_plugin`] or a plugin directory
//! ([`Kinds::load_dir`], [`Kinds::from_env`] with `GRAFT_PLUGIN_DIR`). See the registry
//! docs for how plugin failures are contained.
//!
//! ```no_run
//! use graft::adapters::{Registry, RowAdapters};
//! use graft::{Model, Session, SessionOptions};
//!
//! let model = Model::open("model.graft")?;
//! let registry = Registry::new(&model);
//! registry.insert(registry.load_peft("user42", "adapters/user42")?)?;
//! let mut rows = RowAdapters::new(&registry);
//! rows.push("user42")?; // row 0
//! rows.push_base()?; // row 1: base model only
//! let mut session = Session::new(&model, SessionOptions::default())?;
//! # let inputs = [];
//! let out = session.run_with(&inputs, &rows)?;
//! # Ok::<(), graft::Error>(())
//! ```

mod c_kind;
mod host;
mod kinds;
mod merge;
mod plugin;
mod registry;
mod rows;

pub use graft_plugin_abi as abi;

/// The details of an [`Error::PluginFault`](crate::Error::PluginFault).
pub use crate::error::PluginFault;
pub use host::{HostModelView, ModuleMap, host_kernels, resolve_module};
pub use kinds::{AdapterKind, KindInfo, KindOrigin, Kinds, PLUGIN_DIR_ENV, PluginLoad, RustModule, inspect_path};
pub use merge::{MergeReport, merge_to_file};
pub use registry::{ADAPTER_METADATA_KEY, LoadedAdapter, Registry, Snapshot, Ticket, detect_kind};
pub use rows::{Group, Member, RowAdapters};
