//! Resolving image names, the host fingerprint, and materialising images.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln::image::{
    self, HOST_EXCLUDED, ImageError, ImageRef, ImportOptions, fingerprint_root, host_excludes,
    host_fingerprint, materialise, resolve,
};
use kiln::sandbox::{HOST_VIEW_HIDDEN, RootFs};
use kiln_store::{RootKind, Store};

fn tiny_root(parent: &Path) -> PathBuf {
    let root = parent.join("rootfs");
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/os-release"), "ID=tiny\n").unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    for n in 0..200 {
        fs::write(
            root.join(format!("etc/file{n}")),
            format!("{n}\n").repeat(n * 50),
        )
        .unwrap();
    }
    symlink("usr/bin", root.join("bin")).unwrap();
    root
}

fn imported(dir: &Path, name: &str) -> (Store, kiln_store::B3Digest) {
    let mut store = Store::open(dir.join("store")).unwrap();
    let root = tiny_root(dir);
    let report = image::import(&mut store, name, &root, &ImportOptions::default()).unwrap();
    (store, report.digest)
}

#[test]
fn names_digests_and_host_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, digest) = imported(dir.path(), "debian/stable");

    let host = resolve(&mut store, "host").unwrap();
    assert_eq!(
        host,
        ImageRef::Host {
            fingerprint: host_fingerprint().unwrap()
        }
    );
    assert_eq!(host.digest(), fingerprint_root(Path::new("/")).unwrap());
    assert!(host.is_host());

    let before = store
        .get_root(RootKind::Image, "debian/stable")
        .unwrap()
        .unwrap()
        .last_used;
    std::thread::sleep(Duration::from_millis(5));
    let by_name = resolve(&mut store, "debian/stable").unwrap();
    assert_eq!(
        by_name,
        ImageRef::Tree {
            name: "debian/stable".into(),
            digest
        }
    );
    assert_eq!(by_name.digest(), digest);
    let after = store
        .get_root(RootKind::Image, "debian/stable")
        .unwrap()
        .unwrap()
        .last_used;
    assert!(after > before, "last used {before} → {after}");

    let by_digest = resolve(&mut store, &digest.to_string()).unwrap();
    assert_eq!(by_digest.digest(), digest);
    assert_eq!(by_digest.name(), digest.to_string());
}

#[test]
fn what_cannot_resolve_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = imported(dir.path(), "present");

    let missing = resolve(&mut store, "golang").unwrap_err();
    assert!(matches!(missing, ImageError::NotFound { .. }));
    assert_eq!(
        missing.to_string(),
        "no image named \"golang\" in the store: import it first with \
         `kiln image import golang SRC`"
    );

    let unknown = "blake3:".to_owned() + &"ab".repeat(32);
    let err = resolve(&mut store, &unknown).unwrap_err().to_string();
    assert!(
        err.contains(&unknown) && err.contains("kiln image import"),
        "{err}"
    );

    // A blob is not an image.
    let roots = store.temp_roots().unwrap();
    let blob = store
        .add_bytes(b"not a tree", &roots)
        .unwrap()
        .object
        .digest;
    let err = resolve(&mut store, &blob.to_string())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no tree"), "{err}");

    let err = resolve(&mut store, "blake3:xyz").unwrap_err().to_string();
    assert!(err.contains("blake3:xyz"), "{err}");
    let err = resolve(&mut store, "bad name").unwrap_err().to_string();
    assert!(err.contains("invalid image name \"bad name\""), "{err}");

    // A removed image no longer resolves.
    image::remove(&mut store, "present").unwrap();
    assert!(matches!(
        resolve(&mut store, "present"),
        Err(ImageError::NotFound { .. })
    ));
}

fn fake_host(dir: &Path) -> PathBuf {
    let root = dir.join("host");
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    fs::write(root.join("etc/os-release"), "ID=debian\nVERSION_ID=12\n").unwrap();
    fs::write(
        root.join("var/lib/dpkg/status"),
        "Package: libc6\nVersion: 2.36-9\n\nPackage: gcc\nVersion: 4:12.2.0-3\n",
    )
    .unwrap();
    fs::write(root.join("etc/ld.so.cache"), b"ld.so-1.7.0\0cache").unwrap();
    root
}

