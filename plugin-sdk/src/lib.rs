//! # Switchyard plugin SDK
//!
//! Write a Switchyard load balancer in plain Rust: implement [`Balancer`] on your own type
//! and invoke [`export_balancer!`] once. The SDK hides the WebAssembly bindings; your
//! crate depends on this crate only.
//!
//! ## A whole plugin
//!
//! ```
//! use switchyard_plugin_sdk::{Backends, Balancer, Config, Request};
//!
//! /// Sends requests carrying `x-backend: N` to backend N, everything else round-robin.
//! struct HeaderPinned {
//!     header: String,
//!     next: usize,
//! }
//!
//! impl Balancer for HeaderPinned {
//!     fn init(config: &Config) -> Result<Self, String> {
//!         let header = config.get("header").unwrap_or("x-backend").to_owned();
//!         Ok(HeaderPinned { header, next: 0 })
//!     }
//!
//!     fn select(&mut self, request: &Request<'_>, backends: &Backends<'_>) -> Option<usize> {
//!         if let Some(pinned) = request.header(&self.header).and_then(|v| v.parse().ok()) {
//!             if backends.get(pinned).is_some_and(|b| b.healthy) {
//!                 return Some(pinned);
//!             }
//!         }
//!         // Round-robin over the healthy backends, starting after the last pick.
//!         let n = backends.len();
//!         let pick = (0..n).map(|k| (self.next + k) % n).find(|&i| backends.is_healthy(i))?;
//!         self.next = pick + 1;
//!         Some(pick)
//!     }
//! }
//!
//! switchyard_plugin_sdk::export_balancer!(HeaderPinned);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (crate type `cdylib`), copy
//! `target/wasm32-wasip2/release/<name>.wasm` into the proxy's plugins directory and name
//! the file's stem as a pool's `balancer`.
//!
//! Unit-test it natively with the `testing` feature ([`testing`]): build a request and a
//! backend table and call `select` yourself.
//!
//! ## Hashing balancers
//!
//! [`KeySource`] reads a key (`client-ip`, `header:NAME`, `cookie:NAME`, `path`,
//! `query:NAME`) from a request; [`hashing`] has a stable 64-bit hash, the membership
//! fingerprint that says when a ring or table must be rebuilt, consistent hashing with
//! bounded loads, and `first_fit` over a key's choices; [`ConsistentHash`] puts them
//! together around any structure that implements [`KeyedChoices`]. The bundled
//! `ring-hash` and `maglev` plugins are built from it.
//!
//! ## Interface version
//!
//! This SDK builds plugins against `switchyard:plugin@0.2.0` (its WIT ships in this
//! crate's `wit/` directory). The host also loads plugins built against 0.1.0 with the
//! earlier SDK. What 0.2.0 adds: a stable identity per backend ([`Backend::id`]), the
//! query string ([`Request::query`]), and a backend table that says its own row size,
//! so later versions can add fields without breaking this plugin.
//!
//! ## Rules the host enforces
//! - A plugin sees no files, sockets or environment: only clocks and random numbers.
//! - A panic or trap fails only the call: the host serves that request with its own
//!   round-robin fallback, logs the failure and starts a fresh instance of the plugin.
//! - Returning an index that is out of range, or of a backend that is not healthy, is
//!   treated like a failure of the call.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod abi;
mod backends;
pub mod hashing;
mod rng;

pub use backends::{Backend, Backends, Candidates, SmoothWeighted};
pub use rng::Rng;

#[cfg(feature = "guest")]
mod config;
#[cfg(feature = "guest")]
pub use config::Config;
#[cfg(feature = "guest")]
mod consistent;
#[cfg(feature = "guest")]
pub use consistent::{ConsistentHash, KeyedChoices};
#[cfg(feature = "guest")]
mod key;
#[cfg(feature = "guest")]
pub use key::KeySource;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "guest")]
pub use guest::*;

/// Everything a plugin is written with: the traits, the request, the export macros.
#[cfg(feature = "guest")]
mod guest {
    use super::bindings::switchyard::plugin::types::Request as RawRequest;

    /// Where a request's answers come from.
    enum Source<'a> {
        Host(&'a RawRequest),
        #[cfg(feature = "testing")]
        Test(&'a crate::testing::TestRequest),
    }

    /// The request being balanced. Each getter asks the host, so only what you read is
    /// copied.
    pub struct Request<'a> {
        source: Source<'a>,
    }

