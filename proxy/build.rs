//! Compiles the bundled plugins (and the test fixtures) to wasm32-wasip2 components, so
//! the binary can embed them and the tests can load real `.wasm` files.
//!
//! The nested cargo uses its own target directory (`<target>/wasm-plugins`): sharing the
//! outer one would deadlock on its lock. The README's "write your own plugin" steps reuse
//! that directory, so the SDK is compiled once.

use std::path::{Path, PathBuf};
use std::process::Command;

const PACKAGES: &[&str] = &[
    "switchyard-plugin-round-robin",
    "switchyard-plugin-least-conn",
    "switchyard-plugin-latency",
    "switchyard-plugin-ring-hash",
    "switchyard-plugin-maglev",
    "trap-always",
    "wrong-world",
    "canary-router",
    "access-filter",
    "misbehave",
    "socket-plugin",
    "unknown-import",
    "v0-1-round-robin",
    "id-hash",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let root = manifest_dir
        .parent()
        .unwrap_or(Path::new(".."))
        .to_path_buf();
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let target_dir = outer_target_dir(&out_dir)
        .map_or_else(|| out_dir.join("wasm-plugins"), |t| t.join("wasm-plugins"));

    for watched in [
        "plugins",
        "plugin-sdk",
        "wit",
        "tests/fixtures",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .env("CARGO_TARGET_DIR", &target_dir);
    for p in PACKAGES {
        cmd.args(["-p", p]);
    }
    // Settings of the outer build (clippy's wrapper, host flags) are not for wasm.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run cargo to build the plugins: {e}")));
    if !status.success() {
        fail(
            "building the bundled plugins for wasm32-wasip2 failed (see above). If the target is missing, run `rustup target add wasm32-wasip2`.",
        );
    }
    let wasm_dir = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=SWITCHYARD_WASM_DIR={}", wasm_dir.display());
    println!(
        "cargo:rustc-env=SWITCHYARD_WASM_TARGET_DIR={}",
        target_dir.display()
    );
}

/// `<target>` from `<target>[/<triple>]/<profile>/build/<pkg>-<hash>/out`.
fn outer_target_dir(out_dir: &Path) -> Option<PathBuf> {
    let build = out_dir
        .ancestors()
        .find(|a| a.file_name().is_some_and(|n| n == "build"))?;
    let profile_dir = build.parent()?;
    let parent = profile_dir.parent()?;
    // With --target, the profile directory sits under a target-triple directory.
    if parent.join("CACHEDIR.TAG").exists() || parent.parent().is_none() {
        Some(parent.to_path_buf())
    } else if parent
        .parent()
        .is_some_and(|p| p.join("CACHEDIR.TAG").exists())
    {
        parent.parent().map(Path::to_path_buf)
    } else {
        Some(parent.to_path_buf())
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}
