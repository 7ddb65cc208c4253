//! Peak-EWMA latency balancing (Finagle, Linkerd, tower).
//!
//! Each backend keeps a response-time estimate updated on every response:
//!
//! ```text
//! w    = exp(−Δt / τ)                Δt: time since the last update
//! rtt' = rtt                         if rtt > est   (peak: jump up at once)
//! est' = est · w + rtt' · (1 − w)    otherwise      (decay down smoothly)
//! ```
//!
//! Between responses the estimate decays toward zero (an observation of 0 at pick time),
//! so a backend that stopped getting traffic is tried again. A pick compares two distinct
//! random healthy backends (power of two choices, the second drawn from the n − 1 others)
//! and takes the lower
//!
//! ```text
//! cost = est · (in_flight + 1)
//! ```
//!
//! A failure (status 0: no answer; or 5xx) counts as `failure_penalty` of latency, so a
//! backend that fails fast does not attract traffic by looking quick. A penalised backend
//! whose failure streak the host has since cleared without a response reaching this
//! balancer (health checks brought it back, or its outlier ejection ended) starts afresh,
//! instead of waiting for the penalty to decay.
//!
//! `balancer_config`: `decay` (τ, default `"10s"`), `default_rtt` (estimate of a backend
//! with no sample yet, default `"10ms"`), `failure_penalty` (default `"1s"`).

use std::time::{Duration, Instant};
use switchyard_plugin_sdk::{Backend, Backends, Balancer, Candidates, Config, Request, Rng};

/// One backend's estimate.
#[derive(Clone, Copy, Debug)]
struct Estimate {
    rtt_us: f64,
    updated: Instant,
    /// False until this balancer has seen a response from the backend.
    sampled: bool,
    /// The last response was a failure.
    penalized: bool,
}

/// Tunables from `balancer_config`.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// τ of the exponential decay.
    pub decay: Duration,
    /// Estimate of a backend before its first response.
    pub default_rtt: Duration,
    /// Latency charged for a failed request.
    pub failure_penalty: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(10),
            failure_penalty: Duration::from_secs(1),
        }
    }
}

/// Per-pool state.
#[derive(Debug)]
pub struct PeakEwma {
    settings: Settings,
    estimates: Vec<Estimate>,
    rng: Rng,
}

impl PeakEwma {
    /// A balancer with the given settings and random source.
    pub fn new(settings: Settings, rng: Rng) -> Self {
        PeakEwma {
            settings,
            estimates: Vec::new(),
            rng,
        }
    }

    fn weight(&self, now: Instant, since: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(since).as_secs_f64();
        (-elapsed / self.settings.decay.as_secs_f64().max(1e-9)).exp()
    }

    fn ensure(&mut self, len: usize, now: Instant) {
        let fresh = Estimate {
            rtt_us: self.settings.default_rtt.as_micros() as f64,
            updated: now,
            sampled: false,
            penalized: false,
        };
        self.estimates.resize(len, fresh);
    }

    /// The estimate of backend `i` at `now`, decayed since its last update.
    fn estimate_at(&self, i: usize, now: Instant) -> f64 {
        let e = self.estimates[i];
        e.rtt_us * self.weight(now, e.updated)
    }

    /// Records a response of backend `i` that took `rtt`.
    pub fn observe(&mut self, i: usize, rtt: Duration, now: Instant) {
        self.ensure(self.estimates.len().max(i + 1), now);
        let rtt_us = rtt.as_micros() as f64;
        let w = self.weight(now, self.estimates[i].updated);
        let e = &mut self.estimates[i];
        e.rtt_us = if rtt_us > e.rtt_us {
            rtt_us
        } else {
            e.rtt_us * w + rtt_us * (1.0 - w)
        };
        e.updated = now;
        e.sampled = true;
    }

    /// Cost of sending one more request to backend `b`.
    fn cost(&self, b: &Backend, now: Instant) -> f64 {
        self.estimate_at(b.index, now) * (f64::from(b.in_flight) + 1.0)
    }

    /// Starts the estimate of a backend this balancer has not heard from yet (a new
    /// backend, or a freshly loaded plugin) at the host's measurement, so a hot reload
    /// does not forget which backends are slow. From then on it decays like any other.
    fn seed_from_host(&mut self, b: &Backend, now: Instant) {
        let e = &mut self.estimates[b.index];
        if !e.sampled && b.latency_us > 0 {
            *e = Estimate {
                rtt_us: f64::from(b.latency_us),
                updated: now,
                sampled: true,
                penalized: false,
            };
        }
    }

    /// Forgets the penalty of a backend the host no longer counts as failing.
    fn forgive_if_recovered(&mut self, b: &Backend, now: Instant) {
        let e = &mut self.estimates[b.index];
        if e.penalized && b.recent_failures == 0 {
            *e = Estimate {
                rtt_us: self.settings.default_rtt.as_micros() as f64,
                updated: now,
                sampled: false,
                penalized: false,
            };
        }
    }

