//! OCI image archives: one made by the real `umoci` (Debian's package;
//! scripts/test.sh installs it), `docker save` tarballs built here per the
//! format, damaged and malicious archives, and a job running in an imported
//! OCI image in the real sandbox.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::image::{self, ImportOptions, image_config, materialise, resolve};
use kiln::sandbox::{SandboxOutcome, SandboxRun, SandboxSpec, WorkspaceSpec};
use kiln_store::{FsckOptions, RestoreOptions, RootKind, RootSelector, Store};
use sha2::{Digest, Sha256};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn run(command: &mut Command) {
    let output = command.output().expect("the command runs");
    assert!(output.status.success(), "{command:?}: {output:?}");
}

fn umoci(layout: &Path, args: &[&str]) {
    run(Command::new("umoci")
        .current_dir(layout.parent().unwrap())
        .args(args));
}

fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox-static is installed (scripts/test.sh)")
}

/// An OCI layout made by umoci: layer 1 (unpack/repack) has busybox,
/// `/etc/keep`, `/etc/gone` and `/opq/{old,sub/x}`; layer 2 whites out
/// `/etc/gone`; layer 3 replaces `/opq` opaquely with `/opq/fresh`. The
/// config sets Env, WorkingDir and `user`. Returns the layout directory.
fn umoci_layout(dir: &Path, user: &str) -> PathBuf {
    let layout = dir.join("L");
    umoci(&layout, &["init", "--layout", "L"]);
    umoci(&layout, &["new", "--image", "L:t"]);
    umoci(
        &layout,
        &["unpack", "--rootless", "--image", "L:t", "bundle"],
    );
    let rootfs = dir.join("bundle/rootfs");
    for sub in ["bin", "etc", "opq/sub"] {
        fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "test", "pwd", "ls"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("etc/keep"), "kept\n").unwrap();
    fs::write(rootfs.join("etc/gone"), "deleted by layer 2\n").unwrap();
    fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nbuilder:x:1000:1000::/home:/bin/sh\n",
    )
    .unwrap();
    fs::write(rootfs.join("opq/old"), "hidden by the opaque layer\n").unwrap();
    fs::write(rootfs.join("opq/sub/x"), "hidden too\n").unwrap();
    umoci(&layout, &["repack", "--image", "L:t", "bundle"]);
    umoci(
        &layout,
        &["insert", "--image", "L:t", "--whiteout", "/etc/gone"],
    );
    let fresh = dir.join("fresh");
    fs::create_dir(&fresh).unwrap();
    fs::write(fresh.join("fresh"), "from layer 3\n").unwrap();
    umoci(
        &layout,
        &["insert", "--image", "L:t", "--opaque", "fresh", "/opq"],
    );
    umoci(
        &layout,
        &[
            "config",
            "--image",
            "L:t",
            "--config.env",
            "FROM_IMAGE=oci",
            "--config.env",
            "SHARED=image",
            "--config.env",
            "PATH=/bin",
            "--config.workingdir",
            "/srv",
            "--config.user",
            user,
        ],
    );
    layout
}

fn tar_dir(dir: &Path, out: &Path) {
    run(Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg("."));
}

fn restored(store: &Store, name: &str, dir: &Path) -> PathBuf {
    let root = store.get_root(RootKind::Image, name).unwrap().unwrap();
    let target = dir.join(format!("restored-{}", name.replace('/', "_")));
    store
        .restore(&root.object.digest, &target, &RestoreOptions::default())
        .unwrap();
    target
}

