//! The canonical view of a request target that routing and access rules judge.
//!
//! A client can spell one resource many ways: `//secure`, `/%73ecure`, `/./secure`,
//! `/x/../secure`, `Admin.Example.com.`. If routes matched the spelling, an allow-listed
//! `/secure` route could be walked around through a catch-all route to the same pool.
//! So routes, access lists and router plugins see one canonical form:
//!
//! - **host**: from the `Host` field or the absolute URI (both present and different:
//!   refused), lower case, without the port and a trailing dot;
//! - **path** (RFC 3986 §6.2.2): percent-decoded, dot segments removed (§5.2.4), runs of
//!   `/` merged, as nginx matches `location`s. An encoded `/` (`%2F`) is never decoded
//!   into a separator: it is refused, or with [`EncodedSlash::Keep`] kept as the text
//!   `%2F`, which no route prefix written with `/` can match.
//!
//! What the backend receives stays byte-exact unless the operator asks for the
//! normalised form ([`NormalPath::forward`]): every decoding of the path that a backend
//! can make is at most as permissive as the one the routes were matched on.

use std::fmt;

/// What an encoded slash (`%2F`) in a path does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncodedSlash {
    /// Refuse the request (400): a backend that decoded it would see another path
    /// than the one the routes matched.
    #[default]
    Reject,
    /// Keep it as the text `%2F` for matching: for APIs whose identifiers contain `/`.
    Keep,
}

/// Why a request target has no canonical form (the request gets 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// An HTTP/1.1 request without `Host` and without an absolute URI.
    #[error("the request has no Host header; HTTP/1.1 requires one")]
    MissingHost,
    /// More than one `Host` field.
    #[error("the request has more than one Host header")]
    DuplicateHost,
    /// The `Host` field and the absolute URI name different hosts.
    #[error("the Host header names {host:?} but the request target names {authority:?}")]
    HostMismatch {
        /// Host from the header, canonical.
        host: String,
        /// Host from the request target, canonical.
        authority: String,
    },
    /// A host that is not a name, an IPv4 address or a bracketed IPv6 address.
    #[error("{0:?} is not a valid host")]
    BadHost(String),
    /// `%` not followed by two hex digits.
    #[error("the path has a malformed percent escape")]
    BadEscape,
    /// `%2F` with [`EncodedSlash::Reject`].
    #[error("the path contains an encoded slash (%2F), which this proxy refuses")]
    EncodedSlash,
    /// `%00`.
    #[error("the path contains an encoded NUL (%00)")]
    EncodedNul,
    /// Not origin-form (`/…`) or `*`.
    #[error("the request target does not start with \"/\"")]
    NotAbsolutePath,
}

/// A host as routes see it: lower case, no port, no trailing dot.
///
/// Accepts a registered name (letters, digits, `-`, `.`, `_`, `~`, and the sub-delims of
/// RFC 3986 that real names never use are refused), an IPv4 address, or an IPv6 address
/// in brackets; an optional `:port` of digits.
pub fn canonical_host(raw: &str) -> Result<String, TargetError> {
    if is_plain_host(raw) {
        return Ok(raw.to_owned());
    }
    canonical_host_by_parts(raw)
}

/// [`canonical_host`] the long way: trimmed, split from its port, checked, lowercased.
fn canonical_host_by_parts(raw: &str) -> Result<String, TargetError> {
    let bad = || TargetError::BadHost(raw.to_owned());
    let trimmed = raw.trim();
    let (host, port) = if let Some(rest) = trimmed.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or_else(bad)?;
        let ipv6 = |b: u8| b.is_ascii_hexdigit() || b":.".contains(&b);
        if inside.is_empty() || !inside.bytes().all(ipv6) {
            return Err(bad());
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
        };
        (inside, port)
    } else {
        match trimmed.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (trimmed, None),
        }
    };
    // RFC 3986: port = *DIGIT (an empty port is allowed)
    if port.is_some_and(|p| !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(bad());
    }
    if trimmed.starts_with('[') {
        return Ok(host.to_ascii_lowercase());
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    let valid = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !valid || host.starts_with('.') || host.contains("..") {
        return Err(bad());
    }
    Ok(host.to_ascii_lowercase())
}

