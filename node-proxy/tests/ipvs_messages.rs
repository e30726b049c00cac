//! The IPVS generic-netlink messages against byte fixtures derived by hand from the kernel's
//! uapi headers (`linux/ip_vs.h`: command and attribute numbers, `struct ip_vs_flags`, ports as
//! `__be16`, IPv4 netmask as `__be32`; `linux/netlink.h` / `linux/genetlink.h`: headers,
//! 4-byte attribute alignment). The kernel here has no IPVS, so this is where the router's
//! wire format is proven. Fixtures are little-endian (x86_64, aarch64): host-order integers.
#![cfg(target_endian = "little")]

use std::net::IpAddr;

use node_proxy::ipvs::messages::{
    self, IpvsMessage, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, RealServer, SVC_F_HASHED,
    SVC_F_PERSISTENT, VirtualServer, cmd,
};

/// The family id the controller would have given IPVS (any value: it is just `nlmsg_type`).
const FAMILY: u16 = 0x24;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn web() -> VirtualServer {
    VirtualServer::new(ip("10.96.0.10"), 6, 80, "rr")
}

fn pod() -> RealServer {
    RealServer::new(ip("10.244.0.10"), 8080)
}

/// The service identity nested in every message but NEW/SET_SERVICE: 36 bytes.
const SERVICE_ID: [u8; 36] = [
    0x24, 0x00, 0x01, 0x00, // nla_len 36, IPVS_CMD_ATTR_SERVICE (1)
    0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, // IPVS_SVC_ATTR_AF (1) u16 AF_INET=2, pad
    0x06, 0x00, 0x02, 0x00, 0x06, 0x00, 0x00,
    0x00, // IPVS_SVC_ATTR_PROTOCOL (2) u16 6=TCP, pad
    0x08, 0x00, 0x03, 0x00, 0x0a, 0x60, 0x00, 0x0a, // IPVS_SVC_ATTR_ADDR (3) 10.96.0.10
    0x06, 0x00, 0x04, 0x00, 0x00, 0x50, 0x00, 0x00, // IPVS_SVC_ATTR_PORT (4) __be16 80, pad
];

fn with_header(len: u32, flags: u16, cmd: u8, attrs: &[&[u8]]) -> Vec<u8> {
    let mut v = vec![];
    v.extend_from_slice(&len.to_le_bytes()); // nlmsg_len
    v.extend_from_slice(&[0x24, 0x00]); // nlmsg_type = the IPVS family id
    v.extend_from_slice(&flags.to_le_bytes()); // nlmsg_flags
    v.extend_from_slice(&[0x01, 0x00, 0x00, 0x00]); // nlmsg_seq 1
    v.extend_from_slice(&[0x00, 0x00, 0x00, 0x00]); // nlmsg_pid 0 (the kernel)
    v.extend_from_slice(&[cmd, 0x01, 0x00, 0x00]); // genlmsghdr: cmd, version 1, reserved
    for a in attrs {
        v.extend_from_slice(a);
    }
    assert_eq!(v.len(), len as usize, "fixture length");
    v
}

#[rustfmt::skip]
const NEW_SERVICE_V4: [u8; 92] = [
    0x5c, 0x00, 0x00, 0x00,             // nlmsg_len 92
    0x24, 0x00,                         // nlmsg_type: IPVS family id
    0x05, 0x00,                         // NLM_F_REQUEST | NLM_F_ACK
    0x01, 0x00, 0x00, 0x00,             // seq 1
    0x00, 0x00, 0x00, 0x00,             // pid 0
    0x01, 0x01, 0x00, 0x00,             // IPVS_CMD_NEW_SERVICE (1), version 1
    0x48, 0x00, 0x01, 0x00,             // IPVS_CMD_ATTR_SERVICE, nla_len 72
    0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, // AF = AF_INET
    0x06, 0x00, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, // PROTOCOL = IPPROTO_TCP
    0x08, 0x00, 0x03, 0x00, 0x0a, 0x60, 0x00, 0x0a, // ADDR = 10.96.0.10 (4 bytes for IPv4)
    0x06, 0x00, 0x04, 0x00, 0x00, 0x50, 0x00, 0x00, // PORT = htons(80)
    0x07, 0x00, 0x06, 0x00, b'r', b'r', 0x00, 0x00, // SCHED_NAME = "rr\0", pad
    0x0c, 0x00, 0x07, 0x00,             // FLAGS: struct ip_vs_flags
    0x00, 0x00, 0x00, 0x00,             //   flags 0
    0xff, 0xff, 0xff, 0xff,             //   mask ~0
    0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, // TIMEOUT = 0
    0x08, 0x00, 0x09, 0x00, 0xff, 0xff, 0xff, 0xff, // NETMASK = 255.255.255.255 (__be32)
];

