//! A pool of backends: their live numbers, the plugin that balances them, and the
//! native round-robin fallback used when the plugin fails.

use arc_swap::ArcSwap;
use pingora::http::RequestHeader;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{
    HealthCheck, OnPluginFailure, OutlierDetection, PoolConfig, UpstreamProtocol, UpstreamTimeouts,
    UpstreamTls,
};
use crate::plugin::request::RequestView;
use crate::plugin::{PluginError, PoolBalancer};
use switchyard_plugin_sdk::abi::Row;

/// Decay time of the host's latency estimate (the one shown to every plugin).
const HOST_EWMA_DECAY: Duration = Duration::from_secs(10);

/// Peak-EWMA of response times: jumps up to a slower sample at once, decays toward
/// faster ones with time constant τ.
///
/// ```text
/// w = exp(−Δt / τ);  est' = rtt if rtt > est, else est·w + rtt·(1 − w)
/// ```
#[derive(Debug)]
struct PeakEwma {
    estimate_us: f64,
    updated: Instant,
}

impl PeakEwma {
    fn observe(&mut self, rtt: Duration, now: Instant) -> f64 {
        let rtt_us = rtt.as_secs_f64() * 1e6;
        if self.estimate_us == 0.0 || rtt_us > self.estimate_us {
            self.estimate_us = rtt_us;
        } else {
            let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
            let w = (-elapsed / HOST_EWMA_DECAY.as_secs_f64()).exp();
            self.estimate_us = self.estimate_us * w + rtt_us * (1.0 - w);
        }
        self.updated = now;
        self.estimate_us
    }
}

/// One backend and its live numbers, shared by all proxy threads.
#[derive(Debug)]
pub struct Backend {
    /// Address requests are sent to.
    pub addr: SocketAddr,
    /// Identity shown to plugins: a hash of the address (`switchyard_plugin_sdk::abi::backend_id`).
    pub id: u64,
    weight: AtomicU32,
    /// Set by `ctl weight`: a configuration reload keeps it rather than the file's.
    weight_set_at_run_time: AtomicBool,
    /// Serves only while no primary is up.
    pub backup: bool,
    draining: AtomicBool,
    /// Health-check verdict; up until checks say otherwise.
    up: AtomicBool,
    /// Passes (positive) or failures (negative) in a row.
    check_streak: Mutex<i32>,
    /// End of the current outlier ejection, in ms since [`CLOCK_BASE`]; 0: never ejected.
    /// An atomic, not a lock: it is read for every backend on every request.
    ejected_until_ms: AtomicU64,
    /// Ejections so far; each doubles the next one.
    ejections: AtomicU32,
    in_flight: AtomicU32,
    latency_us: AtomicU32,
    recent_failures: AtomicU32,
    served: AtomicU64,
    ewma: Mutex<PeakEwma>,
}

impl Backend {
    fn new(addr: SocketAddr, weight: u32, backup: bool) -> Self {
        Backend {
            addr,
            id: switchyard_plugin_sdk::abi::backend_id(&addr.to_string()),
            weight: AtomicU32::new(weight),
            weight_set_at_run_time: AtomicBool::new(false),
            backup,
            draining: AtomicBool::new(false),
            up: AtomicBool::new(true),
            check_streak: Mutex::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            latency_us: AtomicU32::new(0),
            recent_failures: AtomicU32::new(0),
            served: AtomicU64::new(0),
            ewma: Mutex::new(PeakEwma {
                estimate_us: 0.0,
                updated: Instant::now(),
            }),
        }
    }

    /// Current weight (configured, or set at run time).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Changes the weight at run time (at least 1); reloads keep it.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
        self.weight_set_at_run_time.store(true, Ordering::Relaxed);
    }

    /// True when the weight was set at run time rather than by the configuration.
    pub fn weight_set_at_run_time(&self) -> bool {
        self.weight_set_at_run_time.load(Ordering::Relaxed)
    }

    /// Up by the health checks and not ejected by outlier detection.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && !self.is_ejected()
    }

    /// True while outlier detection keeps the backend out.
    pub fn is_ejected(&self) -> bool {
        // Only a backend ever ejected pays for reading the clock.
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && until > millis_since_base(Instant::now())
    }

    /// `draining`, `ejected`, `down` or `up`, as the admin socket reports it.
    pub fn state(&self) -> &'static str {
        if self.is_draining() {
            "draining"
        } else if self.is_ejected() {
            "ejected"
        } else if self.is_up() {
            "up"
        } else {
            "down"
        }
    }

    /// True while draining: no new requests, in-flight ones finish.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Starts or stops draining.
    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests finished on this backend.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Host-measured peak-EWMA latency in µs (0 before the first response).
    pub fn latency_us(&self) -> u32 {
        self.latency_us.load(Ordering::Relaxed)
    }
}

