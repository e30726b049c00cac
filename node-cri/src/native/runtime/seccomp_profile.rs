//! `Localhost` seccomp profiles (CRI `SecurityProfile{profile_type: Localhost, localhost_ref}`):
//! a JSON file on the node in the OCI runtime-spec `linux.seccomp` / Docker profile format
//! (`defaultAction`, `architectures`, `archMap`, `syscalls` with `names`, `action`,
//! `errnoRet`, `args`, `includes`/`excludes`; `flags`). The runtime reads and validates the
//! file when the container is created (a missing or malformed file, or an unknown action,
//! operator, architecture or flag, is a clear error naming the file and the field), and the
//! init compiles it with libseccomp and loads it just before running the container's program.
//!
//! Semantics follow runc: system call names this kernel or libseccomp does not know are
//! skipped; rules with the default action are skipped; several conditions on the same
//! argument become separate rules; `includes`/`excludes` match the container's capabilities,
//! the native architecture and the running kernel.

use std::ffi::{CString, c_int, c_uint, c_void};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A seccomp profile (the subset of the OCI/Docker format this runtime applies).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompProfile {
    /// The action of system calls no rule matches (`SCMP_ACT_ERRNO`, `SCMP_ACT_ALLOW`...).
    pub default_action: String,
    /// The errno of a default `SCMP_ACT_ERRNO` (EPERM when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// Architectures the filter accepts (`SCMP_ARCH_X86_64`...); the native one always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// Docker's per-architecture lists: the entry of the native architecture adds its
    /// sub-architectures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch_map: Vec<ArchMap>,
    /// Filter flags (`SECCOMP_FILTER_FLAG_LOG`, `SECCOMP_FILTER_FLAG_SPEC_ALLOW`,
    /// `SECCOMP_FILTER_FLAG_TSYNC`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// A seccomp notify listener (not supported: refused).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub listener_path: String,
    /// The rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<SyscallRule>,
}

/// Docker's `archMap` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    /// The architecture.
    pub architecture: String,
    /// Its sub-architectures (`SCMP_ARCH_X86` and `SCMP_ARCH_X32` for x86-64).
    #[serde(default)]
    pub sub_architectures: Vec<String>,
}

/// One rule: system calls by name, an action, optional argument conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyscallRule {
    /// The system calls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// One system call (the old Docker format).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The action.
    pub action: String,
    /// The errno of `SCMP_ACT_ERRNO` (EPERM when absent), the message of `SCMP_ACT_TRACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    /// Conditions on the arguments, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<ArgRule>,
    /// The rule applies only when these hold (Docker).
    #[serde(default)]
    pub includes: Condition,
    /// The rule does not apply when these hold (Docker).
    #[serde(default)]
    pub excludes: Condition,
}

/// A condition on one argument of a system call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArgRule {
    /// The argument (0..=5).
    pub index: u32,
    /// The value compared with.
    pub value: u64,
    /// The second value (the masked value of `SCMP_CMP_MASKED_EQ`).
    #[serde(default)]
    pub value_two: u64,
    /// `SCMP_CMP_EQ`, `NE`, `LT`, `LE`, `GT`, `GE` or `MASKED_EQ`.
    pub op: String,
}

/// Docker's `includes`/`excludes`: capabilities, architectures, a minimum kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Capabilities (`CAP_SYS_ADMIN`): any of them in the container's set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caps: Vec<String>,
    /// Architectures: the native one among them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arches: Vec<String>,
    /// A kernel version (`5.8`): the running kernel at least that.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub min_kernel: String,
}

impl Condition {
    fn is_empty(&self) -> bool {
        self.caps.is_empty() && self.arches.is_empty() && self.min_kernel.is_empty()
    }

    /// Whether every part that is given holds.
    fn holds(&self, caps: &[u32], kernel: (u32, u32)) -> bool {
        (self.caps.is_empty()
            || self
                .caps
                .iter()
                .any(|c| super::caps::number(c).is_some_and(|n| caps.contains(&n))))
            && (self.arches.is_empty() || self.arches.iter().any(|a| *a == native_arch()))
            && (self.min_kernel.is_empty()
                || parse_kernel(&self.min_kernel).is_some_and(|min| kernel >= min))
    }
}

