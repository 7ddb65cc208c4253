//! Configuration: the TOML file, read in two steps.
//!
//! 1. Raw serde structs mirror the file. Unknown keys are rejected, but all of them are
//!    reported at once (through `serde_ignored`, as cargo does for manifests) instead of
//!    stopping at the first as `deny_unknown_fields` would: an operator fixing a file
//!    wants every problem in one run of `switchyard check`.
//! 2. One validation step turns the raw structs into the typed [`Config`], collecting
//!    every problem with the file, line and column it comes from.

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

mod edge;
pub use edge::*;

/// Time allowed to connect to a backend, unless a pool says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Retries on another backend after a connection failure, unless a pool says otherwise.
pub const DEFAULT_RETRIES: u32 = 2;
/// Wall-clock budget of one `select`/`on-response` call before it is interrupted. A
/// call takes about a microsecond; the budget is wall time, so it also covers the
/// thread being preempted on a busy host, which 1 ms did not always.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(5);
/// Wall-clock budget of a plugin's `init`.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(1);
/// Linear memory a plugin instance may grow to.
pub const DEFAULT_MEMORY_LIMIT: u64 = 16 << 20;

/// A position in the configuration file, 1-based.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem in a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the configuration: {source}", file = file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or a value of the wrong type.
    #[error("{at}: {message}")]
    Syntax {
        /// Where.
        at: Location,
        /// The parser's message.
        message: String,
    },
    /// A key this version does not know (often a typo).
    #[error("{at}: unknown key `{key}`; {hint}")]
    UnknownKey {
        /// Where.
        at: Location,
        /// Full path of the key, like `pools[0].balancr`.
        key: String,
        /// The keys allowed there.
        hint: String,
    },
    /// A value that parses but is not acceptable.
    #[error("{at}: {field}: {problem}")]
    Invalid {
        /// Where.
        at: Location,
        /// Full path of the field, like `pools[0].backends[1].addr`.
        field: String,
        /// What is wrong and what to write instead.
        problem: String,
    },
}

/// Every problem found in one file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from.
    pub source: PathBuf,
    /// Listeners and threads.
    pub proxy: ProxySettings,
    /// Where plugins come from and what they may use.
    pub plugins: PluginSettings,
    /// The admin socket.
    pub admin: AdminSettings,
    /// Address of the Prometheus `/metrics` endpoint, if any.
    pub metrics: Option<SocketAddr>,
    /// Backend pools, in file order.
    pub pools: Vec<PoolConfig>,
    /// Routes, in file order; empty means "everything to the only pool".
    pub routes: Vec<RouteConfig>,
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
    /// Limits on what a client may send.
    pub limits: RequestLimits,
    /// Peers whose `X-Forwarded-For` is believed when finding the client address.
    pub trusted_proxies: Vec<IpNet>,
    /// Access log: off, text or JSON.
    pub access_log: AccessLog,
    /// One tokio runtime shared by all worker threads, so tasks move to an idle thread
    /// and a slow plugin call can leave its thread (`block_in_place`); `false` runs one
    /// event loop per thread, as nginx workers do: fewer context switches, but a slow
    /// plugin call holds up the other requests of its thread.
    pub work_stealing: bool,
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
}

/// Default admin socket: `$XDG_RUNTIME_DIR/switchyard.sock`, else one per user in /tmp.
pub fn default_admin_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("switchyard.sock"),
        _ => {
            use std::os::unix::fs::MetadataExt;
            let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
            PathBuf::from(format!("/tmp/switchyard-{uid}.sock"))
        }
    }
}

/// Default compiled-plugin cache: `$XDG_CACHE_HOME/switchyard/plugins` or
/// `~/.cache/switchyard/plugins`.
fn default_cache_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(base.join("switchyard").join("plugins"))
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
            call_timeout: DEFAULT_CALL_TIMEOUT,
            init_timeout: DEFAULT_INIT_TIMEOUT,
            memory_bytes: DEFAULT_MEMORY_LIMIT,
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
    /// Backends, in file order; the plugin sees them by this index.
    pub backends: Vec<BackendConfig>,
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
    /// (at least [`MIN_RETRY_CONCURRENCY`]).
    pub retry_budget_percent: u32,
    /// TLS to the backends, if on.
    pub tls: Option<UpstreamTls>,
    /// HTTP version spoken to the backends.
    pub protocol: UpstreamProtocol,
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

/// `[[routes]]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConfig {
    /// Host to match, if any.
    pub host: Option<HostPattern>,
    /// Path prefix to match; `/` matches every path.
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
}

