//! The service proxy as a library: `Service` + `EndpointSlice` tracking into node-core's
//! `ProxyState`, and the `ServiceRouter` implementations (nftables, iptables, IPVS).
//!
//! | concern | module |
//! |---|---|
//! | Service/EndpointSlice -> proxy state | [`tracker`], [`manifest`] |
//! | where services come from | [`source`] (manifest directory, API server) |
//! | the sync loop and its metrics | [`proxy`], [`metrics`] |
//! | kube-proxy's `/healthz`, `/livez` and health check node ports | [`healthcheck`] |
//! | routers | [`nftables`] (default), [`iptables`], [`ipvs`] |
//! | stale UDP flows | [`conntrack`] |

pub mod conntrack;
pub mod healthcheck;
pub mod iptables;
pub mod ipvs;
pub mod manifest;
pub mod metrics;
pub mod nftables;
pub mod proxy;
pub mod source;
pub mod tracker;

pub use conntrack::{ConntrackCleaner, ConntrackFlush, stale_udp_flows};
pub use healthcheck::{
    ApiEventRecorder, EventRecorder, HealthConfig, HealthError, ProxierHealth, ProxyEvent,
    ServiceHealthServer,
};
pub use iptables::{IpFamily, IptablesConfig, IptablesRouter, IptablesVariant};
pub use ipvs::{IpvsConfig, IpvsRouter};
pub use manifest::{Manifests, parse_manifests};
pub use metrics::ProxyMetrics;
pub use nftables::{NftablesConfig, NftablesRouter};
pub use proxy::{CancellationToken, Proxy, ProxyBuilder, ProxyConfig, ProxyError};
pub use source::{ApiServerSource, ManifestDir, ServiceEvent, ServiceSource, ServiceStream};
pub use tracker::{InvalidObject, ServiceTracker, Tracked};
