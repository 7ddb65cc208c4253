//! Turning a validated [`Config`] into a running proxy: the one module that wires the
//! runtime, the listeners, and the background jobs together.

use arc_swap::ArcSwap;
use pingora::apps::HttpServerOptions;
use pingora::listeners::{DEFAULT_L4_WRITE_BUFFER_SIZE, L4BufferSettings, ListenerConfig};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::admin::AdminSocket;
use crate::config::{Config, ConfigErrors};
use crate::connections::{Capped, ConnectionCaps};
use crate::control::Control;
use crate::discovery::DnsDiscovery;
use crate::discovery::resolve::fill_from_dns;
use crate::discovery::sets::DiscoveredSets;
use crate::health::HealthChecker;
use crate::logging::Logging;
use crate::metrics::MetricsExporter;
use crate::plugin::PluginEngine;
use crate::proxy::Switchyard;
use crate::runtime::{BuildError, build_runtime};
use crate::shutdown::DrainThenExit;
use crate::supervisor::AnnounceServing;
use crate::telemetry::Telemetry;
use crate::tls::ListenerCertificates;
use pingora::services::background::background_service;

/// Why the proxy could not start (or a reload was rejected).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration file has problems.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// A plugin or CA file could not be loaded.
    #[error("{0}")]
    Build(#[from] BuildError),
    /// wasmtime could not be set up.
    #[error("cannot start the plugin engine: {0}")]
    Engine(String),
    /// The admin socket could not be opened.
    #[error("{0}")]
    Admin(String),
    /// A certificate or key could not be used.
    #[error("error: {0}")]
    Tls(String),
    /// A listener cannot bind its address.
    #[error("error: {0}")]
    Bind(String),
}

/// Loads the certificates of every HTTPS listener, as `run` will serve them.
pub fn load_certificates(
    config: &Config,
) -> Result<Vec<(SocketAddr, Arc<ListenerCertificates>)>, StartError> {
    config
        .proxy
        .tls
        .iter()
        .map(|l| {
            ListenerCertificates::load(l)
                .map(|c| (l.listen, Arc::new(c)))
                .map_err(StartError::Tls)
        })
        .collect()
}

/// Binds each address once, so that an address in use or a privileged port fails the
/// start with one clear line, before anything says "listening". (Pingora binds again,
/// with `SO_REUSEADDR`, when the server starts.)
fn check_binds(config: &Config) -> Result<(), StartError> {
    let plain = config.proxy.listen.iter().map(|a| (*a, "proxy.listen"));
    let tls = config
        .proxy
        .tls
        .iter()
        .map(|t| (t.listen, "proxy.tls.listen"));
    for (addr, field) in plain.chain(tls) {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let hint = match e.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "; ports below 1024 need root, or CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE)".to_owned()
                }
                std::io::ErrorKind::AddrInUse => "; another process listens there (see `ss -ltnp`)".to_owned(),
                std::io::ErrorKind::AddrNotAvailable => "; no interface of this machine has that address".to_owned(),
                _ => String::new(),
            };
            return Err(StartError::Bind(format!("{field} {addr}: {e}{hint}")));
        }
    }
    Ok(())
}

/// Read buffer per client connection: none. Pingora's default (64 KiB) is allocated for
/// every connection, idle or not, and a 20,000-connection flood then costs 8 KiB more
/// per connection; the header is read into its own buffer anyway, and bodies in larger
/// chunks that bypass it.
const L4_READ_BUFFER: usize = 0;

/// Pingora's per-connection HTTP settings from `[proxy]`.
fn http_options(config: &Config) -> HttpServerOptions {
    let limits = &config.proxy.limits;
    let mut options = HttpServerOptions::default();
    // gRPC clients speak HTTP/2 without TLS (h2c); HTTP/1 clients are told apart by the
    // first byte that differs from the preface.
    options.h2c = true;
    options.h1_header_timeout = Some(limits.client_header_timeout);
    options.h1_max_header_size = usize::try_from(limits.max_header_bytes).ok();
    options.h1_keepalive_timeout = Some(limits.keepalive_timeout);
    options
}

