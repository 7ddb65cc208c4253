//! A pool's live balancer instance and the calls into it.
//!
//! One instance per pool, behind a mutex: a balancer's state (a round-robin position,
//! latency estimates) is one sequence per pool, as in HAProxy, not one per proxy thread
//! as in nginx. Calls take about a microsecond, so the lock is short.
//!
//! A call that traps, overruns its deadline, panics in the host or answers something
//! invalid fails only that call: the instance is dropped (its state may be corrupt) and
//! a fresh one is made, with `init` run again, on the next call.

use pingora::http::RequestHeader;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use wasmtime::Store;
use wasmtime::component::Resource;

use super::host_bindings::Balancer;
use super::request::RequestHandle;
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
}

impl FailureKind {
    /// All kinds, in a fixed order.
    pub const ALL: [FailureKind; 5] = [
        FailureKind::Trap,
        FailureKind::Timeout,
        FailureKind::OutOfRange,
        FailureKind::Unhealthy,
        FailureKind::Instantiate,
    ];

    /// Stable lower-case name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfRange => "out_of_range",
            FailureKind::Unhealthy => "unhealthy_choice",
            FailureKind::Instantiate => "instantiate",
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

    /// Failures of `kind` so far.
    pub fn failures(&self, kind: FailureKind) -> u64 {
        FailureKind::ALL
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.failures[i].load(Ordering::Relaxed))
    }
}

struct Live {
    store: Store<PluginState>,
    bindings: Balancer,
}

/// A pool's balancer: the plugin, its configuration and its live instance.
pub struct PoolBalancer {
    plugin: Arc<LoadedPlugin>,
    config: Vec<(String, String)>,
    limits: PluginLimits,
    live: Mutex<Option<Live>>,
    /// Call and failure counts.
    pub stats: CallStats,
}

impl std::fmt::Debug for PoolBalancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBalancer")
            .field("plugin", &self.plugin.name)
            .finish_non_exhaustive()
    }
}

impl PoolBalancer {
    /// Instantiates `plugin` and runs its `init` with `config`; an error here means the
    /// pool cannot use this plugin (bad configuration, trap in `init`).
    pub fn new(
        plugin: Arc<LoadedPlugin>,
        config: Vec<(String, String)>,
        limits: PluginLimits,
    ) -> Result<Self, PluginError> {
        let balancer = PoolBalancer {
            plugin,
            config,
            limits,
            live: Mutex::new(None),
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Live>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn instantiate(&self) -> Result<Live, PluginError> {
        let mut store = Store::new(
            self.plugin.engine.engine(),
            PluginState::new(&self.plugin.name, self.limits.memory_bytes),
        );
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(PluginEngine::deadline_ticks(self.limits.init_timeout));
        let bindings = guarded(|| self.plugin.pre.instantiate(&mut store))
            .map_err(|e| self.call_error("instantiate", e))?;
        match guarded(|| bindings.call_init(&mut store, &self.config)) {
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

    /// Runs `call` on the live instance (making one if needed) under the call deadline.
    /// On failure the instance is discarded and the failure counted.
    fn with_instance<R>(
        &self,
        call: &'static str,
        request: Option<(&mut RequestHeader, Option<SocketAddr>)>,
        f: impl FnOnce(&Balancer, &mut Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let mut slot = self.lock();
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
        let result = match request {
            Some((header, client)) => {
                let state = live.store.data_mut();
                std::mem::swap(header, &mut state.request.header);
                state.request.client = client;
                let result = guarded(|| f(&live.bindings, &mut live.store));
                std::mem::swap(header, &mut live.store.data_mut().request.header);
                result
            }
            None => guarded(|| f(&live.bindings, &mut live.store)),
        };
        result.map_err(|e| {
            *slot = None;
            let error = self.call_error(call, e);
            if let Some(kind) = error.failure_kind() {
                self.stats.record_failure(kind);
            }
            error
        })
    }

    /// Asks the plugin to choose among `backends` (the flat table of `wit/plugin.wit`)
    /// for the request whose header is `header`. `Ok(None)`: the plugin left the choice
    /// to the host.
    pub fn select(
        &self,
        header: &mut RequestHeader,
        client: Option<SocketAddr>,
        backends: &Vec<u32>,
    ) -> Result<Option<usize>, PluginError> {
        let choice = self.with_instance("select", Some((header, client)), |b, store| {
            b.call_select(store, Resource::<RequestHandle>::new_borrow(0), backends)
        })?;
        let Some(index) = choice else { return Ok(None) };
        let index = index as usize;
        let count = backends.len() / crate::pool::BACKEND_STRIDE;
        let invalid = |kind, detail| {
            self.stats.record_failure(kind);
            Err(PluginError::Call {
                name: self.plugin.name.clone(),
                call: "select",
                kind,
                detail,
            })
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
        self.with_instance("on-response", None, |b, store| {
            b.call_on_response(store, backend, status, latency_us)
        })
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
    if d.as_micros() < 1000 {
        format!("{}µs", d.as_micros())
    } else if d.as_millis() < 10_000 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}
