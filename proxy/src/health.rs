//! Active health checks: each backend of a pool with a `health_check` is probed every
//! `interval` (HTTP `GET path` or a TCP connect, within `timeout`); `rise` passes in a
//! row bring it up, `fall` failures take it down (see [`Pool::record_check`]). A backend
//! that is down is not healthy for any plugin.
//!
//! The checker runs on its own thread and runtime and reads the current runtime on each
//! tick, so it follows configuration reloads.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HealthCheck, HealthCheckKind};
use crate::runtime::Runtime;

/// How often the checker looks for due checks.
const TICK: Duration = Duration::from_millis(50);

/// Starts the checker thread. It runs for the life of the process.
pub fn start(runtime: Arc<ArcSwap<Runtime>>) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("switchyard-health".into())
        .spawn(move || {
            rt.block_on(async move {
                // Next due time per (pool, backend address); checks in flight are not repeated.
                let mut due: HashMap<(String, SocketAddr), Instant> = HashMap::new();
                loop {
                    tokio::time::sleep(TICK).await;
                    let now = Instant::now();
                    for pool in &runtime.load().pools {
                        let Some(hc) = pool.health_check.clone() else {
                            continue;
                        };
                        for (i, b) in pool.backends.iter().enumerate() {
                            let next = due.entry((pool.name.clone(), b.addr)).or_insert(now);
                            if *next > now {
                                continue;
                            }
                            // timeout <= interval (validated), so checks of one backend never overlap.
                            *next = now + hc.interval;
                            let (pool, hc, addr) = (Arc::clone(pool), hc.clone(), b.addr);
                            tokio::spawn(async move {
                                let outcome = probe(addr, &hc).await;
                                let detail =
                                    outcome.as_ref().err().map_or(String::new(), |e| e.clone());
                                pool.record_check(i, outcome.is_ok(), &detail);
                            });
                        }
                    }
                }
            })
        })?;
    Ok(())
}

/// One check: `Ok` when it passes, else why not.
async fn probe(addr: SocketAddr, hc: &HealthCheck) -> Result<(), String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let HealthCheckKind::Http { path, expect } = &hc.kind else {
            return Ok(());
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nhost: {addr}\r\nuser-agent: switchyard-health-check\r\nconnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut head = [0u8; 64];
        let n = stream
            .read(&mut head)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let line = String::from_utf8_lossy(&head[..n]);
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no HTTP status in {line:?}"))?;
        if (expect.0..=expect.1).contains(&status) {
            Ok(())
        } else {
            Err(format!(
                "status {status}, expected {}-{}",
                expect.0, expect.1
            ))
        }
    };
    tokio::time::timeout(hc.timeout, attempt)
        .await
        .map_err(|_| format!("no answer within {:?}", hc.timeout))?
}
