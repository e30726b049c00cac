//! Address leases on disk in host-local's layout: a directory per network, a file per leased
//! address holding `<container id>\r\n<ifname>`, `last_reserved_ip.<range index>` for the
//! round-robin cursor and a `lock` file taken with `flock` around every change, so that
//! concurrent ADDs (threads or processes) never hand out the same address and leases survive
//! restarts.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use node_core::{AttachmentKey, CniError};

/// One range to allocate from: a subnet and its gateway (never handed out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet.
    pub subnet: IpNet,
    /// The gateway address inside it.
    pub gateway: IpAddr,
}

/// One lease: an address (with the range's prefix) and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The address with its prefix length.
    pub address: IpNet,
    /// The range index.
    pub range: usize,
    /// The holder.
    pub key: AttachmentKey,
}

/// The leases of one network.
#[derive(Debug, Clone)]
pub struct LeaseStore {
    dir: PathBuf,
    network: String,
    ranges: Vec<Range>,
}

const LINE_BREAK: &str = "\r\n";

impl LeaseStore {
    /// The store of `network` under `lease_dir` (`<lease_dir>/<network>/`).
    pub fn new(lease_dir: &Path, network: &str, ranges: Vec<Range>) -> Self {
        Self {
            dir: lease_dir.join(network),
            network: network.to_string(),
            ranges,
        }
    }

    /// The network's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path) -> impl Fn(std::io::Error) -> CniError + '_ {
        let path = path.to_path_buf();
        move |source| CniError::Io {
            path: path.clone(),
            source,
        }
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<File>, CniError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(self.io(&path))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            CniError::Io {
                path,
                source: e.into(),
            }
        })
    }

    /// Every lease on disk.
    pub fn list(&self) -> Result<Vec<Lease>, CniError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(CniError::Io {
                    path: self.dir.clone(),
                    source: e,
                });
            }
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(ip) = name.parse::<IpAddr>() else {
                continue;
            };
            let Some((range, r)) = self
                .ranges
                .iter()
                .enumerate()
                .find(|(_, r)| r.subnet.contains(&ip))
            else {
                continue;
            };
            let Ok(content) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let mut lines = content.split(LINE_BREAK);
            let container_id = lines.next().unwrap_or_default().trim().to_string();
            let ifname = lines.next().unwrap_or_default().trim().to_string();
            let address = IpNet::new(ip, r.subnet.prefix_len()).expect("prefix of a valid subnet");
            out.push(Lease {
                address,
                range,
                key: AttachmentKey {
                    container_id,
                    ifname,
                },
            });
        }
        out.sort_by_key(|l| (l.range, l.address.addr()));
        Ok(out)
    }

    /// The leases held by `key`, one per range at most.
    pub fn find(&self, key: &AttachmentKey) -> Result<Vec<Lease>, CniError> {
        Ok(self.list()?.into_iter().filter(|l| &l.key == key).collect())
    }

    /// Lease one address per range to `key`; the leases it already holds are returned as they
    /// are. Either every range gets an address or none does.
    pub fn allocate(&self, key: &AttachmentKey) -> Result<Vec<Lease>, CniError> {
        let _lock = self.lock()?;
        let held = self.find(key)?;
        let mut got: Vec<Lease> = Vec::new();
        let mut created: Vec<PathBuf> = Vec::new();
        for (i, r) in self.ranges.iter().enumerate() {
            if let Some(l) = held.iter().find(|l| l.range == i) {
                got.push(l.clone());
                continue;
            }
            match self.allocate_in(i, r, key) {
                Ok(l) => {
                    created.push(self.dir.join(l.address.addr().to_string()));
                    got.push(l);
                }
                Err(e) => {
                    for p in created {
                        let _ = std::fs::remove_file(p);
                    }
                    return Err(e);
                }
            }
        }
        Ok(got)
    }

    fn allocate_in(&self, i: usize, r: &Range, key: &AttachmentKey) -> Result<Lease, CniError> {
        let last_path = self.dir.join(format!("last_reserved_ip.{i}"));
        let last: Option<IpAddr> = std::fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let start = last.filter(|ip| r.subnet.contains(ip));
        let first_try = next_host(r, start);
        let mut candidate = first_try;
        while let Some(ip) = candidate {
            let path = self.dir.join(ip.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let content = format!("{}{LINE_BREAK}{}", key.container_id.trim(), key.ifname);
                    f.write_all(content.as_bytes()).map_err(self.io(&path))?;
                    write_in_place(&last_path, ip.to_string().as_bytes())
                        .map_err(self.io(&last_path))?;
                    let address =
                        IpNet::new(ip, r.subnet.prefix_len()).expect("prefix of a valid subnet");
                    return Ok(Lease {
                        address,
                        range: i,
                        key: key.clone(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CniError::Io { path, source: e }),
            }
            candidate = next_host(r, Some(ip)).filter(|n| Some(*n) != first_try);
        }
        Err(CniError::IpamExhausted {
            range: format!(
                "{} of network {} (for {}/{})",
                r.subnet, self.network, key.container_id, key.ifname
            ),
        })
    }

    /// Release every lease of `key`; releasing nothing is not an error.
    pub fn release(&self, key: &AttachmentKey) -> Result<usize, CniError> {
        if !self.dir.exists() {
            return Ok(0);
        }
        let _lock = self.lock()?;
        let mut n = 0;
        for l in self.find(key)? {
            let path = self.dir.join(l.address.addr().to_string());
            match std::fs::remove_file(&path) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CniError::Io { path, source: e }),
            }
        }
        Ok(n)
    }

    /// The holders of leases that are not in `keep`.
    pub fn stale(&self, keep: &[AttachmentKey]) -> Result<Vec<AttachmentKey>, CniError> {
        let keep: BTreeSet<&AttachmentKey> = keep.iter().collect();
        let stale: BTreeSet<AttachmentKey> = self
            .list()?
            .into_iter()
            .map(|l| l.key)
            .filter(|k| !keep.contains(k))
            .collect();
        Ok(stale.into_iter().collect())
    }
}

