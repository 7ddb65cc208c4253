//! The bundled balancers, as real wasm plugins inside the real proxy, against real
//! backends on loopback.

mod support;

use std::time::Duration;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_robin_weights_3_to_1_give_exactly_300_and_100_interleaved() {
    let b = backends(&[0, 0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
            backends_toml(&b, &[3, 1])
        ),
        &[],
    );
    let mut sequence = Vec::new();
    for _ in 0..400 {
        let r = get(proxy.addr, "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        sequence.push(r.backend().to_owned());
    }
    let heavy = sequence.iter().filter(|s| *s == "b0").count();
    let light = sequence.iter().filter(|s| *s == "b1").count();
    println!("round-robin 3:1 over 400 requests: b0={heavy} b1={light}");
    assert_eq!((heavy, light), (300, 100));
    // Interleaved: every 4 consecutive picks hold the light backend exactly once.
    for window in sequence.windows(4) {
        assert_eq!(
            window.iter().filter(|s| *s == "b1").count(),
            1,
            "not interleaved: {window:?}"
        );
    }
}

/// One backend answering in 200 ms and two at once, 16 concurrent clients: the slow
/// one must get under 15 % of the requests.
async fn least_conn_starves_the_slow_backend_with(balancer_config: &str) {
    let b = backends(&[200, 0, 0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"least-conn\"\nbalancer_config = {{ {balancer_config} }}\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    let result = load(proxy.addr, "/", 16, 480).await;
    let slow = 100.0 * result.share("b0");
    println!(
        "least-conn {{ {balancer_config} }}, 16 clients: {:?}, slow share {slow:.1} %",
        result.by_backend
    );
    assert!(result.failures.is_empty(), "{:?}", result.failures);
    assert!(slow < 15.0, "slow backend got {slow:.1} %");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_conn_starves_the_slow_backend() {
    least_conn_starves_the_slow_backend_with("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn least_conn_power_of_two_choices_also_avoids_the_slow_backend() {
    least_conn_starves_the_slow_backend_with("choices = \"2\"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latency_avoids_the_slow_backend_and_takes_it_back_once_fast() {
    let b = backends(&[5, 5, 80]).await;
    let decay = Duration::from_millis(500);
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"latency\"\nbalancer_config = {{ decay = \"500ms\" }}\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    let slow = load(proxy.addr, "/", 8, 500).await;
    println!(
        "latency, 80 ms backend slow: {:?}, its share {:.1} %",
        slow.by_backend,
        100.0 * slow.share("b2")
    );
    assert!(slow.failures.is_empty(), "{:?}", slow.failures);
    assert!(
        slow.share("b2") < 0.10,
        "slow backend got {:.1} %",
        100.0 * slow.share("b2")
    );

    b[2].control.set_delay(Duration::from_millis(5));
    // Two decay times (τ) for b2's estimate to come down from its 80 ms peak…
    let _ = load_for(proxy.addr, "/", 8, 2 * decay).await;
    // …after which it is back in rotation.
    let recovered = load_for(proxy.addr, "/", 8, 2 * decay).await;
    println!(
        "latency, after b2 is fast again: {:?}, its share {:.1} %",
        recovered.by_backend,
        100.0 * recovered.share("b2")
    );
    assert!(recovered.failures.is_empty(), "{:?}", recovered.failures);
    assert!(
        recovered.share("b2") > 0.15,
        "b2 did not regain traffic: {:?}",
        recovered.by_backend
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_that_traps_on_every_call_loses_no_request() {
    let b = backends(&[0, 0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"trap-always\"\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[("trap-always", wasm_dir().join("trap_always.wasm"))],
    );
    let result = load(proxy.addr, "/", 8, 200).await;
    println!("trap-always: {:?}", result.by_backend);
    assert!(result.failures.is_empty(), "{:?}", result.failures);
    assert_eq!(result.count("b0") + result.count("b1"), 200);
    // The fallback is round-robin: both backends serve.
    assert!(
        result.count("b0") >= 80 && result.count("b1") >= 80,
        "{:?}",
        result.by_backend
    );
    let log = proxy.log();
    assert!(
        log.contains("plugin `trap-always` failed in `select` (trap)")
            && log.contains("round-robin fallback"),
        "the plugin failure was not logged:\n{log}"
    );
}
