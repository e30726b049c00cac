//! Test support for nodekit, in the spirit of `tower-test`: fakes of every node-core trait, a
//! scripted pod source, a runtime wrapper with hooks, network-namespace fixtures, a tiny OCI
//! test image built from busybox-static, a docker-registry on 127.0.0.1 to serve it, a private
//! containerd for CRI tests, a leak checker that inventories what a node leaves behind, and a
//! fake Kubernetes API server ([`FakeApiServer`]) with a `kube::Client` pointed at it.
//!
//! Tests that need root or a kernel feature call [`require_root`] (or [`require_command`]):
//! locally they skip with a printed reason; under `CI=true` they fail loudly instead.

pub mod apiserver;
pub mod containerd;
pub mod fakes;
pub mod hooked;
pub mod image;
pub mod kubectl;
pub mod leaks;
pub mod netns;
pub mod proxy_state;
pub mod registry;
pub mod sweep;
pub mod topology;

pub use apiserver::FakeApiServer;
pub use containerd::ContainerdFixture;
pub use fakes::{FakeCni, FakeRouter, FakeRuntime, FakeStatusSink, ScriptedPodSource};
pub use hooked::HookedRuntime;
pub use image::{Blob, TestImage};
pub use kubectl::StandInApiServer;
pub use leaks::{Inventory, LeakKind, LeakScope, Leaks};
pub use netns::{NetnsFixture, connect_veth};
pub use registry::LocalRegistry;
pub use topology::{ServiceTopology, tcp_request, tcp_spread, udp_request};

/// Whether tests run in CI (`CI=true`), where a missing prerequisite is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Whether the test may go on as root. Not root: under CI this panics; locally it prints why the
/// test is skipped and returns `false`.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    skip_or_fail(test, "needs root")
}

/// Whether `command` is on the PATH. Missing: under CI this panics; locally it prints why the
/// test is skipped and returns `false`.
pub fn require_command(test: &str, command: &str) -> bool {
    if which(command).is_some() {
        return true;
    }
    skip_or_fail(test, &format!("needs the command {command:?}"))
}

/// Whether `path` exists. Missing: under CI this panics; locally it prints why the test is
/// skipped and returns `false`.
pub fn require_path(test: &str, path: impl AsRef<std::path::Path>) -> bool {
    let path = path.as_ref();
    if path.exists() {
        return true;
    }
    skip_or_fail(test, &format!("needs {}", path.display()))
}

fn skip_or_fail(test: &str, why: &str) -> bool {
    if in_ci() {
        panic!("{test} {why}, and CI=true: failing instead of skipping");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// The full path of `command` on the PATH.
pub fn which(command: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(command))
        .find(|p| p.is_file())
}

/// Polls `f` every 50 ms of tokio time (paused-clock tests advance it) until it gives a value;
/// panics naming `what` after `limit`.
pub async fn until<T>(
    what: &str,
    limit: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// [`until`] for an asynchronous check: awaits `f()` every 50 ms of tokio time until it gives a
/// value; panics naming `what` after `limit`.
pub async fn until_async<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: std::time::Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
