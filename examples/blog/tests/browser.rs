//! The blog as a person uses it: headless Chromium, driven through chromedriver (the
//! W3C WebDriver protocol, spoken here over plain HTTP), visits the site through
//! Switchyard, posts an article and a comment with the forms, an instance is killed,
//! and both read back. A screenshot of the article page is saved as
//! `$CARGO_TARGET_TMPDIR/blog-browser/article.png`.
//!
//! Needs Debian's `chromium` and `chromium-driver`; `bash .ci/deps` installs them.

mod support;

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

impl Browser {
    fn start() -> Browser {
        let find = |name: &str| {
            ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"]
                .iter()
                .map(|d| std::path::Path::new(d).join(name))
                .find(|p| p.is_file())
        };
        let (Some(chromedriver), Some(chromium)) = (find("chromedriver"), find("chromium")) else {
            panic!(
                "this test drives Chromium: install chromium and chromium-driver (`bash .ci/deps` does)"
            );
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
        };
        let created = browser.call(
            "POST",
            "/session",
            json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium,
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=900,700"]
                }
            }}}),
        );
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        browser
    }

    /// One WebDriver command: its `value`.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let body = if method == "GET" || method == "DELETE" {
            String::new()
        } else {
            body.to_string()
        };
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        // chromedriver keeps the connection open: read the header, then Content-Length.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                s.read(&mut byte).unwrap(),
                1,
                "{method} {path}: closed early"
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut raw = vec![0u8; length];
        s.read_exact(&mut raw).unwrap();
        let raw = String::from_utf8_lossy(&raw);
        let reply: Value =
            serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{method} {path}: {e}: {raw}"));
        assert!(
            reply["value"]["error"].is_null(),
            "{method} {path}: {}",
            reply["value"]
        );
        reply["value"].clone()
    }

    fn session(&self, method: &str, tail: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{tail}", self.session), body)
    }

    fn go(&self, url: &str) {
        self.session("POST", "/url", json!({ "url": url }));
    }

    fn element(&self, css: &str) -> String {
        let found = self.session(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        self.session(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }

    fn click(&self, css: &str) {
        let id = self.element(css);
        self.session("POST", &format!("/element/{id}/click"), json!({}));
    }

    fn url(&self) -> String {
        self.session("GET", "/url", Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Waits (up to 10 s) until the page shown satisfies `done`: a click that submits
    /// a form returns before the next page has loaded.
    fn wait_for(&self, what: &str, done: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (url, source) = (self.url(), self.source());
            if done(&url, &source) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: still at {url}: {source}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn source(&self) -> String {
        self.session("GET", "/source", Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn screenshot(&self) -> Vec<u8> {
        let encoded = self.session("GET", "/screenshot", Value::Null);
        base64_decode(encoded.as_str().unwrap_or_default())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = std::panic::catch_unwind(|| {
                self.call("DELETE", &format!("/session/{}", self.session), Value::Null)
            });
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let sextets: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(sextets.len() * 3 / 4);
    for chunk in sextets.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, s)| n | (u32::from(*s) << (18 - 6 * i)));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}

#[test]
fn a_reader_posts_an_article_and_a_comment_and_reads_them_after_an_instance_dies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("blog.db");
    let (mut instances, _proxy, listen) = blog_behind_switchyard(dir.path(), &db);
    let site = format!("http://{listen}");
    let browser = Browser::start();

    browser.go(&format!("{site}/"));
    assert!(
        browser.source().contains("Nothing yet"),
        "{}",
        browser.source()
    );
    browser.type_into("#title", "Cache lines");
    browser.type_into(
        "#body",
        "Served from Switchyard.\n\nEven when instances die.",
    );
    browser.click("#publish");
    browser.wait_for("publishing leads to the article", |url, _| {
        url.contains("/a/")
    });
    let article = browser.url();
    assert!(
        article.starts_with(&format!("{site}/a/")),
        "publishing leads to the article: {article}"
    );
    assert!(
        browser
            .source()
            .contains("<h1 id=\"title\">Cache lines</h1>")
    );

    browser.type_into("#comment", "First! <script>alert(1)</script>");
    browser.click("#send");
    browser.wait_for("the comment shows", |_, page| page.contains("<li>First!"));
    assert_eq!(browser.url(), article, "commenting returns to the article");
    let page = browser.source();
    assert!(
        page.contains("<li>First! &lt;script&gt;alert(1)&lt;/script&gt;</li>"),
        "the new comment shows at once, escaped: {page}"
    );

    instances[0].kill();
    browser.go(&format!("{site}/"));
    let front = browser.source();
    assert!(
        front.contains(">Cache lines</a>") && front.contains("(1 comment)"),
        "{front}"
    );
    browser.click("#articles a");
    browser.wait_for("the link leads to the article", |url, _| url == article);
    let page = browser.source();
    assert!(page.contains("Even when instances die."), "{page}");
    assert!(page.contains("First! &lt;script&gt;"), "{page}");

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("blog-browser");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("article.png"), &png).unwrap();
    eprintln!(
        "screenshot: {} ({} bytes)",
        out.join("article.png").display(),
        png.len()
    );
}
