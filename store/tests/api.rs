//! The store's library API on a real on-disk store in a temp dir.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use kiln_store::{
    AddOptions, B3Digest, BuildStatus, ChunkerParams, CurationPolicy, FsckOptions, JobArtifact,
    Node, ObjectKind, ObjectRef, RestoreOptions, RootKind, RootSelector, Store, StoreError,
    StoreOptions,
};

/// Deterministic bytes, compressible in part.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|i| {
            if (i / 4096) % 2 == 0 {
                (i % 251) as u8
            } else {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            }
        })
        .collect()
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn sample_tree(root: &Path) {
    write(&root.join("README"), b"hello\n");
    write(&root.join("empty"), b"");
    write(&root.join("bin/tool"), b"#!/bin/sh\necho tool\n");
    fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    write(&root.join("data/big.bin"), &data(1, 3_000_000));
    write(&root.join("data/copy/big.bin"), &data(1, 3_000_000));
    write(&root.join("data/nested/deeper/file"), b"deep");
    fs::create_dir_all(root.join("emptydir")).unwrap();
    symlink("README", root.join("link")).unwrap();
    symlink("../../../../etc/passwd", root.join("data/escape")).unwrap();
    write(&root.join("weird name ✓"), b"unicode");
}

/// Everything restoring promises to keep: kind, exec bit, bytes, link target.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            let description = if meta.file_type().is_symlink() {
                format!("link {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".to_owned()
            } else {
                format!(
                    "file {} {}",
                    meta.mode() & 0o111 != 0,
                    B3Digest::of(&fs::read(&path).unwrap())
                )
            };
            out.insert(rel, description);
        }
    }
    out
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    store: Store,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let store = Store::open(dir.join("store")).unwrap();
    Fixture {
        _tmp: tmp,
        dir,
        store,
    }
}

fn add(store: &mut Store, path: &Path, kind: RootKind, name: &str) -> ObjectRef {
    let roots = store.temp_roots().unwrap();
    let report = store
        .add_path(path, &AddOptions::default(), &roots)
        .unwrap();
    store.set_root(kind, name, report.object).unwrap();
    report.object
}

fn assert_clean(store: &mut Store) {
    let report = store.fsck(&FsckOptions::default()).unwrap();
    assert!(report.is_clean(), "fsck found: {:#?}", report.problems);
}

