//! The IPVS router, as kube-proxy's IPVS mode: one virtual server per service address and port
//! with the usable endpoints as NAT real servers, over generic netlink (family `IPVS`); the
//! service addresses on a dummy interface (`nodekit-ipvs0`, rtnetlink) so the node accepts
//! them; ipset + iptables glue for masquerade (off-cluster sources, hairpin, node ports).
//!
//! Kernels without IPVS (`CONFIG_IP_VS` unset) make [`ServiceRouter::sync`] fail with
//! [`RouterError::Unsupported`] before anything is touched.

pub mod messages;
mod socket;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Instant;

use async_trait::async_trait;
use futures::TryStreamExt;
use node_core::{ProxyState, RouterError, ServiceRouter, SyncReport, TrafficSource};
use tokio::sync::Mutex;

pub use messages::{IpvsMessage, RealServer, VirtualServer};
pub use socket::GenlSocket;

use crate::conntrack::{self, ConntrackCleaner};
use crate::iptables::{IpFamily, IptablesConfig};

/// Configuration of the [`IpvsRouter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsConfig {
    /// The IPVS scheduler (`rr` by default, as kube-proxy).
    pub scheduler: String,
    /// The dummy interface holding service addresses.
    pub interface: String,
    /// The iptables settings of the masquerade glue (variant, mark bit).
    pub iptables: IptablesConfig,
    /// Delete stale UDP conntrack entries after a sync (on by default).
    pub conntrack_cleanup: bool,
}

impl Default for IpvsConfig {
    fn default() -> Self {
        Self {
            scheduler: "rr".into(),
            interface: "nodekit-ipvs0".into(),
            iptables: IptablesConfig::default(),
            conntrack_cleanup: true,
        }
    }
}

/// A virtual server's identity: address, protocol, port, fwmark.
pub type ServiceKey = (IpAddr, u16, u16, u32);

/// The desired (or programmed) IPVS table: virtual servers and their real servers.
pub type IpvsTable = BTreeMap<ServiceKey, (VirtualServer, BTreeSet<RealServer>)>;

/// One netlink operation that brings the kernel's IPVS table closer to the desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpvsOp {
    /// `IPVS_CMD_NEW_SERVICE`.
    AddService(VirtualServer),
    /// `IPVS_CMD_SET_SERVICE` (scheduler, flags or persistence changed).
    UpdateService(VirtualServer),
    /// `IPVS_CMD_DEL_SERVICE` (removes its real servers too).
    DelService(VirtualServer),
    /// `IPVS_CMD_NEW_DEST`.
    AddDest(VirtualServer, RealServer),
    /// `IPVS_CMD_SET_DEST` (weight or forwarding method changed).
    UpdateDest(VirtualServer, RealServer),
    /// `IPVS_CMD_DEL_DEST`.
    DelDest(VirtualServer, RealServer),
}

impl IpvsOp {
    /// The netlink message of this operation.
    pub fn message(&self) -> IpvsMessage {
        use messages::cmd;
        match self {
            IpvsOp::AddService(s) => IpvsMessage::new(cmd::NEW_SERVICE, Some(s.clone()), None),
            IpvsOp::UpdateService(s) => IpvsMessage::new(cmd::SET_SERVICE, Some(s.clone()), None),
            IpvsOp::DelService(s) => IpvsMessage::new(cmd::DEL_SERVICE, Some(s.clone()), None),
            IpvsOp::AddDest(s, d) => {
                IpvsMessage::new(cmd::NEW_DEST, Some(s.clone()), Some(d.clone()))
            }
            IpvsOp::UpdateDest(s, d) => {
                IpvsMessage::new(cmd::SET_DEST, Some(s.clone()), Some(d.clone()))
            }
            IpvsOp::DelDest(s, d) => {
                IpvsMessage::new(cmd::DEL_DEST, Some(s.clone()), Some(d.clone()))
            }
        }
    }
}

