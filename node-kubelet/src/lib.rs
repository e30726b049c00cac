//! The kubelet's pod agent as a library: pod sources and their merger, pod workers and the sync
//! loop, probes, restart back-off, status, termination.
//!
//! | concern | module |
//! |---|---|
//! | the assembly: builder, run loop, relist (PLEG), adoption | [`kubelet`] ([`Kubelet`], [`KubeletConfig`]) |
//! | where pods come from, merged | [`source`] ([`FileSource`], [`HttpSource`], [`ApiServerSource`] and its [`NodePodsWatch`], [`ChannelSource`], [`PodConfig`]) |
//! | manifests as text: decoding, validation, static pod UIDs | [`manifest`] |
//! | the pure reconcile of one pod | [`reconcile`] ([`compute_actions`]) |
//! | crash-loop and image pull back-off | [`backoff`] |
//! | from the pod spec to CRI configs; config map/secret store | [`cri_config`] |
//! | labels on sandboxes/containers, the stable spec hash | [`labels`] |
//! | probes and lifecycle hooks | [`probe`] |
//! | pod status, and the JSON file status sink | [`status`] ([`JsonStatusSink`]) |
//! | the live pods and statuses, for endpoints and integrators | [`state`] ([`PodStates`]) |
//! | resource quantities (exact, rounding up as Kubernetes does) | [`node::quantity`] |
//! | the node: QoS cgroups, allocatable and admission, node status, eviction, volumes, shutdown, container log rotation, HTTP endpoints | [`node`] |
//!
//! The pod worker (one task per pod: observe, reconcile, act, publish, terminate) is internal.

pub mod backoff;
pub mod cri_config;
pub mod kubelet;
pub mod labels;
pub mod manifest;
pub mod node;
pub mod probe;
pub mod reconcile;
pub mod source;
pub mod state;
pub mod status;
mod worker;

pub use cri_config::{InMemoryStore, ValueStore};
pub use kubelet::{Kubelet, KubeletBuilder, KubeletConfig, KubeletError};
pub use reconcile::compute_actions;
pub use source::{
    ApiServerSource, ChannelSource, FileSource, FileSourceConfig, HttpSource, HttpSourceConfig,
    NodePodsWatch, PodConfig, PodUpdate,
};
pub use state::{PodState, PodStates};
pub use status::JsonStatusSink;
/// The token that stops [`Kubelet::run`].
pub use tokio_util::sync::CancellationToken;
