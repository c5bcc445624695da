//! Unpacking a tar stream into a fresh directory, refusing anything that
//! could write outside it.
//!
//! Every path is checked against what this unpacker itself created (kept in
//! memory), never against the file system: an entry whose path climbs out
//! (`..`), is absolute, or passes through a symlink or a file it created is
//! refused before anything is written for it. Symlinks are created as they
//! are and never followed. Device nodes, fifos and unknown entry kinds are
//! skipped and reported. One [`Unpacker`] applies several archives in order
//! (the layers of an OCI image, [`Unpacker::apply_layer`]): what an earlier
//! layer created is known to the checks of every later one, so a symlink
//! made by layer 1 never lets layer 2 write through it.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tar::EntryType;

use super::error::{ImageError, IoContext};
use super::import::Skipped;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

/// Applies tar streams to `target` (an existing, empty directory).
pub(crate) struct Unpacker {
    target: PathBuf,
    /// What exists below `target`, by normalised relative path.
    created: HashMap<PathBuf, Kind>,
    pub(crate) skipped: Vec<Skipped>,
    pub(crate) entries: u64,
    /// While a layer is applied: every path its entries wrote (with their
    /// ancestors). Whiteouts hide only what lower layers made (OCI image
    /// spec, layer.md), never what the same layer wrote.
    layer: Option<HashSet<PathBuf>>,
}

/// The OCI whiteout prefix and the opaque-directory marker.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

impl Unpacker {
    pub(crate) fn new(target: &Path) -> Self {
        let mut created = HashMap::new();
        created.insert(PathBuf::new(), Kind::Dir);
        Unpacker {
            target: target.to_path_buf(),
            created,
            skipped: Vec::new(),
            entries: 0,
            layer: None,
        }
    }

    /// Applies an OCI image layer on top of what is there: like
    /// [`Unpacker::apply`], but `.wh.NAME` deletes NAME and
    /// `.wh..wh..opq` empties its directory of what lower layers put there.
    pub(crate) fn apply_layer(
        &mut self,
        archive: &Path,
        reader: impl Read,
    ) -> Result<(), ImageError> {
        self.layer = Some(HashSet::new());
        let result = self.apply(archive, reader);
        self.layer = None;
        result
    }

