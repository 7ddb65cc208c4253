//! What the data path counts: requests by pool, backend and status class, durations,
//! connect errors, retries, refusals, and the requests in flight. No module of ours is
//! imported here; one [`Telemetry`] is made at start and passed in.
//!
//! Counters are resolved once per pool and backend when a pool is built
//! ([`Telemetry::pool`]), so a request increments a counter it already holds instead of
//! formatting its labels and looking them up.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Labels of `switchyard_requests_total{class}`, by the status's hundreds; the last is
/// a request that got no response.
const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

fn class(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => CLASSES.len() - 1,
    }
}

/// Why a request was refused at the edge: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// 431.
    HeaderTooLarge,
    /// 400: no canonical request target.
    BadRequest,
    /// 413.
    BodyTooLarge,
    /// 403.
    AccessDenied,
    /// 429.
    RateLimited,
    /// 408 while a body was being read.
    ClientTimeout,
}

impl Refused {
    /// Every reason, in label order.
    pub const ALL: [Refused; 6] = [
        Refused::HeaderTooLarge,
        Refused::BadRequest,
        Refused::BodyTooLarge,
        Refused::AccessDenied,
        Refused::RateLimited,
        Refused::ClientTimeout,
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::HeaderTooLarge => "header_too_large",
            Refused::BadRequest => "bad_request",
            Refused::BodyTooLarge => "body_too_large",
            Refused::AccessDenied => "access_denied",
            Refused::RateLimited => "rate_limited",
            Refused::ClientTimeout => "client_timeout",
        }
    }
}

