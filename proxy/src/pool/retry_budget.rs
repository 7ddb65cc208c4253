//! The retry budget of a pool (Envoy's): retries in flight stay at most
//!
//! ```text
//! max(MIN_RETRY_CONCURRENCY, retry_budget_percent × requests in flight / 100)
//! ```
//!
//! so a failing pool cannot multiply its own load. A request takes one place when it
//! is granted its first retry and gives it back when it ends.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::config::MIN_RETRY_CONCURRENCY;

/// Requests and retries in flight in one pool.
#[derive(Debug)]
pub struct RetryBudget {
    percent: u32,
    requests: AtomicU32,
    retries: AtomicU32,
}

impl RetryBudget {
    /// A budget of `percent` of the requests in flight.
    pub fn new(percent: u32) -> Self {
        RetryBudget {
            percent,
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
        }
    }

    /// A request entered the pool; [`RetryBudget::request_ended`] must follow.
    pub fn request_started(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// A request left the pool; `retried` if it had been granted a retry.
    pub fn request_ended(&self, retried: bool) {
        self.requests.fetch_sub(1, Ordering::Relaxed);
        if retried {
            self.retries.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Grants a request its first retry if the budget allows.
    pub fn grant(&self) -> bool {
        let active = self.requests.load(Ordering::Relaxed);
        let limit = (active.saturating_mul(self.percent) / 100).max(MIN_RETRY_CONCURRENCY);
        self.retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_three_then_the_share_of_requests_in_flight() {
        let budget = RetryBudget::new(20);
        for _ in 0..10 {
            budget.request_started();
        }
        // 20 % of 10 is 2, below the floor of 3.
        assert!((0..3).all(|_| budget.grant()));
        assert!(!budget.grant());
        for _ in 0..20 {
            budget.request_started();
        }
        // 20 % of 30 is 6.
        assert!((0..3).all(|_| budget.grant()));
        assert!(!budget.grant());
        // A retried request that ends gives its place back (and one fewer in flight
        // lowers the limit: 20 % of 29 is 5, so a new request comes in first).
        budget.request_ended(true);
        assert!(!budget.grant());
        budget.request_started();
        assert!(budget.grant());
        let none = RetryBudget::new(0);
        none.request_started();
        assert_eq!((0..5).filter(|_| none.grant()).count(), 3);
    }
}
