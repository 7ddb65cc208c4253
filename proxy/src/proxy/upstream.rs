//! Towards the backend: the peer an attempt connects to, and the request header it is
//! sent (forwarding headers, hop-by-hop headers removed, the normalised target).

use ipnet::IpNet;
use pingora::Result;
use pingora::http::RequestHeader;
use std::net::IpAddr;

use super::context::RequestCtx;
use crate::edge;

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

/// The header sent to the backend: hop-by-hop headers removed, the normalised target
/// if asked, `Forwarded`, `X-Forwarded-For` (appended) and `X-Forwarded-Proto` (kept
/// from a trusted proxy, else this hop's scheme).
pub(super) fn prepare(
    upstream: &mut RequestHeader,
    ctx: &RequestCtx,
    peer: Option<IpAddr>,
    trusted_proxies: &[IpNet],
) -> Result<()> {
    edge::strip_hop_by_hop(upstream);
    if let Some(target) = &ctx.forward_normalized
        && let Ok(uri) = target.parse::<http::Uri>()
    {
        upstream.set_uri(uri);
    }
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
    let trusted_peer = peer.is_some_and(|ip| edge::is_in(ip, trusted_proxies));
    if !(trusted_peer && upstream.headers.contains_key("x-forwarded-proto")) {
        upstream.insert_header("x-forwarded-proto", proto)?;
    }
    Ok(())
}
