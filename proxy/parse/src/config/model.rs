//! The validated configuration: what the proxy runs from. Built only by
//! [`super::parse`], so every value here has passed its checks.

use ipnet::IpNet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::caches::{CacheConfig, RouteCache};
use super::diagnostics::{ConfigWarning, Location};

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    /// Listeners, limits and what every request is checked against.
    pub proxy: ProxySettings,
    /// Where plugins come from and what they may use.
    pub plugins: PluginSettings,
    /// The admin socket.
    pub admin: AdminSettings,
    /// Address of the Prometheus `/metrics` endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// Name servers for `backends_from`.
    pub dns: DnsSettings,
    /// Backend pools, in file order.
    pub pools: Vec<PoolConfig>,
    /// Routes, in file order; empty means "everything to the only pool".
    pub routes: Vec<RouteConfig>,
    /// `[[caches]]`: response stores routes use.
    pub caches: Vec<CacheConfig>,
    /// What is allowed but probably not meant (shown by `check` and at start).
    pub warnings: Vec<ConfigWarning>,
}

/// `[proxy]`
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Addresses to accept HTTP on.
    pub listen: Vec<SocketAddr>,
    /// Worker threads.
    pub threads: usize,
    /// Router plugin asked first about every request.
    pub router: Option<RouterUse>,
    /// HTTPS listeners.
    pub tls: Vec<TlsListener>,
    /// Plain listeners answer every request with a redirect to the first HTTPS listener.
    pub redirect_to_https: bool,
    /// After SIGTERM: how long in-flight requests may take before the process exits.
    pub grace_period: Duration,
    /// After SIGTERM, before that: how long `/ready` fails while the proxy still accepts
    /// and serves, so load balancers and Kubernetes take it out of rotation first.
    pub drain_delay: Duration,
    /// Limits on what a client may send and how long it may take.
    pub limits: RequestLimits,
    /// Connections held at once.
    pub connections: ConnectionLimits,
    /// Peers whose `X-Forwarded-For` is believed when finding the client address.
    pub trusted_proxies: Vec<IpNet>,
    /// Access log: off, text or JSON.
    pub access_log: AccessLog,
    /// Where access lines go: this file (appended to), or stderr when `None`. Either way
    /// a writer thread of its own writes them, never the worker that served the request.
    pub access_log_path: Option<PathBuf>,
    /// One tokio runtime shared by all worker threads, so tasks move to an idle thread
    /// and a slow plugin call can leave its thread (`block_in_place`); `false` runs one
    /// event loop per thread, as nginx workers do: fewer context switches, but a slow
    /// plugin call holds up the other requests of its thread.
    pub work_stealing: bool,
    /// How request paths are canonicalised and what backends receive.
    pub paths: PathSettings,
}

/// A router plugin named by `[proxy]` or a route, with its `router_config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterUse {
    /// Plugin name (a `*.wasm` file in the plugins directory).
    pub name: String,
    /// `router_config`, as strings, for the plugin's `init`.
    pub config: Vec<(String, String)>,
    /// Where `router` is written, for plugin errors.
    pub at: Location,
}

/// `[admin]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSettings {
    /// Path of the Unix socket `switchyard ctl` talks to.
    pub socket: PathBuf,
    /// Where drains and weights set at run time are saved on every change, and read
    /// back at start and on a configuration reload (HAProxy's `server-state-file`).
    pub state_file: Option<PathBuf>,
}

/// `[plugins]`
#[derive(Clone, Debug)]
pub struct PluginSettings {
    /// Directory of `*.wasm` plugins; a file replaces the bundled plugin of its name.
    pub dir: Option<PathBuf>,
    /// Where compiled plugins are kept between runs; `None` turns the cache off.
    pub cache_dir: Option<PathBuf>,
    /// Sandbox limits.
    pub limits: PluginLimits,
}

/// `[plugins.limits]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginLimits {
    /// Budget of one `select`/`on-response` call.
    pub call_timeout: Duration,
    /// Budget of `init`.
    pub init_timeout: Duration,
    /// Maximum linear memory of one instance, in bytes.
    pub memory_bytes: u64,
    /// Failures within `quarantine_window` that quarantine the plugin; 0: never.
    pub quarantine_after: u32,
    /// Window in which failures are counted.
    pub quarantine_window: Duration,
    /// First quarantine; doubles at each quarantine in a row.
    pub quarantine_backoff: Duration,
    /// Longest quarantine.
    pub quarantine_max: Duration,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            call_timeout: super::DEFAULT_CALL_TIMEOUT,
            init_timeout: super::DEFAULT_INIT_TIMEOUT,
            memory_bytes: super::DEFAULT_MEMORY_LIMIT,
            quarantine_after: 20,
            quarantine_window: Duration::from_secs(10),
            quarantine_backoff: Duration::from_secs(1),
            quarantine_max: Duration::from_secs(60),
        }
    }
}

