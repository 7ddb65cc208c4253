//! Switchyard: a reverse proxy on Pingora whose balancing decisions are made by
//! sandboxed WebAssembly plugins.
//!
//! See `docs/architecture.md` for how a request flows through these modules.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod admin;
pub mod cache;
pub use switchyard_parse::config;
pub mod connections;
pub mod control;
pub mod ctl_command;
pub mod ctl_format;
pub mod demo_backend;
pub mod discovery;
pub mod edge;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod plugin;
pub mod pool;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod sd_notify;
pub mod server;
pub mod shutdown;
pub mod simulate;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
