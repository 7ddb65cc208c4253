//! `switchyard check` and `--help`: what an operator sees before starting the proxy.

mod support;

use support::{free_port, switchyard};

#[test]
fn check_reports_a_typo_a_missing_plugin_and_a_bad_address_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        // `check` binds and connects nothing: the addresses are only validated.
        format!(
            r#"[proxy]
listen = ["127.0.0.1:{port}"]

[[pools]]
name = "web"
balancer = "no-such-balancer"
backends = [
  {{ addr = "127.0.0.1:9", wieght = 2 }},
  {{ addr = "backend:99999" }},
]
"#,
            port = free_port()
        ),
    )
    .unwrap();
    let (code, _, stderr) = switchyard(&["check", "--config", path.to_str().unwrap()]);
    println!("{stderr}");
    assert_eq!(code, 1);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!(
            "{file}:8:27: unknown key `pools[0].backends[0].wieght`; did you mean `weight`?"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:6:12: pools[0].balancer: no plugin named \"no-such-balancer\""
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:9:12: pools[0].backends[1].addr: \"backend:99999\" is not a valid address"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}

#[test]
fn check_accepts_a_valid_file_and_loads_its_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(
        &path,
        format!("[proxy]\nlisten = [\"127.0.0.1:{}\"]\n\n[[pools]]\nname = \"web\"\nbalancer = \"latency\"\nbalancer_config = {{ decay = \"5s\" }}\nbackends = [{{ addr = \"127.0.0.1:9\" }}]\n", free_port()),
    )
    .unwrap();
    let (code, stdout, stderr) = switchyard(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("pool \"web\": balancer latency (bundled), 1 backend(s)"),
        "{stdout}"
    );
}

#[test]
fn check_reports_a_plugin_that_rejects_its_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-init.toml");
    std::fs::write(
        &path,
        format!("[proxy]\nlisten = [\"127.0.0.1:{}\"]\n\n[[pools]]\nname = \"web\"\nbalancer = \"least-conn\"\nbalancer_config = {{ choices = \"3\" }}\nbackends = [{{ addr = \"127.0.0.1:9\" }}]\n", free_port()),
    )
    .unwrap();
    let (code, _, stderr) = switchyard(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("{}:6:12 (pool \"web\")", path.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "plugin `least-conn` rejected its configuration: balancer_config.choices = \"3\""
        ),
        "{stderr}"
    );
}

#[test]
fn help_works_on_every_subcommand() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["demo", "--help"],
    ] {
        let (code, stdout, _) = switchyard(args);
        assert_eq!(code, 0, "{args:?}");
        assert!(stdout.contains("Usage: switchyard"), "{args:?}: {stdout}");
    }
}

/// `GET path` over a fresh connection, HTTP/1.0: (status, body).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: demo\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text.split("\r\n\r\n").nth(1)?.to_owned()))
}

/// The README's first command: the demo serves, the `ctl` and metrics lines it prints
/// work as printed, and Ctrl-C leaves nothing behind.
#[test]
fn the_demo_prints_lines_that_work_and_cleans_up_on_ctrl_c() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["demo", "--listen", &listen])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut printed = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let last = line.starts_with("Ctrl-C");
        printed.push(line);
        if last {
            break;
        }
    }
    let text = printed.join("\n");
    println!("{text}");
    let word_after = |marker: &str| {
        let start = text
            .find(marker)
            .unwrap_or_else(|| panic!("{marker:?} in {text}"))
            + marker.len();
        text[start..].split_whitespace().next().unwrap().to_owned()
    };
    let socket = word_after("switchyard ctl --socket ");
    let dir = word_after("Ctrl-C stops it and removes ")
        .trim_end_matches('.')
        .to_owned();
    let ready_line = printed
        .iter()
        .find(|l| l.trim_end().ends_with("/ready"))
        .unwrap_or_else(|| panic!("no /ready line in {text}"));
    let metrics = ready_line
        .trim()
        .trim_start_matches("curl -s http://")
        .trim_end_matches("/ready");

    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(metrics, "/ready").map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "the demo never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = http_get(&listen, "/").unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("backend-"), "{body}");
    let (code, stdout, stderr) =
        switchyard(&["ctl", "--socket", &socket, "backends", "round-robin"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.matches("127.0.0.1:").count(), 3, "{stdout}");

    assert!(std::path::Path::new(&dir).is_dir());
    Command::new("kill")
        .args(["-s", "INT", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = child.try_wait().unwrap();
    let _ = child.kill();
    assert!(status.is_some(), "the demo did not stop on Ctrl-C");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
}
