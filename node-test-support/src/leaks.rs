//! A leak checker for fault and load tests: [`Inventory::take`] records what a node leaves on the
//! machine (network namespaces, our veths and bridges, IP leases, mounts, cgroups, our processes,
//! our nftables tables); [`Inventory::diff`] against an earlier inventory lists what is new.
//!
//! Everything is read-only: the checker never changes the host. Links and nftables tables are
//! read in the host namespace and in the named namespaces of [`LeakScope::netns`].
//!
//! ```no_run
//! use node_test_support::leaks::{Inventory, LeakScope};
//!
//! let scope = LeakScope::default().ipam_dir("/tmp/t/cni/networks").mount_root("/tmp/t");
//! let before = Inventory::take(&scope);
//! // ... run the node, kill it, restart it, shut it down ...
//! let leaked = Inventory::take(&scope).diff(&before);
//! assert!(leaked.is_empty(), "{leaked}");
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The kinds of things a node can leak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LeakKind {
    /// A named network namespace in `/run/netns`.
    Netns,
    /// A network interface whose name starts with one of our prefixes.
    Link,
    /// An address lease file in an IPAM directory.
    IpLease,
    /// A mount (overlay, nsfs, tmpfs, ...) under one of the watched roots.
    Mount,
    /// A cgroup directory under one of the watched parents (any hierarchy, v1 or unified).
    Cgroup,
    /// A process marked as ours by its command line or its cgroup.
    Process,
    /// An nftables table whose name starts with one of our prefixes.
    NftTable,
}

impl fmt::Display for LeakKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LeakKind::Netns => "network namespace",
            LeakKind::Link => "link",
            LeakKind::IpLease => "IP lease",
            LeakKind::Mount => "mount",
            LeakKind::Cgroup => "cgroup",
            LeakKind::Process => "process",
            LeakKind::NftTable => "nftables table",
        })
    }
}

/// One thing found on the machine: its kind, an identity (compared between inventories) and a
/// human-readable detail (not compared).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    /// What it is.
    pub kind: LeakKind,
    /// Its identity: a path, `netns/name`, `pid@start_ticks`, ...
    pub id: String,
    /// What a reader needs to recognise it (a command line, a file system type, a lease holder).
    pub detail: String,
}

/// Where to look, and what marks something as ours.
#[derive(Debug, Clone)]
pub struct LeakScope {
    /// Only namespaces in `/run/netns` whose name contains one of these count (empty: all).
    pub netns_filter: Vec<String>,
    /// Named network namespaces whose links and nftables tables are inventoried too (the host's
    /// always are).
    pub netns: Vec<String>,
    /// Link name prefixes of ours (`nkv` pod veths, `nk0` the bridge, ...).
    pub link_prefixes: Vec<String>,
    /// IPAM directories (host-local layout: `<dir>/<network>/<ip>` files).
    pub ipam_dirs: Vec<PathBuf>,
    /// Every mount whose mount point lies under one of these counts.
    pub mount_roots: Vec<PathBuf>,
    /// Also read the mount tables of these processes (a child in another mount namespace).
    pub mount_pids: Vec<u32>,
    /// Cgroup parents, relative to each hierarchy's root (`nodekit`): every cgroup below counts
    /// (not the parent itself).
    pub cgroup_parents: Vec<String>,
    /// A process whose command line contains one of these is ours (`nodekit-init`).
    pub process_markers: Vec<String>,
    /// A process whose environment holds one of these `KEY=VALUE` entries is ours (set one on
    /// the agent under test: the runtime's helper processes inherit it).
    pub env_markers: Vec<String>,
    /// nftables table name prefixes of ours.
    pub nft_prefixes: Vec<String>,
}

impl Default for LeakScope {
    /// Our names: links `nkv`/`nk0`/`nkcri`, the `nodekit` cgroup parent, `nodekit-init`
    /// processes, `nodekit*` tables; no IPAM directory nor mount root (they are per test).
    fn default() -> Self {
        Self {
            netns_filter: vec![],
            netns: vec![],
            link_prefixes: vec!["nkv".into(), "nk0".into(), "nkcri".into()],
            ipam_dirs: vec![],
            mount_roots: vec![],
            mount_pids: vec![],
            cgroup_parents: vec!["nodekit".into()],
            process_markers: vec!["nodekit-init".into()],
            env_markers: vec![],
            nft_prefixes: vec!["nodekit".into()],
        }
    }
}

