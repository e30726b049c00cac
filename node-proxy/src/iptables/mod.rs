//! The iptables router: kube-proxy's proven iptables semantics (dispatch chain, a chain per
//! service and per endpoint, random probabilities, `recent` affinity, masquerade mark) in our
//! own `NODEKIT-*` chains, programmed through `iptables-restore --noflush` with partial syncs
//! that rewrite only the chains that changed (kube-proxy's KEP-3453).
//!
//! Commands (`iptables-restore`, `iptables`, `iptables-save`, `conntrack`) run as children of
//! the thread that polls [`ServiceRouter::sync`], so they act on that thread's network namespace.

mod render;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::Stdio;
use std::time::Instant;

use async_trait::async_trait;
use node_core::{ProxyState, RouterError, ServicePortName, ServiceRouter, SyncReport};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

pub use render::{CHAIN_PREFIX, Chains, ServiceRules, chain_hash};

use crate::conntrack::{self, ConntrackCleaner};

/// Which iptables implementation programs the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IptablesVariant {
    /// `iptables-nft-restore`: xtables rules in nf_tables (the Debian default).
    #[default]
    Nft,
    /// `iptables-legacy-restore`: the legacy xtables kernel tables.
    Legacy,
}

/// An IP family: IPv4 rules go through `iptables-*`, IPv6 through `ip6tables-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IptablesVariant {
    /// The program `tool` (`restore`, `save`, or empty for the plain command) of this variant
    /// and `family`, e.g. `ip6tables-legacy-restore`.
    pub fn program(self, family: IpFamily, tool: &str) -> String {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let v = match self {
            IptablesVariant::Nft => "nft",
            IptablesVariant::Legacy => "legacy",
        };
        if tool.is_empty() {
            format!("{base}-{v}")
        } else {
            format!("{base}-{v}-{tool}")
        }
    }
}

/// Configuration of the [`IptablesRouter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptablesConfig {
    /// The iptables implementation (nft by default).
    pub variant: IptablesVariant,
    /// The bit of the packet mark that asks for masquerade (14, i.e. `0x4000`, as kube-proxy).
    pub masquerade_bit: u8,
    /// The IP families to program (both by default).
    pub families: Vec<IpFamily>,
    /// `MASQUERADE --random-fully` (on by default, as kube-proxy when the kernel supports it).
    pub random_fully: bool,
    /// Delete stale UDP conntrack entries after a sync (on by default).
    pub conntrack_cleanup: bool,
    /// Seconds `iptables-restore -w` waits for the xtables lock.
    pub lock_wait_seconds: u32,
}

impl Default for IptablesConfig {
    fn default() -> Self {
        Self {
            variant: IptablesVariant::Nft,
            masquerade_bit: 14,
            families: vec![IpFamily::V4, IpFamily::V6],
            random_fully: true,
            conntrack_cleanup: true,
            lock_wait_seconds: 5,
        }
    }
}

impl IptablesConfig {
    /// This configuration with another variant.
    #[must_use]
    pub fn with_variant(mut self, variant: IptablesVariant) -> Self {
        self.variant = variant;
        self
    }
    /// This configuration with only these families.
    #[must_use]
    pub fn with_families(mut self, families: &[IpFamily]) -> Self {
        self.families = families.to_vec();
        self
    }
    /// This configuration with or without UDP conntrack cleanup.
    #[must_use]
    pub fn with_conntrack_cleanup(mut self, on: bool) -> Self {
        self.conntrack_cleanup = on;
        self
    }
}

/// What was programmed in one family.
#[derive(Debug, Default)]
struct FamilyState {
    services: BTreeMap<ServicePortName, ServiceRules>,
    top_nat: Chains,
    top_filter: Chains,
}

#[derive(Debug, Default)]
struct Programmed {
    /// The last state synced successfully; `None` forces a full sync.
    last: Option<ProxyState>,
    families: BTreeMap<IpFamily, FamilyState>,
}

/// The rendered restore input of one family, and what it changes.
struct Plan {
    text: String,
    changes: usize,
    endpoints: usize,
    state: FamilyState,
}

/// A [`ServiceRouter`] that programs iptables (nft or legacy) through `iptables-restore`.
#[derive(Debug)]
pub struct IptablesRouter {
    config: IptablesConfig,
    programmed: Mutex<Programmed>,
    conntrack: ConntrackCleaner,
}

