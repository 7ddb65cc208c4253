//! When a plugin is not called: its failure record, and the quarantine it decides.
//!
//! `quarantine_after` failures within `quarantine_window` quarantine a plugin for
//! `quarantine_backoff`; the first call after a quarantine is a probation: if it fails
//! the plugin goes straight back, for twice as long (up to `quarantine_max`), and if it
//! succeeds the back-off starts over. A call that ran out its budget also marks the
//! plugin slow for a window, so callers keep its calls off the worker thread.
//!
//! Every method takes the time as an argument: the state machine is unit-tested with
//! made-up instants, and the data path reads the clock once per call.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::failure::human;
use crate::config::PluginLimits;

#[derive(Debug)]
struct Record {
    /// Failures within the window.
    recent: VecDeque<Instant>,
    /// End of the current quarantine.
    until: Option<Instant>,
    /// Length of the next quarantine.
    backoff: Duration,
    last_error: Option<String>,
    /// Last time a call ran out its budget (or waited one out).
    last_slow: Option<Instant>,
}

/// One plugin use's failure record.
#[derive(Debug)]
pub struct Quarantine {
    plugin: String,
    after: u32,
    window: Duration,
    first_backoff: Duration,
    max_backoff: Duration,
    record: Mutex<Record>,
    /// False while the record holds no quarantine and no recent slow call: the common
    /// case, read on every call without taking the lock. Set and cleared with it held.
    troubled: AtomicBool,
}

impl Quarantine {
    /// A clean record for `plugin` under `limits`.
    pub fn new(plugin: &str, limits: &PluginLimits) -> Self {
        Quarantine {
            plugin: plugin.to_owned(),
            after: limits.quarantine_after,
            window: limits.quarantine_window,
            first_backoff: limits.quarantine_backoff,
            max_backoff: limits.quarantine_max,
            record: Mutex::new(Record {
                recent: VecDeque::new(),
                until: None,
                backoff: limits.quarantine_backoff,
                last_error: None,
                last_slow: None,
            }),
            troubled: AtomicBool::new(false),
        }
    }

    /// `Some(why)` while the plugin is quarantined at `now`.
    pub fn blocked(&self, now: Instant) -> Option<String> {
        if !self.troubled.load(Ordering::Acquire) {
            return None;
        }
        let record = self.record.lock();
        let slow = record
            .last_slow
            .is_some_and(|t| now.saturating_duration_since(t) < self.window);
        if record.until.is_none() && !slow {
            self.troubled.store(false, Ordering::Release);
        }
        let until = record.until?;
        (until > now).then(|| {
            format!(
                "quarantined for {} more after repeated failures; last error: {}",
                human(until - now),
                record.last_error.as_deref().unwrap_or("-")
            )
        })
    }

    /// [`Quarantine::blocked`] now; reads the clock only when the record is troubled.
    pub fn blocked_now(&self) -> Option<String> {
        if !self.troubled.load(Ordering::Acquire) {
            return None;
        }
        self.blocked(Instant::now())
    }

    /// Whether calls are skipped now, without composing the reason; reads the clock
    /// only when the record is troubled.
    pub fn is_quarantined_now(&self) -> bool {
        self.troubled.load(Ordering::Acquire)
            && self.record.lock().until.is_some_and(|u| u > Instant::now())
    }

    /// [`Quarantine::is_slow`] now; reads the clock only when the record is troubled.
    pub fn is_slow_now(&self) -> bool {
        self.troubled.load(Ordering::Acquire) && self.is_slow(Instant::now())
    }

