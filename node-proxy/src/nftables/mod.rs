//! `NftablesRouter`, the default router: one table `inet nodekit` built around maps and sets
//! (see [`ruleset`] for the layout), programmed over netlink with libnftnl, one atomic
//! transaction per sync, sending only the elements that changed.

mod expr;
mod netlink;
pub mod ruleset;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nftnl::{Batch, Chain, ChainType, MsgType, ProtoFamily, Rule, Table};
use node_core::{ProxyState, RouterError, ServiceRouter, SyncReport};

use netlink::{ELEM_INTERVAL_END, Elem, ElemsMsg, SetMsg, Socket};
use ruleset::{ChainDef, Desired, ElemData, LbChain, SETS, SetElems};

/// How many elements go in one netlink message (each message stays under 64 KiB).
const ELEMS_PER_MSG: usize = 400;

/// Configuration of the nftables router.
#[derive(Debug, Clone)]
pub struct NftablesConfig {
    /// The table's name (family `inet`).
    pub table: String,
    /// Rewrite everything at least this often, even when only diffs were needed.
    pub full_resync_interval: Duration,
}

impl Default for NftablesConfig {
    fn default() -> Self {
        Self {
            table: "nodekit".into(),
            full_resync_interval: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug)]
struct Programmed {
    desired: Desired,
    at: Instant,
}

#[derive(Debug)]
struct Inner {
    socket: Socket,
    programmed: Option<Programmed>,
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
}

fn nl_err(op: &str, source: std::io::Error) -> RouterError {
    RouterError::Netlink {
        op: op.to_string(),
        source,
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
        let socket = Socket::open().map_err(|e| nl_err("open netfilter socket", e))?;
        Ok(Self {
            config,
            table,
            inner: Mutex::new(Inner {
                socket,
                programmed: None,
            }),
        })
    }

    /// How many set and map elements the last successful sync left programmed.
    pub fn programmed_elements(&self) -> usize {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.programmed.as_ref().map(|p| p.desired.element_count()))
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
        let desired = Desired::compute(state);
        let (b, _, _) = self.full_batch(&desired);
        b.finalize().iter().map(|p| p.len()).sum()
    }

    /// The ruleset `state` maps to, as `nft -f` input (what `--dump` prints).
    pub fn render(&self, state: &ProxyState) -> String {
        render_ruleset(&self.config.table, state)
    }

    fn send(&self, inner: &Inner, batch: Batch, what: &[String]) -> Result<(), RouterError> {
        let fin = batch.finalize();
        let pages: Vec<&[u8]> = fin.iter().collect();
        let errors = inner
            .socket
            .send_batch(&pages)
            .map_err(|e| nl_err("send batch", e))?;
        if let Some((seq, errno)) = errors.first() {
            let first = fin.sequence_numbers().start + 1;
            let msg = seq
                .checked_sub(first)
                .and_then(|i| what.get(i as usize))
                .cloned()
                .unwrap_or_else(|| format!("message {seq}"));
            return Err(nl_err(
                &format!(
                    "{msg} (table inet {}, {} error(s) in the transaction)",
                    self.config.table,
                    errors.len()
                ),
                std::io::Error::from_raw_os_error(*errno),
            ));
        }
        Ok(())
    }

    fn full(&self, inner: &Inner, desired: &Desired) -> Result<usize, RouterError> {
        let (b, what, changes) = self.full_batch(desired);
        self.send(inner, b, &what)?;
        Ok(changes)
    }

    fn full_batch(&self, desired: &Desired) -> (Batch, Vec<String>, usize) {
        let mut b = Batch::new();
        let mut what = vec![];
        let table = Table::new(&self.table, ProtoFamily::Inet);
        // create-if-missing, delete, create: the old contents go in the same transaction
        b.add(&table, MsgType::Add);
        what.push("add table".to_string());
        b.add(&table, MsgType::Del);
        what.push("delete table".to_string());
        b.add(&table, MsgType::Add);
        what.push("add table".to_string());
        for (i, def) in SETS.iter().enumerate() {
            b.add(
                &SetMsg {
                    table: self.table.clone(),
                    name: None,
                    def,
                    id: i as u32 + 1,
                },
                MsgType::Add,
            );
            what.push(format!("add set {}", def.name));
        }
        let aff: Vec<(bool, u32)> = desired.affinity_sets().into_iter().collect();
        self.add_affinity_sets(&mut b, &mut what, &aff);
        let chains: Vec<ChainDef> = ruleset::skeleton()
            .into_iter()
            .chain(desired.chains.iter().map(LbChain::def))
            .collect();
        let mut n = SETS.len() + aff.len() + add_chains(&mut b, &mut what, &table, &chains);
        let empty = Desired::default();
        n += add_elements(&mut b, &mut what, &self.table, &empty, desired);
        (b, what, n)
    }