/// What a pool does when its balancer fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnPluginFailure {
    /// Serve with the native round-robin (fail-open).
    Fallback,
    /// Answer 503 (fail-closed).
    Reject,
}

/// A pool's `shadow`: a balancer plugin shown the same requests and backend table as
/// the live one, whose picks are recorded and compared, never used.
#[derive(Clone, Debug, PartialEq)]
pub struct ShadowConfig {
    /// Plugin name.
    pub plugin: String,
    /// Where `shadow` is written, for plugin errors.
    pub at: Location,
    /// `shadow_config`, as strings, for the plugin's `init`.
    pub config: Vec<(String, String)>,
    /// Share of the pool's requests also shown to the shadow, in (0, 1].
    pub sample: f64,
}

/// `[[pools]]`
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Unique name routes refer to.
    pub name: String,
    /// Plugin name.
    pub balancer: String,
    /// Where `balancer` is written, for plugin errors.
    pub balancer_at: Location,
    /// `balancer_config`, as strings, for the plugin's `init`.
    pub balancer_config: Vec<(String, String)>,
    /// A second balancer asked on a sample of requests and never obeyed, if any.
    pub shadow: Option<ShadowConfig>,
    /// Backends, in file order; the plugin sees them by this index. For a pool with
    /// `discovery`, empty as parsed; the proxy fills in what DNS answers.
    pub backends: Vec<BackendConfig>,
    /// `backends_from`: backends found in DNS, if the pool is not listed.
    pub discovery: Option<Discovery>,
    /// Timeout to establish a connection to a backend.
    pub connect_timeout: Duration,
    /// How many other backends to try after a connection failure.
    pub retries: u32,
    /// Fail-open or fail-closed when the balancer fails.
    pub on_plugin_failure: OnPluginFailure,
    /// Sandbox limits of this pool's balancer (`[plugins.limits]` with the pool's overrides).
    pub limits: PluginLimits,
    /// Active health checks, if configured.
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection, if configured.
    pub outlier_detection: Option<OutlierDetection>,
    /// Timeouts of one exchange with a backend.
    pub timeouts: UpstreamTimeouts,
    /// Response statuses that send an idempotent request to another backend.
    pub retry_on: Vec<u16>,
    /// Retries in flight may be at most this percentage of the pool's requests in flight
    /// (at least [`super::MIN_RETRY_CONCURRENCY`]).
    pub retry_budget_percent: u32,
    /// TLS to the backends, if on.
    pub tls: Option<UpstreamTls>,
    /// HTTP version spoken to the backends.
    pub protocol: UpstreamProtocol,
}

/// `backends_from` of a pool: where its backends are looked up, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// The name asked.
    pub source: DiscoverySource,
    /// How often it is asked again.
    pub interval: Duration,
}

/// The records that name a pool's backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoverySource {
    /// `dns = "NAME:PORT"`: every A and AAAA record of the name, at `port`.
    Address {
        /// The name.
        host: String,
        /// The port of every backend.
        port: u16,
    },
    /// `dns_srv = "NAME"`: every SRV record of the name, each with its own target,
    /// port and weight.
    Srv {
        /// The SRV name, like `_http._tcp.blog.internal`.
        name: String,
    },
}

impl std::fmt::Display for DiscoverySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DiscoverySource::Address { host, port } => write!(f, "dns {host}:{port}"),
            DiscoverySource::Srv { name } => write!(f, "dns_srv {name}"),
        }
    }
}

/// `[dns]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    /// Name servers to ask; empty: the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// How long one question may take.
    pub timeout: Duration,
}

/// One backend of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// Resolved address.
    pub addr: SocketAddr,
    /// Relative share, at least 1.
    pub weight: u32,
    /// Serves only while no primary backend is up.
    pub backup: bool,
}

/// `health_check` of a pool: active checks of every backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// HTTP request or bare TCP connect.
    pub kind: HealthCheckKind,
    /// Time between checks of one backend.
    pub interval: Duration,
    /// Time a check may take.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

/// What a health check does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// `GET path`; a status in `expect` (inclusive range) passes.
    Http {
        /// Request path.
        path: String,
        /// Passing statuses, inclusive.
        expect: (u16, u16),
    },
    /// A TCP connection that opens passes.
    Tcp,
}

