//! A live plugin instance and the calls into it, for both worlds: a pool's balancer
//! and a router.
//!
//! One instance per pool (or per router use), behind a mutex: a balancer's state (a round-robin position,
//! latency estimates) is one sequence per pool, as in HAProxy, not one per proxy thread
//! as in nginx. Calls take about a microsecond, so the lock is short.
//!
//! A call that traps, overruns its deadline, panics in the host or answers something
//! invalid fails only that call: the instance is dropped (its state may be corrupt) and
//! a fresh one is made, with `init` run again, on the next call.

use pingora::http::RequestHeader;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use wasmtime::Store;
use wasmtime::component::Resource;

use super::host_bindings::{Balancer, BalancerPre};
use super::request::{RequestHandle, RequestView};
use super::router_bindings::{Router, RouterPre};
use super::sandbox::{PluginEngine, PluginState};
use super::{LoadedPlugin, PluginError};
use crate::config::PluginLimits;

/// Why a call failed, for counting and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The guest trapped (a panic, `unreachable`, a memory fault, `exit`).
    Trap,
    /// The call ran past its deadline and was interrupted.
    Timeout,
    /// `select` returned an index past the end of the pool.
    OutOfRange,
    /// `select` chose a backend marked not healthy.
    Unhealthy,
    /// A new instance could not be made (instantiation or `init` failed).
    Instantiate,
    /// A router answered something unusable (bad status, unknown pool, huge body).
    BadReply,
    /// Not called: the plugin is quarantined after repeated failures.
    Quarantined,
    /// Not called: the instance was busy (another call running long) for a whole budget.
    Busy,
}

impl FailureKind {
    /// All kinds, in a fixed order.
    pub const ALL: [FailureKind; 8] = [
        FailureKind::Trap,
        FailureKind::Timeout,
        FailureKind::OutOfRange,
        FailureKind::Unhealthy,
        FailureKind::Instantiate,
        FailureKind::BadReply,
        FailureKind::Quarantined,
        FailureKind::Busy,
    ];

    /// Stable lower-case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfRange => "out_of_range",
            FailureKind::Unhealthy => "unhealthy_choice",
            FailureKind::Instantiate => "instantiate",
            FailureKind::BadReply => "bad_reply",
            FailureKind::Quarantined => "quarantined",
            FailureKind::Busy => "busy",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of one pool's balancer.
#[derive(Debug, Default)]
pub struct CallStats {
    /// Calls made (select and on-response).
    pub calls: AtomicU64,
    failures: [AtomicU64; FailureKind::ALL.len()],
}

impl CallStats {
    fn record_failure(&self, kind: FailureKind) {
        if let Some(i) = FailureKind::ALL.iter().position(|k| *k == kind) {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls so far and failures by kind, in [`FailureKind::ALL`] order.
    pub fn snapshot(&self) -> (u64, [u64; FailureKind::ALL.len()]) {
        (
            self.calls.load(Ordering::Relaxed),
            std::array::from_fn(|i| self.failures[i].load(Ordering::Relaxed)),
        )
    }

    /// Failures of `kind` so far.
    pub fn failures(&self, kind: FailureKind) -> u64 {
        FailureKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.failures[i].load(Ordering::Relaxed))
    }
}

/// A plugin world the host can instantiate: its generated bindings.
pub trait World: Sized + Send + 'static {
    /// Human name, for errors.
    const NAME: &'static str;
    /// Makes an instance of `plugin`, if it was linked as this world.
    fn instantiate(plugin: &LoadedPlugin, store: &mut Store<PluginState>)
    -> wasmtime::Result<Self>;
    /// Runs the world's `init`.
    fn init(
        &self,
        store: &mut Store<PluginState>,
        config: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>>;
}

impl World for Balancer {
    const NAME: &'static str = "balancer";
    fn instantiate(
        plugin: &LoadedPlugin,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Self> {
        match &plugin.linked {
            super::Linked::Balancer(pre) => BalancerPre::instantiate(pre, store),
            super::Linked::Router(_) => {
                wasmtime::bail!("plugin `{}` is a router, not a balancer", plugin.name)
            }
        }
    }
    fn init(
        &self,
        store: &mut Store<PluginState>,
        config: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        self.call_init(store, config)
    }
}

impl World for Router {
    const NAME: &'static str = "router";
    fn instantiate(
        plugin: &LoadedPlugin,
        store: &mut Store<PluginState>,
    ) -> wasmtime::Result<Self> {
        match &plugin.linked {
            super::Linked::Router(pre) => RouterPre::instantiate(pre, store),
            super::Linked::Balancer(_) => {
                wasmtime::bail!("plugin `{}` is a balancer, not a router", plugin.name)
            }
        }
    }
    fn init(
        &self,
        store: &mut Store<PluginState>,
        config: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        self.call_init(store, config)
    }
}

/// Failure record behind quarantines.
#[derive(Debug)]
struct Health {
    recent: std::collections::VecDeque<Instant>,
    until: Option<Instant>,
    backoff: Duration,
    last_error: Option<String>,
    quarantines: u64,
    /// Last time a call ran out its budget (or waited one out).
    last_slow: Option<Instant>,
}

struct Live<W> {
    store: Store<PluginState>,
    bindings: W,
}

/// A pool's balancer.
pub type PoolBalancer = PluginInstance<Balancer>;
/// A router plugin in use.
pub type RouterInstance = PluginInstance<Router>;

/// A plugin in use: the plugin, its configuration and its live instance.
pub struct PluginInstance<W> {
    plugin: Arc<LoadedPlugin>,
    config: Vec<(String, String)>,
    limits: PluginLimits,
    /// Where the instances' stdout and stderr go, rate-limited across instances.
    output: super::output::PluginOutput,
    /// Timed lock: a caller waits at most one call budget for a busy instance.
    live: parking_lot::Mutex<Option<Live<W>>>,
    health: Mutex<Health>,
    /// False while `health` holds no quarantine and no recent slow call: the common
    /// case, checked on every call without taking the lock. Set and cleared only with
    /// the lock held.
    troubled: AtomicBool,
    /// Call and failure counts.
    pub stats: CallStats,
}

impl<W> std::fmt::Debug for PluginInstance<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance")
            .field("plugin", &self.plugin.name)
            .finish_non_exhaustive()
    }
}

impl<W: World> PluginInstance<W> {
    /// Instantiates `plugin` and runs its `init` with `config`; an error here means the
    /// plugin cannot be used so (bad configuration, trap in `init`, wrong world).
    pub fn new(
        plugin: Arc<LoadedPlugin>,
        config: Vec<(String, String)>,
        limits: PluginLimits,
    ) -> Result<Self, PluginError> {
        let backoff = limits.quarantine_backoff;
        let balancer = PluginInstance {
            output: super::output::PluginOutput::new(&plugin.name),
            plugin,
            config,
            limits,
            live: parking_lot::Mutex::new(None),
            health: Mutex::new(Health {
                recent: std::collections::VecDeque::new(),
                until: None,
                backoff,
                last_error: None,
                quarantines: 0,
                last_slow: None,
            }),
            troubled: AtomicBool::new(false),
            stats: CallStats::default(),
        };
        let live = balancer.instantiate()?;
        *balancer.lock() = Some(live);
        Ok(balancer)
    }

