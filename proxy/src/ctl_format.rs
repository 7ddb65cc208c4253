//! Human-readable rendering of admin replies for `switchyard ctl` (`--json` prints them
//! raw).

use serde_json::Value;
use std::fmt::Write;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn short(sha: &Value) -> String {
    s(sha).chars().take(12).collect()
}

/// Renders `reply` to `request` as text lines.
pub fn human(request: &Value, reply: &Value) -> String {
    let mut out = String::new();
    if reply["ok"].as_bool() != Some(true) {
        let _ = writeln!(out, "error: {}", s(&reply["error"]));
        return out;
    }
    match request["cmd"].as_str().unwrap_or("") {
        "status" => {
            let uptime = reply["uptime_seconds"].as_u64().unwrap_or(0);
            let _ = writeln!(
                out,
                "switchyard {}, up {}",
                s(&reply["version"]),
                humantime::format_duration(std::time::Duration::from_secs(uptime))
            );
            let _ = writeln!(out, "config:    {}", s(&reply["config"]));
            let listeners: Vec<String> = reply["listeners"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            let _ = writeln!(out, "listening: {}", listeners.join(", "));
            let c = &reply["connections"];
            let _ = writeln!(
                out,
                "clients:   {} connection(s) open of {} at most; {} refused at the cap",
                s(&c["open"]),
                s(&c["max"]),
                s(&c["refused"])
            );
            let _ = writeln!(
                out,
                "reloads:   {} ok, {} failed",
                s(&reply["reloads"]["ok"]),
                s(&reply["reloads"]["failed"])
            );
            let _ = writeln!(out, "plugins:");
            for p in reply["plugins"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "  {:<16} sha256 {}  {}  loaded {}",
                    s(&p["name"]),
                    short(&p["sha256"]),
                    s(&p["source"]),
                    s(&p["loaded_at"])
                );
            }
            let _ = writeln!(out, "pools:");
            for p in reply["pools"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "  {:<16} balancer {:<16} {} backend(s)",
                    s(&p["name"]),
                    s(&p["balancer"]),
                    s(&p["backends"])
                );
            }
        }
        "plugins" => {
            let _ = writeln!(
                out,
                "{:<16} {:<6} {:<12} {:<8} {:>10} {:>9}  {:<11} POOLS  SOURCE",
                "NAME", "ABI", "SHA256", "CACHE", "CALLS", "FAILURES", "QUARANTINED"
            );
            for p in reply["plugins"].as_array().into_iter().flatten() {
                let failures: u64 = p["failures"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, n)| n.as_u64())
                    .sum();
                let pools: Vec<String> =
                    p["pools"].as_array().into_iter().flatten().map(s).collect();
                let _ = writeln!(
                    out,
                    "{:<16} {:<6} {:<12} {:<8} {:>10} {:>9}  {:<11} {}  {}",
                    s(&p["name"]),
                    s(&p["abi"]),
                    short(&p["sha256"]),
                    s(&p["cache"]),
                    s(&p["calls"]),
                    failures,
                    if p["quarantined"].as_bool() == Some(true) {
                        "yes"
                    } else {
                        "no"
                    },
                    pools.join(","),
                    s(&p["source"])
                );
            }
        }
        "backends" => {
            let _ = writeln!(
                out,
                "{:<12} {:<22} {:>6} {:<9} {:>9} {:>11} {:>9}",
                "POOL", "ADDRESS", "WEIGHT", "STATE", "IN-FLIGHT", "LATENCY-µs", "SERVED"
            );
            for b in reply["backends"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{:<12} {:<22} {:>6} {:<9} {:>9} {:>11} {:>9}",
                    s(&b["pool"]),
                    s(&b["addr"]),
                    s(&b["weight"]),
                    s(&b["state"]),
                    s(&b["in_flight"]),
                    s(&b["latency_us"]),
                    s(&b["served"])
                );
            }
        }
        "reload" => {
            for c in reply["changed"].as_array().into_iter().flatten() {
                let pools: Vec<String> =
                    c["pools"].as_array().into_iter().flatten().map(s).collect();
                let _ = writeln!(
                    out,
                    "reloaded  {} (sha256 {}) for pools {}",
                    s(&c["name"]),
                    short(&c["sha256"]),
                    pools.join(", ")
                );
            }
            for u in reply["unchanged"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "unchanged {}", s(u));
            }
            for r in reply["rejected"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "rejected  {} ({}): {}",
                    s(&r["name"]),
                    s(&r["file"]),
                    s(&r["reason"])
                );
            }
        }
        "drain" | "undrain" | "weight" => {
            let _ = writeln!(
                out,
                "pool {} backend {}: {}, weight {}",
                s(&reply["pool"]),
                s(&reply["addr"]),
                s(&reply["state"]),
                s(&reply["weight"])
            );
        }
        "shadow" => {
            let agreement = reply["agreement"]
                .as_f64()
                .map_or("-".to_owned(), |a| format!("{:.1} %", 100.0 * a));
            let _ = writeln!(
                out,
                "pool {}: live {}, shadow {} (sample {})",
                s(&reply["pool"]),
                s(&reply["live"]),
                s(&reply["shadow"]),
                s(&reply["sample"])
            );
            let _ = writeln!(
                out,
                "agreement {agreement} of {} sampled request(s); shadow declined {}, failed {}; {} dropped while it was behind{}",
                s(&reply["samples"]),
                s(&reply["declined"]),
                s(&reply["failed"]),
                s(&reply["dropped"]),
                if reply["quarantined"] == true {
                    "; shadow quarantined"
                } else {
                    ""
                }
            );
            let l = &reply["latency_us"];
            let _ = writeln!(
                out,
                "host-measured latency of the chosen backends: live {} µs, shadow would have had {} µs (mean over {} request(s))",
                s(&l["live_mean"]),
                s(&l["shadow_mean"]),
                s(&l["samples"])
            );
            let _ = writeln!(out, "{:<22} {:>12} {:>12}", "BACKEND", "LIVE", "SHADOW");
            for b in reply["backends"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{:<22} {:>12} {:>12}",
                    s(&b["addr"]),
                    s(&b["live_picks"]),
                    s(&b["shadow_picks"])
                );
            }
        }
        "cache" => cache_table(reply, &mut out),
        "purge" => {
            let _ = writeln!(
                out,
                "cache {}: purged {} entr(ies) matching {}",
                s(&reply["cache"]),
                s(&reply["purged"]),
                s(&reply["key"])
            );
        }
        "promote" => {
            let _ = writeln!(
                out,
                "pool {}: live balancer is now {}, shadow {}",
                s(&reply["pool"]),
                s(&reply["live"]),
                s(&reply["shadow"])
            );
        }
        "config-reload" => {
            let _ = writeln!(
                out,
                "configuration reloaded: {} pool(s), {} route(s)",
                s(&reply["pools"]),
                s(&reply["routes"])
            );
            for line in reply["restart_needed"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "{} (not applied)", s(line));
            }
            for line in reply["warnings"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "{}", s(line));
            }
        }
        _ => {
            let _ = writeln!(out, "{reply}");
        }
    }
    out
}

