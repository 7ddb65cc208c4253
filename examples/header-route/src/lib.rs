//! Example balancer plugin: requests carrying `x-backend: N` go to backend N (when it is
//! healthy); all others go round-robin over the healthy backends.
//!
//! Build and use it (from the repository root; the README walks through each step):
//!
//! ```text
//! $ rustup target add wasm32-wasip2
//! $ cargo build --release --target wasm32-wasip2 -p header-route
//! $ mkdir -p plugins.d && cp target/wasm32-wasip2/release/header_route.wasm plugins.d/header-route.wasm
//! $ switchyard run --config examples/header-route/switchyard.toml
//! $ curl -s -H 'x-backend: 1' http://127.0.0.1:8080/
//! backend 1
//! ```
//!
//! `tests/write_your_own_plugin.rs` runs exactly these steps against real backends.
//!
//! `balancer_config.header` names the header (default `x-backend`).

use switchyard_plugin_sdk::{Backends, Balancer, Config, Request};

/// Per-pool state: the header to read and where round-robin resumes.
#[derive(Debug)]
pub struct HeaderRoute {
    header: String,
    next: usize,
}

impl Balancer for HeaderRoute {
    fn init(config: &Config) -> Result<Self, String> {
        config.reject_unknown(&["header"])?;
        let header = config.get("header").unwrap_or("x-backend").to_owned();
        Ok(HeaderRoute { header, next: 0 })
    }

    fn select(&mut self, request: &Request<'_>, backends: &Backends<'_>) -> Option<usize> {
        let pinned = request
            .header(&self.header)
            .and_then(|v| v.trim().parse::<usize>().ok());
        if let Some(index) = pinned.filter(|&i| backends.is_healthy(i)) {
            return Some(index);
        }
        let n = backends.len();
        let pick = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| backends.is_healthy(i))?;
        self.next = pick + 1;
        Some(pick)
    }
}

switchyard_plugin_sdk::export_balancer!(HeaderRoute);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::{TestBackends, TestRequest};

    #[test]
    fn the_header_pins_a_healthy_backend_and_the_rest_go_round_robin() {
        let mut lb = HeaderRoute::init(&Config::default()).unwrap();
        let backends = TestBackends::idle(3).with(2, |b| b.healthy = false);
        let pinned = TestRequest::get("/").header("X-Backend", "1");
        assert_eq!(lb.select(&pinned.as_request(), &backends.view()), Some(1));
        // Pinned to a backend that is down: served by another, never by it.
        let to_down = TestRequest::get("/").header("x-backend", "2");
        let plain = TestRequest::get("/");
        let picks: Vec<_> = [&to_down, &plain, &plain, &plain]
            .iter()
            .map(|r| lb.select(&r.as_request(), &backends.view()))
            .collect();
        assert_eq!(picks, [Some(0), Some(1), Some(0), Some(1)]);
    }

    #[test]
    fn the_header_name_is_configurable_and_typos_are_refused() {
        let config = Config::new(vec![("header".into(), "x-shard".into())]);
        let mut lb = HeaderRoute::init(&config).unwrap();
        let request = TestRequest::get("/").header("x-shard", "2");
        assert_eq!(
            lb.select(&request.as_request(), &TestBackends::idle(3).view()),
            Some(2)
        );
        let typo = Config::new(vec![("heade".into(), "x".into())]);
        assert!(HeaderRoute::init(&typo).is_err());
    }
}