    /// The plugin behind this balancer.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Option<Live<W>>> {
        self.live.lock()
    }

    fn instantiate(&self) -> Result<Live<W>, PluginError> {
        let mut store = Store::new(
            self.plugin.engine.engine(),
            PluginState::new(&self.output, self.limits.memory_bytes),
        );
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(PluginEngine::deadline_ticks(self.limits.init_timeout));
        let bindings = guarded(|| W::instantiate(&self.plugin, &mut store))
            .map_err(|e| self.call_error("instantiate", e))?;
        match guarded(|| bindings.init(&mut store, &self.config)) {
            Ok(Ok(())) => Ok(Live { store, bindings }),
            Ok(Err(message)) => Err(PluginError::InitRejected {
                name: self.plugin.name.clone(),
                message,
            }),
            Err(e) => Err(self.call_error("init", e)),
        }
    }

    fn call_error(&self, call: &'static str, error: wasmtime::Error) -> PluginError {
        let kind = match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => FailureKind::Timeout,
            _ => FailureKind::Trap,
        };
        let detail = match kind {
            FailureKind::Timeout => format!(
                "interrupted after its {} budget",
                human(if call == "init" || call == "instantiate" {
                    self.limits.init_timeout
                } else {
                    self.limits.call_timeout
                })
            ),
            _ => format!("{error:#}")
                .lines()
                .take(3)
                .collect::<Vec<_>>()
                .join(" / "),
        };
        PluginError::Call {
            name: self.plugin.name.clone(),
            call,
            kind,
            detail,
        }
    }

    /// Runs `call` unless the plugin is quarantined, and keeps the failure record that
    /// decides quarantines.
    fn with_instance<R>(
        &self,
        call: &'static str,
        request: Option<(&mut RequestHeader, &mut RequestView)>,
        f: impl FnOnce(&W, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if let Some(detail) = self.quarantined_for() {
            self.stats.record_failure(FailureKind::Quarantined);
            return Err(PluginError::Call {
                name: self.plugin.name.clone(),
                call,
                kind: FailureKind::Quarantined,
                detail,
            });
        }
        let result = self.call_instance(call, request, f);
        match &result {
            // Only a decision proves the plugin healthy again; feedback calls do not.
            Ok(_) if call != "on-response" => self.note_success(),
            Ok(_) => {}
            Err(e) => self.note_failure(e),
        }
        result
    }

    /// `Some(why)` while quarantined.
    fn quarantined_for(&self) -> Option<String> {
        if !self.troubled.load(Ordering::Acquire) {
            return None;
        }
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let slow = health
            .last_slow
            .is_some_and(|t| t.elapsed() < self.limits.quarantine_window);
        if health.until.is_none() && !slow {
            self.troubled.store(false, Ordering::Release);
        }
        let until = health.until?;
        let now = Instant::now();
        (until > now).then(|| {
            format!(
                "quarantined for {} more after repeated failures; last error: {}",
                human(until - now),
                health.last_error.as_deref().unwrap_or("-")
            )
        })
    }

    fn note_success(&self) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        if health.until.is_some() {
            // The call after a quarantine succeeded: back to normal.
            tracing::info!(plugin = %self.plugin.name, "plugin left quarantine");
            health.until = None;
            health.backoff = self.limits.quarantine_backoff;
        }
    }

    /// Records a failure; quarantines the plugin after `quarantine_after` of them within
    /// `quarantine_window`, or at once when the first call after a quarantine fails.
    pub(crate) fn note_failure(&self, error: &PluginError) {
        let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        health.last_error = Some(error.to_string());
        if matches!(
            error.failure_kind(),
            Some(FailureKind::Timeout | FailureKind::Busy)
        ) {
            health.last_slow = Some(now);
            self.troubled.store(true, Ordering::Release);
        }
        if self.limits.quarantine_after == 0 {
            return;
        }
        let window = self.limits.quarantine_window;
        health.recent.retain(|t| now.duration_since(*t) < window);
        health.recent.push_back(now);
        let on_probation = health.until.is_some();
        if on_probation || health.recent.len() >= self.limits.quarantine_after as usize {
            let backoff = health.backoff;
            health.until = Some(now + backoff);
            self.troubled.store(true, Ordering::Release);
            health.backoff = (backoff * 2).min(self.limits.quarantine_max);
            health.recent.clear();
            health.quarantines += 1;
            tracing::warn!(plugin = %self.plugin.name, for_ = %human(backoff), error = %error, "plugin quarantined: its pools use the fallback until it is retried");
        }
    }

    /// True when a call ran out its budget within the last quarantine window: the next
    /// calls may too, so the caller should not hold up other work meanwhile.
    pub fn is_slow(&self) -> bool {
        if !self.troubled.load(Ordering::Acquire) {
            return false;
        }
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        health
            .last_slow
            .is_some_and(|t| t.elapsed() < self.limits.quarantine_window)
    }

    /// Whether the plugin is quarantined now, and its last error.
    pub fn quarantine_state(&self) -> (bool, Option<String>) {
        let health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        (
            health.until.is_some_and(|u| u > Instant::now()),
            health.last_error.clone(),
        )
    }

    /// Runs `call` on the live instance (making one if needed) under the call deadline.
    /// On failure the instance is discarded and the failure counted.
    fn call_instance<R>(
        &self,
        call: &'static str,
        request: Option<(&mut RequestHeader, &mut RequestView)>,
        f: impl FnOnce(&W, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        // A plugin that runs to its deadline holds the instance that long; rather than
        // queue behind it (8 waiting requests would wait 8 budgets), a request waits at
        // most one budget and then takes the fallback.
        let Some(mut slot) = self.live.try_lock_for(self.limits.call_timeout) else {
            self.stats.record_failure(FailureKind::Busy);
            return Err(PluginError::Call {
                name: self.plugin.name.clone(),
                call,
                kind: FailureKind::Busy,
                detail: format!(
                    "the instance stayed busy for the whole {} budget",
                    human(self.limits.call_timeout)
                ),
            });
        };
        if slot.is_none() {
            match self.instantiate() {
                Ok(live) => *slot = Some(live),
                Err(e) => {
                    self.stats.record_failure(FailureKind::Instantiate);
                    return Err(e);
                }
            }
        }
        let Some(live) = slot.as_mut() else {
            return Err(PluginError::Call {
                name: self.plugin.name.clone(),
                call,
                kind: FailureKind::Instantiate,
                detail: "no instance".into(),
            });
        };
        live.store
            .set_epoch_deadline(PluginEngine::deadline_ticks(self.limits.call_timeout));
        let started = Instant::now();
        let result = match request {
            Some((header, view)) => {
                live.store.data_mut().request.swap(header, view);
                let result = guarded(|| f(&live.bindings, &mut live.store));
                live.store.data_mut().request.swap(header, view);
                result
            }
            None => guarded(|| f(&live.bindings, &mut live.store)),
        };
        result.map_err(|e| {
            *slot = None;
            // A failure that took over half the budget (filling memory until it runs
            // out, say) holds the thread like a timeout does.
            if started.elapsed() * 2 > self.limits.call_timeout {
                self.health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .last_slow = Some(Instant::now());
                self.troubled.store(true, Ordering::Release);
            }
            let error = self.call_error(call, e);
            if let Some(kind) = error.failure_kind() {
                self.stats.record_failure(kind);
            }
            error
        })
    }
}

