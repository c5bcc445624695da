//! SIGKILL at random moments during `add`, `curate` and `import`, in a loop:
//! afterwards `fsck --repair` must leave a clean store in which everything
//! that was committed before the kill is still intact.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KILN: &str = env!("CARGO_BIN_EXE_kiln");
/// The loop's own budget; the whole test stays well under a minute.
const BUDGET: Duration = Duration::from_secs(35);

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn kiln(store: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(KILN);
    cmd.arg("--store")
        .arg(store)
        .args(["store"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn must(store: &Path, args: &[&str]) -> String {
    let out = kiln(store, args).output().unwrap();
    assert!(
        out.status.success(),
        "kiln store {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A directory with new content: some small files, one chunked file.
fn make_tree(rng: &mut Rng, dir: &Path) {
    fs::create_dir_all(dir.join("sub")).unwrap();
    for i in 0..40 {
        let len = 2000 + rng.below(30_000) as usize;
        fs::write(dir.join(format!("sub/f{i}")), rng.bytes(len)).unwrap();
    }
    // Half shared with earlier trees (dedup paths), half new.
    let mut big = Rng(7).bytes(2 << 20);
    big.extend(rng.bytes(2 << 20));
    fs::write(dir.join("big"), big).unwrap();
}

/// Runs `args`, killing it after `delay`; returns whether it finished first.
fn run_and_kill(store: &Path, args: &[&str], delay: Duration) -> bool {
    let mut child = kiln(store, args).spawn().unwrap();
    let deadline = Instant::now() + delay;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "kiln store {args:?} failed on its own: {status}"
            );
            return true;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn roots(store: &Path) -> BTreeMap<String, String> {
    let listing: serde_json::Value =
        serde_json::from_str(&must(store, &["roots", "--json"])).unwrap();
    listing
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                format!(
                    "{}/{}",
                    r["kind"].as_str().unwrap(),
                    r["name"].as_str().unwrap()
                ),
                r["object"]["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn sigkill_at_any_moment_loses_nothing_committed() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash loop seed {seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let donor = tmp.path().join("donor");

    // Bundles to import come from another store.
    let mut bundles: Vec<PathBuf> = Vec::new();
    for i in 0..4 {
        let dir = tmp.path().join(format!("bundle-src{i}"));
        make_tree(&mut rng, &dir);
        must(
            &donor,
            &["add", dir.to_str().unwrap(), "--name", &format!("b{i}")],
        );
        let bundle = tmp.path().join(format!("b{i}.bundle"));
        must(
            &donor,
            &[
                "export",
                &format!("object/b{i}"),
                "-o",
                bundle.to_str().unwrap(),
            ],
        );
        bundles.push(bundle);
    }

    // Roughly how long each operation takes uninterrupted.
    let probe = tmp.path().join("probe");
    make_tree(&mut rng, &probe);
    let started = Instant::now();
    must(&store, &["add", probe.to_str().unwrap(), "--name", "probe"]);
    // A first guess; the loop recalibrates it, since operations get faster
    // (warm caches) or slower (a loaded machine) as it runs.
    let mut op_time = started.elapsed().max(Duration::from_millis(20));

    // What committed operations promised: root name → digest.
    let mut committed: BTreeMap<String, String> = roots(&store);
    let (mut iterations, mut kills) = (0, 0);
    let loop_started = Instant::now();
    while loop_started.elapsed() < BUDGET {
        iterations += 1;
        let delay = Duration::from_micros(rng.below(op_time.as_micros() as u64));
        let finished = match rng.below(3) {
            0 => {
                let dir = tmp.path().join(format!("tree{iterations}"));
                make_tree(&mut rng, &dir);
                let name = format!("t{iterations}");
                let finished = run_and_kill(
                    &store,
                    &["add", dir.to_str().unwrap(), "--name", &name],
                    delay,
                );
                fs::remove_dir_all(&dir).unwrap();
                finished
            }
            1 => {
                // Make garbage first (not killed), then kill the curation.
                if let Some(name) = committed
                    .keys()
                    .find(|k| k.starts_with("object/t"))
                    .cloned()
                {
                    must(&store, &["unroot", &name]);
                    committed.remove(&name);
                }
                run_and_kill(&store, &["curate", "--threshold", "0"], delay / 3)
            }
            _ => {
                let bundle = &bundles[rng.below(bundles.len() as u64) as usize];
                run_and_kill(&store, &["import", bundle.to_str().unwrap()], delay)
            }
        };
        // Aim the next kill: an operation that finished first means the
        // window is too wide, a kill that landed means it may widen a bit.
        // This keeps about half the kills mid-operation at any speed.
        if finished {
            op_time = (op_time * 3 / 4).max(Duration::from_millis(1));
        } else {
            kills += 1;
            op_time = op_time * 9 / 8;
        }
        // Repair, then a second check must find nothing.
        let repair = kiln(&store, &["fsck", "--repair"]).output().unwrap();
        assert!(
            repair.status.success(),
            "fsck --repair after iteration {iterations}: {}",
            String::from_utf8_lossy(&repair.stdout)
        );
        let check = must(&store, &["fsck"]);
        assert!(check.contains(": clean"), "iteration {iterations}: {check}");
        let report = String::from_utf8_lossy(&repair.stdout);
        assert!(
            !report.contains("marked root"),
            "iteration {iterations}: a committed root lost data: {report}"
        );

        // Everything committed before is still there and intact (fsck re-hashed it).
        let now = roots(&store);
        for (name, digest) in &committed {
            assert_eq!(
                now.get(name),
                Some(digest),
                "iteration {iterations}: root {name} lost"
            );
        }
        // A finished (or lucky) operation's roots count as committed from now on.
        committed = now;
    }
    eprintln!("{iterations} iterations, {kills} killed mid-operation");
    assert!(
        kills >= iterations / 5,
        "the kills should mostly land mid-operation ({kills}/{iterations})"
    );

    // Spot check: the probe tree restores byte for byte.
    let digest = committed["object/probe"].clone();
    let out = tmp.path().join("restored");
    must(&store, &["restore", &digest, out.to_str().unwrap()]);
    assert_eq!(
        fs::read(out.join("big")).unwrap(),
        fs::read(probe.join("big")).unwrap()
    );
}
