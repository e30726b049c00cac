//! The service proxy as a library: `Service` + `EndpointSlice` tracking into node-core's
//! `ProxyState`, and the `ServiceRouter` implementations (nftables, iptables, IPVS).

pub mod manifest;
pub mod metrics;
pub mod nftables;
pub mod proxy;
pub mod source;
pub mod tracker;

pub use manifest::{Manifests, parse_manifests};
pub use metrics::ProxyMetrics;
pub use nftables::{NftablesConfig, NftablesRouter};
pub use proxy::{CancellationToken, Proxy, ProxyBuilder, ProxyConfig, ProxyError};
pub use source::{ApiServerSource, ManifestDir, ServiceEvent, ServiceSource, ServiceStream};
pub use tracker::{InvalidObject, ServiceTracker, Tracked};
