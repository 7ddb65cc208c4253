//! The `switchyard ctl` subcommands, and the admin-protocol words each one sends.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Version, uptime, listeners, connections, plugins and pools.
    Status,
    /// Each plugin: world, source, SHA-256, compiled-code cache, calls, failures by kind.
    Plugins,
    /// Backends of every pool, or of POOL: address, weight, state, in-flight, latency.
    Backends {
        /// Only this pool.
        pool: Option<String>,
    },
    /// Re-read changed plugin files and swap them in atomically: every plugin, or PLUGIN.
    /// A file that does not compile, link, init and answer keeps the old version.
    Reload {
        /// Only this plugin.
        plugin: Option<String>,
    },
    /// Stop sending new requests to a backend; requests in flight finish.
    Drain {
        /// The pool.
        pool: String,
        /// The backend's address, as `ctl backends` shows it.
        addr: String,
    },
    /// Send new requests to a drained backend again.
    Undrain {
        /// The pool.
        pool: String,
        /// The backend's address.
        addr: String,
    },
    /// Change a backend's weight at run time; configuration reloads keep it.
    Weight {
        /// The pool.
        pool: String,
        /// The backend's address.
        addr: String,
        /// The new weight, 1 to 1000000.
        weight: u32,
    },
    /// A pool's shadow balancer: how often it agreed with the live one, both
    /// balancers' picks per backend, and the host-measured latency of the backends
    /// each chose.
    Shadow {
        /// The pool.
        pool: String,
    },
    /// Make a pool's shadow balancer the live one, and the live one its shadow (promote
    /// again to undo). A configuration reload restores the file's choice.
    Promote {
        /// The pool.
        pool: String,
    },
    /// Response caches: entries, bytes, hit ratio, evictions, results; with NAME, its
    /// keys too.
    Cache {
        /// Only this cache.
        name: Option<String>,
    },
    /// Remove entries from a cache, in memory and on disk: one key as `ctl cache NAME`
    /// shows it (`blog.local/articles/3`), or every key starting with a prefix that
    /// ends in `*` (`'blog.local/articles/*'`).
    Purge {
        /// The cache.
        name: String,
        /// The key, or a prefix ending in `*`.
        key: String,
    },
    /// The configuration file.
    Config {
        #[command(subcommand)]
        command: CtlConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum CtlConfigCommand {
    /// Re-read the file and apply what can change while running; what needs a restart
    /// is named, and makes the exit status 1. An invalid file changes nothing.
    Reload,
}

impl CtlCommand {
    /// The words of the admin protocol for this command.
    pub fn words(&self) -> Vec<String> {
        let words = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        match self {
            CtlCommand::Status => words(&["status"]),
            CtlCommand::Plugins => words(&["plugins"]),
            CtlCommand::Backends { pool } => {
                let mut w = words(&["backends"]);
                w.extend(pool.clone());
                w
            }
            CtlCommand::Reload { plugin } => {
                let mut w = words(&["reload"]);
                w.extend(plugin.clone());
                w
            }
            CtlCommand::Drain { pool, addr } => words(&["drain", pool, addr]),
            CtlCommand::Undrain { pool, addr } => words(&["undrain", pool, addr]),
            CtlCommand::Weight { pool, addr, weight } => {
                words(&["weight", pool, addr, &weight.to_string()])
            }
            CtlCommand::Shadow { pool } => words(&["shadow", pool]),
            CtlCommand::Promote { pool } => words(&["promote", pool]),
            CtlCommand::Cache { name } => {
                let mut w = words(&["cache"]);
                w.extend(name.clone());
                w
            }
            CtlCommand::Purge { name, key } => words(&["purge", name, key]),
            CtlCommand::Config {
                command: CtlConfigCommand::Reload,
            } => words(&["config", "reload"]),
        }
    }
}
