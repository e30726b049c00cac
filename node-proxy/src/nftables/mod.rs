//! `NftablesRouter`, the default router: one table `inet nodekit` built around maps and sets
//! (see [`ruleset`] for the layout), programmed over netlink with libnftnl, one atomic
//! transaction per sync, sending only the elements that changed.

pub mod ruleset;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use node_core::{
    Protocol, ProxyState, RouterError, ServicePort, ServicePortName, ServiceRouter, SyncReport,
};
use node_nft::{MsgType, NftError, ProtoFamily, Socket, Table, Transaction};

use crate::conntrack::{self, ConntrackCleaner, ConntrackFlush};

use node_nft::set::{Elem, ElemsMsg, IntervalElems, SetMsg, interval_elems};
use ruleset::{ChainDef, Contribution, Desired, ElemData, LbChain, NodeFacts, SETS};

/// How many elements go in one netlink message (each message stays under 64 KiB).
const ELEMS_PER_MSG: usize = 400;

/// Configuration of the nftables router.
#[derive(Debug, Clone)]
pub struct NftablesConfig {
    /// The table's name (family `inet`).
    pub table: String,
    /// Rewrite everything at least this often, even when only diffs were needed.
    pub full_resync_interval: Duration,
    /// Delete stale UDP conntrack entries after a sync (on by default; needs the `conntrack`
    /// command, see [`crate::conntrack`]).
    pub conntrack_cleanup: bool,
}

impl Default for NftablesConfig {
    fn default() -> Self {
        Self {
            table: "nodekit".into(),
            full_resync_interval: Duration::from_secs(3600),
            conntrack_cleanup: true,
        }
    }
}

/// What the router programmed: every service port with its contribution, so that a sync
/// recomputes only the service ports that changed. Ordered as [`ProxyState::services`], so a
/// partial sync compares the two in one merged walk (no hashing of 10k names).
#[derive(Debug)]
struct Programmed {
    facts: NodeFacts,
    services: BTreeMap<ServicePortName, (ServicePort, Contribution)>,
    hairpin: HashMap<IpAddr, usize>,
    chains: BTreeSet<LbChain>,
    endpoints: usize,
    elements: usize,
    /// Service ports that cannot be programmed, with the reason (they contribute nothing).
    skipped: BTreeMap<ServicePortName, String>,
    at: Instant,
}

impl Programmed {
    fn build(state: &ProxyState) -> Self {
        let facts = NodeFacts::of(state);
        let mut p = Programmed {
            services: BTreeMap::new(),
            hairpin: HashMap::new(),
            chains: BTreeSet::new(),
            endpoints: 0,
            elements: facts.cidr_sets().values().map(Vec::len).sum::<usize>()
                + facts.node_port_addresses.len(),
            facts,
            skipped: BTreeMap::new(),
            at: Instant::now(),
        };
        let mut services = Vec::with_capacity(state.services.len());
        for (name, sp) in &state.services {
            let c = p.contribution(name, sp);
            p.account(&c, 1);
            services.push((name.clone(), (sp.clone(), c)));
        }
        // in order already: built in bulk
        p.services = services.into_iter().collect();
        p
    }

    /// What `sp` contributes; nothing (and noted in `skipped`) when it cannot be programmed.
    fn contribution(&mut self, name: &ServicePortName, sp: &ServicePort) -> Contribution {
        match ruleset::unprogrammable(name, sp) {
            Some(why) => {
                self.skipped.insert(name.clone(), why);
                Contribution::default()
            }
            None => {
                self.skipped.remove(name);
                ruleset::contribution(sp, &self.facts)
            }
        }
    }

