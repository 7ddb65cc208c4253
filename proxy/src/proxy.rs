//! The Pingora side: the per-request flow through the proxy.
//!
//! ```text
//! request_filter          route by host and path → pool (or 404)
//! upstream_peer           pool.choose → plugin `select` (fallback on failure) → peer
//!   fail_to_connect       release the attempt, exclude that backend, retry if allowed
//! upstream_response_filter  note status and time to first byte
//! logging                 release the attempt → plugin `on-response`, counters
//! ```

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::plugin::request::request_host;
use crate::plugin::{PoolBalancer, RouteDecision, RouterInstance};
use crate::pool::{Decision, Pool};
use crate::router::Router;

/// Everything the data path reads, swapped whole on reload.
#[derive(Debug)]
pub struct Runtime {
    /// Pools, in configuration order.
    pub pools: Vec<Arc<Pool>>,
    /// Route table.
    pub router: Router,
    /// Router plugins in use: the listener's, then the routes'.
    pub routers: Vec<RouterSlot>,
    /// Index in `routers` of the router asked about every request.
    pub listener_router: Option<usize>,
}

/// One use of a router plugin (the listener's or a route's).
#[derive(Debug)]
pub struct RouterSlot {
    /// `proxy` or `routes[N]`.
    pub site: String,
    /// Its `router_config`.
    pub config: Vec<(String, String)>,
    /// The live instance; replaced whole by a plugin reload.
    pub instance: ArcSwap<RouterInstance>,
}

impl Runtime {
    /// Index of the pool called `name`.
    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }
}

/// What the routers made of a request.
enum Routed {
    Pool(usize),
    Respond(RouteDecision),
    Continue,
}

/// Asks router `slot` about the request; a failure or an unknown pool is logged and
/// treated as `continue`, so a broken router never takes traffic down.
fn ask_router(runtime: &Runtime, slot: usize, session: &mut Session) -> Routed {
    let Some(slot) = runtime.routers.get(slot) else {
        return Routed::Continue;
    };
    let instance = slot.instance.load();
    let client = session.client_addr().and_then(|a| a.as_inet()).copied();
    match instance.route(session.req_header_mut(), client) {
        Ok(RouteDecision::Continue) => Routed::Continue,
        Ok(RouteDecision::Pool(name)) => match runtime.pool_index(&name) {
            Some(i) => Routed::Pool(i),
            None => {
                let e = instance.bad_reply(format!("chose pool {name:?}, which does not exist"));
                tracing::warn!(router = %slot.site, error = %e, "router failed; request continues to the static routes");
                Routed::Continue
            }
        },
        Ok(respond) => Routed::Respond(respond),
        Err(e) => {
            tracing::warn!(router = %slot.site, error = %e, "router failed; request continues to the static routes");
            Routed::Continue
        }
    }
}

async fn respond_decision(session: &mut Session, decision: RouteDecision) -> Result<bool> {
    let RouteDecision::Respond {
        status,
        headers,
        body,
    } = decision
    else {
        return Ok(false);
    };
    respond(session, status, headers, body).await
}

