//! [`BridgePlugin`]: a native, in-process CNI plugin. Pods hang off a Linux bridge on the node
//! through veth pairs; addresses come from leases on disk in host-local's layout.
//!
//! Per ADD, over rtnetlink: the bridge (created if missing, up, with the gateway addresses), a
//! veth pair whose pod end is created directly inside the pod's namespace (IFLA_NET_NS_FD on
//! the peer, not created then moved), hairpin mode on the bridge port, then inside the pod:
//! loopback up, the addresses and default routes. Optional masquerade and host ports go to an
//! nftables table of our own (`inet nodekit_<network>`). An ADD that fails midway is undone; DEL is idempotent;
//! GC releases what attachments no longer valid hold.
//!
//! The node is the network namespace of the thread making the plugin's first ADD: a few worker
//! threads started there do each ADD's netlink work in two batched `sendmsg`s (see `wire`),
//! entering the pod's namespace for the pod side, so the calling thread never changes namespace.
//! The `bandwidth` capability shapes on the node's end of the veth (see `shape`).

pub mod ipam;
mod nft;
mod shape;
mod wire;

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use ipnet::IpNet;
use node_core::{
    Attachment, AttachmentKey, CniError, CniPlugin, CniResult, Interface, IpConfig, PortMapping,
    Route,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use self::ipam::{LeaseStore, Range};
use self::nft::NftTable;
use crate::rtnl::{self, Rtnl};

/// Threads that do the ADDs' netlink work.
const WORKERS: usize = 4;

/// The configuration of a [`BridgePlugin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct BridgeConfig {
    /// The network name: the lease directory's and nftables table's name.
    pub network: String,
    /// The bridge on the node.
    pub bridge: String,
    /// The pod subnets, one address per subnet per pod (IPv4 and/or IPv6).
    pub subnets: Vec<IpNet>,
    /// The gateway of each subnet, in the same order; missing ones are the subnet's first host.
    pub gateways: Vec<IpAddr>,
    /// The MTU of the bridge and veths (`None`: the kernel's default).
    pub mtu: Option<u32>,
    /// Masquerade traffic from the pods to destinations outside their subnet.
    pub masquerade: bool,
    /// Hairpin mode on the bridge ports (a pod reaches itself through a service).
    pub hairpin: bool,
    /// The lease directory (host-local's `dataDir`): leases live in `<lease_dir>/<network>/`.
    pub lease_dir: PathBuf,
    /// Where per-attachment records (host ports) are kept: `<state_dir>/<network>/`.
    pub state_dir: PathBuf,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            network: "nodekit".into(),
            bridge: "nk0".into(),
            subnets: vec!["10.88.0.0/16".parse().expect("valid")],
            gateways: Vec::new(),
            mtu: None,
            masquerade: false,
            hairpin: true,
            lease_dir: PathBuf::from("/var/lib/cni/networks"),
            state_dir: PathBuf::from("/var/lib/nodekit/cni"),
        }
    }
}

/// What is kept per attachment beside its leases.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    container_id: String,
    ifname: String,
    netns: PathBuf,
    ips: Vec<IpAddr>,
    #[serde(default)]
    port_mappings: Vec<PortMapping>,
}

#[derive(Debug, Default)]
struct Prepared {
    bridge: Option<(u32, String)>,
    nft: bool,
}

/// The native bridge plugin. See the [module docs](self).
#[derive(Debug)]
pub struct BridgePlugin {
    config: BridgeConfig,
    ranges: Vec<Range>,
    leases: LeaseStore,
    nft: NftTable,
    prepared: Mutex<Prepared>,
    workers: std::sync::OnceLock<wire::Workers>,
}

fn config_err(field: &str, message: impl Into<String>) -> CniError {
    CniError::Config {
        origin: format!("bridge config field {field}"),
        message: message.into(),
    }
}

