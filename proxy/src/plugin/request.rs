//! The `request` resource: the plugin reads the request being balanced through it.
//!
//! The host does not copy the request into the plugin. For the length of a call the
//! request's header and canonical view are swapped into the instance's [`RequestSlot`]
//! (moves, no allocation) and swapped back after; the getters copy out only what is
//! asked for. `host` and `path` are the canonical values routes matched, so a plugin
//! cannot be walked around by another spelling of the same path.

use pingora::http::RequestHeader;
use std::net::SocketAddr;

/// Marker type of the `request` resource; the slot holds the data.
#[derive(Debug)]
pub struct RequestHandle;

/// What a plugin may read of a request besides its header fields: the canonical host
/// and path routes matched (see `switchyard_parse::request`), and the client.
#[derive(Clone, Debug, Default)]
pub struct RequestView {
    /// Lower case, without port or trailing dot.
    pub host: String,
    /// Percent-decoded, dot segments removed, slashes merged.
    pub path: String,
    /// Client address, if known.
    pub client: Option<SocketAddr>,
}

impl RequestView {
    /// The view of `GET /` from nowhere: what self-checks ask plugins about.
    pub fn placeholder() -> Self {
        RequestView {
            host: String::new(),
            path: "/".to_owned(),
            client: None,
        }
    }
}

/// The request of the call in progress.
#[derive(Debug)]
pub struct RequestSlot {
    /// Header of the request; a placeholder between calls.
    pub header: RequestHeader,
    /// Its canonical parts.
    pub view: RequestView,
}

impl Default for RequestSlot {
    fn default() -> Self {
        RequestSlot {
            header: placeholder_header(),
            view: RequestView::placeholder(),
        }
    }
}

impl RequestSlot {
    /// Moves `header` and `view` in for a call (nothing is copied); call again after
    /// the call to move them back.
    pub fn swap(&mut self, header: &mut RequestHeader, view: &mut RequestView) {
        std::mem::swap(header, &mut self.header);
        std::mem::swap(view, &mut self.view);
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
    pub(crate) fn method(&self) -> String {
        self.header.method.as_str().to_owned()
    }

    pub(crate) fn query(&self) -> Option<String> {
        self.header.uri.query().map(str::to_owned)
    }

    pub(crate) fn client_addr(&self) -> String {
        self.view.client.map(|a| a.to_string()).unwrap_or_default()
    }

    pub(crate) fn header_value(&self, name: &str) -> Option<String> {
        self.header
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}
