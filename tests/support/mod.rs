//! Shared by the integration tests: real backends, the real `switchyard` binary, real
//! `.wasm` plugins built from this repository, and a small HTTP client.
#![allow(dead_code)]

pub mod certs;

use std::collections::HashMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use switchyard::demo_backend::{self, BackendControl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Directory holding the plugins `build.rs` compiled to wasm32-wasip2.
pub fn wasm_dir() -> PathBuf {
    PathBuf::from(env!("SWITCHYARD_WASM_DIR"))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A backend on an ephemeral loopback port.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub control: Arc<BackendControl>,
}

/// Starts backends named `b0`, `b1`, … with the given delays.
pub async fn backends(delays_ms: &[u64]) -> Vec<TestBackend> {
    let mut out = Vec::new();
    for (i, ms) in delays_ms.iter().enumerate() {
        let (addr, control) = demo_backend::start(
            &format!("b{i}"),
            "127.0.0.1:0".parse().unwrap(),
            Duration::from_millis(*ms),
        )
        .await
        .unwrap();
        out.push(TestBackend { addr, control });
    }
    out
}

/// `backends = [...]` for a pool, with optional weights.
pub fn backends_toml(backends: &[TestBackend], weights: &[u32]) -> String {
    let items: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| match weights.get(i) {
            Some(w) => format!("{{ addr = \"{}\", weight = {w} }}", b.addr),
            None => format!("{{ addr = \"{}\" }}", b.addr),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `switchyard run` process; killed when dropped.
pub struct Proxy {
    child: Option<Child>,
    /// Extra lines of the `[proxy]` table.
    proxy_extra: String,
    /// Extra environment of the proxy process.
    env: Vec<(String, String)>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Proxy {
    /// Writes a config file (a fixed header, then `body`) in a fresh directory with a
    /// `plugins/` directory holding `plugins` (name, path of a .wasm), then starts the
    /// proxy and waits until it accepts connections and admin commands.
    pub fn start(body: &str, plugins: &[(&str, PathBuf)]) -> Proxy {
        Proxy::start_with("", body, plugins)
    }

    /// Like [`Proxy::start`], with `proxy_extra` lines added to the `[proxy]` table.
    pub fn start_with(proxy_extra: &str, body: &str, plugins: &[(&str, PathBuf)]) -> Proxy {
        Proxy::start_env(proxy_extra, body, plugins, &[])
    }

    /// Like [`Proxy::start_with`], with extra environment variables for the process.
    pub fn start_env(
        proxy_extra: &str,
        body: &str,
        plugins: &[(&str, PathBuf)],
        env: &[(&str, &str)],
    ) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).unwrap();
        for (name, path) in plugins {
            std::fs::copy(path, plugin_dir.join(format!("{name}.wasm"))).unwrap();
        }
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("switchyard.log");
        let mut proxy = Proxy {
            child: None,
            proxy_extra: proxy_extra.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            addr,
            dir,
            log,
        };
        proxy.write_config(body);
        proxy.spawn();
        proxy
    }

    /// Rewrites the configuration file: the fixed header (listener, plugins directory,
    /// compiled-plugin cache and admin socket in this proxy's directory), then `body`.
    pub fn write_config(&self, body: &str) {
        // Two worker threads unless `proxy_extra` names its own number.
        let threads = if self.proxy_extra.contains("threads =") {
            ""
        } else {
            "threads = 2\n"
        };
        let config = format!(
            "[proxy]\nlisten = [\"{}\"]\n{threads}{}\n\n[plugins]\ndir = \"plugins\"\ncache_dir = \"cache\"\n# Deadlines are wall time; tests share two cores, so give calls room.\nlimits = {{ call_timeout = \"50ms\" }}\n\n[admin]\nsocket = \"admin.sock\"\n\n{body}",
            self.addr, self.proxy_extra
        );
        std::fs::write(self.config_path(), config).unwrap();
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("switchyard.toml")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// The plugins directory of this proxy.
    pub fn plugin_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--config"])
            .arg(self.config_path())
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "switchyard exited with {status} before listening:\n{}",
                    self.log()
                );
            }
            if std::net::TcpStream::connect(self.addr).is_ok()
                && std::os::unix::net::UnixStream::connect(self.socket()).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "switchyard did not listen on {} within 60 s:\n{}",
            self.addr,
            self.log()
        );
    }

    /// Kills the proxy (as a crash would: the socket file stays) and starts it again
    /// with the same directory and configuration; the log starts afresh.
    pub fn restart(&mut self) {
        self.stop();
        std::fs::write(&self.log, "").unwrap();
        self.spawn();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Process id of the running proxy.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM to the proxy (by its process id).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-s", "TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `within` for the proxy to exit: its exit status, or `None` if it
    /// still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// True while the proxy process runs.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Resident memory of the proxy process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().map_or(0, Child::id);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Everything the proxy logged so far.
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Runs `switchyard ctl --socket <this proxy's socket> ARGS…`: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let socket = self.socket().display().to_string();
        let mut all = vec!["ctl", "--socket", &socket];
        all.extend_from_slice(args);
        switchyard(&all)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs the `switchyard` binary with `args`: (exit code, stdout, stderr).
pub fn switchyard(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copies `from` over `to` atomically (write beside, then rename), as a deploy would.
pub fn replace_file(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Response {
    /// The backend that answered (its `x-backend` header).
    pub fn backend(&self) -> &str {
        self.headers.get("x-backend").map_or("", String::as_str)
    }
}

/// Sends one request on a fresh connection.
pub async fn request(
    addr: SocketAddr,
    path: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "response took over 30 s")
        })??;
    parse(&raw).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad response: {:?}", String::from_utf8_lossy(&raw)),
        )
    })
}

