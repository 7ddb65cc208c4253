//! The README's "write your own balancer" steps, run for real: build the example plugin
//! to wasm32-wasip2 with cargo, drop it into the plugins directory, and serve with it.

mod support;

use std::process::Command;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_example_plugin_builds_drops_in_and_serves() {
    // Step 2 of the README: cargo build --release --target wasm32-wasip2 -p header-route
    let status = Command::new(env!("CARGO"))
        .current_dir(repo_root())
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "-p",
            "header-route",
        ])
        // Reuse the directory build.rs compiled the SDK into.
        .env("CARGO_TARGET_DIR", env!("SWITCHYARD_WASM_TARGET_DIR"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .unwrap();
    assert!(status.success(), "building the example plugin failed");
    let built = std::path::Path::new(env!("SWITCHYARD_WASM_TARGET_DIR"))
        .join("wasm32-wasip2/release/header_route.wasm");

    // Step 3: copy it into the plugins directory as header-route.wasm; step 4: use it.
    let b = backends(&[0, 0, 0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"header-route\"\nbackends = {}\n",
            backends_toml(&b, &[])
        ),
        &[("header-route", built)],
    );
    assert!(
        proxy.log().contains(&format!(
            "source={}",
            proxy.plugin_dir().join("header-route.wasm").display()
        )),
        "{}",
        proxy.log()
    );
    for _ in 0..10 {
        let r = request(proxy.addr, "/", "localhost", &[("x-backend", "1")])
            .await
            .unwrap();
        assert_eq!(r.backend(), "b1");
    }
    let mut others = Vec::new();
    for _ in 0..6 {
        others.push(get(proxy.addr, "/").await.backend().to_owned());
    }
    assert_eq!(others, ["b0", "b1", "b2", "b0", "b1", "b2"]);
}
