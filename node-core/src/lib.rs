//! The contracts of nodekit: one object-safe trait per concern of a Kubernetes worker node, and
//! the plain data they exchange.
//!
//! | concern | trait | data |
//! |---|---|---|
//! | where desired pods come from | [`PodSource`] | [`PodEvent`], [`SourceError`] |
//! | the container runtime (CRI) | [`RuntimeBackend`], [`ImageBackend`] | [`cri`] messages, [`RuntimeError`] |
//! | the service proxy | [`ServiceRouter`] | [`ProxyState`], [`ServicePort`], [`Endpoint`], [`SyncReport`] |
//! | pod networking (CNI) | [`CniPlugin`] | [`Attachment`], [`CniResult`], [`CniError`] |
//! | where status goes | [`StatusSink`] | [`PodStatus`], [`Node`] |
//!
//! Every trait is `Send + Sync` and object safe, meant to be used as `Arc<dyn Trait>`; every trait
//! has its own [`thiserror`] error enum that integrators can match on. This crate starts no runtime
//! and talks to no kernel: implementations live in `node-kubelet`, `node-cri`, `node-proxy` and
//! `node-cni`.

pub mod cni;
#[doc(hidden)]
pub mod forward;
pub mod pod;
pub mod proxy;
pub mod runtime;
pub mod status;

/// The CRI `runtime.v1` messages (from the `k8s-cri` crate), the vocabulary of [`RuntimeBackend`].
pub use k8s_cri::v1 as cri;
/// The Kubernetes API types used throughout nodekit (one Kubernetes version for the workspace).
pub use k8s_openapi;

pub use cni::{
    Attachment, AttachmentKey, Bandwidth, CapabilityArgs, CniError, CniPlugin, CniResult, Dns,
    Interface, IpConfig, PortMapping, Route,
};
pub use pod::{PodEvent, PodRef, PodSource, PodStream, SourceError};
pub use proxy::{
    Endpoint, NodeInfo, Protocol, ProxyState, RouterError, ServicePort, ServicePortName,
    ServiceRouter, SyncReport, TrafficSource,
};
pub use runtime::{ContainerEventStream, ImageBackend, RuntimeBackend, RuntimeError};
pub use status::{StatusError, StatusSink};

/// The Kubernetes `Pod` type.
pub use k8s_openapi::api::core::v1::{Node, Pod, PodStatus};
