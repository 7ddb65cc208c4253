//! `/metrics`: valid Prometheus text (checked by `promtool` where installed — `.ci/run`
//! installs it), with counters that match the requests sent.

mod support;

use support::*;

fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_what_was_sent_and_pass_promtool() {
    let b = backends(&[0, 0]).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let dead = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}, {{ addr = \"{dead}\" }}]\n\n[[routes]]\npath_prefix = \"/app\"\npool = \"web\"\n",
            b[0].addr, b[1].addr
        ),
        &[],
    );
    for _ in 0..30 {
        assert_eq!(get(proxy.addr, "/app").await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/nowhere").await.status, 404);
    }
    let text = request(metrics.parse().unwrap(), "/metrics", "localhost", &[])
        .await
        .unwrap()
        .body;
    let served = |a: &std::net::SocketAddr| {
        sample(
            &text,
            &format!("switchyard_requests_total{{backend=\"{a}\",class=\"2xx\",pool=\"web\"}}"),
        )
    };
    assert_eq!(served(&b[0].addr) + served(&b[1].addr), 30.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "switchyard_requests_total{backend=\"\",class=\"4xx\",pool=\"\"}"
        ),
        3.0
    );
    // Every third pick is the dead backend: refused, counted, retried elsewhere.
    let refused = sample(
        &text,
        &format!("switchyard_upstream_connect_errors_total{{backend=\"{dead}\",pool=\"web\"}}"),
    );
    assert!(refused >= 9.0, "{refused}");
    assert_eq!(
        sample(&text, "switchyard_retries_total{pool=\"web\"}"),
        refused
    );
    assert_eq!(
        sample(
            &text,
            "switchyard_request_duration_seconds_count{pool=\"web\"}"
        ),
        30.0
    );
    assert!(
        sample(
            &text,
            "switchyard_plugin_calls_total{plugin=\"round-robin\"}"
        ) >= 30.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "switchyard_backend_up{{backend=\"{}\",pool=\"web\"}}",
                b[0].addr
            )
        ),
        1.0
    );

    promtool_check(&text);
}
