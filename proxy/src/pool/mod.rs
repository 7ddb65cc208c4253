//! A pool of backends: which of them a request may use, the plugin that balances them,
//! the native round-robin fallback used when the plugin fails, the retry budget, and
//! what each finished request teaches (in-flight counts, latency, failure streaks).

mod backend;
mod outlier;
mod retry_budget;
pub mod shadow;

pub use backend::Backend;
pub use retry_budget::RetryBudget;

use arc_swap::ArcSwap;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{
    HealthCheck, OnPluginFailure, OutlierDetection, PoolConfig, UpstreamProtocol, UpstreamTimeouts,
    UpstreamTls,
};
use crate::plugin::instance::off_the_worker_if;
use crate::plugin::request::RequestView;
use crate::plugin::{PluginError, PoolBalancer};
use crate::telemetry::{Decided, PoolTelemetry, Telemetry};
pub use shadow::Shadow;
use switchyard_plugin_sdk::abi::Row;

/// Which backends a request may use (see [`Pool::tier`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tier {
    Primary,
    Backup,
    Any,
}

/// How a backend was picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The plugin chose.
    Plugin,
    /// The plugin failed or declined; the native round-robin chose.
    Fallback,
    /// No plugin was asked: the pool runs the native selector (a benchmark baseline).
    Native,
}

impl Decision {
    /// `plugin`, `fallback` or `native`, as the access log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Plugin => "plugin",
            Decision::Fallback => "fallback",
            Decision::Native => "native",
        }
    }
}

/// A backend picked for one attempt.
#[derive(Clone, Debug)]
pub struct Choice {
    /// Index in the pool.
    pub index: usize,
    /// The balancer that chose, to be told how the request ends.
    pub balancer: Arc<PoolBalancer>,
    /// Who decided.
    pub decision: Decision,
    /// The shadow balancer asked about this request, to be told how it ends.
    pub shadow: Option<Arc<PoolBalancer>>,
}

/// A named pool of backends with its balancer.
#[derive(Debug)]
pub struct Pool {
    /// Name routes refer to.
    pub name: String,
    /// Backends, in configuration order.
    pub backends: Vec<Backend>,
    /// The pool's plugin instance; replaced whole by a plugin reload. A request keeps
    /// the balancer that chose its backend until it ends.
    pub balancer: ArcSwap<PoolBalancer>,
    /// Connect timeout per attempt.
    pub connect_timeout: Duration,
    /// Other backends to try after a connection failure.
    pub retries: u32,
    /// Fail-open (fallback) or fail-closed (503) when the balancer fails.
    pub on_plugin_failure: OnPluginFailure,
    /// Active health checks, if configured.
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection, if configured.
    pub outlier_detection: Option<OutlierDetection>,
    /// Read, write and idle timeouts towards the backends.
    pub timeouts: UpstreamTimeouts,
    /// Statuses that send an idempotent request to another backend.
    pub retry_on: Vec<u16>,
    /// TLS towards the backends, if on.
    pub tls: Option<UpstreamTls>,
    /// CA certificates of `tls.ca_file`, loaded.
    pub ca: Option<Arc<Box<[openssl::x509::X509]>>>,
    /// HTTP version towards the backends.
    pub protocol: UpstreamProtocol,
    /// This pool's counters.
    pub telemetry: PoolTelemetry,
    /// Retries in flight allowed, against requests in flight.
    pub retry_budget: RetryBudget,
    /// Skip the plugin and choose with the native round-robin: the baseline that
    /// isolates what a Wasm decision costs (`SWITCHYARD_NATIVE_SELECTOR=1`).
    pub native_selector: bool,
    /// A second balancer shown a sample of the requests, never obeyed.
    pub shadow: Option<Shadow>,
    fallback_cursor: AtomicUsize,
}

