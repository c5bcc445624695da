//! The guest's kernel and initramfs: which kernel, which modules it needs,
//! and a reproducible cpio newc archive holding them with busybox and init.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};

use super::VmError;
use super::kernel::Kernel;

/// The guest init script (PID 1).
pub const GUEST_INIT: &str = include_str!("guest_init.sh");

/// Modules the guest always loads, roots of the dependency walk; their
/// dependencies come first. virtio_mmio must precede the device drivers: the
/// microvm's devices sit on virtio-mmio transports found through ACPI.
const MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    "overlay",
];
/// Loaded only when the job has a network.
const NETWORK_MODULES: &[&str] = &["virtio_net"];

/// The busybox applets `guest_init.sh` runs, linked in the archive rather than
/// installed at boot (400 symlinks cost a noticeable part of a TCG boot).
const APPLETS: &[&str] = &[
    "chroot", "cpio", "env", "find", "insmod", "ip", "mkdir", "mount", "poweroff", "sh", "sync",
    "umount", "usleep",
];

/// Bumped whenever the archive layout changes, so old cache entries are unused.
const FORMAT: &str = "kiln-initramfs-4";

/// One module to put in the archive, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// Everything that goes into an initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitramfsContents {
    pub busybox: Vec<u8>,
    pub modules: Vec<Module>,
    pub network_modules: Vec<Module>,
    pub init: String,
}

impl InitramfsContents {
    /// Gathers busybox and the modules `kernel` needs from this host.
    pub fn for_kernel(kernel: &Kernel) -> Result<InitramfsContents, VmError> {
        let busybox = static_busybox()?;
        let (modules, network_modules) = match &kernel.version {
            Some(version) => {
                let dir = Path::new("/lib/modules").join(version);
                let strip = signatures_optional(version);
                if dir.join("modules.dep").is_file() {
                    (
                        load_modules(&dir, MODULES, &[], strip)?,
                        load_modules(&dir, NETWORK_MODULES, MODULES, strip)?,
                    )
                } else {
                    // A kernel without modules here has to have its drivers built in.
                    (Vec::new(), Vec::new())
                }
            }
            None => (Vec::new(), Vec::new()),
        };
        Ok(InitramfsContents {
            busybox,
            modules,
            network_modules,
            init: GUEST_INIT.to_owned(),
        })
    }

    /// Identifies the archive: same digest, same bytes.
    pub fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        let mut field = |bytes: &[u8]| {
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
        };
        field(FORMAT.as_bytes());
        field(self.init.as_bytes());
        field(&self.busybox);
        for (group, modules) in [("base", &self.modules), ("net", &self.network_modules)] {
            field(group.as_bytes());
            for module in modules {
                field(module.name.as_bytes());
                field(&module.bytes);
            }
        }
        hasher.finalize().to_hex().to_string()
    }

    /// The gzip-compressed cpio newc archive: entries sorted by name, mtime 0,
    /// uid/gid 0, inode numbers in entry order, a gzip header without name or
    /// time. Same contents, same bytes.
    pub fn archive(&self) -> Result<Vec<u8>, VmError> {
        let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
        for dir in [
            "bin",
            "dev",
            "lib",
            "lib/modules",
            "mnt",
            "newroot",
            "proc",
            "sys",
            "tmp",
        ] {
            entries.insert(dir.to_owned(), Entry::Dir);
        }
        entries.insert(
            "dev/console".to_owned(),
            Entry::CharDevice { major: 5, minor: 1 },
        );
        entries.insert(
            "bin/busybox".to_owned(),
            Entry::File {
                mode: 0o755,
                bytes: self.busybox.clone(),
            },
        );
        for applet in APPLETS {
            entries.insert(
                format!("bin/{applet}"),
                Entry::Symlink("busybox".to_owned()),
            );
        }
        entries.insert(
            "init".to_owned(),
            Entry::File {
                mode: 0o755,
                bytes: self.init.clone().into_bytes(),
            },
        );
        let mut order = |file: &str, modules: &[Module]| {
            let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
            let mut text = names.join("\n");
            text.push('\n');
            entries.insert(
                format!("lib/modules/{file}"),
                Entry::File {
                    mode: 0o644,
                    bytes: text.into_bytes(),
                },
            );
            for module in modules {
                entries.insert(
                    format!("lib/modules/{}.ko", module.name),
                    Entry::File {
                        mode: 0o644,
                        bytes: module.bytes.clone(),
                    },
                );
            }
        };
        order("order", &self.modules);
        order("order-net", &self.network_modules);

        let io = |e: std::io::Error| VmError::Initramfs {
            reason: format!("writing the archive: {e}"),
        };
        let mut gzip = GzBuilder::new()
            .mtime(0)
            .operating_system(3)
            .write(Vec::new(), Compression::new(6));
        for (ino, (name, entry)) in entries.iter().enumerate() {
            let builder = cpio::newc::Builder::new(name)
                .ino(ino as u32 + 1)
                .uid(0)
                .gid(0)
                .mtime(0);
            let (builder, data): (_, &[u8]) = match entry {
                Entry::Dir => (builder.mode(0o040755).nlink(2), &[]),
                Entry::File { mode, bytes } => (builder.mode(0o100000 | mode).nlink(1), bytes),
                Entry::Symlink(target) => (builder.mode(0o120777).nlink(1), target.as_bytes()),
                Entry::CharDevice { major, minor } => (
                    builder
                        .mode(0o020600)
                        .nlink(1)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[],
                ),
            };
            let size = u32::try_from(data.len()).map_err(|_| VmError::Initramfs {
                reason: format!("{name} is larger than 4 GiB"),
            })?;
            let mut writer = builder.write(&mut gzip, size);
            writer.write_all(data).map_err(io)?;
            writer.finish().map_err(io)?;
        }
        cpio::newc::trailer(&mut gzip).map_err(io)?;
        gzip.finish().map_err(io)
    }
}

