//! The examples that run without root, run as a user would: `custom-pod-source` on the fake
//! runtime, the `cni-plugin` binary's protocol answers that need no kernel, `proxy --dump`,
//! `demo-image`, and the node agent's clear errors for bad flags. (The root ones are in
//! `root_examples.rs`, `root_demo.rs`, `root_agent_cluster.rs` and `root_agent_cri.rs`.)

use std::process::Command;
use std::time::Duration;

#[path = "support/examples.rs"]
mod examples;

use examples::{example, run_with_limit};

const LIMIT: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn custom_pod_source_runs_the_pods_of_its_directory_and_exits() {
    let bin = example("custom-pod-source");
    let dir = tempfile::tempdir().unwrap();
    for name in ["web", "db"] {
        std::fs::write(
            dir.path().join(format!("{name}.json")),
            format!(
                r#"{{"metadata":{{"name":"{name}"}},"spec":{{"containers":[{{"name":"main","image":"busybox:1.36","command":["sleep","1d"]}}]}}}}"#
            ),
        )
        .unwrap();
    }
    std::fs::write(dir.path().join("broken.json"), "{not json").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let out = run_with_limit(Command::new(&bin).arg(dir.path()), LIMIT);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    for name in ["web", "db"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("default/{name}: Running 10."))),
            "{name} not reported Running with an IP:\n{stdout}"
        );
    }
    assert!(
        stderr.contains("broken.json") && stderr.contains("not a pod"),
        "the broken file is not named: {stderr}"
    );
}

#[test]
fn cni_plugin_answers_version_and_refuses_bad_configs_by_spec_codes() {
    let bin = example("cni-plugin");
    let call = |command: &str, conf: &str| {
        let mut child = Command::new(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "c1")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", "/run/netns/nkt-none")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{command}: not JSON ({e}): {}", text(&out.stdout)));
        (out.status.code(), v)
    };
    let (code, v) = call("VERSION", r#"{"cniVersion":"1.1.0"}"#);
    assert_eq!(code, Some(0));
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["1.0.0", "1.1.0"])
    );

    let (code, v) = call(
        "ADD",
        r#"{"cniVersion":"1.1.0","name":"corp","type":"corp-net"}"#,
    );
    assert_eq!((code, v["code"].as_u64()), (Some(1), Some(7)), "{v}");
    assert!(v["details"].as_str().unwrap().contains("podSubnet"), "{v}");

    let (code, v) = call(
        "ADD",
        r#"{"cniVersion":"0.3.1","name":"corp","type":"corp-net","podSubnet":"10.77.0.0/24"}"#,
    );
    assert_eq!((code, v["code"].as_u64()), (Some(1), Some(1)), "{v}");
}

#[test]
fn node_agent_names_a_bad_kubeconfig_or_manifest_directory() {
    let bin = example("node-agent");
    let out = run_with_limit(
        Command::new(&bin).args(["--kubeconfig", "/nonexistent/nkt-kubeconfig"]),
        LIMIT,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent/nkt-kubeconfig"),
        "{}",
        text(&out.stderr)
    );
    let out = run_with_limit(
        Command::new(&bin).args(["--manifests", "/nonexistent/nkt-manifests"]),
        LIMIT,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--manifests /nonexistent/nkt-manifests"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn proxy_dump_prints_the_ruleset_of_a_manifest_directory() {
    let bin = example("proxy");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("svc.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.96.9.80\n  \
         ports: [{name: http, port: 80, targetPort: 8080}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  \
         labels: {kubernetes.io/service-name: web}\naddressType: IPv4\n\
         endpoints: [{addresses: [10.88.9.9], conditions: {ready: true}}]\n\
         ports: [{name: http, port: 8080, protocol: TCP}]\n",
    )
    .unwrap();
    let out = run_with_limit(
        Command::new(&bin)
            .arg("--dump")
            .arg("--manifests")
            .arg(dir.path()),
        LIMIT,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        stdout.contains("table inet")
            && stdout.contains("10.96.9.80")
            && stdout.contains("10.88.9.9"),
        "{stdout}"
    );
}

#[test]
fn demo_image_writes_an_oci_layout() {
    let bin = example("demo-image");
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("web");
    let out = run_with_limit(
        Command::new(&bin)
            .arg(&layout)
            .arg("nodekit.local/demo/web:1"),
        LIMIT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "nodekit.local/demo/web:1",
        "{index}"
    );
    assert!(layout.join("oci-layout").is_file());
}
