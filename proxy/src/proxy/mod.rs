//! The Pingora side: the per-request flow through the proxy, stage by stage.
//!
//! ```text
//! request_filter            admit: header limits 431, canonical host and path 400,
//!                             declared body 413, HTTPS redirect 308, client address
//!                           route: listener router → route by canonical host and path
//!                             (or 404) → the route's deny/allow 403 and rate 429 →
//!                             the route's router → pool
//! request_body_filter       body limit 413 (then a lingering close, see fail_to_proxy)
//! upstream_peer             pool.choose → plugin `select` (fallback on failure) → peer
//!   fail_to_connect         release the attempt, exclude that backend, retry if allowed
//! upstream_request_filter   X-Forwarded-*, Forwarded, hop-by-hop headers, normalised path
//! upstream_response_filter  note status and time to first byte; a `retry_on` status
//!                           becomes a retryable error
//!   error_while_proxy       idempotent requests whose backend failed before answering
//!                           are retried; `retry_on` retries within the budget
//! fail_to_proxy             the error's status (502, 504, 413…) with a body saying why
//! logging                   release the attempt → plugin `on-response`, counters, access log
//! ```

mod answer;
mod cache_state;
mod caching;
mod context;
mod from_cache;
mod stages;
mod upstream;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use context::RequestCtx;

use crate::config::AccessLog;
use crate::pool::Decision;
use crate::runtime::Runtime;
use crate::telemetry::{Refused, Telemetry};
use answer::{linger, redirect_to_https, respond};
use context::Attempt;
use stages::{Verdict, admit, route};

/// The proxy application handed to Pingora.
#[derive(Debug)]
pub struct Switchyard {
    runtime: Arc<ArcSwap<Runtime>>,
    telemetry: Arc<Telemetry>,
}

impl Switchyard {
    /// An application serving from `runtime`, counting in `telemetry`.
    pub fn new(runtime: Arc<ArcSwap<Runtime>>, telemetry: Arc<Telemetry>) -> Self {
        Switchyard { runtime, telemetry }
    }
}

#[async_trait]
impl ProxyHttp for Switchyard {
    /// Boxed: Pingora moves the context with its request future several times per
    /// request, and 700 bytes moved cost more than one allocation.
    type CTX = Box<RequestCtx>;