#[test]
fn the_fingerprint_follows_the_installed_software() {
    let dir = tempfile::tempdir().unwrap();
    let root = fake_host(dir.path());
    let first = fingerprint_root(&root).unwrap();
    assert_eq!(
        fingerprint_root(&root).unwrap(),
        first,
        "stable across calls"
    );

    // An unrelated file does not count.
    fs::write(root.join("etc/motd"), "hello").unwrap();
    assert_eq!(fingerprint_root(&root).unwrap(), first);

    // A host upgrade does.
    let status = root.join("var/lib/dpkg/status");
    fs::write(
        &status,
        "Package: libc6\nVersion: 2.36-9+deb12u1\n\nPackage: gcc\nVersion: 4:12.2.0-3\n",
    )
    .unwrap();
    let upgraded = fingerprint_root(&root).unwrap();
    assert_ne!(upgraded, first);

    let mut seen = vec![first, upgraded];
    let mut changes_it = |change: &dyn Fn()| {
        change();
        let now = fingerprint_root(&root).unwrap();
        assert!(!seen.contains(&now), "{now} seen before");
        seen.push(now);
    };
    changes_it(&|| fs::write(root.join("etc/ld.so.cache"), b"ld.so-1.7.0\0other").unwrap());
    changes_it(&|| fs::write(root.join("etc/os-release"), "ID=debian\nVERSION_ID=13\n").unwrap());
    changes_it(&|| {
        fs::create_dir_all(root.join("var/lib/rpm")).unwrap();
        fs::write(root.join("var/lib/rpm/rpmdb.sqlite"), "rpm").unwrap();
    });
    changes_it(&|| {
        fs::create_dir_all(root.join("lib/apk/db")).unwrap();
        fs::write(root.join("lib/apk/db/installed"), "P:musl\n").unwrap();
    });
    // A file moved between inputs is not the same host.
    changes_it(&|| fs::remove_file(root.join("etc/ld.so.cache")).unwrap());
    changes_it(&|| fs::write(root.join("etc/ld.so.cache"), "").unwrap());

    // An unreadable input is an error naming it, not a silent absence.
    let blocked = dir.path().join("blocked");
    fs::create_dir_all(blocked.join("etc/os-release")).unwrap();
    let err = fingerprint_root(&blocked).unwrap_err().to_string();
    assert!(err.contains("os-release"), "{err}");
}

#[test]
fn the_host_fingerprint_is_cheap() {
    let started = Instant::now();
    let fresh = fingerprint_root(Path::new("/")).unwrap();
    let uncached = started.elapsed();
    assert_eq!(host_fingerprint().unwrap(), fresh);
    let started = Instant::now();
    for _ in 0..1000 {
        host_fingerprint().unwrap();
    }
    let cached = started.elapsed() / 1000;
    eprintln!("host fingerprint: {uncached:?} computed, {cached:?} cached");
    assert!(uncached < Duration::from_millis(500), "{uncached:?}");
    assert!(cached < Duration::from_micros(100), "{cached:?}");
}

#[test]
fn the_host_view_hides_the_store_and_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, _) = imported(dir.path(), "x");
    let host = resolve(&mut store, "host").unwrap();
    let RootFs::Host { exclude } = materialise(&store, &host, &dir.path().join("cache")).unwrap()
    else {
        panic!("the host image is a host view");
    };
    let store_dir = fs::canonicalize(dir.path().join("store")).unwrap();
    assert!(exclude.contains(&store_dir), "{exclude:?}");
    for hidden in HOST_VIEW_HIDDEN.iter().chain(HOST_EXCLUDED) {
        assert!(exclude.contains(&PathBuf::from(hidden)), "{hidden}");
    }
    assert!(exclude.iter().all(|p| p.is_absolute()));
    assert_eq!(exclude, host_excludes(&dir.path().join("store")));
    // Nothing was restored for it.
    assert!(!dir.path().join("cache").exists());
}

