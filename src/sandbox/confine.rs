//! What the job process gives up just before it becomes the job script
//! (design §10): capabilities down to a bounded set, `no_new_privs`, and
//! seccomp filters that refuse what a build never needs.
//!
//! The filters are compiled by the helper before it forks anything
//! ([`Confinement::compile`]), so the job process only installs ready BPF
//! programs. docs/drivers.md ("What a job can and cannot do") lists and
//! justifies every capability kept and every system call refused; keep the
//! two in step.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::error::SandboxError;
use super::sys::Sys;

/// The capabilities a job keeps: Docker's default set without `MKNOD`,
/// `NET_RAW`, `SETPCAP`, `SETFCAP` and `AUDIT_WRITE` (docs/drivers.md says
/// why each is kept or dropped).
pub const KEPT_CAPABILITIES: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (4, "CAP_FSETID"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
    (10, "CAP_NET_BIND_SERVICE"),
    (18, "CAP_SYS_CHROOT"),
];

/// [`KEPT_CAPABILITIES`] as a bit mask (`CapEff` in /proc/PID/status).
pub fn kept_capability_mask() -> u64 {
    KEPT_CAPABILITIES
        .iter()
        .fold(0, |mask, (bit, _)| mask | (1u64 << bit))
}

/// System calls refused with `EPERM`, whatever their arguments.
const DENIED: &[(libc::c_long, &str)] = &[
    // Kernel code and the machine itself.
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_delete_module, "delete_module"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_reboot, "reboot"),
    (libc::SYS_swapon, "swapon"),
    (libc::SYS_swapoff, "swapoff"),
    (libc::SYS_acct, "acct"),
    (libc::SYS_quotactl, "quotactl"),
    (libc::SYS_iopl, "iopl"),
    (libc::SYS_ioperm, "ioperm"),
    (libc::SYS_settimeofday, "settimeofday"),
    (libc::SYS_clock_settime, "clock_settime"),
    (libc::SYS_clock_adjtime, "clock_adjtime"),
    (libc::SYS_uselib, "uselib"),
    (libc::SYS_vhangup, "vhangup"),
    (libc::SYS_lookup_dcookie, "lookup_dcookie"),
    // Mounts, old and new API.
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_pivot_root, "pivot_root"),
    (libc::SYS_fsopen, "fsopen"),
    (libc::SYS_fsconfig, "fsconfig"),
    (libc::SYS_fsmount, "fsmount"),
    (libc::SYS_fspick, "fspick"),
    (libc::SYS_move_mount, "move_mount"),
    (libc::SYS_open_tree, "open_tree"),
    (libc::SYS_mount_setattr, "mount_setattr"),
    // Namespaces: joining one; creating one is refused by flag below.
    (libc::SYS_setns, "setns"),
    // Kernel attack surface a build does not need.
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_userfaultfd, "userfaultfd"),
    (libc::SYS_fanotify_init, "fanotify_init"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_request_key, "request_key"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_syslog, "syslog"),
    // Other processes' memory and descriptors.
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_process_madvise, "process_madvise"),
    (libc::SYS_pidfd_getfd, "pidfd_getfd"),
    (libc::SYS_kcmp, "kcmp"),
];

/// System calls that answer `ENOSYS`, as on a kernel without them, so that
/// callers fall back: `clone3` (its flags are behind a pointer a filter
/// cannot read; glibc falls back to `clone`, whose flags it can) and
/// io_uring (a large attack surface; callers fall back to plain IO).
const NOT_IMPLEMENTED: &[(libc::c_long, &str)] = &[
    (libc::SYS_clone3, "clone3"),
    (libc::SYS_io_uring_setup, "io_uring_setup"),
    (libc::SYS_io_uring_enter, "io_uring_enter"),
    (libc::SYS_io_uring_register, "io_uring_register"),
];

/// Namespace flags of `clone`; any of them makes `clone` fail with `EPERM`.
/// (`CLONE_NEWTIME` shares its bit with the exit signal in `clone`.)
const CLONE_NAMESPACES: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
/// The same for `unshare`, plus the time namespace.
const CLONE_NEWTIME: u64 = 0x80;

