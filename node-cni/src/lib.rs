//! Pod networking behind node-core's [`CniPlugin`](node_core::CniPlugin):
//!
//! - [`exec`]: [`ExecCni`], the CNI spec runtime that executes plugin binaries from conflists
//!   (chains, result cache, VERSION, CHECK, STATUS, GC), like libcni.
//! - [`bridge`]: [`BridgePlugin`], a native in-process plugin over rtnetlink (bridge, veth pairs
//!   created inside the pod's namespace, leases on disk in host-local's layout, nftables
//!   masquerade and host ports).
//! - [`skel`]: the plugin side of the protocol (env + stdin in, JSON out), behind the
//!   `nodekit-bridge` plugin binary.
//! - [`version`]: CNI spec versions.

pub mod bridge;
pub mod exec;
mod nlbatch;
mod rtnl;
pub mod skel;
pub mod version;

pub use bridge::{BridgeConfig, BridgePlugin};
pub use exec::{ExecCni, ExecConfig, NetworkConfigList};
