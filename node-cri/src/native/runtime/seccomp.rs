//! The `RuntimeDefault` seccomp profile as a hand-built classic BPF program: system calls that
//! let a container reach beyond itself (kernel modules, kexec, keyrings, bpf, namespaces and
//! mounts without `CAP_SYS_ADMIN`, foreign memory without `CAP_SYS_PTRACE`...) answer `EPERM`;
//! foreign architectures are killed.

/// One BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFilter {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// System calls refused whatever the capabilities.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn always_denied() -> Vec<i64> {
    use libc::*;
    let mut v = vec![
        SYS_acct,
        SYS_add_key,
        SYS_bpf,
        SYS_clock_adjtime,
        SYS_clock_settime,
        SYS_delete_module,
        SYS_finit_module,
        SYS_init_module,
        SYS_kexec_load,
        SYS_kexec_file_load,
        SYS_keyctl,
        SYS_lookup_dcookie,
        SYS_nfsservctl,
        SYS_open_by_handle_at,
        SYS_perf_event_open,
        SYS_quotactl,
        SYS_reboot,
        SYS_request_key,
        SYS_settimeofday,
        SYS_swapon,
        SYS_swapoff,
        SYS_userfaultfd,
        SYS_get_mempolicy,
        SYS_set_mempolicy,
        SYS_mbind,
        SYS_move_pages,
        SYS_name_to_handle_at,
    ];
    #[cfg(target_arch = "x86_64")]
    // create_module (174), get_kernel_syms (177), query_module (178): removed from the kernel, still refused
    v.extend([
        174,
        177,
        178,
        SYS_ioperm,
        SYS_iopl,
        SYS_uselib,
        SYS_ustat,
        SYS__sysctl,
    ]);
    v
}

/// The RuntimeDefault filter for a process that keeps `caps` (capability numbers).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn runtime_default(caps: &[u32]) -> Vec<SockFilter> {
    use libc::*;
    let mut denied = always_denied();
    if !caps.contains(&super::caps::SYS_ADMIN) {
        denied.extend([
            SYS_mount,
            SYS_umount2,
            SYS_unshare,
            SYS_setns,
            SYS_pivot_root,
            SYS_fsopen,
            SYS_fsmount,
            SYS_fsconfig,
            SYS_fspick,
            SYS_move_mount,
            SYS_open_tree,
        ]);
    }
    if !caps.contains(&super::caps::SYS_PTRACE) {
        denied.extend([SYS_process_vm_readv, SYS_process_vm_writev, SYS_kcmp]);
    }
    let n = denied.len();
    let mut prog = vec![
        // arch check
        SockFilter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 4,
        },
        SockFilter {
            code: JEQ_K,
            jt: 1,
            jf: 0,
            k: AUDIT_ARCH,
        },
        SockFilter {
            code: RET_K,
            jt: 0,
            jf: 0,
            k: RET_KILL_PROCESS,
        },
        SockFilter {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    #[cfg(target_arch = "x86_64")]
    {
        // the x32 ABI (bit 30 set) is refused: jump to the EPERM return at the end
        prog.push(SockFilter {
            code: JGE_K,
            jt: (n + 1) as u8,
            jf: 0,
            k: 0x4000_0000,
        });
    }
    for (i, nr) in denied.iter().enumerate() {
        // on a match jump over the remaining comparisons and the ALLOW to the EPERM return
        prog.push(SockFilter {
            code: JEQ_K,
            jt: (n - i) as u8,
            jf: 0,
            k: *nr as u32,
        });
    }
    prog.push(SockFilter {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: RET_ALLOW,
    });
    prog.push(SockFilter {
        code: RET_K,
        jt: 0,
        jf: 0,
        k: RET_ERRNO | libc::EPERM as u32,
    });
    let _ = JGE_K;
    prog
}

/// Install a filter on the calling thread (it needs `CAP_SYS_ADMIN` or no_new_privs).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn install(prog: &[SockFilter]) -> Result<(), String> {
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const SockFilter,
    }
    let fprog = SockFprog {
        len: prog.len() as u16,
        filter: prog.as_ptr(),
    };
    // SAFETY: fprog points at a valid program that outlives the call.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const SockFprog,
        )
    };
    if rc != 0 {
        return Err(format!(
            "install seccomp filter: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// RuntimeDefault is not built for this architecture.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn runtime_default(_caps: &[u32]) -> Vec<SockFilter> {
    Vec::new()
}

/// RuntimeDefault is not built for this architecture.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn install(_prog: &[SockFilter]) -> Result<(), String> {
    Err("the RuntimeDefault seccomp profile is not available on this architecture".into())
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    /// Run the program the way the kernel does, for one syscall number.
    fn eval(prog: &[SockFilter], arch: u32, nr: u32) -> u32 {
        let mut pc = 0;
        let mut acc = 0u32;
        loop {
            let i = prog[pc];
            match i.code {
                LD_W_ABS => acc = if i.k == 4 { arch } else { nr },
                JEQ_K => {
                    pc += if acc == i.k {
                        i.jt as usize
                    } else {
                        i.jf as usize
                    }
                }
                JGE_K => {
                    pc += if acc >= i.k {
                        i.jt as usize
                    } else {
                        i.jf as usize
                    }
                }
                RET_K => return i.k,
                _ => panic!("unknown op"),
            }
            pc += 1;
        }
    }

    #[test]
    fn default_profile_denies_the_dangerous_and_allows_the_rest() {
        let prog = runtime_default(&[]);
        let eperm = RET_ERRNO | libc::EPERM as u32;
        assert_eq!(eval(&prog, AUDIT_ARCH, libc::SYS_keyctl as u32), eperm);
        assert_eq!(eval(&prog, AUDIT_ARCH, libc::SYS_mount as u32), eperm);
        assert_eq!(eval(&prog, AUDIT_ARCH, libc::SYS_read as u32), RET_ALLOW);
        assert_eq!(eval(&prog, AUDIT_ARCH, libc::SYS_execve as u32), RET_ALLOW);
        assert_eq!(
            eval(&prog, 0x4000_0003, libc::SYS_read as u32),
            RET_KILL_PROCESS
        );
        let admin = runtime_default(&[crate::native::runtime::caps::SYS_ADMIN]);
        assert_eq!(eval(&admin, AUDIT_ARCH, libc::SYS_mount as u32), RET_ALLOW);
        assert_eq!(eval(&admin, AUDIT_ARCH, libc::SYS_bpf as u32), eperm);
        // the last denied entry jumps exactly to the EPERM return
        let last = *always_denied().last().unwrap() as u32;
        assert_eq!(eval(&admin, AUDIT_ARCH, last), eperm);
    }
}
