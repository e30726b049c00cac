//! The service tracker: `Service` and `EndpointSlice` objects in, node-core's [`ProxyState`] out,
//! as kube-proxy's service and endpoint change trackers compute it.
//!
//! Invalid services are reported with their `namespace/name` and left out; the others are kept.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use node_core::{Endpoint, NodeInfo, Protocol, ProxyState, ServicePort, ServicePortName};

/// The label that ties an `EndpointSlice` to its `Service`.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10800);

/// A `Service` or `EndpointSlice` the tracker could not use (in whole or in part).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {field}: {reason}")]
pub struct InvalidObject {
    /// `Service` or `EndpointSlice`.
    pub kind: &'static str,
    /// `namespace/name` of the object.
    pub object: String,
    /// The offending field (`spec.clusterIP`, `spec.ports[0].protocol`...).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// What the tracker computed: the desired state and the objects it had to leave out.
#[derive(Debug, Clone, Default)]
pub struct Tracked {
    /// The desired proxy state.
    pub state: ProxyState,
    /// Invalid objects, each reported once per computation.
    pub errors: Vec<InvalidObject>,
}

type Key = (String, String);

/// Holds the current `Service` and `EndpointSlice` objects and computes the desired state.
#[derive(Debug, Clone, Default)]
pub struct ServiceTracker {
    node: NodeInfo,
    services: BTreeMap<Key, Service>,
    slices: BTreeMap<Key, EndpointSlice>,
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

impl ServiceTracker {
    /// A tracker for `node` with no objects.
    pub fn new(node: NodeInfo) -> Self {
        Self {
            node,
            ..Default::default()
        }
    }

    /// The node facts the state is computed for.
    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    /// Add or replace a `Service`.
    pub fn apply_service(&mut self, service: Service) {
        self.services.insert(key_of(&service.metadata), service);
    }

    /// Remove a `Service`.
    pub fn delete_service(&mut self, namespace: &str, name: &str) {
        self.services.remove(&(namespace.into(), name.into()));
    }

    /// Add or replace an `EndpointSlice`.
    pub fn apply_slice(&mut self, slice: EndpointSlice) {
        self.slices.insert(key_of(&slice.metadata), slice);
    }

    /// Remove an `EndpointSlice`.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) {
        self.slices.remove(&(namespace.into(), name.into()));
    }

    /// Replace every object (a fresh listing).
    pub fn replace_all(&mut self, services: Vec<Service>, slices: Vec<EndpointSlice>) {
        self.services = services
            .into_iter()
            .map(|s| (key_of(&s.metadata), s))
            .collect();
        self.slices = slices
            .into_iter()
            .map(|s| (key_of(&s.metadata), s))
            .collect();
    }

    /// Copies of every object held.
    pub fn objects(&self) -> (Vec<Service>, Vec<EndpointSlice>) {
        (
            self.services.values().cloned().collect(),
            self.slices.values().cloned().collect(),
        )
    }

    /// How many services and slices are held.
    pub fn len(&self) -> (usize, usize) {
        (self.services.len(), self.slices.len())
    }

    /// Whether no object is held.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty()
    }

    /// Compute the desired state from the objects held.
    pub fn compute(&self) -> Tracked {
        let mut out = Tracked {
            state: ProxyState {
                node: self.node.clone(),
                ..Default::default()
            },
            errors: vec![],
        };
        // slices grouped by (namespace, service name)
        let mut by_service: BTreeMap<Key, Vec<&EndpointSlice>> = BTreeMap::new();
        for ((ns, _), slice) in &self.slices {
            if let Some(svc) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                by_service
                    .entry((ns.clone(), svc.clone()))
                    .or_default()
                    .push(slice);
            }
        }
        for (key, svc) in &self.services {
            let slices = by_service.get(key).map(Vec::as_slice).unwrap_or(&[]);
            match service_ports(key, svc, slices, &mut out.errors) {
                Ok(ports) => out.state.services.extend(ports),
                Err(e) => out.errors.push(e),
            }
        }
        out
    }
}

