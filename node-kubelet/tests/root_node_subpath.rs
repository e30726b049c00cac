//! Root test (mounts, in a private mount namespace of the test's own thread): a subPath is
//! bind-mounted through the descriptor that was checked, so a symlink swapped in and out of the
//! volume while the kubelet resolves it never makes the container's mount leave the volume.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Pod;
use node_kubelet::node::volumes::subpath::bind_subpath;
use node_kubelet::node::volumes::{MemoryObjectStore, VolumeConfig, VolumeError, VolumeManager};
use node_test_support::require_root;

use node_test_support::sweep::in_private_mount_ns;

#[test]
fn a_symlink_swap_cannot_make_a_subpath_escape() {
    if !require_root("a_symlink_swap_cannot_make_a_subpath_escape") {
        return;
    }
    in_private_mount_ns(|| {
        let d = tempfile::tempdir().unwrap();
        let vol = d.path().join("vol");
        let outside = d.path().join("outside");
        std::fs::create_dir_all(vol.join("real")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(vol.join("real/marker"), "inside").unwrap();
        std::fs::write(outside.join("marker"), "host secret").unwrap();
        // an attacker in the pod flips vol/swap between a directory and a symlink out of it
        let stop = Arc::new(AtomicBool::new(false));
        let flipper = {
            let (vol, outside, stop) = (vol.clone(), outside.clone(), stop.clone());
            std::thread::spawn(move || {
                let link = vol.join("swap-link");
                let _ = std::os::unix::fs::symlink(&outside, &link);
                let mut flips = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let _ = std::fs::remove_file(vol.join("swap"));
                    let _ = std::fs::remove_dir(vol.join("swap"));
                    if flips.is_multiple_of(2) {
                        let _ = std::os::unix::fs::symlink(&outside, vol.join("swap"));
                    } else {
                        let _ = std::os::unix::fs::symlink("real", vol.join("swap"));
                    }
                    flips += 1;
                }
                flips
            })
        };
        let out = std::fs::metadata(&outside).unwrap();
        let (mut mounted, mut refused, mut inside) = (0, 0, 0);
        // until both outcomes were seen (at least 400 tries, at most 20000)
        for i in 0..20_000 {
            if i >= 400 && inside > 0 && refused > 0 {
                break;
            }
            let target = d.path().join(format!("targets/{i}"));
            match bind_subpath(&vol, "swap", &target) {
                Ok(()) => {
                    mounted += 1;
                    // the real directory, or one the kubelet made when the name was briefly
                    // missing: never the outside one
                    let t = std::fs::metadata(&target).unwrap();
                    assert_ne!(
                        (t.dev(), t.ino()),
                        (out.dev(), out.ino()),
                        "mount {i} escaped"
                    );
                    let seen = std::fs::read_to_string(target.join("marker")).ok();
                    assert_ne!(seen.as_deref(), Some("host secret"), "mount {i} escaped");
                    inside += usize::from(seen.as_deref() == Some("inside"));
                    nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).unwrap();
                }
                Err(VolumeError::SubPath { .. }) => refused += 1,
                // the name vanished between two flips, or the directory opened was removed
                // before the bind (a deleted directory cannot be mounted)
                Err(VolumeError::Io { .. } | VolumeError::Mount { .. }) => {}
                Err(e) => panic!("unexpected: {e}"),
            }
        }
        stop.store(true, Ordering::Relaxed);
        let flips = flipper.join().unwrap();
        assert!(flips > 100, "the race ran ({flips} flips)");
        assert!(
            inside > 0 && refused > 0,
            "both outcomes seen: {mounted} mounted ({inside} of the real directory), {refused} refused"
        );
        assert!(!outside.join("x").exists());
    });
}

#[test]
fn subpath_mounts_go_with_the_pod() {
    if !require_root("subpath_mounts_go_with_the_pod") {
        return;
    }
    in_private_mount_ns(|| {
        let d = tempfile::tempdir().unwrap();
        let vm = VolumeManager::new(
            VolumeConfig {
                root_dir: d.path().to_path_buf(),
                ..Default::default()
            },
            Arc::new(MemoryObjectStore::default()),
        );
        let p: Pod = serde_saphyr::from_str(
            r#"
metadata: {name: p, uid: s1}
spec:
  containers:
  - name: c
    image: i
    volumeMounts: [{name: scratch, mountPath: /logs, subPath: logs/app, readOnly: true}]
  volumes: [{name: scratch, emptyDir: {}}]
"#,
        )
        .unwrap();
        let v = vm.setup_pod(&p).unwrap();
        let m = vm
            .container_mounts(&p, &p.spec.as_ref().unwrap().containers[0], &v)
            .unwrap();
        let target = Path::new(&m[0].host_path);
        assert_eq!(target, d.path().join("pods/s1/volume-subpaths/scratch/c/0"));
        assert!(m[0].readonly);
        let inside = v["scratch"].host_path.join("logs/app");
        assert!(inside.is_dir(), "subPath created");
        std::fs::write(target.join("x.log"), "line").unwrap();
        assert_eq!(
            std::fs::read_to_string(inside.join("x.log")).unwrap(),
            "line"
        );
        // the same mounts again (a container restart) reuse the bind
        let again = vm
            .container_mounts(&p, &p.spec.as_ref().unwrap().containers[0], &v)
            .unwrap();
        assert_eq!(again, m);
        vm.teardown_pod("s1").unwrap();
        assert!(!d.path().join("pods/s1").exists());
    });
}
