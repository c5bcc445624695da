//! `kiln store ...` end to end, as a newcomer would use it.

use std::fs;
use std::path::Path;
use std::process::Output;

use assert_cmd::Command;

fn kiln(store: &Path) -> Command {
    let mut cmd = Command::cargo_bin("kiln").unwrap();
    cmd.arg("--store").arg(store).env_remove("KILN_HOME");
    cmd
}

fn run(store: &Path, args: &[&str]) -> Output {
    kiln(store).args(args).output().unwrap()
}

fn ok(store: &Path, args: &[&str]) -> String {
    let out = run(store, args);
    assert!(
        out.status.success(),
        "kiln store {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(store: &Path, args: &[&str]) -> String {
    let out = run(store, args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "kiln {args:?} should fail with 1: {out:?}"
    );
    String::from_utf8(out.stderr).unwrap()
}

fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn project(dir: &Path) {
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::write(dir.join("src/main.c"), "int main(void) { return 0; }\n").unwrap();
    fs::write(dir.join("README"), "a project\n").unwrap();
    fs::write(dir.join("blob.bin"), pseudo_random(1, 3 << 20)).unwrap();
    std::os::unix::fs::symlink("README", dir.join("READ.ME")).unwrap();
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

#[test]
fn a_newcomer_tour() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, second) = (tmp.path().join("store"), tmp.path().join("second"));
    let (v1, v2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    project(&v1);
    project(&v2);
    fs::write(v2.join("README"), "a project, version 2\n").unwrap();

    let d1 = ok(
        &store,
        &["store", "add", v1.to_str().unwrap(), "--name", "v1"],
    )
    .trim()
    .to_owned();
    let d2 = ok(
        &store,
        &["store", "add", v2.to_str().unwrap(), "--name", "v2"],
    )
    .trim()
    .to_owned();
    assert!(d1.starts_with("blake3:") && d1 != d2);

    // Two versions, stored about once.
    let stats = json(&ok(&store, &["store", "stats", "--json"]));
    let logical = stats["logical_bytes"].as_u64().unwrap();
    let stored = stats["stored_bytes"].as_u64().unwrap();
    assert!(logical > 6_000_000 && stored < 3_300_000, "{stats}");
    assert!(stats["dedup_ratio"].as_f64().unwrap() > 1.8, "{stats}");
    assert!(ok(&store, &["store", "stats"]).contains("dedup ratio"));

    let listing = ok(&store, &["store", "ls", &d1]);
    assert!(
        listing.contains("README")
            && listing.contains("READ.ME -> README")
            && listing.contains("src/"),
        "{listing}"
    );
    let entries = json(&ok(&store, &["store", "ls", &d1, "--json"]));
    let readme = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "README")
        .unwrap()
        .clone();
    let readme_digest = readme["digest"].as_str().unwrap();
    assert_eq!(ok(&store, &["store", "cat", readme_digest]), "a project\n");

    let out = tmp.path().join("out");
    ok(&store, &["store", "restore", &d1, out.to_str().unwrap()]);
    assert_eq!(
        fs::read(out.join("blob.bin")).unwrap(),
        fs::read(v1.join("blob.bin")).unwrap()
    );
    assert_eq!(
        fs::read_link(out.join("READ.ME")).unwrap(),
        Path::new("README")
    );

    let roots = json(&ok(&store, &["store", "roots", "--json"]));
    assert_eq!(roots.as_array().unwrap().len(), 2);
    assert!(ok(&store, &["store", "fsck"]).contains("clean"));
    ok(&store, &["store", "curate", "--threshold", "500MiB"]);
    ok(&store, &["store", "gc", "--full"]);

    // Export one version and import it elsewhere.
    let bundle = tmp.path().join("v2.bundle");
    ok(
        &store,
        &[
            "store",
            "export",
            "object/v2",
            "-o",
            bundle.to_str().unwrap(),
        ],
    );
    ok(&second, &["store", "import", bundle.to_str().unwrap()]);
    let out2 = tmp.path().join("out2");
    ok(&second, &["store", "restore", &d2, out2.to_str().unwrap()]);
    assert_eq!(
        fs::read(out2.join("README")).unwrap(),
        b"a project, version 2\n"
    );
    assert!(ok(&second, &["store", "roots"]).contains("object/v2"));
    assert!(ok(&second, &["store", "fsck", "--json"]).contains("\"clean\": true"));

    // Unrooting and collecting frees what only v1 used.
    ok(&store, &["store", "unroot", "object/v1"]);
    let gc = json(&ok(&store, &["store", "gc", "--json"]));
    assert!(gc["trees"].as_u64().unwrap() >= 1, "{gc}");
    assert!(fails(&store, &["store", "ls", &d1]).contains("no object"));
    ok(&store, &["store", "ls", &d2]);
}

