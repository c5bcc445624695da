//! `kiln image import/ls/rm` end to end, on archives made by the real `tar`.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use kiln_store::{Node, RootKind, Store};

fn kiln(store: &Path, args: &[&str]) -> Output {
    Command::cargo_bin("kiln")
        .unwrap()
        .arg("--store")
        .arg(store)
        .env_remove("KILN_HOME")
        .args(args)
        .output()
        .unwrap()
}

fn ok(store: &Path, args: &[&str]) -> String {
    let out = kiln(store, args);
    assert!(
        out.status.success(),
        "kiln {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(store: &Path, args: &[&str]) -> String {
    let out = kiln(store, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "kiln {args:?} should fail: {out:?}"
    );
    String::from_utf8(out.stderr).unwrap()
}

fn sh(script: &str, dir: &Path) {
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A small rootfs: nested directories, an executable, relative and absolute
/// symlinks, a hard link, an empty file and an empty directory.
fn rootfs(parent: &Path) -> PathBuf {
    let root = parent.join("rootfs");
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("etc/deep/er/still")).unwrap();
    fs::create_dir_all(root.join("var/empty")).unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("etc/os-release"), "ID=tiny\n").unwrap();
    fs::write(root.join("etc/deep/er/still/file"), vec![7u8; 300_000]).unwrap();
    fs::write(root.join("etc/empty"), "").unwrap();
    fs::hard_link(
        root.join("etc/os-release"),
        root.join("etc/os-release.hard"),
    )
    .unwrap();
    symlink("usr/bin", root.join("bin")).unwrap();
    symlink("/usr/bin/tool", root.join("usr/bin/alias")).unwrap();
    root
}

#[test]
fn a_directory_and_its_tarballs_give_one_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let root = rootfs(dir.path());
    sh(
        "tar -C rootfs -cf r.tar . && tar -C rootfs -czf r.tar.gz . \
         && tar -C rootfs --zstd -cf r.tar.zst . && cp r.tar.gz renamed.bin \
         && tar -C rootfs -cf nodot.tar usr etc bin var",
        dir.path(),
    );
    symlink("rootfs", dir.path().join("link")).unwrap();
    let from_dir = ok(&store, &["image", "import", "tiny", s(&root)]);
    assert!(from_dir.starts_with("blake3:"), "{from_dir}");
    for (name, file) in [
        ("tiny-tar", "r.tar"),
        ("tiny/gz", "r.tar.gz"),
        ("tiny:zst", "r.tar.zst"),
        ("tiny.renamed", "renamed.bin"),
        ("tiny_nodot", "nodot.tar"),
        ("tiny-link", "link"),
    ] {
        let digest = ok(
            &store,
            &["image", "import", name, s(&dir.path().join(file))],
        );
        assert_eq!(digest, from_dir, "{file}");
    }

    // What is stored: exec bit, symlinks as they are, the hard link's bytes.
    let store = Store::open(&store).unwrap();
    let digest = from_dir.trim().parse().unwrap();
    let top = store.tree(&digest).unwrap();
    let entry = |tree: &kiln_store::Tree, name: &str| {
        tree.entries()
            .iter()
            .find(|e| e.name.to_string() == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .node
            .clone()
    };
    assert_eq!(
        entry(&top, "bin"),
        Node::Symlink {
            target: b"usr/bin".to_vec()
        }
    );
    let Node::Directory { digest: usr, .. } = entry(&top, "usr") else {
        panic!()
    };
    let Node::Directory { digest: bin, .. } = entry(&store.tree(&usr).unwrap(), "bin") else {
        panic!()
    };
    let bin = store.tree(&bin).unwrap();
    assert!(matches!(
        entry(&bin, "tool"),
        Node::File {
            executable: true,
            ..
        }
    ));
    assert_eq!(
        entry(&bin, "alias"),
        Node::Symlink {
            target: b"/usr/bin/tool".to_vec()
        }
    );
    let Node::Directory { digest: etc, .. } = entry(&top, "etc") else {
        panic!()
    };
    let etc = store.tree(&etc).unwrap();
    assert!(matches!(
        entry(&etc, "os-release"),
        Node::File {
            executable: false,
            ..
        }
    ));
    assert_eq!(entry(&etc, "os-release"), entry(&etc, "os-release.hard"));
    let Node::Directory { digest: var, .. } = entry(&top, "var") else {
        panic!()
    };
    assert!(matches!(
        entry(&store.tree(&var).unwrap(), "empty"),
        Node::Directory { size: 0, .. }
    ));
}

