//! End-to-end tests of the kubelet with the real native runtime (need root, overlayfs, cgroups,
//! busybox-static and `nsenter`): `NativeRuntime` + `ImageStore` (the busybox test image
//! imported from an OCI layout) + the native bridge CNI plugin, pods from a manifest directory.
//!
//! Isolation: every test runs the kubelet (a thread of this process, or a child process entered
//! with `nsenter --net`) inside a `NetnsFixture`, so the bridge, the veths and the pod routes live
//! in that namespace only; runtime state, images, leases, logs and status files go under a
//! temporary directory; pods get a cgroup parent named after this process. On drop (panics
//! included) every sandbox is removed through the runtime, the cgroups are swept (killing what is
//! left), mounts under the directory are detached and the namespace is deleted.
//!
//! `nodekit-init` (a binary of node-cri) is taken from `NODEKIT_INIT`, else next to the test
//! binary's directory (`target/debug`), else built with `cargo build -p node-cri --bin
//! nodekit-init`.
//!
//! Figures (exit noticed, Ready, restart delays) are printed with `--nocapture`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use node_cni::{BridgeConfig, BridgePlugin};
use node_core::{RuntimeBackend, cri};
use node_cri::native::image::{ImageStore, ImageStoreConfig};
use node_cri::native::runtime::{NativeConfig, NativeRuntime};
use node_kubelet::backoff::BackoffConfig;
use node_kubelet::{
    CancellationToken, FileSource, FileSourceConfig, JsonStatusSink, Kubelet, KubeletConfig,
};
use node_test_support::sweep::{cgroup_dirs, detach_mounts_under, kill_cgroup_tree};
use node_test_support::{NetnsFixture, TestImage, require_command, require_path, require_root};

mod support;
use support::native::init_binary;
use support::{
    Instance, Recorder, Running, WEB_POD, any_started, condition, container, is_ready, pod_yaml,
};

const NODE: &str = "e2e-node";
const IMAGE: &str = "nodekit.local/e2e/busybox:1";
/// Set in a child process: act as the kubelet on the environment in this directory.
const CHILD_ENV: &str = "NODEKIT_E2E_KUBELET_CHILD";
static N: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------------
// the environment

/// What one test's kubelet runs on: names and directories (see the module docs).
#[derive(Debug, Clone)]
struct Layout {
    root: PathBuf,
    bridge: String,
    subnet: String,
    cgroup_parent: String,
}

impl Layout {
    fn to_env(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.root.display(),
            self.bridge,
            self.subnet,
            self.cgroup_parent
        )
    }

    fn from_env(s: &str) -> Self {
        let p: Vec<&str> = s.split('|').collect();
        Self {
            root: PathBuf::from(p[0]),
            bridge: p[1].into(),
            subnet: p[2].into(),
            cgroup_parent: p[3].into(),
        }
    }

    fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }

    fn status_dir(&self) -> PathBuf {
        self.root.join("status")
    }

    fn cni(&self) -> BridgePlugin {
        BridgePlugin::new(BridgeConfig {
            network: format!("{}-net", self.bridge),
            bridge: self.bridge.clone(),
            subnets: vec![self.subnet.parse().unwrap()],
            masquerade: false,
            lease_dir: self.root.join("cni/leases"),
            state_dir: self.root.join("cni/state"),
            ..Default::default()
        })
        .expect("bridge plugin")
    }

    fn images(&self) -> Arc<ImageStore> {
        Arc::new(
            ImageStore::new(ImageStoreConfig {
                root: self.root.join("images"),
                ..Default::default()
            })
            .expect("image store"),
        )
    }

    fn runtime(&self, images: Arc<ImageStore>) -> Arc<NativeRuntime> {
        Arc::new(
            NativeRuntime::new(NativeConfig {
                root: self.root.join("rt"),
                cni: Arc::new(self.cni()),
                images,
                init_binary: Some(init_binary()),
                cgroup_parent: self.cgroup_parent.clone(),
                kill_wait: Duration::from_secs(10),
                ..Default::default()
            })
            .expect("native runtime"),
        )
    }

    fn kubelet_config(&self) -> KubeletConfig {
        KubeletConfig {
            resolv_conf: self.root.join("resolv.conf"),
            pod_log_root: self.root.join("logs"),
            // a short crash-loop back-off keeps the tests fast
            restart_backoff: BackoffConfig {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(16),
                reset_after: Duration::from_secs(600),
            },
            ..Default::default()
        }
    }

    fn file_source(&self) -> Arc<FileSource> {
        Arc::new(FileSource::with_config(
            self.manifests(),
            FileSourceConfig {
                node_name: NODE.into(),
                ..Default::default()
            },
        ))
    }
}

