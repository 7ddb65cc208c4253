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

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{AccessLog, UpstreamProtocol};
use crate::edge::{self, Refusal};
use crate::plugin::request::RequestView;
use crate::plugin::{PoolBalancer, RouteDecision};
use crate::pool::{Decision, Pool};
use crate::runtime::{EdgeSettings, Runtime};

/// Requests in progress in this process; SIGTERM waits for it to reach zero.
pub static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// After an early error response (413), how long the rest of the request body is read
/// and dropped before closing, so the client reads the response instead of a reset
/// (nginx's `lingering_close`), and how much of it at most.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 64 << 20;

/// Counts a request in [`IN_FLIGHT`] for as long as it lives.
#[derive(Debug)]
struct InFlight;

impl InFlight {
    fn new() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response the proxy makes itself.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Label of `switchyard_refused_total`, for refusals at the edge.
    reason: Option<&'static str>,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    /// A refusal at the edge, counted by `reason`.
    fn refuse(status: u16, reason: &'static str, body: String) -> Self {
        Answer {
            status,
            reason: Some(reason),
            headers: Vec::new(),
            body,
        }
    }
}

/// What routing made of a request.
enum Verdict {
    Pool(usize),
    Answer(Answer),
}

/// Sends a whole response the proxy makes itself. A header given wrong (by a router
/// plugin) is dropped, not fatal.
async fn respond(session: &mut Session, answer: Answer) -> Result<bool> {
    if let (Some(reason), Some(m)) = (answer.reason, crate::metrics::DATA_PATH.as_ref()) {
        m.refused(reason);
    }
    let body = Bytes::from(answer.body);
    let mut header = ResponseHeader::build(answer.status, Some(answer.headers.len() + 2))?;
    let has_type = answer
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    for (name, value) in answer.headers {
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

/// Appends `element` to the comma-separated list header `name` (a proxy's hop in
/// `Forwarded` or `X-Forwarded-For`), keeping every field earlier hops wrote.
fn append_to_list(header: &mut RequestHeader, name: &'static str, element: String) -> Result<()> {
    let earlier: Vec<&str> = header
        .headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if earlier.is_empty() {
        element
    } else {
        format!("{}, {element}", earlier.join(", "))
    };
    header.insert_header(name, value)
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
    attempt: Option<Attempt>,
    /// Backends that already failed this request.
    excluded: Vec<usize>,
    decision: Option<Decision>,
    decision_time: Duration,
    /// Body for an error response the proxy itself decided on.
    error_body: Option<String>,
    /// When the request arrived, for the duration metric.
    arrived: Option<Instant>,
    /// The client's address, as trusted proxies report it.
    client: Option<IpAddr>,
    /// Came over TLS.
    tls: bool,
    /// Request body bytes seen so far.
    body_bytes: u64,
    /// Canonical host and path, as routes and plugins see them.
    view: RequestView,
    /// Send the backend the normalised path.
    forward_normalized: Option<String>,
    /// The pool serving the request, which counts it while it lives.
    entry: Option<PoolEntry>,
    /// Time to the response header of the last attempt.
    upstream_time: Option<Duration>,
    _in_flight: Option<InFlight>,
}

/// A request counted in its pool's requests in flight (and retries, once granted one)
/// until dropped.
#[derive(Debug)]
struct PoolEntry {
    pool: Arc<Pool>,
    retry_granted: bool,
}

impl Drop for PoolEntry {
    fn drop(&mut self) {
        self.pool.request_ended(self.retry_granted);
    }
}

impl RequestCtx {
    /// The pool serving the request, once routed.
    fn pool(&self) -> Option<&Arc<Pool>> {
        self.entry.as_ref().map(|e| &e.pool)
    }

    /// Sends the request to `pool`, counting it there until the context is dropped.
    fn enter(&mut self, pool: Option<&Arc<Pool>>) {
        if let Some(pool) = pool {
            pool.request_started();
            self.entry = Some(PoolEntry {
                pool: Arc::clone(pool),
                retry_granted: false,
            });
        }
    }

    /// Whether one more attempt may go to another backend, given the backends already
    /// tried (`tried`, the one that just failed included): within the pool's `retries`,
    /// with a candidate left, and — if `budgeted`, for the first retry — within the retry
    /// budget. Retries of an attempt the backend never answered are not budgeted: a
    /// refused or reset connection did no work there, so they cannot multiply its load,
    /// and `retries` bounds them.
    fn may_retry(&mut self, tried: &[usize], budgeted: bool) -> bool {
        let Some(entry) = self.entry.as_mut() else {
            return false;
        };
        let pool = &entry.pool;
        if tried.len().saturating_sub(1) >= pool.retries as usize || !pool.has_candidate(tried) {
            return false;
        }
        if budgeted && !entry.retry_granted {
            if !pool.grant_retry() {
                if let Some(m) = crate::metrics::DATA_PATH.as_ref() {
                    m.retry_budget_exhausted(&pool.name);
                }
                return false;
            }
            entry.retry_granted = true;
        }
        true
    }

    /// The backends tried so far, the current attempt's included.
    fn tried(&self) -> Vec<usize> {
        let mut tried = self.excluded.clone();
        tried.extend(self.attempt.as_ref().map(|a| a.backend));
        tried
    }

    /// Ends the current attempt, if any, telling the pool how it went.
    fn release(&mut self, failed: bool) {
        let (Some(PoolEntry { pool, .. }), Some(a)) = (&self.entry, self.attempt.take()) else {
            return;
        };
        let status = if failed { 0 } else { a.status };
        self.upstream_time = a.time_to_header;
        let latency = a.time_to_header.unwrap_or_else(|| a.started.elapsed());
        pool.finish(&a.balancer, a.backend, status, latency);
    }
}

/// Stage 1: what is checked before anything is routed — header limits, the canonical
/// request target, a declared body over the limit. Gives the canonical view and the
/// normalised target (path and query).
fn admit(
    header: &RequestHeader,
    edge: &EdgeSettings,
) -> std::result::Result<(RequestView, String), Answer> {
    if let Err(problem) = edge::header_within(header, &edge.limits) {
        return Err(Answer::refuse(
            431,
            "header_too_large",
            format!("switchyard: {problem}\n"),
        ));
    }
    let view = edge::canonical_view(header, edge.paths.encoded_slash)
        .map_err(|e| Answer::refuse(400, "bad_request", format!("switchyard: {e}\n")))?;
    let declared_body = header
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared_body.is_some_and(|n| n > edge.limits.max_body_bytes) {
        let text = format!(
            "switchyard: the request body is larger than the {} bytes accepted\n",
            edge.limits.max_body_bytes
        );
        return Err(Answer::refuse(413, "body_too_large", text));
    }
    Ok(view)
}

/// 308 to the same host and path on the HTTPS listener's port.
fn redirect_to_https(header: &RequestHeader, host: &str, port: u16) -> Answer {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let authority = if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    };
    let target = header.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{authority}{target}");
    Answer {
        status: 308,
        reason: None,
        body: format!("switchyard: this site is served over HTTPS: {location}\n"),
        headers: vec![("location".to_owned(), location)],
    }
}

/// Asks router `slot` about the request; a failure or an unknown pool is logged and
/// treated as `continue`, so a broken router never takes traffic down.
fn ask_router(
    runtime: &Runtime,
    slot: usize,
    header: &mut RequestHeader,
    view: &mut RequestView,
) -> Option<Verdict> {
    let slot = runtime.routers.get(slot)?;
    let instance = slot.instance.load();
    match instance.route(header, view) {
        Ok(RouteDecision::Continue) => None,
        Ok(RouteDecision::Pool(name)) => match runtime.pool_index(&name) {
            Some(i) => Some(Verdict::Pool(i)),
            None => {
                let e = instance.bad_reply(format!("chose pool {name:?}, which does not exist"));
                tracing::warn!(router = %slot.site, error = %e, "router failed; request continues to the static routes");
                None
            }
        },
        Ok(RouteDecision::Respond {
            status,
            headers,
            body,
        }) => Some(Verdict::Answer(Answer {
            status,
            reason: None,
            headers,
            body,
        })),
        Err(e) => {
            tracing::warn!(router = %slot.site, error = %e, "router failed; request continues to the static routes");
            None
        }
    }
}

/// Stage 2: which pool serves the request — the listener's router, then the route
/// matched by canonical host and path, its access rules, then the route's router.
fn route(runtime: &Runtime, header: &mut RequestHeader, ctx: &mut RequestCtx) -> Verdict {
    if let Some(slot) = runtime.listener_router
        && let Some(verdict) = ask_router(runtime, slot, header, &mut ctx.view)
    {
        return verdict;
    }
    let Some(target) = runtime.router.route(&ctx.view.host, &ctx.view.path) else {
        let text = format!(
            "switchyard: no route for host {:?} and path {:?}\n",
            ctx.view.host, ctx.view.path
        );
        return Verdict::Answer(Answer {
            status: 404,
            reason: None,
            headers: Vec::new(),
            body: text,
        });
    };
    let policy = target.route.and_then(|r| runtime.policies.get(r));
    if let Some(refusal) = policy.and_then(|p| p.check(ctx.client).err()) {
        let answer = match refusal {
            Refusal::Forbidden => {
                let who = ctx
                    .client
                    .map_or("this client".to_owned(), |ip| ip.to_string());
                Answer::refuse(
                    403,
                    refusal.reason(),
                    format!("switchyard: {who} may not use this route\n"),
                )
            }
            Refusal::RateLimited(wait) => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut answer = Answer::refuse(
                    429,
                    refusal.reason(),
                    "switchyard: too many requests from this client; retry later\n".to_owned(),
                );
                answer
                    .headers
                    .push(("retry-after".to_owned(), seconds.max(1).to_string()));
                answer
            }
        };
        return Verdict::Answer(answer);
    }
    if let Some(slot) = target.router
        && let Some(verdict) = ask_router(runtime, slot, header, &mut ctx.view)
    {
        return verdict;
    }
    Verdict::Pool(target.pool)
}