/// Runs `f`, when `slow`, through `block_in_place`: a plugin that has been running out
/// its budget would otherwise hold the worker thread, and every request queued on it,
/// for that long. Tokio hands the worker's other tasks to another thread meanwhile.
/// Healthy plugins are called directly: the hand-off costs microseconds a call.
fn off_the_worker_if<R>(slow: bool, f: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if slow && multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Origin of the millisecond clock the ejection deadlines are stored in.
static CLOCK_BASE: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);

fn millis_since_base(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(*CLOCK_BASE).as_millis()).unwrap_or(u64::MAX)
}

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
    /// Time spent deciding.
    pub took: Duration,
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
    retry_budget_percent: u32,
    /// Skip the plugin and choose with the native round-robin: the baseline that
    /// isolates what a Wasm decision costs (`SWITCHYARD_NATIVE_SELECTOR=1`).
    pub native_selector: bool,
    /// Requests of this pool in flight, and how many of them are retrying.
    active_requests: AtomicU32,
    active_retries: AtomicU32,
    fallback_cursor: AtomicUsize,
}

thread_local! {
    // The table handed to `select`, reused so a request allocates nothing for it.
    static TABLE: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

impl Pool {
    /// A pool from its configuration and an initialised balancer.
    pub fn new(config: &PoolConfig, balancer: PoolBalancer) -> Self {
        Pool {
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
            retry_budget_percent: config.retry_budget_percent,
            native_selector: std::env::var_os("SWITCHYARD_NATIVE_SELECTOR")
                .is_some_and(|v| v == "1"),
            active_requests: AtomicU32::new(0),
            active_retries: AtomicU32::new(0),
            fallback_cursor: AtomicUsize::new(0),
        }
    }

    /// A request entered the pool; [`Pool::request_ended`] must follow.
    pub fn request_started(&self) {
        self.active_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A request left the pool; `retried` if it had been granted a retry.
    pub fn request_ended(&self, retried: bool) {
        self.active_requests.fetch_sub(1, Ordering::Relaxed);
        if retried {
            self.active_retries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Grants a request its first retry if the retry budget allows: retries in flight
    /// stay at most `max(MIN_RETRY_CONCURRENCY, retry_budget_percent × requests in
    /// flight / 100)`, so a failing pool cannot multiply its own load (Envoy's budget).
    pub fn grant_retry(&self) -> bool {
        let active = self.active_requests.load(Ordering::Relaxed);
        let limit = (active.saturating_mul(self.retry_budget_percent) / 100)
            .max(crate::config::MIN_RETRY_CONCURRENCY);
        self.active_retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Carries over, per address, what `old` knew: a configuration reload must not undo
    /// an operator's `drain` or `weight`, nor bring a backend the health checks took
    /// down back up.
    pub fn keep_state_from(&self, old: &Pool) {
        for b in &self.backends {
            if let Some(o) = old.backends.iter().find(|o| o.addr == b.addr) {
                b.set_draining(o.is_draining());
                b.up.store(o.up.load(Ordering::Relaxed), Ordering::Relaxed);
                if o.weight_set_at_run_time() {
                    b.set_weight(o.weight());
                }
            }
        }
    }

    /// Ejects backend `i` after `consecutive_failures` failures in a row, for
    /// `base_ejection × 2^(earlier ejections)` up to `max_ejection`, unless that would
    /// put more than `max_ejected_percent` of the pool out at once.
    fn maybe_eject(&self, i: usize, streak: u32) {
        let (Some(od), Some(b)) = (&self.outlier_detection, self.backends.get(i)) else {
            return;
        };
        if streak < od.consecutive_failures || b.is_ejected() {
            return;
        }
        let ejected = self.backends.iter().filter(|o| o.is_ejected()).count();
        if (ejected + 1) * 100 > self.backends.len() * od.max_ejected_percent as usize {
            return;
        }
        let earlier = b.ejections.fetch_add(1, Ordering::Relaxed);
        let time = od
            .base_ejection
            .saturating_mul(1 << earlier.min(16))
            .min(od.max_ejection);
        // Validation bounds ejections to 30 days; checked all the same, since an
        // overflowing `Instant` would panic on the request path.
        let until = Instant::now()
            .checked_add(time)
            .map_or(u64::MAX, millis_since_base);
        b.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
        b.recent_failures.store(0, Ordering::Relaxed);
        tracing::warn!(pool = %self.name, backend = %b.addr, failures = streak, for_ = ?time, "backend ejected by outlier detection");
    }

    /// Lowers a backend's ejection count by one for each `base_ejection` it has served
    /// well since its last ejection ended (Envoy's decay), so an ejection long ago no
    /// longer doubles the next one.
    fn decay_ejections(&self, b: &Backend) {
        let Some(od) = &self.outlier_detection else {
            return;
        };
        if b.ejections.load(Ordering::Relaxed) == 0 {
            return;
        }
        let until = b.ejected_until_ms.load(Ordering::Relaxed);
        let now = millis_since_base(Instant::now());
        let step = u64::try_from(od.base_ejection.as_millis()).unwrap_or(u64::MAX);
        // The CAS makes one of several concurrent responses take the step.
        if until != 0
            && now >= until.saturating_add(step)
            && b.ejected_until_ms
                .compare_exchange(until, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let _ = b
                .ejections
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// Records a health check of backend `i`: `rise` passes in a row bring it up, `fall`
    /// failures in a row take it down. Returns the new state when it changed.
    pub fn record_check(&self, i: usize, passed: bool, detail: &str) -> Option<bool> {
        let (hc, b) = (self.health_check.as_ref()?, self.backends.get(i)?);
        let mut streak = b
            .check_streak
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *streak = match (*streak, passed) {
            (n, true) if n >= 0 => n.saturating_add(1),
            (_, true) => 1,
            (n, false) if n <= 0 => n.saturating_sub(1),
            (_, false) => -1,
        };
        let was_up = b.up.load(Ordering::Relaxed);
        let now_up = if was_up {
            *streak > -(hc.fall as i32)
        } else {
            *streak >= hc.rise as i32
        };
        if now_up == was_up {
            return None;
        }
        b.up.store(now_up, Ordering::Relaxed);
        if now_up {
            // Back in service with a clean slate: plugins see no failure streak.
            b.recent_failures.store(0, Ordering::Relaxed);
            tracing::info!(pool = %self.name, backend = %b.addr, "backend up: health checks pass again");
        } else {
            tracing::warn!(pool = %self.name, backend = %b.addr, detail, "backend down: health checks fail");
        }
        Some(now_up)
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
        let started = Instant::now();
        let balancer = self.balancer.load_full();
        if self.native_selector {
            return Ok(self.fallback(excluded).map(|index| Choice {
                index,
                balancer,
                decision: Decision::Native,
                took: started.elapsed(),
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
            Ok(Some(index)) => (Some(index), Decision::Plugin),
            Ok(None) => (self.fallback(excluded), Decision::Fallback),
            Err(e) if self.on_plugin_failure == OnPluginFailure::Reject => {
                tracing::warn!(pool = %self.name, error = %e, "plugin failed; the pool is fail-closed: 503");
                return Err(e);
            }
            Err(e) => {
                // A quarantine was logged once when it began; each skipped call is not.
                if e.failure_kind() == Some(crate::plugin::FailureKind::Quarantined) {
                    tracing::debug!(pool = %self.name, error = %e, "plugin quarantined; request served by the round-robin fallback");
                } else {
                    tracing::warn!(pool = %self.name, error = %e, "plugin failed; request served by the round-robin fallback");
                }
                (self.fallback(excluded), Decision::Fallback)
            }
        };
        Ok(index.map(|index| Choice {
            index,
            balancer,
            decision,
            took: started.elapsed(),
        }))
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
    pub fn finish(&self, balancer: &PoolBalancer, i: usize, status: u16, latency: Duration) {
        let Some(b) = self.backends.get(i) else {
            return;
        };
        b.in_flight.fetch_sub(1, Ordering::Relaxed);
        b.served.fetch_add(1, Ordering::Relaxed);
        if status == 0 || status >= 500 {
            let streak = b.recent_failures.fetch_add(1, Ordering::Relaxed) + 1;
            self.maybe_eject(i, streak);
        } else {
            b.recent_failures.store(0, Ordering::Relaxed);
            self.decay_ejections(b);
        }
        if status != 0 {
            let estimate = b
                .ewma
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(latency, Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let t0 = Instant::now();
        let mut e = PeakEwma {
            estimate_us: 0.0,
            updated: t0,
        };
        assert_eq!(e.observe(Duration::from_millis(5), t0), 5000.0);
        assert_eq!(e.observe(Duration::from_millis(80), t0), 80_000.0);
        let later = e.observe(Duration::from_millis(5), t0 + HOST_EWMA_DECAY);
        assert!((30_000.0..35_000.0).contains(&later), "{later}");
    }
}
