//! The demo end to end, as root, inside a network namespace of its own: the `node-agent`
//! example runs the two web pods and their Service from a temporary manifest directory; both
//! replicas answer through the ClusterIP; deleting one pod's manifest takes it out of the
//! Service; SIGINT with `--drain-on-exit` leaves no pod process, no service rules, no pod veth,
//! no lease, no volume and no pod cgroup behind.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use node_test_support::{NetnsFixture, require_command, require_path, require_root};

#[path = "support/agent.rs"]
mod agent;
#[path = "support/examples.rs"]
mod examples;

use agent::{
    Agent, DEMO_IMAGE as IMAGE, build_agent, http_get, node_netns, pids_with_token, stop_cleanly,
    write_demo_image,
};

fn pod_manifest(name: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: web}}\nspec:\n  \
         containers:\n    - name: web\n      image: {IMAGE}\n      \
         imagePullPolicy: Never\n      env: [{{name: NK_DEMO_TOKEN, value: \"{token}\"}}]\n      \
         ports: [{{name: http, containerPort: 8080}}]\n      readinessProbe:\n        \
         httpGet: {{path: /, port: 8080}}\n        periodSeconds: 1\n"
    )
}

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  \
selector: {app: web}\n  clusterIP: 10.96.0.80\n  ports:\n    - name: http\n      port: 80\n      \
targetPort: http\n";

/// Ready pods by name, from the agent's `/pods`, asked inside the namespace.
fn ready_pods(ns: &NetnsFixture) -> BTreeSet<String> {
    let Ok(Ok(body)) = ns.run_in(|| http_get("127.0.0.1:10255", "/pods")) else {
        return BTreeSet::new();
    };
    let list: serde_json::Value = serde_json::from_str(&body).expect("/pods is JSON");
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect()
}

/// A pod's IP from the agent's `/pods`, asked inside the namespace.
fn pod_ip(ns: &NetnsFixture, name: &str) -> Option<String> {
    let body = ns
        .run_in(|| http_get("127.0.0.1:10255", "/pods"))
        .ok()?
        .ok()?;
    let list: serde_json::Value = serde_json::from_str(&body).ok()?;
    list["items"]
        .as_array()?
        .iter()
        .find(|p| p["metadata"]["name"] == name)?["status"]["podIP"]
        .as_str()
        .map(String::from)
}

/// `n` answers of the ClusterIP, asked inside the namespace (failures as `ERR ...`).
fn ask_service(ns: &NetnsFixture, n: usize) -> Vec<String> {
    ns.run_in(|| {
        (0..n)
            .map(|_| match http_get("10.96.0.80:80", "/") {
                Ok(b) => b.trim().to_string(),
                Err(e) => format!("ERR {e}"),
            })
            .collect()
    })
    .expect("entering the namespace")
}

#[test]
fn demo_end_to_end_in_a_netns() {
    if !require_root("demo_end_to_end_in_a_netns")
        || !require_command("demo_end_to_end_in_a_netns", "nft")
        || !require_path("demo_end_to_end_in_a_netns", "/bin/busybox")
    {
        return;
    }
    let agent_bin = build_agent();
    let token = format!("demo-{}", std::process::id());
    let tmp = std::env::temp_dir().join(format!("nodekit-root-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (manifests, root, image) = (tmp.join("manifests"), tmp.join("root"), tmp.join("image"));
    std::fs::create_dir_all(&manifests).unwrap();
    for name in ["web-0", "web-1"] {
        std::fs::write(
            manifests.join(format!("{name}.yaml")),
            pod_manifest(name, &token),
        )
        .unwrap();
    }
    std::fs::write(manifests.join("web-service.yaml"), SERVICE).unwrap();
    write_demo_image(&image);

    let ns = node_netns("agent");
    let cgroups = agent::CgroupRoot::new("demo");
    let mut cmd = agent::netns_command(&ns, &agent_bin);
    cmd.args(["--manifests", manifests.to_str().unwrap()])
        .args(["--root", root.to_str().unwrap()])
        .arg("--pod-log-root")
        .arg(root.join("pod-logs"))
        .args(["--node-name", "demo-node"])
        .arg("--drain-on-exit")
        .args(["--cgroup-root", cgroups.name()])
        .args(["--import-image", &format!("{}={IMAGE}", image.display())]);
    let mut agent = Agent::start(cmd, &tmp.join("agent.log"));
    let log_text = || std::fs::read_to_string(tmp.join("agent.log")).unwrap_or_default();

    // both pods Ready
    let deadline = Instant::now() + Duration::from_secs(45);
    // static pods are named <name>-<node>, as kubelet names them
    let want: BTreeSet<String> =
        ["web-0-demo-node".to_string(), "web-1-demo-node".to_string()].into();
    while ready_pods(&ns) != want {
        assert!(
            Instant::now() < deadline,
            "pods not Ready within 45 s (ready: {:?}); agent log:\n{}",
            ready_pods(&ns),
            log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // both replicas answer through the ClusterIP (the endpoints follow readiness: retry a bit)
    let deadline = Instant::now() + Duration::from_secs(15);
    let answers = loop {
        let answers: BTreeSet<String> = ask_service(&ns, 30).into_iter().collect();
        if answers.contains("hello from web-0-demo-node")
            && answers.contains("hello from web-1-demo-node")
        {
            break answers;
        }
        assert!(
            Instant::now() < deadline,
            "both replicas did not answer through 10.96.0.80: {answers:?}; agent log:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        answers.iter().all(|a| a.starts_with("hello from web-")),
        "{answers:?}"
    );
    let pod_pids = pids_with_token(&token);
    assert!(
        pod_pids.len() >= 2,
        "the pods' processes are not visible: {pod_pids:?}"
    );

    // delete web-1's manifest: it leaves the Service's endpoints (the nftables rules) and
    // traffic goes only to web-0; both delays are printed (issue #10: within 1 s; the proxy's
    // min_sync_interval, 1 s as kube-proxy's, bounds it right after a sync), only a generous
    // bound is asserted
    let web1_ip = pod_ip(&ns, "web-1-demo-node").expect("web-1's IP from /pods");
    let rules = || ns.sh("nft list table inet nodekit").unwrap_or_default();
    assert!(
        rules().contains(&web1_ip),
        "web-1 ({web1_ip}) is not an endpoint before the deletion"
    );
    std::fs::remove_file(manifests.join("web-1.yaml")).unwrap();
    let removed = Instant::now();
    // one call at a time, to time the switch to the call: the last answer not from web-0, then
    // 30 in a row from web-0; web-1's IP leaving the rules is checked between calls
    let (mut out_of_rules, mut last_other, mut in_a_row) = (None, Duration::ZERO, 0);
    while out_of_rules.is_none() || in_a_row < 30 {
        assert!(
            removed.elapsed() < Duration::from_secs(15),
            "15 s after deleting web-1's manifest: its IP {web1_ip} left the rules: {out_of_rules:?}, \
             last answer not from web-0 at {last_other:?}"
        );
        if out_of_rules.is_none() && !rules().contains(&web1_ip) {
            out_of_rules = Some(removed.elapsed());
        }
        let answer = ask_service(&ns, 1).remove(0);
        if answer == "hello from web-0-demo-node" {
            in_a_row += 1;
        } else {
            in_a_row = 0;
            last_other = removed.elapsed();
        }
    }
    eprintln!(
        "after deleting web-1's manifest: its IP left the service rules after {:?}; the last \
         answer not from web-0 came {last_other:?} after (then 30 in a row from web-0)",
        out_of_rules.unwrap()
    );

    // SIGINT: a clean exit that leaves nothing behind
    stop_cleanly(&mut agent, &ns, &root, &token, &log_text);
    let pod_cgroups = cgroups.pod_cgroups();
    assert!(pod_cgroups.is_empty(), "pod cgroups left: {pod_cgroups:?}");
    drop(ns);
    let _ = std::fs::remove_dir_all(&tmp);
}
