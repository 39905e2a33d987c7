//! Adapter-kind plugins on the command line: `graft plugin load|list`, and the
//! `--plugin PATH` option (plus `$GRAFT_PLUGIN_DIR`) of the commands that load adapters.

use std::path::{Path, PathBuf};

use graft::adapters::{KindInfo, Kinds, PLUGIN_DIR_ENV, PluginLoad};
use graft::{Error, Result};

/// The plugin options of a command that loads adapters.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PluginArgs {
    /// A plugin (shared library) adding an adapter kind: a Rust `graft-plugin-abi` kind or
    /// a C `graft_plugin.h` kind; repeat per plugin. Plugins in `$GRAFT_PLUGIN_DIR` are
    /// loaded too.
    #[arg(long = "plugin", value_name = "PATH")]
    pub plugins: Vec<PathBuf>,
}

impl PluginArgs {
    /// The built-in kinds, every plugin in `$GRAFT_PLUGIN_DIR` (a refused one is a
    /// warning), and every `--plugin` (a refused one is an error).
    pub fn kinds(&self) -> Result<Kinds> {
        let (mut kinds, loads) = Kinds::from_env()?;
        for load in loads {
            if let Err(e) = load.result {
                eprintln!("warning: ${PLUGIN_DIR_ENV}: {e}");
            }
        }
        for path in &self.plugins {
            kinds.load_plugin(path)?;
        }
        Ok(kinds)
    }
}

/// Arguments of `graft plugin`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Load plugin files and print the kind each adds (name, language, interface version),
    /// or why it is refused.
    Load {
        /// Plugin files (`.so`, `.dylib` or `.dll`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// List the built-in adapter kinds and the plugins of a directory.
    List {
        /// The plugin directory (default: `$GRAFT_PLUGIN_DIR`, if set).
        #[arg(long, value_name = "DIR")]
        plugin_dir: Option<PathBuf>,
    },
}

pub fn main(args: Args) -> Result<()> {
    match args.command {
        Command::Load { paths } => load(&paths),
        Command::List { plugin_dir } => list(plugin_dir),
    }
}

fn load(paths: &[PathBuf]) -> Result<()> {
    let mut kinds = Kinds::builtin();
    let loads: Vec<PluginLoad> =
        paths.iter().map(|path| PluginLoad { path: path.clone(), result: kinds.load_plugin(path) }).collect();
    for load in &loads {
        match &load.result {
            Ok(info) => println!(
                "{}: kind `{}` ({} plugin, {})",
                load.path.display(),
                info.name,
                info.origin.language(),
                info.abi
            ),
            Err(e) => println!("{}: refused: {e}", load.path.display()),
        }
    }
    refusals(&loads)
}

fn list(plugin_dir: Option<PathBuf>) -> Result<()> {
    let dir = plugin_dir.or_else(|| std::env::var_os(PLUGIN_DIR_ENV).filter(|d| !d.is_empty()).map(PathBuf::from));
    let mut kinds = Kinds::builtin();
    let loads = match &dir {
        Some(dir) => kinds.load_dir(dir)?,
        None => Vec::new(),
    };
    println!("{:<20} {:<9} {:<20} path", "kind", "language", "interface");
    for info in kinds.infos() {
        println!("{}", row(&info));
    }
    for load in &loads {
        if let Err(e) = &load.result {
            println!("refused: {e}");
        }
    }
    match &dir {
        Some(dir) => println!("{} plugin file(s) in {}", loads.len(), dir.display()),
        None => println!("no plugin directory (--plugin-dir or ${PLUGIN_DIR_ENV})"),
    }
    refusals(&loads)
}

fn row(info: &KindInfo) -> String {
    let path = info.origin.path().map_or_else(|| "-".to_string(), |p: &Path| p.display().to_string());
    format!("{:<20} {:<9} {:<20} {path}", info.name, info.origin.language(), info.abi)
}

/// An error when any file was refused (after everything was printed).
fn refusals(loads: &[PluginLoad]) -> Result<()> {
    let refused = loads.iter().filter(|l| l.result.is_err()).count();
    if refused == 0 {
        Ok(())
    } else {
        Err(Error::InvalidOption { detail: format!("{refused} of {} plugin file(s) refused", loads.len()) })
    }
}
