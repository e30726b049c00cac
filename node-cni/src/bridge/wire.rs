//! The netlink side of one ADD, in two batches (two `sendmsg`s) on a worker thread:
//!
//! 1. node: create the veth (host end on the bridge and up, the pod end created directly in
//!    the pod's namespace with its final name; one queue per end), hairpin mode on the bridge
//!    port (by name), and read the host end back: its `IFLA_LINK` is the pod end's index;
//! 2. pod: loopback up, the pod end up (by that index), the addresses and default routes (the
//!    kernel runs a batch in order: the link is up before the routes through it), and read the
//!    pod end back (its name checked, its MAC).
//!
//! The workers are started in the caller's (the node's) namespace; one enters the pod's for 2
//! and goes back to the node's afterwards. The caller's threads never change namespace,
//! tokio workers never block on the kernel, and no thread is created per ADD.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};

use ipnet::IpNet;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute};
use node_core::CniError;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::{
    AddressMessageBuilder, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use super::shape::{self, Limit};
use crate::nlbatch::{NlSocket, Request, check};
use crate::rtnl;

/// What to wire for one attachment.
pub(crate) struct Wiring {
    pub who: String,
    pub container_id: String,
    pub netns: std::path::PathBuf,
    pub host: String,
    pub ifname: String,
    pub bridge: u32,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub addresses: Vec<IpNet>,
    pub gateways: Vec<IpAddr>,
    /// Shaping of the traffic to the pod (`bandwidth` ingress).
    pub ingress: Option<Limit>,
    /// Shaping of the traffic from the pod (`bandwidth` egress).
    pub egress: Option<Limit>,
}

/// What was wired: the host and pod ends' MACs.
pub(crate) struct Wired {
    pub host_mac: String,
    pub pod_mac: String,
}

/// Why wiring failed; `bridge_gone` when the bridge index no longer exists.
pub(crate) struct WireError {
    pub error: CniError,
    pub bridge_gone: bool,
}

impl From<CniError> for WireError {
    fn from(error: CniError) -> Self {
        Self {
            error,
            bridge_gone: false,
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A few long-lived threads, started in the node's namespace, that run the ADDs' netlink work:
/// no thread is created per ADD. A job may enter a pod's namespace; its worker goes back to the
/// node's before the next job, and ends if it cannot.
#[derive(Debug)]
pub(crate) struct Workers {
    tx: std::sync::mpsc::Sender<Job>,
}

impl Workers {
    /// Start `n` workers in the calling thread's namespace.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let node = File::open("/proc/thread-self/ns/net")?;
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..n {
            let (rx, node) = (rx.clone(), node.try_clone()?);
            std::thread::Builder::new()
                .name(format!("nodekit-cni-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock().map(|r| r.recv()) {
                            Ok(Ok(job)) => job,
                            _ => return,
                        };
                        job();
                        let back =
                            nix::sched::setns(node.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
                        if back.is_err() {
                            return;
                        }
                    }
                })?;
        }
        Ok(Self { tx })
    }
}

/// Run [`wire`] on a worker, or on a new thread (which starts in the calling thread's
/// namespace) when there is none.
pub(crate) async fn wire_on_thread(
    w: Wiring,
    pod_ns: &File,
    workers: Option<&Workers>,
) -> Result<Wired, WireError> {
    let ns = pod_ns.try_clone().map_err(|e| CniError::Netns {
        container_id: w.container_id.clone(),
        path: w.netns.clone(),
        message: e.to_string(),
    })?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(wire(&w, &ns));
    });
    let job = match workers {
        Some(p) => p.tx.send(job).err().map(|e| e.0),
        None => Some(job),
    };
    if let Some(job) = job {
        std::thread::Builder::new()
            .name("nodekit-cni-add".into())
            .spawn(job)
            .map_err(|e| CniError::Other(format!("spawn the netlink thread: {e}")))?;
    }
    rx.await
        .map_err(|_| CniError::Other("the netlink thread ended without an answer".into()))?
}

