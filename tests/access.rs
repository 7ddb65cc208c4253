//! Access control and limits at the edge: per-route allow/deny lists (403), a rate
//! limit per client (429 with `Retry-After`), header and body limits (431, 413), the
//! client address behind trusted proxies, the headers sent upstream — and the metrics
//! that count each refusal.

mod support;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Sends `raw` as the whole request and returns the response status line and head.
async fn raw_request(addr: std::net::SocketAddr, raw: &[u8]) -> String {
    let out = raw_exchange(addr, raw, std::time::Duration::from_secs(10)).await;
    String::from_utf8_lossy(&out.unwrap_or_else(|(_, out)| out)).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_get_their_status_and_are_counted() {
    let b = backends(&[0]).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start_with(
        "max_header_bytes = \"8KiB\"\nmax_headers = 50\nmax_body_bytes = \"1KiB\"\n",
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{}\" }}]\n\n\
             [[routes]]\npath_prefix = \"/blocked\"\npool = \"web\"\ndeny = [\"127.0.0.0/8\", \"::1\"]\n\n\
             [[routes]]\npath_prefix = \"/internal\"\npool = \"web\"\nallow = [\"10.0.0.0/8\"]\n\n\
             [[routes]]\npath_prefix = \"/limited\"\npool = \"web\"\nrate_limit = {{ per_second = 1, burst = 3 }}\n\n\
             [[routes]]\npath_prefix = \"/\"\npool = \"web\"\nallow = [\"127.0.0.1\"]\n",
            b[0].addr
        ),
        &[],
    );

    // Deny list and allow list.
    for _ in 0..3 {
        assert_eq!(get(proxy.addr, "/blocked/x").await.status, 403);
    }
    let r = get(proxy.addr, "/internal").await;
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("127.0.0.1 may not use this route"),
        "{}",
        r.body
    );
    assert_eq!(get(proxy.addr, "/open").await.status, 200);
    assert_eq!(
        b[0].control.served(),
        1,
        "refused requests never reach a backend"
    );

    // Rate limit: a burst of 3, then 429 with the seconds until the next token.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let r = get(proxy.addr, "/limited").await;
        if r.status == 429 {
            retry_after = r.headers.get("retry-after").cloned();
        }
        statuses.push(r.status);
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert_eq!(statuses[3], 429, "{statuses:?}");
    let wait: u64 = retry_after
        .expect("429 carries Retry-After")
        .parse()
        .unwrap();
    assert!(
        (1..=1).contains(&wait),
        "one token a second: Retry-After {wait}"
    );

    // Header limits: one header too big, then too many headers.
    let big = "a".repeat(9 * 1024);
    let r = request(proxy.addr, "/", "localhost", &[("x-big", &big)])
        .await
        .unwrap();
    assert_eq!(r.status, 431, "{}", r.body);
    assert!(r.body.contains("at most 8192"), "{}", r.body);
    let many: Vec<(String, String)> = (0..60).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        request(proxy.addr, "/", "localhost", &many)
            .await
            .unwrap()
            .status,
        431
    );

    // Body limit, declared by Content-Length.
    let body = "x".repeat(2048);
    let head = raw_request(
        proxy.addr,
        format!("POST / HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");

    let text = request(metrics.parse().unwrap(), "/metrics", "localhost", &[])
        .await
        .unwrap()
        .body;
    let refused = |reason: &str| {
        sample(
            &text,
            &format!("switchyard_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("access_denied"), 4.0, "{text}");
    assert_eq!(refused("rate_limited"), 2.0, "{text}");
    assert_eq!(refused("header_too_large"), 2.0, "{text}");
    assert_eq!(refused("body_too_large"), 1.0, "{text}");
    assert_eq!(
        sample(
            &text,
            "switchyard_requests_total{backend=\"\",class=\"4xx\",pool=\"\"}"
        ),
        9.0,
        "refusals are 4xx answers without a pool: {text}"
    );
    promtool_check(&text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_client_behind_a_trusted_proxy_is_the_one_judged_and_forwarded() {
    let b = backends(&[0]).await;
    let proxy = Proxy::start_with(
        "trusted_proxies = [\"127.0.0.0/8\"]\n",
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{}\" }}]\n\n\
             [[routes]]\npath_prefix = \"/\"\npool = \"web\"\ndeny = [\"198.51.100.0/24\"]\n",
            b[0].addr
        ),
        &[],
    );
    // The left-most entry is the client's own claim and is not believed; the one the
    // trusted proxy (127.0.0.1, the test) appended is.
    let denied = request(
        proxy.addr,
        "/",
        "localhost",
        &[("x-forwarded-for", "203.0.113.1, 198.51.100.7")],
    )
    .await
    .unwrap();
    assert_eq!(denied.status, 403, "{}", denied.body);
    let spoofed = request(
        proxy.addr,
        "/",
        "localhost",
        &[("x-forwarded-for", "198.51.100.7, 203.0.113.1")],
    )
    .await
    .unwrap();
    assert_eq!(spoofed.status, 200, "{}", spoofed.body);

    // Upstream sees X-Forwarded-* and Forwarded; hop-by-hop headers are removed,
    // including one the client named in Connection.
    let r = request(
        proxy.addr,
        "/",
        "app.example",
        &[
            ("x-forwarded-proto", "https"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-hop", "1"),
            ("connection", "x-hop"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-seen-forwarded-for"], "127.0.0.1");
    assert_eq!(
        r.headers["x-seen-forwarded-proto"], "https",
        "kept from a trusted proxy"
    );
    assert_eq!(
        r.headers["x-seen-forwarded"],
        "for=127.0.0.1;proto=http;host=app.example"
    );
    for hop in [
        "x-seen-keep-alive",
        "x-seen-proxy-authorization",
        "x-seen-hop",
    ] {
        assert!(
            !r.headers.contains_key(hop),
            "{hop} was forwarded: {:?}",
            r.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_access_log_has_one_json_line_per_request() {
    let b = backends(&[0]).await;
    let proxy = Proxy::start_with(
        "access_log = \"json\"\n",
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{}\" }}]\n",
            b[0].addr
        ),
        &[],
    );
    assert_eq!(
        request(proxy.addr, "/page?q=1", "shop.example", &[])
            .await
            .unwrap()
            .status,
        200
    );
    // The line is written as the request ends; give the writer a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let line = loop {
        let log = proxy.log();
        if let Some(l) = log.lines().find(|l| l.contains("switchyard::access")) {
            break l.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access line in:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let entry: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    let fields = &entry["fields"];
    assert_eq!(fields["status"], 200, "{line}");
    assert_eq!(fields["method"], "GET");
    assert_eq!(fields["host"], "shop.example");
    assert_eq!(fields["path"], "/page");
    assert_eq!(fields["pool"], "web");
    assert_eq!(fields["backend"], b[0].addr.to_string());
    assert_eq!(fields["client"], "127.0.0.1");
    assert!(
        fields["total_us"].as_u64().unwrap() >= fields["upstream_us"].as_u64().unwrap(),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_lines_go_to_the_file_and_all_are_there_after_sigterm() {
    let b = backends(&[0]).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut proxy = Proxy::start_with(
        "access_log = \"json\"\naccess_log_path = \"access.log\"\n",
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{}\" }}]\n",
            b[0].addr
        ),
        &[],
    );
    const REQUESTS: usize = 300;
    for i in 0..REQUESTS {
        let r = request(proxy.addr, &format!("/item/{i}"), "shop.example", &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let scrape = request(metrics.parse().unwrap(), "/metrics", "m", &[])
        .await
        .unwrap();
    assert!(
        scrape
            .body
            .contains("switchyard_access_log_dropped_total 0"),
        "{}",
        scrape.body
    );
    // The lines are written by the writer thread; SIGTERM must not lose the queued ones.
    proxy.sigterm();
    let status = proxy.wait_exit(std::time::Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let text = std::fs::read_to_string(proxy.dir.path().join("access.log")).unwrap();
    let paths: Vec<String> = text
        .lines()
        .map(|l| {
            let entry: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_eq!(entry["fields"]["status"], 200, "{l}");
            entry["fields"]["path"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..REQUESTS).map(|i| format!("/item/{i}")).collect();
    assert_eq!(paths, expected, "one line per request, in order");
    // Access lines left stderr; the rest of the log stayed there.
    let log = proxy.log();
    assert!(!log.contains("switchyard::access"), "{log}");
    assert!(log.contains("listening"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stalls_its_body_gets_408() {
    // A backend that reads the whole body before answering, as an application would.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n")
                        && seen.len() >= end + 4 + 10
                    {
                        break;
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let proxy = Proxy::start_with(
        "client_timeout = \"300ms\"\n",
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{backend}\" }}]\n"
        ),
        &[],
    );
    let started = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: 10\r\n\r\nab")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "{text:?} after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The whole body in time is served.
    let full = raw_request(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nhost: localhost\r\ncontent-length: 10\r\nconnection: close\r\n\r\n0123456789",
    )
    .await;
    assert!(full.starts_with("HTTP/1.1 200"), "{full}");
}
