//! `examples/README.md`, step by step: a new crate made with `cargo new`, built to
//! wasm32-wasip2, dropped into a running proxy's plugins directory, reloaded through
//! the admin socket, listed by `ctl plugins`, and serving.

mod support;

use std::path::Path;
use std::process::Command;
use support::*;

/// The code blocks of the guide, in order.
fn guide_blocks() -> Vec<String> {
    let guide = std::fs::read_to_string(repo_root().join("examples/README.md")).unwrap();
    guide
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|b| b.split_once('\n').map_or("", |(_, body)| body).to_owned())
        .collect()
}

fn cargo(dir: &Path, args: &[&str]) {
    let status = Command::new(env!("CARGO"))
        .current_dir(dir)
        .args(args)
        // Reuse the SDK build.rs already compiled for wasm.
        .env("CARGO_TARGET_DIR", env!("SWITCHYARD_WASM_TARGET_DIR"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cargo {args:?} failed in {}",
        dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tutorial_plugin_is_built_dropped_in_reloaded_and_serves() {
    let blocks = guide_blocks();
    let manifest_extra = blocks.iter().find(|b| b.contains("crate-type")).unwrap();
    let lib_rs = blocks
        .iter()
        .find(|b| b.contains("export_balancer!"))
        .unwrap();

    // 1. cargo new --lib sticky-ip (outside any workspace).
    let work = tempfile::tempdir().unwrap();
    cargo(work.path(), &["new", "--lib", "--vcs", "none", "sticky-ip"]);
    let krate = work.path().join("sticky-ip");
    // 2. Depend on the SDK, build a cdylib.
    let sdk = repo_root().join("plugin-sdk");
    let mut manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    manifest = manifest.replace("[dependencies]\n", "");
    manifest
        .push_str(&manifest_extra.replace("$SWITCHYARD/plugin-sdk", &sdk.display().to_string()));
    std::fs::write(krate.join("Cargo.toml"), manifest).unwrap();
    // The tutorial crate resolves the SDK's dependencies as the repository does.
    std::fs::copy(repo_root().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    // 3. The trait implementation, exactly as in the guide.
    std::fs::write(krate.join("src/lib.rs"), lib_rs).unwrap();
    // 4. Build for WebAssembly.
    cargo(&krate, &["build", "--release", "--target", "wasm32-wasip2"]);
    let built =
        Path::new(env!("SWITCHYARD_WASM_TARGET_DIR")).join("wasm32-wasip2/release/sticky_ip.wasm");
    let check = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["plugin", "check"])
        .arg(&built)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        report.contains("init:    ok")
            && report.contains("call:    select over 4 healthy backends chose backend"),
        "{report}"
    );

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
}

async fn futures_backends(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(get(proxy.addr, "/").await.backend().to_owned());
    }
    out
}
