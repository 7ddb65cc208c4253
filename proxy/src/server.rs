//! Turning a validated [`Config`] into a running proxy.

use arc_swap::ArcSwap;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigErrors};
use crate::plugin::{LoadedPlugin, PluginEngine, PluginError, PluginRegistry, PoolBalancer};
use crate::pool::Pool;
use crate::proxy::{Runtime, Switchyard};
use crate::router::Router;

/// Why the proxy could not start.
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
}

/// Loads every plugin the configuration names and builds the pools, reporting every
/// pool whose plugin fails (with the location of its `balancer` key).
pub fn build_runtime(config: &Config, engine: &PluginEngine) -> Result<Runtime, StartError> {
    let registry = PluginRegistry::new(engine.clone(), config.plugins.dir.clone())
        .map_err(|e| StartError::Engine(format!("{e:#}")))?;
    let mut loaded: HashMap<&str, Option<Arc<LoadedPlugin>>> = HashMap::new();
    let mut errors = Vec::new();
    let mut pools = Vec::new();
    for pool in &config.pools {
        let at = format!("{} (pool {:?})", pool.balancer_at, pool.name);
        // Each plugin is compiled once, and a failure reported once, at its first use.
        let plugin = loaded.entry(pool.balancer.as_str()).or_insert_with(|| {
            registry
                .load(&pool.balancer)
                .map_err(|e| errors.push((at.clone(), e)))
                .ok()
        });
        let Some(plugin) = plugin.clone() else {
            continue;
        };
        match PoolBalancer::new(
            plugin,
            pool.balancer_config.clone(),
            config.plugins.limits.clone(),
        ) {
            Ok(balancer) => pools.push(Arc::new(Pool::new(pool, balancer))),
            Err(e) => errors.push((at, e)),
        }
    }
    if !errors.is_empty() {
        return Err(StartError::Plugins(errors));
    }
    let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    let router = Router::new(&config.routes, pools.len(), |name| {
        names.iter().position(|n| *n == name)
    });
    Ok(Runtime { pools, router })
}

/// Runs the proxy until it is told to stop. Never returns on success.
pub fn run(config: Config) -> Result<(), StartError> {
    let engine = PluginEngine::new().map_err(|e| StartError::Engine(format!("{e:#}")))?;
    let runtime = build_runtime(&config, &engine)?;
    for pool in &runtime.pools {
        tracing::info!(pool = %pool.name, balancer = %pool.balancer.plugin().name, source = %pool.balancer.plugin().source, backends = pool.backends.len(), "pool ready");
    }
    let runtime = Arc::new(ArcSwap::from_pointee(runtime));

    let conf = ServerConf {
        threads: config.proxy.threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service =
        pingora::proxy::http_proxy_service(&server.configuration, Switchyard::new(runtime));
    for addr in &config.proxy.listen {
        service.add_tcp(&addr.to_string());
        tracing::info!(%addr, "listening");
    }
    server.add_service(service);
    server.run_forever()
}
