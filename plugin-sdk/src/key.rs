//! Which part of a request a hashing balancer keys on, as an operator writes it in
//! `balancer_config.key`.

use crate::Request;

/// Where a request's hash key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `client-ip`: the client's IP address, without the port (so a client's
    /// connections all land on one backend).
    ClientIp,
    /// `header:NAME`: the first value of header NAME.
    Header(String),
    /// `cookie:NAME`: the value of cookie NAME.
    Cookie(String),
    /// `path`: the canonical path, without the query string.
    Path,
    /// `query:NAME`: the value of query parameter NAME, as sent.
    Query(String),
}

impl KeySource {
    /// Parses `client-ip`, `header:NAME`, `cookie:NAME`, `path` or `query:NAME`; the
    /// error names `balancer_config.key` and lists the forms.
    pub fn parse(text: &str) -> Result<Self, String> {
        let named = |prefix: &str| {
            text.strip_prefix(prefix)
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
        };
        let source = match text {
            "client-ip" => Some(KeySource::ClientIp),
            "path" => Some(KeySource::Path),
            _ => named("header:")
                .map(|n| KeySource::Header(n.to_ascii_lowercase()))
                .or_else(|| named("cookie:").map(KeySource::Cookie))
                .or_else(|| named("query:").map(KeySource::Query)),
        };
        source.ok_or_else(|| {
            format!(
                "balancer_config.key = {text:?}: write \"client-ip\", \"header:NAME\", \"cookie:NAME\", \"path\" or \"query:NAME\""
            )
        })
    }

    /// The key of `request`; `None` when the request does not carry it (no such
    /// header, cookie or parameter).
    pub fn extract(&self, request: &Request<'_>) -> Option<String> {
        match self {
            KeySource::ClientIp => {
                let addr = request.client_addr();
                // "ip:port" or "[v6]:port": drop the port, keep the address.
                let ip = match addr.rsplit_once(':') {
                    Some((ip, port)) if port.bytes().all(|b| b.is_ascii_digit()) => ip,
                    _ => addr.as_str(),
                };
                Some(ip.trim_start_matches('[').trim_end_matches(']').to_owned())
            }
            KeySource::Header(name) => request.header(name),
            KeySource::Cookie(name) => request.cookie(name),
            KeySource::Path => Some(request.path()),
            KeySource::Query(name) => request.query_param(name),
        }
    }
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::ClientIp => f.write_str("client-ip"),
            KeySource::Header(n) => write!(f, "header:{n}"),
            KeySource::Cookie(n) => write!(f, "cookie:{n}"),
            KeySource::Path => f.write_str("path"),
            KeySource::Query(n) => write!(f, "query:{n}"),
        }
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;
    use crate::testing::TestRequest;

    #[test]
    fn parses_every_form_and_names_the_key_on_error() {
        assert_eq!(KeySource::parse("client-ip"), Ok(KeySource::ClientIp));
        assert_eq!(
            KeySource::parse("header:X-User"),
            Ok(KeySource::Header("x-user".into()))
        );
        assert_eq!(
            KeySource::parse("cookie:sid"),
            Ok(KeySource::Cookie("sid".into()))
        );
        assert_eq!(KeySource::parse("path"), Ok(KeySource::Path));
        assert_eq!(
            KeySource::parse("query:id"),
            Ok(KeySource::Query("id".into()))
        );
        for bad in ["header:", "ip", "cookie", ""] {
            let err = KeySource::parse(bad).unwrap_err();
            assert!(err.starts_with("balancer_config.key"), "{err}");
        }
    }

    #[test]
    fn extracts_each_key_or_none() {
        let request = TestRequest::get("/a/b?id=42&x")
            .client("[2001:db8::1]:5000")
            .header("x-user", "u7")
            .header("cookie", "a=1; sid=s9");
        let r = request.as_request();
        let key = |text: &str| KeySource::parse(text).unwrap().extract(&r);
        assert_eq!(key("client-ip").as_deref(), Some("2001:db8::1"));
        assert_eq!(key("header:x-user").as_deref(), Some("u7"));
        assert_eq!(key("cookie:sid").as_deref(), Some("s9"));
        assert_eq!(key("path").as_deref(), Some("/a/b"));
        assert_eq!(key("query:id").as_deref(), Some("42"));
        assert_eq!(key("header:x-none"), None);
        assert_eq!(key("cookie:none"), None);
        assert_eq!(key("query:none"), None);
        let v4 = TestRequest::get("/").client("192.0.2.7:1234");
        assert_eq!(
            KeySource::ClientIp.extract(&v4.as_request()).as_deref(),
            Some("192.0.2.7")
        );
    }
}
