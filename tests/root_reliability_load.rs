//! The reduced load runs, as root, over the load examples (the full runs are the examples
//! themselves, see RELIABILITY.md): `load_pods` (native runtime) creates and deletes 10 pods
//! twice, 5 at a time, and must report no failure and nothing left behind (it checks with
//! `node_test_support::leaks`); `load_proxy` syncs 1000 services under endpoint churn for 5 s in
//! throwaway namespaces while a client asks a stable Service, and no request may fail.

use std::path::PathBuf;
use std::process::Command;

use node_test_support::{require_command, require_path, require_root};

mod reliability_common;

/// Build `example` (and the init binary); the target directory.
fn build(example: &str) -> PathBuf {
    reliability_common::cargo_build(&[
        &["-p", "nodekit", "--example", example],
        reliability_common::INIT,
    ])
}

#[test]
fn ten_pods_churn_without_failure_or_leak() {
    let test = "ten_pods_churn_without_failure_or_leak";
    if !require_root(test) || !require_path(test, "/bin/busybox") {
        return;
    }
    let target = build("load_pods");
    let out = Command::new(target.join("debug/examples/load_pods"))
        .args(["--pods", "10", "--concurrency", "5", "--rounds", "2"])
        .args([
            "--init-binary",
            target.join("debug/nodekit-init").to_str().unwrap(),
        ])
        .output()
        .expect("running load_pods");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "load_pods failed: {stdout}\n{stderr}");
    assert!(
        stdout.contains("pods: 10 x 2 rounds") && stdout.contains("failures 0; leaked 0"),
        "unexpected report: {stdout}"
    );
}

#[test]
fn proxy_syncs_under_churn_without_dropping_stable_traffic() {
    let test = "proxy_syncs_under_churn_without_dropping_stable_traffic";
    if !require_root(test) || !require_command(test, "nft") {
        return;
    }
    let target = build("load_proxy");
    let out = Command::new(target.join("debug/examples/load_proxy"))
        .args(["--services", "1000", "--seconds", "5", "--churn", "20"])
        .output()
        .expect("running load_proxy");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "load_proxy failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sync errors 0") && stdout.contains(" 0 failed"),
        "unexpected report: {stdout}"
    );
}
