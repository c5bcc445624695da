//! The syscall seam: every privileged call the sandbox makes goes through
//! [`Sys`], so the exact sequence of setup steps can be recorded and checked
//! by unit tests without root (the same idea as youki's `Syscall` trait).

use std::ffi::{CStr, CString, OsStr};
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::unistd::{ForkResult, Pid};

/// The result of [`Sys::fork`], seen from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forked {
    Parent { child: Pid },
    Child,
}

pub trait Sys {
    fn unshare(&mut self, namespaces: CloneFlags) -> nix::Result<()>;
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// Makes `target` and every mount below it read-only.
    fn make_read_only_recursive(&mut self, target: &Path) -> nix::Result<()>;
    fn umount_detach(&mut self, target: &Path) -> nix::Result<()>;
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> nix::Result<()>;
    fn chdir(&mut self, path: &Path) -> nix::Result<()>;
    fn mkdir(&mut self, path: &Path, mode: u32) -> nix::Result<()>;
    fn remove_dir(&mut self, path: &Path) -> nix::Result<()>;
    /// Creates a new file (it must not exist) holding `contents`.
    fn create_file(&mut self, path: &Path, contents: &[u8], mode: u32) -> nix::Result<()>;
    fn symlink(&mut self, target: &Path, link: &Path) -> nix::Result<()>;
    /// Creates a character device node.
    fn mknod_char(&mut self, path: &Path, mode: u32, major: u64, minor: u64) -> nix::Result<()>;
    fn sethostname(&mut self, name: &str) -> nix::Result<()>;
    /// Writes an existing control file (`/proc/self/uid_map`, cgroup files).
    fn write_control_file(&mut self, path: &Path, contents: &str) -> nix::Result<()>;
    /// Sets the `lo` interface of the current network namespace up.
    fn loopback_up(&mut self) -> nix::Result<()>;
    fn set_parent_death_signal(&mut self) -> nix::Result<()>;
    fn fork(&mut self) -> nix::Result<Forked>;
    /// `open_tree(OPEN_TREE_CLONE)`: a detached copy of the mount at `path`
    /// (which must not be a symlink), to attach later with
    /// [`Sys::attach_tree`] wherever the caller can no longer see `path`;
    /// `recursive` takes the mounts below it too.
    fn clone_tree(&mut self, path: &Path, recursive: bool) -> nix::Result<OwnedFd>;
    /// `move_mount`: attaches a tree from [`Sys::clone_tree`] at `target`.
    fn attach_tree(&mut self, tree: &OwnedFd, target: &Path) -> nix::Result<()>;
    /// Drops every capability not in `keep` (a bit mask) from the bounding set.
    fn drop_bounding_capabilities(&mut self, keep: u64) -> nix::Result<()>;
    /// `capset`: effective = permitted = `permitted`, and `inheritable`.
    fn set_capabilities(&mut self, permitted: u64, inheritable: u64) -> nix::Result<()>;
    fn clear_ambient_capabilities(&mut self) -> nix::Result<()>;
    fn set_no_new_privs(&mut self) -> nix::Result<()>;
    /// Installs a compiled seccomp filter on the calling thread.
    fn install_seccomp(
        &mut self,
        name: &str,
        program: &[seccompiler::sock_filter],
    ) -> nix::Result<()>;
    /// Replaces the process image; returns only on failure.
    fn exec(&mut self, program: &CStr, args: &[CString], env: &[CString]) -> Errno;
}

/// The real thing, on nix and libc.
#[derive(Debug, Default)]
pub struct RealSys;

fn path_cstring(path: &Path) -> nix::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)
}

fn io_errno(err: std::io::Error) -> Errno {
    err.raw_os_error().map_or(Errno::EIO, Errno::from_raw)
}

