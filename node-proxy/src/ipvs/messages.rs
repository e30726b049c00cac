//! The IPVS generic-netlink messages, encoded and decoded by hand from the kernel's uapi header
//! `linux/ip_vs.h` (commands, attribute numbers, payload layouts) and `linux/netlink.h` /
//! `linux/genetlink.h` (headers). Integers are in host byte order except ports (`__be16`) and
//! the IPv4 netmask (`__be32`), as the kernel reads them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The generic-netlink family name of IPVS.
pub const IPVS_GENL_NAME: &str = "IPVS";
/// The IPVS generic-netlink version.
pub const IPVS_GENL_VERSION: u8 = 1;

/// `IPVS_CMD_*`: the commands of the IPVS family.
#[allow(missing_docs)]
pub mod cmd {
    pub const NEW_SERVICE: u8 = 1;
    pub const SET_SERVICE: u8 = 2;
    pub const DEL_SERVICE: u8 = 3;
    pub const GET_SERVICE: u8 = 4;
    pub const NEW_DEST: u8 = 5;
    pub const SET_DEST: u8 = 6;
    pub const DEL_DEST: u8 = 7;
    pub const GET_DEST: u8 = 8;
    pub const FLUSH: u8 = 17;
}

/// `IPVS_CMD_ATTR_*`: first-level attributes.
#[allow(missing_docs)]
pub mod cmd_attr {
    pub const SERVICE: u16 = 1;
    pub const DEST: u16 = 2;
}

/// `IPVS_SVC_ATTR_*`: attributes nested in `IPVS_CMD_ATTR_SERVICE`.
#[allow(missing_docs)]
pub mod svc_attr {
    pub const AF: u16 = 1;
    pub const PROTOCOL: u16 = 2;
    pub const ADDR: u16 = 3;
    pub const PORT: u16 = 4;
    pub const FWMARK: u16 = 5;
    pub const SCHED_NAME: u16 = 6;
    pub const FLAGS: u16 = 7;
    pub const TIMEOUT: u16 = 8;
    pub const NETMASK: u16 = 9;
    pub const STATS: u16 = 10;
    pub const PE_NAME: u16 = 11;
    pub const STATS64: u16 = 12;
}

/// `IPVS_DEST_ATTR_*`: attributes nested in `IPVS_CMD_ATTR_DEST`.
#[allow(missing_docs)]
pub mod dest_attr {
    pub const ADDR: u16 = 1;
    pub const PORT: u16 = 2;
    pub const FWD_METHOD: u16 = 3;
    pub const WEIGHT: u16 = 4;
    pub const U_THRESH: u16 = 5;
    pub const L_THRESH: u16 = 6;
    pub const ACTIVE_CONNS: u16 = 7;
    pub const INACT_CONNS: u16 = 8;
    pub const PERSIST_CONNS: u16 = 9;
    pub const STATS: u16 = 10;
    pub const ADDR_FAMILY: u16 = 11;
    pub const STATS64: u16 = 12;
}

/// `IP_VS_SVC_F_PERSISTENT`: session affinity (persistence) on a virtual service.
pub const SVC_F_PERSISTENT: u32 = 0x0001;
/// `IP_VS_SVC_F_HASHED`: set by the kernel on services it hashed (seen in replies).
pub const SVC_F_HASHED: u32 = 0x0002;
/// `IP_VS_CONN_F_MASQ`: the NAT forwarding method (what kube-proxy uses).
pub const CONN_F_MASQ: u32 = 0x0000;

/// `NLM_F_REQUEST`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`.
pub const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`).
pub const NLM_F_DUMP: u16 = 0x300;
pub use node_nft::netlink::{Header as NlHeader, NLMSG_DONE, NLMSG_ERROR};
/// `GENL_ID_CTRL`: the generic-netlink controller.
pub const GENL_ID_CTRL: u16 = 0x10;
/// `CTRL_CMD_GETFAMILY`.
pub const CTRL_CMD_GETFAMILY: u8 = 3;
/// `CTRL_ATTR_FAMILY_ID`.
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
/// `CTRL_ATTR_FAMILY_NAME`.
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;

const NLA_TYPE_MASK: u16 = 0x3fff;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// A message that could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad ipvs netlink message: {0}")]
pub struct DecodeError(pub String);

fn bad(s: impl Into<String>) -> DecodeError {
    DecodeError(s.into())
}

/// A virtual service (`IPVS_CMD_ATTR_SERVICE`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualServer {
    /// The virtual address (its family is the service's `AF`).
    pub addr: IpAddr,
    /// The IP protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub protocol: u16,
    /// The virtual port.
    pub port: u16,
    /// The firewall mark (0: none; such services have no address/port).
    pub fwmark: u32,
    /// The scheduler (`rr`, `wrr`, `lc`, `sh`, ...).
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` flags.
    pub flags: u32,
    /// Persistence timeout in seconds (with `SVC_F_PERSISTENT`).
    pub timeout: u32,
    /// Persistence netmask: an IPv4 mask (`0xffffffff`) or an IPv6 prefix length (128).
    pub netmask: u32,
}

