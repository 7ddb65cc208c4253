//! `[[caches]]` and a route's `cache = { use = … }`: bounded response stores, and
//! which routes are served from them.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

use super::raw::{RawCache, RawRouteCache};
use super::validate::{Bounds, Validator};

/// Memory a cache may use when it does not say.
pub const DEFAULT_CACHE_MEMORY: u64 = 64 << 20;
/// Largest response stored when the cache does not say.
pub const DEFAULT_MAX_OBJECT: u64 = 8 << 20;
/// Disk a cache's disk tier may use when it does not say.
pub const DEFAULT_CACHE_DISK: u64 = 1 << 30;
/// How long concurrent misses wait for the first one (nginx's `proxy_cache_lock_timeout`).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// The key when a route does not say.
pub const DEFAULT_KEY: [CacheKeyPart; 3] =
    [CacheKeyPart::Host, CacheKeyPart::Path, CacheKeyPart::Query];

impl Validator<'_> {
    /// Every `[[caches]]` table, names unique.
    pub(super) fn caches(&mut self, raw: &[Spanned<RawCache>]) -> Vec<CacheConfig> {
        let mut caches: Vec<CacheConfig> = Vec::new();
        for (i, table) in raw.iter().enumerate() {
            let Some(cache) = self.cache(i, table) else {
                continue;
            };
            if caches.iter().any(|c| c.name == cache.name) {
                if let Some(name) = &table.get_ref().name {
                    self.invalid(
                        name,
                        format!("caches[{i}].name"),
                        format!(
                            "a cache named {:?} is already defined; cache names must be unique",
                            cache.name
                        ),
                    );
                }
                continue;
            }
            caches.push(cache);
        }
        caches
    }

    fn cache(&mut self, i: usize, raw: &Spanned<RawCache>) -> Option<CacheConfig> {
        let table = format!("caches[{i}]");
        let span = raw.span();
        let raw = raw.get_ref();
        let name = self.required(raw.name.as_ref(), span, &table, "name", "\"pages\"");
        let name = name.map(|n| n.get_ref().trim().to_owned());
        if let (Some(n), Some(text)) = (&name, &raw.name)
            && (n.is_empty() || n.contains(char::is_whitespace))
        {
            self.invalid(
                text,
                format!("{table}.name"),
                "must be one word, like \"pages\"",
            );
        }
        let memory_bytes = self.bytes(
            raw.memory.as_ref(),
            &format!("{table}.memory"),
            DEFAULT_CACHE_MEMORY,
        );
        let max_object_bytes = self.bytes(
            raw.max_object.as_ref(),
            &format!("{table}.max_object"),
            DEFAULT_MAX_OBJECT.min(memory_bytes),
        );
        if max_object_bytes > memory_bytes
            && let Some(text) = &raw.max_object
        {
            self.invalid(
                text,
                format!("{table}.max_object"),
                format!(
                    "{:?} is more than the cache's memory ({memory_bytes} bytes); an object that large could never be kept",
                    text.get_ref()
                ),
            );
        }
        let disk_bytes = self.bytes(
            raw.disk.as_ref(),
            &format!("{table}.disk"),
            DEFAULT_CACHE_DISK,
        );
        let disk = match (&raw.path, &raw.disk) {
            (Some(path), _) if path.get_ref().trim().is_empty() => {
                self.invalid(
                    path,
                    format!("{table}.path"),
                    "is empty; give a directory, like \"/var/cache/switchyard\"",
                );
                None
            }
            (Some(path), _) => Some(DiskTier {
                path: self.path(path),
                bytes: disk_bytes,
            }),
            (None, Some(disk)) => {
                self.invalid(
                    disk,
                    format!("{table}.disk"),
                    "bounds a disk tier, but the cache has no path; add path = \"/var/cache/switchyard\"",
                );
                None
            }
            (None, None) => None,
        };
        let default_ttl = self.duration(
            raw.default_ttl.as_ref(),
            &format!("{table}.default_ttl"),
            Duration::ZERO,
            Bounds::ANY,
        );
        let lock_timeout = self.duration(
            raw.lock_timeout.as_ref(),
            &format!("{table}.lock_timeout"),
            DEFAULT_LOCK_TIMEOUT,
            Bounds::ANY,
        );
        Some(CacheConfig {
            name: name?,
            memory_bytes,
            max_object_bytes,
            disk,
            default_ttl,
            lock_timeout,
            x_cache_header: raw.x_cache_header.as_ref().is_none_or(|b| *b.get_ref()),
        })
    }

    /// A route's `cache` table; `caches` are the names defined.
    pub(super) fn route_cache(
        &mut self,
        raw: &Spanned<RawRouteCache>,
        field: &str,
        caches: &HashSet<String>,
    ) -> Option<RouteCache> {
        let r = raw.get_ref();
        let name = self.required(r.cache.as_ref(), raw.span(), field, "use", "\"pages\"")?;
        let mut ok = true;
        if !caches.contains(name.get_ref()) {
            let mut known: Vec<_> = caches.iter().cloned().collect();
            known.sort();
            let defined = if known.is_empty() {
                "none is defined; add a [[caches]] table with this name".to_owned()
            } else {
                format!("defined caches: {}", known.join(", "))
            };
            self.invalid(
                name,
                format!("{field}.use"),
                format!("no cache named {:?}; {defined}", name.get_ref()),
            );
            ok = false;
        }
        let key = match &r.key {
            None => DEFAULT_KEY.to_vec(),
            Some(list) => {
                let mut parts = Vec::new();
                for (i, item) in list.get_ref().iter().enumerate() {
                    let part = match item.get_ref().as_str() {
                        "scheme" => CacheKeyPart::Scheme,
                        "host" => CacheKeyPart::Host,
                        "path" => CacheKeyPart::Path,
                        "query" => CacheKeyPart::Query,
                        other => {
                            self.invalid(
                                item,
                                format!("{field}.key[{i}]"),
                                format!("{other:?} is not a key part; use \"scheme\", \"host\", \"path\" or \"query\""),
                            );
                            ok = false;
                            continue;
                        }
                    };
                    if !parts.contains(&part) {
                        parts.push(part);
                    }
                }
                if !parts.contains(&CacheKeyPart::Path) {
                    self.invalid(
                        list,
                        format!("{field}.key"),
                        "has no \"path\": every page of the route would share one entry; add \"path\"",
                    );
                    ok = false;
                }
                parts
            }
        };
        let stale_while_revalidate = self.duration(
            r.stale_while_revalidate.as_ref(),
            &format!("{field}.stale_while_revalidate"),
            Duration::ZERO,
            Bounds::ANY,
        );
        let stale_if_error = self.duration(
            r.stale_if_error.as_ref(),
            &format!("{field}.stale_if_error"),
            Duration::ZERO,
            Bounds::ANY,
        );
        Some(RouteCache {
            cache: name.get_ref().clone(),
            key,
            stale_while_revalidate,
            stale_if_error,
            store_set_cookie: r.store_set_cookie.as_ref().is_some_and(|b| *b.get_ref()),
        })
        .filter(|_| ok)
    }
}

