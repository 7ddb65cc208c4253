//! The `request` resource: the plugin reads the request being balanced through it.
//!
//! The host does not copy the request into the plugin. For the length of a call the
//! request's header is swapped into the instance's [`RequestSlot`] (a move, no
//! allocation) and swapped back after; the getters copy out only what is asked for.

use pingora::http::RequestHeader;
use std::net::SocketAddr;
use wasmtime::component::Resource;

/// Marker type of the `request` resource; the slot holds the data.
#[derive(Debug)]
pub struct RequestHandle;

/// The request of the call in progress.
#[derive(Debug)]
pub struct RequestSlot {
    /// Header of the request; a placeholder between calls.
    pub header: RequestHeader,
    /// Client address, if known.
    pub client: Option<SocketAddr>,
}

impl Default for RequestSlot {
    fn default() -> Self {
        RequestSlot {
            header: placeholder_header(),
            client: None,
        }
    }
}

/// An empty `GET /` header used to fill the slot between calls.
#[expect(
    clippy::expect_used,
    reason = "`GET /` is a valid request line, so building it cannot fail"
)]
pub fn placeholder_header() -> RequestHeader {
    RequestHeader::build("GET", b"/", Some(0)).expect("`GET /` is a valid request line")
}

impl RequestSlot {
    /// Host the client asked for, lower case, without the port.
    pub fn host(&self) -> String {
        request_host(&self.header)
    }
}

/// Host of `header`: the `Host` header, else the URI authority; lower case, no port.
pub fn request_host(header: &RequestHeader) -> String {
    let raw = header
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| header.uri.host())
        .unwrap_or("");
    strip_port(raw).to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

impl super::host_bindings::switchyard::plugin::types::Host for super::sandbox::PluginState {}

impl super::host_bindings::switchyard::plugin::types::HostRequest for super::sandbox::PluginState {
    fn method(&mut self, _: Resource<RequestHandle>) -> String {
        self.request.header.method.as_str().to_owned()
    }

    fn host(&mut self, _: Resource<RequestHandle>) -> String {
        self.request.host()
    }

    fn path(&mut self, _: Resource<RequestHandle>) -> String {
        self.request.header.uri.path().to_owned()
    }

    fn client_addr(&mut self, _: Resource<RequestHandle>) -> String {
        self.request
            .client
            .map(|a| a.to_string())
            .unwrap_or_default()
    }

    fn header(&mut self, _: Resource<RequestHandle>, name: String) -> Option<String> {
        self.request
            .header
            .headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
        // The handle owns nothing: the slot is reused for the next call.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_comes_without_port_and_in_lower_case() {
        let mut h = RequestHeader::build("GET", b"/x", None).unwrap();
        h.insert_header("Host", "Blog.Example.com:8080").unwrap();
        assert_eq!(request_host(&h), "blog.example.com");
        h.insert_header("Host", "[::1]:80").unwrap();
        assert_eq!(request_host(&h), "::1");
    }
}
