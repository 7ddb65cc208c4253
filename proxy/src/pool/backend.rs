//! One backend and its live numbers, shared by all proxy threads: weight, drain, health
//! verdict, outlier ejection, in-flight count, host-measured latency.

use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Decay time of the host's latency estimate (the one shown to every plugin).
pub(super) const HOST_EWMA_DECAY: Duration = Duration::from_secs(10);

/// Origin of the millisecond clock the ejection deadlines are stored in.
static CLOCK_BASE: once_cell::sync::Lazy<Instant> = once_cell::sync::Lazy::new(Instant::now);

/// `t` in milliseconds since [`CLOCK_BASE`] (0 for earlier instants).
pub(super) fn millis_since_base(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(*CLOCK_BASE).as_millis()).unwrap_or(u64::MAX)
}

/// Peak-EWMA of response times: jumps up to a slower sample at once, decays toward
/// faster ones with time constant τ.
///
/// ```text
/// w = exp(−Δt / τ);  est' = rtt if rtt > est, else est·w + rtt·(1 − w)
/// ```
#[derive(Debug)]
pub(super) struct PeakEwma {
    pub(super) estimate_us: f64,
    pub(super) updated: Instant,
}

impl PeakEwma {
    pub(super) fn observe(&mut self, rtt: Duration, now: Instant) -> f64 {
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

/// One backend and its live numbers.
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
    pub(super) up: AtomicBool,
    /// Passes (positive) or failures (negative) in a row.
    check_streak: Mutex<i32>,
    /// End of the current outlier ejection, in ms since [`CLOCK_BASE`]; 0: never ejected.
    /// An atomic, not a lock: it is read for every backend on every request.
    pub(super) ejected_until_ms: AtomicU64,
    /// Ejections so far; each doubles the next one.
    pub(super) ejections: AtomicU32,
    pub(super) in_flight: AtomicU32,
    pub(super) latency_us: AtomicU32,
    pub(super) recent_failures: AtomicU32,
    pub(super) served: AtomicU64,
    pub(super) ewma: Mutex<PeakEwma>,
}

impl Backend {
    pub(super) fn new(addr: SocketAddr, weight: u32, backup: bool) -> Self {
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

    /// Host-measured peak-EWMA latency in µs (0 before the first sample).
    pub fn latency_us(&self) -> u32 {
        self.latency_us.load(Ordering::Relaxed)
    }

    /// Records a health check: `rise` passes in a row bring a down backend up, `fall`
    /// failures in a row take an up one down. The new state when it changed.
    pub fn record_check(&self, passed: bool, rise: u32, fall: u32) -> Option<bool> {
        let mut streak = self.check_streak.lock();
        *streak = match (*streak, passed) {
            (n, true) if n >= 0 => n.saturating_add(1),
            (_, true) => 1,
            (n, false) if n <= 0 => n.saturating_sub(1),
            (_, false) => -1,
        };
        let was_up = self.up.load(Ordering::Relaxed);
        let rise = i32::try_from(rise).unwrap_or(i32::MAX);
        let fall = i32::try_from(fall).unwrap_or(i32::MAX);
        let now_up = if was_up {
            *streak > -fall
        } else {
            *streak >= rise
        };
        if now_up == was_up {
            return None;
        }
        self.up.store(now_up, Ordering::Relaxed);
        if now_up {
            // Back in service with a clean slate: plugins see no failure streak.
            self.recent_failures.store(0, Ordering::Relaxed);
        }
        Some(now_up)
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

    #[test]
    fn fall_failures_in_a_row_take_it_down_and_rise_passes_bring_it_back() {
        let b = Backend::new("127.0.0.1:1".parse().unwrap(), 1, false);
        b.recent_failures.store(4, Ordering::Relaxed);
        // fall = 3: two failures, a pass (streak broken), then three in a row.
        for passed in [false, false, true, false, false] {
            assert_eq!(b.record_check(passed, 2, 3), None);
        }
        assert_eq!(b.record_check(false, 2, 3), Some(false));
        assert!(!b.is_up());
        // rise = 2: one pass is not enough, a failure resets, then two in a row.
        assert_eq!(b.record_check(true, 2, 3), None);
        assert_eq!(b.record_check(false, 2, 3), None);
        assert_eq!(b.record_check(true, 2, 3), None);
        assert_eq!(b.record_check(true, 2, 3), Some(true));
        assert!(b.is_up());
        assert_eq!(
            b.recent_failures.load(Ordering::Relaxed),
            0,
            "a clean slate"
        );
    }
}
