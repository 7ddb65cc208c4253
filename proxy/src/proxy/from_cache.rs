//! Writing a stored response to the client.

use bytes::Bytes;
use http::response::Parts as RespParts;
use http::{HeaderValue, Method};
use pingora::Result;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::time::SystemTime;

use crate::cache::entry::{Entry, X_CACHE, age_value};
use crate::cache::{CacheResult, CacheUse};

/// Writes `entry` to the client: `304` when the client's own validator matches, the
/// body unless the request is HEAD. Gives the status sent.
pub(super) async fn serve(
    session: &mut Session,
    entry: &Entry,
    result: CacheResult,
    cache: &CacheUse,
    now: SystemTime,
) -> Result<u16> {
    let not_modified = client_has_it(session.req_header(), entry);
    let (head, body) = if not_modified {
        (entry.response_header(304, false)?.into(), Bytes::new())
    } else {
        (entry.reply()?, entry.body.clone())
    };
    send(session, head, body, entry, result, cache, now).await
}

/// Sets `Age` and `x-cache` in `head` (directly in its map: through `ResponseHeader`
/// each name would be title-cased and parsed again) and writes it, then `body` unless
/// it is empty or the request is HEAD. Gives the status sent.
async fn send(
    session: &mut Session,
    mut head: RespParts,
    body: Bytes,
    entry: &Entry,
    result: CacheResult,
    cache: &CacheUse,
    now: SystemTime,
) -> Result<u16> {
    let status = head.status.as_u16();
    head.headers
        .insert(http::header::AGE, age_value(entry.age(now).as_secs()));
    if cache.cache.sends_x_cache() {
        head.headers
            .insert(X_CACHE, HeaderValue::from_static(result.header()));
    } else {
        head.headers.remove(X_CACHE);
    }
    let head_only = session.req_header().method == Method::HEAD;
    let body_follows = !(head_only || body.is_empty());
    session
        .write_response_header(Box::new(ResponseHeader::from(head)), !body_follows)
        .await?;
    if body_follows {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(status)
}

/// Writes bytes `first..=last` of `entry` (a stored `200`) as a `206`, or, without
/// `range`, a `416` naming the body's length.
pub(super) async fn serve_range(
    session: &mut Session,
    entry: &Entry,
    range: Option<(u64, u64)>,
    cache: &CacheUse,
    now: SystemTime,
) -> Result<u16> {
    let len = entry.body.len() as u64;
    let (mut header, body) = match range {
        Some((first, last)) => {
            let mut header = entry.response_header(206, false)?;
            header.insert_header(
                http::header::CONTENT_RANGE,
                format!("bytes {first}-{last}/{len}"),
            )?;
            (header, entry.body.slice(first as usize..=last as usize))
        }
        None => {
            let mut header = ResponseHeader::build(416, Some(4))?;
            header.insert_header(http::header::CONTENT_RANGE, format!("bytes */{len}"))?;
            (header, Bytes::new())
        }
    };
    header.insert_header(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()))?;
    send(
        session,
        header.into(),
        body,
        entry,
        CacheResult::Hit,
        cache,
        now,
    )
    .await
}

/// Whether a request's `If-Range` (if any) names this entry, so its `Range` applies
/// (RFC 9110 §13.1.5: an ETag compared strongly, or the exact `Last-Modified` date).
pub(super) fn if_range_holds(req: &RequestHeader, entry: &Entry) -> bool {
    let Some(condition) = req
        .headers
        .get(http::header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let condition = condition.trim();
    if condition.starts_with('"') || condition.starts_with("W/") {
        return !condition.starts_with("W/") && entry.header("etag") == Some(condition);
    }
    entry.header("last-modified") == Some(condition)
}

/// The client's `If-None-Match` names the entry's ETag (weak comparison), or, without
/// one, its `If-Modified-Since` is not before the entry's `Last-Modified`.
fn client_has_it(req: &RequestHeader, entry: &Entry) -> bool {
    if !(200..300).contains(&entry.status) {
        return false;
    }
    let weak = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    if let Some(wanted) = req
        .headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let Some(etag) = entry.header("etag") else {
            return false;
        };
        return wanted.trim() == "*" || wanted.split(',').any(|t| weak(t) == weak(etag));
    }
    let Some(since) = req
        .headers
        .get(http::header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return false;
    };
    entry
        .header("last-modified")
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|modified| modified <= since)
}