impl VirtualServer {
    /// A service for `addr:port` of `protocol` with scheduler `scheduler`, no persistence.
    pub fn new(addr: IpAddr, protocol: u16, port: u16, scheduler: &str) -> Self {
        Self {
            addr,
            protocol,
            port,
            fwmark: 0,
            scheduler: scheduler.to_string(),
            flags: 0,
            timeout: 0,
            netmask: if addr.is_ipv4() { 0xffff_ffff } else { 128 },
        }
    }
    /// The identity of the service (what DEL/GET and dests address it by).
    pub fn key(&self) -> (IpAddr, u16, u16, u32) {
        (self.addr, self.protocol, self.port, self.fwmark)
    }
}

/// A real server (`IPVS_CMD_ATTR_DEST`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealServer {
    /// The real server's address.
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
    /// The forwarding method (`CONN_F_MASQ`).
    pub fwd_method: u32,
    /// Its weight (0 drains it).
    pub weight: u32,
    /// Upper connection threshold (0: none).
    pub upper_threshold: u32,
    /// Lower connection threshold.
    pub lower_threshold: u32,
    /// Active connections (replies only).
    pub active_conns: u32,
    /// Inactive connections (replies only).
    pub inactive_conns: u32,
    /// Persistent connections (replies only).
    pub persist_conns: u32,
}

impl RealServer {
    /// A NAT real server of weight 1.
    pub fn new(addr: IpAddr, port: u16) -> Self {
        Self {
            addr,
            port,
            fwd_method: CONN_F_MASQ,
            weight: 1,
            upper_threshold: 0,
            lower_threshold: 0,
            active_conns: 0,
            inactive_conns: 0,
            persist_conns: 0,
        }
    }
}

/// One IPVS generic-netlink message: a command and the service / destination it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsMessage {
    /// `IPVS_CMD_*`.
    pub cmd: u8,
    /// The service (full for NEW/SET_SERVICE, its identity for the others).
    pub service: Option<VirtualServer>,
    /// The destination (NEW/SET/DEL_DEST).
    pub dest: Option<RealServer>,
}

fn af(ip: &IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Append one attribute (header, payload, padding to 4 bytes).
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn put_nested(buf: &mut Vec<u8>, kind: u16, inner: impl FnOnce(&mut Vec<u8>)) {
    let mut body = vec![];
    inner(&mut body);
    put_attr(buf, kind, &body);
}

fn encode_service(buf: &mut Vec<u8>, s: &VirtualServer, full: bool) {
    put_attr(buf, svc_attr::AF, &af(&s.addr).to_ne_bytes());
    if s.fwmark != 0 {
        put_attr(buf, svc_attr::FWMARK, &s.fwmark.to_ne_bytes());
    } else {
        put_attr(buf, svc_attr::PROTOCOL, &s.protocol.to_ne_bytes());
        put_attr(buf, svc_attr::ADDR, &addr_bytes(&s.addr));
        put_attr(buf, svc_attr::PORT, &s.port.to_be_bytes());
    }
    if full {
        let mut name = s.scheduler.as_bytes().to_vec();
        name.push(0);
        put_attr(buf, svc_attr::SCHED_NAME, &name);
        let mut flags = s.flags.to_ne_bytes().to_vec();
        flags.extend_from_slice(&u32::MAX.to_ne_bytes());
        put_attr(buf, svc_attr::FLAGS, &flags);
        put_attr(buf, svc_attr::TIMEOUT, &s.timeout.to_ne_bytes());
        let netmask = if s.addr.is_ipv4() {
            s.netmask.to_be_bytes()
        } else {
            s.netmask.to_ne_bytes()
        };
        put_attr(buf, svc_attr::NETMASK, &netmask);
    }
}

fn encode_dest(buf: &mut Vec<u8>, d: &RealServer, full: bool) {
    put_attr(buf, dest_attr::ADDR, &addr_bytes(&d.addr));
    put_attr(buf, dest_attr::PORT, &d.port.to_be_bytes());
    if full {
        put_attr(buf, dest_attr::FWD_METHOD, &d.fwd_method.to_ne_bytes());
        put_attr(buf, dest_attr::WEIGHT, &d.weight.to_ne_bytes());
        put_attr(buf, dest_attr::U_THRESH, &d.upper_threshold.to_ne_bytes());
        put_attr(buf, dest_attr::L_THRESH, &d.lower_threshold.to_ne_bytes());
    }
    put_attr(buf, dest_attr::ADDR_FAMILY, &af(&d.addr).to_ne_bytes());
}

/// Wrap a generic-netlink payload (`cmd`, `version`, attributes) in a netlink header.
pub fn genl_message(
    kind: u16,
    flags: u16,
    seq: u32,
    cmd: u8,
    version: u8,
    attrs: &[u8],
) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.push(cmd);
    buf.push(version);
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(attrs);
    buf
}

