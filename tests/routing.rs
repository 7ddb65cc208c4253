//! Pools with different balancers behind host and path routes.

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_behind_host_and_path_routes_and_404_for_the_rest() {
    let api = backends(&[0, 0]).await;
    let web = backends(&[0, 0]).await;
    // Names must differ between pools: rename by position in the config instead.
    let proxy = Proxy::start(
        &format!(
            r#"
[[pools]]
name = "api"
balancer = "least-conn"
backends = {api}

[[pools]]
name = "web"
balancer = "round-robin"
backends = {web}

[[routes]]
host = "api.example.com"
pool = "api"

[[routes]]
host = "*.example.com"
path_prefix = "/static"
pool = "web"
"#,
            api = backends_toml(&api, &[]),
            web = backends_toml(&web, &[]),
        ),
        &[],
    );
    for _ in 0..20 {
        let r = request(proxy.addr, "/users", "api.example.com", &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    for _ in 0..20 {
        let r = request(proxy.addr, "/static/app.js", "www.example.com:8080", &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let served = |set: &[TestBackend]| set.iter().map(|b| b.control.served()).sum::<u64>();
    assert_eq!(served(&api), 20, "api pool");
    assert_eq!(served(&web), 20, "web pool");
    // Round-robin over two equal backends: exactly 10 each.
    assert_eq!((web[0].control.served(), web[1].control.served()), (10, 10));

    let miss = request(proxy.addr, "/other", "www.example.com", &[])
        .await
        .unwrap();
    assert_eq!(miss.status, 404);
    assert!(
        miss.body.contains("no route") && miss.body.contains("www.example.com"),
        "{}",
        miss.body
    );
    let miss = request(proxy.addr, "/static/x", "example.org", &[])
        .await
        .unwrap();
    assert_eq!(miss.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_connection_is_retried_on_another_backend_then_502() {
    let live = backends(&[0]).await;
    // A port with nothing listening: connections are refused.
    let dead = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{dead}\" }}, {{ addr = \"{}\" }}]\n\n[[pools]]\nname = \"down\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{dead}\" }}]\n\n[[routes]]\npool = \"web\"\n\n[[routes]]\npath_prefix = \"/down\"\npool = \"down\"\n",
            live[0].addr
        ),
        &[],
    );
    for _ in 0..20 {
        let r = get(proxy.addr, "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.backend(), "b0");
    }
    let r = get(proxy.addr, "/down").await;
    assert_eq!(r.status, 502, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backends_learn_the_client_through_x_forwarded_headers() {
    let b = backends(&[0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    let r = get(proxy.addr, "/").await;
    assert_eq!(
        r.headers.get("x-seen-forwarded-for").map(String::as_str),
        Some("127.0.0.1"),
        "{r:?}"
    );
    assert_eq!(
        r.headers.get("x-seen-forwarded-proto").map(String::as_str),
        Some("http"),
        "{r:?}"
    );
    // A client-sent chain is kept and the client appended, as nginx does.
    let r = request(
        proxy.addr,
        "/",
        "localhost",
        &[("x-forwarded-for", "203.0.113.9")],
    )
    .await
    .unwrap();
    assert_eq!(
        r.headers.get("x-seen-forwarded-for").map(String::as_str),
        Some("203.0.113.9, 127.0.0.1"),
        "{r:?}"
    );
}
