//! Volume sources without root: configMap, secret payloads, downwardAPI, hostPath type checks,
//! container mounts with subPath, and the atomic update of a configMap volume under a reader.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, HostPathVolumeSource, Pod};
use node_kubelet::node::volumes::atomic_writer::SUPERSEDED_GRACE;
use node_kubelet::node::volumes::{
    MemoryObjectStore, VolumeConfig, VolumeError, VolumeManager, check_host_path,
};

fn pod(yaml: &str) -> Pod {
    serde_saphyr::from_str(yaml).unwrap()
}

fn config_map(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn manager(root: &std::path::Path, store: Arc<MemoryObjectStore>) -> VolumeManager {
    VolumeManager::new(
        VolumeConfig {
            root_dir: root.into(),
            node_name: "n1".into(),
            allocatable_cpu_milli: 2000,
            allocatable_memory_bytes: 4 << 30,
        },
        store,
    )
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn config_map_volume_honours_items_and_modes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjectStore::default());
    store.put_config_map(config_map("cfg", &[("a", "alpha"), ("b", "beta")]));
    let vm = manager(dir.path(), store);
    let p = pod(r#"
metadata: {name: p, namespace: default, uid: u1}
spec:
  containers: [{name: c, image: i}]
  volumes:
  - name: all
    configMap: {name: cfg}
  - name: some
    configMap:
      name: cfg
      defaultMode: 384 # 0600 (serde-saphyr reads YAML 1.2: 0600 is not octal there)
      items: [{key: a, path: dir/x, mode: 256}, {key: b, path: y}]
"#);
    let v = vm.setup_pod(&p).unwrap();
    let all = &v["all"].host_path;
    assert!(all.ends_with("pods/u1/volumes/kubernetes.io~configmap/all"));
    assert_eq!(std::fs::read_to_string(all.join("a")).unwrap(), "alpha");
    assert_eq!(mode(&all.join("a")), 0o644, "Kubernetes' default mode");
    let some = &v["some"].host_path;
    assert_eq!(
        std::fs::read_to_string(some.join("dir/x")).unwrap(),
        "alpha"
    );
    assert_eq!(mode(&some.join("dir/x")), 0o400);
    assert_eq!(mode(&some.join("y")), 0o600);
    assert!(!some.join("a").exists());
    assert!(v["some"].read_only);
}

#[test]
fn missing_objects_and_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjectStore::default());
    store.put_config_map(config_map("cfg", &[("a", "alpha")]));
    let vm = manager(dir.path(), store);
    let missing = pod(
        "metadata: {name: p, uid: u2}\nspec:\n  containers: [{name: c, image: i}]\n  volumes: [{name: v, configMap: {name: nope}}]\n",
    );
    let e = vm.setup_pod(&missing).unwrap_err();
    assert_eq!(e.to_string(), "volume v: configmap default/nope not found");
    let optional = pod(
        "metadata: {name: p, uid: u3}\nspec:\n  containers: [{name: c, image: i}]\n  volumes: [{name: v, secret: {secretName: nope, optional: true}}]\n",
    );
    // an optional missing secret gives an empty volume (on tmpfs, which needs root: only the
    // error path is checked without root)
    if unsafe { libc::geteuid() } != 0 {
        assert!(matches!(
            vm.setup_pod(&optional),
            Err(VolumeError::Mount { .. })
        ));
    }
    let key = pod(
        "metadata: {name: p, uid: u4}\nspec:\n  containers: [{name: c, image: i}]\n  volumes: [{name: v, configMap: {name: cfg, items: [{key: zz, path: z}]}}]\n",
    );
    let e = vm.setup_pod(&key).unwrap_err();
    assert_eq!(
        e.to_string(),
        "volume v: key \"zz\" not found in configmap cfg"
    );
}

#[test]
fn downward_api_files() {
    let dir = tempfile::tempdir().unwrap();
    let vm = manager(dir.path(), Arc::default());
    let p = pod(r#"
metadata: {name: web, namespace: shop, uid: u5, labels: {app: web, tier: "front end"}}
spec:
  containers:
  - {name: c, image: i, resources: {limits: {memory: 64Mi}, requests: {cpu: 250m}}}
  volumes:
  - name: info
    downwardAPI:
      items:
      - {path: name, fieldRef: {fieldPath: metadata.name}}
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: app, fieldRef: {fieldPath: "metadata.labels['app']"}}
      - {path: node, fieldRef: {fieldPath: spec.nodeName}}
      - {path: mem, resourceFieldRef: {containerName: c, resource: limits.memory, divisor: 1Mi}}
      - {path: cpu-req, resourceFieldRef: {containerName: c, resource: requests.cpu, divisor: 1m}}
      - {path: cpu-lim, resourceFieldRef: {containerName: c, resource: limits.cpu}}
"#);
    let v = vm.setup_pod(&p).unwrap();
    let d = &v["info"].host_path;
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    assert_eq!(read("name"), "web");
    assert_eq!(read("labels"), "app=\"web\"\ntier=\"front end\"\n");
    assert_eq!(read("app"), "web");
    assert_eq!(read("node"), "n1");
    assert_eq!(read("mem"), "64");
    assert_eq!(read("cpu-req"), "250");
    assert_eq!(read("cpu-lim"), "2", "no limit: node allocatable");
}

