//! Turning a validated [`Config`] into a running proxy, and rebuilding it at run time.

use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigErrors};
use crate::control::Control;
use crate::edge::RoutePolicy;
use crate::plugin::{
    LoadedPlugin, PluginEngine, PluginError, PluginRegistry, PoolBalancer, RouterInstance,
    WorldKind,
};
use crate::pool::Pool;
use crate::proxy::{EdgeSettings, RouterSlot, Runtime, Switchyard};
use crate::router::Router;

/// Why the proxy could not start (or a reload was rejected).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration file has problems.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A plugin could not be loaded or initialised, per pool.
    #[error("{}", .0.iter().map(|(at, e)| format!("error: {at}: {e}")).collect::<Vec<_>>().join("\n"))]
    Plugins(Vec<(String, PluginError)>),
    /// wasmtime could not be set up.
    #[error("cannot start the plugin engine: {0}")]
    Engine(String),
    /// The admin socket could not be opened.
    #[error("{0}")]
    Admin(String),
    /// A certificate, key or CA file could not be used.
    #[error("error: {0}")]
    Tls(String),
}

/// A registry for `config`'s plugin directory and cache.
pub fn registry(config: &Config, engine: &PluginEngine) -> Result<PluginRegistry, StartError> {
    PluginRegistry::new(
        engine.clone(),
        config.plugins.dir.clone(),
        config.plugins.cache_dir.clone(),
    )
    .map_err(|e| StartError::Engine(format!("{e:#}")))
}

/// Loads every plugin the configuration names and builds the pools and routers,
/// reporting every one whose plugin fails (with the location of its key). Plugins whose
/// code is unchanged since `previous` are reused without compiling, and backends that
/// were draining there stay draining.
pub fn build_runtime(
    config: &Config,
    engine: &PluginEngine,
    previous: Option<&Runtime>,
) -> Result<Runtime, StartError> {
    let registry = registry(config, engine)?;
    let mut reusable: HashMap<(String, String), Arc<LoadedPlugin>> = HashMap::new();
    if let Some(previous) = previous {
        let balancers = previous
            .pools
            .iter()
            .map(|p| Arc::clone(p.balancer.load().plugin()));
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
                let mut new = Pool::new(pool, balancer);
                if let Some(path) = pool.tls.as_ref().and_then(|t| t.ca_file.as_ref()) {
                    match crate::tls::load_ca(path) {
                        Ok(ca) => new.ca = Some(ca),
                        Err(e) => {
                            return Err(StartError::Tls(format!(
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
        return Err(StartError::Plugins(errors));
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
    Ok(Runtime {
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
        },
    })
}

/// Runs the proxy until it is told to stop. Never returns on success.
pub fn run(config: Config) -> Result<(), StartError> {
    let engine = PluginEngine::new().map_err(|e| StartError::Engine(format!("{e:#}")))?;
    let runtime = build_runtime(&config, &engine, None)?;
    for pool in &runtime.pools {
        let balancer = pool.balancer.load();
        let plugin = balancer.plugin();
        tracing::info!(pool = %pool.name, balancer = %plugin.name, source = %plugin.source, backends = pool.backends.len(), "pool ready");
    }
    let runtime = Arc::new(ArcSwap::from_pointee(runtime));
    crate::health::start(Arc::clone(&runtime))
        .map_err(|e| StartError::Engine(format!("cannot start the health checker: {e}")))?;
    let control = Arc::new(Control::new(config.clone(), engine, Arc::clone(&runtime)));
    if let Some(addr) = config.metrics {
        crate::metrics::start(addr, Arc::clone(&control))
            .map_err(|e| StartError::Admin(format!("metrics listener {addr}: {e}")))?;
    }
    let _admin = crate::admin::start(control, &config.admin.socket)
        .map_err(|e| StartError::Admin(e.to_string()))?;

    let mut tls_settings = Vec::new();
    for (i, listener) in config.proxy.tls.iter().enumerate() {
        let settings = crate::tls::listener_settings(listener, i).map_err(StartError::Tls)?;
        tls_settings.push((listener.listen, settings));
    }
    let grace = config.proxy.grace_period;
    crate::shutdown::exit_when_drained_after_sigterm(grace, config.admin.socket.clone())
        .map_err(|e| StartError::Admin(format!("cannot watch for SIGTERM: {e}")))?;
    let conf = ServerConf {
        threads: config.proxy.threads,
        work_stealing: config.proxy.work_stealing,
        // Pingora waits this long after SIGTERM; `shutdown` exits as soon as the
        // requests in flight are done.
        grace_period_seconds: Some(grace.as_secs() + u64::from(grace.subsec_nanos() > 0)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service =
        pingora::proxy::http_proxy_service(&server.configuration, Switchyard::new(runtime));
    if let Some(app) = service.app_logic_mut() {
        // gRPC clients speak HTTP/2 without TLS (h2c); HTTP/1 clients are told apart
        // by the missing preface.
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        app.server_options = Some(options);
    }
    for addr in &config.proxy.listen {
        service.add_tcp(&addr.to_string());
        tracing::info!(%addr, "listening");
    }
    for (addr, settings) in tls_settings {
        service.add_tls_with_settings(&addr.to_string(), None, settings);
        tracing::info!(%addr, "listening (HTTPS)");
    }
    server.add_service(service);
    server.run_forever()
}
