//! Any text given as a configuration file: parsing and validation must return a
//! config or errors with locations, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use switchyard_parse::config::{self, BUNDLED_NAMES, NoResolver};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errors) = config::parse(text, Path::new("fuzz.toml"), &BUNDLED_NAMES, &NoResolver) {
            // Rendering the errors must not panic either (spans into the text).
            let _ = errors.to_string();
        }
    }
});
