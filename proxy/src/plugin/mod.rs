//! Wasm plugins: loading, sandboxing and calling them.
//!
//! - [`sandbox`]: the engine and what a plugin may reach.
//! - [`registry`]: finds plugins by name (bundled, or `*.wasm` in the plugins directory),
//!   compiles and links them.
//! - [`balancer`]: one live instance per pool, called for each request, with failure
//!   handling.

pub mod bundled;
pub mod instance;
pub mod output;
pub mod registry;
pub mod request;
pub mod sandbox;

pub use instance::{FailureKind, PluginInstance, PoolBalancer, RouteDecision, RouterInstance};
pub use registry::{LoadedPlugin, PluginRegistry, PluginSource};
pub use sandbox::{Allocator, PluginEngine, PluginState};

/// Host-side bindings of `wit/plugin.wit`, world `balancer`.
pub mod host_bindings {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "balancer",
        with: { "switchyard:plugin/types.request": super::request::RequestHandle },
    });
}

/// Host-side bindings of world `router`, sharing the `types` interface with
/// [`host_bindings`].
pub mod router_bindings {
    #![allow(missing_docs, missing_debug_implementations, clippy::all)]
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "router",
        with: { "switchyard:plugin/types": super::host_bindings::switchyard::plugin::types },
    });
}

/// Which world a plugin is loaded as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorldKind {
    /// `balancer`: chooses a backend of a pool.
    Balancer,
    /// `router`: chooses a pool, or answers itself.
    Router,
}

impl WorldKind {
    /// The world's name in `wit/plugin.wit`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorldKind::Balancer => "balancer",
            WorldKind::Router => "router",
        }
    }
}

/// A compiled component linked as one of the worlds.
#[derive(Clone)]
#[allow(
    missing_debug_implementations,
    reason = "the generated pre-instances have no Debug; LoadedPlugin's Debug names the world"
)]
pub enum Linked {
    /// A balancer.
    Balancer(host_bindings::BalancerPre<PluginState>),
    /// A router.
    Router(router_bindings::RouterPre<PluginState>),
}

/// Everything that can go wrong with a plugin, tagged by what the operator should do.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The plugin file could not be read.
    #[error("plugin `{name}`: cannot read {path}: {source}", path = path.display())]
    Read {
        /// Plugin name.
        name: String,
        /// File.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No bundled plugin and no file of that name.
    #[error("plugin `{name}` not found: it is not bundled and {looked}")]
    NotFound {
        /// Plugin name.
        name: String,
        /// Where it was looked for.
        looked: String,
    },
    /// Not a WebAssembly component wasmtime can compile.
    #[error(
        "plugin `{name}` ({source_desc}) is not a valid WebAssembly component: {reason}; build it with `cargo build --release --target wasm32-wasip2`"
    )]
    Compile {
        /// Plugin name.
        name: String,
        /// Bundled or file path.
        source_desc: String,
        /// Compiler message.
        reason: String,
    },
    /// Imports something the host does not provide, or lacks an export of the world.
    #[error(
        "plugin `{name}` ({source_desc}) does not fit world `{world}` of switchyard:plugin@0.1.0: {reason}"
    )]
    Link {
        /// Plugin name.
        name: String,
        /// Bundled or file path.
        source_desc: String,
        /// The world it was loaded as.
        world: &'static str,
        /// What is missing or mismatched.
        reason: String,
    },
    /// `init` returned an error: the plugin's own message about its configuration.
    #[error("plugin `{name}` rejected its configuration: {message}")]
    InitRejected {
        /// Plugin name.
        name: String,
        /// The plugin's message.
        message: String,
    },
    /// The plugin trapped, ran out of time or memory, or broke the calling contract.
    #[error("plugin `{name}` failed in `{call}` ({kind}): {detail}")]
    Call {
        /// Plugin name.
        name: String,
        /// Export being called.
        call: &'static str,
        /// Category, for counting.
        kind: FailureKind,
        /// What happened.
        detail: String,
    },
}

impl PluginError {
    /// The failure category when this is a call failure.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            PluginError::Call { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// `switchyard plugin check`: loads `file` as a balancer (or, failing that, as a
/// router), runs `init` with `config` and one decision, and describes what it found.
pub fn check_file(
    file: &std::path::Path,
    config: Vec<(String, String)>,
) -> Result<String, PluginError> {
    let name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_owned();
    let source_desc = file.display().to_string();
    let engine_error = |e: wasmtime::Error| PluginError::Compile {
        name: name.clone(),
        source_desc: source_desc.clone(),
        reason: e.to_string(),
    };
    let bytes = std::fs::read(file).map_err(|source| PluginError::Read {
        name: name.clone(),
        path: file.to_owned(),
        source,
    })?;
    let registry = PluginRegistry::new(PluginEngine::new().map_err(engine_error)?, None, None)
        .map_err(engine_error)?;
    let load =
        |world| registry.load_bytes(&name, PluginSource::File(file.to_owned()), &bytes, world);
    let (plugin, world) = match load(WorldKind::Balancer) {
        Ok(p) => (p, WorldKind::Balancer),
        // Not a balancer: perhaps a router; if not that either, report the balancer error.
        Err(balancer_error @ PluginError::Link { .. }) => match load(WorldKind::Router) {
            Ok(p) => (p, WorldKind::Router),
            Err(_) => return Err(balancer_error),
        },
        Err(e) => return Err(e),
    };
    let settings = config.len();
    let limits = crate::config::PluginLimits::default();
    let mut header = request::placeholder_header();
    let mut view = request::RequestView::placeholder();
    let started = std::time::Instant::now();
    let (exports, decision) = match world {
        WorldKind::Balancer => {
            let balancer = PoolBalancer::new(std::sync::Arc::clone(&plugin), config, limits)?;
            let mut table = Vec::new();
            for _ in 0..4 {
                table.extend_from_slice(&[1, crate::pool::FLAG_HEALTHY, 0, 0, 0]);
            }
            let choice = balancer.select(&mut header, &mut view, &table)?;
            let choice = choice.map_or("none (host fallback)".to_owned(), |i| {
                format!("backend {i}")
            });
            (
                "init, select, on-response",
                format!("select over 4 healthy backends chose {choice}"),
            )
        }
        WorldKind::Router => {
            let router = RouterInstance::new(std::sync::Arc::clone(&plugin), config, limits)?;
            let decision = router.route(&mut header, &mut view)?;
            (
                "init, route",
                format!("route for GET / decided {decision:?}"),
            )
        }
    };
    Ok(format!(
        "{}: ok\n  world:   {} of switchyard:plugin@0.1.0 (exports {exports})\n  imports: only what the sandbox provides\n  sha256:  {}\n  size:    {} bytes\n  init:    ok with {settings} setting(s)\n  call:    {decision} in {} µs",
        file.display(),
        world.as_str(),
        plugin.sha256,
        bytes.len(),
        started.elapsed().as_micros()
    ))
}