/// Reads and drops what is left of the request body for a while, after an early
/// error response, so that closing the connection does not reset it under the client
/// before it has read the response.
async fn linger(session: &mut Session) {
    let drain = async {
        let mut read = 0;
        while read < LINGER_BYTES {
            match session.as_downstream_mut().read_request_body().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[async_trait]
impl ProxyHttp for Switchyard {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            _in_flight: Some(InFlight::new()),
            ..RequestCtx::default()
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.arrived = Some(Instant::now());
        let runtime = self.runtime.load_full();
        let edge = &runtime.edge;
        session.set_read_timeout(Some(edge.limits.client_timeout));
        // Requests pipelined behind this one are answered in order (RFC 9112 §9.3.2).
        session.as_downstream_mut().set_pipelining_enabled(true);
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
        let (view, normalized) = match admit(session.req_header(), edge) {
            Ok(admitted) => admitted,
            Err(answer) => return respond(session, answer).await,
        };
        ctx.view = view;
        ctx.view.client = peer;
        if edge.paths.forward_normalized {
            ctx.forward_normalized = Some(normalized);
        }
        if let (Some(port), false) = (edge.redirect_https_port, ctx.tls) {
            let answer = redirect_to_https(session.req_header(), &ctx.view.host, port);
            return respond(session, answer).await;
        }
        ctx.client = edge::client_ip(
            peer.map(|a| a.ip()),
            session.req_header(),
            &edge.trusted_proxies,
        );
        match route(&runtime, session.req_header_mut(), ctx) {
            Verdict::Pool(i) => {
                ctx.enter(runtime.pools.get(i));
                Ok(false)
            }
            Verdict::Answer(answer) => respond(session, answer).await,
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A body sent without a length (chunked, or HTTP/2) is counted as it arrives.
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        let limit = self.runtime.load().edge.limits.max_body_bytes;
        if ctx.body_bytes > limit {
            if let Some(m) = crate::metrics::DATA_PATH.as_ref() {
                m.refused("body_too_large");
            }
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
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
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
        let choice = match pool.choose(session.req_header_mut(), &mut ctx.view, &ctx.excluded) {
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
        let tls = pool.tls.as_ref();
        let sni = tls.map_or_else(String::new, |t| t.sni.clone());
        let mut peer = HttpPeer::new(backend.addr, tls.is_some(), sni);
        let options = &mut peer.options;
        options.connection_timeout = Some(pool.connect_timeout);
        options.read_timeout = Some(pool.timeouts.read);
        options.write_timeout = Some(pool.timeouts.write);
        options.idle_timeout = Some(pool.timeouts.idle);
        if let Some(tls) = tls {
            options.verify_cert = tls.verify;
            options.verify_hostname = tls.verify && !tls.sni.is_empty();
            options.ca = pool.ca.clone();
        }
        match pool.protocol {
            UpstreamProtocol::Http1 => options.set_http_version(1, 1),
            UpstreamProtocol::Http2 => options.set_http_version(2, 2),
        }
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
        let tried = ctx.excluded.clone();
        let retry = ctx.may_retry(&tried, false);
        e.set_retry(retry);
        if let Some(pool) = ctx.pool()
            && let (Some(m), Some(b)) = (
                crate::metrics::DATA_PATH.as_ref(),
                failed.and_then(|i| pool.backends.get(i)),
            )
        {
            m.connect_error(&pool.name, &b.addr.to_string(), retry);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        edge::strip_hop_by_hop(upstream);
        if let Some(target) = &ctx.forward_normalized
            && let Ok(uri) = target.parse::<http::Uri>()
        {
            upstream.set_uri(uri);
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let proto = if ctx.tls { "https" } else { "http" };
        if let Some(ip) = peer {
            // RFC 7239: IPv6 in brackets and quoted.
            let node = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("\"[{v6}]\""),
            };
            let mut element = format!("for={node};proto={proto}");
            let host = &ctx.view.host;
            if !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
            {
                element.push_str(&format!(";host={host}"));
            }
            append_to_list(upstream, "forwarded", element)?;
            // As nginx's $proxy_add_x_forwarded_for: append the client to what came in.
            append_to_list(upstream, "x-forwarded-for", ip.to_string())?;
        }
        // Behind a trusted TLS terminator, keep the scheme it reported.
        let trusted_peer =
            peer.is_some_and(|ip| edge::is_in(ip, &self.runtime.load().edge.trusted_proxies));
        if !(trusted_peer && upstream.headers.contains_key("x-forwarded-proto")) {
            upstream.insert_header("x-forwarded-proto", proto)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
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
            if let (Some(m), Some(pool)) = (crate::metrics::DATA_PATH.as_ref(), ctx.pool()) {
                m.retry(&pool.name);
            }
            // Nothing has gone to the client yet: Pingora asks `upstream_peer` again.
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                format!("backend answered {status}, which retry_on retries"),
            );
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
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
            if retry && let (Some(m), Some(pool)) = (crate::metrics::DATA_PATH.as_ref(), ctx.pool())
            {
                m.retry(&pool.name);
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

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
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
                        if let Some(m) = crate::metrics::DATA_PATH.as_ref() {
                            m.refused("client_timeout");
                        }
                        408
                    }
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
            if code == 413 {
                linger(session).await;
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
            .and_then(|a| ctx.pool().map(|p| p.backends[a.backend].addr));
        ctx.release(failed);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let Some(m) = crate::metrics::DATA_PATH.as_ref() {
            let pool = ctx.pool().map_or("", |p| p.name.as_str());
            let backend = backend.map_or(String::new(), |a| a.to_string());
            m.request(
                pool,
                &backend,
                status,
                ctx.arrived.map_or(Duration::ZERO, |t| t.elapsed()),
            );
        }
        if self.runtime.load().edge.access_log == AccessLog::Off {
            return;
        }
        let header = session.req_header();
        let micros = |d: Option<Duration>| d.map_or(0, |d| d.as_micros() as u64);
        tracing::info!(
            target: "switchyard::access",
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
            error = e.map(|e| e.to_string()),
            "request"
        );
    }
}
