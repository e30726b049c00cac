//! A small routed network for service-proxy tests, entirely inside namespaces the fixture creates:
//! a `node` namespace (where a router programs the kernel), one namespace per backend pod joined
//! to the node by a veth and a /32 route (as the ptp CNI plugin does), and an `ext` namespace
//! standing for a client outside the cluster.
//!
//! ```text
//!   ext 192.168.50.2 --- 192.168.50.1 node 10.244.0.1 --- pod-i 10.244.0.(10+i)
//!       fd00:50::2   ---   fd00:50::1       fd00:244::1 --- pod-i fd00:244::(10+i)
//! ```
//! Pods run echo servers that answer `<pod name> <peer address>` on TCP and UDP, so a test sees
//! which backend answered and from which source address it saw the client.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::NetnsFixture;

/// The node's address towards the `ext` namespace (NodePorts answer on it).
pub const NODE_IP: &str = "192.168.50.1";
/// The `ext` client's address.
pub const EXT_IP: &str = "192.168.50.2";
/// The node's IPv6 address towards `ext`.
pub const NODE_IP6: &str = "fd00:50::1";
/// The `ext` client's IPv6 address.
pub const EXT_IP6: &str = "fd00:50::2";
/// The pod CIDR of the topology (the cluster CIDR a router masquerades outside of).
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The IPv6 pod CIDR.
pub const POD_CIDR6: &str = "fd00:244::/64";

/// A backend pod of the topology.
#[derive(Debug)]
pub struct TopologyPod {
    /// The pod's name (what its echo servers answer).
    pub name: String,
    /// Its namespace.
    pub ns: NetnsFixture,
    /// Its IPv4 address.
    pub ip: IpAddr,
    /// Its IPv6 address.
    pub ip6: IpAddr,
}

/// The network: node, ext and pods; everything is removed on drop.
#[derive(Debug)]
pub struct ServiceTopology {
    /// The backend pods (declared before `node` so they drop first).
    pub pods: Vec<TopologyPod>,
    /// The client outside the cluster.
    pub ext: NetnsFixture,
    /// The node, where a router runs.
    pub node: NetnsFixture,
    servers: Vec<EchoServer>,
}

impl ServiceTopology {
    /// Build a node, an `ext` client and `pods` backend pods named `pod-0`, `pod-1`, ...
    pub fn new(pods: usize) -> io::Result<Self> {
        let node = NetnsFixture::new("node")?;
        let ext = NetnsFixture::new("ext")?;
        node.sh("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 net.ipv4.conf.all.route_localnet=1")?;
        crate::netns::connect_veth(
            &node,
            "ve0",
            "192.168.50.1/24",
            &ext,
            "eth0",
            "192.168.50.2/24",
        )?;
        node.sh("ip -6 addr add fd00:50::1/64 dev ve0 nodad")?;
        ext.sh("ip -6 addr add fd00:50::2/64 dev eth0 nodad && ip route add default via 192.168.50.1 && ip -6 route add default via fd00:50::1")?;
        let mut out = Self {
            pods: vec![],
            ext,
            node,
            servers: vec![],
        };
        for i in 0..pods {
            out.add_pod(&format!("pod-{i}"))?;
        }
        Ok(out)
    }