    fn add_affinity_sets(&self, b: &mut Batch, what: &mut Vec<String>, sets: &[(bool, u32)]) {
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
            );
            what.push(format!("add set {name}"));
        }
    }

    fn partial(&self, inner: &Inner, old: &Desired, new: &Desired) -> Result<usize, RouterError> {
        let mut b = Batch::new();
        let mut what = vec![];
        let table = Table::new(&self.table, ProtoFamily::Inet);
        let aff: Vec<(bool, u32)> = new
            .affinity_sets()
            .difference(&old.affinity_sets())
            .copied()
            .collect();
        self.add_affinity_sets(&mut b, &mut what, &aff);
        let added: Vec<ChainDef> = new
            .chains
            .difference(&old.chains)
            .map(LbChain::def)
            .collect();
        let mut changes = aff.len() + add_chains(&mut b, &mut what, &table, &added);
        changes += add_elements(&mut b, &mut what, &self.table, old, new);
        if changes == 0 {
            return Ok(0);
        }
        self.send(inner, b, &what)?;
        Ok(changes)
    }
}

/// Render the ruleset of `state` for table `inet <table>` as `nft -f` input.
pub fn render_ruleset(table: &str, state: &ProxyState) -> String {
    ruleset::render(table, &Desired::compute(state))
}

fn add_chains(b: &mut Batch, what: &mut Vec<String>, table: &Table, chains: &[ChainDef]) -> usize {
    let mut n = 0;
    let mut built = vec![];
    for c in chains {
        let name = CString::new(c.name.as_str()).expect("no NUL");
        let mut chain = Chain::new(&name, table);
        if let Some(h) = c.hook {
            chain.set_hook(h.hook, h.priority);
            chain.set_type(if h.nat {
                ChainType::Nat
            } else {
                ChainType::Filter
            });
        }
        b.add(&chain, MsgType::Add);
        what.push(format!("add chain {}", c.name));
        n += 1;
        built.push(chain);
    }
    for (c, chain) in chains.iter().zip(&built) {
        for r in &c.rules {
            let mut rule = Rule::new(chain);
            for e in &r.exprs {
                rule.add_expr(e);
            }
            b.add(&rule, MsgType::Add);
            what.push(format!("add rule to chain {}: {}", c.name, r.text));
            n += 1;
        }
    }
    n
}

fn interval_elems(nets: &[ipnet::IpNet]) -> Vec<(Vec<u8>, u32)> {
    let mut out = vec![];
    for n in nets {
        let n = n.trunc();
        let (start, end): (Vec<u8>, Option<Vec<u8>>) = match n {
            ipnet::IpNet::V4(v) => {
                let s = u32::from(v.network());
                let e = u32::from(v.broadcast()).checked_add(1);
                (
                    s.to_be_bytes().to_vec(),
                    e.map(|e| e.to_be_bytes().to_vec()),
                )
            }
            ipnet::IpNet::V6(v) => {
                let s = u128::from(v.network());
                let e = u128::from(v.broadcast()).checked_add(1);
                (
                    s.to_be_bytes().to_vec(),
                    e.map(|e| e.to_be_bytes().to_vec()),
                )
            }
        };
        out.push((start, 0));
        if let Some(e) = end {
            out.push((e, ELEM_INTERVAL_END));
        }
    }
    out
}

