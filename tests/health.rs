//! Active health checks and backup servers, against backends that really stop and start.

mod support;

use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::*;

const CHECKS: &str = "health_check = { kind = \"http\", path = \"/\", interval = \"200ms\", timeout = \"100ms\", rise = 2, fall = 2 }";

fn state(proxy: &Proxy, addr: &str) -> String {
    let (_, stdout, _) = proxy.ctl(&["--json", "backends"]);
    let reply: Value = serde_json::from_str(&stdout).unwrap();
    let row = reply["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["addr"] == addr)
        .cloned()
        .unwrap();
    row["state"].as_str().unwrap().to_owned()
}

/// Polls until `addr` is in `wanted` state; returns how long that took.
async fn wait_for(proxy: &Proxy, addr: &str, wanted: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    while start.elapsed() < limit {
        if state(proxy, addr) == wanted {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{addr} not {wanted} within {limit:?}:\n{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_backend_is_marked_down_and_back_up_after_a_restart() {
    let b = backends(&[0, 0, 0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n{CHECKS}\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load_until(proxy.addr, "/", 8, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let victim = b[1].addr.to_string();

    b[1].control.stop();
    let down_after = wait_for(&proxy, &victim, "down", Duration::from_secs(5)).await;
    // interval × fall = 400 ms, plus one interval for the phase of the first check.
    assert!(
        down_after < Duration::from_millis(800),
        "marked down after {down_after:?}"
    );

    b[1].control.restart().await.unwrap();
    let before = b[1].control.received();
    let up_after = wait_for(&proxy, &victim, "up", Duration::from_secs(5)).await;
    assert!(
        up_after < Duration::from_millis(800),
        "back up after {up_after:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let result = traffic.await.unwrap();
    println!(
        "stopped backend down after {down_after:?}, up again {up_after:?} after restart; {} requests, {} failed",
        result.total,
        result.failures.len()
    );
    assert!(
        b[1].control.received() > before + 1,
        "the restarted backend gets traffic again"
    );
    assert!(
        result.failures.is_empty(),
        "{:?}",
        &result.failures[..result.failures.len().min(5)]
    );
    assert!(
        proxy.log().contains("backend down: health checks fail")
            && proxy.log().contains("backend up: health checks pass again")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_serve_only_while_no_primary_is_up() {
    let b = backends(&[0, 0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{}\" }}, {{ addr = \"{}\", backup = true }}]\n{CHECKS}\n",
            b[0].addr, b[1].addr
        ),
        &[],
    );
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/").await.backend(), "b0");
    }
    b[0].control.stop();
    wait_for(
        &proxy,
        &b[0].addr.to_string(),
        "down",
        Duration::from_secs(5),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(
            get(proxy.addr, "/").await.backend(),
            "b1",
            "the backup serves while the primary is down"
        );
    }
    b[0].control.restart().await.unwrap();
    wait_for(&proxy, &b[0].addr.to_string(), "up", Duration::from_secs(5)).await;
    for _ in 0..10 {
        assert_eq!(
            get(proxy.addr, "/").await.backend(),
            "b0",
            "back to the primary"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_failing_in_a_row_is_ejected_readmitted_and_the_ejected_share_is_capped() {
    let b = backends(&[0, 0, 0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n\
             outlier_detection = {{ consecutive_failures = 3, base_ejection = \"500ms\", max_ejection = \"10s\", max_ejected_percent = 34 }}\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    b[0].control.set_status(500);
    b[1].control.set_status(500);
    for _ in 0..30 {
        get(proxy.addr, "/").await;
    }
    let states = |p: &Proxy| {
        let (_, stdout, _) = p.ctl(&["--json", "backends"]);
        let reply: Value = serde_json::from_str(&stdout).unwrap();
        reply["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["state"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let now = states(&proxy);
    // Both fail, but 34 % of three backends allows one ejection at a time.
    assert_eq!(now.iter().filter(|s| *s == "ejected").count(), 1, "{now:?}");
    let ejected = now.iter().position(|s| s == "ejected").unwrap();
    let before = b[ejected].control.received();
    for _ in 0..10 {
        get(proxy.addr, "/").await;
    }
    assert_eq!(
        b[ejected].control.received(),
        before,
        "an ejected backend gets no requests"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_ne!(
        states(&proxy)[ejected],
        "ejected",
        "re-admitted after the ejection time"
    );
    b[0].control.set_status(200);
    b[1].control.set_status(200);
    for _ in 0..12 {
        assert_eq!(get(proxy.addr, "/").await.status, 200);
    }
    assert!(proxy.log().contains("backend ejected by outlier detection"));
}
