//! The setup sequence, step by step, over the [`Sys`] seam.
//!
//! The root is built in two pivots, as bubblewrap does: first a scratch
//! tmpfs becomes the root with the host's root below it at `/oldroot`, so
//! host paths stay reachable (even those under the host's `/tmp`, which the
//! scratch tmpfs covered only until the pivot moved it); then the new root
//! is assembled at `/newroot` and becomes `/` with `pivot_root(".", ".")`,
//! and the whole old tree (scratch and host) is detached.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sched::CloneFlags;

use super::confine::{Confinement, confine_job};
use super::error::SandboxError;
use super::plan::{HostEntry, Mask, Plan, PlannedRoot};
use super::spec::{Profile, SCRIPT_PATH_INSIDE};
use super::sys::Sys;

/// Where the scratch tmpfs is mounted before the first pivot.
const SCRATCH_MOUNT: &str = "/tmp";
const NEW_ROOT: &str = "/newroot";
const OLD_ROOT: &str = "/oldroot";
/// Scratch directories: the mount points an image lacks, and an empty layer.
const SCAFFOLD: &str = "/scaffold";
const EMPTY_LAYER: &str = "/empty-layer";
const EMPTY_FILE: &str = "/empty-file";
/// The empty read-only file bound over masked `/proc` files.
const PROC_MASK_FILE: &str = "/proc-mask";

/// `/proc` entries that show the host's kernel, hardware or other users'
/// secrets, hidden as Docker/runc hide them (plus `kmsg`): a file is
/// covered by an empty file, a directory by an empty read-only tmpfs.
const PROC_MASKED: &[&str] = &[
    "acpi",
    "asound",
    "interrupts",
    "kcore",
    "keys",
    "kmsg",
    "latency_stats",
    "sched_debug",
    "scsi",
    "timer_list",
    "timer_stats",
];
/// `/proc` entries that change the host's kernel when written: read-only.
const PROC_READ_ONLY: &[&str] = &["bus", "fs", "irq", "sys", "sysrq-trigger"];

/// The device nodes of the minimal `/dev`, with their numbers.
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// The namespaces the helper unshares before forking the sandbox's PID 1.
///
/// The mount namespace is not among them: PID 1 unshares it itself (see
/// [`build_root`]), because `pivot_root` moves the root of every process of
/// the namespace, and the helper must keep the host's view to write its
/// status file and clean its cgroup up.
pub fn namespaces(plan: &Plan) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    // The build process shares the host's PID namespace: the sandboxes it
    // starts name their cgroups and judge their leftovers by host pids.
    if plan.profile == Profile::Job {
        flags |= CloneFlags::CLONE_NEWPID;
    }
    if !plan.network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if plan.user_namespace.is_some() {
        flags |= CloneFlags::CLONE_NEWUSER;
    }
    flags
}

/// Step 1, in the helper: unshare, and map the caller to root inside when it
/// is not root already.
pub fn enter_namespaces(sys: &mut impl Sys, plan: &Plan) -> Result<(), SandboxError> {
    let flags = namespaces(plan);
    sys.unshare(flags).map_err(|source| SandboxError::Unshare {
        namespaces: format!("{flags:?}"),
        source,
    })?;
    if let Some((uid, gid)) = plan.user_namespace {
        // setgroups must be denied before an unprivileged gid_map write.
        for (file, contents) in [
            ("/proc/self/setgroups", "deny".to_owned()),
            ("/proc/self/uid_map", format!("0 {uid} 1\n")),
            ("/proc/self/gid_map", format!("0 {gid} 1\n")),
        ] {
            let path = Path::new(file);
            sys.write_control_file(path, &contents).map_err(|source| {
                SandboxError::WriteProcFile {
                    path: path.to_owned(),
                    source,
                }
            })?;
        }
    }
    Ok(())
}

