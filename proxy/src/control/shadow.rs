//! `ctl shadow POOL` and `ctl promote POOL`: what a pool's shadow balancer would have
//! done, and making it the live one (and the live one the shadow, so a promotion can be
//! undone by another).

use serde_json::{Value, json};
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Control, OpResult};
use crate::pool::{Pool, Shadow};

impl Control {
    fn pool_with_shadow<T>(
        &self,
        name: &str,
        f: impl FnOnce(&Pool, &Shadow) -> T,
    ) -> Result<T, String> {
        let runtime = self.runtime.load();
        let pool = runtime
            .pools
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| self.no_pool(&runtime, name))?;
        let shadow = pool.shadow.as_ref().ok_or_else(|| {
            let with: Vec<&str> = runtime
                .pools
                .iter()
                .filter(|p| p.shadow.is_some())
                .map(|p| p.name.as_str())
                .collect();
            format!(
                "pool {name:?} has no shadow balancer; add shadow = \"PLUGIN\" to it in the configuration{}",
                if with.is_empty() {
                    String::new()
                } else {
                    format!(" (pools with one: {})", with.join(", "))
                }
            )
        })?;
        Ok(f(pool, shadow))
    }

    /// The shadow's agreement with the live balancer and both distributions.
    pub(super) fn shadow(&self, name: &str) -> OpResult {
        self.pool_with_shadow(name, |pool, shadow| {
            let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
            let st = &shadow.stats;
            let samples = n(&st.samples);
            let agreed = n(&st.agreed);
            let backends: Vec<Value> = pool
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    json!({
                        "addr": b.addr.to_string(),
                        "live_picks": st.live_picks.get(i).map_or(0, n),
                        "shadow_picks": st.shadow_picks.get(i).map_or(0, n),
                    })
                })
                .collect();
            let with_latency = n(&st.latency_samples);
            let mean = |sum: &AtomicU64| (with_latency > 0).then(|| n(sum) / with_latency);
            let live = pool.balancer.load();
            let candidate = shadow.balancer.load();
            let (quarantined, last_error) = candidate.quarantine_state();
            json!({
                "pool": pool.name,
                "live": live.plugin().name,
                "shadow": candidate.plugin().name,
                "sample": shadow.sample,
                "samples": samples,
                "agreed": agreed,
                "agreement": (samples > 0).then(|| agreed as f64 / samples as f64),
                "declined": n(&st.declined),
                "failed": n(&st.failed),
                "dropped": n(&st.dropped),
                "quarantined": quarantined,
                "last_error": last_error,
                "backends": backends,
                "latency_us": {
                    "samples": with_latency,
                    "live_mean": mean(&st.live_latency_us),
                    "shadow_mean": mean(&st.shadow_latency_us),
                },
            })
        })
    }

    /// Swaps the live and the shadow balancer of a pool.
    pub(super) fn promote(&self, name: &str) -> OpResult {
        // Not while a plugin or configuration reload is swapping the same slots.
        let _one_at_a_time = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let reply = self.pool_with_shadow(name, |pool, shadow| {
            let live = pool.balancer.load_full();
            let candidate = shadow.balancer.load_full();
            // The live slot first: a request always finds a balancer in it; for the
            // moment between the two stores, both slots hold the candidate.
            pool.balancer.store(std::sync::Arc::clone(&candidate));
            shadow.balancer.store(std::sync::Arc::clone(&live));
            json!({
                "pool": pool.name,
                "live": candidate.plugin().name,
                "shadow": live.plugin().name,
            })
        })?;
        tracing::info!(pool = name, live = %reply["live"], shadow = %reply["shadow"], "shadow balancer promoted; a configuration reload restores the file's choice");
        Ok(reply)
    }
}