#[test]
fn ls_shows_images_and_rm_removes_them_until_gc() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let root = rootfs(dir.path());
    let digest = ok(&store, &["image", "import", "debian/stable", s(&root)]);
    ok(&store, &["image", "import", "golang", s(&root)]);
    let listing = ok(&store, &["image", "ls"]);
    assert!(
        listing.contains("debian/stable") && listing.contains("golang"),
        "{listing}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&store, &["image", "ls", "--json"])).unwrap();
    let images = json.as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0]["name"], "debian/stable");
    assert_eq!(images[0]["digest"], digest.trim());
    assert_eq!(images[0]["size"], 300_000 + 2 * 8 + 20);

    ok(&store, &["image", "rm", "golang"]);
    ok(&store, &["image", "rm", "debian/stable"]);
    assert!(fails(&store, &["image", "rm", "golang"]).contains("no image named \"golang\""));
    assert_eq!(ok(&store, &["image", "ls", "--json"]).trim(), "[]");
    // The data is still there until a collection sweeps it.
    assert!(ok(&store, &["store", "ls", digest.trim()]).contains("etc"));
    ok(&store, &["store", "gc"]);
    assert!(
        !kiln(&store, &["store", "ls", digest.trim()])
            .status
            .success()
    );
    assert!(ok(&store, &["store", "fsck"]).contains("clean"));
}

#[test]
fn device_nodes_and_fifos_are_left_out_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let root = rootfs(dir.path());
    fs::create_dir(root.join("dev")).unwrap();
    sh(
        "mknod rootfs/dev/null c 1 3 && mkfifo rootfs/dev/pipe && tar -C rootfs -cf dev.tar .",
        dir.path(),
    );
    let plain = dir.path().join("plain");
    fs::create_dir_all(plain.join("dev")).unwrap();
    let out = kiln(&store, &["image", "import", "with-dev", s(&root)]);
    assert!(out.status.success(), "{out:?}");
    let warnings = String::from_utf8(out.stderr).unwrap();
    assert!(
        warnings.contains("left out character device dev/null"),
        "{warnings}"
    );
    assert!(warnings.contains("left out fifo dev/pipe"), "{warnings}");
    let from_dir = String::from_utf8(out.stdout).unwrap();

    let out = kiln(
        &store,
        &[
            "image",
            "import",
            "with-dev-tar",
            s(&dir.path().join("dev.tar")),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("character device ./dev/null"));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), from_dir);

    // Left out means the same as absent: an empty /dev.
    fs::remove_file(root.join("dev/null")).unwrap();
    fs::remove_file(root.join("dev/pipe")).unwrap();
    assert_eq!(
        ok(&store, &["image", "import", "no-dev", s(&root)]),
        from_dir
    );
}

/// Runs a malicious import and checks that nothing at all was imported.
fn refused(dir: &Path, archive: &Path, expect: &[&str]) {
    let store = dir.join("store");
    let scratch = dir.join("scratch");
    fs::create_dir_all(&scratch).unwrap();
    let before = fs::read_dir(&scratch).unwrap().count();
    let err = fails(
        &store,
        &[
            "image",
            "import",
            "evil",
            s(archive),
            "--scratch",
            s(&scratch),
        ],
    );
    for needle in expect.iter().chain(&["nothing was imported"]) {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    assert_eq!(
        fs::read_dir(&scratch).unwrap().count(),
        before,
        "scratch left behind"
    );
    assert!(!dir.join("evil").exists() && !scratch.join("evil").exists());
    let opened = Store::open(&store).unwrap();
    assert!(opened.list_roots(Some(RootKind::Image)).unwrap().is_empty());
    drop(opened);
    assert!(ok(&store, &["store", "fsck"]).contains("clean"));
    assert_eq!(ok(&store, &["image", "ls", "--json"]).trim(), "[]");
}

#[test]
fn an_entry_climbing_out_with_dotdot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("a/b")).unwrap();
    fs::write(dir.path().join("a/evil"), "owned").unwrap();
    fs::write(dir.path().join("a/b/fine"), "fine").unwrap();
    // -P keeps `../` in the member names.
    sh("tar -C a/b -cPf evil.tar fine ../evil", dir.path());
    fs::remove_file(dir.path().join("a/evil")).unwrap();
    refused(
        dir.path(),
        &dir.path().join("evil.tar"),
        &["\"../evil\"", "`..`"],
    );
}

