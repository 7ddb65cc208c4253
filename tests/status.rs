//! The proxy's own health for orchestrators, on the metrics listener: `/healthz` while
//! the process answers; `/ready` only once the plugins are loaded and it serves, not
//! while a pool has no backend up, and not from SIGTERM on — while it keeps serving
//! for `proxy.drain_delay` before it stops accepting.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// `GET path` on the metrics listener: (status, body), or `None` if nothing answers.
async fn probe(metrics: SocketAddr, path: &str) -> Option<(u16, String)> {
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        request(metrics, path, "localhost", &[]),
    )
    .await
    .ok()?
    .ok()?;
    Some((r.status, r.body))
}

/// Polls `path` until its status is `status` (10 s at most); the last answer.
async fn until_status(metrics: SocketAddr, path: &str, status: u16) -> Option<(u16, String)> {
    until_answer(metrics, path, |s, _| s == status).await
}

/// Polls `path` until `wanted(status, body)` (10 s at most); the last answer.
async fn until_answer(
    metrics: SocketAddr,
    path: &str,
    wanted: impl Fn(u16, &str) -> bool,
) -> Option<(u16, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = probe(metrics, path).await;
        if answer.as_ref().is_some_and(|(s, b)| wanted(*s, b)) || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metrics_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ready_while_every_pool_has_a_backend_up() {
    let b = backends(&[0]).await;
    let dead = format!("127.0.0.1:{}", free_port());
    let metrics = metrics_addr();
    let proxy = Proxy::start(
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n\
             [[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n\n\
             [[pools]]\nname = \"gone\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{dead}\" }}]\n\
             health_check = {{ kind = \"tcp\", interval = \"100ms\", fall = 1 }}\n\n\
             [[routes]]\npath_prefix = \"/gone\"\npool = \"gone\"\n\n[[routes]]\npool = \"web\"\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    assert_eq!(probe(metrics, "/healthz").await, Some((200, "ok\n".into())));
    // The dead backend's pool goes down at its first failed check: not ready, and why
    // (not ready while the listeners start, too: that 503 is not the one awaited).
    let (status, body) = until_answer(metrics, "/ready", |s, b| {
        s == 503 && !b.contains("starting")
    })
    .await
    .unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no backend up in pool(s): gone"), "{body}");
    assert_eq!(probe(metrics, "/healthz").await.unwrap().0, 200);

    // Without that pool, ready; with its only backend drained, the other is not.
    proxy.write_config(&format!(
        "[metrics]\nlisten = \"{metrics}\"\n\n[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
        backends_toml(&b, &[])
    ));
    assert_eq!(proxy.ctl(&["config", "reload"]).0, 0);
    assert_eq!(
        until_status(metrics, "/ready", 200).await,
        Some((200, "ready\n".into()))
    );
    let addr = b[0].addr.to_string();
    assert_eq!(proxy.ctl(&["drain", "web", &addr]).0, 0);
    let (status, body) = probe(metrics, "/ready").await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("no backend up in pool(s): web"), "{body}");
    let (status, _) = probe(metrics, "/nowhere").await.unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_ready_while_plugins_load() {
    // A balancer whose `init` takes 1.5 s: until it is loaded nothing on the metrics
    // listener answers ready.
    let b = backends(&[0]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::copy(
        wasm_dir().join("misbehave.wasm"),
        dir.path().join("plugins/slow.wasm"),
    )
    .unwrap();
    let (listen, metrics) = (free_port(), metrics_addr());
    let config = dir.path().join("switchyard.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{listen}\"]\n\n[metrics]\nlisten = \"{metrics}\"\n\n\
             [plugins]\ndir = \"plugins\"\ncache_dir = \"cache\"\nlimits = {{ init_timeout = \"10s\" }}\n\n\
             [admin]\nsocket = \"admin.sock\"\n\n\
             [[pools]]\nname = \"web\"\nbalancer = \"slow\"\nbalancer_config = {{ mode = \"slow-init\" }}\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut not_ready = 0;
    let ready_after = loop {
        match probe(metrics, "/ready").await {
            Some((200, _)) => break started.elapsed(),
            _ => not_ready += 1,
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never ready");
        assert!(child.try_wait().unwrap().is_none(), "switchyard exited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("ready after {ready_after:?}; {not_ready} probes before were not");
    assert!(
        ready_after >= Duration::from_millis(1500),
        "{ready_after:?}"
    );
    assert!(not_ready > 0);
    let served = request(
        format!("127.0.0.1:{listen}").parse().unwrap(),
        "/",
        "x",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(served.status, 200);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_fails_ready_at_once_and_serves_through_the_drain_delay() {
    let b = backends(&[0]).await;
    let metrics = metrics_addr();
    let mut proxy = Proxy::start_with(
        "drain_delay = \"2s\"\ngrace_period = \"5s\"",
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    // Ready once every listener has accepted a connection, a few ms after the port opens.
    assert_eq!(until_status(metrics, "/ready", 200).await.unwrap().0, 200);
    let signalled = Instant::now();
    proxy.sigterm();
    let (status, body) = until_status(metrics, "/ready", 503).await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert!(signalled.elapsed() < Duration::from_secs(1));
    // Still serving, new connections included, until the delay is over.
    let mut served = 0;
    while signalled.elapsed() < Duration::from_millis(1500) {
        let r = get(proxy.addr, "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served > 10, "{served}");
    // Then it stops accepting and exits, well within delay + grace.
    let status = proxy.wait_exit(Duration::from_secs(15)).expect("exited");
    assert!(status.success(), "{status}");
    let took = signalled.elapsed();
    println!("served {served} requests during the drain delay; exited after {took:?}");
    assert!(took >= Duration::from_secs(2), "{took:?}");
}