impl PluginInstance<Balancer> {
    /// Asks the plugin to choose among `backends` (the flat table of `wit/plugin.wit`)
    /// for the request whose header is `header`. `Ok(None)`: the plugin left the choice
    /// to the host.
    pub fn select(
        &self,
        header: &mut RequestHeader,
        view: &mut RequestView,
        backends: &Vec<u32>,
    ) -> Result<Option<usize>, PluginError> {
        let choice = self.with_instance("select", Some((header, view)), |b, store| {
            b.call_select(store, Resource::<RequestHandle>::new_borrow(0), backends)
        })?;
        let Some(index) = choice else { return Ok(None) };
        let index = index as usize;
        let count = backends.len() / crate::pool::BACKEND_STRIDE;
        let invalid = |kind, detail| {
            self.stats.record_failure(kind);
            let error = PluginError::Call {
                name: self.plugin.name.clone(),
                call: "select",
                kind,
                detail,
            };
            self.note_failure(&error);
            Err(error)
        };
        if index >= count {
            return invalid(
                FailureKind::OutOfRange,
                format!("returned backend {index}, but the pool has {count} backends"),
            );
        }
        if backends[index * crate::pool::BACKEND_STRIDE + 1] & crate::pool::FLAG_HEALTHY == 0 {
            return invalid(
                FailureKind::Unhealthy,
                format!("chose backend {index}, which is not healthy for this request"),
            );
        }
        Ok(Some(index))
    }

