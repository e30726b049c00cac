//! Shared helpers of node-cni's root tests: unique names, attachments, what is left on a node.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use node_cni::{ExecCni, ExecConfig};
use node_core::{Attachment, Bandwidth, PodRef, PortMapping};
use node_test_support::NetnsFixture;

static N: AtomicU32 = AtomicU32::new(0);

/// A number unique to this test process run (bridge names, subnets).
pub fn unique() -> u32 {
    (std::process::id() % 200) * 50 + N.fetch_add(1, Ordering::SeqCst) % 50
}

/// A bridge name unique to the test (`nkb<n>`).
pub fn bridge_name() -> String {
    format!("nkb{}", unique())
}

/// A /24 unique to the test, in 10.128.0.0/9 (`10.x.y.0/24`).
pub fn subnet24() -> (String, String) {
    let u = unique();
    let (x, y) = (128 + (u / 256) % 128, u % 256);
    (format!("10.{x}.{y}.0/24"), format!("10.{x}.{y}.1"))
}

/// An attachment of `pod` on `eth0`.
pub fn attachment(pod: &NetnsFixture, id: &str) -> Attachment {
    Attachment {
        container_id: id.to_string(),
        netns: pod.path(),
        ifname: "eth0".into(),
        pod: PodRef::new("default", id, format!("uid-{id}")),
        capabilities: Default::default(),
    }
}

/// [`attachment`] with host ports.
pub fn attachment_with_ports(pod: &NetnsFixture, id: &str, ports: Vec<PortMapping>) -> Attachment {
    let mut a = attachment(pod, id);
    a.capabilities.port_mappings = ports;
    a
}

/// Host port `host_port` of `protocol` to `container_port` of the pod, on every host address.
pub fn port_mapping(host_port: u16, container_port: u16, protocol: &str) -> PortMapping {
    PortMapping {
        host_port,
        container_port,
        protocol: protocol.into(),
        host_ip: None,
    }
}

/// A bandwidth limit of `rate` bits/s with a bucket of `burst` bits, the same each way.
pub fn bandwidth(rate: u64, burst: u64) -> Bandwidth {
    Bandwidth {
        ingress_rate: rate,
        ingress_burst: burst,
        egress_rate: rate,
        egress_burst: burst,
    }
}

/// A fresh network namespace for each name (a node, its pods).
pub fn namespaces<const N: usize>(names: [&str; N]) -> [NetnsFixture; N] {
    names.map(|n| NetnsFixture::new(n).unwrap())
}

/// Run the future `f` makes on a tokio runtime of a thread inside `ns`; its output.
pub fn in_ns<T, F, Fut>(ns: &NetnsFixture, f: F) -> T
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = T>,
    T: Send,
{
    ns.run_in(|| runtime().block_on(f()))
        .expect("inside the namespace")
}

/// An [`ExecCni`] reading its networks from `conf_dir`, its plugins from `bin_dirs`, caching
/// results in `cache_dir`, with a 30 s timeout per plugin call.
pub fn exec_cni(
    conf_dir: &Path,
    bin_dirs: impl IntoIterator<Item = PathBuf>,
    cache_dir: &Path,
) -> ExecCni {
    ExecCni::new(
        ExecConfig::default()
            .conf_dir(conf_dir)
            .bin_dirs(bin_dirs)
            .cache_dir(cache_dir)
            .timeout(Duration::from_secs(30)),
    )
    .unwrap()
}

/// The interface names in the output of `ip -o link show` (without the `@peer` part).
fn link_names(ip_o_link: &str) -> Vec<String> {
    ip_o_link
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap().to_string())
        })
        .collect()
}

/// The interfaces enslaved to `bridge` in `node`.
pub fn bridge_ports(node: &NetnsFixture, bridge: &str) -> Vec<String> {
    link_names(
        &node
            .sh(&format!(
                "ip -o link show master {bridge} 2>/dev/null || true"
            ))
            .unwrap(),
    )
}