fn veth(w: &Wiring, pod_ns: &File) -> Request {
    // The pod end cannot be brought up here: veth_open answers ENOTCONN until both ends exist.
    // One queue per end: a veth's default is one per possible CPU, each with its own sysfs
    // directories made (and later removed) under the rtnl lock.
    let mut p = LinkUnspec::new_with_name(&w.ifname).setns_by_fd(pod_ns.as_raw_fd());
    let mut v = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(w.host.clone())
        .controller(w.bridge)
        .up();
    if let Some(m) = w.mtu {
        p = p.mtu(m);
        v = v.mtu(m);
    }
    let one_queue = [LinkAttribute::NumTxQueues(1), LinkAttribute::NumRxQueues(1)];
    let mut peer = p.build();
    peer.attributes.extend(one_queue.clone());
    let mut msg = v
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    msg.attributes.extend(one_queue);
    Request::new(
        format!("create veth {} for {}", w.host, w.who),
        RouteNetlinkMessage::NewLink(msg),
        NLM_F_CREATE | NLM_F_EXCL,
    )
}

fn get_link(name: &str) -> Request {
    Request::new(
        format!("get link {name}"),
        RouteNetlinkMessage::GetLink(LinkUnspec::new_with_name(name).build()),
        0,
    )
}

fn del_link(name: &str) -> Request {
    Request::new(
        format!("delete link {name}"),
        RouteNetlinkMessage::DelLink(LinkUnspec::new_with_name(name).build()),
        0,
    )
}

fn first_batch(w: &Wiring, pod_ns: &File) -> Vec<Request> {
    let mut reqs = vec![veth(w, pod_ns)];
    if w.hairpin {
        reqs.push(Request::new(
            format!("set hairpin mode on {}", w.host),
            RouteNetlinkMessage::NewLink(
                LinkBridgePort::new(0)
                    .name(w.host.clone())
                    .hairpin(true)
                    .build(),
            ),
            0,
        ));
    }
    reqs.push(get_link(&w.host));
    reqs
}

/// The index of a veth end's peer (`IFLA_LINK`, in the peer's namespace), when it differs from
/// the end's own.
fn peer_index(link: &netlink_packet_route::link::LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) => Some(*i),
        _ => None,
    })
}

