//! The native namespaces runtime: a container runtime in Rust with no containerd. Its
//! [`runtime`] half runs pod sandboxes and containers on Linux namespaces, overlayfs and cgroups
//! behind [`node_core::RuntimeBackend`], launching every process through our own init binary
//! (`nodekit-init`); root filesystems come from an image store through
//! [`runtime::RootfsProvider`].

pub mod runtime;
