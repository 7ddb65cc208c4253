//! One stored response, how old and how stale it is, and its form on disk.

use bytes::Bytes;
use http::response::Parts as RespParts;
use http::{HeaderMap, HeaderValue};
use pingora::OrErr;
use pingora::http::ResponseHeader;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

use super::policy::Storable;

/// Headers a cache never stores or replays: hop-by-hop (RFC 9110 §7.6.1), the length
/// (set from the stored body) and `Age` (computed on every hit).
const NOT_STORED: [&str; 10] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "age",
    "x-cache",
];

/// The `x-cache` response header.
pub const X_CACHE: http::HeaderName = http::HeaderName::from_static("x-cache");

/// `value` as an `Age` header value; ages under ten minutes come from a table built
/// once, so a hit does not allocate one.
pub fn age_value(seconds: u64) -> HeaderValue {
    static SMALL: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        (0..600u64)
            .map(|n| HeaderValue::from_static(n.to_string().leak()))
            .collect()
    });
    usize::try_from(seconds)
        .ok()
        .and_then(|i| SMALL.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(seconds))
}

/// A stored response.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key without its variant, as `ctl cache` shows and `ctl purge` takes.
    pub primary: String,
    /// The values of the `Vary` request headers this variant was stored for.
    pub variant: String,
    pub status: u16,
    /// End-to-end headers, names lowercase.
    pub headers: Vec<(String, Bytes)>,
    pub body: Bytes,
    /// When it was received (or last revalidated).
    pub stored: SystemTime,
    pub policy: Storable,
    /// The header fields a hit sends, built once: `headers`, the length, and places
    /// for the fields every hit sets (the status is `status`).
    reply: Option<HeaderMap>,
}

impl Entry {
    /// A response as received, to store: `strip_cookies` drops `Set-Cookie`.
    pub fn new(
        primary: String,
        variant: String,
        status: u16,
        headers: &HeaderMap,
        body: Bytes,
        policy: Storable,
        strip_cookies: bool,
    ) -> Self {
        Entry {
            primary,
            variant,
            status,
            headers: end_to_end(headers, strip_cookies),
            body,
            stored: SystemTime::now(),
            policy,
            reply: None,
        }
        .with_reply()
    }

    /// Builds the header fields a hit sends (none if the status cannot be sent), with
    /// places for those set on every hit: `Age` and `x-cache` by the cache, `Date` and
    /// `Connection` by Pingora (HTTP/2 drops `Connection`), and room to spare. Values
    /// overwritten in place keep a hit's copy of these fields from growing its map.
    fn with_reply(mut self) -> Self {
        self.reply = self.response_header(self.status, true).ok().map(|h| {
            let stored = RespParts::from(h).headers;
            let mut fields = HeaderMap::with_capacity(stored.len() + 8);
            fields.extend(stored);
            let placeholder = HeaderValue::from_static("");
            fields.insert(http::header::AGE, placeholder.clone());
            fields.insert(X_CACHE, placeholder.clone());
            fields.insert(http::header::CONNECTION, placeholder.clone());
            if !fields.contains_key(http::header::DATE) {
                fields.insert(http::header::DATE, placeholder);
            }
            fields
        });
        self
    }

    /// A response header with `status`, the stored headers (those that are no valid
    /// header value are left out) and, `with_length`, the body's length.
    pub fn response_header(
        &self,
        status: u16,
        with_length: bool,
    ) -> pingora::Result<ResponseHeader> {
        // No case map: names are stored lowercase, and a hit clones this header.
        let mut header = ResponseHeader::build_no_case(status, Some(self.headers.len() + 3))?;
        for (name, value) in &self.headers {
            if let Ok(value) = HeaderValue::from_maybe_shared(value.clone()) {
                header.append_header(name.clone(), value)?;
            }
        }
        if with_length {
            header.insert_header(
                http::header::CONTENT_LENGTH,
                HeaderValue::from(self.body.len()),
            )?;
        }
        Ok(header)
    }

    /// The header a hit with the whole body sends, as parts whose fields a hit sets
    /// directly; its `Age` and `x-cache`, if there, are placeholders to overwrite.
    pub fn reply(&self) -> pingora::Result<RespParts> {
        let Some(fields) = &self.reply else {
            return Ok(self.response_header(self.status, true)?.into());
        };
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = http::StatusCode::from_u16(self.status)
            .or_err(pingora::ErrorType::InvalidHTTPHeader, "stored status")?;
        parts.headers = fields.clone();
        Ok(parts)
    }

    /// The key of this variant.
    pub fn key(&self) -> String {
        variant_key(&self.primary, &self.variant)
    }

