//! HTTPS: a listener with two certificates chosen by SNI, HTTP/2 by ALPN, a clean
//! failure for plain HTTP on the TLS port, the redirect from HTTP, and TLS to a
//! backend verified against a test CA. Certificates are made when the test runs.

mod support;

use openssl::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use support::certs::TestCa;
use support::*;

/// Connects with TLS, offering `sni` and h2 + http/1.1, trusting only `ca`.
fn connect(
    addr: SocketAddr,
    sni: &str,
    ca: &std::path::Path,
) -> openssl::ssl::SslStream<TcpStream> {
    let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
    c.set_ca_file(ca).unwrap();
    c.set_alpn_protos(b"\x02h2\x08http/1.1").unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut config = c.build().configure().unwrap();
    // A name no certificate has gets the default one, which then does not match it.
    config.set_verify_hostname(sni.ends_with("a.test") || sni.ends_with("b.test"));
    config.connect(sni, tcp).unwrap()
}

fn common_name(s: &openssl::ssl::SslStream<TcpStream>) -> String {
    let cert = s.ssl().peer_certificate().unwrap();
    let entry = cert.subject_name().entries().next().unwrap();
    String::from_utf8_lossy(entry.data().as_slice()).into_owned()
}

/// A minimal HTTPS backend: answers every request `200 ok-over-tls`, one per connection.
fn tls_backend(cert: &std::path::Path, key: &std::path::Path) -> SocketAddr {
    stoppable_tls_backend(cert, key).0
}