/// The data-path metrics of this process.
#[derive(Debug)]
pub struct Telemetry {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    connect_errors: IntCounterVec,
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    decisions: IntCounterVec,
    refused: [IntCounter; Refused::ALL.len()],
    /// Requests that reached no pool, by class.
    outside_pools: [IntCounter; CLASSES.len()],
    in_flight: AtomicUsize,
    /// The response caches' series.
    pub cache: crate::cache::metrics::CacheMetrics,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Telemetry {
    /// Registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "switchyard_requests_total",
            "Requests answered, by pool, backend and status class.",
            &["pool", "backend", "class"],
        )?;
        let connect_errors = counter(
            &registry,
            "switchyard_upstream_connect_errors_total",
            "Failed connections to backends.",
            &["pool", "backend"],
        )?;
        let retries = counter(
            &registry,
            "switchyard_retries_total",
            "Requests retried on another backend.",
            &["pool"],
        )?;
        let retry_budget_exhausted = counter(
            &registry,
            "switchyard_retry_budget_exhausted_total",
            "Retries not made because the pool's retry budget was spent.",
            &["pool"],
        )?;
        let decisions = counter(
            &registry,
            "switchyard_balancer_decisions_total",
            "Backend choices by who made them: the plugin, or the round-robin fallback because the plugin declined (e.g. a request without its hash key) or failed, or the native selector.",
            &["pool", "decision"],
        )?;
        let refused = counter(
            &registry,
            "switchyard_refused_total",
            "Requests refused before reaching a pool, by reason.",
            &["reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from request to response end, by pool.",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            &["pool"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        let refused = Refused::ALL.map(|r| refused.with_label_values(&[r.as_str()]));
        let outside_pools = CLASSES.map(|c| requests.with_label_values(&["", "", c]));
        let cache = crate::cache::metrics::CacheMetrics::register(&registry)?;
        Ok(Telemetry {
            registry,
            requests,
            duration,
            connect_errors,
            retries,
            retry_budget_exhausted,
            decisions,
            refused,
            outside_pools,
            in_flight: AtomicUsize::new(0),
            cache,
        })
    }

    /// The counters of pool `name` and of each of its backends, resolved now.
    pub fn pool(&self, name: &str, backends: &[SocketAddr]) -> PoolTelemetry {
        let pool = [name];
        PoolTelemetry {
            duration: self.duration.with_label_values(&pool),
            retries: self.retries.with_label_values(&pool),
            retry_budget_exhausted: self.retry_budget_exhausted.with_label_values(&pool),
            decisions: Decided::ALL.map(|d| self.decisions.with_label_values(&[name, d.as_str()])),
            unanswered: CLASSES.map(|c| self.requests.with_label_values(&[name, "", c])),
            backends: backends
                .iter()
                .map(|addr| {
                    let addr = addr.to_string();
                    BackendTelemetry {
                        requests: CLASSES
                            .map(|c| self.requests.with_label_values(&[name, &addr, c])),
                        connect_errors: self.connect_errors.with_label_values(&[name, &addr]),
                    }
                })
                .collect(),
        }
    }

    /// A request refused at the edge.
    pub fn refused(&self, reason: Refused) {
        if let Some(i) = Refused::ALL.iter().position(|r| *r == reason) {
            self.refused[i].inc();
        }
    }

    /// A request that ended without reaching a pool, with `status` (0: none sent).
    pub fn request_outside_pools(&self, status: u16) {
        self.outside_pools[class(status)].inc();
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn in_flight_guard(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(std::sync::Arc::clone(self))
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Adds a metric kept elsewhere (the access log's dropped lines), read when scraped.
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> prometheus::Result<()> {
        self.registry.register(collector)
    }

    /// The metric families, for the exporter.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }
}

/// A request counted in [`Telemetry::in_flight`].
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<Telemetry>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One pool's counters.
#[derive(Debug)]
pub struct PoolTelemetry {
    duration: Histogram,
    retries: IntCounter,
    retry_budget_exhausted: IntCounter,
    decisions: [IntCounter; Decided::ALL.len()],
    /// Requests of the pool no backend answered (no backend left, plugin failed closed).
    unanswered: [IntCounter; CLASSES.len()],
    backends: Vec<BackendTelemetry>,
}

#[derive(Debug)]
struct BackendTelemetry {
    requests: [IntCounter; CLASSES.len()],
    connect_errors: IntCounter,
}

impl PoolTelemetry {
    /// A finished request of this pool, last tried on `backend` (if any).
    pub fn request(&self, backend: Option<usize>, status: u16, took: Duration) {
        let counters = backend
            .and_then(|i| self.backends.get(i))
            .map_or(&self.unanswered, |b| &b.requests);
        counters[class(status)].inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// A failed connection to `backend`; `retried` when another backend is tried next.
    pub fn connect_error(&self, backend: usize, retried: bool) {
        if let Some(b) = self.backends.get(backend) {
            b.connect_errors.inc();
        }
        if retried {
            self.retries.inc();
        }
    }

    /// A request retried on another backend.
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// A retry the budget refused.
    pub fn retry_budget_exhausted(&self) {
        self.retry_budget_exhausted.inc();
    }

    /// A backend chosen, by `who`.
    pub fn decided(&self, who: Decided) {
        self.decisions[who as usize].inc();
    }

    /// The choices so far, by who made them (in [`Decided::ALL`] order).
    pub fn decisions(&self) -> [u64; Decided::ALL.len()] {
        self.decisions.each_ref().map(IntCounter::get)
    }
}

/// Who chose a backend, as `switchyard_balancer_decisions_total{decision}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decided {
    /// The balancer plugin.
    Plugin,
    /// The round-robin fallback, because the plugin answered `none` (for a hashing
    /// balancer: the request lacked its key).
    Declined,
    /// The round-robin fallback, because the plugin call failed or was skipped.
    Failed,
    /// The native selector, with no plugin asked.
    Native,
}

impl Decided {
    /// Every value, in discriminant order.
    pub const ALL: [Decided; 4] = [
        Decided::Plugin,
        Decided::Declined,
        Decided::Failed,
        Decided::Native,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Decided::Plugin => "plugin",
            Decided::Declined => "declined",
            Decided::Failed => "failed",
            Decided::Native => "native",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_resolved_per_pool_count_under_their_labels() {
        let t = Telemetry::new().unwrap();
        let pool = t.pool("web", &["127.0.0.1:3001".parse().unwrap()]);
        pool.request(Some(0), 204, Duration::from_millis(3));
        pool.request(None, 502, Duration::from_millis(1));
        pool.connect_error(0, true);
        t.refused(Refused::RateLimited);
        t.request_outside_pools(429);
        let text = {
            let mut out = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &t.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        for line in [
            "switchyard_requests_total{backend=\"127.0.0.1:3001\",class=\"2xx\",pool=\"web\"} 1",
            "switchyard_requests_total{backend=\"\",class=\"5xx\",pool=\"web\"} 1",
            "switchyard_requests_total{backend=\"\",class=\"4xx\",pool=\"\"} 1",
            "switchyard_upstream_connect_errors_total{backend=\"127.0.0.1:3001\",pool=\"web\"} 1",
            "switchyard_retries_total{pool=\"web\"} 1",
            "switchyard_refused_total{reason=\"rate_limited\"} 1",
            "switchyard_request_duration_seconds_count{pool=\"web\"} 2",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
