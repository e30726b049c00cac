//! Composition, tower-style: a `ServiceRouter` wrapper that logs every sync (what it was asked,
//! what the inner router did, how long it took) and delegates to the nftables router. Any router
//! (iptables, IPVS, an integrator's own) can be wrapped the same way, and wrappers stack.
//!
//! Services and EndpointSlices come from a manifest directory; `--once` programs them once and
//! exits (the rules stay: remove them with `--cleanup`), otherwise it follows the directory until
//! Ctrl-C and then removes its rules. Needs root (CAP_NET_ADMIN) in the network namespace it runs
//! in.
//!
//! ```text
//! sudo target/debug/examples/custom-router --manifests examples/manifests --once
//! sudo nft list table inet nodekit
//! sudo target/debug/examples/custom-router --cleanup
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;
use clap::Parser;
use node_core::{NodeInfo, ProxyState, RouterError, ServiceRouter, SyncReport};
use node_proxy::{CancellationToken, ManifestDir, NftablesRouter, Proxy, ServiceSource};

/// Logs every sync of the router it wraps.
struct Logged<R> {
    inner: R,
    syncs: std::sync::atomic::AtomicU64,
}

impl<R: ServiceRouter> Logged<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            syncs: Default::default(),
        }
    }
}

#[async_trait]
impl<R: ServiceRouter> ServiceRouter for Logged<R> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn sync(&self, desired: &ProxyState) -> Result<SyncReport, RouterError> {
        let n = 1 + self
            .syncs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let endpoints: usize = desired.services.values().map(|s| s.endpoints.len()).sum();
        tracing::info!(
            sync = n,
            service_ports = desired.services.len(),
            endpoints,
            "sync asked"
        );
        match self.inner.sync(desired).await {
            Ok(r) => {
                tracing::info!(sync = n, router = self.name(), full = r.full, changes = r.changes,
                    skipped = r.skipped.len(), took = ?r.duration, "sync done");
                for (port, why) in &r.skipped {
                    tracing::warn!(sync = n, service = %port, why, "service port skipped");
                }
                Ok(r)
            }
            Err(e) => {
                tracing::error!(sync = n, router = self.name(), error = %e, "sync failed");
                Err(e)
            }
        }
    }

    async fn cleanup(&self) -> Result<(), RouterError> {
        tracing::info!(router = self.name(), "cleanup");
        self.inner.cleanup().await
    }
}

#[derive(Parser)]
struct Args {
    /// A directory of Service and EndpointSlice manifests.
    #[arg(long, default_value = "examples/manifests")]
    manifests: PathBuf,
    /// Program once and exit (the rules stay).
    #[arg(long)]
    once: bool,
    /// Remove the rules and exit.
    #[arg(long)]
    cleanup: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_target(false).init();
    let args = Args::parse();
    let router = Arc::new(Logged::new(NftablesRouter::new().context("nftables")?));
    if args.cleanup {
        return Ok(router.cleanup().await?);
    }
    let source: Box<dyn ServiceSource> = match args.once {
        true => Box::new(ManifestDir::new(&args.manifests).once()),
        false => Box::new(ManifestDir::new(&args.manifests)),
    };
    let router_dyn: Arc<dyn ServiceRouter> = router.clone();
    let mut proxy = Proxy::builder()
        .router(router_dyn)
        .node(NodeInfo::default())
        .build()?;
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_signal.cancel();
    });
    proxy.run(source.as_ref(), stop).await?;
    if !args.once {
        router.cleanup().await?;
    }
    Ok(())
}
