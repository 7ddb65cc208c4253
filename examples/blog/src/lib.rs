//! A small blog service — articles and comments in one SQLite database that several
//! instances share — written to be run behind Switchyard.
//!
//! ```text
//! GET  /healthz                  200 "ok" (what Switchyard's health check asks); 503
//!                                while the database file is gone
//! GET  /articles                 [{"id":1,"title":"…"}, …]
//! GET  /articles/ID              {"id":1,"title":"…","body":"…","comments":["…"]}
//! POST /articles                 {"title":"…","body":"…"} → 201 {"id":N}
//! POST /articles/ID/comments     {"text":"…"} → 201
//! ```
//!
//! and the same blog as a website ([`pages`]): `/` lists the articles, `/a/ID` shows
//! one with its comments, and forms post both.
//!
//! Every response names the instance that served it in `x-instance`. While the database
//! file is missing every answer is 503; once `blog restore` puts a file back, instances
//! reopen it. `blog backup` copies the database online ([`backup`]).

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request body accepted.
const MAX_BODY: usize = 64 << 10;

pub mod backup;
pub mod pages;

use pages::Page;

/// One instance: its name and its connection to the shared database.
#[derive(Debug)]
pub struct Blog {
    name: String,
    path: PathBuf,
    db: Mutex<Option<Open>>,
}

/// The connection, and which file it has open (`blog restore` puts a new file in place).
#[derive(Debug)]
struct Open {
    connection: Connection,
    file: (u64, u64),
}

/// Device and inode of the file at `path`, if there is one.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Connects to the database at `path`; creates it only if `create`.
fn connect(path: &Path, create: bool) -> rusqlite::Result<Connection> {
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let db = Connection::open_with_flags(path, flags)?;
    // Several processes write to one file: WAL lets readers go on while one writes,
    // and the busy timeout makes a writer wait for another instead of failing.
    db.pragma_update(None, "journal_mode", "wal")?;
    db.busy_timeout(std::time::Duration::from_secs(5))?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS articles (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS comments (id INTEGER PRIMARY KEY, article INTEGER NOT NULL REFERENCES articles(id), text TEXT NOT NULL);",
    )?;
    Ok(db)
}

/// Opens (and, the first time, creates) the database at `path`.
pub fn open(name: &str, path: &Path) -> rusqlite::Result<Blog> {
    let connection = connect(path, true)?;
    let file = file_id(path).unwrap_or_default();
    Ok(Blog {
        name: name.to_owned(),
        path: path.to_owned(),
        db: Mutex::new(Some(Open { connection, file })),
    })
}

impl Blog {
    /// The connection to the database file as it is now: reopened when `blog restore`
    /// has put another file in place, an error (answered 503) while there is none. A
    /// connection to a deleted file would keep answering from it, and its writes would
    /// be lost.
    fn database<'a>(&self, db: &'a mut Option<Open>) -> Result<&'a Connection, String> {
        let Some(now) = file_id(&self.path) else {
            *db = None;
            return Err(format!(
                "the database {} is gone; restore it with `blog restore BACKUP {}`",
                self.path.display(),
                self.path.display()
            ));
        };
        if db.as_ref().is_none_or(|o| o.file != now) {
            let connection = connect(&self.path, false)
                .map_err(|e| format!("cannot open the database {}: {e}", self.path.display()))?;
            *db = Some(Open {
                connection,
                file: now,
            });
        }
        db.as_ref()
            .map(|o| &o.connection)
            .ok_or_else(|| "no database".to_owned())
    }
}

/// Serves `blog` on `listener` until the process ends.
pub async fn serve(blog: Arc<Blog>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let blog = Arc::clone(&blog);
        tokio::spawn(async move {
            let _ = connection(&blog, stream).await;
        });
    }
}

/// Binds `addr` and serves; returns the bound address once listening.
pub async fn start(blog: Blog, addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(Arc::new(blog), listener));
    Ok(bound)
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    close: bool,
}

async fn connection(blog: &Blog, mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        let reply = handle(blog, &request);
        let (status, body) = (reply.status, reply.body);
        let reason = match status {
            200 => "OK",
            201 => "Created",
            303 => "See Other",
            400 => "Bad Request",
            404 => "Not Found",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let extra: String = reply
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\nx-instance: {}\r\n{extra}{}\r\n",
            reply.content_type,
            body.len(),
            blog.name,
            if request.close {
                "connection: close\r\n"
            } else {
                ""
            }
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        if request.close {
            return Ok(());
        }
    }
}

async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Request>> {
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 << 10 {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("/").to_owned();
    let mut length = 0usize;
    let mut close = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            length = value.parse().unwrap_or(0);
        } else if name == "connection" && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    if length > MAX_BODY {
        return Ok(None);
    }
    while buf.len() < end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[end..end + length].to_vec();
    buf.drain(..end + length);
    Ok(Some(Request {
        method,
        path,
        body,
        close,
    }))
}

#[derive(Deserialize)]
struct NewArticle {
    title: String,
    body: String,
}

#[derive(Deserialize)]
struct NewComment {
    text: String,
}

/// A response.
struct Reply {
    status: u16,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn json(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }
}

