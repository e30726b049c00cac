//! Address leases on disk in host-local's layout: a directory per network, a file per leased
//! address holding `<container id>\r\n<ifname>`, `last_reserved_ip.<range index>` for the
//! round-robin cursor and a `lock` file taken with `flock` around every change, so that
//! concurrent ADDs (threads or processes) never hand out the same address and leases survive
//! restarts.
//!
//! Beside them, [`INDEX`] lists every lease in one file, rewritten in place under the same
//! lock: an allocation reads that one file, not every lease, so its cost does not grow with the
//! pod count. The index is written before a lease file is created and after one is removed, and
//! it records the directory's inode and timestamps as they were after its last change: an ADD
//! writes the index once, before its lease files, then only overwrites that record (a
//! fixed-width field at the start of the file) once the files are made. When they differ (a crash between a lease file and the index, a plugin that does not know the
//! index, such as host-local, changed the directory) or the index is missing or torn, the
//! directory is listed again (lease files the index does not know are read, entries without a
//! file dropped) and the index rewritten. On kernels with multigrain timestamps (6.13 on, ext4,
//! xfs, btrfs, tmpfs) a change right after the index was stamped still gets a distinct ctime.
//! An entry whose lease file is missing (a crash after the index was written) is checked, and
//! fixed, when its holder allocates or releases again, and by [`LeaseStore::list`].

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use node_core::{AttachmentKey, CniError};
use serde::{Deserialize, Serialize};

/// The index file's name in a network's lease directory.
pub const INDEX: &str = "nodekit.index";

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

/// The directory's inode, mtime and ctime (seconds, nanoseconds).
type Stamp = [i64; 5];

/// The index as stored: `generation` is repeated in `end`, written last, so that a torn write
/// does not parse as a whole index. `dir` comes first, at [`STAMP_AT`], with a fixed width
/// ([`stamp_text`]), so that it can be overwritten alone.
#[derive(Debug, Serialize, Deserialize)]
struct IndexFile {
    dir: String,
    version: u32,
    generation: u64,
    leases: Vec<(IpAddr, String, String)>,
    end: u64,
}

/// The index format written now (an index of another version is rebuilt).
const INDEX_VERSION: u32 = 2;

/// Where the directory's stamp starts in the index file: after `{"dir":"`.
const STAMP_AT: u64 = 8;

/// A stamp as stored: five 16-digit hex numbers, whatever their values.
fn stamp_text(s: &Stamp) -> String {
    let parts: Vec<String> = s.iter().map(|v| format!("{:016x}", *v as u64)).collect();
    parts.join(".")
}

/// The index in memory; only valid while the lock is held.
#[derive(Debug, Default)]
struct Index {
    generation: u64,
    leases: BTreeMap<IpAddr, AttachmentKey>,
}

