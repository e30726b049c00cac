//! Prometheus metrics of the proxy: sync durations (full and partial), what is programmed, and
//! when the last sync succeeded.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use node_core::SyncReport;

/// The label of the sync-duration histogram.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SyncKind {
    /// `full` or `partial`.
    pub kind: String,
}

fn sync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The proxy's metrics; register them with [`ProxyMetrics::register`].
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// Sync duration in seconds, by kind (`full`, `partial`).
    pub sync_duration: Family<SyncKind, Histogram, fn() -> Histogram>,
    /// Service ports in the last synced state.
    pub service_ports: Gauge,
    /// Endpoints programmed by the last sync.
    pub endpoints: Gauge,
    /// Kernel objects (rules, elements) changed, summed over syncs.
    pub changes: Counter,
    /// Failed syncs.
    pub sync_errors: Counter,
    /// Objects left out as invalid in the last computation.
    pub invalid_objects: Gauge,
    /// Unix time of the last successful sync, in seconds.
    pub last_sync_timestamp: Gauge<f64, AtomicU64>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            sync_duration: Family::new_with_constructor(sync_histogram),
            service_ports: Gauge::default(),
            endpoints: Gauge::default(),
            changes: Counter::default(),
            sync_errors: Counter::default(),
            invalid_objects: Gauge::default(),
            last_sync_timestamp: Gauge::default(),
        }
    }
}

impl ProxyMetrics {
    /// Register every metric under the `nodekit_proxy` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("nodekit_proxy");
        r.register(
            "sync_duration_seconds",
            "Duration of router syncs",
            self.sync_duration.clone(),
        );
        r.register(
            "service_ports",
            "Service ports in the desired state",
            self.service_ports.clone(),
        );
        r.register("endpoints", "Endpoints programmed", self.endpoints.clone());
        r.register(
            "changes",
            "Kernel objects changed by syncs",
            self.changes.clone(),
        );
        r.register("sync_errors", "Failed syncs", self.sync_errors.clone());
        r.register(
            "invalid_objects",
            "Services and slices left out as invalid",
            self.invalid_objects.clone(),
        );
        r.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last successful sync",
            self.last_sync_timestamp.clone(),
        );
    }

    /// Record a successful sync.
    pub fn observe(&self, report: &SyncReport) {
        let kind = if report.full { "full" } else { "partial" };
        self.sync_duration
            .get_or_create(&SyncKind { kind: kind.into() })
            .observe(report.duration.as_secs_f64());
        self.service_ports.set(report.service_ports as i64);
        self.endpoints.set(report.endpoints as i64);
        self.changes.inc_by(report.changes as u64);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sync_timestamp.set(now.as_secs_f64());
    }
}
