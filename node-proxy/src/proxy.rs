//! The proxy assembly: a [`ServiceSource`] feeds the [`ServiceTracker`], whose state a
//! [`ServiceRouter`] programs, coalescing bursts, at most once per minimum interval, with a
//! periodic resync.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use node_core::{NodeInfo, ServiceRouter, SyncReport};
use tokio::time::Instant;
pub use tokio_util::sync::CancellationToken;

use crate::healthcheck::{
    EventRecorder, HealthConfig, HealthError, ProxierHealth, ServiceHealthServer,
};
use crate::metrics::ProxyMetrics;
use crate::source::ServiceSource;
use crate::tracker::ServiceTracker;

/// An error of the proxy assembly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The builder lacks a part.
    #[error("proxy builder: missing {0}")]
    Missing(&'static str),
    /// A health server could not start.
    #[error(transparent)]
    Health(#[from] HealthError),
    /// The last sync before the source ended failed.
    #[error("router {router}: {source}")]
    Router {
        /// The router's name.
        router: String,
        /// Its error.
        #[source]
        source: node_core::RouterError,
    },
}

/// Tunables of the sync loop.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Minimum time between two syncs (kube-proxy's `minSyncPeriod`).
    pub min_sync_interval: Duration,
    /// How long to wait after a change for more changes before syncing.
    pub coalesce: Duration,
    /// Sync again this often even without change.
    pub resync_interval: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            min_sync_interval: Duration::from_secs(1),
            coalesce: Duration::from_millis(20),
            resync_interval: Duration::from_secs(3600),
        }
    }
}

/// Builds a [`Proxy`].
#[derive(Default)]
pub struct ProxyBuilder {
    router: Option<Arc<dyn ServiceRouter>>,
    node: NodeInfo,
    config: ProxyConfig,
    metrics: ProxyMetrics,
    health: HealthConfig,
    events: Option<Arc<dyn EventRecorder>>,
}

impl ProxyBuilder {
    /// The router that programs the kernel.
    #[must_use]
    pub fn router(mut self, router: Arc<dyn ServiceRouter>) -> Self {
        self.router = Some(router);
        self
    }
    /// The node (name, cluster CIDRs...).
    #[must_use]
    pub fn node(mut self, node: NodeInfo) -> Self {
        self.node = node;
        self
    }
    /// The sync-loop tunables.
    #[must_use]
    pub fn config(mut self, config: ProxyConfig) -> Self {
        self.config = config;
        self
    }
    /// Metrics to update (register them in your registry first).
    #[must_use]
    pub fn metrics(mut self, metrics: ProxyMetrics) -> Self {
        self.metrics = metrics;
        self
    }
    /// The health servers to run (none by default; [`HealthConfig::kube_proxy`] for
    /// kube-proxy's).
    #[must_use]
    pub fn health(mut self, health: HealthConfig) -> Self {
        self.health = health;
        self
    }
    /// Where to record Events (kube-proxy's `FailedToStartServiceHealthcheck`); without one,
    /// failures are only logged.
    #[must_use]
    pub fn events(mut self, events: Arc<dyn EventRecorder>) -> Self {
        self.events = Some(events);
        self
    }
    /// The proxy. The healthz address, if any, is bound here.
    pub fn build(self) -> Result<Proxy, ProxyError> {
        let router = self.router.ok_or(ProxyError::Missing("router"))?;
        let timeout = self
            .health
            .health_timeout
            .unwrap_or_else(|| crate::healthcheck::health_timeout(self.config.resync_interval));
        let health = ProxierHealth::new(timeout);
        let healthz = match self.health.healthz_bind_address {
            Some(addr) => Some(ProxierHealth::bind(addr)?),
            None => None,
        };
        let service_health = self.health.service_health_checks.then(|| {
            let s =
                ServiceHealthServer::new(self.health.node_port_addresses.clone(), health.clone());
            match &self.events {
                Some(e) => s.with_events(e.clone()),
                None => s,
            }
        });
        Ok(Proxy {
            router,
            tracker: ServiceTracker::new(self.node),
            config: self.config,
            metrics: self.metrics,
            health,
            healthz,
            service_health,
        })
    }
}

/// Service source -> tracker -> router.
pub struct Proxy {
    router: Arc<dyn ServiceRouter>,
    tracker: ServiceTracker,
    config: ProxyConfig,
    metrics: ProxyMetrics,
    health: ProxierHealth,
    healthz: Option<std::net::TcpListener>,
    service_health: Option<ServiceHealthServer>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("router", &self.router.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Start building a proxy.
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::default()
    }

    /// The metrics the proxy updates.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    /// The proxier's health the sync loop reports to (feed it the node with
    /// [`ProxierHealth::sync_node`] to track the node's eligibility).
    pub fn health(&self) -> &ProxierHealth {
        &self.health
    }