/// Every path below `root` with its kind, size and executable bit.
fn listing(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            let relative = entry.path().strip_prefix(root).unwrap().to_path_buf();
            let what = if meta.is_dir() {
                stack.push(entry.path());
                "dir".to_owned()
            } else if meta.is_symlink() {
                format!("-> {}", fs::read_link(entry.path()).unwrap().display())
            } else {
                let bytes = fs::read(entry.path()).unwrap();
                format!(
                    "file {} {} {}",
                    bytes.len(),
                    meta.permissions().mode() & 0o111 != 0,
                    blake3::hash(&bytes)
                )
            };
            out.push((relative, what));
        }
    }
    out.sort();
    out
}

#[test]
fn materialising_concurrently_gives_one_complete_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, digest) = imported(dir.path(), "tiny");
    let image = resolve(&mut store, "tiny").unwrap();
    drop(store);
    let cache = dir.path().join("cache");
    let store_dir = dir.path().join("store");
    let results: Vec<RootFs> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let store = Store::open(&store_dir).unwrap();
                    materialise(&store, &image, &cache).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let expected = cache.join(digest.to_hex());
    for result in &results {
        assert_eq!(
            result,
            &RootFs::Image {
                layers: vec![expected.clone()]
            }
        );
    }
    // Exactly the image, nothing else left in the cache.
    let names: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from(digest.to_hex())]);
    assert_eq!(listing(&expected), listing(&dir.path().join("rootfs")));

    // A second call reuses it as it is.
    let marker = expected.join("etc/os-release");
    let inode = fs::metadata(&marker).unwrap();
    let store = Store::open(&store_dir).unwrap();
    materialise(&store, &image, &cache).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&marker).unwrap().ino(), inode.ino());
}

#[test]
fn a_dead_restore_is_cleaned_up_and_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let (mut store, digest) = imported(dir.path(), "tiny");
    let image = resolve(&mut store, "tiny").unwrap();
    let cache = dir.path().join("cache");
    // What a process killed mid-restore leaves: a partial directory named
    // after a pid that no longer runs.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let partial = cache.join(format!(".partial-{dead_pid}-{}-x", &digest.to_hex()[..16]));
    fs::create_dir_all(partial.join("root/etc")).unwrap();
    fs::write(partial.join("root/etc/half"), "half").unwrap();

    let RootFs::Image { layers } = materialise(&store, &image, &cache).unwrap() else {
        panic!()
    };
    assert_eq!(layers, vec![cache.join(digest.to_hex())]);
    assert!(!partial.exists());
    assert!(!layers[0].join("etc/half").exists());
    assert_eq!(listing(&layers[0]), listing(&dir.path().join("rootfs")));
}

#[test]
fn a_broken_image_says_to_import_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path().join("store")).unwrap();
    let root = tiny_root(dir.path());
    // Small chunks live inline in the index; an incompressible file is big
    // enough to need a chunk file, which is what this test loses.
    let mut noise = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(fs::File::open("/dev/urandom").unwrap(), 256 * 1024),
        &mut noise,
    )
    .unwrap();
    fs::write(root.join("noise.bin"), noise).unwrap();
    image::import(&mut store, "fragile", &root, &ImportOptions::default()).unwrap();
    drop(store);
    // Lose every chunk file, then let fsck notice and mark the root.
    let chunks = dir.path().join("store/chunks");
    for shard in fs::read_dir(&chunks).unwrap() {
        for chunk in fs::read_dir(shard.unwrap().path()).unwrap() {
            fs::remove_file(chunk.unwrap().path()).unwrap();
        }
    }
    let fsck = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--store")
        .arg(dir.path().join("store"))
        .args(["store", "fsck", "--repair"])
        .output()
        .unwrap();
    assert!(!fsck.stdout.is_empty(), "{fsck:?}");
    let mut store = Store::open(dir.path().join("store")).unwrap();
    let err = resolve(&mut store, "fragile").unwrap_err();
    assert!(matches!(err, ImageError::Broken { .. }), "{err}");
    assert!(
        err.to_string().contains("kiln image import fragile SRC"),
        "{err}"
    );
    let listed = image::list(&store).unwrap();
    assert!(listed[0].broken && listed[0].name == "fragile");
}
