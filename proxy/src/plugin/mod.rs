//! Wasm plugins: loading, sandboxing and calling them.
//!
//! - [`sandbox`]: the engine and what a plugin may reach.
//! - [`registry`]: finds plugins by name (bundled, or `*.wasm` in the plugins directory),
//!   compiles them, and links them in the interface version they were built against.
//! - [`worlds`]: each world's calls over every version's bindings.
//! - [`instance`]: a live instance, its lock and deadline; [`quarantine`] decides when
//!   it is not called; [`failure`] counts how calls fail.
//! - [`balancer`], [`router`]: each world's calls, with the answer checked.
//! - [`request`]: what a plugin reads of the request.
//! - [`virtual_world`]: simulated time and seeded randomness, for the simulator.

pub mod balancer;
pub mod bundled;
pub mod failure;
pub mod instance;
pub mod output;
pub mod quarantine;
pub mod registry;
pub mod request;
pub mod router;
pub mod sandbox;
pub mod state;
pub mod ticker;
pub mod virtual_world;
pub mod worlds;

pub use failure::FailureKind;
pub use instance::{PluginInstance, PoolBalancer, RouterInstance};
pub use registry::{LoadedPlugin, PluginRegistry, PluginSource};
pub use router::RouteDecision;
pub use sandbox::{Allocator, PluginEngine};
pub use state::PluginState;

/// Host-side bindings of every published interface version, side by side: a plugin
/// built against any of them loads (as spin's `world` crate binds its platform
/// versions). Each version is its own WIT package in `wit/`, never changed once published.
pub mod bindings {
    /// `switchyard:plugin@0.1.0` (`wit/v0.1.0`): the backend table is a bare
    /// `list<u32>` of 5 fields per backend.
    pub mod v0_1 {
        /// World `balancer`.
        pub mod balancer {
            #![allow(missing_docs, missing_debug_implementations, clippy::all)]
            wasmtime::component::bindgen!({
                path: "../wit/v0.1.0",
                world: "balancer",
                with: { "switchyard:plugin/types.request": crate::plugin::request::RequestHandle },
            });
        }
        /// World `router`, sharing `types` with [`balancer`].
        pub mod router {
            #![allow(missing_docs, missing_debug_implementations, clippy::all)]
            wasmtime::component::bindgen!({
                path: "../wit/v0.1.0",
                world: "router",
                with: { "switchyard:plugin/types": super::balancer::switchyard::plugin::types },
            });
        }
    }

    /// `switchyard:plugin@0.2.0` (`wit/v0.2.0`): the table says its stride, backends
    /// carry an identity, the request its query.
    pub mod v0_2 {
        /// World `balancer`.
        pub mod balancer {
            #![allow(missing_docs, missing_debug_implementations, clippy::all)]
            wasmtime::component::bindgen!({
                path: "../wit/v0.2.0",
                world: "balancer",
                with: { "switchyard:plugin/types.request": crate::plugin::request::RequestHandle },
            });
        }
        /// World `router`, sharing `types` with [`balancer`].
        pub mod router {
            #![allow(missing_docs, missing_debug_implementations, clippy::all)]
            wasmtime::component::bindgen!({
                path: "../wit/v0.2.0",
                world: "router",
                with: { "switchyard:plugin/types": super::balancer::switchyard::plugin::types },
            });
        }
    }
}

use bindings::{v0_1, v0_2};

/// Which world a plugin is loaded as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorldKind {
    /// `balancer`: chooses a backend of a pool.
    Balancer,
    /// `router`: chooses a pool, or answers itself.
    Router,
}

impl WorldKind {
    /// The world's name in the WIT.
    pub fn as_str(self) -> &'static str {
        match self {
            WorldKind::Balancer => "balancer",
            WorldKind::Router => "router",
        }
    }
}

/// The interface version a plugin was built against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AbiVersion {
    /// `switchyard:plugin@0.1.0`.
    V0_1,
    /// `switchyard:plugin@0.2.0`.
    V0_2,
}

impl AbiVersion {
    /// Every version this host loads, oldest first.
    pub const ALL: [AbiVersion; 2] = [AbiVersion::V0_1, AbiVersion::V0_2];

    /// `0.1.0` or `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            AbiVersion::V0_1 => "0.1.0",
            AbiVersion::V0_2 => "0.2.0",
        }
    }

    /// The version whose `types` interface is called `switchyard:plugin/types@VERSION`.
    pub fn from_import(name: &str) -> Option<Result<AbiVersion, String>> {
        let version = name.strip_prefix("switchyard:plugin/types@")?;
        Some(
            AbiVersion::ALL
                .into_iter()
                .find(|v| v.as_str() == version)
                .ok_or_else(|| version.to_owned()),
        )
    }

    /// `u32` values per backend in the table this version's plugins are given.
    pub fn stride(self) -> usize {
        match self {
            AbiVersion::V0_1 => switchyard_plugin_sdk::abi::FIELDS_V0_1,
            AbiVersion::V0_2 => switchyard_plugin_sdk::abi::FIELDS,
        }
    }
}

impl std::fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "switchyard:plugin@{}", self.as_str())
    }
}

/// A compiled component linked as one of the worlds, in the version it was built for.
#[derive(Clone)]
#[allow(
    missing_debug_implementations,
    reason = "the generated pre-instances have no Debug; LoadedPlugin's Debug names the world"
)]
pub enum Linked {
    /// A 0.1.0 balancer.
    BalancerV0_1(v0_1::balancer::BalancerPre<PluginState>),
    /// A 0.2.0 balancer.
    BalancerV0_2(v0_2::balancer::BalancerPre<PluginState>),
    /// A 0.1.0 router.
    RouterV0_1(v0_1::router::RouterPre<PluginState>),
    /// A 0.2.0 router.
    RouterV0_2(v0_2::router::RouterPre<PluginState>),
}

impl Linked {
    /// The world it was linked as.
    pub fn world(&self) -> WorldKind {
        match self {
            Linked::BalancerV0_1(_) | Linked::BalancerV0_2(_) => WorldKind::Balancer,
            Linked::RouterV0_1(_) | Linked::RouterV0_2(_) => WorldKind::Router,
        }
    }

    /// The interface version it was built against.
    pub fn abi(&self) -> AbiVersion {
        match self {
            Linked::BalancerV0_1(_) | Linked::RouterV0_1(_) => AbiVersion::V0_1,
            Linked::BalancerV0_2(_) | Linked::RouterV0_2(_) => AbiVersion::V0_2,
        }
    }
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
    #[error("plugin `{name}` ({source_desc}) does not fit world `{world}`: {reason}")]
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
            let stride = plugin.abi().stride();
            for i in 0..4 {
                switchyard_plugin_sdk::abi::Row {
                    weight: 1,
                    healthy: true,
                    id: i,
                    ..Default::default()
                }
                .write(stride, &mut table);
            }
            let choice = balancer.select(&mut header, &mut view, &mut table)?;
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
        "{}: ok\n  world:   {} of {} (exports {exports})\n  imports: only what the sandbox provides\n  sha256:  {}\n  size:    {} bytes\n  init:    ok with {settings} setting(s)\n  call:    {decision} in {} µs",
        file.display(),
        world.as_str(),
        plugin.abi(),
        plugin.sha256,
        bytes.len(),
        started.elapsed().as_micros()
    ))
}
