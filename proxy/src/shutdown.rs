//! SIGTERM: Pingora stops accepting at once and would then wait out the whole grace
//! period; this exits as soon as the requests in flight are done, within that period.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::proxy::IN_FLIGHT;

/// Time the in-flight count must stay at zero before the process exits: a connection
/// accepted just before SIGTERM may not have parsed its request yet.
const QUIET_FOR: Duration = Duration::from_millis(300);

/// Watches for SIGTERM on a thread of its own; after it, exits 0 once no request has
/// been in flight for [`QUIET_FOR`], or when `grace` runs out (status 0 too: what was
/// left is logged). The admin socket file is removed first.
pub fn exit_when_drained_after_sigterm(
    grace: Duration,
    admin_socket: PathBuf,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Registered now, so a SIGTERM during start-up is not missed.
    let mut terminate = runtime.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    })?;
    std::thread::Builder::new()
        .name("switchyard-shutdown".into())
        .spawn(move || {
            runtime.block_on(async move {
                terminate.recv().await;
                let deadline = Instant::now() + grace;
                tracing::info!(grace = ?grace, in_flight = IN_FLIGHT.load(Ordering::SeqCst), "SIGTERM: not accepting; finishing the requests in flight");
                let mut quiet_since: Option<Instant> = None;
                loop {
                    let now = Instant::now();
                    let in_flight = IN_FLIGHT.load(Ordering::SeqCst);
                    if in_flight > 0 {
                        quiet_since = None;
                    } else if now.duration_since(*quiet_since.get_or_insert(now)) >= QUIET_FOR {
                        tracing::info!("SIGTERM: all requests done; exiting");
                        break;
                    }
                    if now >= deadline {
                        tracing::warn!(in_flight, "SIGTERM: grace period over; exiting with requests still in flight");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = std::fs::remove_file(&admin_socket);
                std::process::exit(0);
            });
        })?;
    Ok(())
}
