//! A live plugin instance and the one way into it, for both worlds.
//!
//! One instance per pool (or per router use), behind a mutex: a balancer's state (a
//! round-robin position, latency estimates) is one sequence per pool, as in HAProxy,
//! not one per proxy thread as in nginx. Calls take about a microsecond, so the lock is
//! short; it is timed, so a request waits at most one call budget for a busy instance.
//!
//! A call that traps, overruns its deadline, panics in the host or answers something
//! invalid fails only that call: the instance is dropped (its state may be corrupt) and
//! a fresh one is made, with `init` run again, on the next call.

use pingora::http::RequestHeader;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use wasmtime::Store;

use super::failure::{CallStats, FailureKind, guarded, human};
use super::quarantine::Quarantine;
use super::request::RequestView;
use super::sandbox::PluginEngine;
use super::state::PluginState;
use super::worlds::{BalancerWorld, RouterWorld, World};
use super::{LoadedPlugin, PluginError};
use crate::config::PluginLimits;

struct Live<W> {
    store: Store<PluginState>,
    bindings: W,
    /// False until a call has finished: the first call of an instance runs under the
    /// `init` budget, since a plugin may build its state on its first sight of the pool
    /// (a hashing balancer's ring or table). See [`PluginInstance::warm_up_timed_out`].
    warmed: bool,
}

/// A pool's balancer.
pub type PoolBalancer = PluginInstance<BalancerWorld>;
/// A router plugin in use.
pub type RouterInstance = PluginInstance<RouterWorld>;

/// A plugin in use: the plugin, its configuration and its live instance.
pub struct PluginInstance<W> {
    pub(super) plugin: Arc<LoadedPlugin>,
    config: Vec<(String, String)>,
    pub(super) limits: PluginLimits,
    /// Where the instances' stdout and stderr go, rate-limited across instances.
    output: super::output::PluginOutput,
    /// Timed lock: a caller waits at most one call budget for a busy instance.
    live: parking_lot::Mutex<Option<Live<W>>>,
    quarantine: Quarantine,
    /// Set when a first call ran out the `init` budget: from then on first calls get
    /// the call budget like any other, so a plugin that loops in every call stalls a
    /// request for the long budget once, not after every fresh instance.
    warm_up_timed_out: std::sync::atomic::AtomicBool,
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

/// Runs `f`, when `slow`, through `block_in_place`: a call that may run out a long
/// budget would otherwise hold the worker thread, and every request queued on it, for
/// that long. Tokio hands the worker's other tasks to another thread meanwhile. Other
/// calls run directly: the hand-off costs microseconds a call.
pub fn off_the_worker_if<R>(slow: bool, f: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if slow && multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
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
        let instance = PluginInstance {
            output: super::output::PluginOutput::new(&plugin.name),
            quarantine: Quarantine::new(&plugin.name, &limits),
            plugin,
            config,
            limits,
            live: parking_lot::Mutex::new(None),
            warm_up_timed_out: std::sync::atomic::AtomicBool::new(false),
            stats: CallStats::default(),
        };
        let live = instance.instantiate()?;
        *instance.live.lock() = Some(live);
        Ok(instance)
    }

    /// The plugin behind this instance.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// The configuration `init` was given, and the sandbox limits.
    pub fn settings(&self) -> (&[(String, String)], &PluginLimits) {
        (&self.config, &self.limits)
    }

    fn instantiate(&self) -> Result<Live<W>, PluginError> {
        let mut store = Store::new(
            self.plugin.engine.engine(),
            PluginState::new(
                &self.output,
                self.limits.memory_bytes,
                self.plugin.engine.virtual_world(),
            ),
        );
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        let _ticking = self.plugin.engine.call();
        store.set_epoch_deadline(PluginEngine::deadline_ticks(self.limits.init_timeout));
        let bindings = guarded(|| W::instantiate(&self.plugin, &mut store))
            .map_err(|e| self.call_error("instantiate", self.limits.init_timeout, e))?;
        match guarded(|| bindings.init(&mut store, &self.config)) {
            Ok(Ok(())) => Ok(Live {
                store,
                bindings,
                warmed: false,
            }),
            Ok(Err(message)) => Err(PluginError::InitRejected {
                name: self.plugin.name.clone(),
                message,
            }),
            Err(e) => Err(self.call_error("init", self.limits.init_timeout, e)),
        }
    }

