//! Air-gapped bundles: two stores in two temp dirs stand for two machines.
//! The air-gapped side runs inside a network namespace with nothing but
//! loopback (`unshare --net`) and must succeed from the bundle alone.

#[path = "run_support/mod.rs"]
mod support;

#[path = "offline_support/mod.rs"]
mod offline;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use offline::{GitServer, manifest};
use support::{Project, Run, parse, restore};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The other machine: its own store and temp dir, no network.
struct AirGapped {
    dir: tempfile::TempDir,
}

impl AirGapped {
    fn new() -> AirGapped {
        let air = AirGapped {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(air.tmp()).unwrap();
        air
    }
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }
    /// `kiln` inside a fresh network namespace (only a down loopback).
    fn kiln(&self, cwd: &Path, args: &[&str]) -> Output {
        Command::new("unshare")
            .arg("--net")
            .arg(env!("CARGO_BIN_EXE_kiln"))
            .arg("--store")
            .arg(self.store())
            .args(args)
            .current_dir(cwd)
            .env("TMPDIR", self.tmp())
            .output()
            .unwrap()
    }
    fn run(&self, cwd: &Path, args: &[&str]) -> Run {
        let mut all = vec!["run", "--json"];
        all.extend_from_slice(args);
        parse(self.kiln(cwd, &all))
    }
}

fn kiln(project: &Project, args: &[&str]) -> Output {
    project.kiln().args(args).output().unwrap()
}

/// A signing key `ci` in the project's store, trusted by `air`'s store:
/// the signed results of its bundles are cache hits there.
fn trust_the_project_key(project: &Project, air: &AirGapped) {
    let generated = kiln(project, &["key", "generate", "ci"]);
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let public = text(&generated.stdout).trim().to_owned();
    let trusted = air.kiln(air.dir.path(), &["trust", "add", &public]);
    assert!(trusted.status.success(), "{}", text(&trusted.stderr));
}

