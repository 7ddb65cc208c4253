//! The edge of the proxy: HTTPS listeners, client limits and access rules, and how a
//! pool talks to its backends (timeouts, retries on status, TLS, HTTP version).

use super::{ConfigError, RawPool, RawProxy, RawRoute, Validator, parse_bytes};
use ipnet::IpNet;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// After SIGTERM, time in-flight requests get before the process exits anyway.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);
/// Time to wait for a backend's response header, and between two reads of its body.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a write of the request to a backend may take.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an unused keep-alive connection to a backend is kept.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries in flight always allowed, whatever the budget (Envoy's `min_retry_concurrency`).
pub const MIN_RETRY_CONCURRENCY: u32 = 3;
/// Default retry budget: a fifth of the requests in flight (Envoy's default).
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;

/// `[[proxy.tls]]`: an HTTPS listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsListener {
    /// Address to accept TLS on.
    pub listen: SocketAddr,
    /// Certificates; the client's SNI picks the one whose names match, else the first.
    pub certificates: Vec<CertificateFiles>,
    /// Offer HTTP/2 by ALPN (on by default).
    pub http2: bool,
}

/// A PEM certificate chain and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Limits on what a client may send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLimits {
    /// Request line plus headers, in bytes; more gets 431.
    pub max_header_bytes: u64,
    /// Number of header fields; more gets 431.
    pub max_headers: usize,
    /// Request body, in bytes; more gets 413.
    pub max_body_bytes: u64,
    /// Longest wait for the client between two reads; a request that stalls gets 408.
    pub client_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_header_bytes: 32 << 10,
            max_headers: 100,
            max_body_bytes: 16 << 20,
            client_timeout: Duration::from_secs(60),
        }
    }
}

/// `[proxy] access_log`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLog {
    /// No line per request.
    Off,
    /// `key=value` text, one line per request.
    Text,
    /// One JSON object per line.
    Json,
}

/// Timeouts of one exchange with a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamTimeouts {
    /// Wait for the response header, and between reads of the body.
    pub read: Duration,
    /// One write of the request.
    pub write: Duration,
    /// An unused keep-alive connection is closed after this.
    pub idle: Duration,
}

/// TLS from the proxy to a pool's backends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTls {
    /// Server name sent and verified; empty sends none and checks the address.
    pub sni: String,
    /// Verify the backend's certificate (on by default).
    pub verify: bool,
    /// CA certificates (PEM) to verify against instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// HTTP version spoken to a pool's backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (with TLS, HTTP/2 is not offered).
    Http1,
    /// HTTP/2: by ALPN over TLS, or prior knowledge (h2c) without; what gRPC needs.
    Http2,
}

/// `rate_limit` of a route: a token bucket per client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second.
    pub per_second: u32,
    /// Bucket size: requests a client may send at once after being idle.
    pub burst: u32,
}

#[derive(Deserialize)]
pub(super) struct RawTlsListener {
    listen: Spanned<String>,
    #[serde(default)]
    certificates: Vec<Spanned<RawCertificate>>,
    http2: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct RawCertificate {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize)]
pub(super) struct RawRateLimit {
    per_second: Option<Spanned<i64>>,
    burst: Option<Spanned<i64>>,
}

/// What [`Validator::pool_upstream`] makes of a pool.
pub(super) struct PoolUpstream {
    pub timeouts: UpstreamTimeouts,
    pub retry_on: Vec<u16>,
    pub retry_budget_percent: u32,
    pub tls: Option<UpstreamTls>,
    pub protocol: UpstreamProtocol,
}

/// What [`Validator::route_access`] makes of a route.
pub(super) struct RouteAccess {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    pub rate_limit: Option<RateLimit>,
}

