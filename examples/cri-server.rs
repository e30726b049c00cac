//! A CRI server: the native runtime (namespaces, overlayfs, cgroups) and its image store served
//! as CRI `runtime.v1` on a unix socket, so that a kubelet or `crictl` drives them as they would
//! containerd. With `--upstream`, the same server fronts another CRI runtime instead (a CRI
//! proxy: `CriServer::new` over a `CriClient`).
//!
//! ```text
//! cargo build -p node-cri --bin nodekit-init && cargo build --example cri-server
//! sudo target/debug/examples/cri-server --listen unix:///run/nodekit/cri.sock --root /var/lib/nodekit-cri
//!
//! # point crictl at it (or put `runtime-endpoint: unix:///run/nodekit/cri.sock` in /etc/crictl.yaml)
//! sudo crictl --runtime-endpoint unix:///run/nodekit/cri.sock --image-endpoint unix:///run/nodekit/cri.sock info
//! sudo crictl -r unix:///run/nodekit/cri.sock pull 127.0.0.1:5000/busybox:1
//! sudo crictl -r unix:///run/nodekit/cri.sock runp pod.json
//!
//! # a kubelet: --container-runtime-endpoint=unix:///run/nodekit/cri.sock
//!
//! # a CRI proxy in front of containerd
//! sudo target/debug/examples/cri-server --listen unix:///run/nodekit/proxy.sock \
//!     --upstream unix:///run/containerd/containerd.sock
//! ```
//!
//! Networking: the native bridge plugin by default (`nk0`, `--pod-cidr`), or CNI plugin binaries
//! when `--cni-conf-dir`/`--cni-bin-dir` are given (a conflist in the config directory, as
//! containerd reads `/etc/cni/net.d`). Registry mirrors and credentials-free TLS settings come
//! from a containerd-style `certs.d` directory (`--registry-config`, `<host>/hosts.toml`).
//! Ctrl-C or SIGTERM stops accepting calls, drains the ones in flight and removes the socket;
//! pods keep running (as with containerd) and a restarted server takes them over.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use node_cni::{BridgeConfig, BridgePlugin, ExecCni, ExecConfig};
use node_core::{CniPlugin, ImageBackend, RuntimeBackend, cri};
use node_cri::native::image::{ImageStore, ImageStoreConfig};
use node_cri::native::runtime::{NativeConfig, NativeRuntime};
use node_cri::server::{CriServer, CriServerConfig};
use node_cri::{CriClient, CriClientConfig};

#[derive(Debug, Parser)]
#[command(about = "A CRI server over the nodekit native runtime (or a CRI proxy)")]
struct Args {
    /// The socket to serve on.
    #[arg(long, default_value = "unix:///run/nodekit/cri.sock")]
    listen: String,
    /// Where the runtime keeps its state, images and pod network leases.
    #[arg(long, default_value = "/var/lib/nodekit-cri")]
    root: PathBuf,
    /// CNI config directory (with `--cni-bin-dir`: run CNI plugin binaries instead of the
    /// native bridge plugin).
    #[arg(long)]
    cni_conf_dir: Option<PathBuf>,
    /// CNI plugin directory.
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: Vec<PathBuf>,
    /// The pod subnet of the native bridge plugin.
    #[arg(long, default_value = "10.88.0.0/16")]
    pod_cidr: ipnet::IpNet,
    /// containerd-style registry configuration: a `certs.d` directory of `<host>/hosts.toml`.
    #[arg(long)]
    registry_config: Option<PathBuf>,
    /// The sandbox (pause) image: pulled at start, pinned against image garbage collection.
    /// The native runtime's sandboxes need no image, so this is only for kubelets that expect one.
    #[arg(long)]
    sandbox_image: Option<String>,
    /// The init binary (default: `nodekit-init` next to this executable or one directory up).
    #[arg(long)]
    init_binary: Option<PathBuf>,
    /// Front this CRI runtime instead of running the native one (a CRI proxy).
    #[arg(long)]
    upstream: Option<String>,
}

/// Ctrl-C or SIGTERM.
async fn termination() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("termination signal: draining CRI calls");
}

/// The pod network: CNI binaries when a config directory is given, else the native bridge.
fn network(args: &Args) -> anyhow::Result<Arc<dyn CniPlugin>> {
    Ok(match &args.cni_conf_dir {
        Some(conf) => Arc::new(
            ExecCni::new(
                ExecConfig::default()
                    .conf_dir(conf)
                    .bin_dirs(args.cni_bin_dir.clone())
                    .cache_dir(args.root.join("cni/cache")),
            )
            .with_context(|| format!("CNI configuration in {}", conf.display()))?,
        ),
        None => Arc::new(
            BridgePlugin::new(BridgeConfig {
                subnets: vec![args.pod_cidr],
                masquerade: true,
                lease_dir: args.root.join("cni/networks"),
                state_dir: args.root.join("cni/state"),
                ..Default::default()
            })
            .context("the native bridge CNI plugin")?,
        ),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let socket = node_cri::client::socket_path(&args.listen)
        .with_context(|| format!("--listen {}", args.listen))?;
    let sandbox_image = args.sandbox_image.clone().unwrap_or_default();

    let server = if let Some(upstream) = &args.upstream {
        let client = CriClient::connect_waiting(
            CriClientConfig {
                endpoint: upstream.clone(),
                ..Default::default()
            },
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("--upstream {upstream}"))?;
        tracing::info!(
            upstream,
            runtime = client.runtime_name(),
            version = client.runtime_version(),
            "fronting a CRI runtime"
        );
        // the whole CRI proxy: a server over a client
        CriServer::new(Arc::new(client.clone()), Arc::new(client))
    } else {
        std::fs::create_dir_all(&args.root)
            .with_context(|| format!("creating --root {}", args.root.display()))?;
        let store = Arc::new(
            ImageStore::new(ImageStoreConfig {
                root: args.root.join("images"),
                registry_config_dir: args.registry_config.clone(),
                ..Default::default()
            })
            .context("opening the image store")?,
        );
        let runtime = NativeRuntime::new(NativeConfig {
            root: args.root.join("runtime"),
            cni: network(&args)?,
            images: store.clone(),
            init_binary: args.init_binary.clone(),
            ..Default::default()
        })
        .context("the native runtime")?;
        let images: Arc<dyn ImageBackend> = store;
        if !sandbox_image.is_empty() {
            let spec = cri::ImageSpec {
                image: sandbox_image.clone(),
                ..Default::default()
            };
            match images.pull_image(spec, None, None).await {
                Ok(id) => tracing::info!(image = %sandbox_image, %id, "sandbox image present"),
                Err(e) => {
                    tracing::warn!(image = %sandbox_image, error = %e, "pulling the sandbox image")
                }
            }
        }
        let runtime: Arc<dyn RuntimeBackend> = Arc::new(runtime);
        CriServer::with_config(
            runtime,
            images,
            CriServerConfig {
                // the native runtime writes cgroups directly (no systemd)
                cgroup_driver: Some(cri::CgroupDriver::Cgroupfs),
                sandbox_image,
                ..Default::default()
            },
        )
    };
    server
        .serve(&socket, termination())
        .await
        .with_context(|| format!("serving on {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), "CRI server stopped");
    Ok(())
}
