//! Writing a stored response to the client.

use http::{HeaderValue, Method};
use pingora::Result;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use std::time::SystemTime;

use crate::cache::entry::Entry;
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
    let req = session.req_header();
    let head = req.method == Method::HEAD;
    let not_modified = client_has_it(req, entry);
    let status = if not_modified { 304 } else { entry.status };
    let mut header = if not_modified {
        entry.response_header(304, false)?
    } else {
        entry.reply()?
    };
    header.insert_header(
        http::header::AGE,
        HeaderValue::from(entry.age(now).as_secs()),
    )?;
    if cache.cache.config().x_cache_header {
        header.insert_header("x-cache", HeaderValue::from_static(result.header()))?;
    }
    let body_follows = !(head || not_modified || entry.body.is_empty());
    session
        .write_response_header(Box::new(header), !body_follows)
        .await?;
    if body_follows {
        session
            .write_response_body(Some(entry.body.clone()), true)
            .await?;
    }
    Ok(status)
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
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
    {
        let Some(etag) = entry.header("etag") else {
            return false;
        };
        return wanted.trim() == "*" || wanted.split(',').any(|t| weak(t) == weak(etag));
    }
    let since = req
        .headers
        .get("if-modified-since")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let modified = entry
        .header("last-modified")
        .and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((since, modified), (Some(s), Some(m)) if m <= s)
}
