//! What the response cache keeps about one request of a cached route, from lookup
//! to logging.

use bytes::Bytes;
use std::sync::Arc;
use std::time::SystemTime;

use crate::cache::entry::Entry;
use crate::cache::policy::Storable;
use crate::cache::{CacheResult, CacheUse, FillGuard};

/// What a request of a cached route has to do with the cache.
pub struct CacheState {
    pub(super) cache: Arc<CacheUse>,
    pub(super) primary: String,
    pub(super) result: CacheResult,
    /// The stored entry, past its freshness: sent for revalidation, served on error.
    pub(super) stale: Option<Arc<Entry>>,
    /// The stored validators went to the backend in place of the client's.
    pub(super) revalidating: bool,
    pub(super) fill: Option<Fill>,
    /// While held, other misses for the key wait for this request's response.
    pub(super) guard: Option<FillGuard>,
    /// An answer from the cache decided after the backend answered.
    pub(super) answer: Option<(Arc<Entry>, CacheResult)>,
}

/// A response being collected to store.
pub(super) struct Fill {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub policy: Storable,
    pub variant: String,
    pub body: Vec<u8>,
    pub max: u64,
    pub expected: Option<u64>,
}

impl std::fmt::Debug for CacheState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheState")
            .field("primary", &self.primary)
            .field("result", &self.result)
            .finish()
    }
}

impl CacheState {
    pub(super) fn new(cache: &Arc<CacheUse>, primary: String, result: CacheResult) -> Self {
        CacheState {
            cache: Arc::clone(cache),
            primary,
            result,
            stale: None,
            revalidating: false,
            fill: None,
            guard: None,
            answer: None,
        }
    }

    /// A stale entry that may be served because the pool failed.
    pub(super) fn usable_on_error(&self, now: SystemTime) -> Option<Arc<Entry>> {
        let entry = self.stale.as_ref()?;
        let window = self
            .cache
            .rules
            .stale_if_error
            .max(entry.policy.stale_if_error);
        let stale = entry.staleness(now)?;
        (entry.policy.stale_allowed && stale <= window).then(|| Arc::clone(entry))
    }

    /// Stores the collected response and lets the waiters go.
    pub(super) fn finish_fill(&mut self) {
        if let Some(fill) = self.fill.take() {
            let entry = Entry::new(
                self.primary.clone(),
                fill.variant,
                fill.status,
                &fill.headers,
                Bytes::from(fill.body),
                fill.policy,
                self.cache.rules.store_set_cookie,
            );
            self.cache.cache.store(entry);
        }
        self.guard = None;
    }
}
