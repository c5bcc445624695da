//! Turning a [`SandboxSpec`] into a [`Plan`]: every host path resolved and
//! checked, the host's root listed, the script read. This only reads the
//! host filesystem; it runs in the helper before any namespace exists, so a
//! missing directory becomes a clear setup error instead of a failed mount.

use std::fs;
use std::path::{Component, Path, PathBuf};

use super::error::SandboxError;
use super::spec::{HOST_VIEW_HIDDEN, Limits, Profile, RESERVED_TOP, RootFs, SandboxSpec};

/// A top-level entry of the host's root, as the host view shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostEntry {
    /// Bound read-only (recursively, with the mounts below it).
    Bind(String),
    /// Recreated as the same symlink (merged /usr: `/bin -> usr/bin`).
    Symlink { name: String, target: PathBuf },
    /// Shown as an empty directory: hidden, or a sandbox mount point.
    Empty(String),
}

/// A host path under a bound directory that must be hidden.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mask {
    /// Covered by an empty read-only tmpfs.
    Dir(PathBuf),
    /// Covered by an empty file.
    File(PathBuf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlannedRoot {
    Host {
        entries: Vec<HostEntry>,
        masks: Vec<Mask>,
    },
    /// Canonical host paths, top layer first.
    Image { layers: Vec<PathBuf> },
}

/// The resolved job: what the setup sequence executes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub root: PlannedRoot,
    /// Inside the sandbox.
    pub workspace_path: PathBuf,
    /// Canonical host paths, top (last dependency) first: overlayfs order.
    pub workspace_lower: Vec<PathBuf>,
    pub workspace_upper: PathBuf,
    pub workspace_work: PathBuf,
    pub script: Vec<u8>,
    pub env: Vec<(String, String)>,
    pub hostname: String,
    pub network: bool,
    pub limits: Limits,
    /// `Some((uid, gid))` of the caller when it is not root: a user
    /// namespace maps them to 0 inside.
    pub user_namespace: Option<(u32, u32)>,
    /// Mounted last.
    pub binds: Vec<PlannedBind>,
    pub profile: Profile,
}

/// A bind of the plan: a canonical, symlink-free host directory and its
/// target inside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedBind {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
    /// With the mounts below the source (the build process's `/sys`).
    pub recursive: bool,
}

impl PlannedBind {
    #[cfg(test)]
    pub fn writable(source: PathBuf, target: PathBuf) -> Self {
        PlannedBind {
            source,
            target,
            read_only: false,
            recursive: false,
        }
    }
}

fn existing_dir(what: &'static str, path: &Path) -> Result<PathBuf, SandboxError> {
    let canonical = fs::canonicalize(path).map_err(|source| SandboxError::MissingPath {
        what,
        path: path.to_owned(),
        source,
    })?;
    if !canonical.is_dir() {
        return Err(SandboxError::NotADirectory {
            what,
            path: path.to_owned(),
        });
    }
    for byte in canonical.as_os_str().as_encoded_bytes() {
        if matches!(byte, b',' | b':' | b'\\') {
            return Err(SandboxError::OverlayPathSyntax {
                what,
                path: path.to_owned(),
            });
        }
    }
    Ok(canonical)
}

/// [`existing_dir`], for a directory that is mounted writable: its path
/// must name it directly, without any symlink on the way (one planted in
/// a cache's content would otherwise bind a host directory of its choice).
fn existing_dir_without_symlinks(what: &'static str, path: &Path) -> Result<PathBuf, SandboxError> {
    let canonical = existing_dir(what, path)?;
    if canonical != path {
        return Err(SandboxError::SymlinkedPath {
            what,
            path: path.to_owned(),
            resolved: canonical,
        });
    }
    Ok(canonical)
}

fn top_component(path: &Path) -> Option<String> {
    path.components().find_map(|c| match c {
        Component::Normal(name) => Some(name.to_string_lossy().into_owned()),
        _ => None,
    })
}