    /// Unpacks every entry of `reader`; `archive` names it in errors.
    pub(crate) fn apply(&mut self, archive: &Path, reader: impl Read) -> Result<(), ImageError> {
        let bad_archive = |e: io::Error| ImageError::Archive {
            archive: archive.to_path_buf(),
            reason: e.to_string(),
        };
        let consumed = Rc::new(Cell::new(0u64));
        let mut tar = tar::Archive::new(Counting {
            inner: reader,
            consumed: consumed.clone(),
        });
        // Where the data of the last entry ends (rounded up to a block).
        let mut last_end = 0u64;
        for entry in tar.entries().map_err(bad_archive)? {
            let mut entry = entry.map_err(bad_archive)?;
            let stored = if entry.header().entry_type() == EntryType::GNUSparse {
                entry.header().entry_size().map_err(bad_archive)?
            } else {
                entry.size()
            };
            last_end = entry.raw_file_position() + stored.div_ceil(BLOCK) * BLOCK;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let unsafe_entry = |reason: String| ImageError::UnsafeEntry {
                archive: archive.to_path_buf(),
                entry: shown.clone(),
                reason,
            };
            let relative = normalise(&raw).map_err(|r| unsafe_entry(r.to_owned()))?;
            self.entries += 1;
            let kind = entry.header().entry_type();
            if relative.as_os_str().is_empty() {
                // `./` itself: the target directory already exists.
                if kind.is_dir() {
                    continue;
                }
                return Err(unsafe_entry("replaces the image's root directory".into()));
            }
            if self.layer.is_some()
                && let Some(name) = relative.file_name()
                && name.as_bytes().starts_with(WHITEOUT_PREFIX)
            {
                self.whiteout(&relative, name.as_bytes(), &unsafe_entry)?;
                continue;
            }
            self.touch(&relative);
            let skip = |what: &str| Skipped {
                path: shown.clone(),
                kind: what.to_owned(),
            };
            match kind {
                EntryType::Directory => {
                    self.prepare_parents(&relative)
                        .map_err(|e| e.into_error(&unsafe_entry))?;
                    self.make_dir(&relative)?;
                }
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    self.prepare_parents(&relative)
                        .map_err(|e| e.into_error(&unsafe_entry))?;
                    self.clear(&relative)?;
                    let mode = entry.header().mode().map_err(bad_archive)?;
                    self.write_file(&relative, mode, &mut entry)
                        .map_err(|e| match e {
                            WriteError::Read(e) => bad_archive(e),
                            WriteError::Image(e) => e,
                        })?;
                }
                EntryType::Symlink => {
                    let target = entry
                        .link_name_bytes()
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| unsafe_entry("is a symlink without a target".into()))?
                        .into_owned();
                    self.prepare_parents(&relative)
                        .map_err(|e| e.into_error(&unsafe_entry))?;
                    self.clear(&relative)?;
                    let path = self.target.join(&relative);
                    std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).at(&path)?;
                    self.created.insert(relative, Kind::Symlink);
                }
                EntryType::Link => {
                    let raw_target = entry
                        .link_name_bytes()
                        .ok_or_else(|| unsafe_entry("is a hard link without a target".into()))?
                        .into_owned();
                    let source = normalise(&raw_target).map_err(|r| {
                        unsafe_entry(format!(
                            "is a hard link to {:?}, which {r}",
                            String::from_utf8_lossy(&raw_target)
                        ))
                    })?;
                    let source_kind = self.created.get(&source).copied();
                    self.prepare_parents(&relative)
                        .map_err(|e| e.into_error(&unsafe_entry))?;
                    self.link(&relative, &source, source_kind).map_err(|e| match e {
                        LinkError::NotEarlier => unsafe_entry(format!(
                            "is a hard link to {:?}, which is not an earlier file of the archive",
                            String::from_utf8_lossy(&raw_target)
                        )),
                        LinkError::Image(e) => e,
                    })?;
                }
                EntryType::Char => self.skipped.push(skip("character device")),
                EntryType::Block => self.skipped.push(skip("block device")),
                EntryType::Fifo => self.skipped.push(skip("fifo")),
                other => self.skipped.push(skip(&format!(
                    "tar entry of type {:?}",
                    other.as_byte() as char
                ))),
            }
        }
        // The tar crate ends quietly at an end of file between two entries:
        // only the end-of-archive block tells a whole archive from a cut one.
        if consumed.get() <= last_end || consumed.get() == 0 {
            return Err(ImageError::Archive {
                archive: archive.to_path_buf(),
                reason: "it ends without an end-of-archive block (truncated?)".into(),
            });
        }
        // Reading to the end checks the compressed stream's own checksum.
        io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(bad_archive)?;
        Ok(())
    }

    /// Records that the current layer wrote `relative` (and so its parents).
    fn touch(&mut self, relative: &Path) {
        if let Some(touched) = &mut self.layer {
            for ancestor in relative.ancestors() {
                if !touched.insert(ancestor.to_path_buf()) {
                    break;
                }
            }
        }
    }

    /// Applies the whiteout entry `relative` (whose file name is `name`).
    fn whiteout(
        &mut self,
        relative: &Path,
        name: &[u8],
        unsafe_entry: &dyn Fn(String) -> ImageError,
    ) -> Result<(), ImageError> {
        let parent = relative.parent().unwrap_or(Path::new(""));
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if matches!(hidden, b"" | b"." | b"..") {
            return Err(unsafe_entry(
                "is a whiteout that names no file (or `.`/`..`)".into(),
            ));
        }
        // Never look through a symlink or a file, and never create anything:
        // a whiteout in a directory that does not exist hides nothing.
        let mut prefix = PathBuf::new();
        for component in parent.components() {
            prefix.push(component);
            match self.created.get(&prefix) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    return Err(ParentError::Through("symlink", prefix).into_error(unsafe_entry));
                }
                Some(Kind::File) => {
                    return Err(ParentError::Through("file", prefix).into_error(unsafe_entry));
                }
                None => return Ok(()),
            }
        }
        if name == OPAQUE_MARKER {
            return self.hide_lower(parent, false);
        }
        // Other `.wh..wh.` names are aufs bookkeeping, not whiteouts.
        if hidden.starts_with(WHITEOUT_PREFIX) {
            return Ok(());
        }
        self.hide_lower(&parent.join(OsStr::from_bytes(hidden)), true)
    }

    /// Removes what lower layers made below `path` (and `path` itself when
    /// `itself`), keeping what the current layer wrote.
    fn hide_lower(&mut self, path: &Path, itself: bool) -> Result<(), ImageError> {
        let touched = self.layer.as_ref();
        let mut doomed: Vec<PathBuf> = self
            .created
            .keys()
            .filter(|known| {
                (if *known == path {
                    itself
                } else {
                    known.starts_with(path)
                }) && !touched.is_some_and(|t| t.contains(*known))
            })
            .cloned()
            .collect();
        // Parents first: removing one removes what is below it.
        doomed.sort_by_key(|p| p.components().count());
        for known in doomed {
            if self.created.contains_key(&known) {
                self.clear(&known)?;
            }
        }
        Ok(())
    }

    /// Makes sure every ancestor of `relative` is a directory this unpacker
    /// made (creating missing ones), never a symlink or a file.
    fn prepare_parents(&mut self, relative: &Path) -> Result<(), ParentError> {
        let mut prefix = PathBuf::new();
        let components: Vec<_> = relative.components().collect();
        for component in &components[..components.len().saturating_sub(1)] {
            prefix.push(component);
            match self.created.get(&prefix) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => return Err(ParentError::Through("symlink", prefix)),
                Some(Kind::File) => return Err(ParentError::Through("file", prefix)),
                None => {
                    let path = self.target.join(&prefix);
                    fs::create_dir(&path)
                        .map_err(|e| ParentError::Image(ImageError::io(&path, e)))?;
                    self.created.insert(prefix.clone(), Kind::Dir);
                }
            }
        }
        Ok(())
    }

    /// Removes what a later entry replaces (tar semantics: the last wins).
    fn clear(&mut self, relative: &Path) -> Result<(), ImageError> {
        let path = self.target.join(relative);
        match self.created.remove(relative) {
            None => Ok(()),
            Some(Kind::Dir) => {
                self.created.retain(|known, _| !known.starts_with(relative));
                fs::remove_dir_all(&path).at(&path)
            }
            Some(Kind::File | Kind::Symlink) => fs::remove_file(&path).at(&path),
        }
    }

    fn make_dir(&mut self, relative: &Path) -> Result<(), ImageError> {
        if self.created.get(relative) == Some(&Kind::Dir) {
            return Ok(());
        }
        self.clear(relative)?;
        let path = self.target.join(relative);
        fs::create_dir(&path).at(&path)?;
        self.created.insert(relative.to_path_buf(), Kind::Dir);
        Ok(())
    }

    fn write_file(
        &mut self,
        relative: &Path,
        mode: u32,
        contents: &mut impl Read,
    ) -> Result<(), WriteError> {
        let path = self.target.join(relative);
        let image_err = |e: io::Error| WriteError::Image(ImageError::io(&path, e));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&path)
            .map_err(image_err)?;
        copy(contents, &mut file).map_err(|e| match e {
            CopyError::Read(e) => WriteError::Read(e),
            CopyError::Write(e) => image_err(e),
        })?;
        // Only the executable bit is kept by the store; the owner can always
        // read what it imports.
        file.set_permissions(fs::Permissions::from_mode((mode & 0o777) | 0o600))
            .map_err(image_err)?;
        self.created.insert(relative.to_path_buf(), Kind::File);
        Ok(())
    }

    fn link(
        &mut self,
        relative: &Path,
        source: &Path,
        source_kind: Option<Kind>,
    ) -> Result<(), LinkError> {
        let from = self.target.join(source);
        let to = self.target.join(relative);
        if relative == source {
            return match source_kind {
                Some(Kind::File) => Ok(()),
                _ => Err(LinkError::NotEarlier),
            };
        }
        match source_kind {
            Some(Kind::File) => {
                self.clear(relative).map_err(LinkError::Image)?;
                fs::hard_link(&from, &to).map_err(|e| LinkError::Image(ImageError::io(&to, e)))?;
                self.created.insert(relative.to_path_buf(), Kind::File);
            }
            Some(Kind::Symlink) => {
                let target =
                    fs::read_link(&from).map_err(|e| LinkError::Image(ImageError::io(&from, e)))?;
                self.clear(relative).map_err(LinkError::Image)?;
                std::os::unix::fs::symlink(&target, &to)
                    .map_err(|e| LinkError::Image(ImageError::io(&to, e)))?;
                self.created.insert(relative.to_path_buf(), Kind::Symlink);
            }
            Some(Kind::Dir) | None => return Err(LinkError::NotEarlier),
        }
        Ok(())
    }
}

