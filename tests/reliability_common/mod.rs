//! Shared by the root reliability tests: building the binaries a test runs as child processes.

use std::path::PathBuf;

#[path = "../support/examples.rs"]
mod examples;

/// Build each `cargo build` argument list (from the workspace root; nothing when the binaries
/// are prebuilt, see `examples::prebuilt`); the target directory.
pub fn cargo_build(builds: &[&[&str]]) -> PathBuf {
    for args in builds {
        examples::cargo_build(args);
    }
    examples::target_dir()
}

/// `cargo build` arguments of the native runtime's init binary.
pub const INIT: &[&str] = &["-p", "node-cri", "--bin", "nodekit-init"];