/// [`tls_backend`], and a switch that stops it: its port closes, as a process's would.
fn stoppable_tls_backend(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut a = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    a.set_certificate_chain_file(cert).unwrap();
    a.set_private_key_file(key, SslFiletype::PEM).unwrap();
    let acceptor = a.build();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let stopped = std::sync::Arc::clone(&stop);
    std::thread::spawn(move || {
        let incoming = std::iter::from_fn(|| {
            loop {
                if stopped.load(Ordering::Relaxed) {
                    return None;
                }
                match listener.accept() {
                    Ok((tcp, _)) => return Some(tcp),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        for tcp in incoming {
            tcp.set_nonblocking(false).unwrap();
            let acceptor = acceptor.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = acceptor.accept(tcp) else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\nok-over-tls",
                );
                let _ = s.shutdown();
            });
        }
    });
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_listener_picks_certificates_by_sni_and_speaks_h2() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "test-ca");
    let a = ca.leaf(dir.path(), &["a.test"]);
    let b = ca.leaf(dir.path(), &["b.test", "*.b.test"]);
    let backend = backends(&[0]).await;
    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let proxy = Proxy::start_with(
        &format!(
            "redirect_to_https = true\ntls = [{{ listen = \"{tls_addr}\", certificates = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}] }}]\n",
            a.cert.display(),
            a.key.display(),
            b.cert.display(),
            b.key.display()
        ),
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{}\" }}]\n",
            backend[0].addr
        ),
        &[],
    );

    // SNI picks the certificate; an unknown name gets the first one.
    let ca_pem = ca.pem.clone();
    let (names, alpn) = tokio::task::spawn_blocking(move || {
        let names: Vec<String> = ["a.test", "b.test", "x.b.test", "other.test"]
            .iter()
            .map(|sni| common_name(&connect(tls_addr, sni, &ca_pem)))
            .collect();
        let alpn = connect(tls_addr, "a.test", &ca_pem)
            .ssl()
            .selected_alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        (names, alpn)
    })
    .await
    .unwrap();
    assert_eq!(names, ["a.test", "b.test", "b.test", "a.test"]);
    assert_eq!(alpn.as_deref(), Some("h2"));

    // A whole request over HTTPS, HTTP/1.1: the backend hears it came over https.
    let ca_pem = ca.pem.clone();
    let response = tokio::task::spawn_blocking(move || {
        let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
        c.set_ca_file(&ca_pem).unwrap();
        let tcp = TcpStream::connect(tls_addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut s = c.build().connect("b.test", tcp).unwrap();
        s.write_all(b"GET /hello HTTP/1.1\r\nhost: b.test\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    })
    .await
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("x-seen-forwarded-proto: https"),
        "{response}"
    );

    // HTTP/2 end to end, with curl as the client where it is installed.
    let mut served = 1;
    if let Ok(out) = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "10", "--cacert"])
        .arg(&ca.pem)
        .args([
            "--resolve",
            &format!("a.test:{}:127.0.0.1", tls_addr.port()),
        ])
        .args(["-w", "\\n%{http_version} %{http_code}"])
        .arg(format!("https://a.test:{}/h2", tls_addr.port()))
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.ends_with("\n2 200"),
            "curl --http2: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        served += 1;
    } else {
        eprintln!("curl is not installed: the HTTP/2 request was not made (ALPN was checked)");
    }

    // Plain HTTP to the TLS port fails at once instead of hanging.
    let started = Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        let mut tcp = TcpStream::connect(tls_addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
            .unwrap();
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).map(|_| out)
    })
    .await
    .unwrap();
    let took = started.elapsed();
    match outcome {
        Ok(bytes) => assert!(
            !bytes.starts_with(b"HTTP/1.1 200"),
            "plain HTTP was served on the TLS port"
        ),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "plain HTTP on the TLS port hung: {e}"
        ),
    }
    assert!(
        took < Duration::from_secs(5),
        "the connection was closed only after {took:?}"
    );

    // The plain listener redirects to HTTPS, keeping host, path and query.
    let r = request(proxy.addr, "/page?x=1", "a.test", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers["location"],
        format!("https://a.test:{}/page?x=1", tls_addr.port())
    );
    assert_eq!(
        backend[0].control.served(),
        served,
        "the redirect did not reach the backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_tls_is_verified_against_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "backend-ca");
    let other_ca = TestCa::new(dir.path(), "unrelated-ca");
    let leaf = ca.leaf(dir.path(), &["backend.test"]);
    let backend = tls_backend(&leaf.cert, &leaf.key);
    let pool = |name: &str, ca_file: &std::path::Path| {
        format!(
            "[[pools]]\nname = \"{name}\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{backend}\" }}]\nretries = 0\ntls = true\nsni = \"backend.test\"\nca_file = \"{}\"\n",
            ca_file.display()
        )
    };
    let proxy = Proxy::start(
        &format!(
            "{}\n{}\n[[routes]]\npath_prefix = \"/trusted\"\npool = \"trusted\"\n\n[[routes]]\npath_prefix = \"/untrusted\"\npool = \"untrusted\"\n",
            pool("trusted", &ca.pem),
            pool("untrusted", &other_ca.pem)
        ),
        &[],
    );
    let ok = get(proxy.addr, "/trusted").await;
    assert_eq!(ok.status, 200, "{}", proxy.log());
    assert_eq!(ok.body, "ok-over-tls");
    let refused = get(proxy.addr, "/untrusted").await;
    assert_eq!(
        refused.status, 502,
        "a backend whose certificate fails verification is not used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_reload_live_and_check_names_a_key_that_does_not_match() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "reload-ca");
    let first = ca.leaf(dir.path(), &["first.test"]);
    let second = ca.leaf(dir.path(), &["second.test"]);
    // The listener serves site.pem / site.key; an operator renews them in place.
    let (cert, key) = (dir.path().join("site.pem"), dir.path().join("site.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let backend = backends(&[0]).await;
    let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listener = format!(
        "tls = [{{ listen = \"{tls_addr}\", certificates = [{{ cert = \"{}\", key = \"{}\" }}] }}]\n",
        cert.display(),
        key.display()
    );
    let pool = format!(
        "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{}\" }}]\n",
        backend[0].addr
    );
    let proxy = Proxy::start_with(&listener, &pool, &[]);
    let served = |name: &'static str| {
        let ca_pem = ca.pem.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = SslConnector::builder(SslMethod::tls()).unwrap();
            c.set_ca_file(&ca_pem).unwrap();
            let tcp = TcpStream::connect(tls_addr).unwrap();
            let mut config = c.build().configure().unwrap();
            config.set_verify_hostname(false);
            common_name(&config.connect(name, tcp).unwrap())
        })
    };
    assert_eq!(served("first.test").await.unwrap(), "first.test");
    std::fs::copy(&second.cert, &cert).unwrap();
    std::fs::copy(&second.key, &key).unwrap();
    let (code, out, err) = proxy.ctl(&["config", "reload"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        served("second.test").await.unwrap(),
        "second.test",
        "no restart needed"
    );

    // A renewal gone wrong: the new key is not the certificate's. `check` says which
    // entry, and a reload keeps serving the good pair.
    std::fs::copy(&first.key, &key).unwrap();
    let (code, _, stderr) =
        switchyard(&["check", "--config", proxy.config_path().to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("proxy.tls[0].certificates[0]: key:")
            && stderr.contains("does not belong to the certificate"),
        "{stderr}"
    );
    let (code, out, _) = proxy.ctl(&["config", "reload"]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(served("second.test").await.unwrap(), "second.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_pool_is_health_checked_over_tls() {
    // Before, checks spoke plain HTTP to TLS backends: every one was marked down.
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "check-ca");
    let leaf = ca.leaf(dir.path(), &["backend.test"]);
    let (healthy, _) = stoppable_tls_backend(&leaf.cert, &leaf.key);
    let (doomed, stop) = stoppable_tls_backend(&leaf.cert, &leaf.key);
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"web\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{healthy}\" }}, {{ addr = \"{doomed}\" }}]\n\
             tls = true\nsni = \"backend.test\"\nca_file = \"{}\"\n\
             health_check = {{ kind = \"http\", path = \"/healthz\", interval = \"200ms\", rise = 1, fall = 2 }}\n",
            ca.pem.display()
        ),
        &[],
    );
    let state = |addr: SocketAddr| {
        let (_, out, _) = proxy.ctl(&["--json", "backends"]);
        let reply: serde_json::Value = serde_json::from_str(&out).unwrap();
        reply["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["addr"] == addr.to_string())
            .map(|b| b["state"].as_str().unwrap().to_owned())
            .unwrap()
    };
    // Several intervals pass: both stay up, checked over TLS with the pool's CA and SNI.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        (state(healthy), state(doomed)),
        ("up".into(), "up".into()),
        "{}",
        proxy.log()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(doomed) != "down" {
        assert!(
            Instant::now() < deadline,
            "the stopped backend was not marked down:\n{}",
            proxy.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state(healthy), "up");
    assert_eq!(get(proxy.addr, "/").await.body, "ok-over-tls");
}
