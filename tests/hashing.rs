//! The consistent-hash balancers, `ring-hash` and `maglev`, as bundled wasm plugins in
//! the real proxy in front of real backends: fair shares over 10,000 keys, few keys
//! moved when a backend is removed by a reload, the same placement in two separate
//! proxy processes, weights, bounded loads under a hot key, and the round-robin
//! fallback (counted) for requests without a key.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use support::*;

const KEYS: usize = 10_000;

/// Two pools over the same backends, keyed on `x-user`: `/r…` by ring-hash, the rest
/// by maglev. `extra` goes into both pools' `balancer_config`.
fn two_pools(backends: &str, extra: &str) -> String {
    let pool = |name: &str| {
        format!(
            "[[pools]]\nname = \"{name}\"\nbalancer = \"{name}\"\nbalancer_config = {{ key = \"header:x-user\"{extra} }}\nbackends = {backends}\n"
        )
    };
    format!(
        "{}\n{}\n[[routes]]\npath_prefix = \"/r\"\npool = \"ring-hash\"\n\n[[routes]]\npool = \"maglev\"\n",
        pool("ring-hash"),
        pool("maglev")
    )
}

/// The backend each of `keys` keys (`x-user: user-K`) went to, sent by 16 clients.
async fn placement(addr: SocketAddr, path: &str, keys: usize) -> Vec<String> {
    let clients = 16;
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let path = path.to_owned();
            tokio::spawn(async move {
                let mut placed = Vec::new();
                for key in (c..keys).step_by(clients) {
                    let user = format!("user-{key}");
                    let r = request(addr, &path, "localhost", &[("x-user", &user)])
                        .await
                        .unwrap();
                    assert_eq!(r.status, 200, "{r:?}");
                    placed.push((key, r.backend().to_owned()));
                }
                placed
            })
        })
        .collect();
    let mut all = vec![String::new(); keys];
    for task in tasks {
        for (key, backend) in task.await.unwrap() {
            all[key] = backend;
        }
    }
    all
}

fn counts(placed: &[String]) -> HashMap<&str, usize> {
    let mut by_backend = HashMap::new();
    for b in placed {
        *by_backend.entry(b.as_str()).or_default() += 1;
    }
    by_backend
}

fn assert_fair(placed: &[String], backends: usize, tolerance: f64, what: &str) {
    let fair = placed.len() as f64 / backends as f64;
    let by_backend = counts(placed);
    println!("{what}: {by_backend:?} (fair share {fair})");
    assert_eq!(by_backend.len(), backends, "{what}: {by_backend:?}");
    for (backend, n) in by_backend {
        let off = (n as f64 - fair).abs() / fair;
        assert!(
            off <= tolerance,
            "{what}: {backend} got {n} keys, {:.1} % off its fair share {fair}",
            100.0 * off
        );
    }
}