impl Plan {
    pub fn resolve(spec: &SandboxSpec) -> Result<Plan, SandboxError> {
        spec.validate()?;
        let root = match &spec.root {
            RootFs::Image { layers } => PlannedRoot::Image {
                layers: layers
                    .iter()
                    .map(|layer| existing_dir("image layer", layer))
                    .collect::<Result<_, _>>()?,
            },
            RootFs::Host { exclude } => {
                plan_host_view(Path::new("/"), exclude, &spec.workspace.path)?
            }
        };
        let workspace_lower = spec
            .workspace
            .lower
            .iter()
            .rev()
            .map(|layer| existing_dir("workspace layer", layer))
            .collect::<Result<_, _>>()?;
        let script = fs::read(&spec.script).map_err(|source| SandboxError::ReadScript {
            path: spec.script.clone(),
            source,
        })?;
        let euid = nix::unistd::geteuid();
        let binds = spec
            .binds
            .iter()
            .map(|bind| {
                Ok(PlannedBind {
                    source: existing_dir_without_symlinks("bind source", &bind.source)?,
                    target: bind.target.clone(),
                    read_only: bind.read_only,
                    recursive: spec.profile == Profile::BuildProcess,
                })
            })
            .collect::<Result<Vec<_>, SandboxError>>()?;
        if spec.profile == Profile::BuildProcess && !euid.is_root() {
            return Err(SandboxError::InvalidSpec(
                "the build process runs in a container only as root".into(),
            ));
        }
        Ok(Plan {
            binds,
            profile: spec.profile,
            root,
            workspace_path: spec.workspace.path.clone(),
            workspace_lower,
            workspace_upper: existing_dir("workspace upper dir", &spec.workspace.upper)?,
            workspace_work: existing_dir("workspace work dir", &spec.workspace.work)?,
            script,
            env: spec.env.clone(),
            hostname: spec.hostname.clone(),
            network: spec.network,
            limits: spec.limits.clone(),
            user_namespace: (!euid.is_root())
                .then(|| (euid.as_raw(), nix::unistd::getegid().as_raw())),
        })
    }
}

/// Lists `host_root` and decides, per top-level entry, whether the host view
/// binds it, recreates it as a symlink, or shows an empty directory.
pub fn plan_host_view(
    host_root: &Path,
    exclude: &[PathBuf],
    workspace_path: &Path,
) -> Result<PlannedRoot, SandboxError> {
    let read_err = |source: std::io::Error| SandboxError::ReadHostDir {
        path: host_root.to_owned(),
        source: source
            .raw_os_error()
            .map_or(nix::errno::Errno::EIO, nix::errno::Errno::from_raw),
    };
    // Everything hidden, as canonical host paths (an excluded path that does
    // not exist hides nothing).
    let on_host = |path: &Path| host_root.join(path.strip_prefix("/").unwrap_or(path));
    let mut hidden: Vec<PathBuf> = HOST_VIEW_HIDDEN.iter().map(PathBuf::from).collect();
    let requested = HOST_VIEW_HIDDEN
        .iter()
        .map(Path::new)
        .chain(exclude.iter().map(PathBuf::as_path));
    for path in requested {
        if let Ok(canonical) = fs::canonicalize(on_host(path)) {
            let relative = canonical.strip_prefix(host_root).unwrap_or(&canonical);
            let inside = Path::new("/").join(relative);
            if !hidden.contains(&inside) {
                hidden.push(inside);
            }
        }
    }
    let mut empty_tops: Vec<String> = ["proc", "sys", "dev", RESERVED_TOP]
        .map(String::from)
        .to_vec();
    empty_tops.extend(top_component(workspace_path));

    let mut entries = Vec::new();
    let mut bound = Vec::new();
    let mut listing: Vec<_> = fs::read_dir(host_root)
        .map_err(read_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err)?;
    listing.sort_by_key(|e| e.file_name());
    for entry in listing {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue; // a non-UTF-8 top-level name: not shown
        };
        let is_hidden = hidden.iter().any(|h| h == &Path::new("/").join(&name));
        let file_type = entry.file_type().map_err(read_err)?;
        if is_hidden || empty_tops.contains(&name) {
            if file_type.is_dir() || file_type.is_symlink() {
                entries.push(HostEntry::Empty(name));
            }
        } else if file_type.is_symlink() {
            let target = fs::read_link(entry.path()).map_err(read_err)?;
            entries.push(HostEntry::Symlink { name, target });
        } else if file_type.is_dir() {
            bound.push(name.clone());
            entries.push(HostEntry::Bind(name));
        }
    }
    // The sandbox mount points exist even where the host has no such entry.
    for name in &empty_tops {
        if !entries
            .iter()
            .any(|e| matches!(e, HostEntry::Empty(n) if n == name))
        {
            entries.push(HostEntry::Empty(name.clone()));
        }
    }

    let mut masks = Vec::new();
    for path in hidden {
        let under_bound = top_component(&path).is_some_and(|top| bound.contains(&top))
            && path.components().count() > 2;
        if !under_bound {
            continue;
        }
        match fs::symlink_metadata(on_host(&path)) {
            Ok(meta) if meta.is_dir() => masks.push(Mask::Dir(path)),
            Ok(meta) if meta.is_file() => masks.push(Mask::File(path)),
            // Missing, a symlink (its canonical target is in the list too)
            // or a special file: nothing to cover.
            _ => {}
        }
    }
    Ok(PlannedRoot::Host { entries, masks })
}