#[test]
fn host_path_type_checks() {
    let dir = tempfile::tempdir().unwrap();
    let hp = |path: std::path::PathBuf, t: &str| HostPathVolumeSource {
        path: path.to_string_lossy().into_owned(),
        type_: Some(t.into()),
    };
    let created = dir.path().join("made/deep");
    check_host_path("v", &hp(created.clone(), "DirectoryOrCreate")).unwrap();
    assert!(created.is_dir());
    let file = dir.path().join("f");
    check_host_path("v", &hp(file.clone(), "FileOrCreate")).unwrap();
    assert!(file.is_file());
    assert_eq!(mode(&file), 0o644);
    check_host_path("v", &hp(file.clone(), "File")).unwrap();
    let sock = dir.path().join("s.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    check_host_path("v", &hp(sock.clone(), "Socket")).unwrap();
    check_host_path("v", &hp("/dev/null".into(), "CharDevice")).unwrap();
    for (path, t, expected) in [
        (file.clone(), "Directory", "directory"),
        (created.clone(), "File", "file"),
        (file.clone(), "DirectoryOrCreate", "directory"),
        (created.clone(), "FileOrCreate", "file"),
        (file.clone(), "Socket", "socket"),
        ("/dev/null".into(), "BlockDevice", "block device"),
        (dir.path().join("absent"), "Directory", "directory"),
    ] {
        let e = check_host_path("v", &hp(path.clone(), t)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "volume v: hostPath type check failed: {} is not a {expected}",
                path.display()
            ),
            "{t}"
        );
    }
    let e = check_host_path("v", &hp(file, "Fancy")).unwrap_err();
    assert!(e.to_string().contains("unknown type"), "{e}");
}

#[test]
fn container_mounts_read_only_and_a_refused_subpath() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjectStore::default());
    store.put_config_map(config_map("cfg", &[("a", "alpha")]));
    let vm = manager(dir.path(), store);
    let p = pod(r#"
metadata: {name: p, uid: u6}
spec:
  containers:
  - name: c
    image: i
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    - {name: scratch, mountPath: /logs, readOnly: true}
    - {name: cfg, mountPath: /etc/cfg}
  - name: bad
    image: i
    volumeMounts: [{name: scratch, mountPath: /x, subPath: ../../etc}]
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: cfg, configMap: {name: cfg}}
"#);
    let v = vm.setup_pod(&p).unwrap();
    let spec = p.spec.as_ref().unwrap();
    let m = vm.container_mounts(&p, &spec.containers[0], &v).unwrap();
    assert_eq!(m.len(), 3);
    assert_eq!(m[0].container_path, "/scratch");
    assert!(!m[0].readonly);
    assert_eq!(m[1].host_path, m[0].host_path);
    assert!(m[1].readonly);
    assert!(m[2].readonly, "configMap volumes are read-only");
    let e = vm
        .container_mounts(&p, &spec.containers[1], &v)
        .unwrap_err();
    assert!(matches!(e, VolumeError::SubPath { .. }), "{e}");
    vm.teardown_pod("u6").unwrap();
    assert!(!dir.path().join("pods/u6").exists());
}

#[test]
fn config_map_update_is_atomic_for_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MemoryObjectStore::default());
    let big = |c: char| c.to_string().repeat(256 * 1024);
    store.put_config_map(config_map("cfg", &[("key", &big('A'))]));
    let vm = manager(dir.path(), store.clone());
    let p = pod(
        "metadata: {name: p, uid: u7}\nspec:\n  containers: [{name: c, image: i}]\n  volumes: [{name: cfg, configMap: {name: cfg}}]\n",
    );
    let v = vm.setup_pod(&p).unwrap();
    let file = v["cfg"].host_path.join("key");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let file = file.clone();
        std::thread::spawn(move || {
            let (mut reads, mut seen_b) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let text = std::fs::read_to_string(&file).expect("the file is always there");
                assert_eq!(text.len(), 256 * 1024, "never a partial file");
                let first = text.as_bytes()[0];
                assert!(text.bytes().all(|b| b == first), "never a mix");
                reads += 1;
                seen_b += u64::from(first == b'B');
            }
            (reads, seen_b)
        })
    };
    for i in 0..60 {
        let c = if i % 2 == 0 { 'B' } else { 'A' };
        store.put_config_map(config_map("cfg", &[("key", &big(c))]));
        vm.setup_pod(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), big(c));
    }
    stop.store(true, Ordering::Relaxed);
    let (reads, seen_b) = reader.join().expect("reader saw only whole files");
    assert!(
        reads > 0 && seen_b > 0,
        "reads {reads}, saw the update {seen_b} times"
    );
    let entries = || -> Vec<String> {
        std::fs::read_dir(&v["cfg"].host_path)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    // the replaced payload directories stay for the grace (a reader may have resolved ..data
    // just before a switch), then a resync removes them
    assert!(entries().len() > 3, "{:?}", entries());
    std::thread::sleep(SUPERSEDED_GRACE + Duration::from_millis(100));
    vm.setup_pod(&p).unwrap();
    assert_eq!(
        entries().len(),
        3,
        "key, ..data and one timestamped dir: {:?}",
        entries()
    );
    let _ = BTreeMap::<String, String>::new();
}
