//! DNS discovery (`backends_from`): pools whose backends are the records of a name,
//! looked up again on the pool's interval. A changed answer rebuilds the pool, keeping
//! what is known of the backends that stay; new backends of a health-checked pool join
//! once their checks pass; vanished ones get no new requests, while those in flight
//! finish on the pool they started with. A failed lookup keeps the last good set.

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::DnsSettings;
use crate::control::Control;

pub mod resolve;
pub mod sets;

use resolve::DnsResolver;

/// How often the service looks for a lookup that has come due.
const TICK: Duration = Duration::from_millis(50);

/// The background job that looks every discovered pool up on its interval.
pub struct DnsDiscovery {
    control: Arc<Control>,
}

impl DnsDiscovery {
    /// Lookups on behalf of `control`, which applies what they find.
    pub fn new(control: Arc<Control>) -> Self {
        DnsDiscovery { control }
    }
}

impl std::fmt::Debug for DnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsDiscovery").finish_non_exhaustive()
    }
}

#[async_trait]
impl BackgroundService for DnsDiscovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut due: HashMap<String, Instant> = HashMap::new();
        // Rebuilt when `[dns]` changes by a configuration reload.
        let mut resolver: Option<(DnsSettings, DnsResolver)> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
            let config = self.control.config();
            let now = Instant::now();
            for pool in &config.pools {
                let Some(discovery) = &pool.discovery else {
                    continue;
                };
                // The first lookup was made at start (or by the reload that added it).
                let next = due
                    .entry(pool.name.clone())
                    .or_insert(now + discovery.interval);
                if *next > now {
                    continue;
                }
                *next = now + discovery.interval;
                if resolver.as_ref().is_none_or(|(s, _)| *s != config.dns) {
                    match DnsResolver::new(&config.dns) {
                        Ok(r) => resolver = Some((config.dns.clone(), r)),
                        Err(e) => {
                            tracing::error!(error = %e, "DNS discovery cannot start");
                            continue;
                        }
                    }
                }
                let Some((_, r)) = &resolver else { continue };
                let answer = r.backends(&discovery.source).await;
                let control = Arc::clone(&self.control);
                let name = pool.name.clone();
                // Rebuilding the runtime compiles nothing new, but it is blocking work.
                let _ =
                    tokio::task::spawn_blocking(move || control.apply_discovered(&name, answer))
                        .await;
            }
        }
    }
}