#[rustfmt::skip]
const NEW_SERVICE_V6_PERSISTENT: [u8; 104] = [
    0x68, 0x00, 0x00, 0x00,             // nlmsg_len 104
    0x24, 0x00, 0x05, 0x00,             // type, NLM_F_REQUEST | NLM_F_ACK
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // seq 1, pid 0
    0x01, 0x01, 0x00, 0x00,             // IPVS_CMD_NEW_SERVICE, version 1
    0x54, 0x00, 0x01, 0x00,             // IPVS_CMD_ATTR_SERVICE, nla_len 84
    0x06, 0x00, 0x01, 0x00, 0x0a, 0x00, 0x00, 0x00, // AF = AF_INET6 (10)
    0x06, 0x00, 0x02, 0x00, 0x11, 0x00, 0x00, 0x00, // PROTOCOL = IPPROTO_UDP (17)
    0x14, 0x00, 0x03, 0x00,             // ADDR, nla_len 20: fd00:96::10
    0xfd, 0x00, 0x00, 0x96, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
    0x06, 0x00, 0x04, 0x00, 0x00, 0x35, 0x00, 0x00, // PORT = htons(53)
    0x07, 0x00, 0x06, 0x00, b'r', b'r', 0x00, 0x00, // SCHED_NAME = "rr\0"
    0x0c, 0x00, 0x07, 0x00,             // FLAGS
    0x01, 0x00, 0x00, 0x00,             //   IP_VS_SVC_F_PERSISTENT
    0xff, 0xff, 0xff, 0xff,             //   mask
    0x08, 0x00, 0x08, 0x00, 0x30, 0x2a, 0x00, 0x00, // TIMEOUT = 10800 s
    0x08, 0x00, 0x09, 0x00, 0x80, 0x00, 0x00, 0x00, // NETMASK = prefix length 128 (IPv6)
];

#[rustfmt::skip]
const DEST_FULL: [u8; 60] = [
    0x3c, 0x00, 0x02, 0x00,             // IPVS_CMD_ATTR_DEST, nla_len 60
    0x08, 0x00, 0x01, 0x00, 0x0a, 0xf4, 0x00, 0x0a, // DEST_ADDR = 10.244.0.10
    0x06, 0x00, 0x02, 0x00, 0x1f, 0x90, 0x00, 0x00, // DEST_PORT = htons(8080)
    0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, // FWD_METHOD = IP_VS_CONN_F_MASQ
    0x08, 0x00, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00, // WEIGHT = 1
    0x08, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, // U_THRESH = 0
    0x08, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, // L_THRESH = 0
    0x06, 0x00, 0x0b, 0x00, 0x02, 0x00, 0x00, 0x00, // ADDR_FAMILY = AF_INET
];

#[rustfmt::skip]
const DEST_ID: [u8; 28] = [
    0x1c, 0x00, 0x02, 0x00,             // IPVS_CMD_ATTR_DEST, nla_len 28
    0x08, 0x00, 0x01, 0x00, 0x0a, 0xf4, 0x00, 0x0a, // DEST_ADDR = 10.244.0.10
    0x06, 0x00, 0x02, 0x00, 0x1f, 0x90, 0x00, 0x00, // DEST_PORT = htons(8080)
    0x06, 0x00, 0x0b, 0x00, 0x02, 0x00, 0x00, 0x00, // ADDR_FAMILY = AF_INET
];

fn roundtrip(msg: &IpvsMessage, fixture: &[u8]) {
    assert_eq!(msg.encode(FAMILY, 1), fixture, "encoding of {msg:?}");
    let (header, decoded) = IpvsMessage::decode(fixture).unwrap();
    assert_eq!(header.kind, FAMILY);
    assert_eq!(header.seq, 1);
    assert_eq!(&decoded, msg);
}

