//! Synthetic proxy states for router benchmarks and tests: `n` services x `m` endpoints, laid
//! out like the reference generators (`172.16.0.0/12` ClusterIPs, `10.100.0.0/14` endpoints).

use std::collections::BTreeMap;
use std::net::IpAddr;

use node_core::{Endpoint, NodeInfo, Protocol, ProxyState, ServicePort, ServicePortName};

/// The ClusterIP of service `s`.
pub fn service_ip(s: usize) -> IpAddr {
    format!("172.{}.{}.{}", 16 + s / 65536, (s / 256) % 256, s % 256)
        .parse()
        .expect("valid")
}

/// The address of endpoint `e` of service `s` among `m` per service.
pub fn endpoint_ip(s: usize, e: usize, m: usize) -> IpAddr {
    let k = s * m + e;
    format!("10.{}.{}.{}", 100 + k / 65536, (k / 256) % 256, k % 256)
        .parse()
        .expect("valid")
}

/// `n` TCP services (port 80) with `m` ready endpoints each (port 8080), node `bench`, cluster
/// CIDR `10.0.0.0/8`.
pub fn synthetic(n: usize, m: usize) -> ProxyState {
    let services: BTreeMap<ServicePortName, ServicePort> = (0..n)
        .map(|s| {
            (
                ServicePortName::new("bench", format!("svc-{s}"), "http"),
                ServicePort {
                    cluster_ips: vec![service_ip(s)],
                    port: 80,
                    protocol: Protocol::Tcp,
                    endpoints: (0..m)
                        .map(|e| Endpoint::ready(endpoint_ip(s, e, m), 8080))
                        .collect(),
                    ..Default::default()
                },
            )
        })
        .collect();
    ProxyState {
        services,
        node: NodeInfo {
            name: "bench".into(),
            cluster_cidrs: vec!["10.0.0.0/8".parse().expect("valid")],
            ..Default::default()
        },
    }
}

/// `state` with the first endpoint of the first service moved to another address.
pub fn with_one_endpoint_changed(state: &ProxyState) -> ProxyState {
    let mut out = state.clone();
    if let Some(sp) = out.services.values_mut().next()
        && let Some(e) = sp.endpoints.first_mut()
    {
        e.ip = "10.250.0.1".parse().expect("valid");
    }
    out
}

/// `state` with one more service (`m` endpoints).
pub fn with_one_service_added(state: &ProxyState, m: usize) -> ProxyState {
    let mut out = state.clone();
    let s = 250_000; // far from the synthetic ones
    out.services.insert(
        ServicePortName::new("bench", "added", "http"),
        ServicePort {
            cluster_ips: vec!["172.31.255.254".parse().expect("valid")],
            port: 80,
            protocol: Protocol::Tcp,
            endpoints: (0..m)
                .map(|e| Endpoint::ready(endpoint_ip(s, e, m), 8080))
                .collect(),
            ..Default::default()
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_states_differ_as_named() {
        let a = synthetic(300, 5);
        assert_eq!(a.services.len(), 300);
        assert_eq!(service_ip(257).to_string(), "172.16.1.1");
        let b = with_one_endpoint_changed(&a);
        let diff: usize = a
            .services
            .values()
            .zip(b.services.values())
            .map(|(x, y)| {
                x.endpoints
                    .iter()
                    .zip(&y.endpoints)
                    .filter(|(p, q)| p != q)
                    .count()
            })
            .sum();
        assert_eq!(diff, 1);
        assert_eq!(with_one_service_added(&a, 5).services.len(), 301);
    }
}
