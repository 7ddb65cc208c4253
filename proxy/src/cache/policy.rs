//! RFC 9111 for a shared cache: which requests may be answered from the cache, which
//! responses may be stored, and for how long they are fresh.
//!
//! Freshness lifetime (§4.2.1), first that applies:
//!
//! ```text
//! s-maxage=N  →  N
//! max-age=N   →  N
//! Expires     →  Expires − Date   (an Expires that does not parse: already stale)
//! otherwise   →  the cache's default_ttl, for heuristically cacheable statuses
//! ```
//!
//! Age on a hit (§4.2.3, without the response delay): `Age` received + time stored.

use http::{HeaderMap, Method};
use std::time::{Duration, SystemTime};

/// Statuses that may be stored without explicit freshness (RFC 9110 §15.1), but 206:
/// a range is cut from a whole stored response, and partial ones are not stored.
const HEURISTIC_STATUSES: [u16; 10] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414];
/// Statuses stored only with explicit freshness.
const EXPLICIT_ONLY_STATUSES: [u16; 3] = [302, 307, 501];

/// A `Cache-Control` field's directives, names lowercased.
#[derive(Debug, Default)]
pub struct CacheControl(Vec<(String, Option<String>)>);

impl CacheControl {
    /// Every `Cache-Control` field of `headers`, joined.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut directives = Vec::new();
        for value in headers.get_all(http::header::CACHE_CONTROL) {
            let Ok(text) = value.to_str() else { continue };
            for part in text.split(',') {
                let part = part.trim();
                if part.is_empty() {
                    continue;
                }
                let (name, arg) = match part.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"').to_owned())),
                    None => (part, None),
                };
                directives.push((name.to_ascii_lowercase(), arg));
            }
        }
        CacheControl(directives)
    }

    /// Whether `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// `name=SECONDS`, if present and a number (a malformed one counts as 0, which
    /// errs towards not serving stored responses).
    pub fn seconds(&self, name: &str) -> Option<Duration> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, arg)| {
            Duration::from_secs(arg.as_deref().and_then(|a| a.parse().ok()).unwrap_or(0))
        })
    }
}

/// Why a request is not answered from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bypass {
    /// Not `GET` or `HEAD`.
    Method,
    /// A protocol upgrade (WebSocket).
    Upgrade,
    /// A byte range.
    Range,
    /// The request says `no-store`.
    NoStore,
}

/// Whether a request may be answered from, and fill, the cache.
pub fn request_bypass(method: &Method, headers: &HeaderMap) -> Option<Bypass> {
    if method != Method::GET && method != Method::HEAD {
        return Some(Bypass::Method);
    }
    if headers.contains_key(http::header::UPGRADE) {
        return Some(Bypass::Upgrade);
    }
    if headers.contains_key(http::header::RANGE) {
        return Some(Bypass::Range);
    }
    if CacheControl::of(headers).has("no-store") {
        return Some(Bypass::NoStore);
    }
    None
}

/// A `Range` header against a stored body of known length (RFC 9110 §14.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// Bytes `first..=last` of the body.
    Part { first: u64, last: u64 },
    /// No byte of the range is in the body: `416`.
    Unsatisfiable,
}

/// The one byte range `value` asks of a body of `len` bytes: `bytes=F-L`, `bytes=F-` or
/// `bytes=-N`. `None` for several ranges or a malformed one: those go to the pool.
pub fn byte_range(value: &str, len: u64) -> Option<ByteRange> {
    let (unit, spec) = value.trim().split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return None;
    }
    let (first, last) = spec.trim().split_once('-')?;
    let number = |s: &str| s.trim().parse::<u64>().ok();
    let (first, last) = match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => {
            let suffix = number(last)?;
            if suffix == 0 || len == 0 {
                return Some(ByteRange::Unsatisfiable);
            }
            (len.saturating_sub(suffix), len - 1)
        }
        (false, true) => (number(first)?, u64::MAX),
        (false, false) => (number(first)?, number(last)?),
        (true, true) => return None,
    };
    if first > last {
        return None;
    }
    if first >= len {
        return Some(ByteRange::Unsatisfiable);
    }
    Some(ByteRange::Part {
        first,
        last: last.min(len - 1),
    })
}

