//! Prometheus metrics at `[metrics] listen`, path `/metrics`.
//!
//! Request counters and durations are recorded on the data path (one labelled counter
//! increment and one histogram observation per request). Per-backend and per-plugin
//! state — health, in-flight, plugin calls and failures, reloads — is read from the
//! running configuration at scrape time, so it follows reloads without bookkeeping.

use once_cell::sync::Lazy;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::control::Control;
use crate::plugin::FailureKind;

/// Metrics recorded on the data path.
#[derive(Debug)]
pub struct DataPath {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    connect_errors: IntCounterVec,
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounterVec,
    refused: IntCounterVec,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl DataPath {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = counter(
            &registry,
            "switchyard_requests_total",
            "Requests answered, by pool, backend and status class.",
            &["pool", "backend", "class"],
        )?;
        let connect_errors = counter(
            &registry,
            "switchyard_upstream_connect_errors_total",
            "Failed connections to backends.",
            &["pool", "backend"],
        )?;
        let retries = counter(
            &registry,
            "switchyard_retries_total",
            "Requests retried on another backend.",
            &["pool"],
        )?;
        let retry_budget_exhausted = counter(
            &registry,
            "switchyard_retry_budget_exhausted_total",
            "Retries not made because the pool's retry budget was spent.",
            &["pool"],
        )?;
        let refused = counter(
            &registry,
            "switchyard_refused_total",
            "Requests refused before reaching a pool, by reason.",
            &["reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from request to response end, by pool.",
            )
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16)?),
            &["pool"],
        )?;
        registry.register(Box::new(duration.clone()))?;
        Ok(DataPath {
            registry,
            requests,
            duration,
            connect_errors,
            retries,
            retry_budget_exhausted,
            refused,
        })
    }

    /// A finished request: `status` 0 when no response was sent.
    pub fn request(&self, pool: &str, backend: &str, status: u16, took: Duration) {
        let class = match status {
            100..=599 => ["1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(status / 100 - 1)],
            _ => "none",
        };
        self.requests
            .with_label_values(&[pool, backend, class])
            .inc();
        self.duration
            .with_label_values(&[pool])
            .observe(took.as_secs_f64());
    }

    /// A request retried on another backend for its response status.
    pub fn retry(&self, pool: &str) {
        self.retries.with_label_values(&[pool]).inc();
    }

    /// A retry the budget refused.
    pub fn retry_budget_exhausted(&self, pool: &str) {
        self.retry_budget_exhausted.with_label_values(&[pool]).inc();
    }

    /// A request refused at the edge: `access_denied`, `rate_limited`,
    /// `header_too_large`, `body_too_large` or `client_timeout`.
    pub fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }

    /// A failed connection to `backend`; `retried` when another backend is tried next.
    pub fn connect_error(&self, pool: &str, backend: &str, retried: bool) {
        self.connect_errors
            .with_label_values(&[pool, backend])
            .inc();
        if retried {
            self.retries.with_label_values(&[pool]).inc();
        }
    }
}

/// The data-path metrics of this process; `None` if they could not be registered.
pub static DATA_PATH: Lazy<Option<DataPath>> = Lazy::new(|| match DataPath::new() {
    Ok(m) => Some(m),
    Err(e) => {
        tracing::error!(error = %e, "metrics disabled: cannot register them");
        None
    }
});

/// The whole exposition: data-path metrics and the state read now.
pub fn render(control: &Control) -> prometheus::Result<String> {
    let state = Registry::new();
    let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
        let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
        state.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let up = gauge(
        "switchyard_backend_up",
        "1 when the backend may take requests (health checks pass, not ejected, not draining).",
        &["pool", "backend"],
    )?;
    let in_flight = gauge(
        "switchyard_backend_in_flight",
        "Requests in flight to the backend.",
        &["pool", "backend"],
    )?;
    let calls = counter(
        &state,
        "switchyard_plugin_calls_total",
        "Calls into a plugin.",
        &["plugin"],
    )?;
    let failures = counter(
        &state,
        "switchyard_plugin_failures_total",
        "Failed or skipped plugin calls, by kind.",
        &["plugin", "kind"],
    )?;
    let reloads = counter(
        &state,
        "switchyard_reloads_total",
        "Plugin and configuration reloads, by result.",
        &["result"],
    )?;
    let runtime = control.runtime();
    for pool in &runtime.pools {
        for b in &pool.backends {
            let addr = b.addr.to_string();
            up.with_label_values(&[&pool.name, &addr])
                .set(i64::from(b.is_up() && !b.is_draining()));
            in_flight
                .with_label_values(&[&pool.name, &addr])
                .set(i64::from(b.in_flight()));
        }
    }
    let balancers = runtime.pools.iter().map(|p| {
        let b = p.balancer.load_full();
        (b.plugin().name.clone(), b.stats.snapshot())
    });
    let routers = runtime.routers.iter().map(|r| {
        let i = r.instance.load_full();
        (i.plugin().name.clone(), i.stats.snapshot())
    });
    for (plugin, (n, by_kind)) in balancers.chain(routers) {
        calls.with_label_values(&[&plugin]).inc_by(n);
        for (kind, count) in FailureKind::ALL.iter().zip(by_kind) {
            failures
                .with_label_values(&[&plugin, kind.as_str()])
                .inc_by(count);
        }
    }
    let (open, max, refused) = control.connections();
    let connections = |name: &str, help: &str, value: i64| -> prometheus::Result<()> {
        let g = prometheus::IntGauge::new(name, help)?;
        g.set(value);
        state.register(Box::new(g))
    };
    connections(
        "switchyard_connections_open",
        "Client connections held now.",
        i64::try_from(open).unwrap_or(i64::MAX),
    )?;
    connections(
        "switchyard_connections_max",
        "Most client connections held at once (max_connections).",
        i64::try_from(max).unwrap_or(i64::MAX),
    )?;
    let refused_total = prometheus::IntCounter::new(
        "switchyard_connections_refused_total",
        "Client connections closed at once because max_connections was reached.",
    )?;
    refused_total.inc_by(refused);
    state.register(Box::new(refused_total))?;
    let (ok, failed) = control.reload_counts();
    reloads.with_label_values(&["ok"]).inc_by(ok);
    reloads.with_label_values(&["failed"]).inc_by(failed);

    let mut families = state.gather();
    if let Some(data) = DATA_PATH.as_ref() {
        families.extend(data.registry.gather());
    }
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Serves `/metrics` on `addr` from a thread of its own.
pub fn start(addr: SocketAddr, control: Arc<Control>) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new().name("switchyard-metrics".into()).spawn(move || {
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { continue };
                let control = Arc::clone(&control);
                tokio::spawn(async move {
                    let mut head = vec![0u8; 4096];
                    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head)).await;
                    let Ok(Ok(n)) = read else { return };
                    let line = String::from_utf8_lossy(&head[..n]);
                    let path = line.split_whitespace().nth(1).unwrap_or("");
                    let (status, body) = if path == "/metrics" {
                        match render(&control) {
                            Ok(text) => ("200 OK", text),
                            Err(e) => ("500 Internal Server Error", format!("cannot render metrics: {e}\n")),
                        }
                    } else {
                        ("404 Not Found", "metrics are at /metrics\n".to_owned())
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        })
    })?;
    tracing::info!(%addr, "metrics at /metrics");
    Ok(())
}
