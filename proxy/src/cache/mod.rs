//! The response cache: routes with `cache = { use = … }` are answered from a bounded
//! store when RFC 9111 allows, and fill it from their pool otherwise.
//!
//! - [`policy`]: which requests and responses qualify, and for how long.
//! - [`entry`]: a stored response, and its file form.
//! - [`lru`]: the byte-bounded least-recently-used map both tiers use.
//! - [`store`]: one named cache: memory tier, disk tier, fills in progress.
//! - [`disk`]: the disk tier.
//! - [`refresh`]: the one background request that refreshes a stale entry.
//! - [`metrics`]: the `switchyard_cache_…` series.
//!
//! The request path's use of all this is in `proxy::caching`.

pub mod disk;
pub mod entry;
pub mod lru;
pub mod metrics;
pub mod policy;
pub mod refresh;
pub mod store;

use std::sync::Arc;

use crate::config::{CacheKeyPart, Config, RouteCache};
pub use metrics::CacheResult;
pub use store::{Cache, CacheError, Claim, FillGuard};

/// A route's use of a cache.
#[derive(Debug)]
pub struct CacheUse {
    pub cache: Arc<Cache>,
    pub rules: RouteCache,
}

impl CacheUse {
    /// The primary key of a request: the route's key parts, in order, written as a URL
    /// without its scheme unless `scheme` is a part (`blog.local/articles/1?page=2`).
    pub fn primary_key(&self, tls: bool, host: &str, path: &str, query: Option<&str>) -> String {
        let mut key = String::with_capacity(host.len() + path.len() + 16);
        for part in &self.rules.key {
            match part {
                CacheKeyPart::Scheme => key.push_str(if tls { "https://" } else { "http://" }),
                CacheKeyPart::Host => key.push_str(host),
                CacheKeyPart::Path => key.push_str(path),
                CacheKeyPart::Query => {
                    if let Some(q) = query.filter(|q| !q.is_empty()) {
                        key.push('?');
                        key.push_str(q);
                    }
                }
            }
        }
        key
    }
}

/// Opens the caches `config` defines, keeping the entries of those `previous` had
/// under the same name and disk path.
pub fn open_caches(
    config: &Config,
    previous: &[Arc<Cache>],
    metrics: &metrics::CacheMetrics,
) -> Result<Vec<Arc<Cache>>, CacheError> {
    config
        .caches
        .iter()
        .map(|c| {
            match previous
                .iter()
                .find(|p| p.name == c.name && p.can_become(c))
            {
                Some(kept) => {
                    kept.reconfigure(c);
                    Ok(Arc::clone(kept))
                }
                None => Cache::open(c, metrics.of(&c.name)),
            }
        })
        .collect()
}

/// Each route's cache use, by route index.
pub fn route_uses(config: &Config, caches: &[Arc<Cache>]) -> Vec<Option<Arc<CacheUse>>> {
    config
        .routes
        .iter()
        .map(|route| {
            let rules = route.cache.as_ref()?;
            let cache = caches.iter().find(|c| c.name == rules.cache)?;
            Some(Arc::new(CacheUse {
                cache: Arc::clone(cache),
                rules: rules.clone(),
            }))
        })
        .collect()
}
