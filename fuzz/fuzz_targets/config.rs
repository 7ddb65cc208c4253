//! Any text given as a configuration file: parsing and validation must return a
//! config or errors with locations, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use switchyard_parse::config::{self, PluginCatalog};

struct Bundled;

impl PluginCatalog for Bundled {
    fn has_plugin(&self, name: &str, _dir: Option<&Path>) -> bool {
        ["round-robin", "least-conn", "latency"].contains(&name)
    }
    fn names(&self, _dir: Option<&Path>) -> Vec<String> {
        vec!["latency".into(), "least-conn".into(), "round-robin".into()]
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errors) = config::parse(text, Path::new("fuzz.toml"), &Bundled) {
            // Rendering the errors must not panic either (spans into the text).
            let _ = errors.to_string();
        }
    }
});