fn assert_nothing_imported(store: &mut Store, name: &str) {
    assert!(store.get_root(RootKind::Image, name).unwrap().is_none());
    let report = store
        .fsck(&FsckOptions {
            repair: false,
            progress: None,
        })
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[test]
fn an_umoci_image_is_flattened_with_whiteouts_and_keeps_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let layout = umoci_layout(dir.path(), "0:0");
    let archive = dir.path().join("image.tar");
    tar_dir(&layout, &archive);
    let mut store = Store::open(dir.path().join("store")).unwrap();
    let report = image::import(&mut store, "umoci/t", &archive, &ImportOptions::default()).unwrap();
    assert_eq!(report.source.to_string(), "OCI");
    // The layout directory itself imports as the same image.
    let from_dir =
        image::import(&mut store, "umoci/dir", &layout, &ImportOptions::default()).unwrap();
    assert_eq!(from_dir.digest, report.digest);
    image::remove(&mut store, "umoci/dir").unwrap();

    let tree = restored(&store, "umoci/t", dir.path());
    assert_eq!(fs::read_to_string(tree.join("etc/keep")).unwrap(), "kept\n");
    assert!(!tree.join("etc/gone").exists(), "whited out by layer 2");
    assert!(!tree.join("etc/.wh.gone").exists());
    let mut opq: Vec<_> = fs::read_dir(tree.join("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    opq.sort();
    assert_eq!(opq, ["fresh"], "the opaque layer replaced /opq");
    assert!(tree.join("bin/busybox").is_file());

    let image = resolve(&mut store, "umoci/t").unwrap();
    let config = image_config(&store, &image).unwrap().unwrap();
    assert_eq!(config, report.config.clone().unwrap());
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    assert!(config.env.contains(&("FROM_IMAGE".into(), "oci".into())));
    assert_eq!(config.working_dir.as_deref(), Some("/srv"));
    assert_eq!(config.user.as_deref(), Some("0:0"));
    assert_eq!((config.uid, config.gid), (Some(0), Some(0)));
    let env = config.job_env(
        &pairs(&[("PATH", "/usr/bin"), ("HOME", "/work")]),
        &pairs(&[("SHARED", "manifest")]),
    );
    assert_eq!(
        env,
        pairs(&[
            ("PATH", "/bin"),
            ("HOME", "/work"),
            ("FROM_IMAGE", "oci"),
            ("SHARED", "manifest"),
        ])
    );

    // The config travels with the tree: a bundle of `image/umoci/t` alone
    // gives another store the same config.
    let mut bundle = Vec::new();
    store
        .export(
            &[RootSelector::Named {
                kind: RootKind::Image,
                name: "umoci/t".into(),
            }],
            &mut bundle,
        )
        .unwrap();
    let mut other = Store::open(dir.path().join("other-store")).unwrap();
    other.import(&mut bundle.as_slice()).unwrap();
    let there = resolve(&mut other, "umoci/t").unwrap();
    assert_eq!(there.digest(), image.digest());
    assert_eq!(image_config(&other, &there).unwrap(), Some(config.clone()));
    let report = store
        .fsck(&FsckOptions {
            repair: false,
            progress: None,
        })
        .unwrap();
    assert!(report.is_clean(), "{report:?}");

    // `kiln image ls --json` shows the source and the config.
    drop(store);
    let ls = Command::new(KILN)
        .arg("--store")
        .arg(dir.path().join("store"))
        .args(["image", "ls", "--json"])
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(listed[0]["source"]["oci"]["format"], "oci_layout");
    assert_eq!(listed[0]["config"]["working_dir"], "/srv");
    assert_eq!(listed[0]["config"]["user"], "0:0");
    // `kiln image rm` takes the config with the image (it is in the tree).
    let rm = Command::new(KILN)
        .arg("--store")
        .arg(dir.path().join("store"))
        .args(["image", "rm", "umoci/t"])
        .output()
        .unwrap();
    assert!(rm.status.success(), "{rm:?}");
    let store = Store::open(dir.path().join("store")).unwrap();
    assert!(store.list_roots(None).unwrap().is_empty());
}

#[test]
fn a_job_runs_in_an_oci_image_with_its_env_and_a_non_root_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let layout = umoci_layout(dir.path(), "root");
    let archive = dir.path().join("image.tar");
    tar_dir(&layout, &archive);
    let mut store = Store::open(dir.path().join("store")).unwrap();
    image::import(&mut store, "oci-job", &archive, &ImportOptions::default()).unwrap();
    let image = resolve(&mut store, "oci-job").unwrap();
    let config = image_config(&store, &image).unwrap().unwrap();
    let root = materialise(&store, &image, &dir.path().join("cache")).unwrap();

    let job = dir.path().join("job");
    for sub in ["base", "upper", "work", "run"] {
        fs::create_dir_all(job.join(sub)).unwrap();
    }
    fs::write(
        job.join("job.sh"),
        "echo \"$FROM_IMAGE $SHARED $PATH\"\ncat /etc/keep\ntest -e /etc/gone || echo gone\n",
    )
    .unwrap();
    let mut spec = SandboxSpec::new(
        root,
        WorkspaceSpec {
            path: "/work".into(),
            lower: vec![job.join("base")],
            upper: job.join("upper"),
            work: job.join("work"),
        },
        job.join("job.sh"),
    );
    spec.env = config.job_env(
        &[("PATH".into(), "/usr/bin".into())],
        &[("SHARED".into(), "manifest".into())],
    );
    let prepared = SandboxRun::prepare(&spec, &job.join("run")).unwrap();
    let output = prepared.command(Path::new(KILN)).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        prepared.outcome(output.status),
        SandboxOutcome::Exited { code: 0 },
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout, "oci manifest /bin\nkept\ngone\n");

    // The same image asking for user `builder` (uid 1000 in its passwd)
    // is refused, not run as root.
    let other = tempfile::tempdir().unwrap();
    let layout = umoci_layout(other.path(), "builder");
    let archive = other.path().join("image.tar");
    tar_dir(&layout, &archive);
    image::import(&mut store, "oci-user", &archive, &ImportOptions::default()).unwrap();
    let image = resolve(&mut store, "oci-user").unwrap();
    let config = image_config(&store, &image).unwrap().unwrap();
    assert_eq!((config.uid, config.gid), (Some(1000), Some(1000)));
    let err = materialise(&store, &image, &dir.path().join("cache"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"builder\" (uid 1000)") && err.contains("cannot switch users"),
        "{err}"
    );
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

enum Entry<'a> {
    File(&'a str, &'a str),
    Symlink(&'a str, &'a str),
    Dir(&'a str),
}

/// A layer tar, entry by entry (raw names: `../evil` and `/abs` included).
fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o644);
        let (path, data): (&str, &[u8]) = match entry {
            Entry::File(path, contents) => {
                header.set_size(contents.len() as u64);
                (path, contents.as_bytes())
            }
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                (path, &[])
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                header.set_link_name(target).unwrap();
                (path, &[])
            }
        };
        // Written by hand so that unsafe names reach the archive as they are.
        let name = header.as_old_mut();
        name.name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// A `docker save` tarball (the pre-25 format): `manifest.json` naming
