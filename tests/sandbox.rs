//! Misbehaving plugins (tests/fixtures/misbehave and friends) against the real proxy
//! under bounded load: each costs at most a bounded delay, never a failed request, and
//! reaches nothing outside its sandbox.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::*;

/// Deadline the sandbox tests give a call.
const BUDGET_MS: u64 = 10;

fn misbehave_pool(b: &[TestBackend], config: &str, extra: &str) -> String {
    format!(
        "[[pools]]\nname = \"web\"\nbalancer = \"misbehave\"\nbalancer_config = {{ {config} }}\nbackends = {}\n\
         limits = {{ call_timeout = \"{BUDGET_MS}ms\", memory = \"16MiB\", quarantine_after = 0 }}\n{extra}",
        backends_toml(b, &[])
    )
}

fn misbehave() -> Vec<(&'static str, std::path::PathBuf)> {
    vec![("misbehave", wasm_dir().join("misbehave.wasm"))]
}

fn plugins_json(proxy: &Proxy) -> Value {
    let (_, stdout, stderr) = proxy.ctl(&["--json", "plugins"]);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_misbehaviour_costs_a_bounded_delay_and_no_request() {
    let b = backends(&[0, 0]).await;
    let cases = [
        ("loop-select", "timeout"),
        ("busy-50ms", "timeout"),
        ("print-loop", "timeout"),
        ("sleep", "trap"),
        ("panic", "trap"),
        ("trap-every-10", "trap"),
        ("oom", "trap"),
        ("out-of-range", "out_of_range"),
    ];
    let mut report = Vec::new();
    for (mode, kind) in cases {
        let proxy = Proxy::start(
            &misbehave_pool(&b, &format!("mode = \"{mode}\""), ""),
            &misbehave(),
        );
        let rss_before = proxy.rss_kib();
        let result = load(proxy.addr, "/", 8, 160).await;
        let rss_after = proxy.rss_kib();
        let (p50, p99) = (result.quantile(0.5), result.quantile(0.99));
        report.push(format!(
            "{mode}: p50 {:.1} ms, p99 {:.1} ms, RSS {} → {} MiB",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            rss_before / 1024,
            rss_after / 1024
        ));
        assert!(result.failures.is_empty(), "{mode}: {:?}", result.failures);
        assert_eq!(result.latencies.len(), 160, "{mode}");
        // A call waits at most one budget for the instance and runs at most one budget
        // (plus an epoch tick). Once a plugin has run out a budget, its calls leave the
        // worker thread (block_in_place), so requests queued there are not held up;
        // the rest is proxy time on two busy cores.
        let bound = Duration::from_millis(2 * BUDGET_MS + 150);
        assert!(p99 < bound, "{mode}: p99 {p99:?} over {bound:?}");
        let failures = &plugins_json(&proxy)["plugins"][0]["failures"];
        let count = |k: &str| failures[k].as_u64().unwrap_or(0);
        // Filling 16 MiB may take longer than the budget on a busy machine.
        let seen = if mode == "oom" {
            count("trap") + count("timeout")
        } else {
            count(kind)
        };
        assert!(seen > 0, "{mode}: expected {kind} failures, got {failures}");
        if mode == "oom" {
            // Linear memory is capped at 16 MiB, and a trapped instance's memory is freed.
            let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
            assert!(growth_mib < 16 + 24, "{mode}: RSS grew by {growth_mib} MiB");
        }
        if mode == "print-loop" {
            let spam = proxy.log().matches("misbehave: spam").count();
            assert!(
                spam <= 80,
                "plugin output must be rate-limited, got {spam} lines"
            );
        }
    }
    println!("{}", report.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_infinite_loop_is_interrupted_within_twice_the_deadline() {
    let b = backends(&[0]).await;
    let proxy = Proxy::start(
        &misbehave_pool(&b, "mode = \"loop-select\"", ""),
        &misbehave(),
    );
    // One client: no waiting for the instance, only the interrupted call.
    let result = load(proxy.addr, "/", 1, 30).await;
    let worst = result.latencies.iter().max().copied().unwrap_or_default();
    println!(
        "loop-select, sequential: median {:?}, worst {worst:?}",
        result.quantile(0.5)
    );
    assert!(result.failures.is_empty(), "{:?}", result.failures);
    assert!(
        result.quantile(0.5) < Duration::from_millis(2 * BUDGET_MS),
        "median {:?}",
        result.quantile(0.5)
    );
    assert!(
        result.quantile(0.5) >= Duration::from_millis(BUDGET_MS),
        "the loop was not run to its deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_first_call_running_its_long_warm_up_budget_holds_up_no_other_request() {
    // One worker thread: a call held on it would hold every connection, the accept
    // loop included. A fresh instance's first call runs under the `init` budget (3 s
    // here); the plugin loops, so it runs all of it.
    let b = backends(&[0, 0]).await;
    let body = misbehave_pool(&b, "mode = \"loop-select\"", "").replace(
        "quarantine_after = 0 }",
        "quarantine_after = 0, init_timeout = \"3s\" }",
    );
    let proxy = Proxy::start_with("threads = 1", &body, &misbehave());
    let addr = proxy.addr;
    let warming = tokio::spawn(async move {
        let started = Instant::now();
        let response = request(addr, "/", "localhost", &[]).await;
        (response, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile: new connections, each served by the fallback once the instance has
    // stayed busy for one call budget.
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let started = Instant::now();
        let response = request(addr, "/", "localhost", &[]).await.unwrap();
        assert_eq!(response.status, 200, "{}", response.body);
        worst = worst.max(started.elapsed());
    }
    let (response, warm_up) = warming.await.unwrap();
    assert_eq!(response.unwrap().status, 200);
    println!("warm-up call answered after {warm_up:?}; the others' worst {worst:?}");
    // The test means something only if the first call really ran its long budget.
    assert!(
        warm_up >= Duration::from_millis(2500),
        "warm-up {warm_up:?}"
    );
    assert!(
        worst < Duration::from_millis(1000),
        "a request waited {worst:?} behind the warm-up call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_failing_every_call_is_quarantined_then_retried_with_a_longer_backoff() {
    let b = backends(&[0, 0]).await;
    let body = format!(
        "[[pools]]\nname = \"web\"\nbalancer = \"misbehave\"\nbalancer_config = {{ mode = \"panic\" }}\nbackends = {}\n\
         limits = {{ quarantine_after = 5, quarantine_window = \"10s\", quarantine_backoff = \"1s\", quarantine_max = \"8s\" }}\n",
        backends_toml(&b, &[])
    );
    let proxy = Proxy::start(&body, &misbehave());
    for _ in 0..20 {
        assert_eq!(get(proxy.addr, "/").await.status, 200);
    }
    let p = plugins_json(&proxy)["plugins"][0].clone();
    assert_eq!(p["quarantined"], true, "{p}");
    assert!(
        p["last_error"].as_str().unwrap_or("").contains("trap"),
        "{p}"
    );
    assert_eq!(
        p["failures"]["trap"], 5,
        "the plugin is not called once quarantined: {p}"
    );
    assert_eq!(p["failures"]["quarantined"], 15, "{p}");
    let (_, table, _) = proxy.ctl(&["plugins"]);
    assert!(
        table.contains("yes"),
        "ctl plugins shows the quarantine:\n{table}"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(proxy.addr, "/").await.status, 200);
    let p = plugins_json(&proxy)["plugins"][0].clone();
    assert_eq!(
        p["failures"]["trap"], 6,
        "retried once after the back-off: {p}"
    );
    assert_eq!(
        p["quarantined"], true,
        "failed again, so quarantined again: {p}"
    );
    let log = proxy.log();
    assert!(
        log.contains("plugin quarantined") && log.contains("for_=1s") && log.contains("for_=2s"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fail_closed_pool_answers_503_while_a_fallback_pool_keeps_serving() {
    let b = backends(&[0]).await;
    let body = format!(
        "[[pools]]\nname = \"closed\"\nbalancer = \"misbehave\"\nbalancer_config = {{ mode = \"panic\" }}\non_plugin_failure = \"reject\"\nbackends = {be}\n\n\
         [[pools]]\nname = \"open\"\nbalancer = \"misbehave\"\nbalancer_config = {{ mode = \"panic\" }}\nbackends = {be}\n\n\
         [[routes]]\npath_prefix = \"/closed\"\npool = \"closed\"\n\n[[routes]]\npath_prefix = \"/open\"\npool = \"open\"\n",
        be = backends_toml(&b, &[])
    );
    let proxy = Proxy::start(&body, &misbehave());
    let r = get(proxy.addr, "/closed").await;
    assert_eq!(r.status, 503, "{r:?}");
    assert!(
        r.body
            .contains("pool \"closed\" is unavailable: its balancer plugin failed"),
        "{}",
        r.body
    );
    let r = get(proxy.addr, "/open").await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_and_environment_stay_out_of_reach() {
    let b = backends(&[0]).await;
    let secrets = tempfile::tempdir().unwrap();
    let file_secret = format!("FILE-SECRET-{}", std::process::id());
    let env_secret = format!("ENV-SECRET-{}", std::process::id());
    let path = secrets.path().join("secret.txt");
    std::fs::write(&path, &file_secret).unwrap();
    for (config, attempt) in [
        (
            format!("mode = \"read-file\", path = \"{}\"", path.display()),
            "misbehave: read ",
        ),
        (
            "mode = \"read-env\", var = \"SWITCHYARD_TEST_SECRET\"".to_owned(),
            "misbehave: env SWITCHYARD_TEST_SECRET: Err(NotPresent)",
        ),
    ] {
        let proxy = Proxy::start_env(
            "",
            &misbehave_pool(&b, &config, ""),
            &misbehave(),
            &[("SWITCHYARD_TEST_SECRET", &env_secret)],
        );
        let result = load(proxy.addr, "/", 2, 10).await;
        assert!(result.failures.is_empty(), "{:?}", result.failures);
        let log = proxy.log();
        assert!(
            log.contains(attempt),
            "the plugin's attempt and its failure are logged:\n{log}"
        );
        assert!(
            !log.contains(&file_secret) && !log.contains(&env_secret),
            "a secret leaked:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sockets_are_not_available_to_plugins() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let target = listener.local_addr().unwrap();
    let b = backends(&[0]).await;
    let body = format!(
        "[[pools]]\nname = \"web\"\nbalancer = \"socket-plugin\"\nbalancer_config = {{ addr = \"{target}\" }}\nbackends = {}\n",
        backends_toml(&b, &[])
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    std::fs::copy(
        wasm_dir().join("socket_plugin.wasm"),
        dir.path().join("plugins/socket-plugin.wasm"),
    )
    .unwrap();
    let config = dir.path().join("check.toml");
    std::fs::write(
        &config,
        format!("[proxy]\nlisten = [\"127.0.0.1:1\"]\n[plugins]\ndir = \"plugins\"\n{body}"),
    )
    .unwrap();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&check.stderr);
    if !check.status.success() {
        // The component imports wasi:sockets, which the sandbox does not link.
        assert!(
            stderr.contains("wasi:sockets"),
            "rejected, but not for its socket import:\n{stderr}"
        );
        println!(
            "socket plugin rejected at load: {}",
            stderr.lines().next().unwrap_or("")
        );
    } else {
        // std::net compiled without sockets: every attempt must fail inside the plugin.
        let proxy = Proxy::start(
            &body,
            &[("socket-plugin", wasm_dir().join("socket_plugin.wasm"))],
        );
        let result = load(proxy.addr, "/", 2, 10).await;
        assert!(result.failures.is_empty(), "{:?}", result.failures);
        assert!(
            proxy.log().contains("socket-plugin: connect"),
            "{}",
            proxy.log()
        );
    }
    assert!(listener.accept().is_err(), "a plugin opened a connection");
}

#[test]
fn load_time_rejections_name_the_missing_import_and_the_wrong_world() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    for (file, name) in [
        ("unknown_import.wasm", "thief"),
        ("wrong_world.wasm", "greeter"),
        ("misbehave.wasm", "looper"),
    ] {
        std::fs::copy(wasm_dir().join(file), plugins.join(format!("{name}.wasm"))).unwrap();
    }
    let cases = [
        ("thief", "", "fixture:evil/steal"),
        ("greeter", "", "does not fit world `balancer`"),
        (
            "looper",
            "balancer_config = { mode = \"loop-init\" }",
            "failed in `init` (timeout): interrupted after its 200ms budget",
        ),
    ];
    for (name, extra, expected) in cases {
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[plugins]\ndir = \"plugins\"\nlimits = {{ init_timeout = \"200ms\" }}\n\
                 [[pools]]\nname = \"web\"\nbalancer = \"{name}\"\n{extra}\nbackends = [{{ addr = \"127.0.0.1:2\" }}]\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{name}: {}", stderr.lines().next().unwrap_or(""));
        assert!(!out.status.success(), "{name} was accepted");
        assert!(
            stderr.contains(expected),
            "{name}: expected {expected:?} in:\n{stderr}"
        );
    }
}
