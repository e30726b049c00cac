//! Pulls of the native image store from a real docker-registry on 127.0.0.1 (plain HTTP, the
//! containerd default for loopback registries): by tag, by digest, through an image index, through
//! a mirror configured in `certs.d/<host>/hosts.toml`; typed errors for a missing image, a bad
//! reference and a corrupted blob. Layer unpacking writes whiteouts only when layers have them, so
//! these tests run as any user, but need `docker-registry` and busybox-static.

mod common;

use common::image_store as store;
use node_core::{ImageBackend, RuntimeError, cri};
use node_cri::native::image::{ImageError, ImageStore, ImageStoreConfig};
use node_test_support::{LocalRegistry, TestImage, require_command, require_path};

fn ready(test: &str) -> bool {
    require_command(test, "docker-registry")
        && require_path(test, node_test_support::image::BUSYBOX)
}

#[tokio::test]
async fn pulls_by_tag_and_by_digest_and_finds_them_after_a_restart() {
    if !ready("pulls_by_tag_and_by_digest_and_finds_them_after_a_restart") {
        return;
    }
    let reg = LocalRegistry::start().unwrap();
    let img = TestImage::busybox()
        .file("/srv/hello.txt", "hi\n", 0o644)
        .build()
        .unwrap();
    let reference = reg.push(&img, "nodekit/busybox", "1.0").unwrap();
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path());

    let rec = s.pull(&reference, None).await.unwrap();
    assert_eq!(rec.id, img.config.digest);
    assert_eq!(rec.repo_tags, vec![reference.clone()]);
    let by_digest = format!("{}/nodekit/busybox@{}", reg.host(), img.digest());
    assert_eq!(rec.repo_digests, vec![by_digest.clone()]);
    assert_eq!(rec.manifest_digest, img.digest());
    assert_eq!(rec.uid, None);
    assert!(rec.size >= img.layers[0].bytes.len() as u64);
    let dirs = s.layer_dirs(&rec.id).unwrap();
    assert_eq!(dirs.len(), 1);
    assert!(dirs[0].join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read(dirs[0].join("srv/hello.txt")).unwrap(),
        b"hi\n"
    );
    let cfg = s.config(&rec.id).unwrap();
    assert_eq!(
        cfg.config().as_ref().unwrap().cmd().as_ref().unwrap(),
        &vec!["sh".to_string()]
    );
    // The blobs are in the content store under their digests.
    for d in [
        &img.manifest.digest,
        &img.config.digest,
        &img.layers[0].digest,
    ] {
        assert!(s.content().contains(d), "{d} stored");
    }

    // By digest: the same image, its blobs not downloaded again.
    let again = s.pull(&by_digest, None).await.unwrap();
    assert_eq!(again.id, rec.id);
    assert_eq!(s.list().len(), 1);

    // A new process finds everything by tag, digest reference and id.
    drop(s);
    let s = store(root.path());
    for key in [
        reference.as_str(),
        by_digest.as_str(),
        rec.id.as_str(),
        rec.id.trim_start_matches("sha256:"),
    ] {
        assert_eq!(
            s.get(key).map(|r| r.id),
            Some(rec.id.clone()),
            "lookup by {key}"
        );
    }
    assert!(
        s.layer_dirs(&rec.id).unwrap()[0]
            .join("bin/busybox")
            .is_file()
    );
}

#[tokio::test]
async fn an_image_index_resolves_to_our_platform() {
    if !ready("an_image_index_resolves_to_our_platform") {
        return;
    }
    let reg = LocalRegistry::start().unwrap();
    let amd64 = TestImage::busybox()
        .file("/arch", "amd64", 0o644)
        .build()
        .unwrap();
    let arm64 = TestImage::busybox()
        .file("/arch", "arm64", 0o644)
        .build()
        .unwrap();
    let (reference, index) = reg
        .push_index(
            &[(&arm64, "linux/arm64/v8"), (&amd64, "linux/amd64")],
            "nodekit/multi",
            "1",
        )
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path());
    let rec = s.pull(&reference, None).await.unwrap();
    assert_eq!(
        rec.id, amd64.config.digest,
        "the linux/amd64 image was chosen"
    );
    assert_eq!(rec.manifest_digest, amd64.digest());
    assert_eq!(
        rec.repo_digests,
        vec![format!("{}/nodekit/multi@{}", reg.host(), index.digest)],
        "the repo digest is the index's"
    );
    assert_eq!(
        std::fs::read(s.layer_dirs(&rec.id).unwrap()[0].join("arch")).unwrap(),
        b"amd64"
    );
    assert!(s.content().contains(&index.digest));

    let other = ImageStore::new(ImageStoreConfig {
        root: root.path().join("s390x"),
        architecture: "s390x".into(),
        ..Default::default()
    })
    .unwrap();
    match other.pull(&reference, None).await {
        Err(ImageError::NoMatchingPlatform {
            platform,
            available,
            ..
        }) => {
            assert_eq!(platform, "linux/s390x");
            assert!(
                available.contains("linux/arm64/v8") && available.contains("linux/amd64"),
                "{available}"
            );
        }
        other => panic!("expected NoMatchingPlatform, got {other:?}"),
    }
}

