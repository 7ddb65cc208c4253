//! `switchyard plugin simulate`: a balancer plugin in front of simulated backends, in
//! virtual time, before it takes real traffic.
//!
//! - [`scenario`]: the backends' behaviour, the keys, a replayed access log.
//! - [`engine`]: the discrete-event loop around the real [`Pool`].
//! - [`report`]: per-backend and overall figures, as text, JSON and SVG.
//!
//! The plugin runs through the host's own code path — `Pool::choose` fills the same
//! backend table, keeps the same in-flight counts, peak-EWMA latency and failure
//! streaks, falls back and quarantines the same way — with the plugin's clock and
//! random numbers virtual ([`crate::plugin::virtual_world`]). Same seed, same output.

pub mod engine;
pub mod report;
pub mod scenario;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::config::{NoResolver, PluginLimits};
use crate::plugin::virtual_world::VirtualWorld;
use crate::plugin::{PluginEngine, PluginError, PluginRegistry, PluginSource, PoolBalancer};
use crate::pool::Pool;
use crate::telemetry::Telemetry;
use engine::{Arrivals, Simulation};
use report::{Recorder, Report};
use scenario::{BackendModel, Keys, ScenarioError};

/// The wall-time budget of a plugin call in a simulation.
pub const SIMULATED_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// `switchyard plugin simulate` arguments.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The balancer: a .wasm file, or a bundled plugin's name (round-robin, least-conn,
    /// latency, ring-hash, maglev).
    pub plugin: String,
    /// A balancer_config entry, KEY=VALUE; repeatable.
    #[arg(long = "config", value_name = "KEY=VALUE")]
    pub config: Vec<String>,
    /// The backends, comma-separated, each NAME with :-separated attributes:
    /// latency=5ms, latency=5ms±2ms, p50=5ms:p99=50ms (log-normal), fail=1%,
    /// capacity=20, weight=2, down@10s-20s, slow@30s=200ms. Example:
    /// 'a:latency=5ms,b:latency=5ms±2ms,c:latency=80ms:fail=1%:capacity=20'.
    #[arg(long)]
    pub backends: String,
    /// Requests to simulate (closed loop: each client sends its next request when
    /// the last is answered).
    #[arg(long, default_value_t = 100_000)]
    pub requests: u64,
    /// Clients sending at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u32,
    /// Replay the arrivals, clients, hosts and paths of an access log written with
    /// access_log = "json", instead of --requests and --concurrency.
    #[arg(long, conflicts_with_all = ["requests", "concurrency"])]
    pub trace: Option<PathBuf>,
    /// Keys the requests carry, drawn uniformly: header:NAME=COUNT, cookie:NAME=COUNT,
    /// query:NAME=COUNT, path=COUNT or client-ip=COUNT.
    #[arg(long)]
    pub keys: Option<String>,
    /// Another balancer run on the same arrivals with the same seed, side by side.
    #[arg(long)]
    pub compare: Option<String>,
    /// A balancer_config entry of the --compare balancer; repeatable.
    #[arg(long = "compare-config", value_name = "KEY=VALUE")]
    pub compare_config: Vec<String>,
    /// Seed of every random draw: latencies, failures, keys, the plugin's own.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the reports as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write a chart: each backend's share over time, and the latency CDFs.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
}

/// Why a simulation could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("{0}")]
    Plugin(#[from] PluginError),
    #[error("--config {0:?}: write KEY=VALUE")]
    Setting(String),
    #[error("{plugin}: no such file, and no bundled plugin by that name (bundled: {bundled})")]
    NoPlugin { plugin: String, bundled: String },
    #[error("cannot start the plugin engine: {0}")]
    Engine(String),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn settings(raw: &[String]) -> Result<Vec<(String, String)>, SimulateError> {
    raw.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| SimulateError::Setting(s.clone()))
        })
        .collect()
}

/// The pool the plugin balances: one backend per model, named by its address if the
/// name is one (so identities match a real pool), else at 127.0.1.N:80.
fn pool_of(
    models: &[BackendModel],
    balancer: PoolBalancer,
    telemetry: &Telemetry,
) -> Result<Pool, SimulateError> {
    let backends: Vec<String> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let addr = m.name.parse::<std::net::SocketAddr>().map_or_else(
                |_| format!("127.0.{}.{}:80", 1 + i / 250, 1 + i % 250),
                |a| a.to_string(),
            );
            format!("{{ addr = \"{addr}\", weight = {} }}", m.weight)
        })
        .collect();
    let text = format!(
        "[proxy]\nlisten = [\"127.0.0.1:1\"]\n\n[[pools]]\nname = \"simulated\"\nbalancer = \"round-robin\"\nbackends = [{}]\n",
        backends.join(", ")
    );
    let config = crate::config::parse(
        &text,
        Path::new("simulated.toml"),
        &crate::config::BUNDLED_NAMES,
        &NoResolver,
    )
    .map_err(|e| SimulateError::Engine(e.to_string()))?;
    let pool_config = config
        .pools
        .first()
        .ok_or_else(|| SimulateError::Engine("no pool".into()))?;
    Ok(Pool::new(pool_config, balancer, telemetry))
}

