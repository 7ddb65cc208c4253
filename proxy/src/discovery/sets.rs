//! The last good backend set of every pool whose backends come from DNS, and the
//! counters of the lookups. A failed lookup leaves the set as it was.

use parking_lot::Mutex;
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use std::collections::HashMap;
use std::net::SocketAddr;

use crate::config::{BackendConfig, Config};
use crate::telemetry::Telemetry;

/// What changed in a pool's set.
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    /// Backends in the new answer, not in the last.
    pub added: Vec<SocketAddr>,
    /// Backends in the last answer, not in the new.
    pub removed: Vec<SocketAddr>,
}

/// Sets by pool name.
#[derive(Debug)]
pub struct DiscoveredSets {
    sets: Mutex<HashMap<String, Vec<BackendConfig>>>,
    errors: IntCounterVec,
    changes: IntCounterVec,
    size: IntGaugeVec,
}

impl DiscoveredSets {
    /// Empty, with the counters registered in `telemetry`.
    pub fn new(telemetry: &Telemetry) -> prometheus::Result<Self> {
        let errors = IntCounterVec::new(
            Opts::new(
                "switchyard_discovery_errors_total",
                "DNS lookups for a pool's backends that failed or found nothing; the last good set stays",
            ),
            &["pool"],
        )?;
        let changes = IntCounterVec::new(
            Opts::new(
                "switchyard_discovery_changes_total",
                "Times a pool's backends changed because DNS answered differently",
            ),
            &["pool"],
        )?;
        let size = IntGaugeVec::new(
            Opts::new(
                "switchyard_discovered_backends",
                "Backends of a pool as DNS last answered",
            ),
            &["pool"],
        )?;
        telemetry.register(Box::new(errors.clone()))?;
        telemetry.register(Box::new(changes.clone()))?;
        telemetry.register(Box::new(size.clone()))?;
        Ok(DiscoveredSets {
            sets: Mutex::new(HashMap::new()),
            errors,
            changes,
            size,
        })
    }

    /// True once a lookup for `pool` has succeeded.
    pub fn knows(&self, pool: &str) -> bool {
        self.sets.lock().contains_key(pool)
    }

    /// Gives every discovered pool of `config` its last good set (none yet: empty).
    pub fn fill(&self, config: &mut Config) {
        let sets = self.sets.lock();
        for pool in config.pools.iter_mut().filter(|p| p.discovery.is_some()) {
            pool.backends = sets.get(&pool.name).cloned().unwrap_or_default();
        }
    }

    /// Records a successful lookup: what changed since the last one, if anything.
    /// The set is kept sorted by address, so an answer in another order is no change.
    pub fn record(&self, pool: &str, mut set: Vec<BackendConfig>) -> Option<Change> {
        set.sort_by_key(|b| b.addr);
        set.dedup_by_key(|b| b.addr);
        self.size
            .with_label_values(&[pool])
            .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
        let mut sets = self.sets.lock();
        let old = sets.get(pool);
        if old == Some(&set) {
            return None;
        }
        let had = |addr: &SocketAddr, list: Option<&Vec<BackendConfig>>| {
            list.is_some_and(|l| l.iter().any(|b| b.addr == *addr))
        };
        let change = Change {
            added: set
                .iter()
                .map(|b| b.addr)
                .filter(|a| !had(a, old))
                .collect(),
            removed: old
                .map(|o| {
                    o.iter()
                        .map(|b| b.addr)
                        .filter(|a| !had(a, Some(&set)))
                        .collect()
                })
                .unwrap_or_default(),
        };
        if old.is_some() {
            self.changes.with_label_values(&[pool]).inc();
        }
        sets.insert(pool.to_owned(), set);
        Some(change)
    }

    /// Records a failed lookup.
    pub fn failed(&self, pool: &str) {
        self.errors.with_label_values(&[pool]).inc();
    }
}