    impl std::fmt::Debug for Request<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Request").finish_non_exhaustive()
        }
    }

    impl<'a> Request<'a> {
        pub(crate) fn from_host(raw: &'a RawRequest) -> Self {
            Request {
                source: Source::Host(raw),
            }
        }

        #[cfg(feature = "testing")]
        pub(crate) fn from_test(test: &'a crate::testing::TestRequest) -> Self {
            Request {
                source: Source::Test(test),
            }
        }

        /// Method in upper case, e.g. `"GET"`.
        pub fn method(&self) -> String {
            match &self.source {
                Source::Host(raw) => raw.method(),
                #[cfg(feature = "testing")]
                Source::Test(t) => t.method.clone(),
            }
        }

        /// Host the request is for: lower case, without port or trailing dot.
        pub fn host(&self) -> String {
            match &self.source {
                Source::Host(raw) => raw.host(),
                #[cfg(feature = "testing")]
                Source::Test(t) => t.host.clone(),
            }
        }

        /// Path of the request target, canonical (percent-decoded, without `.`, `..`
        /// or repeated slashes), without the query string.
        pub fn path(&self) -> String {
            match &self.source {
                Source::Host(raw) => raw.path(),
                #[cfg(feature = "testing")]
                Source::Test(t) => t.path.clone(),
            }
        }

        /// The query string as sent, without the `?`.
        pub fn query(&self) -> Option<String> {
            match &self.source {
                Source::Host(raw) => raw.query(),
                #[cfg(feature = "testing")]
                Source::Test(t) => t.query.clone(),
            }
        }

        /// The value of query parameter `name`, as sent (not percent-decoded).
        pub fn query_param(&self, name: &str) -> Option<String> {
            let query = self.query()?;
            query.split('&').find_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (key == name).then(|| value.to_owned())
            })
        }

        /// Client address as `"ip:port"`.
        pub fn client_addr(&self) -> String {
            match &self.source {
                Source::Host(raw) => raw.client_addr(),
                #[cfg(feature = "testing")]
                Source::Test(t) => t.client.clone(),
            }
        }

        /// First value of header `name` (case-insensitive), if present and valid UTF-8.
        pub fn header(&self, name: &str) -> Option<String> {
            match &self.source {
                Source::Host(raw) => raw.header(name),
                #[cfg(feature = "testing")]
                Source::Test(t) => {
                    let name = name.to_ascii_lowercase();
                    t.headers
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, v)| v.clone())
                }
            }
        }

        /// The value of cookie `name`, from the `Cookie` header.
        pub fn cookie(&self, name: &str) -> Option<String> {
            let cookies = self.header("cookie")?;
            cookies.split(';').find_map(|c| {
                let (key, value) = c.trim().split_once('=')?;
                (key == name).then(|| value.to_owned())
            })
        }
    }
}

/// Generated bindings of `wit/v0.2.0`. Not part of the SDK's stable surface: use the
/// [`Balancer`] trait and [`export_balancer!`] instead.
#[cfg(feature = "guest")]
#[doc(hidden)]
#[allow(unsafe_code, missing_debug_implementations, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "balancer",
        path: "wit/v0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_balancer_world",
        default_bindings_module: "switchyard_plugin_sdk::bindings",
    });
}

/// Generated bindings of world `router`; they share the `types` interface (and so the
/// request type) with [`bindings`].
#[cfg(feature = "guest")]
#[doc(hidden)]
#[allow(unsafe_code, missing_debug_implementations, clippy::all)]
pub mod router_bindings {
    wit_bindgen::generate!({
        world: "router",
        path: "wit/v0.2.0",
        pub_export_macro: true,
        export_macro_name: "__export_router_world",
        default_bindings_module: "switchyard_plugin_sdk::router_bindings",
        with: { "switchyard:plugin/types@0.2.0": crate::bindings::switchyard::plugin::types },
    });
}

#[cfg(feature = "guest")]
use bindings::switchyard::plugin::types::{BackendTable, Request as RawRequest};

/// A load-balancing algorithm. One value lives per pool that uses the plugin.
#[cfg(feature = "guest")]
pub trait Balancer: Sized + 'static {
    /// Builds the balancer from the pool's `balancer_config`. An `Err` rejects the plugin
    /// and its message is shown to the operator, so say which key is wrong and why.
    fn init(config: &Config) -> Result<Self, String>;

    /// Picks the backend for `request`: an index into `backends`, or `None` to let the
    /// host's round-robin fallback decide. Choose only backends with `healthy` set.
    fn select(&mut self, request: &Request<'_>, backends: &Backends<'_>) -> Option<usize>;

    /// Feedback once the request has finished on `backend`: `status` 0 means it failed
    /// before answering. `latency_us` is the time to the response header.
    fn on_response(&mut self, backend: usize, status: u16, latency_us: u64) {
        let _ = (backend, status, latency_us);
    }
}

/// A response a router sends itself, without a backend.
#[cfg(feature = "guest")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// HTTP status, 100–599.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// A short body (the host cuts it at 64 KiB).
    pub body: String,
}

#[cfg(feature = "guest")]
impl Response {
    /// A response with `status` and a plain-text `body`.
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What a router decides for one request.
#[cfg(feature = "guest")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Serve from the pool of this name.
    Pool(String),
    /// Answer directly.
    Respond(Response),
    /// Go on with the static routes (or the route's own pool).
    Continue,
}