/// The profile architecture name of the machine (`SCMP_ARCH_X86_64`).
pub fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "SCMP_ARCH_X86_64",
        "aarch64" => "SCMP_ARCH_AARCH64",
        "x86" => "SCMP_ARCH_X86",
        "arm" => "SCMP_ARCH_ARM",
        "powerpc64" => "SCMP_ARCH_PPC64LE",
        "s390x" => "SCMP_ARCH_S390X",
        "riscv64" => "SCMP_ARCH_RISCV64",
        _ => "SCMP_ARCH_NATIVE",
    }
}

const ARCHES: &[&str] = &[
    "X86",
    "X86_64",
    "X32",
    "ARM",
    "AARCH64",
    "MIPS",
    "MIPS64",
    "MIPS64N32",
    "MIPSEL",
    "MIPSEL64",
    "MIPSEL64N32",
    "PPC",
    "PPC64",
    "PPC64LE",
    "S390",
    "S390X",
    "PARISC",
    "PARISC64",
    "RISCV64",
    "LOONGARCH64",
];

/// libseccomp's name of a profile architecture (`SCMP_ARCH_X86_64` -> `x86_64`).
fn arch_token_name(a: &str) -> Option<String> {
    let short = a.strip_prefix("SCMP_ARCH_")?;
    ARCHES.contains(&short).then(|| short.to_ascii_lowercase())
}

fn parse_kernel(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim().split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn running_kernel() -> (u32, u32) {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|s| parse_kernel(&s))
        .unwrap_or((0, 0))
}

// libseccomp's ABI (seccomp.h of libseccomp 2.5)
const ACT_KILL_PROCESS: u32 = 0x8000_0000;
const ACT_KILL_THREAD: u32 = 0x0000_0000;
const ACT_TRAP: u32 = 0x0003_0000;
const ACT_ERRNO: u32 = 0x0005_0000;
const ACT_TRACE: u32 = 0x7ff0_0000;
const ACT_LOG: u32 = 0x7ffc_0000;
const ACT_ALLOW: u32 = 0x7fff_0000;
const FLTATR_CTL_NNP: c_int = 3;
const FLTATR_CTL_TSYNC: c_int = 4;
const FLTATR_CTL_LOG: c_int = 6;
const FLTATR_CTL_SSB: c_int = 7;
const ARCH_NATIVE: u32 = 0;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct ScmpArgCmp {
    arg: c_uint,
    op: c_int,
    datum_a: u64,
    datum_b: u64,
}

#[link(name = "seccomp")]
unsafe extern "C" {
    fn seccomp_init(def_action: u32) -> *mut c_void;
    fn seccomp_release(ctx: *mut c_void);
    fn seccomp_attr_set(ctx: *mut c_void, attr: c_int, value: u32) -> c_int;
    fn seccomp_arch_resolve_name(name: *const std::ffi::c_char) -> u32;
    fn seccomp_arch_add(ctx: *mut c_void, arch_token: u32) -> c_int;
    fn seccomp_syscall_resolve_name(name: *const std::ffi::c_char) -> c_int;
    fn seccomp_rule_add_array(
        ctx: *mut c_void,
        action: u32,
        syscall: c_int,
        arg_cnt: c_uint,
        arg_array: *const ScmpArgCmp,
    ) -> c_int;
    fn seccomp_load(ctx: *const c_void) -> c_int;
    fn seccomp_export_bpf(ctx: *const c_void, fd: c_int) -> c_int;
}

/// The libseccomp action of a profile action.
fn action(name: &str, errno: Option<u32>) -> Result<u32, String> {
    let errno = errno.unwrap_or(libc::EPERM as u32) & 0xffff;
    Ok(match name {
        "SCMP_ACT_ALLOW" => ACT_ALLOW,
        "SCMP_ACT_ERRNO" => ACT_ERRNO | errno,
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => ACT_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS" => ACT_KILL_PROCESS,
        "SCMP_ACT_TRAP" => ACT_TRAP,
        "SCMP_ACT_TRACE" => ACT_TRACE | errno,
        "SCMP_ACT_LOG" => ACT_LOG,
        "SCMP_ACT_NOTIFY" => {
            return Err("SCMP_ACT_NOTIFY needs a seccomp agent, which this runtime has not".into());
        }
        other => return Err(format!("unknown action {other:?}")),
    })
}

