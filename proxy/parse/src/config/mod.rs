//! Configuration: the TOML file, read in two steps.
//!
//! 1. Raw serde structs ([`raw`]) mirror the file, every key optional. Unknown keys are
//!    rejected, but all of them are reported at once (through `serde_ignored`, as cargo
//!    does for manifests) with the key probably meant, instead of stopping at the first
//!    as `deny_unknown_fields` would: an operator fixing a file wants every problem in
//!    one run of `switchyard check`.
//! 2. One validation step turns the raw structs into the typed [`Config`] ([`model`]),
//!    collecting every problem with the file, line and column it comes from. Each
//!    section has its module: [`proxy`](self::proxy) (listeners, client limits),
//!    `plugins`, `pools`, `routes`.
//!
//! Parsing touches nothing outside the text: plugin names are looked up through a
//! [`PluginCatalog`] and host names through a [`Resolver`], so tests and the fuzzer
//! supply fixed ones.

mod caches;
mod diagnostics;
mod discovery;
mod model;
mod plugins;
mod pools;
mod proxy;
mod raw;
mod routes;
mod validate;

pub use caches::{
    CacheConfig, CacheKeyPart, DEFAULT_CACHE_DISK, DEFAULT_CACHE_MEMORY, DEFAULT_KEY,
    DEFAULT_LOCK_TIMEOUT, DEFAULT_MAX_OBJECT, DiskTier, RouteCache,
};
pub use diagnostics::{ConfigError, ConfigErrors, ConfigWarning, Location};
pub use discovery::{DEFAULT_DISCOVERY_INTERVAL, DEFAULT_DNS_TIMEOUT};
pub use model::*;
pub use validate::{MAX_DURATION, MAX_EJECTION};

use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::DeTable;

use diagnostics::{UnknownKey, did_you_mean, display_path, locate, path_segments};
use raw::RawConfig;
use validate::Validator;

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
/// After SIGTERM, time in-flight requests get before the process exits anyway.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// Time to wait for a backend's response header, and between two reads of its body.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a write of the request to a backend may take.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an unused keep-alive connection to a backend is kept.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries in flight always allowed, whatever the budget (Envoy's `min_retry_concurrency`).
pub const MIN_RETRY_CONCURRENCY: u32 = 3;
/// Default retry budget: a fifth of the requests in flight (Envoy's default).
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;

/// Where plugin names can be found, for checking that every plugin named exists.
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
pub const BUNDLED_NAMES: FixedCatalog = FixedCatalog(&[
    "latency",
    "least-conn",
    "maglev",
    "ring-hash",
    "round-robin",
]);

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

/// Turns a backend's host name into addresses.
pub trait Resolver {
    /// The addresses of `host` at `port`, or why there are none.
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String>;
}

/// The system's resolver (`getaddrinfo`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        (host, port)
            .to_socket_addrs()
            .map(Iterator::collect)
            .map_err(|e| e.to_string())
    }
}

/// A resolver that knows no names: only literal addresses pass. For the fuzzer, which
/// must send nothing to the system's resolver.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoResolver;

impl Resolver for NoResolver {
    fn resolve(&self, host: &str, _port: u16) -> Result<Vec<SocketAddr>, String> {
        Err(format!("{host} is not resolved here"))
    }
}

/// Default admin socket, never a fixed name in a world-writable directory:
/// `$XDG_RUNTIME_DIR/switchyard/admin.sock`; as root, `/run/switchyard/admin.sock`;
/// else under the user's own state directory (`$XDG_STATE_HOME` or
/// `~/.local/state`). The proxy creates the directory with mode 0700 and checks that
/// it owns it.
pub fn default_admin_socket() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let non_empty = |var| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = non_empty("XDG_RUNTIME_DIR") {
        return dir.join("switchyard").join("admin.sock");
    }
    let euid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    if euid == 0 {
        return PathBuf::from("/run/switchyard/admin.sock");
    }
    let state = non_empty("XDG_STATE_HOME")
        .or_else(|| non_empty("HOME").map(|h| h.join(".local").join("state")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent-home/.local/state"));
    state.join("switchyard").join("admin.sock")
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

/// Reads and validates `path`, reporting every problem found.
pub fn load(
    path: &Path,
    catalog: &dyn PluginCatalog,
    resolver: &dyn Resolver,
) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        ConfigErrors(vec![ConfigError::Read {
            file: path.to_owned(),
            source,
        }])
    })?;
    parse(&text, path, catalog, resolver)
}

/// Parses and validates `text` as if read from `file`.
pub fn parse(
    text: &str,
    file: &Path,
    catalog: &dyn PluginCatalog,
    resolver: &dyn Resolver,
) -> Result<Config, ConfigErrors> {
    let mut v = Validator {
        text,
        file,
        errors: Vec::new(),
        warnings: Vec::new(),
        unknown: Vec::new(),
        catalog,
        resolver,
    };
    let doc = DeTable::parse(text).map_err(|e| ConfigErrors(vec![v.syntax(&e)]))?;
    let mut unknown = Vec::new();
    let raw: Result<RawConfig, _> =
        serde_ignored::deserialize(toml::Deserializer::from(doc.clone()), |path| {
            unknown.push(path_segments(&path))
        });
    let raw = raw.map_err(|e| ConfigErrors(vec![v.syntax(&e)]))?;
    for segments in unknown {
        let key = UnknownKey {
            span: locate(&doc, &segments),
            segments,
        };
        let allowed = raw::keys_of(&key.parent_kind()).unwrap_or_default();
        let hint = match did_you_mean(key.name(), allowed) {
            Some(meant) => format!("did you mean `{meant}`?"),
            None if allowed.is_empty() => {
                "see the configuration reference in the README".to_owned()
            }
            None => format!("expected one of: {}", allowed.join(", ")),
        };
        v.errors.push(ConfigError::UnknownKey {
            at: v.at(key.span.clone()),
            key: display_path(&key.segments),
            hint,
        });
        v.unknown.push(key);
    }
    let config = v.validate(raw);
    if v.errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(v.errors))
    }
}

impl Validator<'_> {
    fn validate(&mut self, raw: RawConfig) -> Config {
        let plugins = self.plugins(raw.plugins);
        let (proxy, metrics) = self.proxy(raw.proxy, raw.metrics.as_ref(), &plugins);
        let admin = self.admin(raw.admin);
        let dns = self.dns(raw.dns);
        let mut pools = Vec::new();
        let mut names = HashSet::new();
        for (i, pool) in raw.pools.iter().enumerate() {
            if let Some(p) = self.pool(i, pool, &plugins) {
                if !names.insert(p.name.clone())
                    && let Some(n) = &pool.get_ref().name
                {
                    self.invalid(
                        n,
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
            self.invalid_at(
                0..0,
                "pools",
                "no pool is defined; add a [[pools]] table with a name, a balancer and backends",
            );
        }
        let caches = self.caches(&raw.caches);
        let cache_names: HashSet<String> = caches.iter().map(|c| c.name.clone()).collect();
        let routes = raw
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.route(i, r, &names, &cache_names, &plugins))
            .collect::<Vec<_>>();
        if raw.routes.is_empty() && raw.pools.len() > 1 {
            self.invalid_at(0..0, "routes", format!("{} pools but no [[routes]]; add routes that say which requests go to which pool", raw.pools.len()));
        }
        Config {
            source: self.file.to_owned(),
            proxy,
            plugins,
            admin,
            metrics,
            dns,
            pools,
            routes,
            caches,
            warnings: std::mem::take(&mut self.warnings),
        }
    }
}

#[cfg(test)]
mod tests;