    /// The failure of `call`, which ran under `budget`.
    fn call_error(
        &self,
        call: &'static str,
        budget: Duration,
        error: wasmtime::Error,
    ) -> PluginError {
        let kind = match error.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => FailureKind::Timeout,
            _ => FailureKind::Trap,
        };
        let detail = match kind {
            FailureKind::Timeout => format!("interrupted after its {} budget", human(budget)),
            _ => format!("{error:#}")
                .lines()
                .take(3)
                .collect::<Vec<_>>()
                .join(" / "),
        };
        self.failure(call, kind, detail)
    }

    /// A call failure of `kind`.
    pub(super) fn failure(
        &self,
        call: &'static str,
        kind: FailureKind,
        detail: String,
    ) -> PluginError {
        PluginError::Call {
            name: self.plugin.name.clone(),
            call,
            kind,
            detail,
        }
    }

    /// Counts a failure the host found in an answer (a bad index, an unknown pool) and
    /// records it towards a quarantine.
    pub(super) fn invalid_answer(
        &self,
        call: &'static str,
        kind: FailureKind,
        detail: String,
    ) -> PluginError {
        self.stats.record_failure(kind);
        let error = self.failure(call, kind, detail);
        self.note_failure(&error);
        error
    }

    /// Runs `call` unless the plugin is quarantined, and keeps the failure record that
    /// decides quarantines. `request`, if any, is moved into the store for the call.
    pub(super) fn with_instance<R>(
        &self,
        call: &'static str,
        request: Option<(&mut RequestHeader, &mut RequestView)>,
        f: impl FnOnce(&W, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if let Some(detail) = self.quarantine.blocked_now() {
            self.stats.record_failure(FailureKind::Quarantined);
            return Err(self.failure(call, FailureKind::Quarantined, detail));
        }
        let result = self.call_instance(call, request, f);
        match &result {
            // Only a decision proves the plugin healthy again; feedback calls do not.
            Ok(_) if call != "on-response" => self.quarantine.succeeded(),
            Ok(_) => {}
            Err(e) => self.note_failure(e),
        }
        result
    }

    /// True while quarantined, and the skipped call counted as such: for a caller
    /// that would rather not prepare a call that will not be made.
    pub fn skip_while_quarantined(&self) -> bool {
        let skip = self.quarantine.is_quarantined_now();
        if skip {
            self.stats.record_failure(FailureKind::Quarantined);
        }
        skip
    }

    /// `Some(why)` while quarantined.
    pub(super) fn quarantined_for(&self) -> Option<String> {
        self.quarantine.blocked_now()
    }

    /// Records a failure towards a quarantine.
    fn note_failure(&self, error: &PluginError) {
        let slow = matches!(
            error.failure_kind(),
            Some(FailureKind::Timeout | FailureKind::Busy)
        );
        self.quarantine
            .failed(&error.to_string(), slow, Instant::now());
    }

    /// True when a call ran out its budget within the last quarantine window: the next
    /// calls may too, so the caller should not hold up other work meanwhile.
    pub fn is_slow(&self) -> bool {
        self.quarantine.is_slow_now()
    }

    /// Whether the plugin is quarantined now, and its last error.
    pub fn quarantine_state(&self) -> (bool, Option<String>) {
        self.quarantine.state(Instant::now())
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
            let detail = format!(
                "the instance stayed busy for the whole {} budget",
                human(self.limits.call_timeout)
            );
            return Err(self.failure(call, FailureKind::Busy, detail));
        };
        // Making an instance, or its first call, may run the long `init` budget: held on
        // the worker thread that long, it would stall every connection queued there,
        // the accept loop included. Decided here, under the lock, so that only the call
        // that warms up leaves the thread, not the requests waiting behind it.
        let long = slot.as_ref().is_none_or(|live| self.warms_up(live));
        off_the_worker_if(long, || self.call_locked(&mut slot, call, request, f))
    }

    /// Whether `live`'s next call runs under the `init` budget (see [`Live::warmed`]).
    fn warms_up(&self, live: &Live<W>) -> bool {
        !live.warmed && !self.warm_up_timed_out.load(Ordering::Relaxed)
    }

    /// [`Self::call_instance`] once the instance's lock is held.
    fn call_locked<R>(
        &self,
        slot: &mut Option<Live<W>>,
        call: &'static str,
        request: Option<(&mut RequestHeader, &mut RequestView)>,
        f: impl FnOnce(&W, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
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
            return Err(self.failure(call, FailureKind::Instantiate, "no instance".into()));
        };
        let _ticking = self.plugin.engine.call();
        let warm_up = self.warms_up(live);
        let budget = if warm_up {
            self.limits.init_timeout.max(self.limits.call_timeout)
        } else {
            self.limits.call_timeout
        };
        live.store
            .set_epoch_deadline(PluginEngine::deadline_ticks(budget));
        // The ticker's coarse clock, not `Instant::now()`: read on every call, needed
        // only when the call fails.
        let started = self.plugin.engine.ticks();
        let result = match request {
            Some((header, view)) => {
                live.store.data_mut().request.swap(header, view);
                let result = guarded(|| f(&live.bindings, &mut live.store));
                live.store.data_mut().request.swap(header, view);
                result
            }
            None => guarded(|| f(&live.bindings, &mut live.store)),
        };
        if result.is_ok() {
            live.warmed = true;
        }
        result.map_err(|e| {
            *slot = None;
            // A failure that took over half the budget (filling memory until it runs
            // out, say) holds the thread like a timeout does.
            let took = PluginEngine::ticks_to_time(self.plugin.engine.ticks() - started);
            if took * 2 > self.limits.call_timeout {
                self.quarantine.slow_call(Instant::now());
            }
            let error = self.call_error(call, budget, e);
            if warm_up && error.failure_kind() == Some(FailureKind::Timeout) {
                self.warm_up_timed_out.store(true, Ordering::Relaxed);
            }
            if let Some(kind) = error.failure_kind() {
                self.stats.record_failure(kind);
            }
            error
        })
    }
}
