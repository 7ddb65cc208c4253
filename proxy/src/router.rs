//! Static routes: which pool serves a request, by host then longest path prefix.
//!
//! Host precedence: an exact host beats a `*.suffix` wildcard (the longest suffix
//! first), which beats routes without a host. Within the first host class that has a
//! matching route, the longest matching path prefix wins.

use crate::config::{HostPattern, RouteConfig};

#[derive(Debug)]
struct Route {
    host: Option<HostPattern>,
    path_prefix: String,
    target: Target,
}

/// Where a matched route sends a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Pool index.
    pub pool: usize,
    /// Router plugin to ask first (index into the runtime's routers), if any.
    pub router: Option<usize>,
    /// Index of the route in the configuration; `None` for the only pool without routes.
    pub route: Option<usize>,
}

/// The compiled route table.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    /// Pool for every request when no routes are configured.
    default_pool: Option<usize>,
}

impl Router {
    /// Builds the table; `pool_index` maps a pool name to its index, `router_index`
    /// a route's position to its router plugin's index, if it has one.
    pub fn new(
        routes: &[RouteConfig],
        pool_count: usize,
        pool_index: impl Fn(&str) -> Option<usize>,
        router_index: impl Fn(usize) -> Option<usize>,
    ) -> Self {
        let routes = routes
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                Some(Route {
                    host: r.host.clone(),
                    path_prefix: r.path_prefix.clone(),
                    target: Target {
                        pool: pool_index(&r.pool)?,
                        router: router_index(i),
                        route: Some(i),
                    },
                })
            })
            .collect::<Vec<_>>();
        let default_pool = (routes.is_empty() && pool_count == 1).then_some(0);
        Router {
            routes,
            default_pool,
        }
    }

    /// Where a request to `host` (lower case, no port) and `path` goes.
    pub fn route(&self, host: &str, path: &str) -> Option<Target> {
        if let Some(pool) = self.default_pool {
            return Some(Target {
                pool,
                router: None,
                route: None,
            });
        }
        // Rank: exact host 2, wildcard 1 (+ its length, so longer suffixes win), none 0.
        let rank = |h: &Option<HostPattern>| -> Option<(u8, usize)> {
            match h {
                None => Some((0, 0)),
                Some(p) if !p.matches(host) => None,
                Some(HostPattern::Exact(_)) => Some((2, 0)),
                Some(HostPattern::Suffix(s)) => Some((1, s.len())),
            }
        };
        // Strictly better only, so the first of two equal routes wins.
        let mut best: Option<((u8, usize), usize, Target)> = None;
        for r in self
            .routes
            .iter()
            .filter(|r| path.starts_with(r.path_prefix.as_str()))
        {
            let Some(rank) = rank(&r.host) else { continue };
            let key = (rank, r.path_prefix.len(), r.target);
            if best.is_none_or(|(br, bl, _)| (rank, r.path_prefix.len()) > (br, bl)) {
                best = Some(key);
            }
        }
        best.map(|(_, _, target)| target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, pool: &str) -> RouteConfig {
        RouteConfig {
            host: host.map(|h| match h.strip_prefix("*") {
                Some(suffix) => HostPattern::Suffix(suffix.to_owned()),
                None => HostPattern::Exact(h.to_owned()),
            }),
            path_prefix: prefix.to_owned(),
            pool: pool.to_owned(),
            allow: Vec::new(),
            deny: Vec::new(),
            rate_limit: None,
            cache: None,
            router: None,
        }
    }

    #[test]
    fn host_first_then_longest_prefix() {
        let pools = ["web", "api", "blog", "wild"];
        let routes = [
            route(None, "/", "web"),
            route(None, "/api", "api"),
            route(Some("blog.example.com"), "/", "blog"),
            route(Some("*.example.com"), "/", "wild"),
        ];
        let r = Router::new(
            &routes,
            pools.len(),
            |n| pools.iter().position(|p| *p == n),
            |_| None,
        );
        assert_eq!(r.route("other.org", "/").map(|t| t.pool), Some(0));
        assert_eq!(r.route("other.org", "/api/users").map(|t| t.pool), Some(1));
        assert_eq!(r.route("blog.example.com", "/api").map(|t| t.pool), Some(2));
        assert_eq!(r.route("shop.example.com", "/api").map(|t| t.pool), Some(3));
        assert_eq!(r.route("example.com", "/x").map(|t| t.pool), Some(0));
    }

    #[test]
    fn unmatched_requests_have_no_pool() {
        let pools = ["api"];
        let routes = [route(Some("api.example.com"), "/v1", "api")];
        let r = Router::new(&routes, 1, |n| pools.iter().position(|p| *p == n), |_| None);
        assert_eq!(r.route("api.example.com", "/v2").map(|t| t.pool), None);
        assert_eq!(r.route("www.example.com", "/v1").map(|t| t.pool), None);
        assert_eq!(r.route("api.example.com", "/v1/x").map(|t| t.pool), Some(0));
    }

    #[test]
    fn a_single_pool_without_routes_takes_everything() {
        let r = Router::new(&[], 1, |_| Some(0), |_| None);
        assert_eq!(r.route("any", "/thing").map(|t| t.pool), Some(0));
    }
}