#[test]
fn new_and_set_service_ipv4() {
    roundtrip(
        &IpvsMessage::new(cmd::NEW_SERVICE, Some(web()), None),
        &NEW_SERVICE_V4,
    );
    // SET_SERVICE carries the same full service
    let mut set = NEW_SERVICE_V4;
    set[16] = cmd::SET_SERVICE;
    roundtrip(&IpvsMessage::new(cmd::SET_SERVICE, Some(web()), None), &set);
}

#[test]
fn new_service_ipv6_udp_with_persistence() {
    let mut vs = VirtualServer::new(ip("fd00:96::10"), 17, 53, "rr");
    vs.flags = SVC_F_PERSISTENT;
    vs.timeout = 10800;
    roundtrip(
        &IpvsMessage::new(cmd::NEW_SERVICE, Some(vs), None),
        &NEW_SERVICE_V6_PERSISTENT,
    );
}

#[test]
fn del_and_get_service() {
    let del = with_header(
        0x38,
        NLM_F_REQUEST | NLM_F_ACK,
        cmd::DEL_SERVICE,
        &[&SERVICE_ID],
    );
    let msg = IpvsMessage::new(cmd::DEL_SERVICE, Some(web()), None);
    assert_eq!(msg.encode(FAMILY, 1), del);
    // an identity decodes without scheduler, flags or netmask
    let (_, d) = IpvsMessage::decode(&del).unwrap();
    let s = d.service.unwrap();
    assert_eq!(s.key(), web().key());
    assert_eq!((s.scheduler.as_str(), s.netmask), ("", 0));
    // GET_SERVICE without a service dumps the table: NLM_F_REQUEST | NLM_F_DUMP = 0x301
    let get = with_header(0x14, NLM_F_REQUEST | NLM_F_DUMP, cmd::GET_SERVICE, &[]);
    assert_eq!(&get[6..8], &[0x01, 0x03]);
    roundtrip(&IpvsMessage::new(cmd::GET_SERVICE, None, None), &get);
}

#[test]
fn new_set_del_and_get_dest() {
    let new = with_header(
        0x74,
        NLM_F_REQUEST | NLM_F_ACK,
        cmd::NEW_DEST,
        &[&SERVICE_ID, &DEST_FULL],
    );
    let msg = IpvsMessage::new(cmd::NEW_DEST, Some(web()), Some(pod()));
    assert_eq!(msg.encode(FAMILY, 1), new);
    let (_, d) = IpvsMessage::decode(&new).unwrap();
    assert_eq!(d.dest, Some(pod()));
    assert_eq!(d.service.unwrap().key(), web().key());

    let set = with_header(
        0x74,
        NLM_F_REQUEST | NLM_F_ACK,
        cmd::SET_DEST,
        &[&SERVICE_ID, &DEST_FULL],
    );
    assert_eq!(
        IpvsMessage::new(cmd::SET_DEST, Some(web()), Some(pod())).encode(FAMILY, 1),
        set
    );

    let del = with_header(
        0x54,
        NLM_F_REQUEST | NLM_F_ACK,
        cmd::DEL_DEST,
        &[&SERVICE_ID, &DEST_ID],
    );
    assert_eq!(
        IpvsMessage::new(cmd::DEL_DEST, Some(web()), Some(pod())).encode(FAMILY, 1),
        del
    );

    let get = with_header(
        0x38,
        NLM_F_REQUEST | NLM_F_DUMP,
        cmd::GET_DEST,
        &[&SERVICE_ID],
    );
    assert_eq!(
        IpvsMessage::new(cmd::GET_DEST, Some(web()), None).encode(FAMILY, 1),
        get
    );
}

