//! `[[pools]]`: the balancer, the backends, health checks, outlier detection, and how
//! the proxy talks to the backends (timeouts, retries, TLS, HTTP version).

use std::net::SocketAddr;
use std::time::Duration;
use toml::Spanned;

use super::model::{
    BackendConfig, HealthCheck, HealthCheckKind, OnPluginFailure, OutlierDetection, PluginSettings,
    PoolConfig, ShadowConfig, UpstreamProtocol, UpstreamTimeouts, UpstreamTls,
};
use super::raw::{RawHealthCheck, RawOutlier, RawPool};
use super::validate::{Bounds, MAX_EJECTION, Validator};
use super::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_READ_TIMEOUT, DEFAULT_RETRIES,
    DEFAULT_RETRY_BUDGET_PERCENT, DEFAULT_WRITE_TIMEOUT,
};

impl Validator<'_> {
    pub(super) fn pool(
        &mut self,
        i: usize,
        raw: &Spanned<RawPool>,
        plugins: &PluginSettings,
    ) -> Option<PoolConfig> {
        let span = raw.span();
        let table = format!("pools[{i}]");
        let raw = raw.get_ref();
        let name = self.required(raw.name.as_ref(), span.clone(), &table, "name", "\"web\"");
        let balancer = self.required(
            raw.balancer.as_ref(),
            span.clone(),
            &table,
            "balancer",
            "\"round-robin\"",
        );
        if let Some(n) = name.filter(|n| n.get_ref().trim().is_empty()) {
            self.invalid(n, format!("{table}.name"), "must not be empty");
        }
        if let Some(b) = balancer {
            self.known_plugin(b, &format!("{table}.balancer"), plugins, "plugin");
        }
        let balancer_config = self.plugin_config(
            raw.balancer_config.as_ref(),
            &format!("{table}.balancer_config"),
        );
        let shadow = self.shadow(&table, raw, plugins);
        let backends = self.backends(&table, raw, span.clone());
        let discovery = raw
            .backends_from
            .as_ref()
            .and_then(|d| self.discovery(&table, d));
        let connect_timeout = self.duration(
            raw.connect_timeout.as_ref(),
            &format!("{table}.connect_timeout"),
            DEFAULT_CONNECT_TIMEOUT,
            Bounds::POSITIVE,
        );
        let retries = self.number(
            raw.retries.as_ref(),
            &format!("{table}.retries"),
            0..=16,
            DEFAULT_RETRIES,
        );
        let on_plugin_failure = match raw
            .on_plugin_failure
            .as_ref()
            .map(|v| (v, v.get_ref().as_str()))
        {
            None | Some((_, "fallback")) => OnPluginFailure::Fallback,
            Some((_, "reject")) => OnPluginFailure::Reject,
            Some((v, other)) => {
                self.invalid(v, format!("{table}.on_plugin_failure"), format!("{other:?}: expected \"fallback\" (serve with round-robin) or \"reject\" (answer 503)"));
                OnPluginFailure::Fallback
            }
        };
        let limits = match &raw.limits {
            Some(l) => self.limits(l, &format!("{table}.limits"), &plugins.limits),
            None => plugins.limits.clone(),
        };
        let health_check = raw
            .health_check
            .as_ref()
            .and_then(|h| self.health_check(h, &format!("{table}.health_check")));
        let outlier_detection = raw
            .outlier_detection
            .as_ref()
            .map(|o| self.outlier(o, &format!("{table}.outlier_detection")));
        let timeouts = UpstreamTimeouts {
            read: self.duration(
                raw.read_timeout.as_ref(),
                &format!("{table}.read_timeout"),
                DEFAULT_READ_TIMEOUT,
                Bounds::POSITIVE,
            ),
            write: self.duration(
                raw.write_timeout.as_ref(),
                &format!("{table}.write_timeout"),
                DEFAULT_WRITE_TIMEOUT,
                Bounds::POSITIVE,
            ),
            idle: self.duration(
                raw.idle_timeout.as_ref(),
                &format!("{table}.idle_timeout"),
                DEFAULT_IDLE_TIMEOUT,
                Bounds::ANY,
            ),
        };
        let retry_on = self.retry_on(&table, raw);
        let retry_budget_percent = self.number(
            raw.retry_budget_percent.as_ref(),
            &format!("{table}.retry_budget_percent"),
            0..=100,
            DEFAULT_RETRY_BUDGET_PERCENT,
        );
        let tls = self.upstream_tls(&table, raw);
        let protocol = match raw.protocol.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "http1")) => UpstreamProtocol::Http1,
            Some((_, "http2")) => UpstreamProtocol::Http2,
            Some((p, other)) => {
                self.invalid(p, format!("{table}.protocol"), format!("{other:?}: expected \"http1\" or \"http2\" (HTTP/2 by ALPN with tls, prior knowledge without)"));
                UpstreamProtocol::Http1
            }
        };
        Some(PoolConfig {
            name: name?.get_ref().trim().to_owned(),
            balancer: balancer?.get_ref().clone(),
            balancer_at: self.at(balancer?.span()),
            balancer_config,
            shadow,
            backends,
            discovery,
            connect_timeout,
            retries,
            on_plugin_failure,
            limits,
            health_check,
            outlier_detection,
            timeouts,
            retry_on,
            retry_budget_percent,
            tls,
            protocol,
        })
    }

    /// `shadow`, `shadow_config` and `shadow_sample`.
    fn shadow(
        &mut self,
        table: &str,
        raw: &RawPool,
        plugins: &PluginSettings,
    ) -> Option<ShadowConfig> {
        let Some(name) = raw.shadow.as_ref() else {
            if let Some(v) = raw.shadow_config.as_ref() {
                self.invalid(v, format!("{table}.shadow_config"), "there is no `shadow` in this pool to configure; name the shadow plugin with shadow = \"…\"");
            }
            if let Some(v) = raw.shadow_sample.as_ref() {
                self.invalid(v, format!("{table}.shadow_sample"), "there is no `shadow` in this pool to sample for; name the shadow plugin with shadow = \"…\"");
            }
            return None;
        };
        let config = self.plugin_config(
            raw.shadow_config.as_ref(),
            &format!("{table}.shadow_config"),
        );
        let sample = match raw.shadow_sample.as_ref() {
            None => 1.0,
            Some(v) => {
                let share = match v.get_ref() {
                    toml::Value::Float(x) => Some(*x),
                    toml::Value::Integer(n) => Some(*n as f64),
                    _ => None,
                };
                match share.filter(|x| *x > 0.0 && *x <= 1.0) {
                    Some(x) => x,
                    None => {
                        self.invalid(v, format!("{table}.shadow_sample"), "must be a share of requests above 0 and at most 1, like 0.1 for one request in ten");
                        1.0
                    }
                }
            }
        };
        if !self.known_plugin(name, &format!("{table}.shadow"), plugins, "plugin") {
            return None;
        }
        Some(ShadowConfig {
            plugin: name.get_ref().clone(),
            at: self.at(name.span()),
            config,
            sample,
        })
    }

    fn backends(
        &mut self,
        table: &str,
        raw: &RawPool,
        span: std::ops::Range<usize>,
    ) -> Vec<BackendConfig> {
        let mut backends: Vec<BackendConfig> = Vec::new();
        for (j, b) in raw.backends.iter().enumerate() {
            let field = format!("{table}.backends[{j}]");
            let Some(addr) = self.required(
                b.get_ref().addr.as_ref(),
                b.span(),
                &field,
                "addr",
                "\"127.0.0.1:3000\"",
            ) else {
                continue;
            };
            let weight = b
                .get_ref()
                .weight
                .as_ref()
                .map(|w| self.number(Some(w), &format!("{field}.weight"), 1..=1_000_000, 0));
            let resolved = self.resolve(addr.get_ref());
            match (resolved, weight) {
                (Ok(resolved), weight) if weight != Some(0) => {
                    if let Some(earlier) = backends.iter().position(|o| o.addr == resolved) {
                        self.invalid(addr, format!("{field}.addr"), format!("{resolved} is already backend {earlier} of this pool; give it a higher weight instead"));
                    }
                    backends.push(BackendConfig {
                        addr: resolved,
                        weight: weight.unwrap_or(1),
                        backup: b.get_ref().backup,
                    });
                }
                (Err(problem), _) => self.invalid(addr, format!("{field}.addr"), problem),
                _ => {}
            }
        }
        match (&raw.backends_from, raw.backends.first()) {
            (None, None) => self.invalid_at(
                span,
                format!("{table}.backends"),
                "the pool has no backends; add backends = [{ addr = \"127.0.0.1:3000\" }], or backends_from = { dns = \"blog.internal:3000\" }",
            ),
            (Some(_), Some(first)) => self.invalid(
                first,
                format!("{table}.backends"),
                "a pool takes its backends from a list or from backends_from (DNS), not both; split it into two pools",
            ),
            _ => {}
        }
        backends
    }

    /// Resolves `host:port` through the resolver, naming what is wrong when it cannot.
    fn resolve(&self, text: &str) -> Result<SocketAddr, String> {
        let hint =
            "write an address with a port, like \"127.0.0.1:3000\" or \"backend.internal:8080\"";
        let bad_port = |t: &str| format!("{t:?} has port 0, to which nothing can connect; {hint}");
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return if addr.port() == 0 {
                Err(bad_port(text))
            } else {
                Ok(addr)
            };
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err(format!("{text:?} has no port; {hint}"));
        };
        let port = match port.parse::<u16>() {
            Ok(0) => return Err(bad_port(text)),
            Ok(p) if !host.is_empty() => p,
            _ => return Err(format!("{text:?} is not a valid address; {hint}")),
        };
        match self.resolver.resolve(host, port) {
            Ok(addrs) => addrs
                .first()
                .copied()
                .ok_or_else(|| format!("{text:?} resolves to no address")),
            Err(e) => Err(format!("{text:?} does not resolve ({e}); {hint}")),
        }
    }

    fn retry_on(&mut self, table: &str, raw: &RawPool) -> Vec<u16> {
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
                    format!("{table}.retry_on[{j}]"),
                    format!("{other} cannot be retried; retry_on takes 500, 502, 503 and 504"),
                ),
            }
        }
        retry_on
    }

    fn upstream_tls(&mut self, table: &str, raw: &RawPool) -> Option<UpstreamTls> {
        let tls_on = raw.tls.as_ref().is_some_and(|t| *t.get_ref());
        if !tls_on {
            for (name, set) in [
                ("sni", raw.sni.as_ref().map(Spanned::span)),
                ("tls_verify", raw.tls_verify.as_ref().map(Spanned::span)),
                ("ca_file", raw.ca_file.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = set {
                    self.invalid_at(
                        span,
                        format!("{table}.{name}"),
                        "only applies with tls = true; add tls = true to the pool or remove this",
                    );
                }
            }
            return None;
        }
        let ca_file = raw.ca_file.as_ref().map(|c| {
            let path = self.path(c);
            if !path.is_file() {
                self.invalid(
                    c,
                    format!("{table}.ca_file"),
                    format!("{} is not a readable file", path.display()),
                );
            }
            path
        });
        Some(UpstreamTls {
            sni: raw
                .sni
                .as_ref()
                .map(|s| s.get_ref().clone())
                .unwrap_or_default(),
            verify: raw.tls_verify.as_ref().is_none_or(|v| *v.get_ref()),
            ca_file,
        })
    }

    fn outlier(&mut self, raw: &Spanned<RawOutlier>, field: &str) -> OutlierDetection {
        let o = raw.get_ref();
        let ejection = Bounds {
            min: Duration::from_millis(1),
            max: MAX_EJECTION,
        };
        let base_ejection = self.duration(
            o.base_ejection.as_ref(),
            &format!("{field}.base_ejection"),
            Duration::from_secs(30),
            ejection,
        );
        let max_ejection = self.duration(
            o.max_ejection.as_ref(),
            &format!("{field}.max_ejection"),
            Duration::from_secs(300),
            ejection,
        );
        if let Some(m) = o
            .max_ejection
            .as_ref()
            .filter(|_| max_ejection < base_ejection)
        {
            self.invalid(
                m,
                format!("{field}.max_ejection"),
                "must not be shorter than base_ejection",
            );
        }
        OutlierDetection {
            consecutive_failures: self.number(
                o.consecutive_failures.as_ref(),
                &format!("{field}.consecutive_failures"),
                1..=1000,
                5,
            ),
            base_ejection,
            max_ejection,
            max_ejected_percent: self.number(
                o.max_ejected_percent.as_ref(),
                &format!("{field}.max_ejected_percent"),
                0..=100,
                50,
            ),
        }
    }

    fn health_check(&mut self, raw: &Spanned<RawHealthCheck>, field: &str) -> Option<HealthCheck> {
        let h = raw.get_ref();
        let interval = self.duration(
            h.interval.as_ref(),
            &format!("{field}.interval"),
            Duration::from_secs(2),
            Bounds::POSITIVE,
        );
        // As HAProxy's `timeout check`: no longer than the interval, so a natural
        // `interval = "500ms"` is valid without naming a timeout.
        let default_timeout = interval.min(Duration::from_secs(1));
        let timeout = self.duration(
            h.timeout.as_ref(),
            &format!("{field}.timeout"),
            default_timeout,
            Bounds::POSITIVE,
        );
        let rise = self.number(h.rise.as_ref(), &format!("{field}.rise"), 1..=100, 2);
        let fall = self.number(h.fall.as_ref(), &format!("{field}.fall"), 1..=100, 3);
        let kind = match h.kind.as_ref().map(|k| (k, k.get_ref().as_str())) {
            None | Some((_, "http")) => {
                let path = h
                    .path
                    .as_ref()
                    .map_or("/".to_owned(), |p| p.get_ref().clone());
                if let Some(p) = h.path.as_ref().filter(|p| {
                    !p.get_ref().starts_with('/')
                        || p.get_ref().bytes().any(|b| b <= b' ' || b == 0x7f)
                }) {
                    self.invalid(
                        p,
                        format!("{field}.path"),
                        "must start with \"/\" and hold no spaces or control characters",
                    );
                }
                let expect = match &h.expect_status {
                    None => (200, 399),
                    Some(e) => parse_status_range(e.get_ref()).unwrap_or_else(|| {
                        self.invalid(e, format!("{field}.expect_status"), format!("{:?}: write a status or an inclusive range, like \"200\" or \"200-399\"", e.get_ref()));
                        (200, 399)
                    }),
                };
                HealthCheckKind::Http { path, expect }
            }
            Some((_, "tcp")) => HealthCheckKind::Tcp,
            Some((k, other)) => {
                self.invalid(
                    k,
                    format!("{field}.kind"),
                    format!("{other:?}: expected \"http\" or \"tcp\""),
                );
                return None;
            }
        };
        if let Some(t) = h.timeout.as_ref().filter(|_| timeout > interval) {
            self.invalid(
                t,
                format!("{field}.timeout"),
                "must not be longer than interval",
            );
        }
        Some(HealthCheck {
            kind,
            interval,
            timeout,
            rise,
            fall,
        })
    }
}

/// `"200"` or `"200-399"`.
fn parse_status_range(text: &str) -> Option<(u16, u16)> {
    let (low, high) = text.split_once('-').unwrap_or((text, text));
    let (low, high): (u16, u16) = (low.trim().parse().ok()?, high.trim().parse().ok()?);
    ((100..=599).contains(&low) && (low..=599).contains(&high)).then_some((low, high))
}
