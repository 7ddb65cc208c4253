//! Graceful shutdown: on SIGTERM Pingora stops accepting at once and would then wait
//! out the whole grace period; this background service exits as soon as the requests
//! in flight are done, within that period.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::logging::Logging;
use crate::telemetry::Telemetry;

/// Time the in-flight count must stay at zero before the process exits: a connection
/// accepted just before SIGTERM may not have parsed its request yet.
const QUIET_FOR: Duration = Duration::from_millis(300);

/// Exits the process once the server is shutting down and no request has been in
/// flight for [`QUIET_FOR`], or when `grace` runs out (status 0 too: what was left is
/// logged). The admin socket file is removed and the access log flushed first.
#[derive(Debug)]
pub struct DrainThenExit {
    grace: Duration,
    admin_socket: PathBuf,
    telemetry: Arc<Telemetry>,
    logging: Arc<Logging>,
}

impl DrainThenExit {
    /// Watches `telemetry`'s requests in flight for at most `grace` once shutdown begins.
    pub fn new(
        grace: Duration,
        admin_socket: PathBuf,
        telemetry: Arc<Telemetry>,
        logging: Arc<Logging>,
    ) -> Self {
        DrainThenExit {
            grace,
            admin_socket,
            telemetry,
            logging,
        }
    }
}

#[async_trait]
impl BackgroundService for DrainThenExit {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let deadline = Instant::now() + self.grace;
        tracing::info!(grace = ?self.grace, in_flight = self.telemetry.in_flight(), "shutting down: not accepting; finishing the requests in flight");
        let mut quiet_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let in_flight = self.telemetry.in_flight();
            if in_flight > 0 {
                quiet_since = None;
            } else if now.duration_since(*quiet_since.get_or_insert(now)) >= QUIET_FOR {
                tracing::info!("shutting down: all requests done; exiting");
                break;
            }
            if now >= deadline {
                tracing::warn!(
                    in_flight,
                    "shutting down: grace period over; exiting with requests still in flight"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_file(&self.admin_socket);
        // Blocks while the writer thread empties its queue; nothing else runs now.
        self.logging.flush();
        std::process::exit(0);
    }
}