/// `ctl cache`'s table.
fn cache_table(reply: &Value, out: &mut String) {
    let _ = writeln!(
        out,
        "{:<12} {:>8} {:>12} {:>12} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "CACHE",
        "ENTRIES",
        "BYTES",
        "LIMIT",
        "HIT-RATIO",
        "EVICTIONS",
        "HIT",
        "MISS",
        "STALE",
        "REVALID",
        "BYPASS"
    );
    for c in reply["caches"].as_array().into_iter().flatten() {
        let r = &c["results"];
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:>12} {:>12} {:>8.1}% {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
            s(&c["name"]),
            s(&c["entries"]),
            s(&c["bytes"]),
            s(&c["memory_limit"]),
            c["hit_ratio"].as_f64().unwrap_or(0.0) * 100.0,
            s(&c["evictions"]),
            s(&r["hit"]),
            s(&r["miss"]),
            s(&r["stale"]),
            s(&r["revalidated"]),
            s(&r["bypass"]),
        );
        if c["disk"].is_object() {
            let d = &c["disk"];
            let _ = writeln!(
                out,
                "{:<12} {:>8} {:>12} {:>12}            {:>10}  (disk)",
                "",
                s(&d["entries"]),
                s(&d["bytes"]),
                s(&d["limit"]),
                s(&d["evictions"])
            );
        }
        for k in c["keys"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {}  ({} variant(s), {} bytes)",
                s(&k["key"]),
                s(&k["variants"]),
                s(&k["bytes"])
            );
        }
    }
}
