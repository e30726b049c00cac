//! The reduced pod-churn load run, as root: the `load_pods` example (native runtime) creates and
//! deletes 10 pods twice, 5 at a time; it must report no failure and nothing left behind (the
//! example checks with `node_test_support::leaks` and exits non-zero otherwise). The full run
//! (100 pods) is the example itself, see RELIABILITY.md.

use std::path::PathBuf;
use std::process::Command;

use node_test_support::{require_path, require_root};

#[test]
fn ten_pods_churn_without_failure_or_leak() {
    let test = "ten_pods_churn_without_failure_or_leak";
    if !require_root(test) || !require_path(test, "/bin/busybox") {
        return;
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let builds: [&[&str]; 2] = [
        &["build", "-p", "nodekit", "--example", "load_pods"],
        &["build", "-p", "node-cri", "--bin", "nodekit-init"],
    ];
    for args in builds {
        let st = Command::new(&cargo)
            .args(args)
            .current_dir(&repo)
            .status()
            .expect("running cargo");
        assert!(st.success(), "cargo {args:?} failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo.join("target"));
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
