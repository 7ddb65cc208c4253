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
use std::sync::{Arc, Mutex};
use std::time::{Instant, UNIX_EPOCH};

use crate::config::{self, Config};
use crate::connections::ConnectionCaps;
use crate::discovery::sets::DiscoveredSets;
use crate::plugin::{FailureKind, PluginEngine};
use crate::runtime::Runtime;
use crate::telemetry::Telemetry;
use crate::tls::ListenerCertificates;

mod cache;
mod discovery;
mod reload;
mod shadow;
pub mod state;

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
    /// The data path's counters.
    telemetry: Arc<Telemetry>,
    /// The logger writes JSON (chosen at start by `access_log = "json"`).
    json_log: bool,
    started: Instant,
    /// One reload at a time; the data path never takes this lock.
    reload_lock: Mutex<()>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    /// Set by SIGTERM: `/ready` fails from then on.
    draining: std::sync::atomic::AtomicBool,
    /// Set once every listener accepts connections.
    serving: std::sync::atomic::AtomicBool,
    /// The last good answer for each pool whose backends come from DNS.
    discovered: Arc<DiscoveredSets>,
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
        telemetry: Arc<Telemetry>,
        discovered: Arc<DiscoveredSets>,
    ) -> Self {
        Control {
            runtime,
            json_log: config.proxy.access_log == config::AccessLog::Json,
            config: ArcSwap::from_pointee(config),
            engine,
            certificates,
            caps,
            telemetry,
            started: Instant::now(),
            reload_lock: Mutex::new(()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            serving: std::sync::atomic::AtomicBool::new(false),
            discovered,
        }
    }

    /// The running pools and routes.
    pub fn runtime(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.runtime.load()
    }

    /// The configuration running now.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Shutdown has begun: `/ready` fails from now on.
    pub fn begin_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        crate::sd_notify::notify("STOPPING=1");
    }

    /// Every listener accepts connections now.
    pub fn mark_serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    /// `Ok` when the proxy should be sent traffic: it is serving (its plugins are
    /// loaded, or this would not be asked, and every listener accepts), it is not
    /// shutting down, and every pool has a backend up. Otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining: shutting down after SIGTERM".into());
        }
        if !self.serving.load(Ordering::Relaxed) {
            return Err("starting: the listeners do not accept connections yet".into());
        }
        let runtime = self.runtime.load();
        let empty: Vec<&str> = runtime
            .pools
            .iter()
            .filter(|p| !p.backends.iter().any(|b| b.is_up() && !b.is_draining()))
            .map(|p| p.name.as_str())
            .collect();
        if empty.is_empty() {
            Ok(())
        } else {
            Err(format!("no backend up in pool(s): {}", empty.join(", ")))
        }
    }

    /// The data path's counters.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
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
            "shadow" => self.shadow(need("pool")?),
            "promote" => self.promote(need("pool")?),
            "cache" => self.cache(arg("name")),
            "purge" => self.purge(need("name")?, need("key")?),
            other => Err(format!(
                "unknown command {other:?}; commands: status, plugins, backends [POOL], reload [PLUGIN], drain POOL ADDR, undrain POOL ADDR, weight POOL ADDR N, shadow POOL, promote POOL, cache [NAME], purge NAME KEY, config-reload"
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
        let balancers = runtime.pools.iter().flat_map(|p| {
            let live = (p.balancer.load_full(), p.name.clone());
            let shadow = p
                .shadow
                .as_ref()
                .map(|s| (s.balancer.load_full(), format!("{} shadow", p.name)));
            std::iter::once(live).chain(shadow).map(|(b, site)| {
                (
                    Arc::clone(b.plugin()),
                    b.stats.snapshot(),
                    b.quarantine_state(),
                    site,
                )
            })
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
        Ok(self.save_state(reply))
    }

    fn set_weight(&self, pool: &str, addr: &str, weight: u32) -> OpResult {
        let reply = self.with_backend(pool, addr, |b| b.set_weight(weight))?;
        tracing::info!(pool, addr, weight, "backend weight changed");
        Ok(self.save_state(reply))
    }

    /// Writes the run-time state to `[admin] state_file`, if one is set. The change
    /// stands either way; a failure to save is logged and added to `reply`.
    fn save_state(&self, mut reply: Value) -> Value {
        let config = self.config.load();
        let Some(path) = &config.admin.state_file else {
            return reply;
        };
        if let Err(e) = state::save(path, &self.runtime.load()) {
            tracing::warn!(error = %e, "run-time state not saved");
            reply["warning"] = json!(format!("{e}; the change holds until the process ends"));
        }
        reply
    }
}