    /// Count a contribution in (`sign` 1) or out (-1); the hairpin addresses whose count
    /// crossed zero are returned by [`Programmed::hairpin_changes`].
    fn account(&mut self, c: &Contribution, sign: isize) {
        let apply = |v: usize, d: usize| if sign > 0 { v + d } else { v - d };
        self.endpoints = apply(self.endpoints, c.endpoints);
        self.elements = apply(self.elements, c.elems.len());
        for ip in &c.hairpin {
            let n = self.hairpin.entry(*ip).or_insert(0);
            let before = *n;
            *n = apply(*n, 1);
            if before == 0 {
                self.elements += 1;
            } else if *n == 0 {
                self.elements -= 1;
                self.hairpin.remove(ip);
            }
        }
        if sign > 0 {
            self.chains.extend(c.chains.iter().cloned());
        }
    }
}

#[derive(Debug)]
struct Inner {
    socket: Socket,
    programmed: Option<Programmed>,
    /// Conntrack deletions a sync could not do yet (retried by the next one).
    pending_flushes: Vec<ConntrackFlush>,
}

/// A UDP service port that changed: its name, what was programmed and what is wanted.
type UdpChange = (ServicePortName, Option<ServicePort>, Option<ServicePort>);

/// The conntrack entries the UDP changes make stale (node name `node`).
fn udp_flushes(node: &str, changes: Vec<UdpChange>) -> Vec<ConntrackFlush> {
    let mut old = ProxyState::default();
    let mut new = ProxyState::default();
    old.node.name = node.to_string();
    new.node.name = node.to_string();
    for (name, o, n) in changes {
        if let Some(o) = o {
            old.services.insert(name.clone(), o);
        }
        if let Some(n) = n {
            new.services.insert(name, n);
        }
    }
    conntrack::stale_udp_flows(&old, &new)
}

/// Programs services into nftables: `inet <table>` only, never any other table.
///
/// The netlink socket is opened by [`NftablesRouter::new`], in the calling thread's network
/// namespace, and every sync acts on that namespace.
#[derive(Debug)]
pub struct NftablesRouter {
    config: NftablesConfig,
    table: CString,
    inner: Mutex<Inner>,
    conntrack: ConntrackCleaner,
}

fn nl_err(op: &str, source: std::io::Error) -> RouterError {
    RouterError::Netlink {
        op: op.to_string(),
        source,
    }
}

/// A node-nft error as the router's, naming the table a refused transaction was for.
fn nft_err(table: &str, e: NftError) -> RouterError {
    match e {
        NftError::Io { op, source } => nl_err(&op, source),
        NftError::Rejected {
            what,
            errors,
            source,
        } => nl_err(
            &format!("{what} (table inet {table}, {errors} error(s) in the transaction)"),
            source,
        ),
        NftError::BadName { name } => {
            RouterError::Other(format!("nftables name {name:?} has a NUL"))
        }
    }
}

impl NftablesRouter {
    /// A router with the default configuration, acting on the current network namespace.
    pub fn new() -> Result<Self, RouterError> {
        Self::with_config(NftablesConfig::default())
    }

    /// A router with `config`, acting on the current network namespace.
    pub fn with_config(config: NftablesConfig) -> Result<Self, RouterError> {
        let table = CString::new(config.table.clone())
            .map_err(|_| RouterError::Other(format!("table name {:?} has a NUL", config.table)))?;
        let socket = Socket::open().map_err(|e| nft_err(&config.table, e))?;
        Ok(Self {
            config,
            table,
            inner: Mutex::new(Inner {
                socket,
                programmed: None,
                pending_flushes: Vec::new(),
            }),
            conntrack: ConntrackCleaner::default(),
        })
    }