/// Runs `plugin` (with `config`) over the scenario.
fn run_one(
    plugin: &str,
    config: Vec<(String, String)>,
    models: &[BackendModel],
    arrivals: &Arrivals,
    keys: Option<&Keys>,
    seed: u64,
) -> Result<Report, SimulateError> {
    let world = Arc::new(VirtualWorld::new(seed));
    let engine = PluginEngine::new()
        .map_err(|e| SimulateError::Engine(e.to_string()))?
        .in_virtual_world(Arc::clone(&world));
    let registry = PluginRegistry::new(engine, None, None)
        .map_err(|e| SimulateError::Engine(e.to_string()))?;
    let path = Path::new(plugin);
    let (name, loaded) = if path.is_file() {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin")
            .to_owned();
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            name: name.clone(),
            path: path.to_owned(),
            source,
        })?;
        let loaded = registry.load_bytes(
            &name,
            PluginSource::File(path.to_owned()),
            &bytes,
            crate::plugin::WorldKind::Balancer,
        )?;
        (name, loaded)
    } else {
        let bytes =
            crate::plugin::bundled::find(plugin).ok_or_else(|| SimulateError::NoPlugin {
                plugin: plugin.to_owned(),
                bundled: crate::plugin::bundled::names()
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let loaded = registry.load_bytes(
            plugin,
            PluginSource::Bundled,
            bytes,
            crate::plugin::WorldKind::Balancer,
        )?;
        (plugin.to_owned(), loaded)
    };
    // Deadlines are wall time, which the simulation does not model: a generous one
    // keeps a busy machine from turning a decision into a fallback and so changing
    // the result, while a plugin that loops is still stopped and quarantined.
    let limits = PluginLimits {
        call_timeout: SIMULATED_CALL_TIMEOUT,
        ..PluginLimits::default()
    };
    let balancer = PoolBalancer::new(loaded, config, limits)?;
    let telemetry = Telemetry::new().map_err(|e| SimulateError::Engine(e.to_string()))?;
    let pool = pool_of(models, balancer, &telemetry)?;
    let mut recorder = Recorder::new(models.iter().map(|m| m.name.clone()).collect());
    let started = Instant::now();
    Simulation::new(&pool, models, keys, world, seed).run(arrivals, &mut recorder);
    Ok(recorder.report(&name, started.elapsed()))
}

/// Runs the simulation `args` describe. Returns what to print on stdout (the same for
/// the same seed) and a line on how fast it ran (for stderr).
pub fn run(args: &SimulateArgs) -> Result<(String, String), SimulateError> {
    let models = scenario::parse_backends(&args.backends)?;
    let keys = args.keys.as_deref().map(Keys::parse).transpose()?;
    let arrivals = match &args.trace {
        Some(path) => Arrivals::Trace(Arc::new(scenario::read_trace(path)?)),
        None => Arrivals::Closed {
            requests: args.requests,
            concurrency: args.concurrency.max(1),
        },
    };
    let mut reports = vec![run_one(
        &args.plugin,
        settings(&args.config)?,
        &models,
        &arrivals,
        keys.as_ref(),
        args.seed,
    )?];
    if let Some(other) = &args.compare {
        reports.push(run_one(
            other,
            settings(&args.compare_config)?,
            &models,
            &arrivals,
            keys.as_ref(),
            args.seed,
        )?);
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, report::svg(&reports)).map_err(|source| SimulateError::Write {
            path: path.clone(),
            source,
        })?;
    }
    let speed = report::speed_line(&reports);
    if args.json {
        let runs: Vec<_> = reports.iter().map(Report::to_json).collect();
        let out = serde_json::json!({ "seed": args.seed, "runs": runs });
        return Ok((format!("{out}\n"), speed));
    }
    Ok((
        format!("{}\nseed {}\n", report::render(&reports), args.seed),
        speed,
    ))
}
