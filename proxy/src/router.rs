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
    pool: usize,
}

/// The compiled route table.
#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    /// Pool for every request when no routes are configured.
    default_pool: Option<usize>,
}

impl Router {
    /// Builds the table; `pool_index` maps a pool name to its index.
    pub fn new(
        routes: &[RouteConfig],
        pool_count: usize,
        pool_index: impl Fn(&str) -> Option<usize>,
    ) -> Self {
        let routes = routes
            .iter()
            .filter_map(|r| {
                Some(Route {
                    host: r.host.clone(),
                    path_prefix: r.path_prefix.clone(),
                    pool: pool_index(&r.pool)?,
                })
            })
            .collect::<Vec<_>>();
        let default_pool = (routes.is_empty() && pool_count == 1).then_some(0);
        Router {
            routes,
            default_pool,
        }
    }

    /// The pool for a request to `host` (lower case, no port) and `path`.
    pub fn route(&self, host: &str, path: &str) -> Option<usize> {
        if let Some(pool) = self.default_pool {
            return Some(pool);
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
        let mut best: Option<((u8, usize), usize, usize)> = None;
        for r in self
            .routes
            .iter()
            .filter(|r| path.starts_with(r.path_prefix.as_str()))
        {
            let Some(rank) = rank(&r.host) else { continue };
            let key = (rank, r.path_prefix.len(), r.pool);
            if best.is_none_or(|(br, bl, _)| (rank, r.path_prefix.len()) > (br, bl)) {
                best = Some(key);
            }
        }
        best.map(|(_, _, pool)| pool)
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
        let r = Router::new(&routes, pools.len(), |n| pools.iter().position(|p| *p == n));
        assert_eq!(r.route("other.org", "/"), Some(0));
        assert_eq!(r.route("other.org", "/api/users"), Some(1));
        assert_eq!(r.route("blog.example.com", "/api"), Some(2));
        assert_eq!(r.route("shop.example.com", "/api"), Some(3));
        assert_eq!(r.route("example.com", "/x"), Some(0));
    }

    #[test]
    fn unmatched_requests_have_no_pool() {
        let pools = ["api"];
        let routes = [route(Some("api.example.com"), "/v1", "api")];
        let r = Router::new(&routes, 1, |n| pools.iter().position(|p| *p == n));
        assert_eq!(r.route("api.example.com", "/v2"), None);
        assert_eq!(r.route("www.example.com", "/v1"), None);
        assert_eq!(r.route("api.example.com", "/v1/x"), Some(0));
    }

    #[test]
    fn a_single_pool_without_routes_takes_everything() {
        let r = Router::new(&[], 1, |_| Some(0));
        assert_eq!(r.route("any", "/thing"), Some(0));
    }
}
