//! Asking DNS for a pool's backends, with hickory-resolver: A and AAAA records of a
//! name at a configured port, or SRV records (target, port, weight, priority).
//!
//! Answers are not cached here: every lookup asks the name servers, and the pool's
//! `interval` is how stale a set may get (nginx's `resolver … valid=`).

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use super::sets::DiscoveredSets;
use crate::config::{BackendConfig, Config, DiscoverySource, DnsSettings};

/// A resolver for `[dns]`.
#[derive(Debug)]
pub struct DnsResolver {
    resolver: TokioResolver,
}

impl DnsResolver {
    /// Asks `settings.servers`, or the system's name servers when there are none.
    pub fn new(settings: &DnsSettings) -> Result<Self, String> {
        let mut builder = if settings.servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| {
                format!("cannot read the system's DNS configuration: {e}; set [dns] servers")
            })?
        } else {
            let servers = settings
                .servers
                .iter()
                .map(|s| {
                    let on = |protocol| {
                        let mut connection = ConnectionConfig::new(protocol);
                        connection.port = s.port();
                        connection
                    };
                    NameServerConfig::new(
                        s.ip(),
                        true,
                        vec![on(ProtocolConfig::Udp), on(ProtocolConfig::Tcp)],
                    )
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options = builder.options_mut();
        options.timeout = settings.timeout;
        options.attempts = 2;
        options.cache_size = 0;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot set up DNS: {e}"))?;
        Ok(DnsResolver { resolver })
    }

    /// The backends `source` names now. No records is an error, like a failed lookup:
    /// a pool is never emptied by one odd answer.
    pub async fn backends(&self, source: &DiscoverySource) -> Result<Vec<BackendConfig>, String> {
        let found = match source {
            DiscoverySource::Address { host, port } => self
                .addresses(host)
                .await?
                .into_iter()
                .map(|ip| BackendConfig {
                    addr: SocketAddr::new(ip, *port),
                    weight: 1,
                    backup: false,
                })
                .collect(),
            DiscoverySource::Srv { name } => self.srv(name).await?,
        };
        if found.is_empty() {
            return Err(format!("{source}: no records"));
        }
        Ok(found)
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let lookup = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| format!("{host}: {e}"))?;
        Ok(lookup.iter().collect())
    }

    /// SRV records: the lowest priority's targets are the primaries, the others
    /// backups (RFC 2782's order of trying); weight 0 counts as 1. A target's
    /// addresses come from the answer's additional section when it has them.
    async fn srv(&self, name: &str) -> Result<Vec<BackendConfig>, String> {
        let lookup = self
            .resolver
            .srv_lookup(name)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
        let mut glue: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for record in lookup.additionals() {
            let ip = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            glue.entry(record.name.to_ascii().to_ascii_lowercase())
                .or_default()
                .push(ip);
        }
        let records: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.clone()),
                _ => None,
            })
            .collect();
        let best = records.iter().map(|s| s.priority).min();
        let mut found = Vec::new();
        for srv in &records {
            let target = srv.target.to_ascii().to_ascii_lowercase();
            let ips = match glue.get(&target) {
                Some(ips) => ips.clone(),
                None => self.addresses(&target).await?,
            };
            for ip in ips {
                found.push(BackendConfig {
                    addr: SocketAddr::new(ip, srv.port),
                    weight: u32::from(srv.weight.max(1)),
                    backup: Some(srv.priority) != best,
                });
            }
        }
        Ok(found)
    }
}

/// Gives every DNS-discovered pool of `config` its backends: the last good answer in
/// `sets`, after looking up — once and blocking — the pools `sets` has no answer for
/// yet (at start, and pools a reload adds). The lookups run on a thread of their own,
/// so this may be called from inside an async runtime.
pub fn fill_from_dns(config: &mut Config, sets: &DiscoveredSets) {
    resolve_missing(config, sets);
    sets.fill(config);
}

fn resolve_missing(config: &Config, sets: &DiscoveredSets) {
    let wanted: Vec<(String, DiscoverySource)> = config
        .pools
        .iter()
        .filter(|p| !sets.knows(&p.name))
        .filter_map(|p| Some((p.name.clone(), p.discovery.as_ref()?.source.clone())))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let settings = config.dns.clone();
    let answers = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(async {
                    let resolver = DnsResolver::new(&settings)?;
                    let mut answers = Vec::new();
                    for (pool, source) in wanted {
                        let answer = resolver.backends(&source).await;
                        answers.push((pool, source, answer));
                    }
                    Ok::<_, String>(answers)
                })
            })
            .join()
            .unwrap_or_else(|_| Err("the DNS thread failed".to_owned()))
    });
    match answers {
        Ok(answers) => {
            for (pool, source, answer) in answers {
                match answer {
                    Ok(set) => {
                        tracing::info!(pool, %source, backends = set.len(), "backends found in DNS");
                        sets.record(&pool, set);
                    }
                    Err(e) => {
                        tracing::error!(pool, error = %e, "no backends from DNS yet; the pool answers 503 until a lookup succeeds");
                        sets.failed(&pool);
                    }
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "DNS lookups failed"),
    }
}