impl LeakScope {
    /// Our link and nftables prefixes only: no cgroup parent, no process marker (add precise ones
    /// with the builders when other nodekit processes may run beside the test).
    pub fn none() -> Self {
        Self {
            cgroup_parents: vec![],
            process_markers: vec![],
            ..Self::default()
        }
    }
    /// Also inventory this IPAM directory.
    #[must_use]
    pub fn ipam_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ipam_dirs.push(dir.into());
        self
    }
    /// Also inventory mounts under this root.
    #[must_use]
    pub fn mount_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.mount_roots.push(dir.into());
        self
    }
    /// Also inventory links and nftables tables inside this named network namespace.
    #[must_use]
    pub fn in_netns(mut self, name: impl Into<String>) -> Self {
        self.netns.push(name.into());
        self
    }
    /// Only count `/run/netns` entries whose name contains `part`.
    #[must_use]
    pub fn netns_named(mut self, part: impl Into<String>) -> Self {
        self.netns_filter.push(part.into());
        self
    }
    /// Also inventory cgroups under this parent.
    #[must_use]
    pub fn cgroup_parent(mut self, parent: impl Into<String>) -> Self {
        self.cgroup_parents.push(parent.into());
        self
    }
    /// Also count processes whose command line contains `marker`.
    #[must_use]
    pub fn process_marker(mut self, marker: impl Into<String>) -> Self {
        self.process_markers.push(marker.into());
        self
    }
    /// Also count processes whose environment holds `key_value` (`KEY=VALUE`).
    #[must_use]
    pub fn env_marker(mut self, key_value: impl Into<String>) -> Self {
        self.env_markers.push(key_value.into());
        self
    }
    /// Also count links whose name starts with `prefix`.
    #[must_use]
    pub fn link_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.link_prefixes.push(prefix.into());
        self
    }
}

/// What was on the machine at one moment, within a [`LeakScope`].
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Everything found.
    pub resources: BTreeSet<Resource>,
    /// What could not be read (a command that failed): a diff mentions it.
    pub errors: Vec<String>,
}

/// What an inventory holds that an earlier one did not.
#[derive(Debug, Clone, Default)]
pub struct Leaks {
    /// The new resources.
    pub leaked: Vec<Resource>,
    /// Read errors of the later inventory.
    pub errors: Vec<String>,
}

impl Leaks {
    /// Nothing leaked and nothing failed to read.
    pub fn is_empty(&self) -> bool {
        self.leaked.is_empty() && self.errors.is_empty()
    }
    /// The leaked resources of one kind.
    pub fn of(&self, kind: LeakKind) -> Vec<&Resource> {
        self.leaked.iter().filter(|r| r.kind == kind).collect()
    }
}

impl fmt::Display for Leaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing leaked");
        }
        writeln!(f, "{} leaked:", self.leaked.len())?;
        for r in &self.leaked {
            writeln!(f, "  {}: {} ({})", r.kind, r.id, r.detail)?;
        }
        for e in &self.errors {
            writeln!(f, "  could not inventory: {e}")?;
        }
        Ok(())
    }
}

impl Inventory {
    /// Record everything in `scope` now.
    pub fn take(scope: &LeakScope) -> Self {
        let mut inv = Inventory::default();
        inv.netns(scope);
        inv.links(scope);
        inv.leases(scope);
        inv.mounts(scope);
        inv.cgroups(scope);
        inv.processes(scope);
        inv.nft_tables(scope);
        inv
    }

    /// What this inventory holds that `before` did not (identities compared, details ignored).
    pub fn diff(&self, before: &Inventory) -> Leaks {
        let old: BTreeSet<(LeakKind, &str)> = before
            .resources
            .iter()
            .map(|r| (r.kind, r.id.as_str()))
            .collect();
        Leaks {
            leaked: self
                .resources
                .iter()
                .filter(|r| !old.contains(&(r.kind, r.id.as_str())))
                .cloned()
                .collect(),
            errors: self.errors.clone(),
        }
    }