impl BridgePlugin {
    /// Check the config; nothing is touched until the first ADD.
    pub fn new(config: BridgeConfig) -> Result<Self, CniError> {
        if config.network.is_empty()
            || config.network.contains('/')
            || config.network.starts_with('.')
        {
            return Err(config_err(
                "network",
                format!("{:?} is not a usable network name", config.network),
            ));
        }
        if config.bridge.is_empty()
            || config.bridge.len() > 15
            || config.bridge.contains(['/', ' '])
        {
            return Err(config_err(
                "bridge",
                format!("{:?} is not an interface name", config.bridge),
            ));
        }
        if config.subnets.is_empty() {
            return Err(config_err("subnets", "no subnet"));
        }
        if config.gateways.len() > config.subnets.len() {
            return Err(config_err("gateways", "more gateways than subnets"));
        }
        let mut ranges = Vec::new();
        for (i, s) in config.subnets.iter().enumerate() {
            let subnet = s.trunc();
            let gateway = match config.gateways.get(i) {
                Some(g) => *g,
                None => ipam::first_host(subnet)
                    .ok_or_else(|| config_err("subnets", format!("{s} has no host")))?,
            };
            if !subnet.contains(&gateway) || gateway == subnet.network() {
                return Err(config_err(
                    "gateways",
                    format!("{gateway} is not a host of {subnet}"),
                ));
            }
            ranges.push(Range { subnet, gateway });
        }
        Ok(Self {
            leases: LeaseStore::new(&config.lease_dir, &config.network, ranges.clone()),
            nft: NftTable::new(&config.network),
            ranges,
            config,
            prepared: Mutex::new(Prepared::default()),
            workers: std::sync::OnceLock::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// The name of the plugin's nftables table (family `inet`).
    pub fn nft_table(&self) -> &str {
        self.nft.name()
    }

    /// The leases held now (file work: call it where blocking is fine).
    pub fn leases(&self) -> Result<Vec<ipam::Lease>, CniError> {
        self.leases.list()
    }

    /// The host-side veth name of an attachment: `nkv` + 12 hex digits of a hash of its key.
    pub fn host_ifname(key: &AttachmentKey) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key
            .container_id
            .bytes()
            .chain([b'/'])
            .chain(key.ifname.bytes())
        {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        format!("nkv{:012x}", h & 0xffff_ffff_ffff)
    }

    /// Delete everything the plugin made on the node (the nftables table; the bridge when
    /// `bridge` is set). Leases stay on disk.
    pub async fn teardown_node(&self, bridge: bool) -> Result<(), CniError> {
        self.nft.remove().await?;
        if bridge {
            Rtnl::current()?.del_link(&self.config.bridge).await?;
        }
        *self.prepared.lock().await = Prepared::default();
        Ok(())
    }

    fn record_path(&self, key: &AttachmentKey) -> PathBuf {
        self.config
            .state_dir
            .join(&self.config.network)
            .join(format!("{}-{}.json", key.container_id, key.ifname))
    }

    /// The bridge, with its gateway addresses, forwarding on and the nftables table when
    /// masquerading; done once per instance.
    async fn prepare(&self) -> Result<(u32, String), CniError> {
        let mut p = self.prepared.lock().await;
        if let Some(b) = &p.bridge {
            return Ok(b.clone());
        }
        let node = Rtnl::current()?;
        let link = node
            .ensure_bridge(&self.config.bridge, self.config.mtu)
            .await?;
        let index = link.header.index;
        // one dump, then only what is missing (a plugin binary prepares on every call)
        let have = node.addresses(index).await.unwrap_or_default();
        for r in self.ranges.iter().filter(|r| !have.contains(&r.gateway)) {
            let gw = IpNet::new(r.gateway, r.subnet.prefix_len()).expect("valid prefix");
            node.add_address(index, gw).await?;
        }
        // Forwarding in the node's namespace (this thread's: /proc/sys/net follows the opener),
        // and host ports on the node's 127.0.0.1: loopback-sourced traffic may be routed through
        // the bridge (then masqueraded, see `nft`), as the portmap plugin does.
        let localnet = format!(
            "/proc/sys/net/ipv4/conf/{}/route_localnet",
            self.config.bridge
        );
        for (path, v4) in [
            ("/proc/sys/net/ipv4/ip_forward", true),
            ("/proc/sys/net/ipv6/conf/all/forwarding", false),
            (localnet.as_str(), true),
        ] {
            if self.ranges.iter().any(|r| r.subnet.addr().is_ipv4() == v4)
                && std::fs::read_to_string(path).map_or(true, |v| v.trim() != "1")
            {
                let _ = std::fs::write(path, "1");
            }
        }
        if self.config.masquerade {
            self.nft.ensure(&self.config.subnets, true).await?;
            p.nft = true;
        }
        let b = (index, rtnl::mac_of(&link));
        p.bridge = Some(b.clone());
        Ok(b)
    }

    async fn ensure_nft(&self) -> Result<(), CniError> {
        let mut p = self.prepared.lock().await;
        if !p.nft {
            self.nft
                .ensure(&self.config.subnets, self.config.masquerade)
                .await?;
            p.nft = true;
        }
        Ok(())
    }

    async fn attach(
        &self,
        a: &Attachment,
        ns: &File,
        leases: &[ipam::Lease],
        shaping: (Option<shape::Limit>, Option<shape::Limit>),
    ) -> Result<CniResult, CniError> {
        let key = a.key();
        let (bridge_index, bridge_mac) = self.prepare().await?;
        let host = Self::host_ifname(&key);
        let mtu = self.config.mtu;
        let wiring = wire::Wiring {
            who: format!("{}/{}", a.container_id, a.ifname),
            container_id: a.container_id.clone(),
            netns: a.netns.clone(),
            host: host.clone(),
            ifname: a.ifname.clone(),
            bridge: bridge_index,
            mtu,
            hairpin: self.config.hairpin,
            addresses: leases.iter().map(|l| l.address).collect(),
            gateways: self.ranges.iter().map(|r| r.gateway).collect(),
            ingress: shaping.0,
            egress: shaping.1,
        };
        if self.workers.get().is_none() {
            // Started from this thread, so in the node's namespace; without them (the threads
            // could not start) every ADD gets a thread of its own.
            if let Ok(w) = wire::Workers::start(WORKERS) {
                let _ = self.workers.set(w);
            }
        }
        let wired = match wire::wire_on_thread(wiring, ns, self.workers.get()).await {
            Ok(w) => w,
            Err(e) => {
                if e.bridge_gone {
                    // The bridge went away under us: make it again next time.
                    self.prepared.lock().await.bridge = None;
                }
                return Err(e.error);
            }
        };

        let ips: Vec<IpAddr> = leases.iter().map(|l| l.address.addr()).collect();
        let ports = NftTable::host_ports(&a.capabilities.port_mappings, &ips)?;
        if !ports.is_empty() {
            self.ensure_nft().await?;
            self.nft.add_ports(&ports).await.map_err(|e| {
                let list: Vec<String> = a
                    .capabilities
                    .port_mappings
                    .iter()
                    .map(|m| format!("{}/{}", m.host_port, m.protocol))
                    .collect();
                CniError::Other(format!(
                    "attachment {}/{}: host ports {} could not be mapped (already in use?): {e}",
                    a.container_id,
                    a.ifname,
                    list.join(", ")
                ))
            })?;
        }
        let record = Record {
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            netns: a.netns.clone(),
            ips: ips.clone(),
            port_mappings: a.capabilities.port_mappings.clone(),
        };
        let path = self.record_path(&a.key());
        if let Err(e) = blocking(move || write_record(path, &record)).await {
            let _ = self.nft.del_ports(&ports).await;
            return Err(e);
        }

        Ok(CniResult {
            cni_version: crate::version::CURRENT_VERSION.into(),
            interfaces: vec![
                Interface {
                    name: self.config.bridge.clone(),
                    mac: bridge_mac,
                    mtu,
                    sandbox: String::new(),
                },
                Interface {
                    name: host,
                    mac: wired.host_mac,
                    mtu,
                    sandbox: String::new(),
                },
                Interface {
                    name: a.ifname.clone(),
                    mac: wired.pod_mac,
                    mtu,
                    sandbox: a.netns.display().to_string(),
                },
            ],
            ips: leases
                .iter()
                .map(|l| IpConfig {
                    address: l.address,
                    gateway: Some(self.ranges[l.range].gateway),
                    interface: Some(2),
                })
                .collect(),
            routes: self
                .ranges
                .iter()
                .map(|r| Route {
                    dst: if r.gateway.is_ipv4() {
                        "0.0.0.0/0".parse().expect("valid")
                    } else {
                        "::/0".parse().expect("valid")
                    },
                    gw: Some(r.gateway),
                })
                .collect(),
            dns: Default::default(),
        })
    }

    /// Undo everything held for `key` (host ports, veth, leases, record); idempotent.
    async fn detach(&self, key: &AttachmentKey, mappings: &[PortMapping]) -> Result<(), CniError> {
        let path = self.record_path(key);
        let record = blocking(move || Ok(read_record(&path))).await?;
        let mappings = record.as_ref().map_or(mappings, |r| &r.port_mappings);
        let mut ports = Vec::new();
        if !mappings.is_empty() {
            let ips: Vec<IpAddr> = match &record {
                Some(r) => r.ips.clone(),
                None => {
                    let (store, key) = (self.leases.clone(), key.clone());
                    blocking(move || store.find(&key))
                        .await?
                        .iter()
                        .map(|l| l.address.addr())
                        .collect()
                }
            };
            ports = NftTable::host_ports(mappings, &ips).unwrap_or_default();
        }
        // The links and the host ports at once: the links' deletion is on other threads.
        let host = Self::host_ifname(key);
        let links = [shape::ifb_name(&host), host];
        let (links, ports) = tokio::join!(wire::delete_links(&links), self.nft.del_ports(&ports));
        links?;
        ports?;
        // The addresses are free once the links are gone.
        let (store, key, path) = (self.leases.clone(), key.clone(), self.record_path(key));
        blocking(move || {
            store.release(&key)?;
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(CniError::Io { path, source: e })
                }
                _ => Ok(()),
            }
        })
        .await
    }
}

/// Run file work (leases and records: file I/O, `flock` waits) on the blocking pool: the
/// async threads never wait on it.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CniError> + Send + 'static,
) -> Result<T, CniError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| CniError::Other(format!("the lease and record work failed: {e}")))?
}

