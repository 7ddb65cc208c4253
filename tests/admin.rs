//! The admin socket and hot reload, against the real proxy under load.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use support::*;

fn json(proxy: &Proxy, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (_, stdout, stderr) = proxy.ctl(&all);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout} {stderr}"))
}

fn plugin_sha(proxy: &Proxy, name: &str) -> String {
    let reply = json(proxy, &["plugins"]);
    let plugins = reply["plugins"].as_array().unwrap();
    let p = plugins
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{reply}"));
    p["sha256"].as_str().unwrap().to_owned()
}

fn sha_of(path: &std::path::Path) -> String {
    switchyard::plugin::registry::sha256_hex(&std::fs::read(path).unwrap())
}

/// Share of requests `slow` received while `window` passed.
async fn window_share(all: &[TestBackend], slow: usize, window: Duration) -> f64 {
    let before: Vec<u64> = all.iter().map(|b| b.control.received()).collect();
    tokio::time::sleep(window).await;
    let delta: Vec<u64> = all
        .iter()
        .zip(&before)
        .map(|(b, s)| b.control.received() - s)
        .collect();
    delta[slow] as f64 / delta.iter().sum::<u64>().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_hot_swaps_under_load_lose_no_request_and_switch_the_algorithm() {
    let rr = wasm_dir().join("switchyard_plugin_round_robin.wasm");
    let latency = wasm_dir().join("switchyard_plugin_latency.wasm");
    let b = backends(&[0, 20]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"lb\"\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[("lb", rr.clone())],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load_until(proxy.addr, "/", 8, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut shares = Vec::new();
    for swap in 0..20 {
        let (to, name) = if swap % 2 == 0 {
            (&latency, "latency")
        } else {
            (&rr, "round-robin")
        };
        replace_file(to, &proxy.plugin_dir().join("lb.wasm"));
        let (code, stdout, stderr) = proxy.ctl(&["reload", "lb"]);
        assert_eq!(code, 0, "swap {swap}: {stdout}{stderr}");
        assert!(stdout.contains("reloaded  lb"), "swap {swap}: {stdout}");
        let share = window_share(&b, 1, Duration::from_millis(300)).await;
        shares.push(format!("{name}: {:.0} %", 100.0 * share));
        if name == "latency" {
            assert!(
                share < 0.2,
                "swap {swap} to latency: the 20 ms backend still got {:.0} %",
                100.0 * share
            );
        } else {
            assert!(
                share > 0.3,
                "swap {swap} to round-robin: the 20 ms backend got only {:.0} %",
                100.0 * share
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let result = traffic.await.unwrap();
    println!(
        "20 swaps, {} requests, share of the 20 ms backend after each: {}",
        result.total,
        shares.join(", ")
    );
    assert!(
        result.failures.is_empty(),
        "{} failed: {:?}",
        result.failures.len(),
        &result.failures[..result.failures.len().min(5)]
    );
    assert_eq!(plugin_sha(&proxy, "lb"), sha_of(&rr));
    let status = json(&proxy, &["status"]);
    assert_eq!(status["reloads"]["ok"], 20, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_reloads_are_rejected_by_file_and_reason_and_the_old_version_keeps_serving() {
    let latency = wasm_dir().join("switchyard_plugin_latency.wasm");
    let b = backends(&[0, 0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"lb\"\nbalancer_config = {{ decay = \"1s\" }}\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[("lb", latency.clone())],
    );
    let file = proxy.plugin_dir().join("lb.wasm");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load_until(proxy.addr, "/", 8, Arc::clone(&stop));

    let corrupt = proxy.dir.path().join("corrupt.wasm");
    std::fs::write(&corrupt, b"\0asm\x0d\0\x01\0 this is not a component").unwrap();
    let cases = [
        (corrupt, "is not a valid WebAssembly component"),
        (
            wasm_dir().join("wrong_world.wasm"),
            "does not fit world `balancer`",
        ),
        // least-conn does not know the pool's `decay` key: its init returns an error.
        (
            wasm_dir().join("switchyard_plugin_least_conn.wasm"),
            "rejected its configuration: unknown balancer_config key `decay`",
        ),
    ];
    for (bad, reason) in &cases {
        replace_file(bad, &file);
        let (code, stdout, _) = proxy.ctl(&["reload", "lb"]);
        println!("{stdout}");
        assert_eq!(code, 1, "{stdout}");
        assert!(
            stdout.contains(&format!("rejected  lb ({})", file.display())),
            "{stdout}"
        );
        assert!(stdout.contains(reason), "expected {reason:?} in {stdout}");
        assert_eq!(
            plugin_sha(&proxy, "lb"),
            sha_of(&latency),
            "the old version must stay"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let result = traffic.await.unwrap();
    assert!(result.failures.is_empty(), "{:?}", result.failures);
    assert!(result.total > 0);
    let status = json(&proxy, &["status"]);
    assert_eq!(status["reloads"]["failed"], 3, "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_stops_new_requests_within_100_ms_and_lets_in_flight_ones_finish() {
    let b = backends(&[0, 100]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load_until(proxy.addr, "/", 8, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let slow = b[1].addr.to_string();
    let (code, stdout, stderr) = proxy.ctl(&["drain", "web", &slow]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("draining"), "{stdout}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_100ms = b[1].control.received();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        b[1].control.received(),
        after_100ms,
        "a draining backend received new requests"
    );
    let backends = json(&proxy, &["backends", "web"]);
    let row = backends["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["addr"] == slow.as_str())
        .unwrap()
        .clone();
    assert_eq!(row["state"], "draining");
    assert_eq!(row["in_flight"], 0, "in-flight requests finished: {row}");

    let (code, _, _) = proxy.ctl(&["undrain", "web", &slow]);
    assert_eq!(code, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        b[1].control.received() > after_100ms,
        "undrain did not bring the backend back"
    );
    let (code, stdout, _) = proxy.ctl(&["weight", "web", &slow, "3"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("weight 3"), "{stdout}");

    stop.store(true, Ordering::Relaxed);
    let result = traffic.await.unwrap();
    assert!(result.failures.is_empty(), "{:?}", result.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn config_reload_adds_a_backend_and_a_route_without_dropping_and_rejects_a_broken_file() {
    let b = backends(&[0, 0, 0]).await;
    let one = format!(
        "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{}\" }}]\n",
        b[0].addr
    );
    let proxy = Proxy::start(&one, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load_until(proxy.addr, "/", 8, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(proxy.addr, "/new").await.backend(), "b0");

    proxy.write_config(&format!(
        "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{}\" }}, {{ addr = \"{}\" }}]\n\n\
         [[pools]]\nname = \"new\"\nbalancer = \"least-conn\"\nbackends = [{{ addr = \"{}\" }}]\n\n\
         [[routes]]\npool = \"web\"\n\n[[routes]]\npath_prefix = \"/new\"\npool = \"new\"\n",
        b[0].addr, b[1].addr, b[2].addr
    ));
    let (code, stdout, stderr) = proxy.ctl(&["config", "reload"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("2 pool(s), 2 route(s)"), "{stdout}");
    assert_eq!(get(proxy.addr, "/new").await.backend(), "b2");
    let before = b[1].control.received();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b[1].control.received() > before,
        "the added backend gets no traffic"
    );

    std::fs::write(
        proxy.config_path(),
        "[proxy]\nlisten = [\"127.0.0.1:1\"]\n[[pools]]\nname = 3\n",
    )
    .unwrap();
    let (code, stdout, stderr) = proxy.ctl(&["config", "reload"]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains(&format!("{}:4:8", proxy.config_path().display())),
        "{stdout}{stderr}"
    );
    assert_eq!(
        get(proxy.addr, "/new").await.backend(),
        "b2",
        "the running configuration must stay"
    );

    stop.store(true, Ordering::Relaxed);
    let result = traffic.await.unwrap();
    assert!(result.failures.is_empty(), "{:?}", result.failures);
}

fn send_line(stream: &mut UnixStream, line: &[u8]) -> Value {
    stream.write_all(line).unwrap();
    let mut reply = String::new();
    BufReader::new(stream.try_clone().unwrap())
        .read_line(&mut reply)
        .unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_socket_is_private_and_shrugs_off_bad_clients() {
    use std::os::unix::fs::PermissionsExt;
    let b = backends(&[0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[],
    );
    let mode = std::fs::metadata(proxy.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    // A client that connects and never writes.
    let _silent = UnixStream::connect(proxy.socket()).unwrap();

    let mut c = UnixStream::connect(proxy.socket()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let reply = send_line(&mut c, b"{\"cmd\": \"status\"\n");
    assert_eq!(reply["ok"], false);
    assert!(
        reply["error"].as_str().unwrap().contains("malformed JSON"),
        "{reply}"
    );
    let reply = send_line(&mut c, b"{\"cmd\": \"launch\"}\n");
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("unknown command \"launch\""),
        "{reply}"
    );
    let reply = send_line(&mut c, b"backends web\n");
    assert_eq!(reply["ok"], true, "{reply}");

    let mut big = UnixStream::connect(proxy.socket()).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut line = vec![b'x'; 1 << 20];
    line.push(b'\n');
    // The proxy may close before taking the whole megabyte; the reply is what counts.
    let _ = big.write_all(&line);
    let mut reply = String::new();
    let _ = BufReader::new(big).read_line(&mut reply);
    assert!(reply.contains("longer than 65536 bytes"), "{reply:?}");

    // Other clients and the traffic are unaffected.
    let reply = send_line(&mut c, b"{\"cmd\":\"status\"}\n");
    assert_eq!(reply["ok"], true, "{reply}");
    let result = load(proxy.addr, "/", 4, 40).await;
    assert!(result.failures.is_empty(), "{:?}", result.failures);

    // A second proxy with the same configuration is refused while the first is alive
    // (its listener is taken), and the first one's socket still answers.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["run", "--config"])
        .arg(proxy.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another process listens there"), "{stderr}");
    let reply = send_line(&mut c, b"{\"cmd\":\"status\"}\n");
    assert_eq!(reply["ok"], true, "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_with_unchanged_plugins_compiles_nothing() {
    let b = backends(&[0]).await;
    let mut proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"lb\"\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[("lb", wasm_dir().join("switchyard_plugin_least_conn.wasm"))],
    );
    assert!(
        proxy.log().contains("cache=\"miss\"") || proxy.log().contains("cache=miss"),
        "{}",
        proxy.log()
    );
    proxy.restart();
    let log = proxy.log();
    assert!(
        log.contains("plugin=\"lb\"")
            && (log.contains("cache=\"hit\"") || log.contains("cache=hit")),
        "{log}"
    );
    assert!(
        !log.contains("miss"),
        "something was compiled again:\n{log}"
    );
    assert_eq!(json(&proxy, &["plugins"])["plugins"][0]["cache"], "hit");
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_reloads_the_configuration_like_nginx() {
    let b = backends(&[0, 0]).await;
    let pool = |addr| {
        format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{addr}\" }}]\n"
        )
    };
    let mut proxy = Proxy::start(&pool(b[0].addr), &[]);
    assert_eq!(get(proxy.addr, "/").await.backend(), "b0");
    proxy.write_config(&pool(b[1].addr));
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let mut served_by = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        served_by = get(proxy.addr, "/").await.backend().to_owned();
        if served_by == "b1" {
            break;
        }
    }
    assert_eq!(served_by, "b1", "SIGHUP did not reload:\n{}", proxy.log());
    assert!(proxy.alive(), "SIGHUP must not end the proxy");
    assert!(proxy.log().contains("SIGHUP: reloading the configuration"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_default_admin_socket_is_private_and_ctl_refuses_a_stranger_s_socket() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // A system service: no XDG_RUNTIME_DIR. The socket must not be a fixed name in /tmp.
    let home = tempfile::tempdir().unwrap();
    let b = backends(&[0]).await;
    let config = home.path().join("switchyard.toml");
    let port = free_port();
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n\n[plugins]\ncache_dir = \"\"\n\n[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{}\" }}]\n",
            b[0].addr
        ),
    )
    .unwrap();
    let euid = std::fs::metadata("/proc/self").unwrap().uid();
    let expected = if euid == 0 {
        std::path::PathBuf::from("/run/switchyard/admin.sock")
    } else {
        home.path().join(".local/state/switchyard/admin.sock")
    };
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--config"])
            .arg(&config)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("XDG_STATE_HOME")
            .env("HOME", home.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .arg("ctl")
            .args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("XDG_STATE_HOME")
            .env("HOME", home.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    if euid == 0 {
        // Another test may run a proxy on the same default path; take it only if free.
        if UnixStream::connect(&expected).is_ok() {
            println!("{} is in use; skipping", expected.display());
            return;
        }
    }
    let mut proxy = run();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while UnixStream::connect(&expected).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "no socket at {}",
            expected.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = expected.parent().unwrap();
    assert_eq!(
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let (code, out) = ctl(&["status"]);
    assert_eq!(code, Some(0), "{out}");
    if euid == 0 {
        // Root can play the stranger: a socket owned by another user is not trusted.
        std::os::unix::fs::lchown(&expected, Some(65534), Some(65534)).unwrap();
        let (code, out) = ctl(&["status"]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("owned by uid 65534"), "{out}");
    }
    proxy.kill().unwrap();
    proxy.wait().unwrap();
    if euid == 0 {
        // A directory another user made first: the proxy refuses to start in it.
        let _ = std::fs::remove_file(&expected);
        std::os::unix::fs::lchown(dir, Some(65534), Some(65534)).unwrap();
        let out = run().wait_with_output().unwrap();
        std::os::unix::fs::lchown(dir, Some(0), Some(0)).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("is owned by uid 65534, not by this user"),
            "{stderr}"
        );
    }
}
