//! Retries on a response status within the retry budget, and SIGTERM: requests in
//! flight finish, new connections are refused, the process exits 0 within the grace
//! period.

mod support;

use std::time::{Duration, Instant};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotent_requests_are_retried_on_a_configured_status() {
    let b = backends(&[0, 0, 0]).await;
    b[1].control.set_status(503);
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\nretry_on = [503]\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    // Three clients: the retry budget always allows three retries in flight, so none
    // is refused here (a fourth concurrent retry may be; the next test covers that).
    let result = load(proxy.addr, "/", 3, 300).await;
    assert!(result.failures.is_empty(), "{:?}", result.failures);
    assert_eq!(result.count("b1"), 0, "no 503 reached a client: {result:?}");
    assert!(
        b[1].control.served() >= 50,
        "b1 was asked and answered 503: {}",
        b[1].control.served()
    );
    assert_eq!(result.count("b0") + result.count("b2"), 300);

    // Without retry_on, the 503 goes to the client as it is.
    proxy.write_config(&format!(
        "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
        backends_toml(&b, &[])
    ));
    let (code, _, err) = proxy.ctl(&["config", "reload"]);
    assert_eq!(code, 0, "{err}");
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(get(proxy.addr, "/").await.status);
        }
        v
    };
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_retry_budget_caps_retries_in_flight() {
    // Both backends take 300 ms; b0 then answers 503. Eight requests at once: four land
    // on b0 and want a retry together, but the budget (0 % of 8 in flight, at least 3)
    // lets only three retry at a time.
    let b = backends(&[300, 300]).await;
    b[0].control.set_status(503);
    let metrics = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\nretry_on = [503]\nretry_budget_percent = 0\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    let addr = proxy.addr;
    let all: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move { request(addr, "/", "localhost", &[]).await.unwrap().status })
        })
        .collect();
    let mut statuses = Vec::new();
    for r in all {
        statuses.push(r.await.unwrap());
    }
    let refused = statuses.iter().filter(|s| **s == 503).count();
    assert_eq!(
        refused, 1,
        "one retry over the budget, so one 503 reaches its client: {statuses:?}"
    );
    let text = request(metrics.parse().unwrap(), "/metrics", "localhost", &[])
        .await
        .unwrap()
        .body;
    assert!(
        text.contains("switchyard_retry_budget_exhausted_total{pool=\"web\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_finishes_requests_in_flight_then_exits_zero() {
    let b = backends(&[800, 800]).await;
    let mut proxy = Proxy::start_with(
        "grace_period = \"10s\"\n",
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    let addr = proxy.addr;
    // Eight slow requests in flight when SIGTERM comes.
    let in_flight: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { request(addr, "/", "localhost", &[]).await }))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while b[0].control.received() + b[1].control.received() < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    proxy.sigterm();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tokio::net::TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "a new connection was accepted after SIGTERM"
    );

    for r in in_flight {
        let r = r.await.unwrap().expect("an in-flight request failed");
        assert_eq!(r.status, 200);
    }
    let status = tokio::task::spawn_blocking(move || {
        let status = proxy.wait_exit(Duration::from_secs(10));
        (status, proxy.log())
    })
    .await
    .unwrap();
    let took = signalled.elapsed();
    let (status, log) = status;
    let status = status.unwrap_or_else(|| panic!("still running 10 s after SIGTERM:\n{log}"));
    assert!(status.success(), "exit status {status}:\n{log}");
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after SIGTERM, not when the requests were done"
    );
    assert!(log.contains("all requests done"), "{log}");
}