    /// None: Pingora's default is a disabled response-compression module, which still
    /// cost every request a context and three filter calls, and Switchyard compresses
    /// nothing.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::new(RequestCtx {
            _in_flight: Some(self.telemetry.in_flight_guard()),
            ..RequestCtx::default()
        })
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        ctx.arrived = Some(Instant::now());
        let runtime = self.runtime.load_full();
        let edge = &runtime.edge;
        ctx.access_log_on = Some(edge.access_log != AccessLog::Off);
        session.set_read_timeout(Some(edge.limits.client_timeout));
        // Requests pipelined behind this one are answered in order (RFC 9112 §9.3.2).
        session.as_downstream_mut().set_pipelining_enabled(true);
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
        let (view, normalized) = match admit(session.req_header(), edge) {
            Ok(admitted) => admitted,
            Err(answer) => return respond(session, answer, &self.telemetry).await,
        };
        ctx.view = view;
        ctx.view.client = peer;
        ctx.forward_normalized = normalized;
        if let (Some(port), false) = (edge.redirect_https_port, ctx.tls) {
            let answer = redirect_to_https(session.req_header(), &ctx.view.host, port);
            return respond(session, answer, &self.telemetry).await;
        }
        ctx.client = crate::edge::client_ip(
            peer.map(|a| a.ip()),
            session.req_header(),
            &edge.trusted_proxies,
        );
        match route(&runtime, session.req_header_mut(), ctx) {
            Verdict::Pool(i) => {
                let pool = runtime.pools.get(i);
                ctx.enter(pool);
                let cache = ctx.route.and_then(|r| runtime.route_caches.get(r)?.clone());
                match (cache, pool) {
                    (Some(cache), Some(pool)) => caching::lookup(session, ctx, &cache, pool).await,
                    _ => Ok(false),
                }
            }
            Verdict::Answer(answer) => respond(session, answer, &self.telemetry).await,
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // A body sent without a length (chunked, or HTTP/2) is counted as it arrives.
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        let limit = self.runtime.load().edge.limits.max_body_bytes;
        if ctx.body_bytes > limit {
            self.telemetry.refused(Refused::BodyTooLarge);
            ctx.error_body = Some(format!(
                "switchyard: the request body is larger than the {limit} bytes accepted\n"
            ));
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "request body over max_body_bytes",
            ));
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        ctx.sent_to_pool();
        // Pingora may ask again after an error on a reused connection: that attempt failed.
        if let Some(a) = ctx.attempt.as_ref() {
            ctx.excluded.push(a.backend);
            let answered = a.time_to_header.is_some();
            ctx.release(!answered);
        }
        let Some(pool) = ctx.pool().cloned() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request reached upstream_peer without a pool",
            ));
        };
        let deciding = Instant::now();
        let chosen = pool.choose(session.req_header_mut(), &mut ctx.view, &ctx.excluded);
        ctx.decision_time += deciding.elapsed();
        let choice = match chosen {
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
        pool.begin(choice.index);
        ctx.attempt = Some(Attempt {
            backend: choice.index,
            balancer: choice.balancer,
            shadow: choice.shadow,
            started: Instant::now(),
            status: 0,
            time_to_header: None,
        });
        ctx.decision = Some(choice.decision);
        let Some(peer) = pool.peer(choice.index) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "the chosen backend is not in the pool",
            ));
        };
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let failed = ctx.attempt.as_ref().map(|a| a.backend);
        if let Some(backend) = failed {
            ctx.excluded.push(backend);
        }
        ctx.release(true);
        let tried = ctx.excluded.clone();
        let retry = ctx.may_retry(&tried, false);
        e.set_retry(retry);
        if let (Some(pool), Some(backend)) = (ctx.pool(), failed) {
            pool.telemetry.connect_error(backend, retry);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        caching::prepare_upstream(ctx, upstream);
        upstream::prepare(
            upstream,
            ctx,
            peer,
            &self.runtime.load().edge.trusted_proxies,
        )
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let status = upstream.status.as_u16();
        let Some(a) = ctx.attempt.as_mut() else {
            return Ok(());
        };
        a.status = status;
        a.time_to_header = Some(a.started.elapsed());
        let wants_retry = ctx.pool().is_some_and(|p| p.retry_on.contains(&status))
            && session.req_header().method.is_idempotent();
        if wants_retry && ctx.may_retry(&ctx.tried(), true) {
            if let Some(pool) = ctx.pool() {
                pool.telemetry.retry();
            }
            // Nothing has gone to the client yet: Pingora asks `upstream_peer` again.
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                format!("backend answered {status}, which retry_on retries"),
            );
            e.set_retry(true);
            return Err(e);
        }
        caching::on_response(ctx, session.req_header(), upstream)
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        caching::on_body(ctx, body.as_ref(), end_of_stream);
        Ok(None)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        caching::mark_response(ctx, response);
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if caching::answering(ctx) {
            e.set_retry(false);
            return e;
        }
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated();
        if !replayable {
            e.set_retry(false);
            return e;
        }
        if matches!(e.etype(), ErrorType::HTTPStatus(_)) {
            // A `retry_on` status: upstream_response_filter decided, within the budget.
            return e;
        }
        // The backend closed or reset the connection before any byte of a response (it
        // died, or dropped a reused connection): it cannot have answered, so another
        // backend may be asked whatever the connection's age — not only, as Pingora
        // would, when it was reused.
        let unanswered = ctx
            .attempt
            .as_ref()
            .is_some_and(|a| a.time_to_header.is_none());
        let dropped = matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        );
        if unanswered && dropped {
            let retry = ctx.may_retry(&ctx.tried(), false);
            e.set_retry(retry);
            if retry && let Some(pool) = ctx.pool() {
                pool.telemetry.retry();
            }
            return e;
        }
        e.retry.decide_reuse(client_reused);
        if e.retry() {
            let retry = ctx.may_retry(&ctx.tried(), true);
            e.set_retry(retry);
        }
        e
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        caching::is_answer(error)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => match e.etype() {
                    ErrorType::ReadTimedout => {
                        let backend = ctx
                            .pool()
                            .zip(ctx.attempt.as_ref())
                            .map(|(p, a)| p.backends[a.backend].addr.to_string())
                            .unwrap_or_else(|| "the backend".to_owned());
                        ctx.error_body = Some(format!(
                            "switchyard: {backend} did not answer within the pool's read_timeout\n"
                        ));
                        504
                    }
                    _ => 502,
                },
                ErrorSource::Downstream => match e.etype() {
                    // The client is gone: nothing to answer.
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    ErrorType::ReadTimedout => {
                        self.telemetry.refused(Refused::ClientTimeout);
                        408
                    }
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0
            && let Some(status) = caching::answer_failure(session, ctx, code).await
        {
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: true,
            };
        }
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
            if code == 413 {
                linger(session).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Self::CTX) {
        // Status and time to header are set together: no header means no answer.
        let failed = ctx
            .attempt
            .as_ref()
            .is_some_and(|a| a.time_to_header.is_none());
        let tried = ctx.attempt.as_ref().map(|a| a.backend);
        let backend = tried.and_then(|i| ctx.pool().map(|p| p.backends[i].addr));
        ctx.release(failed);
        caching::invalidate_after_write(session, ctx);
        caching::on_end(ctx, e.is_some());
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let took = ctx.arrived.map_or(Duration::ZERO, |t| t.elapsed());
        match ctx.pool() {
            Some(pool) => pool.telemetry.request(tried, status, took),
            None => self.telemetry.request_outside_pools(status),
        }
        let log_on = ctx
            .access_log_on
            .unwrap_or_else(|| self.runtime.load().edge.access_log != AccessLog::Off);
        if !log_on {
            return;
        }
        let header = session.req_header();
        let micros = |d: Option<Duration>| d.map_or(0, |d| d.as_micros() as u64);
        tracing::info!(
            target: crate::logging::ACCESS_TARGET,
            client = ctx.client.map_or(String::from("-"), |ip| ip.to_string()),
            method = %header.method,
            host = %ctx.view.host,
            path = %ctx.view.path,
            status,
            pool = ctx.pool().map_or("-", |p| p.name.as_str()),
            backend = backend.map_or(String::from("-"), |a| a.to_string()),
            decision = %ctx.decision.map_or("-", Decision::as_str),
            decision_us = ctx.decision_time.as_micros() as u64,
            upstream_us = micros(ctx.upstream_time),
            total_us = micros(ctx.arrived.map(|t| t.elapsed())),
            tries = ctx.excluded.len() + usize::from(backend.is_some()),
            cache = caching::result_label(ctx),
            error = e.map(|e| e.to_string()),
            "request"
        );
    }
}
