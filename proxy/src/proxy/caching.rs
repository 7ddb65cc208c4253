//! The response cache in the request path, stage by stage:
//!
//! ```text
//! request_filter            lookup: fresh → HIT (a single byte range is cut from it:
//!                           206, or 416 past its end); stale within stale-while-revalidate →
//!                           STALE and one background refresh; else wait for a fetch of
//!                           the same key already under way (lock_timeout), or fetch
//! upstream_request_filter   the stored validators replace the client's
//! upstream_response_filter  304 → refresh the entry, answer REVALIDATED; 5xx with a
//!                           stale entry within stale-if-error → STALE; else judge
//!                           whether the response is stored
//! upstream body filter      collect the body (up to max_object); store at its end
//! fail_to_proxy             no backend could answer → STALE within stale-if-error
//! response_filter           x-cache on responses that came from the pool
//! logging                   count the result; a fetch that ended wakes its waiters
//! ```
//!
//! Answers from the cache in `upstream_response_filter` are made by returning an error
//! Pingora hands to `fail_to_proxy`, which writes the entry: nothing has been sent to
//! the client yet at that point.

use bytes::Bytes;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;
use std::time::SystemTime;

use super::cache_state::{CacheState, Fill};
use super::context::RequestCtx;
use super::from_cache::{self, if_range_holds, serve};
use crate::cache::entry::{X_CACHE, variant_of};
use crate::cache::policy::{self, Bypass, ByteRange, StoreRules};
use crate::cache::{CacheResult, CacheUse, Claim, refresh};
use crate::pool::Pool;

/// The error that carries an answer from the cache to `fail_to_proxy`.
const FROM_CACHE: ErrorType = ErrorType::Custom("answered from the cache");

/// Stage `request_filter`: answers from the cache (true), or leaves the request to go
/// to `pool` with what the later stages need.
pub(super) async fn lookup(
    session: &mut Session,
    ctx: &mut RequestCtx,
    cache: &Arc<CacheUse>,
    pool: &Arc<Pool>,
) -> Result<bool> {
    let req = session.req_header();
    let primary = cache.primary_key(ctx.tls, &ctx.view.host, &ctx.view.path, req.uri.query());
    let bypass = policy::request_bypass(&req.method, &req.headers);
    if bypass == Some(Bypass::Range) && serve_range(session, cache, &primary).await? {
        ctx.cache = Some(CacheState::new(cache, primary, CacheResult::Hit));
        return Ok(true);
    }
    if bypass.is_some() {
        ctx.cache = Some(CacheState::new(cache, primary, CacheResult::Bypass));
        return Ok(false);
    }
    let mut state = CacheState::new(cache, primary, CacheResult::Miss);
    let mut waited = false;
    loop {
        let found = cache
            .cache
            .lookup(&state.primary, &session.req_header().headers)
            .await;
        let now = SystemTime::now();
        if let Some(entry) = &found {
            let window = cache
                .rules
                .stale_while_revalidate
                .max(entry.policy.stale_while_revalidate);
            match entry.staleness(now) {
                None => {
                    state.result = CacheResult::Hit;
                    ctx.cache = Some(state);
                    serve(session, entry, CacheResult::Hit, cache, now).await?;
                    return Ok(true);
                }
                Some(stale) if entry.policy.stale_allowed && stale < window => {
                    if let Some(guard) = cache.cache.try_claim(&state.primary) {
                        let mut request = session.req_header().clone();
                        request.set_method(Method::GET);
                        refresh::spawn(
                            guard,
                            Arc::clone(cache),
                            Arc::clone(pool),
                            request,
                            ctx.view.clone(),
                            Arc::clone(entry),
                        );
                    }
                    state.result = CacheResult::Stale;
                    ctx.cache = Some(state);
                    serve(session, entry, CacheResult::Stale, cache, now).await?;
                    return Ok(true);
                }
                Some(_) => {}
            }
        }
        state.stale = found;
        if waited {
            break;
        }
        match cache.cache.claim(&state.primary) {
            Claim::Fetch(guard) => {
                state.guard = Some(guard);
                break;
            }
            Claim::Wait(mut done) => {
                let timeout = cache.cache.config().lock_timeout;
                let _ = tokio::time::timeout(timeout, done.changed()).await;
                waited = true;
            }
        }
    }
    ctx.cache = Some(state);
    Ok(false)
}

