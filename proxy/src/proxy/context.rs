//! What the proxy keeps about one request while it is served: the pool that counts it,
//! the attempt in progress, the backends already tried, and whether another may be.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::plugin::PoolBalancer;
use crate::plugin::request::RequestView;
use crate::pool::{Decision, Pool};
use crate::telemetry::InFlight;

/// One attempt to send the request to a backend.
#[derive(Debug)]
pub(super) struct Attempt {
    pub backend: usize,
    pub balancer: Arc<PoolBalancer>,
    /// The shadow balancer shown this attempt, if it was sampled.
    pub shadow: Option<Arc<PoolBalancer>>,
    pub started: Instant,
    pub status: u16,
    pub time_to_header: Option<Duration>,
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct RequestCtx {
    pub(super) attempt: Option<Attempt>,
    /// Backends that already failed this request.
    pub(super) excluded: Vec<usize>,
    pub(super) decision: Option<Decision>,
    pub(super) decision_time: Duration,
    /// Body for an error response the proxy itself decided on.
    pub(super) error_body: Option<String>,
    /// When the request arrived, for the duration metric.
    pub(super) arrived: Option<Instant>,
    /// The client's address, as trusted proxies report it.
    pub(super) client: Option<IpAddr>,
    /// Came over TLS.
    pub(super) tls: bool,
    /// Request body bytes seen so far.
    pub(super) body_bytes: u64,
    /// Canonical host and path, as routes and plugins see them.
    pub(super) view: RequestView,
    /// Send the backend the normalised path and query.
    pub(super) forward_normalized: Option<String>,
    /// The pool serving the request, which counts it while it lives.
    pub(super) entry: Option<PoolEntry>,
    /// Time to the response header of the last attempt.
    pub(super) upstream_time: Option<Duration>,
    pub(super) _in_flight: Option<InFlight>,
    /// Index of the route matched, if any.
    pub(super) route: Option<usize>,
    /// Whether the access log was on when the request arrived (`None` before
    /// `request_filter`: the logging stage then asks the runtime).
    pub(super) access_log_on: Option<bool>,
    /// What the response cache does with this request, on a cached route.
    pub(super) cache: Option<super::cache_state::CacheState>,
}

/// A request routed to a pool: once sent there, counted in the pool's requests in
/// flight (and retries, once granted one) until dropped.
#[derive(Debug)]
pub(super) struct PoolEntry {
    pool: Arc<Pool>,
    counted: bool,
    retry_granted: bool,
}

impl Drop for PoolEntry {
    fn drop(&mut self) {
        if self.counted {
            self.pool.retry_budget.request_ended(self.retry_granted);
        }
    }
}

impl RequestCtx {
    /// The pool serving the request, once routed.
    pub(super) fn pool(&self) -> Option<&Arc<Pool>> {
        self.entry.as_ref().map(|e| &e.pool)
    }

    /// Routes the request to `pool`.
    pub(super) fn enter(&mut self, pool: Option<&Arc<Pool>>) {
        if let Some(pool) = pool {
            self.entry = Some(PoolEntry {
                pool: Arc::clone(pool),
                counted: false,
                retry_granted: false,
            });
        }
    }

    /// Counts the request in its pool's requests in flight, the retry budget's base,
    /// once it is sent there (a request the cache answers never is), until the
    /// context is dropped.
    pub(super) fn sent_to_pool(&mut self) {
        if let Some(entry) = self.entry.as_mut()
            && !entry.counted
        {
            entry.pool.retry_budget.request_started();
            entry.counted = true;
        }
    }

    /// Whether one more attempt may go to another backend, given the backends already
    /// tried (`tried`, the one that just failed included): within the pool's `retries`,
    /// with a candidate left, and — if `budgeted`, for the first retry — within the retry
    /// budget. Retries of an attempt the backend never answered are not budgeted: a
    /// refused or reset connection did no work there, so they cannot multiply its load,
    /// and `retries` bounds them.
    pub(super) fn may_retry(&mut self, tried: &[usize], budgeted: bool) -> bool {
        let Some(entry) = self.entry.as_mut() else {
            return false;
        };
        let pool = &entry.pool;
        if tried.len().saturating_sub(1) >= pool.retries as usize || !pool.has_candidate(tried) {
            return false;
        }
        if budgeted && !entry.retry_granted {
            if !pool.retry_budget.grant() {
                pool.telemetry.retry_budget_exhausted();
                return false;
            }
            entry.retry_granted = true;
        }
        true
    }

    /// The backends tried so far, the current attempt's included.
    pub(super) fn tried(&self) -> Vec<usize> {
        let mut tried = self.excluded.clone();
        tried.extend(self.attempt.as_ref().map(|a| a.backend));
        tried
    }

    /// Ends the current attempt, if any, telling the pool how it went.
    pub(super) fn release(&mut self, failed: bool) {
        let (Some(PoolEntry { pool, .. }), Some(a)) = (&self.entry, self.attempt.take()) else {
            return;
        };
        let status = if failed { 0 } else { a.status };
        self.upstream_time = a.time_to_header;
        let latency = a.time_to_header.unwrap_or_else(|| a.started.elapsed());
        pool.finish(&a.balancer, a.shadow, a.backend, status, latency);
    }
}