#[tokio::test]
async fn a_mirror_from_hosts_toml_serves_another_registry_name() {
    if !ready("a_mirror_from_hosts_toml_serves_another_registry_name") {
        return;
    }
    let reg = LocalRegistry::start().unwrap();
    let img = TestImage::busybox().build().unwrap();
    reg.push(&img, "nodekit/busybox", "1.0").unwrap();
    let root = tempfile::tempdir().unwrap();
    let certs = root.path().join("certs.d");
    // registry.invalid never resolves: only the mirror can serve it.
    std::fs::create_dir_all(certs.join("registry.invalid")).unwrap();
    std::fs::write(
        certs.join("registry.invalid/hosts.toml"),
        format!("server = \"https://registry.invalid\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n", reg.host()),
    )
    .unwrap();
    let s = ImageStore::new(ImageStoreConfig {
        root: root.path().join("store"),
        registry_config_dir: Some(certs.clone()),
        architecture: "amd64".into(),
        ..Default::default()
    })
    .unwrap();
    let rec = s
        .pull("registry.invalid/nodekit/busybox:1.0", None)
        .await
        .unwrap();
    assert_eq!(rec.id, img.config.digest);
    assert_eq!(
        rec.repo_tags,
        vec!["registry.invalid/nodekit/busybox:1.0".to_string()]
    );
    assert_eq!(
        rec.repo_digests,
        vec![format!("registry.invalid/nodekit/busybox@{}", img.digest())]
    );

    // A mirror with only "pull" may serve digests but not resolve tags: a tag falls through to
    // the (unreachable) server and fails; the digest still comes from the mirror.
    std::fs::write(
        certs.join("registry.invalid/hosts.toml"),
        format!("server = \"https://registry.invalid\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n", reg.host()),
    )
    .unwrap();
    let s2 = ImageStore::new(ImageStoreConfig {
        root: root.path().join("store2"),
        registry_config_dir: Some(certs),
        architecture: "amd64".into(),
        ..Default::default()
    })
    .unwrap();
    let err = s2
        .pull("registry.invalid/nodekit/busybox:1.0", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Registry { .. }), "{err:?}");
    let rec = s2
        .pull(
            &format!("registry.invalid/nodekit/busybox@{}", img.digest()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(rec.id, img.config.digest);
}

#[tokio::test]
async fn missing_images_and_bad_references_give_typed_errors() {
    if !ready("missing_images_and_bad_references_give_typed_errors") {
        return;
    }
    let reg = LocalRegistry::start().unwrap();
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path());
    let missing = format!("{}/nodekit/nothing:1", reg.host());
    let err = s.pull(&missing, None).await.unwrap_err();
    assert!(
        matches!(&err, ImageError::NotFound { reference } if *reference == missing),
        "{err:?}"
    );
    let err = s.pull("Bad Reference::", None).await.unwrap_err();
    assert!(
        matches!(err, ImageError::InvalidReference { .. }),
        "{err:?}"
    );
    // An identity token (OAuth2 refresh token) is refused by name, not silently ignored.
    let auth = cri::AuthConfig {
        identity_token: "x".into(),
        ..Default::default()
    };
    let err = s.pull(&missing, Some(&auth)).await.unwrap_err();
    assert!(
        matches!(&err, ImageError::Auth { message, .. } if message.contains("identity_token")),
        "{err:?}"
    );
    // Through the CRI trait: the kubelet-facing error kinds.
    let e = ImageBackend::pull_image(
        &s,
        cri::ImageSpec {
            image: missing.clone(),
            ..Default::default()
        },
        None,
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RuntimeError::NotFound { .. }), "{e:?}");
    let e = ImageBackend::pull_image(
        &s,
        cri::ImageSpec {
            image: "::".into(),
            ..Default::default()
        },
        None,
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, RuntimeError::InvalidArgument(_)), "{e:?}");
    assert!(s.list().is_empty());
}

