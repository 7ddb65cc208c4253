//! Parsers of what operators send Switchyard: the TOML configuration and admin-socket
//! request lines. Kept apart from the proxy so they can be fuzzed cheaply.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod admin_protocol;
pub mod config;
pub mod request;