    /// The resources of one kind.
    pub fn of(&self, kind: LeakKind) -> Vec<&Resource> {
        self.resources.iter().filter(|r| r.kind == kind).collect()
    }

    fn add(&mut self, kind: LeakKind, id: impl Into<String>, detail: impl Into<String>) {
        self.resources.insert(Resource {
            kind,
            id: id.into(),
            detail: detail.into(),
        });
    }

    fn netns(&mut self, scope: &LeakScope) {
        for e in std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if scope.netns_filter.is_empty() || scope.netns_filter.iter().any(|p| name.contains(p))
            {
                self.add(LeakKind::Netns, format!("/run/netns/{name}"), "ip netns");
            }
        }
    }

    /// `ip -br link` in the host and in each scoped namespace.
    fn links(&mut self, scope: &LeakScope) {
        let places = std::iter::once(None).chain(scope.netns.iter().map(Some));
        for ns in places {
            let mut cmd = Command::new("ip");
            if let Some(ns) = ns {
                if !Path::new("/run/netns").join(ns).exists() {
                    continue; // the namespace itself is gone: so are its links
                }
                cmd.args(["-n", ns]);
            }
            let out = match output(cmd.args(["-o", "link", "show"])) {
                Ok(o) => o,
                Err(e) => {
                    self.errors.push(e);
                    continue;
                }
            };
            for line in out.lines() {
                // "12: nkv0123@if3: <BROADCAST,...> ... link/ether ..."
                let Some(name) = line.split(": ").nth(1) else {
                    continue;
                };
                let name = name.split('@').next().unwrap_or(name);
                if scope.link_prefixes.iter().any(|p| name.starts_with(p)) {
                    let place = ns.map(String::as_str).unwrap_or("host");
                    let kind = if line.contains("link/ether") && line.contains("master ") {
                        "enslaved"
                    } else {
                        "link"
                    };
                    self.add(LeakKind::Link, format!("{place}/{name}"), kind);
                }
            }
        }
    }

    fn leases(&mut self, scope: &LeakScope) {
        for dir in &scope.ipam_dirs {
            for net in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if !net.path().is_dir() {
                    continue;
                }
                for f in std::fs::read_dir(net.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let name = f.file_name().to_string_lossy().into_owned();
                    if name.parse::<std::net::IpAddr>().is_ok() {
                        let holder = std::fs::read_to_string(f.path()).unwrap_or_default();
                        let holder = holder.lines().next().unwrap_or("").to_string();
                        self.add(
                            LeakKind::IpLease,
                            f.path().display().to_string(),
                            format!("held by {holder}"),
                        );
                    }
                }
            }
        }
    }

    fn mounts(&mut self, scope: &LeakScope) {
        if scope.mount_roots.is_empty() {
            return;
        }
        let tables = std::iter::once("/proc/self/mountinfo".to_string()).chain(
            scope
                .mount_pids
                .iter()
                .map(|p| format!("/proc/{p}/mountinfo")),
        );
        for table in tables {
            let Ok(text) = std::fs::read_to_string(&table) else {
                continue; // a process that is gone took its mount namespace along
            };
            for (point, fstype) in parse_mountinfo(&text) {
                if scope
                    .mount_roots
                    .iter()
                    .any(|r| Path::new(&point).starts_with(r))
                {
                    self.add(LeakKind::Mount, point, fstype);
                }
            }
        }
    }

    fn cgroups(&mut self, scope: &LeakScope) {
        for hier in cgroup_hierarchies() {
            for parent in &scope.cgroup_parents {
                // the cgroups below the parent (the parent itself is configuration, not a leak)
                let base = hier.join(parent.trim_matches('/'));
                let mut stack = vec![base.clone()];
                while let Some(dir) = stack.pop() {
                    let Ok(rd) = std::fs::read_dir(&dir) else {
                        continue;
                    };
                    if dir != base {
                        self.add(LeakKind::Cgroup, dir.display().to_string(), "cgroup");
                    }
                    for e in rd.flatten() {
                        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                            stack.push(e.path());
                        }
                    }
                }
            }
        }
    }

    fn processes(&mut self, scope: &LeakScope) {
        let me = std::process::id();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            let cmdline = cmdline.trim();
            let marked = scope.process_markers.iter().any(|m| cmdline.contains(m));
            let cgroups =
                std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            let in_ours = cgroups.lines().any(|l| {
                let path = l.splitn(3, ':').nth(2).unwrap_or("");
                scope.cgroup_parents.iter().any(|p| {
                    let p = format!("/{}", p.trim_matches('/'));
                    path == p || path.starts_with(&format!("{p}/"))
                })
            });
            let tagged = !scope.env_markers.is_empty()
                && std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| {
                        env.split(|b| *b == 0)
                            .any(|kv| scope.env_markers.iter().any(|m| kv == m.as_bytes()))
                    })
                    .unwrap_or(false);
            if !(marked || in_ours || tagged) {
                continue;
            }
            let ticks = start_ticks(pid);
            if ticks == 0 {
                continue; // gone meanwhile, or a zombie without stat
            }
            let shown = if cmdline.is_empty() {
                "(no command line: a zombie or kernel thread)".to_string()
            } else {
                cmdline.chars().take(160).collect()
            };
            self.add(LeakKind::Process, format!("{pid}@{ticks}"), shown);
        }
    }

    fn nft_tables(&mut self, scope: &LeakScope) {
        let places = std::iter::once(None).chain(scope.netns.iter().map(Some));
        for ns in places {
            let mut cmd = match ns {
                Some(ns) => {
                    if !Path::new("/run/netns").join(ns).exists() {
                        continue;
                    }
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "nft", "list", "tables"]);
                    c
                }
                None => {
                    let mut c = Command::new("nft");
                    c.args(["list", "tables"]);
                    c
                }
            };
            let out = match output(&mut cmd) {
                Ok(o) => o,
                Err(e) => {
                    self.errors.push(e);
                    continue;
                }
            };
            let place = ns.map(String::as_str).unwrap_or("host");
            for line in out.lines() {
                // "table inet nodekit"
                let mut w = line.split_whitespace();
                if w.next() != Some("table") {
                    continue;
                }
                let (Some(family), Some(name)) = (w.next(), w.next()) else {
                    continue;
                };
                if scope.nft_prefixes.iter().any(|p| name.starts_with(p)) {
                    self.add(
                        LeakKind::NftTable,
                        format!("{place}/{family} {name}"),
                        "nft",
                    );
                }
            }
        }
    }
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// (mount point, file system type) of each line of a `mountinfo` table, octal escapes decoded.
pub fn parse_mountinfo(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split(' ').nth(4)?;
            let fstype = post.split(' ').next()?;
            Some((unescape_octal(point), fstype.to_string()))
        })
        .collect()
}

fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points of every cgroup hierarchy (v1 controllers and the unified one).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = parse_mountinfo(&text)
        .into_iter()
        .filter(|(_, t)| t == "cgroup" || t == "cgroup2")
        .map(|(p, _)| PathBuf::from(p))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The start time of `pid` in clock ticks since boot (0 when gone or unreadable).
fn start_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let (_, rest) = s.rsplit_once(')')?;
            rest.split_whitespace().nth(19)?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_give_point_and_type() {
        let text = "36 35 98:0 /mnt1 /mnt\\040with\\040space rw,noatime master:1 - overlay overlay rw\n\
                    37 35 0:4 net:[4026532] /run/netns/x rw shared:2 - nsfs nsfs rw\n";
        assert_eq!(
            parse_mountinfo(text),
            vec![
                ("/mnt with space".to_string(), "overlay".to_string()),
                ("/run/netns/x".to_string(), "nsfs".to_string())
            ]
        );
    }

    #[test]
    fn diff_lists_only_new_identities() {
        let mut a = Inventory::default();
        a.add(LeakKind::Link, "host/nkv1", "link");
        let mut b = a.clone();
        b.add(LeakKind::Link, "host/nkv1", "other detail");
        assert!(b.diff(&a).is_empty(), "{}", b.diff(&a));
        b.add(LeakKind::Process, "12@34", "nodekit-init sandbox");
        let d = b.diff(&a);
        assert_eq!(d.leaked.len(), 1);
        assert!(
            d.to_string()
                .contains("process: 12@34 (nodekit-init sandbox)"),
            "{d}"
        );
        assert!(a.diff(&b).is_empty(), "what went away is not a leak");
    }
}