/// What the cache may do with a response it stores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Storable {
    /// How long it is fresh from when it was generated.
    pub fresh_for: Duration,
    /// `Age` it arrived with.
    pub initial_age: Duration,
    /// May be served stale (while revalidating, or on error): not when the response
    /// says `must-revalidate`, `proxy-revalidate`, `s-maxage` or `no-cache`.
    pub stale_allowed: bool,
    /// `stale-while-revalidate` / `stale-if-error` the response itself grants (RFC 5861).
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// May answer requests that carry `Authorization` (RFC 9111 §3.5): it says
    /// `public`, `s-maxage` or `must-revalidate`.
    pub serves_authorized: bool,
    /// Request headers it varies on, lowercased.
    pub vary: Vec<String>,
}

/// Why a response is not stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    Status,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryStar,
    /// Nothing says how long it is fresh, and it has no validator to revalidate with.
    NoFreshness,
}

/// Settings of the route and cache a response is judged by.
#[derive(Clone, Copy, Debug)]
pub struct StoreRules {
    pub default_ttl: Duration,
    pub store_set_cookie: bool,
}

/// Whether a response to a request with `request` headers may be stored, and how.
pub fn storable(
    request: &HeaderMap,
    status: u16,
    response: &HeaderMap,
    rules: StoreRules,
    now: SystemTime,
) -> Result<Storable, NotStored> {
    let cc = CacheControl::of(response);
    if cc.has("no-store") {
        return Err(NotStored::NoStore);
    }
    if cc.has("private") {
        return Err(NotStored::Private);
    }
    let serves_authorized = cc.has("public") || cc.has("s-maxage") || cc.has("must-revalidate");
    if request.contains_key(http::header::AUTHORIZATION) && !serves_authorized {
        return Err(NotStored::Authorization);
    }
    if response.contains_key(http::header::SET_COOKIE) && !rules.store_set_cookie {
        return Err(NotStored::SetCookie);
    }
    let mut vary = Vec::new();
    for value in response.get_all(http::header::VARY) {
        for name in value.to_str().unwrap_or("*").split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name == "*" {
                return Err(NotStored::VaryStar);
            }
            if !name.is_empty() && !vary.contains(&name) {
                vary.push(name);
            }
        }
    }
    vary.sort();
    let explicit = explicit_freshness(&cc, response, now);
    let understood = HEURISTIC_STATUSES.contains(&status)
        || (explicit.is_some() && EXPLICIT_ONLY_STATUSES.contains(&status));
    if !understood {
        return Err(NotStored::Status);
    }
    let no_cache = cc.has("no-cache");
    let fresh_for = if no_cache {
        Duration::ZERO
    } else {
        explicit.unwrap_or(rules.default_ttl)
    };
    let validated = response.contains_key(http::header::ETAG)
        || response.contains_key(http::header::LAST_MODIFIED);
    if fresh_for.is_zero() && !validated {
        return Err(NotStored::NoFreshness);
    }
    let initial_age = response
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    Ok(Storable {
        fresh_for,
        initial_age,
        stale_allowed: !(no_cache
            || cc.has("must-revalidate")
            || cc.has("proxy-revalidate")
            || cc.has("s-maxage")),
        stale_while_revalidate: cc.seconds("stale-while-revalidate").unwrap_or_default(),
        stale_if_error: cc.seconds("stale-if-error").unwrap_or_default(),
        serves_authorized,
        vary,
    })
}

