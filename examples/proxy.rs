//! A service proxy assembled from node-proxy: services from a manifest directory (or the API
//! server) programmed by a router into the network namespace this runs in.
//!
//! ```text
//! cargo run --example proxy -- --manifests ./services --once            # program and exit
//! cargo run --example proxy -- --manifests ./services --dump            # print the nft ruleset
//! cargo run --example proxy -- --manifests ./services                   # watch and re-sync
//! cargo run --example proxy -- --kubeconfig ~/.kube/config --node-name n1
//! cargo run --example proxy -- --cleanup                                # remove our table
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use node_core::{NodeInfo, ServiceRouter};
use node_proxy::{
    ApiServerSource, CancellationToken, HealthConfig, ManifestDir, NftablesRouter, Proxy,
    ServiceSource, ServiceTracker,
};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    Nftables,
    Iptables,
    Ipvs,
}

#[derive(Debug, Parser)]
#[command(about = "nodekit service proxy")]
struct Args {
    /// The router that programs the kernel.
    #[arg(long, value_enum, default_value = "nftables")]
    backend: Backend,
    /// A directory of Service and EndpointSlice manifests (YAML or JSON, multi-document).
    #[arg(long)]
    manifests: Option<PathBuf>,
    /// Watch the API server of this kubeconfig instead of a directory.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Program once and exit.
    #[arg(long)]
    once: bool,
    /// Print the ruleset the manifests map to, and touch nothing.
    #[arg(long)]
    dump: bool,
    /// Remove everything the router owns, and exit.
    #[arg(long)]
    cleanup: bool,
    /// This node's name (endpoints on it are local).
    #[arg(long, default_value = "local")]
    node_name: String,
    /// The cluster's pod CIDRs (repeatable): service traffic from outside is masqueraded.
    #[arg(long)]
    cluster_cidr: Vec<String>,
    /// Where to serve `/healthz` and `/livez` (kube-proxy's flag and default; empty: not
    /// served). The health check node ports of `externalTrafficPolicy: Local` load balancers
    /// are served with it.
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind_address: String,
}

/// kube-proxy's health servers from `--healthz-bind-address` (none with `--once`).
fn health(args: &Args) -> Result<HealthConfig> {
    if args.once || args.healthz_bind_address.is_empty() {
        return Ok(HealthConfig::default());
    }
    let addr = args
        .healthz_bind_address
        .parse()
        .with_context(|| format!("--healthz-bind-address {:?}", args.healthz_bind_address))?;
    Ok(HealthConfig {
        healthz_bind_address: Some(addr),
        ..HealthConfig::kube_proxy()
    })
}

fn router(backend: Backend) -> Result<Arc<NftablesRouter>> {
    match backend {
        Backend::Nftables => Ok(Arc::new(NftablesRouter::new()?)),
        Backend::Iptables | Backend::Ipvs => {
            bail!("the {backend:?} backend is not available in this build")
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let node = NodeInfo {
        name: args.node_name.clone(),
        cluster_cidrs: args
            .cluster_cidr
            .iter()
            .map(|c| c.parse().with_context(|| format!("--cluster-cidr {c}")))
            .collect::<Result<_>>()?,
        ..Default::default()
    };
    if args.dump {
        let dir = args.manifests.context("--dump needs --manifests")?;
        let (m, errors) = ManifestDir::read(&dir);
        for e in errors {
            eprintln!("warning: {e}");
        }
        let mut tracker = ServiceTracker::new(node);
        tracker.replace_all(m.services, m.slices);
        let tracked = tracker.compute();
        for e in &tracked.errors {
            eprintln!("warning: {e}");
        }
        match args.backend {
            Backend::Nftables => print!(
                "{}",
                node_proxy::nftables::render_ruleset("nodekit", &tracked.state)
            ),
            b => bail!("the {b:?} backend is not available in this build"),
        }
        return Ok(());
    }
    let router = router(args.backend)?;
    if args.cleanup {
        router.cleanup().await?;
        eprintln!("removed the {} ruleset", router.name());
        return Ok(());
    }
    let source: Box<dyn ServiceSource> = match (&args.kubeconfig, &args.manifests) {
        (Some(kc), _) => Box::new(ApiServerSource::from_kubeconfig(kc).await?),
        (None, Some(dir)) if args.once => Box::new(ManifestDir::new(dir).once()),
        (None, Some(dir)) => Box::new(ManifestDir::new(dir)),
        (None, None) => bail!("give --manifests DIR or --kubeconfig FILE"),
    };
    let mut proxy = Proxy::builder()
        .router(router.clone())
        .node(node)
        .health(health(&args)?)
        .build()?;
    if let Some(addr) = proxy.healthz_addr() {
        tracing::info!(%addr, "serving /healthz and /livez");
    }
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        s.cancel();
    });
    proxy.run(source.as_ref(), stop).await?;
    let m = proxy.metrics();
    eprintln!(
        "synced: {} service ports, {} endpoints, {} elements programmed",
        m.service_ports.get(),
        m.endpoints.get(),
        router.programmed_elements()
    );
    Ok(())
}
