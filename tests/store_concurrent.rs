//! Several processes writing to one store at once stay correct.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");

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

fn kiln(store: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(KILN);
    cmd.arg("--store")
        .arg(store)
        .arg("store")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn concurrent_writers_and_collectors_stay_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    // Trees that share most chunks, so that both writers race on the same objects.
    let shared = pseudo_random(1, 6 << 20);
    let mut dirs = Vec::new();
    for i in 0..4u64 {
        let dir = tmp.path().join(format!("w{i}"));
        fs::create_dir_all(dir.join("d")).unwrap();
        fs::write(dir.join("shared.bin"), &shared).unwrap();
        for j in 0..100u64 {
            fs::write(dir.join(format!("d/{j}")), pseudo_random(j + 1, 3000)).unwrap();
        }
        fs::write(dir.join("own"), pseudo_random(100 + i, 500_000)).unwrap();
        dirs.push(dir);
    }
    for round in 0..3 {
        // Two writers at once (the store does not exist yet in round 0),
        // plus a collector and a curator contending for the lock.
        let mut children = Vec::new();
        for (i, dir) in dirs.iter().enumerate().take(2 + round % 2) {
            let name = format!("r{round}w{i}");
            children.push((
                name.clone(),
                kiln(&store, &["add", dir.to_str().unwrap(), "--name", &name])
                    .spawn()
                    .unwrap(),
            ));
        }
        if round > 0 {
            children.push(("gc".into(), kiln(&store, &["gc"]).spawn().unwrap()));
            children.push((
                "curate".into(),
                kiln(&store, &["curate", "--threshold", "0"])
                    .spawn()
                    .unwrap(),
            ));
        }
        for (name, child) in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let fsck = kiln(&store, &["fsck"]).output().unwrap();
        assert!(
            fsck.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        // Drop the first writer's root so the next round's gc has work.
        let _ = kiln(&store, &["unroot", &format!("object/r{round}w0")])
            .output()
            .unwrap();
    }
    // Every remaining root restores to its source.
    let listing = kiln(&store, &["roots", "--json"]).output().unwrap();
    let roots: serde_json::Value = serde_json::from_slice(&listing.stdout).unwrap();
    for root in roots.as_array().unwrap() {
        let name = root["name"].as_str().unwrap();
        let writer: usize = name.rsplit('w').next().unwrap().parse().unwrap();
        let out = tmp.path().join(format!("out-{name}"));
        let digest = root["object"]["digest"].as_str().unwrap();
        let restore = kiln(&store, &["restore", digest, out.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            restore.status.success(),
            "{}",
            String::from_utf8_lossy(&restore.stderr)
        );
        assert_eq!(
            fs::read(out.join("own")).unwrap(),
            fs::read(dirs[writer].join("own")).unwrap()
        );
        assert_eq!(fs::read(out.join("shared.bin")).unwrap(), shared);
    }
}