fn read_record(path: &Path) -> Option<Record> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_record(path: PathBuf, r: &Record) -> Result<(), CniError> {
    let io = |source| CniError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(path.parent().expect("has a parent")).map_err(io)?;
    std::fs::write(&path, serde_json::to_vec(r).expect("serializable")).map_err(io)
}

fn records(dir: &Path) -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect()
}

fn check_attachment(a: &Attachment) -> Result<(), CniError> {
    let bad = |m: &str| {
        CniError::Other(format!(
            "attachment {:?}/{:?}: {m}",
            a.container_id, a.ifname
        ))
    };
    if a.container_id.is_empty() || a.container_id.contains(['/', '\0']) {
        return Err(bad("the container id is empty or has a '/'"));
    }
    if a.ifname.is_empty()
        || a.ifname.len() > 15
        || a.ifname.contains(['/', ' ', ':'])
        || a.ifname == "lo"
    {
        return Err(bad("the interface name is not usable"));
    }
    Ok(())
}

fn open_netns(a: &Attachment) -> Result<File, CniError> {
    File::open(&a.netns).map_err(|e| CniError::Netns {
        container_id: a.container_id.clone(),
        path: a.netns.clone(),
        message: e.to_string(),
    })
}

#[async_trait]
impl CniPlugin for BridgePlugin {
    async fn add(&self, a: &Attachment) -> Result<CniResult, CniError> {
        check_attachment(a)?;
        let shaping = match &a.capabilities.bandwidth {
            Some(b) => shape::limits(b).map_err(|e| match e {
                CniError::Config { origin, message } => CniError::Config {
                    origin,
                    message: format!("attachment {}/{}: {message}", a.container_id, a.ifname),
                },
                e => e,
            })?,
            None => (None, None),
        };
        let ns = open_netns(a)?;
        let (store, key) = (self.leases.clone(), a.key());
        let leases = blocking(move || store.allocate(&key)).await?;
        match self.attach(a, &ns, &leases, shaping).await {
            Ok(r) => Ok(r),
            Err(e) => {
                // Host ports are undone by `attach` itself: by key they could be another pod's.
                if let Err(undo) = self.detach(&a.key(), &[]).await {
                    tracing::warn!(container = %a.container_id, error = %undo, "undoing a failed ADD was incomplete");
                }
                Err(e)
            }
        }
    }