/// An exact host or a `*.suffix` wildcard, lower case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// Matches this host only.
    Exact(String),
    /// `*.example.com`: matches any host ending in `.example.com` (not `example.com`).
    Suffix(String),
}

impl HostPattern {
    /// True when `host` (lower case, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

// ---------------------------------------------------------------- raw file structs

#[derive(Deserialize)]
struct RawConfig {
    proxy: Option<Spanned<RawProxy>>,
    plugins: Option<RawPlugins>,
    admin: Option<RawAdmin>,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    pools: Vec<Spanned<RawPool>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
}

#[derive(Deserialize)]
struct RawProxy {
    listen: Option<Spanned<Vec<Spanned<String>>>>,
    threads: Option<Spanned<i64>>,
    router: Option<Spanned<String>>,
    router_config: Option<Spanned<PluginTable>>,
    #[serde(default)]
    tls: Vec<Spanned<edge::RawTlsListener>>,
    redirect_to_https: Option<Spanned<bool>>,
    grace_period: Option<Spanned<String>>,
    max_header_bytes: Option<Spanned<String>>,
    max_headers: Option<Spanned<i64>>,
    max_body_bytes: Option<Spanned<String>>,
    client_timeout: Option<Spanned<String>>,
    trusted_proxies: Option<Spanned<Vec<Spanned<String>>>>,
    access_log: Option<Spanned<String>>,
    work_stealing: Option<Spanned<bool>>,
}

/// `balancer_config` / `router_config`: scalars by key.
type PluginTable = BTreeMap<String, Spanned<toml::Value>>;

#[derive(Deserialize)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawAdmin {
    socket: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawPlugins {
    dir: Option<Spanned<String>>,
    cache_dir: Option<Spanned<String>>,
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
struct RawLimits {
    call_timeout: Option<Spanned<String>>,
    init_timeout: Option<Spanned<String>>,
    memory: Option<Spanned<String>>,
    quarantine_after: Option<Spanned<i64>>,
    quarantine_window: Option<Spanned<String>>,
    quarantine_backoff: Option<Spanned<String>>,
    quarantine_max: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawPool {
    name: Spanned<String>,
    balancer: Spanned<String>,
    balancer_config: Option<Spanned<PluginTable>>,
    #[serde(default)]
    backends: Vec<Spanned<RawBackend>>,
    connect_timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    on_plugin_failure: Option<Spanned<String>>,
    limits: Option<RawLimits>,
    health_check: Option<Spanned<RawHealthCheck>>,
    outlier_detection: Option<Spanned<RawOutlier>>,
    read_timeout: Option<Spanned<String>>,
    write_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    retry_on: Option<Spanned<Vec<Spanned<i64>>>>,
    retry_budget_percent: Option<Spanned<i64>>,
    tls: Option<Spanned<bool>>,
    sni: Option<Spanned<String>>,
    tls_verify: Option<Spanned<bool>>,
    ca_file: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawBackend {
    addr: Spanned<String>,
    weight: Option<Spanned<i64>>,
    #[serde(default)]
    backup: bool,
}

#[derive(Deserialize)]
struct RawOutlier {
    consecutive_failures: Option<Spanned<i64>>,
    base_ejection: Option<Spanned<String>>,
    max_ejection: Option<Spanned<String>>,
    max_ejected_percent: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
struct RawHealthCheck {
    kind: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    rise: Option<Spanned<i64>>,
    fall: Option<Spanned<i64>>,
    expect_status: Option<Spanned<String>>,
}

#[derive(Deserialize)]
struct RawRoute {
    host: Option<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
    pool: Spanned<String>,
    router: Option<Spanned<String>>,
    router_config: Option<Spanned<PluginTable>>,
    allow: Option<Spanned<Vec<Spanned<String>>>>,
    deny: Option<Spanned<Vec<Spanned<String>>>>,
    rate_limit: Option<Spanned<edge::RawRateLimit>>,
}

/// Keys allowed in each table, for the unknown-key hint.
fn allowed_keys(parent: &str) -> &'static str {
    match parent {
        "" => "proxy, plugins, admin, metrics, pools, routes",
        "metrics" => "listen",
        "proxy" => {
            "listen, threads, router, router_config, tls, redirect_to_https, grace_period, max_header_bytes, max_headers, max_body_bytes, client_timeout, trusted_proxies, access_log, work_stealing"
        }
        "proxy.tls" => "listen, certificates, http2",
        "proxy.tls.certificates" => "cert, key",
        "routes.rate_limit" => "per_second, burst",
        "plugins" => "dir, cache_dir, limits",
        "admin" => "socket",
        "plugins.limits" | "pools.limits" => {
            "call_timeout, init_timeout, memory, quarantine_after, quarantine_window, quarantine_backoff, quarantine_max"
        }
        "pools" => {
            "name, balancer, balancer_config, backends, connect_timeout, retries, on_plugin_failure, limits, health_check, outlier_detection, read_timeout, write_timeout, idle_timeout, retry_on, retry_budget_percent, tls, sni, tls_verify, ca_file, protocol"
        }
        "pools.backends" => "addr, weight, backup",
        "pools.health_check" => "kind, path, interval, timeout, rise, fall, expect_status",
        "pools.outlier_detection" => {
            "consecutive_failures, base_ejection, max_ejection, max_ejected_percent"
        }
        "routes" => "host, path_prefix, pool, router, router_config, allow, deny, rate_limit",
        _ => "see the configuration reference in the README",
    }
}

// ---------------------------------------------------------------- loading

/// Where plugin names can be found, for checking that every pool's balancer exists.
pub trait PluginCatalog {
    /// True when a plugin of this name is bundled or present in `dir`.
    fn has_plugin(&self, name: &str, dir: Option<&Path>) -> bool;
    /// Names available, for the error message.
    fn names(&self, dir: Option<&Path>) -> Vec<String>;
}

/// A catalog of fixed plugin names that ignores the plugins directory; for tests and
/// fuzzing, where nothing should be read from disk.
#[derive(Clone, Copy, Debug)]
pub struct FixedCatalog(pub &'static [&'static str]);

/// The names of the bundled balancers.
pub const BUNDLED_NAMES: FixedCatalog = FixedCatalog(&["latency", "least-conn", "round-robin"]);

impl PluginCatalog for FixedCatalog {
    fn has_plugin(&self, name: &str, _dir: Option<&Path>) -> bool {
        self.0.contains(&name)
    }

    fn names(&self, _dir: Option<&Path>) -> Vec<String> {
        let mut names: Vec<String> = self.0.iter().map(|n| n.to_string()).collect();
        names.sort();
        names
    }
}

/// Reads and validates `path`, reporting every problem found.
pub fn load(path: &Path, catalog: &dyn PluginCatalog) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        ConfigErrors(vec![ConfigError::Read {
            file: path.to_owned(),
            source,
        }])
    })?;
    parse(&text, path, catalog)
}