fn invalid(
    kind: &'static str,
    key: &Key,
    field: impl Into<String>,
    reason: impl Into<String>,
) -> InvalidObject {
    InvalidObject {
        kind,
        object: format!("{}/{}", key.0, key.1),
        field: field.into(),
        reason: reason.into(),
    }
}

fn parse_ip(key: &Key, field: String, s: &str) -> Result<IpAddr, InvalidObject> {
    s.parse()
        .map_err(|_| invalid("Service", key, field, format!("invalid IP address {s:?}")))
}

fn parse_protocol(
    kind: &'static str,
    key: &Key,
    field: String,
    p: Option<&String>,
) -> Result<Protocol, InvalidObject> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(p) => p.parse().map_err(|e: String| invalid(kind, key, field, e)),
    }
}

/// The service ports of one service, or why it is invalid (`Ok(empty)` for headless and
/// ExternalName services).
fn service_ports(
    key: &Key,
    svc: &Service,
    slices: &[&EndpointSlice],
    errors: &mut Vec<InvalidObject>,
) -> Result<Vec<(ServicePortName, ServicePort)>, InvalidObject> {
    let Some(spec) = &svc.spec else {
        return Err(invalid("Service", key, "spec", "missing"));
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Ok(vec![]);
    }
    let ips: Vec<&String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().collect(),
        (_, Some(ip)) => vec![ip],
        _ => vec![],
    };
    if ips.iter().any(|ip| ip.as_str() == "None") {
        return Ok(vec![]); // headless
    }
    if ips.is_empty() || ips.iter().all(|ip| ip.is_empty()) {
        return Err(invalid(
            "Service",
            key,
            "spec.clusterIP",
            "empty: no address to route",
        ));
    }
    let mut cluster_ips = vec![];
    for (i, ip) in ips.iter().enumerate() {
        cluster_ips.push(parse_ip(key, format!("spec.clusterIPs[{i}]"), ip)?);
    }
    let mut external_ips = vec![];
    for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
        external_ips.push(parse_ip(key, format!("spec.externalIPs[{i}]"), ip)?);
    }
    let mut load_balancer_ips = vec![];
    if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for (i, ing) in ingress.into_iter().flatten().enumerate() {
            if let Some(ip) = &ing.ip {
                load_balancer_ips.push(parse_ip(
                    key,
                    format!("status.loadBalancer.ingress[{i}].ip"),
                    ip,
                )?);
            }
        }
    }
    let mut source_ranges = vec![];
    for (i, r) in spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .enumerate()
    {
        let net: IpNet = r.trim().parse().map_err(|_| {
            invalid(
                "Service",
                key,
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("invalid CIDR {r:?}"),
            )
        })?;
        source_ranges.push(net);
    }
    let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let secs = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        match secs {
            None => Some(DEFAULT_AFFINITY_TIMEOUT),
            Some(s) if (1..=86400).contains(&s) => Some(Duration::from_secs(s as u64)),
            Some(s) => {
                return Err(invalid(
                    "Service",
                    key,
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{s} is outside 1..=86400"),
                ));
            }
        }
    } else {
        None
    };
    let external_policy_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    // only a LoadBalancer with externalTrafficPolicy: Local needs a health check
    let health_check_node_port = spec
        .health_check_node_port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .filter(|_| external_policy_local && spec.type_.as_deref() == Some("LoadBalancer"));

    let mut out = vec![];
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                invalid(
                    "Service",
                    key,
                    format!("spec.ports[{i}].port"),
                    format!("{} is outside 1..=65535", p.port),
                )
            })?;
        let protocol = parse_protocol(
            "Service",
            key,
            format!("spec.ports[{i}].protocol"),
            p.protocol.as_ref(),
        )?;
        let node_port = match p.node_port {
            None | Some(0) => None,
            Some(n) => Some(u16::try_from(n).ok().ok_or_else(|| {
                invalid(
                    "Service",
                    key,
                    format!("spec.ports[{i}].nodePort"),
                    format!("{n} is outside 1..=65535"),
                )
            })?),
        };
        let port_name = p.name.clone().unwrap_or_default();
        let endpoints = endpoints_for(key, &port_name, protocol, slices, errors);
        out.push((
            ServicePortName::new(&key.0, &key.1, port_name),
            ServicePort {
                cluster_ips: cluster_ips.clone(),
                port,
                protocol,
                node_port,
                external_ips: external_ips.clone(),
                load_balancer_ips: load_balancer_ips.clone(),
                load_balancer_source_ranges: source_ranges.clone(),
                affinity_timeout,
                external_policy_local,
                internal_policy_local,
                health_check_node_port,
                endpoints,
            },
        ));
    }
    Ok(out)
}