/// `CTRL_CMD_GETFAMILY` for `name`: asks the controller for a family's id.
pub fn get_family_request(name: &str, seq: u32) -> Vec<u8> {
    let mut attrs = vec![];
    let mut n = name.as_bytes().to_vec();
    n.push(0);
    put_attr(&mut attrs, CTRL_ATTR_FAMILY_NAME, &n);
    genl_message(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        CTRL_CMD_GETFAMILY,
        1,
        &attrs,
    )
}

impl IpvsMessage {
    /// A message of `cmd` with a service and a destination.
    pub fn new(cmd: u8, service: Option<VirtualServer>, dest: Option<RealServer>) -> Self {
        Self { cmd, service, dest }
    }

    /// The attributes of the message (after the generic-netlink header).
    pub fn encode_attrs(&self) -> Vec<u8> {
        let full_service = matches!(self.cmd, cmd::NEW_SERVICE | cmd::SET_SERVICE);
        let full_dest = matches!(self.cmd, cmd::NEW_DEST | cmd::SET_DEST);
        let mut attrs = vec![];
        if let Some(s) = &self.service {
            put_nested(&mut attrs, cmd_attr::SERVICE, |b| {
                encode_service(b, s, full_service)
            });
        }
        if let Some(d) = &self.dest {
            put_nested(&mut attrs, cmd_attr::DEST, |b| encode_dest(b, d, full_dest));
        }
        attrs
    }

    /// The whole netlink request for family id `family`: GET commands dump, the others ask
    /// for an acknowledgement.
    pub fn encode(&self, family: u16, seq: u32) -> Vec<u8> {
        let flags = if matches!(self.cmd, cmd::GET_SERVICE | cmd::GET_DEST) {
            NLM_F_REQUEST | NLM_F_DUMP
        } else {
            NLM_F_REQUEST | NLM_F_ACK
        };
        genl_message(
            family,
            flags,
            seq,
            self.cmd,
            IPVS_GENL_VERSION,
            &self.encode_attrs(),
        )
    }

    /// Decode one IPVS message (a request or the kernel's reply).
    pub fn decode(bytes: &[u8]) -> Result<(NlHeader, IpvsMessage), DecodeError> {
        let (header, payload) = split_header(bytes)?;
        if payload.len() < 4 {
            return Err(bad("short generic netlink header"));
        }
        let cmd = payload[0];
        let mut msg = IpvsMessage {
            cmd,
            service: None,
            dest: None,
        };
        for (kind, value) in attrs(&payload[4..])? {
            match kind {
                cmd_attr::SERVICE => msg.service = Some(decode_service(value)?),
                cmd_attr::DEST => msg.dest = Some(decode_dest(value)?),
                _ => {}
            }
        }
        Ok((header, msg))
    }
}

/// Split a netlink message into its header and payload (checking `nlmsg_len`).
pub fn split_header(bytes: &[u8]) -> Result<(NlHeader, &[u8]), DecodeError> {
    match node_nft::netlink::messages(bytes).next() {
        Some(Ok(m)) => Ok((m.header, m.payload())),
        Some(Err(e)) => Err(bad(e.to_string())),
        None => Err(bad("0 bytes is not a netlink message")),
    }
}

/// The attributes in `buf`, as (type without flags, payload).
pub fn attrs(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, DecodeError> {
    let mut out = vec![];
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return Err(bad(format!(
                "attribute {kind} of length {len} in {} bytes",
                buf.len()
            )));
        }
        out.push((kind, &buf[4..len]));
        let next = len.next_multiple_of(4).min(buf.len());
        buf = &buf[next..];
    }
    Ok(out)
}

fn u16_of(v: &[u8], what: &str) -> Result<u16, DecodeError> {
    v.get(..2)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(|| bad(format!("{what}: expected 2 bytes, got {}", v.len())))
}

fn u32_of(v: &[u8], what: &str) -> Result<u32, DecodeError> {
    v.get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| bad(format!("{what}: expected 4 bytes, got {}", v.len())))
}

fn be16_of(v: &[u8], what: &str) -> Result<u16, DecodeError> {
    v.get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| bad(format!("{what}: expected 2 bytes, got {}", v.len())))
}

