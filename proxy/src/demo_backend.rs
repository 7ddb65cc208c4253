//! A small HTTP/1.1 origin server for the demo and the tests: answers every request
//! with `<name>\n`, after an adjustable delay and with an adjustable status.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Knobs of a running demo backend, shared with its connections.
#[derive(Debug)]
pub struct BackendControl {
    /// Name sent in the body and the `x-backend` header.
    pub name: String,
    /// Address it listens on.
    pub addr: SocketAddr,
    stopped: AtomicBool,
    acceptor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    delay_us: AtomicU64,
    status: AtomicU16,
    /// Requests answered.
    pub served: AtomicU64,
    /// Requests whose head has arrived (answered or not yet).
    pub received: AtomicU64,
    /// Requests received and not answered yet.
    active: AtomicU64,
    /// The most requests it has held at once since the last [`BackendControl::take_peak`].
    peak: AtomicU64,
    /// Bumped by [`BackendControl::kill`]: every connection resets.
    kills: tokio::sync::watch::Sender<u64>,
}

impl BackendControl {
    /// Delay before each answer from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_us.store(
            u64::try_from(delay.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The most requests it held at once (received, not yet answered) since the last
    /// call, which starts a new count.
    pub fn take_peak(&self) -> u64 {
        self.peak
            .swap(self.active.load(Ordering::Relaxed), Ordering::Relaxed)
    }

    /// Status of each answer from now on.
    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Requests received so far, including those still being answered.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// Binds `addr` (use port 0 for an ephemeral port) and serves until the runtime stops.
pub async fn start(
    name: &str,
    addr: SocketAddr,
    delay: Duration,
) -> std::io::Result<(SocketAddr, Arc<BackendControl>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let control = Arc::new(BackendControl {
        name: name.to_owned(),
        addr: local,
        delay_us: AtomicU64::new(0),
        status: AtomicU16::new(200),
        served: AtomicU64::new(0),
        received: AtomicU64::new(0),
        active: AtomicU64::new(0),
        peak: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
        acceptor: Mutex::new(None),
        kills: tokio::sync::watch::Sender::new(0),
    });
    control.set_delay(delay);
    accept_on(listener, &control);
    Ok((local, control))
}

fn accept_on(listener: TcpListener, control: &Arc<BackendControl>) {
    let shared = Arc::clone(control);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let control = Arc::clone(&shared);
            let mut kills = control.kills.subscribe();
            tokio::spawn(async move {
                let mut stream = stream;
                tokio::select! {
                    // A connection error only ends that connection.
                    _ = serve(&mut stream, &control) => {}
                    _ = kills.changed() => {
                        // As a crashed process's sockets: reset, even mid-request.
                        let _ = stream.set_zero_linger();
                    }
                }
            });
        }
    });
    *control
        .acceptor
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(task);
}

impl BackendControl {
    /// Stops the server as a crash would: the port is closed (connections are refused)
    /// and open connections are closed before their next request.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        if let Some(task) = self
            .acceptor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }

    /// Kills the server as a crash would: the port is closed and every open connection
    /// is reset at once, requests in progress included.
    pub fn kill(&self) {
        self.stop();
        self.kills.send_modify(|n| *n += 1);
    }

    /// Starts a stopped server again on the same address.
    pub async fn restart(self: &Arc<Self>) -> std::io::Result<()> {
        // While the port was free, an outgoing connection of this machine may have taken
        // it as its local port; it is free again once that connection closes.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e),
            }
        };
        self.stopped.store(false, Ordering::Relaxed);
        accept_on(listener, self);
        Ok(())
    }
}

const MAX_HEAD: usize = 64 * 1024;

async fn serve(stream: &mut TcpStream, control: &BackendControl) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if control.stopped.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Read one request head.
        let head_end = loop {
            if let Some(pos) = find(&buf, b"\r\n\r\n") {
                break pos + 4;
            }
            if buf.len() > MAX_HEAD {
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let raw_head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let target = raw_head.split_whitespace().nth(1).unwrap_or("").to_owned();
        let head = raw_head.to_ascii_lowercase();
        let body_len = header_value(&head, "content-length")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        let close = header_value(&head, "connection").is_some_and(|v| v == "close");
        while buf.len() < head_end + body_len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..head_end + body_len);
        // Stopped while this connection waited: close it unanswered, as a crash would.
        if control.stopped.load(Ordering::Relaxed) {
            return Ok(());
        }
        control.received.fetch_add(1, Ordering::Relaxed);
        let active = Active::begin(control);
        let delay = control.delay_us.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(Duration::from_micros(delay)).await;
        }
        drop(active);
        let status = control.status.load(Ordering::Relaxed);
        // Echo what a proxy in front added or passed on, so tests can see it.
        let mut echoed = format!("x-seen-target: {target}\r\n");
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "forwarded",
            "keep-alive",
            "proxy-authorization",
            "x-hop",
            "host",
        ] {
            if let Some(v) = header_value(&head, name) {
                let seen = name.strip_prefix("x-").unwrap_or(name);
                echoed.push_str(&format!("x-seen-{seen}: {v}\r\n"));
            }
        }
        let body = format!("{}\n", control.name);
        let response = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-backend: {}\r\n{echoed}{}\r\n{body}",
            if status < 400 { "OK" } else { "Error" },
            body.len(),
            control.name,
            if close { "connection: close\r\n" } else { "" },
        );
        stream.write_all(response.as_bytes()).await?;
        control.served.fetch_add(1, Ordering::Relaxed);
        if close {
            return Ok(());
        }
    }
}

/// One request counted as active until dropped, even when its connection is reset.
struct Active<'a>(&'a BackendControl);

impl<'a> Active<'a> {
    fn begin(control: &'a BackendControl) -> Self {
        let now = control.active.fetch_add(1, Ordering::Relaxed) + 1;
        control.peak.fetch_max(now, Ordering::Relaxed);
        Active(control)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header_value<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == name).then(|| v.trim())
    })
}
