//! Finding, compiling and linking plugins by name.
//!
//! A name resolves to `<plugins dir>/<name>.wasm` when that file exists, otherwise to
//! the bundled plugin of that name: a file replaces a bundled plugin.

use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use wasmtime::component::{Component, Linker};

use super::bindings::{v0_1, v0_2};
use super::sandbox::{self, PluginEngine};
use super::state::PluginState;
use super::{AbiVersion, Linked, WorldKind};
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
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// SHA-256 of the component's bytes, in hex.
    pub sha256: String,
    /// Whether the compiled code came from the on-disk cache.
    pub cache: CacheOutcome,
    pub(crate) engine: PluginEngine,
    pub(crate) linked: Linked,
}

impl LoadedPlugin {
    /// The world it was linked as.
    pub fn world(&self) -> WorldKind {
        self.linked.world()
    }

    /// The interface version it was built against.
    pub fn abi(&self) -> AbiVersion {
        self.linked.abi()
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// What the compiled-code cache did for one load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Compiled code was read from the cache: nothing was compiled.
    Hit,
    /// Compiled now, and stored for next time.
    Miss,
    /// No cache directory is configured.
    Off,
}

impl CacheOutcome {
    /// `hit`, `miss` or `off`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Off => "off",
        }
    }
}

/// Compiles and links plugins against the sandbox's imports.
pub struct PluginRegistry {
    engine: PluginEngine,
    linker: Linker<PluginState>,
    dir: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl PluginRegistry {
    /// A registry reading plugin files from `dir`, if any, keeping compiled code in
    /// `cache_dir`, if any.
    pub fn new(
        engine: PluginEngine,
        dir: Option<PathBuf>,
        cache_dir: Option<PathBuf>,
    ) -> wasmtime::Result<Self> {
        let mut linker = Linker::new(engine.engine());
        sandbox::add_wasi(&mut linker)?;
        // Every version's `types` interface: a plugin imports the one it was built with.
        v0_1::balancer::Balancer::add_to_linker::<_, wasmtime::component::HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )?;
        v0_2::balancer::Balancer::add_to_linker::<_, wasmtime::component::HasSelf<PluginState>>(
            &mut linker,
            |s| s,
        )?;
        Ok(PluginRegistry {
            engine,
            linker,
            dir,
            cache_dir,
        })
    }

    /// The file a plugin called `name` would be read from.
    pub fn file_for(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{name}.wasm")))
    }

    /// Loads the plugin called `name`: the file in the plugins directory if present,
    /// else the bundled one.
    pub fn load(&self, name: &str, world: WorldKind) -> Result<Arc<LoadedPlugin>, PluginError> {
        let (source, bytes) = self.read(name)?;
        self.load_bytes(name, source, &bytes, world)
    }

    /// The current code of plugin `name` and where it comes from, without compiling.
    pub fn read(&self, name: &str) -> Result<(PluginSource, Cow<'static, [u8]>), PluginError> {
        if let Some(path) = self.file_for(name).filter(|p| p.is_file()) {
            let bytes = std::fs::read(&path).map_err(|source| PluginError::Read {
                name: name.to_owned(),
                path: path.clone(),
                source,
            })?;
            return Ok((PluginSource::File(path), Cow::Owned(bytes)));
        }
        match bundled::find(name) {
            Some(bytes) => Ok((PluginSource::Bundled, Cow::Borrowed(bytes))),
            None => Err(PluginError::NotFound {
                name: name.to_owned(),
                looked: match self.file_for(name) {
                    Some(p) => format!("there is no file {}", p.display()),
                    None => "no plugins directory is configured".to_owned(),
                },
            }),
        }
    }