/// A router: picks the pool for a request, or answers it itself (access control,
/// redirects, canaries, rate limits).
///
/// ```
/// use switchyard_plugin_sdk::{Config, Decision, Request, Response, Router};
///
/// /// Redirects plain `/old/…` paths to `/new/…`.
/// struct Moved;
///
/// impl Router for Moved {
///     fn init(_config: &Config) -> Result<Self, String> {
///         Ok(Moved)
///     }
///     fn route(&mut self, request: &Request<'_>) -> Decision {
///         match request.path().strip_prefix("/old/") {
///             Some(rest) => Decision::Respond(Response::new(301, "moved\n").header("location", format!("/new/{rest}"))),
///             None => Decision::Continue,
///         }
///     }
/// }
///
/// switchyard_plugin_sdk::export_router!(Moved);
/// # fn main() {}
/// ```
#[cfg(feature = "guest")]
pub trait Router: Sized + 'static {
    /// Builds the router from its `router_config`; an `Err` rejects it.
    fn init(config: &Config) -> Result<Self, String>;

    /// The decision for `request`.
    fn route(&mut self, request: &Request<'_>) -> Decision;
}

/// Runtime glue behind [`export_balancer!`]; not for direct use.
#[cfg(feature = "guest")]
#[doc(hidden)]
pub mod __private {
    use super::{BackendTable, Backends, Balancer, Config, RawRequest, Request};
    use std::any::Any;
    use std::cell::RefCell;
    use std::marker::PhantomData;

    thread_local! {
        // Wasm instances are single-threaded; the host gives each pool its own instance.
        static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    }

    fn with_plugin<T: 'static, R>(f: impl FnOnce(&mut T) -> R) -> Option<R> {
        STATE.with(|cell| {
            let mut slot = cell.borrow_mut();
            slot.as_mut()?.downcast_mut::<T>().map(f)
        })
    }

    /// Implements the generated `Guest` trait for any [`Balancer`].
    #[derive(Debug)]
    pub struct Export<T>(PhantomData<T>);

    impl<T: Balancer> crate::bindings::Guest for Export<T> {
        fn init(config: Vec<(String, String)>) -> Result<(), String> {
            let balancer = T::init(&Config::new(config))?;
            STATE.with(|cell| *cell.borrow_mut() = Some(Box::new(balancer)));
            Ok(())
        }

        fn select(request: &RawRequest, backends: BackendTable) -> Option<u32> {
            let request = Request::from_host(request);
            let backends = Backends::new(backends.stride as usize, &backends.data);
            with_plugin::<T, _>(|b| b.select(&request, &backends))
                .flatten()
                .and_then(|index| u32::try_from(index).ok())
        }

        fn on_response(backend: u32, status: u16, latency_us: u64) {
            with_plugin::<T, _>(|b| b.on_response(backend as usize, status, latency_us));
        }
    }

    /// Implements the generated router `Guest` trait for any [`Router`].
    #[derive(Debug)]
    pub struct RouterExport<T>(PhantomData<T>);

    impl<T: super::Router> crate::router_bindings::Guest for RouterExport<T> {
        fn init(config: Vec<(String, String)>) -> Result<(), String> {
            let router = T::init(&Config::new(config))?;
            STATE.with(|cell| *cell.borrow_mut() = Some(Box::new(router)));
            Ok(())
        }

        fn route(
            request: &RawRequest,
        ) -> crate::router_bindings::switchyard::plugin::routing::Decision {
            use crate::router_bindings::switchyard::plugin::routing::{
                Decision as Raw, Response as RawResponse,
            };
            let request = Request::from_host(request);
            match with_plugin::<T, _>(|r| r.route(&request)) {
                Some(super::Decision::Pool(name)) => Raw::Pool(name),
                Some(super::Decision::Respond(r)) => Raw::Respond(RawResponse {
                    status: r.status,
                    headers: r.headers,
                    body: r.body,
                }),
                Some(super::Decision::Continue) | None => Raw::Continue,
            }
        }
    }
}

/// Exports a [`Balancer`] implementation as the plugin's `balancer` world.
///
/// Invoke it once, at the crate root of a `cdylib` crate.
#[cfg(feature = "guest")]
#[macro_export]
macro_rules! export_balancer {
    ($balancer:ty) => {
        // Exports exist only in the wasm build: on the host the crate stays a plain
        // library whose algorithm unit tests can run, with no `select` symbol to clash
        // with libc's.
        #[doc(hidden)]
        #[cfg(target_arch = "wasm32")]
        type __SwitchyardExport = $crate::__private::Export<$balancer>;
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_balancer_world!(
            __SwitchyardExport with_types_in $crate::bindings
        );
    };
}

/// Exports a [`Router`] implementation as the plugin's `router` world.
///
/// Invoke it once, at the crate root of a `cdylib` crate.
#[cfg(feature = "guest")]
#[macro_export]
macro_rules! export_router {
    ($router:ty) => {
        #[doc(hidden)]
        #[cfg(target_arch = "wasm32")]
        type __SwitchyardRouterExport = $crate::__private::RouterExport<$router>;
        #[cfg(target_arch = "wasm32")]
        $crate::router_bindings::__export_router_world!(
            __SwitchyardRouterExport with_types_in $crate::router_bindings
        );
    };
}