/// Overwrite a small file's content without truncating it to zero first: on ext4 (the default
/// `auto_da_alloc`) a truncate to zero followed by a write flushes the file's blocks at close,
/// and with `discard` also waits for the freed blocks' discard, milliseconds per ADD.
fn write_in_place(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    f.write_all_at(content, 0)?;
    f.set_len(content.len() as u64)
}

/// The host after `after` in the range (wrapping), skipping the network and broadcast addresses
/// (IPv4), the subnet-router anycast address (IPv6) and the gateway.
fn next_host(r: &Range, after: Option<IpAddr>) -> Option<IpAddr> {
    let first = first_in_range(r)?;
    let last = last_host(r)?;
    let mut ip = match after {
        None => first,
        Some(a) if a >= last || a < first => first,
        Some(a) => add_one(a),
    };
    // At most two skips: the gateway may sit right after `after`, or at the wrap.
    for _ in 0..3 {
        if ip != r.gateway {
            return Some(ip);
        }
        ip = if ip >= last { first } else { add_one(ip) };
    }
    None
}

/// The first address after the network address of `subnet`.
pub fn first_host(subnet: IpNet) -> Option<IpAddr> {
    let first = add_one(subnet.network());
    subnet.contains(&first).then_some(first)
}

fn first_in_range(r: &Range) -> Option<IpAddr> {
    let first = add_one(r.subnet.network());
    (r.subnet.contains(&first) && Some(first) <= last_host(r)).then_some(first)
}

fn last_host(r: &Range) -> Option<IpAddr> {
    let last = match r.subnet {
        IpNet::V4(n) if n.prefix_len() < 31 => {
            IpAddr::V4(Ipv4Addr::from(u32::from(n.broadcast()) - 1))
        }
        IpNet::V4(n) => IpAddr::V4(n.broadcast()),
        IpNet::V6(n) => IpAddr::V6(n.broadcast()),
    };
    r.subnet.contains(&last).then_some(last)
}

