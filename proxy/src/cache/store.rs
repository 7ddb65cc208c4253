//! One named cache: the memory tier, the optional disk tier, the fills in progress
//! (request collapsing), and its counters. It outlives configuration reloads: a
//! reload that keeps the name keeps the entries.

use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

use super::disk::Disk;
use super::entry::Entry;
use super::lru::Lru;
use super::metrics::{CacheCounters, CacheResult};
use crate::config::CacheConfig;

/// Why a cache could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "caches {name:?}: cannot use path {path}: {source}; make the directory writable by the proxy's user, or remove `path` to keep the cache in memory only"
    )]
    Disk {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One cache.
pub struct Cache {
    pub name: String,
    /// Shared, so a request that reads the settings (a miss, a refresh) does not copy
    /// them; a hit reads only `x_cache_header`.
    config: Mutex<Arc<CacheConfig>>,
    /// `config.x_cache_header`, for the hit path.
    x_cache_header: AtomicBool,
    memory: Mutex<Lru<Arc<Entry>>>,
    disk: Option<Disk>,
    /// Primary keys being fetched, and the channel their waiters watch: it closes when
    /// the fetch ends, stored or not.
    fills: Mutex<HashMap<String, watch::Receiver<()>>>,
    pub counters: CacheCounters,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.name)
            .field("disk", &self.disk)
            .finish()
    }
}

/// A request's part in a miss storm.
#[derive(Debug)]
pub enum Claim {
    /// This request fetches; the others wait until the guard is dropped.
    Fetch(FillGuard),
    /// Another request is fetching: wait for this channel to close.
    Wait(watch::Receiver<()>),
}

/// Held while a fetch for one primary key is in progress.
#[derive(Debug)]
pub struct FillGuard {
    cache: Arc<Cache>,
    primary: String,
    _done: watch::Sender<()>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        // Removed before the sender drops (after this body), so a woken waiter that
        // misses again does not find the finished fetch.
        self.cache.fills.lock().remove(&self.primary);
    }
}

impl Cache {
    /// Opens cache `config`, reading its disk tier's index.
    pub fn open(config: &CacheConfig, counters: CacheCounters) -> Result<Arc<Cache>, CacheError> {
        let disk = match &config.disk {
            None => None,
            Some(tier) => {
                let (disk, unreadable) =
                    Disk::open(&tier.path, tier.bytes).map_err(|source| CacheError::Disk {
                        name: config.name.clone(),
                        path: tier.path.clone(),
                        source,
                    })?;
                for path in unreadable {
                    tracing::warn!(cache = %config.name, file = %path.display(), "cache file unreadable; it is ignored");
                }
                Some(disk)
            }
        };
        let cache = Cache {
            name: config.name.clone(),
            config: Mutex::new(Arc::new(config.clone())),
            x_cache_header: AtomicBool::new(config.x_cache_header),
            memory: Mutex::new(Lru::new(config.memory_bytes)),
            disk,
            fills: Mutex::new(HashMap::new()),
            counters,
        };
        cache.update_gauges();
        Ok(Arc::new(cache))
    }

    /// Whether `config` can be applied to this cache in place (the same disk tier).
    pub fn can_become(&self, config: &CacheConfig) -> bool {
        self.config.lock().disk.as_ref().map(|d| &d.path) == config.disk.as_ref().map(|d| &d.path)
    }

    /// Applies new bounds and settings from a reloaded configuration.
    pub fn reconfigure(&self, config: &CacheConfig) {
        *self.config.lock() = Arc::new(config.clone());
        self.x_cache_header
            .store(config.x_cache_header, Ordering::Relaxed);
        let evicted = self.memory.lock().set_limit(config.memory_bytes);
        self.counters.memory_evictions.inc_by(evicted.len() as u64);
        if let (Some(disk), Some(tier)) = (&self.disk, &config.disk) {
            disk.set_limit(tier.bytes);
        }
        self.update_gauges();
    }

    /// The settings in force.
    pub fn config(&self) -> Arc<CacheConfig> {
        Arc::clone(&self.config.lock())
    }

    /// Whether answers carry `x-cache` (read on every hit: no lock, no copy).
    pub fn sends_x_cache(&self) -> bool {
        self.x_cache_header.load(Ordering::Relaxed)
    }

    /// The stored variant of `primary` that a request with `request` headers selects,
    /// from memory, else from disk (and then kept in memory). A request with
    /// credentials gets only an entry that says it may answer one (RFC 9111 §3.5).
    pub async fn lookup(&self, primary: &str, request: &http::HeaderMap) -> Option<Arc<Entry>> {
        let entry = self.find(primary, request).await?;
        let allowed =
            entry.policy.serves_authorized || !request.contains_key(http::header::AUTHORIZATION);
        allowed.then_some(entry)
    }

    async fn find(&self, primary: &str, request: &http::HeaderMap) -> Option<Arc<Entry>> {
        if let Some(entry) = self.memory.lock().get_variant(primary, request) {
            return Some(entry);
        }
        let path = self.disk.as_ref()?.find(primary, request)?;
        let entry = tokio::task::spawn_blocking(move || Disk::read(&path))
            .await
            .ok()??;
        let entry = Arc::new(entry);
        self.keep_in_memory(Arc::clone(&entry));
        Some(entry)
    }

