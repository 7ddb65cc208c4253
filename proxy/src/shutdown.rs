//! Graceful shutdown. On SIGTERM, [`DrainDelaySignal`] first fails `/ready` and keeps
//! serving for `proxy.drain_delay`, so load balancers and Kubernetes stop sending
//! traffic before the listeners close; then Pingora stops accepting and would wait out
//! the whole grace period, and [`DrainThenExit`] exits as soon as the requests in
//! flight are done, within that period.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::Control;
use crate::logging::Logging;
use crate::telemetry::Telemetry;

/// Pingora's shutdown signals (SIGTERM graceful, SIGINT fast, SIGQUIT upgrade), with
/// SIGTERM's graceful shutdown put off by `proxy.drain_delay` (read when the signal
/// comes, so a configuration reload can change it) while `/ready` fails. A second
/// SIGTERM, or a SIGINT, during the delay ends it at once.
#[derive(Debug)]
pub struct DrainDelaySignal {
    control: Arc<Control>,
}

impl DrainDelaySignal {
    /// Watches the signals for the proxy `control` runs.
    pub fn new(control: Arc<Control>) -> Self {
        DrainDelaySignal { control }
    }
}

#[async_trait]
impl pingora::server::ShutdownSignalWatch for DrainDelaySignal {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        use pingora::server::ShutdownSignal;
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            tracing::error!("cannot watch the shutdown signals; stopping now");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => return ShutdownSignal::FastShutdown,
            _ = term.recv() => {}
        }
        self.control.begin_draining();
        let delay = self.control.config().proxy.drain_delay;
        if !delay.is_zero() {
            tracing::info!(drain_delay = ?delay, "SIGTERM: /ready now fails; still serving until the drain delay is over");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = term.recv() => tracing::info!("second SIGTERM: drain delay cut short"),
                _ = int.recv() => return ShutdownSignal::FastShutdown,
            }
        }
        ShutdownSignal::GracefulTerminate
    }
}

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
    /// A directory made for this run only, removed on the way out.
    scratch: Option<PathBuf>,
    telemetry: Arc<Telemetry>,
    logging: Arc<Logging>,
}

impl DrainThenExit {
    /// Watches `telemetry`'s requests in flight for at most `grace` once shutdown begins.
    pub fn new(
        grace: Duration,
        admin_socket: PathBuf,
        scratch: Option<PathBuf>,
        telemetry: Arc<Telemetry>,
        logging: Arc<Logging>,
    ) -> Self {
        DrainThenExit {
            grace,
            admin_socket,
            scratch,
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
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
        // Blocks while the writer thread empties its queue; nothing else runs now.
        self.logging.flush();
        std::process::exit(0);
    }
}
