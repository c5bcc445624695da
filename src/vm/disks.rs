//! The VM's disks: the image (ext4, cached by the image digest, attached
//! read-only), the workspace (ext4 holding the lower layers and the job's
//! files, one per run) and the output (raw; the guest writes a cpio newc
//! archive of the job's upper layer and exit status to it).

use std::collections::HashMap;
use std::fs;
use std::io::{BufReader, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use super::VmError;

/// The ext4 disk of an image tree, built once per `digest` in `cache_dir`.
pub fn cached_image_disk(
    cache_dir: &Path,
    image_root: &Path,
    digest: &str,
) -> Result<PathBuf, VmError> {
    let dir = cache_dir.join("images");
    let path = dir.join(format!("{}.ext4", file_key(digest)));
    if path.is_file() {
        // Its modification time is its last use: `kiln store gc` drops
        // disks unused for long (src/image/cache.rs).
        crate::image::cache::mark_used(&path);
        return Ok(path);
    }
    if !image_root.is_dir() {
        return Err(VmError::Disk {
            reason: format!("image root {} is not a directory", image_root.display()),
        });
    }
    fs::create_dir_all(&dir).map_err(|e| disk_error(&dir, e))?;
    let temporary = tempfile::Builder::new()
        .prefix(".building-")
        .tempfile_in(&dir)
        .map_err(|e| disk_error(&dir, e))?;
    make_ext4(image_root, temporary.path())?;
    temporary
        .persist(&path)
        .map_err(|e| disk_error(&path, e.error))?;
    Ok(path)
}

/// A digest as a file name: kept when it is plainly safe, hashed otherwise.
fn file_key(digest: &str) -> String {
    let safe = !digest.is_empty()
        && digest.len() <= 128
        && digest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !digest.starts_with('.');
    if safe {
        digest.to_owned()
    } else {
        blake3::hash(digest.as_bytes()).to_hex().to_string()
    }
}

fn disk_error(path: &Path, error: std::io::Error) -> VmError {
    VmError::Disk {
        reason: format!("{}: {error}", path.display()),
    }
}

/// `mke2fs -d`: an ext4 file system holding `source`, no root or loop device.
pub fn make_ext4(source: &Path, image: &Path) -> Result<(), VmError> {
    let (bytes, inodes) = tree_usage(source)?;
    // Sparse, so a generous size costs nothing until written.
    let size = (bytes * 2 + inodes * 4096 + (64 << 20)).next_multiple_of(1 << 20);
    fs::File::create(image)
        .and_then(|file| file.set_len(size))
        .map_err(|e| disk_error(image, e))?;
    let output = mke2fs()
        .arg("-N")
        .arg((inodes * 2 + 1024).to_string())
        .arg("-d")
        .arg(source)
        .arg(image)
        .env("E2FSPROGS_FAKE_TIME", "0")
        .output()
        .map_err(|e| VmError::Disk {
            reason: format!("cannot run mke2fs: {e} (apt-get install e2fsprogs)"),
        })?;
    if !output.status.success() {
        return Err(VmError::Disk {
            reason: format!(
                "mke2fs -d {} failed ({}): {}",
                source.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Bytes (rounded up to blocks) and inodes under `root`.
fn tree_usage(root: &Path) -> Result<(u64, u64), VmError> {
    let mut bytes = 0;
    let mut inodes = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).map_err(|e| disk_error(&dir, e))? {
            let entry = entry.map_err(|e| disk_error(&dir, e))?;
            let metadata = entry.metadata().map_err(|e| disk_error(&entry.path(), e))?;
            inodes += 1;
            bytes += metadata.len().next_multiple_of(4096);
            if metadata.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes + 1))
}

/// What the guest needs besides the image, laid out for the workspace disk.
pub struct WorkspaceFiles<'a> {
    pub lower_dirs: &'a [PathBuf],
    pub script: &'a str,
    pub run_script: String,
    pub workspace: &'a str,
    pub hostname: &'a str,
}

/// Builds the workspace disk: `layers/N` for each lower dir (hard links where
/// possible, copies across file systems) and `job/` with the script and
/// settings; the staging tree is removed afterwards.
pub fn build_workspace_disk(
    run_dir: &Path,
    files: &WorkspaceFiles<'_>,
) -> Result<PathBuf, VmError> {
    let staging = run_dir.join("workspace");
    let layers = staging.join("layers");
    let job = staging.join("job");
    fs::create_dir_all(&job).map_err(|e| disk_error(&job, e))?;
    let mut lowerdirs = Vec::new();
    // overlayfs needs one lower dir at least; an empty one stands in.
    let sources: Vec<Option<&Path>> = if files.lower_dirs.is_empty() {
        vec![None]
    } else {
        files
            .lower_dirs
            .iter()
            .map(|dir| Some(dir.as_path()))
            .collect()
    };
    for (index, source) in sources.iter().enumerate() {
        let target = layers.join(index.to_string());
        match source {
            Some(source) => link_tree(source, &target)?,
            None => fs::create_dir_all(&target).map_err(|e| disk_error(&target, e))?,
        }
        lowerdirs.push(format!("/mnt/work/layers/{index}"));
    }
    // overlayfs lists the topmost lower dir first.
    lowerdirs.reverse();
    let write = |name: &str, text: &str| {
        fs::write(job.join(name), text).map_err(|e| disk_error(&job.join(name), e))
    };
    write("script", files.script)?;
    write("run.sh", &files.run_script)?;
    write("lowerdirs", &lowerdirs.join(":"))?;
    write("workspace", files.workspace)?;
    write("hostname", files.hostname)?;
    let disk = run_dir.join("workspace.ext4");
    make_ext4(&staging, &disk)?;
    fs::remove_dir_all(&staging).map_err(|e| disk_error(&staging, e))?;
    Ok(disk)
}

/// Recreates `source` at `target`, hard-linking files (copying across file
/// systems) and recreating symlinks and whiteouts.
fn link_tree(source: &Path, target: &Path) -> Result<(), VmError> {
    let metadata = fs::symlink_metadata(source).map_err(|e| disk_error(source, e))?;
    if !metadata.is_dir() {
        return Err(VmError::Disk {
            reason: format!("lower layer {} is not a directory", source.display()),
        });
    }
    fs::create_dir_all(target).map_err(|e| disk_error(target, e))?;
    for entry in fs::read_dir(source).map_err(|e| disk_error(source, e))? {
        let entry = entry.map_err(|e| disk_error(source, e))?;
        let from = entry.path();
        let to = target.join(entry.file_name());
        let file_type = entry.file_type().map_err(|e| disk_error(&from, e))?;
        if file_type.is_dir() {
            link_tree(&from, &to)?;
        } else if file_type.is_symlink() {
            let destination = fs::read_link(&from).map_err(|e| disk_error(&from, e))?;
            symlink(destination, &to).map_err(|e| disk_error(&to, e))?;
        } else if fs::hard_link(&from, &to).is_err() {
            copy_node(&from, &to)?;
        }
    }
    // Directories are made anew, not linked: carry the opaque marker over.
    if is_opaque(source) {
        mark_opaque(target)?;
    }
    // Last: a read-only directory must first receive its entries.
    fs::set_permissions(target, metadata.permissions()).map_err(|e| disk_error(target, e))?;
    Ok(())
}

fn copy_node(from: &Path, to: &Path) -> Result<(), VmError> {
    let metadata = fs::symlink_metadata(from).map_err(|e| disk_error(from, e))?;
    if metadata.is_file() {
        fs::copy(from, to).map_err(|e| disk_error(to, e))?;
        return Ok(());
    }
    use std::os::unix::fs::FileTypeExt;
    if metadata.file_type().is_char_device() && metadata.rdev() == 0 {
        return make_whiteout(to);
    }
    Err(VmError::Disk {
        reason: format!(
            "{}: cannot copy this kind of file into a layer",
            from.display()
        ),
    })
}

/// An overlayfs whiteout: a character device 0/0.
pub fn make_whiteout(path: &Path) -> Result<(), VmError> {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(|e| VmError::Disk {
        reason: format!("{}: cannot create whiteout: {e}", path.display()),
    })
}

/// Marks `dir` as an overlayfs opaque directory: lower layers' entries under
/// it are hidden, as after `rm -r dir; mkdir dir` in an overlay mount.
pub fn mark_opaque(dir: &Path) -> Result<(), VmError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let fail = |reason: String| VmError::Output {
        reason: format!("{}: cannot mark opaque: {reason}", dir.display()),
    };
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(|e| fail(e.to_string()))?;
    let name = OPAQUE;
    // SAFETY: both strings are NUL-terminated and outlive the call; the value
    // pointer and length describe a live one-byte buffer.
    let result =
        unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if result != 0 {
        return Err(fail(std::io::Error::last_os_error().to_string()));
    }
    Ok(())
}

/// Whether `dir` carries the overlayfs opaque marker.
pub fn is_opaque(dir: &Path) -> bool {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut value = [0u8; 4];
    // SAFETY: NUL-terminated strings that outlive the call; the buffer
    // pointer and length describe a live buffer.
    let length = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            OPAQUE.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    length == 1 && value[0] == b'y'
}

const OPAQUE: &std::ffi::CStr = c"trusted.overlay.opaque";

/// A sparse raw disk the guest writes the job's output to.
pub fn create_output_disk(run_dir: &Path, limit_mib: u32) -> Result<PathBuf, VmError> {
    let path = run_dir.join("output.raw");
    fs::File::create(&path)
        .and_then(|file| file.set_len(u64::from(limit_mib.max(1)) << 20))
        .map_err(|e| disk_error(&path, e))?;
    Ok(path)
}

/// A sparse, empty ext4 disk for the job's upper layers: a job's writes are
/// bounded by `limit_mib` of host disk, not by the VM's memory.
pub fn create_scratch_disk(run_dir: &Path, limit_mib: u32) -> Result<PathBuf, VmError> {
    let path = run_dir.join("scratch.ext4");
    fs::File::create(&path)
        .and_then(|file| file.set_len(u64::from(limit_mib.max(64)) << 20))
        .map_err(|e| disk_error(&path, e))?;
    // Lazy inode tables: the guest mounts with noinit_itable, so nobody
    // zeroes them; a fresh sparse file reads as zeros anyway.
    let output = mke2fs()
        .args(["-E", "lazy_itable_init=1"])
        .arg(&path)
        .output()
        .map_err(|e| VmError::Disk {
            reason: format!("cannot run mke2fs: {e} (apt-get install e2fsprogs)"),
        })?;
    if !output.status.success() {
        return Err(VmError::Disk {
            reason: format!(
                "mke2fs {} failed ({}): {}",
                path.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(path)
}

/// What the guest wrote to the output disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutput {
    pub exit_code: i32,
}

/// Reads the cpio archive the guest wrote to `disk` and recreates the upper
/// layer in `upper_dir` (whiteouts as character devices 0/0). `Ok(None)`
/// when the guest wrote nothing.
pub fn extract_output(disk: &Path, upper_dir: &Path) -> Result<Option<JobOutput>, VmError> {
    let bad = |reason: String| VmError::Output {
        reason: format!("{}: {reason}", disk.display()),
    };
    let file = fs::File::open(disk).map_err(|e| bad(e.to_string()))?;
    let mut reader = BufReader::new(file);
    let mut exit_code = None;
    let mut opaque: Vec<String> = Vec::new();
    let mut directories: Vec<(PathBuf, u32)> = Vec::new();
    // Hard links: busybox cpio stores the data with the last name of an inode.
    let mut pending_links: HashMap<u32, Vec<PathBuf>> = HashMap::new();
    // The guest is not trusted: what this extraction made itself decides
    // where an entry may go, never the file system (an entry through a
    // symlink it wrote would otherwise write on the host).
    let mut made = MadeBelow::default();
    fs::create_dir_all(upper_dir).map_err(|e| bad(format!("{}: {e}", upper_dir.display())))?;
    let mut first = true;
    loop {
        let mut entry = match cpio::newc::Reader::new(reader) {
            Ok(entry) => entry,
            Err(_) if first => return Ok(None),
            Err(e) => return Err(bad(format!("truncated or corrupt archive: {e}"))),
        };
        first = false;
        let header = entry.entry().clone();
        if header.is_trailer() {
            break;
        }
        let name = header.name().to_owned();
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        reader = entry.finish().map_err(|e| bad(format!("{name}: {e}")))?;
        if name == "opaque" {
            opaque = String::from_utf8_lossy(&data)
                .lines()
                .map(str::to_owned)
                .collect();
            continue;
        }
        if name == "status" {
            let text = String::from_utf8_lossy(&data);
            exit_code = Some(
                text.trim()
                    .parse::<i32>()
                    .map_err(|_| bad(format!("bad exit status {text:?}")))?,
            );
            continue;
        }
        let Some(relative) = upper_relative(&name) else {
            return Err(bad(format!("unexpected entry {name:?}")));
        };
        let mode = header.mode();
        let kind = match mode & 0o170000 {
            0o040000 => Made::Dir,
            0o100000 | 0o020000 => Made::Other,
            0o120000 => Made::Other,
            // Sockets, fifos and device nodes are no part of a layer.
            _ => continue,
        };
        let path = upper_dir.join(&relative);
        let io = |e: std::io::Error| bad(format!("{}: {e}", path.display()));
        if !made.claim(upper_dir, &relative, kind).map_err(io)? {
            return Err(bad(format!(
                "entry {name:?} goes through something that is not a directory it made"
            )));
        }
        match mode & 0o170000 {
            0o040000 => {
                directories.push((path, mode & 0o7777));
            }
            0o100000 => {
                if header.nlink() > 1 && data.is_empty() {
                    pending_links.entry(header.ino()).or_default().push(path);
                    continue;
                }
                write_new(&path, &data, mode & 0o7777).map_err(io)?;
                for link in pending_links.remove(&header.ino()).unwrap_or_default() {
                    fs::hard_link(&path, &link)
                        .map_err(|e| bad(format!("{}: {e}", link.display())))?;
                }
            }
            0o120000 => {
                symlink(String::from_utf8_lossy(&data).as_ref(), &path).map_err(io)?;
            }
            0o020000 if header.rdev_major() == 0 && header.rdev_minor() == 0 => {
                make_whiteout(&path)?
            }
            // Sockets, fifos and device nodes are no part of a layer.
            _ => {}
        }
    }
    for (_, paths) in pending_links {
        for path in paths {
            write_new(&path, &[], 0o644).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        }
    }
    for directory in &opaque {
        let Some(relative) = upper_relative(&format!("upper/{directory}")) else {
            return Err(bad(format!("unexpected opaque directory {directory:?}")));
        };
        if made.is_dir(&relative) {
            mark_opaque(&upper_dir.join(relative))?;
        }
    }
    // Last, and deepest first, so read-only directories do not block their contents.
    for (path, mode) in directories.iter().rev() {
        fs::set_permissions(path, fs::Permissions::from_mode(*mode))
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
    }
    match exit_code {
        Some(exit_code) => {
            if !upper_dir.exists() {
                fs::create_dir_all(upper_dir).map_err(|e| bad(e.to_string()))?;
            }
            Ok(Some(JobOutput { exit_code }))
        }
        None => Err(bad("the archive has no exit status".to_owned())),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Made {
    Dir,
    Other,
}

/// What [`extract_output`] made below the upper dir, by relative path.
#[derive(Default)]
struct MadeBelow(HashMap<PathBuf, Made>);

impl MadeBelow {
    /// Claims `relative` for an entry of `kind`: its missing parents are
    /// made as directories, and `false` means it would go through (or
    /// replace) something other than a directory this extraction made.
    fn claim(&mut self, root: &Path, relative: &Path, kind: Made) -> std::io::Result<bool> {
        let mut parent = PathBuf::new();
        let parents: Vec<_> = relative
            .parent()
            .map(Path::components)
            .into_iter()
            .flatten()
            .collect();
        for component in parents {
            parent.push(component);
            match self.0.get(&parent) {
                Some(Made::Dir) => {}
                Some(Made::Other) => return Ok(false),
                None => {
                    fs::create_dir(root.join(&parent))?;
                    self.0.insert(parent.clone(), Made::Dir);
                }
            }
        }
        if relative.as_os_str().is_empty() {
            return Ok(kind == Made::Dir);
        }
        match (self.0.get(relative), kind) {
            (Some(Made::Dir), Made::Dir) => Ok(true),
            (Some(_), _) => Ok(false),
            (None, Made::Dir) => {
                fs::create_dir(root.join(relative))?;
                self.0.insert(relative.to_path_buf(), kind);
                Ok(true)
            }
            (None, Made::Other) => {
                self.0.insert(relative.to_path_buf(), kind);
                Ok(true)
            }
        }
    }

    fn is_dir(&self, relative: &Path) -> bool {
        relative.as_os_str().is_empty() || self.0.get(relative) == Some(&Made::Dir)
    }
}

/// Creates the file at `path`, which must not exist (never following a
/// symlink), with `mode`.
fn write_new(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)?;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

/// `upper/a/b` → `a/b`; `upper` → ``; anything else, or any `..`, → `None`.
fn upper_relative(name: &str) -> Option<PathBuf> {
    let rest = name.strip_prefix("upper")?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let relative = Path::new(rest.trim_start_matches('/'));
    relative
        .components()
        .all(|component| matches!(component, Component::Normal(_)))
        .then(|| relative.to_path_buf())
}

/// `mke2fs` with the settings every kiln disk shares: ext4, 4 KiB blocks,
/// no reserved blocks, and no journal (a disk lives for one job, or is
/// attached read-only, so a journal only costs writes).
fn mke2fs() -> Command {
    let mut command = Command::new("mke2fs");
    command.args([
        "-q",
        "-F",
        "-t",
        "ext4",
        "-b",
        "4096",
        "-m",
        "0",
        "-O",
        "^has_journal",
    ]);
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_cannot_escape_the_upper_dir() {
        assert_eq!(upper_relative("upper"), Some(PathBuf::new()));
        assert_eq!(upper_relative("upper/a/b"), Some(PathBuf::from("a/b")));
        assert_eq!(upper_relative("upper/../etc"), None);
        assert_eq!(upper_relative("uppers/x"), None);
        assert_eq!(upper_relative("/etc/passwd"), None);
    }

    #[test]
    fn odd_digests_become_safe_file_names() {
        assert_eq!(file_key("abc123"), "abc123");
        assert_eq!(file_key("../x").len(), 64);
        assert_eq!(file_key("").len(), 64);
    }

    /// A guest's output archive: (name, mode, data) entries, then the status.
    fn guest_archive(path: &Path, entries: &[(&str, u32, &[u8])]) {
        use std::io::Write;
        let mut out = Vec::new();
        let status: (&str, u32, &[u8]) = ("status", 0o100644, b"0\n");
        for (ino, (name, mode, data)) in entries.iter().chain([&status]).enumerate() {
            let builder = cpio::newc::Builder::new(name)
                .ino(ino as u32 + 1)
                .mode(*mode)
                .nlink(1);
            let mut writer = builder.write(&mut out, data.len() as u32);
            writer.write_all(data).unwrap();
            writer.finish().unwrap();
        }
        cpio::newc::trailer(&mut out).unwrap();
        fs::write(path, out).unwrap();
    }

    #[test]
    fn a_guest_cannot_write_through_a_symlink_it_made() {
        let dir = tempfile::tempdir().unwrap();
        // Stands for a host directory: writable from here (the control).
        let host = dir.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("control"), b"x").unwrap();
        let host_target = host.to_str().unwrap().as_bytes();
        let attacks: [&[(&str, u32, &[u8])]; 3] = [
            // A symlink, then a file below it.
            &[
                ("upper", 0o040755, b""),
                ("upper/lnk", 0o120777, host_target),
                ("upper/lnk/pwned", 0o100644, b"pwned"),
            ],
            // A symlink, then a directory (and its mode) below it.
            &[
                ("upper/lnk", 0o120777, host_target),
                ("upper/lnk/pwned", 0o040777, b""),
            ],
            // A symlink replaced by a file of the same name.
            &[
                ("upper/lnk", 0o120777, host_target),
                ("upper/lnk", 0o100644, b"pwned"),
            ],
        ];
        for (index, entries) in attacks.iter().enumerate() {
            let disk = dir.path().join(format!("out-{index}"));
            guest_archive(&disk, entries);
            let upper = dir.path().join(format!("upper-{index}"));
            let err = extract_output(&disk, &upper).unwrap_err();
            assert!(err.to_string().contains("not a directory it made"), "{err}");
            let names: Vec<_> = fs::read_dir(&host)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, ["control"], "attack {index} wrote on the host");
        }
        // The same shapes without the symlink are a normal output.
        let disk = dir.path().join("fine");
        guest_archive(
            &disk,
            &[
                ("upper/lnk", 0o040755, b""),
                ("upper/lnk/file", 0o100644, b"ok"),
                ("upper/link", 0o120777, b"lnk/file"),
            ],
        );
        let upper = dir.path().join("upper-fine");
        assert!(extract_output(&disk, &upper).unwrap().is_some());
        assert_eq!(fs::read(upper.join("lnk/file")).unwrap(), b"ok");
        assert_eq!(fs::read(upper.join("link")).unwrap(), b"ok");
    }

    #[test]
    fn an_empty_output_disk_means_no_output() {
        let dir = tempfile::tempdir().unwrap();
        let disk = create_output_disk(dir.path(), 1).unwrap();
        assert_eq!(
            extract_output(&disk, &dir.path().join("upper")).unwrap(),
            None
        );
    }
}