/// `<config digest>.json` and `<id>/layer.tar` per layer, the config's
/// `rootfs.diff_ids` the sha256 of each layer tar, plus `repositories`.
fn docker_save(layers: &[Vec<u8>], env: &[&str]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha256(l)))
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": env, "WorkingDir": "/app", "User": "" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [],
    }))
    .unwrap();
    let config_name = format!("{}.json", sha256(&config));
    let layer_names: Vec<String> = layers
        .iter()
        .map(|l| format!("{}/layer.tar", sha256(&[l.as_slice(), b"id"].concat())))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": config_name,
        "RepoTags": ["saved:1.0"],
        "Layers": layer_names,
    }]))
    .unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        builder.append_data(&mut header, path, bytes).unwrap();
    };
    for (name, layer) in layer_names.iter().zip(layers) {
        add(name, layer);
    }
    add(&config_name, &config);
    add("repositories", b"{\"saved\":{\"1.0\":\"x\"}}");
    add("manifest.json", &manifest);
    builder.into_inner().unwrap()
}

#[test]
fn a_docker_save_tarball_imports_with_whiteouts_and_compressed_outer_archives() {
    let dir = tempfile::tempdir().unwrap();
    let layers = vec![
        layer(&[
            Entry::Dir("app"),
            Entry::File("app/main", "v1"),
            Entry::File("app/old", "old"),
            Entry::Dir("cache"),
            Entry::File("cache/a", "a"),
            Entry::Symlink("bin", "usr/bin"),
        ]),
        layer(&[
            Entry::File("app/.wh.old", ""),
            Entry::File("app/main", "v2"),
            Entry::File("cache/.wh..wh..opq", ""),
            Entry::File("cache/b", "b"),
        ]),
    ];
    let saved = docker_save(&layers, &["PATH=/usr/bin:/bin", "MODE=saved"]);
    let plain = dir.path().join("saved.tar");
    fs::write(&plain, &saved).unwrap();
    let zstd_outer = dir.path().join("saved.bin");
    fs::write(&zstd_outer, zstd::encode_all(saved.as_slice(), 3).unwrap()).unwrap();

    let mut store = Store::open(dir.path().join("store")).unwrap();
    let first = image::import(&mut store, "saved:1.0", &plain, &ImportOptions::default()).unwrap();
    let second = image::import(
        &mut store,
        "saved-zst",
        &zstd_outer,
        &ImportOptions::default(),
    )
    .unwrap();
    assert_eq!(first.digest, second.digest, "the same image either way");
    assert_eq!(first.source.to_string(), "OCI (docker save)");
    let tree = restored(&store, "saved:1.0", dir.path());
    assert_eq!(fs::read_to_string(tree.join("app/main")).unwrap(), "v2");
    assert!(!tree.join("app/old").exists());
    assert!(!tree.join("cache/a").exists());
    assert_eq!(fs::read_to_string(tree.join("cache/b")).unwrap(), "b");
    assert_eq!(
        fs::read_link(tree.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    let config = first.config.unwrap();
    assert_eq!(
        config.env,
        vec![
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("MODE".to_string(), "saved".to_string())
        ]
    );
    assert_eq!(config.working_dir.as_deref(), Some("/app"));
    assert_eq!(config.user, None);
}

#[test]
fn tampered_and_truncated_archives_import_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let layout = umoci_layout(dir.path(), "0");
    let mut store = Store::open(dir.path().join("store")).unwrap();

    // A truncated archive.
    let whole = dir.path().join("image.tar");
    tar_dir(&layout, &whole);
    let bytes = fs::read(&whole).unwrap();
    let cut = dir.path().join("cut.tar");
    fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = image::import(&mut store, "cut", &cut, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing was imported"), "{err}");
    assert_nothing_imported(&mut store, "cut");

    // One byte changed in the largest blob (the busybox layer).
    let blobs = layout.join("blobs/sha256");
    let largest = fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| fs::metadata(p).unwrap().len())
        .unwrap();
    let mut blob = fs::read(&largest).unwrap();
    let middle = blob.len() / 2;
    blob[middle] ^= 0xff;
    fs::write(&largest, &blob).unwrap();
    let tampered = dir.path().join("tampered.tar");
    tar_dir(&layout, &tampered);
    let err = image::import(&mut store, "tampered", &tampered, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    let hex = largest.file_name().unwrap().to_str().unwrap();
    assert!(
        err.contains(&format!("blob sha256:{hex} has digest sha256:")),
        "{err}"
    );
    assert!(err.contains("nothing was imported"), "{err}");
    assert_nothing_imported(&mut store, "tampered");
}

#[test]
fn layers_that_write_outside_the_root_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let outside_str = outside.to_str().unwrap().to_owned();
    let mut store = Store::open(dir.path().join("store")).unwrap();
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (
            vec![layer(&[Entry::File("../evil", "x")])],
            "climbs out of the image",
        ),
        (
            vec![layer(&[Entry::File("/abs-evil", "x")])],
            "absolute path",
        ),
        (
            // A symlink made by layer 1, a file through it in layer 2.
            vec![
                layer(&[Entry::Symlink("escape", &outside_str)]),
                layer(&[Entry::File("escape/evil", "x")]),
            ],
            "goes through the symlink \"escape\"",
        ),
        (
            // A whiteout through a symlink would delete outside.
            vec![
                layer(&[Entry::Symlink("escape", &outside_str)]),
                layer(&[Entry::File("escape/.wh.victim", "")]),
            ],
            "goes through the symlink \"escape\"",
        ),
        (
            vec![layer(&[Entry::File("dir/.wh...", "")])],
            "whiteout that names no file",
        ),
    ];
    fs::write(outside.join("victim"), "still here").unwrap();
    for (number, (layers, needle)) in cases.into_iter().enumerate() {
        let archive = dir.path().join(format!("evil-{number}.tar"));
        fs::write(&archive, docker_save(&layers, &[])).unwrap();
        let name = format!("evil-{number}");
        let err = image::import(&mut store, &name, &archive, &ImportOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert!(err.contains("nothing was imported"), "{err}");
        assert_nothing_imported(&mut store, &name);
    }
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 1);
    assert_eq!(
        fs::read_to_string(outside.join("victim")).unwrap(),
        "still here"
    );
    assert!(!dir.path().join("evil").exists());
}