#[test]
fn add_then_restore_is_identical() {
    let mut f = fixture();
    let src = f.dir.join("src");
    sample_tree(&src);
    let object = add(&mut f.store, &src, RootKind::Object, "sample");
    assert_eq!(object.kind, ObjectKind::Tree);
    let out = f.dir.join("out");
    let report = f
        .store
        .restore(&object.digest, &out, &RestoreOptions::default())
        .unwrap();
    assert_eq!(snapshot(&src), snapshot(&out));
    assert_eq!(report.symlinks, 2);
    // The escaping symlink is restored as a link, never followed.
    assert!(
        fs::symlink_metadata(out.join("data/escape"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_clean(&mut f.store);
}

#[test]
fn a_single_file_is_a_blob() {
    let mut f = fixture();
    let file = f.dir.join("file");
    write(&file, &data(7, 100_000));
    let object = add(&mut f.store, &file, RootKind::Object, "file");
    assert_eq!(object, ObjectRef::blob(B3Digest::of(&data(7, 100_000))));
    assert_eq!(
        f.store.blob_bytes(&object.digest).unwrap(),
        data(7, 100_000)
    );
    let restored = f.dir.join("restored");
    f.store
        .restore(&object.digest, &restored, &RestoreOptions::default())
        .unwrap();
    assert_eq!(fs::read(restored).unwrap(), data(7, 100_000));
}

#[test]
fn digests_ignore_metadata_and_location() {
    let mut f = fixture();
    let (a, b) = (f.dir.join("a"), f.dir.join("b"));
    sample_tree(&a);
    sample_tree(&b);
    // Different mtime and non-executable permission bits: same digest.
    fs::set_permissions(b.join("README"), fs::Permissions::from_mode(0o600)).unwrap();
    let file = fs::File::options()
        .write(true)
        .open(b.join("empty"))
        .unwrap();
    file.set_modified(std::time::UNIX_EPOCH).unwrap();
    let first = add(&mut f.store, &a, RootKind::Object, "a");
    let second = add(&mut f.store, &b, RootKind::Object, "b");
    assert_eq!(first, second);
}

#[test]
fn the_same_content_twice_costs_nothing() {
    let mut f = fixture();
    let src = f.dir.join("src");
    sample_tree(&src);
    let roots = f.store.temp_roots().unwrap();
    let first = f
        .store
        .add_path(&src, &AddOptions::default(), &roots)
        .unwrap();
    let stored = f.store.stats().unwrap().stored_bytes;
    assert!(first.new_chunks > 0);
    let second = f
        .store
        .add_path(&src, &AddOptions::default(), &roots)
        .unwrap();
    assert_eq!(second.object, first.object);
    assert_eq!((second.new_chunks, second.new_bytes), (0, 0));
    assert_eq!(f.store.stats().unwrap().stored_bytes, stored);
    // big.bin appears twice in the tree but its chunks are stored once.
    let stats = f.store.stats().unwrap();
    assert!(stats.unique_bytes < 4_000_000, "{stats:?}");
}

#[test]
fn a_small_edit_to_a_large_file_stores_few_chunks() {
    let mut f = fixture();
    let file = f.dir.join("big");
    let mut bytes = data(3, 8_000_000);
    write(&file, &bytes);
    add(&mut f.store, &file, RootKind::Object, "v1");
    bytes[4_000_000..4_000_100].fill(0xAB);
    write(&file, &bytes);
    let roots = f.store.temp_roots().unwrap();
    let report = f
        .store
        .add_path(&file, &AddOptions::default(), &roots)
        .unwrap();
    assert!(report.new_chunks <= 2, "{report:?}");
    assert_eq!(f.store.blob_bytes(&report.object.digest).unwrap(), bytes);
}

#[test]
fn unknown_and_wrong_kind_objects_are_clear_errors() {
    let mut f = fixture();
    let src = f.dir.join("src");
    sample_tree(&src);
    let tree = add(&mut f.store, &src, RootKind::Object, "t");
    let missing = B3Digest::of(b"never stored");
    let error = f.store.blob_bytes(&missing).unwrap_err().to_string();
    assert!(
        error.contains(&missing.to_string()) && error.contains("no object"),
        "{error}"
    );
    let error = f.store.blob_bytes(&tree.digest).unwrap_err().to_string();
    assert!(error.contains("is a tree, not a blob"), "{error}");
    let error = "blake3:1234".parse::<B3Digest>().unwrap_err().to_string();
    assert!(error.contains("malformed digest"), "{error}");
    let error = f.store.add_path(
        &f.dir.join("nope"),
        &AddOptions::default(),
        &f.store.temp_roots().unwrap(),
    );
    assert!(error.unwrap_err().to_string().contains("nope"));
}

#[test]
fn special_files_are_refused_with_their_path() {
    let mut f = fixture();
    let src = f.dir.join("src");
    write(&src.join("ok"), b"ok");
    let fifo = src.join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let roots = f.store.temp_roots().unwrap();
    let error = f
        .store
        .add_path(&src, &AddOptions::default(), &roots)
        .unwrap_err();
    assert!(matches!(error, StoreError::UnsupportedFile { .. }));
    assert!(
        error.to_string().contains("pipe") && error.to_string().contains("fifo"),
        "{error}"
    );
}

#[test]
fn restore_refuses_a_non_empty_target() {
    let mut f = fixture();
    let src = f.dir.join("src");
    sample_tree(&src);
    let tree = add(&mut f.store, &src, RootKind::Object, "t");
    let error = f
        .store
        .restore(&tree.digest, &src, &RestoreOptions::default())
        .unwrap_err();
    assert!(error.to_string().contains("not empty"), "{error}");
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

#[test]
fn layer_mode_keeps_whiteouts_and_opaque_directories() {
    assert!(
        is_root(),
        "creating whiteouts needs root: run the suite as root, as CI does"
    );
    let mut f = fixture();
    let layer = f.dir.join("layer");
    write(&layer.join("kept"), b"kept");
    fs::create_dir_all(layer.join("opaque")).unwrap();
    let status = std::process::Command::new("mknod")
        .arg(layer.join("deleted"))
        .args(["c", "0", "0"])
        .status()
        .unwrap();
    assert!(status.success());
    let status = std::process::Command::new("setfattr")
        .args(["-n", "trusted.overlay.opaque", "-v", "y"])
        .arg(layer.join("opaque"))
        .status();
    let has_setfattr = status.map(|s| s.success()).unwrap_or(false);

    let roots = f.store.temp_roots().unwrap();
    // Plain mode: a device is not content.
    let error = f
        .store
        .add_path(&layer, &AddOptions::default(), &roots)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("deleted") && error.contains("character device"),
        "{error}"
    );

    let options = AddOptions {
        layer: true,
        progress: None,
    };
    let report = f.store.add_path(&layer, &options, &roots).unwrap();
    let tree = f.store.tree(&report.object.digest).unwrap();
    let kinds: Vec<_> = tree
        .entries()
        .iter()
        .map(|e| (e.name.to_string(), e.node.kind_name()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("deleted".into(), "whiteout"),
            ("kept".into(), "file"),
            ("opaque".into(), "dir")
        ]
    );
    let Node::Directory { digest: opaque, .. } = tree.entries()[2].node else {
        panic!()
    };
    assert_eq!(f.store.tree(&opaque).unwrap().opaque(), has_setfattr);

    let plain = f.dir.join("plain");
    let restored = f
        .store
        .restore(&report.object.digest, &plain, &RestoreOptions::default())
        .unwrap();
    assert_eq!(restored.whiteouts, 1);
    assert!(
        !plain.join("deleted").exists(),
        "plain restore never creates devices"
    );

    let layered = f.dir.join("layered");
    f.store
        .restore(
            &report.object.digest,
            &layered,
            &RestoreOptions {
                layer: true,
                progress: None,
            },
        )
        .unwrap();
    let meta = fs::symlink_metadata(layered.join("deleted")).unwrap();
    use std::os::unix::fs::FileTypeExt;
    assert!(meta.file_type().is_char_device() && meta.rdev() == 0);
    // Adding the restored layer gives the same digest back.
    let again = f.store.add_path(&layered, &options, &roots).unwrap();
    assert_eq!(again.object, report.object);
}

#[test]
fn curation_keeps_newest_artifacts_per_owner_and_honours_pins() {
    let mut f = fixture();
    let roots = f.store.temp_roots().unwrap();
    let mut builds = Vec::new();
    for i in 0..5u64 {
        let build = f.store.create_build("project").unwrap();
        let blob = f
            .store
            .add_bytes(&data(100 + i, 1_000_000), &roots)
            .unwrap();
        f.store.add_artifact(build, "out.bin", blob.object).unwrap();
        f.store
            .set_build_status(build, BuildStatus::Passed)
            .unwrap();
        builds.push((build, blob.object));
    }
    // An artifact shared with a pinned build's content survives through it.
    f.store.set_pinned(builds[0].0, true).unwrap();
    let other = f.store.create_build("other").unwrap();
    f.store.add_artifact(other, "shared", builds[1].1).unwrap();
    f.store
        .set_build_status(other, BuildStatus::Passed)
        .unwrap();
    drop(roots);

    let policy = CurationPolicy {
        artifact_threshold: 2_500_000,
        cache_threshold: 0,
    };
    let report = f.store.curate(&policy).unwrap();
    // Newest two fit; build 2 and 1 go; build 0 is pinned.
    assert_eq!(report.artifacts_removed, 2, "{report:?}");
    for (i, (build, object)) in builds.iter().enumerate() {
        let kept = !f.store.artifacts(*build).unwrap().is_empty();
        assert_eq!(kept, i != 1 && i != 2, "build {i}");
        let present = f.store.blob_bytes(&object.digest).is_ok();
        assert_eq!(
            present,
            i != 2,
            "blob of build {i} (1 is shared with another owner)"
        );
    }
    assert_clean(&mut f.store);

    // 0 disables curation.
    let report = f
        .store
        .curate(&CurationPolicy {
            artifact_threshold: 0,
            cache_threshold: 0,
        })
        .unwrap();
    assert_eq!(report.artifacts_removed, 0);
}

#[test]
fn artifacts_of_running_builds_are_not_curated() {
    let mut f = fixture();
    let roots = f.store.temp_roots().unwrap();
    let build = f.store.create_build("p").unwrap();
    let blob = f.store.add_bytes(&data(9, 2_000_000), &roots).unwrap();
    f.store.add_artifact(build, "a", blob.object).unwrap();
    let report = f
        .store
        .curate(&CurationPolicy {
            artifact_threshold: 1,
            cache_threshold: 0,
        })
        .unwrap();
    assert_eq!(report.artifacts_removed, 0);
    f.store
        .set_build_status(build, BuildStatus::Failed)
        .unwrap();
    let report = f
        .store
        .curate(&CurationPolicy {
            artifact_threshold: 1,
            cache_threshold: 0,
        })
        .unwrap();
    assert_eq!(report.artifacts_removed, 1);
}

#[test]
fn cache_entries_are_evicted_least_recently_used() {
    let mut f = fixture();
    let roots = f.store.temp_roots().unwrap();
    let mut keys = Vec::new();
    for i in 0..3u64 {
        let dir = f.dir.join(format!("layer{i}"));
        write(&dir.join("f"), &data(200 + i, 1_000_000));
        let layer = f
            .store
            .add_path(&dir, &AddOptions::default(), &roots)
            .unwrap();
        let log = f
            .store
            .add_bytes(format!("log {i}").as_bytes(), &roots)
            .unwrap();
        let key = B3Digest::of(format!("job {i}").as_bytes());
        let artifact = JobArtifact {
            name: "f".into(),
            object: layer.object,
            size: layer.size,
        };
        f.store
            .record_job_result(
                key,
                layer.object.digest,
                Some(log.object.digest),
                "passed",
                vec![artifact],
            )
            .unwrap();
        keys.push(key);
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Job 0 is used again: job 1 becomes the least recently used.
    assert!(f.store.lookup_job_result(&keys[0]).unwrap().is_some());
    drop(roots);
    let report = f
        .store
        .curate(&CurationPolicy {
            artifact_threshold: 0,
            cache_threshold: 4_100_000,
        })
        .unwrap();
    assert_eq!(report.cache_entries_evicted, 1, "{report:?}");
    assert!(f.store.lookup_job_result(&keys[1]).unwrap().is_none());
    let kept = f.store.lookup_job_result(&keys[0]).unwrap().unwrap();
    assert!(f.store.tree(&kept.output_layer).is_ok());
    assert!(f.store.lookup_job_result(&keys[2]).unwrap().is_some());
    assert_clean(&mut f.store);
}

#[test]
fn sweeping_frees_unreferenced_objects_but_not_temp_roots() {
    let mut f = fixture();
    let src = f.dir.join("src");
    sample_tree(&src);
    let object = add(&mut f.store, &src, RootKind::Object, "t");
    let held = f.store.temp_roots().unwrap();
    held.hold(object).unwrap();
    f.store.remove_root(RootKind::Object, "t").unwrap();
    let report = f.store.sweep().unwrap();
    assert_eq!(
        report.trees + report.blobs + report.chunks,
        0,
        "held by a temp root"
    );
    drop(held);
    let report = f.store.sweep().unwrap();
    assert!(
        report.trees >= 4 && report.blobs >= 5 && report.chunks > 0,
        "{report:?}"
    );
    let stats = f.store.stats().unwrap();
    assert_eq!(
        (stats.chunks, stats.blobs, stats.trees, stats.stored_bytes),
        (0, 0, 0, 0)
    );
    assert_clean(&mut f.store);
}

fn index(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join("store/index.sqlite")).unwrap()
}

#[test]
fn gc_full_repairs_reference_count_drift() {
    let mut f = fixture();
    let src = f.dir.join("src");
    sample_tree(&src);
    let kept = add(&mut f.store, &src, RootKind::Image, "img");
    let other = f.dir.join("other");
    write(&other.join("x"), b"unrooted");
    let roots = f.store.temp_roots().unwrap();
    let orphan = f
        .store
        .add_path(&other, &AddOptions::default(), &roots)
        .unwrap();
    drop(roots);
    // Drift: the kept tree claims no referrer, the orphan claims five.
    let conn = index(&f.dir);
    conn.execute("UPDATE trees SET refs = 0 WHERE digest = ?1", [kept.digest])
        .unwrap();
    conn.execute(
        "UPDATE trees SET refs = 5 WHERE digest = ?1",
        [orphan.object.digest],
    )
    .unwrap();
    let report = f.store.fsck(&FsckOptions::default()).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.object == format!("tree {}", kept.digest)),
        "{report:#?}"
    );
    let gc = f.store.gc_full().unwrap();
    assert!(gc.refcounts_repaired >= 1 && gc.sweep.trees == 1, "{gc:?}");
    assert!(f.store.tree(&orphan.object.digest).is_err());
    assert!(f.store.tree(&kept.digest).is_ok());
    assert_clean(&mut f.store);
}

#[test]
fn fsck_names_a_corrupt_chunk_and_repair_marks_the_root() {
    let mut f = fixture();
    let file = f.dir.join("file");
    write(&file, &data(5, 50_000));
    let object = add(&mut f.store, &file, RootKind::Source, "src");
    let chunk_file = f
        .dir
        .join("store/chunks")
        .join(&object.digest.to_hex()[..2])
        .join(object.digest.to_hex());
    let mut bytes = fs::read(&chunk_file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&chunk_file, bytes).unwrap();
    // Leftovers of a crash: an orphan chunk and a temp file.
    let orphan = B3Digest::of(b"orphan");
    write(
        &f.dir
            .join("store/chunks")
            .join(&orphan.to_hex()[..2])
            .join(orphan.to_hex()),
        b"x",
    );
    write(&f.dir.join("store/tmp/chunk-1-2-3"), b"partial");

    let report = f.store.fsck(&FsckOptions::default()).unwrap();
    let text: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|p| p.starts_with(&format!("chunk {}", object.digest))),
        "{text:#?}"
    );
    assert!(
        text.iter()
            .any(|p| p.starts_with(&format!("blob {}", object.digest))),
        "{text:#?}"
    );
    assert!(text.iter().any(|p| p.contains("orphan")), "{text:#?}");
    assert!(text.iter().any(|p| p.contains("temporary")), "{text:#?}");
    assert!(
        text.iter().any(|p| p.starts_with("root source/src")),
        "{text:#?}"
    );

    let report = f
        .store
        .fsck(&FsckOptions {
            repair: true,
            progress: None,
        })
        .unwrap();
    assert!(!report.repairs.is_empty());
    assert_clean(&mut f.store);
    assert!(
        f.store
            .get_root(RootKind::Source, "src")
            .unwrap()
            .unwrap()
            .broken
    );
    // Adding the content again heals the root.
    add(&mut f.store, &file, RootKind::Source, "src");
    assert!(
        !f.store
            .get_root(RootKind::Source, "src")
            .unwrap()
            .unwrap()
            .broken
    );
    assert_eq!(f.store.blob_bytes(&object.digest).unwrap(), data(5, 50_000));
    assert_clean(&mut f.store);
}

