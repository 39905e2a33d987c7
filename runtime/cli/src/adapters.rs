//! Adapters on the command line: `--adapter ID=DIR` and `--row-adapters rows.json` for
//! `graft run`, and `graft adapter inspect|merge`. Every command that loads adapters
//! takes `--plugin PATH` and honours `$GRAFT_PLUGIN_DIR` for adapter kinds from plugins.
//!
//! `rows.json` is a JSON array with one entry per input row: `null` (base model only), an
//! adapter id, or a stack `[{"id": "a", "scale": 0.5}, ...]` applied in order (`scale`
//! defaults to 1).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use graft::adapters::{LoadedAdapter, ModuleMap, Registry, RowAdapters};

use crate::plugins::PluginArgs;
use graft::{Error, Model, Result};
use serde_json::Value;

/// Adapter options shared by the commands that run a model.
#[derive(Debug, Clone, clap::Args)]
pub struct AdapterArgs {
    /// An adapter to load as `ID=PATH`: a PEFT LoRA directory, or a graft adapter file
    /// (ssf-pool, error-memory, routing, or a plugin kind named in its metadata); repeat
    /// per adapter. `ID:KIND=PATH` names the kind, for a plugin kind's own file format.
    #[arg(long = "adapter", value_name = "ID[:KIND]=PATH")]
    pub adapters: Vec<String>,
    /// Per-row adapter sets (JSON array, one entry per input row). Without it, a single
    /// `--adapter` applies to every row.
    #[arg(long, value_name = "FILE")]
    pub row_adapters: Option<PathBuf>,
    /// JSON object mapping adapter module paths to node names, for models whose node
    /// names differ from the adapter's module names.
    #[arg(long, value_name = "FILE")]
    pub module_map: Option<PathBuf>,
    #[command(flatten)]
    pub plugins: PluginArgs,
}

/// One row's adapter set.
#[derive(Clone, Debug, PartialEq)]
pub enum RowSet {
    /// Base model only.
    Base,
    /// Adapters with scale multipliers, in order.
    Stack(Vec<(String, f32)>),
}

/// What `graft run` applies to its rows.
pub enum Plan {
    /// No adapters.
    None,
    /// The same set for every row.
    All(Registry, Vec<(String, f32)>),
    /// One set per row.
    PerRow(Registry, Vec<RowSet>),
}

impl AdapterArgs {
    /// Loads and publishes the adapters and reads the row assignment.
    pub fn plan(&self, model: &Model, rows: usize) -> Result<Plan> {
        if self.adapters.is_empty() {
            if self.row_adapters.is_some() {
                return Err(Error::InvalidOption { detail: "--row-adapters needs at least one --adapter".into() });
            }
            if !self.plugins.plugins.is_empty() {
                return Err(Error::InvalidOption { detail: "--plugin needs at least one --adapter".into() });
            }
            return Ok(Plan::None);
        }
        let mut registry = Registry::with_kinds(model, self.plugins.kinds()?);
        if let Some(path) = &self.module_map {
            registry.set_module_map(ModuleMap::load(path)?);
        }
        let mut ids = Vec::new();
        for spec in &self.adapters {
            let (name, path) = spec.split_once('=').ok_or_else(|| Error::InvalidOption {
                detail: format!("--adapter `{spec}` is not ID=PATH or ID:KIND=PATH"),
            })?;
            let (id, kind) = match name.split_once(':') {
                Some((id, kind)) => (id, Some(kind)),
                None => (name, None),
            };
            registry.insert(load(&registry, id, kind, path.as_ref())?)?;
            ids.push(id.to_string());
        }
        match &self.row_adapters {
            Some(path) => {
                let sets = read_row_sets(path)?;
                if sets.len() != rows {
                    return Err(Error::RowAdapters {
                        detail: format!("{} has {} entries for {rows} input rows", path.display(), sets.len()),
                    });
                }
                Ok(Plan::PerRow(registry, sets))
            }
            None if ids.len() == 1 => Ok(Plan::All(registry, vec![(ids.remove(0), 1.0)])),
            None => Err(Error::InvalidOption {
                detail: "several --adapter given: say which rows use which with --row-adapters".into(),
            }),
        }
    }
}

