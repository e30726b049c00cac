//! The kubelet's pod agent as a library: pod sources and their merger, pod workers and the sync
//! loop, probes, restart back-off, status, termination.
//!
//! | concern | module |
//! |---|---|
//! | where pods come from, merged | [`source`] ([`FileSource`], [`HttpSource`], [`ApiServerSource`], [`ChannelSource`], [`PodConfig`]) |
//! | manifests as text | [`manifest`] |
//! | resource quantities | [`quantity`] |

pub mod manifest;
pub mod quantity;
pub mod source;

pub use source::{
    ApiServerSource, ChannelSource, FileSource, FileSourceConfig, HttpSource, HttpSourceConfig,
    PodConfig, PodUpdate,
};
pub mod backoff;
pub mod cri_config;
pub mod labels;
pub mod node;
pub mod probe;
pub mod reconcile;
pub mod status;
