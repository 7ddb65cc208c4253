//! stale-while-revalidate: one request, in the background, brings a stale entry up to
//! date while clients are answered from it. It asks the pool's balancer for a backend
//! like any request, sends the stored validators, and stores what comes back.

use once_cell::sync::Lazy;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::entry::{Entry, variant_of};
use super::policy::{StoreRules, storable};
use super::{CacheUse, FillGuard};
use crate::plugin::request::RequestView;
use crate::pool::Pool;

static CONNECTOR: Lazy<Connector> = Lazy::new(|| Connector::new(None));

/// Request headers a refresh does not pass on: the client's own validators (the
/// entry's are sent instead) and hop-by-hop ones.
const NOT_FORWARDED: [&str; 6] = [
    "if-none-match",
    "if-modified-since",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
];

/// Refreshes `stale` in the background; `guard` keeps other refreshes of the key off
/// until this one ends.
pub fn spawn(
    guard: FillGuard,
    cache: Arc<CacheUse>,
    pool: Arc<Pool>,
    mut request: RequestHeader,
    mut view: RequestView,
    stale: Arc<Entry>,
) {
    for name in NOT_FORWARDED {
        request.remove_header(name);
    }
    if let Some(etag) = stale.header("etag") {
        let _ = request.insert_header("if-none-match", etag.to_owned());
    }
    if let Some(modified) = stale.header("last-modified") {
        let _ = request.insert_header("if-modified-since", modified.to_owned());
    }
    tokio::spawn(async move {
        let _guard = guard;
        let primary = stale.primary.clone();
        if let Err(why) = refresh(&cache, &pool, request, &mut view, &stale).await {
            tracing::info!(cache = %cache.cache.name, key = %primary, error = %why, "background refresh failed; the stale entry stays");
        }
    });
}

async fn refresh(
    cache: &CacheUse,
    pool: &Pool,
    mut request: RequestHeader,
    view: &mut RequestView,
    stale: &Entry,
) -> Result<(), String> {
    let choice = pool
        .choose(&mut request, view, &[])
        .map_err(|e| e.to_string())?
        .ok_or("no backend to ask")?;
    let peer = pool
        .peer(choice.index)
        .ok_or("the chosen backend is gone")?;
    pool.begin(choice.index);
    let started = Instant::now();
    let fetched = fetch(
        &peer,
        request.clone(),
        cache.cache.config().max_object_bytes,
    )
    .await;
    let status = fetched.as_ref().map_or(0, |(status, _, _)| *status);
    pool.finish(
        &choice.balancer,
        None,
        choice.index,
        status,
        started.elapsed(),
    );
    let (status, headers, body) = fetched?;
    let config = cache.cache.config();
    let rules = StoreRules {
        default_ttl: config.default_ttl,
        store_set_cookie: cache.rules.store_set_cookie,
    };
    let judged = |merged: &http::HeaderMap| {
        storable(
            &request.headers,
            if status == 304 { stale.status } else { status },
            merged,
            rules,
            SystemTime::now(),
        )
    };
    if status == 304 {
        let mut merged = http::HeaderMap::new();
        for (name, value) in &stale.headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_bytes(value),
            ) {
                merged.append(n, v);
            }
        }
        for (name, value) in &headers {
            merged.insert(name.clone(), value.clone());
        }
        let policy =
            judged(&merged).map_err(|why| format!("the 304 makes it unstorable: {why:?}"))?;
        cache.cache.store(stale.refreshed(&headers, policy));
        return Ok(());
    }
    let policy = judged(&headers).map_err(|why| format!("status {status}, not stored: {why:?}"))?;
    let body = body.ok_or("the response is larger than max_object")?;
    let variant = variant_of(&policy.vary, &request.headers);
    let entry = Entry::new(
        stale.primary.clone(),
        variant,
        status,
        &headers,
        body,
        policy,
        cache.rules.store_set_cookie,
    );
    cache.cache.store(entry);
    Ok(())
}

/// Sends `request` to `peer`: status, headers, and the body unless it is over `max`.
async fn fetch(
    peer: &pingora::prelude::HttpPeer,
    request: RequestHeader,
    max: u64,
) -> Result<(u16, http::HeaderMap, Option<bytes::Bytes>), String> {
    let (mut session, _) = CONNECTOR
        .get_http_session(peer)
        .await
        .map_err(|e| e.to_string())?;
    session
        .write_request_header(Box::new(request))
        .await
        .map_err(|e| e.to_string())?;
    session
        .finish_request_body()
        .await
        .map_err(|e| e.to_string())?;
    session
        .read_response_header()
        .await
        .map_err(|e| e.to_string())?;
    let header = session.response_header().ok_or("no response header")?;
    let (status, headers) = (header.status.as_u16(), header.headers.clone());
    let mut body = Vec::new();
    let mut fits = true;
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| e.to_string())?
    {
        if fits && (body.len() + chunk.len()) as u64 <= max {
            body.extend_from_slice(&chunk);
        } else {
            fits = false;
        }
    }
    let idle = pingora::upstreams::peer::Peer::idle_timeout(peer);
    CONNECTOR.release_http_session(session, peer, idle).await;
    Ok((status, headers, fits.then(|| bytes::Bytes::from(body))))
}
