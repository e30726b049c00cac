//! Netlink route sockets bound to a network namespace, and the link, address and route
//! operations the bridge plugin needs.
//!
//! A netlink socket belongs to the namespace of the thread that opened it. [`Rtnl::current`]
//! opens one in the calling thread's namespace (the node); [`Rtnl::in_netns`] opens one on a
//! short-lived thread that entered the pod's namespace, so the calling thread never changes
//! namespace.

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::AsFd;

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use node_core::CniError;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, RouteMessageBuilder};

pub(crate) const EEXIST: i32 = libc::EEXIST;
pub(crate) const ENODEV: i32 = libc::ENODEV;

/// A route netlink connection; its I/O task stops when this is dropped.
pub(crate) struct Rtnl {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The errno of a netlink error, if the kernel gave one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

pub(crate) fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> CniError {
    let op = op.into();
    move |e| CniError::Netlink {
        op,
        message: e.to_string(),
    }
}

fn ignore(e: rtnetlink::Error, code: i32) -> Result<(), rtnetlink::Error> {
    if errno(&e) == Some(code) {
        Ok(())
    } else {
        Err(e)
    }
}

/// The MAC address attribute of a link, as `aa:bb:..`.
pub(crate) fn mac_of(link: &LinkMessage) -> String {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(b) => Some(
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// The name of a link.
pub(crate) fn name_of(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The controller (bridge) index of a link.
pub(crate) fn controller_of(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

impl Rtnl {
    /// A connection in the calling thread's namespace. Needs a tokio runtime.
    pub fn current() -> Result<Self, CniError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| CniError::Netlink {
            op: "open a netlink socket".into(),
            message: e.to_string(),
        })?;
        Ok(Self {
            handle,
            task: tokio::spawn(conn),
        })
    }

    /// A connection in the namespace `ns` (an open `/run/netns/..` or `/proc/<pid>/ns/net`),
    /// opened by a short-lived thread that enters it; the caller's thread (and the tokio
    /// worker) never changes namespace nor blocks on that thread.
    pub async fn in_netns(ns: &File) -> Result<Self, CniError> {
        let io = |e: std::io::Error| CniError::Netlink {
            op: "open a netlink socket in a netns".into(),
            message: e.to_string(),
        };
        let ns = ns.try_clone().map_err(io)?;
        let rt = tokio::runtime::Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("nodekit-netns".into())
            .spawn(move || {
                let opened = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
                    .and_then(|()| {
                        let _guard = rt.enter();
                        rtnetlink::new_connection()
                    });
                // The thread ends here, inside the pod's namespace; the socket stays bound to it.
                let _ = tx.send(opened);
            })
            .map_err(io)?;
        let (conn, handle, _) = rx
            .await
            .map_err(|_| CniError::Other("the netns thread ended without an answer".into()))?
            .map_err(io)?;
        Ok(Self {
            handle,
            task: tokio::spawn(conn),
        })
    }

    /// The link called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, CniError> {
        match self
            .handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
        {
            Ok(l) => Ok(l),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(nl_err(format!("get link {name}"))(e)),
        }
    }

    /// Create the bridge if missing, bring it up; its link message.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mtu: Option<u32>,
    ) -> Result<LinkMessage, CniError> {
        if self.link(name).await?.is_none() {
            let mut b = LinkBridge::new(name).up();
            if let Some(m) = mtu {
                b = b.mtu(m);
            }
            self.handle
                .link()
                .add(b.build())
                .execute()
                .await
                .or_else(|e| ignore(e, EEXIST))
                .map_err(nl_err(format!("create bridge {name}")))?;
        }
        let link = self.link(name).await?.ok_or_else(|| CniError::Netlink {
            op: format!("create bridge {name}"),
            message: "the bridge vanished".into(),
        })?;
        if !link.header.flags.contains(LinkFlags::Up) {
            self.set_up(link.header.index).await?;
        }
        Ok(link)
    }

    /// Bring link `index` up.
    pub async fn set_up(&self, index: u32) -> Result<(), CniError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(nl_err(format!("set link {index} up")))
    }

    /// Add `addr` to link `index`; an address already there is fine. IPv6 skips DAD.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<(), CniError> {
        let mut req = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            req.message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        req.execute()
            .await
            .or_else(|e| ignore(e, EEXIST))
            .map_err(nl_err(format!("add address {addr} to link {index}")))
    }

    /// The addresses on link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpAddr>, CniError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err(format!("list addresses of link {index}")))?;
        Ok(msgs
            .iter()
            .flat_map(|m| m.attributes.iter())
            .filter_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            })
            .collect())
    }

    /// Delete the link called `name`; `false` when there was none.
    pub async fn del_link(&self, name: &str) -> Result<bool, CniError> {
        let Some(link) = self.link(name).await? else {
            return Ok(false);
        };
        match self.handle.link().del(link.header.index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(nl_err(format!("delete link {name}"))(e)),
        }
    }

    /// The gateways of the default routes (both families) through link `index`.
    pub async fn default_gateways(&self, index: u32) -> Result<Vec<IpAddr>, CniError> {
        let mut out = Vec::new();
        for msg in [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ] {
            let routes: Vec<_> = self
                .handle
                .route()
                .get(msg)
                .execute()
                .try_collect()
                .await
                .map_err(nl_err("list routes"))?;
            for r in routes
                .iter()
                .filter(|r| r.header.destination_prefix_length == 0)
            {
                let oif = r
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index));
                let gw = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
                    RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
                    _ => None,
                });
                if let (true, Some(gw)) = (oif, gw) {
                    out.push(gw);
                }
            }
        }
        Ok(out)
    }
}
