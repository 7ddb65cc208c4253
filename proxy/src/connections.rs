//! Caps on client connections, per listener and per process.
//!
//! Every accepted connection holds a [`Slot`] for as long as it lives. Past either cap a
//! new connection is closed at once (Envoy's `max_connections` behaviour), counted, and
//! the connections already held keep being served. The default process cap keeps half
//! the open-files limit for upstream connections, so a flood of idle clients never
//! drives `accept()` into `EMFILE`, where nothing new would be served at all.

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// File descriptors kept for everything but client connections (logs, the admin and
/// metrics sockets, plugin files, health checks).
const RESERVED_FDS: u64 = 128;

/// Raises the soft open-files limit to the hard one, as nginx's
/// `worker_rlimit_nofile` and HAProxy do, and returns it.
pub fn raise_open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// The process cap when the configuration sets none: half of what the open-files
/// limit leaves, since a proxied request holds an upstream connection too.
pub fn default_max(open_files: u64) -> usize {
    usize::try_from(open_files.saturating_sub(RESERVED_FDS) / 2)
        .unwrap_or(usize::MAX)
        .max(16)
}

/// A connection counter and its cap.
#[derive(Debug)]
struct Counter {
    held: AtomicUsize,
    max: AtomicUsize,
}

impl Counter {
    fn new(max: usize) -> Self {
        Counter {
            held: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    fn try_take(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The caps of one process, with a counter per listening address.
#[derive(Debug)]
pub struct ConnectionCaps {
    process: Counter,
    listeners: HashMap<SocketAddr, Counter>,
    refused: AtomicU64,
}

impl ConnectionCaps {
    /// Caps of `max` connections in all, and `per_listener` on each of `listeners`.
    pub fn new(max: usize, per_listener: Option<usize>, listeners: &[SocketAddr]) -> Self {
        ConnectionCaps {
            process: Counter::new(max),
            listeners: listeners
                .iter()
                .map(|a| (*a, Counter::new(per_listener.unwrap_or(usize::MAX))))
                .collect(),
            refused: AtomicU64::new(0),
        }
    }

    /// Changes the caps (a configuration reload); connections over a lowered cap are
    /// not closed, new ones wait until the count is under it.
    pub fn set_limits(&self, max: usize, per_listener: Option<usize>) {
        self.process.max.store(max, Ordering::Relaxed);
        for counter in self.listeners.values() {
            counter
                .max
                .store(per_listener.unwrap_or(usize::MAX), Ordering::Relaxed);
        }
    }

    /// A slot for a connection accepted on `listener`, if both caps allow it.
    pub fn try_acquire(self: &Arc<Self>, listener: Option<SocketAddr>) -> Option<Slot> {
        let on_listener = listener.and_then(|a| self.listener(a));
        if on_listener.is_some_and(|c| !c.try_take()) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if !self.process.try_take() {
            on_listener.inspect(|c| c.give_back());
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot {
            caps: Arc::clone(self),
            listener,
        })
    }

    /// The counter of `addr`; a listener on the unspecified address counts under it.
    fn listener(&self, addr: SocketAddr) -> Option<&Counter> {
        self.listeners.get(&addr).or_else(|| {
            let any = match addr {
                SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], addr.port())),
                SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], addr.port())),
            };
            self.listeners.get(&any)
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.process.held.load(Ordering::Relaxed)
    }

    /// The process cap.
    pub fn max(&self) -> usize {
        self.process.max.load(Ordering::Relaxed)
    }

    /// Connections closed at once because a cap was reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One connection's place under the caps, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    caps: Arc<ConnectionCaps>,
    listener: Option<SocketAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.caps.process.give_back();
        if let Some(c) = self.listener.and_then(|a| self.caps.listener(a)) {
            c.give_back();
        }
    }
}

/// A server application whose connections are held under [`ConnectionCaps`].
#[derive(Debug)]
pub struct Capped<A> {
    app: Arc<A>,
    caps: Arc<ConnectionCaps>,
}

impl<A> Capped<A> {
    /// `app`, serving only the connections `caps` allow.
    pub fn new(app: A, caps: Arc<ConnectionCaps>) -> Self {
        Capped {
            app: Arc::new(app),
            caps,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Capped<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let listener = stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet().copied()));
        let Some(_slot) = self.caps.try_acquire(listener) else {
            tracing::debug!(?listener, "connection refused: max_connections reached");
            return None;
        };
        // Pingora's HTTP apps serve every request of the connection before returning.
        let mut next = self.app.process_new(stream, shutdown).await;
        while let Some(stream) = next {
            next = self.app.process_new(stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_listener_and_per_process_and_slots_give_back() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let b: SocketAddr = "0.0.0.0:8081".parse().unwrap();
        let caps = Arc::new(ConnectionCaps::new(3, Some(2), &[a, b]));
        let first = caps.try_acquire(Some(a)).unwrap();
        let _second = caps.try_acquire(Some(a)).unwrap();
        assert!(caps.try_acquire(Some(a)).is_none(), "listener cap");
        // A connection to 127.0.0.1:8081 counts under the 0.0.0.0:8081 listener.
        let _third = caps
            .try_acquire(Some("127.0.0.1:8081".parse().unwrap()))
            .unwrap();
        assert!(caps.try_acquire(Some(b)).is_none(), "process cap");
        assert_eq!((caps.held(), caps.refused()), (3, 2));
        drop(first);
        assert!(caps.try_acquire(Some(a)).is_some(), "a slot came back");
        assert_eq!(default_max(20_000), 9_936);
    }
}
