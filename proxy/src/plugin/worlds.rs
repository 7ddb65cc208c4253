//! The plugin worlds as the host calls them, whatever interface version a plugin was
//! built against: one enum per world over each version's generated bindings, which
//! converts the host's values to that version's and back.

use wasmtime::Store;
use wasmtime::component::Resource;

use super::bindings::{v0_1, v0_2};
use super::request::RequestHandle;
use super::state::PluginState;
use super::{Linked, LoadedPlugin};

/// A plugin world the host can instantiate.
pub trait World: Sized + Send + 'static {
    /// Human name, for errors.
    const NAME: &'static str;
    /// Makes an instance of `plugin`, if it was linked as this world.
    fn instantiate(plugin: &LoadedPlugin, store: &mut Store<PluginState>)
    -> wasmtime::Result<Self>;
    /// Runs the world's `init`.
    fn init(
        &self,
        store: &mut Store<PluginState>,
        config: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>>;
}

/// A balancer instance, of any interface version.
pub enum BalancerWorld {
    /// Built against 0.1.0: the table is a bare list of 5 fields per backend.
    V0_1(v0_1::balancer::Balancer),
    /// Built against 0.2.0: the table carries its stride.
    V0_2(v0_2::balancer::Balancer),
}

/// A router instance, of any interface version.
pub enum RouterWorld {
    /// Built against 0.1.0.
    V0_1(v0_1::router::Router),
    /// Built against 0.2.0.
    V0_2(v0_2::router::Router),
}

impl std::fmt::Debug for BalancerWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BalancerWorld::V0_1(_) => "balancer@0.1.0",
            BalancerWorld::V0_2(_) => "balancer@0.2.0",
        })
    }
}

impl std::fmt::Debug for RouterWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RouterWorld::V0_1(_) => "router@0.1.0",
            RouterWorld::V0_2(_) => "router@0.2.0",
        })
    }
}

fn request() -> Resource<RequestHandle> {
    // The one request of the call in progress lives in the store: the handle is a token.
    Resource::new_borrow(0)
}

impl World for BalancerWorld {
    const NAME: &'static str = "balancer";

    fn instantiate(
        plugin: &LoadedPlugin,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Self> {
        match &plugin.linked {
            Linked::BalancerV0_1(pre) => pre.instantiate(store).map(BalancerWorld::V0_1),
            Linked::BalancerV0_2(pre) => pre.instantiate(store).map(BalancerWorld::V0_2),
            Linked::RouterV0_1(_) | Linked::RouterV0_2(_) => {
                wasmtime::bail!("plugin `{}` is a router, not a balancer", plugin.name)
            }
        }
    }

    fn init(
        &self,
        store: &mut Store<PluginState>,
        config: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            BalancerWorld::V0_1(b) => b.call_init(store, config),
            BalancerWorld::V0_2(b) => b.call_init(store, config),
        }
    }
}

impl BalancerWorld {
    /// `select` over `table`, filled with `stride` values per backend (the version's
    /// own: see [`super::AbiVersion::stride`]). The table is moved into the call's
    /// argument and back, not copied.
    pub fn select(
        &self,
        store: &mut Store<PluginState>,
        table: &mut Vec<u32>,
        stride: usize,
    ) -> wasmtime::Result<Option<u32>> {
        match self {
            BalancerWorld::V0_1(b) => b.call_select(store, request(), table),
            BalancerWorld::V0_2(b) => {
                let record = v0_2::balancer::switchyard::plugin::types::BackendTable {
                    stride: u32::try_from(stride).unwrap_or(u32::MAX),
                    data: std::mem::take(table),
                };
                let result = b.call_select(store, request(), &record);
                *table = record.data;
                result
            }
        }
    }

    /// `on-response`.
    pub fn on_response(
        &self,
        store: &mut Store<PluginState>,
        backend: u32,
        status: u16,
        latency_us: u64,
    ) -> wasmtime::Result<()> {
        match self {
            BalancerWorld::V0_1(b) => b.call_on_response(store, backend, status, latency_us),
            BalancerWorld::V0_2(b) => b.call_on_response(store, backend, status, latency_us),
        }
    }
}

/// A router's answer, in the host's terms.
#[derive(Debug)]
pub enum RouterReply {
    /// Serve from this pool.
    Pool(String),
    /// Answer directly, unchecked.
    Respond {
        /// Status as the plugin gave it.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// Body.
        body: String,
    },
    /// Go on with the static routes.
    Continue,
}

impl World for RouterWorld {
    const NAME: &'static str = "router";

    fn instantiate(
        plugin: &LoadedPlugin,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Self> {
        match &plugin.linked {
            Linked::RouterV0_1(pre) => pre.instantiate(store).map(RouterWorld::V0_1),
            Linked::RouterV0_2(pre) => pre.instantiate(store).map(RouterWorld::V0_2),
            Linked::BalancerV0_1(_) | Linked::BalancerV0_2(_) => {
                wasmtime::bail!("plugin `{}` is a balancer, not a router", plugin.name)
            }
        }
    }

    fn init(
        &self,
        store: &mut Store<PluginState>,
        config: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            RouterWorld::V0_1(r) => r.call_init(store, config),
            RouterWorld::V0_2(r) => r.call_init(store, config),
        }
    }
}

/// One version's `decision` as a [`RouterReply`]: the versions' types are alike but
/// distinct, so each gets the same conversion.
macro_rules! reply_from {
    ($decision:expr, $routing:path) => {{
        use $routing as routing;
        match $decision {
            routing::Decision::Pool(name) => RouterReply::Pool(name),
            routing::Decision::Continue => RouterReply::Continue,
            routing::Decision::Respond(r) => RouterReply::Respond {
                status: r.status,
                headers: r.headers,
                body: r.body,
            },
        }
    }};
}

impl RouterWorld {
    /// `route`.
    pub fn route(&self, store: &mut Store<PluginState>) -> wasmtime::Result<RouterReply> {
        Ok(match self {
            RouterWorld::V0_1(r) => reply_from!(
                r.call_route(store, request())?,
                v0_1::router::switchyard::plugin::routing
            ),
            RouterWorld::V0_2(r) => reply_from!(
                r.call_route(store, request())?,
                v0_2::router::switchyard::plugin::routing
            ),
        })
    }
}