#[test]
fn export_import_moves_only_what_is_missing() {
    let mut a = fixture();
    let src = a.dir.join("src");
    sample_tree(&src);
    let tree = add(&mut a.store, &src, RootKind::Image, "base");
    let bundle_path = a.dir.join("bundle");
    let mut bundle = Vec::new();
    let selectors = [RootSelector::Named {
        kind: RootKind::Image,
        name: "base".into(),
    }];
    a.store.export(&selectors, &mut bundle).unwrap();
    fs::write(&bundle_path, &bundle).unwrap();

    let mut b = fixture();
    // The second store already has one of the files.
    write(&b.dir.join("pre/README"), b"hello\n");
    add(&mut b.store, &b.dir.join("pre"), RootKind::Object, "pre");
    let report = b.store.import(&mut bundle.as_slice()).unwrap();
    assert!(report.already_present >= 1, "{report:?}");
    let root = b.store.get_root(RootKind::Image, "base").unwrap().unwrap();
    assert_eq!(root.object, tree);
    let out = b.dir.join("out");
    b.store
        .restore(&tree.digest, &out, &RestoreOptions::default())
        .unwrap();
    assert_eq!(snapshot(&src), snapshot(&out));
    assert_clean(&mut b.store);
    // Importing again adds nothing.
    let before = b.store.stats().unwrap();
    b.store.import(&mut bundle.as_slice()).unwrap();
    assert_eq!(b.store.stats().unwrap(), before);
}