#[test]
fn ipv6_dest_carries_sixteen_bytes_and_its_family() {
    let d = RealServer::new(ip("fd00:244::10"), 8080);
    let vs = VirtualServer::new(ip("fd00:96::10"), 6, 80, "rr");
    let bytes =
        IpvsMessage::new(cmd::DEL_DEST, Some(vs.clone()), Some(d.clone())).encode(FAMILY, 9);
    #[rustfmt::skip]
    let dest: [u8; 40] = [
        0x28, 0x00, 0x02, 0x00,         // IPVS_CMD_ATTR_DEST, nla_len 40
        0x14, 0x00, 0x01, 0x00,         // DEST_ADDR, nla_len 20: fd00:244::10
        0xfd, 0x00, 0x02, 0x44, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10,
        0x06, 0x00, 0x02, 0x00, 0x1f, 0x90, 0x00, 0x00, // DEST_PORT = htons(8080)
        0x06, 0x00, 0x0b, 0x00, 0x0a, 0x00, 0x00, 0x00, // ADDR_FAMILY = AF_INET6
    ];
    assert!(bytes.ends_with(&dest), "{bytes:02x?}");
    let (h, m) = IpvsMessage::decode(&bytes).unwrap();
    assert_eq!(h.seq, 9);
    let got = m.dest.unwrap();
    // an identity: address and port (DEL_DEST carries no weight)
    assert_eq!((got.addr, got.port, got.weight), (d.addr, d.port, 0));
}

/// What the kernel answers to a GET_SERVICE dump (ip_vs_genl_fill_service): the address in a
/// full `union nf_inet_addr`, the HASHED flag, stats, and NLA_F_NESTED on the nest.
#[rustfmt::skip]
const KERNEL_SERVICE_REPLY: [u8; 116] = [
    0x74, 0x00, 0x00, 0x00,             // nlmsg_len 116
    0x24, 0x00, 0x02, 0x00,             // type, NLM_F_MULTI
    0x07, 0x00, 0x00, 0x00,             // seq 7
    0x34, 0x12, 0x00, 0x00,             // pid: our port id
    0x01, 0x01, 0x00, 0x00,             // IPVS_CMD_NEW_SERVICE, version 1
    0x60, 0x00, 0x01, 0x80,             // IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, nla_len 96
    0x06, 0x00, 0x01, 0x00, 0x02, 0x00, 0x00, 0x00, // AF_INET
    0x06, 0x00, 0x02, 0x00, 0x06, 0x00, 0x00, 0x00, // TCP
    0x14, 0x00, 0x03, 0x00,             // ADDR, nla_len 20 (sizeof union nf_inet_addr)
    0x0a, 0x60, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x06, 0x00, 0x04, 0x00, 0x00, 0x50, 0x00, 0x00, // PORT 80
    0x07, 0x00, 0x06, 0x00, b'r', b'r', 0x00, 0x00, // SCHED_NAME "rr"
    0x0c, 0x00, 0x07, 0x00,             // FLAGS
    0x02, 0x00, 0x00, 0x00,             //   IP_VS_SVC_F_HASHED
    0xff, 0xff, 0xff, 0xff,             //   mask
    0x08, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, // TIMEOUT 0
    0x08, 0x00, 0x09, 0x00, 0xff, 0xff, 0xff, 0xff, // NETMASK
    0x0c, 0x00, 0x0a, 0x00,             // STATS (nested), nla_len 12
    0x08, 0x00, 0x01, 0x00, 0x05, 0x00, 0x00, 0x00, //   CONNS = 5 (ignored)
];

/// What the kernel answers to a GET_DEST dump (ip_vs_genl_fill_dest), with the tunnel
/// attributes of newer kernels this decoder does not know.
#[rustfmt::skip]
const KERNEL_DEST_REPLY: [u8; 124] = [
    0x7c, 0x00, 0x00, 0x00,             // nlmsg_len 124
    0x24, 0x00, 0x02, 0x00,             // type, NLM_F_MULTI
    0x08, 0x00, 0x00, 0x00, 0x34, 0x12, 0x00, 0x00, // seq 8, pid
    0x05, 0x01, 0x00, 0x00,             // IPVS_CMD_NEW_DEST, version 1
    0x68, 0x00, 0x02, 0x00,             // IPVS_CMD_ATTR_DEST, nla_len 104
    0x14, 0x00, 0x01, 0x00,             // ADDR, nla_len 20: 10.244.0.10 in a 16-byte union
    0x0a, 0xf4, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x06, 0x00, 0x02, 0x00, 0x1f, 0x90, 0x00, 0x00, // PORT 8080
    0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, // FWD_METHOD MASQ
    0x08, 0x00, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00, // WEIGHT 1
    0x05, 0x00, 0x0d, 0x00, 0x00, 0x00, 0x00, 0x00, // TUN_TYPE (u8) 0, pad: unknown, skipped
    0x08, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, // U_THRESH
    0x08, 0x00, 0x06, 0x00, 0x00, 0x00, 0x00, 0x00, // L_THRESH
    0x08, 0x00, 0x07, 0x00, 0x03, 0x00, 0x00, 0x00, // ACTIVE_CONNS 3
    0x08, 0x00, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, // INACT_CONNS 1
    0x08, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, // PERSIST_CONNS 0
    0x06, 0x00, 0x0b, 0x00, 0x02, 0x00, 0x00, 0x00, // ADDR_FAMILY AF_INET
];

