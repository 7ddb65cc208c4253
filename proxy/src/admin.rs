//! The admin socket: a Unix socket (mode 0600) speaking one JSON object per line each
//! way, so operators can script it with `socat` as they do HAProxy's runtime API.
//!
//! ```text
//! → {"cmd":"reload","plugin":"web-lb"}
//! ← {"ok":true,"changed":[…],"unchanged":[],"rejected":[]}
//! → {"cmd":"drain","pool":"web","addr":"127.0.0.1:3001"}
//! ← {"ok":false,"error":"pool \"web\" has no backend …"}
//! ```
//!
//! A line that is not JSON is read as words, `reload web-lb` or `drain web 127.0.0.1:3001`,
//! the same words `switchyard ctl` takes. The socket runs on its own thread and runtime:
//! a slow or silent client holds only its own connection, never the data path.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::control::Control;

pub use switchyard_parse::admin_protocol::{MAX_LINE, parse_request, words_to_request};
/// A connection idle this long is closed.
const IDLE: Duration = Duration::from_secs(60);

/// Why the admin socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Another process answers on the socket.
    #[error("admin socket {path}: another switchyard is answering there; stop it or set [admin] socket to another path", path = path.display())]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Binding or securing the socket failed.
    #[error("admin socket {path}: {source}", path = path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// This process's effective user id (the owner of `/proc/self`).
pub fn euid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// Makes `dir` a directory only this user can enter: created with mode 0700 if
/// missing, refused if another user owns it (they could swap the socket under us).
fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != euid() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not by this user (uid {}); remove it, or set [admin] socket to a path in a directory of your own",
                dir.display(),
                meta.uid(),
                euid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// `Err` unless the socket at `path` belongs to this user (or to root): a socket
/// another local user put there could capture commands and forge their answers.
pub fn check_owner(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::symlink_metadata(path)?.uid();
    if owner == euid() || owner == 0 {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        format!(
            "the socket is owned by uid {owner}, not by you (uid {}) or root; it is not this proxy's. Run ctl as the proxy's user",
            euid()
        ),
    ))
}

/// The admin socket: bound at start (so a problem stops the start, with its reason),
/// served by a Pingora background service until the server shuts down.
pub struct AdminSocket {
    listener: parking_lot::Mutex<Option<std::os::unix::net::UnixListener>>,
    control: Arc<Control>,
    path: PathBuf,
}

impl std::fmt::Debug for AdminSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSocket")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AdminSocket {
    /// Binds the socket at `path`: in a private directory if it is the default path;
    /// refused while another proxy answers there.
    pub fn bind(control: Arc<Control>, path: &Path) -> Result<Self, AdminError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let io = |source| AdminError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if path == crate::config::default_admin_socket() {
            if let Some(dir) = dir {
                private_dir(dir).map_err(io)?;
            }
        } else if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(io)?;
            let shared = std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o002 != 0);
            if shared {
                tracing::warn!(socket = %path.display(), "the admin socket is in a directory every local user can write to; one of them could take the path first. Put it in a directory of the proxy's own");
            }
        }
        if path.exists() {
            // A live socket belongs to a running proxy; a dead one is left over from a crash.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(AdminError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        // Bind inside a private (0700) directory beside the target, make the socket 0600,
        // then move it into place: at no moment can another user reach it.
        let private = path.with_file_name(format!(".switchyard-admin-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .map_err(io)?;
        let staged = private.join("admin.sock");
        let bound = std::os::unix::net::UnixListener::bind(&staged)
            .and_then(|l| {
                std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
                    .map(|()| l)
            })
            .and_then(|l| std::fs::rename(&staged, path).map(|()| l));
        let _ = std::fs::remove_dir(&private);
        let listener = bound.map_err(io)?;
        listener.set_nonblocking(true).map_err(io)?;
        // SIGHUP reloads the configuration, as for nginx. Its handler is installed now:
        // unhandled until the service starts, SIGHUP would end the process.
        let installed = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|rt| {
                rt.block_on(async {
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                })
            })
            .map_err(io)?;
        // The handler stays installed; this stream's runtime does not, so the service
        // listens again on its own.
        drop(installed);
        tracing::info!(socket = %path.display(), "admin socket ready");
        Ok(AdminSocket {
            listener: parking_lot::Mutex::new(Some(listener)),
            control,
            path: path.to_owned(),
        })
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for AdminSocket {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let Some(listener) = self.listener.lock().take() else {
            return;
        };
        let listener = match tokio::net::UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "admin socket cannot be served");
                return;
            }
        };
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hangup) => {
                tokio::spawn(reload_on_hangup(hangup, Arc::clone(&self.control)));
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP will not reload the configuration"),
        }
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, Arc::clone(&self.control)));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                _ = shutdown.changed() => {
                    let _ = std::fs::remove_file(&self.path);
                    return;
                }
            }
        }
    }
}

async fn reload_on_hangup(mut hangup: tokio::signal::unix::Signal, control: Arc<Control>) {
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        let control = Arc::clone(&control);
        // Errors are logged by reload_config itself.
        let _ = tokio::task::spawn_blocking(move || control.reload_config()).await;
    }
}

async fn serve(mut stream: UnixStream, control: Arc<Control>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            let reply = answer(&line[..line.len() - 1], &control).await;
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
        if buf.len() > MAX_LINE {
            let reply = error_line(&format!(
                "request line longer than {MAX_LINE} bytes; connection closed"
            ));
            let _ = stream.write_all(reply.as_bytes()).await;
            return;
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(IDLE, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn error_line(message: &str) -> String {
    format!("{}\n", json!({ "ok": false, "error": message }))
}

async fn answer(line: &[u8], control: &Arc<Control>) -> String {
    let request = match parse_request(&String::from_utf8_lossy(line)) {
        Ok(r) => r,
        Err(e) => return error_line(&e),
    };
    // Reloads compile plugins: keep that work off this runtime so other admin clients
    // are still answered meanwhile.
    let control = Arc::clone(control);
    let outcome = tokio::task::spawn_blocking(move || control.dispatch(&request)).await;
    let reply = match outcome {
        Ok(Ok(Value::Object(mut map))) => {
            map.insert("ok".into(), Value::Bool(true));
            Value::Object(map)
        }
        Ok(Ok(other)) => json!({ "ok": true, "result": other }),
        Ok(Err(message)) => json!({ "ok": false, "error": message }),
        Err(e) => {
            json!({ "ok": false, "error": format!("the command failed inside the proxy: {e}") })
        }
    };
    format!("{reply}\n")
}

/// Sends one request to the socket at `path` and returns the reply (blocking client
/// for `switchyard ctl`).
pub fn call(path: &Path, request: &Value) -> std::io::Result<Value> {
    check_owner(path)?;
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    // Reloads compile plugins, which can take seconds.
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad reply {line:?}: {e}"),
        )
    })
}
