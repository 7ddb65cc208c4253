//! What a supervisor (systemd, Kubernetes) relies on: a listener that cannot bind ends
//! the process at once, non-zero, with one line that says why and what to do, so
//! `Restart=` or the kubelet can act; `READY=1` reaches systemd only once the proxy
//! serves, and `STOPPING=1` when SIGTERM begins the drain.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A config that listens on `listen`, with its admin socket in `dir`.
fn write_config(dir: &Path, listen: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("switchyard.toml");
    std::fs::write(
        &path,
        format!(
            "[proxy]\nlisten = [\"{listen}\"]\n\n[admin]\nsocket = \"admin.sock\"\n\n\
             [[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"127.0.0.1:9\" }}]\n"
        ),
    )
    .unwrap();
    path
}

/// Runs `command` to its end, killing it after `within`: its output and how long it ran.
fn run_for(mut command: Command, within: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    while started.elapsed() < within && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let took = started.elapsed();
    (child.wait_with_output().unwrap(), took)
}

fn switchyard_run(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command.args(["run", "--config"]).arg(config);
    command
}

/// The one-line reason, and that nothing claimed to listen first.
fn assert_one_clear_line(output: &Output, expected: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stderr}");
    assert!(
        !output.status.success(),
        "exited with {:?}: {stderr}",
        output.status
    );
    assert!(
        output.status.code().is_some(),
        "killed rather than exited: {stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in: {stderr}"));
    for part in expected {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    assert!(!stderr.contains("listening"), "{stderr}");
}

#[test]
fn an_address_in_use_ends_the_start_within_two_seconds() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), addr);
    let (output, took) = run_for(switchyard_run(&config), Duration::from_secs(10));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_one_clear_line(
        &output,
        &[
            &format!("proxy.listen {addr}"),
            "in use",
            "another process listens there",
        ],
    );
}

/// As root the test takes `CAP_NET_BIND_SERVICE` away from the proxy (`setpriv`), so
/// it meets the port as an unprivileged service does.
#[test]
fn a_privileged_port_without_the_capability_ends_the_start_naming_it() {
    // A port below 1024 that nothing listens on (the test may run as root).
    let port = (900..1024)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), addr);
    let running_as_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    let command = if running_as_root {
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set", "-net_bind_service", "--"])
            .arg(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--config"])
            .arg(&config);
        c
    } else {
        switchyard_run(&config)
    };
    let (output, took) = run_for(command, Duration::from_secs(10));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_one_clear_line(
        &output,
        &[
            &format!("proxy.listen {addr}"),
            "Permission denied",
            "CAP_NET_BIND_SERVICE",
        ],
    );
}

#[test]
fn systemd_hears_ready_once_serving_and_stopping_at_sigterm() {
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let proxy = Proxy::start_env(
        "",
        "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{ addr = \"127.0.0.1:9\" }]\n",
        &[],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Serving when it says so.
    assert!(std::net::TcpStream::connect(proxy.addr).is_ok());
    proxy.sigterm();
    let n = notify.recv(&mut buf).expect("STOPPING=1 within 10 s");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

/// Pool `web` over `b`, with `b[1]` configured at `weight_b1`; the body goes under the
/// `[admin]` table the harness opens, so it starts with the state file's key.
fn stateful_config(b: &[TestBackend], weight_b1: u32) -> String {
    format!(
        "state_file = \"state/switchyard.state\"\n\n\
         [[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
        backends_toml(b, &[1, weight_b1, 1])
    )
}

fn backend_rows(proxy: &Proxy) -> Vec<serde_json::Value> {
    let (code, stdout, stderr) = proxy.ctl(&["--json", "backends", "web"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let reply: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    reply["backends"].as_array().unwrap().clone()
}

/// (weight, state) of each backend, in pool order.
fn weights_and_states(proxy: &Proxy) -> Vec<(u64, String)> {
    backend_rows(proxy)
        .iter()
        .map(|r| {
            (
                r["weight"].as_u64().unwrap(),
                r["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drains_and_weights_survive_a_restart_and_a_config_reload() {
    let b = backends(&[0, 0, 0]).await;
    let mut proxy = {
        // The state file's directory must exist before `run` accepts the key.
        let p = Proxy::start(
            &format!(
                "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
                backends_toml(&b, &[1, 1, 1])
            ),
            &[],
        );
        std::fs::create_dir(p.dir.path().join("state")).unwrap();
        p.write_config(&stateful_config(&b, 1));
        let (code, stdout, stderr) = p.ctl(&["config", "reload"]);
        assert_eq!(code, 0, "{stdout}{stderr}");
        p
    };
    let (b1, b2) = (b[1].addr.to_string(), b[2].addr.to_string());
    assert_eq!(proxy.ctl(&["weight", "web", &b1, "4"]).0, 0);
    assert_eq!(proxy.ctl(&["drain", "web", &b2]).0, 0);
    let saved = std::fs::read_to_string(proxy.dir.path().join("state/switchyard.state")).unwrap();
    println!("{saved}");
    assert!(saved.contains(&b1) && saved.contains(&b2), "{saved}");
    let expected = vec![
        (1, "up".to_owned()),
        (4, "up".to_owned()),
        (1, "draining".to_owned()),
    ];
    assert_eq!(weights_and_states(&proxy), expected);

    // A crash and a restart: the operator's changes are back before the first request.
    proxy.restart();
    assert_eq!(weights_and_states(&proxy), expected, "{}", proxy.log());
    let result = load(proxy.addr, "/", 4, 100).await;
    assert!(result.failures.is_empty(), "{:?}", result.failures);
    assert_eq!(result.count("b2"), 0, "a drained backend got requests");
    let (b0_got, b1_got) = (result.count("b0"), result.count("b1"));
    assert!(
        b0_got > 0 && b1_got >= 3 * b0_got,
        "weights 1:4, got {b0_got}:{b1_got}"
    );

    // A reload that changes b1's configured weight keeps the run-time one, and one that
    // removes b2 drops it from the file.
    proxy.write_config(&stateful_config(&b, 2));
    let (code, stdout, stderr) = proxy.ctl(&["config", "reload"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(weights_and_states(&proxy), expected);
    proxy.write_config(&format!(
        "state_file = \"state/switchyard.state\"\n\n\
         [[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = {}\n",
        backends_toml(&b[..2], &[1, 2])
    ));
    let (code, stdout, stderr) = proxy.ctl(&["config", "reload"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let saved = std::fs::read_to_string(proxy.dir.path().join("state/switchyard.state")).unwrap();
    assert!(saved.contains(&b1) && !saved.contains(&b2), "{saved}");
    proxy.restart();
    assert_eq!(
        weights_and_states(&proxy),
        vec![(1, "up".to_owned()), (4, "up".to_owned())]
    );

    // A damaged file is reported, naming the key, and the proxy serves regardless.
    std::fs::write(
        proxy.dir.path().join("state/switchyard.state"),
        "{ not json",
    )
    .unwrap();
    proxy.restart();
    assert!(proxy.log().contains("admin.state_file"), "{}", proxy.log());
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}
