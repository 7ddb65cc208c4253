//! A plugin's stdout and stderr, sent to the log line by line and rate-limited so a
//! plugin printing in a loop cannot flood it.

use bytes::Bytes;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_io::poll::Pollable;
use wasmtime_wasi_io::streams::{OutputStream, StreamResult};

/// Lines per plugin instance and window that reach the log; the rest are counted.
const LINES_PER_WINDOW: u32 = 20;
const WINDOW: Duration = Duration::from_secs(1);
/// Longest line kept; longer lines are cut.
const MAX_LINE: usize = 1024;

#[derive(Debug)]
struct Budget {
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

/// Log sink shared by one instance's stdout and stderr.
#[derive(Clone, Debug)]
pub struct PluginOutput {
    plugin: Arc<str>,
    budget: Arc<Mutex<Budget>>,
}

impl PluginOutput {
    /// A sink for `plugin`.
    pub fn new(plugin: &str) -> Self {
        PluginOutput {
            plugin: Arc::from(plugin),
            budget: Arc::new(Mutex::new(Budget {
                window_start: Instant::now(),
                used: 0,
                suppressed: 0,
            })),
        }
    }

    /// The stream for `name` ("stdout" or "stderr").
    pub fn stream(&self, name: &'static str) -> LogStream {
        LogStream {
            sink: self.clone(),
            name,
            line: Vec::new(),
        }
    }

    fn emit(&self, stream: &str, line: &[u8]) {
        let mut budget = self.budget.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(budget.window_start) >= WINDOW {
            if budget.suppressed > 0 {
                tracing::warn!(plugin = %self.plugin, suppressed = budget.suppressed, "plugin output rate-limited: lines dropped");
            }
            *budget = Budget {
                window_start: now,
                used: 0,
                suppressed: 0,
            };
        }
        if budget.used >= LINES_PER_WINDOW {
            budget.suppressed += 1;
            return;
        }
        budget.used += 1;
        let text = String::from_utf8_lossy(&line[..line.len().min(MAX_LINE)]);
        tracing::info!(plugin = %self.plugin, stream, "{}", text.trim_end());
    }
}

/// One of the two streams; buffers a partial line.
#[derive(Debug)]
pub struct LogStream {
    sink: PluginOutput,
    name: &'static str,
    line: Vec<u8>,
}

impl LogStream {
    fn push(&mut self, bytes: &[u8]) {
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            if self.line.len() < MAX_LINE {
                let room = MAX_LINE - self.line.len();
                self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            if chunk.ends_with(b"\n") {
                self.sink.emit(self.name, &self.line);
                self.line.clear();
            }
        }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LogStream {
            sink: self.sink.clone(),
            name: self.name,
            line: Vec::new(),
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only the WASIp2 stream above is used; p3 is not linked.
        Box::new(tokio::io::sink())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LogStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.sink.emit(self.name, &line);
        }
    }
}