/// Whether `raw` is already a canonical host (the common case, checked in one pass):
/// lowercase letters, digits, `-`, `_`, `~` and single inner dots, no port.
fn is_plain_host(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let fine =
        |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'~');
    let mut previous_dot = true; // no leading dot
    for b in bytes {
        if *b == b'.' {
            if previous_dot {
                return false;
            }
            previous_dot = true;
        } else if fine(b) {
            previous_dot = false;
        } else {
            return false;
        }
    }
    !previous_dot // not empty, no trailing dot
}

/// The host a request is for: `host_fields` are the values of its `Host` fields,
/// `authority` the host of an absolute-form target (or HTTP/2's `:authority`),
/// `http11` whether it is HTTP/1.1 or later (which must name a host).
pub fn request_host(
    host_fields: &[&str],
    authority: Option<&str>,
    http11: bool,
) -> Result<String, TargetError> {
    if host_fields.len() > 1 {
        return Err(TargetError::DuplicateHost);
    }
    let from_header = host_fields.first().map(|h| canonical_host(h)).transpose()?;
    let from_target = authority.map(canonical_host).transpose()?;
    match (from_header, from_target) {
        (Some(host), Some(authority)) if host != authority => {
            Err(TargetError::HostMismatch { host, authority })
        }
        (_, Some(authority)) => Ok(authority),
        (Some(host), None) => Ok(host),
        (None, None) if http11 => Err(TargetError::MissingHost),
        (None, None) => Ok(String::new()),
    }
}

/// A path in its two canonical forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalPath {
    /// What routes match: fully percent-decoded (bytes that are not UTF-8 stay
    /// escaped), dot segments removed, slashes merged.
    pub matching: String,
    /// What a backend may be sent instead of the raw path (`normalize_path =
    /// "forward"`): the same segments, with only unreserved characters decoded, as
    /// RFC 3986 §6.2.2 allows, so it names the same resource.
    pub forward: String,
}

/// One byte of a segment and whether the client had escaped it.
#[derive(Clone, Copy)]
struct PathByte {
    byte: u8,
    escaped: bool,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters a path segment may carry unescaped (RFC 3986 `pchar` less `%`).
const fn is_pchar(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// Splits `raw` (the path of a request target, without the query) into decoded
/// segments, rejecting what cannot be canonical.
fn segments(raw: &str, slash: EncodedSlash) -> Result<Vec<Vec<PathByte>>, TargetError> {
    let bytes = raw.as_bytes();
    let mut out: Vec<Vec<PathByte>> = Vec::new();
    let mut current: Vec<PathByte> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'/' {
            out.push(std::mem::take(&mut current));
            i += 1;
            continue;
        }
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(TargetError::BadEscape);
            };
            let decoded = h << 4 | l;
            match decoded {
                0 => return Err(TargetError::EncodedNul),
                b'/' if slash == EncodedSlash::Reject => return Err(TargetError::EncodedSlash),
                _ => {}
            }
            current.push(PathByte {
                byte: decoded,
                escaped: true,
            });
            i += 3;
            continue;
        }
        current.push(PathByte {
            byte: b,
            escaped: false,
        });
        i += 1;
    }
    out.push(current);
    // The part before the first `/` is empty for an absolute path.
    if !out.first().is_some_and(Vec::is_empty) {
        return Err(TargetError::NotAbsolutePath);
    }
    out.remove(0);
    Ok(out)
}

/// Removes `.` and `..` segments and empty ones (merged slashes), keeping a trailing
/// slash (`/a/`, `/a/.` and `/a/b/..` all end in `/`).
fn remove_dots(segments: Vec<Vec<PathByte>>) -> (Vec<Vec<PathByte>>, bool) {
    let n = segments.len();
    let mut kept: Vec<Vec<PathByte>> = Vec::with_capacity(n);
    let mut trailing_slash = false;
    for (i, segment) in segments.into_iter().enumerate() {
        let last = i + 1 == n;
        let is = |text: &[u8]| {
            segment.len() == text.len() && segment.iter().zip(text).all(|(p, t)| p.byte == *t)
        };
        if segment.is_empty() || is(b".") {
            trailing_slash |= last;
        } else if is(b"..") {
            kept.pop();
            trailing_slash |= last;
        } else {
            kept.push(segment);
            trailing_slash = false;
        }
    }
    (kept, trailing_slash)
}