/// The IPVS table that implements `desired`: a virtual server per ClusterIP, externalIP,
/// load-balancer IP and node port (on `node_port_addresses`), persistence for ClientIP
/// affinity, the usable endpoints of the address's family as real servers.
pub fn desired_table(desired: &ProxyState, config: &IpvsConfig) -> IpvsTable {
    let mut table = IpvsTable::new();
    for sp in desired.services.values() {
        let proto = u16::from(sp.protocol.number());
        let mut add = |addr: IpAddr, port: u16, source: TrafficSource| {
            let mut vs = VirtualServer::new(addr, proto, port, &config.scheduler);
            if let Some(t) = sp.affinity_timeout {
                vs.flags = messages::SVC_F_PERSISTENT;
                vs.timeout = t.as_secs().clamp(1, u64::from(u32::MAX)) as u32;
            }
            let dests = sp
                .usable_endpoints(source, &desired.node.name)
                .into_iter()
                .filter(|e| e.ip.is_ipv4() == addr.is_ipv4())
                .map(|e| RealServer::new(e.ip, e.port))
                .collect();
            table.insert(vs.key(), (vs, dests));
        };
        for (ip, source) in sp.service_ips() {
            add(ip, sp.port, source);
        }
        if let Some(np) = sp.node_port {
            for ip in &desired.node.node_port_addresses {
                if sp.service_ips().any(|(s, _)| s.is_ipv4() == ip.is_ipv4()) {
                    add(*ip, np, TrafficSource::External);
                }
            }
        }
    }
    table
}

/// The operations that turn `current` into `desired`, deletions of real servers before
/// additions so a service never holds more than it should for long.
pub fn diff(current: &IpvsTable, desired: &IpvsTable) -> Vec<IpvsOp> {
    let mut ops = vec![];
    for (key, (vs, _)) in current {
        if !desired.contains_key(key) {
            ops.push(IpvsOp::DelService(vs.clone()));
        }
    }
    for (key, (vs, dests)) in desired {
        let Some((cur_vs, cur_dests)) = current.get(key) else {
            ops.push(IpvsOp::AddService(vs.clone()));
            ops.extend(dests.iter().map(|d| IpvsOp::AddDest(vs.clone(), d.clone())));
            continue;
        };
        if cur_vs.scheduler != vs.scheduler
            || (cur_vs.flags & !messages::SVC_F_HASHED) != vs.flags
            || cur_vs.timeout != vs.timeout
        {
            ops.push(IpvsOp::UpdateService(vs.clone()));
        }
        let by_addr = |set: &BTreeSet<RealServer>| -> BTreeMap<(IpAddr, u16), RealServer> {
            set.iter().map(|d| ((d.addr, d.port), d.clone())).collect()
        };
        let (cur, want) = (by_addr(cur_dests), by_addr(dests));
        for (k, d) in &cur {
            if !want.contains_key(k) {
                ops.push(IpvsOp::DelDest(vs.clone(), d.clone()));
            }
        }
        for (k, d) in &want {
            match cur.get(k) {
                None => ops.push(IpvsOp::AddDest(vs.clone(), d.clone())),
                Some(c) if c.weight != d.weight || c.fwd_method != d.fwd_method => {
                    ops.push(IpvsOp::UpdateDest(vs.clone(), d.clone()))
                }
                Some(_) => {}
            }
        }
    }
    ops
}

fn set_family(v6: bool) -> (&'static str, &'static str) {
    if v6 {
        ("inet6", "NODEKIT-6-")
    } else {
        ("inet", "NODEKIT-")
    }
}