    /// Its age now.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.policy.initial_age + now.duration_since(self.stored).unwrap_or_default()
    }

    /// How long it has been stale, or `None` while it is fresh.
    pub fn staleness(&self, now: SystemTime) -> Option<Duration> {
        let age = self.age(now);
        (age >= self.policy.fresh_for).then(|| age - self.policy.fresh_for)
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Bytes it holds in memory, counted against the cache's bound: body, headers,
    /// keys, and the bookkeeping around them.
    pub fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len() + 48)
            .sum();
        (self.body.len() + headers + 2 * (self.primary.len() + self.variant.len()) + 256) as u64
    }

    /// This entry revalidated by a `304` carrying `headers`: they replace the stored
    /// ones of the same name (RFC 9111 §4.3.4), and freshness starts again.
    pub fn refreshed(&self, headers: &HeaderMap, policy: Storable) -> Entry {
        let mut merged: Vec<(String, Bytes)> = self
            .headers
            .iter()
            .filter(|(n, _)| !headers.contains_key(n.as_str()))
            .cloned()
            .collect();
        merged.extend(end_to_end(headers, true));
        Entry {
            primary: self.primary.clone(),
            variant: self.variant.clone(),
            status: self.status,
            headers: merged,
            body: self.body.clone(),
            stored: SystemTime::now(),
            policy,
            reply: None,
        }
        .with_reply()
    }

    /// The file form: a line of JSON metadata, the header block, the body.
    pub fn encode(&self) -> Vec<u8> {
        let meta = DiskMeta {
            primary: self.primary.clone(),
            variant: self.variant.clone(),
            status: self.status,
            stored_ms: self
                .stored
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            initial_age_s: self.policy.initial_age.as_secs(),
            fresh_ms: self.policy.fresh_for.as_millis() as u64,
            stale_allowed: self.policy.stale_allowed,
            swr_s: self.policy.stale_while_revalidate.as_secs(),
            sie_s: self.policy.stale_if_error.as_secs(),
            authorized: self.policy.serves_authorized,
            vary: self.policy.vary.clone(),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| (n.clone(), v.len()))
                .collect(),
        };
        let mut out = serde_json::to_vec(&meta).unwrap_or_default();
        out.push(b'\n');
        for (_, value) in &self.headers {
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&self.body);
        out
    }

    /// An entry read back from its file form.
    pub fn decode(bytes: Bytes) -> Option<Entry> {
        let line_end = bytes.iter().position(|b| *b == b'\n')?;
        let meta: DiskMeta = serde_json::from_slice(&bytes[..line_end]).ok()?;
        let mut at = line_end + 1;
        let mut headers = Vec::with_capacity(meta.headers.len());
        for (name, len) in meta.headers {
            let value = bytes.get(at..at.checked_add(len)?)?;
            headers.push((name, bytes.slice_ref(value)));
            at += len;
        }
        Some(
            Entry {
                primary: meta.primary,
                variant: meta.variant,
                status: meta.status,
                headers,
                body: bytes.slice(at..),
                stored: SystemTime::UNIX_EPOCH + Duration::from_millis(meta.stored_ms),
                policy: Storable {
                    fresh_for: Duration::from_millis(meta.fresh_ms),
                    initial_age: Duration::from_secs(meta.initial_age_s),
                    stale_allowed: meta.stale_allowed,
                    stale_while_revalidate: Duration::from_secs(meta.swr_s),
                    stale_if_error: Duration::from_secs(meta.sie_s),
                    serves_authorized: meta.authorized,
                    vary: meta.vary,
                },
                reply: None,
            }
            .with_reply(),
        )
    }
}

/// From the first line of a file: the entry's primary key, variant and `Vary` names,
/// enough to index it without reading the body.
pub fn index_line(line: &[u8]) -> Option<(String, String, Vec<String>)> {
    let meta: DiskMeta = serde_json::from_slice(line).ok()?;
    Some((meta.primary, meta.variant, meta.vary))
}

/// What a file says about its entry before the header values and body.
#[derive(Serialize, Deserialize)]
struct DiskMeta {
    primary: String,
    variant: String,
    status: u16,
    stored_ms: u64,
    initial_age_s: u64,
    fresh_ms: u64,
    stale_allowed: bool,
    swr_s: u64,
    sie_s: u64,
    #[serde(default)]
    authorized: bool,
    vary: Vec<String>,
    headers: Vec<(String, usize)>,
}

/// The key of one variant of `primary`.
pub fn variant_key(primary: &str, variant: &str) -> String {
    if variant.is_empty() {
        primary.to_owned()
    } else {
        format!("{primary}\u{0}{variant}")
    }
}

/// The variant a request selects: the values of the `vary` headers it sent.
pub fn variant_of(vary: &[String], request: &HeaderMap) -> String {
    let mut out = String::new();
    for name in vary {
        out.push_str(name);
        out.push('=');
        let values: Vec<&str> = request
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        // Whitespace differences do not make another variant (RFC 9111 §4.1).
        out.push_str(&values.join(",").split_whitespace().collect::<String>());
        out.push(';');
    }
    out
}

fn end_to_end(headers: &HeaderMap, strip_cookies: bool) -> Vec<(String, Bytes)> {
    let named_in_connection: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            let hop_by_hop =
                NOT_STORED.contains(&name) || named_in_connection.iter().any(|n| n == name);
            let dropped_cookie = strip_cookies && name == "set-cookie";
            !(hop_by_hop || dropped_cookie)
        })
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_survives_its_file_form() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "text/html".parse().unwrap());
        headers.insert("etag", "\"v1\"".parse().unwrap());
        headers.insert("connection", "x-hop".parse().unwrap());
        headers.insert("x-hop", "1".parse().unwrap());
        headers.insert("set-cookie", "a=b".parse().unwrap());
        let policy = Storable {
            fresh_for: Duration::from_secs(60),
            initial_age: Duration::from_secs(3),
            stale_allowed: true,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::from_secs(9),
            serves_authorized: false,
            vary: vec!["accept-encoding".into()],
        };
        let entry = Entry::new(
            "h/p".into(),
            "accept-encoding=gzip;".into(),
            200,
            &headers,
            Bytes::from_static(b"<p>hi</p>"),
            policy,
            true,
        );
        let names: Vec<&str> = entry.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["content-type", "etag"],
            "hop-by-hop and cookies are not stored"
        );
        let back = Entry::decode(Bytes::from(entry.encode())).unwrap();
        assert_eq!(back.body, entry.body);
        assert_eq!(back.headers, entry.headers);
        assert_eq!(back.policy, entry.policy);
        assert_eq!(back.key(), "h/p\u{0}accept-encoding=gzip;");
        assert!(Entry::decode(Bytes::from_static(b"{\"bad\n")).is_none());
    }
}