    /// The address `/healthz` and `/livez` are served on, if they are.
    pub fn healthz_addr(&self) -> Option<std::net::SocketAddr> {
        self.healthz.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The health check node ports, if they are served.
    pub fn service_health(&self) -> Option<&ServiceHealthServer> {
        self.service_health.as_ref()
    }

    async fn sync(&mut self) -> Result<SyncReport, node_core::RouterError> {
        let tracked = self.tracker.compute();
        for e in &tracked.errors {
            tracing::warn!(error = %e, "invalid object left out");
        }
        self.metrics
            .invalid_objects
            .set(tracked.errors.len() as i64);
        match self.router.sync(&tracked.state).await {
            Ok(r) => {
                self.metrics.observe(&r);
                if let Some(s) = &mut self.service_health {
                    s.sync(&tracked.state).await;
                }
                self.health.updated();
                for (name, why) in &r.skipped {
                    tracing::warn!(service = %name, why, "service port skipped by the router");
                }
                tracing::debug!(full = r.full, changes = r.changes, duration = ?r.duration, "synced");
                Ok(r)
            }
            Err(e) => {
                self.metrics.sync_errors.inc();
                tracing::error!(error = %e, router = self.router.name(), "sync failed");
                Err(e)
            }
        }
    }

    fn spawn_healthz(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<Option<AbortOnDrop>, ProxyError> {
        let Some(l) = &self.healthz else {
            return Ok(None);
        };
        let addr = l.local_addr().ok();
        let l = l.try_clone().map_err(|source| HealthError::Healthz {
            addr: addr.unwrap_or(crate::healthcheck::DEFAULT_HEALTHZ_BIND_ADDRESS),
            source,
        })?;
        let health = self.health.clone();
        let token = shutdown.child_token();
        Ok(Some(AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = health.serve(l, token).await {
                tracing::error!(error = %e, ?addr, "healthz server");
            }
        }))))
    }

    /// Watch `source` and keep the router in sync until `shutdown` is cancelled or the source
    /// ends (then a last sync is made; its failure is returned).
    pub async fn run(
        &mut self,
        source: &dyn ServiceSource,
        shutdown: CancellationToken,
    ) -> Result<(), ProxyError> {
        let _healthz = self.spawn_healthz(&shutdown)?;
        let mut stream = source.watch();
        let mut due: Option<Instant> = None;
        let mut last_sync: Option<Instant> = None;
        let mut next_resync = Instant::now() + self.config.resync_interval;
        loop {
            let wake = due.unwrap_or(next_resync).min(next_resync);
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                ev = stream.next() => match ev {
                    Some(Ok(ev)) => {
                        self.tracker.apply_event(ev);
                        self.health.queued_update();
                        if due.is_none() {
                            let mut at = Instant::now() + self.config.coalesce;
                            if let Some(l) = last_sync {
                                at = at.max(l + self.config.min_sync_interval);
                            }
                            due = Some(at);
                        }
                    }
                    Some(Err(e)) => tracing::warn!(source = source.name(), error = %e, "service source"),
                    None => {
                        return self.sync().await.map(|_| ()).map_err(|source| ProxyError::Router {
                            router: self.router.name().to_string(),
                            source,
                        });
                    }
                },
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= next_resync || due.is_some_and(|d| now >= d) {
                        last_sync = Some(now);
                        next_resync = now + self.config.resync_interval;
                        due = match self.sync().await {
                            Ok(_) => None,
                            Err(_) => Some(now + self.config.min_sync_interval),
                        };
                    }
                }
            }
        }
    }
}

/// Stops a spawned server when the sync loop returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::ManifestDir;
    use node_test_support::FakeRouter;

    #[tokio::test]
    async fn a_watched_directory_is_resynced_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let svc = |ip: &str| {
            format!(
                "kind: Service\napiVersion: v1\nmetadata: {{name: a, namespace: d}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
            )
        };
        std::fs::write(dir.path().join("a.yaml"), svc("10.96.0.1")).unwrap();
        std::fs::write(dir.path().join("bad.yaml"), "kind: Service\nspec: [").unwrap();
        let router = Arc::new(FakeRouter::new());
        let mut proxy = Proxy::builder()
            .router(router.clone())
            .config(ProxyConfig {
                min_sync_interval: Duration::from_millis(50),
                ..Default::default()
            })
            .build()
            .unwrap();
        let source = ManifestDir {
            debounce: Duration::from_millis(30),
            ..ManifestDir::new(dir.path())
        };
        let stop = CancellationToken::new();
        let s2 = stop.clone();
        let path = dir.path().to_path_buf();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::fs::write(path.join("a.yaml"), svc("10.96.0.2")).unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            s2.cancel();
        });
        tokio::time::timeout(Duration::from_secs(10), proxy.run(&source, stop))
            .await
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        let synced = router.synced();
        assert!(synced.len() >= 2, "{synced:?}");
        let ips = |s: &node_core::ProxyState| {
            s.services.values().next().unwrap().cluster_ips[0].to_string()
        };
        assert_eq!(ips(&synced[0]), "10.96.0.1");
        assert_eq!(ips(synced.last().unwrap()), "10.96.0.2");
        assert_eq!(proxy.metrics().sync_errors.get(), 0);
    }

    #[tokio::test]
    async fn read_once_syncs_once_and_returns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("s.json"),
            r#"{"kind":"Service","apiVersion":"v1","metadata":{"name":"j","namespace":"d"},"spec":{"clusterIP":"10.96.0.9","ports":[{"port":53,"protocol":"UDP"}]}}"#,
        )
        .unwrap();
        let router = Arc::new(FakeRouter::new());
        let mut proxy = Proxy::builder().router(router.clone()).build().unwrap();
        proxy
            .run(
                &ManifestDir::new(dir.path()).once(),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        assert_eq!(router.synced().len(), 1);
        assert_eq!(router.last().unwrap().services.len(), 1);
    }
}
