//! The Kubernetes objects nodekit reads parse from real YAML and round-trip unchanged.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  type: NodePort
  selector: {app: web}
  ipFamilyPolicy: PreferDualStack
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, "fd00:96::20"]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}
  externalTrafficPolicy: Local
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080, protocol: TCP}
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 5353, protocol: UDP}
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-1
  zone: a
- addresses: [10.244.2.7]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: node-2
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec:
  containers:
  - name: web
    image: 127.0.0.1:5000/web:1
    ports: [{name: http, containerPort: 8080}]
"#;

fn documents() -> Vec<String> {
    MANIFESTS.split("\n---\n").map(str::to_string).collect()
}

#[test]
fn service_round_trips() {
    let svc: Service = serde_saphyr::from_str(&documents()[0]).expect("service parses");
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.cluster_ips.as_ref().unwrap().len(), 2);
    assert_eq!(spec.ports.as_ref().unwrap()[0].node_port, Some(30080));
    assert_eq!(
        spec.session_affinity_config
            .as_ref()
            .unwrap()
            .client_ip
            .as_ref()
            .unwrap()
            .timeout_seconds,
        Some(300)
    );
    let again: Service = serde_saphyr::from_str(&serde_saphyr::to_string(&svc).unwrap()).unwrap();
    assert_eq!(svc, again);
}

#[test]
fn endpoint_slice_round_trips() {
    let slice: EndpointSlice = serde_saphyr::from_str(&documents()[1]).expect("slice parses");
    assert_eq!(slice.endpoints.len(), 2);
    let c = slice.endpoints[1].conditions.as_ref().unwrap();
    assert_eq!(
        (c.ready, c.serving, c.terminating),
        (Some(false), Some(true), Some(true))
    );
    assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node-1"));
    let again: EndpointSlice =
        serde_saphyr::from_str(&serde_saphyr::to_string(&slice).unwrap()).unwrap();
    assert_eq!(slice, again);
    let json: EndpointSlice =
        serde_json::from_value(serde_json::to_value(&slice).unwrap()).unwrap();
    assert_eq!(slice, json);
}

#[test]
fn pod_round_trips() {
    let pod: Pod = serde_saphyr::from_str(&documents()[2]).expect("pod parses");
    let again: Pod = serde_saphyr::from_str(&serde_saphyr::to_string(&pod).unwrap()).unwrap();
    assert_eq!(pod, again);
}

#[test]
fn a_malformed_document_is_an_error_not_a_panic() {
    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: [oops}\n";
    assert!(serde_saphyr::from_str::<Pod>(bad).is_err());
    let wrong_type = "apiVersion: v1\nkind: Pod\nspec: {containers: 3}\n";
    assert!(serde_saphyr::from_str::<Pod>(wrong_type).is_err());
}