/// `s-maxage`, then `max-age`, then `Expires − Date`.
fn explicit_freshness(
    cc: &CacheControl,
    response: &HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(d) = cc.seconds("s-maxage").or_else(|| cc.seconds("max-age")) {
        return Some(d);
    }
    let expires = response.get(http::header::EXPIRES)?;
    let Some(expires) = expires
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return Some(Duration::ZERO);
    };
    let date = response
        .get(http::header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .unwrap_or(now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    const RULES: StoreRules = StoreRules {
        default_ttl: Duration::ZERO,
        store_set_cookie: false,
    };

    fn judge(
        request: &[(&'static str, &str)],
        status: u16,
        response: &[(&'static str, &str)],
    ) -> Result<Storable, NotStored> {
        storable(
            &headers(request),
            status,
            &headers(response),
            RULES,
            SystemTime::now(),
        )
    }

    #[test]
    fn s_maxage_beats_max_age_beats_expires() {
        let both = judge(&[], 200, &[("cache-control", "max-age=60, s-maxage=5")]).unwrap();
        assert_eq!(both.fresh_for, Duration::from_secs(5));
        assert!(!both.stale_allowed, "s-maxage implies proxy-revalidate");
        let date = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000));
        let expires =
            httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_300));
        let e = judge(&[], 200, &[("date", &date), ("expires", &expires)]).unwrap();
        assert_eq!(e.fresh_for, Duration::from_secs(300));
        let m = judge(
            &[],
            200,
            &[("cache-control", "max-age=60"), ("expires", &expires)],
        )
        .unwrap();
        assert_eq!(m.fresh_for, Duration::from_secs(60));
        assert_eq!(
            judge(&[], 200, &[("expires", "0")]),
            Err(NotStored::NoFreshness)
        );
    }

    #[test]
    fn what_a_shared_cache_must_not_store() {
        let fresh = ("cache-control", "max-age=60");
        assert_eq!(
            judge(&[], 200, &[("cache-control", "no-store")]),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            judge(&[], 200, &[("cache-control", "private, max-age=60")]),
            Err(NotStored::Private)
        );
        assert_eq!(
            judge(&[("authorization", "Basic eDp5")], 200, &[fresh]),
            Err(NotStored::Authorization)
        );
        assert!(
            judge(
                &[("authorization", "Basic eDp5")],
                200,
                &[("cache-control", "public, max-age=60")]
            )
            .is_ok()
        );
        assert_eq!(
            judge(&[], 200, &[fresh, ("set-cookie", "a=b")]),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            judge(&[], 200, &[fresh, ("vary", "*")]),
            Err(NotStored::VaryStar)
        );
        assert_eq!(judge(&[], 500, &[fresh]), Err(NotStored::Status));
        assert_eq!(judge(&[], 206, &[fresh]), Err(NotStored::Status));
        assert_eq!(judge(&[], 302, &[]), Err(NotStored::Status));
        assert!(judge(&[], 302, &[fresh]).is_ok());
        assert_eq!(judge(&[], 200, &[]), Err(NotStored::NoFreshness));
    }

    #[test]
    fn no_cache_is_stored_to_be_revalidated_every_time() {
        let s = judge(
            &[],
            200,
            &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
        )
        .unwrap();
        assert_eq!(s.fresh_for, Duration::ZERO);
        assert!(!s.stale_allowed);
    }

    #[test]
    fn vary_names_are_lowercased_sorted_and_unique() {
        let s = judge(
            &[],
            200,
            &[
                ("cache-control", "max-age=1"),
                ("vary", "Accept-Encoding, accept-language"),
                ("vary", "ACCEPT-ENCODING"),
            ],
        )
        .unwrap();
        assert_eq!(s.vary, vec!["accept-encoding", "accept-language"]);
    }

    #[test]
    fn upgrades_ranges_and_writes_bypass() {
        let get = Method::GET;
        assert_eq!(
            request_bypass(&Method::POST, &HeaderMap::new()),
            Some(Bypass::Method)
        );
        assert_eq!(
            request_bypass(&get, &headers(&[("upgrade", "websocket")])),
            Some(Bypass::Upgrade)
        );
        assert_eq!(
            request_bypass(&get, &headers(&[("range", "bytes=0-1")])),
            Some(Bypass::Range)
        );
        assert_eq!(
            request_bypass(&get, &headers(&[("cache-control", "no-store")])),
            Some(Bypass::NoStore)
        );
        assert_eq!(request_bypass(&Method::HEAD, &HeaderMap::new()), None);
    }

    #[test]
    fn byte_ranges_against_a_ten_byte_body() {
        let part = |first, last| Some(ByteRange::Part { first, last });
        assert_eq!(byte_range("bytes=0-3", 10), part(0, 3));
        assert_eq!(byte_range("bytes=4-", 10), part(4, 9));
        assert_eq!(byte_range("bytes=-3", 10), part(7, 9));
        assert_eq!(byte_range("bytes=-30", 10), part(0, 9));
        assert_eq!(byte_range("Bytes = 2-200", 10), part(2, 9));
        assert_eq!(byte_range("bytes=10-", 10), Some(ByteRange::Unsatisfiable));
        assert_eq!(byte_range("bytes=-0", 10), Some(ByteRange::Unsatisfiable));
        assert_eq!(byte_range("bytes=0-0", 0), Some(ByteRange::Unsatisfiable));
        for to_the_pool in [
            "bytes=0-1,4-5",
            "bytes=5-2",
            "bytes=-",
            "items=0-1",
            "bytes=x-2",
        ] {
            assert_eq!(byte_range(to_the_pool, 10), None, "{to_the_pool}");
        }
    }
}
