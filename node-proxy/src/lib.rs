//! The service proxy as a library: `Service` + `EndpointSlice` tracking into node-core's
//! `ProxyState`, and the `ServiceRouter` implementations (nftables, iptables, IPVS).

pub mod conntrack;
pub mod iptables;
pub mod ipvs;

pub use conntrack::{ConntrackCleaner, ConntrackFlush, stale_udp_flows};
pub use iptables::{IpFamily, IptablesConfig, IptablesRouter, IptablesVariant};
pub use ipvs::{IpvsConfig, IpvsRouter};