impl Plan {
    /// The assignment for input rows `start..end`, or `None` without adapters.
    pub fn rows(&self, start: usize, end: usize) -> Result<Option<RowAdapters>> {
        match self {
            Plan::None => Ok(None),
            Plan::All(registry, set) => {
                let set: Vec<(&str, f32)> = set.iter().map(|(id, s)| (id.as_str(), *s)).collect();
                RowAdapters::all_stack(registry, &set).map(Some)
            }
            Plan::PerRow(registry, sets) => {
                let mut rows = RowAdapters::new(registry);
                for set in &sets[start..end] {
                    match set {
                        RowSet::Base => rows.push_base()?,
                        RowSet::Stack(stack) => {
                            let stack: Vec<(&str, f32)> = stack.iter().map(|(id, s)| (id.as_str(), *s)).collect();
                            rows.push_stack(&stack)?;
                        }
                    }
                }
                Ok(Some(rows))
            }
        }
    }

    /// One line saying what is applied.
    pub fn describe(&self) -> Option<String> {
        match self {
            Plan::None => None,
            Plan::All(_, set) => Some(format!("adapter {} on every row", set[0].0)),
            Plan::PerRow(registry, sets) => {
                let base = sets.iter().filter(|s| **s == RowSet::Base).count();
                Some(format!("adapters {} per row ({} rows base only)", registry.snapshot().ids().join(", "), base))
            }
        }
    }
}

/// Loads `path` as an adapter of `kind`, or of the kind its files name.
fn load(registry: &Registry, id: &str, kind: Option<&str>, path: &Path) -> Result<Arc<LoadedAdapter>> {
    match kind {
        None => registry.load_path(id, path, ""),
        Some(kind) => {
            let source = path.to_str().ok_or_else(|| Error::InvalidOption {
                detail: format!("adapter path {} is not valid UTF-8", path.display()),
            })?;
            registry.load(kind, id, source, "")
        }
    }
}

/// Reads a `rows.json` file.
pub fn read_row_sets(path: &std::path::Path) -> Result<Vec<RowSet>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io { path: path.display().to_string(), source: e })?;
    parse_row_sets(&text).map_err(|detail| Error::RowAdapters { detail: format!("{}: {detail}", path.display()) })
}

/// Parses the `rows.json` format.
pub fn parse_row_sets(text: &str) -> core::result::Result<Vec<RowSet>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Array(rows) = value else { return Err("expected a JSON array with one entry per row".into()) };
    rows.iter()
        .enumerate()
        .map(|(i, entry)| match entry {
            Value::Null => Ok(RowSet::Base),
            Value::String(id) => Ok(RowSet::Stack(vec![(id.clone(), 1.0)])),
            Value::Array(stack) => stack
                .iter()
                .map(|m| {
                    let id =
                        m.get("id").and_then(Value::as_str).ok_or(format!("row {i}: stack entry without \"id\""))?;
                    let scale = match m.get("scale") {
                        None => 1.0,
                        Some(s) => s.as_f64().ok_or(format!("row {i}: \"scale\" of `{id}` is not a number"))? as f32,
                    };
                    Ok((id.to_string(), scale))
                })
                .collect::<core::result::Result<Vec<_>, String>>()
                .map(|s| if s.is_empty() { RowSet::Base } else { RowSet::Stack(s) }),
            other => Err(format!("row {i}: expected null, an id or a list of {{\"id\", \"scale\"}}, found {other}")),
        })
        .collect()
}

