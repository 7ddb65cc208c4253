//! The blog example's failover script: three instances and a backup behind the real
//! Switchyard (latency balancer, health checks), under bounded load on loopback.
//!
//! 1. All three primaries serve; articles posted through any instance are read back.
//! 2. One primary is killed: no GET fails, and the health check marks it down.
//! 3. It restarts on the same port and the health check returns it to service.
//! 4. All primaries are killed: the backup serves. One primary returns: it serves again.
//!
//! And the database: articles and comments are written, `blog backup` copies the file
//! online, the file is destroyed under load (every instance answers 503, none
//! crashes), `blog restore` puts the copy back, and everything written reads back.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Instance {
    name: &'static str,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Instance {
    fn start(name: &'static str, addr: &str, db: &Path) -> Instance {
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

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn restart(&mut self, db: &Path) {
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
fn switchyard_binary() -> PathBuf {
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

struct Answer {
    status: u16,
    instance: String,
    body: String,
}

fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> std::io::Result<Answer> {
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
    Ok(Answer {
        status,
        instance,
        body: body.to_owned(),
    })
}

/// GETs `/articles` from 4 threads for `time`: (answers by instance, failures).
fn load(proxy: SocketAddr, time: Duration) -> (HashMap<String, usize>, Vec<String>) {
    let until = Instant::now() + time;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut by = HashMap::new();
                let mut failed = Vec::new();
                while Instant::now() < until {
                    match http(proxy, "GET", "/articles", "") {
                        Ok(a) if a.status == 200 => *by.entry(a.instance).or_insert(0) += 1,
                        Ok(a) => failed.push(format!("{} {}", a.status, a.body)),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (by, failed)
            })
        })
        .collect();
    let mut by = HashMap::new();
    let mut failed = Vec::new();
    for t in threads {
        let (b, f) = t.join().unwrap();
        for (k, v) in b {
            *by.entry(k).or_insert(0) += v;
        }
        failed.extend(f);
    }
    (by, failed)
}

/// Loads until `done` holds for the answers of one 300 ms round, or 5 s pass.
fn load_until(
    proxy: SocketAddr,
    what: &str,
    done: impl Fn(&HashMap<String, usize>) -> bool,
) -> Duration {
    let started = Instant::now();
    let mut last = HashMap::new();
    while started.elapsed() < Duration::from_secs(5) {
        let (by, failed) = load(proxy, Duration::from_millis(300));
        assert!(failed.is_empty(), "while waiting for {what}: {failed:?}");
        if done(&by) {
            return started.elapsed();
        }
        last = by;
    }
    panic!("{what}: not within 5 s; last answers by instance: {last:?}");
}

/// Instances a, b, c (primaries) and d (backup) on `db`, and Switchyard in front.
fn blog_behind_switchyard(dir: &Path, db: &Path) -> (Vec<Instance>, KillOnDrop, SocketAddr) {
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

#[test]
fn failover_script() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("blog.db");
    let (mut instances, proxy, listen) = blog_behind_switchyard(dir.path(), &db);

    // 1. Writes through the proxy land in the shared database; every primary serves.
    let posted = http(
        listen,
        "POST",
        "/articles",
        r#"{"title":"Hello","body":"First post"}"#,
    )
    .unwrap();
    assert_eq!(posted.status, 201, "{}", posted.body);
    let comment = http(listen, "POST", "/articles/1/comments", r#"{"text":"Nice"}"#).unwrap();
    assert_eq!(comment.status, 201, "{}", comment.body);
    let read = http(listen, "GET", "/articles/1", "").unwrap();
    assert!(
        read.body.contains("\"comments\":[\"Nice\"]"),
        "{}",
        read.body
    );
    let (by, failed) = load(listen, Duration::from_secs(1));
    assert!(failed.is_empty(), "{failed:?}");
    for name in ["a", "b", "c"] {
        assert!(
            by.get(name).copied().unwrap_or(0) > 0,
            "{name} served nothing: {by:?}"
        );
    }
    assert_eq!(
        by.get("d"),
        None,
        "the backup serves only when no primary is up: {by:?}"
    );

    // 2. Kill a: no GET fails (connect errors are retried), and a serves nothing.
    instances[0].kill();
    let (by, failed) = load(listen, Duration::from_secs(1));
    assert!(
        failed.is_empty(),
        "requests failed after a was killed: {failed:?}"
    );
    assert_eq!(by.get("a"), None, "{by:?}");

    // 3. Restart a: the health check brings it back.
    instances[0].restart(&db);
    let back = load_until(listen, "a to serve again", |by| by.contains_key("a"));
    eprintln!("a back in service {back:?} after its restart");

    // 4. All primaries down: the backup serves; one primary back: it takes over.
    for i in &mut instances[..3] {
        i.kill();
    }
    let took = load_until(listen, "the backup to serve alone", |by| {
        by.keys().all(|k| k == "d") && !by.is_empty()
    });
    eprintln!("backup serving alone {took:?} after the primaries died");
    instances[1].restart(&db);
    load_until(listen, "b to take over from the backup", |by| {
        by.keys().all(|k| k == "b") && !by.is_empty()
    });

    drop(proxy);
}

/// The proxy process, ended however the test ends; its log is shown if the test fails.
struct KillOnDrop(Child, PathBuf);

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

/// Runs the `blog` binary with `args` to its end: its stdout, or why it failed.
fn blog(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_blog"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "blog {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_database_is_backed_up_destroyed_under_load_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("blog.db");
    let (mut instances, proxy, listen) = blog_behind_switchyard(dir.path(), &db);
    const ARTICLES: usize = 10;
    for i in 1..=ARTICLES {
        let body = format!(r#"{{"title":"Post {i}","body":"Body {i}"}}"#);
        assert_eq!(
            http(listen, "POST", "/articles", &body).unwrap().status,
            201
        );
        for c in ["first", "second"] {
            let comment = format!(r#"{{"text":"{c} on {i}"}}"#);
            let path = format!("/articles/{i}/comments");
            assert_eq!(http(listen, "POST", &path, &comment).unwrap().status, 201);
        }
    }

    // An online copy, while a writer goes on posting (those later posts are not in it).
    let backups = dir.path().join("backups");
    let writer = std::thread::spawn(move || {
        for i in 0..20 {
            let body = format!(r#"{{"title":"Later {i}","body":"x"}}"#);
            let _ = http(listen, "POST", "/articles", &body);
        }
    });
    let printed = blog(&[
        "backup".as_ref(),
        db.as_os_str(),
        backups.as_os_str(),
        "--keep".as_ref(),
        "2".as_ref(),
    ]);
    writer.join().unwrap();
    let copy = PathBuf::from(printed.trim().strip_prefix("backup ").unwrap());
    assert!(copy.is_file(), "{printed}");

    // Under load, the database disappears; then the copy is restored.
    let until = Instant::now() + Duration::from_secs(4);
    let load: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut statuses: HashMap<u16, usize> = HashMap::new();
                let mut errors = Vec::new();
                while Instant::now() < until {
                    match http(listen, "GET", "/articles/1", "") {
                        Ok(a) => *statuses.entry(a.status).or_insert(0) += 1,
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (statuses, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(path);
    }
    std::thread::sleep(Duration::from_millis(1500));
    blog(&["restore".as_ref(), copy.as_os_str(), db.as_os_str()]);
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for t in load {
        let (s, errors) = t.join().unwrap();
        assert!(errors.is_empty(), "requests got no answer: {errors:?}");
        for (k, v) in s {
            *statuses.entry(k).or_insert(0) += v;
        }
    }
    eprintln!("answers while the database went and came back: {statuses:?}");
    assert!(statuses.get(&503).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 503),
        "only 200 and 503: {statuses:?}"
    );
    for i in &mut instances {
        let child = i.child.as_mut().unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "instance {} exited",
            i.name
        );
    }

    // Everything written before the backup reads back, through the proxy.
    load_until(listen, "the restored database to serve", |by| {
        !by.is_empty()
    });
    let list = http(listen, "GET", "/articles", "").unwrap();
    assert_eq!(list.status, 200, "{}", list.body);
    for i in 1..=ARTICLES {
        let a = http(listen, "GET", &format!("/articles/{i}"), "").unwrap();
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(
            a.body.contains(&format!("\"title\":\"Post {i}\"")),
            "{}",
            a.body
        );
        assert!(
            a.body.contains(&format!(
                "\"comments\":[\"first on {i}\",\"second on {i}\"]"
            )),
            "{}",
            a.body
        );
    }
    drop(proxy);
}
