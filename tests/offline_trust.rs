//! Imported job results are trusted only when signed by a key the store
//! trusts (issue: editing a bundle's results made the victim's own
//! manifest run Cached with injected output), and an import never replaces
//! an existing root without `--force`.

#[path = "run_support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use kiln_store::{AddOptions, BuildId, Store};
use support::{Project, Run, parse, restore};

const MANIFEST: &str = r#"{
  driver = { type = "container"; image = "host"; };
  sources = [ ./src ];
  stages = [ "build" "use" ];
  jobs = {
    make = { stage = "build"; commands = [ "echo honest > out" ]; };
    use = { stage = "use"; needs = [ "make" ]; commands = [ "cat out > seen" ]; artifacts = [ "seen" ]; };
  };
}"#;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Another machine: its own store and temp dir.
struct Victim {
    dir: tempfile::TempDir,
}

impl Victim {
    fn new() -> Victim {
        let victim = Victim {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(victim.dir.path().join("tmp")).unwrap();
        victim
    }
    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    fn kiln(&self, cwd: &Path, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--store")
            .arg(self.store())
            .args(args)
            .current_dir(cwd)
            .env("TMPDIR", self.dir.path().join("tmp"))
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> Output {
        let out = self.kiln(self.dir.path(), args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        out
    }
    /// Imports `bundle` into `project/` and runs it there.
    fn import_and_run(&self, bundle: &Path) -> (String, Run) {
        let imported = self.ok(&[
            "bundle",
            "import",
            bundle.to_str().unwrap(),
            "-C",
            "project",
        ]);
        let run = parse(self.kiln(&self.dir.path().join("project"), &["run", "--json"]));
        (text(&imported.stderr), run)
    }
    fn seen(&self, run: &Run) -> String {
        let artifacts = run.artifacts();
        let (_, object) = artifacts.iter().find(|(name, _)| name == "seen").unwrap();
        let out = self.dir.path().join("seen");
        restore(&self.store(), object, &out);
        std::fs::read_to_string(out).unwrap()
    }
}

/// The exporter's build, then its result for `make` replaced by one whose
/// output says `pwned` (what an edited bundle, or a hostile store, holds).
fn poisoned_exporter() -> Project {
    let project = Project::new(MANIFEST);
    project.write("src/file", "x");
    let run = project.run(&[]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let mut store = Store::open(&project.store).unwrap();
    let make = store
        .build_jobs(BuildId(1))
        .unwrap()
        .into_iter()
        .find(|job| job.name == "make")
        .unwrap();
    let layer_dir = project.dir.path().join("poison");
    std::fs::create_dir(&layer_dir).unwrap();
    std::fs::write(layer_dir.join("out"), "pwned\n").unwrap();
    let roots = store.temp_roots().unwrap();
    let layer = store
        .add_path(&layer_dir, &AddOptions::default(), &roots)
        .unwrap();
    store
        .record_job_result(
            make.key.unwrap(),
            layer.object.digest,
            None,
            kiln_store::JOB_PASSED,
            Vec::new(),
        )
        .unwrap();
    project
}

fn kiln_ok(project: &Project, args: &[&str]) -> Output {
    let out = project.kiln().args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    out
}

fn bundle(project: &Project, name: &str, sign: Option<&str>) -> PathBuf {
    let path = project.dir.path().join(name);
    let mut args = vec!["bundle", "create", "last", "-o", path.to_str().unwrap()];
    if let Some(key) = sign {
        args.extend(["--sign", key]);
    }
    kiln_ok(project, &args);
    path
}

#[test]
fn a_poisoned_result_is_served_only_with_a_trusted_signature() {
    let exporter = poisoned_exporter();
    let public = text(&kiln_ok(&exporter, &["key", "generate", "ci"]).stdout)
        .trim()
        .to_owned();
    assert_eq!(
        text(&kiln_ok(&exporter, &["key", "public", "ci"]).stdout).trim(),
        public
    );
    let unsigned = bundle(&exporter, "unsigned.bundle", None);
    let signed = bundle(&exporter, "signed.bundle", Some("ci"));

    // Unsigned: the objects come in, the results are kept as untrusted and
    // the victim's run rebuilds: its artifact is honest.
    let victim = Victim::new();
    let (summary, run) = victim.import_and_run(&unsigned);
    assert!(
        summary.contains("2 job result(s) without a trusted signature"),
        "{summary}"
    );
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("make"), "passed", "{}", run.describe());
    assert_eq!(victim.seen(&run), "honest\n");
    // Its own results replace the untrusted ones: cached the second time.
    let again = parse(victim.kiln(&victim.dir.path().join("project"), &["run", "--json"]));
    assert_eq!(again.status("make"), "cached", "{}", again.describe());

    // Signed by a key this store does not trust: the same.
    let other = Victim::new();
    let stranger = text(&other.ok(&["key", "generate", "ci"]).stdout)
        .trim()
        .to_owned();
    assert_ne!(stranger, public);
    other.ok(&["trust", "add", &stranger]);
    let (summary, run) = other.import_and_run(&signed);
    assert!(summary.contains("without a trusted signature"), "{summary}");
    assert_eq!(run.status("make"), "passed", "{}", run.describe());
    assert_eq!(other.seen(&run), "honest\n");

    // The control: a store that trusts the signer serves the very same
    // result, injected output and all. The probe could have succeeded.
    let trusting = Victim::new();
    trusting.ok(&["trust", "add", &public]);
    assert_eq!(text(&trusting.ok(&["trust", "ls"]).stdout).trim(), public);
    let (summary, run) = trusting.import_and_run(&signed);
    assert!(summary.contains("signed by trusted key(s) ci"), "{summary}");
    assert_eq!(run.status("make"), "cached", "{}", run.describe());
    assert_eq!(trusting.seen(&run), "pwned\n");
    trusting.ok(&["trust", "rm", "ci"]);
    assert!(
        text(&trusting.ok(&["trust", "ls"]).stdout)
            .trim()
            .is_empty()
    );
}

#[test]
fn an_untrusted_result_is_compared_with_by_check() {
    let exporter = poisoned_exporter();
    let unsigned = bundle(&exporter, "unsigned.bundle", None);
    let victim = Victim::new();
    victim.ok(&[
        "bundle",
        "import",
        unsigned.to_str().unwrap(),
        "-C",
        "project",
    ]);
    let check = parse(victim.kiln(
        &victim.dir.path().join("project"),
        &["run", "--check", "--json"],
    ));
    assert_eq!(
        check.code,
        6,
        "the rerun differs from the untrusted result: {}",
        check.describe()
    );
}

#[test]
fn an_import_replaces_an_existing_root_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let image = |name: &str, content: &str| {
        let root = dir.path().join(name);
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/os-release"), content).unwrap();
        root
    };
    let kiln = |store: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--store")
            .arg(dir.path().join(store))
            .args(args)
            .output()
            .unwrap()
    };
    let theirs = image("theirs", "ID=theirs\n");
    let ours = image("ours", "ID=ours\n");
    assert!(
        kiln("a", &["image", "import", "tiny", theirs.to_str().unwrap()])
            .status
            .success()
    );
    assert!(
        kiln("b", &["image", "import", "tiny", ours.to_str().unwrap()])
            .status
            .success()
    );
    let export = dir.path().join("export");
    let exported = kiln(
        "a",
        &[
            "store",
            "export",
            "image/tiny",
            "-o",
            export.to_str().unwrap(),
        ],
    );
    assert!(exported.status.success(), "{}", text(&exported.stderr));
    // The image's digest, as `kiln image ls` shows it.
    let listed = |store: &str| {
        let out = text(&kiln(store, &["image", "ls"]).stdout);
        out.lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_owned()
    };
    let before = listed("b");

    let refused = kiln("b", &["store", "import", export.to_str().unwrap()]);
    assert!(!refused.status.success());
    let message = text(&refused.stderr);
    assert!(
        message.contains("image/tiny") && message.contains("--force"),
        "{message}"
    );
    assert_eq!(listed("b"), before, "nothing replaced");

    let forced = kiln(
        "b",
        &["store", "import", "--force", export.to_str().unwrap()],
    );
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    let message = text(&forced.stderr);
    assert!(
        message.contains("replaced root image/tiny: tree blake3:"),
        "{message}"
    );
    assert_eq!(listed("b"), listed("a"));
}

/// A project whose files are one 1 MiB content twenty times: a bundle of
/// about 1 MiB that expands to 20 MiB.
fn amplifying_bundle() -> (Project, PathBuf) {
    let project = Project::new(MANIFEST);
    let content: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::create_dir_all(project.root().join("src")).unwrap();
    for copy in 0..20 {
        std::fs::write(project.root().join(format!("src/copy-{copy}")), &content).unwrap();
    }
    let path = project.dir.path().join("amplifying.bundle");
    kiln_ok(
        &project,
        &[
            "bundle",
            "create",
            "build.kiln",
            "-o",
            path.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::metadata(&path).unwrap().len() < 4 << 20,
        "the bundle is small"
    );
    (project, path)
}

#[test]
fn a_bundle_that_expands_past_its_declared_size_or_the_cap_is_refused() {
    let (_project, path) = amplifying_bundle();

    // Over the cap: refused from its header, nothing imported.
    let victim = Victim::new();
    let refused = victim.kiln(
        victim.dir.path(),
        &[
            "bundle",
            "import",
            path.to_str().unwrap(),
            "-C",
            "p",
            "--max-size",
            "10MiB",
        ],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("over the limit"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!victim.dir.path().join("p").exists());
    // Nothing stored (the store's directories themselves take some room on
    // disk, which `store stats` reports too).
    let stats: serde_json::Value = serde_json::from_slice(
        &victim
            .kiln(victim.dir.path(), &["store", "stats", "--json"])
            .stdout,
    )
    .unwrap();
    assert!(
        stats["stored_bytes"].as_u64().unwrap() < 1 << 20,
        "nothing stored: {stats}"
    );

    // Lying about its size: rewrite the header (and its checksum) to
    // declare 1 byte. Refused before any file is written.
    let bytes = std::fs::read(&path).unwrap();
    let length = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[16..16 + length]).unwrap();
    assert!(
        header["expanded_size"].as_u64().unwrap() >= 20 << 20,
        "{header}"
    );
    header["expanded_size"] = 1.into();
    let header = serde_json::to_vec(&header).unwrap();
    let mut lying = bytes[..12].to_vec();
    lying.extend_from_slice(&(header.len() as u32).to_le_bytes());
    lying.extend_from_slice(&header);
    lying.extend_from_slice(kiln_store::B3Digest::of(&header).as_bytes());
    lying.extend_from_slice(&bytes[16 + length + 32..]);
    let liar = victim.dir.path().join("lying.bundle");
    std::fs::write(&liar, lying).unwrap();
    let refused = victim.kiln(
        victim.dir.path(),
        &["bundle", "import", liar.to_str().unwrap(), "-C", "q"],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused.stderr).contains("more than it declares"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!victim.dir.path().join("q").exists());
    victim.ok(&["store", "fsck"]);

    // The control: the honest bundle under the default cap imports, and its
    // project really is 20 MiB of files.
    victim.ok(&["bundle", "import", path.to_str().unwrap(), "-C", "r"]);
    let written: u64 = std::fs::read_dir(victim.dir.path().join("r/src"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(written, 20 << 20);
}
