//! `[admin] state_file`: the drains and weights an operator set at run time, written on
//! every change and read back at start and on a configuration reload, as HAProxy's
//! `server-state-file` keeps them across restarts. Backends are matched by pool name
//! and address; entries for backends that no longer exist are dropped.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::runtime::Runtime;

/// The file's layout; `version` lets a later proxy read an older file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    backends: Vec<SavedBackend>,
}

/// What an operator changed on one backend.
#[derive(Debug, Serialize, Deserialize)]
struct SavedBackend {
    pool: String,
    addr: String,
    /// Set by `ctl weight`; absent when the configuration's weight applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weight: Option<u32>,
    #[serde(default)]
    draining: bool,
}

const VERSION: u32 = 1;

/// Writes the run-time state of every backend of `runtime` to `path`, atomically (a
/// file beside it, then a rename), so a crash mid-write leaves the previous state.
pub fn save(path: &Path, runtime: &Runtime) -> Result<(), String> {
    let backends = runtime
        .pools
        .iter()
        .flat_map(|p| {
            p.backends
                .iter()
                .filter(|b| b.is_draining() || b.weight_set_at_run_time())
                .map(|b| SavedBackend {
                    pool: p.name.clone(),
                    addr: b.addr.to_string(),
                    weight: b.weight_set_at_run_time().then(|| b.weight()),
                    draining: b.is_draining(),
                })
        })
        .collect();
    let state = StateFile {
        version: VERSION,
        backends,
    };
    let text = serde_json::to_string_pretty(&state).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text + "\n")
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("admin.state_file {}: cannot write: {e}", path.display()))
}

/// Applies the state saved in `path` to the backends of `runtime` that still exist;
/// returns how many were restored. A missing file is no state; an unreadable one is an
/// error naming it (the caller decides whether to go on).
pub fn restore(path: &Path, runtime: &Runtime) -> Result<usize, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => {
            return Err(format!(
                "admin.state_file {}: cannot read: {e}",
                path.display()
            ));
        }
    };
    let state: StateFile = serde_json::from_str(&text).map_err(|e| {
        format!(
            "admin.state_file {}: not a state file ({e}); move it aside to start without saved state",
            path.display()
        )
    })?;
    if state.version > VERSION {
        return Err(format!(
            "admin.state_file {}: written by a newer switchyard (version {}, this one reads {VERSION})",
            path.display(),
            state.version
        ));
    }
    let mut restored = 0;
    for saved in &state.backends {
        let backend = runtime
            .pools
            .iter()
            .find(|p| p.name == saved.pool)
            .and_then(|p| p.backend(&saved.addr));
        let Some(backend) = backend else {
            tracing::info!(pool = %saved.pool, addr = %saved.addr, "saved state of a backend that is gone: dropped");
            continue;
        };
        backend.set_draining(saved.draining);
        if let Some(weight) = saved.weight {
            backend.set_weight(weight);
        }
        restored += 1;
    }
    Ok(restored)
}
