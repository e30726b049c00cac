//! Pod start and pod stop+remove, the native runtime against containerd through `CriClient`,
//! in the same run and on the same workload (`node_cri::client::timing::measure_pod_start`: a
//! sandbox plus one busybox container running `sleep`, image present, until the container
//! reports running; then `StopPodSandbox` + `RemovePodSandbox`, timed here).
//!
//! - native: `NativeRuntime` with an `ImageStore` (the busybox test image imported from an OCI
//!   layout) and the real `node_cni::BridgePlugin`, all inside a `NetnsFixture` (the bridge and
//!   the pods' veths never touch the host's namespace).
//! - containerd: Debian's containerd 1.6 + runc + the reference CNI bridge plugin, private to the
//!   run (`ContainerdFixture`), driven through `CriClient`.
//!
//! Needs root, overlayfs, cgroups, busybox-static, containerd, runc, docker-registry and the CNI
//! plugins. Build the init next to the example first:
//!
//! ```text
//! cargo build -p node-cri --bin nodekit-init && cargo build --example pod_start_compare
//! sudo target/debug/examples/pod_start_compare [runs] [--native-only]
//! ```
//!
//! (`--release` on both builds for release figures.) Prints a markdown table.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use node_cni::{BridgeConfig, BridgePlugin};
use node_core::{ImageBackend, RuntimeBackend, cri};
use node_cri::client::timing::{PodStartSpec, PodStartTimings, measure_pod_start};
use node_cri::native::image::{ImageStore, ImageStoreConfig};
use node_cri::native::runtime::{NativeConfig, NativeRuntime};
use node_cri::{CriClient, CriClientConfig};
use node_test_support::hooked::Phase;
use node_test_support::{ContainerdFixture, HookedRuntime, NetnsFixture, TestImage};

/// Warm-up runs, not counted.
const WARMUPS: usize = 2;

/// The figures of one runtime.
struct Figures {
    start: PodStartTimings,
    /// `StopPodSandbox` + `RemovePodSandbox` of each counted pod.
    stop_remove: Vec<Duration>,
}

/// Warm up, then measure `runs` pods of `spec` on `runtime`.
async fn measure(
    runtime: Arc<dyn RuntimeBackend>,
    spec: &PodStartSpec,
    runs: usize,
) -> Result<Figures> {
    let mut warm = spec.clone();
    warm.runs = WARMUPS;
    if let Some(m) = warm.sandbox.metadata.as_mut() {
        m.name = format!("{}-warm", m.name);
    }
    measure_pod_start(runtime.as_ref(), &warm)
        .await
        .context("warm-up")?;
    // StopPodSandbox + RemovePodSandbox of each pod, timed around the runtime
    let stop_started = Mutex::new(None::<Instant>);
    let stop_remove = Arc::new(Mutex::new(Vec::new()));
    let times = stop_remove.clone();
    let timer = HookedRuntime::new(runtime).observing(move |call, phase| match (call, phase) {
        ("stop_pod_sandbox", Phase::Before) => *stop_started.lock().unwrap() = Some(Instant::now()),
        ("remove_pod_sandbox", Phase::After { ok: true }) => {
            if let Some(t0) = stop_started.lock().unwrap().take() {
                times.lock().unwrap().push(t0.elapsed());
            }
        }
        _ => {}
    });
    let mut counted = spec.clone();
    counted.runs = runs;
    let start = measure_pod_start(&timer, &counted)
        .await
        .context("measured runs")?;
    let stop_remove = std::mem::take(&mut *stop_remove.lock().unwrap());
    if stop_remove.len() != runs {
        bail!(
            "only {} of {runs} pods were stopped and removed cleanly",
            stop_remove.len()
        );
    }
    Ok(Figures { start, stop_remove })
}

/// The native runtime's parts; dropping it removes the cgroups the runtime left behind.
struct NativeEnv {
    root: tempfile::TempDir,
    cgroup_parent: String,
}