/// The endpoints of the service port named `port_name`, merged from every slice of the service:
/// a slice's port of the same name gives the (resolved) target port.
fn endpoints_for(
    svc: &Key,
    port_name: &str,
    protocol: Protocol,
    slices: &[&EndpointSlice],
    errors: &mut Vec<InvalidObject>,
) -> Vec<Endpoint> {
    let mut seen = BTreeSet::new();
    let mut out = vec![];
    for slice in slices {
        let skey = key_of(&slice.metadata);
        if slice.address_type == "FQDN" {
            continue;
        }
        let Some(port) = slice.ports.iter().flatten().find_map(|p| {
            let name = p.name.as_deref().unwrap_or("");
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            (name == port_name && proto == protocol.to_string())
                .then_some(p.port)
                .flatten()
        }) else {
            continue;
        };
        let Some(port) = u16::try_from(port).ok().filter(|p| *p != 0) else {
            errors.push(invalid(
                "EndpointSlice",
                &skey,
                "ports[].port",
                format!("{port} is outside 1..=65535 (service {}/{})", svc.0, svc.1),
            ));
            continue;
        };
        for (i, ep) in slice.endpoints.iter().enumerate() {
            let Some(addr) = ep.addresses.first() else {
                continue;
            };
            let Ok(ip) = addr.parse::<IpAddr>() else {
                errors.push(invalid(
                    "EndpointSlice",
                    &skey,
                    format!("endpoints[{i}].addresses[0]"),
                    format!("invalid IP address {addr:?}"),
                ));
                continue;
            };
            if !seen.insert((ip, port)) {
                continue;
            }
            let c = ep.conditions.as_ref();
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let serving = c.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            out.push(Endpoint {
                ip,
                port,
                ready,
                serving,
                terminating,
                node_name: ep.node_name.clone(),
                zone: ep.zone.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::parse_manifests;
    use node_core::TrafficSource;

    const DUAL: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  externalIPs: [192.0.2.7]
  externalTrafficPolicy: Local
  sessionAffinity: ClientIP
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
status:
  loadBalancer:
    ingress: [{ip: 198.51.100.9}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-a
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: [10.244.0.10]
  nodeName: n1
- addresses: [10.244.0.11]
  conditions: {ready: false, serving: true, terminating: true}
  nodeName: n2
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-b
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- addresses: ["fd00:244::10"]
  conditions: {ready: true}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
"#;

    fn tracked(yaml: &str) -> Tracked {
        let mut t = ServiceTracker::new(NodeInfo {
            name: "n1".into(),
            ..Default::default()
        });
        let m = parse_manifests(yaml, "test.yaml").unwrap();
        t.replace_all(m.services, m.slices);
        t.compute()
    }

    #[test]
    fn only_local_load_balancers_keep_their_health_check_node_port() {
        let svc = |ty: &str, policy: &str| {
            format!(
                "kind: Service\napiVersion: v1\nmetadata: {{name: s, namespace: d}}\nspec: {{type: {ty}, clusterIP: 10.96.0.1, externalTrafficPolicy: {policy}, healthCheckNodePort: 32000, ports: [{{port: 80, nodePort: 30080}}]}}\n"
            )
        };
        let hc = |yaml: String| {
            tracked(&yaml).state.services[&ServicePortName::new("d", "s", "")]
                .health_check_node_port
        };
        assert_eq!(hc(svc("LoadBalancer", "Local")), Some(32000));
        assert_eq!(hc(svc("LoadBalancer", "Cluster")), None);
        assert_eq!(hc(svc("NodePort", "Local")), None);
    }

    #[test]
    fn dual_stack_load_balancer_with_named_ports_and_merged_slices() {
        let t = tracked(DUAL);
        assert!(t.errors.is_empty(), "{:?}", t.errors);
        let http = &t.state.services[&ServicePortName::new("shop", "web", "http")];
        assert_eq!(http.cluster_ips.len(), 2);
        assert_eq!(http.cluster_ips[1].to_string(), "fd00:96::10");
        assert_eq!(http.port, 80);
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(http.external_ips[0].to_string(), "192.0.2.7");
        assert_eq!(http.load_balancer_ips[0].to_string(), "198.51.100.9");
        assert_eq!(http.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert!(http.external_policy_local && !http.internal_policy_local);
        // named target port resolved through the slices' port names; slices merged
        assert_eq!(http.endpoints.len(), 3);
        assert!(http.endpoints.iter().all(|e| e.port == 8080));
        let e0 = &http.endpoints[0];
        assert!(
            e0.ready && e0.serving && !e0.terminating,
            "nil conditions: ready, serving"
        );
        let e1 = &http.endpoints[1];
        assert!(!e1.ready && e1.serving && e1.terminating);
        // Local external policy: only the local ready endpoint
        let ext = http.usable_endpoints(TrafficSource::External, "n1");
        assert_eq!(ext.len(), 1);
        let dns = &t.state.services[&ServicePortName::new("shop", "web", "dns")];
        assert_eq!(dns.protocol, Protocol::Udp);
        assert_eq!(dns.endpoints.len(), 2, "only the IPv4 slice has a dns port");
        assert!(dns.endpoints.iter().all(|e| e.port == 5353));
    }

    #[test]
    fn headless_external_name_and_bad_services() {
        let yaml = r#"
kind: Service
apiVersion: v1
metadata: {name: headless, namespace: a}
spec: {clusterIP: None, ports: [{port: 80}]}
---
kind: Service
apiVersion: v1
metadata: {name: ext, namespace: a}
spec: {type: ExternalName, externalName: example.com}
---
kind: Service
apiVersion: v1
metadata: {name: bad-ip, namespace: a}
spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}
---
kind: Service
apiVersion: v1
metadata: {name: bad-port, namespace: a}
spec: {clusterIP: 10.96.0.2, ports: [{port: 70000}]}
---
kind: Service
apiVersion: v1
metadata: {name: bad-proto, namespace: a}
spec: {clusterIP: 10.96.0.3, ports: [{port: 80, protocol: ICMP}]}
---
kind: Service
apiVersion: v1
metadata: {name: good, namespace: a}
spec:
  clusterIP: 10.96.0.4
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  internalTrafficPolicy: Local
  ports: [{port: 80, protocol: SCTP}]
"#;
        let t = tracked(yaml);
        let names: Vec<String> = t.state.services.keys().map(|k| k.to_string()).collect();
        assert_eq!(names, ["a/good"]);
        let good = t.state.services.values().next().unwrap();
        assert_eq!(good.protocol, Protocol::Sctp);
        assert_eq!(good.affinity_timeout, Some(Duration::from_secs(60)));
        assert!(good.internal_policy_local);
        let errs: Vec<String> = t.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].contains("a/bad-ip") && errs[0].contains("spec.clusterIPs[0]"),
            "{errs:?}"
        );
        assert!(
            errs[1].contains("a/bad-port") && errs[1].contains("spec.ports[0].port"),
            "{errs:?}"
        );
        assert!(
            errs[2].contains("a/bad-proto") && errs[2].contains("ICMP"),
            "{errs:?}"
        );
    }

    #[test]
    fn slices_come_and_go() {
        let mut t = ServiceTracker::new(NodeInfo::default());
        let m = parse_manifests(DUAL, "x").unwrap();
        t.replace_all(m.services, m.slices);
        t.delete_slice("shop", "web-a");
        let s = t.compute().state;
        let http = &s.services[&ServicePortName::new("shop", "web", "http")];
        assert_eq!(http.endpoints.len(), 1);
        t.delete_service("shop", "web");
        assert!(t.compute().state.services.is_empty());
    }
}
