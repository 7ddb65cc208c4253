//! The response cache, against a real origin that counts every request it receives:
//! hits never reach it, a miss storm reaches it once, variants stay apart, stale
//! entries are refreshed once in the background or served through an outage, the
//! memory bound holds, the disk tier survives a restart, byte ranges are cut from stored
//! pages, and upgrades pass.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An origin whose answers depend on the path (see `answer`), counting requests by path.
struct Origin {
    addr: SocketAddr,
    seen: Mutex<HashMap<String, u64>>,
    /// Request methods received, by path, in order.
    methods: Mutex<HashMap<String, Vec<String>>>,
    /// Validators received, by path.
    conditional: Mutex<HashMap<String, u64>>,
    failing: AtomicBool,
    dead: AtomicBool,
    acceptor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Origin {
    async fn start() -> Arc<Origin> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = Arc::new(Origin {
            addr: listener.local_addr().unwrap(),
            seen: Mutex::new(HashMap::new()),
            methods: Mutex::new(HashMap::new()),
            conditional: Mutex::new(HashMap::new()),
            failing: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            acceptor: Mutex::new(None),
        });
        let serving = Arc::clone(&origin);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(Arc::clone(&serving).connection(stream));
            }
        });
        *origin.acceptor.lock().unwrap() = Some(task);
        origin
    }

    /// Requests received for `path` (without its query).
    fn seen(&self, path: &str) -> u64 {
        self.seen.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    fn methods(&self, path: &str) -> Vec<String> {
        self.methods
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    fn conditional(&self, path: &str) -> u64 {
        self.conditional
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Stops listening, and resets every connection it still has.
    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        if let Some(task) = self.acceptor.lock().unwrap().take() {
            task.abort();
        }
    }

    async fn connection(self: Arc<Self>, mut stream: TcpStream) {
        loop {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                head.push(byte[0]);
            }
            if self.dead.load(Ordering::SeqCst) {
                return;
            }
            let text = String::from_utf8_lossy(&head).into_owned();
            let target = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let path = target.split('?').next().unwrap_or("/").to_owned();
            let headers: HashMap<String, String> = text
                .lines()
                .skip(1)
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            *self.seen.lock().unwrap().entry(path.clone()).or_default() += 1;
            let method = text.split_whitespace().next().unwrap_or("").to_owned();
            let head = method == "HEAD";
            self.methods
                .lock()
                .unwrap()
                .entry(path.clone())
                .or_default()
                .push(method);
            if headers.contains_key("if-none-match") {
                *self
                    .conditional
                    .lock()
                    .unwrap()
                    .entry(path.clone())
                    .or_default() += 1;
            }
            if path == "/ws" {
                stream.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").await.unwrap();
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                return;
            }
            let (status, extra, body) = self.answer(&path, &target, &headers).await;
            let mut response = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\n{extra}\r\n",
                body.len()
            )
            .into_bytes();
            if !head {
                response.extend_from_slice(&body);
            }
            if stream.write_all(&response).await.is_err() {
                return;
            }
        }
    }

    async fn answer(
        &self,
        path: &str,
        target: &str,
        headers: &HashMap<String, String>,
    ) -> (u16, String, Vec<u8>) {
        if self.failing.load(Ordering::SeqCst) {
            return (500, String::new(), b"origin failing".to_vec());
        }
        let fresh = "cache-control: max-age=60\r\n".to_owned();
        match path {
            "/nostore" => (200, "cache-control: no-store\r\n".into(), b"no".to_vec()),
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(400)).await;
                (200, fresh, b"slow page".to_vec())
            }
            "/vary" => {
                let gzip = headers
                    .get("accept-encoding")
                    .is_some_and(|v| v.contains("gzip"));
                let body = if gzip {
                    "gzip variant"
                } else {
                    "plain variant"
                };
                (
                    200,
                    format!("{fresh}vary: Accept-Encoding\r\n"),
                    body.into(),
                )
            }
            // Fresh for a second, then revalidated against a constant ETag.
            p if p.starts_with("/swr") || p.starts_with("/short") => {
                if headers.get("if-none-match").map(String::as_str) == Some("\"v1\"") {
                    if p.starts_with("/swr") {
                        // A slow refresh: clients must not wait for it.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                    return (
                        304,
                        "cache-control: max-age=1\r\netag: \"v1\"\r\n".into(),
                        Vec::new(),
                    );
                }
                (
                    200,
                    "cache-control: max-age=1\r\netag: \"v1\"\r\n".into(),
                    format!("page {p}").into(),
                )
            }
            "/inv-post" => (303, "location: /inv-target\r\n".into(), Vec::new()),
            "/cookie" => (
                200,
                format!("{fresh}set-cookie: session=1\r\n"),
                b"c".to_vec(),
            ),
            "/private" => (
                200,
                "cache-control: private, max-age=60\r\n".into(),
                b"p".to_vec(),
            ),
            p if p.starts_with("/big/") => {
                let kib: usize = target
                    .split("kib=")
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1);
                (
                    200,
                    "cache-control: max-age=600\r\n".into(),
                    vec![b'x'; kib << 10],
                )
            }
            _ => (200, fresh, format!("page {path}").into()),
        }
    }
}