#[test]
fn damaged_bundles_are_rejected_and_leave_nothing() {
    let mut a = fixture();
    let src = a.dir.join("src");
    sample_tree(&src);
    let tree = add(&mut a.store, &src, RootKind::Image, "base");
    let mut bundle = Vec::new();
    a.store
        .export(&[RootSelector::Object(tree.digest)], &mut bundle)
        .unwrap();

    let mut b = fixture();
    let chunk_files = |dir: &Path| walk_files(&dir.join("store/chunks")).len();
    let mut damaged = vec![
        ("truncated", bundle[..bundle.len() / 2].to_vec()),
        ("no end record", bundle[..bundle.len() - 41].to_vec()),
        ("empty", Vec::new()),
        ("trailing data", [bundle.clone(), b"x".to_vec()].concat()),
    ];
    for at in [20, bundle.len() / 3, bundle.len() / 2, bundle.len() - 10] {
        let mut tampered = bundle.clone();
        tampered[at] ^= 0x01;
        damaged.push(("tampered", tampered));
    }
    for (what, bytes) in damaged {
        let error = b.store.import(&mut bytes.as_slice()).unwrap_err();
        assert!(
            matches!(error, StoreError::Bundle { .. }),
            "{what}: {error}"
        );
        let stats = b.store.stats().unwrap();
        assert_eq!(
            (stats.chunks, stats.blobs, stats.trees, stats.roots),
            (0, 0, 0, 0),
            "{what}"
        );
        assert_eq!(chunk_files(&b.dir), 0, "{what}: chunk files left behind");
        assert_clean(&mut b.store);
    }
    b.store.import(&mut bundle.as_slice()).unwrap();
    assert!(
        b.store
            .get_root(RootKind::Object, &tree.digest.to_string())
            .unwrap()
            .is_some()
    );
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn a_newer_index_is_refused_clearly() {
    let f = fixture();
    drop(f.store);
    index(&f.dir)
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let error = Store::open(f.dir.join("store")).err().unwrap().to_string();
    assert!(
        error.contains("schema version 99") && error.contains("newer kiln"),
        "{error}"
    );
}

#[test]
fn a_directory_that_is_not_a_store_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(
        tmp.path().join("index.sqlite"),
        b"not sqlite at all, just text padding it out",
    )
    .unwrap();
    let error = Store::open(tmp.path()).err().unwrap().to_string();
    assert!(
        error.contains("not a kiln store") || error.contains("index"),
        "{error}"
    );
}

