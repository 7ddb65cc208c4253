//! Run-time operations behind the admin socket: inspect, reload plugins and
//! configuration, drain and re-weight backends. Each returns JSON for the reply.
//!
//! Reloads build everything new off the request path — compile, link, `init`, a
//! self-check `select` — and only then swap it in atomically. Requests in flight keep
//! the balancer (and pool) they started with; the old ones are freed when the last
//! such request ends.

use arc_swap::ArcSwap;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, UNIX_EPOCH};

use crate::config::{self, Config, SystemResolver};
use crate::connections::ConnectionCaps;
use crate::plugin::registry::{FsCatalog, sha256_hex};
use crate::plugin::request::{RequestView, placeholder_header};
use crate::plugin::{FailureKind, LoadedPlugin, PluginEngine, PoolBalancer, RouterInstance};
use crate::runtime::{self, Runtime};
use crate::tls::ListenerCertificates;

/// A failed operation: the message goes to the operator as is.
pub type OpResult = Result<Value, String>;

/// Shared state of the running proxy that the admin socket acts on.
pub struct Control {
    runtime: Arc<ArcSwap<Runtime>>,
    config: ArcSwap<Config>,
    engine: PluginEngine,
    /// Each HTTPS listener's certificates, reloaded in place.
    certificates: Vec<(std::net::SocketAddr, Arc<ListenerCertificates>)>,
    /// Client connection caps.
    caps: Arc<ConnectionCaps>,
    /// The logger writes JSON (chosen at start by `access_log = "json"`).
    json_log: bool,
    started: Instant,
    /// One reload at a time; the data path never takes this lock.
    reload_lock: Mutex<()>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

fn unix_seconds(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2026-12-01T23:58:46Z`.
fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Control {
    /// Control over `runtime`, which was built from `config`.
    pub fn new(
        config: Config,
        engine: PluginEngine,
        runtime: Arc<ArcSwap<Runtime>>,
        certificates: Vec<(std::net::SocketAddr, Arc<ListenerCertificates>)>,
        caps: Arc<ConnectionCaps>,
    ) -> Self {
        Control {
            runtime,
            json_log: config.proxy.access_log == config::AccessLog::Json,
            config: ArcSwap::from_pointee(config),
            engine,
            certificates,
            caps,
            started: Instant::now(),
            reload_lock: Mutex::new(()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }

    /// The running pools and routes.
    pub fn runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    /// Client connections: (held, cap, refused at the cap).
    pub fn connections(&self) -> (usize, usize, u64) {
        (self.caps.held(), self.caps.max(), self.caps.refused())
    }

    /// Reloads so far: (succeeded, failed).
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads_ok.load(Ordering::Relaxed),
            self.reloads_failed.load(Ordering::Relaxed),
        )
    }

    fn count(&self, ok: bool) {
        let counter = if ok {
            &self.reloads_ok
        } else {
            &self.reloads_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs one request of the admin protocol.
    pub fn dispatch(&self, request: &Value) -> OpResult {
        let cmd = request
            .get("cmd")
            .and_then(Value::as_str)
            .ok_or("missing \"cmd\"; try {\"cmd\":\"status\"}")?;
        let arg = |key: &str| request.get(key).and_then(Value::as_str);
        let need = |key: &str| arg(key).ok_or_else(|| format!("`{cmd}` needs \"{key}\""));
        match cmd {
            "status" => Ok(self.status()),
            "plugins" => Ok(self.plugins()),
            "backends" => self.backends(arg("pool")),
            "reload" => Ok(self.reload_plugins(arg("plugin"))),
            "drain" => self.set_draining(need("pool")?, need("addr")?, true),
            "undrain" => self.set_draining(need("pool")?, need("addr")?, false),
            "weight" => {
                let weight = request
                    .get("weight")
                    .and_then(|w| {
                        w.as_u64()
                            .or_else(|| w.as_str().and_then(|s| s.parse().ok()))
                    })
                    .filter(|w| (1..=1_000_000).contains(w))
                    .ok_or("`weight` needs \"weight\": a whole number from 1 to 1000000")?;
                self.set_weight(need("pool")?, need("addr")?, weight as u32)
            }
            "config-reload" => self.reload_config(),
            other => Err(format!(
                "unknown command {other:?}; commands: status, plugins, backends [POOL], reload [PLUGIN], drain POOL ADDR, undrain POOL ADDR, weight POOL ADDR N, config-reload"
            )),
        }
    }

    fn status(&self) -> Value {
        let config = self.config.load();
        let runtime = self.runtime.load();
        let (held, max, refused) = self.connections();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "connections": { "open": held, "max": max, "refused": refused },
            "config": config.source.display().to_string(),
            "listeners": config.proxy.listen.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "admin_socket": config.admin.socket.display().to_string(),
            "plugins": self.plugins()["plugins"].clone(),
            "pools": runtime.pools.iter().map(|p| json!({
                "name": p.name,
                "balancer": p.balancer.load().plugin().name,
                "backends": p.backends.len(),
            })).collect::<Vec<_>>(),
            "reloads": { "ok": self.reloads_ok.load(Ordering::Relaxed), "failed": self.reloads_failed.load(Ordering::Relaxed) },
        })
    }

    fn plugins(&self) -> Value {
        let runtime = self.runtime.load();
        let mut by_name: BTreeMap<String, Value> = BTreeMap::new();
        // (plugin, its counters, where it is used), for balancers and routers alike.
        let balancers = runtime.pools.iter().map(|p| {
            let b = p.balancer.load_full();
            (
                Arc::clone(b.plugin()),
                b.stats.snapshot(),
                b.quarantine_state(),
                p.name.clone(),
            )
        });
        let routers = runtime.routers.iter().map(|r| {
            let i = r.instance.load_full();
            (
                Arc::clone(i.plugin()),
                i.stats.snapshot(),
                i.quarantine_state(),
                format!("{} router", r.site),
            )
        });
        for (plugin, (calls, failures), (quarantined, last_error), site) in balancers.chain(routers)
        {
            let entry = by_name.entry(plugin.name.clone()).or_insert_with(|| {
                json!({
                    "name": plugin.name,
                    "world": plugin.world().as_str(),
                    "abi": plugin.abi().as_str(),
                    "source": plugin.source.to_string(),
                    "sha256": plugin.sha256,
                    "loaded_at": rfc3339(plugin.loaded_at),
                    "loaded_at_unix": unix_seconds(plugin.loaded_at),
                    "cache": plugin.cache.as_str(),
                    "pools": [],
                    "calls": 0,
                    "failures": FailureKind::ALL.iter().map(|k| (k.as_str().to_owned(), json!(0))).collect::<serde_json::Map<_, _>>(),
                    "quarantined": false,
                })
            });
            if let Some(sites) = entry["pools"].as_array_mut() {
                sites.push(json!(site));
            }
            if quarantined {
                entry["quarantined"] = json!(true);
            }
            if let Some(e) = last_error {
                entry["last_error"] = json!(e);
            }
            entry["calls"] = json!(entry["calls"].as_u64().unwrap_or(0) + calls);
            for (kind, n) in FailureKind::ALL.iter().zip(failures) {
                let sum = entry["failures"][kind.as_str()].as_u64().unwrap_or(0) + n;
                entry["failures"][kind.as_str()] = json!(sum);
            }
        }
        json!({ "plugins": by_name.into_values().collect::<Vec<_>>() })
    }

    fn backends(&self, only: Option<&str>) -> OpResult {
        let runtime = self.runtime.load();
        if let Some(name) = only {
            runtime
                .pools
                .iter()
                .find(|p| p.name == name)
                .ok_or_else(|| self.no_pool(&runtime, name))?;
        }
        let rows: Vec<Value> = runtime
            .pools
            .iter()
            .filter(|p| only.is_none_or(|n| p.name == n))
            .flat_map(|p| {
                p.backends.iter().map(move |b| {
                    json!({
                        "pool": p.name,
                        "addr": b.addr.to_string(),
                        "weight": b.weight(),
                        "state": b.state(),
                        "backup": b.backup,
                        "in_flight": b.in_flight(),
                        "latency_us": b.latency_us(),
                        "served": b.served(),
                    })
                })
            })
            .collect();
        Ok(json!({ "backends": rows }))
    }

    fn no_pool(&self, runtime: &Runtime, name: &str) -> String {
        let names: Vec<&str> = runtime.pools.iter().map(|p| p.name.as_str()).collect();
        format!("no pool named {name:?}; pools: {}", names.join(", "))
    }

    fn with_backend(
        &self,
        pool: &str,
        addr: &str,
        f: impl FnOnce(&crate::pool::Backend),
    ) -> OpResult {
        let runtime = self.runtime.load();
        let p = runtime
            .pools
            .iter()
            .find(|p| p.name == pool)
            .ok_or_else(|| self.no_pool(&runtime, pool))?;
        let b = p.backend(addr).ok_or_else(|| {
            let addrs: Vec<String> = p.backends.iter().map(|b| b.addr.to_string()).collect();
            format!(
                "pool {pool:?} has no backend {addr:?}; its backends: {}",
                addrs.join(", ")
            )
        })?;
        f(b);
        Ok(json!({ "pool": pool, "addr": addr, "weight": b.weight(), "state": b.state() }))
    }

    fn set_draining(&self, pool: &str, addr: &str, draining: bool) -> OpResult {
        let reply = self.with_backend(pool, addr, |b| b.set_draining(draining))?;
        tracing::info!(pool, addr, draining, "backend drain state changed");
        Ok(reply)
    }

    fn set_weight(&self, pool: &str, addr: &str, weight: u32) -> OpResult {
        let reply = self.with_backend(pool, addr, |b| b.set_weight(weight))?;
        tracing::info!(pool, addr, weight, "backend weight changed");
        Ok(reply)
    }

    /// Reloads plugin `only`, or every plugin a pool uses, from the plugins directory
    /// (or the bundled copy). Unchanged code is left alone.
    pub fn reload_plugins(&self, only: Option<&str>) -> Value {
        let _one_at_a_time = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let config = self.config.load();
        let runtime = self.runtime.load();
        let uses = plugin_uses(&runtime);
        let mut names: Vec<&str> = uses.iter().map(|u| u.plugin.name.as_str()).collect();
        names.sort();
        names.dedup();
        let (mut changed, mut unchanged, mut rejected) = (Vec::new(), Vec::new(), Vec::new());
        if let Some(name) = only.filter(|n| !names.contains(n)) {
            rejected.push(json!({ "name": name, "reason": format!("no pool or route uses a plugin named {name:?}; plugins in use: {}", names.join(", ")) }));
        }
        let registry = match runtime::registry(&config, &self.engine) {
            Ok(r) => r,
            Err(e) => {
                return json!({ "changed": [], "unchanged": [], "rejected": [{ "name": "*", "reason": e.to_string() }] });
            }
        };
        for name in names.iter().filter(|n| only.is_none_or(|o| o == **n)) {
            let users: Vec<&PluginUse<'_>> =
                uses.iter().filter(|u| u.plugin.name == *name).collect();
            let Some(current) = users.first().map(|u| Arc::clone(&u.plugin)) else {
                continue;
            };
            let file = registry.file_for(name).map(|p| p.display().to_string());
            let reject = |reason: String| json!({ "name": name, "file": file, "reason": reason });
            let (source, bytes) = match registry.read(name) {
                Ok(found) => found,
                Err(e) => {
                    rejected.push(reject(e.to_string()));
                    continue;
                }
            };
            let sha256 = sha256_hex(&bytes);
            if current.sha256 == sha256 && current.source == source {
                unchanged.push(json!(name));
                continue;
            }
            let plugin = match registry.load_bytes(name, source, &bytes, current.world()) {
                Ok(p) => p,
                Err(e) => {
                    rejected.push(reject(e.to_string()));
                    continue;
                }
            };
            // Every user's new instance must init and answer before any is swapped.
            let fresh: Result<Vec<Box<dyn FnOnce() + '_>>, String> = users
                .iter()
                .map(|u| {
                    (u.prepare)(&plugin, &config).map_err(|reason| format!("{}: {reason}", u.site))
                })
                .collect();
            match fresh {
                Ok(swaps) => {
                    swaps.into_iter().for_each(|swap| swap());
                    let sites: Vec<String> = users.iter().map(|u| u.site.clone()).collect();
                    tracing::info!(plugin = %name, sha256 = &sha256[..16], users = %sites.join(", "), "plugin reloaded");
                    changed.push(json!({ "name": name, "sha256": sha256, "pools": sites }));
                }
                Err(reason) => rejected.push(reject(reason)),
            }
        }
        for r in &rejected {
            tracing::warn!(plugin = %r["name"], reason = %r["reason"], "plugin reload rejected; the previous version stays");
        }
        self.count(rejected.is_empty());
        json!({ "changed": changed, "unchanged": unchanged, "rejected": rejected })
    }

    /// Re-reads the configuration file and applies what can change while running:
    /// pools, routes, plugins, access rules, request limits, connection caps and the
    /// certificates of the HTTPS listeners. What needs a restart (listeners, threads,
    /// header timeouts…) is not applied, and the reply names each such field under
    /// `restart_needed`. An invalid file is rejected whole; the running configuration
    /// stays.
    pub fn reload_config(&self) -> OpResult {
        let _one_at_a_time = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.config.load_full();
        let result = (|| {
            let new = config::load(&old.source, &FsCatalog, &SystemResolver)
                .map_err(|e| e.to_string())?;
            let restart_needed = restart_only_changes(&old, &new, self.json_log);
            let new = keep_restart_only(&old, new, self.json_log);
            let runtime = runtime::build_runtime(&new, &self.engine, Some(&self.runtime.load()))
                .map_err(|e| e.to_string())?;
            // Load every certificate before anything is swapped: all or nothing.
            for listener in &new.proxy.tls {
                crate::tls::ListenerCertificates::load(listener)?;
            }
            for listener in &new.proxy.tls {
                if let Some((_, store)) = self
                    .certificates
                    .iter()
                    .find(|(a, _)| *a == listener.listen)
                {
                    store.reload(listener)?;
                }
            }
            let connections = new.proxy.connections;
            if connections != old.proxy.connections {
                let max = connections.max.unwrap_or_else(|| self.caps.max());
                self.caps.set_limits(max, connections.per_listener);
            }
            for w in &new.warnings {
                tracing::warn!("{w}");
            }
            let summary = json!({
                "pools": runtime.pools.len(),
                "routes": new.routes.len(),
                "restart_needed": restart_needed,
                "warnings": new.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            });
            self.runtime.store(Arc::new(runtime));
            self.config.store(Arc::new(new));
            Ok(summary)
        })();
        match &result {
            Ok(summary) => {
                let pending = summary["restart_needed"].as_array().map_or(0, Vec::len);
                if pending > 0 {
                    tracing::warn!(file = %old.source.display(), restart_needed = %summary["restart_needed"], "configuration reloaded, except what needs a restart");
                } else {
                    tracing::info!(file = %old.source.display(), "configuration reloaded");
                }
            }
            Err(e) => {
                tracing::warn!(file = %old.source.display(), error = %e, "configuration reload rejected; the running configuration stays")
            }
        }
        self.count(result.is_ok());
        result
    }
}

/// The settings read only at start that differ between `old` and `new`, as
/// "restart needed: FIELD changed" lines.
fn restart_only_changes(old: &Config, new: &Config, json_log: bool) -> Vec<String> {
    let (o, n) = (&old.proxy, &new.proxy);
    let tls = |c: &Config| {
        c.proxy
            .tls
            .iter()
            .map(|t| (t.listen, t.http2))
            .collect::<Vec<_>>()
    };
    let log_format = log_format_changes(new, json_log);
    [
        ("proxy.listen", o.listen != n.listen),
        ("proxy.tls (listeners)", tls(old) != tls(new)),
        ("proxy.threads", o.threads != n.threads),
        ("proxy.work_stealing", o.work_stealing != n.work_stealing),
        ("proxy.grace_period", o.grace_period != n.grace_period),
        (
            "proxy.client_header_timeout",
            o.limits.client_header_timeout != n.limits.client_header_timeout,
        ),
        (
            "proxy.keepalive_timeout",
            o.limits.keepalive_timeout != n.limits.keepalive_timeout,
        ),
        (
            "proxy.max_header_bytes",
            o.limits.max_header_bytes != n.limits.max_header_bytes,
        ),
        ("proxy.access_log (text or json)", log_format),
        ("metrics.listen", old.metrics != new.metrics),
        ("admin.socket", old.admin != new.admin),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(field, _)| format!("restart needed: {field} changed"))
    .collect()
}

/// Text and JSON are the logger's format, chosen at start; on and off apply live.
fn log_format_changes(new: &Config, json_log: bool) -> bool {
    match new.proxy.access_log {
        config::AccessLog::Off => false,
        config::AccessLog::Text => json_log,
        config::AccessLog::Json => !json_log,
    }
}

/// `new` with the settings read only at start put back as they run.
fn keep_restart_only(old: &Config, mut new: Config, json_log: bool) -> Config {
    let (o, n) = (&old.proxy, &mut new.proxy);
    n.listen.clone_from(&o.listen);
    if o.tls
        .iter()
        .map(|t| (t.listen, t.http2))
        .ne(n.tls.iter().map(|t| (t.listen, t.http2)))
    {
        n.tls.clone_from(&o.tls);
    }
    n.threads = o.threads;
    n.work_stealing = o.work_stealing;
    n.grace_period = o.grace_period;
    n.limits.client_header_timeout = o.limits.client_header_timeout;
    n.limits.keepalive_timeout = o.limits.keepalive_timeout;
    n.limits.max_header_bytes = o.limits.max_header_bytes;
    if log_format_changes(&new, json_log) {
        new.proxy.access_log = if json_log {
            config::AccessLog::Json
        } else {
            config::AccessLog::Text
        };
    }
    new.metrics = old.metrics;
    new.admin = old.admin.clone();
    new
}

/// Makes a user's new instance of a plugin and returns the swap that puts it in place.
type Prepare<'a> =
    Box<dyn Fn(&Arc<LoadedPlugin>, &Config) -> Result<Box<dyn FnOnce() + 'a>, String> + 'a>;

/// One place a plugin is used: a pool's balancer or a router slot.
struct PluginUse<'a> {
    plugin: Arc<LoadedPlugin>,
    /// `pool "web"`, `proxy router`, `routes[2] router`.
    site: String,
    prepare: Prepare<'a>,
}

fn plugin_uses(runtime: &Runtime) -> Vec<PluginUse<'_>> {
    let mut uses = Vec::new();
    for pool in &runtime.pools {
        uses.push(PluginUse {
            plugin: Arc::clone(pool.balancer.load().plugin()),
            site: pool.name.clone(),
            prepare: Box::new(move |plugin, config| {
                let pool_config = config
                    .pools
                    .iter()
                    .find(|c| c.name == pool.name)
                    .ok_or("the pool is no longer configured")?;
                let balancer = PoolBalancer::new(
                    Arc::clone(plugin),
                    pool_config.balancer_config.clone(),
                    pool_config.limits.clone(),
                )
                .map_err(|e| e.to_string())?;
                self_check(&balancer, pool.backends.len())?;
                let pool = Arc::clone(pool);
                Ok(Box::new(move || pool.balancer.store(Arc::new(balancer)))
                    as Box<dyn FnOnce() + '_>)
            }),
        });
    }
    for slot in &runtime.routers {
        uses.push(PluginUse {
            plugin: Arc::clone(slot.instance.load().plugin()),
            site: format!("{} router", slot.site),
            prepare: Box::new(move |plugin, config| {
                let router = RouterInstance::new(
                    Arc::clone(plugin),
                    slot.config.clone(),
                    config.plugins.limits.clone(),
                )
                .map_err(|e| e.to_string())?;
                router
                    .route(&mut placeholder_header(), &mut RequestView::placeholder())
                    .map_err(|e| format!("self-check `route` failed: {e}"))?;
                Ok(Box::new(move || slot.instance.store(Arc::new(router)))
                    as Box<dyn FnOnce() + '_>)
            }),
        });
    }
    uses
}

/// One `select` on a fresh instance over `backends` healthy, idle backends: the plugin
/// must answer without failing before it serves traffic.
fn self_check(balancer: &PoolBalancer, backends: usize) -> Result<(), String> {
    let mut table = Vec::new();
    for id in 0..backends as u64 {
        let row = switchyard_plugin_sdk::abi::Row {
            weight: 1,
            healthy: true,
            id,
            ..Default::default()
        };
        row.write(balancer.abi().stride(), &mut table);
    }
    let mut header = placeholder_header();
    balancer
        .select(&mut header, &mut RequestView::placeholder(), &mut table)
        .map(|_| ())
        .map_err(|e| format!("self-check `select` failed: {e}"))
}
