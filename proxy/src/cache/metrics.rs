//! The caches' metrics: requests by result, bytes and entries held per tier, evictions.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// How a request was served, as `x-cache` and the metrics say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheResult {
    /// From the cache, fresh.
    Hit,
    /// From a backend; stored if it could be.
    Miss,
    /// From the cache, stale: while revalidating, or because the pool failed.
    Stale,
    /// From the cache after the backend said `304 Not Modified`.
    Revalidated,
    /// A request the cache does not answer (not GET/HEAD, an upgrade, a range…).
    Bypass,
}

impl CacheResult {
    pub const ALL: [CacheResult; 5] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::Stale,
        CacheResult::Revalidated,
        CacheResult::Bypass,
    ];

    /// The `x-cache` value.
    pub fn header(self) -> &'static str {
        match self {
            CacheResult::Hit => "HIT",
            CacheResult::Miss => "MISS",
            CacheResult::Stale => "STALE",
            CacheResult::Revalidated => "REVALIDATED",
            CacheResult::Bypass => "BYPASS",
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Stale => "stale",
            CacheResult::Revalidated => "revalidated",
            CacheResult::Bypass => "bypass",
        }
    }
}

/// The metric families, registered once per process.
#[derive(Debug, Clone)]
pub struct CacheMetrics {
    requests: IntCounterVec,
    bytes: IntGaugeVec,
    entries: IntGaugeVec,
    evictions: IntCounterVec,
}

/// One cache's series.
#[derive(Debug, Clone)]
pub struct CacheCounters {
    pub results: [IntCounter; CacheResult::ALL.len()],
    pub memory_bytes: IntGauge,
    pub memory_entries: IntGauge,
    pub memory_evictions: IntCounter,
    pub disk_bytes: IntGauge,
    pub disk_entries: IntGauge,
    pub disk_evictions: IntCounter,
}

impl CacheMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "switchyard_cache_requests_total",
                "Requests of cached routes, by cache and result (hit, miss, stale, revalidated, bypass).",
            ),
            &["cache", "result"],
        )?;
        let bytes = IntGaugeVec::new(
            Opts::new(
                "switchyard_cache_bytes",
                "Bytes a cache holds, by tier (memory, disk).",
            ),
            &["cache", "tier"],
        )?;
        let entries = IntGaugeVec::new(
            Opts::new(
                "switchyard_cache_entries",
                "Entries a cache holds, by tier.",
            ),
            &["cache", "tier"],
        )?;
        let evictions = IntCounterVec::new(
            Opts::new(
                "switchyard_cache_evictions_total",
                "Entries dropped to stay within a tier's bound.",
            ),
            &["cache", "tier"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(evictions.clone()))?;
        Ok(CacheMetrics {
            requests,
            bytes,
            entries,
            evictions,
        })
    }

    /// The series of cache `name`.
    pub fn of(&self, name: &str) -> CacheCounters {
        CacheCounters {
            results: CacheResult::ALL.map(|r| self.requests.with_label_values(&[name, r.label()])),
            memory_bytes: self.bytes.with_label_values(&[name, "memory"]),
            memory_entries: self.entries.with_label_values(&[name, "memory"]),
            memory_evictions: self.evictions.with_label_values(&[name, "memory"]),
            disk_bytes: self.bytes.with_label_values(&[name, "disk"]),
            disk_entries: self.entries.with_label_values(&[name, "disk"]),
            disk_evictions: self.evictions.with_label_values(&[name, "disk"]),
        }
    }
}