/// An OCI image layout tar built here per the image-spec: `oci-layout`,
/// `index.json` listing one manifest per `(os, architecture)` with its
/// platform, gzip-compressed layers, every blob under `blobs/sha256/`.
fn oci_layout_tar(images: &[(&str, &str, Vec<u8>)]) -> Vec<u8> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add_blob = |bytes: Vec<u8>| -> (String, u64) {
        let digest = format!("sha256:{}", sha256(&bytes));
        let size = bytes.len() as u64;
        blobs.push((digest.clone(), bytes));
        (digest, size)
    };
    let mut manifests = Vec::new();
    for (os, architecture, layer) in images {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, layer).unwrap();
        let (layer_digest, layer_size) = add_blob(gz.finish().unwrap());
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": architecture,
            "os": os,
            "config": { "Env": [format!("ARCH={architecture}")] },
            "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha256(layer))] },
        }))
        .unwrap();
        let (config_digest, config_size) = add_blob(config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest, "size": config_size,
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer_digest, "size": layer_size,
            }],
        }))
        .unwrap();
        let (digest, size) = add_blob(manifest);
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size,
            "platform": { "os": os, "architecture": architecture },
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_mode(0o644);
        header.set_size(bytes.len() as u64);
        builder.append_data(&mut header, path, bytes).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    for (digest, bytes) in &blobs {
        add(
            &format!("blobs/sha256/{}", &digest["sha256:".len()..]),
            bytes,
        );
    }
    add("index.json", &index);
    builder.into_inner().unwrap()
}

