//! Snapshot tests: every `tests/configs/*.toml` is parsed and its outcome (the typed
//! config, or every error with its location) compared with the `.expected` file beside
//! it. `UPDATE_SNAPSHOTS=1 cargo test -p switchyard config` rewrites the snapshots.

use super::*;

fn outcome(file: &Path, text: &str) -> String {
    match parse(text, file, &BUNDLED_NAMES, &NoResolver) {
        Ok(c) => {
            let mut out = format!(
                "ok: listen {:?}, threads {}\n",
                c.proxy.listen, c.proxy.threads
            );
            out.push_str(&format!(
                "plugins: dir {:?}, limits {:?}\n",
                c.plugins.dir, c.plugins.limits
            ));
            let p = &c.proxy;
            out.push_str(&format!(
                "edge: tls {:?}, redirect {}, grace {:?}, drain_delay {:?}, limits {:?}, trusted {:?}, access_log {:?}\n",
                p.tls.iter().map(|t| (t.listen, t.certificates.len(), t.http2)).collect::<Vec<_>>(),
                p.redirect_to_https, p.grace_period, p.drain_delay, p.limits, p.trusted_proxies, p.access_log
            ));
            out.push_str(&format!(
                "connections {:?}, paths {:?}, metrics {:?}\n",
                p.connections, p.paths, c.metrics
            ));
            if c.admin.state_file.is_some() || !c.dns.servers.is_empty() {
                out.push_str(&format!(
                    "admin state_file {:?}, dns servers {:?} timeout {:?}\n",
                    c.admin.state_file, c.dns.servers, c.dns.timeout
                ));
            }
            for w in &c.warnings {
                out.push_str(&format!("{w}\n"));
            }
            for p in &c.pools {
                out.push_str(&format!(
                    "pool {}: balancer {} at {}, config {:?}, connect_timeout {:?}, retries {}, on_plugin_failure {:?}\n  limits {:?}\n  health_check {:?}\n",
                    p.name,
                    p.balancer,
                    p.balancer_at,
                    p.balancer_config,
                    p.connect_timeout,
                    p.retries,
                    p.on_plugin_failure,
                    p.limits,
                    p.health_check
                ));
                out.push_str(&format!(
                    "  timeouts {:?}, retry_on {:?}, retry_budget {}%, tls {:?}, protocol {:?}\n",
                    p.timeouts, p.retry_on, p.retry_budget_percent, p.tls, p.protocol
                ));
                if let Some(sh) = &p.shadow {
                    out.push_str(&format!(
                        "  shadow {} at {}, config {:?}, sample {}\n",
                        sh.plugin, sh.at, sh.config, sh.sample
                    ));
                }
                if let Some(d) = &p.discovery {
                    out.push_str(&format!(
                        "  backends_from {} every {:?}\n",
                        d.source, d.interval
                    ));
                }
                for b in &p.backends {
                    out.push_str(&format!(
                        "  backend {} weight {} backup {}\n",
                        b.addr, b.weight, b.backup
                    ));
                }
            }
            for r in &c.routes {
                out.push_str(&format!(
                    "route host {:?} prefix {:?} -> {}\n",
                    r.host, r.path_prefix, r.pool
                ));
                if !r.allow.is_empty() || !r.deny.is_empty() || r.rate_limit.is_some() {
                    out.push_str(&format!(
                        "  allow {:?}, deny {:?}, rate_limit {:?}\n",
                        r.allow, r.deny, r.rate_limit
                    ));
                }
                if let Some(cache) = &r.cache {
                    out.push_str(&format!("  cache {cache:?}\n"));
                }
            }
            for cache in &c.caches {
                out.push_str(&format!("cache {cache:?}\n"));
            }
            out
        }
        Err(errors) => format!("{errors}\n"),
    }
}

#[test]
fn config_snapshots() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/configs");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "snapshot files missing in {}",
        dir.display()
    );
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut mismatches = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let got = outcome(Path::new(&format!("configs/{name}")), &text);
        let expected_path = path.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            mismatches.push(format!("--- {}\n{got}", expected_path.display()));
        }
    }
    assert!(
        mismatches.is_empty(),
        "snapshots differ (UPDATE_SNAPSHOTS=1 to accept):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn sizes_parse_with_binary_units() {
    use super::validate::parse_bytes;
    assert_eq!(parse_bytes("16MiB"), Some(16 << 20));
    assert_eq!(parse_bytes("512 KiB"), Some(512 << 10));
    assert_eq!(parse_bytes("4096"), Some(4096));
    assert_eq!(parse_bytes("16MB"), None);
}
