//! OCI layout imports into the native image store (a directory and a tar archive of one), image
//! names and removal: a tag that is one of several names only drops that name, the last name
//! removes the image, and layers still used by another image stay. Runs as any user; needs
//! busybox-static for the test image.

mod common;

use std::path::Path;

use common::image_store as store;
use node_cri::native::image::ImageError;
use node_test_support::{TestImage, require_path};

fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

#[tokio::test]
async fn imports_a_layout_directory_and_archive() {
    if !require_path(
        "imports_a_layout_directory_and_archive",
        node_test_support::image::BUSYBOX,
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::busybox()
        .file("/etc/motd", "hello\n", 0o644)
        .build()
        .unwrap();
    let layout = tmp.path().join("layout");
    img.write_oci_layout(&layout, "latest").unwrap();
    let s = store(&tmp.path().join("store"));

    let rec = s
        .import_oci_layout(&layout, Some("registry.local/app:1"))
        .await
        .unwrap();
    assert_eq!(rec.id, img.config.digest);
    assert_eq!(rec.repo_tags, vec!["registry.local/app:1".to_string()]);
    assert_eq!(
        rec.repo_digests,
        vec![format!("registry.local/app@{}", img.digest())]
    );
    assert_eq!(
        std::fs::read(s.layer_dirs(&rec.id).unwrap()[0].join("etc/motd")).unwrap(),
        b"hello\n"
    );
    assert!(s.get("registry.local/app:1").is_some());

    // An archive of the layout, without a tag: the annotation `latest` is not a full reference,
    // so the image is known by its id only (and keeps the name it already had).
    let archive = tmp.path().join("layout.tar");
    tar_dir(&layout, &archive);
    let s2 = store(&tmp.path().join("store2"));
    let rec2 = s2.import_oci_layout(&archive, None).await.unwrap();
    assert_eq!(rec2.id, img.config.digest);
    assert!(rec2.repo_tags.is_empty());
    assert_eq!(s2.get(&img.config.digest).unwrap().id, rec2.id);
    assert!(
        s2.layer_dirs(&rec2.id).unwrap()[0]
            .join("bin/busybox")
            .is_file()
    );

    // A full reference in the annotation names the image.
    let named = tmp.path().join("named");
    img.write_oci_layout(&named, "registry.local/named:2")
        .unwrap();
    let rec3 = s2.import_oci_layout(&named, None).await.unwrap();
    assert_eq!(rec3.repo_tags, vec!["registry.local/named:2".to_string()]);

    // After a restart.
    drop(s2);
    let s2 = store(&tmp.path().join("store2"));
    assert_eq!(
        s2.get("registry.local/named:2").map(|r| r.id),
        Some(img.config.digest.clone())
    );
}

#[tokio::test]
async fn a_corrupted_layout_blob_is_refused() {
    if !require_path(
        "a_corrupted_layout_blob_is_refused",
        node_test_support::image::BUSYBOX,
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::busybox().build().unwrap();
    let layout = tmp.path().join("layout");
    img.write_oci_layout(&layout, "latest").unwrap();
    let blob = layout
        .join("blobs/sha256")
        .join(img.layers[0].digest.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 0x55;
    std::fs::write(&blob, bytes).unwrap();
    let s = store(&tmp.path().join("store"));
    let err = s
        .import_oci_layout(&layout, Some("registry.local/bad:1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { expected, .. } if *expected == img.layers[0].digest),
        "{err:?}"
    );
    assert!(s.list().is_empty());
    assert!(!s.content().contains(&img.layers[0].digest));

    let err = s
        .import_oci_layout(&tmp.path().join("nothing"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Io { .. }), "{err:?}");
}

#[tokio::test]
async fn remove_drops_names_then_images_and_keeps_shared_layers() {
    if !require_path(
        "remove_drops_names_then_images_and_keeps_shared_layers",
        node_test_support::image::BUSYBOX,
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = TestImage::busybox().cmd(&["true"]).build().unwrap();
    let b = TestImage::busybox().cmd(&["false"]).build().unwrap();
    let extra = TestImage::busybox()
        .file("/only-c", "c", 0o644)
        .build()
        .unwrap();
    for (img, dir) in [(&a, "a"), (&b, "b"), (&extra, "c")] {
        img.write_oci_layout(&tmp.path().join(dir), "latest")
            .unwrap();
    }
    let s = store(&tmp.path().join("store"));
    let ra = s
        .import_oci_layout(&tmp.path().join("a"), Some("registry.local/a:1"))
        .await
        .unwrap();
    s.import_oci_layout(&tmp.path().join("a"), Some("registry.local/a:2"))
        .await
        .unwrap();
    let rb = s
        .import_oci_layout(&tmp.path().join("b"), Some("registry.local/b:1"))
        .await
        .unwrap();
    let rc = s
        .import_oci_layout(&tmp.path().join("c"), Some("registry.local/c:1"))
        .await
        .unwrap();
    let ra = s.get(&ra.id).unwrap();
    assert_eq!(ra.repo_tags.len(), 2, "{:?}", ra.repo_tags);
    let shared = s.layer_dirs(&ra.id).unwrap()[0].clone();
    assert_eq!(shared, s.layer_dirs(&rb.id).unwrap()[0]);
    let only_c = s.layer_dirs(&rc.id).unwrap()[0].clone();

    // A tag moved to another image leaves the first one.
    s.import_oci_layout(&tmp.path().join("b"), Some("registry.local/a:2"))
        .await
        .unwrap();
    assert_eq!(s.get("registry.local/a:2").unwrap().id, rb.id);
    assert_eq!(
        s.get(&ra.id).unwrap().repo_tags,
        vec!["registry.local/a:1".to_string()]
    );

    // One name of several: only the name goes.
    s.remove("registry.local/a:2").unwrap();
    assert!(s.get("registry.local/a:2").is_none());
    assert_eq!(
        s.get(&rb.id).unwrap().repo_tags,
        vec!["registry.local/b:1".to_string()]
    );
    // The last tag: the image goes, its layer stays for b.
    s.remove("registry.local/a:1").unwrap();
    assert!(s.get(&ra.id).is_none());
    assert!(
        shared.join("bin/busybox").is_file(),
        "the layer shared with b stays"
    );
    assert!(
        s.content().contains(&rb.id) && !s.content().contains(&ra.id),
        "a's config blob is gone, b's stays"
    );
    // By id: c and its own layer go.
    s.remove(&rc.id).unwrap();
    assert!(!only_c.exists());
    assert!(matches!(
        s.remove("registry.local/a:1"),
        Err(ImageError::NotFound { .. })
    ));
    // refs.json follows.
    let refs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tmp.path().join("store/refs.json")).unwrap())
            .unwrap();
    assert_eq!(
        refs.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<Vec<_>>(),
        vec![
            "registry.local/b:1".to_string(),
            format!("registry.local/b@{}", b.digest())
        ]
    );
}
