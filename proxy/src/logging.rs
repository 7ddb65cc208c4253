//! Where log lines go. Access lines (target [`ACCESS_TARGET`]) are appended to a buffer
//! in memory that a writer thread of their own writes out every [`FLUSH_EVERY`], or
//! sooner once [`WRITE_AT`] bytes wait (nginx's `access_log … buffer=64k`): the worker
//! that served a request makes no system call for its line and never waits on a disk or
//! a pipe. They go to `proxy.access_log_path` or, without it, to stderr. Everything else
//! (start-up, reloads, warnings) is written to stderr as it happens: it is rare.
//!
//! The buffer is bounded ([`MAX_PENDING`]); when the disk cannot keep up, lines are
//! dropped rather than requests slowed, and counted in
//! `switchyard_access_log_dropped_total`.

use parking_lot::{Condvar, Mutex};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Metric, MetricFamily, MetricType};
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tracing_log::AsLog;
use tracing_subscriber::filter::{EnvFilter, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::{AccessLog, ProxySettings};

/// The `tracing` target of access lines.
pub const ACCESS_TARGET: &str = "switchyard::access";

/// Longest time a line waits in memory.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Bytes waiting that wake the writer before [`FLUSH_EVERY`].
pub const WRITE_AT: usize = 64 * 1024;

/// Bytes waiting at most: a few seconds of a busy proxy's lines. Past it, lines are
/// dropped and counted.
pub const MAX_PENDING: usize = 16 * 1024 * 1024;

/// How log lines are formatted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `key=value` text.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<AccessLog> for Format {
    /// The format of `[proxy] access_log` (off still formats the other lines as text).
    fn from(log: AccessLog) -> Self {
        match log {
            AccessLog::Json => Format::Json,
            AccessLog::Text | AccessLog::Off => Format::Text,
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The access log file cannot be opened for appending.
    #[error(
        "proxy.access_log_path: cannot open {} for appending: {source}; create its directory, make it writable by this user, or remove the key to log to stderr",
        path.display()
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the access log writer thread: {0}")]
    Thread(std::io::Error),
    /// Another logger was installed first (only in tests that start twice).
    #[error("cannot install the logger: {0}")]
    Install(String),
}

/// The file `proxy.access_log_path` names, opened (and created) for appending; `None`
/// when access lines go to stderr. `check` calls it as `run` does, as `nginx -t` opens
/// its log files.
pub fn open_configured(proxy: &ProxySettings) -> Result<Option<File>, LogError> {
    proxy
        .access_log_path
        .as_deref()
        .map(open_access_log)
        .transpose()
}

fn open_access_log(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Access lines waiting for the writer thread.
#[derive(Debug, Default)]
struct Pending {
    lines: Mutex<Vec<u8>>,
    /// Wakes the writer early, when [`WRITE_AT`] bytes wait or at shutdown.
    wake: Condvar,
    dropped: AtomicU64,
    closed: AtomicBool,
}

impl Pending {
    /// Adds one whole line, or drops it if too much waits already.
    fn push(&self, line: &[u8]) {
        let mut lines = self.lines.lock();
        if self.closed.load(Ordering::Relaxed) || lines.len() + line.len() > MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_below = lines.len() < WRITE_AT;
        lines.extend_from_slice(line);
        if was_below && lines.len() >= WRITE_AT {
            self.wake.notify_one();
        }
    }

    /// Takes what waits, leaving `spare` (emptied) in its place.
    fn take(&self, spare: &mut Vec<u8>) {
        spare.clear();
        std::mem::swap(&mut *self.lines.lock(), spare);
    }
}

/// The writer handed to `tracing`: each formatted event arrives in one `write_all`.
#[derive(Clone, Debug)]
struct AccessWriter(Arc<Pending>);

impl Write for AccessWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for AccessWriter {
    type Writer = AccessWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The writer thread: waits for lines, writes them out.
fn write_out(pending: &Pending, out: &mut dyn Write) {
    let mut batch = Vec::with_capacity(WRITE_AT);
    loop {
        {
            let mut lines = pending.lines.lock();
            if lines.len() < WRITE_AT && !pending.closed.load(Ordering::Relaxed) {
                pending.wake.wait_for(&mut lines, FLUSH_EVERY);
            }
        }
        pending.take(&mut batch);
        if !batch.is_empty()
            && let Err(e) = out.write_all(&batch).and_then(|()| out.flush())
        {
            // Counted as dropped: a full disk must not stop the proxy.
            pending
                .dropped
                .fetch_add(bytecount_lines(&batch), Ordering::Relaxed);
            eprintln!("switchyard: access log write failed: {e}; lines dropped");
        }
        if pending.closed.load(Ordering::Relaxed) && pending.lines.lock().is_empty() {
            return;
        }
    }
}

fn bytecount_lines(batch: &[u8]) -> u64 {
    batch.iter().filter(|&&b| b == b'\n').count() as u64
}

/// The installed logger: flushes waiting access lines when asked and counts dropped ones.
#[derive(Debug)]
pub struct Logging {
    pending: Arc<Pending>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Logging {
    /// Writes out every waiting access line and stops the writer thread. Lines logged
    /// afterwards are dropped; call this last, just before the process exits.
    pub fn flush(&self) {
        {
            // Under the lock, so the writer cannot miss it between its check and its wait.
            let _lines = self.pending.lines.lock();
            self.pending.closed.store(true, Ordering::Relaxed);
        }
        self.pending.wake.notify_one();
        if let Some(writer) = self.writer.lock().take() {
            let _ = writer.join();
        }
    }

    /// `switchyard_access_log_dropped_total`, read when scraped.
    pub fn dropped_collector(&self) -> prometheus::Result<DroppedLines> {
        Ok(DroppedLines {
            pending: Arc::clone(&self.pending),
            desc: Desc::new(
                "switchyard_access_log_dropped_total".into(),
                "Access log lines dropped because the writer could not keep up.".into(),
                Vec::new(),
                Default::default(),
            )?,
        })
    }
}

/// Installs the process's logger: `RUST_LOG` (default `info`) filters; access lines in
/// `format` to `access_file` (or stderr) through the writer thread, the rest to stderr.
pub fn init(format: Format, access_file: Option<File>) -> Result<Logging, LogError> {
    let mut out: Box<dyn Write + Send> = match access_file {
        Some(file) => Box::new(file),
        None => Box::new(std::io::stderr()),
    };
    let pending = Arc::new(Pending::default());
    let for_thread = Arc::clone(&pending);
    let writer = std::thread::Builder::new()
        .name("switchyard-access-log".into())
        .spawn(move || write_out(&for_thread, &mut *out))
        .map_err(LogError::Thread)?;
    let ansi = std::io::stderr().is_terminal();
    let is_access = |m: &tracing::Metadata<'_>| m.target() == ACCESS_TARGET;
    let to_buffer = AccessWriter(Arc::clone(&pending));
    let access = match format {
        Format::Json => fmt::layer().json().with_writer(to_buffer).boxed(),
        Format::Text => fmt::layer().with_ansi(false).with_writer(to_buffer).boxed(),
    }
    .with_filter(filter_fn(is_access));
    let other = match format {
        Format::Json => fmt::layer().json().with_writer(std::io::stderr).boxed(),
        Format::Text => fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    }
    .with_filter(filter_fn(move |m| !is_access(m)));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let most_verbose = filter.max_level_hint();
    tracing_subscriber::registry()
        .with(filter)
        .with(access)
        .with(other)
        .try_init()
        .map_err(|e| LogError::Install(e.to_string()))?;
    // Pingora logs through the `log` crate. The per-layer filters above give no level
    // hint, so `log` was left at TRACE and every `debug!` on Pingora's request path went
    // through the tracing dispatcher only to be dropped there (2 % of a cache hit's CPU).
    if let Some(level) = most_verbose {
        tracing_log::log::set_max_level(level.as_log());
    }
    Ok(Logging {
        pending,
        writer: Mutex::new(Some(writer)),
    })
}

/// The dropped-lines counter as a Prometheus collector.
#[derive(Debug)]
pub struct DroppedLines {
    pending: Arc<Pending>,
    desc: Desc,
}

impl Collector for DroppedLines {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut counter = Counter::default();
        counter.set_value(self.pending.dropped.load(Ordering::Relaxed) as f64);
        let mut metric = Metric::default();
        metric.set_counter(counter);
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::COUNTER);
        family.set_metric(vec![metric]);
        vec![family]
    }
}