/// The masquerade glue of kube-proxy's IPVS mode for one family: `ipset restore` input (sets of
/// cluster IPs, external IPs, hairpin endpoints, node ports) and `iptables-restore` input that
/// marks off-cluster, external and node-port traffic and masquerades hairpin traffic.
pub fn render_glue(
    desired: &ProxyState,
    config: &IpvsConfig,
    family: IpFamily,
) -> (String, String) {
    let v6 = family == IpFamily::V6;
    let (inet, p) = set_family(v6);
    let same = |ip: &IpAddr| ip.is_ipv6() == v6;
    let mut sets: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    let mut set = |name: &str, kind: &str| -> String {
        let full = format!("{p}{name}");
        sets.entry(full.clone())
            .or_insert_with(|| (kind.to_string(), BTreeSet::new()));
        full
    };
    let cluster = set("CLUSTER-IP", "hash:ip,port");
    let external = set("EXTERNAL-IP", "hash:ip,port");
    let loopback = set("LOOP-BACK", "hash:ip,port,ip");
    let np_tcp = set("NODE-PORT-TCP", "bitmap:port range 0-65535");
    let np_udp = set("NODE-PORT-UDP", "bitmap:port range 0-65535");
    let np_sctp = set("NODE-PORT-SCTP", "hash:ip,port");
    let host = |ip: &IpAddr| ip.to_string();
    for sp in desired.services.values() {
        let proto = sp.protocol.as_lower();
        for ip in sp.cluster_ips.iter().filter(|i| same(i)) {
            sets.get_mut(&cluster).expect("declared").1.insert(format!(
                "{},{proto}:{}",
                host(ip),
                sp.port
            ));
        }
        for ip in sp
            .external_ips
            .iter()
            .chain(&sp.load_balancer_ips)
            .filter(|i| same(i))
        {
            sets.get_mut(&external).expect("declared").1.insert(format!(
                "{},{proto}:{}",
                host(ip),
                sp.port
            ));
        }
        for e in sp.endpoints.iter().filter(|e| same(&e.ip)) {
            sets.get_mut(&loopback)
                .expect("declared")
                .1
                .insert(format!("{},{proto}:{},{}", e.ip, e.port, e.ip));
        }
        if let Some(np) = sp.node_port
            && sp.service_ips().any(|(i, _)| same(&i))
        {
            let entry = match sp.protocol {
                node_core::Protocol::Sctp => (
                    np_sctp.clone(),
                    format!("{},sctp:{np}", if v6 { "::" } else { "0.0.0.0" }),
                ),
                node_core::Protocol::Udp => (np_udp.clone(), np.to_string()),
                node_core::Protocol::Tcp => (np_tcp.clone(), np.to_string()),
            };
            sets.get_mut(&entry.0).expect("declared").1.insert(entry.1);
        }
    }
    let mut ipset = String::new();
    for (name, (kind, members)) in &sets {
        let fam = if kind.starts_with("bitmap") {
            String::new()
        } else {
            format!(" family {inet}")
        };
        ipset.push_str(&format!("create {name} {kind}{fam} -exist\nflush {name}\n"));
        for m in members {
            ipset.push_str(&format!("add {name} {m}\n"));
        }
    }
    let bit = 1u32 << config.iptables.masquerade_bit;
    let mark = format!("{bit:#x}/{bit:#x}");
    let mut ipt = String::from(
        "*nat\n:NODEKIT-SERVICES - [0:0]\n:NODEKIT-NODEPORTS - [0:0]\n:NODEKIT-POSTROUTING - [0:0]\n:NODEKIT-MARK-MASQ - [0:0]\n",
    );
    ipt.push_str("-A NODEKIT-MARK-MASQ -j MARK --or-mark ");
    ipt.push_str(&format!("{bit:#x}\n"));
    ipt.push_str(&format!(
        "-A NODEKIT-POSTROUTING -m set --match-set {loopback} dst,dst,src -j MASQUERADE\n"
    ));
    ipt.push_str(&format!(
        "-A NODEKIT-POSTROUTING -m mark ! --mark {mark} -j RETURN\n"
    ));
    ipt.push_str(&format!(
        "-A NODEKIT-POSTROUTING -j MARK --xor-mark {bit:#x}\n"
    ));
    ipt.push_str("-A NODEKIT-POSTROUTING -j MASQUERADE --random-fully\n");
    if desired.node.masquerade_all {
        ipt.push_str(&format!(
            "-A NODEKIT-SERVICES -m set --match-set {cluster} dst,dst -j NODEKIT-MARK-MASQ\n"
        ));
    } else {
        for cidr in desired
            .node
            .cluster_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv6() == v6)
        {
            ipt.push_str(&format!(
                "-A NODEKIT-SERVICES ! -s {cidr} -m set --match-set {cluster} dst,dst -j NODEKIT-MARK-MASQ\n"
            ));
        }
    }
    ipt.push_str(&format!(
        "-A NODEKIT-SERVICES -m set --match-set {external} dst,dst -j NODEKIT-MARK-MASQ\n"
    ));
    ipt.push_str("-A NODEKIT-SERVICES -m addrtype --dst-type LOCAL -j NODEKIT-NODEPORTS\n");
    ipt.push_str(&format!(
        "-A NODEKIT-NODEPORTS -p tcp -m set --match-set {np_tcp} dst -j NODEKIT-MARK-MASQ\n"
    ));
    ipt.push_str(&format!(
        "-A NODEKIT-NODEPORTS -p udp -m set --match-set {np_udp} dst -j NODEKIT-MARK-MASQ\n"
    ));
    ipt.push_str(&format!(
        "-A NODEKIT-NODEPORTS -p sctp -m set --match-set {np_sctp} dst,dst -j NODEKIT-MARK-MASQ\n"
    ));
    ipt.push_str("COMMIT\n");
    (ipset, ipt)
}

