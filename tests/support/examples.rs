//! Building and running the examples from tests: `cargo build --example NAME` once per example
//! per test process, then the binary's path; running with a time limit.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static BUILD: Mutex<()> = Mutex::new(());

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The target directory cargo builds into.
pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("target"))
}

/// Whether every binary the tests run was built before them: `scripts/test` builds all targets
/// of the workspace first and sets `NODEKIT_PREBUILT=1`. A `cargo build -p ...` from a test
/// resolves the features of that package alone, not the workspace's, so it would rebuild crates
/// inside the test's time limit.
pub fn prebuilt() -> bool {
    std::env::var_os("NODEKIT_PREBUILT").is_some_and(|v| v == "1")
}

/// Builds `cargo ARGS` in the repository (serialized within this process), unless the
/// binaries are [`prebuilt`]; panics on failure.
pub fn cargo_build(args: &[&str]) {
    if prebuilt() {
        return;
    }
    let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .arg("build")
        .args(args)
        .current_dir(repo())
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "cargo build {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the example `name` (of the root package) and returns its binary.
pub fn example(name: &str) -> PathBuf {
    cargo_build(&["-p", "nodekit", "--example", name]);
    let bin = target_dir().join("debug/examples").join(name);
    assert!(bin.is_file(), "{} not built", bin.display());
    bin
}

/// Runs `cmd` with stdin closed, killing it after `limit`: its output, or a panic naming it.
pub fn run_with_limit(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t_out = std::thread::spawn(move || {
        let mut b = vec![];
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = vec![];
        let _ = err.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("waiting") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
            panic!("{what} did not exit within {limit:?}; stderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// The pod sandboxes a CRI runtime holds (e.g. a `ContainerdFixture`'s, after an example ran).
pub fn cri_sandboxes(endpoint: &str) -> Vec<node_core::cri::PodSandbox> {
    use node_core::RuntimeBackend;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let c = node_cri::CriClient::connect(node_cri::CriClientConfig {
            endpoint: endpoint.to_string(),
            ..Default::default()
        })
        .await
        .expect("connecting to the CRI runtime");
        c.list_pod_sandbox(None).await.expect("listing sandboxes")
    })
}