impl Sys for RealSys {
    fn unshare(&mut self, namespaces: CloneFlags) -> nix::Result<()> {
        nix::sched::unshare(namespaces)
    }

    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }

    fn make_read_only_recursive(&mut self, target: &Path) -> nix::Result<()> {
        let target =
            CString::new(target.as_os_str().as_encoded_bytes()).map_err(|_| Errno::EINVAL)?;
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_RDONLY,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: `target` is a valid NUL-terminated string and `attr` a
        // properly initialised `mount_attr` whose size we pass along.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::AT_RECURSIVE as libc::c_uint,
                &attr as *const libc::mount_attr,
                std::mem::size_of::<libc::mount_attr>(),
            )
        };
        Errno::result(rc).map(drop)
    }

    fn umount_detach(&mut self, target: &Path) -> nix::Result<()> {
        nix::mount::umount2(target, MntFlags::MNT_DETACH)
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }

    fn chdir(&mut self, path: &Path) -> nix::Result<()> {
        nix::unistd::chdir(path)
    }

    fn mkdir(&mut self, path: &Path, mode: u32) -> nix::Result<()> {
        DirBuilder::new().mode(mode).create(path).map_err(io_errno)
    }

    fn remove_dir(&mut self, path: &Path) -> nix::Result<()> {
        std::fs::remove_dir(path).map_err(io_errno)
    }

    fn create_file(&mut self, path: &Path, contents: &[u8], mode: u32) -> nix::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(io_errno)?;
        file.write_all(contents).map_err(io_errno)
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> nix::Result<()> {
        std::os::unix::fs::symlink(target, link).map_err(io_errno)
    }

    fn mknod_char(&mut self, path: &Path, mode: u32, major: u64, minor: u64) -> nix::Result<()> {
        use nix::sys::stat::{Mode, SFlag, makedev, mknod};
        mknod(
            path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        )?;
        // mknod applies the umask; device nodes must be exactly `mode`.
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            path,
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )
    }

    fn sethostname(&mut self, name: &str) -> nix::Result<()> {
        nix::unistd::sethostname(OsStr::new(name))
    }

    fn write_control_file(&mut self, path: &Path, contents: &str) -> nix::Result<()> {
        // One write(2): kernel control files take their value in one go.
        let mut file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_errno)?;
        file.write_all(contents.as_bytes()).map_err(io_errno)
    }

    fn loopback_up(&mut self) -> nix::Result<()> {
        loopback_up()
    }

    fn set_parent_death_signal(&mut self) -> nix::Result<()> {
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
    }

    fn clone_tree(&mut self, path: &Path, recursive: bool) -> nix::Result<OwnedFd> {
        let path = path_cstring(path)?;
        let mut flags =
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_SYMLINK_NOFOLLOW as u32;
        if recursive {
            flags |= libc::AT_RECURSIVE as u32;
        }
        // SAFETY: open_tree reads the NUL-terminated path and returns a new
        // descriptor or -1; no memory is shared with the kernel afterwards.
        let fd =
            unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
        if fd < 0 {
            return Err(Errno::last());
        }
        let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
        // SAFETY: the kernel just returned this descriptor, owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn attach_tree(&mut self, tree: &OwnedFd, target: &Path) -> nix::Result<()> {
        let empty = c"";
        let target = path_cstring(target)?;
        // SAFETY: both paths are NUL-terminated and outlive the call; `tree`
        // is an open descriptor from open_tree.
        let result = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if result < 0 {
            return Err(Errno::last());
        }
        Ok(())
    }

    fn fork(&mut self) -> nix::Result<Forked> {
        // SAFETY: the sandbox helper is single-threaded (it runs before any
        // runtime or thread is started), so the child may do anything.
        match unsafe { nix::unistd::fork() }? {
            ForkResult::Parent { child } => Ok(Forked::Parent { child }),
            ForkResult::Child => Ok(Forked::Child),
        }
    }

    fn drop_bounding_capabilities(&mut self, keep: u64) -> nix::Result<()> {
        for cap in 0..64u32 {
            if keep & (1 << cap) != 0 {
                continue;
            }
            // SAFETY: plain prctl with integer arguments.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            match Errno::result(rc) {
                Ok(_) => {}
                // Past the kernel's last capability: done.
                Err(Errno::EINVAL) if cap > 0 => return Ok(()),
                Err(errno) => return Err(errno),
            }
        }
        Ok(())
    }

    fn set_capabilities(&mut self, permitted: u64, inheritable: u64) -> nix::Result<()> {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
        let mut header = Header {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let half = |mask: u64, high: bool| (if high { mask >> 32 } else { mask }) as u32;
        let data = [false, true].map(|high| Data {
            effective: half(permitted, high),
            permitted: half(permitted, high),
            inheritable: half(inheritable, high),
        });
        // SAFETY: version 3 takes a header and two data structs, laid out
        // as the kernel's `__user_cap_header_struct`/`__user_cap_data_struct`.
        let rc =
            unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
        Errno::result(rc).map(drop)
    }

    fn clear_ambient_capabilities(&mut self) -> nix::Result<()> {
        // SAFETY: plain prctl with integer arguments.
        let rc = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        };
        Errno::result(rc).map(drop)
    }

    fn set_no_new_privs(&mut self) -> nix::Result<()> {
        nix::sys::prctl::set_no_new_privs()
    }

    fn install_seccomp(
        &mut self,
        _name: &str,
        program: &[seccompiler::sock_filter],
    ) -> nix::Result<()> {
        seccompiler::apply_filter(program).map_err(|err| match err {
            seccompiler::Error::Prctl(io) | seccompiler::Error::Seccomp(io) => io_errno(io),
            _ => Errno::EINVAL,
        })
    }

    fn exec(&mut self, program: &CStr, args: &[CString], env: &[CString]) -> Errno {
        match nix::unistd::execve(program, args, env) {
            Ok(never) => match never {},
            Err(errno) => errno,
        }
    }
}

