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
