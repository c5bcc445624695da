//! Optional memory and pids limits, in a cgroup made for the sandbox's
//! PID 1 (so every job process is in it).
//!
//! cgroup v2 (a unified hierarchy at /sys/fs/cgroup): `kiln/<helper pid>`
//! below the root, with `memory` and `pids` enabled in `subtree_control`.
//! cgroup v1 (hybrid layouts such as this machine's): `kiln/<helper pid>`
//! below the helper's own cgroup in the `memory` and `pids` hierarchies, so
//! limits of an enclosing cgroup still hold; the `kiln` directory there is
//! removed again by the last sandbox using it. A limit that cannot be
//! applied (no such controller, not root) is a setup failure that says so:
//! the job never runs unlimited by surprise.

use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::Pid;

use super::error::SandboxError;
use super::spec::Limits;
use super::sys::Sys;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup directories of one sandbox (one per v1 hierarchy, or one v2).
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    /// v1 `kiln` directories inside the caller's own cgroups: removed once
    /// empty, so nothing of kiln stays in a cgroup that is not its own.
    prune: Vec<PathBuf>,
}

fn failure(limit: &'static str, reason: impl Into<String>) -> SandboxError {
    SandboxError::Cgroup {
        limit,
        reason: reason.into(),
    }
}

fn write(
    sys: &mut impl Sys,
    limit: &'static str,
    path: &Path,
    value: &str,
) -> Result<(), SandboxError> {
    sys.write_control_file(path, value).map_err(|errno| {
        failure(
            limit,
            format!("writing {value:?} to {}: {errno}", path.display()),
        )
    })
}

fn make_dir(sys: &mut impl Sys, limit: &'static str, path: &Path) -> Result<(), SandboxError> {
    match sys.mkdir(path, 0o755) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(errno) => Err(failure(
            limit,
            format!("creating {}: {errno}", path.display()),
        )),
    }
}

impl Cgroup {
    /// Creates the cgroup and writes the limits; `None` when there are none.
    pub fn prepare(sys: &mut impl Sys, limits: &Limits) -> Result<Option<Cgroup>, SandboxError> {
        if limits.is_empty() {
            return Ok(None);
        }
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Self::prepare_in(
            sys,
            Path::new(CGROUP_ROOT),
            &own,
            limits,
            std::process::id(),
        )
    }

    pub(super) fn prepare_in(
        sys: &mut impl Sys,
        root: &Path,
        own_cgroups: &str,
        limits: &Limits,
        id: u32,
    ) -> Result<Option<Cgroup>, SandboxError> {
        let wanted: Vec<(&'static str, String)> = [
            limits
                .memory_bytes
                .map(|bytes| ("memory", bytes.to_string())),
            limits.pids.map(|pids| ("pids", pids.to_string())),
        ]
        .into_iter()
        .flatten()
        .collect();
        let Some((first, _)) = wanted.first() else {
            return Ok(None);
        };
        if !nix::unistd::geteuid().is_root() && root == Path::new(CGROUP_ROOT) {
            return Err(failure(
                first,
                "cgroup limits need root (delegated cgroups are not supported yet)",
            ));
        }
        let mut cgroup = Cgroup {
            dirs: Vec::new(),
            prune: Vec::new(),
        };
        let result = if root.join("cgroup.controllers").exists() {
            cgroup.prepare_v2(sys, root, &wanted, id)
        } else {
            cgroup.prepare_v1(sys, root, own_cgroups, &wanted, id)
        };
        match result {
            Ok(()) => Ok(Some(cgroup)),
            Err(err) => {
                cgroup.remove(sys);
                Err(err)
            }
        }
    }