fn compare_op(name: &str) -> Result<c_int, String> {
    Ok(match name {
        "SCMP_CMP_NE" => 1,
        "SCMP_CMP_LT" => 2,
        "SCMP_CMP_LE" => 3,
        "SCMP_CMP_EQ" => 4,
        "SCMP_CMP_GE" => 5,
        "SCMP_CMP_GT" => 6,
        "SCMP_CMP_MASKED_EQ" => 7,
        other => return Err(format!("unknown operator {other:?}")),
    })
}

impl SeccompProfile {
    /// Read and validate a profile file; errors name the file and what is wrong with it.
    pub fn load(path: &Path) -> Result<Self, String> {
        if !path.is_absolute() {
            return Err(format!(
                "seccomp profile {}: the localhost_ref must be an absolute path on the node",
                path.display()
            ));
        }
        let data =
            std::fs::read(path).map_err(|e| format!("seccomp profile {}: {e}", path.display()))?;
        let profile: Self = serde_json::from_slice(&data)
            .map_err(|e| format!("seccomp profile {}: malformed: {e}", path.display()))?;
        profile
            .validate()
            .map_err(|e| format!("seccomp profile {}: {e}", path.display()))?;
        Ok(profile)
    }

    /// Check every action, operator, argument index, architecture and flag.
    pub fn validate(&self) -> Result<(), String> {
        action(&self.default_action, self.default_errno_ret)
            .map_err(|e| format!("defaultAction: {e}"))?;
        if !self.listener_path.is_empty() {
            return Err("listenerPath: seccomp notify listeners are not supported".into());
        }
        for a in self.architectures.iter().chain(
            self.arch_map
                .iter()
                .flat_map(|m| std::iter::once(&m.architecture).chain(m.sub_architectures.iter())),
        ) {
            arch_token_name(a).ok_or_else(|| format!("architectures: unknown {a:?}"))?;
        }
        for f in &self.flags {
            if ![
                "SECCOMP_FILTER_FLAG_TSYNC",
                "SECCOMP_FILTER_FLAG_LOG",
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
            ]
            .contains(&f.as_str())
            {
                return Err(format!("flags: unknown or unsupported flag {f:?}"));
            }
        }
        for (i, r) in self.syscalls.iter().enumerate() {
            let at = |e: String| format!("syscalls[{i}]: {e}");
            if r.names.is_empty() && r.name.is_empty() {
                return Err(at("no system call names".into()));
            }
            action(&r.action, r.errno_ret).map_err(|e| at(format!("action: {e}")))?;
            for (j, a) in r.args.iter().enumerate() {
                compare_op(&a.op).map_err(|e| at(format!("args[{j}].op: {e}")))?;
                if a.index > 5 {
                    return Err(at(format!(
                        "args[{j}].index {} is not an argument (0..=5)",
                        a.index
                    )));
                }
            }
            for c in [&r.includes, &r.excludes] {
                if let Some(bad) = c.caps.iter().find(|c| super::caps::number(c).is_none()) {
                    return Err(at(format!("unknown capability {bad:?}")));
                }
                if !c.min_kernel.is_empty() && parse_kernel(&c.min_kernel).is_none() {
                    return Err(at(format!("minKernel {:?} is not a version", c.min_kernel)));
                }
            }
        }
        Ok(())
    }

    /// The rules that apply to a container keeping `caps` on this machine.
    fn applicable(&self, caps: &[u32]) -> impl Iterator<Item = &SyscallRule> {
        let kernel = running_kernel();
        self.syscalls.iter().filter(move |r| {
            r.includes.holds(caps, kernel) && (r.excludes.is_empty() || !excludes(r, caps, kernel))
        })
    }