#[test]
fn an_absolute_entry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("evil"), "owned").unwrap();
    let script = format!("tar -czPf abs.tar.gz {}", s(&outside.join("evil")));
    sh(&script, dir.path());
    fs::remove_file(outside.join("evil")).unwrap();
    refused(
        dir.path(),
        &dir.path().join("abs.tar.gz"),
        &["absolute path"],
    );
    assert!(!outside.join("evil").exists());
}

#[test]
fn a_file_written_through_a_symlink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir_all(dir.path().join("src")).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("evil"), "owned").unwrap();
    symlink(&outside, dir.path().join("src/link")).unwrap();
    // First the symlink, then a file "through" it (tar follows it while
    // reading, and records the path as given).
    sh(
        "tar -C src -cf trick.tar link && tar -C src -rf trick.tar link/evil \
         && zstd -q trick.tar -o trick.tar.zst",
        dir.path(),
    );
    fs::remove_file(outside.join("evil")).unwrap();
    refused(
        dir.path(),
        &dir.path().join("trick.tar.zst"),
        &["\"link/evil\"", "goes through the symlink \"link\""],
    );
    assert!(!outside.join("evil").exists());
}

#[test]
fn a_hard_link_to_something_outside_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("src")).unwrap();
    fs::write(dir.path().join("src/a"), "a").unwrap();
    fs::hard_link(dir.path().join("src/a"), dir.path().join("src/b")).unwrap();
    // Only the hard link's target is rewritten to climb out (or be absolute).
    sh(
        "tar -C src --transform 's,^a$,../../etc/passwd,RSh' -cPf up.tar a b \
         && tar -C src --transform 's,^a$,/etc/passwd,RSh' -cPf abs.tar a b",
        dir.path(),
    );
    refused(
        dir.path(),
        &dir.path().join("up.tar"),
        &["entry \"b\" is a hard link to \"../../etc/passwd\"", "`..`"],
    );
    refused(
        dir.path(),
        &dir.path().join("abs.tar"),
        &["hard link to \"/etc/passwd\"", "absolute"],
    );
}

#[test]
fn damaged_and_foreign_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = rootfs(dir.path());
    sh(
        "tar -C rootfs -czf r.tar.gz . && head -c $(( $(stat -c%s r.tar.gz) - 20 )) r.tar.gz > cut.tar.gz \
         && mkdir small && echo a > small/a && echo b > small/b \
         && tar -C small -cf small.tar ./a ./b && head -c 1024 small.tar > cut.tar \
         && tar -C rootfs -cf r.tar . \
         && head -c 100000 r.tar > mid.tar && (xz -k r.tar 2>/dev/null || true)",
        dir.path(),
    );
    let _ = root;
    refused(
        dir.path(),
        &dir.path().join("cut.tar.gz"),
        &["cut.tar.gz", "not a valid archive"],
    );
    refused(
        dir.path(),
        &dir.path().join("cut.tar"),
        &["cut.tar", "end-of-archive"],
    );
    refused(
        dir.path(),
        &dir.path().join("mid.tar"),
        &["mid.tar", "not a valid archive"],
    );
    fs::write(dir.path().join("notes.txt"), "just text\n").unwrap();
    let store = dir.path().join("store");
    let err = fails(
        &store,
        &["image", "import", "x", s(&dir.path().join("notes.txt"))],
    );
    assert!(err.contains("not a directory nor a tar"), "{err}");
    if dir.path().join("r.tar.xz").exists() {
        let err = fails(
            &store,
            &["image", "import", "x", s(&dir.path().join("r.tar.xz"))],
        );
        assert!(err.contains("xz-compressed"), "{err}");
    }
    let err = fails(
        &store,
        &["image", "import", "x", s(&dir.path().join("missing"))],
    );
    assert!(err.contains("missing"), "{err}");
    let err = fails(
        &store,
        &["image", "import", "bad name", s(&dir.path().join("r.tar"))],
    );
    assert!(err.contains("invalid image name \"bad name\""), "{err}");
}

#[test]
fn importing_again_replaces_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let root = rootfs(dir.path());
    let first = ok(&store, &["image", "import", "tool", s(&root)]);
    fs::write(root.join("etc/os-release"), "ID=tiny\nVERSION=2\n").unwrap();
    let out = kiln(&store, &["image", "import", "tool", s(&root)]);
    let second = String::from_utf8(out.stdout).unwrap();
    assert_ne!(first, second);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("replaces {}", first.trim())));
    let json: serde_json::Value =
        serde_json::from_str(&ok(&store, &["image", "ls", "--json"])).unwrap();
    assert_eq!(json[0]["digest"], second.trim());
}
