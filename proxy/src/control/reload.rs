//! Reloads: plugins from their files, the configuration from its file. Everything new
//! is built off the request path — compile, link, `init`, a self-check — and only then
//! swapped in, atomically; requests in flight keep what they started with.

use serde_json::{Value, json};
use std::sync::{Arc, PoisonError};

use super::{Control, OpResult};
use crate::config::{self, Config, SystemResolver};
use crate::discovery::resolve::fill_from_dns;
use crate::plugin::registry::{FsCatalog, sha256_hex};
use crate::plugin::request::{RequestView, placeholder_header};
use crate::plugin::{LoadedPlugin, PoolBalancer, RouterInstance};
use crate::pool::Pool;
use crate::runtime::{self, Runtime};

impl Control {
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
            let mut new = config::load(&old.source, &FsCatalog, &SystemResolver)
                .map_err(|e| e.to_string())?;
            // Pools found in DNS keep their last answer; a pool new to DNS is asked now.
            fill_from_dns(&mut new, &self.discovered);
            let restart_needed = restart_only_changes(&old, &new, self.json_log);
            let new = keep_restart_only(&old, new, self.json_log);
            let runtime = runtime::build_runtime(
                &new,
                &self.engine,
                &self.telemetry,
                Some(&self.runtime.load()),
            )
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
            if let Some(path) = &new.admin.state_file
                && let Err(e) = super::state::restore(path, &runtime)
            {
                tracing::warn!(error = %e, "saved run-time state not applied");
            }
            self.runtime.store(Arc::new(runtime));
            self.config.store(Arc::new(new));
            // Backends the new file removed leave the state file too.
            let summary = self.save_state(summary);
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
        (
            "proxy.access_log_path",
            o.access_log_path != n.access_log_path,
        ),
        ("metrics.listen", old.metrics != new.metrics),
        ("admin.socket", old.admin.socket != new.admin.socket),
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
    n.access_log_path.clone_from(&o.access_log_path);
    if log_format_changes(&new, json_log) {
        new.proxy.access_log = if json_log {
            config::AccessLog::Json
        } else {
            config::AccessLog::Text
        };
    }
    new.metrics = old.metrics;
    // The socket is bound once; the state file is read and written where it now says.
    new.admin.socket.clone_from(&old.admin.socket);
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
        // A reloaded plugin keeps the settings of the instance it replaces: after a
        // `promote`, the live slot holds the former shadow with the shadow's settings.
        let live = pool.balancer.load_full();
        uses.push(PluginUse {
            plugin: Arc::clone(live.plugin()),
            site: pool.name.clone(),
            prepare: Box::new(move |plugin, _| {
                let balancer = successor(&live, plugin, pool)?;
                let pool = Arc::clone(pool);
                Ok(Box::new(move || pool.balancer.store(Arc::new(balancer)))
                    as Box<dyn FnOnce() + '_>)
            }),
        });
        if let Some(shadow) = &pool.shadow {
            let current = shadow.balancer.load_full();
            uses.push(PluginUse {
                plugin: Arc::clone(current.plugin()),
                site: format!("{} shadow", pool.name),
                prepare: Box::new(move |plugin, _| {
                    let balancer = successor(&current, plugin, pool)?;
                    Ok(Box::new(move || shadow.balancer.store(Arc::new(balancer)))
                        as Box<dyn FnOnce() + '_>)
                }),
            });
        }
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

/// A fresh instance of `plugin` with the settings of `current`, self-checked.
fn successor(
    current: &PoolBalancer,
    plugin: &Arc<LoadedPlugin>,
    pool: &Pool,
) -> Result<PoolBalancer, String> {
    let (config, limits) = current.settings();
    let balancer = PoolBalancer::new(Arc::clone(plugin), config.to_vec(), limits.clone())
        .map_err(|e| e.to_string())?;
    self_check(&balancer, pool)?;
    Ok(balancer)
}

/// One `select` on a fresh instance over the pool's backends, all healthy and idle:
/// the plugin must answer without failing before it serves traffic. Being the
/// instance's first call, it runs under the `init` budget and leaves whatever the
/// plugin builds for this pool (a ring, a table) ready for the first request.
fn self_check(balancer: &PoolBalancer, pool: &Pool) -> Result<(), String> {
    let mut table = pool.check_table(balancer.abi().stride());
    let mut header = placeholder_header();
    balancer
        .select(&mut header, &mut RequestView::placeholder(), &mut table)
        .map(|_| ())
        .map_err(|e| format!("self-check `select` failed: {e}"))
}