fn addr_of(v: &[u8], family: u16) -> Result<IpAddr, DecodeError> {
    match (family, v.len()) {
        (AF_INET, n) if n >= 4 => Ok(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3]))),
        (AF_INET6, n) if n >= 16 => {
            let o: [u8; 16] = v[..16].try_into().expect("16 bytes");
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
        (f, n) => Err(bad(format!("address of family {f} in {n} bytes"))),
    }
}

fn decode_service(buf: &[u8]) -> Result<VirtualServer, DecodeError> {
    let a = attrs(buf)?;
    let get = |k: u16| a.iter().find(|(t, _)| *t == k).map(|(_, v)| *v);
    let family = get(svc_attr::AF)
        .map(|v| u16_of(v, "service AF"))
        .transpose()?
        .ok_or_else(|| bad("service without AF"))?;
    let addr = match get(svc_attr::ADDR) {
        Some(v) => addr_of(v, family)?,
        None if family == AF_INET6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let netmask = match get(svc_attr::NETMASK) {
        Some(v) if family == AF_INET => u32::from_be_bytes(
            v.get(..4)
                .ok_or_else(|| bad("netmask"))?
                .try_into()
                .expect("4"),
        ),
        Some(v) => u32_of(v, "netmask")?,
        None => 0,
    };
    let flags = match get(svc_attr::FLAGS) {
        Some(v) => u32_of(v, "service flags")?,
        None => 0,
    };
    let scheduler = get(svc_attr::SCHED_NAME)
        .map(|v| {
            String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
        })
        .unwrap_or_default();
    Ok(VirtualServer {
        addr,
        protocol: get(svc_attr::PROTOCOL)
            .map(|v| u16_of(v, "protocol"))
            .transpose()?
            .unwrap_or(0),
        port: get(svc_attr::PORT)
            .map(|v| be16_of(v, "port"))
            .transpose()?
            .unwrap_or(0),
        fwmark: get(svc_attr::FWMARK)
            .map(|v| u32_of(v, "fwmark"))
            .transpose()?
            .unwrap_or(0),
        scheduler,
        flags,
        timeout: get(svc_attr::TIMEOUT)
            .map(|v| u32_of(v, "timeout"))
            .transpose()?
            .unwrap_or(0),
        netmask,
    })
}

fn decode_dest(buf: &[u8]) -> Result<RealServer, DecodeError> {
    let a = attrs(buf)?;
    let get = |k: u16| a.iter().find(|(t, _)| *t == k).map(|(_, v)| *v);
    let u32_or0 = |k: u16, what: &str| -> Result<u32, DecodeError> {
        get(k)
            .map(|v| u32_of(v, what))
            .transpose()
            .map(|o| o.unwrap_or(0))
    };
    let raw = get(dest_attr::ADDR).ok_or_else(|| bad("destination without ADDR"))?;
    let family = match get(dest_attr::ADDR_FAMILY) {
        Some(v) => u16_of(v, "destination family")?,
        None if raw.len() <= 4 => AF_INET,
        // the kernel sends 16 bytes for both families: an IPv4 address leaves 12 zero bytes
        None if raw[4..].iter().all(|b| *b == 0) => AF_INET,
        None => AF_INET6,
    };
    Ok(RealServer {
        addr: addr_of(raw, family)?,
        port: get(dest_attr::PORT)
            .map(|v| be16_of(v, "port"))
            .transpose()?
            .unwrap_or(0),
        fwd_method: u32_or0(dest_attr::FWD_METHOD, "forwarding method")?,
        weight: u32_or0(dest_attr::WEIGHT, "weight")?,
        upper_threshold: u32_or0(dest_attr::U_THRESH, "upper threshold")?,
        lower_threshold: u32_or0(dest_attr::L_THRESH, "lower threshold")?,
        active_conns: u32_or0(dest_attr::ACTIVE_CONNS, "active connections")?,
        inactive_conns: u32_or0(dest_attr::INACT_CONNS, "inactive connections")?,
        persist_conns: u32_or0(dest_attr::PERSIST_CONNS, "persistent connections")?,
    })
}

/// The family id in a `CTRL_CMD_NEWFAMILY` reply.
pub fn family_id(payload: &[u8]) -> Result<u16, DecodeError> {
    if payload.len() < 4 {
        return Err(bad("short controller reply"));
    }
    attrs(&payload[4..])?
        .into_iter()
        .find(|(k, _)| *k == CTRL_ATTR_FAMILY_ID)
        .map(|(_, v)| u16_of(v, "family id"))
        .transpose()?
        .ok_or_else(|| bad("controller reply without CTRL_ATTR_FAMILY_ID"))
}
