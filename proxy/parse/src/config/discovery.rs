//! `backends_from` and `[dns]`: pools whose backends are found in DNS — A/AAAA records
//! of a name, or SRV records — and re-resolved on an interval while the proxy runs.
//! Parsing resolves nothing: the set is found at start and after by the proxy.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use toml::Spanned;

use super::model::{Discovery, DiscoverySource, DnsSettings};
use super::raw::{RawDiscovery, RawDns};
use super::validate::{Bounds, MAX_DURATION, Validator};

/// How often a name is asked again when the pool does not say.
pub const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);
/// How long one DNS question may take.
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// A host name as DNS has it: letters, digits, `-`, `_` and dots.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

impl Validator<'_> {
    /// `backends_from` of the pool at `table`.
    pub(super) fn discovery(
        &mut self,
        table: &str,
        raw: &Spanned<RawDiscovery>,
    ) -> Option<Discovery> {
        let field = format!("{table}.backends_from");
        let interval = self.duration(
            raw.get_ref().interval.as_ref(),
            &format!("{field}.interval"),
            DEFAULT_DISCOVERY_INTERVAL,
            Bounds {
                min: Duration::from_millis(100),
                max: MAX_DURATION,
            },
        );
        let source = match (&raw.get_ref().dns, &raw.get_ref().dns_srv) {
            (Some(name), None) => self.dns_name_and_port(name, &format!("{field}.dns"))?,
            (None, Some(name)) => {
                let text = name.get_ref().trim();
                if !is_dns_name(text) {
                    self.invalid(
                        name,
                        format!("{field}.dns_srv"),
                        format!("{text:?} is not a DNS name; give the SRV name, like \"_http._tcp.blog.default.svc.cluster.local\""),
                    );
                    return None;
                }
                DiscoverySource::Srv {
                    name: text.to_owned(),
                }
            }
            (Some(_), Some(srv)) => {
                self.invalid(
                    srv,
                    format!("{field}.dns_srv"),
                    "give either dns (A/AAAA records, with a port) or dns_srv (SRV records, which carry the ports), not both",
                );
                return None;
            }
            (None, None) => {
                self.invalid(
                    raw,
                    &field,
                    "says nowhere to look; add dns = \"blog.internal:8080\" or dns_srv = \"_http._tcp.blog.internal\"",
                );
                return None;
            }
        };
        Some(Discovery { source, interval })
    }

    fn dns_name_and_port(&mut self, raw: &Spanned<String>, field: &str) -> Option<DiscoverySource> {
        let text = raw.get_ref().trim();
        let Some((host, port)) = text.rsplit_once(':') else {
            self.invalid(
                raw,
                field,
                format!(
                    "{text:?} has no port; write it as \"NAME:PORT\", like \"blog.internal:8080\""
                ),
            );
            return None;
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => {
                self.invalid(
                    raw,
                    field,
                    format!("{port:?} is not a port from 1 to 65535"),
                );
                return None;
            }
        };
        if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            self.invalid(
                raw,
                field,
                format!("{host} is an address, not a name; list it under backends instead"),
            );
            return None;
        }
        if !is_dns_name(host) {
            self.invalid(raw, field, format!("{host:?} is not a DNS name"));
            return None;
        }
        Some(DiscoverySource::Address {
            host: host.to_owned(),
            port,
        })
    }

    /// `[dns]`: the name servers to ask (the system's, from /etc/resolv.conf, when
    /// none are given) and how long each question may take.
    pub(super) fn dns(&mut self, raw: Option<RawDns>) -> DnsSettings {
        let Some(raw) = raw else {
            return DnsSettings {
                servers: Vec::new(),
                timeout: DEFAULT_DNS_TIMEOUT,
            };
        };
        let timeout = self.duration(
            raw.timeout.as_ref(),
            "dns.timeout",
            DEFAULT_DNS_TIMEOUT,
            Bounds::POSITIVE,
        );
        let mut servers = Vec::new();
        for (i, item) in raw.servers.iter().flat_map(|l| l.get_ref()).enumerate() {
            let text = item.get_ref().trim();
            let parsed = text
                .parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match parsed {
                Ok(addr) => servers.push(addr),
                Err(_) => self.invalid(
                    item,
                    format!("dns.servers[{i}]"),
                    format!("{text:?} is not an address; write \"10.0.0.2\" or \"127.0.0.1:5353\""),
                ),
            }
        }
        DnsSettings { servers, timeout }
    }
}

#[cfg(test)]
mod tests {
    use super::is_dns_name;

    #[test]
    fn dns_names() {
        assert!(is_dns_name("blog.default.svc.cluster.local"));
        assert!(is_dns_name("_http._tcp.blog."));
        assert!(!is_dns_name("blog..internal"));
        assert!(!is_dns_name("blog internal"));
        assert!(!is_dns_name(""));
    }
}