const BLOCK: u64 = 512;

/// Counts the bytes the tar reader consumed.
struct Counting<R> {
    inner: R,
    consumed: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

enum ParentError {
    Through(&'static str, PathBuf),
    Image(ImageError),
}

impl ParentError {
    fn into_error(self, unsafe_entry: &dyn Fn(String) -> ImageError) -> ImageError {
        match self {
            ParentError::Through(what, prefix) => unsafe_entry(format!(
                "goes through the {what} {:?} of the archive",
                prefix.display().to_string()
            )),
            ParentError::Image(e) => e,
        }
    }
}

enum WriteError {
    Read(io::Error),
    Image(ImageError),
}

enum LinkError {
    NotEarlier,
    Image(ImageError),
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// `io::copy`, telling a damaged archive from a failing disk.
fn copy(from: &mut impl Read, to: &mut impl io::Write) -> Result<(), CopyError> {
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        to.write_all(&buffer[..n]).map_err(CopyError::Write)?;
    }
}

/// An archive path as a relative path of plain names: `./` and empty parts
/// dropped; absolute paths and `..` refused (the reason completes "entry
/// X ...").
pub(crate) fn normalise(raw: &[u8]) -> Result<PathBuf, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("is an absolute path, which would write outside the image");
    }
    let mut relative = PathBuf::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("climbs out of the image with `..`"),
            name => relative.push(OsStr::from_bytes(name)),
        }
    }
    Ok(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Item<'a> {
        Dir(&'a str),
        File(&'a str, &'a str, u32),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
    }

    /// An archive built entry by entry (the `tar` crate writes GNU headers
    /// with long-name extensions as needed).
    fn archive(items: &[Item<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o755);
            match item {
                Item::Dir(path) => {
                    header.set_entry_type(EntryType::Directory);
                    header.set_size(0);
                    builder.append_data(&mut header, path, io::empty()).unwrap();
                }
                Item::File(path, contents, mode) => {
                    header.set_mode(*mode);
                    header.set_size(contents.len() as u64);
                    builder
                        .append_data(&mut header, path, contents.as_bytes())
                        .unwrap();
                }
                Item::Symlink(path, target) | Item::HardLink(path, target) => {
                    let kind = if matches!(item, Item::Symlink(..)) {
                        EntryType::Symlink
                    } else {
                        EntryType::Link
                    };
                    header.set_entry_type(kind);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    fn unpack(items: &[Item<'_>]) -> (tempfile::TempDir, Result<Unpacker, ImageError>) {
        let dir = tempfile::tempdir().unwrap();
        let mut unpacker = Unpacker::new(dir.path());
        let bytes = archive(items);
        let result = unpacker
            .apply(Path::new("test.tar"), bytes.as_slice())
            .map(|()| unpacker);
        (dir, result)
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        use Item::*;
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(120));
        let (dir, result) = unpack(&[
            File("a", "first", 0o644),
            File("a", "second", 0o755),
            Dir("b"),
            File("b/inner", "gone", 0o644),
            Symlink("b", "elsewhere"),
            Symlink("c", "/etc"),
            Dir("c"),
            File("c/ok", "real dir now", 0o644),
            File(&long, "long names", 0o644),
            HardLink("h", "a"),
            HardLink("s", "b"),
        ]);
        let unpacker = result.unwrap();
        let root = dir.path();
        assert_eq!(fs::read_to_string(root.join("a")).unwrap(), "second");
        let mode = fs::metadata(root.join("a")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            fs::read_link(root.join("b")).unwrap(),
            Path::new("elsewhere")
        );
        assert!(fs::symlink_metadata(root.join("c")).unwrap().is_dir());
        assert_eq!(
            fs::read_to_string(root.join("c/ok")).unwrap(),
            "real dir now"
        );
        assert_eq!(fs::read_to_string(root.join(&long)).unwrap(), "long names");
        assert_eq!(fs::read_to_string(root.join("h")).unwrap(), "second");
        assert_eq!(
            fs::read_link(root.join("s")).unwrap(),
            Path::new("elsewhere")
        );
        assert_eq!(unpacker.entries, 11);
        assert!(unpacker.skipped.is_empty());
    }

    #[test]
    fn unsafe_entries_are_refused() {
        use Item::*;
        for (items, needle) in [
            (
                vec![Dir("d"), Symlink("d", "/etc"), File("d/passwd", "x", 0o644)],
                "goes through the symlink \"d\"",
            ),
            (
                vec![File("f", "x", 0o644), File("f/g", "x", 0o644)],
                "goes through the file \"f\"",
            ),
            (
                vec![Symlink("l", "/"), Dir("l/etc")],
                "goes through the symlink \"l\"",
            ),
            (
                vec![Symlink("l", "/etc"), HardLink("l/x", "a")],
                "goes through the symlink",
            ),
            (vec![Dir("d"), HardLink("h", "d")], "not an earlier file"),
            (vec![HardLink("h", "later")], "not an earlier file"),
            (vec![File("./", "x", 0o644)], "root directory"),
        ] {
            let (_dir, result) = unpack(&items);
            let err = result.err().expect(needle).to_string();
            assert!(err.contains(needle), "{needle:?} not in {err}");
            assert!(err.contains("nothing was imported"), "{err}");
        }
    }

    fn names_below(root: &Path) -> Vec<String> {
        let mut names = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let relative = path.strip_prefix(root).unwrap().display().to_string();
                if fs::symlink_metadata(&path).unwrap().is_dir() {
                    stack.push(path);
                    names.push(format!("{relative}/"));
                } else {
                    names.push(relative);
                }
            }
        }
        names.sort();
        names
    }

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        use Item::*;
        let dir = tempfile::tempdir().unwrap();
        let mut unpacker = Unpacker::new(dir.path());
        let layers = [
            archive(&[
                File("a/gone", "1", 0o644),
                File("a/kept", "1", 0o644),
                File("opq/old", "1", 0o644),
                File("opq/sub/old", "1", 0o644),
                File("dir/x", "1", 0o644),
                Symlink("link", "/etc"),
            ]),
            archive(&[
                File("a/.wh.gone", "", 0o644),
                // Written before the opaque marker of the same layer: kept.
                File("opq/sub/new", "2", 0o644),
                File("opq/.wh..wh..opq", "", 0o644),
                File("opq/new", "2", 0o644),
                // The same layer's file survives its own later whiteout.
                File("same", "2", 0o644),
                File(".wh.same", "", 0o644),
                // A whiteout of a directory takes it whole; of a symlink,
                // the link and not what it points at.
                File(".wh.dir", "", 0o644),
                File(".wh.link", "", 0o644),
                // Nothing there to hide, nothing created for it.
                File("nowhere/.wh.x", "", 0o644),
                // aufs bookkeeping is ignored.
                File(".wh..wh.plnk", "", 0o644),
            ]),
        ];
        for layer in &layers {
            unpacker
                .apply_layer(Path::new("layer.tar"), layer.as_slice())
                .unwrap();
        }
        assert_eq!(
            names_below(dir.path()),
            [
                "a/",
                "a/kept",
                "opq/",
                "opq/new",
                "opq/sub/",
                "opq/sub/new",
                "same"
            ]
        );
        // The same names in a plain rootfs tarball are just files.
        let plain = tempfile::tempdir().unwrap();
        Unpacker::new(plain.path())
            .apply(Path::new("rootfs.tar"), layers[1].as_slice())
            .unwrap();
        assert!(plain.path().join("a/.wh.gone").is_file());
    }

    #[test]
    fn an_empty_archive_is_an_empty_image() {
        let (dir, result) = unpack(&[]);
        assert_eq!(result.unwrap().entries, 0);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn paths_are_normalised_or_refused() {
        assert_eq!(
            normalise(b"./usr//bin/./sh").unwrap(),
            Path::new("usr/bin/sh")
        );
        assert_eq!(normalise(b"./").unwrap(), Path::new(""));
        assert!(normalise(b"/etc/evil").unwrap_err().contains("absolute"));
        assert!(normalise(b"a/../../evil").unwrap_err().contains(".."));
        assert!(normalise(b"..").unwrap_err().contains(".."));
        assert_eq!(normalise(b"a..b/..c").unwrap(), Path::new("a..b/..c"));
    }
}