/// Sends a whole response the proxy makes itself. A header given wrong (by a router
/// plugin) is dropped, not fatal.
async fn respond(
    session: &mut Session,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
) -> Result<bool> {
    let body = Bytes::from(body);
    let mut header = ResponseHeader::build(status, Some(headers.len() + 2))?;
    let has_type = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    for (name, value) in headers {
        let _ = header.append_header(name, value);
    }
    if !has_type {
        header.insert_header("content-type", "text/plain; charset=utf-8")?;
    }
    header.insert_header("content-length", body.len().to_string())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// The proxy application handed to Pingora.
#[derive(Debug)]
pub struct Switchyard {
    runtime: Arc<ArcSwap<Runtime>>,
}

impl Switchyard {
    /// An application serving from `runtime`.
    pub fn new(runtime: Arc<ArcSwap<Runtime>>) -> Self {
        Switchyard { runtime }
    }
}

/// One attempt to send the request to a backend.
#[derive(Debug)]
struct Attempt {
    backend: usize,
    balancer: Arc<PoolBalancer>,
    started: Instant,
    status: u16,
    time_to_header: Option<Duration>,
}

/// Per-request state.
#[derive(Debug, Default)]
pub struct RequestCtx {
    pool: Option<Arc<Pool>>,
    attempt: Option<Attempt>,
    /// Backends that already failed this request.
    excluded: Vec<usize>,
    decision: Option<Decision>,
    decision_time: Duration,
    /// Body for an error response the proxy itself decided on.
    error_body: Option<String>,
    /// When the request arrived, for the duration metric.
    arrived: Option<Instant>,
}

impl RequestCtx {
    /// Ends the current attempt, if any, telling the pool how it went.
    fn release(&mut self, failed: bool) {
        let (Some(pool), Some(a)) = (&self.pool, self.attempt.take()) else {
            return;
        };
        let status = if failed { 0 } else { a.status };
        let latency = a.time_to_header.unwrap_or_else(|| a.started.elapsed());
        pool.finish(&a.balancer, a.backend, status, latency);
    }
}

#[async_trait]
impl ProxyHttp for Switchyard {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.arrived = Some(Instant::now());
        let runtime = self.runtime.load_full();
        if let Some(slot) = runtime.listener_router {
            match ask_router(&runtime, slot, session) {
                Routed::Pool(i) => {
                    ctx.pool = runtime.pools.get(i).cloned();
                    return Ok(false);
                }
                Routed::Respond(decision) => return respond_decision(session, decision).await,
                Routed::Continue => {}
            }
        }
        let header = session.req_header();
        let host = request_host(header);
        let path = header.uri.path().to_owned();
        let Some(target) = runtime.router.route(&host, &path) else {
            let text = format!("switchyard: no route for host {host:?} and path {path:?}\n");
            return respond(session, 404, Vec::new(), text).await;
        };
        let mut pool = target.pool;
        if let Some(slot) = target.router {
            match ask_router(&runtime, slot, session) {
                Routed::Pool(i) => pool = i,
                Routed::Respond(decision) => return respond_decision(session, decision).await,
                Routed::Continue => {}
            }
        }
        ctx.pool = runtime.pools.get(pool).cloned();
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Pingora may ask again after an error on a reused connection: that attempt failed.
        if let Some(a) = ctx.attempt.as_ref() {
            ctx.excluded.push(a.backend);
            ctx.release(true);
        }
        let Some(pool) = ctx.pool.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request reached upstream_peer without a pool",
            ));
        };
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        let choice = match pool.choose(session.req_header_mut(), client, &ctx.excluded) {
            Ok(Some(choice)) => choice,
            Ok(None) => {
                ctx.error_body = Some(format!(
                    "switchyard: pool {:?} has no backend left to try\n",
                    pool.name
                ));
                return Err(Error::explain(
                    ErrorType::HTTPStatus(502),
                    format!("pool {}: no backend left to try", pool.name),
                ));
            }
            Err(e) => {
                ctx.error_body = Some(format!(
                    "switchyard: pool {:?} is unavailable: its balancer plugin failed, and the pool is set to reject rather than fall back\n",
                    pool.name
                ));
                return Err(Error::explain(ErrorType::HTTPStatus(503), e.to_string()));
            }
        };
        let backend = &pool.backends[choice.index];
        pool.begin(choice.index);
        ctx.attempt = Some(Attempt {
            backend: choice.index,
            balancer: choice.balancer,
            started: Instant::now(),
            status: 0,
            time_to_header: None,
        });
        ctx.decision = Some(choice.decision);
        ctx.decision_time += choice.took;
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        peer.options.connection_timeout = Some(pool.connect_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let failed = ctx.attempt.as_ref().map(|a| a.backend);
        if let Some(backend) = failed {
            ctx.excluded.push(backend);
        }
        ctx.release(true);
        if let Some(pool) = &ctx.pool {
            let retries_used = ctx.excluded.len().saturating_sub(1);
            let retry = retries_used < pool.retries as usize && pool.has_candidate(&ctx.excluded);
            e.set_retry(retry);
            if let (Some(m), Some(b)) = (
                crate::metrics::DATA_PATH.as_ref(),
                failed.and_then(|i| pool.backends.get(i)),
            ) {
                m.connect_error(&pool.name, &b.addr.to_string(), retry);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // As nginx's $proxy_add_x_forwarded_for: append the client to what came in.
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
        {
            let forwarded = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(earlier) => format!("{earlier}, {ip}"),
                None => ip,
            };
            upstream.insert_header("x-forwarded-for", forwarded)?;
        }
        upstream.insert_header("x-forwarded-proto", "http")?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(a) = ctx.attempt.as_mut() {
            a.status = upstream.status.as_u16();
            a.time_to_header = Some(a.started.elapsed());
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    // The client is gone: nothing to answer.
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 {
            let written = match ctx.error_body.take() {
                Some(body) => {
                    session
                        .respond_error_with_body(code, Bytes::from(body))
                        .await
                }
                None => session.respond_error(code).await,
            };
            if let Err(e) = written {
                tracing::debug!(error = %e, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        // Status and time to header are set together: no header means no answer.
        let failed = ctx
            .attempt
            .as_ref()
            .is_some_and(|a| a.time_to_header.is_none());
        let backend = ctx
            .attempt
            .as_ref()
            .and_then(|a| ctx.pool.as_ref().map(|p| p.backends[a.backend].addr));
        ctx.release(failed);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let Some(m) = crate::metrics::DATA_PATH.as_ref() {
            let pool = ctx.pool.as_ref().map_or("", |p| p.name.as_str());
            let backend = backend.map_or(String::new(), |a| a.to_string());
            m.request(
                pool,
                &backend,
                status,
                ctx.arrived.map_or(Duration::ZERO, |t| t.elapsed()),
            );
        }
        tracing::debug!(
            target: "switchyard::access",
            method = %session.req_header().method,
            path = %session.req_header().uri.path(),
            status,
            pool = ctx.pool.as_ref().map_or("-", |p| p.name.as_str()),
            backend = ?backend,
            decision = ?ctx.decision,
            decision_us = ctx.decision_time.as_micros() as u64,
            error = e.map(|e| e.to_string()),
            "request"
        );
    }
}