/// A `Range` request answered from a fresh stored `200` (true): its one range as a
/// `206`, `416` past its end, the whole entry when `If-Range` names another version.
/// Anything else — nothing fresh stored, several ranges — goes to the pool unstored.
async fn serve_range(session: &mut Session, cache: &Arc<CacheUse>, primary: &str) -> Result<bool> {
    let Some(entry) = cache
        .cache
        .lookup(primary, &session.req_header().headers)
        .await
        .filter(|e| e.status == 200)
    else {
        return Ok(false);
    };
    let now = SystemTime::now();
    if entry.staleness(now).is_some() {
        return Ok(false);
    }
    let req = session.req_header();
    if !if_range_holds(req, &entry) {
        serve(session, &entry, CacheResult::Hit, cache, now).await?;
        return Ok(true);
    }
    let value = req
        .headers
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok());
    let range = match value.and_then(|v| policy::byte_range(v, entry.body.len() as u64)) {
        Some(ByteRange::Part { first, last }) => Some((first, last)),
        Some(ByteRange::Unsatisfiable) => None,
        None => return Ok(false),
    };
    from_cache::serve_range(session, &entry, range, cache, now).await?;
    Ok(true)
}

/// Stage `upstream_request_filter`: a GET that may fill the cache asks for a whole
/// response (the client's validators are its own business), or for a `304` against
/// the stored entry's validators.
pub(super) fn prepare_upstream(ctx: &mut RequestCtx, upstream: &mut RequestHeader) {
    let Some(state) = ctx.cache.as_mut() else {
        return;
    };
    if state.result == CacheResult::Bypass {
        return;
    }
    // A HEAD miss that fills the cache fetches the whole response (nginx's
    // proxy_cache_convert_head); Pingora sends the client the header alone.
    if upstream.method == Method::HEAD && state.guard.is_some() {
        upstream.set_method(Method::GET);
    }
    if upstream.method != Method::GET {
        return;
    }
    for name in ["if-none-match", "if-modified-since", "if-range"] {
        upstream.remove_header(name);
    }
    let Some(stale) = &state.stale else { return };
    let etag = stale.header("etag").map(str::to_owned);
    let modified = stale.header("last-modified").map(str::to_owned);
    if let Some(etag) = etag {
        let _ = upstream.insert_header("if-none-match", etag);
        state.revalidating = true;
    }
    if let Some(modified) = modified {
        let _ = upstream.insert_header("if-modified-since", modified);
        state.revalidating = true;
    }
}

/// Stage `upstream_response_filter`: an error carrying an answer from the cache, or
/// the decision whether this response is stored.
pub(super) fn on_response(
    ctx: &mut RequestCtx,
    request: &RequestHeader,
    response: &ResponseHeader,
) -> Result<()> {
    let Some(state) = ctx.cache.as_mut() else {
        return Ok(());
    };
    if state.result == CacheResult::Bypass {
        return Ok(());
    }
    let status = response.status.as_u16();
    let now = SystemTime::now();
    let config = state.cache.cache.config();
    let rules = StoreRules {
        default_ttl: config.default_ttl,
        store_set_cookie: state.cache.rules.store_set_cookie,
    };
    if status == 304
        && state.revalidating
        && let Some(stale) = state.stale.clone()
    {
        let mut merged = http::HeaderMap::new();
        for (name, value) in &stale.headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(value),
            ) {
                merged.append(n, v);
            }
        }
        for (name, value) in &response.headers {
            merged.insert(name.clone(), value.clone());
        }
        let entry = match policy::storable(&request.headers, stale.status, &merged, rules, now) {
            Ok(policy) => state
                .cache
                .cache
                .store(stale.refreshed(&response.headers, policy)),
            // Now marked no-store or private: this answer only, and gone from the cache.
            Err(_) => {
                state.cache.cache.purge_key(&state.primary);
                stale
            }
        };
        state.answer = Some((entry, CacheResult::Revalidated));
        state.result = CacheResult::Revalidated;
        state.guard = None;
        return Err(Error::explain(
            FROM_CACHE,
            "the backend said 304 Not Modified",
        ));
    }
    if status >= 500
        && let Some(stale) = state.usable_on_error(now)
    {
        state.answer = Some((stale, CacheResult::Stale));
        state.result = CacheResult::Stale;
        state.guard = None;
        return Err(Error::explain(
            FROM_CACHE,
            format!("the backend answered {status}; stale-if-error"),
        ));
    }
    // GET, or a HEAD sent upstream as GET (it holds the fill).
    let fetched_whole =
        request.method == Method::GET || (request.method == Method::HEAD && state.guard.is_some());
    if !fetched_whole {
        return Ok(());
    }
    let Ok(policy) = policy::storable(&request.headers, status, &response.headers, rules, now)
    else {
        state.guard = None;
        return Ok(());
    };
    let expected = response
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if expected.is_some_and(|n| n > config.max_object_bytes) {
        state.guard = None;
        return Ok(());
    }
    state.fill = Some(Fill {
        status,
        headers: response.headers.clone(),
        variant: variant_of(&policy.vary, &request.headers),
        policy,
        body: Vec::with_capacity(expected.unwrap_or(0) as usize),
        max: config.max_object_bytes,
        expected,
    });
    if expected == Some(0) || status == 204 {
        state.finish_fill();
    }
    Ok(())
}

