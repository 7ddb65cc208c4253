//! What the data path reads — pools, routes, router plugins, edge settings — built
//! from a validated [`Config`] and swapped whole on reload.

use arc_swap::ArcSwap;
use ipnet::IpNet;
use std::collections::HashMap;
use std::sync::Arc;

use crate::cache::{Cache, CacheError, CacheUse};
use crate::config::{AccessLog, Config, PathSettings, RequestLimits};
use crate::edge::RoutePolicy;
use crate::plugin::{
    LoadedPlugin, PluginEngine, PluginError, PluginRegistry, PoolBalancer, RouterInstance,
    WorldKind,
};
use crate::pool::{Pool, Shadow};
use crate::router::Router;
use crate::telemetry::Telemetry;

/// Everything the data path reads, swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// Pools, in configuration order.
    pub pools: Vec<Arc<Pool>>,
    /// Route table.
    pub router: Router,
    /// Router plugins in use: the listener's, then the routes'.
    pub routers: Vec<RouterSlot>,
    /// Index in `routers` of the router asked about every request.
    pub listener_router: Option<usize>,
    /// Access rules, by route index.
    pub policies: Vec<RoutePolicy>,
    /// Settings of the listeners.
    pub edge: EdgeSettings,
    /// Response caches, kept across reloads by name.
    pub caches: Vec<Arc<Cache>>,
    /// Each route's cache, by route index.
    pub route_caches: Vec<Option<Arc<CacheUse>>>,
}

impl Runtime {
    /// Index of the pool called `name`.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }
}

/// What every request is checked against before routing.
#[derive(Debug)]
pub struct EdgeSettings {
    /// Header, body and time limits.
    pub limits: RequestLimits,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<IpNet>,
    /// Port of the HTTPS listener plain-HTTP requests are redirected to, if they are.
    pub redirect_https_port: Option<u16>,
    /// Whether and how each request is logged.
    pub access_log: AccessLog,
    /// How paths are canonicalised and passed on.
    pub paths: PathSettings,
}

/// One use of a router plugin (the listener's or a route's).
#[derive(Debug)]
pub struct RouterSlot {
    /// `proxy` or `routes[N]`.
    pub site: String,
    /// Its `router_config`.
    pub config: Vec<(String, String)>,
    /// The live instance; replaced whole by a plugin reload.
    pub instance: ArcSwap<RouterInstance>,
}

/// Why a runtime could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A plugin could not be loaded or initialised, per place it is named.
    #[error("{}", .0.iter().map(|(at, e)| format!("error: {at}: {e}")).collect::<Vec<_>>().join("\n"))]
    Plugins(Vec<(String, PluginError)>),
    /// wasmtime could not be set up.
    #[error("cannot start the plugin engine: {0}")]
    Engine(String),
    /// A CA file could not be used.
    #[error("error: {0}")]
    Tls(String),
    /// A cache's disk tier could not be opened.
    #[error("error: {0}")]
    Cache(#[from] CacheError),
}

/// A registry for `config`'s plugin directory and cache.
pub fn registry(config: &Config, engine: &PluginEngine) -> Result<PluginRegistry, BuildError> {
    PluginRegistry::new(
        engine.clone(),
        config.plugins.dir.clone(),
        config.plugins.cache_dir.clone(),
    )
    .map_err(|e| BuildError::Engine(format!("{e:#}")))
}

