//! Shared by the root reliability tests: building the binaries a test runs as child processes.

use std::path::PathBuf;
use std::process::Command;

/// Build each `cargo build` argument list (from the workspace root); the target directory.
pub fn cargo_build(builds: &[&[&str]]) -> PathBuf {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for args in builds {
        let st = Command::new(&cargo)
            .arg("build")
            .args(*args)
            .current_dir(&repo)
            .status()
            .expect("running cargo");
        assert!(st.success(), "cargo build {args:?} failed");
    }
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo.join("target"))
}

/// `cargo build` arguments of the native runtime's init binary.
pub const INIT: &[&str] = &["-p", "node-cri", "--bin", "nodekit-init"];
