//! The `node-agent` binary with `--runtime cri`, as root, on a private containerd
//! (`ContainerdFixture`) and inside containerd's network namespace: pods from a manifest
//! directory run by containerd through `CriClient` (containerd's own CNI config networks them),
//! the Service's ClusterIP answers from the pod, SIGINT removes the pod from containerd and the
//! service rules.

use std::time::Duration;

use node_test_support::{ContainerdFixture, TestImage, require_command};

#[path = "support/agent.rs"]
mod agent;
#[path = "support/examples.rs"]
mod examples;

use agent::{Agent, build_agent, http_get, pids_with_token, wait_for};

#[test]
fn node_agent_drives_containerd_with_runtime_cri() {
    let test = "node_agent_drives_containerd_with_runtime_cri";
    if !(ContainerdFixture::require(test) && require_command(test, "nft")) {
        return;
    }
    let agent_bin = build_agent();
    let ctrd = ContainerdFixture::start().expect("containerd");
    let image = TestImage::busybox()
        .cmd(&[
            "sh",
            "-c",
            "echo \"hello from $(hostname)\" > /tmp/index.html; exec httpd -f -p 8080 -h /tmp",
        ])
        .build()
        .unwrap();
    let reference = ctrd.push(&image, "nodekit/web", "1").unwrap();
    let token = format!("cri-{}", std::process::id());
    let tmp = tempfile::Builder::new()
        .prefix("nkt-agent-cri-")
        .tempdir()
        .unwrap();
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("web-0.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  labels: {{app: web}}\nspec:\n  \
             terminationGracePeriodSeconds: 2\n  containers:\n    - name: web\n      \
             image: {reference}\n      imagePullPolicy: IfNotPresent\n      \
             env: [{{name: NK_DEMO_TOKEN, value: \"{token}\"}}]\n      \
             ports: [{{name: http, containerPort: 8080}}]\n      readinessProbe:\n        \
             httpGet: {{path: /, port: 8080}}\n        periodSeconds: 1\n---\n\
             apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {{app: web}}\n  \
             clusterIP: 10.96.0.80\n  ports:\n    - {{name: http, port: 80, targetPort: http}}\n"
        ),
    )
    .unwrap();
    let ns = ctrd.netns();
    // local traffic to a ClusterIP needs a route: a default one to nowhere, as every node has
    ns.sh(
        "ip route show default | grep -q . || { ip link add nkt0 type veth peer name nkt1 \
           && ip link set nkt0 up && ip link set nkt1 up && ip addr add 192.0.2.1/24 dev nkt0 \
           && ip route add default via 192.0.2.254; }",
    )
    .expect("a default route");

    let cgroups = agent::CgroupRoot::new("cri");
    let log_path = tmp.path().join("agent.log");
    let mut cmd = agent::netns_command(ns, &agent_bin);
    cmd.arg("--manifests")
        .arg(&manifests)
        .arg("--root")
        .arg(tmp.path().join("root"))
        .args(["--runtime", "cri", "--cri-endpoint", &ctrd.endpoint()])
        .args(["--pod-cidr", ctrd.subnet(), "--node-name", "cri-node"])
        .arg("--pod-log-root")
        .arg(ctrd.dir().join("pod-logs"))
        .args(["--http-addr", "127.0.0.1:10256"])
        .args(["--cgroup-root", cgroups.name()])
        .arg("--drain-on-exit");
    let mut agent = Agent::start(cmd, &log_path);
    let log_text = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // web-0 Ready (the agent's /pods), then its answer through the ClusterIP
    wait_for(
        "web-0 Ready in /pods",
        Duration::from_secs(90),
        &log_text,
        || {
            let pods = ns
                .run_in(|| http_get("127.0.0.1:10256", "/pods"))
                .ok()?
                .ok()?;
            let pods: serde_json::Value = serde_json::from_str(&pods).ok()?;
            let web = pods["items"]
                .as_array()?
                .iter()
                .find(|p| p["metadata"]["name"] == "web-0-cri-node")?;
            let ready = web["status"]["conditions"].as_array()?.iter();
            { ready }
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                .then_some(())
        },
    );
    wait_for(
        "web-0 answers through 10.96.0.80",
        Duration::from_secs(15),
        &log_text,
        || {
            let answer = ns.run_in(|| http_get("10.96.0.80:80", "/")).ok()?.ok()?;
            (answer.trim() == "hello from web-0-cri-node").then_some(())
        },
    );
    assert!(!pids_with_token(&token).is_empty());

    let status = agent
        .interrupt_and_wait(Duration::from_secs(40))
        .expect("the agent did not exit within 40 s of SIGINT");
    assert!(
        status.success(),
        "agent exit {status}; log:\n{}",
        log_text()
    );
    let left = examples::cri_sandboxes(&ctrd.endpoint());
    assert!(left.is_empty(), "sandboxes left in containerd: {left:?}");
    assert!(pids_with_token(&token).is_empty(), "pod processes left");
    let tables = ns.sh("nft list tables").unwrap();
    assert!(!tables.contains("nodekit"), "service rules left: {tables}");
}
