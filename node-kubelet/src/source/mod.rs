//! Where desired pods come from: the [`PodSource`](node_core::PodSource) implementations the kubelet
//! ships, and the [`PodConfig`] merger that turns several sources into one view.
//!
//! | source | what |
//! |---|---|
//! | [`FileSource`] | static pods from a manifest directory (watched, debounced, rescanned) |
//! | [`HttpSource`] | pods from a URL polled with `ETag`/`If-None-Match` |
//! | [`ApiServerSource`] | pods bound to this node, watched on the API server (kube-runtime) by a [`NodePodsWatch`] the mirror pods share |
//! | [`ChannelSource`] | pods handed over in process by an integrator |

pub(crate) mod api;
mod channel;
mod config;
mod file;
mod http;

pub use api::{ApiServerSource, NodePodsWatch};
pub use channel::ChannelSource;
pub use config::{CONFIG_HASH_ANNOTATION, CONFIG_SOURCE_ANNOTATION, Merger, PodConfig, PodUpdate};
pub use file::{Diagnostics, FileSource, FileSourceConfig};
pub use http::{HttpSource, HttpSourceConfig};
