//! Active health checks: each backend of a pool with a `health_check` is probed every
//! `interval` — an HTTP `GET path` or a connection that opens, within `timeout` —
//! through Pingora's own connectors and the pool's own peer, so a TLS or HTTP/2 pool is
//! checked the way it is served (certificate verified, SNI sent, ALPN offered). `rise`
//! passes in a row bring a backend up, `fall` failures take it down
//! ([`crate::pool::Backend::record_check`]); a backend that is down is not healthy for
//! any plugin.
//!
//! The checker is a Pingora background service: it starts and stops with the server,
//! and reads the current runtime on each tick, so it follows configuration reloads.

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::connectors::TransportConnector;
use pingora::connectors::http::Connector as HttpConnector;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::{HttpPeer, Peer};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{HealthCheck, HealthCheckKind};
use crate::pool::Pool;
use crate::runtime::Runtime;

/// How often the checker looks for due checks.
const TICK: Duration = Duration::from_millis(50);

/// The health checker of the running proxy.
pub struct HealthChecker {
    runtime: Arc<ArcSwap<Runtime>>,
    connectors: Arc<Connectors>,
}

impl std::fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker").finish_non_exhaustive()
    }
}

/// Pingora's connectors: plain (or TLS) streams for TCP checks, HTTP sessions for HTTP.
struct Connectors {
    http: HttpConnector,
    transport: TransportConnector,
}

impl HealthChecker {
    /// A checker of the pools of `runtime`, whichever it holds at each tick.
    pub fn new(runtime: Arc<ArcSwap<Runtime>>) -> Self {
        HealthChecker {
            runtime,
            connectors: Arc::new(Connectors {
                http: HttpConnector::new(None),
                transport: TransportConnector::new(None),
            }),
        }
    }

    /// Starts the checks that are due at `now`.
    fn tick(&self, due: &mut HashMap<(String, SocketAddr), Instant>, now: Instant) {
        for pool in &self.runtime.load().pools {
            let Some(hc) = pool.health_check.clone() else {
                continue;
            };
            for (i, b) in pool.backends.iter().enumerate() {
                let next = due.entry((pool.name.clone(), b.addr)).or_insert(now);
                if *next > now {
                    continue;
                }
                // timeout <= interval (validated), so checks of one backend never overlap.
                *next = now + hc.interval;
                let Some(peer) = pool.peer(i) else { continue };
                let (pool, hc) = (Arc::clone(pool), hc.clone());
                let connectors = Arc::clone(&self.connectors);
                tokio::spawn(async move {
                    let outcome = probe(&connectors, peer, &hc, &pool).await;
                    let detail = outcome.as_ref().err().map_or(String::new(), |e| e.clone());
                    pool.record_check(i, outcome.is_ok(), &detail);
                });
            }
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Next due time per (pool, backend address); checks in flight are not repeated.
        let mut due = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => self.tick(&mut due, Instant::now()),
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// One check of `peer`: `Ok` when it passes, else why not.
async fn probe(
    connectors: &Connectors,
    mut peer: HttpPeer,
    hc: &HealthCheck,
    pool: &Pool,
) -> Result<(), String> {
    let options = &mut peer.options;
    options.connection_timeout = Some(hc.timeout);
    options.total_connection_timeout = Some(hc.timeout);
    options.read_timeout = Some(hc.timeout);
    options.write_timeout = Some(hc.timeout);
    let attempt = async {
        let HealthCheckKind::Http { path, expect } = &hc.kind else {
            return connectors
                .transport
                .get_stream(&peer)
                .await
                .map(|_| ())
                .map_err(|e| format!("connect: {e}"));
        };
        let (mut session, _reused) = connectors
            .http
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut request = RequestHeader::build("GET", path.as_bytes(), None)
            .map_err(|e| format!("request {path}: {e}"))?;
        let host = pool
            .tls
            .as_ref()
            .map(|t| t.sni.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| peer.address().to_string());
        let _ = request.insert_header("host", host);
        let _ = request.insert_header("user-agent", "switchyard-health-check");
        session
            .write_request_header(Box::new(request))
            .await
            .map_err(|e| format!("send: {e}"))?;
        session
            .finish_request_body()
            .await
            .map_err(|e| format!("send: {e}"))?;
        session
            .read_response_header()
            .await
            .map_err(|e| format!("read: {e}"))?;
        let status = session
            .response_header()
            .map(|h| h.status.as_u16())
            .ok_or("no response header")?;
        if (expect.0..=expect.1).contains(&status) {
            Ok(())
        } else {
            Err(format!(
                "status {status}, expected {}-{}",
                expect.0, expect.1
            ))
        }
    };
    tokio::time::timeout(hc.timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {:?}", hc.timeout))?
}
