//! [`ExecCni`] against small script plugins that record what they were given: the CNI protocol
//! as a runtime must speak it (environment, stdin config, prevResult threading, capability
//! args, DEL order, result cache, VERSION/STATUS/GC, timeouts). No root needed.

use std::path::PathBuf;
use std::time::Duration;

use node_cni::{ExecCni, ExecConfig};
use node_core::{Attachment, CapabilityArgs, CniError, CniPlugin, PodRef, PortMapping};
use serde_json::{Value, json};

/// A plugin that records its calls, stdin and `CNI_*` environment, and answers ADD with one
/// interface named after itself and the address `10.0.0.<n>/24`.
fn recorder(n: u8) -> String {
    format!(
        r#"#!/bin/sh
d=$(dirname "$0"); me=$(basename "$0")
input=$(cat)
echo "$CNI_COMMAND" >> "$d/calls"
echo "$me $CNI_COMMAND" >> "$d/order"
printf '%s' "$input" > "$d/$me.$CNI_COMMAND.stdin"
env | grep '^CNI_' | sort > "$d/$me.$CNI_COMMAND.env"
case "$CNI_COMMAND" in
  VERSION) echo '{{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}}' ;;
  ADD) echo '{{"cniVersion":"1.1.0","interfaces":[{{"name":"'$me'"}}],"ips":[{{"address":"10.0.0.{n}/24","interface":0}}]}}' ;;
esac
exit 0
"#
    )
}

const SLOW: &str =
    "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && exec sleep 20\nexit 0\n";

struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new(conflist: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        for d in ["bin", "net.d", "cache"] {
            std::fs::create_dir_all(tmp.path().join(d)).unwrap();
        }
        let e = Env { tmp };
        e.plugin("rec-a", &recorder(1));
        e.plugin("rec-b", &recorder(2));
        e.plugin("slow", SLOW);
        std::fs::write(e.path("net.d/10-test.conflist"), conflist).unwrap();
        e
    }
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }
    fn plugin(&self, name: &str, script: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path(&format!("bin/{name}"));
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    fn cni(&self, timeout: Duration) -> ExecCni {
        ExecCni::new(
            ExecConfig::default()
                .conf_dir(self.path("net.d"))
                .bin_dirs([self.path("bin")])
                .cache_dir(self.path("cache"))
                .timeout(timeout),
        )
        .unwrap()
    }
    fn json(&self, p: &str) -> Value {
        serde_json::from_slice(&std::fs::read(self.path(p)).unwrap()).unwrap()
    }
    fn text(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_default()
    }
    /// The plugin calls so far, VERSION queries left out.
    fn order(&self) -> String {
        self.text("bin/order")
            .lines()
            .filter(|l| !l.ends_with("VERSION"))
            .map(|l| format!("{l}\n"))
            .collect()
    }
}

const CHAIN: &str = r#"{"cniVersion":"1.1.0","name":"rec","plugins":[
  {"type":"rec-a","foo":"bar"},
  {"type":"rec-b","capabilities":{"portMappings":true,"bandwidth":true}}]}"#;