/// Parses and validates `text` as if read from `file`.
pub fn parse(text: &str, file: &Path, catalog: &dyn PluginCatalog) -> Result<Config, ConfigErrors> {
    let mut v = Validator {
        text,
        file,
        errors: Vec::new(),
    };
    let doc = DeTable::parse(text).map_err(|e| ConfigErrors(vec![v.syntax(&e)]))?;
    let mut unknown = Vec::new();
    let raw: Result<RawConfig, _> =
        serde_ignored::deserialize(toml::Deserializer::from(doc.clone()), |path| {
            unknown.push(path_segments(&path))
        });
    let raw = raw.map_err(|e| ConfigErrors(vec![v.syntax(&e)]))?;
    for segments in unknown {
        let span = locate(&doc, &segments);
        let parent: Vec<&str> = segments[..segments.len() - 1]
            .iter()
            .filter(|s| s.parse::<usize>().is_err())
            .map(String::as_str)
            .collect();
        v.errors.push(ConfigError::UnknownKey {
            at: v.at(span),
            key: display_path(&segments),
            hint: format!("expected one of: {}", allowed_keys(&parent.join("."))),
        });
    }
    let config = v.validate(raw, catalog);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(v.errors))
    }
}

fn path_segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(path: &serde_ignored::Path<'_>, out: &mut Vec<String>) {
        use serde_ignored::Path as P;
        match path {
            P::Root => {}
            P::Seq { parent, index } => {
                walk(parent, out);
                out.push(index.to_string());
            }
            P::Map { parent, key } => {
                walk(parent, out);
                out.push(key.clone());
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                walk(parent, out)
            }
        }
    }
    walk(path, &mut out);
    // `Spanned<T>` shows up as a map with a `value` key around T.
    out.retain(|s| s != "$__serde_spanned_private_value");
    out
}

