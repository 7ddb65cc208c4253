//! The `switchyard` command.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use switchyard::config::{self, Config, SystemResolver};
use switchyard::ctl_command::CtlCommand;
use switchyard::logging::{self, Logging};
use switchyard::plugin::PluginEngine;
use switchyard::plugin::registry::FsCatalog;
use switchyard::server;

/// jemalloc, with its background thread on (see `main`), gives memory freed after a
/// connection flood back to the system within seconds, even while the worker threads
/// sit idle; glibc's malloc kept 300 MiB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A programmable reverse proxy: balancing decisions are made by WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration and load every plugin it names, like `nginx -t`.
    /// Prints every problem with its file, line and column; exits 1 if there are any.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start three demo backends on loopback and the proxy in front of them, with a
    /// pool for each bundled balancer.
    Demo {
        /// Address the proxy listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Talk to a running proxy through its admin socket.
    Ctl {
        /// Admin socket; default: [admin] socket of --config, else the default path.
        #[arg(long, global = true)]
        socket: Option<PathBuf>,
        /// Configuration file whose [admin] socket to use.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Print the raw JSON reply.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// Work with plugin files.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Validate a plugin offline: compile it, check its world and imports, run `init`
    /// with the given settings and one `select`, and print what was found.
    Check {
        /// The component, e.g. target/wasm32-wasip2/release/my_balancer.wasm.
        file: PathBuf,
        /// A balancer_config entry, KEY=VALUE; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Run a balancer plugin in front of simulated backends, in virtual time: shares,
    /// in-flight, latency percentiles and failures per backend, optionally beside
    /// another plugin on the same arrivals. Same seed, same output.
    Simulate(switchyard::simulate::SimulateArgs),
}

/// Installs the logger (see [`logging`]); says why and gives `None` if it cannot.
fn init_logging(
    format: logging::Format,
    access_file: Option<std::fs::File>,
) -> Option<Arc<Logging>> {
    logging::init(format, access_file)
        .map(Arc::new)
        .map_err(|e| eprintln!("error: {e}"))
        .ok()
}

fn main() -> ExitCode {
    // Dirty pages are purged by jemalloc's own thread after their decay time (10 s),
    // rather than only when a thread that holds them allocates again.
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("warning: jemalloc background thread not started: {e}");
    }
    let cli = Cli::parse();
    // `run` picks the log format and file from its configuration file.
    if let Command::Run { config } = &cli.command {
        return run(config);
    }
    let Some(logging) = init_logging(logging::Format::Text, None) else {
        return ExitCode::FAILURE;
    };
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Demo { listen } => demo(listen, logging),
        Command::Ctl {
            socket,
            config,
            json,
            command,
        } => ctl(socket, config, json, &command.words()),
        Command::Plugin {
            command: PluginCommand::Check { file, settings },
        } => plugin_check(&file, &settings),
        Command::Plugin {
            command: PluginCommand::Simulate(args),
        } => match switchyard::simulate::run(&args) {
            Ok((report, speed)) => {
                print!("{report}");
                eprintln!("{speed}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    let config = config::load(path, &FsCatalog, &SystemResolver).map_err(|errors| {
        eprintln!("{errors}");
        eprintln!(
            "{}: {} problem(s); nothing was started",
            path.display(),
            errors.0.len()
        );
        ExitCode::FAILURE
    })?;
    for warning in &config.warnings {
        eprintln!("{warning}");
    }
    Ok(config)
}

fn run(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let access_file = match logging::open_configured(&config.proxy) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(logging) = init_logging(config.proxy.access_log.into(), access_file) else {
        return ExitCode::FAILURE;
    };
    match server::run(config, logging, None) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Err(e) = logging::open_configured(&config.proxy) {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let engine = match PluginEngine::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot start the plugin engine: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Everything `run` loads before it listens: plugins, CA files, certificates.
    let telemetry = match switchyard::telemetry::Telemetry::new() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot register the metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let loaded = switchyard::runtime::build_runtime(&config, &engine, &telemetry, None)
        .map_err(server::StartError::from)
        .and_then(|runtime| server::load_certificates(&config).map(|_| runtime));
    match loaded {
        Ok(runtime) => {
            println!("{}: ok", path.display());
            for pool in &runtime.pools {
                let balancer = pool.balancer.load();
                let plugin = balancer.plugin();
                println!(
                    "  pool {:?}: balancer {} ({}), {} backend(s)",
                    pool.name,
                    plugin.name,
                    plugin.source,
                    pool.backends.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(listen: SocketAddr, logging: Arc<Logging>) -> ExitCode {
    let delays = [
        ("backend-a", 0),
        ("backend-b", 0),
        ("backend-c (40 ms)", 40),
    ];
    let (tx, rx) = std::sync::mpsc::channel();
    // The demo backends run on their own runtime; Pingora builds its own for the proxy.
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        runtime.block_on(async move {
            let mut addrs = Vec::new();
            for (name, ms) in delays {
                match switchyard::demo_backend::start(
                    name,
                    ([127, 0, 0, 1], 0).into(),
                    Duration::from_millis(ms),
                )
                .await
                {
                    Ok((addr, _control)) => addrs.push(addr),
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
            let _ = tx.send(Ok(addrs));
            std::future::pending::<()>().await;
        });
    });
    let addrs = match rx.recv() {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => {
            eprintln!("error: cannot start the demo backends: {e}");
            return ExitCode::FAILURE;
        }
        Err(_) => {
            eprintln!("error: the demo backends did not start");
            return ExitCode::FAILURE;
        }
    };
    let backends = |weights: [u32; 3]| {
        addrs
            .iter()
            .zip(weights)
            .map(|(a, w)| format!("{{ addr = \"{a}\", weight = {w} }}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let dir = std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()));
    let socket = dir.join("admin.sock");
    // Any free port: a fixed one could be taken on the machine.
    let metrics = match std::net::TcpListener::bind((listen.ip(), 0)).and_then(|l| l.local_addr()) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!(
                "error: no free port for the demo's metrics on {}: {e}",
                listen.ip()
            );
            return ExitCode::FAILURE;
        }
    };
    let text = format!(
        r#"# Written by `switchyard demo`.
[proxy]
listen = ["{listen}"]
threads = 2

[admin]
socket = "{socket}"

[metrics]
listen = "{metrics}"

[[pools]]
name = "round-robin"
balancer = "round-robin"
backends = [{rr}]

[[pools]]
name = "least-conn"
balancer = "least-conn"
backends = [{even}]

[[pools]]
name = "latency"
balancer = "latency"
balancer_config = {{ decay = "5s" }}
backends = [{even}]

[[pools]]
name = "ring-hash"
balancer = "ring-hash"
balancer_config = {{ key = "header:x-user" }}
backends = [{even}]

[[pools]]
name = "maglev"
balancer = "maglev"
balancer_config = {{ key = "query:user", bounded_load = 1.25 }}
backends = [{even}]

[[routes]]
path_prefix = "/"
pool = "round-robin"

[[routes]]
path_prefix = "/least-conn"
pool = "least-conn"

[[routes]]
path_prefix = "/latency"
pool = "latency"

[[routes]]
path_prefix = "/ring-hash"
pool = "ring-hash"

[[routes]]
path_prefix = "/maglev"
pool = "maglev"
"#,
        rr = backends([2, 1, 1]),
        even = backends([1, 1, 1]),
        socket = socket.display(),
    );
    let path = dir.join("switchyard.toml");
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, text)) {
        eprintln!(
            "error: cannot write the demo configuration to {}: {e}",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    let config = match load(&path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!(
        "Switchyard demo: 3 backends on loopback behind http://{listen} (config: {})",
        path.display()
    );
    println!("  curl -s http://{listen}/             # round-robin, weights 2:1:1");
    println!("  curl -s http://{listen}/least-conn   # fewest requests in flight");
    println!("  curl -s http://{listen}/latency      # peak-EWMA: avoids the 40 ms backend");
    println!(
        "  curl -s -H 'x-user: alice' http://{listen}/ring-hash   # consistent hashing: alice keeps one backend"
    );
    println!(
        "  curl -s 'http://{listen}/maglev?user=bob'             # Maglev, with bounded loads"
    );
    println!("  for i in $(seq 8); do curl -s http://{listen}/; done");
    println!("Operate it (admin socket {}):", socket.display());
    println!(
        "  switchyard ctl --socket {} backends round-robin   # or: cargo run -q -p switchyard -- ctl …",
        socket.display()
    );
    println!(
        "  switchyard ctl --socket {} drain round-robin {}",
        socket.display(),
        addrs.first().map_or_else(String::new, ToString::to_string)
    );
    println!("  curl -s http://{metrics}/metrics | grep switchyard_requests_total");
    println!("  curl -s http://{metrics}/ready");
    println!("Ctrl-C stops it and removes {}.", dir.display());
    match server::run(config, logging, Some(dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn ctl(
    socket: Option<PathBuf>,
    config: Option<PathBuf>,
    raw_json: bool,
    words: &[String],
) -> ExitCode {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let request = match switchyard::admin::words_to_request(&words) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let socket = match (socket, config) {
        (Some(s), _) => s,
        (None, Some(c)) => match load(&c) {
            Ok(c) => c.admin.socket,
            Err(code) => return code,
        },
        (None, None) => config::default_admin_socket(),
    };
    let reply = match switchyard::admin::call(&socket, &request) {
        Ok(r) => r,
        Err(e) => {
            eprintln!(
                "error: cannot talk to the proxy at {}: {e} (is it running? is [admin] socket the same?)",
                socket.display()
            );
            return ExitCode::FAILURE;
        }
    };
    if raw_json {
        println!("{reply}");
    } else {
        print!("{}", switchyard::ctl_format::human(&request, &reply));
    }
    let rejected = reply["rejected"].as_array().is_some_and(|r| !r.is_empty());
    let restart_needed = reply["restart_needed"]
        .as_array()
        .is_some_and(|r| !r.is_empty());
    if reply["ok"].as_bool() != Some(true) || rejected || restart_needed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn plugin_check(file: &Path, settings: &[String]) -> ExitCode {
    let mut balancer_config = Vec::new();
    for s in settings {
        match s.split_once('=') {
            Some((k, v)) => balancer_config.push((k.to_owned(), v.to_owned())),
            None => {
                eprintln!("error: --set {s:?}: write KEY=VALUE");
                return ExitCode::from(2);
            }
        }
    }
    match switchyard::plugin::check_file(file, balancer_config) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}