/// The IPVS table of `desired` in `ipvsadm-save` form (`-A` virtual servers, `-a` masqueraded
/// real servers), then the glue of every configured family: what `--dump` prints.
pub fn dump(desired: &ProxyState, config: &IpvsConfig) -> String {
    let mut out = String::from("# IPVS (ipvsadm-save form)\n");
    let sock = |ip: &IpAddr, port: u16| match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    for (vs, dests) in desired_table(desired, config).values() {
        let kind = match vs.protocol {
            17 => "-u",
            132 => "--sctp-service",
            _ => "-t",
        };
        let vip = sock(&vs.addr, vs.port);
        out.push_str(&format!("-A {kind} {vip} -s {}", vs.scheduler));
        if vs.flags & messages::SVC_F_PERSISTENT != 0 {
            out.push_str(&format!(" -p {}", vs.timeout));
        }
        out.push('\n');
        for d in dests {
            out.push_str(&format!(
                "-a {kind} {vip} -r {} -m -w {}\n",
                sock(&d.addr, d.port),
                d.weight
            ));
        }
    }
    for &family in &config.iptables.families {
        let (ipset, ipt) = render_glue(desired, config, family);
        out.push_str("# ipset restore -exist\n");
        out.push_str(&ipset);
        out.push_str(&format!(
            "# {} -w --noflush\n",
            config.iptables.variant.program(family, "restore")
        ));
        out.push_str(&ipt);
    }
    out
}

#[derive(Debug, Default)]
struct IpvsState {
    /// The IPVS table as programmed; `None`: read it from the kernel first.
    table: Option<IpvsTable>,
    last: Option<ProxyState>,
}

/// A [`ServiceRouter`] that programs IPVS virtual servers over generic netlink.
#[derive(Debug)]
pub struct IpvsRouter {
    config: IpvsConfig,
    state: Mutex<IpvsState>,
    conntrack: ConntrackCleaner,
}

fn netlink_err(op: &str, e: std::io::Error) -> RouterError {
    RouterError::Netlink {
        op: op.to_string(),
        source: e,
    }
}