fn handle(blog: &Blog, request: &Request) -> Reply {
    let mut open = blog.db.lock().unwrap_or_else(PoisonError::into_inner);
    // Without its database an instance is not healthy either: /healthz says so too.
    let db = match blog.database(&mut open) {
        Ok(db) => db,
        Err(why) => return Reply::json(503, json!({ "error": why }).to_string()),
    };
    let segments: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    let page = match (request.method.as_str(), segments.as_slice()) {
        ("GET", [""]) => Some(pages::front(db)),
        ("POST", [""]) => Some(pages::post_article(db, &request.body)),
        ("GET", ["a", id]) => Some(
            id.parse()
                .map_or(Ok(pages::not_found()), |id| pages::article(db, id)),
        ),
        ("POST", ["a", id]) => Some(id.parse().map_or(Ok(pages::not_found()), |id| {
            pages::post_comment(db, id, &request.body)
        })),
        _ => None,
    };
    if let Some(page) = page {
        return match page {
            Ok(Page::Html(status, body)) => Reply {
                status,
                content_type: "text/html; charset=utf-8",
                headers: if status == 200 {
                    vec![("cache-control", pages::PAGE_CACHE_CONTROL.to_owned())]
                } else {
                    Vec::new()
                },
                body,
            },
            Ok(Page::SeeOther(location)) => Reply {
                status: 303,
                content_type: "text/plain; charset=utf-8",
                headers: vec![("location", location.clone())],
                body: format!("see {location}\n"),
            },
            Err(e) => Reply::json(500, json!({"error": e.to_string()}).to_string()),
        };
    }
    let outcome = match (request.method.as_str(), segments.as_slice()) {
        ("GET", ["healthz"]) => Ok((200, json!("ok"))),
        ("GET", ["articles"]) => list(db),
        ("GET", ["articles", id]) => match id.parse() {
            Ok(id) => article(db, id),
            Err(_) => Ok((404, json!({"error": "no such article"}))),
        },
        ("POST", ["articles"]) => match serde_json::from_slice::<NewArticle>(&request.body) {
            Ok(a) => db
                .execute(
                    "INSERT INTO articles (title, body) VALUES (?1, ?2)",
                    params![a.title, a.body],
                )
                .map(|_| (201, json!({"id": db.last_insert_rowid()}))),
            Err(e) => Ok((
                400,
                json!({"error": format!("expected {{\"title\", \"body\"}}: {e}")}),
            )),
        },
        ("POST", ["articles", id, "comments"]) => {
            match (
                id.parse::<i64>(),
                serde_json::from_slice::<NewComment>(&request.body),
            ) {
                (Ok(id), Ok(c)) => match exists(db, id) {
                    Ok(true) => db
                        .execute(
                            "INSERT INTO comments (article, text) VALUES (?1, ?2)",
                            params![id, c.text],
                        )
                        .map(|_| (201, json!({"article": id}))),
                    Ok(false) => Ok((404, json!({"error": "no such article"}))),
                    Err(e) => Err(e),
                },
                _ => Ok((
                    400,
                    json!({"error": "expected {\"text\"} for an existing article"}),
                )),
            }
        }
        _ => Ok((404, json!({"error": "no such page"}))),
    };
    match outcome {
        Ok((status, value)) => Reply::json(status, value.to_string()),
        Err(e) => Reply::json(500, json!({"error": e.to_string()}).to_string()),
    }
}

fn list(db: &Connection) -> rusqlite::Result<(u16, serde_json::Value)> {
    let mut statement = db.prepare("SELECT id, title FROM articles ORDER BY id")?;
    let rows = statement
        .query_map([], |r| {
            Ok(json!({"id": r.get::<_, i64>(0)?, "title": r.get::<_, String>(1)?}))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((200, serde_json::Value::Array(rows)))
}

fn exists(db: &Connection, id: i64) -> rusqlite::Result<bool> {
    db.query_row("SELECT 1 FROM articles WHERE id = ?1", [id], |_| Ok(()))
        .optional()
        .map(|r| r.is_some())
}

fn article(db: &Connection, id: i64) -> rusqlite::Result<(u16, serde_json::Value)> {
    let found = db
        .query_row(
            "SELECT title, body FROM articles WHERE id = ?1",
            [id],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()?;
    let Some((title, body)) = found else {
        return Ok((404, json!({"error": "no such article"})));
    };
    let mut statement = db.prepare("SELECT text FROM comments WHERE article = ?1 ORDER BY id")?;
    let comments = statement
        .query_map([id], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((
        200,
        json!({"id": id, "title": title, "body": body, "comments": comments}),
    ))
}

/// The proxy configuration: three primaries and the backup `addrs[3]`.
pub fn config_text(listen: &str, addrs: &[SocketAddr], socket: &Path) -> String {
    format!(
        r#"[proxy]
listen = ["{listen}"]

[admin]
socket = "{socket}"

[[pools]]
name = "blog"
balancer = "latency"
backends = [
  {{ addr = "{a}" }},
  {{ addr = "{b}" }},
  {{ addr = "{c}" }},
  {{ addr = "{d}", backup = true }},
]
connect_timeout = "500ms"
retries = 3
retry_on = [502, 503]
health_check = {{ kind = "http", path = "/healthz", interval = "200ms", timeout = "150ms", rise = 2, fall = 2 }}

# The website's pages (`cache-control: max-age=2`) are served from here, and while
# every instance is down, served stale for up to 10 minutes. The JSON API sends no
# freshness, so it is never stored.
[[caches]]
name = "pages"
memory = "64MiB"

[[routes]]
path_prefix = "/"
pool = "blog"
cache = {{ use = "pages", stale_if_error = "10m" }}
"#,
        socket = socket.display(),
        a = addrs[0],
        b = addrs[1],
        c = addrs[2],
        d = addrs[3],
    )
}