/// The lock held: the index may be read and written.
struct Locked {
    _flock: nix::fcntl::Flock<File>,
}

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

    fn lock(&self) -> Result<Locked, CniError> {
        std::fs::create_dir_all(&self.dir).map_err(self.io(&self.dir))?;
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(self.io(&path))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map(|f| Locked { _flock: f })
            .map_err(|(_, e)| CniError::Io {
                path,
                source: e.into(),
            })
    }

    fn stamp(&self) -> Result<Stamp, CniError> {
        let m = std::fs::metadata(&self.dir).map_err(self.io(&self.dir))?;
        Ok([
            m.ino() as i64,
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ])
    }

    /// The index, listed again from the lease files when it does not match the directory.
    fn load(&self, _: &Locked) -> Result<Index, CniError> {
        let stamp = self.stamp()?;
        let stored = std::fs::read(self.dir.join(INDEX)).ok().and_then(|b| {
            // The first value only: a shorter index written over a longer one leaves the old
            // tail until the file is cut.
            serde_json::Deserializer::from_slice(&b)
                .into_iter::<IndexFile>()
                .next()?
                .ok()
        });
        let Some(f) = stored.filter(|f| f.version == INDEX_VERSION && f.generation == f.end) else {
            return self.reconcile(Index::default());
        };
        let index = Index {
            generation: f.generation,
            leases: f
                .leases
                .into_iter()
                .map(|(ip, container_id, ifname)| {
                    (
                        ip,
                        AttachmentKey {
                            container_id,
                            ifname,
                        },
                    )
                })
                .collect(),
        };
        if f.dir == stamp_text(&stamp) {
            Ok(index)
        } else {
            self.reconcile(index)
        }
    }

    /// Make `index` what the lease files say (reading only the files it does not know: a
    /// lease file is never rewritten) and store it.
    fn reconcile(&self, mut index: Index) -> Result<Index, CniError> {
        let entries = std::fs::read_dir(&self.dir).map_err(self.io(&self.dir))?;
        let mut leases = BTreeMap::new();
        for e in entries.flatten() {
            let Some(ip) = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let key = match index.leases.remove(&ip) {
                Some(k) => k,
                None => holder(&e.path()).unwrap_or_else(unknown),
            };
            leases.insert(ip, key);
        }
        index.leases = leases;
        self.save(&mut index)?;
        Ok(index)
    }

    /// Write the index with the directory's stamp as it is now.
    fn save(&self, index: &mut Index) -> Result<(), CniError> {
        index.generation += 1;
        let f = IndexFile {
            dir: stamp_text(&self.stamp()?),
            version: INDEX_VERSION,
            generation: index.generation,
            leases: index
                .leases
                .iter()
                .map(|(ip, k)| (*ip, k.container_id.clone(), k.ifname.clone()))
                .collect(),
            end: index.generation,
        };
        let path = self.dir.join(INDEX);
        let bytes = serde_json::to_vec(&f).expect("serializable");
        debug_assert_eq!(bytes.get(STAMP_AT as usize - 1), Some(&b'"'));
        write_in_place(&path, &bytes).map_err(self.io(&path))
    }

    /// Record the directory's stamp as it is now in the stored index, which must hold what is
    /// in memory: the directory changed (lease files made) since the index was written.
    fn restamp(&self, _: &Locked) -> Result<(), CniError> {
        use std::os::unix::fs::FileExt;
        let path = self.dir.join(INDEX);
        let text = stamp_text(&self.stamp()?);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.write_all_at(text.as_bytes(), STAMP_AT))
            .map_err(self.io(&path))
    }

    fn lease(&self, ip: IpAddr, key: &AttachmentKey) -> Option<Lease> {
        let (range, r) = self
            .ranges
            .iter()
            .enumerate()
            .find(|(_, r)| r.subnet.contains(&ip))?;
        Some(Lease {
            address: IpNet::new(ip, r.subnet.prefix_len()).expect("prefix of a valid subnet"),
            range,
            key: key.clone(),
        })
    }

    fn leases_of(&self, index: &Index, key: Option<&AttachmentKey>) -> Vec<Lease> {
        let mut out: Vec<Lease> = index
            .leases
            .iter()
            .filter(|(_, k)| key.is_none_or(|key| *k == key))
            .filter_map(|(ip, k)| self.lease(*ip, k))
            .collect();
        out.sort_by_key(|l| (l.range, l.address.addr()));
        out
    }

    /// Every lease on disk, from the lease files themselves (the index is checked against
    /// them and fixed).
    pub fn list(&self) -> Result<Vec<Lease>, CniError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let lock = self.lock()?;
        let stored = self.load(&lock)?;
        let index = self.reconcile(stored)?;
        Ok(self.leases_of(&index, None))
    }

    /// The leases held by `key`, one per range at most.
    pub fn find(&self, key: &AttachmentKey) -> Result<Vec<Lease>, CniError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let lock = self.lock()?;
        let index = self.load(&lock)?;
        Ok(self.leases_of(&index, Some(key)))
    }

    /// Lease one address per range to `key`; the leases it already holds are returned as they
    /// are. Either every range gets an address or none does.
    pub fn allocate(&self, key: &AttachmentKey) -> Result<Vec<Lease>, CniError> {
        let lock = self.lock()?;
        let mut index = self.load(&lock)?;
        let mut got: Vec<Option<Lease>> = vec![None; self.ranges.len()];
        // `dirty`: the index differs from the stored one; `moved`: the directory changed
        // since the stored index was stamped.
        let (mut dirty, mut moved) = (false, false);
        // What the key holds, checked against the lease files (the index is written first).
        for l in self.leases_of(&index, Some(key)) {
            let path = self.dir.join(l.address.addr().to_string());
            match holder(&path) {
                Some(k) if &k == key => {
                    let i = l.range;
                    got[i] = Some(l);
                }
                Some(k) => {
                    index.leases.insert(l.address.addr(), k);
                    dirty = true;
                }
                // A crash between the index and the lease file: the address is the key's.
                None if !path.exists() && self.create(&path, key)? => {
                    let i = l.range;
                    got[i] = Some(l);
                    moved = true;
                }
                None => {
                    index.leases.insert(l.address.addr(), unknown());
                    dirty = true;
                }
            }
        }
        let mut created: Vec<IpAddr> = Vec::new();
        let result = self.allocate_missing(key, &mut index, &mut got, &mut created, &mut dirty);
        if let Err(e) = result {
            for ip in created {
                let _ = std::fs::remove_file(self.dir.join(ip.to_string()));
                index.leases.remove(&ip);
            }
            // The picks not made; what the key held before stays.
            index
                .leases
                .retain(|ip, k| k != key || got.iter().flatten().any(|l| l.address.addr() == *ip));
            let _ = self.save(&mut index);
            return Err(e);
        }
        for ip in &created {
            let i = self.lease(*ip, key).expect("in a range").range;
            let last_path = self.dir.join(format!("last_reserved_ip.{i}"));
            write_in_place(&last_path, ip.to_string().as_bytes()).map_err(self.io(&last_path))?;
            moved = true;
        }
        if dirty {
            self.save(&mut index)?;
        } else if moved {
            // The index was written before the new lease files: only its stamp is behind. Not
            // an error when that fails: a stale stamp costs one listing of the directory.
            let _ = self.restamp(&lock);
        }
        Ok(got.into_iter().map(|l| l.expect("every range")).collect())
    }

    /// Lease an address for every range `got` lacks: entries in the index first, then the
    /// lease files (`created`); a file the index did not know is its holder's, the range
    /// tries again. `dirty` tells whether `index` differs from the stored one.
    fn allocate_missing(
        &self,
        key: &AttachmentKey,
        index: &mut Index,
        got: &mut [Option<Lease>],
        created: &mut Vec<IpAddr>,
        dirty: &mut bool,
    ) -> Result<(), CniError> {
        loop {
            let mut picks = Vec::new();
            for (i, r) in self.ranges.iter().enumerate() {
                if got[i].is_some() {
                    continue;
                }
                let ip = self
                    .pick(i, r, index)
                    .ok_or_else(|| CniError::IpamExhausted {
                        range: format!(
                            "{} of network {} (for {}/{})",
                            r.subnet, self.network, key.container_id, key.ifname
                        ),
                    })?;
                index.leases.insert(ip, key.clone());
                picks.push((i, ip));
            }
            if picks.is_empty() {
                return Ok(());
            }
            self.save(index)?;
            *dirty = false;
            for (i, ip) in picks {
                let path = self.dir.join(ip.to_string());
                if self.create(&path, key)? {
                    created.push(ip);
                    got[i] = self.lease(ip, key);
                } else {
                    index
                        .leases
                        .insert(ip, holder(&path).unwrap_or_else(unknown));
                    *dirty = true;
                }
            }
        }
    }

    /// Create the lease file `path` for `key`; `false` when it exists.
    fn create(&self, path: &Path, key: &AttachmentKey) -> Result<bool, CniError> {
        match OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(mut f) => {
                let content = format!("{}{LINE_BREAK}{}", key.container_id.trim(), key.ifname);
                if let Err(e) = f.write_all(content.as_bytes()) {
                    let _ = std::fs::remove_file(path);
                    return Err(self.io(path)(e));
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(self.io(path)(e)),
        }
    }

    /// The next free address of range `i` after its cursor, round robin.
    fn pick(&self, i: usize, r: &Range, index: &Index) -> Option<IpAddr> {
        let last_path = self.dir.join(format!("last_reserved_ip.{i}"));
        let last: Option<IpAddr> = std::fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let start = last.filter(|ip| r.subnet.contains(ip));
        let first_try = next_host(r, start);
        let mut candidate = first_try;
        while let Some(ip) = candidate {
            if !index.leases.contains_key(&ip) {
                return Some(ip);
            }
            candidate = next_host(r, Some(ip)).filter(|n| Some(*n) != first_try);
        }
        None
    }

    /// Release every lease of `key`; releasing nothing is not an error.
    pub fn release(&self, key: &AttachmentKey) -> Result<usize, CniError> {
        if !self.dir.exists() {
            return Ok(0);
        }
        let lock = self.lock()?;
        let mut index = self.load(&lock)?;
        let ips: Vec<IpAddr> = index
            .leases
            .iter()
            .filter(|(_, k)| *k == key)
            .map(|(ip, _)| *ip)
            .collect();
        if ips.is_empty() {
            return Ok(0);
        }
        let mut n = 0;
        for ip in &ips {
            let path = self.dir.join(ip.to_string());
            match std::fs::remove_file(&path) {
                Ok(()) => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CniError::Io { path, source: e }),
            }
            index.leases.remove(ip);
        }
        self.save(&mut index)?;
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

/// The holder of a lease file that cannot be read: nobody's, the address stays taken.
fn unknown() -> AttachmentKey {
    AttachmentKey {
        container_id: String::new(),
        ifname: String::new(),
    }
}

/// The holder a lease file names; `None` when it cannot be read.
fn holder(path: &Path) -> Option<AttachmentKey> {
    let content = std::fs::read_to_string(path).ok()?;
    let mut lines = content.split(LINE_BREAK);
    let container_id = lines.next().unwrap_or_default().trim().to_string();
    let ifname = lines.next().unwrap_or_default().trim().to_string();
    Some(AttachmentKey {
        container_id,
        ifname,
    })
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

    /// The container ids holding leases, in the listing's order.
    fn holders(s: &LeaseStore) -> Vec<String> {
        s.list()
            .unwrap()
            .iter()
            .map(|l| l.key.container_id.clone())
            .collect()
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
    fn a_lease_file_the_index_does_not_know_is_picked_up() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), &[("10.1.0.0/24", "10.1.0.1")]);
        assert_eq!(
            s.allocate(&key("a")).unwrap()[0].address.addr().to_string(),
            "10.1.0.2"
        );
        // A crash between a lease file and the index, or host-local, left 10.1.0.3.
        std::fs::write(d.path().join("net/10.1.0.3"), "b\r\neth0").unwrap();
        let c = s.allocate(&key("c")).unwrap();
        assert_eq!(c[0].address.addr().to_string(), "10.1.0.4");
        assert_eq!(
            s.find(&key("b")).unwrap()[0].address.addr().to_string(),
            "10.1.0.3"
        );
        assert_eq!(s.release(&key("b")).unwrap(), 1);
        assert!(!d.path().join("net/10.1.0.3").exists());
        let all = holders(&s);
        assert_eq!(all, ["a", "c"]);
    }

    #[test]
    fn an_index_entry_without_its_lease_file_is_fixed() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), &[("10.1.0.0/24", "10.1.0.1")]);
        s.allocate(&key("a")).unwrap();
        s.allocate(&key("b")).unwrap();
        // A crash after the index was written, before the lease files: the index (stamped with
        // the directory as it is now) names them, the files are not there.
        for ip in ["10.1.0.2", "10.1.0.3"] {
            std::fs::remove_file(d.path().join("net").join(ip)).unwrap();
        }
        {
            let lock = s.lock().unwrap();
            let mut index = s.load(&lock).unwrap();
            index.leases.insert("10.1.0.2".parse().unwrap(), key("a"));
            index.leases.insert("10.1.0.3".parse().unwrap(), key("b"));
            s.save(&mut index).unwrap();
        }
        // The holder's next ADD gets its address back, with its lease file.
        let a = s.allocate(&key("a")).unwrap();
        assert_eq!(a[0].address.addr().to_string(), "10.1.0.2");
        assert_eq!(
            std::fs::read_to_string(d.path().join("net/10.1.0.2")).unwrap(),
            "a\r\neth0"
        );
        // The listing goes by the files: b holds nothing, and its address is free again.
        let all = holders(&s);
        assert_eq!(all, ["a"]);
        assert!(s.find(&key("b")).unwrap().is_empty());
    }

    #[test]
    fn a_missing_or_torn_index_is_rebuilt_from_the_lease_files() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), &[("10.1.0.0/24", "10.1.0.1")]);
        s.allocate(&key("a")).unwrap();
        s.allocate(&key("b")).unwrap();
        let index = d.path().join("net").join(INDEX);
        let whole = std::fs::read(&index).unwrap();
        // Torn: the first half of the index over an older, longer one.
        std::fs::write(&index, [&whole[..whole.len() / 2], &whole[..]].concat()).unwrap();
        assert_eq!(
            s.find(&key("b")).unwrap()[0].address.addr().to_string(),
            "10.1.0.3"
        );
        std::fs::remove_file(&index).unwrap();
        assert_eq!(
            s.find(&key("a")).unwrap()[0].address.addr().to_string(),
            "10.1.0.2"
        );
        assert_eq!(
            s.allocate(&key("c")).unwrap()[0].address.addr().to_string(),
            "10.1.0.4"
        );
        // Written again.
        assert!(index.exists());
    }

    /// The stored index's generation (how many times it was written).
    fn generation(dir: &Path) -> u64 {
        let bytes = std::fs::read(dir.join("net").join(INDEX)).unwrap();
        serde_json::from_slice::<IndexFile>(&bytes)
            .unwrap()
            .generation
    }

    #[test]
    fn an_add_writes_the_index_once_and_leaves_it_matching_the_directory() {
        let d = tempfile::tempdir().unwrap();
        let s = store(
            d.path(),
            &[("10.1.0.0/24", "10.1.0.1"), ("fd00::/120", "fd00::1")],
        );
        s.allocate(&key("a")).unwrap();
        // the index file's own creation changed the directory once: settled here
        s.find(&key("a")).unwrap();
        let before = generation(d.path());
        let b = s.allocate(&key("b")).unwrap();
        assert_eq!(
            generation(d.path()),
            before + 1,
            "the ADD wrote the index once"
        );
        // The stamp was brought up to date: no listing (which would write the index again).
        assert_eq!(s.find(&key("b")).unwrap(), b);
        assert_eq!(generation(d.path()), before + 1);
        // The same holder again: nothing written.
        assert_eq!(s.allocate(&key("b")).unwrap(), b);
        assert_eq!(generation(d.path()), before + 1);
        s.release(&key("b")).unwrap();
        assert_eq!(generation(d.path()), before + 2);
        assert!(s.find(&key("b")).unwrap().is_empty());
        assert_eq!(generation(d.path()), before + 2);
    }

    #[test]
    fn a_crash_between_the_lease_file_and_the_stamp_is_reconciled() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), &[("10.1.0.0/24", "10.1.0.1")]);
        s.allocate(&key("a")).unwrap();
        // An ADD of b up to its crash: the index names 10.1.0.3 (written first, stamped with
        // the directory before the lease file), then the lease file; the stamp is not updated.
        {
            let lock = s.lock().unwrap();
            let mut index = s.load(&lock).unwrap();
            index.leases.insert("10.1.0.3".parse().unwrap(), key("b"));
            s.save(&mut index).unwrap();
        }
        std::fs::write(d.path().join("net/10.1.0.3"), "b\r\neth0").unwrap();
        let before = generation(d.path());
        // The stale stamp makes the next call list the directory again and store the index.
        assert_eq!(
            s.find(&key("b")).unwrap()[0].address.addr().to_string(),
            "10.1.0.3"
        );
        assert_eq!(generation(d.path()), before + 1);
        assert_eq!(
            s.allocate(&key("c")).unwrap()[0].address.addr().to_string(),
            "10.1.0.4"
        );
        // A torn stamp (garbage where the stamp is) is a stale one.
        {
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new()
                .write(true)
                .open(d.path().join("net").join(INDEX))
                .unwrap();
            f.write_all_at(b"zzzz", STAMP_AT + 3).unwrap();
        }
        let before = generation(d.path());
        assert_eq!(s.find(&key("c")).unwrap().len(), 1);
        assert_eq!(generation(d.path()), before + 1);
        assert_eq!(holders(&s), ["a", "b", "c"]);
        assert_eq!(s.release(&key("b")).unwrap(), 1);
        assert_eq!(holders(&s), ["a", "c"]);
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