/// A project with a fetched remote source, built once.
fn built_project(server: &GitServer) -> (Project, Run) {
    let project = Project::new(&manifest(&server.url(), r#"ref = "main";"#));
    project.write("input.txt", "two\n");
    let fetched = kiln(&project, &["fetch"]);
    assert!(fetched.status.success(), "{}", text(&fetched.stderr));
    assert!(kiln(&project, &["lock"]).status.success());
    let run = project.run(&["--offline"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    (project, run)
}

#[test]
fn a_bundled_build_reruns_air_gapped_all_cached_then_rebuilds_with_no_cache() {
    let server = GitServer::start();
    let (project, first) = built_project(&server);
    let air = AirGapped::new();
    trust_the_project_key(&project, &air);
    let bundle = project.dir.path().join("build.bundle");
    let created = kiln(
        &project,
        &[
            "bundle",
            "create",
            "last",
            "--sign",
            "ci",
            "-o",
            bundle.to_str().unwrap(),
        ],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    assert!(
        text(&created.stderr).contains("2 job result(s) of build 1"),
        "{}",
        text(&created.stderr)
    );
    drop(server); // the remote is gone: only the bundle travels

    let imported = air.kiln(
        air.dir.path(),
        &[
            "bundle",
            "import",
            bundle.to_str().unwrap(),
            "-C",
            "project",
        ],
    );
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    assert!(
        text(&imported.stderr).contains("2 job result(s) signed by trusted key(s) ci"),
        "{}",
        text(&imported.stderr)
    );
    let checkout = air.dir.path().join("project");
    assert_eq!(
        text(&imported.stdout).trim(),
        checkout.join("build.kiln").display().to_string()
    );
    assert_eq!(
        std::fs::read_to_string(checkout.join("input.txt")).unwrap(),
        "two\n"
    );
    assert!(checkout.join("kiln.lock").is_file());

    let cached = air.run(&checkout, &["--offline", "--locked"]);
    assert_eq!(cached.code, 0, "{}", cached.describe());
    for job in ["compile", "package"] {
        assert_eq!(cached.status(job), "cached", "{}", cached.describe());
    }
    assert_eq!(cached.artifacts(), first.artifacts());

    let rebuilt = air.run(&checkout, &["--offline", "--no-cache"]);
    assert_eq!(rebuilt.code, 0, "{}", rebuilt.describe());
    for job in ["compile", "package"] {
        assert_eq!(rebuilt.status(job), "passed", "{}", rebuilt.describe());
    }
    assert_eq!(rebuilt.artifacts(), first.artifacts());
    let out = air.dir.path().join("upper.txt");
    restore(&air.store(), &rebuilt.artifacts()[0].1, &out);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ONE\nTWO\n");
    let fsck = air.kiln(air.dir.path(), &["store", "fsck"]);
    assert!(fsck.status.success(), "{}", text(&fsck.stdout));
}

#[test]
fn a_manifest_that_never_ran_bundles_sources_and_rebuilds_offline() {
    let server = GitServer::start();
    let project = Project::new(&manifest(&server.url(), ""));
    project.write("input.txt", "three\n");
    assert!(kiln(&project, &["fetch"]).status.success());
    let bundle = project.dir.path().join("sources.bundle");
    let created = kiln(
        &project,
        &[
            "bundle",
            "create",
            "build.kiln",
            "-o",
            bundle.to_str().unwrap(),
        ],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    assert!(text(&created.stderr).contains("sources and images only"));
    drop(server);

    let air = AirGapped::new();
    let imported = air.kiln(
        air.dir.path(),
        &["bundle", "import", bundle.to_str().unwrap()],
    );
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    // Without -C: a new directory named after the project.
    let checkout = PathBuf::from(text(&imported.stdout).trim())
        .parent()
        .unwrap()
        .to_path_buf();
    assert!(checkout.starts_with(air.dir.path()), "{checkout:?}");
    let run = air.run(&checkout, &["--offline"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("package"), "passed", "{}", run.describe());
}

#[test]
fn corrupted_truncated_and_newer_bundles_are_rejected_with_nothing_imported() {
    let server = GitServer::start();
    let (project, _) = built_project(&server);
    let bundle = project.dir.path().join("build.bundle");
    let created = kiln(
        &project,
        &["bundle", "create", "1", "-o", bundle.to_str().unwrap()],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let good = std::fs::read(&bundle).unwrap();

    let mut flipped = good.clone();
    let middle = good.len() / 2;
    flipped[middle] ^= 0x55;
    let mut newer = good.clone();
    newer[8..12].copy_from_slice(&3u32.to_le_bytes());
    let mut header = good.clone();
    header[20] ^= 0x01;
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("flipped", flipped, "nothing imported"),
        ("truncated", good[..good.len() - 100].to_vec(), "truncated"),
        ("cut-in-header", good[..10].to_vec(), "truncated"),
        ("newer", newer, "made by a newer kiln (bundle format 3"),
        ("header", header, "corrupt"),
        (
            "not-a-bundle",
            b"hello world, not a bundle".to_vec(),
            "not a kiln bundle",
        ),
    ];
    let air = AirGapped::new();
    for (name, bytes, expected) in cases {
        let path = air.dir.path().join(format!("{name}.bundle"));
        std::fs::write(&path, bytes).unwrap();
        let target = air.dir.path().join(name);
        let imported = air.kiln(
            air.dir.path(),
            &[
                "bundle",
                "import",
                path.to_str().unwrap(),
                "-C",
                target.to_str().unwrap(),
            ],
        );
        assert_eq!(imported.status.code(), Some(1), "{name}");
        let stderr = text(&imported.stderr);
        assert!(
            stderr.contains(expected),
            "{name}: expected {expected:?} in {stderr}"
        );
        assert!(!target.exists(), "{name}: the project was written");
        let roots = air.kiln(air.dir.path(), &["store", "roots"]);
        assert_eq!(
            text(&roots.stdout).trim(),
            "",
            "{name}: roots were imported"
        );
        let fsck = air.kiln(air.dir.path(), &["store", "fsck"]);
        assert!(fsck.status.success(), "{name}: {}", text(&fsck.stdout));
    }
    // Nothing was cached from the rejected bundles either.
    let stats = air.kiln(air.dir.path(), &["store", "stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["blobs"], 0, "{stats}");

    // The intact bundle still imports into that same store.
    let path = air.dir.path().join("good.bundle");
    std::fs::write(&path, &good).unwrap();
    let imported = air.kiln(
        air.dir.path(),
        &["bundle", "import", path.to_str().unwrap()],
    );
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    // A second import may not write over the project.
    let again = air.kiln(
        air.dir.path(),
        &["bundle", "import", path.to_str().unwrap()],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("exists and is not empty"),
        "{}",
        text(&again.stderr)
    );
}

/// A rootfs with a static busybox as its shell, packed by the `tar` CLI.
fn busybox_tarball(dir: &Path) -> PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("busybox-static is installed (scripts/test.sh)");
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "tr"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tarball = dir.join("busybox.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    tarball
}

#[test]
fn an_imported_image_travels_in_the_bundle_and_arguments_are_kept() {
    let server = GitServer::start();
    let project = Project::new(&format!(
        r#"{{ version ? "0" }}: {{
  driver = {{ type = "container"; image = "tiny/busybox"; }};
  sources = [ {{ url = "{}"; }} ];
  stages = [ "build" ];
  jobs = {{ upper = {{ stage = "build"; env = {{ V = version; }}; commands = [ "tr a-z A-Z < lib/lib.txt > up.txt" "echo $V >> up.txt" ]; artifacts = [ "up.txt" ]; }}; }};
}}"#,
        server.url()
    ));
    let tarball = busybox_tarball(project.dir.path());
    let imported = kiln(
        &project,
        &["image", "import", "tiny/busybox", tarball.to_str().unwrap()],
    );
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    assert!(kiln(&project, &["fetch"]).status.success());
    let first = project.run(&["--offline", "--arg", "version=7"]);
    assert_eq!(first.code, 0, "{}", first.describe());
    let air = AirGapped::new();
    trust_the_project_key(&project, &air);
    let bundle = project.dir.path().join("image.bundle");
    let created = kiln(
        &project,
        &[
            "bundle",
            "create",
            "last",
            "--arg",
            "version=7",
            "--sign",
            "ci",
            "-o",
            bundle.to_str().unwrap(),
        ],
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    assert!(
        text(&created.stderr).contains("1 image(s)"),
        "{}",
        text(&created.stderr)
    );
    drop(server);

    let imported = air.kiln(
        air.dir.path(),
        &["bundle", "import", bundle.to_str().unwrap(), "-C", "p"],
    );
    assert!(imported.status.success(), "{}", text(&imported.stderr));
    assert!(
        text(&imported.stderr).contains("kiln run --offline --arg 'version=7'"),
        "{}",
        text(&imported.stderr)
    );
    let images = air.kiln(air.dir.path(), &["image", "ls"]);
    assert!(text(&images.stdout).contains("tiny/busybox"));
    let checkout = air.dir.path().join("p");
    let cached = air.run(&checkout, &["--offline", "--arg", "version=7"]);
    assert_eq!(cached.status("upper"), "cached", "{}", cached.describe());
    let rebuilt = air.run(
        &checkout,
        &["--offline", "--no-cache", "--arg", "version=7"],
    );
    assert_eq!(rebuilt.status("upper"), "passed", "{}", rebuilt.describe());
    assert_eq!(rebuilt.artifacts(), first.artifacts());
}
