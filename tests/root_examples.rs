//! The examples that need root, run as a user would, each inside namespaces or a private
//! containerd of its own: `custom-router` programs one sync into a network namespace and cleans
//! up; the `cni-plugin` binary, installed as a CNI plugin, does ADD, CHECK and DEL through
//! node-cni's `ExecCni`; `kubelet-containerd --once` runs a pod on a private containerd and
//! removes it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use node_core::{Attachment, CniPlugin, PodRef};
use node_test_support::{
    ContainerdFixture, NetnsFixture, TestImage, require_command, require_root,
};

#[path = "support/examples.rs"]
mod examples;

use examples::{example, run_with_limit};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn custom_router_logs_and_programs_one_sync_in_a_netns() {
    let test = "custom_router_logs_and_programs_one_sync_in_a_netns";
    if !(require_root(test) && require_command(test, "nft")) {
        return;
    }
    let bin = example("custom-router");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.7.80\n  \
         ports: [{name: http, port: 80, targetPort: 8080}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
         labels: {kubernetes.io/service-name: web}\naddressType: IPv4\n\
         endpoints: [{addresses: [10.88.7.9], conditions: {ready: true}}]\n\
         ports: [{name: http, port: 8080, protocol: TCP}]\n",
    )
    .unwrap();
    let ns = NetnsFixture::new("crouter").unwrap();
    let out = run_with_limit(
        ns.command(bin.to_str().unwrap())
            .args(["--once", "--manifests"])
            .arg(dir.path())
            .env("NO_COLOR", "1"),
        Duration::from_secs(60),
    );
    let log = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "{}: {log}", out.status);
    assert!(
        log.contains("sync asked") && log.contains("sync done") && log.contains("changes"),
        "the wrapper did not log the sync: {log}"
    );
    let ruleset = ns.sh("nft list table inet nodekit").unwrap();
    assert!(
        ruleset.contains("10.96.7.80") && ruleset.contains("10.88.7.9"),
        "the inner router did not program the service: {ruleset}"
    );
    let out = run_with_limit(
        ns.command(bin.to_str().unwrap()).arg("--cleanup"),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tables = ns.sh("nft list tables").unwrap();
    assert!(
        !tables.contains("nodekit"),
        "left after --cleanup: {tables}"
    );
}

#[test]
fn cni_plugin_example_adds_checks_and_deletes_through_exec_cni() {
    let test = "cni_plugin_example_adds_checks_and_deletes_through_exec_cni";
    if !(require_root(test) && require_command(test, "nft")) {
        return;
    }
    let bin = example("cni-plugin");
    let tmp = tempfile::tempdir().unwrap();
    // installed as a plugin named corp-net, as an operator would
    let bin_dir = tmp.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::fs::copy(&bin, bin_dir.join("corp-net")).unwrap();
    let conf_dir = tmp.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::write(
        conf_dir.join("10-corp.conflist"),
        format!(
            r#"{{"cniVersion":"1.1.0","name":"corp","plugins":[{{"type":"corp-net",
              "podSubnet":"10.77.5.0/24","dataDir":"{d}/leases","stateDir":"{d}/state"}}]}}"#,
            d = tmp.path().display()
        ),
    )
    .unwrap();
    let node = NetnsFixture::new("cninode").unwrap();
    let pod = NetnsFixture::new("cnipod").unwrap();
    let a = Attachment {
        container_id: "example-1".into(),
        netns: pod.path(),
        ifname: "eth0".into(),
        pod: PodRef::new("default", "web", "uid-web"),
        capabilities: Default::default(),
    };
    node.run_in(|| {
        runtime().block_on(async {
            let cni = node_cni::ExecCni::new(
                node_cni::ExecConfig::default()
                    .conf_dir(&conf_dir)
                    .bin_dirs([bin_dir.clone()])
                    .cache_dir(tmp.path().join("cache"))
                    .timeout(Duration::from_secs(30)),
            )
            .unwrap();
            let r = cni.add(&a).await.expect("ADD");
            let ip = r.pod_ips()[0];
            assert!(ip.to_string().starts_with("10.77.5."), "{r:?}");
            let addrs = pod.sh("ip -o addr show dev eth0").unwrap();
            assert!(addrs.contains(&ip.to_string()), "{addrs}");
            let bridge = node.sh("ip -o link show corp0").unwrap();
            assert!(bridge.contains("corp0"), "{bridge}");
            cni.check(&a).await.expect("CHECK");
            cni.del(&a).await.expect("DEL");
            let links = pod.sh("ip -o link").unwrap();
            assert!(!links.contains("eth0"), "eth0 left in the pod: {links}");
            let leases: Vec<_> = std::fs::read_dir(tmp.path().join("leases/corp"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                .collect();
            assert!(leases.is_empty(), "leases left: {leases:?}");
        })
    })
    .unwrap();
}

#[test]
fn kubelet_containerd_runs_a_pod_on_containerd_and_removes_it() {
    let test = "kubelet_containerd_runs_a_pod_on_containerd_and_removes_it";
    if !ContainerdFixture::require(test) {
        return;
    }
    let bin = example("kubelet-containerd");
    let ctrd = ContainerdFixture::start().expect("containerd");
    let image = TestImage::busybox()
        .cmd(&["sleep", "3600"])
        .build()
        .unwrap();
    let reference = ctrd.push(&image, "nodekit/sleeper", "1").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let manifests = tmp.path().join("pods");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("sleeper.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: sleeper}}\nspec:\n  containers:\n  \
             - name: main\n    image: {reference}\n    imagePullPolicy: IfNotPresent\n"
        ),
    )
    .unwrap();
    let out = run_with_limit(
        Command::new(&bin)
            .args(["--once", "--cri-endpoint", &ctrd.endpoint()])
            .arg("--manifests")
            .arg(&manifests)
            .arg("--status-dir")
            .arg(tmp.path().join("status"))
            .arg("--pod-log-root")
            .arg(ctrd.dir().join("pod-logs"))
            .env("NO_COLOR", "1"),
        Duration::from_secs(180),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{}\n{stdout}\n{stderr}\ncontainerd: {}",
        out.status,
        ctrd.log_tail(30)
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("sleeper "))
        .unwrap_or_else(|| panic!("no pod row: {stdout}"));
    let prefix = ctrd.subnet().rsplit_once('.').map(|(p, _)| p).unwrap_or("");
    assert!(
        row.contains("Running") && row.contains(prefix),
        "pod not Running with an IP of {}: {row}",
        ctrd.subnet()
    );
    assert!(
        Path::new(&tmp.path().join("status")).is_dir(),
        "no status written"
    );
    // --once removed the pod from containerd
    let left = examples::cri_sandboxes(&ctrd.endpoint());
    assert!(left.is_empty(), "sandboxes left: {left:?}");
}
