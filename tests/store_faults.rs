//! A full disk and a read-only store, on real file systems: each test runs
//! its commands inside a private mount namespace (`unshare --mount`), so the
//! small tmpfs or read-only bind mount disappears with the test.

use std::fs;
use std::path::Path;
use std::process::Command;

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

fn can_mount() -> bool {
    Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a shell script in a fresh mount namespace; `$KILN` is the binary.
fn in_namespace(script: &str) -> (String, String) {
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c"])
        .arg(format!("set -u\n{script}"))
        .env("KILN", KILN)
        .env_remove("KILN_HOME")
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn random_file(path: &Path, len: usize) {
    let mut state = 0x1234_5678_9abc_def1u64;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_full_disk_is_a_clear_error_and_leaves_a_consistent_store() {
    if !can_mount() {
        eprintln!("skipped: cannot create a mount namespace here (needs root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, small, big) = (
        tmp.path().join("mnt"),
        tmp.path().join("small"),
        tmp.path().join("big"),
    );
    fs::create_dir_all(&mnt).unwrap();
    fs::create_dir_all(&small).unwrap();
    fs::write(small.join("a"), "small content").unwrap();
    fs::create_dir_all(&big).unwrap();
    random_file(&big.join("random.bin"), 24 << 20);
    let script = format!(
        r#"
mount -t tmpfs -o size=8m tmpfs '{mnt}'
S='{mnt}/store'
D=$("$KILN" --store "$S" store add '{small}' --name small); echo "small rc=$? $D"
"$KILN" --store "$S" store add '{big}' --name big; echo "big rc=$?"
"$KILN" --store "$S" store fsck --repair > /dev/null; echo "repair rc=$?"
"$KILN" --store "$S" store fsck; echo "fsck rc=$?"
"$KILN" --store "$S" store ls "$D"; echo "ls rc=$?"
"$KILN" --store "$S" store roots; echo "roots rc=$?"
"#,
        mnt = mnt.display(),
        small = small.display(),
        big = big.display()
    );
    let (stdout, stderr) = in_namespace(&script);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("small rc=0 blake3:"), "{context}");
    assert!(stdout.contains("big rc=1"), "{context}");
    assert!(
        stderr.contains("no space left") || stderr.contains("disk is full"),
        "{context}"
    );
    assert!(!stderr.contains("panicked"), "{context}");
    assert!(
        stdout.contains("repair rc=0")
            && stdout.contains("fsck rc=0")
            && stdout.contains(": clean"),
        "{context}"
    );
    assert!(
        stdout.contains("ls rc=0") && stdout.contains(" a\n"),
        "{context}"
    );
    assert!(
        stdout.contains("object/small") && !stdout.contains("object/big"),
        "{context}"
    );
}

#[test]
fn a_read_only_store_reads_and_refuses_writes_clearly() {
    if !can_mount() {
        eprintln!("skipped: cannot create a mount namespace here (needs root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (store, src) = (tmp.path().join("store"), tmp.path().join("src"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("file"), "read me").unwrap();
    let add = Command::new(KILN)
        .arg("--store")
        .arg(&store)
        .args(["store", "add"])
        .arg(&src)
        .output()
        .unwrap();
    assert!(add.status.success());
    let digest = String::from_utf8(add.stdout).unwrap().trim().to_owned();
    let script = format!(
        r#"
mount --bind '{store}' '{store}' && mount -o remount,bind,ro '{store}' || exit 99
"$KILN" --store '{store}' store ls {digest}; echo "ls rc=$?"
"$KILN" --store '{store}' store stats > /dev/null; echo "stats rc=$?"
"$KILN" --store '{store}' store restore {digest} '{out}'; echo "restore rc=$?"
"$KILN" --store '{store}' store add '{src}'; echo "add rc=$?"
"$KILN" --store '{store}' store gc; echo "gc rc=$?"
"#,
        store = store.display(),
        src = src.display(),
        out = tmp.path().join("out").display()
    );
    let (stdout, stderr) = in_namespace(&script);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("ls rc=0") && stdout.contains("file"),
        "{context}"
    );
    assert!(
        stdout.contains("stats rc=0") && stdout.contains("restore rc=0"),
        "{context}"
    );
    assert_eq!(
        fs::read_to_string(tmp.path().join("out/file")).unwrap(),
        "read me"
    );
    assert!(
        stdout.contains("add rc=1") && stdout.contains("gc rc=1"),
        "{context}"
    );
    assert!(stderr.contains("is read-only"), "{context}");
    assert!(!stderr.contains("panicked"), "{context}");
}