fn parse(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// `GET path` with `Host: localhost`.
pub async fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, path, "localhost", &[]).await.unwrap()
}

/// Outcome of a bounded load run.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Responses per backend name.
    pub by_backend: HashMap<String, usize>,
    /// Requests that failed (I/O error or a status other than 200).
    pub failures: Vec<String>,
    /// Requests sent.
    pub total: usize,
    /// Time of each successful request.
    pub latencies: Vec<Duration>,
}

impl LoadResult {
    pub fn count(&self, backend: &str) -> usize {
        self.by_backend.get(backend).copied().unwrap_or(0)
    }
    /// The `q` quantile (0–1) of request times.
    pub fn quantile(&self, q: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let i = ((sorted.len() as f64 - 1.0) * q).round().max(0.0) as usize;
        sorted.get(i).copied().unwrap_or_default()
    }

    pub fn share(&self, backend: &str) -> f64 {
        self.count(backend) as f64 / self.total.max(1) as f64
    }
}

/// `total` requests from `concurrency` clients, each sending one after another.
pub async fn load(addr: SocketAddr, path: &str, concurrency: usize, total: usize) -> LoadResult {
    drive(
        addr,
        path,
        concurrency,
        Some(total / concurrency),
        None,
        None,
    )
    .await
}

/// Requests from `concurrency` clients for `duration` (bounded in count too).
pub async fn load_for(
    addr: SocketAddr,
    path: &str,
    concurrency: usize,
    duration: Duration,
) -> LoadResult {
    drive(
        addr,
        path,
        concurrency,
        Some(100_000),
        Some(Instant::now() + duration),
        None,
    )
    .await
}

/// Requests from `concurrency` clients until `stop` is set (bounded: 5 minutes at most).
pub fn load_until(
    addr: SocketAddr,
    path: &str,
    concurrency: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<LoadResult> {
    let path = path.to_owned();
    let until = Instant::now() + Duration::from_secs(300);
    tokio::spawn(async move {
        drive(
            addr,
            &path,
            concurrency,
            Some(1_000_000),
            Some(until),
            Some(stop),
        )
        .await
    })
}

async fn drive(
    addr: SocketAddr,
    path: &str,
    concurrency: usize,
    per_client: Option<usize>,
    until: Option<Instant>,
    stop: Option<Arc<AtomicBool>>,
) -> LoadResult {
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let path = path.to_owned();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut part = LoadResult::default();
                while per_client.is_none_or(|n| part.total < n)
                    && until.is_none_or(|t| Instant::now() < t)
                    && !stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed))
                {
                    part.total += 1;
                    let started = Instant::now();
                    match request(addr, &path, "localhost", &[]).await {
                        Ok(r) if r.status == 200 => {
                            part.latencies.push(started.elapsed());
                            *part.by_backend.entry(r.backend().to_owned()).or_default() += 1
                        }
                        Ok(r) => part
                            .failures
                            .push(format!("status {}: {}", r.status, r.body)),
                        Err(e) => part.failures.push(e.to_string()),
                    }
                }
                part
            })
        })
        .collect();
    let mut result = LoadResult::default();
    for t in tasks {
        let part = t.await.unwrap();
        result.total += part.total;
        result.failures.extend(part.failures);
        result.latencies.extend(part.latencies);
        for (k, v) in part.by_backend {
            *result.by_backend.entry(k).or_default() += v;
        }
    }
    result
}

/// Runs `promtool check metrics` on `text` where promtool is installed (`.ci/run`
/// installs it) and fails on any complaint; elsewhere says it was skipped.
pub fn promtool_check(text: &str) {
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success(),
                "promtool check metrics failed:\n{report}"
            );
            println!("promtool check metrics: ok {}", report.trim());
        }
        Err(_) => println!(
            "promtool is not installed here (`.ci/run` installs it); the format was checked by the assertions only"
        ),
    }
}

/// Sends `raw` as it is on a fresh connection and reads until the proxy closes it (or
/// `wait` passes): everything received, or the error that ended the read (a reset shows
/// as `ConnectionReset` even after part of a response).
pub async fn raw_exchange(
    addr: SocketAddr,
    raw: &[u8],
    wait: Duration,
) -> Result<Vec<u8>, (std::io::Error, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| (e, Vec::new()))?;
    if let Err(e) = s.write_all(raw).await {
        return Err((e, Vec::new()));
    }
    let mut out = Vec::new();
    let read = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 16384];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match read {
        Ok(Ok(())) | Err(_) => Ok(out),
        Ok(Err(e)) => Err((e, out)),
    }
}

/// The status codes of the responses in `raw`, in order.
pub fn statuses(raw: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(raw);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}