impl IptablesRouter {
    /// A router with `config`; nothing is programmed until the first sync.
    pub fn new(config: IptablesConfig) -> Self {
        Self {
            config,
            programmed: Mutex::new(Programmed::default()),
            conntrack: ConntrackCleaner::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &IptablesConfig {
        &self.config
    }

    /// Forget what was programmed: the next sync is a full one.
    pub async fn force_full_sync(&self) {
        *self.programmed.lock().await = Programmed::default();
    }

    /// The full `iptables-restore` input for `desired` in `family` (what a full sync writes,
    /// without removing stale chains): the text `--dump` prints.
    pub fn render(&self, desired: &ProxyState, family: IpFamily) -> String {
        let hooks = (
            Existing::default().missing_hooks("nat"),
            Existing::default().missing_hooks("filter"),
        );
        let (plan, _) = plan_family(&self.config, desired, None, None, family, &[], &hooks);
        plan.text
    }

    /// The full `iptables-restore` input of every configured family, each after a comment
    /// line naming the program it is for.
    pub fn dump(&self, desired: &ProxyState) -> String {
        let mut out = String::new();
        for &family in &self.config.families {
            out.push_str(&format!(
                "# {} -w --noflush\n",
                self.config.variant.program(family, "restore")
            ));
            out.push_str(&self.render(desired, family));
        }
        out
    }

    async fn sync_inner(
        &self,
        desired: &ProxyState,
        programmed: &mut Programmed,
    ) -> Result<SyncReport, RouterError> {
        let start = Instant::now();
        let full = programmed.last.is_none()
            || programmed.last.as_ref().map(|l| &l.node) != Some(&desired.node);
        let mut report = SyncReport {
            full,
            service_ports: desired.services.len(),
            ..Default::default()
        };
        let mut new_families = BTreeMap::new();
        for &family in &self.config.families {
            let found = if full {
                existing(&self.config, family).await?
            } else {
                Existing::default()
            };
            let prev = if full {
                None
            } else {
                programmed.families.remove(&family)
            };
            let last = if full { None } else { programmed.last.as_ref() };
            let hooks = if full {
                (found.missing_hooks("nat"), found.missing_hooks("filter"))
            } else {
                (vec![], vec![])
            };
            let (plan, skipped) = plan_family(
                &self.config,
                desired,
                last,
                prev,
                family,
                &found.chains,
                &hooks,
            );
            if report.skipped.is_empty() {
                report.skipped = skipped;
            }
            if !plan.text.is_empty() {
                restore(&self.config, family, &plan.text).await?;
            }
            report.changes += plan.changes;
            report.endpoints += plan.endpoints;
            new_families.insert(family, plan.state);
        }
        if self.config.conntrack_cleanup {
            let empty = ProxyState::default();
            let old = programmed.last.as_ref().unwrap_or(&empty);
            let flushes = conntrack::stale_udp_flows(old, desired);
            if !flushes.is_empty() {
                self.conntrack.flush(&flushes).await?;
            }
        }
        programmed.families = new_families;
        programmed.last = Some(desired.clone());
        report.duration = start.elapsed();
        Ok(report)
    }
}

impl Default for IptablesRouter {
    fn default() -> Self {
        Self::new(IptablesConfig::default())
    }
}

/// Plan one family's sync: the restore text, the changes it makes and the new state.
/// `last`/`prev` are the previous state and rules (`None`: full sync), consumed: unchanged
/// services' rules move into the new state; `stale` are chains found in the kernel to remove
/// unless wanted.
#[allow(clippy::too_many_arguments)]
fn plan_family(
    config: &IptablesConfig,
    desired: &ProxyState,
    last: Option<&ProxyState>,
    prev: Option<FamilyState>,
    family: IpFamily,
    stale: &[String],
    hooks: &(Vec<String>, Vec<String>),
) -> (Plan, Vec<(ServicePortName, String)>) {
    let mut skipped = vec![];
    let mut services = BTreeMap::new();
    let had_prev = prev.is_some();
    let mut prev_state = prev.unwrap_or_default();
    let mut prev_services = std::mem::take(&mut prev_state.services);
    // (service, chain) of the service chains to write
    let mut changed: Vec<(ServicePortName, String)> = vec![];
    let mut endpoints = 0;
    let mut delete: BTreeSet<String> = BTreeSet::new();
    for (name, sp) in &desired.services {
        if let Err(why) = render::validate(name, sp) {
            skipped.push((name.clone(), why));
            continue;
        }
        let old = prev_services.remove(name);
        let unchanged = last.and_then(|l| l.services.get(name)) == Some(sp);
        let rules = match old {
            Some(old) if unchanged => old,
            old => {
                let new = render::render_service(name, sp, &desired.node, config, family);
                for (chain, rules) in &new.nat_chains {
                    if !had_prev
                        || old.as_ref().and_then(|o| o.nat_chains.get(chain)) != Some(rules)
                    {
                        changed.push((name.clone(), chain.clone()));
                    }
                }
                if let Some(old) = &old {
                    for chain in old.nat_chains.keys() {
                        if !new.nat_chains.contains_key(chain) {
                            delete.insert(chain.clone());
                        }
                    }
                }
                new
            }
        };
        if rules.nat_chains.is_empty() && rules == ServiceRules::default() {
            continue;
        }
        endpoints += rules.endpoints;
        services.insert(name.clone(), rules);
    }
    // services gone (or now invalid): their chains go
    for (_, old) in prev_services {
        delete.extend(old.nat_chains.into_keys());
    }
    // a chain that moved between services (or was deleted and re-added) is rewritten, not deleted
    if !delete.is_empty() {
        let wanted: HashSet<&str> = services
            .values()
            .flat_map(|r| r.nat_chains.keys().map(String::as_str))
            .collect();
        delete.retain(|c| !wanted.contains(c.as_str()));
    }
    let (top_nat, top_filter) = render::render_top(&services, &desired.node, config, family);
    let mut nat_delete: Vec<String> = delete.into_iter().collect();
    let mut filter_delete = vec![];
    if !stale.is_empty() {
        // chains found in the kernel that nothing wants any more (sets: 10k services make 60k
        // chains)
        let mut wanted_nat: HashSet<&str> = top_nat.keys().map(String::as_str).collect();
        for r in services.values() {
            wanted_nat.extend(r.nat_chains.keys().map(String::as_str));
        }
        wanted_nat.extend(nat_delete.iter().map(String::as_str));
        let mut wanted_filter: HashSet<&str> = top_filter.keys().map(String::as_str).collect();
        let mut extra_nat = vec![];
        let mut extra_filter = vec![];
        for s in stale {
            let (table, chain) = s.split_once(' ').unwrap_or(("nat", s));
            let (wanted, del) = if table == "nat" {
                (&mut wanted_nat, &mut extra_nat)
            } else {
                (&mut wanted_filter, &mut extra_filter)
            };
            if wanted.insert(chain) {
                del.push(chain.to_string());
            }
        }
        nat_delete.extend(extra_nat);
        filter_delete.extend(extra_filter);
    }
    let mut text = String::new();
    let changes = {
        // our own chains, then the shared ones (declarations come first in the text anyway)
        let mut nat_all: Vec<(&String, &Vec<String>)> = changed
            .iter()
            .filter_map(|(name, chain)| services.get(name)?.nat_chains.get_key_value(chain))
            .collect();
        let mut filter_write: Vec<(&String, &Vec<String>)> = vec![];
        for (chain, rules) in &top_nat {
            if !had_prev || prev_state.top_nat.get(chain) != Some(rules) {
                nat_all.push((chain, rules));
            }
        }
        for (chain, rules) in &top_filter {
            if !had_prev || prev_state.top_filter.get(chain) != Some(rules) {
                filter_write.push((chain, rules));
            }
        }
        render::write_table(&mut text, "nat", &nat_all, &nat_delete, &hooks.0)
            + render::write_table(&mut text, "filter", &filter_write, &filter_delete, &hooks.1)
    };
    (
        Plan {
            text,
            changes,
            endpoints,
            state: FamilyState {
                services,
                top_nat,
                top_filter,
            },
        },
        skipped,
    )
}

fn command_error(command: &str, out: &std::process::Output) -> RouterError {
    RouterError::Command {
        command: command.to_string(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

fn spawn_error(command: &str, e: std::io::Error) -> RouterError {
    RouterError::Command {
        command: command.to_string(),
        status: "not started".into(),
        stderr: e.to_string(),
    }
}

/// Feed `text` to `<variant>-restore -w N --noflush` on stdin.
async fn restore(config: &IptablesConfig, family: IpFamily, text: &str) -> Result<(), RouterError> {
    let program = config.variant.program(family, "restore");
    let mut child = tokio::process::Command::new(&program)
        .args(["-w", &config.lock_wait_seconds.to_string(), "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(&program, e))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let write = stdin.write_all(text.as_bytes()).await;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| spawn_error(&program, e))?;
    if !out.status.success() {
        let mut err = command_error(&program, &out);
        if let RouterError::Command { stderr, .. } = &mut err {
            // point at the offending line, as iptables-restore only gives its number
            if let Some(n) = stderr
                .split("line ")
                .nth(1)
                .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|s| s.parse::<usize>().ok())
                && let Some(line) = text.lines().nth(n.saturating_sub(1))
            {
                stderr.push_str(&format!(" (line {n}: {line})"));
            }
        }
        return Err(err);
    }
    write.map_err(|e| spawn_error(&program, e))?;
    Ok(())
}

async fn run(program: &str, args: &[String]) -> Result<std::process::Output, RouterError> {
    tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| spawn_error(program, e))
}

/// What of ours is in the kernel, from one `iptables-save`.
#[derive(Debug, Default)]
struct Existing {
    /// Our chains, as `"<table> <chain>"`.
    chains: Vec<String>,
    /// Jumps from built-in chains into ours: (table, the saved `-A ...` line).
    jumps: Vec<(String, String)>,
}

impl Existing {
    /// The `-I` lines that add the hooks missing in `table`.
    fn missing_hooks(&self, table: &str) -> Vec<String> {
        render::hooks()
            .into_iter()
            .filter(|(t, _, _)| *t == table)
            .filter(|(t, chain, spec)| {
                !self
                    .jumps
                    .iter()
                    .any(|(jt, line)| jt == t && line == &format!("-A {chain} {spec}"))
            })
            .map(|(_, chain, spec)| format!("-I {chain} 1 {spec}"))
            .collect()
    }
}

/// Read our chains and hooks with one `iptables-save`.
async fn existing(config: &IptablesConfig, family: IpFamily) -> Result<Existing, RouterError> {
    let program = config.variant.program(family, "save");
    let out = run(&program, &[]).await?;
    if !out.status.success() {
        return Err(command_error(&program, &out));
    }
    let mut found = Existing::default();
    let mut table = String::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if let Some(rest) = line.strip_prefix(':') {
            if rest.starts_with(CHAIN_PREFIX)
                && let Some(chain) = rest.split_whitespace().next()
            {
                found.chains.push(format!("{table} {chain}"));
            }
        } else if let Some(rest) = line.strip_prefix("-A ")
            && !rest.starts_with(CHAIN_PREFIX)
            && rest.contains(&format!("-j {CHAIN_PREFIX}"))
        {
            found.jumps.push((table.clone(), line.to_string()));
        }
    }
    Ok(found)
}

/// Remove our jumps and chains from both tables of `family` in one restore; other chains and
/// rules are left alone.
async fn cleanup_family(config: &IptablesConfig, family: IpFamily) -> Result<(), RouterError> {
    let found = existing(config, family).await?;
    let mut text = String::new();
    for table in ["nat", "filter"] {
        let ours: Vec<String> = found
            .chains
            .iter()
            .filter_map(|c| c.strip_prefix(&format!("{table} ")).map(String::from))
            .collect();
        let unhook: Vec<String> = found
            .jumps
            .iter()
            .filter(|(t, _)| t == table)
            .map(|(_, line)| format!("-D {}", &line[3..]))
            .collect();
        // jumps go first: a chain still referenced cannot be deleted
        let mut section = String::new();
        render::write_table(&mut section, table, &[], &ours, &unhook);
        text.push_str(&section);
    }
    if !text.is_empty() {
        restore(config, family, &text).await?;
    }
    Ok(())
}

#[async_trait]
impl ServiceRouter for IptablesRouter {
    fn name(&self) -> &str {
        "iptables"
    }

    async fn sync(&self, desired: &ProxyState) -> Result<SyncReport, RouterError> {
        let mut programmed = self.programmed.lock().await;
        match self.sync_inner(desired, &mut programmed).await {
            Ok(r) => Ok(r),
            Err(e) => {
                // after an error, nothing is trusted: the next sync is a full one
                *programmed = Programmed::default();
                Err(e)
            }
        }
    }

    async fn cleanup(&self) -> Result<(), RouterError> {
        let mut programmed = self.programmed.lock().await;
        *programmed = Programmed::default();
        for &family in &self.config.families {
            cleanup_family(&self.config, family).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node_core::{Endpoint, NodeInfo, ServicePort};

    const NO_HOOKS: (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());

    fn state(n: usize, eps: usize) -> ProxyState {
        let mut s = ProxyState {
            node: NodeInfo {
                name: "n1".into(),
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                ..Default::default()
            },
            ..Default::default()
        };
        for i in 0..n {
            s.services.insert(
                ServicePortName::new("default", format!("svc-{i}"), "http"),
                ServicePort {
                    cluster_ips: vec![format!("10.96.{}.{}", i / 256, i % 256).parse().unwrap()],
                    port: 80,
                    endpoints: (0..eps)
                        .map(|e| {
                            Endpoint::ready(
                                format!("10.244.{}.{}", i % 250, e + 10).parse().unwrap(),
                                8080,
                            )
                        })
                        .collect(),
                    ..Default::default()
                },
            );
        }
        s
    }

    #[test]
    fn a_partial_sync_rewrites_only_the_changed_service() {
        let cfg = IptablesConfig::default();
        let s1 = state(50, 3);
        let (full, _) = plan_family(&cfg, &s1, None, None, IpFamily::V4, &[], &NO_HOOKS);
        assert_eq!(full.endpoints, 150);
        assert!(full.text.contains(":NODEKIT-SERVICES - [0:0]"));
        let mut s2 = s1.clone();
        let name = ServicePortName::new("default", "svc-7", "http");
        s2.services.get_mut(&name).unwrap().endpoints.pop();
        let (part, _) = plan_family(
            &cfg,
            &s2,
            Some(&s1),
            Some(full.state),
            IpFamily::V4,
            &[],
            &NO_HOOKS,
        );
        let declared: Vec<&str> = part.text.lines().filter(|l| l.starts_with(':')).collect();
        // the service's SVC chain is rewritten, the removed SEP chain deleted, nothing else
        assert_eq!(declared.len(), 2, "{}", part.text);
        assert!(declared.iter().any(|l| l.starts_with(":NODEKIT-SVC-")));
        assert_eq!(
            part.text.lines().filter(|l| l.starts_with("-X ")).count(),
            1
        );
        assert!(!part.text.contains("*filter"));
        // nothing changed: nothing to write
        let (none, _) = plan_family(
            &cfg,
            &s2,
            Some(&s2),
            Some(part.state),
            IpFamily::V4,
            &[],
            &NO_HOOKS,
        );
        assert!(none.text.is_empty(), "{}", none.text);
        assert_eq!(none.changes, 0);
    }

    #[test]
    fn removing_a_service_deletes_its_chains_and_dispatch_rule() {
        let cfg = IptablesConfig::default();
        let s1 = state(3, 2);
        let (full, _) = plan_family(&cfg, &s1, None, None, IpFamily::V4, &[], &NO_HOOKS);
        let mut s2 = s1.clone();
        s2.services
            .remove(&ServicePortName::new("default", "svc-1", "http"));
        let (part, _) = plan_family(
            &cfg,
            &s2,
            Some(&s1),
            Some(full.state),
            IpFamily::V4,
            &[],
            &NO_HOOKS,
        );
        assert_eq!(
            part.text.lines().filter(|l| l.starts_with("-X ")).count(),
            3
        );
        assert!(part.text.contains(":NODEKIT-SERVICES - [0:0]"));
        assert_eq!(
            part.text
                .lines()
                .filter(|l| l.starts_with("-A NODEKIT-SERVICES"))
                .count(),
            3,
            "two services and the node-port jump"
        );
    }

    #[test]
    fn stale_chains_found_in_the_kernel_are_removed_on_a_full_sync() {
        let cfg = IptablesConfig::default();
        let s = state(1, 1);
        let stale = vec![
            "nat NODEKIT-SVC-AAAAAAAAAAAAAAAA".to_string(),
            "nat NODEKIT-SERVICES".to_string(),
            "filter NODEKIT-OLD".to_string(),
        ];
        let (plan, _) = plan_family(&cfg, &s, None, None, IpFamily::V4, &stale, &NO_HOOKS);
        assert!(plan.text.contains("-X NODEKIT-SVC-AAAAAAAAAAAAAAAA\n"));
        assert!(plan.text.contains("-X NODEKIT-OLD\n"));
        assert!(!plan.text.contains("-X NODEKIT-SERVICES"));
    }

    #[test]
    fn invalid_service_ports_are_skipped_by_name() {
        let cfg = IptablesConfig::default();
        let mut s = state(2, 1);
        let name = ServicePortName::new("default", "svc-0", "http");
        s.services.get_mut(&name).unwrap().port = 0;
        let (plan, skipped) = plan_family(&cfg, &s, None, None, IpFamily::V4, &[], &NO_HOOKS);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].0, name);
        assert!(skipped[0].1.contains("default/svc-0:http"));
        assert_eq!(plan.endpoints, 1);
    }

    #[test]
    fn programs_are_named_per_variant_and_family() {
        assert_eq!(
            IptablesVariant::Legacy.program(IpFamily::V6, "restore"),
            "ip6tables-legacy-restore"
        );
        assert_eq!(
            IptablesVariant::Nft.program(IpFamily::V4, ""),
            "iptables-nft"
        );
    }
}
