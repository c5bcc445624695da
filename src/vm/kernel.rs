//! The guest kernel: which file, its release (for its modules), and the
//! form QEMU boots fastest. A bzImage boots through its real-mode setup and
//! decompresses itself, which under TCG costs seconds of emulated CPU; the
//! uncompressed vmlinux inside it boots straight into the kernel through
//! PVH. kiln extracts it once per kernel and caches it.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::VmError;

/// The kernel a job asked for, resolved to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub path: PathBuf,
    /// From the bzImage header; `None` when the file is no bzImage.
    pub version: Option<String>,
}

impl Kernel {
    pub fn resolve(choice: &super::KernelChoice) -> Result<Kernel, VmError> {
        let path = match choice {
            super::KernelChoice::Default => newest_boot_kernel(Path::new("/boot"))?,
            super::KernelChoice::Path(path) => {
                if !path.is_file() {
                    return Err(VmError::KernelNotFound {
                        reason: format!("{} is not a file", path.display()),
                    });
                }
                path.clone()
            }
        };
        let version = bzimage_version(&path)?;
        Ok(Kernel { path, version })
    }
}

/// The newest `vmlinuz-*` in `boot`, by version order.
pub fn newest_boot_kernel(boot: &Path) -> Result<PathBuf, VmError> {
    let not_found = |reason: String| VmError::KernelNotFound { reason };
    let entries = fs::read_dir(boot)
        .map_err(|e| not_found(format!("cannot read {}: {e}", boot.display())))?;
    let mut kernels: Vec<(Vec<VersionPart>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.strip_prefix("vmlinuz-")?;
            Some((version_key(version), entry.path()))
        })
        .collect();
    kernels.sort();
    kernels.pop().map(|(_, path)| path).ok_or_else(|| {
        not_found(format!(
            "no vmlinuz-* in {} (on Debian: apt-get install linux-image-amd64)",
            boot.display()
        ))
    })
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum VersionPart {
    Text(String),
    Number(u64),
}

/// `6.1.0-10` < `6.1.0-9`? No: digits compare as numbers.
fn version_key(version: &str) -> Vec<VersionPart> {
    let mut parts = Vec::new();
    let mut rest = version;
    while let Some(first) = rest.chars().next() {
        let is_digit = first.is_ascii_digit();
        let end = rest
            .find(|c: char| c.is_ascii_digit() != is_digit)
            .unwrap_or(rest.len());
        let (part, tail) = rest.split_at(end);
        parts.push(match part.parse() {
            Ok(number) if is_digit => VersionPart::Number(number),
            _ => VersionPart::Text(part.to_owned()),
        });
        rest = tail;
    }
    parts
}

