//! Prometheus metrics at `[metrics] listen`, path `/metrics`; on the same listener,
//! the proxy's own health for orchestrators: `/healthz` (alive) and `/ready` (serving,
//! not shutting down, a backend up in every pool).
//!
//! Request counters and durations are recorded on the data path ([`crate::telemetry`]:
//! counters resolved per pool and backend, incremented as they are). Per-backend and per-plugin
//! state — health, in-flight, plugin calls and failures, reloads — is read from the
//! running configuration at scrape time, so it follows reloads without bookkeeping.

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::control::Control;
use crate::plugin::FailureKind;

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
    let balancers = runtime.pools.iter().flat_map(|p| {
        let shadow = p.shadow.as_ref().map(|s| s.balancer.load_full());
        std::iter::once(p.balancer.load_full())
            .chain(shadow)
            .map(|b| (b.plugin().name.clone(), b.stats.snapshot()))
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
    shadows(&state, control)?;
    let (ok, failed) = control.reload_counts();
    reloads.with_label_values(&["ok"]).inc_by(ok);
    reloads.with_label_values(&["failed"]).inc_by(failed);

    let mut families = state.gather();
    families.extend(control.telemetry().gather());
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// What each pool's shadow balancer did: its agreement with the live balancer, both
/// balancers' picks per backend, its failures by kind and the samples it missed.
fn shadows(state: &Registry, control: &Control) -> prometheus::Result<()> {
    let decisions = counter(
        state,
        "switchyard_shadow_decisions_total",
        "Requests shown to a pool's shadow balancer, by whether it picked the backend the live balancer picked.",
        &["pool", "agreed"],
    )?;
    let picks = counter(
        state,
        "switchyard_shadow_picks_total",
        "The shadow balancer's picks per backend.",
        &["pool", "backend"],
    )?;
    let live_picks = counter(
        state,
        "switchyard_shadow_live_picks_total",
        "The live balancer's picks per backend, for the requests shown to the shadow.",
        &["pool", "backend"],
    )?;
    let failures = counter(
        state,
        "switchyard_shadow_failures_total",
        "Failed or skipped calls of the shadow balancer, by kind.",
        &["pool", "kind"],
    )?;
    let dropped = counter(
        state,
        "switchyard_shadow_dropped_total",
        "Requests not shown to the shadow balancer because it was behind.",
        &["pool"],
    )?;
    let runtime = control.runtime();
    for pool in &runtime.pools {
        let Some(shadow) = &pool.shadow else { continue };
        let n = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let st = &shadow.stats;
        let (samples, agreed) = (n(&st.samples), n(&st.agreed));
        decisions
            .with_label_values(&[&pool.name, "true"])
            .inc_by(agreed);
        decisions
            .with_label_values(&[&pool.name, "false"])
            .inc_by(samples.saturating_sub(agreed));
        for (i, b) in pool.backends.iter().enumerate() {
            let addr = b.addr.to_string();
            let labels = [pool.name.as_str(), addr.as_str()];
            picks
                .with_label_values(&labels)
                .inc_by(st.shadow_picks.get(i).map_or(0, n));
            live_picks
                .with_label_values(&labels)
                .inc_by(st.live_picks.get(i).map_or(0, n));
        }
        let (_, by_kind) = shadow.balancer.load().stats.snapshot();
        for (kind, count) in FailureKind::ALL.iter().zip(by_kind) {
            failures
                .with_label_values(&[&pool.name, kind.as_str()])
                .inc_by(count);
        }
        dropped
            .with_label_values(&[&pool.name])
            .inc_by(n(&st.dropped));
    }
    Ok(())
}

/// The `/metrics` endpoint: a Pingora background service serving a listener bound at
/// start (so a bind failure stops the start, with its reason).
pub struct MetricsExporter {
    listener: parking_lot::Mutex<Option<std::net::TcpListener>>,
    control: Arc<Control>,
}

impl std::fmt::Debug for MetricsExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsExporter").finish_non_exhaustive()
    }
}

impl MetricsExporter {
    /// Binds `addr`; the exporter serves it once the server starts.
    pub fn bind(addr: SocketAddr, control: Arc<Control>) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        tracing::info!(%addr, "metrics at /metrics");
        Ok(MetricsExporter {
            listener: parking_lot::Mutex::new(Some(listener)),
            control,
        })
    }
}

/// Answers one scrape on `stream`.
async fn serve(mut stream: tokio::net::TcpStream, control: Arc<Control>) {
    let mut head = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut head)).await;
    let Ok(Ok(n)) = read else { return };
    let line = String::from_utf8_lossy(&head[..n]);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/metrics" => match render(&control) {
            Ok(text) => ("200 OK", text),
            Err(e) => (
                "500 Internal Server Error",
                format!("cannot render metrics: {e}\n"),
            ),
        },
        // Alive: this process answers. (A wedged one does not, and is restarted.)
        "/healthz" => ("200 OK", "ok\n".to_owned()),
        "/ready" => match control.readiness() {
            Ok(()) => ("200 OK", "ready\n".to_owned()),
            Err(why) => ("503 Service Unavailable", format!("not ready: {why}\n")),
        },
        _ => (
            "404 Not Found",
            "this listener serves /metrics, /healthz and /ready\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for MetricsExporter {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(listener) = self.listener.lock().take() else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "the metrics listener cannot be served");
                return;
            }
        };
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(serve(stream, Arc::clone(&self.control)));
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
