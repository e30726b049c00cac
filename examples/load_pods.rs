//! Pod churn on one node with the native runtime: `--pods` pods (sandbox + one busybox
//! container each) are created `--concurrency` at a time, then all deleted, `--rounds` times;
//! prints pods/s for creation and deletion and the p50/p99/max start latency (RunPodSandbox
//! through StartContainer). Pods get the runtime's loopback-only network (no CNI plugin), their
//! own cgroup parent (`nodekit-load/<pid>`) and a temporary root; every pod is removed at the
//! end, and the exit code is non-zero when a pod failed or something was left behind.
//!
//! ```text
//! cargo build -p node-cri --bin nodekit-init
//! sudo target/debug/examples/load_pods --pods 100 --concurrency 10 --rounds 1
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use node_core::{RuntimeBackend, cri};
use node_cri::native::image::{ImageStore, ImageStoreConfig};
use node_cri::native::runtime::{NativeConfig, NativeRuntime};
use node_test_support::TestImage;
use node_test_support::leaks::{Inventory, LeakScope};

const IMAGE: &str = "nodekit.local/load/busybox:1";

#[derive(Debug, Parser)]
#[command(
    about = "Create and delete pods in a loop on the native runtime; print throughput and start latency"
)]
struct Args {
    /// Pods per round.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Pods created (and deleted) at once.
    #[arg(long, default_value_t = 10)]
    concurrency: usize,
    /// Create-all/delete-all rounds.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// The init binary (default: `nodekit-init` next to this executable or in target/debug).
    #[arg(long)]
    init_binary: Option<PathBuf>,
}

fn find_init(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    explicit
        .into_iter()
        .chain(
            exe.ancestors()
                .skip(1)
                .take(3)
                .map(|d| d.join("nodekit-init")),
        )
        .chain([PathBuf::from("target/debug/nodekit-init")])
        .find(|p| p.is_file())
        .context(
            "nodekit-init not found: `cargo build -p node-cri --bin nodekit-init` or --init-binary",
        )
}

fn sandbox(i: usize, round: usize) -> cri::PodSandboxConfig {
    let name = format!("load-{round}-{i}");
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            uid: format!("uid-{name}"),
            name: name.clone(),
            namespace: "load".into(),
            attempt: 0,
        }),
        hostname: name,
        ..Default::default()
    }
}

async fn start_pod(
    rt: &dyn RuntimeBackend,
    i: usize,
    round: usize,
) -> anyhow::Result<(String, Duration)> {
    let t = Instant::now();
    let config = sandbox(i, round);
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await?;
    let c = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "c".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: IMAGE.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(config),
        })
        .await?;
    rt.start_container(&c).await?;
    Ok((id, t.elapsed()))
}

async fn delete_pod(rt: &dyn RuntimeBackend, id: &str) -> anyhow::Result<()> {
    rt.stop_pod_sandbox(id).await?;
    rt.remove_pod_sandbox(id).await?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.pods > 0 && args.concurrency > 0,
        "--pods and --concurrency must be > 0"
    );
    let init = find_init(args.init_binary.clone())?;
    let tmp = tempfile::Builder::new().prefix("nodekit-load-").tempdir()?;
    let cgroup_parent = format!("nodekit-load/{}", std::process::id());
    // precise markers: other nodekit processes may run on this machine
    let scope = LeakScope::none()
        .mount_root(tmp.path())
        .cgroup_parent(&cgroup_parent)
        .process_marker(tmp.path().to_str().unwrap_or("nodekit-load-"));
    let before = Inventory::take(&scope);

    let layout = tmp.path().join("layout");
    TestImage::busybox()
        .cmd(&["sleep", "3600"])
        .build()?
        .write_oci_layout(&layout, IMAGE)?;
    let store = Arc::new(ImageStore::new(ImageStoreConfig {
        root: tmp.path().join("images"),
        ..Default::default()
    })?);
    store.import_oci_layout(&layout, Some(IMAGE)).await?;
    let rt = Arc::new(NativeRuntime::new(NativeConfig {
        root: tmp.path().join("rt"),
        images: store,
        init_binary: Some(init),
        cgroup_parent: cgroup_parent.clone(),
        kill_wait: Duration::from_secs(5),
        ..Default::default()
    })?);

    let mut latencies = vec![];
    let (mut create_time, mut delete_time) = (Duration::ZERO, Duration::ZERO);
    let mut failures = vec![];
    for round in 0..args.rounds {
        let t = Instant::now();
        let results: Vec<_> = futures::stream::iter(0..args.pods)
            .map(|i| {
                let rt = rt.clone();
                async move { start_pod(rt.as_ref(), i, round).await }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        create_time += t.elapsed();
        let mut ids = vec![];
        for r in results {
            match r {
                Ok((id, d)) => {
                    ids.push(id);
                    latencies.push(d);
                }
                Err(e) => failures.push(format!("round {round}: start: {e}")),
            }
        }
        let running = rt.list_containers(None).await?.len();
        if running != ids.len() {
            failures.push(format!(
                "round {round}: {running} containers listed for {} pods",
                ids.len()
            ));
        }
        let t = Instant::now();
        let results: Vec<_> = futures::stream::iter(ids)
            .map(|id| {
                let rt = rt.clone();
                async move { delete_pod(rt.as_ref(), &id).await }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        delete_time += t.elapsed();
        failures.extend(
            results
                .into_iter()
                .filter_map(|r| r.err().map(|e| format!("round {round}: delete: {e}"))),
        );
        eprintln!(
            "round {round} done ({} pods started so far)",
            latencies.len()
        );
    }
    // everything the runtime still knows is removed before the leak check
    for s in rt.list_pod_sandbox(None).await? {
        let _ = delete_pod(rt.as_ref(), &s.id).await;
    }
    let mut leaked = Inventory::take(&scope).diff(&before);

    let deadline = Instant::now() + Duration::from_secs(10);
    while !leaked.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        leaked = Inventory::take(&scope).diff(&before);
    }

    // the cgroup parent itself is ours to remove
    for h in node_test_support::leaks::cgroup_hierarchies() {
        let _ = std::fs::remove_dir(h.join(&cgroup_parent));
        let _ = std::fs::remove_dir(h.join("nodekit-load"));
    }
    latencies.sort();
    let total = (args.pods * args.rounds) as f64;
    println!(
        "pods: {} x {} rounds, concurrency {}; created {:.1} pods/s, deleted {:.1} pods/s; \
         start latency p50 {:?} p99 {:?} max {:?}; failures {}; leaked {}",
        args.pods,
        args.rounds,
        args.concurrency,
        total / create_time.as_secs_f64(),
        total / delete_time.as_secs_f64(),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        failures.len(),
        leaked.leaked.len()
    );
    for f in failures.iter().take(10) {
        eprintln!("failure: {f}");
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} pod operations failed",
        failures.len()
    );
    anyhow::ensure!(leaked.is_empty(), "left behind: {leaked}");
    Ok(())
}