/// Step 1b, in PID 1 once the helper has put it in its cgroup: a cgroup
/// namespace, so the job's `/proc/self/cgroup` is `/` and a cgroup
/// filesystem (which it cannot mount anyway) would show only its own.
pub fn enter_cgroup_namespace(sys: &mut impl Sys) -> Result<(), SandboxError> {
    let flags = CloneFlags::CLONE_NEWCGROUP;
    sys.unshare(flags).map_err(|source| SandboxError::Unshare {
        namespaces: format!("{flags:?}"),
        source,
    })
}

/// Step 2, in PID 1: hostname and loopback, in the fresh UTS and net namespaces.
pub fn configure_namespaces(sys: &mut impl Sys, plan: &Plan) -> Result<(), SandboxError> {
    sys.sethostname(&plan.hostname)
        .map_err(SandboxError::Hostname)?;
    if !plan.network {
        sys.loopback_up().map_err(SandboxError::Loopback)?;
    }
    Ok(())
}

fn inside(base: &str, path: &Path) -> PathBuf {
    Path::new(base).join(path.strip_prefix("/").unwrap_or(path))
}

fn on_host(path: &Path) -> PathBuf {
    inside(OLD_ROOT, path)
}

fn mkdir(sys: &mut impl Sys, path: &Path, mode: u32) -> Result<(), SandboxError> {
    sys.mkdir(path, mode).map_err(|source| SandboxError::Mkdir {
        path: path.to_owned(),
        source,
    })
}

/// `mkdir -p` below `base`, which exists.
fn mkdir_all(sys: &mut impl Sys, base: &str, path: &Path) -> Result<(), SandboxError> {
    let mut current = PathBuf::from(base);
    for component in path.strip_prefix("/").unwrap_or(path).components() {
        current.push(component);
        match sys.mkdir(&current, 0o755) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(source) => {
                return Err(SandboxError::Mkdir {
                    path: current,
                    source,
                });
            }
        }
    }
    Ok(())
}

fn mount_tmpfs(
    sys: &mut impl Sys,
    target: &Path,
    flags: MsFlags,
    options: &str,
) -> Result<(), SandboxError> {
    sys.mount(
        Some(Path::new("tmpfs")),
        target,
        Some("tmpfs"),
        flags,
        Some(options),
    )
    .map_err(|source| SandboxError::MountTmpfs {
        target: target.to_owned(),
        source,
    })
}

fn bind(
    sys: &mut impl Sys,
    source: &Path,
    target: &Path,
    flags: MsFlags,
) -> Result<(), SandboxError> {
    sys.mount(Some(source), target, None, MsFlags::MS_BIND | flags, None)
        .map_err(|errno| SandboxError::MountBind {
            source_path: source.to_owned(),
            target: target.to_owned(),
            source: errno,
        })
}

fn mount_overlay(
    sys: &mut impl Sys,
    target: &Path,
    flags: MsFlags,
    options: String,
) -> Result<(), SandboxError> {
    sys.mount(
        Some(Path::new("overlay")),
        target,
        Some("overlay"),
        flags,
        Some(&options),
    )
    .map_err(|source| SandboxError::MountOverlay {
        target: target.to_owned(),
        options,
        source,
    })
}