    /// Compiles (or reads from the cache) and links `bytes` as plugin `name`.
    pub fn load_bytes(
        &self,
        name: &str,
        source: PluginSource,
        bytes: &[u8],
        world: WorldKind,
    ) -> Result<Arc<LoadedPlugin>, PluginError> {
        let source_desc = source.to_string();
        let sha256 = sha256_hex(bytes);
        let (component, cache) =
            self.compile(bytes, &sha256)
                .map_err(|e| PluginError::Compile {
                    name: name.to_owned(),
                    source_desc: source_desc.clone(),
                    reason: first_lines(&e),
                })?;
        let link_error = |e: wasmtime::Error| PluginError::Link {
            name: name.to_owned(),
            source_desc: source_desc.clone(),
            world: world.as_str(),
            reason: first_lines(&e),
        };
        // Linking first: an import the sandbox does not provide is the clearest reason a
        // component cannot load, whatever interface version it was meant for.
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(link_error)?;
        let abi = self
            .abi_of(&component)
            .map_err(|reason| PluginError::Link {
                name: name.to_owned(),
                source_desc: source_desc.clone(),
                world: world.as_str(),
                reason,
            })?;
        let linked = match (world, abi) {
            (WorldKind::Balancer, AbiVersion::V0_1) => Linked::BalancerV0_1(
                v0_1::balancer::BalancerPre::new(instance_pre).map_err(link_error)?,
            ),
            (WorldKind::Balancer, AbiVersion::V0_2) => Linked::BalancerV0_2(
                v0_2::balancer::BalancerPre::new(instance_pre).map_err(link_error)?,
            ),
            (WorldKind::Router, AbiVersion::V0_1) => {
                Linked::RouterV0_1(v0_1::router::RouterPre::new(instance_pre).map_err(link_error)?)
            }
            (WorldKind::Router, AbiVersion::V0_2) => {
                Linked::RouterV0_2(v0_2::router::RouterPre::new(instance_pre).map_err(link_error)?)
            }
        };
        tracing::info!(plugin = name, source = %source, sha256 = &sha256[..16], cache = cache.as_str(), abi = abi.as_str(), "plugin loaded");
        Ok(Arc::new(LoadedPlugin {
            name: name.to_owned(),
            source,
            loaded_at: SystemTime::now(),
            sha256,
            cache,
            engine: self.engine.clone(),
            linked,
        }))
    }

    /// The interface version a component was built against: the version of the
    /// `switchyard:plugin/types` interface it imports.
    fn abi_of(&self, component: &Component) -> Result<AbiVersion, String> {
        let ty = component.component_type();
        let mut found = ty
            .imports(self.engine.engine())
            .filter_map(|(name, _)| AbiVersion::from_import(name));
        match found.next() {
            Some(Ok(version)) => Ok(version),
            Some(Err(unknown)) => Err(format!(
                "it was built against switchyard:plugin@{unknown}, which this proxy ({}) does not know; it loads {}. Upgrade the proxy, or build the plugin with an SDK of a version it loads",
                env!("CARGO_PKG_VERSION"),
                AbiVersion::ALL.map(|v| v.as_str()).join(" and ")
            )),
            None => Err("it imports no switchyard:plugin/types interface, so it is not a Switchyard plugin; build it with switchyard-plugin-sdk".to_owned()),
        }
    }

    /// Compiled code for `bytes`: from the cache when this engine compiled it before.
    fn compile(&self, bytes: &[u8], sha256: &str) -> wasmtime::Result<(Component, CacheOutcome)> {
        let engine = self.engine.engine();
        let Some(dir) = &self.cache_dir else {
            return Ok((Component::new(engine, bytes)?, CacheOutcome::Off));
        };
        // Compiled code is only valid for the same wasmtime build and settings.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        let path = dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()));
        if path.is_file() {
            match deserialize_cached(engine, &path) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unusable compiled-plugin cache entry; compiling again")
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        if let Err(e) = store_cached(dir, &path, &component) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the compiled-plugin cache");
        }
        Ok((component, CacheOutcome::Miss))
    }
}

#[expect(
    unsafe_code,
    reason = "deserializing compiled code trusts the file; the cache directory is created 0700 and only this proxy writes it, keyed by the source's SHA-256 and the engine's compatibility hash"
)]
fn deserialize_cached(engine: &wasmtime::Engine, path: &Path) -> wasmtime::Result<Component> {
    // SAFETY: see the reason above; wasmtime also checks the header and engine settings.
    unsafe { Component::deserialize_file(engine, path) }
}

fn store_cached(dir: &Path, path: &Path, component: &Component) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let code = component
        .serialize()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    // Write then rename, so a crash or a second proxy never leaves half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, code)?;
    std::fs::rename(&tmp, path)
}

/// SHA-256 of `bytes` in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