    /// How many set and map elements the last successful sync left programmed.
    pub fn programmed_elements(&self) -> usize {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.programmed.as_ref().map(|p| p.elements))
            .unwrap_or(0)
    }

    /// Make the next sync a full rewrite (as after an error).
    pub fn force_full_sync(&self) {
        if let Ok(mut i) = self.inner.lock() {
            i.programmed = None;
        }
    }

    /// Build (but do not send) the full transaction for `state`: its size in bytes. This is the
    /// whole userspace cost of a full sync, for benchmarks.
    pub fn generate(&self, state: &ProxyState) -> usize {
        let p = Programmed::build(state);
        let (tx, _) = self.full_batch(&p);
        tx.size()
    }

    /// The ruleset `state` maps to, as `nft -f` input (what `--dump` prints).
    pub fn render(&self, state: &ProxyState) -> String {
        render_ruleset(&self.config.table, state)
    }

    fn send(&self, inner: &Inner, tx: Transaction) -> Result<(), RouterError> {
        inner
            .socket
            .commit(tx)
            .map_err(|e| nft_err(&self.config.table, e))
    }

    fn full(&self, inner: &Inner, desired: &Programmed) -> Result<usize, RouterError> {
        let (tx, changes) = self.full_batch(desired);
        self.send(inner, tx)?;
        Ok(changes)
    }

    fn full_batch(&self, p: &Programmed) -> (Transaction, usize) {
        let mut b = Transaction::new();
        let table = Table::new(&self.table, ProtoFamily::Inet);
        // create-if-missing, delete, create: the old contents go in the same transaction
        b.add(&table, MsgType::Add, "add table");
        b.add(&table, MsgType::Del, "delete table");
        b.add(&table, MsgType::Add, "add table");
        for (i, def) in SETS.iter().enumerate() {
            b.add(
                &SetMsg {
                    table: self.table.clone(),
                    name: None,
                    def,
                    id: i as u32 + 1,
                },
                MsgType::Add,
                format!("add set {}", def.name),
            );
        }
        let aff: Vec<(bool, u32)> = p
            .chains
            .iter()
            .flat_map(|c| c.affinity_sets())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.add_affinity_sets(&mut b, &aff);
        let chains: Vec<ChainDef> = ruleset::skeleton(!p.facts.node_port_addresses.is_empty())
            .into_iter()
            .chain(p.chains.iter().map(LbChain::def))
            .collect();
        let mut n = SETS.len() + aff.len() + b.add_chains(&table, &chains);
        // every element, by set, straight from the contributions (no copy)
        let none = ElemData::None;
        let hairpin: Vec<(&'static str, Vec<u8>)> = p
            .hairpin
            .keys()
            .map(|ip| ruleset::hairpin_elem(*ip))
            .collect();
        let mut by_set: BTreeMap<&'static str, Vec<Elem<'_>>> = BTreeMap::new();
        for (_, c) in p.services.values() {
            for (s, k, v) in &c.elems {
                by_set.entry(s).or_default().push((k.as_slice(), v, 0));
            }
        }
        let npaddr = p.facts.node_port_elems();
        for (s, k) in hairpin.iter().chain(&npaddr) {
            by_set.entry(s).or_default().push((k.as_slice(), &none, 0));
        }
        let cidrs: Vec<(&'static str, IntervalElems)> = p
            .facts
            .cidr_sets()
            .into_iter()
            .map(|(s, nets)| (s, interval_elems(&nets)))
            .collect();
        for (s, elems) in &cidrs {
            for (k, f) in elems {
                by_set.entry(s).or_default().push((k.as_slice(), &none, *f));
            }
        }
        for (set, list) in by_set {
            n += list.len();
            for chunk in list.chunks(ELEMS_PER_MSG) {
                b.add(
                    &ElemsMsg {
                        table: &self.table,
                        set: ruleset::set_def(set),
                        elems: chunk.to_vec(),
                        delete: false,
                    },
                    MsgType::Add,
                    format!("add {} elements to {set}", chunk.len()),
                );
            }
        }
        (b, n)
    }

    fn add_affinity_sets(&self, b: &mut Transaction, sets: &[(bool, u32)]) {
        for (j, (v6, i)) in sets.iter().enumerate() {
            let name = ruleset::affinity_set_name(*v6, *i);
            let def = if *v6 {
                &ruleset::AFFB6
            } else {
                &ruleset::AFFB4
            };
            b.add(
                &SetMsg {
                    table: self.table.clone(),
                    name: Some(name.clone()),
                    def,
                    id: 1000 + j as u32,
                },
                MsgType::Add,
                format!("add set {name}"),
            );
        }
    }

    /// Bring `p` to `state`, sending only what changed; `p` is updated as it goes (and dropped
    /// by the caller if sending fails).
    fn partial(
        &self,
        inner: &Inner,
        p: &mut Programmed,
        state: &ProxyState,
        udp: &mut Vec<UdpChange>,
    ) -> Result<usize, RouterError> {
        let (differ, gone) = diff_ordered(&p.services, &state.services, |(old, _), sp| old == sp);
        let mut changed: Vec<(Option<Contribution>, Option<Contribution>)> = vec![];
        for (name, sp) in differ {
            let c = p.contribution(name, sp);
            let old = p.services.insert(name.clone(), (sp.clone(), c.clone()));
            if sp.protocol == Protocol::Udp
                || old
                    .as_ref()
                    .is_some_and(|(o, _)| o.protocol == Protocol::Udp)
            {
                udp.push((
                    name.clone(),
                    old.as_ref().map(|(o, _)| o.clone()),
                    Some(sp.clone()),
                ));
            }
            changed.push((old.map(|(_, c)| c), Some(c)));
        }
        for k in gone {
            p.skipped.remove(&k);
            if let Some((old, c)) = p.services.remove(&k) {
                if old.protocol == Protocol::Udp {
                    udp.push((k, Some(old), None));
                }
                changed.push((Some(c), None));
            }
        }
        if changed.is_empty() {
            return Ok(0);
        }
        let hairpin_before: HashMap<IpAddr, usize> = changed
            .iter()
            .flat_map(|(o, n)| o.iter().chain(n.iter()).flat_map(|c| c.hairpin.iter()))
            .map(|ip| (*ip, p.hairpin.get(ip).copied().unwrap_or(0)))
            .collect();
        let chains_before = p.chains.clone();
        let mut dels: Vec<(&'static str, Vec<u8>, ElemData)> = vec![];
        let mut adds: Vec<(&'static str, Vec<u8>, ElemData)> = vec![];
        for (old, new) in &changed {
            let empty = Contribution::default();
            let (o, n) = (
                old.as_ref().unwrap_or(&empty),
                new.as_ref().unwrap_or(&empty),
            );
            let oset: HashMap<(&str, &[u8]), &ElemData> = o
                .elems
                .iter()
                .map(|(s, k, v)| ((*s, k.as_slice()), v))
                .collect();
            let nset: HashMap<(&str, &[u8]), &ElemData> = n
                .elems
                .iter()
                .map(|(s, k, v)| ((*s, k.as_slice()), v))
                .collect();
            for (s, k, v) in &o.elems {
                if nset.get(&(*s, k.as_slice())) != Some(&v) {
                    dels.push((s, k.clone(), v.clone()));
                }
            }
            for (s, k, v) in &n.elems {
                if oset.get(&(*s, k.as_slice())) != Some(&v) {
                    adds.push((s, k.clone(), v.clone()));
                }
            }
            p.account(o, -1);
            p.account(n, 1);
        }
        for (ip, before) in hairpin_before {
            let after = p.hairpin.get(&ip).copied().unwrap_or(0);
            let (set, k) = ruleset::hairpin_elem(ip);
            if before == 0 && after > 0 {
                adds.push((set, k, ElemData::None));
            } else if before > 0 && after == 0 {
                dels.push((set, k, ElemData::None));
            }
        }
        let mut b = Transaction::new();
        let table = Table::new(&self.table, ProtoFamily::Inet);
        let new_chains: Vec<&LbChain> = p.chains.difference(&chains_before).collect();
        let aff_before: BTreeSet<(bool, u32)> = chains_before
            .iter()
            .flat_map(|c| c.affinity_sets())
            .collect();
        let aff: Vec<(bool, u32)> = new_chains
            .iter()
            .flat_map(|c| c.affinity_sets())
            .filter(|a| !aff_before.contains(a))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        self.add_affinity_sets(&mut b, &aff);
        let added: Vec<ChainDef> = new_chains.into_iter().map(LbChain::def).collect();
        let mut changes = aff.len() + b.add_chains(&table, &added);
        changes += dels.len() + adds.len();
        send_elems(&mut b, &self.table, &dels, true);
        send_elems(&mut b, &self.table, &adds, false);
        if changes == 0 {
            return Ok(0);
        }
        self.send(inner, b)?;
        Ok(changes)
    }
}

/// One walk over two maps of the same order: the entries of `desired` that are new or not
/// `same` as in `programmed`, and the keys of `programmed` no longer desired.
fn diff_ordered<'a, K: Ord + Clone, P, D>(
    programmed: &BTreeMap<K, P>,
    desired: &'a BTreeMap<K, D>,
    same: impl Fn(&P, &D) -> bool,
) -> (Vec<(&'a K, &'a D)>, Vec<K>) {
    let (mut differ, mut gone) = (vec![], vec![]);
    let mut old = programmed.iter().peekable();
    for (k, d) in desired {
        let mut was = None;
        while let Some(&(ok, ov)) = old.peek() {
            match ok.cmp(k) {
                std::cmp::Ordering::Less => gone.push(ok.clone()),
                std::cmp::Ordering::Equal => was = Some(ov),
                std::cmp::Ordering::Greater => break,
            }
            old.next();
            if was.is_some() {
                break;
            }
        }
        if !was.is_some_and(|p| same(p, d)) {
            differ.push((k, d));
        }
    }
    gone.extend(old.map(|(k, _)| k.clone()));
    (differ, gone)
}

/// Add element messages for `elems` (grouped by set, chunked).
fn send_elems(
    b: &mut Transaction,
    table: &CString,
    elems: &[(&'static str, Vec<u8>, ElemData)],
    delete: bool,
) {
    let mut by_set: BTreeMap<&'static str, Vec<Elem<'_>>> = BTreeMap::new();
    for (s, k, v) in elems {
        by_set.entry(s).or_default().push((k.as_slice(), v, 0));
    }
    for (set, list) in by_set {
        for chunk in list.chunks(ELEMS_PER_MSG) {
            let msg = ElemsMsg {
                table,
                set: ruleset::set_def(set),
                elems: chunk.to_vec(),
                delete,
            };
            b.add(
                &msg,
                if delete { MsgType::Del } else { MsgType::Add },
                format!(
                    "{} {} elements of {set}",
                    if delete { "delete" } else { "add" },
                    chunk.len()
                ),
            );
        }
    }
}

/// Render the ruleset of `state` for table `inet <table>` as `nft -f` input.
pub fn render_ruleset(table: &str, state: &ProxyState) -> String {
    ruleset::render(table, &Desired::compute(state))
}

#[async_trait]
impl ServiceRouter for NftablesRouter {
    fn name(&self) -> &str {
        "nftables"
    }

    async fn sync(&self, desired: &ProxyState) -> Result<SyncReport, RouterError> {
        let start = Instant::now();
        let (report, flushes) = {
            let mut inner = self
                .inner
                .lock()
                .map_err(|_| RouterError::Other("router lock poisoned".into()))?;
            // taken out: if anything fails, the next sync rewrites everything
            let previous = inner.programmed.take();
            let mut udp: Vec<UdpChange> = vec![];
            let (full, changes, programmed) = match previous {
                Some(mut p)
                    if p.at.elapsed() < self.config.full_resync_interval
                        && p.facts == NodeFacts::of(desired) =>
                {
                    let changes = self.partial(&inner, &mut p, desired, &mut udp)?;
                    (false, changes, p)
                }
                previous => {
                    let p = Programmed::build(desired);
                    let changes = self.full(&inner, &p)?;
                    if self.config.conntrack_cleanup {
                        let mut old: HashMap<&ServicePortName, &ServicePort> = previous
                            .iter()
                            .flat_map(|p| p.services.iter())
                            .map(|(n, (sp, _))| (n, sp))
                            .collect();
                        for (name, sp) in &desired.services {
                            let was = old.remove(name);
                            let is_udp = |s: &ServicePort| s.protocol == Protocol::Udp;
                            if is_udp(sp) || was.is_some_and(is_udp) {
                                udp.push((name.clone(), was.cloned(), Some(sp.clone())));
                            }
                        }
                        udp.extend(
                            old.into_iter()
                                .filter(|(_, sp)| sp.protocol == Protocol::Udp)
                                .map(|(n, sp)| (n.clone(), Some(sp.clone()), None)),
                        );
                    }
                    (true, changes, p)
                }
            };
            let report = SyncReport {
                full,
                service_ports: programmed.services.len(),
                endpoints: programmed.endpoints,
                changes,
                skipped: programmed
                    .skipped
                    .iter()
                    .map(|(n, why)| (n.clone(), why.clone()))
                    .collect(),
                duration: Duration::ZERO,
            };
            let mut flushes = std::mem::take(&mut inner.pending_flushes);
            if self.config.conntrack_cleanup && !udp.is_empty() {
                flushes.extend(udp_flushes(&programmed.facts.name, udp));
            }
            inner.programmed = Some(programmed);
            (report, flushes)
        };
        let flushed = match flushes.is_empty() {
            true => Ok(()),
            false => self.conntrack.flush(&flushes).await,
        };
        if let Err(e) = flushed {
            if let Ok(mut inner) = self.inner.lock() {
                inner.pending_flushes = flushes;
            }
            return Err(e);
        }
        Ok(SyncReport {
            duration: start.elapsed(),
            ..report
        })
    }

    async fn cleanup(&self) -> Result<(), RouterError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| RouterError::Other("router lock poisoned".into()))?;
        let mut b = Transaction::new();
        let table = Table::new(&self.table, ProtoFamily::Inet);
        b.add(&table, MsgType::Add, "add table");
        b.add(&table, MsgType::Del, "delete table");
        inner.programmed = None;
        self.send(&inner, b)
    }
}

/// The chains a state needs (for tests and tools).
pub fn chain_names(state: &ProxyState) -> BTreeSet<String> {
    let d = Desired::compute(state);
    ruleset::skeleton(!state.node.node_port_addresses.is_empty())
        .into_iter()
        .map(|c| c.name)
        .chain(d.chains.iter().map(|c| c.name()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::diff_ordered;
    use std::collections::BTreeMap;

    #[test]
    fn diff_ordered_finds_added_changed_and_gone_keys() {
        let programmed: BTreeMap<u32, &str> =
            [(1, "a"), (2, "b"), (4, "d"), (5, "e"), (9, "i")].into();
        let desired: BTreeMap<u32, &str> =
            [(0, "new"), (2, "b"), (3, "c"), (5, "E"), (7, "g")].into();
        let (differ, gone) = diff_ordered(&programmed, &desired, |p, d| p == d);
        let differ: Vec<u32> = differ.into_iter().map(|(k, _)| *k).collect();
        assert_eq!(differ, [0, 3, 5, 7]);
        assert_eq!(gone, [1, 4, 9]);
        let (differ, gone) = diff_ordered(&programmed, &programmed, |p, d| p == d);
        assert!(differ.is_empty() && gone.is_empty());
        let empty = BTreeMap::new();
        let (differ, gone) = diff_ordered(&programmed, &empty, |p: &&str, d: &&str| p == d);
        assert_eq!((differ.len(), gone.len()), (0, 5));
        let (differ, gone) = diff_ordered(&empty, &desired, |p: &&str, d: &&str| p == d);
        assert_eq!((differ.len(), gone.len()), (5, 0));
    }
}