fn attachment() -> Attachment {
    Attachment {
        container_id: "ctr1".into(),
        netns: PathBuf::from("/proc/self/ns/net"),
        ifname: "eth0".into(),
        pod: PodRef::new("ns1", "web", "uid-1"),
        capabilities: CapabilityArgs {
            port_mappings: vec![PortMapping {
                host_port: 80,
                container_port: 8080,
                protocol: "tcp".into(),
                host_ip: None,
            }],
            mac: Some("02:00:00:00:00:01".into()),
            ..Default::default()
        },
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn add_threads_prev_result_and_passes_env_and_declared_capabilities() {
    let e = Env::new(CHAIN);
    let cni = e.cni(Duration::from_secs(10));
    let r = rt().block_on(cni.add(&attachment())).unwrap();
    assert_eq!(r.interfaces[0].name, "rec-b");
    assert_eq!(r.pod_ips()[0].to_string(), "10.0.0.2");

    let a = e.json("bin/rec-a.ADD.stdin");
    assert_eq!(
        (
            a["name"].as_str(),
            a["cniVersion"].as_str(),
            a["foo"].as_str()
        ),
        (Some("rec"), Some("1.1.0"), Some("bar"))
    );
    assert!(
        a.get("prevResult").is_none() && a.get("runtimeConfig").is_none(),
        "{a}"
    );
    let b = e.json("bin/rec-b.ADD.stdin");
    assert_eq!(
        b["prevResult"]["interfaces"][0]["name"], "rec-a",
        "prevResult is not threaded: {b}"
    );
    assert_eq!(
        b["runtimeConfig"],
        json!({"portMappings":[{"hostPort":80,"containerPort":8080,"protocol":"tcp"}]})
    );

    let env = e.text("bin/rec-a.ADD.env");
    for line in [
        "CNI_COMMAND=ADD",
        "CNI_CONTAINERID=ctr1",
        "CNI_IFNAME=eth0",
        "CNI_NETNS=/proc/self/ns/net",
        "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=ctr1;K8S_POD_UID=uid-1",
        &format!("CNI_PATH={}", e.path("bin").display()),
    ] {
        assert!(env.lines().any(|l| l == line), "missing {line} in\n{env}");
    }

    // The cache, in libcni's layout and format.
    let cached = e.json("cache/results/rec-ctr1-eth0");
    assert_eq!(cached["kind"], "cniCacheV1");
    assert_eq!(cached["containerId"], "ctr1");
    assert_eq!(cached["networkName"], "rec");
    assert_eq!(cached["result"]["ips"][0]["address"], "10.0.0.2/24");
    assert!(
        cached["config"].as_str().unwrap().starts_with("eyJ"),
        "config is base64 JSON"
    );
}

#[test]
fn del_runs_in_reverse_with_the_cached_result_even_after_a_restart() {
    let e = Env::new(CHAIN);
    rt().block_on(e.cni(Duration::from_secs(10)).add(&attachment()))
        .unwrap();
    std::fs::write(e.path("bin/order"), "").unwrap();
    // A new runtime (a restart), and a config that changed meanwhile: DEL uses the cached one.
    std::fs::write(
        e.path("net.d/10-test.conflist"),
        r#"{"cniVersion":"1.1.0","name":"rec","plugins":[{"type":"rec-a"}]}"#,
    )
    .unwrap();
    let cni = e.cni(Duration::from_secs(10));
    rt().block_on(cni.check(&attachment())).unwrap();
    assert_eq!(
        e.json("bin/rec-a.CHECK.stdin")["prevResult"]["ips"][0]["address"],
        "10.0.0.2/24"
    );
    rt().block_on(cni.del(&attachment())).unwrap();
    assert_eq!(
        e.order(),
        "rec-a CHECK\nrec-b CHECK\nrec-b DEL\nrec-a DEL\n"
    );
    assert_eq!(
        e.json("bin/rec-a.DEL.stdin")["prevResult"]["interfaces"][0]["name"],
        "rec-b"
    );
    assert!(!e.path("cache/results/rec-ctr1-eth0").exists());
    // A second DEL succeeds (with the current config, no prevResult).
    rt().block_on(cni.del(&attachment())).unwrap();
    assert!(rt().block_on(cni.check(&attachment())).is_err());
}

#[test]
fn status_and_gc_reach_plugins_that_support_1_1() {
    let e = Env::new(CHAIN);
    let cni = e.cni(Duration::from_secs(10));
    rt().block_on(cni.status()).unwrap();
    assert!(e.order().contains("rec-a STATUS") && e.order().contains("rec-b STATUS"));
    let a = attachment();
    let mut b = attachment();
    b.container_id = "ctr2".into();
    rt().block_on(cni.add(&a)).unwrap();
    rt().block_on(cni.add(&b)).unwrap();
    std::fs::write(e.path("bin/order"), "").unwrap();
    rt().block_on(cni.gc(&[a.key()])).unwrap();
    let gc = e.json("bin/rec-a.GC.stdin");
    assert_eq!(
        gc["cni.dev/valid-attachments"],
        json!([{"containerID":"ctr1","ifname":"eth0"}])
    );
    assert_eq!(
        e.order(),
        "rec-b DEL\nrec-a DEL\nrec-a GC\nrec-b GC\n",
        "the stale ctr2 gets a DEL first"
    );
    assert!(e.path("cache/results/rec-ctr1-eth0").exists());
    assert!(!e.path("cache/results/rec-ctr2-eth0").exists());
    assert_eq!(
        rt().block_on(cni.plugin_versions("rec-a")).unwrap(),
        ["1.0.0", "1.1.0"],
    );
}

#[test]
fn a_plugin_that_hangs_times_out_and_the_chain_is_rolled_back() {
    let e = Env::new(
        r#"{"cniVersion":"1.1.0","name":"rec","plugins":[{"type":"rec-a"},{"type":"slow"}]}"#,
    );
    let cni = e.cni(Duration::from_millis(300));
    let t = std::time::Instant::now();
    let err = rt().block_on(cni.add(&attachment())).unwrap_err();
    assert!(
        matches!(&err, CniError::Timeout { plugin, .. } if plugin == "slow"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the timeout did not cut the plugin off"
    );
    assert_eq!(e.order(), "rec-a ADD\nrec-a DEL\n");
    assert!(!e.path("cache/results/rec-ctr1-eth0").exists());
}