/// Stage `upstream_response_body_filter`: collects the body of a response to store.
pub(super) fn on_body(ctx: &mut RequestCtx, body: Option<&Bytes>, end_of_stream: bool) {
    let Some(state) = ctx.cache.as_mut() else {
        return;
    };
    let Some(fill) = state.fill.as_mut() else {
        return;
    };
    if let Some(chunk) = body {
        if (fill.body.len() + chunk.len()) as u64 > fill.max {
            state.fill = None;
            state.guard = None;
            return;
        }
        fill.body.extend_from_slice(chunk);
    }
    if end_of_stream {
        state.finish_fill();
    }
}

/// Whether `error` only carries an answer from the cache (nothing to log).
pub(super) fn is_answer(error: &Error) -> bool {
    *error.etype() == FROM_CACHE
}

/// The cache's result for the access log: `HIT`, `MISS`… or `-` off cached routes.
pub(super) fn result_label(ctx: &RequestCtx) -> &'static str {
    ctx.cache.as_ref().map_or("-", |s| s.result.header())
}

/// Whether `fail_to_proxy` is handling an answer from the cache.
pub(super) fn answering(ctx: &RequestCtx) -> bool {
    ctx.cache.as_ref().is_some_and(|s| s.answer.is_some())
}

/// Stage `fail_to_proxy`: the answer decided earlier, or — when the pool failed with
/// `code` — a stale entry within stale-if-error. Gives the status sent.
pub(super) async fn answer_failure(
    session: &mut Session,
    ctx: &mut RequestCtx,
    code: u16,
) -> Option<u16> {
    let state = ctx.cache.as_mut()?;
    if session.response_written().is_some() {
        return None;
    }
    let now = SystemTime::now();
    let (entry, result) = match state.answer.take() {
        Some(answer) => answer,
        None if (500..600).contains(&code) => (state.usable_on_error(now)?, CacheResult::Stale),
        None => return None,
    };
    state.result = result;
    state.guard = None;
    let cache = Arc::clone(&state.cache);
    match serve(session, &entry, result, &cache, now).await {
        Ok(status) => Some(status),
        Err(e) => {
            tracing::debug!(error = %e, "could not send the cached response");
            None
        }
    }
}

/// Stage `response_filter`: `x-cache` on a response from the pool.
pub(super) fn mark_response(ctx: &RequestCtx, response: &mut ResponseHeader) {
    if let Some(state) = &ctx.cache
        && state.cache.cache.sends_x_cache()
    {
        let _ = response.insert_header(X_CACHE, state.result.header());
    }
}

/// Stage `logging`, first: a request that may have changed its target (a POST, PUT,
/// DELETE… answered 2xx or 3xx) drops the stored copies of that URL and of the ones
/// its `Location` and `Content-Location` name on the same host (RFC 9111 §4.4).
pub(super) fn invalidate_after_write(session: &Session, ctx: &RequestCtx) {
    let Some(state) = &ctx.cache else { return };
    if session.req_header().method.is_safe() {
        return;
    }
    let Some(response) = session.response_written() else {
        return;
    };
    if !(200..400).contains(&response.status.as_u16()) {
        return;
    }
    let cache = &state.cache;
    cache.cache.purge_key(&state.primary);
    for name in ["location", "content-location"] {
        let Some(uri) = response
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<http::Uri>().ok())
        else {
            continue;
        };
        if uri
            .host()
            .is_some_and(|h| !h.eq_ignore_ascii_case(&ctx.view.host))
        {
            continue;
        }
        let key = cache.primary_key(ctx.tls, &ctx.view.host, uri.path(), uri.query());
        cache.cache.purge_key(&key);
    }
}

/// Stage `logging`: counts the result; a response whose end the body filter did not
/// see (no body, or the length it announced) is stored now.
pub(super) fn on_end(ctx: &mut RequestCtx, failed: bool) {
    let Some(state) = ctx.cache.as_mut() else {
        return;
    };
    let complete = state
        .fill
        .as_ref()
        .is_some_and(|f| f.expected == Some(f.body.len() as u64));
    if failed || !complete {
        state.fill = None;
    }
    state.finish_fill();
    state.cache.cache.count(state.result);
}