/// Loads every plugin the configuration names and builds the pools and routers,
/// reporting every one whose plugin fails (with the location of its key). Plugins whose
/// code is unchanged since `previous` are reused without compiling, and backends that
/// were draining there stay draining.
pub fn build_runtime(
    config: &Config,
    engine: &PluginEngine,
    telemetry: &Telemetry,
    previous: Option<&Runtime>,
) -> Result<Runtime, BuildError> {
    let registry = registry(config, engine)?;
    let mut reusable: HashMap<(String, String), Arc<LoadedPlugin>> = HashMap::new();
    if let Some(previous) = previous {
        let balancers = previous.pools.iter().flat_map(|p| {
            let shadow = p
                .shadow
                .as_ref()
                .map(|s| Arc::clone(s.balancer.load().plugin()));
            std::iter::once(Arc::clone(p.balancer.load().plugin())).chain(shadow)
        });
        let routers = previous
            .routers
            .iter()
            .map(|r| Arc::clone(r.instance.load().plugin()));
        for plugin in balancers.chain(routers) {
            reusable.insert((plugin.name.clone(), plugin.sha256.clone()), plugin);
        }
    }
    let mut loaded: HashMap<String, Option<Arc<LoadedPlugin>>> = HashMap::new();
    let mut errors = Vec::new();
    // Each plugin is compiled once, and a failure reported once, at its first use.
    let mut load =
        |name: &str, world: WorldKind, at: &str, errors: &mut Vec<(String, PluginError)>| {
            loaded
                .entry(name.to_owned())
                .or_insert_with(|| {
                    let (source, bytes) = registry
                        .read(name)
                        .map_err(|e| errors.push((at.to_owned(), e)))
                        .ok()?;
                    let sha256 = crate::plugin::registry::sha256_hex(&bytes);
                    match reusable.get(&(name.to_owned(), sha256)) {
                        Some(p) if p.source == source && p.world() == world => Some(Arc::clone(p)),
                        _ => registry
                            .load_bytes(name, source, &bytes, world)
                            .map_err(|e| errors.push((at.to_owned(), e)))
                            .ok(),
                    }
                })
                .clone()
        };

    let mut pools = Vec::new();
    for pool in &config.pools {
        let at = format!("{} (pool {:?})", pool.balancer_at, pool.name);
        let Some(plugin) = load(&pool.balancer, WorldKind::Balancer, &at, &mut errors) else {
            continue;
        };
        match PoolBalancer::new(plugin, pool.balancer_config.clone(), pool.limits.clone()) {
            Ok(balancer) => {
                let mut new = Pool::new(pool, balancer, telemetry);
                if let Some(shadow) = &pool.shadow {
                    let at = format!("{} (pool {:?} shadow)", shadow.at, pool.name);
                    let Some(plugin) = load(&shadow.plugin, WorldKind::Balancer, &at, &mut errors)
                    else {
                        continue;
                    };
                    match PoolBalancer::new(plugin, shadow.config.clone(), pool.limits.clone()) {
                        Ok(b) => {
                            new.shadow = Some(Shadow::new(b, shadow.sample, pool.backends.len()))
                        }
                        Err(e) => {
                            errors.push((at, e));
                            continue;
                        }
                    }
                }
                if let Some(path) = pool.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
                    match crate::tls::load_ca(path) {
                        Ok(ca) => new.ca = Some(ca),
                        Err(e) => {
                            return Err(BuildError::Tls(format!(
                                "pool {:?}: ca_file: {e}",
                                pool.name
                            )));
                        }
                    }
                }
                if let Some(old) =
                    previous.and_then(|r| r.pools.iter().find(|p| p.name == new.name))
                {
                    new.keep_state_from(old);
                }
                pools.push(Arc::new(new));
            }
            Err(e) => errors.push((at, e)),
        }
    }

    let uses =
        config
            .proxy
            .router
            .iter()
            .map(|r| ("proxy".to_owned(), r))
            .chain(
                config.routes.iter().enumerate().filter_map(|(i, route)| {
                    Some((format!("routes[{i}]"), route.router.as_ref()?))
                }),
            );
    let mut routers = Vec::new();
    for (site, router) in uses {
        let at = format!("{} ({site})", router.at);
        let Some(plugin) = load(&router.name, WorldKind::Router, &at, &mut errors) else {
            continue;
        };
        match RouterInstance::new(plugin, router.config.clone(), config.plugins.limits.clone()) {
            Ok(instance) => routers.push(RouterSlot {
                site,
                config: router.config.clone(),
                instance: ArcSwap::from_pointee(instance),
            }),
            Err(e) => errors.push((at, e)),
        }
    }
    if !errors.is_empty() {
        return Err(BuildError::Plugins(errors));
    }
    let listener_router = routers.iter().position(|r| r.site == "proxy");
    let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    let router = Router::new(
        &config.routes,
        pools.len(),
        |name| names.iter().position(|n| *n == name),
        |i| {
            routers
                .iter()
                .position(|r| r.site == format!("routes[{i}]"))
        },
    );
    let proxy = &config.proxy;
    let caches = crate::cache::open_caches(
        config,
        previous.map_or(&[][..], |p| &p.caches),
        &telemetry.cache,
    )?;
    let route_caches = crate::cache::route_uses(config, &caches);
    Ok(Runtime {
        caches,
        route_caches,
        pools,
        router,
        routers,
        listener_router,
        policies: config.routes.iter().map(RoutePolicy::new).collect(),
        edge: EdgeSettings {
            limits: proxy.limits.clone(),
            trusted_proxies: proxy.trusted_proxies.clone(),
            redirect_https_port: proxy
                .redirect_to_https
                .then(|| proxy.tls.first().map(|t| t.listen.port()))
                .flatten(),
            access_log: proxy.access_log,
            paths: proxy.paths,
        },
    })
}