/// `outlier_detection` of a pool: eject a backend that fails in a row, for a time that
/// doubles with each ejection (Envoy's consecutive-failures detector).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Connection failures or 5xx in a row that eject a backend.
    pub consecutive_failures: u32,
    /// First ejection; doubled at each further ejection of the same backend.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// At most this share of a pool's backends is ejected at once.
    pub max_ejected_percent: u32,
}

/// `[[routes]]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// Host to match, if any.
    pub host: Option<HostPattern>,
    /// Path prefix to match, canonical (see [`crate::request`]); `/` matches every path.
    pub path_prefix: String,
    /// Pool that serves matching requests (unless the route's router says otherwise).
    pub pool: String,
    /// Router plugin asked about requests of this route.
    pub router: Option<RouterUse>,
    /// Client networks let through, if the list is not empty; everything else gets 403.
    pub allow: Vec<IpNet>,
    /// Client networks refused with 403 (checked before `allow`).
    pub deny: Vec<IpNet>,
    /// Requests per second per client address.
    pub rate_limit: Option<RateLimit>,
    /// Responses of this route are served from, and stored in, a cache.
    pub cache: Option<RouteCache>,
}

/// An exact host or a `*.suffix` wildcard, lower case, without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// Matches this host only.
    Exact(String),
    /// `*.example.com`: matches any host ending in `.example.com` (not `example.com`).
    Suffix(String),
}

impl HostPattern {
    /// True when `host` (canonical: lower case, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// `[[proxy.tls]]`: an HTTPS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsListener {
    /// Address to accept TLS on.
    pub listen: SocketAddr,
    /// Certificates; the client's SNI picks the one whose names match, else the first.
    pub certificates: Vec<CertificateFiles>,
    /// Offer HTTP/2 by ALPN (on by default).
    pub http2: bool,
}

/// A PEM certificate chain and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// Where the entry is written, for load errors.
    pub at: Location,
    /// Its field path, like `proxy.tls[0].certificates[1]`.
    pub field: String,
}

/// Limits on what a client may send, and how long it may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Request line plus headers, in bytes; more gets 431.
    pub max_header_bytes: u64,
    /// Number of header fields; more gets 431.
    pub max_headers: usize,
    /// Request body, in bytes; more gets 413.
    pub max_body_bytes: u64,
    /// Longest wait for the client between two reads of a body; a stall gets 408.
    pub client_timeout: Duration,
    /// Time for a whole request header from its first byte (nginx's
    /// `client_header_timeout`); also bounds a new connection that sends nothing.
    pub client_header_timeout: Duration,
    /// Time an idle keep-alive connection waits for its next request.
    pub keepalive_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_header_bytes: 32 << 10,
            max_headers: 100,
            max_body_bytes: 16 << 20,
            client_timeout: Duration::from_secs(60),
            client_header_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
        }
    }
}

/// How many client connections are held at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// In the whole process; `None`: derived from the open-files limit at start.
    pub max: Option<usize>,
    /// On each listener; `None`: only the process limit.
    pub per_listener: Option<usize>,
}

/// How request paths are read and passed on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathSettings {
    /// Send backends the canonical path instead of the path as received.
    pub forward_normalized: bool,
    /// What an encoded slash (`%2F`) does.
    pub encoded_slash: crate::request::EncodedSlash,
}

/// `[proxy] access_log`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLog {
    /// No line per request.
    Off,
    /// `key=value` text, one line per request.
    Text,
    /// One JSON object per line.
    Json,
}

/// Timeouts of one exchange with a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// Wait for the response header, and between reads of the body.
    pub read: Duration,
    /// One write of the request.
    pub write: Duration,
    /// An unused keep-alive connection is closed after this.
    pub idle: Duration,
}

/// TLS from the proxy to a pool's backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Server name sent and verified; empty sends none and checks the address.
    pub sni: String,
    /// Verify the backend's certificate (on by default).
    pub verify: bool,
    /// CA certificates (PEM) to verify against instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// HTTP version spoken to a pool's backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (with TLS, HTTP/2 is not offered).
    Http1,
    /// HTTP/2: by ALPN over TLS, or prior knowledge (h2c) without; what gRPC needs.
    Http2,
}

/// `rate_limit` of a route: a token bucket per client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: u32,
    /// Bucket size: requests a client may send at once after being idle.
    pub burst: u32,
    /// IPv6 clients share a bucket per network of this prefix length (one site or
    /// household gets a /64, so a per-address limit would be no limit).
    pub ipv6_prefix: u8,
}
