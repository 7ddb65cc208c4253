//! Shared by the blog's tests: instances as child processes, Switchyard in front of
//! them, and a small HTTP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Instance {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub child: Option<Child>,
}

impl Instance {
    pub fn start(name: &'static str, addr: &str, db: &Path) -> Instance {
        let mut child = Command::new(env!("CARGO_BIN_EXE_blog"))
            .args(["serve", name, addr])
            .arg(db)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .unwrap()
            .parse()
            .unwrap();
        Instance {
            name,
            addr,
            child: Some(child),
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn restart(&mut self, db: &Path) {
        self.kill();
        // The port was just released; another process could take it, so retry briefly.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let addr = self.addr.to_string();
            let started = std::panic::catch_unwind(|| Instance::start(self.name, &addr, db));
            match started {
                Ok(mut i) => {
                    self.child = i.child.take();
                    return;
                }
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `switchyard` binary: `$SWITCHYARD`, else this workspace's, which `cargo test
/// --workspace` has just built (alone, `cargo test -p switchyard-example-blog` uses
/// whatever `cargo build -p switchyard` last built, and builds it if there is none).
pub fn switchyard_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SWITCHYARD") {
        return PathBuf::from(path);
    }
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_blog"));
    let beside = exe.with_file_name("switchyard");
    if !beside.is_file() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "switchyard", "--bin", "switchyard"])
            .status()
            .unwrap();
        assert!(status.success());
    }
    beside
}

pub struct Answer {
    pub status: u16,
    pub instance: String,
    /// Its `x-cache` header: HIT, MISS, STALE… from Switchyard's cache.
    pub x_cache: String,
    pub body: String,
}

pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: blog\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let instance = head
        .lines()
        .find_map(|l| l.strip_prefix("x-instance: "))
        .unwrap_or("")
        .to_owned();
    let x_cache = head
        .lines()
        .find_map(|l| l.strip_prefix("x-cache: "))
        .unwrap_or("")
        .to_owned();
    Ok(Answer {
        status,
        instance,
        x_cache,
        body: body.to_owned(),
    })
}

/// Instances a, b, c (primaries) and d (backup) on `db`, and Switchyard in front.
pub fn blog_behind_switchyard(dir: &Path, db: &Path) -> (Vec<Instance>, KillOnDrop, SocketAddr) {
    let instances: Vec<Instance> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|n| Instance::start(n, "127.0.0.1:0", db))
        .collect();
    let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.join("switchyard.toml");
    std::fs::write(
        &config,
        switchyard_example_blog::config_text(&listen.to_string(), &addrs, &dir.join("admin.sock")),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("switchyard.log")).unwrap();
    let proxy = KillOnDrop(
        Command::new(switchyard_binary())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
        dir.join("switchyard.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(listen).is_err() {
        assert!(
            Instant::now() < deadline,
            "switchyard did not start: {}",
            std::fs::read_to_string(dir.join("switchyard.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (instances, proxy, listen)
}

/// The proxy process, ended however the test ends; its log is shown if the test fails.
pub struct KillOnDrop(pub Child, pub PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            let lines: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("switchyard::access"))
                .collect();
            eprintln!(
                "switchyard log (without access lines), last 40:\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}