    async fn del(&self, a: &Attachment) -> Result<(), CniError> {
        check_attachment(a)?;
        self.detach(&a.key(), &a.capabilities.port_mappings).await
    }

    async fn check(&self, a: &Attachment) -> Result<(), CniError> {
        check_attachment(a)?;
        let key = a.key();
        let who = format!("attachment {}/{}", a.container_id, a.ifname);
        let leases = {
            let (store, key) = (self.leases.clone(), key.clone());
            blocking(move || store.find(&key)).await?
        };
        if leases.len() != self.ranges.len() {
            return Err(CniError::Other(format!(
                "{who}: holds {} of {} leases",
                leases.len(),
                self.ranges.len()
            )));
        }
        let ns = open_netns(a)?;
        let node = Rtnl::current()?;
        let bridge = node.link(&self.config.bridge).await?.ok_or_else(|| {
            CniError::Other(format!("{who}: bridge {} is missing", self.config.bridge))
        })?;
        let host = Self::host_ifname(&key);
        let host_link = node
            .link(&host)
            .await?
            .ok_or_else(|| CniError::Other(format!("{who}: veth {host} is missing")))?;
        if rtnl::controller_of(&host_link) != Some(bridge.header.index) {
            return Err(CniError::Other(format!(
                "{who}: veth {host} is not on bridge {}",
                self.config.bridge
            )));
        }
        let pod = Rtnl::in_netns(&ns).await?;
        let eth = pod
            .link(&a.ifname)
            .await?
            .ok_or_else(|| CniError::Other(format!("{who}: {} is missing in the pod", a.ifname)))?;
        let have = pod.addresses(eth.header.index).await?;
        for l in &leases {
            if !have.contains(&l.address.addr()) {
                return Err(CniError::Other(format!(
                    "{who}: address {} is missing in the pod",
                    l.address
                )));
            }
        }
        let gws = pod.default_gateways(eth.header.index).await?;
        for r in &self.ranges {
            if !gws.contains(&r.gateway) {
                return Err(CniError::Other(format!(
                    "{who}: default route via {} is missing",
                    r.gateway
                )));
            }
        }
        Ok(())
    }

    async fn status(&self) -> Result<(), CniError> {
        let dir = self.leases.dir();
        std::fs::create_dir_all(dir).map_err(|source| CniError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(())
    }

    async fn gc(&self, keep: &[AttachmentKey]) -> Result<(), CniError> {
        let (store, kept) = (self.leases.clone(), keep.to_vec());
        let mut stale = blocking(move || store.stale(&kept)).await?;
        let dir = self.config.state_dir.join(&self.config.network);
        for r in blocking(move || Ok(records(&dir))).await? {
            let k = AttachmentKey {
                container_id: r.container_id,
                ifname: r.ifname,
            };
            if !keep.contains(&k) && !stale.contains(&k) {
                stale.push(k);
            }
        }
        let mut first = None;
        for k in stale {
            tracing::info!(container = %k.container_id, ifname = %k.ifname, "CNI GC: releasing a stale attachment");
            if let Err(e) = self.detach(&k, &[]).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