/// Runs the proxy until it is told to stop. Never returns on success. `logging` is
/// flushed, and `scratch` (a directory the caller made for this run, like the demo's)
/// removed, before the process exits.
pub fn run(
    mut config: Config,
    logging: Arc<Logging>,
    scratch: Option<std::path::PathBuf>,
) -> Result<(), StartError> {
    // First, so that a port in use fails the start at once, before plugins compile.
    check_binds(&config)?;
    let open_files = crate::connections::raise_open_files_limit();
    let engine = PluginEngine::new().map_err(|e| StartError::Engine(format!("{e:#}")))?;
    let metrics_error = |e| StartError::Engine(format!("cannot register the metrics: {e}"));
    let telemetry = Arc::new(Telemetry::new().map_err(metrics_error)?);
    telemetry
        .register(Box::new(
            logging.dropped_collector().map_err(metrics_error)?,
        ))
        .map_err(metrics_error)?;
    let discovered = Arc::new(DiscoveredSets::new(&telemetry).map_err(metrics_error)?);
    fill_from_dns(&mut config, &discovered);
    let runtime = build_runtime(&config, &engine, &telemetry, None)?;
    if let Some(path) = &config.admin.state_file {
        // A damaged file must not keep the proxy from serving: said, then left alone.
        match crate::control::state::restore(path, &runtime) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(file = %path.display(), backends = n, "run-time state restored")
            }
            Err(e) => {
                tracing::error!("{e}; starting with the configuration's weights, nothing drained")
            }
        }
    }
    let certificates = load_certificates(&config)?;
    for pool in &runtime.pools {
        let balancer = pool.balancer.load();
        let plugin = balancer.plugin();
        tracing::info!(pool = %pool.name, balancer = %plugin.name, source = %plugin.source, backends = pool.backends.len(), "pool ready");
    }
    let runtime = Arc::new(ArcSwap::from_pointee(runtime));
    let listeners: Vec<SocketAddr> = config
        .proxy
        .listen
        .iter()
        .copied()
        .chain(config.proxy.tls.iter().map(|t| t.listen))
        .collect();
    let connections = config.proxy.connections;
    let max = connections
        .max
        .unwrap_or_else(|| crate::connections::default_max(open_files));
    let caps = Arc::new(ConnectionCaps::new(
        max,
        connections.per_listener,
        &listeners,
    ));
    tracing::info!(max_connections = max, open_files, "connection limits");
    let control = Arc::new(Control::new(
        config.clone(),
        engine,
        Arc::clone(&runtime),
        certificates.clone(),
        Arc::clone(&caps),
        Arc::clone(&telemetry),
        discovered,
    ));
    // Bound now, so that a socket or port already taken stops the start with its reason.
    let metrics = config
        .metrics
        .map(|addr| {
            MetricsExporter::bind(addr, Arc::clone(&control))
                .map_err(|e| StartError::Bind(format!("metrics.listen {addr}: {e}")))
        })
        .transpose()?;
    let signals = crate::shutdown::DrainDelaySignal::new(Arc::clone(&control));
    // "listening" is logged, `/ready` passes and systemd hears READY=1 only once every
    // listener accepts: Pingora binds them after this function hands over.
    let announce = AnnounceServing::new(listeners.clone(), Arc::clone(&control));
    let admin = AdminSocket::bind(Arc::clone(&control), &config.admin.socket)
        .map_err(|e| StartError::Admin(e.to_string()))?;
    let mut tls_settings = Vec::new();
    for (listener, (_, store)) in config.proxy.tls.iter().zip(&certificates) {
        let settings =
            crate::tls::listener_settings(listener, Arc::clone(store)).map_err(StartError::Tls)?;
        tls_settings.push((listener.listen, settings));
    }
    let grace = config.proxy.grace_period;
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
    // Background work starts and stops with the server.
    let checker = HealthChecker::new(Arc::clone(&runtime));
    server.add_service(background_service("health checks", checker));
    if config.pools.iter().any(|p| p.discovery.is_some()) {
        let discovery = DnsDiscovery::new(Arc::clone(&control));
        server.add_service(background_service("dns discovery", discovery));
    }
    if let Some(metrics) = metrics {
        server.add_service(background_service("metrics", metrics));
    }
    server.add_service(background_service("admin socket", admin));
    server.add_service(background_service("announce serving", announce));
    let drain = DrainThenExit::new(
        grace,
        config.admin.socket.clone(),
        scratch.clone(),
        Arc::clone(&telemetry),
        logging,
    );
    server.add_service(background_service("drain then exit", drain));
    let mut proxy =
        pingora::proxy::http_proxy(&server.configuration, Switchyard::new(runtime, telemetry));
    proxy.server_options = Some(http_options(&config));
    let mut service = Service::new("switchyard".to_owned(), Capped::new(proxy, caps));
    let buffers = || L4BufferSettings::new(L4_READ_BUFFER, DEFAULT_L4_WRITE_BUFFER_SIZE);
    for addr in &config.proxy.listen {
        service.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers()));
    }
    for (addr, settings) in tls_settings {
        let listener = ListenerConfig::tcp(addr.to_string())
            .tls(settings)
            .l4_buffer(buffers());
        service.add_listener(listener);
    }
    server.add_service(service);
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(signals),
    });
    // SIGINT: Pingora stops at once and returns here; SIGTERM exits in DrainThenExit.
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::process::exit(0)
}