/// The release string of an x86 bzImage (boot protocol >= 2.00), e.g.
/// `6.1.0-56-amd64`; `None` when the file is no bzImage.
pub fn bzimage_version(path: &Path) -> Result<Option<String>, VmError> {
    let mut header = vec![0u8; 0x10000];
    let mut file = fs::File::open(path).map_err(|e| VmError::KernelNotFound {
        reason: format!("cannot open {}: {e}", path.display()),
    })?;
    let mut filled = 0;
    loop {
        match file.read(&mut header[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => {
                return Err(VmError::KernelNotFound {
                    reason: format!("cannot read {}: {e}", path.display()),
                });
            }
        }
        if filled == header.len() {
            break;
        }
    }
    let header = &header[..filled];
    if header.get(0x202..0x206) != Some(b"HdrS") {
        return Ok(None);
    }
    let Some(offset) = header
        .get(0x20e..0x210)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    else {
        return Ok(None);
    };
    let start = 0x200 + offset;
    let Some(text) = header.get(start..) else {
        return Ok(None);
    };
    let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
    Ok(std::str::from_utf8(text)
        .ok()
        .and_then(|text| text.split_whitespace().next())
        .map(str::to_owned))
}

/// What QEMU should load for `kernel`: the cached PVH vmlinux extracted from
/// it when that works, else the kernel file itself.
pub fn bootable_kernel(kernel: &Kernel, cache_dir: &Path) -> Result<PathBuf, VmError> {
    // Named by the kernel file's metadata: reading and hashing it on every
    // job would cost more than the lookup saves.
    let mut hasher = blake3::Hasher::new();
    hasher.update(kernel.path.as_os_str().as_encoded_bytes());
    hasher.update(super::initramfs::metadata_stamp(&kernel.path).as_bytes());
    let key = hasher.finalize().to_hex();
    let dir = cache_dir.join("kernels");
    let vmlinux = dir.join(format!("{key}.vmlinux"));
    let unusable = dir.join(format!("{key}.no-pvh"));
    if vmlinux.is_file() {
        return Ok(vmlinux);
    }
    if unusable.is_file() {
        return Ok(kernel.path.clone());
    }
    let bytes = fs::read(&kernel.path).map_err(|e| VmError::KernelNotFound {
        reason: format!("cannot read {}: {e}", kernel.path.display()),
    })?;
    if is_pvh_elf(&bytes) {
        return Ok(kernel.path.clone());
    }
    let io = |e: std::io::Error| VmError::Io {
        context: format!("caching a kernel in {}", dir.display()),
        source: e,
    };
    fs::create_dir_all(&dir).map_err(io)?;
    match extract_vmlinux(&bytes).filter(|elf| is_pvh_elf(elf)) {
        Some(elf) => {
            let mut temporary = tempfile::NamedTempFile::new_in(&dir).map_err(io)?;
            temporary.write_all(&elf).map_err(io)?;
            temporary.persist(&vmlinux).map_err(|e| io(e.error))?;
            Ok(vmlinux)
        }
        None => {
            fs::write(&unusable, b"").map_err(io)?;
            Ok(kernel.path.clone())
        }
    }
}

/// The compressed payload of a bzImage (boot protocol >= 2.08), decompressed.
fn extract_vmlinux(bzimage: &[u8]) -> Option<Vec<u8>> {
    if bzimage.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let u32_at = |at: usize| {
        bzimage
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let setup_sectors = match *bzimage.get(0x1f1)? {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sectors + 1) * 512 + u32_at(0x248)?;
    let payload = bzimage.get(start..start + u32_at(0x24c)?)?;
    if payload.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(payload)
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(payload)
            .ok()?
            .single_frame()
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    } else if payload.starts_with(b"\xfd7zXZ\x00") {
        unxz(payload)
    } else {
        None
    }
}

/// xz through the `xz` tool; the kernel appends its size after the stream,
/// hence `--single-stream`.
fn unxz(payload: &[u8]) -> Option<Vec<u8>> {
    let mut child = Command::new("xz")
        .args(["--single-stream", "-dc"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let payload = payload.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&payload));
    let output = child.wait_with_output().ok()?;
    writer.join().ok()?.ok()?;
    output.status.success().then_some(output.stdout)
}

/// An ELF file carrying the Xen PVH entry note QEMU needs to boot it.
fn is_pvh_elf(bytes: &[u8]) -> bool {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(entry_size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..count).any(|index| {
        let header = phoff as usize + index * entry_size;
        if u32_at(header) != Some(PT_NOTE) {
            return false;
        }
        let (Some(offset), Some(size)) = (u64_at(header + 8), u64_at(header + 32)) else {
            return false;
        };
        let (mut at, end) = (offset as usize, (offset + size) as usize);
        while at + 12 <= end {
            let (Some(name_size), Some(desc_size), Some(kind)) =
                (u32_at(at), u32_at(at + 4), u32_at(at + 8))
            else {
                return false;
            };
            let name = bytes.get(at + 12..at + 12 + name_size as usize);
            if kind == XEN_ELFNOTE_PHYS32_ENTRY && name == Some(b"Xen\0") {
                return true;
            }
            at += 12
                + (name_size as usize).next_multiple_of(4)
                + (desc_size as usize).next_multiple_of(4);
        }
        false
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_numerically() {
        assert!(version_key("6.1.0-10-amd64") > version_key("6.1.0-9-amd64"));
        assert!(version_key("6.10.0") > version_key("6.9.12"));
    }

    #[test]
    fn a_garbage_kernel_has_no_version() {
        let file = tempfile::NamedTempFile::new().unwrap();
        fs::write(file.path(), b"this is not a kernel").unwrap();
        assert_eq!(bzimage_version(file.path()).unwrap(), None);
    }

    #[test]
    fn garbage_is_no_pvh_kernel() {
        assert!(!is_pvh_elf(b"\x7fELF\x02 but nothing else"));
        assert_eq!(extract_vmlinux(&[0u8; 4096]), None);
    }
}