/// `[[caches]]`: a bounded response store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Its name, which routes' `cache.use` gives.
    pub name: String,
    /// Bound on the bodies, headers and keys held in memory.
    pub memory_bytes: u64,
    /// Larger responses pass through without being stored.
    pub max_object_bytes: u64,
    /// A disk tier that survives restarts.
    pub disk: Option<DiskTier>,
    /// Freshness of a response that gives none (no `max-age`, `s-maxage`, `Expires`).
    pub default_ttl: Duration,
    /// How long concurrent misses for one key wait for the first one's response before
    /// going to the backend themselves.
    pub lock_timeout: Duration,
    /// Whether responses carry `x-cache: HIT | MISS | …`.
    pub x_cache_header: bool,
}

/// A cache's disk tier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskTier {
    /// Directory of the entries (created if missing).
    pub path: PathBuf,
    /// Bound on the bytes of the files there.
    pub bytes: u64,
}

/// A route's use of a cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteCache {
    /// The `[[caches]]` name.
    pub cache: String,
    /// What the key is made of, in order.
    pub key: Vec<CacheKeyPart>,
    /// After freshness ends, how long the stale response is served while one
    /// background request refreshes it.
    pub stale_while_revalidate: Duration,
    /// After freshness ends, how long the stale response is served when the pool
    /// answers 5xx or cannot be reached.
    pub stale_if_error: Duration,
    /// Store responses that set cookies (without their `Set-Cookie`); by default
    /// they are not stored.
    pub store_set_cookie: bool,
}

/// One part of a cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheKeyPart {
    /// `http` or `https`.
    Scheme,
    /// The canonical host.
    Host,
    /// The canonical path.
    Path,
    /// The query string, as sent.
    Query,
}