/// The compiled filters, in install order, each with a name for errors.
#[derive(Clone, Debug)]
pub struct Confinement {
    pub filters: Vec<(&'static str, BpfProgram)>,
}

fn compile_error(filter: &'static str, err: impl std::fmt::Display) -> SandboxError {
    SandboxError::CompileSeccomp {
        filter,
        reason: err.to_string(),
    }
}

/// A rule matching when every bit of `flag` is set in argument `arg`.
fn flag_rule(
    filter: &'static str,
    arg: u8,
    len: SeccompCmpArgLen,
    flag: u64,
) -> Result<SeccompRule, SandboxError> {
    let condition = SeccompCondition::new(arg, len, SeccompCmpOp::MaskedEq(flag), flag)
        .map_err(|err| compile_error(filter, err))?;
    SeccompRule::new(vec![condition]).map_err(|err| compile_error(filter, err))
}

fn program(
    filter: &'static str,
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    errno: i32,
    arch: TargetArch,
) -> Result<BpfProgram, SandboxError> {
    let filter_def = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .map_err(|err| compile_error(filter, err))?;
    BpfProgram::try_from(filter_def).map_err(|err| compile_error(filter, err))
}

/// The x32 ABI reaches the same kernel entry points under syscall numbers
/// with bit 30 set and the same audit architecture, past a filter keyed on
/// the x86_64 numbers: answer every such call `ENOSYS`. seccompiler has no
/// way to say "numbers from N up", so this one is four instructions by hand.
#[cfg(target_arch = "x86_64")]
fn x32_guard() -> BpfProgram {
    use seccompiler::sock_filter;
    // BPF_LD | BPF_W | BPF_ABS
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JGE_K: u16 = 0x05 | 0x30;
    const BPF_RET_K: u16 = 0x06;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    vec![
        // seccomp_data.nr is at offset 0.
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: BPF_JMP_JGE_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ]
}

impl Confinement {
    /// Compiles the filters for the machine kiln runs on.
    pub fn compile() -> Result<Confinement, SandboxError> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|err| compile_error("architecture", err))?;

        let mut denied: BTreeMap<i64, Vec<SeccompRule>> =
            DENIED.iter().map(|(nr, _)| (*nr, Vec::new())).collect();
        let mut clone_rules = Vec::new();
        let mut unshare_rules = Vec::new();
        for flag in CLONE_NAMESPACES {
            clone_rules.push(flag_rule("deny", 0, SeccompCmpArgLen::Qword, *flag)?);
            unshare_rules.push(flag_rule("deny", 0, SeccompCmpArgLen::Dword, *flag)?);
        }
        unshare_rules.push(flag_rule(
            "deny",
            0,
            SeccompCmpArgLen::Dword,
            CLONE_NEWTIME,
        )?);
        denied.insert(libc::SYS_clone, clone_rules);
        denied.insert(libc::SYS_unshare, unshare_rules);

        let not_implemented = NOT_IMPLEMENTED
            .iter()
            .map(|(nr, _)| (*nr, Vec::new()))
            .collect();

        #[allow(unused_mut)] // only x86_64 has the x32 guard
        let mut filters = vec![
            (
                "enosys",
                program("enosys", not_implemented, libc::ENOSYS, arch)?,
            ),
            ("deny", program("deny", denied, libc::EPERM, arch)?),
        ];
        #[cfg(target_arch = "x86_64")]
        filters.insert(0, ("x32", x32_guard()));
        Ok(Confinement { filters })
    }
}

/// Step 5, in the job process just before `execve`: bounding set, then
/// effective/permitted/inheritable, ambient cleared, `no_new_privs`, the
/// filters. Each step has its own error.
pub fn confine_job(sys: &mut impl Sys, confinement: &Confinement) -> Result<(), SandboxError> {
    let keep = kept_capability_mask();
    sys.drop_bounding_capabilities(keep)
        .map_err(SandboxError::BoundingSet)?;
    sys.set_capabilities(keep, 0)
        .map_err(SandboxError::SetCapabilities)?;
    sys.clear_ambient_capabilities()
        .map_err(SandboxError::AmbientCapabilities)?;
    sys.set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    for (name, program) in &confinement.filters {
        sys.install_seccomp(name, program)
            .map_err(|source| SandboxError::InstallSeccomp {
                filter: name,
                source,
            })?;
    }
    Ok(())
}

/// The names of the refused system calls, for docs and tests.
#[cfg(test)]
pub fn denied_syscall_names() -> impl Iterator<Item = &'static str> {
    DENIED.iter().map(|(_, name)| *name)
}
