//! Where the native runtime's pod start goes: a sandbox plus one container (image present)
//! until the container's process runs, then stop + remove of the pod; p50/p90/p99/max of the
//! whole and of every internal phase (from the runtime's verbose status, `info["phases"]`).
//!
//! The parts are the ones `examples/pod_start_compare.rs` measures: an `ImageStore` with the
//! busybox test image imported from an OCI layout, and the real `node_cni::BridgePlugin`
//! (`--fake-cni`: a fake plugin instead, to take CNI out of the figures), all inside a
//! `NetnsFixture`.
//!
//! Needs root, overlayfs, cgroups and busybox-static. Build the init first:
//! `cargo build -p node-cri --bin nodekit-init --example native_pod_start && sudo target/debug/examples/native_pod_start [runs] [--fake-cni]`
//! (add `--release` to both for release figures).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use node_cni::{BridgeConfig, BridgePlugin};
use node_core::{CniPlugin, RuntimeBackend, cri};
use node_cri::client::timing::PodStartSpec;
use node_cri::native::image::{ImageStore, ImageStoreConfig};
use node_cri::native::runtime::{NativeConfig, NativeRuntime};
use node_test_support::{FakeCni, NetnsFixture, TestImage};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Warm-up runs, not counted.
const WARMUPS: usize = 2;

fn percentile(v: &[Duration], q: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn row(name: &str, v: &[Duration]) -> String {
    let ms = |d: Duration| format!("{:7.1}", d.as_secs_f64() * 1000.0);
    format!(
        "| {name:<28} | {} | {} | {} | {} |",
        ms(percentile(v, 0.5)),
        ms(percentile(v, 0.9)),
        ms(percentile(v, 0.99)),
        ms(*v.iter().max().unwrap_or(&Duration::ZERO))
    )
}

/// The phases (`call.phase` -> duration) of a verbose status.
fn phases(info: &std::collections::HashMap<String, String>) -> Vec<(String, Duration)> {
    let v: serde_json::Value = info
        .get("info")
        .and_then(|i| serde_json::from_str(i).ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    if let Some(calls) = v["phases"].as_object() {
        for (call, phases) in calls {
            for (phase, us) in phases.as_object().into_iter().flatten() {
                out.push((
                    format!("{call}.{phase}"),
                    Duration::from_micros(us.as_u64().unwrap_or(0)),
                ));
            }
        }
    }
    out
}

async fn measure(runs: usize, fake_cni: bool) -> Result<(), Error> {
    let root = tempfile::Builder::new()
        .prefix("nodekit-bench-")
        .tempdir()?;
    let layout = root.path().join("layout");
    TestImage::busybox()
        .build()?
        .write_oci_layout(&layout, "bench")?;
    let images = Arc::new(ImageStore::new(ImageStoreConfig {
        root: root.path().join("images"),
        ..Default::default()
    })?);
    let reference = "nodekit.local/busybox:bench";
    images.import_oci_layout(&layout, Some(reference)).await?;
    let cni: Arc<dyn CniPlugin> = if fake_cni {
        Arc::new(FakeCni::new())
    } else {
        Arc::new(BridgePlugin::new(BridgeConfig {
            network: "nkt-bench".into(),
            bridge: "nkbench0".into(),
            subnets: vec!["10.232.0.0/16".parse()?],
            lease_dir: root.path().join("cni/leases"),
            state_dir: root.path().join("cni/state"),
            ..Default::default()
        })?)
    };
    let cgroup_parent = format!("nodekit-bench-{}", std::process::id());
    let rt = NativeRuntime::new(NativeConfig {
        root: root.path().join("rt"),
        cni,
        images,
        cgroup_parent: cgroup_parent.clone(),
        ..Default::default()
    })?;
    let logs = root.path().join("logs");
    let spec = PodStartSpec::sleeping("bench", reference, &logs.display().to_string(), runs);
    let mut steps: BTreeMap<String, Vec<Duration>> = BTreeMap::new();
    let mut add = |k: &str, d: Duration| steps.entry(k.to_string()).or_default().push(d);
    let mut totals = Vec::new();
    let mut stops = Vec::new();
    for i in 0..runs + WARMUPS {
        let mut sb_cfg = spec.sandbox.clone();
        let md = sb_cfg.metadata.as_mut().unwrap();
        md.name = format!("bench-{i}");
        md.uid = format!("uid-{i}");
        let t0 = Instant::now();
        let sb = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sb_cfg.clone()),
                runtime_handler: String::new(),
            })
            .await?;
        let p0 = t0.elapsed();
        let id = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: sb.clone(),
                config: Some(spec.container.clone()),
                sandbox_config: Some(sb_cfg),
            })
            .await?;
        let p1 = t0.elapsed();
        rt.start_container(&id).await?;
        let started = t0.elapsed();
        let sb_info = rt.pod_sandbox_status(&sb, true).await?.info;
        let c_info = rt.container_status(&id, true).await?.info;
        let t1 = Instant::now();
        rt.stop_pod_sandbox(&sb).await?;
        let p3 = t1.elapsed();
        rt.remove_pod_sandbox(&sb).await?;
        let stopped = t1.elapsed();
        if i < WARMUPS {
            continue;
        }
        totals.push(started);
        stops.push(stopped);
        add("RunPodSandbox", p0);
        add("CreateContainer", p1 - p0);
        add("StartContainer", started - p1);
        add("StopPodSandbox", p3);
        add("RemovePodSandbox", stopped - p3);
        for (k, d) in phases(&sb_info).into_iter().chain(phases(&c_info)) {
            add(&k, d);
        }
    }
    println!(
        "native runtime, {runs} runs (sandbox + 1 container, image present, {}), ms:\n",
        if fake_cni { "fake CNI" } else { "BridgePlugin" }
    );
    println!("| step                         |     p50 |     p90 |     p99 |     max |");
    println!("|------------------------------|---------|---------|---------|---------|");
    println!("{}", row("pod start", &totals));
    println!("{}", row("pod stop+remove", &stops));
    for (k, v) in &steps {
        println!("{}", row(k, v));
    }
    drop(rt);
    for d in ["cpu", "cpuacct", "memory", "pids", "devices", "unified", ""] {
        let _ = std::fs::remove_dir(
            std::path::Path::new("/sys/fs/cgroup")
                .join(d)
                .join(&cgroup_parent),
        );
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(50)
        .max(1);
    let fake_cni = args.iter().any(|a| a == "--fake-cni");
    // the node side runs inside a namespace of its own; pods get their own network namespaces
    let ns = NetnsFixture::new("bench")?;
    ns.run_in(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(measure(runs, fake_cni))
    })?
}
