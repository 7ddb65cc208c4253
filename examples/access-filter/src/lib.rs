//! Example router plugin: allow or deny clients by address (CIDR lists, IPv4 and IPv6).
//! A denied client gets `403`; everyone else continues to the static routes.
//!
//! ```toml
//! [proxy]
//! router = "access-filter"
//! router_config = { allow = "10.0.0.0/8, 127.0.0.1/32, ::1/128", deny = "10.6.6.0/24" }
//! ```
//!
//! Rules: a client in `deny` is refused; when `allow` is given, a client outside it is
//! refused too. `tests/routers.rs` checks the 403.

use std::net::IpAddr;
use switchyard_plugin_sdk::{Config, Decision, Request, Response, Router};

/// An address block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `"10.0.0.0/8"` or a bare address (a block of one).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?
        };
        Ok(Cidr { network, prefix })
    }

    /// True when `ip` is inside the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            _ => ip,
        };
        let (net, addr, bits) = match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u128::from(n.to_bits()), u128::from(a.to_bits()), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => (n.to_bits(), a.to_bits(), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (net >> shift) == (addr >> shift)
    }
}

fn parse_list(config: &Config, key: &str) -> Result<Vec<Cidr>, String> {
    config
        .get(key)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Cidr::parse(s).map_err(|e| format!("router_config.{key}: {e}")))
        .collect()
}

/// The allow and deny lists.
#[derive(Debug)]
pub struct AccessFilter {
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
}

impl AccessFilter {
    /// True when `ip` may pass.
    pub fn permits(&self, ip: IpAddr) -> bool {
        !self.deny.iter().any(|c| c.contains(ip))
            && (self.allow.is_empty() || self.allow.iter().any(|c| c.contains(ip)))
    }
}

impl Router for AccessFilter {
    fn init(config: &Config) -> Result<Self, String> {
        config.reject_unknown(&["allow", "deny"])?;
        Ok(AccessFilter {
            allow: parse_list(config, "allow")?,
            deny: parse_list(config, "deny")?,
        })
    }

    fn route(&mut self, request: &Request<'_>) -> Decision {
        let client = request.client_addr();
        let ip = client.parse::<std::net::SocketAddr>().map(|a| a.ip()).ok();
        match ip {
            Some(ip) if self.permits(ip) => Decision::Continue,
            _ => Decision::Respond(Response::new(
                403,
                format!("forbidden: {client} is not allowed here\n"),
            )),
        }
    }
}

switchyard_plugin_sdk::export_router!(AccessFilter);

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(allow: &str, deny: &str) -> AccessFilter {
        AccessFilter::init(&Config::new(vec![
            ("allow".into(), allow.into()),
            ("deny".into(), deny.into()),
        ]))
        .unwrap()
    }

    #[test]
    fn deny_wins_and_allow_limits() {
        let f = filter("10.0.0.0/8, ::1", "10.6.6.0/24");
        assert!(f.permits("10.1.2.3".parse().unwrap()));
        assert!(!f.permits("10.6.6.7".parse().unwrap()));
        assert!(!f.permits("192.168.1.1".parse().unwrap()));
        assert!(f.permits("::1".parse().unwrap()));
        assert!(!f.permits("::2".parse().unwrap()));
    }

    #[test]
    fn mapped_v4_and_zero_prefix() {
        let f = filter("0.0.0.0/0", "");
        assert!(f.permits("::ffff:1.2.3.4".parse().unwrap()));
        assert!(!f.permits("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn route_answers_403_to_a_denied_client_and_lets_others_continue() {
        use switchyard_plugin_sdk::testing::TestRequest;
        let mut f = filter("", "192.0.2.0/24");
        let denied = TestRequest::get("/").client("192.0.2.7:5000");
        match f.route(&denied.as_request()) {
            Decision::Respond(r) => {
                assert_eq!(r.status, 403);
                assert!(r.body.contains("192.0.2.7:5000"), "{}", r.body);
            }
            other => panic!("{other:?}"),
        }
        let other = TestRequest::get("/").client("198.51.100.1:5000");
        assert_eq!(f.route(&other.as_request()), Decision::Continue);
    }

    #[test]
    fn bad_blocks_are_named() {
        let err = AccessFilter::init(&Config::new(vec![("deny".into(), "10.0.0.0/40".into())]))
            .unwrap_err();
        assert!(
            err.contains("router_config.deny") && err.contains("0 to 32"),
            "{err}"
        );
    }
}