#[tokio::test]
async fn a_corrupted_blob_is_rejected_by_its_digest() {
    if !ready("a_corrupted_blob_is_rejected_by_its_digest") {
        return;
    }
    let reg = LocalRegistry::start().unwrap();
    let img = TestImage::busybox().build().unwrap();
    let reference = reg.push(&img, "nodekit/busybox", "bad").unwrap();
    // The registry now serves other bytes (same length) for the layer.
    let layer = &img.layers[0];
    let data = reg.blob_data_path(&layer.digest);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let root = tempfile::tempdir().unwrap();
    let s = store(root.path());
    let err = s.pull(&reference, None).await.unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { expected, .. } if *expected == layer.digest),
        "{err:?}"
    );
    assert!(
        !s.content().contains(&layer.digest),
        "the corrupted blob is not stored"
    );
    assert!(
        s.get(&reference).is_none() && s.list().is_empty(),
        "no image recorded"
    );
    let layers: Vec<_> = std::fs::read_dir(root.path().join("layers/sha256"))
        .unwrap()
        .collect();
    assert!(layers.is_empty(), "no layer unpacked");
    let ingest: Vec<_> = std::fs::read_dir(root.path().join("ingest"))
        .unwrap()
        .collect();
    assert!(ingest.is_empty(), "no temporary file left");
}

#[tokio::test]
async fn concurrent_pulls_share_one_unpacked_layer() {
    if !ready("concurrent_pulls_share_one_unpacked_layer") {
        return;
    }
    let reg = LocalRegistry::start().unwrap();
    // Same layer, different configs: two images sharing their only layer.
    let a = TestImage::busybox().cmd(&["sleep", "1"]).build().unwrap();
    let b = TestImage::busybox().cmd(&["sleep", "2"]).build().unwrap();
    assert_eq!(a.layers[0].digest, b.layers[0].digest);
    assert_ne!(a.config.digest, b.config.digest);
    let ra = reg.push(&a, "nodekit/a", "1").unwrap();
    let rb = reg.push(&b, "nodekit/b", "1").unwrap();
    let root = tempfile::tempdir().unwrap();
    let s = store(root.path());
    let (x, y, z) = tokio::join!(s.pull(&ra, None), s.pull(&rb, None), s.pull(&ra, None));
    let (x, y, z) = (x.unwrap(), y.unwrap(), z.unwrap());
    assert_eq!(x.id, z.id);
    assert_eq!(s.layer_dirs(&x.id).unwrap(), s.layer_dirs(&y.id).unwrap());
    let layers: Vec<_> = std::fs::read_dir(root.path().join("layers/sha256"))
        .unwrap()
        .collect();
    assert_eq!(layers.len(), 1, "one unpacked layer for both images");
    let tmp: Vec<_> = std::fs::read_dir(root.path().join("layers/tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "no half-extracted layer left");

    // Through the CRI trait: status, list, fs info, remove.
    let spec = |i: &str| cri::ImageSpec {
        image: i.to_string(),
        ..Default::default()
    };
    let st = s.image_status(spec(&ra), true).await.unwrap();
    assert_eq!(st.image.as_ref().unwrap().id, x.id);
    assert!(st.info["info"].contains("layerDirs"));
    assert_eq!(s.list_images(None).await.unwrap().len(), 2);
    let filtered = s
        .list_images(Some(cri::ImageFilter {
            image: Some(spec(&rb)),
        }))
        .await
        .unwrap();
    assert_eq!(
        filtered.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
        vec![y.id.clone()]
    );
    let fs = s.image_fs_info().await.unwrap();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);
    s.remove_image(spec(&ra)).await.unwrap();
    assert!(
        s.image_status(spec(&ra), false)
            .await
            .unwrap()
            .image
            .is_none()
    );
    assert!(
        s.layer_dirs(&y.id).unwrap()[0]
            .join("bin/busybox")
            .is_file(),
        "the shared layer stays for b"
    );
    s.remove_image(spec(&ra)).await.unwrap(); // absent: still fine
    s.remove_image(spec(&rb)).await.unwrap();
    let layers: Vec<_> = std::fs::read_dir(root.path().join("layers/sha256"))
        .unwrap()
        .collect();
    assert!(layers.is_empty(), "the last user removed the layer");
    assert!(s.content().list().is_empty(), "and every blob");
}