    /// Tells the plugin how a request on `backend` ended.
    pub fn on_response(
        &self,
        backend: usize,
        status: u16,
        latency: Duration,
    ) -> Result<(), PluginError> {
        let backend = u32::try_from(backend).unwrap_or(u32::MAX);
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // A quarantined plugin is not fed either: it is not asked, and not counted.
        if self.quarantined_for().is_some() {
            return Ok(());
        }
        self.with_instance("on-response", None, |b, store| {
            b.call_on_response(store, backend, status, latency_us)
        })
    }
}

/// A router's decision, checked: status in range, body within limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteDecision {
    /// Serve from this pool.
    Pool(String),
    /// Answer directly.
    Respond {
        /// 100–599.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// At most [`MAX_ROUTER_BODY`] bytes.
        body: String,
    },
    /// Go on with the static routes.
    Continue,
}

/// Largest body a router may answer with.
pub const MAX_ROUTER_BODY: usize = 64 * 1024;

impl PluginInstance<Router> {
    /// Asks the router what to do with the request whose header is `header`.
    pub fn route(
        &self,
        header: &mut RequestHeader,
        view: &mut RequestView,
    ) -> Result<RouteDecision, PluginError> {
        use super::router_bindings::switchyard::plugin::routing::Decision;
        let decision = self.with_instance("route", Some((header, view)), |r, store| {
            r.call_route(store, Resource::<RequestHandle>::new_borrow(0))
        })?;
        match decision {
            Decision::Pool(name) => Ok(RouteDecision::Pool(name)),
            Decision::Continue => Ok(RouteDecision::Continue),
            Decision::Respond(r) if (100..=599).contains(&r.status) && r.body.len() <= MAX_ROUTER_BODY => {
                Ok(RouteDecision::Respond { status: r.status, headers: r.headers, body: r.body })
            }
            Decision::Respond(r) => Err(self.bad_reply(format!(
                "answered status {} with a {}-byte body; the status must be 100–599 and the body at most {MAX_ROUTER_BODY} bytes",
                r.status,
                r.body.len()
            ))),
        }
    }

    /// Counts and describes an unusable answer.
    pub fn bad_reply(&self, detail: String) -> PluginError {
        self.stats.record_failure(FailureKind::BadReply);
        let error = PluginError::Call {
            name: self.plugin.name.clone(),
            call: "route",
            kind: FailureKind::BadReply,
            detail,
        };
        self.note_failure(&error);
        error
    }
}

/// Runs a wasm call, turning a panic in a host function into an error so that it
/// fails the call, not the proxy thread.
fn guarded<R>(f: impl FnOnce() -> wasmtime::Result<R>) -> wasmtime::Result<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(wasmtime::format_err!("host function panicked: {message}"))
        }
    }
}

fn human(d: Duration) -> String {
    if d.subsec_nanos() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else if d.as_micros() < 1000 {
        format!("{}µs", d.as_micros())
    } else if d.as_millis() < 10_000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}
