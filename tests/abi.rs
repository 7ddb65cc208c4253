//! The plugin interface across versions: a plugin built against the published 0.1.0
//! interface with the SDK of that time (pinned in `tests/fixtures/sdk-0.1.0`) runs on
//! this host unchanged; a 0.2.0 plugin keys on the stable backend identity, which
//! survives a reload that reorders the pool.

mod support;

use serde_json::Value;
use std::collections::HashMap;
use support::*;

#[test]
fn the_published_0_1_0_interface_is_unchanged() {
    // A published version never changes in place; this is the file as released.
    let published = std::fs::read(repo_root().join("wit/v0.1.0/plugin.wit")).unwrap();
    assert_eq!(
        switchyard::plugin::registry::sha256_hex(&published),
        "f01fcd37323ed66cf38a6dd9685f649fc751b50a4a4e82bc9fd0d9a97fb4b3d6"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_built_against_0_1_0_loads_and_balances_as_it_did() {
    let old = wasm_dir().join("v0_1_round_robin.wasm");
    let (code, report, err) = switchyard(&["plugin", "check", old.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(
        report.contains("balancer of switchyard:plugin@0.1.0"),
        "{report}"
    );

    let b = backends(&[0, 0]).await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"old-rr\"\nbackends = {}\n",
            backends_toml(&b, &[3, 1])
        ),
        &[("old-rr", old)],
    );
    // The distribution it always gave: exactly 3:1, interleaved.
    let mut sequence = Vec::new();
    for _ in 0..400 {
        let r = get(proxy.addr, "/").await;
        assert_eq!(r.status, 200, "{r:?}");
        sequence.push(r.backend().to_owned());
    }
    let heavy = sequence.iter().filter(|s| *s == "b0").count();
    assert_eq!((heavy, 400 - heavy), (300, 100));
    for window in sequence.windows(4) {
        assert_eq!(
            window.iter().filter(|s| *s == "b1").count(),
            1,
            "{window:?}"
        );
    }
    let (_, plugins, _) = proxy.ctl(&["--json", "plugins"]);
    let plugins: Value = serde_json::from_str(&plugins).unwrap();
    let old_rr = plugins["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "old-rr")
        .cloned()
        .unwrap();
    assert_eq!(old_rr["abi"], "0.1.0", "{plugins}");
    let failures: u64 = old_rr["failures"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(failures, 0, "{old_rr}");
}

/// The backend each key went to, by name.
async fn placement(proxy: &Proxy, keys: std::ops::Range<u32>) -> HashMap<u32, String> {
    let mut placed = HashMap::new();
    for key in keys {
        let r = request(proxy.addr, "/", "x", &[("x-key", &key.to_string())])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        placed.insert(key, r.backend().to_owned());
    }
    placed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hashing_plugin_keeps_every_key_through_a_reload_that_reorders_the_pool() {
    let b = backends(&[0, 0, 0, 0]).await;
    let pool = |order: &[usize]| {
        let listed: Vec<String> = order
            .iter()
            .map(|&i| format!("{{ addr = \"{}\" }}", b[i].addr))
            .collect();
        format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"id-hash\"\nbackends = [{}]\n",
            listed.join(", ")
        )
    };
    let proxy = Proxy::start(
        &pool(&[0, 1, 2, 3]),
        &[("id-hash", wasm_dir().join("id_hash.wasm"))],
    );
    let (_, plugins, _) = proxy.ctl(&["plugins"]);
    assert!(plugins.contains("0.2.0"), "{plugins}");
    let before = placement(&proxy, 0..300).await;
    let used: std::collections::HashSet<&String> = before.values().collect();
    assert_eq!(used.len(), 4, "every backend takes keys: {before:?}");

    // Reordered: the indices change, the identities do not.
    proxy.write_config(&pool(&[3, 1, 0, 2]));
    let (code, out, err) = proxy.ctl(&["config", "reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(placement(&proxy, 0..300).await, before);

    // One backend removed: only its keys move.
    proxy.write_config(&pool(&[3, 1, 0]));
    assert_eq!(proxy.ctl(&["config", "reload"]).0, 0);
    let after = placement(&proxy, 0..300).await;
    for (key, was) in &before {
        if *was != "b2" {
            assert_eq!(
                &after[key], was,
                "key {key} moved though its backend stayed"
            );
        } else {
            assert_ne!(after[key], "b2");
        }
    }
}
