//! Linux capabilities by name, containerd's default set, and the CRI add/drop arithmetic.

use std::collections::BTreeSet;

/// Capability names in kernel order (index = capability number).
pub const NAMES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// containerd's default capabilities for a container.
pub const DEFAULT: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// `CAP_SYS_ADMIN`.
pub const SYS_ADMIN: u32 = 21;
/// `CAP_SYS_PTRACE`.
pub const SYS_PTRACE: u32 = 19;

/// The number of a capability, with or without its `CAP_` prefix, any case.
pub fn number(name: &str) -> Option<u32> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("CAP_").unwrap_or(&n);
    NAMES.iter().position(|c| *c == n).map(|i| i as u32)
}

/// The capability set of a container: the default set (or every capability when privileged),
/// plus `add`, minus `drop`; `ALL` is understood in both, as containerd does.
pub fn compute(privileged: bool, add: &[String], drop: &[String]) -> Result<BTreeSet<u32>, String> {
    let all: BTreeSet<u32> = (0..NAMES.len() as u32).collect();
    if privileged {
        return Ok(all);
    }
    let parse = |names: &[String]| -> Result<(bool, BTreeSet<u32>), String> {
        let mut set = BTreeSet::new();
        let mut has_all = false;
        for n in names {
            if n.eq_ignore_ascii_case("ALL") {
                has_all = true;
            } else {
                set.insert(number(n).ok_or_else(|| format!("unknown capability {n:?}"))?);
            }
        }
        Ok((has_all, set))
    };
    let (add_all, add) = parse(add)?;
    let (drop_all, drop) = parse(drop)?;
    let mut caps: BTreeSet<u32> = if add_all {
        all
    } else {
        DEFAULT.iter().filter_map(|n| number(n)).collect()
    };
    if drop_all {
        caps.clear();
    }
    caps.extend(add);
    caps.retain(|c| !drop.contains(c));
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn default_set_with_adds_and_drops() {
        let caps = compute(
            false,
            &s(&["NET_ADMIN", "cap_sys_time"]),
            &s(&["CAP_CHOWN", "KILL"]),
        )
        .unwrap();
        assert!(caps.contains(&12) && caps.contains(&25));
        assert!(!caps.contains(&0) && !caps.contains(&5));
        assert!(caps.contains(&number("MKNOD").unwrap()));
        assert!(!caps.contains(&SYS_ADMIN));
        let none = compute(false, &s(&["NET_RAW"]), &s(&["ALL"])).unwrap();
        assert_eq!(none.into_iter().collect::<Vec<_>>(), vec![13]);
        assert_eq!(compute(true, &[], &[]).unwrap().len(), NAMES.len());
        assert!(
            compute(false, &s(&["BOGUS"]), &[])
                .unwrap_err()
                .contains("BOGUS")
        );
    }
}