    fn prepare_v2(
        &mut self,
        sys: &mut impl Sys,
        root: &Path,
        wanted: &[(&'static str, String)],
        id: u32,
    ) -> Result<(), SandboxError> {
        let available =
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let parent = root.join("kiln");
        for (limit, _) in wanted {
            if !available.split_whitespace().any(|c| c == *limit) {
                return Err(failure(
                    limit,
                    format!("the cgroup v2 controller `{limit}` is not available"),
                ));
            }
        }
        let enable: String = wanted
            .iter()
            .map(|(limit, _)| format!("+{limit} "))
            .collect();
        let limit = wanted[0].0;
        write(
            sys,
            limit,
            &root.join("cgroup.subtree_control"),
            enable.trim_end(),
        )?;
        make_dir(sys, limit, &parent)?;
        write(
            sys,
            limit,
            &parent.join("cgroup.subtree_control"),
            enable.trim_end(),
        )?;
        let dir = parent.join(id.to_string());
        make_dir(sys, limit, &dir)?;
        self.dirs.push(dir.clone());
        for (limit, value) in wanted {
            write(sys, limit, &dir.join(format!("{limit}.max")), value)?;
        }
        Ok(())
    }

    fn prepare_v1(
        &mut self,
        sys: &mut impl Sys,
        root: &Path,
        own_cgroups: &str,
        wanted: &[(&'static str, String)],
        id: u32,
    ) -> Result<(), SandboxError> {
        for (limit, value) in wanted {
            let file = match *limit {
                "memory" => "memory.limit_in_bytes",
                _ => "pids.max",
            };
            let hierarchy = root.join(limit);
            if !hierarchy.join("cgroup.procs").exists() {
                return Err(failure(
                    limit,
                    format!(
                        "no cgroup v2 hierarchy and no v1 `{limit}` controller at {}",
                        hierarchy.display()
                    ),
                ));
            }
            let own = own_v1_cgroup(own_cgroups, limit);
            let parent = hierarchy
                .join(own.strip_prefix("/").unwrap_or(own))
                .join("kiln");
            let dir = parent.join(id.to_string());
            // Another sandbox may prune `parent` between the two mkdirs.
            let mut attempts = 0;
            loop {
                make_dir(sys, limit, &parent)?;
                match sys.mkdir(&dir, 0o755) {
                    Ok(()) | Err(Errno::EEXIST) => break,
                    Err(Errno::ENOENT) if attempts < 5 => attempts += 1,
                    Err(errno) => {
                        return Err(failure(
                            limit,
                            format!("creating {}: {errno}", dir.display()),
                        ));
                    }
                }
            }
            self.dirs.push(dir.clone());
            self.prune.push(parent);
            write(sys, limit, &dir.join(file), value)?;
        }
        Ok(())
    }

    /// The directories a helper with process id `id` may have left behind
    /// (when it was killed before it could clean up), for a caller in the
    /// same cgroup as that helper was.
    pub fn leftovers(id: u32) -> Cgroup {
        let root = Path::new(CGROUP_ROOT);
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut dirs = vec![root.join("kiln").join(id.to_string())];
        for controller in ["memory", "pids"] {
            let own = own_v1_cgroup(&own, controller);
            let hierarchy = root.join(controller);
            dirs.push(
                hierarchy
                    .join(own.strip_prefix("/").unwrap_or(own))
                    .join("kiln")
                    .join(id.to_string()),
            );
        }
        let prune = dirs[1..]
            .iter()
            .filter_map(|d| d.parent().map(Path::to_owned))
            .collect();
        dirs.retain(|dir| dir.is_dir());
        Cgroup { dirs, prune }
    }

    /// Removes `kiln/<pid>` cgroups whose helper is gone (kiln was killed
    /// before it could clean up), in the v2 root and in this process's own
    /// v1 `memory` and `pids` cgroups; returns what it removed. A cgroup
    /// still holding processes refuses removal (EBUSY) and stays; one whose
    /// helper pid is alive is not touched. Called at the start of a build.
    pub fn sweep_stale() -> Vec<PathBuf> {
        let root = Path::new(CGROUP_ROOT);
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut parents = vec![root.join("kiln")];
        for controller in ["memory", "pids"] {
            let own = own_v1_cgroup(&own, controller);
            parents.push(
                root.join(controller)
                    .join(own.strip_prefix("/").unwrap_or(own))
                    .join("kiln"),
            );
        }
        let mut removed = Vec::new();
        for parent in parents {
            let Ok(entries) = std::fs::read_dir(&parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if Path::new(&format!("/proc/{pid}")).exists() {
                    continue;
                }
                if std::fs::remove_dir(entry.path()).is_ok() {
                    removed.push(entry.path());
                }
            }
            // Empty once the last sandbox's cgroup is gone.
            let _ = std::fs::remove_dir(&parent);
        }
        removed
    }

    /// Moves `pid` (the sandbox's PID 1, before it starts) into the cgroup.
    pub fn add(&self, sys: &mut impl Sys, pid: Pid) -> Result<(), SandboxError> {
        for dir in &self.dirs {
            write(
                sys,
                "membership",
                &dir.join("cgroup.procs"),
                &pid.to_string(),
            )?;
        }
        Ok(())
    }

    /// Removes the cgroup directories, once their processes are gone (the
    /// kernel may still be tearing the last ones down: retry briefly).
    pub fn remove(self, sys: &mut impl Sys) {
        for dir in self.dirs.iter().rev() {
            for _ in 0..50 {
                match sys.remove_dir(dir) {
                    Err(Errno::EBUSY) => std::thread::sleep(std::time::Duration::from_millis(2)),
                    _ => break,
                }
            }
        }
        for parent in &self.prune {
            // Fails while another sandbox still uses it: that one prunes it.
            let _ = sys.remove_dir(parent);
        }
    }
}

/// The helper's own cgroup in the v1 hierarchy of `controller`, from
/// `/proc/self/cgroup` lines `ID:CONTROLLERS:PATH`; `/` when not listed.
fn own_v1_cgroup<'a>(own_cgroups: &'a str, controller: &str) -> &'a str {
    own_cgroups
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then_some(path)
        })
        .next()
        .unwrap_or("/")
}
