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

use node_core::RuntimeError;

/// Container root filesystems straight from the image store: the store's unpacked layers and
/// image config are what the runtime mounts and runs.
impl runtime::RootfsProvider for image::ImageStore {
    fn resolve(&self, reference: &str) -> Result<runtime::ResolvedImage, RuntimeError> {
        let record = self.get(reference).ok_or_else(|| RuntimeError::NotFound {
            kind: "image",
            id: reference.to_string(),
        })?;
        Ok(runtime::ResolvedImage {
            layer_dirs: self.layer_dirs(&record.id)?,
            config: self.config(&record.id)?,
            id: record.id,
        })
    }
}
