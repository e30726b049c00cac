//! Graceful shutdown on systemd-logind's signal, against a private dbus-daemon (the Debian
//! package `dbus-daemon`; no root, nothing of the host's buses) with a fake logind serving
//! `org.freedesktop.login1.Manager`: the kubelet takes a delay inhibitor lock, ignores
//! `PrepareForShutdown(false)`, stops pods by priority on `PrepareForShutdown(true)`, then
//! releases the lock.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use node_core::Pod;
use node_kubelet::node::allocatable::NodeResources;
use node_kubelet::node::logind::{LOGIND_NAME, LOGIND_PATH, ShutdownInhibitor};
use node_kubelet::node::shutdown::{PriorityGracePeriod, ShutdownConfig};
use node_kubelet::node::volumes::MemoryObjectStore;
use node_kubelet::node::{NodeConfig, NodeManager};
use node_kubelet::{Kubelet, KubeletConfig};
use node_test_support::require_command;

mod support;
use support::{KubeletTask, fake_parts, stopped_by_priority};
/// A private bus; the daemon is killed on drop.
struct Bus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>"#,
                socket.display()
            ),
        )
        .unwrap();
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(Stdio::null())
            .spawn()
            .expect("dbus-daemon");
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(socket.exists(), "dbus-daemon did not listen");
        Self {
            child,
            address: format!("unix:path={}", socket.display()),
            _dir: dir,
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fake logind (zbus's interface macro generates undocumented helpers).
#[allow(missing_docs)]
mod fake {
    use std::io::Read;
    use std::sync::{Arc, Mutex};

    use zbus::object_server::SignalEmitter;

    /// One Inhibit call: what, who, why, mode.
    pub type Inhibit = (String, String, String, String);

    /// logind's manager, as far as the inhibitor needs it. Each lock handed out is the write end
    /// of a pipe whose read end is kept: EOF there means every copy of the lock was closed.
    #[derive(Clone, Default)]
    pub struct FakeLogind {
        pub inhibits: Arc<Mutex<Vec<Inhibit>>>,
        pub locks: Arc<Mutex<Vec<std::fs::File>>>,
    }

    #[zbus::interface(name = "org.freedesktop.login1.Manager")]
    impl FakeLogind {
        /// Hands out a delay lock.
        fn inhibit(
            &self,
            what: String,
            who: String,
            why: String,
            mode: String,
        ) -> zbus::fdo::Result<zbus::zvariant::OwnedFd> {
            self.inhibits.lock().unwrap().push((what, who, why, mode));
            let (r, w) =
                nix::unistd::pipe().map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?;
            self.locks.lock().unwrap().push(std::fs::File::from(r));
            Ok(w.into())
        }

        /// logind's maximum delay for a delay lock.
        #[zbus(property, name = "InhibitDelayMaxUSec")]
        fn inhibit_delay_max_usec(&self) -> u64 {
            5_000_000
        }

        /// The machine is about to shut down (`true`) or the shutdown was cancelled (`false`).
        #[zbus(signal)]
        pub async fn prepare_for_shutdown(
            emitter: &SignalEmitter<'_>,
            start: bool,
        ) -> zbus::Result<()>;
    }

    impl FakeLogind {
        /// Whether the lock handed out is released (its read end sees EOF).
        pub fn released(&self) -> bool {
            let locks = self.locks.lock().unwrap();
            let f = locks.first().expect("a lock was taken");
            nix::fcntl::fcntl(
                f,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .unwrap();
            let mut buf = [0u8; 1];
            matches!((&*f).read(&mut buf), Ok(0))
        }
    }
}

use fake::FakeLogind;

fn app(name: &str, priority: i32) -> Pod {
    serde_saphyr::from_str(&format!(
        "metadata: {{name: {name}, namespace: default, uid: uid-{name}}}\nspec:\n  priority: {priority}\n  containers: [{{name: app, image: \"busybox:1\"}}]\n"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_for_shutdown_stops_pods_by_priority_then_releases_the_lock() {
    if !require_command(
        "prepare_for_shutdown_stops_pods_by_priority_then_releases_the_lock",
        "dbus-daemon",
    ) {
        return;
    }
    let bus = Bus::start();
    let logind = FakeLogind::default();
    let server = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .name(LOGIND_NAME)
        .unwrap()
        .serve_at(LOGIND_PATH, logind.clone())
        .unwrap()
        .build()
        .await
        .unwrap();
    let emit = |start: bool| {
        let server = server.clone();
        async move {
            let iface = server
                .object_server()
                .interface::<_, FakeLogind>(LOGIND_PATH)
                .await
                .unwrap();
            FakeLogind::prepare_for_shutdown(iface.signal_emitter(), start)
                .await
                .unwrap();
        }
    };

    let inhibitor = ShutdownInhibitor::at(&bus.address, "nodekit", "stopping pods gracefully")
        .await
        .unwrap();
    assert_eq!(
        logind.inhibits.lock().unwrap().clone(),
        vec![(
            "shutdown".to_string(),
            "nodekit".to_string(),
            "stopping pods gracefully".to_string(),
            "delay".to_string()
        )]
    );
    assert!(inhibitor.is_held() && !logind.released());
    assert_eq!(inhibitor.max_delay().await.unwrap(), Duration::from_secs(5));

    let (rt, sink, source) = fake_parts("file");
    rt.add_image("busybox:1");
    let dirs = tempfile::tempdir().unwrap();
    let mut c = NodeConfig::new("node-1");
    c.cgroups = None;
    c.volumes.root_dir = dirs.path().join("kubelet");
    c.shutdown = ShutdownConfig {
        by_priority: vec![
            PriorityGracePeriod {
                priority: 0,
                grace_period: Duration::from_secs(2),
            },
            PriorityGracePeriod {
                priority: 1000,
                grace_period: Duration::from_secs(2),
            },
        ],
    };
    let alloc = NodeResources {
        cpu_milli: 4000,
        memory_bytes: 4 << 30,
        ephemeral_storage_bytes: 1 << 40,
        pods: 10,
    };
    let node =
        NodeManager::with_allocatable(c, Arc::new(MemoryObjectStore::default()), alloc).unwrap();
    let mut reports = node.shutdown_reports();
    inhibitor.release_after(node.shutdown_reports());
    let node = node.shutdown_on(inhibitor.prepare_for_shutdown().await.unwrap());
    let kubelet = Kubelet::builder("node-1")
        .source(Arc::new(source.clone()))
        .runtime(Arc::new(rt.clone()), Arc::new(rt.clone()))
        .status(Arc::new(sink.clone()))
        .node(Arc::new(node))
        .config(KubeletConfig {
            pod_log_root: dirs.path().join("logs"),
            ..Default::default()
        })
        .build()
        .unwrap();
    let k = KubeletTask::spawn(kubelet, dirs);
    source.apply(app("high", 1000));
    source.apply(app("low", 0));
    let running = || {
        rt.containers()
            .iter()
            .filter(|c| c.state == node_core::cri::ContainerState::ContainerRunning)
            .count()
    };
    for _ in 0..100 {
        if running() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(running(), 2);

    // a cancelled shutdown (start = false) changes nothing
    emit(false).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(running(), 2);
    assert!(reports.borrow().is_none() && !logind.released());

    emit(true).await;
    let order = stopped_by_priority(&mut reports, Duration::from_secs(20)).await;
    assert_eq!(
        order,
        vec![
            (0, vec!["low".to_string()]),
            (1000, vec!["high".to_string()])
        ]
    );
    assert_eq!(running(), 0);
    for _ in 0..100 {
        if logind.released() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        logind.released(),
        "the delay lock is released after the pods stopped"
    );
    assert!(!inhibitor.is_held());
    k.stop().await;
}
