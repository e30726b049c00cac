//! The native namespaces runtime: a container runtime in Rust with no containerd.
//!
//! - [`image`] pulls, stores and safely unpacks OCI images (content store by digest, shared
//!   layers, overlayfs root filesystems) behind [`node_core::ImageBackend`].
//! - [`runtime`] runs pod sandboxes and containers on Linux namespaces, overlayfs and cgroups
//!   behind [`node_core::RuntimeBackend`], launching every process through our own init binary
//!   (`nodekit-init`); root filesystems come from an image store through
//!   [`runtime::RootfsProvider`].

pub mod image;
pub mod runtime;