/// A counter's value from `/metrics`, 0 when absent.
async fn metric(metrics: SocketAddr, series: &str) -> f64 {
    let text = request(metrics, "/metrics", "localhost", &[])
        .await
        .unwrap()
        .body;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_keys_spread_fairly_move_little_on_removal_and_place_alike_in_two_processes() {
    let b = backends(&[0, 0, 0, 0, 0]).await;
    let config = two_pools(&backends_toml(&b, &[]), "");
    let first = Proxy::start(&config, &[]);
    let second = Proxy::start(&config, &[]);

    let ring = placement(first.addr, "/r", KEYS).await;
    let maglev = placement(first.addr, "/m", KEYS).await;
    assert_fair(&ring, 5, 0.15, "ring-hash, 10,000 keys over 5 backends");
    assert_fair(&maglev, 5, 0.10, "maglev, 10,000 keys over 5 backends");

    // Another process, started on its own, places every key the same way.
    assert_eq!(placement(second.addr, "/r", KEYS).await, ring);
    assert_eq!(placement(second.addr, "/m", KEYS).await, maglev);
    drop(second);

    // b4 removed by a configuration reload.
    first.write_config(&two_pools(&backends_toml(&b[..4], &[]), ""));
    let (code, out, err) = first.ctl(&["config", "reload"]);
    assert_eq!(code, 0, "{out}{err}");
    let ring_after = placement(first.addr, "/r", KEYS).await;
    let maglev_after = placement(first.addr, "/m", KEYS).await;
    for key in 0..KEYS {
        if ring[key] == "b4" {
            assert_ne!(ring_after[key], "b4", "ring-hash key {key}");
        } else {
            assert_eq!(
                ring_after[key], ring[key],
                "ring-hash moved key {key} though its backend stayed"
            );
        }
        assert_ne!(maglev_after[key], "b4", "maglev key {key}");
    }
    let moved = (0..KEYS).filter(|&k| maglev_after[k] != maglev[k]).count();
    let was_on_b4 = maglev.iter().filter(|b| *b == "b4").count();
    println!("maglev: removing b4 moved {moved} of {KEYS} keys ({was_on_b4} were on b4)");
    assert!(moved <= 2 * KEYS / 5, "maglev moved {moved} keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weights_2_to_1_give_about_2_to_1_and_keyless_requests_fall_back_counted() {
    let b = backends(&[0, 0]).await;
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::start(
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n{}",
            two_pools(&backends_toml(&b, &[2, 1]), "")
        ),
        &[],
    );
    for path in ["/r", "/m"] {
        let placed = placement(proxy.addr, path, 3000).await;
        let heavy = counts(&placed).get("b0").copied().unwrap_or(0) as f64 / 3000.0;
        println!("{path}: weights 2:1 gave the heavy backend {heavy:.3} of 3,000 keys");
        assert!((0.6..0.73).contains(&heavy), "{path}: {heavy}");
    }

    // No `x-user`: the plugin declines, the round-robin fallback serves, and it counts.
    let mut seen = HashMap::new();
    for _ in 0..10 {
        let r = get(proxy.addr, "/m").await;
        assert_eq!(r.status, 200, "{r:?}");
        *seen.entry(r.backend().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "round-robin over both: {seen:?}");
    let series = |decision: &str| {
        format!("switchyard_balancer_decisions_total{{decision=\"{decision}\",pool=\"maglev\"}}")
    };
    assert_eq!(metric(metrics, &series("declined")).await, 10.0);
    assert_eq!(metric(metrics, &series("plugin")).await, 3000.0);
    assert_eq!(metric(metrics, &series("failed")).await, 0.0);
}

/// 16 clients, half their requests for one hot key; returns the most requests any
/// backend held at once, and which backend that was.
async fn hot_key_peak(proxy: &Proxy, b: &[TestBackend], path: &str) -> (u64, String) {
    // One request first: the balancer's first call builds its table under the long
    // `init` budget, off the worker thread, and the bound is about the steady state.
    let r = request(proxy.addr, path, "localhost", &[("x-user", "warm-up")])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    for backend in b {
        backend.control.take_peak();
    }
    let tasks: Vec<_> = (0..16)
        .map(|c| {
            let (addr, path) = (proxy.addr, path.to_owned());
            tokio::spawn(async move {
                for i in 0..40 {
                    let user = if i % 2 == 0 {
                        "hot".to_owned()
                    } else {
                        format!("c{c}-{i}")
                    };
                    let r = request(addr, &path, "localhost", &[("x-user", &user)])
                        .await
                        .unwrap();
                    assert_eq!(r.status, 200, "{r:?}");
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    b.iter()
        .map(|backend| (backend.control.take_peak(), backend.control.name.clone()))
        .max()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bounded_load_keeps_a_hot_keys_backend_near_the_average() {
    let b = backends(&[20, 20, 20, 20, 20]).await;
    let listed = backends_toml(&b, &[]);
    // ⌈1.25 × 16 clients / 5 backends⌉ + 1: the bound, plus one request placed by the
    // other proxy thread before the first one's count landed.
    let limit = (1.25_f64 * 16.0 / 5.0).ceil() as u64 + 1;

    let bounded = Proxy::start(&two_pools(&listed, ", bounded_load = 1.25"), &[]);
    for path in ["/r", "/m"] {
        let (peak, on) = hot_key_peak(&bounded, &b, path).await;
        println!("{path} with bounded_load = 1.25: peak in flight {peak} (on {on}), limit {limit}");
        assert!(peak <= limit, "{path}: {on} held {peak} at once");
    }
    drop(bounded);

    let unbounded = Proxy::start(&two_pools(&listed, ""), &[]);
    for path in ["/r", "/m"] {
        let (peak, on) = hot_key_peak(&unbounded, &b, path).await;
        println!("{path} without a bound: peak in flight {peak} (on {on})");
        assert!(
            peak > limit,
            "{path}: the hot key's backend held only {peak}"
        );
    }
}