    /// A decision succeeded: a probation ends the quarantine and its back-off.
    pub fn succeeded(&self) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut record = self.record.lock();
        if record.until.take().is_some() {
            tracing::info!(plugin = %self.plugin, "plugin left quarantine");
            record.backoff = self.first_backoff;
        }
    }

    /// A call failed at `now` with `error`; `slow` when it held its thread for long (a
    /// timeout, or a wait for a busy instance). Quarantines after `quarantine_after`
    /// failures within the window, or at once on probation. True when this failure
    /// began a quarantine.
    pub fn failed(&self, error: &str, slow: bool, now: Instant) -> bool {
        let mut record = self.record.lock();
        record.last_error = Some(error.to_owned());
        if slow {
            record.last_slow = Some(now);
            self.troubled.store(true, Ordering::Release);
        }
        if self.after == 0 {
            return false;
        }
        let window = self.window;
        record
            .recent
            .retain(|t| now.saturating_duration_since(*t) < window);
        record.recent.push_back(now);
        let on_probation = record.until.is_some();
        if !on_probation && record.recent.len() < self.after as usize {
            return false;
        }
        let backoff = record.backoff;
        record.until = now.checked_add(backoff);
        record.backoff = (backoff * 2).min(self.max_backoff);
        record.recent.clear();
        self.troubled.store(true, Ordering::Release);
        tracing::warn!(plugin = %self.plugin, for_ = %human(backoff), error, "plugin quarantined: its pools use the fallback until it is retried");
        true
    }

    /// A call held its thread for long at `now` (without failing, or as it failed).
    pub fn slow_call(&self, now: Instant) {
        self.record.lock().last_slow = Some(now);
        self.troubled.store(true, Ordering::Release);
    }

    /// True when a call ran out its budget within the last window: the next may too.
    pub fn is_slow(&self, now: Instant) -> bool {
        if !self.troubled.load(Ordering::Acquire) {
            return false;
        }
        self.record
            .lock()
            .last_slow
            .is_some_and(|t| now.saturating_duration_since(t) < self.window)
    }

    /// Whether the plugin is quarantined at `now`, and its last error.
    pub fn state(&self, now: Instant) -> (bool, Option<String>) {
        let record = self.record.lock();
        (
            record.until.is_some_and(|u| u > now),
            record.last_error.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quarantine() -> Quarantine {
        let limits = PluginLimits {
            quarantine_after: 3,
            quarantine_window: Duration::from_secs(10),
            quarantine_backoff: Duration::from_secs(1),
            quarantine_max: Duration::from_secs(4),
            ..PluginLimits::default()
        };
        Quarantine::new("p", &limits)
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn failures_within_the_window_quarantine_and_probation_doubles_the_backoff() {
        let q = quarantine();
        let t0 = Instant::now();
        assert!(!q.failed("e1", false, t0));
        assert!(!q.failed("e2", false, at(t0, 100)));
        assert!(q.blocked(at(t0, 200)).is_none());
        assert!(q.failed("e3", false, at(t0, 200)), "the third within 10 s");
        assert!(q.blocked(at(t0, 700)).is_some_and(|why| why.contains("e3")));
        // Over after 1 s: probation. A failure then quarantines at once, for 2 s.
        assert!(q.blocked(at(t0, 1_201)).is_none());
        assert!(q.failed("e4", false, at(t0, 1_300)));
        assert!(q.blocked(at(t0, 3_200)).is_some());
        assert!(q.blocked(at(t0, 3_301)).is_none());
        // Then 4 s, and never more than quarantine_max.
        assert!(q.failed("e5", false, at(t0, 3_400)));
        assert!(q.blocked(at(t0, 7_300)).is_some());
        assert!(q.failed("e6", false, at(t0, 7_500)));
        assert!(q.blocked(at(t0, 11_400)).is_some() && q.blocked(at(t0, 11_501)).is_none());
        // A success on probation ends it, and the next quarantine is 1 s again.
        q.succeeded();
        assert_eq!(q.state(at(t0, 11_600)), (false, Some("e6".into())));
        for ms in [12_000, 12_001, 12_002] {
            q.failed("e", false, at(t0, ms));
        }
        assert!(q.blocked(at(t0, 12_900)).is_some() && q.blocked(at(t0, 13_003)).is_none());
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_quarantine() {
        let q = quarantine();
        let t0 = Instant::now();
        for i in 0..10 {
            assert!(!q.failed("e", false, at(t0, i * 6_000)), "failure {i}");
        }
    }

    #[test]
    fn slowness_lasts_one_window_and_never_quarantine_after_zero() {
        let q = Quarantine::new(
            "p",
            &PluginLimits {
                quarantine_after: 0,
                ..PluginLimits::default()
            },
        );
        let t0 = Instant::now();
        assert!(!q.is_slow(t0));
        q.slow_call(t0);
        assert!(q.is_slow(at(t0, 9_999)));
        assert!(!q.is_slow(at(t0, 10_000)));
        for i in 0..100 {
            assert!(!q.failed("e", true, at(t0, i)));
        }
        assert!(q.blocked(at(t0, 200)).is_none());
    }
}
