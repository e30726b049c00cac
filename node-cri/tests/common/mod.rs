//! Helpers shared by node-cri's integration tests, included by every test file with `mod common;`:
//! `native` (the native runtime's root-test fixture), `pod_fixture` (runtime-neutral CRI configs
//! and waits, also used against containerd), `server` (a `CriServer` on a temporary socket) and
//! [`image_store`].
#![allow(dead_code)] // every test file uses a part of it

pub mod native;
pub mod pod_fixture;
pub mod server;

/// An image store of amd64 images under `root`.
pub fn image_store(root: &std::path::Path) -> node_cri::native::image::ImageStore {
    node_cri::native::image::ImageStore::new(node_cri::native::image::ImageStoreConfig {
        root: root.to_path_buf(),
        architecture: "amd64".into(),
        ..Default::default()
    })
    .unwrap()
}