/// Arguments of `graft adapter`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Show an adapter's kind, targets, ranks, scales and bytes. With `--model`, also
    /// validate it against that model and show the nodes it attaches to.
    Inspect {
        /// A PEFT adapter directory, or a graft adapter file (ssf-pool, error-memory,
        /// routing).
        dir: PathBuf,
        /// A `.graft` model to resolve and validate the adapter against.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Module-name overrides (JSON object), with `--model`.
        #[arg(long)]
        module_map: Option<PathBuf>,
        /// The adapter's kind, for a plugin kind's own file format (default: detected).
        #[arg(long, requires = "model")]
        kind: Option<String>,
        #[command(flatten)]
        plugins: PluginArgs,
    },
    /// Write a copy of a float (f32/f16/bf16) model with an adapter folded into its
    /// weights. Quantized bases are refused: serve the adapter unmerged instead.
    Merge {
        /// The base `.graft` model.
        model: PathBuf,
        /// The adapter: a PEFT directory, or a static SSF file (`ssf-pool` without a pool).
        #[arg(long)]
        adapter: PathBuf,
        /// The merged `.graft` file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Module-name overrides (JSON object).
        #[arg(long)]
        module_map: Option<PathBuf>,
        /// The adapter's kind, for a plugin kind's own file format (default: detected).
        #[arg(long)]
        kind: Option<String>,
        #[command(flatten)]
        plugins: PluginArgs,
    },
}

pub fn main(args: Args) -> Result<()> {
    match args.command {
        Command::Inspect { dir, model, module_map, kind, plugins } => {
            inspect(&dir, model.as_deref(), module_map.as_deref(), kind.as_deref(), &plugins)
        }
        Command::Merge { model, adapter, output, module_map, kind, plugins } => {
            let base = Model::open(&model)?;
            let mut registry = Registry::with_kinds(&base, plugins.kinds()?);
            if let Some(map) = module_map {
                registry.set_module_map(ModuleMap::load(map)?);
            }
            let loaded = load(&registry, "merge", kind.as_deref(), &adapter)?;
            let report = graft::adapters::merge_to_file(&base, &loaded, &output)?;
            println!(
                "{}: merged {} into {} node(s) ({}), wrote {} bytes",
                output.display(),
                adapter.display(),
                report.nodes.len(),
                report.nodes.join(", "),
                report.bytes
            );
            Ok(())
        }
    }
}

fn inspect(
    dir: &std::path::Path,
    model: Option<&std::path::Path>,
    map: Option<&std::path::Path>,
    kind: Option<&str>,
    plugins: &PluginArgs,
) -> Result<()> {
    let info = match model {
        Some(path) => {
            let model = Model::open(path)?;
            let mut registry = Registry::with_kinds(&model, plugins.kinds()?);
            if let Some(map) = map {
                registry.set_module_map(ModuleMap::load(map)?);
            }
            load(&registry, "inspect", kind, dir)?.info().clone()
        }
        None => graft::adapters::inspect_path(dir).map_err(|e| match e {
            // A plugin kind's files can only be summarized by loading them.
            Error::UnknownAdapterKind { kind, known } => Error::InvalidOption {
                detail: format!(
                    "{}: kind `{kind}` is not built in ({known}); inspect it with --model and its --plugin",
                    dir.display()
                ),
            },
            other => other,
        })?,
    };
    println!("{}: kind {}", dir.display(), info.kind);
    for note in info.notes.iter() {
        println!("  {note}");
    }
    println!("  {:<24} {:<14} {:<12} {:>5} {:>10} {:>10}", "module", "node", "variant", "rank", "scale", "bytes");
    for t in info.targets.iter() {
        println!(
            "  {:<24} {:<14} {:<12} {:>5} {:>10.6} {:>10}",
            t.module.as_str(),
            if t.node.is_empty() { "-" } else { t.node.as_str() },
            t.variant.as_str(),
            t.rank,
            t.scale,
            t.bytes
        );
    }
    let total: u64 = info.targets.iter().map(|t| t.bytes).sum();
    println!(
        "  {} target(s), {} parameter bytes ({} mapped from the file, {} owned)",
        info.targets.len(),
        total,
        info.mapped_bytes,
        info.owned_bytes
    );
    Ok(())
}
