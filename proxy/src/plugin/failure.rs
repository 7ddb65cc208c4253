//! How plugin calls fail: the kinds, their counters, and the guard that turns a panic
//! in a host function into a failed call.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    pub(crate) fn record_failure(&self, kind: FailureKind) {
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

/// Runs a wasm call, turning a panic in a host function into an error so that it
/// fails the call, not the proxy thread.
pub(crate) fn guarded<R>(f: impl FnOnce() -> wasmtime::Result<R>) -> wasmtime::Result<R> {
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

pub(crate) fn human(d: Duration) -> String {
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