    /// One pick at `now`; `None` when no backend is healthy.
    pub fn pick(&mut self, backends: &Backends<'_>, now: Instant) -> Option<usize> {
        self.ensure(backends.len(), now);
        let (a, b) = match backends.two_healthy(&mut self.rng) {
            Candidates::None => return None,
            Candidates::One(only) => return Some(only.index),
            Candidates::Two(a, b) => (a, b),
        };
        for candidate in [&a, &b] {
            self.forgive_if_recovered(candidate, now);
            self.seed_from_host(candidate, now);
        }
        let (cost_a, cost_b) = (self.cost(&a, now), self.cost(&b, now));
        Some(if cost_b < cost_a { b.index } else { a.index })
    }
}

impl Balancer for PeakEwma {
    fn init(config: &Config) -> Result<Self, String> {
        config.reject_unknown(&["decay", "default_rtt", "failure_penalty"])?;
        let defaults = Settings::default();
        let settings = Settings {
            decay: config.duration_or("decay", defaults.decay)?,
            default_rtt: config.duration_or("default_rtt", defaults.default_rtt)?,
            failure_penalty: config.duration_or("failure_penalty", defaults.failure_penalty)?,
        };
        if settings.decay.is_zero() {
            return Err("balancer_config.decay must be above zero, like \"10s\"".to_owned());
        }
        Ok(PeakEwma::new(settings, Rng::from_entropy()))
    }

    fn select(&mut self, _request: &Request<'_>, backends: &Backends<'_>) -> Option<usize> {
        self.pick(backends, Instant::now())
    }

    fn on_response(&mut self, backend: usize, status: u16, latency_us: u64) {
        let failed = status == 0 || status >= 500;
        let mut rtt = Duration::from_micros(latency_us);
        if failed {
            rtt = rtt.max(self.settings.failure_penalty);
        }
        self.observe(backend, rtt, Instant::now());
        if let Some(e) = self.estimates.get_mut(backend) {
            e.penalized = failed;
        }
    }
}

switchyard_plugin_sdk::export_balancer!(PeakEwma);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::{TestBackends, TestRequest};

    const MS: Duration = Duration::from_millis(1);

    fn balancer() -> PeakEwma {
        PeakEwma::new(
            Settings {
                decay: Duration::from_secs(1),
                ..Settings::default()
            },
            Rng::with_seed(9),
        )
    }

    #[test]
    fn peak_jumps_up_at_once_and_decays_down() {
        let mut p = balancer();
        let t0 = Instant::now();
        p.observe(0, 5 * MS, t0);
        p.observe(0, 80 * MS, t0);
        assert_eq!(p.estimate_at(0, t0), 80_000.0);
        // One τ later, a fast answer pulls the estimate most of the way down.
        p.observe(0, 5 * MS, t0 + Duration::from_secs(1));
        let est = p.estimate_at(0, t0 + Duration::from_secs(1));
        assert!((30_000.0..35_000.0).contains(&est), "{est}");
    }

    #[test]
    fn avoids_the_slow_backend_and_counts_in_flight() {
        let mut p = balancer();
        let now = Instant::now();
        for (i, ms) in [5, 5, 80].into_iter().enumerate() {
            p.observe(i, ms * MS, now);
        }
        let idle = TestBackends::idle(3);
        let picks: Vec<_> = (0..300)
            .map(|_| p.pick(&idle.view(), now).unwrap())
            .collect();
        assert!(!picks.contains(&2));
        // 20 in flight on a 5 ms backend costs more than one idle 80 ms backend.
        let busy = TestBackends::idle(3)
            .in_flight(&[20, 0, 0])
            .with(1, |b| b.healthy = false);
        assert_eq!(p.pick(&busy.view(), now), Some(2));
    }

    #[test]
    fn a_fresh_balancer_trusts_the_host_measurement() {
        // Through the whole Balancer interface, as the host calls it.
        let mut p = PeakEwma::init(&Config::default()).unwrap();
        let seen = TestBackends::idle(2)
            .with(0, |b| b.latency_us = 80_000)
            .with(1, |b| b.latency_us = 5_000);
        let request = TestRequest::get("/");
        for _ in 0..20 {
            assert_eq!(p.select(&request.as_request(), &seen.view()), Some(1));
        }
    }

    #[test]
    fn failures_cost_the_penalty_even_when_fast() {
        let mut p = balancer();
        p.on_response(0, 0, 100);
        p.on_response(1, 200, 20_000);
        // The host counts the failure in the backend's streak before telling the plugin.
        let seen = TestBackends::idle(2).with(0, |b| b.recent_failures = 1);
        assert_eq!(p.pick(&seen.view(), Instant::now()), Some(1));
    }

    #[test]
    fn a_backend_the_host_brought_back_starts_afresh() {
        let mut p = balancer();
        let now = Instant::now();
        p.on_response(0, 0, 100);
        p.on_response(1, 200, 20_000);
        let failing = TestBackends::idle(2).with(0, |b| b.recent_failures = 3);
        p.pick(&failing.view(), now);
        assert!(
            p.estimate_at(0, now) >= 900_000.0,
            "still penalised while failing"
        );
        // Health checks pass again: the host clears the streak; the penalty goes.
        assert_eq!(p.pick(&TestBackends::idle(2).view(), now), Some(0));
        assert_eq!(p.estimate_at(0, now), 10_000.0, "default_rtt again");
    }

    #[test]
    fn rejects_a_duration_without_unit() {
        let config = Config::new(vec![("decay".into(), "10".into())]);
        let err = PeakEwma::init(&config).unwrap_err();
        assert!(err.contains("balancer_config.decay"), "{err}");
    }
}
