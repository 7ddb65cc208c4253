//! Shadow balancers in the real proxy: a second plugin shown the same requests and
//! backend table as the live one, whose picks are compared and never used. Agreement
//! is 100 % for an identical shadow and 0 for one that always picks another backend; a
//! looping shadow fails no request; promote and demote under load lose nothing; and a
//! shadow's plugin reloads like any other.

mod support;

use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// `ctl --json shadow POOL`.
fn shadow_state(proxy: &Proxy, pool: &str) -> Value {
    let (code, out, err) = proxy.ctl(&["--json", "shadow", pool]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// Waits until the shadow of `pool` has answered for `samples` requests (it works
/// through a queue, behind the requests).
fn wait_for_samples(proxy: &Proxy, pool: &str, samples: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = shadow_state(proxy, pool);
        if state["samples"].as_u64() >= Some(samples) || Instant::now() > deadline {
            return state;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Requests with `x-key: 0..n` to `path`; the backend of each.
async fn keyed(proxy: &Proxy, path: &str, n: usize) -> Vec<String> {
    let mut placed = Vec::new();
    for key in 0..n {
        let r = request(
            proxy.addr,
            path,
            "localhost",
            &[("x-key", &key.to_string())],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        placed.push(r.backend().to_owned());
    }
    placed
}

fn id_hash() -> std::path::PathBuf {
    wasm_dir().join("id_hash.wasm")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_identical_shadow_always_agrees_and_a_contrary_one_never_does() {
    let b = backends(&[0, 0, 0, 0]).await;
    let listed = backends_toml(&b, &[]);
    let metrics = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n\
             [[pools]]\nname = \"same\"\nbalancer = \"id-hash\"\nshadow = \"candidate\"\nbackends = {listed}\n\n\
             [[pools]]\nname = \"contrary\"\nbalancer = \"id-hash\"\nshadow = \"candidate\"\nshadow_config = {{ rank = 1 }}\nbackends = {listed}\n\n\
             [[routes]]\npath_prefix = \"/same\"\npool = \"same\"\n\n[[routes]]\npool = \"contrary\"\n"
        ),
        &[("id-hash", id_hash()), ("candidate", id_hash())],
    );
    let live_same = keyed(&proxy, "/same", 200).await;
    keyed(&proxy, "/contrary", 200).await;

    let same = wait_for_samples(&proxy, "same", 200);
    let contrary = wait_for_samples(&proxy, "contrary", 200);
    println!("identical shadow: {same}\ncontrary shadow: {contrary}");
    assert_eq!(same["samples"], 200, "{same}");
    assert_eq!(same["agreement"], 1.0, "{same}");
    assert_eq!(contrary["samples"], 200, "{contrary}");
    assert_eq!(contrary["agreed"], 0, "{contrary}");
    // The two distributions, side by side: the identical shadow's picks are the live
    // ones, backend by backend; the live picks are the backends that answered.
    for row in same["backends"].as_array().unwrap() {
        assert_eq!(row["live_picks"], row["shadow_picks"], "{row}");
    }
    let answered_by_b0 = live_same.iter().filter(|b| *b == "b0").count() as u64;
    assert_eq!(same["backends"][0]["live_picks"], answered_by_b0);
    // Each shadow was asked 200 times and told 200 outcomes: the candidate plugin
    // served both pools' shadows, so 800 calls.
    let (_, plugins, _) = proxy.ctl(&["--json", "plugins"]);
    let plugins: Value = serde_json::from_str(&plugins).unwrap();
    let candidate = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "candidate")
        .unwrap();
    assert_eq!(candidate["calls"], 800, "{candidate}");

    let (code, text, _) = proxy.ctl(&["shadow", "same"]);
    assert_eq!(code, 0);
    assert!(text.contains("agreement 100.0 % of 200"), "{text}");
    let exposition = request(metrics.parse().unwrap(), "/metrics", "localhost", &[])
        .await
        .unwrap()
        .body;
    for line in [
        "switchyard_shadow_decisions_total{agreed=\"true\",pool=\"same\"} 200",
        "switchyard_shadow_decisions_total{agreed=\"false\",pool=\"contrary\"} 200",
    ] {
        assert!(exposition.contains(line), "{line} missing:\n{exposition}");
    }
    promtool_check(&exposition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_looping_shadow_fails_no_request_and_barely_moves_the_tail() {
    let b = backends(&[0, 0, 0]).await;
    let listed = backends_toml(&b, &[]);
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"plain\"\nbalancer = \"round-robin\"\nbackends = {listed}\n\n\
             [[pools]]\nname = \"shadowed\"\nbalancer = \"round-robin\"\nshadow = \"misbehave\"\nshadow_config = {{ mode = \"loop-select\" }}\nbackends = {listed}\n\n\
             [[routes]]\npath_prefix = \"/plain\"\npool = \"plain\"\n\n[[routes]]\npool = \"shadowed\"\n"
        ),
        &[("misbehave", wasm_dir().join("misbehave.wasm"))],
    );
    // Interleaved rounds, so both see the same machine.
    let (mut plain, mut shadowed) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let p = load(proxy.addr, "/plain", 16, 800).await;
        let s = load(proxy.addr, "/shadowed", 16, 800).await;
        assert!(p.failures.is_empty(), "{:?}", p.failures);
        assert!(s.failures.is_empty(), "{:?}", s.failures);
        plain.push(p.quantile(0.99));
        shadowed.push(s.quantile(0.99));
    }
    plain.sort();
    shadowed.sort();
    let state = shadow_state(&proxy, "shadowed");
    println!("p99 without a shadow {plain:?}, with a looping shadow {shadowed:?}; shadow: {state}");
    // The 10 % target is measured in docs/benchmarks.md; here, only that the looping
    // shadow is not in the requests' way (the median of three rounds).
    assert!(
        shadowed[1] <= plain[1] * 2 + Duration::from_millis(20),
        "p99 {:?} with the looping shadow, {:?} without",
        shadowed[1],
        plain[1]
    );
    assert!(state["failed"].as_u64() > Some(0), "{state}");
    assert_eq!(state["agreed"], 0, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_and_demote_under_load_lose_nothing_and_shadows_reload() {
    let b = backends(&[0, 0, 0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"id-hash\"\nshadow = \"candidate\"\nshadow_config = {{ rank = 1 }}\nshadow_sample = 0.5\nbackends = {listed}\n\n\
             [[pools]]\nname = \"rr\"\nbalancer = \"round-robin\"\nshadow = \"next\"\nbackends = {listed}\n\n\
             [[routes]]\npath_prefix = \"/rr\"\npool = \"rr\"\n\n[[routes]]\npool = \"web\"\n",
            listed = backends_toml(&b, &[])
        ),
        &[
            ("id-hash", id_hash()),
            ("candidate", id_hash()),
            ("next", id_hash()),
        ],
    );
    let before = keyed(&proxy, "/", 30).await;

    // Eight clients, each request with its own key, while the balancers swap.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (addr, stop) = (proxy.addr, Arc::clone(&stop));
            tokio::spawn(async move {
                let (mut sent, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) && sent < 100_000 {
                    let key = format!("{c}-{sent}");
                    sent += 1;
                    match request(addr, "/", "localhost", &[("x-key", &key)]).await {
                        Ok(r) if r.status == 200 => {}
                        other => failed.push(format!("{other:?}")),
                    }
                }
                (sent, failed)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, out, err) = proxy.ctl(&["promote", "web"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("live balancer is now candidate"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let promoted = keyed(&proxy, "/", 30).await;
    let (code, out, err) = proxy.ctl(&["promote", "web"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("live balancer is now id-hash"), "{out}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failed) = (0, Vec::new());
    for c in clients {
        let (n, f) = c.await.unwrap();
        sent += n;
        failed.extend(f);
    }
    println!(
        "promote and demote under load: {sent} requests, {} failed",
        failed.len()
    );
    assert!(sent > 100, "{sent}");
    assert!(failed.is_empty(), "{failed:?}");
    // Promoted, the candidate (second choice) served every key elsewhere; demoted,
    // every key is back.
    assert!(
        before.iter().zip(&promoted).all(|(a, b)| a != b),
        "{before:?} {promoted:?}"
    );
    assert_eq!(keyed(&proxy, "/", 30).await, before);
    // shadow_sample = 0.5: exactly every other decision was shown to the shadow.
    let decisions = sent as u64 + 90;
    let web = wait_for_samples(&proxy, "web", decisions / 2);
    let shown = web["samples"].as_u64().unwrap() + web["dropped"].as_u64().unwrap();
    assert_eq!(shown, decisions / 2, "{web}");

    // A shadow's plugin reloads like any other. Pool `rr`'s shadow is id-hash, which
    // declines requests without a key; reloaded as round-robin, it picks for them.
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/rr").await.status, 200);
    }
    let before = wait_for_samples(&proxy, "rr", 10);
    assert_eq!(before["declined"], 10, "{before}");
    replace_file(
        &wasm_dir().join("switchyard_plugin_round_robin.wasm"),
        &proxy.plugin_dir().join("next.wasm"),
    );
    let (code, out, err) = proxy.ctl(&["--json", "reload", "next"]);
    assert_eq!(code, 0, "{out}{err}");
    let reply: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(reply["changed"][0]["pools"][0], "rr shadow", "{reply}");
    for _ in 0..10 {
        assert_eq!(get(proxy.addr, "/rr").await.status, 200);
    }
    let after = wait_for_samples(&proxy, "rr", 20);
    println!("rr shadow before the reload: {before}\nafter: {after}");
    assert_eq!(after["declined"], 10, "{after}");
    let picked: u64 = after["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["shadow_picks"].as_u64().unwrap())
        .sum();
    assert_eq!(picked, 10, "{after}");
}