#[test]
fn errors_are_clear_and_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let error = fails(&store, &["store", "cat", "blake3:nothex"]);
    assert!(
        error.contains("malformed digest \"blake3:nothex\""),
        "{error}"
    );
    let error = fails(&store, &["store", "cat", "deadbeef"]);
    assert!(error.contains("blake3:"), "{error}");
    let unknown = format!("blake3:{}", "ab".repeat(32));
    assert!(fails(&store, &["store", "ls", &unknown]).contains(&format!("no object {unknown}")));
    let missing = tmp.path().join("not-there");
    let error = fails(&store, &["store", "add", missing.to_str().unwrap()]);
    assert!(
        error.contains("not-there") && error.contains("No such file"),
        "{error}"
    );
    assert!(fails(&store, &["store", "import", missing.to_str().unwrap()]).contains("not-there"));
    assert!(
        fails(
            &store,
            &["store", "export", "image/nope", "-o", "/dev/null"]
        )
        .contains("no root image/nope")
    );
    assert!(fails(&store, &["store", "curate", "--threshold", "lots"]).contains("invalid size"));

    let file = tmp.path().join("f");
    fs::write(&file, "content").unwrap();
    let digest = ok(&store, &["store", "add", file.to_str().unwrap()])
        .trim()
        .to_owned();
    let error = fails(&store, &["store", "ls", &digest]);
    assert!(error.contains("is a blob"), "{error}");
    let target = tmp.path().join("nonempty");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("x"), "x").unwrap();
    let dir_digest = ok(
        &store,
        &[
            "store",
            "add",
            tmp.path().join("nonempty").to_str().unwrap(),
        ],
    )
    .trim()
    .to_owned();
    assert!(
        fails(
            &store,
            &["store", "restore", &dir_digest, target.to_str().unwrap()]
        )
        .contains("not empty")
    );

    // A bundle that is not one.
    let junk = tmp.path().join("junk");
    fs::write(&junk, "KILNBNDL but then garbage").unwrap();
    assert!(
        fails(&store, &["store", "import", junk.to_str().unwrap()]).contains("bundle rejected")
    );
}

#[test]
fn the_store_location_follows_kiln_home() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    fs::write(&file, "x").unwrap();
    let out = Command::cargo_bin("kiln")
        .unwrap()
        .env("KILN_HOME", tmp.path().join("home"))
        .args(["store", "add", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(tmp.path().join("home/index.sqlite").exists());
}

#[test]
fn cat_into_a_closed_pipe_is_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let file = tmp.path().join("big");
    fs::write(&file, pseudo_random(2, 4 << 20)).unwrap();
    let digest = ok(&store, &["store", "add", file.to_str().unwrap()])
        .trim()
        .to_owned();
    let kiln = assert_cmd::cargo::cargo_bin("kiln");
    let script = format!(
        "'{}' --store '{}' store cat {digest} | head -c 10 > /dev/null; echo ${{PIPESTATUS[0]}}",
        kiln.display(),
        store.display()
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
