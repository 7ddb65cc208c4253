//! `switchyard plugin simulate`, against the real proxy on the same scenario (three
//! backends, one at 80 ms): the slow backend's share agrees within 5 percentage points
//! for `latency` and `least-conn`; `--compare` shows latency winning on p99; the same
//! seed gives the same output; an access log replays; bad scenarios are named.

mod support;

use serde_json::Value;
use support::*;

const SCENARIO: &str = "b0:latency=5ms,b1:latency=5ms,b2:latency=80ms";

/// Runs `switchyard plugin simulate ARGS --json`; the parsed report.
fn simulate(args: &[&str]) -> Value {
    let mut all = vec!["plugin", "simulate"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, out, err) = switchyard(&all);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

fn share_of(run: &Value, backend: &str) -> f64 {
    run["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == backend)
        .unwrap()["share"]
        .as_f64()
        .unwrap()
}

/// The slow backend's share of `requests` from 16 clients, through the real proxy.
async fn measured_share(balancer: &str, requests: usize) -> f64 {
    let b = backends(&[5, 5, 80]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"{balancer}\"\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    let result = load(proxy.addr, "/", 16, requests).await;
    assert!(result.failures.is_empty(), "{:?}", result.failures);
    result.share("b2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_simulator_predicts_the_slow_backends_share_within_5_points() {
    for balancer in ["latency", "least-conn"] {
        let real = measured_share(balancer, 960).await;
        let run = &simulate(&[
            balancer,
            "--backends",
            SCENARIO,
            "--requests",
            "960",
            "--concurrency",
            "16",
        ])["runs"][0];
        let simulated = share_of(run, "b2");
        println!(
            "{balancer}: the 80 ms backend's share, real proxy {:.1} %, simulator {:.1} %",
            100.0 * real,
            100.0 * simulated
        );
        assert!(
            (real - simulated).abs() <= 0.05,
            "{balancer}: real {real:.3}, simulated {simulated:.3}"
        );
    }
}

#[test]
fn compare_shows_latency_winning_on_p99_and_the_same_seed_gives_the_same_output() {
    let args = [
        "round-robin",
        "--compare",
        "latency",
        "--backends",
        "a:latency=5ms±2ms,b:p50=5ms:p99=20ms,c:latency=80ms:fail=1%",
        "--requests",
        "50000",
        "--keys",
        "header:x-user=1000",
        "--seed",
        "7",
    ];
    let report = simulate(&args);
    let (rr, latency) = (&report["runs"][0], &report["runs"][1]);
    let p99 = |run: &Value| run["latency_us"]["p99"].as_u64().unwrap();
    println!(
        "p99: round-robin {} µs, latency {} µs",
        p99(rr),
        p99(latency)
    );
    assert!(p99(latency) < p99(rr), "{report}");
    assert_eq!(rr["requests"], 50_000);
    assert!(rr["backends"][2]["failures"].as_u64() > Some(0), "{rr}");
    // Deterministic: the same seed, the same report, text and JSON alike.
    assert_eq!(simulate(&args), report);
    let mut text_args = vec!["plugin", "simulate"];
    text_args.extend_from_slice(&args);
    let (_, first, _) = switchyard(&text_args);
    let (_, second, _) = switchyard(&text_args);
    assert_eq!(first, second);
    assert!(first.contains("latency p50/p99/p99.9"), "{first}");
    // --svg: per balancer, each backend's share over time; then both latency CDFs.
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("out.svg");
    text_args.extend(["--svg", chart.to_str().unwrap()]);
    let (code, _, err) = switchyard(&text_args);
    assert_eq!(code, 0, "{err}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 3 + 3 + 2, "{svg}");
    assert!(svg.contains("request latency CDF"), "{svg}");
}

#[test]
fn scenarios_with_events_and_hashing_keys_run() {
    // c is down from 1 s to 2 s: its requests fail then, and the latency balancer's
    // host-side failure bookkeeping moves traffic away.
    let run = &simulate(&[
        "maglev",
        "--config",
        "key=header:x-user",
        "--backends",
        "a:latency=5ms,b:latency=5ms:slow@1s=50ms,c:latency=5ms:down@1s-2s:capacity=4",
        "--requests",
        "20000",
        "--concurrency",
        "8",
        "--keys",
        "header:x-user=5000",
    ])["runs"][0];
    assert_eq!(run["decisions"]["fallback"], 0, "{run}");
    assert!(run["backends"][2]["failures"].as_u64() > Some(0), "{run}");
    let total: f64 = (0..3)
        .map(|i| run["backends"][i]["share"].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-9, "{run}");
    // Without the key, maglev declines and the fallback decides: counted.
    let keyless = &simulate(&[
        "maglev",
        "--config",
        "key=header:x-user",
        "--backends",
        "a,b",
        "--requests",
        "100",
    ])["runs"][0];
    assert_eq!(keyless["decisions"]["fallback"], 100, "{keyless}");
}

#[test]
fn bad_scenarios_are_named() {
    for (args, says) in [
        (
            vec!["latency", "--backends", "a:latency=fast"],
            "--backends: \"a:latency=fast\"",
        ),
        (
            vec!["latency", "--backends", "a", "--keys", "ip=3"],
            "--keys \"ip=3\"",
        ),
        (
            vec!["no-such-plugin", "--backends", "a"],
            "no bundled plugin by that name",
        ),
        (
            vec!["maglev", "--backends", "a", "--config", "key=ip"],
            "balancer_config.key",
        ),
    ] {
        let mut all = vec!["plugin", "simulate"];
        all.extend(args);
        let (code, out, err) = switchyard(&all);
        assert_eq!(code, 2, "{out}{err}");
        assert!(err.contains(says), "{says}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_access_log_replays() {
    let b = backends(&[0, 0]).await;
    let proxy = Proxy::start_with(
        "access_log = \"json\"\naccess_log_path = \"access.json\"",
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    for i in 0..50 {
        assert_eq!(get(proxy.addr, &format!("/p{i}")).await.status, 200);
    }
    let log = proxy.dir.path().join("access.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_to_string(&log).map_or(0, |t| t.lines().count()) < 50
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let run = &simulate(&[
        "ring-hash",
        "--config",
        "key=path",
        "--backends",
        "a:latency=2ms,b:latency=2ms",
        "--trace",
        log.to_str().unwrap(),
    ])["runs"][0];
    assert_eq!(run["requests"], 50, "{run}");
    assert_eq!(run["decisions"]["plugin"], 50, "{run}");
}
