//! The native namespaces runtime: a container runtime of our own on Linux namespaces, cgroups and
//! overlayfs, with no containerd. [`image`] pulls, stores and unpacks OCI images.

pub mod image;