/// Wire one attachment; the calling thread must be in the node's namespace, and ends in the
/// pod's.
pub(crate) fn wire(w: &Wiring, pod_ns: &File) -> Result<Wired, WireError> {
    let mut node = NlSocket::open()?;
    let reqs = first_batch(w, pod_ns);
    let ops: Vec<String> = reqs.iter().map(|r| r.op.clone()).collect();
    let mut answers = node.batch(reqs)?;
    if answers[0].errno == Some(rtnl::EEXIST) {
        // Left by an earlier ADD of the same attachment: start again.
        let gone = node.batch(vec![del_link(&w.host)])?;
        if gone[0].errno.is_none() {
            answers = node.batch(first_batch(w, pod_ns))?;
        }
    }
    let create_op = format!("create veth {} for {}", w.host, w.who);
    if answers[0].errno == Some(rtnl::ENODEV) {
        return Err(WireError {
            error: check(&create_op, &answers[0]).expect_err("an errno"),
            bridge_gone: true,
        });
    }
    check(&create_op, &answers[0])?;
    for (op, a) in ops.iter().zip(&answers).skip(1) {
        check(op, a)?;
    }
    let host_link = answers
        .last()
        .and_then(|a| a.link())
        .ok_or_else(|| CniError::Netlink {
            op: format!("get link {}", w.host),
            message: "no answer".into(),
        })?;
    let (host_index, host_mac) = (host_link.header.index, rtnl::mac_of(host_link));
    // The kernel leaves IFLA_LINK out when the peer's index equals the link's own.
    let idx = peer_index(host_link).unwrap_or(host_index);
    if w.ingress.is_some() || w.egress.is_some() {
        shape_host(&mut node, w, host_index)?;
    }

    nix::sched::setns(pod_ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        CniError::Netns {
            container_id: w.container_id.clone(),
            path: w.netns.clone(),
            message: format!("enter the pod's network namespace: {e}"),
        }
    })?;
    let mut pod = NlSocket::open()?;
    let up = |name: &str, m| {
        Request::new(
            format!("set link {name} up in the pod"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
    };
    // One batch, run in order by the kernel: the links up before the routes that need them.
    let mut reqs = vec![
        up("lo", LinkUnspec::new_with_index(1).up().build()),
        up(&w.ifname, LinkUnspec::new_with_index(idx).up().build()),
    ];
    for a in &w.addresses {
        let mut msg = match a.addr() {
            IpAddr::V4(ip) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(idx)
                .address(ip, a.prefix_len())
                .build(),
            IpAddr::V6(ip) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(idx)
                .address(ip, a.prefix_len())
                .build(),
        };
        if a.addr().is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        reqs.push(Request::new(
            format!("add address {a} to {} in the pod", w.ifname),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ));
    }
    for gw in &w.gateways {
        let msg = match gw {
            IpAddr::V4(g) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(*g)
                .output_interface(idx)
                .build(),
            IpAddr::V6(g) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(*g)
                .output_interface(idx)
                .build(),
        };
        reqs.push(Request::new(
            format!("add default route via {gw} in the pod"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ));
    }
    reqs.push(Request::new(
        format!("get link {} in the pod", w.ifname),
        RouteNetlinkMessage::GetLink(LinkUnspec::new_with_index(idx).build()),
        0,
    ));
    let ops: Vec<String> = reqs.iter().map(|r| r.op.clone()).collect();
    let answers = pod.batch(reqs)?;
    for (i, (op, a)) in ops.iter().zip(&answers).enumerate() {
        // An address or route already there (a repeated ADD) is fine; the links must come up.
        if i < 2 || a.errno != Some(rtnl::EEXIST) {
            check(op, a)?;
        }
    }
    let eth = answers.last().and_then(|a| a.link());
    let pod_mac = match eth {
        Some(l) if rtnl::name_of(l) == Some(w.ifname.as_str()) => rtnl::mac_of(l),
        _ => {
            return Err(CniError::Netlink {
                op: format!("get link {} in the pod", w.ifname),
                message: format!("index {idx} is not {}", w.ifname),
            }
            .into());
        }
    };
    Ok(Wired { host_mac, pod_mac })
}

/// The `bandwidth` shaping on the host end (index `host`): one batch for the ifb device (egress
/// only), one for the qdiscs and the redirect.
fn shape_host(node: &mut NlSocket, w: &Wiring, host: u32) -> Result<(), CniError> {
    let mut reqs = Vec::new();
    let ifb = shape::ifb_name(&w.host);
    let mut ifb_index = 0;
    if w.egress.is_some() {
        let mut a = node.batch(vec![shape::add_ifb(&ifb), get_link(&ifb)])?;
        if a[0].errno == Some(rtnl::EEXIST) {
            // Left by an earlier ADD of the same attachment.
            node.batch(vec![del_link(&ifb)])?;
            a = node.batch(vec![shape::add_ifb(&ifb), get_link(&ifb)])?;
        }
        check(&format!("create ifb device {ifb}"), &a[0])?;
        ifb_index = a[1].link().map(|l| l.header.index).unwrap_or_default();
    }
    if let Some(l) = w.ingress {
        reqs.push(shape::tbf(&w.host, host, l));
    }
    if let Some(l) = w.egress {
        reqs.push(shape::ingress_qdisc(&w.host, host));
        reqs.push(shape::redirect(&w.host, host, &ifb, ifb_index));
        reqs.push(shape::tbf(&ifb, ifb_index, l));
    }
    let ops: Vec<String> = reqs.iter().map(|r| r.op.clone()).collect();
    for (op, a) in ops.iter().zip(node.batch(reqs)?) {
        check(op, &a)?;
    }
    Ok(())
}

/// Delete the links `names` in the calling thread's namespace; links already gone are fine.
///
/// The kernel answers a link deletion only after `netdev_run_todo` has waited for the RCU
/// callbacks (an `rcu_barrier`, 10-20 ms), long after the link left the namespace with its
/// addresses and bridge port. So the socket listens to the namespace's link notifications
/// (`RTNLGRP_LINK`) for the time of the deletion: a link's `RTM_DELLINK`, sent once it is
/// unlisted, is as good as its answer, and this returns at the notifications or the answers,
/// whichever come first. Not `NLM_F_ECHO`: the kernel sends the echo of every link a deletion
/// takes with it (the veth's pod end) to the sender's port id in *that link's* namespace, where
/// the same port id can be any socket of the pod's. The sender waits out the rest alone: a
/// thread of the blocking pool (the kernel runs a netlink request in its sender's `sendmsg`),
/// or in a plugin binary a child process, since a process cannot end while one of its threads
/// is in the kernel's deletion (see [`crate::skel::plugin_main`]). Neither is the caller's.
pub(crate) async fn delete_links(names: &[String]) -> Result<(), CniError> {
    use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    let nl = |e: std::io::Error| CniError::Netlink {
        op: format!("delete links {}", names.join(", ")),
        message: e.to_string(),
    };
    // Opened here: the socket is in the caller's namespace whatever thread uses it.
    let mut sock = Socket::new(NETLINK_ROUTE).map_err(nl)?;
    sock.bind_auto().map_err(nl)?;
    sock.connect(&SocketAddr::new(0, 0)).map_err(nl)?;
    let from_child = crate::skel::EXITS_AFTER_ANSWER.load(std::sync::atomic::Ordering::Relaxed);
    delete_links_on(sock, names, from_child).await
}

/// [`delete_links`] on a bound and connected route socket, the request sent by a child process
/// when `from_child`.
async fn delete_links_on(
    sock: rtnetlink::sys::Socket,
    names: &[String],
    from_child: bool,
) -> Result<(), CniError> {
    use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkHeader};
    use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};

    let what = || format!("delete links {}", names.join(", "));
    let nl = |e: std::io::Error| CniError::Netlink {
        op: what(),
        message: e.to_string(),
    };
    sock.add_membership(libc::RTNLGRP_LINK).map_err(nl)?;
    // The reader gives up in time if the answers never come (the sender failed).
    let tv = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    // SAFETY: setsockopt on our own fd with a pointer to a live timeval.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(nl(std::io::Error::last_os_error()));
    }
    let request = |msg: RouteNetlinkMessage, seq: usize, flags: u16, buf: &mut Vec<u8>| {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq as u32;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let start = buf.len();
        buf.resize(start + m.buffer_len(), 0);
        m.serialize(&mut buf[start..]);
    };
    let n = names.len();
    let mut buf = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let msg = RouteNetlinkMessage::DelLink(LinkUnspec::new_with_name(name).build());
        request(msg, i + 1, NLM_F_REQUEST | NLM_F_ACK, &mut buf);
    }
    // Asked when notifications were dropped (a full receive buffer): which links are gone.
    let mut probe = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let msg = RouteNetlinkMessage::GetLink(LinkUnspec::new_with_name(name).build());
        request(msg, n + i + 1, NLM_F_REQUEST, &mut probe);
    }
    let sock = std::sync::Arc::new(sock);
    let sender: std::pin::Pin<Box<dyn Future<Output = std::io::Result<usize>> + Send>> =
        if from_child {
            let sent = send_from_child(sock.as_raw_fd(), &buf).map(|()| buf.len());
            Box::pin(async move { sent })
        } else {
            let sock = sock.clone();
            let h = tokio::task::spawn_blocking(move || sock.send(&buf, 0));
            Box::pin(async move { h.await.map_err(std::io::Error::other)? })
        };
    let owned: Vec<String> = names.to_vec();
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Option<i32>>> {
        // Per link: `None` until answered, then its errno (0: gone).
        let mut done: Vec<Option<i32>> = vec![None; n];
        let mut rbuf = vec![0u8; 64 * 1024];
        while done.iter().any(Option::is_none) {
            let got = match sock.recv(&mut &mut rbuf[..], 0) {
                Ok(got) => got,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    sock.send(&probe, 0)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // a malformed message ends this datagram's walk, as a stray one is skipped
            for m in node_nft::netlink::messages(&rbuf[..got]).map_while(Result::ok) {
                let seq = m.header.seq as usize;
                if m.header.kind == libc::RTM_DELLINK && m.payload().first() == Some(&0) {
                    // A notification (family AF_UNSPEC: sent once the link's unregistration
                    // notifiers ran, a bridge port's AF_BRIDGE one comes earlier), by name:
                    // the namespace's other links' are not ours.
                    let i = link_name(m.payload()).and_then(|l| owned.iter().position(|o| o == l));
                    if let Some(i) = i {
                        done[i].get_or_insert(0);
                    }
                } else if let Ok(Some(code)) = m.error_code() {
                    if (1..=n).contains(&seq) {
                        done[seq - 1].get_or_insert(-code);
                    } else if (n + 1..=2 * n).contains(&seq) && -code == rtnl::ENODEV {
                        done[seq - n - 1].get_or_insert(0);
                    }
                }
            }
        }
        Ok(done)
    });
    let join = |e: tokio::task::JoinError| CniError::Other(format!("{}: {e}", what()));
    let answers = match futures::future::select(sender, reader).await {
        futures::future::Either::Left((sent, reader)) => {
            if sent.map_err(nl)? == 0 {
                return Err(nl(std::io::ErrorKind::WriteZero.into()));
            }
            reader.await.map_err(join)?.map_err(nl)?
        }
        futures::future::Either::Right((read, _)) => read.map_err(join)?.map_err(nl)?,
    };
    for (name, errno) in names.iter().zip(answers) {
        match errno {
            Some(0) | Some(rtnl::ENODEV) => {}
            Some(e) => {
                return Err(CniError::Netlink {
                    op: format!("delete link {name}"),
                    message: std::io::Error::from_raw_os_error(e).to_string(),
                });
            }
            None => unreachable!("every link answered"),
        }
    }
    Ok(())
}