#[test]
fn kernel_replies_decode() {
    let (h, m) = IpvsMessage::decode(&KERNEL_SERVICE_REPLY).unwrap();
    assert_eq!((h.kind, h.flags, h.seq, h.pid), (FAMILY, 2, 7, 0x1234));
    assert_eq!(m.cmd, cmd::NEW_SERVICE);
    let s = m.service.unwrap();
    assert_eq!(s.key(), web().key());
    assert_eq!(s.flags, SVC_F_HASHED);
    assert_eq!(s.scheduler, "rr");
    assert_eq!(s.netmask, 0xffff_ffff);

    let (_, m) = IpvsMessage::decode(&KERNEL_DEST_REPLY).unwrap();
    let d = m.dest.unwrap();
    assert_eq!(d.addr, ip("10.244.0.10"));
    assert_eq!(
        (d.port, d.weight, d.active_conns, d.inactive_conns),
        (8080, 1, 3, 1)
    );
}

#[test]
fn controller_request_and_errors() {
    #[rustfmt::skip]
    let get_family: [u8; 32] = [
        0x20, 0x00, 0x00, 0x00,         // nlmsg_len 32
        0x10, 0x00, 0x05, 0x00,         // GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK
        0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // seq 3, pid 0
        0x03, 0x01, 0x00, 0x00,         // CTRL_CMD_GETFAMILY, version 1
        0x09, 0x00, 0x02, 0x00,         // CTRL_ATTR_FAMILY_NAME, nla_len 9
        b'I', b'P', b'V', b'S', 0x00, 0x00, 0x00, 0x00, // "IPVS\0", pad
    ];
    assert_eq!(messages::get_family_request("IPVS", 3), get_family);
    // CTRL_CMD_NEWFAMILY reply payload: genl header, CTRL_ATTR_FAMILY_ID = 0x24
    let reply = [
        0x01, 0x02, 0x00, 0x00, 0x06, 0x00, 0x01, 0x00, 0x24, 0x00, 0x00, 0x00,
    ];
    assert_eq!(messages::family_id(&reply).unwrap(), 0x24);
    // NLMSG_ERROR, seq 3: -ENOENT (-2) then the offending header (cut short here)
    #[rustfmt::skip]
    let err = [
        0x18, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, // nlmsg_len 24, NLMSG_ERROR
        0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // seq 3, pid 0
        0xfe, 0xff, 0xff, 0xff, 0x20, 0x00, 0x00, 0x00,
    ];
    let m = node_nft::netlink::messages(&err).next().unwrap().unwrap();
    assert_eq!(m.header.kind, messages::NLMSG_ERROR);
    assert_eq!(m.error_code().unwrap(), Some(-2));
    let mut answers = node_nft::netlink::Answers::new(3, 1);
    assert!(answers.feed(&err).unwrap());
    assert_eq!(answers.into_answers()[0].errno, Some(libc::ENOENT));
}

#[test]
fn truncated_or_lying_messages_are_errors() {
    assert!(IpvsMessage::decode(&NEW_SERVICE_V4[..10]).is_err());
    let mut lying = NEW_SERVICE_V4;
    lying[0] = 0xff; // nlmsg_len beyond the buffer
    assert!(IpvsMessage::decode(&lying).is_err());
    let mut bad_nla = NEW_SERVICE_V4;
    bad_nla[20] = 0xf0; // the service nest claims more than the message holds
    assert!(IpvsMessage::decode(&bad_nla).is_err());
    let mut no_af = NEW_SERVICE_V4;
    no_af[26] = 0x0f; // AF attribute renumbered: a service without AF
    assert!(IpvsMessage::decode(&no_af).is_err());
}