enum Entry {
    Dir,
    File { mode: u32, bytes: Vec<u8> },
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// The initramfs for `kernel`, built once and kept in `cache_dir` by digest.
///
/// Gathering the contents to hash them costs more than a whole job's host
/// side, so a reference file named by the inputs' metadata (paths, sizes,
/// mtimes) points at the content digest of the archive built from them.
pub fn cached_initramfs(kernel: &Kernel, cache_dir: &Path) -> Result<PathBuf, VmError> {
    let dir = cache_dir.join("initramfs");
    let reference = dir.join(format!("{}.ref", inputs_key(kernel)));
    if let Ok(digest) = fs::read_to_string(&reference) {
        let path = dir.join(format!("{}.cpio.gz", digest.trim()));
        if path.is_file() {
            return Ok(path);
        }
    }
    let contents = InitramfsContents::for_kernel(kernel)?;
    let digest = contents.digest();
    let path = dir.join(format!("{digest}.cpio.gz"));
    let io = |e: std::io::Error| VmError::Initramfs {
        reason: format!("caching in {}: {e}", dir.display()),
    };
    fs::create_dir_all(&dir).map_err(io)?;
    if !path.is_file() {
        let archive = contents.archive()?;
        let mut temporary = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
        temporary.write_all(&archive).map_err(io)?;
        temporary.persist(&path).map_err(|e| io(e.error))?;
    }
    let mut temporary = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
    temporary.write_all(digest.as_bytes()).map_err(io)?;
    temporary.persist(&reference).map_err(|e| io(e.error))?;
    Ok(path)
}

/// Names the inputs of the initramfs by metadata: a package update changes
/// busybox's or modules.dep's size or mtime.
fn inputs_key(kernel: &Kernel) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(FORMAT.as_bytes());
    hasher.update(GUEST_INIT.as_bytes());
    let version = kernel.version.clone().unwrap_or_default();
    hasher.update(version.as_bytes());
    let mut files: Vec<PathBuf> = busybox_candidates();
    files.push(Path::new("/lib/modules").join(&version).join("modules.dep"));
    files.push(Path::new("/boot").join(format!("config-{version}")));
    for file in files {
        hasher.update(file.as_os_str().as_encoded_bytes());
        hasher.update(metadata_stamp(&file).as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// Size and modification time, or nothing for a missing file.
pub(crate) fn metadata_stamp(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path)
        .map(|m| format!(":{}:{}.{}", m.len(), m.mtime(), m.mtime_nsec()))
        .unwrap_or_default()
}

fn busybox_candidates() -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("busybox"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push(PathBuf::from("/bin/busybox"));
    candidates
}

fn static_busybox() -> Result<Vec<u8>, VmError> {
    let mut seen_dynamic = None;
    for candidate in busybox_candidates() {
        let candidate = candidate.as_path();
        let Ok(bytes) = fs::read(candidate) else {
            continue;
        };
        if is_static_elf(&bytes) {
            return Ok(bytes);
        }
        seen_dynamic = Some(candidate.to_path_buf());
    }
    Err(VmError::Initramfs {
        reason: match seen_dynamic {
            Some(path) => format!(
                "{} is dynamically linked; the guest needs a static busybox (apt-get install busybox-static)",
                path.display()
            ),
            None => "busybox not found (apt-get install busybox-static)".to_owned(),
        },
    })
}

/// An ELF executable without a program interpreter (`PT_INTERP`).
fn is_static_elf(bytes: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let Some(phoff) = bytes
        .get(0x20..0x28)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
    else {
        return false;
    };
    let (Some(entry_size), Some(count)) = (u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..count).all(|index| {
        let at = phoff as usize + index * entry_size;
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            != Some(PT_INTERP)
    })
}

/// The named modules and their dependencies, dependencies first, read from
/// `modules.dep`; built-in modules and those in `skip` are left out.
fn load_modules(
    dir: &Path,
    roots: &[&str],
    skip: &[&str],
    strip_signatures: bool,
) -> Result<Vec<Module>, VmError> {
    let read = |name: &str| {
        fs::read_to_string(dir.join(name)).map_err(|e| VmError::Initramfs {
            reason: format!("cannot read {}: {e}", dir.join(name).display()),
        })
    };
    let dep_text = read("modules.dep")?;
    let builtin: BTreeSet<String> = read("modules.builtin")
        .unwrap_or_default()
        .lines()
        .map(|line| module_name(line.trim()))
        .collect();
    let mut table: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in dep_text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        table.insert(
            module_name(path),
            (
                path.to_owned(),
                deps.split_whitespace().map(module_name).collect(),
            ),
        );
    }

    let mut skipped: BTreeSet<String> = BTreeSet::new();
    for name in skip {
        walk(
            &table,
            &builtin,
            &normalise(name),
            &mut skipped,
            &mut Vec::new(),
        );
    }
    let mut ordered = Vec::new();
    let mut visited = skipped;
    for root in roots {
        walk(
            &table,
            &builtin,
            &normalise(root),
            &mut visited,
            &mut ordered,
        );
    }
    ordered
        .into_iter()
        .map(|name| {
            let (relative, _) = &table[&name];
            let bytes = read_module(&dir.join(relative))?;
            let bytes = if strip_signatures {
                strip_signature(bytes)
            } else {
                bytes
            };
            Ok(Module { name, bytes })
        })
        .collect()
}

fn walk(
    table: &HashMap<String, (String, Vec<String>)>,
    builtin: &BTreeSet<String>,
    name: &str,
    visited: &mut BTreeSet<String>,
    ordered: &mut Vec<String>,
) {
    if builtin.contains(name) || !visited.insert(name.to_owned()) {
        return;
    }
    // Absent from modules.dep and not built in: this kernel lacks it; the
    // guest reports what it then cannot mount.
    let Some((_, deps)) = table.get(name) else {
        return;
    };
    for dep in deps {
        walk(table, builtin, dep, visited, ordered);
    }
    ordered.push(name.to_owned());
}

/// `kernel/fs/ext4/ext4.ko.xz` → `ext4`; `-` and `_` are the same to modprobe.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalise(stem)
}

fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// Whether the kernel loads unsigned modules (its config does not set
/// `MODULE_SIG_FORCE`). Unknown config: keep the signatures.
fn signatures_optional(version: &str) -> bool {
    fs::read_to_string(Path::new("/boot").join(format!("config-{version}"))).is_ok_and(|config| {
        !config
            .lines()
            .any(|line| line == "CONFIG_MODULE_SIG_FORCE=y")
    })
}

const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";

/// The module without its appended signature. Under TCG, checking the
/// signatures (sha256 + RSA in emulated code) is most of what loading the
/// modules costs; they come from the host's own /lib/modules, which the host
/// trusts already. The kernel marks itself tainted, nothing more.
fn strip_signature(mut module: Vec<u8>) -> Vec<u8> {
    // struct module_signature: 12 bytes, the signature length big-endian last.
    let Some(body) = module.len().checked_sub(SIGNATURE_MAGIC.len()) else {
        return module;
    };
    if &module[body..] != SIGNATURE_MAGIC || body < 12 {
        return module;
    }
    let length = u32::from_be_bytes([
        module[body - 4],
        module[body - 3],
        module[body - 2],
        module[body - 1],
    ]);
    if let Some(end) = (body - 12).checked_sub(length as usize) {
        module.truncate(end);
    }
    module
}