impl Validator<'_> {
    fn bytes(&mut self, raw: Option<&Spanned<String>>, field: &str, default: u64) -> u64 {
        let Some(raw) = raw else { return default };
        match parse_bytes(raw.get_ref()) {
            Some(n) if n > 0 => n,
            _ => {
                self.invalid(
                    raw,
                    field,
                    format!(
                        "{:?} is not a size; write a number of bytes or one with KiB, MiB or GiB, like \"64KiB\"",
                        raw.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn path(&self, raw: &Spanned<String>) -> PathBuf {
        let base = self.file.parent().unwrap_or(std::path::Path::new("."));
        base.join(raw.get_ref())
    }

    /// CIDR blocks; a bare address means just that address.
    fn networks(&mut self, raw: Option<&Spanned<Vec<Spanned<String>>>>, field: &str) -> Vec<IpNet> {
        let Some(raw) = raw else { return Vec::new() };
        let mut out = Vec::new();
        for (i, item) in raw.get_ref().iter().enumerate() {
            let text = item.get_ref().trim();
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
            match net {
                Ok(net) => out.push(net),
                Err(_) => self.invalid(
                    item,
                    format!("{field}[{i}]"),
                    format!(
                        "{text:?} is not an address or a CIDR block, like \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\""
                    ),
                ),
            }
        }
        out
    }

    pub(super) fn proxy_edge(&mut self, raw: &RawProxy, settings: &mut super::ProxySettings) {
        for (i, tls) in raw.tls.iter().enumerate() {
            let field = format!("proxy.tls[{i}]");
            let tls = tls.get_ref();
            let listen = match tls.listen.get_ref().parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.invalid(
                        &tls.listen,
                        format!("{field}.listen"),
                        format!(
                            "{:?} is not an IP address with a port, like \"0.0.0.0:443\"",
                            tls.listen.get_ref()
                        ),
                    );
                    None
                }
            };
            if tls.certificates.is_empty() {
                self.invalid(
                    &tls.listen,
                    format!("{field}.certificates"),
                    "no certificate; add certificates = [{ cert = \"site.pem\", key = \"site.key\" }]",
                );
            }
            let mut certificates = Vec::new();
            for (j, c) in tls.certificates.iter().enumerate() {
                let c = c.get_ref();
                let files = CertificateFiles {
                    cert: self.path(&c.cert),
                    key: self.path(&c.key),
                };
                for (name, raw, path) in
                    [("cert", &c.cert, &files.cert), ("key", &c.key, &files.key)]
                {
                    if !path.is_file() {
                        self.invalid(
                            raw,
                            format!("{field}.certificates[{j}].{name}"),
                            format!("{} is not a readable file", path.display()),
                        );
                    }
                }
                certificates.push(files);
            }
            if let Some(listen) = listen {
                settings.tls.push(TlsListener {
                    listen,
                    certificates,
                    http2: tls.http2.unwrap_or(true),
                });
            }
        }
        if let Some(redirect) = &raw.redirect_to_https {
            settings.redirect_to_https = *redirect.get_ref();
            if *redirect.get_ref() && raw.tls.is_empty() {
                self.invalid(
                    redirect,
                    "proxy.redirect_to_https",
                    "there is no HTTPS listener to redirect to; add a [[proxy.tls]] listener",
                );
            }
        }
        settings.grace_period = self.duration(
            raw.grace_period.as_ref(),
            "proxy.grace_period",
            DEFAULT_GRACE_PERIOD,
        );
        let defaults = RequestLimits::default();
        settings.limits.max_header_bytes = self.bytes(
            raw.max_header_bytes.as_ref(),
            "proxy.max_header_bytes",
            defaults.max_header_bytes,
        );
        if let Some(n) = &raw.max_headers {
            match usize::try_from(*n.get_ref()) {
                // Pingora's parser stops at 256 fields.
                Ok(n @ 1..=256) => settings.limits.max_headers = n,
                _ => self.invalid(
                    n,
                    "proxy.max_headers",
                    "must be a whole number from 1 to 256",
                ),
            }
        }
        settings.limits.max_body_bytes = self.bytes(
            raw.max_body_bytes.as_ref(),
            "proxy.max_body_bytes",
            defaults.max_body_bytes,
        );
        settings.limits.client_timeout = self.duration(
            raw.client_timeout.as_ref(),
            "proxy.client_timeout",
            defaults.client_timeout,
        );
        settings.trusted_proxies =
            self.networks(raw.trusted_proxies.as_ref(), "proxy.trusted_proxies");
        if let Some(log) = &raw.access_log {
            settings.access_log = match log.get_ref().as_str() {
                "off" => AccessLog::Off,
                "text" => AccessLog::Text,
                "json" => AccessLog::Json,
                other => {
                    self.invalid(
                        log,
                        "proxy.access_log",
                        format!("{other:?}: expected \"text\", \"json\" or \"off\""),
                    );
                    AccessLog::Text
                }
            };
        }
    }

    pub(super) fn pool_upstream(&mut self, i: usize, raw: &RawPool) -> PoolUpstream {
        let field = |name: &str| format!("pools[{i}].{name}");
        let timeouts = UpstreamTimeouts {
            read: self.duration(
                raw.read_timeout.as_ref(),
                &field("read_timeout"),
                DEFAULT_READ_TIMEOUT,
            ),
            write: self.duration(
                raw.write_timeout.as_ref(),
                &field("write_timeout"),
                DEFAULT_WRITE_TIMEOUT,
            ),
            idle: self.duration(
                raw.idle_timeout.as_ref(),
                &field("idle_timeout"),
                DEFAULT_IDLE_TIMEOUT,
            ),
        };
        let mut retry_on = Vec::new();
        for (j, status) in raw
            .retry_on
            .iter()
            .flat_map(|l| l.get_ref().iter())
            .enumerate()
        {
            match *status.get_ref() {
                s @ (500 | 502 | 503 | 504) => retry_on.push(s as u16),
                other => self.invalid(
                    status,
                    format!("pools[{i}].retry_on[{j}]"),
                    format!("{other} cannot be retried; retry_on takes 500, 502, 503 and 504"),
                ),
            }
        }
        let retry_budget_percent = match &raw.retry_budget_percent {
            None => DEFAULT_RETRY_BUDGET_PERCENT,
            Some(p) => match u32::try_from(*p.get_ref()) {
                Ok(p @ 0..=100) => p,
                _ => {
                    self.invalid(
                        p,
                        field("retry_budget_percent"),
                        "must be a whole number from 0 to 100",
                    );
                    DEFAULT_RETRY_BUDGET_PERCENT
                }
            },
        };
        let tls_on = raw.tls.as_ref().is_some_and(|t| *t.get_ref());
        if !tls_on {
            for (name, set) in [
                ("sni", raw.sni.as_ref().map(Spanned::span)),
                ("tls_verify", raw.tls_verify.as_ref().map(Spanned::span)),
                ("ca_file", raw.ca_file.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = set {
                    self.errors.push(ConfigError::Invalid {
                        at: self.at(span),
                        field: field(name),
                        problem: "only applies with tls = true; add tls = true to the pool or remove this".into(),
                    });
                }
            }
        }
        let tls = tls_on.then(|| UpstreamTls {
            sni: raw
                .sni
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_default(),
            verify: raw.tls_verify.as_ref().is_none_or(|v| *v.get_ref()),
            ca_file: raw.ca_file.as_ref().map(|c| {
                let path = self.path(c);
                if !path.is_file() {
                    self.invalid(
                        c,
                        field("ca_file"),
                        format!("{} is not a readable file", path.display()),
                    );
                }
                path
            }),
        });
        let protocol = match raw.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "http1")) => UpstreamProtocol::Http1,
            Some((_, "http2")) => UpstreamProtocol::Http2,
            Some((p, other)) => {
                self.invalid(
                    p,
                    field("protocol"),
                    format!("{other:?}: expected \"http1\" or \"http2\" (HTTP/2 by ALPN with tls, prior knowledge without)"),
                );
                UpstreamProtocol::Http1
            }
        };
        PoolUpstream {
            timeouts,
            retry_on,
            retry_budget_percent,
            tls,
            protocol,
        }
    }

    pub(super) fn route_access(&mut self, i: usize, raw: &RawRoute) -> RouteAccess {
        let allow = self.networks(raw.allow.as_ref(), &format!("routes[{i}].allow"));
        let deny = self.networks(raw.deny.as_ref(), &format!("routes[{i}].deny"));
        let rate_limit = raw.rate_limit.as_ref().and_then(|r| {
            let field = format!("routes[{i}].rate_limit");
            let Some(per_second) = &r.get_ref().per_second else {
                self.invalid(
                    r,
                    format!("{field}.per_second"),
                    "missing; add per_second = 10 (requests per second per client)",
                );
                return None;
            };
            let per_second = match u32::try_from(*per_second.get_ref()) {
                Ok(n @ 1..=1_000_000) => n,
                _ => {
                    self.invalid(
                        per_second,
                        format!("{field}.per_second"),
                        "must be a whole number from 1 to 1000000",
                    );
                    return None;
                }
            };
            let burst = match &r.get_ref().burst {
                None => per_second,
                Some(b) => match u32::try_from(*b.get_ref()) {
                    Ok(n @ 1..=1_000_000) => n,
                    _ => {
                        self.invalid(
                            b,
                            format!("{field}.burst"),
                            "must be a whole number from 1 to 1000000",
                        );
                        return None;
                    }
                },
            };
            Some(RateLimit { per_second, burst })
        });
        RouteAccess {
            allow,
            deny,
            rate_limit,
        }
    }
}
