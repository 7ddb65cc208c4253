//! Applying what DNS discovery found: a changed set rebuilds the runtime from the
//! running configuration with the new backends, as a configuration reload would,
//! keeping every backend's state by address.

use std::sync::{Arc, PoisonError};

use super::Control;
use crate::config::BackendConfig;
use crate::runtime;

impl Control {
    /// Takes the answer of a lookup for `pool`'s backends: an error is counted and the
    /// last good set stays; a new set is swapped in.
    pub fn apply_discovered(&self, pool: &str, answer: Result<Vec<BackendConfig>, String>) {
        let set = match answer {
            Ok(set) => set,
            Err(e) => {
                self.discovered.failed(pool);
                tracing::warn!(pool, error = %e, "DNS lookup failed; the pool keeps its last good backends");
                return;
            }
        };
        let _one_at_a_time = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(change) = self.discovered.record(pool, set) else {
            return;
        };
        let mut config = (*self.config.load_full()).clone();
        self.discovered.fill(&mut config);
        let built = runtime::build_runtime(
            &config,
            &self.engine,
            &self.telemetry,
            Some(&self.runtime.load()),
        );
        match built {
            Ok(runtime) => {
                self.runtime.store(Arc::new(runtime));
                self.config.store(Arc::new(config));
                let show = |l: &[std::net::SocketAddr]| {
                    l.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                tracing::info!(pool, added = %show(&change.added), removed = %show(&change.removed), "backends changed in DNS");
            }
            Err(e) => {
                tracing::error!(pool, error = %e, "backends changed in DNS but the pool could not be rebuilt; the previous set serves")
            }
        }
    }
}