#[test]
fn a_multi_platform_index_gives_the_linux_amd64_image() {
    let dir = tempfile::tempdir().unwrap();
    let images = vec![
        ("linux", "arm64", layer(&[Entry::File("arch", "arm64")])),
        ("linux", "amd64", layer(&[Entry::File("arch", "amd64")])),
        ("windows", "amd64", layer(&[Entry::File("arch", "windows")])),
    ];
    let archive = dir.path().join("multi.tar.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &oci_layout_tar(&images)).unwrap();
    fs::write(&archive, gz.finish().unwrap()).unwrap();
    let mut store = Store::open(dir.path().join("store")).unwrap();
    let report = image::import(&mut store, "multi", &archive, &ImportOptions::default()).unwrap();
    let tree = restored(&store, "multi", dir.path());
    assert_eq!(fs::read_to_string(tree.join("arch")).unwrap(), "amd64");
    let config = report.config.unwrap();
    assert_eq!(config.env, vec![("ARCH".to_string(), "amd64".to_string())]);

    // With a single image, that one is taken whatever its platform.
    let single = dir.path().join("single.tar");
    fs::write(&single, oci_layout_tar(&images[..1])).unwrap();
    image::import(&mut store, "single", &single, &ImportOptions::default()).unwrap();
    let tree = restored(&store, "single", dir.path());
    assert_eq!(fs::read_to_string(tree.join("arch")).unwrap(), "arm64");

    // A blob whose size disagrees with its descriptor is named.
    let mut bytes = oci_layout_tar(&images[1..2]);
    let index_at = bytes
        .windows(b"\"size\":".len())
        .rposition(|w| w == b"\"size\":")
        .unwrap();
    // The last "size" in the archive is the manifest's, in index.json.
    let digit = index_at + b"\"size\":".len();
    bytes[digit] = if bytes[digit] == b'9' {
        b'1'
    } else {
        bytes[digit] + 1
    };
    let wrong_size = dir.path().join("wrong-size.tar");
    fs::write(&wrong_size, bytes).unwrap();
    let err = image::import(&mut store, "wrong", &wrong_size, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("bytes but its descriptor says"), "{err}");
    assert_nothing_imported(&mut store, "wrong");
}

/// Through `kiln run`: the container driver gives a job the image's `Env`
/// between kiln's fixed values and the manifest's env, which wins.
#[test]
fn kiln_run_gives_jobs_the_image_env_under_the_manifest_env() {
    let dir = tempfile::tempdir().unwrap();
    let layout = umoci_layout(dir.path(), "root");
    let archive = dir.path().join("image.tar");
    tar_dir(&layout, &archive);
    let store = dir.path().join("store");
    let kiln = |args: &[&str]| {
        let output = Command::new(KILN)
            .arg("--store")
            .arg(&store)
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "kiln {args:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    };
    kiln(&["image", "import", "oci-run", archive.to_str().unwrap()]);
    let project = dir.path().join("project");
    fs::create_dir_all(&project).unwrap();
    fs::write(
        project.join("build.kiln"),
        r#"{
  driver = { type = "container"; image = "oci-run"; };
  env = { SHARED = "manifest"; };
  stages = [ "show" ];
  jobs.env = {
    stage = "show";
    commands = [ "echo \"$FROM_IMAGE $SHARED $PATH $LANG\" > env.txt" ];
    artifacts = [ "env.txt" ];
  };
}
"#,
    )
    .unwrap();
    kiln(&["run", project.join("build.kiln").to_str().unwrap()]);
    let out = dir.path().join("env.txt");
    kiln(&[
        "artifacts",
        "get",
        "last",
        "env.txt",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        "oci manifest /bin C.UTF-8\n"
    );
}