fn join_lowerdirs(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

fn create_file(
    sys: &mut impl Sys,
    path: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<(), SandboxError> {
    sys.create_file(path, contents, mode)
        .map_err(|source| SandboxError::CreateFile {
            path: path.to_owned(),
            source,
        })
}

fn symlink(sys: &mut impl Sys, target: &Path, link: &Path) -> Result<(), SandboxError> {
    sys.symlink(target, link)
        .map_err(|source| SandboxError::Symlink {
            link: link.to_owned(),
            source,
        })
}

/// Step 3, in PID 1: the whole filesystem, ending with the new root as `/`
/// and the host's mount tree detached.
pub fn build_root(sys: &mut impl Sys, plan: &Plan) -> Result<(), SandboxError> {
    let flags = CloneFlags::CLONE_NEWNS;
    sys.unshare(flags).map_err(|source| SandboxError::Unshare {
        namespaces: format!("{flags:?}"),
        source,
    })?;
    // Nothing below may propagate back to the host's mount namespace.
    sys.mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(SandboxError::MakeMountsPrivate)?;

    let scratch = Path::new(SCRATCH_MOUNT);
    mount_tmpfs(
        sys,
        scratch,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755",
    )?;
    sys.chdir(scratch).map_err(|source| SandboxError::Chdir {
        path: scratch.to_owned(),
        source,
    })?;
    for dir in [NEW_ROOT, OLD_ROOT, EMPTY_LAYER] {
        mkdir(sys, &inside(SCRATCH_MOUNT, Path::new(dir)), 0o755)?;
    }
    sys.pivot_root(scratch, &inside(SCRATCH_MOUNT, Path::new(OLD_ROOT)))
        .map_err(|source| SandboxError::PivotRoot {
            new_root: scratch.to_owned(),
            source,
        })?;
    sys.chdir(Path::new("/"))
        .map_err(|source| SandboxError::Chdir {
            path: "/".into(),
            source,
        })?;

    let new_root = Path::new(NEW_ROOT);
    match &plan.root {
        PlannedRoot::Host { entries, masks } => build_host_view(sys, plan, entries, masks)?,
        PlannedRoot::Image { layers } => {
            // The image is read-only: the directories the sandbox mounts on
            // come from a scaffold layer laid on top of it.
            mkdir(sys, Path::new(SCAFFOLD), 0o755)?;
            write_skeleton(sys, SCAFFOLD, plan)?;
            // Bind targets in the read-only image need their mount points.
            for target in plan.binds.iter().map(|bind| &bind.target) {
                mkdir_all(sys, SCAFFOLD, target)?;
            }
            let mut lower = vec![PathBuf::from(SCAFFOLD)];
            lower.extend(layers.iter().map(|l| on_host(l)));
            mount_overlay(
                sys,
                new_root,
                MsFlags::MS_RDONLY,
                format!("lowerdir={}", join_lowerdirs(&lower)),
            )?;
        }
    }

    mount_workspace(sys, plan)?;
    mount_kernel_filesystems(sys, plan.user_namespace.is_some())?;
    protect_proc(sys)?;
    let binds = clone_bind_sources(sys, plan)?;

    sys.chdir(new_root).map_err(|source| SandboxError::Chdir {
        path: new_root.to_owned(),
        source,
    })?;
    let here = Path::new(".");
    sys.pivot_root(here, here)
        .map_err(|source| SandboxError::PivotRoot {
            new_root: new_root.to_owned(),
            source,
        })?;
    // The old root (scratch tmpfs, host tree below it) now sits on top of
    // the new one: detach it all.
    sys.umount_detach(here)
        .map_err(SandboxError::DetachOldRoot)?;
    sys.chdir(Path::new("/"))
        .map_err(|source| SandboxError::Chdir {
            path: "/".into(),
            source,
        })?;
    attach_binds(sys, binds)
}

/// The mount points and the job script, below `base` (a tmpfs root or the
/// image's scaffold layer).
fn write_skeleton(sys: &mut impl Sys, base: &str, plan: &Plan) -> Result<(), SandboxError> {
    for dir in ["proc", "dev", "tmp", ".kiln"] {
        match sys.mkdir(&inside(base, Path::new(dir)), 0o755) {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(source) => {
                return Err(SandboxError::Mkdir {
                    path: inside(base, Path::new(dir)),
                    source,
                });
            }
        }
    }
    mkdir_all(sys, base, &plan.workspace_path)?;
    create_file(
        sys,
        &inside(base, Path::new(SCRIPT_PATH_INSIDE)),
        &plan.script,
        0o555,
    )
}

fn build_host_view(
    sys: &mut impl Sys,
    plan: &Plan,
    entries: &[HostEntry],
    masks: &[Mask],
) -> Result<(), SandboxError> {
    let new_root = Path::new(NEW_ROOT);
    mount_tmpfs(
        sys,
        new_root,
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=0755",
    )?;
    for entry in entries {
        match entry {
            HostEntry::Empty(name) => mkdir(sys, &inside(NEW_ROOT, Path::new(name)), 0o755)?,
            HostEntry::Symlink { name, target } => {
                symlink(sys, target, &inside(NEW_ROOT, Path::new(name)))?
            }
            HostEntry::Bind(name) => {
                let target = inside(NEW_ROOT, Path::new(name));
                mkdir(sys, &target, 0o755)?;
                bind(sys, &on_host(Path::new(name)), &target, MsFlags::MS_REC)?;
            }
        }
    }
    write_skeleton(sys, NEW_ROOT, plan)?;
    // Mount points of binds below a directory the view shows empty (such
    // as /root) are made now, while the root tmpfs is still writable; never
    // below a bound host directory (that would write on the host).
    for target in plan.binds.iter().map(|bind| &bind.target) {
        let top = target
            .strip_prefix("/")
            .ok()
            .and_then(|rest| rest.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned());
        let shown_empty = entries
            .iter()
            .any(|entry| matches!(entry, HostEntry::Empty(name) if Some(name) == top.as_ref()));
        if shown_empty {
            mkdir_all(sys, NEW_ROOT, target)?;
        }
    }
    if masks.iter().any(|m| matches!(m, Mask::File(_))) {
        create_file(sys, Path::new(EMPTY_FILE), b"", 0o444)?;
    }
    for mask in masks {
        match mask {
            Mask::Dir(path) => mount_tmpfs(
                sys,
                &inside(NEW_ROOT, path),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                "mode=0755,size=4k",
            )?,
            Mask::File(path) => bind(
                sys,
                Path::new(EMPTY_FILE),
                &inside(NEW_ROOT, path),
                MsFlags::empty(),
            )?,
        }
    }
    sys.make_read_only_recursive(new_root)
        .map_err(|source| SandboxError::MakeReadOnly {
            target: new_root.to_owned(),
            source,
        })
}

/// The writable binds (build caches), step one, while the host is still
/// reachable: each source becomes a detached mount, never following a
/// symlink (the plan refused sources that cross one).
fn clone_bind_sources(
    sys: &mut impl Sys,
    plan: &Plan,
) -> Result<Vec<(OwnedFd, PathBuf, bool)>, SandboxError> {
    plan.binds
        .iter()
        .map(|bind| {
            let host_path = on_host(&bind.source);
            let tree = sys
                .clone_tree(&host_path, bind.recursive)
                .map_err(|errno| SandboxError::CloneBindSource {
                    source_path: bind.source.clone(),
                    source: errno,
                })?;
            Ok((tree, bind.target.clone(), bind.read_only))
        })
        .collect()
}

/// Step two, after the host's tree is detached: each bind is attached at
/// its target, resolved in the sandbox's own root, so a symlink in the
/// workspace (`lnk -> /oldroot/srv`) can lead nowhere outside it. They come
/// last so that they may lie in the workspace or `/tmp`. A missing mount
/// point is made where the filesystem is writable; on the read-only root it
/// is a clear error.
fn attach_binds(
    sys: &mut impl Sys,
    binds: Vec<(OwnedFd, PathBuf, bool)>,
) -> Result<(), SandboxError> {
    for (tree, target, read_only) in binds {
        mkdir_all(sys, "/", &target)?;
        sys.attach_tree(&tree, &target)
            .map_err(|errno| SandboxError::AttachBind {
                target: target.clone(),
                source: errno,
            })?;
        if read_only {
            sys.make_read_only_recursive(&target)
                .map_err(|source| SandboxError::MakeReadOnly {
                    target: target.clone(),
                    source,
                })?;
        }
    }
    Ok(())
}

/// The workspace's lower layers as `mount(2)` names them. The option
/// string is limited to one page, so when every layer lies in one
/// directory (the build's layer cache) the mount is made from inside it
/// with bare names: a few dozen layers fit whatever the directory's path.
fn workspace_lowerdirs(sys: &mut impl Sys, plan: &Plan) -> Result<Vec<PathBuf>, SandboxError> {
    let layers = &plan.workspace_lower;
    if layers.is_empty() {
        return Ok(vec![PathBuf::from(EMPTY_LAYER)]);
    }
    let parent = layers[0].parent();
    let bare = |layer: &PathBuf| {
        let name = layer.file_name()?.to_str()?;
        let plain = !name.contains([',', ':', '\\']);
        (layer.parent() == parent && plain).then(|| PathBuf::from(name))
    };
    match (parent, layers.iter().map(bare).collect::<Option<Vec<_>>>()) {
        (Some(parent), Some(names)) if layers.len() > 1 => {
            let dir = on_host(parent);
            sys.chdir(&dir)
                .map_err(|source| SandboxError::Chdir { path: dir, source })?;
            Ok(names)
        }
        _ => Ok(layers.iter().map(|l| on_host(l)).collect()),
    }
}

fn mount_workspace(sys: &mut impl Sys, plan: &Plan) -> Result<(), SandboxError> {
    let lower = workspace_lowerdirs(sys, plan)?;
    // `volatile`: no syncfs of the upper filesystem when the overlay goes
    // away. Without it every job's end flushes the whole host filesystem
    // holding the upper dir (a disk cache flush, plus other programs' dirty
    // data). The upper layer is read back through the page cache right
    // after the job; the store makes what it keeps durable itself, and a
    // crash mid-job leaves a job that is rerun anyway.
    let mut options = format!(
        "lowerdir={},upperdir={},workdir={},volatile",
        join_lowerdirs(&lower),
        on_host(&plan.workspace_upper).display(),
        on_host(&plan.workspace_work).display()
    );
    if plan.user_namespace.is_some() {
        // trusted.* xattrs are out of reach in a user namespace.
        options.push_str(",userxattr");
    }
    mount_overlay(
        sys,
        &inside(NEW_ROOT, &plan.workspace_path),
        MsFlags::empty(),
        options,
    )?;
    sys.chdir(Path::new("/"))
        .map_err(|source| SandboxError::Chdir {
            path: "/".into(),
            source,
        })
}

fn mount_kernel_filesystems(
    sys: &mut impl Sys,
    in_user_namespace: bool,
) -> Result<(), SandboxError> {
    let kernel_fs =
        |sys: &mut _, fstype: &'static str, target: PathBuf, flags, data: Option<&str>| {
            Sys::mount(
                sys,
                Some(Path::new(fstype)),
                &target,
                Some(fstype),
                flags,
                data,
            )
            .map_err(|source| SandboxError::MountKernelFs {
                fstype,
                target,
                source,
            })
        };
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    kernel_fs(
        sys,
        "proc",
        inside(NEW_ROOT, Path::new("proc")),
        quiet,
        None,
    )?;

    let dev = inside(NEW_ROOT, Path::new("dev"));
    mount_tmpfs(
        sys,
        &dev,
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        "mode=0755,size=64k",
    )?;
    for (name, major, minor) in DEVICES {
        let node = dev.join(name);
        if in_user_namespace {
            // mknod is refused in a user namespace: bind the host's nodes.
            create_file(sys, &node, b"", 0o666)?;
            bind(
                sys,
                &on_host(&Path::new("/dev").join(name)),
                &node,
                MsFlags::empty(),
            )?;
        } else {
            // Cheaper than a bind mount, and nothing to unmount later.
            sys.mknod_char(&node, 0o666, *major, *minor)
                .map_err(|source| SandboxError::CreateFile {
                    path: node.clone(),
                    source,
                })?;
        }
    }
    for (name, target) in DEV_SYMLINKS {
        symlink(sys, Path::new(target), &dev.join(name))?;
    }
    mkdir(sys, &dev.join("shm"), 0o1777)?;
    mount_tmpfs(sys, &dev.join("shm"), quiet, "mode=1777")?;
    mkdir(sys, &dev.join("pts"), 0o755)?;
    kernel_fs(
        sys,
        "devpts",
        dev.join("pts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620"),
    )?;

    mount_tmpfs(
        sys,
        &inside(NEW_ROOT, Path::new("tmp")),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=1777",
    )
}

/// Masks and read-only binds over the job's `/proc` ([`PROC_MASKED`],
/// [`PROC_READ_ONLY`]). An entry this kernel does not have is skipped.
/// They hold because the job has no `CAP_SYS_ADMIN` and no mount system
/// call (see `confine`).
fn protect_proc(sys: &mut impl Sys) -> Result<(), SandboxError> {
    use nix::errno::Errno;
    let proc_dir = inside(NEW_ROOT, Path::new("proc"));
    let mask_file = Path::new(PROC_MASK_FILE);
    create_file(sys, mask_file, b"", 0o444)?;
    for name in PROC_MASKED {
        let path = proc_dir.join(name);
        let masked = match sys.mount(Some(mask_file), &path, None, MsFlags::MS_BIND, None) {
            Ok(()) => sys.make_read_only_recursive(&path),
            Err(Errno::ENOENT) => Ok(()),
            // A directory: an empty read-only tmpfs instead.
            Err(Errno::ENOTDIR) => sys.mount(
                Some(Path::new("tmpfs")),
                &path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0555,size=4k"),
            ),
            Err(errno) => Err(errno),
        };
        masked.map_err(|source| SandboxError::MaskProc { path, source })?;
    }
    for name in PROC_READ_ONLY {
        let path = proc_dir.join(name);
        let read_only = match sys.mount(
            Some(&path),
            &path,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ) {
            Ok(()) => sys.make_read_only_recursive(&path),
            Err(Errno::ENOENT) => Ok(()),
            Err(errno) => Err(errno),
        };
        read_only.map_err(|source| SandboxError::ReadOnlyProc { path, source })?;
    }
    Ok(())
}

/// The job's argv and environment, as `execve` wants them.
pub fn job_command(plan: &Plan) -> Result<(CString, Vec<CString>, Vec<CString>), SandboxError> {
    let c = |s: String| {
        CString::new(s).map_err(|_| SandboxError::InvalidSpec("NUL byte in the job command".into()))
    };
    let program = c("/bin/sh".to_owned())?;
    let args = vec![program.clone(), c(SCRIPT_PATH_INSIDE.to_owned())?];
    let env = plan
        .env
        .iter()
        .map(|(k, v)| c(format!("{k}={v}")))
        .collect::<Result<_, _>>()?;
    Ok((program, args, env))
}

/// Step 4, in the job process: enter the workspace, give up privileges
/// ([`confine_job`]) and become the script. Returns only on failure.
pub fn exec_job(sys: &mut impl Sys, plan: &Plan, confinement: &Confinement) -> SandboxError {
    let (program, args, env) = match job_command(plan) {
        Ok(command) => command,
        Err(err) => return err,
    };
    if let Err(source) = sys.chdir(&plan.workspace_path) {
        return SandboxError::Chdir {
            path: plan.workspace_path.clone(),
            source,
        };
    }
    // The build process starts sandboxes itself: it keeps what they need.
    if plan.profile == Profile::Job
        && let Err(err) = confine_job(sys, confinement)
    {
        return err;
    }
    let source = sys.exec(&program, &args, &env);
    SandboxError::Exec {
        program: "/bin/sh".to_owned(),
        source,
    }
}