impl Drop for NativeEnv {
    fn drop(&mut self) {
        // pods remove their own cgroups; the parent is ours, in every hierarchy (v1 and v2)
        let base = Path::new("/sys/fs/cgroup");
        let mut dirs = vec![base.join(&self.cgroup_parent)];
        if let Ok(rd) = std::fs::read_dir(base) {
            dirs.extend(rd.flatten().map(|e| e.path().join(&self.cgroup_parent)));
        }
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn init_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("NODEKIT_INIT") {
        return Ok(PathBuf::from(p));
    }
    match node_cri::native::runtime::default_init_binary() {
        Some(p) if p.exists() => Ok(p),
        other => bail!(
            "nodekit-init not found ({other:?}): run `cargo build -p node-cri --bin nodekit-init` \
             with the same profile, or set NODEKIT_INIT"
        ),
    }
}

async fn native(runs: usize) -> Result<Figures> {
    let env = NativeEnv {
        root: tempfile::Builder::new()
            .prefix("nodekit-podstart-")
            .tempdir()?,
        cgroup_parent: format!("nodekit-podstart-{}", std::process::id()),
    };
    let root = env.root.path();
    let layout = root.join("layout");
    TestImage::busybox()
        .build()?
        .write_oci_layout(&layout, "bench")?;
    let images = Arc::new(ImageStore::new(ImageStoreConfig {
        root: root.join("images"),
        ..Default::default()
    })?);
    let reference = "nodekit.local/busybox:bench";
    images
        .import_oci_layout(&layout, Some(reference))
        .await
        .context("import the busybox OCI layout")?;
    let cni = BridgePlugin::new(BridgeConfig {
        network: "nkt-podstart".into(),
        bridge: "nkpodstart0".into(),
        subnets: vec!["10.231.0.0/16".parse()?],
        lease_dir: root.join("cni/leases"),
        state_dir: root.join("cni/state"),
        ..Default::default()
    })?;
    let rt = Arc::new(NativeRuntime::new(NativeConfig {
        root: root.join("rt"),
        cni: Arc::new(cni),
        images,
        init_binary: Some(init_binary()?),
        cgroup_parent: env.cgroup_parent.clone(),
        ..Default::default()
    })?);
    let logs = root.join("pod-logs");
    std::fs::create_dir_all(&logs)?;
    let spec = PodStartSpec::sleeping("native", reference, &logs.display().to_string(), runs);
    let figures = measure(rt.clone(), &spec, runs).await;
    if let Ok(left) = rt.list_pod_sandbox(None).await {
        for p in left {
            let _ = rt.stop_pod_sandbox(&p.id).await;
            let _ = rt.remove_pod_sandbox(&p.id).await;
        }
    }
    drop(rt);
    drop(env);
    figures
}

async fn containerd(runs: usize) -> Result<(String, Figures)> {
    let f = ContainerdFixture::start().context("start containerd")?;
    let c = CriClient::connect(CriClientConfig {
        endpoint: f.endpoint(),
        connect_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(60),
        image_pull_timeout: Duration::from_secs(120),
    })
    .await
    .with_context(|| format!("connect to containerd\n{}", f.log_tail(30)))?;
    let image = f.push(&TestImage::busybox().build()?, "nodekit/busybox", "bench")?;
    for r in [image.as_str(), f.pause_image()] {
        c.pull_image(
            cri::ImageSpec {
                image: r.into(),
                ..Default::default()
            },
            None,
            None,
        )
        .await
        .with_context(|| format!("pull {r}"))?;
    }
    let logs = f.pod_log_dir("podstart")?;
    let mut spec = PodStartSpec::sleeping("ctrd", &image, &logs.display().to_string(), runs);
    if let Some(l) = spec.sandbox.linux.as_mut() {
        l.cgroup_parent = f.cgroup_parent().into();
    }
    let figures = measure(Arc::new(c.clone()), &spec, runs)
        .await
        .with_context(|| f.log_tail(30))?;
    Ok((c.runtime_version().to_string(), figures))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn p(v: &[Duration], q: f64) -> Duration {
    PodStartTimings {
        samples: v
            .iter()
            .map(|&total| node_cri::client::timing::PodStartSample {
                total,
                ..Default::default()
            })
            .collect(),
    }
    .percentile(q, |s| s.total)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(15);
    let native_only = args.iter().any(|a| a == "--native-only");
    if !node_test_support::require_root("pod_start_compare") {
        bail!("pod_start_compare needs root");
    }
    let load_before = std::fs::read_to_string("/proc/loadavg")?;

    // the native node side lives in a namespace of its own: the bridge, the pods' veths
    let ns = NetnsFixture::new("podstart")?;
    let native = ns.run_in(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(native(runs))
    })??;
    drop(ns);

    let ctrd = if native_only || !ContainerdFixture::require("pod_start_compare") {
        None
    } else {
        Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(containerd(runs))?,
        )
    };
    let load_after = std::fs::read_to_string("/proc/loadavg")?;
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };

    let ns_p50 = native.start.p50_total();
    println!(
        "pod start = RunPodSandbox + CreateContainer + StartContainer until running (busybox `sleep`, image present); \
         {runs} runs after {WARMUPS} warm-ups; {profile} build; shared 2-core machine, noisy\n"
    );
    println!(
        "| runtime | pod start p50 | pod start p90 | pod start p99 | stop+remove p50 | stop+remove p90 | containerd/native (start p50) | load (1/5/15 min) | date |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let row = |name: &str, f: &Figures, ratio: String, load: &str| {
        println!(
            "| {name} | {} | {} | {} | {} | {} | {ratio} | {} | {date} |",
            ms(f.start.p50_total()),
            ms(f.start.percentile(0.9, |s| s.total)),
            ms(f.start.percentile(0.99, |s| s.total)),
            ms(p(&f.stop_remove, 0.5)),
            ms(p(&f.stop_remove, 0.9)),
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        );
    };
    row(
        "native (NativeRuntime + ImageStore + BridgePlugin)",
        &native,
        "1.00".into(),
        &load_before,
    );
    if let Some((version, f)) = &ctrd {
        let ratio = f.start.p50_total().as_secs_f64() / ns_p50.as_secs_f64().max(1e-9);
        let sr = p(&f.stop_remove, 0.5).as_secs_f64()
            / p(&native.stop_remove, 0.5).as_secs_f64().max(1e-9);
        row(
            &format!("containerd {version} via CriClient (runc, CNI bridge)"),
            f,
            format!("{ratio:.2} (stop+remove {sr:.2})"),
            &load_after,
        );
    } else {
        println!("\ncontainerd not measured (--native-only or its requirements are missing)");
    }
    println!("\nnative steps:\n{}", native.start.summary());
    if let Some((_, f)) = &ctrd {
        println!("\ncontainerd steps:\n{}", f.start.summary());
    }
    Ok(())
}
