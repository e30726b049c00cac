//! nodekit: the components that run on every Kubernetes worker node, as a Rust SDK.
//!
//! This facade re-exports the crates behind additive features:
//!
//! | module | crate | feature |
//! |---|---|---|
//! | [`core`] | `node-core`: the traits and plain data | always |
//! | `kubelet` | `node-kubelet`: pod sources, pod workers, probes, status | `kubelet` |
//! | `cri` | `node-cri`: CRI client, native runtime, CRI server | `cri` |
//! | `proxy` | `node-proxy`: service tracking, nftables/iptables/IPVS routers | `proxy` |
//! | `cni` | `node-cni`: CNI runtime, native bridge plugin | `cni` |
//! | `nft` | `node-nft`: nf_tables over netlink (atomic batches) | `nft` (on with `proxy` or `cni`) |

pub use node_core as core;
pub use node_core::{
    CniPlugin, ImageBackend, PodSource, RuntimeBackend, ServiceRouter, StatusSink,
};

#[cfg(feature = "cni")]
pub use node_cni as cni;
#[cfg(feature = "cri")]
pub use node_cri as cri;
#[cfg(feature = "kubelet")]
pub use node_kubelet as kubelet;
#[cfg(feature = "nft")]
pub use node_nft as nft;
#[cfg(feature = "proxy")]
pub use node_proxy as proxy;