fn display_path(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        if s.parse::<usize>().is_ok() {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    out
}

/// Span of the key at `segments` in the parsed document.
fn locate(doc: &Spanned<DeTable<'_>>, segments: &[String]) -> Range<usize> {
    let mut span = doc.span();
    let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
    let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
    for seg in segments {
        let next = if let Some(t) = table {
            t.iter()
                .find(|(k, _)| k.get_ref().as_ref() == seg.as_str())
                .map(|(k, val)| {
                    span = k.span();
                    val
                })
        } else if let (Some(items), Ok(i)) = (array, seg.parse::<usize>()) {
            items.get(i).inspect(|val| span = val.span())
        } else {
            None
        };
        let Some(value) = next else { break };
        (table, array) = match value.get_ref() {
            DeValue::Table(t) => (Some(t), None),
            DeValue::Array(a) => (None, Some(&a[..])),
            _ => (None, None),
        };
    }
    span
}

struct Validator<'a> {
    text: &'a str,
    file: &'a Path,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn at(&self, span: Range<usize>) -> Location {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location {
            file: self.file.to_owned(),
            line,
            column,
        }
    }

    fn syntax(&self, e: &toml::de::Error) -> ConfigError {
        ConfigError::Syntax {
            at: self.at(e.span().unwrap_or(0..0)),
            message: e.message().trim().to_owned(),
        }
    }

    fn invalid<T>(
        &mut self,
        value: &Spanned<T>,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) {
        self.errors.push(ConfigError::Invalid {
            at: self.at(value.span()),
            field: field.into(),
            problem: problem.into(),
        });
    }

    fn duration(
        &mut self,
        raw: Option<&Spanned<String>>,
        field: &str,
        default: Duration,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        match humantime::parse_duration(raw.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.invalid(raw, field, format!("{:?} is not a duration ({e}); write a number with a unit, like \"500ms\" or \"2s\"", raw.get_ref()));
                default
            }
        }
    }

    fn validate(&mut self, raw: RawConfig, catalog: &dyn PluginCatalog) -> Config {
        let plugins = self.plugins(raw.plugins);
        let proxy = self.proxy(raw.proxy, &plugins, catalog);
        let base = self.file.parent().unwrap_or(Path::new("."));
        let metrics = raw.metrics.and_then(|m| m.listen).and_then(|l| {
            match l.get_ref().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.invalid(
                        &l,
                        "metrics.listen",
                        format!(
                            "{:?} is not an IP address with a port, like \"127.0.0.1:9100\"",
                            l.get_ref()
                        ),
                    );
                    None
                }
            }
        });
        let admin = AdminSettings {
            socket: raw
                .admin
                .and_then(|a| a.socket)
                .map_or_else(default_admin_socket, |s| base.join(s.get_ref())),
        };
        let mut pools = Vec::new();
        let mut names = HashSet::new();
        for (i, pool) in raw.pools.iter().enumerate() {
            if let Some(p) = self.pool(i, pool, &plugins, catalog) {
                if !names.insert(p.name.clone()) {
                    self.invalid(
                        &pool.get_ref().name,
                        format!("pools[{i}].name"),
                        format!(
                            "a pool named {:?} is already defined; pool names must be unique",
                            p.name
                        ),
                    );
                }
                pools.push(p);
            }
        }
        if raw.pools.is_empty() {
            self.errors.push(ConfigError::Invalid {
                at: self.at(0..0),
                field: "pools".into(),
                problem:
                    "no pool is defined; add a [[pools]] table with a name, a balancer and backends"
                        .into(),
            });
        }
        let routes = raw
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.route(i, r, &names, &plugins, catalog))
            .collect::<Vec<_>>();
        if routes.is_empty() && raw.routes.is_empty() && pools.len() > 1 {
            self.errors.push(ConfigError::Invalid {
                at: self.at(0..0),
                field: "routes".into(),
                problem: format!("{} pools but no [[routes]]; add routes that say which requests go to which pool", pools.len()),
            });
        }
        Config {
            source: self.file.to_owned(),
            proxy,
            plugins,
            admin,
            metrics,
            pools,
            routes,
        }
    }

    fn proxy(
        &mut self,
        raw: Option<Spanned<RawProxy>>,
        plugins: &PluginSettings,
        catalog: &dyn PluginCatalog,
    ) -> ProxySettings {
        let mut settings = ProxySettings {
            listen: Vec::new(),
            threads: 1,
            router: None,
            tls: Vec::new(),
            redirect_to_https: false,
            grace_period: DEFAULT_GRACE_PERIOD,
            limits: RequestLimits::default(),
            trusted_proxies: Vec::new(),
            access_log: AccessLog::Text,
            work_stealing: true,
        };
        let Some(raw) = raw else {
            self.errors.push(ConfigError::Invalid {
                at: self.at(0..0),
                field: "proxy.listen".into(),
                problem: "missing; add a [proxy] table with listen = [\"127.0.0.1:8080\"]".into(),
            });
            return settings;
        };
        let raw = raw.into_inner();
        settings.router = self.router_use(
            raw.router.as_ref(),
            raw.router_config.as_ref(),
            "proxy",
            plugins,
            catalog,
        );
        self.proxy_edge(&raw, &mut settings);
        match raw.listen {
            Some(list) if !list.get_ref().is_empty() || !settings.tls.is_empty() => {
                for (i, addr) in list.get_ref().iter().enumerate() {
                    match addr.get_ref().parse::<SocketAddr>() {
                        Ok(a) => settings.listen.push(a),
                        Err(_) => self.invalid(addr, format!("proxy.listen[{i}]"), format!("{:?} is not an IP address with a port, like \"127.0.0.1:8080\" or \"[::]:80\"", addr.get_ref())),
                    }
                }
            }
            Some(list) => self.invalid(
                &list,
                "proxy.listen",
                "is empty; give at least one address, like [\"127.0.0.1:8080\"]",
            ),
            None if !settings.tls.is_empty() => {}
            None => self.errors.push(ConfigError::Invalid {
                at: self.at(0..0),
                field: "proxy.listen".into(),
                problem: "missing; add listen = [\"127.0.0.1:8080\"] to [proxy]".into(),
            }),
        }
        settings.work_stealing = raw.work_stealing.as_ref().is_none_or(|w| *w.get_ref());
        if let Some(threads) = raw.threads {
            match usize::try_from(*threads.get_ref()) {
                Ok(n) if (1..=1024).contains(&n) => settings.threads = n,
                _ => self.invalid(&threads, "proxy.threads", "must be between 1 and 1024"),
            }
        } else {
            settings.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        }
        settings
    }

    fn plugins(&mut self, raw: Option<RawPlugins>) -> PluginSettings {
        let Some(raw) = raw else {
            return PluginSettings {
                dir: None,
                cache_dir: default_cache_dir(),
                limits: PluginLimits::default(),
            };
        };
        let base = self.file.parent().unwrap_or(Path::new("."));
        let dir = raw.dir.map(|d| base.join(d.get_ref()));
        // An empty string turns the cache off.
        let cache_dir = match raw.cache_dir {
            Some(d) if d.get_ref().is_empty() => None,
            Some(d) => Some(base.join(d.get_ref())),
            None => default_cache_dir(),
        };
        let mut limits = PluginLimits::default();
        if let Some(l) = &raw.limits {
            limits = self.limits(l, "plugins.limits", &limits);
        }
        PluginSettings {
            dir,
            cache_dir,
            limits,
        }
    }

    /// `base` with the keys of `raw` applied.
    fn limits(&mut self, raw: &RawLimits, field: &str, base: &PluginLimits) -> PluginLimits {
        let mut limits = base.clone();
        limits.call_timeout = self.duration(
            raw.call_timeout.as_ref(),
            &format!("{field}.call_timeout"),
            base.call_timeout,
        );
        limits.init_timeout = self.duration(
            raw.init_timeout.as_ref(),
            &format!("{field}.init_timeout"),
            base.init_timeout,
        );
        limits.quarantine_window = self.duration(
            raw.quarantine_window.as_ref(),
            &format!("{field}.quarantine_window"),
            base.quarantine_window,
        );
        limits.quarantine_backoff = self.duration(
            raw.quarantine_backoff.as_ref(),
            &format!("{field}.quarantine_backoff"),
            base.quarantine_backoff,
        );
        limits.quarantine_max = self.duration(
            raw.quarantine_max.as_ref(),
            &format!("{field}.quarantine_max"),
            base.quarantine_max,
        );
        if let Some(n) = &raw.quarantine_after {
            match u32::try_from(*n.get_ref()) {
                Ok(n) => limits.quarantine_after = n,
                Err(_) => self.invalid(
                    n,
                    format!("{field}.quarantine_after"),
                    "must be a whole number, 0 to never quarantine",
                ),
            }
        }
        if let Some(m) = &raw.memory {
            match parse_bytes(m.get_ref()) {
                Some(b) if b >= 1 << 16 => limits.memory_bytes = b,
                _ => self.invalid(
                    m,
                    format!("{field}.memory"),
                    format!(
                        "{:?} is not a size of at least 64KiB; write it like \"16MiB\"",
                        m.get_ref()
                    ),
                ),
            }
        }
        limits
    }

    fn pool(
        &mut self,
        i: usize,
        raw: &Spanned<RawPool>,
        plugins: &PluginSettings,
        catalog: &dyn PluginCatalog,
    ) -> Option<PoolConfig> {
        let raw = raw.get_ref();
        let name = raw.name.get_ref().trim().to_owned();
        if name.is_empty() {
            self.invalid(&raw.name, format!("pools[{i}].name"), "must not be empty");
        }
        let balancer = raw.balancer.get_ref().clone();
        if !catalog.has_plugin(&balancer, plugins.dir.as_deref()) {
            let dir = plugins.dir.as_ref().map_or_else(
                || "no plugins directory is configured".to_owned(),
                |d| {
                    format!(
                        "nor a file {}",
                        d.join(format!("{balancer}.wasm")).display()
                    )
                },
            );
            self.invalid(
                &raw.balancer,
                format!("pools[{i}].balancer"),
                format!(
                    "no plugin named {balancer:?}: it is not bundled, {dir}; available: {}",
                    catalog.names(plugins.dir.as_deref()).join(", ")
                ),
            );
        }
        let balancer_config = self.plugin_config(
            raw.balancer_config.as_ref(),
            &format!("pools[{i}].balancer_config"),
        );
        let mut backends = Vec::new();
        for (j, b) in raw.backends.iter().enumerate() {
            let b = b.get_ref();
            let field = format!("pools[{i}].backends[{j}]");
            let addr = resolve(b.addr.get_ref());
            let weight = match b.weight.as_ref() {
                None => Some(1),
                Some(w) => match u32::try_from(*w.get_ref()) {
                    Ok(w) if (1..=1_000_000).contains(&w) => Some(w),
                    _ => {
                        self.invalid(
                            w,
                            format!("{field}.weight"),
                            "must be a whole number from 1 to 1000000",
                        );
                        None
                    }
                },
            };
            match (addr, weight) {
                (Ok(addr), Some(weight)) => backends.push(BackendConfig {
                    addr,
                    weight,
                    backup: b.backup,
                }),
                (Err(problem), _) => self.invalid(&b.addr, format!("{field}.addr"), problem),
                _ => {}
            }
        }
        if raw.backends.is_empty() {
            self.invalid(
                &raw.name,
                format!("pools[{i}].backends"),
                "the pool has no backends; add backends = [{ addr = \"127.0.0.1:3000\" }]",
            );
        }
        let connect_timeout = self.duration(
            raw.connect_timeout.as_ref(),
            &format!("pools[{i}].connect_timeout"),
            DEFAULT_CONNECT_TIMEOUT,
        );
        let retries = match raw.retries.as_ref() {
            None => DEFAULT_RETRIES,
            Some(r) => u32::try_from(*r.get_ref())
                .ok()
                .filter(|&n| n <= 16)
                .unwrap_or_else(|| {
                    self.invalid(
                        r,
                        format!("pools[{i}].retries"),
                        "must be a whole number from 0 to 16",
                    );
                    DEFAULT_RETRIES
                }),
        };
        let on_plugin_failure = match raw
            .on_plugin_failure
            .as_ref()
            .map(|v| (v, v.get_ref().as_str()))
        {
            None | Some((_, "fallback")) => OnPluginFailure::Fallback,
            Some((_, "reject")) => OnPluginFailure::Reject,
            Some((v, other)) => {
                self.invalid(v, format!("pools[{i}].on_plugin_failure"), format!("{other:?}: expected \"fallback\" (serve with round-robin) or \"reject\" (answer 503)"));
                OnPluginFailure::Fallback
            }
        };
        let limits = match &raw.limits {
            Some(l) => self.limits(l, &format!("pools[{i}].limits"), &plugins.limits),
            None => plugins.limits.clone(),
        };
        let health_check = raw
            .health_check
            .as_ref()
            .and_then(|h| self.health_check(h, &format!("pools[{i}].health_check")));
        let outlier_detection = raw
            .outlier_detection
            .as_ref()
            .map(|o| self.outlier(o, &format!("pools[{i}].outlier_detection")));
        let upstream = self.pool_upstream(i, raw);
        Some(PoolConfig {
            timeouts: upstream.timeouts,
            retry_on: upstream.retry_on,
            retry_budget_percent: upstream.retry_budget_percent,
            tls: upstream.tls,
            protocol: upstream.protocol,
            outlier_detection,
            health_check,
            name,
            balancer,
            balancer_at: self.at(raw.balancer.span()),
            balancer_config,
            backends,
            connect_timeout,
            retries,
            on_plugin_failure,
            limits,
        })
    }

    fn outlier(&mut self, raw: &Spanned<RawOutlier>, field: &str) -> OutlierDetection {
        let o = raw.get_ref();
        let mut number = |v: Option<&Spanned<i64>>,
                          key: &str,
                          range: std::ops::RangeInclusive<u32>,
                          default: u32| match v {
            None => default,
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(n) if range.contains(&n) => n,
                _ => {
                    self.invalid(
                        n,
                        format!("{field}.{key}"),
                        format!(
                            "must be a whole number from {} to {}",
                            range.start(),
                            range.end()
                        ),
                    );
                    default
                }
            },
        };
        let consecutive_failures = number(
            o.consecutive_failures.as_ref(),
            "consecutive_failures",
            1..=1000,
            5,
        );
        let max_ejected_percent = number(
            o.max_ejected_percent.as_ref(),
            "max_ejected_percent",
            0..=100,
            50,
        );
        let base_ejection = self.duration(
            o.base_ejection.as_ref(),
            &format!("{field}.base_ejection"),
            Duration::from_secs(30),
        );
        let max_ejection = self.duration(
            o.max_ejection.as_ref(),
            &format!("{field}.max_ejection"),
            Duration::from_secs(300),
        );
        OutlierDetection {
            consecutive_failures,
            base_ejection,
            max_ejection,
            max_ejected_percent,
        }
    }

    fn health_check(&mut self, raw: &Spanned<RawHealthCheck>, field: &str) -> Option<HealthCheck> {
        let h = raw.get_ref();
        let interval = self.duration(
            h.interval.as_ref(),
            &format!("{field}.interval"),
            Duration::from_secs(2),
        );
        let timeout = self.duration(
            h.timeout.as_ref(),
            &format!("{field}.timeout"),
            Duration::from_secs(1),
        );
        let mut count = |v: Option<&Spanned<i64>>, key: &str, default: u32| match v {
            None => default,
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(n) if (1..=100).contains(&n) => n,
                _ => {
                    self.invalid(
                        n,
                        format!("{field}.{key}"),
                        "must be a whole number from 1 to 100",
                    );
                    default
                }
            },
        };
        let rise = count(h.rise.as_ref(), "rise", 2);
        let fall = count(h.fall.as_ref(), "fall", 3);
        let kind = match h.kind.as_ref().map(|k| (k, k.get_ref().as_str())) {
            None | Some((_, "http")) => {
                let path = h
                    .path
                    .as_ref()
                    .map_or("/".to_owned(), |p| p.get_ref().clone());
                if let Some(p) = h.path.as_ref().filter(|p| !p.get_ref().starts_with('/')) {
                    self.invalid(p, format!("{field}.path"), "must start with \"/\"");
                }
                let expect = match &h.expect_status {
                    None => (200, 399),
                    Some(e) => match parse_status_range(e.get_ref()) {
                        Some(range) => range,
                        None => {
                            self.invalid(e, format!("{field}.expect_status"), format!("{:?}: write a status or an inclusive range, like \"200\" or \"200-399\"", e.get_ref()));
                            (200, 399)
                        }
                    },
                };
                HealthCheckKind::Http { path, expect }
            }
            Some((_, "tcp")) => HealthCheckKind::Tcp,
            Some((k, other)) => {
                self.invalid(
                    k,
                    format!("{field}.kind"),
                    format!("{other:?}: expected \"http\" or \"tcp\""),
                );
                return None;
            }
        };
        if timeout > interval {
            self.invalid(raw, field, "timeout must not be longer than interval");
        }
        Some(HealthCheck {
            kind,
            interval,
            timeout,
            rise,
            fall,
        })
    }

    /// A plugin's configuration table as the strings `init` receives.
    fn plugin_config(
        &mut self,
        table: Option<&Spanned<PluginTable>>,
        field: &str,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, value) in table.map(Spanned::get_ref).into_iter().flatten() {
            let text = match value.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    self.invalid(
                        value,
                        format!("{field}.{key}"),
                        "must be a string, number or boolean",
                    );
                    continue;
                }
            };
            out.push((key.clone(), text));
        }
        out
    }

    /// A `router` key and its `router_config`, checking the plugin file exists.
    fn router_use(
        &mut self,
        name: Option<&Spanned<String>>,
        table: Option<&Spanned<PluginTable>>,
        field: &str,
        plugins: &PluginSettings,
        catalog: &dyn PluginCatalog,
    ) -> Option<RouterUse> {
        let Some(name) = name else {
            if let Some(t) = table {
                self.invalid(
                    t,
                    format!("{field}.router_config"),
                    "is given without a router; add router = \"NAME\" or remove it",
                );
            }
            return None;
        };
        if !catalog.has_plugin(name.get_ref(), plugins.dir.as_deref()) {
            let looked = plugins.dir.as_ref().map_or_else(
                || "no plugins directory is configured; add [plugins] dir".to_owned(),
                |d| {
                    format!(
                        "there is no file {}",
                        d.join(format!("{}.wasm", name.get_ref())).display()
                    )
                },
            );
            self.invalid(
                name,
                format!("{field}.router"),
                format!("no router plugin named {:?}: {looked}", name.get_ref()),
            );
        }
        let config = self.plugin_config(table, &format!("{field}.router_config"));
        Some(RouterUse {
            name: name.get_ref().clone(),
            config,
            at: self.at(name.span()),
        })
    }

    fn route(
        &mut self,
        i: usize,
        raw: &Spanned<RawRoute>,
        pools: &HashSet<String>,
        plugins: &PluginSettings,
        catalog: &dyn PluginCatalog,
    ) -> Option<RouteConfig> {
        let raw = raw.get_ref();
        let pool = raw.pool.get_ref().clone();
        let mut ok = true;
        if !pools.contains(&pool) {
            let mut known: Vec<_> = pools.iter().cloned().collect();
            known.sort();
            self.invalid(
                &raw.pool,
                format!("routes[{i}].pool"),
                format!(
                    "no pool named {pool:?}; defined pools: {}",
                    known.join(", ")
                ),
            );
            ok = false;
        }
        let host = raw.host.as_ref().and_then(|h| {
            let text = h.get_ref().trim().to_ascii_lowercase();
            let pattern = match text.strip_prefix("*.") {
                Some(rest) if !rest.is_empty() && !rest.contains('*') => {
                    HostPattern::Suffix(format!(".{rest}"))
                }
                None if !text.is_empty() && !text.contains('*') && !text.contains('/') => {
                    HostPattern::Exact(text)
                }
                _ => {
                    self.invalid(
                        h,
                        format!("routes[{i}].host"),
                        format!(
                            "{:?} is not a host name or a \"*.example.com\" wildcard",
                            h.get_ref()
                        ),
                    );
                    ok = false;
                    return None;
                }
            };
            Some(pattern)
        });
        let path_prefix = match &raw.path_prefix {
            None => "/".to_owned(),
            Some(p) if p.get_ref().starts_with('/') => p.get_ref().clone(),
            Some(p) => {
                self.invalid(
                    p,
                    format!("routes[{i}].path_prefix"),
                    format!("{:?} must start with \"/\"", p.get_ref()),
                );
                ok = false;
                String::new()
            }
        };
        let router = self.router_use(
            raw.router.as_ref(),
            raw.router_config.as_ref(),
            &format!("routes[{i}]"),
            plugins,
            catalog,
        );
        let access = self.route_access(i, raw);
        ok.then_some(RouteConfig {
            host,
            path_prefix,
            pool,
            router,
            allow: access.allow,
            deny: access.deny,
            rate_limit: access.rate_limit,
        })
    }
}

/// Resolves `host:port`, naming what is wrong when it cannot.
fn resolve(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let hint = "write an address with a port, like \"127.0.0.1:3000\" or \"backend.internal:8080\"";
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("{text:?} has no port; {hint}"));
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{text:?} is not a valid address; {hint}"));
    }
    // The fuzzer must not send arbitrary names to the system's resolver.
    if cfg!(fuzzing) {
        return Err(format!("{text:?} is not resolved while fuzzing"));
    }
    match text.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("{text:?} resolves to no address")),
        Err(e) => Err(format!("{text:?} does not resolve ({e}); {hint}")),
    }
}

/// `"200"` or `"200-399"`.
fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let (low, high): (u16, u16) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
    ((100..=599).contains(&low) && (low..=599).contains(&high)).then_some((low, high))
}

/// `"16MiB"`, `"512KiB"`, `"1GiB"` or a plain number of bytes.
pub(crate) fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests;