/// A module file as the guest's busybox insmod can load it: uncompressed.
fn read_module(path: &Path) -> Result<Vec<u8>, VmError> {
    let fail = |reason: String| VmError::Initramfs {
        reason: format!("{}: {reason}", path.display()),
    };
    let bytes = fs::read(path).map_err(|e| fail(e.to_string()))?;
    let name = path.to_string_lossy();
    if name.ends_with(".ko") {
        Ok(bytes)
    } else if name.ends_with(".ko.zst") {
        zstd::decode_all(bytes.as_slice()).map_err(|e| fail(format!("cannot decompress: {e}")))
    } else if name.ends_with(".ko.gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| fail(format!("cannot decompress: {e}")))?;
        Ok(out)
    } else {
        Err(fail(
            "unsupported module compression (kiln reads .ko, .ko.zst and .ko.gz)".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InitramfsContents {
        InitramfsContents {
            busybox: b"\x7fELF pretend busybox".to_vec(),
            modules: vec![
                Module {
                    name: "virtio_ring".into(),
                    bytes: vec![1; 1000],
                },
                Module {
                    name: "virtio".into(),
                    bytes: vec![2; 1000],
                },
            ],
            network_modules: vec![Module {
                name: "virtio_net".into(),
                bytes: vec![3; 10],
            }],
            init: GUEST_INIT.to_owned(),
        }
    }

    #[test]
    fn same_inputs_give_identical_bytes() {
        let first = sample().archive().unwrap();
        let second = sample().archive().unwrap();
        assert_eq!(first, second);
        assert_eq!(sample().digest(), sample().digest());
        // gzip header: no mtime, no file name.
        assert_eq!(&first[4..8], &[0, 0, 0, 0]);
        assert_eq!(first[3] & 0x08, 0);
    }

    #[test]
    fn different_inputs_give_different_digests() {
        let mut other = sample();
        other.modules[1].bytes[0] = 9;
        assert_ne!(sample().digest(), other.digest());
    }

    #[test]
    fn archive_is_sorted_newc_with_zero_metadata() {
        let archive = sample().archive().unwrap();
        let mut cpio = Vec::new();
        flate2::read::GzDecoder::new(archive.as_slice())
            .read_to_end(&mut cpio)
            .unwrap();
        let mut reader = cpio.as_slice();
        let mut names = Vec::new();
        loop {
            let entry = cpio::newc::Reader::new(reader).unwrap();
            if entry.entry().is_trailer() {
                break;
            }
            assert_eq!(entry.entry().mtime(), 0);
            assert_eq!(entry.entry().uid(), 0);
            names.push(entry.entry().name().to_owned());
            reader = entry.finish().unwrap();
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.contains(&"init".to_owned()));
        assert!(names.contains(&"dev/console".to_owned()));
        assert!(names.contains(&"lib/modules/virtio_ring.ko".to_owned()));
    }

    #[test]
    fn signatures_are_cut_off_exactly() {
        let mut signed = b"ELF module body".to_vec();
        let signature = vec![7u8; 5];
        signed.extend(&signature);
        signed.extend([0, 0, 2, 0, 0, 0, 0, 0]);
        signed.extend(5u32.to_be_bytes());
        signed.extend(SIGNATURE_MAGIC);
        assert_eq!(strip_signature(signed), b"ELF module body");
        assert_eq!(strip_signature(b"unsigned".to_vec()), b"unsigned");
    }

    #[test]
    fn module_names_drop_paths_and_suffixes() {
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko"),
            "virtio_rng"
        );
    }
}