fn config(origin: &Origin, cache_extra: &str) -> String {
    format!(
        r#"
[[pools]]
name = "web"
balancer = "round-robin"
backends = [{{ addr = "{}" }}]

[[caches]]
name = "pages"
{cache_extra}

[[routes]]
path_prefix = "/swr"
pool = "web"
cache = {{ use = "pages", stale_while_revalidate = "30s" }}

[[routes]]
path_prefix = "/"
pool = "web"
cache = {{ use = "pages", stale_if_error = "10m" }}
"#,
        origin.addr
    )
}

fn x_cache(r: &Response) -> &str {
    r.headers.get("x-cache").map_or("", String::as_str)
}

fn ctl_json(proxy: &Proxy, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let (code, out, err) = proxy.ctl(&all);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_page_is_fetched_once_and_a_no_store_page_every_time() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(&origin, ""), &[]);
    let mut results: HashMap<String, usize> = HashMap::new();
    for i in 0..1000 {
        let r = get(proxy.addr, "/fresh").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "page /fresh"),
            "request {i}"
        );
        *results.entry(x_cache(&r).to_owned()).or_default() += 1;
        if i == 999 {
            assert!(
                r.headers.contains_key("age"),
                "hits carry Age: {:?}",
                r.headers
            );
        }
    }
    assert_eq!(origin.seen("/fresh"), 1);
    assert_eq!(results.get("MISS"), Some(&1));
    assert_eq!(results.get("HIT"), Some(&999));
    for _ in 0..1000 {
        let r = get(proxy.addr, "/nostore").await;
        assert_eq!((r.status, x_cache(&r)), (200, "MISS"));
    }
    assert_eq!(origin.seen("/nostore"), 1000);

    let report = ctl_json(&proxy, &["cache", "pages"]);
    let pages = &report["caches"][0];
    assert_eq!(pages["results"]["hit"], 999, "{report}");
    assert_eq!(pages["results"]["miss"], 1001, "{report}");
    assert!(
        pages["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["key"] == "localhost/fresh"),
        "{report}"
    );
    let (code, out, _) = proxy.ctl(&["cache"]);
    assert_eq!(code, 0);
    assert!(out.contains("HIT-RATIO") && out.contains("pages"), "{out}");

    // Purge by key and by prefix: the next request goes to the origin again.
    get(proxy.addr, "/fresh2").await;
    let purged = ctl_json(&proxy, &["purge", "pages", "localhost/fresh"]);
    assert_eq!(purged["purged"], 1, "{purged}");
    assert_eq!(x_cache(&get(proxy.addr, "/fresh").await), "MISS");
    let purged = ctl_json(&proxy, &["purge", "pages", "localhost/fre*"]);
    assert_eq!(purged["purged"], 2, "{purged}");
    assert_eq!(x_cache(&get(proxy.addr, "/fresh2").await), "MISS");
    let (code, out, err) = proxy.ctl(&["purge", "nope", "x"]);
    assert_ne!(code, 0);
    let said = format!("{out}{err}");
    assert!(
        said.contains("no cache named \"nope\"; caches: pages"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_concurrent_misses_make_one_backend_request() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(&origin, ""), &[]);
    let addr = proxy.addr;
    let clients: Vec<_> = (0..200)
        .map(|_| tokio::spawn(async move { request(addr, "/slow", "localhost", &[]).await }))
        .collect();
    let mut by_result: HashMap<String, usize> = HashMap::new();
    for c in clients {
        let r = c.await.unwrap().unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "slow page"));
        *by_result.entry(x_cache(&r).to_owned()).or_default() += 1;
    }
    assert_eq!(origin.seen("/slow"), 1, "{by_result:?}");
    assert_eq!(by_result.get("MISS"), Some(&1), "{by_result:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn vary_keeps_the_gzip_and_plain_variants_apart() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(&origin, ""), &[]);
    static GZIP: [(&str, &str); 1] = [("accept-encoding", "gzip")];
    let fetch = |headers: &'static [(&'static str, &'static str)]| {
        let addr = proxy.addr;
        async move { request(addr, "/vary", "localhost", headers).await.unwrap() }
    };
    for round in 0..3 {
        let g = fetch(&GZIP).await;
        let p = fetch(&[]).await;
        assert_eq!(g.body, "gzip variant", "round {round}");
        assert_eq!(p.body, "plain variant", "round {round}");
        if round > 0 {
            assert_eq!((x_cache(&g), x_cache(&p)), ("HIT", "HIT"));
        }
    }
    assert_eq!(origin.seen("/vary"), 2, "one fetch per variant");
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(&origin, ""), &[]);
    assert_eq!(x_cache(&get(proxy.addr, "/swr").await), "MISS");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    for _ in 0..20 {
        let r = get(proxy.addr, "/swr").await;
        assert_eq!(
            (r.status, x_cache(&r), r.body.as_str()),
            (200, "STALE", "page /swr")
        );
    }
    let refreshed = async {
        while x_cache(&get(proxy.addr, "/swr").await) != "HIT" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), refreshed)
        .await
        .unwrap();
    assert_eq!(origin.seen("/swr"), 2, "the first fetch and one refresh");
    assert_eq!(
        origin.conditional("/swr"),
        1,
        "the refresh sent the stored ETag"
    );

    // Without stale-while-revalidate, a stale entry is revalidated in line: 304.
    assert_eq!(x_cache(&get(proxy.addr, "/short").await), "MISS");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let r = get(proxy.addr, "/short").await;
    assert_eq!(
        (r.status, x_cache(&r), r.body.as_str()),
        (200, "REVALIDATED", "page /short")
    );
    assert_eq!(x_cache(&get(proxy.addr, "/short").await), "HIT");
    assert_eq!(
        (origin.seen("/short"), origin.conditional("/short")),
        (2, 1)
    );
    // A client's own validator is answered from the cache.
    let r = request(
        proxy.addr,
        "/short",
        "localhost",
        &[("if-none-match", "\"v1\"")],
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.body.as_str()), (304, ""));
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_if_error_serves_cached_pages_through_an_outage() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(&origin, ""), &[]);
    assert_eq!(x_cache(&get(proxy.addr, "/short/a").await), "MISS");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    origin.failing.store(true, Ordering::SeqCst);
    let r = get(proxy.addr, "/short/a").await;
    assert_eq!(
        (r.status, x_cache(&r), r.body.as_str()),
        (200, "STALE", "page /short/a"),
        "a 500 from the pool"
    );
    origin.kill();
    for _ in 0..5 {
        let r = get(proxy.addr, "/short/a").await;
        assert_eq!(
            (r.status, x_cache(&r), r.body.as_str()),
            (200, "STALE", "page /short/a"),
            "no backend reachable"
        );
    }
    let r = get(proxy.addr, "/never-cached").await;
    assert_eq!(r.status, 502, "{r:?}");
    let report = ctl_json(&proxy, &["cache", "pages"]);
    assert_eq!(report["caches"][0]["results"]["stale"], 6, "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_a_shared_cache_must_not_store_is_fetched_every_time() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(&origin, ""), &[]);
    for _ in 0..3 {
        get(proxy.addr, "/cookie").await;
        get(proxy.addr, "/private").await;
        request(
            proxy.addr,
            "/auth",
            "localhost",
            &[("authorization", "Basic eDp5")],
        )
        .await
        .unwrap();
        let r = request(
            proxy.addr,
            "/ranged",
            "localhost",
            &[("range", "bytes=0-1")],
        )
        .await
        .unwrap();
        assert_eq!(x_cache(&r), "BYPASS");
    }
    for path in ["/cookie", "/private", "/auth", "/ranged"] {
        assert_eq!(origin.seen(path), 3, "{path}");
    }
    // A stored page does not answer a request with credentials unless it says `public`.
    assert_eq!(x_cache(&get(proxy.addr, "/shared").await), "MISS");
    assert_eq!(x_cache(&get(proxy.addr, "/shared").await), "HIT");
    let with_credentials = [("authorization", "Basic eDp5")];
    let r = request(proxy.addr, "/shared", "localhost", &with_credentials)
        .await
        .unwrap();
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(origin.seen("/shared"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn storing_three_times_the_memory_bound_keeps_rss_within_it() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(
        &config(&origin, "memory = \"16MiB\"\nmax_object = \"1MiB\""),
        &[],
    );
    // Warm up the proxy's buffers with objects as large, before the baseline.
    for i in 0..8 {
        get(proxy.addr, &format!("/big/warm{i}?kib=256")).await;
    }
    let baseline = proxy.rss_kib();
    let bound_kib = 16 * 1024;
    for i in 0..192 {
        let r = get(proxy.addr, &format!("/big/{i}?kib=256")).await;
        assert_eq!((r.status, r.body.len()), (200, 256 << 10));
    }
    let grown = proxy.rss_kib().saturating_sub(baseline);
    eprintln!("RSS grew {grown} KiB storing 48 MiB through a 16 MiB cache");
    let report = ctl_json(&proxy, &["cache", "pages"]);
    let pages = &report["caches"][0];
    assert!(pages["bytes"].as_u64().unwrap() <= 16 << 20, "{report}");
    assert!(pages["evictions"].as_u64().unwrap() >= 130, "{report}");
    assert!(
        grown <= bound_kib * 13 / 10,
        "RSS grew {grown} KiB storing 48 MiB through a 16 MiB cache (bound {} KiB)",
        bound_kib * 13 / 10
    );
    // The most recent objects are still there; the first ones were evicted.
    assert_eq!(x_cache(&get(proxy.addr, "/big/191?kib=256").await), "HIT");
    assert_eq!(x_cache(&get(proxy.addr, "/big/0?kib=256").await), "MISS");
    // Larger than max_object: passed through, never stored.
    for _ in 0..2 {
        let r = get(proxy.addr, "/big/huge?kib=2048").await;
        assert_eq!((r.body.len(), x_cache(&r)), (2048 << 10, "MISS"));
    }
    assert_eq!(origin.seen("/big/huge"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_disk_tier_keeps_entries_across_a_restart() {
    let origin = Origin::start().await;
    let mut proxy = Proxy::start(
        &config(&origin, "path = \"disk-cache\"\ndisk = \"64MiB\""),
        &[],
    );
    for page in ["/kept/1", "/kept/2"] {
        assert_eq!(x_cache(&get(proxy.addr, page).await), "MISS");
    }
    let dir = proxy.dir.path().join("disk-cache");
    let written = || {
        std::fs::read_dir(&dir).map_or(0, |d| {
            d.filter(|f| {
                f.as_ref()
                    .is_ok_and(|f| f.path().extension().is_some_and(|e| e == "entry"))
            })
            .count()
        })
    };
    for _ in 0..100 {
        if written() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(written(), 2);
    proxy.restart();
    for page in ["/kept/1", "/kept/2"] {
        let r = get(proxy.addr, page).await;
        assert_eq!(
            (x_cache(&r), r.body.as_str()),
            ("HIT", format!("page {page}").as_str())
        );
    }
    assert_eq!((origin.seen("/kept/1"), origin.seen("/kept/2")), (1, 1));
    let purged = ctl_json(&proxy, &["purge", "pages", "localhost/kept/1"]);
    assert_eq!(purged["disk"], 1, "{purged}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_upgrade_passes_through_a_cached_route() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(&origin, ""), &[]);
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n").await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                s.read(&mut byte).await.unwrap(),
                1,
                "closed during the upgrade"
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(head.contains("x-cache: bypass"), "{head}");
        s.write_all(b"ping over the upgrade").await.unwrap();
        let mut echo = vec![0u8; 21];
        s.read_exact(&mut echo).await.unwrap();
        assert_eq!(echo, b"ping over the upgrade");
    }
    assert_eq!(origin.seen("/ws"), 2);
}

/// `GET /doc` with `headers` on a fresh connection.
async fn get_doc(addr: SocketAddr, headers: &[(&str, &str)]) -> Response {
    request(addr, "/doc", "localhost", headers).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_byte_range_of_a_stored_page_is_cut_from_it() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(&origin, ""), &[]);
    let addr = proxy.addr;
    // Nothing stored yet: the range goes to the pool, and its answer is not stored.
    assert_eq!(
        x_cache(&get_doc(addr, &[("range", "bytes=0-3")]).await),
        "BYPASS"
    );
    assert_eq!(x_cache(&get_doc(addr, &[]).await), "MISS"); // "page /doc", 9 bytes
    let r = get_doc(addr, &[("range", "bytes=0-3")]).await;
    assert_eq!(
        (r.status, r.body.as_str(), x_cache(&r)),
        (206, "page", "HIT")
    );
    assert_eq!(r.headers["content-range"], "bytes 0-3/9");
    assert_eq!(r.headers["content-length"], "4");
    for (range, part) in [
        ("bytes=-4", "/doc"),
        ("bytes=5-", "/doc"),
        ("bytes=2-200", "ge /doc"),
    ] {
        let r = get_doc(addr, &[("range", range)]).await;
        assert_eq!((r.status, r.body.as_str()), (206, part), "{range}");
    }
    let r = get_doc(addr, &[("range", "bytes=9-")]).await;
    assert_eq!(
        (r.status, r.headers["content-range"].as_str()),
        (416, "bytes */9")
    );
    // If-Range naming another version: the whole stored page instead.
    let r = get_doc(addr, &[("range", "bytes=0-3"), ("if-range", "\"other\"")]).await;
    assert_eq!(
        (r.status, r.body.as_str(), x_cache(&r)),
        (200, "page /doc", "HIT")
    );
    // Several ranges are the pool's to answer.
    assert_eq!(
        x_cache(&get_doc(addr, &[("range", "bytes=0-1,3-4")]).await),
        "BYPASS"
    );
    assert_eq!(origin.seen("/doc"), 3);
}

/// `METHOD path` with an empty body on a fresh connection: the answer as sent.
async fn exchange(addr: SocketAddr, method: &str, path: &str) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    raw
}

/// `HEAD path`: the whole answer as sent, header and any body, lowercased.
async fn head(addr: SocketAddr, path: &str) -> String {
    String::from_utf8_lossy(&exchange(addr, "HEAD", path).await).to_ascii_lowercase()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_miss_fetches_the_whole_page_once_and_sends_only_its_header() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(&origin, ""), &[]);
    for expected in ["miss", "hit"] {
        let answer = head(proxy.addr, "/headfirst").await;
        assert!(answer.starts_with("http/1.1 200"), "{answer}");
        assert!(answer.contains(&format!("x-cache: {expected}")), "{answer}");
        // "page /headfirst": the length of the page, and no body after the header.
        assert!(answer.contains("content-length: 15"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n"), "{answer}");
        if expected == "hit" {
            // A stored header keeps places for the fields every hit sets: each is sent
            // once, with its value ("close", as this request asked).
            for field in ["date", "connection", "age", "x-cache"] {
                let lines: Vec<&str> = answer
                    .lines()
                    .filter(|l| l.starts_with(&format!("{field}:")))
                    .collect();
                assert!(
                    lines.len() == 1 && lines[0].trim().len() > field.len() + 1,
                    "{field}: {answer}"
                );
            }
            assert!(answer.contains("connection: close"), "{answer}");
        }
    }
    let r = get(proxy.addr, "/headfirst").await;
    assert_eq!((x_cache(&r), r.body.as_str()), ("HIT", "page /headfirst"));
    assert_eq!(origin.seen("/headfirst"), 1);
    assert_eq!(origin.methods("/headfirst"), ["GET"]);
}

/// `POST path` with an empty body on a fresh connection: the status.
async fn post(addr: SocketAddr, path: &str) -> u16 {
    statuses(&exchange(addr, "POST", path).await)[0]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successful_post_drops_the_stored_copies_of_its_url_and_location() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(&origin, ""), &[]);
    for page in ["/inv", "/inv-target"] {
        assert_eq!(x_cache(&get(proxy.addr, page).await), "MISS");
        assert_eq!(x_cache(&get(proxy.addr, page).await), "HIT");
    }
    assert_eq!(post(proxy.addr, "/inv").await, 200);
    assert_eq!(
        x_cache(&get(proxy.addr, "/inv").await),
        "MISS",
        "the POST's own URL"
    );
    assert_eq!(x_cache(&get(proxy.addr, "/inv-target").await), "HIT");
    assert_eq!(post(proxy.addr, "/inv-post").await, 303);
    assert_eq!(
        x_cache(&get(proxy.addr, "/inv-target").await),
        "MISS",
        "the Location's URL"
    );
    assert_eq!(x_cache(&get(proxy.addr, "/inv").await), "HIT");
    assert_eq!((origin.seen("/inv"), origin.seen("/inv-target")), (3, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_x_cache_header_off_a_hit_carries_age_but_no_x_cache() {
    let origin = Origin::start().await;
    let proxy = Proxy::start(&config(&origin, "x_cache_header = false"), &[]);
    for _ in 0..2 {
        let r = get(proxy.addr, "/quiet").await;
        assert_eq!((r.status, r.body.as_str()), (200, "page /quiet"));
        assert!(!r.headers.contains_key("x-cache"), "{:?}", r.headers);
    }
    let hit = get(proxy.addr, "/quiet").await;
    assert!(hit.headers.contains_key("age"), "{:?}", hit.headers);
    assert_eq!(origin.seen("/quiet"), 1);
}