/// The veth interfaces in `node`.
pub fn veths(node: &NetnsFixture) -> Vec<String> {
    link_names(&node.sh("ip -o link show type veth").unwrap())
}

/// The leased addresses (host-local layout) in `dir`.
pub fn leases(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock" && n != "nodekit.index" && !n.starts_with("last_reserved_ip"))
        .collect();
    v.sort();
    v
}

/// Whether `pod` has an interface named `ifname`.
pub fn has_link(pod: &NetnsFixture, ifname: &str) -> bool {
    pod.sh(&format!(
        "ip link show {ifname} >/dev/null 2>&1 && echo yes || true"
    ))
    .unwrap()
    .trim()
        == "yes"
}

/// Ping `ip` once from `from`, retrying for up to 5 s.
pub fn ping(from: &NetnsFixture, ip: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if from
            .sh(&format!("/bin/busybox ping -c1 -W1 {ip} >/dev/null"))
            .is_ok()
        {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process in a namespace, killed and reaped on drop.
pub struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serve `body` over HTTP on `port` in `pod` (busybox httpd) while the returned value lives.
pub fn serve_http(pod: &NetnsFixture, dir: &Path, port: u16, body: &str) -> Server {
    std::fs::write(dir.join("index.html"), body).unwrap();
    Server(
        pod.spawn(&format!(
            "exec /bin/busybox httpd -f -p {port} -h {}",
            dir.display()
        ))
        .unwrap(),
    )
}

/// GET `url` from `from`, retrying for up to 5 s; the body, if any answered.
pub fn http_get(from: &NetnsFixture, url: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(body) = from.sh(&format!("timeout 2 /bin/busybox wget -q -O - {url}")) {
            return Some(body);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A tokio runtime for a thread inside a namespace.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Bytes per second of one TCP transfer of `bytes` from `from` to `to_ip` (a listener inside
/// `to`), measured by the receiver from the first byte to the end; every wait has a timeout.
pub fn tcp_throughput(
    from: &NetnsFixture,
    to: &NetnsFixture,
    to_ip: std::net::IpAddr,
    bytes: usize,
) -> f64 {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    let listener = to
        .run_in(move || TcpListener::bind(SocketAddr::new(to_ip, 0)))
        .unwrap()
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        let mut start = None;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            start.get_or_insert_with(Instant::now);
            got += n;
        }
        (got, start.map(|t| t.elapsed()).unwrap_or_default())
    });
    let mut s = from
        .run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        s.write_all(&chunk[..n]).unwrap();
        sent += n;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (got, took) = receiver.join().unwrap();
    assert_eq!(got, bytes, "the whole transfer arrived");
    got as f64 / took.as_secs_f64().max(1e-6)
}

/// The elements of the host port maps of nftables table `inet <table>` in `node` (empty when
/// the table does not exist).
pub fn host_port_elements(node: &NetnsFixture, table: &str) -> String {
    node.sh(&format!(
        "nft list map inet {table} hostports4 2>/dev/null; nft list map inet {table} hostports6 2>/dev/null; true"
    ))
    .unwrap()
    .lines()
    .filter(|l| l.contains(" : ") && !l.trim_start().starts_with("type "))
    .collect::<Vec<_>>()
    .join("\n")
}

/// A CNI plugin (a shell script) that fails every ADD with code 107 and logs each call to
/// `calls` beside itself.
pub const FAILING_PLUGIN: &str = r#"#!/bin/sh
cat >/dev/null
echo "$CNI_COMMAND $CNI_CONTAINERID" >> "$(dirname "$0")/calls"
case "$CNI_COMMAND" in
  ADD) echo '{"cniVersion":"1.0.0","code":107,"msg":"scripted failure","details":"always fails ADD"}'; exit 1 ;;
  VERSION) echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' ;;
esac
exit 0
"#;

/// Write [`FAILING_PLUGIN`] as `<dir>/nkt-fail`, executable.
pub fn write_failing_plugin(dir: &Path) {
    let script = dir.join("nkt-fail");
    std::fs::write(&script, FAILING_PLUGIN).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}
