//! Calls into a router plugin: `route`, with its answer checked.

use pingora::http::RequestHeader;

use super::PluginError;
use super::failure::FailureKind;
use super::instance::RouterInstance;
use super::request::RequestView;
use super::worlds::RouterReply;

/// A router's decision, checked: status in range, body within limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteDecision {
    /// Serve from this pool.
    Pool(String),
    /// Answer directly.
    Respond {
        /// 100–599.
        status: u16,
        /// Extra headers.
        headers: Vec<(String, String)>,
        /// At most [`MAX_ROUTER_BODY`] bytes.
        body: String,
    },
    /// Go on with the static routes.
    Continue,
}

/// Largest body a router may answer with.
pub const MAX_ROUTER_BODY: usize = 64 * 1024;

impl RouterInstance {
    /// Asks the router what to do with the request whose header is `header`.
    pub fn route(
        &self,
        header: &mut RequestHeader,
        view: &mut RequestView,
    ) -> Result<RouteDecision, PluginError> {
        let reply = self.with_instance("route", Some((header, view)), |r, store| r.route(store))?;
        match reply {
            RouterReply::Pool(name) => Ok(RouteDecision::Pool(name)),
            RouterReply::Continue => Ok(RouteDecision::Continue),
            RouterReply::Respond { status, headers, body }
                if (100..=599).contains(&status) && body.len() <= MAX_ROUTER_BODY =>
            {
                Ok(RouteDecision::Respond { status, headers, body })
            }
            RouterReply::Respond { status, body, .. } => Err(self.bad_reply(format!(
                "answered status {status} with a {}-byte body; the status must be 100–599 and the body at most {MAX_ROUTER_BODY} bytes",
                body.len()
            ))),
        }
    }

    /// Counts and describes an unusable answer.
    pub fn bad_reply(&self, detail: String) -> PluginError {
        self.invalid_answer("route", FailureKind::BadReply, detail)
    }
}