fn add_one(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a).wrapping_add(1))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a).wrapping_add(1))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> AttachmentKey {
        AttachmentKey {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn store(dir: &Path, subnets: &[(&str, &str)]) -> LeaseStore {
        let ranges = subnets
            .iter()
            .map(|(s, g)| Range {
                subnet: s.parse().unwrap(),
                gateway: g.parse().unwrap(),
            })
            .collect();
        LeaseStore::new(dir, "net", ranges)
    }

    #[test]
    fn leases_use_host_locals_layout_and_round_robin() {
        let d = tempfile::tempdir().unwrap();
        let s = store(
            d.path(),
            &[("10.1.0.0/29", "10.1.0.1"), ("fd00::/120", "fd00::1")],
        );
        let a = s.allocate(&key("a")).unwrap();
        assert_eq!(a[0].address.to_string(), "10.1.0.2/29");
        assert_eq!(a[1].address.to_string(), "fd00::2/120");
        assert_eq!(
            std::fs::read_to_string(d.path().join("net/10.1.0.2")).unwrap(),
            "a\r\neth0"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("net/last_reserved_ip.0")).unwrap(),
            "10.1.0.2"
        );
        // Idempotent for the same holder.
        assert_eq!(s.allocate(&key("a")).unwrap(), a);
        let b = s.allocate(&key("b")).unwrap();
        assert_eq!(b[0].address.addr().to_string(), "10.1.0.3");
        s.release(&key("a")).unwrap();
        // Round robin: the freed .2 is not reused before the range wraps.
        let c = s.allocate(&key("c")).unwrap();
        assert_eq!(c[0].address.addr().to_string(), "10.1.0.4");
        // A new store over the same directory (a restart) knows the leases.
        let again = store(
            d.path(),
            &[("10.1.0.0/29", "10.1.0.1"), ("fd00::/120", "fd00::1")],
        );
        assert_eq!(again.find(&key("b")).unwrap(), b);
        assert_eq!(again.stale(&[key("b")]).unwrap(), vec![key("c")]);
    }

    #[test]
    fn the_cursor_is_rewritten_in_place_longer_or_shorter() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("last_reserved_ip.0");
        for ip in ["10.1.0.9", "10.1.0.10", "fd00::1234:5678", "10.1.0.2"] {
            write_in_place(&path, ip.as_bytes()).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), ip);
        }
    }

    #[test]
    fn exhausted_range_is_an_error_and_leaks_no_partial_lease() {
        let d = tempfile::tempdir().unwrap();
        // A /30 has two hosts; the gateway takes one.
        let s = store(
            d.path(),
            &[("fd00::/64", "fd00::1"), ("10.1.0.0/30", "10.1.0.1")],
        );
        s.allocate(&key("a")).unwrap();
        let e = s.allocate(&key("b")).unwrap_err();
        assert!(matches!(e, CniError::IpamExhausted { .. }));
        assert!(
            e.to_string()
                .contains("10.1.0.0/30 of network net (for b/eth0)"),
            "{e}"
        );
        assert!(
            s.find(&key("b")).unwrap().is_empty(),
            "the v6 lease of the failed ADD leaked"
        );
        s.release(&key("a")).unwrap();
        assert_eq!(
            s.allocate(&key("b")).unwrap()[1].address.addr().to_string(),
            "10.1.0.2"
        );
    }

    #[test]
    fn concurrent_allocations_are_distinct() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), &[("10.1.0.0/24", "10.1.0.1")]);
        let ips: Vec<IpAddr> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..40)
                .map(|i| {
                    let s = s.clone();
                    sc.spawn(move || {
                        s.allocate(&key(&format!("c{i}"))).unwrap()[0]
                            .address
                            .addr()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let set: BTreeSet<_> = ips.iter().collect();
        assert_eq!(set.len(), 40);
    }
}
