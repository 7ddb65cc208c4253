//! Towards the backend: the request header it is sent (forwarding headers, the
//! normalised target). Hop-by-hop headers, those the client named in `Connection`
//! included, are removed by Pingora before this runs (its default
//! `HttpUpstreamRequestPolicy`; `TE` goes too, as HTTP/1 backends get no trailers).
//!
//! This runs for every request, so the forwarding values are written straight into one
//! `String` each: `Ipv4Addr`'s `Display` and `format!` cost more than the rest together.

use ipnet::IpNet;
use pingora::Result;
use pingora::http::RequestHeader;
use std::net::IpAddr;

use super::context::RequestCtx;
use crate::edge;

/// Appends `element` to the comma-separated list header `name` (a proxy's hop in
/// `Forwarded` or `X-Forwarded-For`), keeping every field earlier hops wrote.
fn append_to_list(header: &mut RequestHeader, name: &'static str, element: String) -> Result<()> {
    let mut earlier = header
        .headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .peekable();
    if earlier.peek().is_none() {
        return header.insert_header(name, element);
    }
    let mut value = String::with_capacity(128);
    for field in earlier {
        value.push_str(field);
        value.push_str(", ");
    }
    value.push_str(&element);
    header.insert_header(name, value)
}

/// Writes `ip` as text: IPv4 digit by digit, IPv6 as `Display` does.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// The header sent to the backend: the normalised target if asked, `Forwarded`,
/// `X-Forwarded-For` (appended) and `X-Forwarded-Proto` (kept from a trusted proxy,
/// else this hop's scheme).
pub(super) fn prepare(
    upstream: &mut RequestHeader,
    ctx: &RequestCtx,
    peer: Option<IpAddr>,
    trusted_proxies: &[IpNet],
) -> Result<()> {
    if let Some(target) = &ctx.forward_normalized
        && let Ok(uri) = target.parse::<http::Uri>()
    {
        upstream.set_uri(uri);
    }
    let proto = if ctx.tls { "https" } else { "http" };
    if let Some(ip) = peer {
        let mut client = String::with_capacity(48);
        push_ip(&mut client, ip);
        // RFC 7239: IPv6 in brackets and quoted.
        let mut element = String::with_capacity(96);
        element.push_str("for=");
        if ip.is_ipv6() {
            element.push_str("\"[");
            element.push_str(&client);
            element.push_str("]\"");
        } else {
            element.push_str(&client);
        }
        element.push_str(";proto=");
        element.push_str(proto);
        let host = &ctx.view.host;
        if !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
        {
            element.push_str(";host=");
            element.push_str(host);
        }
        append_to_list(upstream, "forwarded", element)?;
        // As nginx's $proxy_add_x_forwarded_for: append the client to what came in.
        append_to_list(upstream, "x-forwarded-for", client)?;
    }
    // Behind a trusted TLS terminator, keep the scheme it reported.
    let trusted_peer = peer.is_some_and(|ip| edge::is_in(ip, trusted_proxies));
    if !(trusted_peer && upstream.headers.contains_key("x-forwarded-proto")) {
        upstream.insert_header("x-forwarded-proto", proto)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.99.100",
            "255.255.255.255",
            "127.0.0.1",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn forwarding_headers_append_to_what_earlier_hops_wrote() {
        let mut header = RequestHeader::build("GET", b"/", None).unwrap();
        header
            .append_header("x-forwarded-for", "203.0.113.9")
            .unwrap();
        let ctx = RequestCtx {
            view: crate::plugin::request::RequestView {
                host: "shop.example".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        prepare(&mut header, &ctx, "192.0.2.1".parse().ok(), &[]).unwrap();
        let get = |header: &RequestHeader, name: &str| {
            header
                .headers
                .get(name)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(get(&header, "x-forwarded-for"), "203.0.113.9, 192.0.2.1");
        assert_eq!(
            get(&header, "forwarded"),
            "for=192.0.2.1;proto=http;host=shop.example"
        );
        assert_eq!(get(&header, "x-forwarded-proto"), "http");
        prepare(&mut header, &ctx, "2001:db8::7".parse().ok(), &[]).unwrap();
        assert_eq!(
            get(&header, "forwarded"),
            "for=192.0.2.1;proto=http;host=shop.example, for=\"[2001:db8::7]\";proto=http;host=shop.example"
        );
    }
}
