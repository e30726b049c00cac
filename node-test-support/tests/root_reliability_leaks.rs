//! The leak checker against planted leaks, as root: each kind of resource is planted, must show
//! up in the diff under its own identity, and must vanish from it once removed.

use std::path::Path;
use std::process::{Child, Command};

use node_test_support::leaks::{Inventory, LeakKind, LeakScope, cgroup_hierarchies};
use node_test_support::{NetnsFixture, require_command, require_root};

fn sh(script: &str) {
    let st = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(st.success(), "{script} failed");
}

/// Plant with `plant`, expect exactly `id` of `kind` leaked; remove with `remove`, expect none.
fn check(scope: &LeakScope, kind: LeakKind, id: &str, plant: impl FnOnce(), remove: impl FnOnce()) {
    let before = Inventory::take(scope);
    plant();
    let leaked = Inventory::take(scope).diff(&before);
    let ids: Vec<&str> = leaked.of(kind).iter().map(|r| r.id.as_str()).collect();
    remove();
    assert!(
        ids.contains(&id),
        "planted {kind} {id} not detected; diff: {leaked}"
    );
    let after = Inventory::take(scope).diff(&before);
    assert!(
        after.of(kind).iter().all(|r| r.id != id),
        "{kind} {id} still reported after removal: {after}"
    );
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_kind_of_planted_leak_is_detected() {
    let t = "every_kind_of_planted_leak_is_detected";
    if !require_root(t) || !require_command(t, "nft") || !require_command(t, "ip") {
        return;
    }
    let pid = std::process::id();
    let tmp = tempfile::tempdir().unwrap();
    let ns = NetnsFixture::new("leaks").unwrap();
    let cg_parent = format!("nkt-leaks-{pid}");
    let marker = format!("nkt-leak-marker-{pid}");
    let scope = LeakScope::default()
        .netns_named(format!("nkt-{pid}-"))
        .in_netns(ns.name())
        .ipam_dir(tmp.path().join("networks"))
        .mount_root(tmp.path())
        .cgroup_parent(&cg_parent)
        .process_marker(&marker);
    assert!(
        Inventory::take(&scope).errors.is_empty(),
        "{:?}",
        Inventory::take(&scope).errors
    );

    // a network namespace
    let name = format!("nkt-{pid}-99-planted");
    check(
        &scope,
        LeakKind::Netns,
        &format!("/run/netns/{name}"),
        || sh(&format!("ip netns add {name}")),
        || sh(&format!("ip netns del {name}")),
    );

    // a pod veth and a bridge inside the scoped namespace
    check(
        &scope,
        LeakKind::Link,
        &format!("{}/nkv0000deadbeef", ns.name()),
        || {
            ns.sh("ip link add nkv0000deadbeef type veth peer name nkt-peer")
                .unwrap();
        },
        || {
            ns.sh("ip link del nkv0000deadbeef").unwrap();
        },
    );
    check(
        &scope,
        LeakKind::Link,
        &format!("{}/nk0", ns.name()),
        || {
            ns.sh("ip link add nk0 type bridge").unwrap();
        },
        || {
            ns.sh("ip link del nk0").unwrap();
        },
    );

    // an IP lease
    let lease = tmp.path().join("networks/nodekit/10.88.0.7");
    check(
        &scope,
        LeakKind::IpLease,
        &lease.display().to_string(),
        || {
            std::fs::create_dir_all(lease.parent().unwrap()).unwrap();
            std::fs::write(&lease, "c0ffee\neth0").unwrap();
        },
        || std::fs::remove_file(&lease).unwrap(),
    );

    // an overlay mount and an nsfs bind mount under the root
    let ov = tmp.path().join("ov");
    for d in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir_all(ov.join(d)).unwrap();
    }
    let merged = ov.join("merged");
    check(
        &scope,
        LeakKind::Mount,
        &merged.display().to_string(),
        || {
            sh(&format!(
                "mount -t overlay overlay -o lowerdir={0}/lower,upperdir={0}/upper,workdir={0}/work {0}/merged",
                ov.display()
            ))
        },
        || sh(&format!("umount {}", merged.display())),
    );
    let nsfile = tmp.path().join("netns-file");
    std::fs::write(&nsfile, "").unwrap();
    check(
        &scope,
        LeakKind::Mount,
        &nsfile.display().to_string(),
        || {
            sh(&format!(
                "mount --bind {} {}",
                ns.path().display(),
                nsfile.display()
            ))
        },
        || sh(&format!("umount {}", nsfile.display())),
    );

    // a cgroup in every hierarchy (v1 controllers and the unified one)
    let hiers: Vec<_> = cgroup_hierarchies()
        .into_iter()
        .filter(|h| std::fs::metadata(h.join("cgroup.procs")).is_ok())
        .collect();
    assert!(!hiers.is_empty(), "no cgroup hierarchy mounted");
    for h in &hiers {
        let dir = h.join(&cg_parent).join("pod-x");
        check(
            &scope,
            LeakKind::Cgroup,
            &dir.display().to_string(),
            || std::fs::create_dir_all(&dir).unwrap(),
            || {
                std::fs::remove_dir(&dir).unwrap();
            },
        );
        std::fs::remove_dir(h.join(&cg_parent)).unwrap();
    }

    // a process marked by its command line
    let mut child = None;
    let proc_id = std::cell::RefCell::new(String::new());
    let before = Inventory::take(&scope);
    child.replace(Killed(
        Command::new("sh")
            .args(["-c", "sleep 60", &marker])
            .spawn()
            .unwrap(),
    ));
    let leaked = Inventory::take(&scope).diff(&before);
    let pid_s = format!("{}@", child.as_ref().unwrap().0.id());
    assert!(
        leaked
            .of(LeakKind::Process)
            .iter()
            .any(|r| r.id.starts_with(&pid_s)),
        "a process with {marker} in its command line not detected: {leaked}"
    );
    drop(child.take());
    assert!(
        Inventory::take(&scope)
            .diff(&before)
            .of(LeakKind::Process)
            .is_empty(),
        "a killed process still reported"
    );

    // a process marked by its environment
    let before = Inventory::take(&scope_env(&scope, &marker));
    let tagged = Killed(
        Command::new("sleep")
            .arg("60")
            .env("NKT_LEAK_TAG", &marker)
            .spawn()
            .unwrap(),
    );
    let leaked = Inventory::take(&scope_env(&scope, &marker)).diff(&before);
    let pid_s = format!("{}@", tagged.0.id());
    drop(tagged);
    assert!(
        leaked
            .of(LeakKind::Process)
            .iter()
            .any(|r| r.id.starts_with(&pid_s)),
        "a process with NKT_LEAK_TAG={marker} in its environment not detected: {leaked}"
    );

    // a process marked by its cgroup (the unified hierarchy or pids on v1)
    let h = hiers
        .iter()
        .find(|h| h.ends_with("pids") || std::fs::metadata(h.join("cgroup.controllers")).is_ok())
        .expect("a pids or unified hierarchy");
    let dir = h.join(&cg_parent).join("proc");
    std::fs::create_dir_all(&dir).unwrap();
    let before = Inventory::take(&scope);
    let sleeper = Killed(Command::new("sleep").arg("60").spawn().unwrap());
    std::fs::write(dir.join("cgroup.procs"), sleeper.0.id().to_string()).unwrap();
    *proc_id.borrow_mut() = format!("{}@", sleeper.0.id());
    let leaked = Inventory::take(&scope).diff(&before);
    drop(sleeper);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let _ = std::fs::remove_dir(&dir);
    let _ = std::fs::remove_dir(h.join(&cg_parent));
    assert!(
        leaked
            .of(LeakKind::Process)
            .iter()
            .any(|r| r.id.starts_with(proc_id.borrow().as_str())),
        "a process in {} not detected: {leaked}",
        dir.display()
    );

    // an nftables table of ours inside the scoped namespace (never the host's ruleset)
    check(
        &scope,
        LeakKind::NftTable,
        &format!("{}/inet nodekit_planted", ns.name()),
        || {
            ns.sh("nft add table inet nodekit_planted").unwrap();
        },
        || {
            ns.sh("nft delete table inet nodekit_planted").unwrap();
        },
    );
    assert!(!Path::new(&format!("/run/netns/{name}")).exists());
}

fn scope_env(scope: &LeakScope, marker: &str) -> LeakScope {
    scope.clone().env_marker(format!("NKT_LEAK_TAG={marker}"))
}