/// The canonical forms of `raw`, the path of a request target (no query string).
/// `*` (an `OPTIONS *` request) is its own canonical form.
pub fn normalize_path(raw: &str, slash: EncodedSlash) -> Result<NormalPath, TargetError> {
    if raw == "*" {
        return Ok(NormalPath {
            matching: raw.to_owned(),
            forward: raw.to_owned(),
        });
    }
    if is_canonical(raw) {
        return Ok(NormalPath {
            matching: raw.to_owned(),
            forward: raw.to_owned(),
        });
    }
    normalize_by_segments(raw, slash)
}

/// [`normalize_path`] the long way: split, decode, drop dot and empty segments, rebuild.
fn normalize_by_segments(raw: &str, slash: EncodedSlash) -> Result<NormalPath, TargetError> {
    let (segments, trailing_slash) = remove_dots(segments(raw, slash)?);
    let mut matching: Vec<u8> = Vec::with_capacity(raw.len());
    let mut forward = String::with_capacity(raw.len());
    for segment in &segments {
        matching.push(b'/');
        forward.push('/');
        for p in segment {
            // An encoded slash stays text in both forms, never a separator.
            if p.byte == b'/' {
                matching.extend_from_slice(b"%2F");
                forward.push_str("%2F");
                continue;
            }
            matching.push(p.byte);
            let raw_ok = if p.escaped {
                is_unreserved(p.byte)
            } else {
                is_pchar(p.byte)
            };
            if raw_ok {
                forward.push(char::from(p.byte));
            } else {
                forward.push_str(&format!("%{:02X}", p.byte));
            }
        }
    }
    if segments.is_empty() || trailing_slash {
        matching.push(b'/');
        forward.push('/');
    }
    Ok(NormalPath {
        matching: utf8_or_escaped(&matching),
        forward,
    })
}

/// Whether `raw` is already both canonical forms (the common case, checked without
/// splitting it): absolute, only `pchar`s, no empty, `.` or `..` segment.
fn is_canonical(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    let mut segments = rest.as_bytes().split(|b| *b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let fine = match segment {
            // only the last may be empty: "/a/" keeps its trailing slash
            [] => segments.peek().is_none(),
            b"." | b".." => false,
            _ => segment.iter().all(|b| PCHAR[usize::from(*b)]),
        };
        if !fine {
            return false;
        }
    }
    true
}

/// [`is_pchar`] as a table, for the per-byte scan of [`is_canonical`].
static PCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = is_pchar(b as u8);
        b += 1;
    }
    table
};

/// `bytes` as text: valid UTF-8 runs as they are, other bytes as `%XX`.
fn utf8_or_escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// True when `path` (a canonical matching path) falls under `prefix` (a canonical
/// route prefix). A prefix matches on any byte boundary, as nginx's `location /api`
/// matches `/apis`.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
}

/// The properties the canonical forms must have, for the fuzz target
/// (`fuzz/fuzz_targets/request_target.rs`) and the tests: `Err` says which one broke.
///
/// 1. The forward form is canonical already: normalising it gives the same two forms,
///    so whatever prefix the routes matched is matched by what the backend receives.
/// 2. No separator is ever decoded: the matching form has at most as many `/` as the
///    raw path.
/// 3. The matching form has no empty, `.` or `..` segment left.
pub fn check_properties(raw: &str, slash: EncodedSlash) -> Result<(), String> {
    let Ok(p) = normalize_path(raw, slash) else {
        return Ok(());
    };
    if p.matching == "*" {
        return Ok(());
    }
    match normalize_path(&p.forward, slash) {
        Ok(again) if again == p => {}
        other => {
            return Err(format!(
                "{raw:?} → {p:?}, whose forward form gives {other:?}"
            ));
        }
    }
    let slashes = |t: &str| t.bytes().filter(|b| *b == b'/').count();
    if slashes(&p.matching) > slashes(raw).max(1) {
        return Err(format!("{raw:?} → {:?} gained a separator", p.matching));
    }
    let inner = p.matching.strip_suffix('/').unwrap_or(&p.matching);
    if inner
        .split('/')
        .skip(1)
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(format!(
            "{raw:?} → {:?} kept a dot or empty segment",
            p.matching
        ));
    }
    Ok(())
}

impl fmt::Display for NormalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.matching)
    }
}

#[cfg(test)]
mod tests;
