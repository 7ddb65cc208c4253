//! The balancers built into the binary, so it works with an empty plugins directory.
//! `build.rs` compiles them from `plugins/` to wasm32-wasip2.

/// Name and component bytes of each bundled plugin.
pub const BUNDLED: &[(&str, &[u8])] = &[
    (
        "round-robin",
        include_bytes!(concat!(
            env!("SWITCHYARD_WASM_DIR"),
            "/switchyard_plugin_round_robin.wasm"
        )),
    ),
    (
        "least-conn",
        include_bytes!(concat!(
            env!("SWITCHYARD_WASM_DIR"),
            "/switchyard_plugin_least_conn.wasm"
        )),
    ),
    (
        "latency",
        include_bytes!(concat!(
            env!("SWITCHYARD_WASM_DIR"),
            "/switchyard_plugin_latency.wasm"
        )),
    ),
    (
        "ring-hash",
        include_bytes!(concat!(
            env!("SWITCHYARD_WASM_DIR"),
            "/switchyard_plugin_ring_hash.wasm"
        )),
    ),
    (
        "maglev",
        include_bytes!(concat!(
            env!("SWITCHYARD_WASM_DIR"),
            "/switchyard_plugin_maglev.wasm"
        )),
    ),
];

/// The bundled plugin called `name`.
pub fn find(name: &str) -> Option<&'static [u8]> {
    BUNDLED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// Names of the bundled plugins.
pub fn names() -> impl Iterator<Item = &'static str> {
    BUNDLED.iter().map(|(n, _)| *n)
}
