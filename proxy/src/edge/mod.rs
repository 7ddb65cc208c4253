//! Native checks at the edge, before any plugin runs: the canonical request target,
//! who the client is (behind trusted proxies), per-route allow/deny lists and rate
//! limits, and the size of what a client sends.

mod rate_limit;

use ipnet::IpNet;
use pingora::http::RequestHeader;
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub use rate_limit::RateLimiter;
pub use switchyard_parse::request::{EncodedSlash, TargetError};

use crate::config::{RequestLimits, RouteConfig};
use crate::plugin::request::RequestView;
use switchyard_parse::request::{normalize_path, request_host};

/// `X-Forwarded-For`, parsed once rather than per lookup.
const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// The canonical host and path of a request (what routes, access rules and router
/// plugins judge), and, when `forward` asks for it, the normalised target (path and
/// query) a backend may be sent instead of the one received. `Err` is a request to
/// refuse with 400.
pub fn canonical_view(
    header: &RequestHeader,
    encoded_slash: EncodedSlash,
    forward: bool,
) -> Result<(RequestView, Option<String>), TargetError> {
    // At most two Host fields are looked at: a second one is refused anyway.
    let mut hosts = [""; 2];
    let mut count = 0;
    for value in header.headers.get_all(http::header::HOST).iter().take(2) {
        hosts[count] = value.to_str().map_err(|_| {
            TargetError::BadHost(String::from_utf8_lossy(value.as_bytes()).into_owned())
        })?;
        count += 1;
    }
    // An absolute-form target (`GET http://host/x`) keeps its authority in the raw
    // target, not in `uri`; HTTP/2's `:authority` is in `uri`. Pingora's classifier is
    // the one its own Host check used, so the two cannot disagree.
    let raw_target = header.raw_path();
    let absolute = pingora::http::authority::raw_target_authority(raw_target)
        .authority()
        .map(|a| {
            std::str::from_utf8(a)
                .map_err(|_| TargetError::BadHost(String::from_utf8_lossy(a).into_owned()))
        })
        .transpose()?;
    let authority = absolute.or_else(|| header.uri.authority().map(|a| a.as_str()));
    let http11 = header.version >= http::Version::HTTP_11;
    let host = request_host(&hosts[..count], authority, http11)?;
    let path = normalize_path(header.uri.path(), encoded_slash)?;
    let target = forward.then(|| match header.uri.query() {
        Some(query) => format!("{}?{query}", path.forward),
        None => path.forward,
    });
    let view = RequestView {
        host,
        path: path.matching,
        client: None,
    };
    Ok((view, target))
}

/// The client's address: the peer, or — when the peer is a trusted proxy — the
/// right-most address in `X-Forwarded-For` that is not itself trusted (nginx's
/// `real_ip_recursive on`). Addresses a client wrote further left are never believed.
pub fn client_ip(
    peer: Option<IpAddr>,
    header: &RequestHeader,
    trusted: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    if !is_in(peer, trusted) {
        return Some(peer);
    }
    let mut client = peer;
    for value in header.headers.get_all(X_FORWARDED_FOR) {
        let Ok(value) = value.to_str() else { break };
        for hop in value.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                return Some(client);
            };
            client = ip;
            if !is_in(ip, trusted) {
                return Some(client);
            }
        }
    }
    Some(client)
}

/// Whether `ip` is in one of `networks` (an IPv4-mapped IPv6 address as its IPv4 self).
pub fn is_in(ip: IpAddr, networks: &[IpNet]) -> bool {
    let ip = canonical(ip);
    networks.iter().any(|n| n.contains(&ip))
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, what a dual-stack listener
/// reports) as the IPv4 address it is, so IPv4 rules apply to it.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Why a request was refused at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 403: the client's address is denied, or not allowed.
    Forbidden,
    /// 429: the client exceeded the route's rate; try again after this long.
    RateLimited(Duration),
}

impl Refusal {
    /// Label for the `switchyard_refused_total` metric.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Forbidden => "access_denied",
            Refusal::RateLimited(_) => "rate_limited",
        }
    }
}

/// A route's access rules.
#[derive(Debug, Default)]
pub struct RoutePolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    limiter: Option<RateLimiter>,
}

impl RoutePolicy {
    /// The rules of `route`.
    pub fn new(route: &RouteConfig) -> Self {
        RoutePolicy {
            allow: route.allow.clone(),
            deny: route.deny.clone(),
            limiter: route.rate_limit.map(RateLimiter::new),
        }
    }

    /// Whether `client` may go on. An unknown client (no IP peer, e.g. a Unix socket)
    /// is judged by the rate limiter not at all and by the lists as not matching.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), Refusal> {
        let listed = |nets: &[IpNet]| client.is_some_and(|ip| is_in(ip, nets));
        if listed(&self.deny) || (!self.allow.is_empty() && !listed(&self.allow)) {
            return Err(Refusal::Forbidden);
        }
        match (&self.limiter, client) {
            (Some(limiter), Some(ip)) => limiter.take(ip, Instant::now()),
            _ => Ok(()),
        }
    }
}

/// Whether a request header is within `limits`: `Err` names the limit exceeded.
pub fn header_within(header: &RequestHeader, limits: &RequestLimits) -> Result<(), String> {
    let count = header.headers.len();
    if count > limits.max_headers {
        return Err(format!(
            "{count} header fields; at most {} are accepted",
            limits.max_headers
        ));
    }
    // Request line: method, target as sent, "HTTP/1.1", two spaces and CRLF.
    let line = header.method.as_str().len() + header.raw_path().len() + 12;
    let bytes = line
        + header
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if bytes as u64 > limits.max_header_bytes {
        return Err(format!(
            "the request header is {bytes} bytes; at most {} are accepted",
            limits.max_header_bytes
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(xff: &[&str]) -> RequestHeader {
        let mut h = RequestHeader::build("GET", b"/", None).unwrap();
        for v in xff {
            h.append_header("x-forwarded-for", *v).unwrap();
        }
        h
    }

    #[test]
    fn client_ip_believes_only_trusted_hops() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = Some("10.0.0.5".parse().unwrap());
        // A client spoofing the left-most entry is not believed.
        let h = header(&["1.1.1.1, 203.0.113.9, 10.0.0.7"]);
        assert_eq!(client_ip(peer, &h, &trusted), "203.0.113.9".parse().ok());
        // An untrusted peer's header is ignored.
        let stranger = Some("198.51.100.1".parse().unwrap());
        assert_eq!(client_ip(stranger, &h, &trusted), stranger);
        // No trusted proxies: the peer.
        assert_eq!(client_ip(peer, &h, &[]), peer);
    }

    #[test]
    fn deny_beats_allow_and_ipv4_mapped_addresses_match_ipv4_rules() {
        let route = RouteConfig {
            host: None,
            path_prefix: "/".into(),
            pool: "p".into(),
            router: None,
            allow: vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            deny: vec!["192.0.2.66/32".parse().unwrap()],
            rate_limit: None,
            cache: None,
        };
        let policy = RoutePolicy::new(&route);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert_eq!(policy.check(ip("192.0.2.1")), Ok(()));
        assert_eq!(policy.check(ip("::ffff:192.0.2.1")), Ok(()));
        assert_eq!(policy.check(ip("2001:db8::1")), Ok(()));
        assert_eq!(policy.check(ip("192.0.2.66")), Err(Refusal::Forbidden));
        assert_eq!(policy.check(ip("198.51.100.1")), Err(Refusal::Forbidden));
    }
}