#[test]
fn a_store_keeps_its_chunker_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let custom = ChunkerParams {
        min_size: 16 * 1024,
        avg_size: 64 * 1024,
        max_size: 256 * 1024,
        single_chunk_max: 64 * 1024,
    };
    let dir = tmp.path().join("store");
    let mut store = Store::open_with(&dir, &StoreOptions { chunker: custom }).unwrap();
    let file = tmp.path().join("f");
    write(&file, &data(11, 2_000_000));
    let object = add(&mut store, &file, RootKind::Object, "f");
    let chunks_before = store.stats().unwrap().chunks;
    drop(store);
    // Opened by a kiln whose defaults differ: old data reads, params stay.
    let mut store = Store::open(&dir).unwrap();
    assert_eq!(store.chunker_params(), custom);
    assert_eq!(
        store.blob_bytes(&object.digest).unwrap(),
        data(11, 2_000_000)
    );
    assert!(chunks_before > 8, "small chunks were used: {chunks_before}");
    assert_clean(&mut store);
}

#[test]
fn job_results_round_trip() {
    let mut f = fixture();
    let roots = f.store.temp_roots().unwrap();
    let dir = f.dir.join("layer");
    write(&dir.join("out"), b"built");
    let layer = f
        .store
        .add_path(&dir, &AddOptions::default(), &roots)
        .unwrap();
    let log = f.store.add_bytes(b"job log\n", &roots).unwrap();
    let key = B3Digest::of(b"key");
    assert!(f.store.lookup_job_result(&key).unwrap().is_none());
    f.store
        .record_job_result(
            key,
            layer.object.digest,
            Some(log.object.digest),
            "passed",
            vec![],
        )
        .unwrap();
    drop(roots);
    f.store.sweep().unwrap();
    let result = f.store.lookup_job_result(&key).unwrap().unwrap();
    assert_eq!(
        (result.output_layer, result.log, result.status.as_str()),
        (layer.object.digest, Some(log.object.digest), "passed")
    );
    assert_eq!(
        f.store.blob_bytes(&log.object.digest).unwrap(),
        b"job log\n"
    );
    assert!(f.store.remove_job_result(&key).unwrap());
    let swept = f.store.sweep().unwrap();
    assert!(swept.blobs >= 2, "{swept:?}");
    assert_clean(&mut f.store);
}

