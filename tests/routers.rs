//! Router plugins: the example canary router and CIDR access filter, loaded from the
//! plugins directory into the real proxy.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_canary_router_sends_marked_requests_to_the_canary_pool() {
    let stable = backends(&[0, 0]).await;
    let canary = backends(&[0]).await;
    let proxy = Proxy::start(
        &format!(
            r#"
[[pools]]
name = "stable"
balancer = "round-robin"
backends = {stable}

[[pools]]
name = "canary"
balancer = "round-robin"
backends = {canary}

[[routes]]
pool = "stable"
router = "canary-router"
router_config = {{ pool = "canary", header = "x-canary", cookie = "canary" }}
"#,
            stable = backends_toml(&stable, &[]),
            canary = backends_toml(&canary, &[]),
        ),
        &[("canary-router", wasm_dir().join("canary_router.wasm"))],
    );
    for _ in 0..20 {
        let r = request(proxy.addr, "/", "localhost", &[("x-canary", "1")])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    for _ in 0..10 {
        request(
            proxy.addr,
            "/",
            "localhost",
            &[("cookie", "theme=dark; canary=1")],
        )
        .await
        .unwrap();
    }
    for _ in 0..20 {
        let r = get(proxy.addr, "/").await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        canary[0].control.served(),
        30,
        "every marked request goes to the canary"
    );
    assert_eq!(
        stable[0].control.served() + stable[1].control.served(),
        20,
        "the rest stay on stable"
    );
    let (_, plugins, _) = proxy.ctl(&["plugins"]);
    assert!(
        plugins.contains("canary-router") && plugins.contains("routes[0] router"),
        "{plugins}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_access_filter_answers_403_to_a_denied_client() {
    let b = backends(&[0]).await;
    let pool = format!(
        "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
        backends_toml(&b, &[])
    );
    // A route without host or prefix matches every request, so its router sees them all
    // (the listener-wide `[proxy] router` works the same way; the test header owns [proxy]).
    let denied = Proxy::start(
        &format!(
            "{pool}\n[[routes]]\npool = \"web\"\nrouter = \"access-filter\"\nrouter_config = {{ deny = \"127.0.0.0/8\" }}\n"
        ),
        &[("access-filter", wasm_dir().join("access_filter.wasm"))],
    );
    let r = get(denied.addr, "/").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("forbidden: 127.0.0.1:"), "{}", r.body);
    assert_eq!(
        b[0].control.served(),
        0,
        "a denied request never reaches a backend"
    );

    let allowed = Proxy::start(
        &format!(
            "{pool}\n[[routes]]\npool = \"web\"\nrouter = \"access-filter\"\nrouter_config = {{ allow = \"127.0.0.1/32, ::1\", deny = \"10.0.0.0/8\" }}\n"
        ),
        &[("access-filter", wasm_dir().join("access_filter.wasm"))],
    );
    let r = get(allowed.addr, "/").await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listener_router_sees_every_request_before_the_routes() {
    let b = backends(&[0]).await;
    let proxy = Proxy::start_with(
        "router = \"access-filter\"\nrouter_config = { deny = \"127.0.0.1\" }",
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n\n[[routes]]\npath_prefix = \"/only\"\npool = \"web\"\n",
            backends_toml(&b, &[])
        ),
        &[("access-filter", wasm_dir().join("access_filter.wasm"))],
    );
    // Denied before routing: even a path no route matches gets 403, not 404.
    assert_eq!(get(proxy.addr, "/only/x").await.status, 403);
    assert_eq!(get(proxy.addr, "/nowhere").await.status, 403);
    assert_eq!(b[0].control.served(), 0);
}
