//! Example router plugin: canary releases. Requests marked by a header (or a cookie),
//! plus a fixed share of all others, go to the canary pool; the rest continue to the
//! static routes.
//!
//! ```toml
//! [[routes]]
//! pool = "stable"
//! router = "canary-router"
//! router_config = { pool = "canary", header = "x-canary", cookie = "canary", percent = "5" }
//! ```
//!
//! `tests/routers.rs` builds it and checks that `x-canary: 1` goes to `canary` and the
//! rest to `stable`.

use switchyard_plugin_sdk::{Config, Decision, Request, Rng, Router};

/// Canary settings and a random source for the percentage.
#[derive(Debug)]
pub struct Canary {
    pool: String,
    header: String,
    cookie: Option<String>,
    percent: u32,
    rng: Rng,
}

impl Canary {
    /// True when `request` belongs to the canary group by header or cookie.
    fn marked(&self, request: &Request<'_>) -> bool {
        let by_header = request
            .header(&self.header)
            .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes"));
        let by_cookie = self.cookie.as_ref().is_some_and(|name| {
            request.header("cookie").is_some_and(|cookies| {
                cookies.split(';').any(|c| {
                    c.trim()
                        .split_once('=')
                        .is_some_and(|(k, v)| k == name && v == "1")
                })
            })
        });
        by_header || by_cookie
    }
}

impl Router for Canary {
    fn init(config: &Config) -> Result<Self, String> {
        config.reject_unknown(&["pool", "header", "cookie", "percent"])?;
        let percent: u32 = config.parse_or("percent", 0)?;
        if percent > 100 {
            return Err(format!(
                "router_config.percent = {percent}: must be from 0 to 100"
            ));
        }
        Ok(Canary {
            pool: config.get("pool").unwrap_or("canary").to_owned(),
            header: config.get("header").unwrap_or("x-canary").to_owned(),
            cookie: config.get("cookie").map(str::to_owned),
            percent,
            rng: Rng::from_entropy(),
        })
    }

    fn route(&mut self, request: &Request<'_>) -> Decision {
        if self.marked(request) || (self.percent > 0 && self.rng.below(100) < self.percent as usize)
        {
            Decision::Pool(self.pool.clone())
        } else {
            Decision::Continue
        }
    }
}

switchyard_plugin_sdk::export_router!(Canary);