/// A temporary directory, a network namespace and a cgroup parent for one test; removes
/// everything on drop.
struct Env {
    layout: Layout,
    ns: NetnsFixture,
    _dir: tempfile::TempDir,
}

impl Env {
    /// The environment of `test`, or `None` when its prerequisites are missing (skipped).
    fn for_test(test: &str, label: &str) -> Option<Self> {
        prerequisites(test).then(|| Self::new(label))
    }

    fn new(label: &str) -> Self {
        sweep_stale();
        let pid = std::process::id();
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = tempfile::Builder::new()
            .prefix(&format!("nodekit-kube-{pid}-"))
            .tempdir()
            .unwrap();
        let layout = Layout {
            root: dir.path().to_path_buf(),
            bridge: format!("nkk{}{n}", pid % 100_000),
            subnet: format!("10.233.{n}.0/24"),
            cgroup_parent: format!("nodekit-test/{pid}-kube-{n}"),
        };
        for d in ["manifests", "status", "logs"] {
            std::fs::create_dir_all(layout.root.join(d)).unwrap();
        }
        std::fs::write(
            layout.root.join("resolv.conf"),
            "nameserver 10.233.255.53\nsearch e2e.local\n",
        )
        .unwrap();
        let ns = NetnsFixture::new(label).expect("netns");
        let env = Self {
            layout,
            ns,
            _dir: dir,
        };
        env.import_image();
        env
    }

    fn import_image(&self) {
        let layout_dir = self.layout.root.join("oci");
        TestImage::busybox()
            .file("/var/www/index.html", "hello from the e2e pod\n", 0o644)
            .build()
            .expect("busybox image")
            .write_oci_layout(&layout_dir, "1")
            .expect("OCI layout");
        let store = self.layout.images();
        support::block_on(store.import_oci_layout(&layout_dir, Some(IMAGE)))
            .expect("import the test image");
    }

    /// Run `f` on a multi-threaded tokio runtime whose threads are all inside the namespace.
    fn run<F, Fut>(&self, f: F)
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = ()>,
    {
        self.ns
            .run_in(|| support::block_on(f()))
            .expect("inside the namespace");
    }

