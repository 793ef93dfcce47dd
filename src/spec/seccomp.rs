//! The seccomp profile of the default policy: allow by default, refuse the system calls that
//! reach past the container (a deny-list with the reach of Docker's default allow-list).
//!
//! Everything listed fails with `EPERM` (`clone3` with `ENOSYS`, so that libc falls back to
//! `clone`, whose flags a filter can see). Only the native architecture is listed: a 32-bit
//! or x32 system call from the container (another way in to the same kernel entry points)
//! hits libseccomp's bad-architecture action and kills the caller. Runtimes skip names their
//! libseccomp does not know, so newer calls can be listed safely.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use crate::error::SandboxError;

/// System calls refused outright, with `EPERM`: module loading, kexec, mounts and mount
/// namespaces' API, namespace creation and entry, tracing and other processes' memory, BPF and
/// perf, the kernel keyring, userfaultfd, handle-based opens, reboot, swap, the kernel log,
/// process accounting, clock setting, I/O ports, `io_uring` (its operations bypass seccomp).
pub(crate) const DENIED: &[&str] = &[
    // kernel modules and kexec
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "query_module",
    "get_kernel_syms",
    "kexec_load",
    "kexec_file_load",
    // mounts
    "mount",
    "umount",
    "umount2",
    "pivot_root",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    // namespaces
    "unshare",
    "setns",
    // other processes
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    // kernel interfaces
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "open_by_handle_at",
    "name_to_handle_at",
    "lookup_dcookie",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    // the machine
    "reboot",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "quotactl",
    "quotactl_fd",
    "nfsservctl",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "stime",
    "iopl",
    "ioperm",
    "vm86",
    "vm86old",
    "uselib",
    "_sysctl",
    // another process's fds (the launcher's are not dumpable anyway)
    "pidfd_getfd",
    // charged to the user namespace's owner, beyond the sandbox's own quotas
    "fanotify_init",
];

/// System calls that fail as unsupported (`ENOSYS`), so that programs take their fallback:
/// POSIX message queues, whose bytes are charged to the user namespace's owner.
const UNSUPPORTED: &[&str] = &[
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
];

/// System calls that take a file mode, and the index of the mode argument: a mode with the
/// setuid or setgid bit is refused, so that no file a container writes into a host directory
/// (a writable bind) is a set-id program for host users. (`openat2` carries its mode in a
/// struct a filter cannot read: it fails with `ENOSYS` and libc falls back to `openat`.)
const MODE_ARGUMENT: &[(&str, usize)] = &[
    ("chmod", 1),
    ("fchmod", 1),
    ("fchmodat", 2),
    ("fchmodat2", 2),
    ("open", 2),
    ("openat", 3),
    ("creat", 1),
    ("mkdir", 1),
    ("mkdirat", 2),
    ("mknod", 1),
    ("mknodat", 2),
];

/// The set-id mode bits.
const SET_ID_BITS: &[u64] = &[libc::S_ISUID as u64, libc::S_ISGID as u64];

/// Socket families that a network namespace does not isolate: `AF_VSOCK` reaches the
/// hypervisor and binds ports shared with the whole machine.
const UNISOLATED_SOCKET_FAMILIES: &[u64] = &[libc::AF_VSOCK as u64];

/// `clone` flags that make namespaces; `clone` with any of them is refused.
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The architecture of this build, as the seccomp filter names it.
fn native_arch() -> Result<Arch, SandboxError> {
    if cfg!(target_arch = "x86_64") {
        Ok(Arch::ScmpArchX86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(Arch::ScmpArchAarch64)
    } else {
        Err(SandboxError::invalid(
            "security.seccomp",
            "the default profile is written for x86_64 and aarch64 only",
        ))
    }
}

fn errno_rule(names: &[&str], errno: i32) -> Result<LinuxSyscall, SandboxError> {
    Ok(LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(errno as u32)
        .build()?)
}

/// The default profile. `gvisor`: the profile runsc applies inside its Sentry
/// (`--oci-seccomp`), which answers every errno rule with `EPERM` whatever `errnoRet` says
/// (runsc 20221219): the `ENOSYS` rules would then break libc's fallbacks (a `clone3` that
/// fails with `EPERM` fails every thread start: Python's `threading` among them), so they
/// are left out there. What they guard is the Sentry's own there: its namespaces and
/// message queues, not the host's; `openat2` it does not implement.
pub(crate) fn default_profile(gvisor: bool) -> Result<LinuxSeccomp, SandboxError> {
    let mut syscalls = vec![errno_rule(DENIED, libc::EPERM)?];
    if !gvisor {
        // Its flags sit behind a pointer that a filter cannot read.
        syscalls.push(errno_rule(&["clone3"], libc::ENOSYS)?);
        syscalls.push(errno_rule(UNSUPPORTED, libc::ENOSYS)?);
        syscalls.push(errno_rule(&["openat2"], libc::ENOSYS)?);
    }
    // Preallocation could hold host disk past a file's size (and the output limit):
    // `EOPNOTSUPP` makes libc's posix_fallocate write the bytes instead.
    syscalls.push(errno_rule(&["fallocate"], libc::EOPNOTSUPP)?);
    for &(call, index) in MODE_ARGUMENT {
        for &bit in SET_ID_BITS {
            let mut rule = errno_rule(&[call], libc::EPERM)?;
            rule.set_args(Some(vec![
                LinuxSeccompArgBuilder::default()
                    .index(index)
                    .value(bit)
                    .value_two(bit)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()?,
            ]));
            syscalls.push(rule);
        }
    }
    for &family in UNISOLATED_SOCKET_FAMILIES {
        for call in ["socket", "socketpair"] {
            let mut rule = errno_rule(&[call], libc::EAFNOSUPPORT)?;
            rule.set_args(Some(vec![
                LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(family)
                    .op(LinuxSeccompOperator::ScmpCmpEq)
                    .build()?,
            ]));
            syscalls.push(rule);
        }
    }
    // The flags are clone's first argument on x86_64 and aarch64. One rule per flag: a filter
    // can test "all bits of a mask set", not "any bit set".
    for &flag in CLONE_NAMESPACE_FLAGS {
        let mut rule = errno_rule(&["clone"], libc::EPERM)?;
        rule.set_args(Some(vec![
            LinuxSeccompArgBuilder::default()
                .index(0usize)
                .value(flag)
                .value_two(flag)
                .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                .build()?,
        ]));
        syscalls.push(rule);
    }
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![native_arch()?])
        .syscalls(syscalls)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_list_is_denied() {
        for name in [
            "mount",
            "umount2",
            "unshare",
            "setns",
            "ptrace",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "userfaultfd",
            "open_by_handle_at",
            "reboot",
            "swapon",
            "swapoff",
            "syslog",
            "acct",
            "pivot_root",
            "pidfd_getfd",
            "fanotify_init",
        ] {
            assert!(DENIED.contains(&name), "{name}");
        }
        let profile = default_profile(false).unwrap();
        let rules = profile.syscalls().as_ref().unwrap();
        let clone_rules = rules
            .iter()
            .filter(|r| r.names() == &["clone".to_owned()])
            .count();
        assert_eq!(clone_rules, CLONE_NAMESPACE_FLAGS.len());
        for (call, _) in MODE_ARGUMENT {
            let set_id_rules = rules
                .iter()
                .filter(|r| r.names() == &[(*call).to_owned()])
                .count();
            assert_eq!(set_id_rules, SET_ID_BITS.len(), "{call}");
        }
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
    }
}