/// Add the element messages turning `old` into `new`; the number of elements sent.
fn add_elements(
    b: &mut Batch,
    what: &mut Vec<String>,
    table: &CString,
    old: &Desired,
    new: &Desired,
) -> usize {
    let mut n = 0;
    let none = ElemData::None;
    // interval sets: rewritten whole when changed (a handful of CIDRs)
    for (set, nets) in &new.cidrs {
        let before = old.cidrs.get(set).cloned().unwrap_or_default();
        if &before == nets {
            continue;
        }
        let old_e = interval_elems(&before);
        if !old_e.is_empty() {
            let elems: Vec<Elem<'_>> = old_e
                .iter()
                .map(|(k, f)| (k.as_slice(), &none, *f))
                .collect();
            n += elems.len();
            b.add(
                &ElemsMsg {
                    table,
                    set,
                    elems,
                    delete: true,
                },
                MsgType::Del,
            );
            what.push(format!("delete elements of {set}"));
        }
        let new_e = interval_elems(nets);
        if !new_e.is_empty() {
            let elems: Vec<Elem<'_>> = new_e
                .iter()
                .map(|(k, f)| (k.as_slice(), &none, *f))
                .collect();
            n += elems.len();
            b.add(
                &ElemsMsg {
                    table,
                    set,
                    elems,
                    delete: false,
                },
                MsgType::Add,
            );
            what.push(format!("add elements to {set}"));
        }
    }
    let empty = SetElems::new();
    // deletions first (a changed element is deleted, then added), then additions
    let mut adds: Vec<(&'static str, Vec<Elem<'_>>)> = vec![];
    for (set, elems) in &new.sets {
        let before = old.sets.get(set).unwrap_or(&empty);
        let dels: Vec<Elem<'_>> = before
            .iter()
            .filter(|(k, v)| elems.get(*k) != Some(v))
            .map(|(k, v)| (k.as_slice(), v, 0))
            .collect();
        for chunk in dels.chunks(ELEMS_PER_MSG) {
            n += chunk.len();
            b.add(
                &ElemsMsg {
                    table,
                    set,
                    elems: chunk.to_vec(),
                    delete: true,
                },
                MsgType::Del,
            );
            what.push(format!("delete {} elements of {set}", chunk.len()));
        }
        let add: Vec<Elem<'_>> = elems
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, v)| (k.as_slice(), v, 0))
            .collect();
        adds.push((set, add));
    }
    for (set, add) in adds {
        for chunk in add.chunks(ELEMS_PER_MSG) {
            n += chunk.len();
            b.add(
                &ElemsMsg {
                    table,
                    set,
                    elems: chunk.to_vec(),
                    delete: false,
                },
                MsgType::Add,
            );
            what.push(format!("add {} elements to {set}", chunk.len()));
        }
    }
    n
}

#[async_trait]
impl ServiceRouter for NftablesRouter {
    fn name(&self) -> &str {
        "nftables"
    }

    async fn sync(&self, desired: &ProxyState) -> Result<SyncReport, RouterError> {
        let start = Instant::now();
        let new = Desired::compute(desired);
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| RouterError::Other("router lock poisoned".into()))?;
        let previous = inner.programmed.take();
        let full_due = previous
            .as_ref()
            .is_none_or(|p| p.at.elapsed() >= self.config.full_resync_interval);
        let (full, result) = match &previous {
            Some(p) if !full_due => (false, self.partial(&inner, &p.desired, &new)),
            _ => (true, self.full(&inner, &new)),
        };
        let changes = match result {
            Ok(c) => c,
            // on failure the next sync rewrites everything (programmed stays None)
            Err(e) => return Err(e),
        };
        let at = if full {
            Instant::now()
        } else {
            previous.map(|p| p.at).unwrap_or_else(Instant::now)
        };
        let report = SyncReport {
            full,
            service_ports: new.service_ports,
            endpoints: new.endpoints,
            changes,
            skipped: vec![],
            duration: start.elapsed(),
        };
        inner.programmed = Some(Programmed { desired: new, at });
        Ok(report)
    }

    async fn cleanup(&self) -> Result<(), RouterError> {
        let mut inner = self
            .inner
            .lock()
            .map_err(|_| RouterError::Other("router lock poisoned".into()))?;
        let mut b = Batch::new();
        let table = Table::new(&self.table, ProtoFamily::Inet);
        b.add(&table, MsgType::Add);
        b.add(&table, MsgType::Del);
        let what = ["add table".to_string(), "delete table".to_string()];
        inner.programmed = None;
        self.send(&inner, b, &what)
    }
}

/// The chains a state needs (for tests and tools).
pub fn chain_names(state: &ProxyState) -> BTreeSet<String> {
    let d = Desired::compute(state);
    ruleset::skeleton()
        .into_iter()
        .map(|c| c.name)
        .chain(d.chains.iter().map(|c| c.name()))
        .collect()
}