    fn write_manifest(&self, file: &str, yaml: &str) {
        let path = self.layout.manifests().join(file);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, yaml.replace("IMG", IMAGE)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    fn remove_manifest(&self, file: &str) {
        std::fs::remove_file(self.layout.manifests().join(file)).unwrap();
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // the runtime's own removal first (CNI DEL, stop, unmount), inside the namespace
        let layout = self.layout.clone();
        let _ = self.ns.run_in(move || {
            support::block_on(async {
                let rt = layout.runtime(layout.images());
                support::remove_all_sandboxes(&*rt).await;
                for c in rt.list_containers(None).await.unwrap_or_default() {
                    let _ = rt.remove_container(&c.id).await;
                }
            })
        });
        // then brute force for whatever a failed test left
        for d in cgroup_dirs(&self.layout.cgroup_parent) {
            kill_cgroup_tree(&d);
        }
        for d in cgroup_dirs("nodekit-test") {
            let _ = std::fs::remove_dir(d); // fails while another test still uses it
        }
        detach_mounts_under(&self.layout.root);
        // the namespace (bridge, veths, leftover processes) and the directory go next
    }
}

/// Remove what killed test processes left: their cgroups (and processes) and mounts.
fn sweep_stale() {
    let dead = |name: &str, prefix: &str| {
        name.strip_prefix(prefix)
            .and_then(|r| r.split('-').next()?.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for top in cgroup_dirs("nodekit-test") {
        for e in std::fs::read_dir(&top).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() && name.contains("-kube-") && dead(&name, "") {
                kill_cgroup_tree(&e.path());
            }
        }
    }
    for e in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if dead(&name, "nodekit-kube-") {
            detach_mounts_under(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn prerequisites(test: &str) -> bool {
    let cgroups = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "/sys/fs/cgroup/cgroup.controllers"
    } else {
        "/sys/fs/cgroup/pids"
    };
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .contains("overlay");
    require_root(test)
        && require_path(test, node_test_support::image::BUSYBOX)
        && require_path(test, cgroups)
        && require_path(
            test,
            if overlay {
                "/proc/filesystems"
            } else {
                "/sys/module/overlay"
            },
        )
        && require_command(test, "nsenter")
}

// ---------------------------------------------------------------------------------------------
// observing the kubelet

/// The kubelet on the native runtime of `layout`, on a task of the current tokio runtime.
fn start_kubelet(layout: &Layout) -> Running {
    let images = layout.images();
    let rt = layout.runtime(images.clone());
    let recorder = Recorder::new(&layout.status_dir());
    let kubelet = Kubelet::builder(NODE)
        .source(layout.file_source())
        .runtime(rt.clone(), images)
        .status(Arc::new(recorder.clone()))
        .config(layout.kubelet_config())
        .build()
        .unwrap();
    Running::start(kubelet, rt, recorder)
}

fn system_time_of_ns(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns as u64)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// A GET from inside the namespace; the response body.
async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// the tests

#[test]
fn pod_with_init_container_two_containers_and_probes_becomes_ready() {
    let Some(env) = Env::for_test(
        "pod_with_init_container_two_containers_and_probes_becomes_ready",
        "kready",
    ) else {
        return;
    };
    env.write_manifest("web.yaml", WEB_POD);
    let layout = env.layout.clone();
    env.run(|| async move {
        let k = start_kubelet(&layout);
        let (pod, s) = k
            .wait_status("web Ready", "web-e2e-node", Duration::from_secs(90), is_ready)
            .await;
        let ready_after = k.started.elapsed();
        eprintln!("figure: pod Ready {} after the kubelet started (init container, two containers, exec+httpGet+tcpSocket probes; debug build, shared machine)", secs(ready_after));
        // static pod naming and status as the kubelet reports it
        assert_eq!(pod.namespace, "default");
        assert_eq!(s.phase.as_deref(), Some("Running"));
        for c in ["PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready"] {
            assert_eq!(condition(&s, c).as_deref(), Some("True"), "{c}: {s:#?}");
        }
        let init = container(&s, "init");
        let done = init.state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!((done.exit_code, done.reason.as_deref()), (0, Some("Completed")));
        for name in ["server", "helper"] {
            let c = container(&s, name);
            assert!(c.ready && c.started == Some(true), "{name}: {c:#?}");
            assert_eq!(c.restart_count, 0);
            assert!(c.state.as_ref().unwrap().running.is_some(), "{c:#?}");
            assert_eq!(c.image, IMAGE);
        }
        let ip = s.pod_ip.clone().expect("a pod IP");
        let subnet: ipnet::IpNet = layout.subnet.parse().unwrap();
        assert!(subnet.contains(&ip.parse::<std::net::IpAddr>().unwrap()), "{ip} in {subnet}");
        // the pod serves on its IP, reached from the namespace over the bridge
        let body = http_get(&format!("{ip}:8080"), "/index.html").await.unwrap();
        assert!(body.contains("hello from the e2e pod"), "{body}");
        // the status file
        let file = layout.status_dir().join("default_web-e2e-node.json");
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(json["metadata"]["uid"], pod.uid.as_str());
        assert!(
            json["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            "{json}"
        );
        // the bridge is in the test's namespace, not the host's
        assert!(!Path::new(&format!("/sys/class/net/{}", layout.bridge)).exists());
        k.stop().await;
    });
}

#[test]
fn crashing_container_backs_off_with_growing_delays_into_crash_loop_back_off() {
    let Some(env) = Env::for_test(
        "crashing_container_backs_off_with_growing_delays_into_crash_loop_back_off",
        "kcrash",
    ) else {
        return;
    };
    env.write_manifest(
        "crash.yaml",
        &pod_yaml(
            "crash",
            1,
            r#"
  - name: app
    image: IMG
    imagePullPolicy: Never
    command: [sh, -c, "echo crashing; exit 3"]
"#,
        ),
    );
    let layout = env.layout.clone();
    env.run(|| async move {
        let k = start_kubelet(&layout);
        let (pod, _) = k
            .wait_status("the crash pod", "crash-e2e-node", Duration::from_secs(60), |_| true)
            .await;
        // sample the runtime: the kubelet removes all but the newest old instance
        let mut seen: BTreeMap<u32, (String, Instance)> = BTreeMap::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut crash_loop_seen = false;
        while !(seen.get(&4).is_some_and(|(_, i)| i.started_at > 0) && crash_loop_seen) {
            assert!(Instant::now() < deadline, "no 5th start within 90 s: {seen:#?}");
            for (id, i) in k.containers_of(&pod.uid).await {
                if i.name == "app" {
                    seen.insert(i.attempt, (id, i));
                }
            }
            if let Some((_, s)) = k.recorder.latest("crash-e2e-node") {
                let c = container(&s, "app");
                if let Some(w) = c.state.as_ref().and_then(|st| st.waiting.as_ref())
                    && w.reason.as_deref() == Some("CrashLoopBackOff")
                {
                    crash_loop_seen = true;
                    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
                    assert_eq!(last.exit_code, 3);
                    assert!(w.message.as_deref().unwrap_or("").contains("back-off"), "{w:?}");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // the delay between an exit and the next start
        let delays: Vec<Duration> = (0..4)
            .map(|n| {
                let (_, a) = &seen[&n];
                let (_, b) = &seen[&(n + 1)];
                assert!(a.finished_at > 0, "attempt {n} finished: {seen:#?}");
                Duration::from_nanos((b.started_at - a.finished_at).max(0) as u64)
            })
            .collect();
        eprintln!(
            "figure: restart delays after each crash (back-off 1 s doubling; relist 1 s): {}",
            delays.iter().map(|d| secs(*d)).collect::<Vec<_>>().join(", ")
        );
        // the first restart is immediate, then 1 s, 2 s, 4 s at the least (plus the time to notice the exit)
        for (n, min) in [(1, 0.9), (2, 1.9), (3, 3.9)] {
            assert!(delays[n].as_secs_f64() >= min, "delay {n} {:?} >= {min} s: {delays:?}", delays[n]);
        }
        assert!(delays[3] > delays[1] && delays[2] > delays[0], "delays grow: {delays:?}");
        // exit-noticed latency: the runtime's finish time to the status showing it
        let mut latencies = vec![];
        for (_, (id, i)) in seen.iter().filter(|(n, _)| **n < 4) {
            if let Some(t) = k.exit_noticed(id) {
                latencies.push(t.duration_since(system_time_of_ns(i.finished_at)).unwrap_or_default());
            }
        }
        assert!(!latencies.is_empty(), "exits were reported");
        eprintln!(
            "figure: container exit noticed (status published) after: {} (native runtime sends no events: relist every 1 s)",
            latencies.iter().map(|d| secs(*d)).collect::<Vec<_>>().join(", ")
        );
        let (_, s) = k.recorder.latest("crash-e2e-node").unwrap();
        assert!(container(&s, "app").restart_count >= 3, "{s:#?}");
        k.stop().await;
    });
}

#[test]
fn liveness_failure_restarts_the_container() {
    let Some(env) = Env::for_test("liveness_failure_restarts_the_container", "klive") else {
        return;
    };
    env.write_manifest(
        "live.yaml",
        &pod_yaml(
            "live",
            1,
            r#"
  - name: app
    image: IMG
    imagePullPolicy: Never
    command: [sh, -c, "touch /tmp/alive; sleep 3; rm /tmp/alive; exec sleep 1000000"]
    livenessProbe: {exec: {command: [cat, /tmp/alive]}, periodSeconds: 1, failureThreshold: 2}
"#,
        ),
    );
    let layout = env.layout.clone();
    env.run(|| async move {
        let k = start_kubelet(&layout);
        let (_, first) = k
            .wait_status(
                "app running",
                "live-e2e-node",
                Duration::from_secs(60),
                any_started,
            )
            .await;
        let first_id = container(&first, "app").container_id.clone().unwrap();
        assert_eq!(container(&first, "app").restart_count, 0);
        let (_, s) = k
            .wait_status("a restart", "live-e2e-node", Duration::from_secs(60), |s| {
                let c = container(s, "app");
                c.restart_count >= 1 && c.state.as_ref().is_some_and(|st| st.running.is_some())
            })
            .await;
        let c = container(&s, "app");
        assert_ne!(c.container_id.as_ref(), Some(&first_id), "a new container");
        let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
        assert_eq!(last.container_id.as_ref(), Some(&first_id), "{c:#?}");
        k.stop().await;
    });
}

#[test]
fn editing_the_file_updates_the_pod() {
    let Some(env) = Env::for_test("editing_the_file_updates_the_pod", "kedit") else {
        return;
    };
    let manifest = |version: u32| {
        pod_yaml(
            "app",
            1,
            &format!(
                r#"
  - name: app
    image: IMG
    imagePullPolicy: Never
    env: [{{name: VERSION, value: "{version}"}}]
    command: [sh, -c, "exec sleep 1000000"]
"#
            ),
        )
    };
    env.write_manifest("app.yaml", &manifest(1));
    let layout = env.layout.clone();
    let env = &env;
    env.run(|| async move {
        let k = start_kubelet(&layout);
        let (v1, _) = k
            .wait_status(
                "v1 running",
                "app-e2e-node",
                Duration::from_secs(60),
                any_started,
            )
            .await;
        env.write_manifest("app.yaml", &manifest(2));
        let deadline = Instant::now() + Duration::from_secs(60);
        let v2 = loop {
            if let Some((p, s)) = k.recorder.latest("app-e2e-node")
                && p.uid != v1.uid
                && any_started(&s)
            {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "the edited pod did not run within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // the new pod has the new spec
        let ids: Vec<String> = k.containers_of(&v2.uid).await.into_keys().collect();
        assert_eq!(ids.len(), 1);
        let out =
            k.rt.exec_sync(
                &ids[0],
                vec!["sh".into(), "-c".into(), "echo $VERSION".into()],
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
        // and the old one is gone from the runtime and from the status
        let deadline = Instant::now() + Duration::from_secs(30);
        while k.sandboxes_of(&v1.uid).await > 0 || !k.containers_of(&v1.uid).await.is_empty() {
            assert!(Instant::now() < deadline, "the old pod was not removed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // reported gone after its sandboxes are removed (the worker's order), so wait for it
        k.wait_deleted("the old pod", &v1.uid, Duration::from_secs(30))
            .await;
        k.stop().await;
    });
}

#[test]
fn deleting_the_file_runs_pre_stop_and_terminates_the_pod() {
    let Some(env) = Env::for_test(
        "deleting_the_file_runs_pre_stop_and_terminates_the_pod",
        "kdel",
    ) else {
        return;
    };
    let layout = env.layout.clone();
    let env = &env;
    env.run(|| async move {
        // the preStop hook calls this listener (inside the namespace, as the kubelet is)
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        env.write_manifest(
            "del.yaml",
            &pod_yaml(
                "del",
                10,
                &format!(
                    r#"
  - name: app
    image: IMG
    imagePullPolicy: Never
    command: [sh, -c, "trap 'exit 0' TERM; while true; do sleep 0.1; done"]
    lifecycle:
      preStop:
        httpGet: {{host: 127.0.0.1, port: {port}, path: /prestop}}
"#
                ),
            ),
        );
        let k = start_kubelet(&layout);
        let (pod, s) = k
            .wait_status(
                "del running",
                "del-e2e-node",
                Duration::from_secs(60),
                any_started,
            )
            .await;
        let id = container(&s, "app").container_id.clone().unwrap();
        let id = id.rsplit('/').next().unwrap().to_string();
        // each request: its path, and whether the container was still running then
        let hooks: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let (rt, hooks2, id2) = (k.rt.clone(), hooks.clone(), id.clone());
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let line = String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let running = rt
                    .container_status(&id2, false)
                    .await
                    .map(|st| {
                        st.status.unwrap().state == cri::ContainerState::ContainerRunning as i32
                    })
                    .unwrap_or(false);
                hooks2.lock().unwrap().push((line, running));
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        let t0 = Instant::now();
        env.remove_manifest("del.yaml");
        k.wait_deleted("del", &pod.uid, Duration::from_secs(60))
            .await;
        eprintln!(
            "figure: pod terminated {} after its file was deleted (preStop httpGet, TERM handled)",
            secs(t0.elapsed())
        );
        let hooks = hooks.lock().unwrap().clone();
        assert_eq!(hooks.len(), 1, "{hooks:?}");
        assert!(hooks[0].0.starts_with("GET /prestop "), "{hooks:?}");
        assert!(
            hooks[0].1,
            "preStop ran while the container was still running"
        );
        assert_eq!(k.sandboxes_of(&pod.uid).await, 0);
        assert!(k.containers_of(&pod.uid).await.is_empty());
        assert!(
            !layout
                .status_dir()
                .join("default_del-e2e-node.json")
                .exists()
        );
        server.abort();
        k.stop().await;
    });
}

// ---------------------------------------------------------------------------------------------
// kill -9 of the kubelet process

/// The kubelet as a child process (this test binary again, selected with [`CHILD_ENV`]),
/// inside the namespace through `nsenter --net`.
fn spawn_kubelet_process(env: &Env, test: &str, log: &str) -> Child {
    let exe = std::env::current_exe().unwrap();
    let out = std::fs::File::create(env.layout.root.join(log)).unwrap();
    Command::new("nsenter")
        .arg(format!("--net={}", env.ns.path().display()))
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, env.layout.to_env())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("spawning the kubelet process")
}

/// The body of the child process: a kubelet writing JSON status files, until killed.
fn run_kubelet_process(layout: Layout) {
    support::block_on(async {
        let images = layout.images();
        let rt = layout.runtime(images.clone());
        let kubelet = Kubelet::builder(NODE)
            .source(layout.file_source())
            .runtime(rt, images)
            .status(Arc::new(JsonStatusSink::new(layout.status_dir()).unwrap()))
            .config(layout.kubelet_config())
            .build()
            .unwrap();
        eprintln!("kubelet process {} started", std::process::id());
        kubelet.run(CancellationToken::new()).await.unwrap();
    });
}

/// Container name -> (id, restartCount, startedAt) from a status file.
fn containers_in(status: &serde_json::Value) -> BTreeMap<String, (String, i64, String)> {
    status["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                (
                    c["containerID"].as_str().unwrap_or("").to_string(),
                    c["restartCount"].as_i64().unwrap_or(-1),
                    c["state"]["running"]["startedAt"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                ),
            )
        })
        .collect()
}

fn read_status(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn json_ready(v: &serde_json::Value) -> Option<bool> {
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| c["status"] == "True")
}

fn wait_file(
    what: &str,
    path: &Path,
    timeout: Duration,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = read_status(path)
            && f(&v)
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last: {:?}",
            read_status(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kill_9(child: &mut Child) {
    // SAFETY: SIGKILL to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

/// Kills the child kubelet on drop (a failing test must not leave it running).
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            kill_9(c);
        }
    }
}

#[test]
fn kill_9_of_the_kubelet_process_restarts_no_container_and_status_continues() {
    const TEST: &str = "kill_9_of_the_kubelet_process_restarts_no_container_and_status_continues";
    if let Ok(layout) = std::env::var(CHILD_ENV) {
        return run_kubelet_process(Layout::from_env(&layout));
    }
    let Some(env) = Env::for_test(TEST, "kkill") else {
        return;
    };
    // `steady` stays Ready for 15 s after it starts, then its readiness file goes: the second
    // kubelet must notice that (status continues) without restarting anything
    env.write_manifest(
        "steady.yaml",
        &pod_yaml(
            "steady",
            1,
            r#"
  - name: flip
    image: IMG
    imagePullPolicy: Never
    command: [sh, -c, "touch /tmp/ready; sleep 15; rm /tmp/ready; exec sleep 1000000"]
    readinessProbe: {exec: {command: [cat, /tmp/ready]}, periodSeconds: 1}
  - name: steady
    image: IMG
    imagePullPolicy: Never
    command: [sleep, "1000000"]
    livenessProbe: {exec: {command: ["true"]}, periodSeconds: 1}
"#,
        ),
    );
    let status = env.layout.status_dir().join("default_steady-e2e-node.json");
    let containers_dir = env.layout.root.join("rt/state/containers");
    let count = |d: &Path| std::fs::read_dir(d).map(|r| r.count()).unwrap_or(0);

    let mut first = ChildGuard(Some(spawn_kubelet_process(&env, TEST, "kubelet-1.log")));
    let before = wait_file("steady Ready", &status, Duration::from_secs(90), |v| {
        json_ready(v) == Some(true) && containers_in(v).values().all(|c| !c.2.is_empty())
    });
    assert_eq!(containers_in(&before).len(), 2, "{before}");
    let instances = count(&containers_dir);

    kill_9(first.0.as_mut().unwrap());
    first.0 = None;
    std::thread::sleep(Duration::from_millis(500));
    let written = std::fs::metadata(&status).unwrap().modified().unwrap();
    let before = read_status(&status).unwrap();
    let before_containers = containers_in(&before);
    assert_eq!(before_containers.len(), 2, "{before}");
    let restarted = Instant::now();
    let _second = ChildGuard(Some(spawn_kubelet_process(&env, TEST, "kubelet-2.log")));
    // the second kubelet adopts the pod: it writes its status with the same containers (the
    // file is read once it is newer: a read before that could still be the first kubelet's)
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&status).unwrap().modified().unwrap() <= written {
        assert!(
            Instant::now() < deadline,
            "the second kubelet wrote no status within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let adopted = wait_file(
        "the second kubelet's status",
        &status,
        Duration::from_secs(10),
        |_| true,
    );
    let adopted_after = restarted.elapsed();
    assert_eq!(
        containers_in(&adopted),
        before_containers,
        "no container restarted: {adopted}"
    );
    // status continues: the second kubelet probes (Ready), then reports the readiness flip
    wait_file(
        "steady Ready again",
        &status,
        Duration::from_secs(30),
        |v| json_ready(v) == Some(true),
    );
    let flipped = wait_file("steady not Ready", &status, Duration::from_secs(60), |v| {
        json_ready(v) == Some(false)
    });
    assert_eq!(
        containers_in(&flipped),
        before_containers,
        "still no restart: {flipped}"
    );
    assert_eq!(
        count(&containers_dir),
        instances,
        "no container was created"
    );
    eprintln!(
        "figure: second kubelet process reported the adopted pod {} after it started (kill -9 of the first)",
        secs(adopted_after)
    );
}