    /// Compile the profile with libseccomp for a container keeping `caps`.
    pub fn compile(&self, caps: &[u32]) -> Result<Filter, String> {
        let default = action(&self.default_action, self.default_errno_ret)?;
        // SAFETY: seccomp_init returns an owned context or null.
        let ctx = unsafe { seccomp_init(default) };
        if ctx.is_null() {
            return Err("seccomp_init failed".into());
        }
        let filter = Filter { ctx };
        let rc = |r: c_int, what: &dyn Fn() -> String| -> Result<(), String> {
            if r < 0 {
                Err(format!(
                    "{}: {}",
                    what(),
                    std::io::Error::from_raw_os_error(-r)
                ))
            } else {
                Ok(())
            }
        };
        // no_new_privs is the container's own setting, not libseccomp's default
        // SAFETY: attribute calls on our context.
        rc(
            unsafe { seccomp_attr_set(filter.ctx, FLTATR_CTL_NNP, 0) },
            &|| "seccomp: no_new_privs attribute".into(),
        )?;
        for f in &self.flags {
            let attr = match f.as_str() {
                "SECCOMP_FILTER_FLAG_LOG" => FLTATR_CTL_LOG,
                "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => FLTATR_CTL_SSB,
                _ => FLTATR_CTL_TSYNC,
            };
            // SAFETY: as above.
            rc(unsafe { seccomp_attr_set(filter.ctx, attr, 1) }, &|| {
                format!("seccomp flag {f}")
            })?;
        }
        let native = native_arch();
        let mut arches: Vec<&String> = self.architectures.iter().collect();
        for m in self.arch_map.iter().filter(|m| m.architecture == native) {
            arches.push(&m.architecture);
            arches.extend(m.sub_architectures.iter());
        }
        for a in arches {
            let name = arch_token_name(a).ok_or_else(|| format!("unknown architecture {a:?}"))?;
            let c = CString::new(name).unwrap_or_default();
            // SAFETY: a valid C string.
            let token = unsafe { seccomp_arch_resolve_name(c.as_ptr()) };
            if token == ARCH_NATIVE {
                continue; // libseccomp was built without it
            }
            // SAFETY: adding an architecture to our context.
            let r = unsafe { seccomp_arch_add(filter.ctx, token) };
            if r != -libc::EEXIST {
                rc(r, &|| format!("seccomp architecture {a}"))?;
            }
        }
        for r in self.applicable(caps) {
            let act = action(&r.action, r.errno_ret)?;
            if act == default {
                continue;
            }
            let conds: Vec<ScmpArgCmp> = r
                .args
                .iter()
                .map(|a| {
                    Ok(ScmpArgCmp {
                        arg: a.index,
                        op: compare_op(&a.op)?,
                        datum_a: a.value,
                        datum_b: a.value_two,
                    })
                })
                .collect::<Result<_, String>>()?;
            let mut indexes: Vec<u32> = conds.iter().map(|c| c.arg).collect();
            indexes.sort();
            indexes.dedup();
            // conditions on the same argument cannot be one libseccomp rule: one rule each
            let groups: Vec<Vec<ScmpArgCmp>> = if indexes.len() < conds.len() {
                conds.iter().map(|c| vec![*c]).collect()
            } else {
                vec![conds]
            };
            for name in r.names.iter().chain(std::iter::once(&r.name)) {
                if name.is_empty() {
                    continue;
                }
                let c = CString::new(name.as_str()).unwrap_or_default();
                // SAFETY: a valid C string.
                let nr = unsafe { seccomp_syscall_resolve_name(c.as_ptr()) };
                if nr < 0 {
                    continue; // not a system call of this kernel or libseccomp: skipped, as runc does
                }
                for g in &groups {
                    // SAFETY: g is a valid array of g.len() conditions.
                    let r = unsafe {
                        seccomp_rule_add_array(
                            filter.ctx,
                            act,
                            nr,
                            g.len() as c_uint,
                            if g.is_empty() {
                                std::ptr::null()
                            } else {
                                g.as_ptr()
                            },
                        )
                    };
                    rc(r, &|| format!("seccomp rule for {name}"))?;
                }
            }
        }
        Ok(filter)
    }
}

fn excludes(r: &SyscallRule, caps: &[u32], kernel: (u32, u32)) -> bool {
    let c = &r.excludes;
    (!c.caps.is_empty()
        && c.caps
            .iter()
            .any(|n| super::caps::number(n).is_some_and(|n| caps.contains(&n))))
        || (!c.arches.is_empty() && c.arches.iter().any(|a| *a == native_arch()))
        || (!c.min_kernel.is_empty()
            && parse_kernel(&c.min_kernel).is_some_and(|min| kernel >= min))
}

/// A compiled filter (a libseccomp context), loaded into the calling thread or exported.
pub struct Filter {
    ctx: *mut c_void,
}

impl Filter {
    /// Load the filter into the calling thread (needs `CAP_SYS_ADMIN` or no_new_privs).
    pub fn load(self) -> Result<(), String> {
        // SAFETY: loading our context.
        let r = unsafe { seccomp_load(self.ctx) };
        if r < 0 {
            return Err(format!(
                "load the seccomp profile: {}",
                std::io::Error::from_raw_os_error(-r)
            ));
        }
        Ok(())
    }