/// Send `buf` on the socket `fd` from a child process that ends when the kernel has answered
/// and that nobody waits for. The child closes its standard streams first: the runtime that
/// started a plugin binary reads its output until every writer is gone.
fn send_from_child(fd: std::os::fd::RawFd, buf: &[u8]) -> std::io::Result<()> {
    // SAFETY: the child makes only async-signal-safe calls (close, send, _exit) on memory that
    // was ready before the fork, then ends.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()),
        0 => unsafe {
            for std_fd in 0..3 {
                libc::close(std_fd);
            }
            let sent = libc::send(fd, buf.as_ptr().cast(), buf.len(), 0);
            libc::_exit(if sent == buf.len() as isize { 0 } else { 1 })
        },
        _ => Ok(()),
    }
}

/// The `IFLA_IFNAME` of a link message's payload (`struct ifinfomsg`, then attributes).
fn link_name(payload: &[u8]) -> Option<&str> {
    const IFINFOMSG_LEN: usize = 16;
    const IFLA_IFNAME: u16 = 3;
    let mut rest = payload.get(IFINFOMSG_LEN..)?;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        if kind == IFLA_IFNAME {
            let value = &rest[4..len];
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return std::str::from_utf8(&value[..end]).ok();
        }
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

    use super::*;

    /// A route socket in the calling thread's namespace with port id `port`.
    fn bound(port: u32) -> Socket {
        let mut s = Socket::new(NETLINK_ROUTE).unwrap();
        s.bind(&SocketAddr::new(port, 0)).unwrap();
        s
    }

    #[test]
    fn a_link_name_is_read_from_a_link_message() {
        let msg = LinkUnspec::new_with_name("nkv0123").build();
        let mut buf = vec![0; rtnetlink::packet_core::Emitable::buffer_len(&msg)];
        rtnetlink::packet_core::Emitable::emit(&msg, &mut buf);
        assert_eq!(link_name(&buf), Some("nkv0123"));
        assert_eq!(link_name(&buf[..10]), None);
    }

    #[test]
    fn deleting_a_veth_sends_nothing_to_the_sockets_of_the_pods_namespace() {
        let me = "wire::deleting_a_veth_sends_nothing_to_the_sockets_of_the_pods_namespace";
        if !(node_test_support::require_root(me) && node_test_support::require_command(me, "ip")) {
            return;
        }
        let node = node_test_support::NetnsFixture::new("nkdln").unwrap();
        let pod = node_test_support::NetnsFixture::new("nkdlp").unwrap();
        // Port ids are per namespace: the deleting socket's may be any socket's of the pod.
        let port = 0x4e4b_0000 | (std::process::id() & 0xffff);
        let in_pod = pod.run_in(|| bound(port)).unwrap();
        in_pod.set_non_blocking(true).unwrap();
        node.sh(&format!(
            "ip link add nkdl0 type veth peer name eth0 netns {}",
            pod.name()
        ))
        .unwrap();
        node.run_in(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let sock = bound(port);
            sock.connect(&SocketAddr::new(0, 0)).unwrap();
            rt.block_on(delete_links_on(sock, &["nkdl0".into()], false))
                .unwrap();
            // Dropping the runtime waits for the sender: the deletion is complete.
            drop(rt);
        })
        .unwrap();
        assert_eq!(node.sh("ip -o link show type veth").unwrap(), "");
        assert_eq!(pod.sh("ip -o link show type veth").unwrap(), "");
        let mut buf = vec![0u8; 16 * 1024];
        match in_pod.recv(&mut &mut buf[..], 0) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(n) => panic!(
                "a socket of the pod's namespace got {n} bytes: {:?}",
                node_nft::netlink::messages(&buf[..n])
                    .map_while(Result::ok)
                    .map(|m| m.header)
                    .collect::<Vec<_>>()
            ),
            Err(e) => panic!("{e}"),
        }
    }
}
