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
        let by_cookie = self
            .cookie
            .as_ref()
            .is_some_and(|name| request.cookie(name).as_deref() == Some("1"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::TestRequest;

    fn canary(settings: &[(&str, &str)]) -> Canary {
        let config = settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Canary::init(&Config::new(config)).unwrap()
    }

    #[test]
    fn marked_requests_go_to_the_canary_and_the_rest_continue() {
        let mut c = canary(&[("pool", "beta"), ("cookie", "canary")]);
        let by_header = TestRequest::get("/").header("x-canary", "yes");
        let by_cookie = TestRequest::get("/").header("cookie", "a=b; canary=1");
        let plain = TestRequest::get("/").header("cookie", "canary=0");
        assert_eq!(
            c.route(&by_header.as_request()),
            Decision::Pool("beta".into())
        );
        assert_eq!(
            c.route(&by_cookie.as_request()),
            Decision::Pool("beta".into())
        );
        assert_eq!(c.route(&plain.as_request()), Decision::Continue);
    }

    #[test]
    fn a_percentage_sends_about_that_share() {
        let mut c = canary(&[("percent", "20")]);
        let plain = TestRequest::get("/");
        let sent = (0..5000)
            .filter(|_| c.route(&plain.as_request()) != Decision::Continue)
            .count();
        assert!((800..1200).contains(&sent), "{sent} of 5000");
        let err = Canary::init(&Config::new(vec![("percent".into(), "101".into())])).unwrap_err();
        assert!(err.contains("router_config.percent"), "{err}");
    }
}
