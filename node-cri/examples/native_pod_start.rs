//! Pod start and stop latency of the native runtime: a sandbox plus one container (image
//! present) until the container's process runs, then stop + remove of the pod; p50 over N runs.
//!
//! Needs root, overlayfs, cgroups and busybox-static. Build the init first:
//! `cargo build -p node-cri --bin nodekit-init --example native_pod_start && sudo target/debug/examples/native_pod_start [runs]`
//! (add `--release` to both for release figures).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use node_core::{RuntimeBackend, cri};
use node_cri::native::runtime::{LayerDirImages, NativeConfig, NativeRuntime, ResolvedImage};
use node_test_support::{FakeCni, NetnsFixture, TestImage};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn measure(runs: usize) -> Result<(), Error> {
    let root = tempfile::Builder::new()
        .prefix("nodekit-bench-")
        .tempdir()?;
    let img = TestImage::busybox().build()?;
    let layer = root.path().join("layers/0");
    std::fs::create_dir_all(&layer)?;
    tar::Archive::new(flate2::read::GzDecoder::new(&img.layers[0].bytes[..])).unpack(&layer)?;
    let images = Arc::new(LayerDirImages::new());
    images.insert(
        "busybox:bench",
        ResolvedImage {
            id: img.config.digest.clone(),
            layer_dirs: vec![layer],
            config: serde_json::from_slice(&img.config.bytes)?,
        },
    );
    let cgroup_parent = format!("nodekit-bench-{}", std::process::id());
    let rt = NativeRuntime::new(NativeConfig {
        root: root.path().join("rt"),
        cni: Arc::new(FakeCni::new()),
        images,
        cgroup_parent: cgroup_parent.clone(),
        ..Default::default()
    })?;
    let (mut start, mut stop) = (Vec::new(), Vec::new());
    let mut phases: [Vec<Duration>; 5] = Default::default();
    for i in 0..runs + 2 {
        let sb_cfg = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: format!("bench-{i}"),
                uid: format!("uid-{i}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: format!("bench-{i}"),
            log_directory: root
                .path()
                .join("logs")
                .join(i.to_string())
                .display()
                .to_string(),
            ..Default::default()
        };
        let c_cfg = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: "busybox:bench".into(),
                ..Default::default()
            }),
            command: vec!["sleep".into(), "1000".into()],
            log_path: "app/0.log".into(),
            labels: HashMap::new(),
            ..Default::default()
        };
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
                config: Some(c_cfg),
                sandbox_config: Some(sb_cfg),
            })
            .await?;
        let p1 = t0.elapsed();
        rt.start_container(&id).await?;
        let started = t0.elapsed();
        let t1 = Instant::now();
        rt.stop_pod_sandbox(&sb).await?;
        let p3 = t1.elapsed();
        rt.remove_pod_sandbox(&sb).await?;
        let stopped = t1.elapsed();
        if i >= 2 {
            for (v, d) in phases
                .iter_mut()
                .zip([p0, p1 - p0, started - p1, p3, stopped - p3])
            {
                v.push(d);
            }
        }
        if i >= 2 {
            // the first two runs warm caches
            start.push(started);
            stop.push(stopped);
        }
    }
    println!("native runtime, {runs} runs (sandbox + 1 container, image present):");
    println!(
        "  pod start       p50 {}  p90 {}  min {}  max {}",
        ms(percentile(&mut start, 0.5)),
        ms(percentile(&mut start, 0.9)),
        ms(start[0]),
        ms(start[start.len() - 1])
    );
    println!(
        "  pod stop+remove p50 {}  p90 {}  min {}  max {}",
        ms(percentile(&mut stop, 0.5)),
        ms(percentile(&mut stop, 0.9)),
        ms(stop[0]),
        ms(stop[stop.len() - 1])
    );
    let names = [
        "run_pod_sandbox",
        "create_container",
        "start_container",
        "stop_pod_sandbox",
        "remove_pod_sandbox",
    ];
    for (name, v) in names.iter().zip(phases.iter_mut()) {
        println!("    {name:<20} p50 {}", ms(percentile(v, 0.5)));
    }
    for d in ["cpu", "cpuacct", "memory", "pids", "unified", ""] {
        let _ = std::fs::remove_dir(
            std::path::Path::new("/sys/fs/cgroup")
                .join(d)
                .join(&cgroup_parent),
        );
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    // the node side runs inside a namespace of its own; pods get their own network namespaces
    let ns = NetnsFixture::new("bench")?;
    ns.run_in(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(measure(runs))
    })?
}