#[test]
fn roots_can_be_replaced_listed_and_removed() {
    let mut f = fixture();
    let roots = f.store.temp_roots().unwrap();
    let one = f.store.add_bytes(b"one", &roots).unwrap().object;
    let two = f.store.add_bytes(b"two", &roots).unwrap().object;
    drop(roots);
    f.store.set_root(RootKind::Cache, "c", one).unwrap();
    f.store.set_root(RootKind::Cache, "c", two).unwrap();
    assert_eq!(f.store.list_roots(Some(RootKind::Cache)).unwrap().len(), 1);
    f.store.sweep().unwrap();
    assert!(
        f.store.blob_bytes(&one.digest).is_err(),
        "replaced root released its object"
    );
    assert_eq!(f.store.blob_bytes(&two.digest).unwrap(), b"two");
    assert!(f.store.remove_root(RootKind::Cache, "c").unwrap());
    assert!(!f.store.remove_root(RootKind::Cache, "c").unwrap());
    assert!(matches!(
        "nope/x".parse::<RootSelector>(),
        Err(StoreError::UnknownRootKind(_))
    ));
    let error = f
        .store
        .set_root(RootKind::Object, "x", ObjectRef::tree(B3Digest::of(b"?")))
        .unwrap_err();
    assert!(matches!(error, StoreError::UnknownObject { .. }));
}

