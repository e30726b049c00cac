//! Root tests (mounts): emptyDir shared by two containers and removed with the pod, Memory
//! emptyDir as a size-limited tmpfs, secret volumes on tmpfs, and a configMap update seen
//! atomically through a bind mount (as a container sees it).
//!
//! Each test runs on a thread with its own private mount namespace: nothing it mounts is seen by
//! the host, and everything it mounted goes away with the thread, even on panic.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use nix::mount::{MsFlags, mount, umount};
use nix::sys::statfs::{TMPFS_MAGIC, statfs};
use node_kubelet::node::volumes::{MemoryObjectStore, VolumeConfig, VolumeManager, is_mount_point};
use node_test_support::require_root;

use node_test_support::sweep::in_private_mount_ns;

fn pod(yaml: &str) -> Pod {
    serde_saphyr::from_str(yaml).unwrap()
}

fn manager(root: &Path, store: Arc<MemoryObjectStore>) -> VolumeManager {
    VolumeManager::new(
        VolumeConfig {
            root_dir: root.into(),
            node_name: "n1".into(),
            ..Default::default()
        },
        store,
    )
}

/// Bind-mounts `host` at `<container_root>/<path>` as the runtime would.
fn bind(host: &str, container_root: &Path, path: &str, read_only: bool) -> PathBuf {
    let target = container_root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(&target).unwrap();
    mount(
        Some(host),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    if read_only {
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap();
    }
    target
}

#[test]
fn empty_dir_is_shared_by_two_containers_and_removed_with_the_pod() {
    if !require_root("empty_dir_is_shared_by_two_containers_and_removed_with_the_pod") {
        return;
    }
    in_private_mount_ns(|| {
        let dir = tempfile::tempdir().unwrap();
        let vm = manager(&dir.path().join("kubelet"), Arc::default());
        let p = pod(r#"
metadata: {name: p, uid: e1}
spec:
  containers:
  - {name: writer, image: i, volumeMounts: [{name: shared, mountPath: /out}]}
  - {name: reader, image: i, volumeMounts: [{name: shared, mountPath: /in, subPath: sub, readOnly: true}]}
  volumes: [{name: shared, emptyDir: {}}]
"#);
        let volumes = vm.setup_pod(&p).unwrap();
        let spec = p.spec.as_ref().unwrap();
        let (w, r) = (dir.path().join("writer"), dir.path().join("reader"));
        let wm = vm
            .container_mounts(&p, &spec.containers[0], &volumes)
            .unwrap();
        let rm = vm
            .container_mounts(&p, &spec.containers[1], &volumes)
            .unwrap();
        let wout = bind(&wm[0].host_path, &w, &wm[0].container_path, wm[0].readonly);
        let rin = bind(&rm[0].host_path, &r, &rm[0].container_path, rm[0].readonly);

        std::fs::write(wout.join("sub/hello"), "from writer").unwrap();
        assert_eq!(
            std::fs::read_to_string(rin.join("hello")).unwrap(),
            "from writer"
        );
        let denied = std::fs::write(rin.join("nope"), "x").unwrap_err();
        assert_eq!(
            denied.raw_os_error(),
            Some(libc::EROFS),
            "reader mount is read-only"
        );

        // the containers are gone (the runtime unmounts), then the pod's volumes go
        umount(&wout).unwrap();
        umount(&rin).unwrap();
        let host = volumes["shared"].host_path.clone();
        vm.teardown_pod("e1").unwrap();
        assert!(!host.exists());
        assert!(!dir.path().join("kubelet/pods/e1").exists());
    });
}

#[test]
fn memory_empty_dir_is_a_size_limited_tmpfs_unmounted_on_teardown() {
    if !require_root("memory_empty_dir_is_a_size_limited_tmpfs_unmounted_on_teardown") {
        return;
    }
    in_private_mount_ns(|| {
        let dir = tempfile::tempdir().unwrap();
        let vm = manager(&dir.path().join("kubelet"), Arc::default());
        let p = pod(
            "metadata: {name: p, uid: m1}\nspec:\n  containers: [{name: c, image: i}]\n  volumes: [{name: ram, emptyDir: {medium: Memory, sizeLimit: 4Mi}}]\n",
        );
        let v = vm.setup_pod(&p).unwrap();
        let path = v["ram"].host_path.clone();
        assert!(v["ram"].tmpfs);
        assert!(is_mount_point(&path));
        let st = statfs(&path).unwrap();
        assert_eq!(st.filesystem_type(), TMPFS_MAGIC);
        assert_eq!(st.blocks() * st.block_size() as u64, 4 << 20, "sizeLimit");
        let too_big = std::fs::write(path.join("big"), vec![0u8; 5 << 20]).unwrap_err();
        assert_eq!(too_big.raw_os_error(), Some(libc::ENOSPC));
        // a second setup (pod update) does not stack another tmpfs
        vm.setup_pod(&p).unwrap();
        let mounts = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
        let count = mounts
            .lines()
            .filter(|l| l.contains(&*path.to_string_lossy()))
            .count();
        assert_eq!(count, 1);

        vm.teardown_pod("m1").unwrap();
        assert!(!is_mount_point(&path));
        assert!(!path.exists());
    });
}

#[test]
fn secret_volumes_are_tmpfs() {
    if !require_root("secret_volumes_are_tmpfs") {
        return;
    }
    in_private_mount_ns(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryObjectStore::default());
        store.put_secret(Secret {
            metadata: ObjectMeta {
                name: Some("creds".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            data: Some([("password".to_string(), ByteString(b"s3cret".to_vec()))].into()),
            ..Default::default()
        });
        let vm = manager(&dir.path().join("kubelet"), store);
        let p = pod(r#"
metadata: {name: p, uid: s1}
spec:
  containers: [{name: c, image: i}]
  volumes:
  - {name: creds, secret: {secretName: creds}}
  - name: both
    projected:
      sources:
      - secret: {name: creds, items: [{key: password, path: pw}]}
      - downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}
"#);
        let v = vm.setup_pod(&p).unwrap();
        for name in ["creds", "both"] {
            let path = &v[name].host_path;
            assert!(v[name].tmpfs, "{name}");
            assert_eq!(
                statfs(path).unwrap().filesystem_type(),
                TMPFS_MAGIC,
                "{name}"
            );
        }
        let pw = v["creds"].host_path.join("password");
        assert_eq!(std::fs::read(&pw).unwrap(), b"s3cret");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(
            std::fs::read(v["both"].host_path.join("pw")).unwrap(),
            b"s3cret"
        );
        assert_eq!(
            std::fs::read_to_string(v["both"].host_path.join("name")).unwrap(),
            "p"
        );

        vm.teardown_pod("s1").unwrap();
        assert!(!is_mount_point(&v["creds"].host_path));
        assert!(!dir.path().join("kubelet/pods/s1").exists());
    });
}

#[test]
fn config_map_update_appears_atomically_in_the_mounted_file() {
    if !require_root("config_map_update_appears_atomically_in_the_mounted_file") {
        return;
    }
    in_private_mount_ns(|| {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(MemoryObjectStore::default());
        let cm = |v: &str| ConfigMap {
            metadata: ObjectMeta {
                name: Some("cfg".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            data: Some([("app.conf".to_string(), v.to_string())].into()),
            ..Default::default()
        };
        let content =
            |generation_no: u32| format!("generation={generation_no}\n{}", "x".repeat(64 * 1024));
        store.put_config_map(cm(&content(0)));
        let vm = manager(&dir.path().join("kubelet"), store.clone());
        let p = pod(r#"
metadata: {name: p, uid: c1}
spec:
  containers: [{name: c, image: i, volumeMounts: [{name: cfg, mountPath: /etc/app}]}]
  volumes: [{name: cfg, configMap: {name: cfg}}]
"#);
        let v = vm.setup_pod(&p).unwrap();
        let m = vm
            .container_mounts(&p, &p.spec.as_ref().unwrap().containers[0], &v)
            .unwrap();
        assert!(m[0].readonly);
        let etc_app = bind(
            &m[0].host_path,
            &dir.path().join("ctr"),
            &m[0].container_path,
            true,
        );
        let file = etc_app.join("app.conf");

        // set once the last update is in: the reader's next read starts after it and is its last
        let updated = Arc::new(AtomicBool::new(false));
        let (max_gen, reads) = std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let (mut max_gen, mut reads) = (0u32, 0u64);
                loop {
                    let last = updated.load(Ordering::SeqCst);
                    let text = std::fs::read_to_string(&file).expect("never missing");
                    let generation_no: u32 = text
                        .strip_prefix("generation=")
                        .and_then(|t| t.split('\n').next())
                        .and_then(|g| g.parse().ok())
                        .expect("a whole header");
                    assert_eq!(text, content(generation_no), "never partial");
                    assert!(generation_no >= max_gen, "never goes back");
                    max_gen = generation_no;
                    reads += 1;
                    if last {
                        break;
                    }
                }
                (max_gen, reads)
            });
            for generation_no in 1..=50 {
                store.put_config_map(cm(&content(generation_no)));
                vm.setup_pod(&p).unwrap();
            }
            updated.store(true, Ordering::SeqCst);
            reader.join().unwrap()
        });
        assert_eq!(
            max_gen, 50,
            "the last update is seen through the mount ({reads} reads)"
        );
        umount(&etc_app).unwrap();
        vm.teardown_pod("c1").unwrap();
    });
}
