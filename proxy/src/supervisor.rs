//! The background job that declares the proxy serving once every listener accepts
//! connections — not before, so that neither systemd (`READY=1`) nor `/ready` sends
//! traffic to a proxy whose listeners Pingora has not bound yet.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use crate::control::Control;
use crate::sd_notify::notify;

/// Where to connect to reach a listener: its own address, or loopback for a wildcard.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Waits until every listener accepts a connection, then marks the proxy serving
/// (`/ready` may pass) and notifies `READY=1`.
pub struct AnnounceServing {
    listeners: Vec<SocketAddr>,
    control: Arc<Control>,
}

impl AnnounceServing {
    /// Watches `listeners` on behalf of `control`.
    pub fn new(listeners: Vec<SocketAddr>, control: Arc<Control>) -> Self {
        AnnounceServing { listeners, control }
    }
}

impl std::fmt::Debug for AnnounceServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnnounceServing")
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl BackgroundService for AnnounceServing {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        for listen in &self.listeners {
            let target = reachable(*listen);
            loop {
                if tokio::net::TcpStream::connect(target).await.is_ok() {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
        self.control.mark_serving();
        for addr in &self.listeners {
            tracing::info!(%addr, "listening");
        }
        notify("READY=1");
    }
}