    /// Add one more backend pod.
    pub fn add_pod(&mut self, name: &str) -> io::Result<&TopologyPod> {
        let i = self.pods.len() + 10;
        let ns = NetnsFixture::new(name)?;
        let host_if = format!("vp{i}");
        crate::netns::run_ok(std::process::Command::new("ip").args([
            "-n",
            self.node.name(),
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]))?;
        self.node.sh(&format!(
            "ip addr add 10.244.0.1/32 dev {host_if} && ip -6 addr add fd00:244::1/128 dev {host_if} nodad && ip link set {host_if} up \
             && ip route add 10.244.0.{i}/32 dev {host_if} && ip -6 route add fd00:244::{i}/128 dev {host_if}"
        ))?;
        ns.sh(&format!(
            "ip addr add 10.244.0.{i}/32 dev eth0 && ip -6 addr add fd00:244::{i}/128 dev eth0 nodad && ip link set eth0 up \
             && ip route add 10.244.0.1/32 dev eth0 && ip route add default via 10.244.0.1 dev eth0 \
             && ip -6 route add fd00:244::1/128 dev eth0 && ip -6 route add default via fd00:244::1 dev eth0"
        ))?;
        self.pods.push(TopologyPod {
            name: name.to_string(),
            ns,
            ip: format!("10.244.0.{i}").parse().expect("valid"),
            ip6: format!("fd00:244::{i}").parse().expect("valid"),
        });
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Start TCP and UDP echo servers on `port` (IPv4 and IPv6) in every pod.
    pub fn serve_all(&mut self, port: u16) -> io::Result<()> {
        for i in 0..self.pods.len() {
            self.serve(i, port)?;
        }
        Ok(())
    }

    /// Start TCP and UDP echo servers on `port` in pod `index`.
    pub fn serve(&mut self, index: usize, port: u16) -> io::Result<()> {
        let pod = &self.pods[index];
        self.servers
            .push(EchoServer::start(&pod.ns, &pod.name, port)?);
        Ok(())
    }

    /// Stop the echo servers of pod `index` (as if the pod went away).
    pub fn stop_serving(&mut self, index: usize) {
        let name = self.pods[index].name.clone();
        self.servers.retain(|s| s.name != name);
    }
}

/// TCP and UDP servers inside a namespace answering `<name> <peer address>\n`; stopped on drop.
#[derive(Debug)]
pub struct EchoServer {
    name: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServer {
    /// Listen on `[::]:port` (TCP and UDP, dual-stack) inside `ns`.
    pub fn start(ns: &NetnsFixture, name: &str, port: u16) -> io::Result<Self> {
        let (tcp, udp) = ns.run_in(|| -> io::Result<(TcpListener, UdpSocket)> {
            let tcp = TcpListener::bind(("::", port))?;
            let udp = UdpSocket::bind(("::", port))?;
            Ok((tcp, udp))
        })??;
        tcp.set_nonblocking(true)?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = vec![];
        let (n, s) = (name.to_string(), stop.clone());
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut c, peer)) => {
                        let _ = c.set_nonblocking(false);
                        let _ = writeln!(c, "{n} {}", unmap(peer.ip()));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
        let (n, s) = (name.to_string(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(format!("{n} {}\n", unmap(peer.ip())).as_bytes(), peer);
                }
            }
        }));
        Ok(Self {
            name: name.to_string(),
            stop,
            threads,
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// What an echo server answered: the pod's name and the client address it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The pod that answered.
    pub pod: String,
    /// The source address the pod saw.
    pub peer: IpAddr,
}

fn parse_answer(s: &str) -> io::Result<Answer> {
    let mut it = s.split_whitespace();
    match (it.next(), it.next().and_then(|p| p.parse().ok())) {
        (Some(pod), Some(peer)) => Ok(Answer {
            pod: pod.to_string(),
            peer,
        }),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {s:?}"),
        )),
    }
}

/// Connect over TCP to `addr` from inside `ns` and read the echo server's answer.
pub fn tcp_request(ns: &NetnsFixture, addr: SocketAddr, timeout: Duration) -> io::Result<Answer> {
    ns.run_in(|| {
        let mut c = TcpStream::connect_timeout(&addr, timeout)?;
        c.set_read_timeout(Some(timeout))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        parse_answer(&s)
    })?
}

/// Send one UDP datagram to `addr` from inside `ns` and read the echo server's answer.
pub fn udp_request(ns: &NetnsFixture, addr: SocketAddr, timeout: Duration) -> io::Result<Answer> {
    ns.run_in(|| {
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().expect("valid")
        } else {
            "[::]:0".parse().expect("valid")
        };
        let s = UdpSocket::bind(bind)?;
        s.set_read_timeout(Some(timeout))?;
        s.connect(addr)?;
        s.send(b"hello\n")?;
        let mut buf = [0u8; 512];
        let n = s.recv(&mut buf)?;
        parse_answer(&String::from_utf8_lossy(&buf[..n]))
    })?
}

/// Make `n` TCP requests to `addr` from `ns` (each a new connection) and count the answers by
/// pod; failures are counted under `"<error>"`.
pub fn tcp_spread(
    ns: &NetnsFixture,
    addr: SocketAddr,
    n: usize,
    timeout: Duration,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let key = match tcp_request(ns, addr, timeout) {
            Ok(a) => a.pod,
            Err(_) => "<error>".to_string(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}