/// `SIOCGIFFLAGS` then `SIOCSIFFLAGS` with `IFF_UP` on `lo`: no `ip` binary,
/// no netlink.
fn loopback_up() -> nix::Result<()> {
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let raw = Errno::result(raw)?;
    // SAFETY: `raw` is a freshly created descriptor that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: `request` is a valid `ifreq` naming an interface, as both
    // ioctls require; the kernel writes only within it.
    unsafe {
        Errno::result(libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut request,
        ))?;
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        Errno::result(libc::ioctl(
            socket.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &request,
        ))?;
    }
    Ok(())
}

#[cfg(test)]
pub mod recording {
    //! A [`Sys`] that performs nothing and records every call, one line each.

    use super::*;

    #[derive(Debug, Default)]
    pub struct RecordingSys {
        pub calls: Vec<String>,
        /// The call (a prefix of its recorded line) that fails, with
        /// `fail_with` or else `EPERM`.
        pub fail_on: Option<String>,
        pub fail_with: Option<Errno>,
    }

    impl RecordingSys {
        fn record(&mut self, line: String) -> nix::Result<()> {
            let fails = self
                .fail_on
                .as_deref()
                .is_some_and(|prefix| line.starts_with(prefix));
            self.calls.push(line);
            if fails {
                Err(self.fail_with.unwrap_or(Errno::EPERM))
            } else {
                Ok(())
            }
        }

        pub fn transcript(&self) -> String {
            let mut out = self.calls.join("\n");
            out.push('\n');
            out
        }
    }

    fn opt(value: Option<&str>) -> &str {
        value.unwrap_or("-")
    }