#[test]
fn small_chunks_live_in_the_index_and_are_checked_there() {
    let mut f = fixture();
    let file = f.dir.join("small");
    write(&file, b"a small file kept inline");
    let object = add(&mut f.store, &file, RootKind::Object, "small");
    assert!(
        walk_files(&f.dir.join("store/chunks")).is_empty(),
        "no chunk file for a small chunk"
    );
    assert_eq!(
        f.store.blob_bytes(&object.digest).unwrap(),
        b"a small file kept inline"
    );
    let tampered = zstd::bulk::compress(b"something else entirely", 1).unwrap();
    index(&f.dir)
        .execute("UPDATE chunk_data SET data = ?1", [tampered])
        .unwrap();
    let report = f.store.fsck(&FsckOptions::default()).unwrap();
    let text: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
    assert!(
        text.iter()
            .any(|p| p.starts_with(&format!("chunk {}: chunk content hashes to", object.digest))),
        "{text:#?}"
    );
    assert!(f.store.blob_bytes(&object.digest).is_err());
}

/// A store kept inside the directory it adds (a project whose store is in
/// it) skips itself: the object is the directory without the store, the
/// same as the directory alone. Control: a sibling directory is added.
#[test]
fn a_store_never_adds_itself() {
    let project = tempfile::tempdir().unwrap();
    write(&project.path().join("src/main.c"), b"int main;");
    write(&project.path().join("sibling/file"), b"kept");
    let mut store = Store::open(project.path().join("store")).unwrap();
    let with_store = add(&mut store, project.path(), RootKind::Source, "with");
    let alone = tempfile::tempdir().unwrap();
    write(&alone.path().join("src/main.c"), b"int main;");
    write(&alone.path().join("sibling/file"), b"kept");
    let without = add(&mut store, alone.path(), RootKind::Source, "without");
    assert_eq!(with_store.digest, without.digest);
}