    /// The BPF program libseccomp generated (`struct sock_filter` entries, 8 bytes each).
    pub fn export_bpf(&self) -> Result<Vec<u8>, String> {
        let mut f = tempfile_in_memory()?;
        use std::io::{Read, Seek};
        use std::os::fd::AsRawFd;
        // SAFETY: writing the program into our own descriptor.
        let r = unsafe { seccomp_export_bpf(self.ctx, f.as_raw_fd()) };
        if r < 0 {
            return Err(format!(
                "export the seccomp program: {}",
                std::io::Error::from_raw_os_error(-r)
            ));
        }
        let mut v = Vec::new();
        f.rewind().map_err(|e| e.to_string())?;
        f.read_to_end(&mut v).map_err(|e| e.to_string())?;
        Ok(v)
    }
}

fn tempfile_in_memory() -> Result<std::fs::File, String> {
    // SAFETY: memfd_create with a valid name; the descriptor is owned by the File.
    let fd = unsafe { libc::memfd_create(c"seccomp-bpf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()));
    }
    use std::os::fd::FromRawFd;
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

impl Drop for Filter {
    fn drop(&mut self) {
        // SAFETY: releasing the context we own.
        unsafe { seccomp_release(self.ctx) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn profiles_load_validate_and_compile() {
        let dir = tempfile::tempdir().unwrap();
        let ok = write(
            dir.path(),
            "ok.json",
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                "comment": "unknown fields are ignored",
                "syscalls": [
                  {"names": ["mkdir", "mkdirat", "no_such_call"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                  {"names": ["kill"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 1, "value": 15, "op": "SCMP_CMP_EQ"}]},
                  {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "args": [
                     {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                     {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
                  {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
                  {"name": "reboot", "action": "SCMP_ACT_KILL_PROCESS", "includes": {"caps": ["CAP_SYS_BOOT"]}}
                ]}"#,
        );
        let p = SeccompProfile::load(&ok).unwrap();
        assert_eq!(p.syscalls.len(), 5);
        // the reboot rule applies only with CAP_SYS_BOOT
        assert_eq!(p.applicable(&[]).count(), 4);
        assert_eq!(p.applicable(&[22]).count(), 5);
        let small = p.compile(&[]).unwrap().export_bpf().unwrap();
        let big = p.compile(&[22]).unwrap().export_bpf().unwrap();
        assert!(
            !small.is_empty() && small.len().is_multiple_of(8),
            "{}",
            small.len()
        );
        assert!(big.len() > small.len(), "the reboot rule adds instructions");
        // the errno 13 (EACCES) is in the program: SECCOMP_RET_ERRNO | 13
        let words: Vec<u32> = small
            .chunks(8)
            .map(|i| u32::from_ne_bytes(i[4..8].try_into().unwrap()))
            .collect();
        assert!(words.contains(&(0x0005_0000 | 13)), "{words:x?}");

        let missing = SeccompProfile::load(&dir.path().join("absent.json")).unwrap_err();
        assert!(
            missing.contains("absent.json") && missing.contains("No such file"),
            "{missing}"
        );
        let bad = write(dir.path(), "bad.json", "{\"defaultAction\": ");
        let e = SeccompProfile::load(&bad).unwrap_err();
        assert!(e.contains("bad.json") && e.contains("malformed"), "{e}");
        let relative = SeccompProfile::load(Path::new("profiles/x.json")).unwrap_err();
        assert!(relative.contains("absolute"), "{relative}");
        for (text, what) in [
            (r#"{"defaultAction": "SCMP_ACT_MAYBE"}"#, "defaultAction"),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]}"#,
                "syscalls[0]: args[0].op",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
                "syscalls[0]: args[0].index",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}"#,
                "architectures",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW_LISTENER"]}"#,
                "flags",
            ),
            (
                r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}"#,
                "syscalls[0]: action",
            ),
        ] {
            let f = write(dir.path(), "invalid.json", text);
            let e = SeccompProfile::load(&f).unwrap_err();
            assert!(
                e.contains("invalid.json") && e.contains(what),
                "{what}: {e}"
            );
        }
    }

    #[test]
    fn kernel_versions_compare() {
        assert_eq!(parse_kernel("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel("5.8"), Some((5, 8)));
        assert_eq!(parse_kernel("x"), None);
        let c = Condition {
            min_kernel: "4.8".into(),
            ..Default::default()
        };
        assert!(c.holds(&[], (6, 1)) && !c.holds(&[], (4, 4)));
    }
}
