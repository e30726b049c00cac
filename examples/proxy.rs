//! A service proxy assembled from node-proxy: services from a manifest directory (or the API
//! server) programmed by a router into the network namespace this runs in.
//!
//! ```text
//! cargo run --example proxy -- --manifests ./services --once            # program and exit
//! cargo run --example proxy -- --manifests ./services --dump            # print the nft ruleset
//! cargo run --example proxy -- --manifests ./services                   # watch and re-sync
//! cargo run --example proxy -- --kubeconfig ~/.kube/config --hostname-override n1
//! cargo run --example proxy -- --cleanup                                # remove our table
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use node_core::{NodeInfo, ServiceRouter};
use node_proxy::{
    ApiEventRecorder, ApiServerSource, CancellationToken, HealthConfig, ManifestDir,
    NftablesRouter, Proxy, ProxyConfig, ServiceSource, ServiceTracker,
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
    /// This node's name (endpoints on it are local; with --kubeconfig its Node is watched: a
    /// node being deleted or tainted `ToBeDeletedByClusterAutoscaler` fails `/healthz`).
    /// Default: the host name with --kubeconfig (kube-proxy's), `local` without.
    #[arg(long = "hostname-override", alias = "node-name")]
    node_name: Option<String>,
    /// How often the rules are synced even without a change (kube-proxy's `--sync-period`, a
    /// Go duration: `30s`, `1m`, `1h30m`); the health timeout is twice it, as kube-proxy's.
    #[arg(long, default_value = "30s", value_parser = go_duration)]
    sync_period: Duration,
    /// The cluster's pod CIDRs (repeatable): service traffic from outside is masqueraded.
    #[arg(long)]
    cluster_cidr: Vec<String>,
    /// Where to serve `/healthz` and `/livez` (kube-proxy's flag and default; empty: not
    /// served). The health check node ports of `externalTrafficPolicy: Local` load balancers
    /// are served with it.
    #[arg(long, default_value = "0.0.0.0:10256")]
    healthz_bind_address: String,
}

/// A Go duration (`1h30m`, `30s`, `500ms`) as kube-proxy's flags take them.
fn go_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: not a duration (e.g. 30s, 1m, 1h30m)");
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let (mut total, mut rest) = (0f64, s);
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        let unit_len = rest[n..]
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len() - n);
        let scale = match &rest[n..n + unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[n + unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// kube-proxy's host name: the system's, lower-cased.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
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
    let node_name = match (&args.node_name, &args.kubeconfig) {
        (Some(n), _) => n.clone(),
        (None, Some(_)) => hostname(),
        (None, None) => "local".into(),
    };
    let node = NodeInfo {
        name: node_name.clone(),
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
    // with an API server: its client also watches this node's Node and records Events
    let (source, client): (Box<dyn ServiceSource>, _) = match (&args.kubeconfig, &args.manifests) {
        (Some(kc), _) => {
            let api = ApiServerSource::from_kubeconfig(kc).await?;
            let client = api.client();
            (Box::new(api), Some(client))
        }
        (None, Some(dir)) if args.once => (Box::new(ManifestDir::new(dir).once()), None),
        (None, Some(dir)) => (Box::new(ManifestDir::new(dir)), None),
        (None, None) => bail!("give --manifests DIR or --kubeconfig FILE"),
    };
    let mut builder = Proxy::builder()
        .router(router.clone())
        .node(node)
        .config(ProxyConfig {
            resync_interval: args.sync_period,
            ..Default::default()
        })
        .health(health(&args)?);
    if let Some(c) = &client {
        builder = builder.events(Arc::new(ApiEventRecorder::new(c.clone(), &node_name)));
    }
    let mut proxy = builder.build()?;
    if let Some(addr) = proxy.healthz_addr() {
        tracing::info!(%addr, timeout = ?proxy.health().timeout(), "serving /healthz and /livez");
    }
    let _node_watch = client.map(|c| {
        AbortOnDrop(tokio::spawn(
            proxy.health().clone().follow_node(c, node_name.clone()),
        ))
    });
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

/// Stops the Node watch when the proxy returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
