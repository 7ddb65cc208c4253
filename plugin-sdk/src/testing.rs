//! Builders for unit-testing a plugin natively, with `cargo test`, without a host: a
//! request and a backend table, to call your `select` or `route` with.
//!
//! Enable with the `testing` feature, as a dev-dependency:
//!
//! ```toml
//! [dev-dependencies]
//! switchyard-plugin-sdk = { version = "0.2", features = ["testing"] }
//! ```
//!
//! ```
//! use switchyard_plugin_sdk::testing::{TestBackends, TestRequest};
//! use switchyard_plugin_sdk::{Backend, Backends, Balancer, Config, Request};
//!
//! struct ByHeader;
//! impl Balancer for ByHeader {
//!     fn init(_: &Config) -> Result<Self, String> {
//!         Ok(ByHeader)
//!     }
//!     fn select(&mut self, request: &Request<'_>, backends: &Backends<'_>) -> Option<usize> {
//!         request.header("x-backend")?.parse().ok().filter(|&i| backends.is_healthy(i))
//!     }
//! }
//!
//! let request = TestRequest::get("/").header("X-Backend", "1");
//! let backends = TestBackends::idle(3).with(2, |b| b.healthy = false);
//! let mut lb = ByHeader::init(&Config::default()).unwrap();
//! assert_eq!(lb.select(&request.as_request(), &backends.view()), Some(1));
//! let to_down = TestRequest::get("/").header("x-backend", "2");
//! assert_eq!(lb.select(&to_down.as_request(), &backends.view()), None);
//! ```

use crate::abi::FIELDS;
use crate::{Backend, Backends, Request};

/// A request made by a test: what a plugin reads through [`Request`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestRequest {
    pub(crate) method: String,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) client: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl TestRequest {
    /// `GET path` from `192.0.2.1:40000`, for host `example.com`. A `?` in `path`
    /// starts the query string.
    pub fn get(path: &str) -> Self {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (path, None),
        };
        TestRequest {
            method: "GET".to_owned(),
            host: "example.com".to_owned(),
            path: path.to_owned(),
            query,
            client: "192.0.2.1:40000".to_owned(),
            headers: Vec::new(),
        }
    }

    /// Another method, e.g. `"POST"`.
    pub fn method(mut self, method: &str) -> Self {
        self.method = method.to_ascii_uppercase();
        self
    }

    /// Another host (the host gives it in lower case).
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_ascii_lowercase();
        self
    }

    /// Another client address, `"ip:port"`.
    pub fn client(mut self, addr: &str) -> Self {
        self.client = addr.to_owned();
        self
    }

    /// Adds a header; names are matched without regard to case, as the host does.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    /// The request as a plugin sees it.
    pub fn as_request(&self) -> Request<'_> {
        Request::from_test(self)
    }
}

/// A backend table made by a test, in this SDK's layout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestBackends {
    rows: Vec<Backend>,
    data: Vec<u32>,
}

impl TestBackends {
    /// `n` healthy, idle backends of weight 1; backend `i` has identity `i`.
    pub fn idle(n: usize) -> Self {
        Self::from_backends((0..n).map(Backend::idle))
    }

    /// These backends (their `index` fields are set to their positions).
    pub fn from_backends(backends: impl IntoIterator<Item = Backend>) -> Self {
        let rows = backends
            .into_iter()
            .enumerate()
            .map(|(index, b)| Backend { index, ..b })
            .collect();
        TestBackends {
            rows,
            data: Vec::new(),
        }
        .written()
    }

    fn written(mut self) -> Self {
        self.data.clear();
        for b in &self.rows {
            b.row().write(FIELDS, &mut self.data);
        }
        self
    }

    /// With backend `index` changed by `change`.
    pub fn with(mut self, index: usize, change: impl FnOnce(&mut Backend)) -> Self {
        if let Some(b) = self.rows.get_mut(index) {
            change(b);
        }
        self.written()
    }

    /// With the weights set in order.
    pub fn weights(mut self, weights: &[u32]) -> Self {
        for (b, w) in self.rows.iter_mut().zip(weights) {
            b.weight = *w;
        }
        self.written()
    }

    /// With the requests in flight set in order.
    pub fn in_flight(mut self, in_flight: &[u32]) -> Self {
        for (b, n) in self.rows.iter_mut().zip(in_flight) {
            b.in_flight = *n;
        }
        self.written()
    }

    /// The table as `select` receives it.
    pub fn view(&self) -> Backends<'_> {
        Backends::new(FIELDS, &self.data)
    }
}
