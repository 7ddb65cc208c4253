//! The blog example's failover script: three instances and a backup behind the real
//! Switchyard (latency balancer, health checks), under bounded load on loopback.
//!
//! 1. All three primaries serve; articles posted through any instance are read back.
//! 2. One primary is killed: no GET fails, and the health check marks it down.
//! 3. It restarts on the same port and the health check returns it to service.
//! 4. All primaries are killed: the backup serves. One primary returns: it serves again.
//! 5. Every instance is killed: article pages are served from Switchyard's cache.
//!
//! And the database: articles and comments are written, `blog backup` copies the file
//! online, the file is destroyed under load (every instance answers 503, none
//! crashes), `blog restore` puts the copy back, and everything written reads back.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::*;

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

    // 5. The website's pages are cached: with every instance down, the backup too, an
    //    article page is still served, stale, within the route's stale_if_error. The
    //    JSON API, which says nothing about freshness, is never stored: it fails.
    let page = http(listen, "GET", "/a/1", "").unwrap();
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Nice"), "{}", page.body);
    for i in &mut instances {
        i.kill();
    }
    // The page's max-age=2 runs out: what is served now is stale.
    std::thread::sleep(Duration::from_millis(2500));
    for _ in 0..20 {
        let page = http(listen, "GET", "/a/1", "").unwrap();
        assert_eq!(
            (page.status, page.x_cache.as_str()),
            (200, "STALE"),
            "{}",
            page.body
        );
        assert!(
            page.body.contains("<h1 id=\"title\">Hello</h1>"),
            "{}",
            page.body
        );
        assert!(page.body.contains("<li>Nice</li>"), "{}", page.body);
    }
    let api = http(listen, "GET", "/articles/1", "").unwrap();
    assert!(api.status >= 500, "{} {}", api.status, api.body);
    eprintln!(
        "every instance down: 20 article pages served STALE; the API answered {}",
        api.status
    );

    drop(proxy);
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
