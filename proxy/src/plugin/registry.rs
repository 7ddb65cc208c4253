//! Finding, compiling and linking plugins by name.
//!
//! A name resolves to `<plugins dir>/<name>.wasm` when that file exists, otherwise to
//! the bundled plugin of that name: a file replaces a bundled plugin.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use wasmtime::component::{Component, Linker};

use super::host_bindings::BalancerPre;
use super::sandbox::{self, PluginEngine, PluginState};
use super::{PluginError, bundled};
use crate::config::PluginCatalog;

/// Where a plugin's code came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginSource {
    /// Built into the binary.
    Bundled,
    /// A file in the plugins directory.
    File(PathBuf),
}

impl std::fmt::Display for PluginSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PluginSource::Bundled => f.write_str("bundled"),
            PluginSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A compiled, linked plugin, ready to instantiate.
pub struct LoadedPlugin {
    /// Name pools refer to it by.
    pub name: String,
    /// Where it came from.
    pub source: PluginSource,
    /// When it was compiled.
    pub loaded_at: SystemTime,
    pub(crate) engine: PluginEngine,
    pub(crate) pre: BalancerPre<PluginState>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Compiles and links plugins against the sandbox's imports.
pub struct PluginRegistry {
    engine: PluginEngine,
    linker: Linker<PluginState>,
    dir: Option<PathBuf>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl PluginRegistry {
    /// A registry reading plugin files from `dir`, if any.
    pub fn new(engine: PluginEngine, dir: Option<PathBuf>) -> wasmtime::Result<Self> {
        let mut linker = Linker::new(engine.engine());
        sandbox::add_wasi(&mut linker)?;
        super::host_bindings::Balancer::add_to_linker::<
            _,
            wasmtime::component::HasSelf<PluginState>,
        >(&mut linker, |s| s)?;
        Ok(PluginRegistry {
            engine,
            linker,
            dir,
        })
    }

    /// The file a plugin called `name` would be read from.
    pub fn file_for(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{name}.wasm")))
    }

    /// Loads the plugin called `name`: the file in the plugins directory if present,
    /// else the bundled one.
    pub fn load(&self, name: &str) -> Result<Arc<LoadedPlugin>, PluginError> {
        if let Some(path) = self.file_for(name).filter(|p| p.is_file()) {
            let bytes = std::fs::read(&path).map_err(|source| PluginError::Read {
                name: name.to_owned(),
                path: path.clone(),
                source,
            })?;
            return self.load_bytes(name, PluginSource::File(path), &bytes);
        }
        match bundled::find(name) {
            Some(bytes) => self.load_bytes(name, PluginSource::Bundled, bytes),
            None => Err(PluginError::NotFound {
                name: name.to_owned(),
                looked: match self.file_for(name) {
                    Some(p) => format!("there is no file {}", p.display()),
                    None => "no plugins directory is configured".to_owned(),
                },
            }),
        }
    }

    /// Compiles and links `bytes` as plugin `name`.
    pub fn load_bytes(
        &self,
        name: &str,
        source: PluginSource,
        bytes: &[u8],
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let source_desc = source.to_string();
        let component =
            Component::new(self.engine.engine(), bytes).map_err(|e| PluginError::Compile {
                name: name.to_owned(),
                source_desc: source_desc.clone(),
                reason: first_lines(&e),
            })?;
        let link_error = |e: wasmtime::Error| PluginError::Link {
            name: name.to_owned(),
            source_desc: source_desc.clone(),
            reason: first_lines(&e),
        };
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(link_error)?;
        let pre = BalancerPre::new(instance_pre).map_err(link_error)?;
        tracing::info!(plugin = name, source = %source, "plugin loaded");
        Ok(Arc::new(LoadedPlugin {
            name: name.to_owned(),
            source,
            loaded_at: SystemTime::now(),
            engine: self.engine.clone(),
            pre,
        }))
    }
}

fn first_lines(e: &wasmtime::Error) -> String {
    format!("{e:#}")
        .lines()
        .take(4)
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Plugin names available on disk and in the binary, without compiling anything.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsCatalog;

impl PluginCatalog for FsCatalog {
    fn has_plugin(&self, name: &str, dir: Option<&Path>) -> bool {
        bundled::find(name).is_some()
            || dir.is_some_and(|d| d.join(format!("{name}.wasm")).is_file())
    }

    fn names(&self, dir: Option<&Path>) -> Vec<String> {
        let mut names: Vec<String> = bundled::names().map(str::to_owned).collect();
        if let Some(entries) = dir.and_then(|d| std::fs::read_dir(d).ok()) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "wasm")
                    && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
                    && !names.iter().any(|n| n == stem)
                {
                    names.push(stem.to_owned());
                }
            }
        }
        names.sort();
        names
    }
}
