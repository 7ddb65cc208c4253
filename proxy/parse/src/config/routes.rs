//! `[[routes]]`: which requests go to which pool, and the access rules of each route.

use std::collections::HashSet;
use toml::Spanned;

use super::model::{HostPattern, PluginSettings, RateLimit, RouteConfig};
use super::raw::{RawRateLimit, RawRoute, Text};
use super::validate::Validator;
use crate::request::{EncodedSlash, canonical_host, normalize_path};

impl Validator<'_> {
    pub(super) fn route(
        &mut self,
        i: usize,
        raw: &Spanned<RawRoute>,
        pools: &HashSet<String>,
        caches: &HashSet<String>,
        plugins: &PluginSettings,
    ) -> Option<RouteConfig> {
        let table = format!("routes[{i}]");
        let span = raw.span();
        let raw = raw.get_ref();
        let pool = self.required(raw.pool.as_ref(), span, &table, "pool", "\"web\"");
        let mut ok = pool.is_some();
        if let Some(p) = pool.filter(|p| !pools.contains(p.get_ref())) {
            let mut known: Vec<_> = pools.iter().cloned().collect();
            known.sort();
            self.invalid(
                p,
                format!("{table}.pool"),
                format!(
                    "no pool named {:?}; defined pools: {}",
                    p.get_ref(),
                    known.join(", ")
                ),
            );
            ok = false;
        }
        let host = raw.host.as_ref().and_then(|h| {
            let pattern = self.host_pattern(h, &format!("{table}.host"));
            ok &= pattern.is_some();
            pattern
        });
        let path_prefix = match &raw.path_prefix {
            None => "/".to_owned(),
            Some(p) => self
                .path_prefix(p, &format!("{table}.path_prefix"))
                .unwrap_or_else(|| {
                    ok = false;
                    String::new()
                }),
        };
        let router = self.router_use(
            raw.router.as_ref(),
            raw.router_config.as_ref(),
            &table,
            plugins,
        );
        let allow = self.networks(raw.allow.as_ref(), &format!("{table}.allow"));
        let deny = self.networks(raw.deny.as_ref(), &format!("{table}.deny"));
        let rate_limit = raw
            .rate_limit
            .as_ref()
            .and_then(|r| self.rate_limit(r, &format!("{table}.rate_limit")));
        let cache = raw.cache.as_ref().and_then(|c| {
            let cache = self.route_cache(c, &format!("{table}.cache"), caches);
            ok &= cache.is_some();
            cache
        });
        Some(RouteConfig {
            host,
            path_prefix,
            pool: pool?.get_ref().clone(),
            router,
            allow,
            deny,
            rate_limit,
            cache,
        })
        .filter(|_| ok)
    }

    /// An exact host or `*.suffix`, canonical as requests' hosts are.
    fn host_pattern(&mut self, raw: &Text, field: &str) -> Option<HostPattern> {
        let text = raw.get_ref().trim();
        let (wildcard, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let canonical = canonical_host(name)
            .ok()
            .filter(|h| !h.is_empty() && !name.contains(':'));
        match canonical {
            Some(h) if wildcard => Some(HostPattern::Suffix(format!(".{h}"))),
            Some(h) => Some(HostPattern::Exact(h)),
            None => {
                self.invalid(raw, field, format!("{text:?} is not a host name or a \"*.example.com\" wildcard (no port, no path)"));
                None
            }
        }
    }

    /// A prefix as requests' paths are matched: it must already be canonical, or a
    /// route written `/a//b` would silently never match.
    fn path_prefix(&mut self, raw: &Text, field: &str) -> Option<String> {
        let text = raw.get_ref();
        let Ok(normal) = normalize_path(text, EncodedSlash::Keep) else {
            self.invalid(
                raw,
                field,
                format!("{text:?} must start with \"/\" and be a valid path"),
            );
            return None;
        };
        // `/api` and `/api/` are both canonical; `/a/./b` is not.
        let canonical = if text.ends_with('/') || normal.matching == "/" {
            normal.matching
        } else {
            normal.matching.trim_end_matches('/').to_owned()
        };
        if &canonical != text {
            self.invalid(raw, field, format!("{text:?} is not how requests' paths are compared (decoded, without \".\", \"..\" or \"//\"); write {canonical:?}"));
            return None;
        }
        Some(canonical)
    }

    fn rate_limit(&mut self, raw: &Spanned<RawRateLimit>, field: &str) -> Option<RateLimit> {
        let r = raw.get_ref();
        let per_second =
            self.required(r.per_second.as_ref(), raw.span(), field, "per_second", "10")?;
        let per_second = self.number(
            Some(per_second),
            &format!("{field}.per_second"),
            1..=1_000_000,
            0,
        );
        let burst = self.number(
            r.burst.as_ref(),
            &format!("{field}.burst"),
            1..=1_000_000,
            per_second,
        );
        let ipv6_prefix = self.number(
            r.ipv6_prefix.as_ref(),
            &format!("{field}.ipv6_prefix"),
            32..=128,
            64,
        ) as u8;
        (per_second > 0).then_some(RateLimit {
            per_second,
            burst,
            ipv6_prefix,
        })
    }
}