fn rtnl_err(op: &str, e: rtnetlink::Error) -> RouterError {
    RouterError::Netlink {
        op: op.to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl IpvsRouter {
    /// A router with `config`; nothing is touched until the first sync.
    pub fn new(config: IpvsConfig) -> Self {
        Self {
            config,
            state: Mutex::new(IpvsState::default()),
            conntrack: ConntrackCleaner::default(),
        }
    }

    /// Open the IPVS generic-netlink family, or say the kernel has none.
    pub fn connect() -> Result<(GenlSocket, u16), RouterError> {
        let mut sock = GenlSocket::open().map_err(|e| netlink_err("open generic netlink", e))?;
        match sock.family_id(messages::IPVS_GENL_NAME) {
            Ok(id) => Ok((sock, id)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Err(RouterError::Unsupported(
                "the kernel has no IPVS (generic netlink family \"IPVS\" not found: CONFIG_IP_VS unset or ip_vs not loaded)".into(),
            )),
            Err(e) => Err(netlink_err("resolve generic netlink family IPVS", e)),
        }
    }

    /// Read the kernel's IPVS table (services, then each one's destinations).
    pub fn read_table(sock: &mut GenlSocket, family: u16) -> Result<IpvsTable, RouterError> {
        let services = sock
            .ipvs(
                family,
                &IpvsMessage::new(messages::cmd::GET_SERVICE, None, None),
            )
            .map_err(|e| netlink_err("dump IPVS services", e))?;
        let mut table = IpvsTable::new();
        for m in services {
            let Some(vs) = m.service else { continue };
            let dests = sock
                .ipvs(
                    family,
                    &IpvsMessage::new(messages::cmd::GET_DEST, Some(vs.clone()), None),
                )
                .map_err(|e| netlink_err("dump IPVS destinations", e))?
                .into_iter()
                .filter_map(|m| m.dest)
                .collect();
            table.insert(vs.key(), (vs, dests));
        }
        Ok(table)
    }

    /// Make the dummy interface exist, be up and hold exactly `addrs`.
    async fn ensure_interface(&self, addrs: &BTreeSet<IpAddr>) -> Result<(), RouterError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| netlink_err("open rtnetlink", e))?;
        let task = tokio::spawn(conn);
        let result = async {
            let index = match link_index(&handle, &self.config.interface).await? {
                Some(i) => i,
                None => {
                    handle
                        .link()
                        .add(
                            rtnetlink::LinkDummy::new(&self.config.interface)
                                .up()
                                .build(),
                        )
                        .execute()
                        .await
                        .map_err(|e| {
                            rtnl_err(&format!("add dummy link {}", self.config.interface), e)
                        })?;
                    link_index(&handle, &self.config.interface)
                        .await?
                        .ok_or_else(|| {
                            RouterError::Other(format!("{} vanished", self.config.interface))
                        })?
                }
            };
            let mut present = BTreeMap::new();
            let mut stream = handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute();
            while let Some(msg) = stream
                .try_next()
                .await
                .map_err(|e| rtnl_err("list addresses", e))?
            {
                for a in &msg.attributes {
                    if let netlink_packet_route::address::AddressAttribute::Address(ip) = a {
                        present.insert(*ip, msg.clone());
                    }
                }
            }
            for ip in addrs.difference(&present.keys().copied().collect()) {
                let prefix = if ip.is_ipv4() { 32 } else { 128 };
                handle
                    .address()
                    .add(index, *ip, prefix)
                    .execute()
                    .await
                    .map_err(|e| rtnl_err(&format!("add address {ip}"), e))?;
            }
            for (ip, msg) in present {
                if !addrs.contains(&ip) {
                    handle
                        .address()
                        .del(msg)
                        .execute()
                        .await
                        .map_err(|e| rtnl_err(&format!("delete address {ip}"), e))?;
                }
            }
            Ok(())
        }
        .await;
        task.abort();
        result
    }

    async fn delete_interface(&self) -> Result<(), RouterError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| netlink_err("open rtnetlink", e))?;
        let task = tokio::spawn(conn);
        let result = async {
            if let Some(i) = link_index(&handle, &self.config.interface).await? {
                handle
                    .link()
                    .del(i)
                    .execute()
                    .await
                    .map_err(|e| rtnl_err("delete dummy link", e))?;
            }
            Ok(())
        }
        .await;
        task.abort();
        result
    }

    async fn run_command(program: &str, args: &[&str], stdin: &str) -> Result<(), RouterError> {
        use tokio::io::AsyncWriteExt;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| RouterError::Command {
                command: program.into(),
                status: "not started".into(),
                stderr: e.to_string(),
            })?;
        let mut input = child.stdin.take().expect("piped");
        let _ = input.write_all(stdin.as_bytes()).await;
        drop(input);
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| RouterError::Command {
                command: program.into(),
                status: "wait failed".into(),
                stderr: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(RouterError::Command {
                command: format!("{program} {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

async fn link_index(handle: &rtnetlink::Handle, name: &str) -> Result<Option<u32>, RouterError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(l)) => Ok(Some(l.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.map(|c| c.get()) == Some(-libc::ENODEV) =>
        {
            Ok(None)
        }
        Err(e) => Err(rtnl_err(&format!("get link {name}"), e)),
    }
}

impl Default for IpvsRouter {
    fn default() -> Self {
        Self::new(IpvsConfig::default())
    }
}

#[async_trait]
impl ServiceRouter for IpvsRouter {
    fn name(&self) -> &str {
        "ipvs"
    }

    async fn sync(&self, desired: &ProxyState) -> Result<SyncReport, RouterError> {
        let start = Instant::now();
        let (mut sock, family) = Self::connect()?;
        let mut state = self.state.lock().await;
        let full = state.table.is_none();
        let want = desired_table(desired, &self.config);
        let result = async {
            let addrs: BTreeSet<IpAddr> = desired
                .services
                .values()
                .flat_map(|sp| sp.service_ips().map(|(ip, _)| ip).collect::<Vec<_>>())
                .collect();
            self.ensure_interface(&addrs).await?;
            let current = match state.table.take() {
                Some(t) => t,
                None => {
                    // services of ours are those on our addresses (or node ports we program)
                    let mut t = Self::read_table(&mut sock, family)?;
                    let node: BTreeSet<IpAddr> =
                        desired.node.node_port_addresses.iter().copied().collect();
                    t.retain(|(ip, ..), _| addrs.contains(ip) || node.contains(ip));
                    t
                }
            };
            let ops = diff(&current, &want);
            for op in &ops {
                sock.ipvs(family, &op.message())
                    .map_err(|e| netlink_err(&format!("{op:?}"), e))?;
            }
            for fam in &self.config.iptables.families {
                let (ipset, ipt) = render_glue(desired, &self.config, *fam);
                Self::run_command("ipset", &["restore", "-exist"], &ipset).await?;
                let restore = self.config.iptables.variant.program(*fam, "restore");
                Self::run_command(&restore, &["-w", "5", "--noflush"], &ipt).await?;
            }
            if self.config.conntrack_cleanup {
                let empty = ProxyState::default();
                let flushes =
                    conntrack::stale_udp_flows(state.last.as_ref().unwrap_or(&empty), desired);
                self.conntrack.flush(&flushes).await?;
            }
            Ok::<usize, RouterError>(ops.len())
        }
        .await;
        match result {
            Ok(changes) => {
                state.table = Some(want.clone());
                state.last = Some(desired.clone());
                Ok(SyncReport {
                    full,
                    service_ports: desired.services.len(),
                    endpoints: want.values().map(|(_, d)| d.len()).sum(),
                    changes,
                    skipped: vec![],
                    duration: start.elapsed(),
                })
            }
            Err(e) => {
                *state = IpvsState::default();
                Err(e)
            }
        }
    }

    async fn cleanup(&self) -> Result<(), RouterError> {
        let (mut sock, family) = Self::connect()?;
        let mut state = self.state.lock().await;
        let table = match state.table.take() {
            Some(t) => t,
            None => Self::read_table(&mut sock, family)?,
        };
        for (vs, _) in table.values() {
            let op = IpvsOp::DelService(vs.clone());
            match sock.ipvs(family, &op.message()) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(netlink_err("delete IPVS service", e)),
            }
        }
        self.delete_interface().await?;
        *state = IpvsState::default();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_core::{Endpoint, NodeInfo, Protocol, ServicePort, ServicePortName};
    use std::time::Duration;

    fn state() -> ProxyState {
        let mut s = ProxyState {
            node: NodeInfo {
                name: "n1".into(),
                node_port_addresses: vec!["192.168.50.1".parse().unwrap()],
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                ..Default::default()
            },
            ..Default::default()
        };
        s.services.insert(
            ServicePortName::new("default", "web", "http"),
            ServicePort {
                cluster_ips: vec![
                    "10.96.0.10".parse().unwrap(),
                    "fd00:96::10".parse().unwrap(),
                ],
                port: 80,
                node_port: Some(30080),
                endpoints: vec![
                    Endpoint::ready("10.244.0.10".parse().unwrap(), 8080),
                    Endpoint::ready("10.244.0.11".parse().unwrap(), 8080),
                    Endpoint::ready("fd00:244::10".parse().unwrap(), 8080),
                ],
                ..Default::default()
            },
        );
        s
    }

    #[test]
    fn the_table_has_a_virtual_server_per_address_and_node_port() {
        let t = desired_table(&state(), &IpvsConfig::default());
        assert_eq!(t.len(), 3);
        let (vs, dests) = &t[&("10.96.0.10".parse().unwrap(), 6, 80, 0)];
        assert_eq!(vs.scheduler, "rr");
        assert_eq!(vs.netmask, 0xffff_ffff);
        assert_eq!(dests.len(), 2);
        let (vs6, dests6) = &t[&("fd00:96::10".parse().unwrap(), 6, 80, 0)];
        assert_eq!(vs6.netmask, 128);
        assert_eq!(dests6.len(), 1);
        assert_eq!(
            t[&("192.168.50.1".parse().unwrap(), 6, 30080, 0)].1.len(),
            2
        );
    }

    #[test]
    fn diff_adds_removes_and_updates_minimally() {
        let cfg = IpvsConfig::default();
        let s1 = state();
        let t1 = desired_table(&s1, &cfg);
        let from_empty = diff(&IpvsTable::new(), &t1);
        assert_eq!(
            from_empty
                .iter()
                .filter(|o| matches!(o, IpvsOp::AddService(_)))
                .count(),
            3
        );
        assert_eq!(
            from_empty
                .iter()
                .filter(|o| matches!(o, IpvsOp::AddDest(..)))
                .count(),
            5
        );
        assert!(diff(&t1, &t1).is_empty());
        // one endpoint removed: one DelDest per virtual server that had it
        let mut s2 = s1.clone();
        let sp = s2.services.values_mut().next().unwrap();
        sp.endpoints.remove(0);
        let ops = diff(&t1, &desired_table(&s2, &cfg));
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(
            ops.iter()
                .all(|o| matches!(o, IpvsOp::DelDest(_, d) if d.addr.to_string() == "10.244.0.10"))
        );
        // affinity turned on: the services are updated, their dests kept
        let mut s3 = s1.clone();
        s3.services.values_mut().next().unwrap().affinity_timeout = Some(Duration::from_secs(600));
        let ops = diff(&t1, &desired_table(&s3, &cfg));
        assert_eq!(ops.len(), 3);
        assert!(ops.iter().all(|o| matches!(o, IpvsOp::UpdateService(v) if v.flags == messages::SVC_F_PERSISTENT && v.timeout == 600)));
        // service removed: DelService only (the kernel drops its dests)
        let ops = diff(&t1, &desired_table(&ProxyState::default(), &cfg));
        assert_eq!(ops.len(), 3);
        assert!(ops.iter().all(|o| matches!(o, IpvsOp::DelService(_))));
        // the kernel's HASHED flag is not a difference
        let mut hashed = t1.clone();
        for (vs, _) in hashed.values_mut() {
            vs.flags |= messages::SVC_F_HASHED;
        }
        assert!(diff(&hashed, &t1).is_empty());
    }

    #[test]
    fn dump_lists_virtual_and_real_servers() {
        let mut s = state();
        s.services.values_mut().next().unwrap().affinity_timeout = Some(Duration::from_secs(600));
        let d = dump(&s, &IpvsConfig::default());
        assert!(d.contains("-A -t 10.96.0.10:80 -s rr -p 600\n"), "{d}");
        assert!(
            d.contains("-a -t 10.96.0.10:80 -r 10.244.0.11:8080 -m -w 1\n"),
            "{d}"
        );
        assert!(
            d.contains("-a -t [fd00:96::10]:80 -r [fd00:244::10]:8080 -m -w 1\n"),
            "{d}"
        );
        assert!(d.contains("# ip6tables-nft-restore -w --noflush\n"), "{d}");
    }

    #[test]
    fn glue_masquerades_off_cluster_hairpin_and_node_ports() {
        let mut s = state();
        s.services.values_mut().next().unwrap().protocol = Protocol::Udp;
        let (ipset, ipt) = render_glue(&s, &IpvsConfig::default(), IpFamily::V4);
        assert!(ipset.contains("create NODEKIT-CLUSTER-IP hash:ip,port family inet -exist\n"));
        assert!(ipset.contains("add NODEKIT-CLUSTER-IP 10.96.0.10,udp:80\n"));
        assert!(ipset.contains("add NODEKIT-LOOP-BACK 10.244.0.10,udp:8080,10.244.0.10\n"));
        assert!(ipset.contains("add NODEKIT-NODE-PORT-UDP 30080\n"));
        assert!(!ipset.contains("fd00"));
        assert!(ipt.contains(
            "! -s 10.244.0.0/16 -m set --match-set NODEKIT-CLUSTER-IP dst,dst -j NODEKIT-MARK-MASQ"
        ));
        assert!(ipt.contains("--match-set NODEKIT-LOOP-BACK dst,dst,src -j MASQUERADE"));
        let (ipset6, _) = render_glue(&s, &IpvsConfig::default(), IpFamily::V6);
        assert!(ipset6.contains("add NODEKIT-6-CLUSTER-IP fd00:96::10,udp:80\n"));
    }
}
