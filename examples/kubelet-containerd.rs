//! The kubelet with containerd: node-kubelet's `Kubelet` driving containerd (or CRI-O, or any CRI
//! runtime) through node-cri's `CriClient`, which is both its `RuntimeBackend` and its
//! `ImageBackend`. Pods come from a manifest directory, status goes to JSON files; the runtime
//! pulls images and sets up pod networking with its own CNI config.
//!
//! Runs until Ctrl-C (the pods stay with containerd for the next kubelet to adopt), or with
//! `--once` until every pod runs: prints the pods, stops and removes them, exits.
//!
//! ```text
//! sudo target/debug/examples/kubelet-containerd --manifests ./pods \
//!     --cri-endpoint unix:///run/containerd/containerd.sock --once
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use node_cri::{CriClient, CriClientConfig};
use node_kubelet::{CancellationToken, FileSource, JsonStatusSink, Kubelet, KubeletConfig};

#[path = "node-agent-parts/cleanup.rs"]
mod cleanup;

#[derive(Parser)]
struct Args {
    /// The directory of Pod manifests.
    #[arg(long)]
    manifests: PathBuf,
    /// The CRI runtime's socket.
    #[arg(long, default_value = "unix:///run/containerd/containerd.sock")]
    cri_endpoint: String,
    /// Where pod status is written (one JSON file per pod).
    #[arg(long, default_value = "/var/lib/nodekit/status")]
    status_dir: PathBuf,
    /// Where the runtime writes container logs.
    #[arg(long, default_value = "/var/log/pods")]
    pod_log_root: PathBuf,
    /// The node's name.
    #[arg(long, default_value = "kubelet-containerd")]
    node_name: String,
    /// Exit once every pod runs, after removing them.
    #[arg(long)]
    once: bool,
    /// How long `--once` waits for the pods.
    #[arg(long, default_value = "120")]
    timeout_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = CriClientConfig {
        endpoint: args.cri_endpoint.clone(),
        ..Default::default()
    };
    let cri = CriClient::connect_waiting(config, Duration::from_secs(30))
        .await
        .with_context(|| format!("--cri-endpoint {}", args.cri_endpoint))?;
    tracing::info!(
        runtime = cri.runtime_name(),
        version = cri.runtime_version(),
        "connected"
    );
    let cri = Arc::new(cri);

    let kubelet = Kubelet::builder(args.node_name.clone())
        .source(Arc::new(FileSource::new(args.manifests.clone())))
        .runtime(cri.clone(), cri.clone())
        .status(Arc::new(JsonStatusSink::new(&args.status_dir)?))
        .config(KubeletConfig {
            pod_log_root: args.pod_log_root.clone(),
            ..Default::default()
        })
        .build()?;
    let states = kubelet.states();
    let token = CancellationToken::new();
    let task = tokio::spawn(kubelet.run(token.clone()));

    let waited = if args.once {
        let all_running = || {
            let pods = states.pods();
            let running = |s: &node_kubelet::PodState| {
                s.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            };
            !pods.is_empty() && pods.iter().all(running)
        };
        let limit = Duration::from_secs(args.timeout_secs);
        let mut changes = states.subscribe();
        tokio::time::timeout(limit, async {
            while !all_running() {
                let _ = changes.changed().await;
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("the pods did not all run within {limit:?}"))
    } else {
        node_kubelet::node::shutdown::termination_signal()?.await;
        Ok(())
    };
    println!("{:<24} {:<10} {:<16} RESTARTS", "POD", "PHASE", "IP");
    for s in states.pods() {
        let st = s.status.unwrap_or_default();
        let restarts: i32 = st
            .container_statuses
            .iter()
            .flatten()
            .map(|c| c.restart_count)
            .sum();
        println!(
            "{:<24} {:<10} {:<16} {restarts}",
            s.pod.metadata.name.unwrap_or_default(),
            st.phase.unwrap_or_default(),
            st.pod_ip.unwrap_or_default(),
        );
    }
    token.cancel();
    task.await??;
    if args.once {
        cleanup::remove_all_pods(cri.as_ref()).await;
    }
    waited
}
