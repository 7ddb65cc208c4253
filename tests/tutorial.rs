//! `examples/README.md`, step by step: its shell commands run as written — a new crate
//! made with `cargo new`, the SDK added with `cargo add`, tested natively, built to
//! wasm32-wasip2, checked — then the plugin is dropped into a running proxy's plugins
//! directory, reloaded through the admin socket, listed by `ctl plugins`, and serves;
//! then "Try your balancer before it takes traffic": simulated, shadowed, promoted.

mod support;

use std::path::Path;
use std::process::Command;
use support::*;

/// The code blocks of the guide, in order, with their language.
fn guide_blocks() -> Vec<(String, String)> {
    let guide = std::fs::read_to_string(repo_root().join("examples/README.md")).unwrap();
    guide
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|b| {
            let (lang, body) = b.split_once('\n').unwrap_or(("", ""));
            (lang.trim().to_owned(), body.to_owned())
        })
        .collect()
}

/// Runs a `sh` block of the guide in `dir`, as a person pastes it.
fn run(dir: &Path, block: &str, path: &std::ffi::OsStr) -> String {
    let out = Command::new("sh")
        .args(["-ec", block])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "in {}:\n{block}\n{text}",
        dir.display()
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tutorial_plugin_is_built_tested_dropped_in_reloaded_and_serves() {
    let blocks = guide_blocks();
    let shell: Vec<&String> = blocks
        .iter()
        .filter(|(l, _)| l == "sh")
        .map(|(_, b)| b)
        .collect();
    let lib_rs = &blocks.iter().find(|(l, _)| l == "rust").unwrap().1;

    // The reader's layout: a directory holding the checkout, called `switchyard`, with
    // the `switchyard` binary on PATH.
    let work = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo_root(), work.path().join("switchyard")).unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_switchyard"), bin.join("switchyard")).unwrap();
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&inherited)))
        .unwrap();

    // 1. cargo new, exactly as written.
    run(work.path(), shell[0], &path);
    let krate = work.path().join("sticky-ip");
    // Not a step of the guide, only to keep this test fast and offline: the crate
    // resolves the repository's locked versions, and builds where the SDK is built.
    std::fs::copy(repo_root().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    std::os::unix::fs::symlink(env!("SWITCHYARD_WASM_TARGET_DIR"), krate.join("target")).unwrap();
    // 2. The SDK as a dependency; 3. the code; 4. test, build, check.
    run(work.path(), shell[1], &path);
    std::fs::write(krate.join("src/lib.rs"), lib_rs).unwrap();
    let report = run(&krate, shell[2], &path);
    assert!(
        report.contains("a_client_stays_on_one_backend_until_it_is_down ... ok"),
        "the guide's unit test ran natively: {report}"
    );
    assert!(
        report.contains("balancer of switchyard:plugin@0.2.0")
            && report.contains("init:    ok")
            && report.contains("call:    select over 4 healthy backends chose backend"),
        "{report}"
    );
    let built = krate.join("target/wasm32-wasip2/release/sticky_ip.wasm");

    // A running proxy whose pool uses `web-lb`, round-robin for now.
    let b = backends(&[0, 0, 0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"web-lb\"\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[(
            "web-lb",
            wasm_dir().join("switchyard_plugin_round_robin.wasm"),
        )],
    );
    let before: Vec<String> = futures_backends(&proxy, 6).await;
    assert_eq!(
        before
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "round-robin first: {before:?}"
    );

    // 5. Drop it in; 6. reload; 7. see it.
    replace_file(&built, &proxy.plugin_dir().join("web-lb.wasm"));
    let (code, stdout, stderr) = proxy.ctl(&["reload", "web-lb"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("reloaded  web-lb"), "{stdout}");
    let (_, plugins, _) = proxy.ctl(&["plugins"]);
    let sha = switchyard::plugin::registry::sha256_hex(&std::fs::read(&built).unwrap());
    assert!(
        plugins.contains("web-lb") && plugins.contains(&sha[..12]),
        "{plugins}"
    );

    // Sticky: every request from this client now lands on one backend.
    let after = futures_backends(&proxy, 12).await;
    assert_eq!(
        after.iter().collect::<std::collections::HashSet<_>>().len(),
        1,
        "sticky: {after:?}"
    );
    drop(proxy);

    // Try it before it takes traffic. Simulate, as written:
    let simulate = shell
        .iter()
        .find(|b| b.contains("plugin simulate"))
        .unwrap();
    let report = run(&krate, simulate, &path);
    assert!(
        report.contains("sticky_ip") && report.contains("round-robin"),
        "{report}"
    );
    assert!(report.contains("latency p50/p99/p99.9"), "{report}");
    // Shadow: the guide's pool, with this test's backends.
    let pool = &blocks
        .iter()
        .find(|(l, b)| l == "toml" && b.contains("shadow = \"web-lb\""))
        .unwrap()
        .1;
    let proxy = Proxy::start(
        &format!("{pool}backends = {}\n", backends_toml(&b, &[])),
        &[("web-lb", built.clone())],
    );
    let served = futures_backends(&proxy, 40).await;
    assert_eq!(
        served
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len(),
        3,
        "round-robin stays live: {served:?}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let shadow = loop {
        let (code, text, err) = proxy.ctl(&["shadow", "web"]);
        assert_eq!(code, 0, "{text}{err}");
        if text.contains("of 20 sampled") || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(
        shadow.contains("pool web: live round-robin, shadow web-lb (sample 0.5)")
            && shadow.contains("of 20 sampled request(s)"),
        "{shadow}"
    );
    // Promote: the plugin is live, sticky, with nothing reloaded.
    let (code, promoted, err) = proxy.ctl(&["promote", "web"]);
    assert_eq!(code, 0, "{promoted}{err}");
    assert!(
        promoted.contains("pool web: live balancer is now web-lb, shadow round-robin"),
        "{promoted}"
    );
    let after = futures_backends(&proxy, 12).await;
    assert_eq!(
        after.iter().collect::<std::collections::HashSet<_>>().len(),
        1,
        "sticky once promoted: {after:?}"
    );
}

async fn futures_backends(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(proxy.addr, "/").await.backend().to_owned());
    }
    out
}
