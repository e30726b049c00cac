//! Root test (require_root): container root filesystems as overlayfs mounts of unpacked layers.
//!
//! Each test runs on a thread of its own that first enters a private mount namespace
//! (`unshare(CLONE_NEWNS)` + recursive private propagation): nothing it mounts is ever visible on
//! the host, and the namespace (with any mount left) disappears with the thread, even on panic.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use node_cri::native::image::{
    ImageStore, ImageStoreConfig, OverlayMount, mount_overlay, unmount_overlay,
};
use node_test_support::{TestImage, require_path, require_root};

/// Run `f` on a thread inside a new private mount namespace; its panics are re-raised here.
fn in_private_mount_ns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / private in the new mount namespace");
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn is_mounted(target: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    let t = target.display().to_string();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(t.as_str()))
}

/// A store with busybox (bottom) and a layer on top that whites out `/etc/group`, makes `/srv`
/// opaque and adds files; returns the store's tempdir and the lower dirs, bottom first.
async fn two_layers() -> (tempfile::TempDir, Vec<PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let base = TestImage::busybox()
        .file("/srv/old", "o", 0o644)
        .build()
        .unwrap();
    let top = TestImage::empty()
        .file("/etc/.wh.group", "", 0o644)
        .file("/srv/.wh..wh..opq", "", 0o644)
        .file("/srv/new", "n", 0o644)
        .file("/etc/motd", "top\n", 0o644)
        .build()
        .unwrap();
    base.write_oci_layout(&tmp.path().join("base"), "latest")
        .unwrap();
    top.write_oci_layout(&tmp.path().join("top"), "latest")
        .unwrap();
    let store = ImageStore::new(ImageStoreConfig {
        root: tmp.path().join("store"),
        architecture: "amd64".into(),
        ..Default::default()
    })
    .unwrap();
    let b = store
        .import_oci_layout(&tmp.path().join("base"), Some("registry.local/base:1"))
        .await
        .unwrap();
    let t = store
        .import_oci_layout(&tmp.path().join("top"), Some("registry.local/top:1"))
        .await
        .unwrap();
    let mut lowers = store.layer_dirs(&b.id).unwrap();
    lowers.extend(store.layer_dirs(&t.id).unwrap());
    (tmp, lowers)
}

fn dirs(tmp: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (upper, work, rootfs) = (tmp.join("upper"), tmp.join("work"), tmp.join("rootfs"));
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d).unwrap();
    }
    (upper, work, rootfs)
}

#[tokio::test]
async fn layers_mount_as_an_overlay_rootfs() {
    if !require_root("layers_mount_as_an_overlay_rootfs")
        || !require_path(
            "layers_mount_as_an_overlay_rootfs",
            node_test_support::image::BUSYBOX,
        )
    {
        return;
    }
    let (tmp, lowers) = two_layers().await;
    let base_dir = tmp.path().to_path_buf();
    let lowers2 = lowers.clone();
    in_private_mount_ns(move || {
        let (upper, work, rootfs) = dirs(&base_dir);
        let m = OverlayMount::mount(&lowers2, &upper, &work, &rootfs).unwrap();
        assert!(is_mounted(&rootfs));
        // The merged view: busybox below, the top layer over it.
        assert!(rootfs.join("bin/busybox").is_file());
        assert!(rootfs.join("etc/passwd").is_file());
        assert_eq!(std::fs::read(rootfs.join("etc/motd")).unwrap(), b"top\n");
        assert!(
            !rootfs.join("etc/group").exists(),
            "the top layer's whiteout hides /etc/group"
        );
        assert!(
            !rootfs.join("srv/old").exists(),
            "the top layer's opaque /srv hides the lower /srv/old"
        );
        assert_eq!(std::fs::read(rootfs.join("srv/new")).unwrap(), b"n");
        // Writes land in the upper dir, deletions become whiteouts there; lowers stay intact.
        std::fs::write(rootfs.join("tmp/written"), b"w").unwrap();
        std::fs::remove_file(rootfs.join("bin/sh")).unwrap();
        assert_eq!(std::fs::read(upper.join("tmp/written")).unwrap(), b"w");
        let wh = std::fs::symlink_metadata(upper.join("bin/sh")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert!(
            std::fs::symlink_metadata(lowers2[0].join("bin/sh")).is_ok(),
            "the lower layer is untouched"
        );
        assert!(!lowers2[0].join("tmp/written").exists());
        m.unmount().unwrap();
        assert!(!is_mounted(&rootfs));
        assert!(!rootfs.join("bin/busybox").exists());
    });
    // The host never saw the mount.
    assert!(!tmp.path().join("rootfs/bin").exists());
}

#[tokio::test]
async fn the_guard_unmounts_on_panic() {
    if !require_root("the_guard_unmounts_on_panic")
        || !require_path(
            "the_guard_unmounts_on_panic",
            node_test_support::image::BUSYBOX,
        )
    {
        return;
    }
    let (tmp, lowers) = two_layers().await;
    let base_dir = tmp.path().to_path_buf();
    in_private_mount_ns(move || {
        let (upper, work, rootfs) = dirs(&base_dir);
        let r = rootfs.clone();
        let res = std::panic::catch_unwind(move || {
            let _m = OverlayMount::mount(&lowers, &upper, &work, &r).unwrap();
            assert!(is_mounted(&r));
            panic!("test panic while mounted");
        });
        assert!(res.is_err());
        assert!(!is_mounted(&rootfs), "dropped during unwinding: unmounted");

        // The plain functions too, and a clear error for bad input.
        let (upper, work) = (base_dir.join("upper"), base_dir.join("work"));
        let lowers = vec![
            base_dir
                .join("store/layers/sha256")
                .read_dir()
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path(),
        ];
        mount_overlay(&lowers, &upper, &work, &rootfs).unwrap();
        assert!(is_mounted(&rootfs));
        unmount_overlay(&rootfs).unwrap();
        assert!(!is_mounted(&rootfs));
        let err = mount_overlay(&[], &upper, &work, &rootfs).unwrap_err();
        assert!(err.to_string().contains("no lower"), "{err}");
        let err = mount_overlay(&[base_dir.join("a:b")], &upper, &work, &rootfs).unwrap_err();
        assert!(err.to_string().contains("a:b"), "{err}");
    });
}