    fn names<'a>(names: impl Iterator<Item = (&'a str, impl Sized)>) -> String {
        let names: Vec<&str> = names.map(|(name, _)| name).collect();
        if names.is_empty() {
            "0".to_owned()
        } else {
            names.join("|")
        }
    }

    impl Sys for RecordingSys {
        fn unshare(&mut self, namespaces: CloneFlags) -> nix::Result<()> {
            self.record(format!("unshare {}", names(namespaces.iter_names())))
        }

        fn mount(
            &mut self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> nix::Result<()> {
            let source = source.map(|s| s.display().to_string());
            self.record(format!(
                "mount {} {} type={} flags={} data={}",
                opt(source.as_deref()),
                target.display(),
                opt(fstype),
                names(flags.iter_names()),
                opt(data)
            ))
        }

        fn make_read_only_recursive(&mut self, target: &Path) -> nix::Result<()> {
            self.record(format!(
                "mount_setattr {} rdonly recursive",
                target.display()
            ))
        }

        fn umount_detach(&mut self, target: &Path) -> nix::Result<()> {
            self.record(format!("umount2 {} detach", target.display()))
        }

        fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> nix::Result<()> {
            self.record(format!(
                "pivot_root {} {}",
                new_root.display(),
                put_old.display()
            ))
        }

        fn chdir(&mut self, path: &Path) -> nix::Result<()> {
            self.record(format!("chdir {}", path.display()))
        }

        fn mkdir(&mut self, path: &Path, mode: u32) -> nix::Result<()> {
            self.record(format!("mkdir {} {mode:o}", path.display()))
        }

        fn remove_dir(&mut self, path: &Path) -> nix::Result<()> {
            self.record(format!("rmdir {}", path.display()))
        }

        fn create_file(&mut self, path: &Path, contents: &[u8], mode: u32) -> nix::Result<()> {
            self.record(format!(
                "create {} {mode:o} ({} bytes)",
                path.display(),
                contents.len()
            ))
        }

        fn symlink(&mut self, target: &Path, link: &Path) -> nix::Result<()> {
            self.record(format!(
                "symlink {} -> {}",
                link.display(),
                target.display()
            ))
        }

        fn mknod_char(
            &mut self,
            path: &Path,
            mode: u32,
            major: u64,
            minor: u64,
        ) -> nix::Result<()> {
            self.record(format!(
                "mknod {} c {major}:{minor} {mode:o}",
                path.display()
            ))
        }

        fn sethostname(&mut self, name: &str) -> nix::Result<()> {
            self.record(format!("sethostname {name}"))
        }

        fn write_control_file(&mut self, path: &Path, contents: &str) -> nix::Result<()> {
            self.record(format!("write {} {contents:?}", path.display()))
        }

        fn loopback_up(&mut self) -> nix::Result<()> {
            self.record("ioctl SIOCSIFFLAGS lo up".to_owned())
        }

        fn set_parent_death_signal(&mut self) -> nix::Result<()> {
            self.record("prctl PR_SET_PDEATHSIG SIGKILL".to_owned())
        }

        fn clone_tree(&mut self, path: &Path, recursive: bool) -> nix::Result<OwnedFd> {
            let recursive = if recursive { " recursive" } else { "" };
            self.record(format!("open_tree clone {}{recursive}", path.display()))?;
            std::fs::File::open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|_| Errno::EIO)
        }

        fn attach_tree(&mut self, _tree: &OwnedFd, target: &Path) -> nix::Result<()> {
            self.record(format!("move_mount tree -> {}", target.display()))
        }

        fn fork(&mut self) -> nix::Result<Forked> {
            self.record("fork".to_owned())?;
            Ok(Forked::Child)
        }

        fn drop_bounding_capabilities(&mut self, keep: u64) -> nix::Result<()> {
            self.record(format!("prctl PR_CAPBSET_DROP all but {keep:#x}"))
        }

        fn set_capabilities(&mut self, permitted: u64, inheritable: u64) -> nix::Result<()> {
            self.record(format!(
                "capset effective=permitted={permitted:#x} inheritable={inheritable:#x}"
            ))
        }

        fn clear_ambient_capabilities(&mut self) -> nix::Result<()> {
            self.record("prctl PR_CAP_AMBIENT_CLEAR_ALL".to_owned())
        }

        fn set_no_new_privs(&mut self) -> nix::Result<()> {
            self.record("prctl PR_SET_NO_NEW_PRIVS".to_owned())
        }

        fn install_seccomp(
            &mut self,
            name: &str,
            program: &[seccompiler::sock_filter],
        ) -> nix::Result<()> {
            self.record(format!("seccomp {name} ({} instructions)", program.len()))
        }

        fn exec(&mut self, program: &CStr, args: &[CString], env: &[CString]) -> Errno {
            let show = |items: &[CString]| {
                items
                    .iter()
                    .map(|c| c.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let line = format!(
                "execve {} [{}] env=[{}]",
                program.to_string_lossy(),
                show(args),
                show(env)
            );
            match self.record(line) {
                Ok(()) => Errno::UnknownErrno,
                Err(errno) => errno,
            }
        }
    }
}