thread_local! {
    // The table handed to `select`, reused so a request allocates nothing for it.
    static TABLE: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

impl Pool {
    /// A pool from its configuration and an initialised balancer, counting in
    /// `telemetry`.
    pub fn new(config: &PoolConfig, balancer: PoolBalancer, telemetry: &Telemetry) -> Self {
        let addrs: Vec<_> = config.backends.iter().map(|b| b.addr).collect();
        Pool {
            telemetry: telemetry.pool(&config.name, &addrs),
            name: config.name.clone(),
            backends: config
                .backends
                .iter()
                .map(|b| Backend::new(b.addr, b.weight, b.backup))
                .collect(),
            balancer: ArcSwap::from_pointee(balancer),
            connect_timeout: config.connect_timeout,
            retries: config.retries,
            on_plugin_failure: config.on_plugin_failure,
            health_check: config.health_check.clone(),
            outlier_detection: config.outlier_detection.clone(),
            timeouts: config.timeouts,
            retry_on: config.retry_on.clone(),
            tls: config.tls.clone(),
            ca: None,
            protocol: config.protocol,
            retry_budget: RetryBudget::new(config.retry_budget_percent),
            native_selector: std::env::var_os("SWITCHYARD_NATIVE_SELECTOR")
                .is_some_and(|v| v == "1"),
            shadow: None,
            fallback_cursor: AtomicUsize::new(0),
        }
    }

    /// Carries over, per address, what `old` knew: a configuration reload must not undo
    /// an operator's `drain` or `weight`, nor bring a backend the health checks took
    /// down back up. A backend new to a health-checked pool starts down and joins once
    /// its checks pass (`rise` in a row), as Envoy holds new hosts until their first
    /// check: a pod DNS announces before it listens gets no requests.
    pub fn keep_state_from(&self, old: &Pool) {
        for b in &self.backends {
            if let Some(o) = old.backends.iter().find(|o| o.addr == b.addr) {
                b.set_draining(o.is_draining());
                b.up.store(o.up.load(Ordering::Relaxed), Ordering::Relaxed);
                if o.weight_set_at_run_time() {
                    b.set_weight(o.weight());
                }
            } else if self.health_check.is_some() {
                b.up.store(false, Ordering::Relaxed);
            }
        }
    }

    /// Records a health check of backend `i` (see [`Backend::record_check`]). Returns
    /// the new state when it changed.
    pub fn record_check(&self, i: usize, passed: bool, detail: &str) -> Option<bool> {
        let (hc, b) = (self.health_check.as_ref()?, self.backends.get(i)?);
        let changed = b.record_check(passed, hc.rise, hc.fall)?;
        if changed {
            tracing::info!(pool = %self.name, backend = %b.addr, "backend up: health checks pass again");
        } else {
            tracing::warn!(pool = %self.name, backend = %b.addr, detail, "backend down: health checks fail");
        }
        Some(changed)
    }

    /// The peer for backend `index`, with the pool's timeouts, TLS and protocol: what
    /// requests and health checks connect to.
    pub fn peer(&self, index: usize) -> Option<HttpPeer> {
        let backend = self.backends.get(index)?;
        let tls = self.tls.as_ref();
        let sni = tls.map_or_else(String::new, |t| t.sni.clone());
        let mut peer = HttpPeer::new(backend.addr, tls.is_some(), sni);
        let options = &mut peer.options;
        options.connection_timeout = Some(self.connect_timeout);
        options.read_timeout = Some(self.timeouts.read);
        options.write_timeout = Some(self.timeouts.write);
        options.idle_timeout = Some(self.timeouts.idle);
        if let Some(tls) = tls {
            options.verify_cert = tls.verify;
            options.verify_hostname = tls.verify && !tls.sni.is_empty();
            options.ca = self.ca.clone();
        }
        match self.protocol {
            UpstreamProtocol::Http1 => options.set_http_version(1, 1),
            UpstreamProtocol::Http2 => options.set_http_version(2, 2),
        }
        Some(peer)
    }

    /// The backend at `addr` (as written, e.g. `127.0.0.1:3001`).
    pub fn backend(&self, addr: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.addr.to_string() == addr)
    }

    /// Which backends may take this request: the primaries that are up; if none, the
    /// backups that are up; if none either, every one not draining or excluded (a
    /// request tried on a backend marked down beats a certain 502, as nginx does).
    fn tier(&self, excluded: &[usize]) -> Tier {
        let open = |i: usize, b: &Backend| !b.is_draining() && !excluded.contains(&i);
        let up = |backup: bool| {
            self.backends
                .iter()
                .enumerate()
                .any(|(i, b)| open(i, b) && b.is_up() && b.backup == backup)
        };
        if up(false) {
            Tier::Primary
        } else if up(true) {
            Tier::Backup
        } else {
            Tier::Any
        }
    }

    /// Whether backend `i` may take this request, in `tier`.
    fn eligible_in(&self, tier: Tier, i: usize, excluded: &[usize]) -> bool {
        let Some(b) = self.backends.get(i) else {
            return false;
        };
        let open = !b.is_draining() && !excluded.contains(&i);
        open && match tier {
            Tier::Primary => b.is_up() && !b.backup,
            Tier::Backup => b.is_up() && b.backup,
            Tier::Any => true,
        }
    }

    /// True when some backend other than those in `excluded` is left to try.
    pub fn has_candidate(&self, excluded: &[usize]) -> bool {
        let tier = self.tier(excluded);
        (0..self.backends.len()).any(|i| self.eligible_in(tier, i, excluded))
    }

    /// The table a fresh balancer is checked with before it takes traffic: the pool's
    /// real backends (weights, identities), all healthy and idle, so a plugin that
    /// builds state on its first call builds it for this pool.
    pub fn check_table(&self, stride: usize) -> Vec<u32> {
        let mut table = Vec::new();
        for b in &self.backends {
            Row {
                weight: b.weight(),
                healthy: true,
                id: b.id,
                ..Row::default()
            }
            .write(stride, &mut table);
        }
        table
    }

    /// Fills `table` with a row of `stride` values per backend (the plugin's interface
    /// version's layout, `switchyard_plugin_sdk::abi`).
    fn fill_table(&self, excluded: &[usize], table: &mut Vec<u32>, stride: usize) {
        table.clear();
        let tier = self.tier(excluded);
        for (i, b) in self.backends.iter().enumerate() {
            Row {
                weight: b.weight(),
                healthy: self.eligible_in(tier, i, excluded),
                in_flight: b.in_flight.load(Ordering::Relaxed),
                latency_us: b.latency_us.load(Ordering::Relaxed),
                recent_failures: b.recent_failures.load(Ordering::Relaxed),
                id: b.id,
            }
            .write(stride, table);
        }
    }

    /// Picks a backend for this request: the plugin's choice, or the native fallback
    /// when the plugin fails or declines. `Ok(None)` when no backend is left; `Err` when
    /// the plugin failed and the pool is fail-closed.
    pub fn choose(
        &self,
        header: &mut RequestHeader,
        view: &mut RequestView,
        excluded: &[usize],
    ) -> Result<Option<Choice>, PluginError> {
        if self.backends.is_empty() {
            // A pool found in DNS before its first answer: nothing to ask the plugin.
            return Ok(None);
        }
        let balancer = self.balancer.load_full();
        if self.native_selector {
            self.telemetry.decided(Decided::Native);
            return Ok(self.fallback(excluded).map(|index| Choice {
                index,
                balancer,
                decision: Decision::Native,
                shadow: None,
            }));
        }
        let from_plugin = TABLE.with(|cell| {
            let mut table = cell.borrow_mut();
            self.fill_table(excluded, &mut table, balancer.abi().stride());
            off_the_worker_if(balancer.is_slow(), || {
                balancer.select(header, view, &mut table)
            })
        });
        let (index, decision) = match from_plugin {
            Ok(Some(index)) => {
                self.telemetry.decided(Decided::Plugin);
                (Some(index), Decision::Plugin)
            }
            Ok(None) => {
                self.telemetry.decided(Decided::Declined);
                (self.fallback(excluded), Decision::Fallback)
            }
            Err(e) if self.on_plugin_failure == OnPluginFailure::Reject => {
                tracing::warn!(pool = %self.name, error = %e, "plugin failed; the pool is fail-closed: 503");
                self.telemetry.decided(Decided::Failed);
                return Err(e);
            }
            Err(e) => {
                self.telemetry.decided(Decided::Failed);
                // A quarantine was logged once when it began; each skipped call is not.
                if e.failure_kind() == Some(crate::plugin::FailureKind::Quarantined) {
                    tracing::debug!(pool = %self.name, error = %e, "plugin quarantined; request served by the round-robin fallback");
                } else {
                    tracing::warn!(pool = %self.name, error = %e, "plugin failed; request served by the round-robin fallback");
                }
                (self.fallback(excluded), Decision::Fallback)
            }
        };
        let shadow = match (&self.shadow, index) {
            (Some(shadow), Some(live)) if shadow.sampled() => self.ask_shadow(
                shadow,
                header,
                view,
                excluded,
                balancer.abi().stride(),
                live,
            ),
            _ => None,
        };
        Ok(index.map(|index| Choice {
            index,
            balancer,
            decision,
            shadow,
        }))
    }

    /// Shows the request to the shadow, with the table the live balancer saw (the same
    /// rows, refilled only when the shadow speaks another interface version).
    fn ask_shadow(
        &self,
        shadow: &Shadow,
        header: &RequestHeader,
        view: &RequestView,
        excluded: &[usize],
        live_stride: usize,
        live: usize,
    ) -> Option<Arc<PoolBalancer>> {
        if shadow.quarantined(live) {
            return None;
        }
        let stride = shadow.balancer.load().abi().stride();
        let table = if stride == live_stride {
            TABLE.with(|cell| cell.borrow().clone())
        } else {
            let mut table = Vec::new();
            self.fill_table(excluded, &mut table, stride);
            table
        };
        shadow.ask(header, view, table, stride, live)
    }

    /// Native round-robin over the eligible backends.
    fn fallback(&self, excluded: &[usize]) -> Option<usize> {
        let n = self.backends.len();
        let start = self.fallback_cursor.fetch_add(1, Ordering::Relaxed);
        let tier = self.tier(excluded);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.eligible_in(tier, i, excluded))
    }

    /// Marks the start of a request on backend `i`.
    pub fn begin(&self, i: usize) {
        if let Some(b) = self.backends.get(i) {
            b.in_flight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Marks the end of a request on backend `i`: `status` 0 when it failed before
    /// answering; `latency` to the response header (or to the failure). `balancer` is
    /// the one that chose the backend.
    pub fn finish(
        &self,
        balancer: &PoolBalancer,
        shadow: Option<Arc<PoolBalancer>>,
        i: usize,
        status: u16,
        latency: Duration,
    ) {
        if let Some(shadow) = shadow {
            shadow::tell(shadow, i, status, latency);
        }
        self.finish_at(balancer, i, status, latency, Instant::now());
    }

    /// [`Pool::finish`] at time `now`: the simulator passes simulated time, so the
    /// peak-EWMA and outlier bookkeeping see the time it simulates.
    pub fn finish_at(
        &self,
        balancer: &PoolBalancer,
        i: usize,
        status: u16,
        latency: Duration,
        now: Instant,
    ) {
        let Some(b) = self.backends.get(i) else {
            return;
        };
        b.in_flight.fetch_sub(1, Ordering::Relaxed);
        b.served.fetch_add(1, Ordering::Relaxed);
        if status == 0 || status >= 500 {
            let streak = b.recent_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(od) = &self.outlier_detection
                && let Some(time) = outlier::maybe_eject(od, &self.backends, i, streak, now)
            {
                tracing::warn!(pool = %self.name, backend = %b.addr, failures = streak, for_ = ?time, "backend ejected by outlier detection");
            }
        } else {
            b.recent_failures.store(0, Ordering::Relaxed);
            if let Some(od) = &self.outlier_detection {
                outlier::decay(od, b, now);
            }
        }
        if status != 0 {
            let estimate = b.ewma.lock().observe(latency, now);
            b.latency_us
                .store(estimate.min(f64::from(u32::MAX)) as u32, Ordering::Relaxed);
        }
        if self.native_selector {
            return;
        }
        if let Err(e) = off_the_worker_if(balancer.is_slow(), || {
            balancer.on_response(i, status, latency)
        }) {
            tracing::warn!(pool = %self.name, error = %e, "plugin failed in on-response");
        }
    }
}
