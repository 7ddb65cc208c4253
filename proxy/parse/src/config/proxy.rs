//! `[proxy]`: listeners (plain and HTTPS), threads, limits and timeouts on clients,
//! trusted proxies, the access log, path handling; and `[metrics]`, `[admin]`.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

use super::model::{
    AccessLog, AdminSettings, CertificateFiles, ConnectionLimits, PathSettings, PluginSettings,
    ProxySettings, RequestLimits, TlsListener,
};
use super::raw::{RawAdmin, RawMetrics, RawProxy, Text};
use super::validate::{Bounds, Validator};
use super::{DEFAULT_GRACE_PERIOD, default_admin_socket};
use crate::request::EncodedSlash;

/// One address some listener binds, and where it is written.
struct Bound {
    addr: SocketAddr,
    field: String,
    span: Range<usize>,
}

impl Validator<'_> {
    /// An IP address with a port other than 0.
    fn listen_addr(&mut self, raw: &Text, field: &str, example: &str) -> Option<SocketAddr> {
        match raw.get_ref().parse::<SocketAddr>() {
            Ok(a) if a.port() == 0 => {
                self.invalid(raw, field, format!("{:?}: port 0 would bind a random port nobody can find; give a port, like {example:?}", raw.get_ref()));
                None
            }
            Ok(a) => Some(a),
            Err(_) => {
                self.invalid(
                    raw,
                    field,
                    format!(
                        "{:?} is not an IP address with a port, like {example:?}",
                        raw.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// Two listeners on one port whose addresses overlap (the same address, or one of
    /// them the unspecified address of the family) cannot both bind.
    fn no_overlap(&mut self, bound: &[Bound]) {
        for (i, b) in bound.iter().enumerate() {
            let clash = bound[..i].iter().find(|a| {
                a.addr.port() == b.addr.port()
                    && a.addr.is_ipv4() == b.addr.is_ipv4()
                    && (a.addr.ip() == b.addr.ip()
                        || a.addr.ip().is_unspecified()
                        || b.addr.ip().is_unspecified())
            });
            if let Some(a) = clash {
                let problem = format!(
                    "{} overlaps {} ({}); each address may be bound once",
                    b.addr, a.field, a.addr
                );
                self.invalid_at(b.span.clone(), b.field.clone(), problem);
            }
        }
    }

    pub(super) fn proxy(
        &mut self,
        raw: Option<Spanned<RawProxy>>,
        metrics: Option<&RawMetrics>,
        plugins: &PluginSettings,
    ) -> (ProxySettings, Option<SocketAddr>) {
        let mut settings = ProxySettings {
            listen: Vec::new(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            router: None,
            tls: Vec::new(),
            redirect_to_https: false,
            grace_period: DEFAULT_GRACE_PERIOD,
            drain_delay: Duration::ZERO,
            limits: RequestLimits::default(),
            connections: ConnectionLimits::default(),
            trusted_proxies: Vec::new(),
            access_log: AccessLog::Text,
            access_log_path: None,
            work_stealing: true,
            paths: PathSettings::default(),
        };
        let Some(raw) = raw else {
            self.invalid_at(
                0..0,
                "proxy.listen",
                "missing; add a [proxy] table with listen = [\"127.0.0.1:8080\"]",
            );
            return (settings, None);
        };
        let span = raw.span();
        let raw = raw.into_inner();
        settings.router = self.router_use(
            raw.router.as_ref(),
            raw.router_config.as_ref(),
            "proxy",
            plugins,
        );
        let mut bound = Vec::new();
        self.tls_listeners(&raw, &mut settings, &mut bound);
        match &raw.listen {
            Some(list) if list.get_ref().is_empty() && raw.tls.is_empty() => self.invalid(
                list,
                "proxy.listen",
                "is empty; give at least one address, like [\"127.0.0.1:8080\"]",
            ),
            Some(list) => {
                for (i, addr) in list.get_ref().iter().enumerate() {
                    let field = format!("proxy.listen[{i}]");
                    if let Some(a) = self.listen_addr(addr, &field, "127.0.0.1:8080") {
                        settings.listen.push(a);
                        bound.push(Bound {
                            addr: a,
                            field,
                            span: addr.span(),
                        });
                    }
                }
            }
            None if !raw.tls.is_empty() => {}
            None => {
                self.required::<Vec<Text>>(None, span, "proxy", "listen", "[\"127.0.0.1:8080\"]");
            }
        }
        let metrics = metrics.and_then(|m| m.listen.as_ref()).and_then(|l| {
            let a = self.listen_addr(l, "metrics.listen", "127.0.0.1:9100")?;
            bound.push(Bound {
                addr: a,
                field: "metrics.listen".into(),
                span: l.span(),
            });
            Some(a)
        });
        self.no_overlap(&bound);
        settings.work_stealing = raw.work_stealing.as_ref().is_none_or(|w| *w.get_ref());
        if let Some(threads) = &raw.threads {
            settings.threads = self.number(Some(threads), "proxy.threads", 1..=1024, 1) as usize;
        }
        self.client_limits(&raw, &mut settings);
        (settings, metrics)
    }

    fn tls_listeners(
        &mut self,
        raw: &RawProxy,
        settings: &mut ProxySettings,
        bound: &mut Vec<Bound>,
    ) {
        for (i, tls) in raw.tls.iter().enumerate() {
            let field = format!("proxy.tls[{i}]");
            let span = tls.span();
            let tls = tls.get_ref();
            let listen = self
                .required(
                    tls.listen.as_ref(),
                    span.clone(),
                    &field,
                    "listen",
                    "\"0.0.0.0:443\"",
                )
                .and_then(|l| {
                    let a = self.listen_addr(l, &format!("{field}.listen"), "0.0.0.0:443")?;
                    bound.push(Bound {
                        addr: a,
                        field: format!("{field}.listen"),
                        span: l.span(),
                    });
                    Some(a)
                });
            if tls.certificates.is_empty() {
                self.invalid_at(span.clone(), format!("{field}.certificates"), "no certificate; add certificates = [{ cert = \"site.pem\", key = \"site.key\" }]");
            }
            let mut certificates = Vec::new();
            for (j, c) in tls.certificates.iter().enumerate() {
                let at = format!("{field}.certificates[{j}]");
                let cert = self.required(
                    c.get_ref().cert.as_ref(),
                    c.span(),
                    &at,
                    "cert",
                    "\"site.pem\"",
                );
                let key = self.required(
                    c.get_ref().key.as_ref(),
                    c.span(),
                    &at,
                    "key",
                    "\"site.key\"",
                );
                let (Some(cert), Some(key)) = (cert, key) else {
                    continue;
                };
                let files = CertificateFiles {
                    cert: self.path(cert),
                    key: self.path(key),
                    at: self.at(c.span()),
                    field: at.clone(),
                };
                for (name, raw, path) in [("cert", cert, &files.cert), ("key", key, &files.key)] {
                    if !path.is_file() {
                        self.invalid(
                            raw,
                            format!("{at}.{name}"),
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
    }

    fn client_limits(&mut self, raw: &RawProxy, settings: &mut ProxySettings) {
        settings.grace_period = self.duration(
            raw.grace_period.as_ref(),
            "proxy.grace_period",
            DEFAULT_GRACE_PERIOD,
            Bounds::ANY,
        );
        settings.drain_delay = self.duration(
            raw.drain_delay.as_ref(),
            "proxy.drain_delay",
            Duration::ZERO,
            Bounds::ANY,
        );
        let defaults = RequestLimits::default();
        let limits = &mut settings.limits;
        limits.max_header_bytes = self.bytes(
            raw.max_header_bytes.as_ref(),
            "proxy.max_header_bytes",
            defaults.max_header_bytes,
        );
        if limits.max_header_bytes > 1 << 20 {
            if let Some(r) = &raw.max_header_bytes {
                self.invalid(r, "proxy.max_header_bytes", "must be at most 1MiB");
            }
            limits.max_header_bytes = defaults.max_header_bytes;
        }
        // Pingora's parser stops at 256 fields.
        limits.max_headers =
            self.number(raw.max_headers.as_ref(), "proxy.max_headers", 1..=256, 100) as usize;
        limits.max_body_bytes = self.bytes(
            raw.max_body_bytes.as_ref(),
            "proxy.max_body_bytes",
            defaults.max_body_bytes,
        );
        limits.client_timeout = self.duration(
            raw.client_timeout.as_ref(),
            "proxy.client_timeout",
            defaults.client_timeout,
            Bounds::POSITIVE,
        );
        limits.client_header_timeout = self.duration(
            raw.client_header_timeout.as_ref(),
            "proxy.client_header_timeout",
            defaults.client_header_timeout,
            Bounds::POSITIVE,
        );
        // Keep-alive is counted in whole seconds by Pingora; 0 turns it off.
        let whole_seconds = Bounds {
            min: Duration::ZERO,
            max: Duration::from_secs(3600),
        };
        limits.keepalive_timeout = self.duration(
            raw.keepalive_timeout.as_ref(),
            "proxy.keepalive_timeout",
            defaults.keepalive_timeout,
            whole_seconds,
        );
        if let Some(r) = raw
            .keepalive_timeout
            .as_ref()
            .filter(|_| limits.keepalive_timeout.subsec_nanos() != 0)
        {
            self.invalid(
                r,
                "proxy.keepalive_timeout",
                "must be whole seconds, like \"75s\" (\"0s\" turns keep-alive off)",
            );
        }
        let count = |v: &mut Self, raw: Option<&Spanned<i64>>, field: &str| {
            raw.map(|r| v.number(Some(r), field, 1..=1_000_000, 1) as usize)
        };
        settings.connections = ConnectionLimits {
            max: count(self, raw.max_connections.as_ref(), "proxy.max_connections"),
            per_listener: count(
                self,
                raw.max_connections_per_listener.as_ref(),
                "proxy.max_connections_per_listener",
            ),
        };
        settings.trusted_proxies =
            self.networks(raw.trusted_proxies.as_ref(), "proxy.trusted_proxies");
        if let Some(list) = &raw.trusted_proxies {
            for (i, net) in settings.trusted_proxies.iter().enumerate() {
                if net.prefix_len() == 0
                    && let Some(item) = list.get_ref().get(i)
                {
                    self.warn(item, format!("proxy.trusted_proxies[{i}]"), format!("{net} trusts every client: any client can then set its own address with X-Forwarded-For, and access lists and rate limits judge what it wrote; list only your load balancers' networks"));
                }
            }
        }
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
        if let Some(raw_path) = &raw.access_log_path {
            settings.access_log_path = self.log_file(raw_path, "proxy.access_log_path");
        }
        if let Some(mode) = &raw.normalize_path {
            settings.paths.forward_normalized = match mode.get_ref().as_str() {
                "match" => false,
                "forward" => true,
                other => {
                    self.invalid(mode, "proxy.normalize_path", format!("{other:?}: expected \"match\" (routes match the normalised path, backends get it as sent) or \"forward\" (backends get the normalised path too)"));
                    false
                }
            };
        }
        if let Some(slash) = &raw.encoded_slash {
            settings.paths.encoded_slash = match slash.get_ref().as_str() {
                "reject" => EncodedSlash::Reject,
                "keep" => EncodedSlash::Keep,
                other => {
                    self.invalid(slash, "proxy.encoded_slash", format!("{other:?}: expected \"reject\" (answer 400) or \"keep\" (match %2F as text)"));
                    EncodedSlash::Reject
                }
            };
        }
    }

    /// A file the proxy appends to: its directory must exist, and it must not be a
    /// directory itself. (Whether it can be opened is tried by `check` and `run`.)
    fn log_file(&mut self, raw: &Text, field: &str) -> Option<std::path::PathBuf> {
        self.file_to_write(
            raw,
            field,
            "/var/log/switchyard/access.log",
            "remove the key to log to stderr",
        )
    }

    /// A file the proxy will create or replace: not empty, not a directory, in a
    /// directory that exists. `example` is a path shown in the hints; `if_unwanted` says
    /// what leaving the key out does.
    fn file_to_write(
        &mut self,
        raw: &Text,
        field: &str,
        example: &str,
        if_unwanted: &str,
    ) -> Option<std::path::PathBuf> {
        if raw.get_ref().trim().is_empty() {
            self.invalid(
                raw,
                field,
                format!("empty; name a file, like \"{example}\", or {if_unwanted}"),
            );
            return None;
        }
        let path = self.path(raw);
        if path.is_dir() {
            let file_name = Path::new(example).file_name().unwrap_or_default();
            self.invalid(
                raw,
                field,
                format!(
                    "{} is a directory; name a file in it, like \"{}\"",
                    path.display(),
                    path.join(file_name).display()
                ),
            );
            return None;
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir
            && !dir.is_dir()
        {
            self.invalid(raw, field, format!("directory {} does not exist; create it, or choose a file in an existing directory", dir.display()));
            return None;
        }
        Some(path)
    }

    pub(super) fn admin(&mut self, raw: Option<RawAdmin>) -> AdminSettings {
        let (raw_socket, raw_state_file) = raw.map_or((None, None), |a| (a.socket, a.state_file));
        let socket = match raw_socket {
            Some(s) if s.get_ref().is_empty() => {
                self.invalid(
                    &s,
                    "admin.socket",
                    "is empty; give a path, like \"/run/switchyard/admin.sock\"",
                );
                default_admin_socket()
            }
            Some(s) => self.path(&s),
            None => default_admin_socket(),
        };
        let state_file = raw_state_file.and_then(|f| {
            self.file_to_write(
                &f,
                "admin.state_file",
                "/var/lib/switchyard/state.json",
                "remove the key to keep drains and weights only until the process ends",
            )
        });
        AdminSettings { socket, state_file }
    }
}