    /// Stores `entry` in memory and on disk.
    pub fn store(&self, entry: Entry) -> Arc<Entry> {
        let entry = Arc::new(entry);
        if let Some(disk) = &self.disk {
            let evicted = disk.store(&entry);
            self.counters.disk_evictions.inc_by(evicted as u64);
        }
        self.keep_in_memory(Arc::clone(&entry));
        entry
    }

    fn keep_in_memory(&self, entry: Arc<Entry>) {
        let weight = entry.weight();
        let (_, evicted) = self.memory.lock().insert(
            entry.key(),
            entry.primary.clone(),
            &entry.policy.vary,
            Arc::clone(&entry),
            weight,
        );
        self.counters.memory_evictions.inc_by(evicted.len() as u64);
        self.update_gauges();
    }

    /// Fetch `primary`, or wait for the request already fetching it.
    pub fn claim(self: &Arc<Self>, primary: &str) -> Claim {
        let mut fills = self.fills.lock();
        if let Some(rx) = fills.get(primary) {
            return Claim::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        fills.insert(primary.to_owned(), rx);
        Claim::Fetch(FillGuard {
            cache: Arc::clone(self),
            primary: primary.to_owned(),
            _done: tx,
        })
    }

    /// Fetch `primary` unless a fetch is already in progress.
    pub fn try_claim(self: &Arc<Self>, primary: &str) -> Option<FillGuard> {
        match self.claim(primary) {
            Claim::Fetch(guard) => Some(guard),
            Claim::Wait(_) => None,
        }
    }

    /// Counts a request's result.
    pub fn count(&self, result: CacheResult) {
        if let Some(c) = CacheResult::ALL
            .iter()
            .position(|r| *r == result)
            .and_then(|i| self.counters.results.get(i))
        {
            c.inc();
        }
    }

    /// Removes the entries of `pattern`: a primary key, or every key starting with
    /// what comes before a final `*`. Gives how many entries went, from memory and
    /// from disk.
    pub fn purge(&self, pattern: &str) -> (usize, usize) {
        match pattern.strip_suffix('*') {
            Some(prefix) => self.remove_where(|primary| primary.starts_with(prefix)),
            None => self.purge_key(pattern),
        }
    }

    /// Removes every variant of the primary key `key`.
    pub fn purge_key(&self, key: &str) -> (usize, usize) {
        let memory = self.memory.lock().remove_primary(key).len();
        let disk = self.disk.as_ref().map_or(0, |d| d.remove_primary(key));
        if memory + disk > 0 {
            self.update_gauges();
        }
        (memory, disk)
    }

    fn remove_where(&self, matches: impl Fn(&str) -> bool + Copy) -> (usize, usize) {
        let memory = self.memory.lock().remove_where(matches).len();
        let disk = self.disk.as_ref().map_or(0, |d| d.remove_where(matches));
        self.update_gauges();
        (memory, disk)
    }

    /// What `ctl cache` shows.
    pub fn report(&self, list_keys: bool) -> Value {
        let results: serde_json::Map<String, Value> = CacheResult::ALL
            .iter()
            .zip(&self.counters.results)
            .map(|(r, c)| (r.label().to_owned(), json!(c.get())))
            .collect();
        let hits = self.counters.results[0].get();
        let served = results.values().filter_map(Value::as_u64).sum::<u64>();
        let config = self.config();
        let memory = self.memory.lock();
        let mut report = json!({
            "name": self.name,
            "entries": memory.len(),
            "bytes": memory.bytes(),
            "memory_limit": config.memory_bytes,
            "evictions": self.counters.memory_evictions.get(),
            "results": results,
            "hit_ratio": if served == 0 { 0.0 } else { hits as f64 / served as f64 },
        });
        if let Some(disk) = &self.disk {
            let (entries, bytes) = disk.usage();
            report["disk"] = json!({
                "entries": entries,
                "bytes": bytes,
                "limit": config.disk.as_ref().map_or(0, |d| d.bytes),
                "evictions": self.counters.disk_evictions.get(),
            });
        }
        if list_keys {
            let keys: Vec<Value> = memory
                .primaries()
                .into_iter()
                .take(1000)
                .map(|(key, (variants, bytes))| json!({ "key": key, "variants": variants, "bytes": bytes }))
                .collect();
            report["keys"] = Value::Array(keys);
        }
        report
    }

    fn update_gauges(&self) {
        let (entries, bytes) = {
            let memory = self.memory.lock();
            (memory.len(), memory.bytes())
        };
        self.counters.memory_entries.set(entries as i64);
        self.counters.memory_bytes.set(bytes as i64);
        if let Some(disk) = &self.disk {
            let (entries, bytes) = disk.usage();
            self.counters.disk_entries.set(entries as i64);
            self.counters.disk_bytes.set(bytes as i64);
        }
    }
}
