//! The labels and annotations the kubelet puts on every sandbox and container, so it can find and
//! adopt what runs after its own restart, and the spec hashes that tell whether a running
//! container still matches its pod's spec.
//!
//! # The container spec hash
//!
//! [`container_hash`] is stable across nodekit versions: it is the SHA-256 (first 8 bytes, hex)
//! of the *canonical JSON* of the container spec fields that, when changed, require a new
//! container: `name`, `image`, `command`, `args`, `workingDir`, `env`, `envFrom`, `ports`,
//! `volumeMounts`, `volumeDevices`, `securityContext`, `stdin`, `stdinOnce`, `tty` and
//! `restartPolicy`. Probes, lifecycle hooks, `imagePullPolicy`, termination message settings and
//! `resources` (resizable in place) are left out. Canonical means: keys sorted, `null`, empty
//! lists and empty maps dropped, a port's default `protocol: TCP` dropped — so a manifest that
//! spells a default and one that omits it hash the same.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Label: the pod's UID.
pub const POD_UID: &str = "io.kubernetes.pod.uid";
/// Label: the pod's name.
pub const POD_NAME: &str = "io.kubernetes.pod.name";
/// Label: the pod's namespace.
pub const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label: the container's name in the pod spec.
pub const CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Annotation: the container spec hash ([`container_hash`]).
pub const CONTAINER_HASH: &str = "io.kubernetes.container.hash";
/// Annotation: the container's restart count when it was created.
pub const CONTAINER_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// Annotation: the pod's termination grace period, in seconds.
pub const POD_TERMINATION_GRACE: &str = "io.kubernetes.pod.terminationGracePeriod";
/// Annotation: the sandbox config hash ([`sandbox_hash`]).
pub const SANDBOX_HASH: &str = "nodekit.io/sandbox-hash";
/// Label: set to `true` on everything nodekit's kubelet creates.
pub const MANAGED: &str = "nodekit.io/managed";

/// Canonical JSON text of `value`: `None` for null, empty lists and empty maps.
fn canonical(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Array(a) if a.is_empty() => None,
        Value::Array(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|v| canonical(v).unwrap_or_else(|| "null".into()))
                .collect();
            Some(format!("[{}]", items.join(",")))
        }
        Value::Object(o) => {
            let sorted: BTreeMap<&String, String> = o
                .iter()
                .filter_map(|(k, v)| canonical(v).map(|v| (k, v)))
                .collect();
            if sorted.is_empty() {
                return None;
            }
            let fields: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap_or_default()))
                .collect();
            Some(format!("{{{}}}", fields.join(",")))
        }
        other => Some(serde_json::to_string(other).unwrap_or_default()),
    }
}

/// The canonical JSON text of a value (sorted keys, nulls and empty collections dropped).
pub fn canonical_json(value: &Value) -> String {
    canonical(value).unwrap_or_else(|| "null".into())
}

fn short_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}

/// The spec hash of a container (see the module documentation for what it covers).
pub fn container_hash(c: &Container) -> String {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        const KEPT: &[&str] = &[
            "name",
            "image",
            "command",
            "args",
            "workingDir",
            "env",
            "envFrom",
            "ports",
            "volumeMounts",
            "volumeDevices",
            "securityContext",
            "stdin",
            "stdinOnce",
            "tty",
            "restartPolicy",
        ];
        o.retain(|k, _| KEPT.contains(&k.as_str()));
        for flag in ["stdin", "stdinOnce", "tty"] {
            if o.get(flag) == Some(&Value::Bool(false)) {
                o.remove(flag);
            }
        }
        if let Some(Value::Array(ports)) = o.get_mut("ports") {
            for p in ports {
                if let Value::Object(p) = p
                    && p.get("protocol").and_then(Value::as_str) == Some("TCP")
                {
                    p.remove("protocol");
                }
            }
        }
    }
    short_hash(&canonical_json(&v))
}

/// The hash of what a pod's sandbox is made from (namespaces, hostname, DNS, host ports): when it
/// changes, the sandbox is recreated.
pub fn sandbox_hash(pod: &Pod) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let ports: Vec<Value> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| {
            serde_json::json!({"hostPort": p.host_port, "containerPort": p.container_port,
                "protocol": p.protocol.clone().unwrap_or_else(|| "TCP".into()), "hostIP": p.host_ip})
        })
        .collect();
    let v = serde_json::json!({
        "hostNetwork": spec.host_network.unwrap_or(false),
        "hostPID": spec.host_pid.unwrap_or(false),
        "hostIPC": spec.host_ipc.unwrap_or(false),
        "hostname": spec.hostname,
        "subdomain": spec.subdomain,
        "dnsPolicy": spec.dns_policy.clone().unwrap_or_else(|| "ClusterFirst".into()),
        "dnsConfig": spec.dns_config,
        "ports": ports,
        "runtimeClassName": spec.runtime_class_name,
    });
    short_hash(&canonical_json(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(yaml: &str) -> Container {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn canonical_json_sorts_and_drops_empties() {
        let v = serde_json::json!({"b": 1, "a": {"z": null, "y": [], "x": {}, "w": [1, {"k": 2, "j": null}]}});
        assert_eq!(canonical_json(&v), r#"{"a":{"w":[1,{"k":2}]},"b":1}"#);
    }

    #[test]
    fn defaults_and_irrelevant_fields_do_not_change_the_hash() {
        let a = container("name: c\nimage: i\nports: [{containerPort: 80}]\n");
        let b = container(
            "name: c\nimage: i\nports: [{containerPort: 80, protocol: TCP}]\nenv: []\ntty: false\nimagePullPolicy: Always\n\
             readinessProbe: {tcpSocket: {port: 80}}\nresources: {limits: {cpu: 1}}\n",
        );
        assert_eq!(container_hash(&a), container_hash(&b));
        let c = container("name: c\nimage: j\nports: [{containerPort: 80}]\n");
        assert_ne!(container_hash(&a), container_hash(&c));
        let d = container("name: c\nimage: i\nports: [{containerPort: 80}]\nargs: [x]\n");
        assert_ne!(container_hash(&a), container_hash(&d));
    }

    #[test]
    fn the_hash_is_pinned() {
        // this value must never change between nodekit versions: running containers are adopted by it
        let c = container(
            "name: web\nimage: busybox:1.36\ncommand: [httpd, -f]\nports: [{containerPort: 8080}]\n",
        );
        assert_eq!(
            canonical_json(&serde_json::to_value(&c).unwrap()),
            r#"{"command":["httpd","-f"],"image":"busybox:1.36","name":"web","ports":[{"containerPort":8080}]}"#
        );
        assert_eq!(container_hash(&c), "d508e3d05ca12d1d");
    }
}
