//! `kiln fetch`, `kiln run --offline`, `kiln lock` and `kiln run --locked`
//! against a real `git daemon` on loopback. Real namespaces (run as root).

#[path = "run_support/mod.rs"]
mod support;

#[path = "offline_support/mod.rs"]
mod offline;

use std::process::Output;

use offline::{GitServer, free_port, manifest};
use support::{Project, restore};

fn kiln(project: &Project, args: &[&str]) -> Output {
    project.kiln().args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn source_roots(project: &Project) -> String {
    text(&kiln(project, &["store", "roots", "--kind", "source"]).stdout)
}

#[test]
fn fetch_then_run_and_offline_lists_everything_missing_before_any_job() {
    let server = GitServer::start();
    let project = Project::new(&manifest(&server.url(), r#"ref = "main";"#).replace(
        r#"commands = [ "tr a-z A-Z < joined.txt > upper.txt" ];"#,
        r#"commands = [ "tr a-z A-Z < joined.txt > upper.txt" ]; driver = { type = "container"; image = "not-imported"; }; }; online = { stage = "build"; network = true; commands = [ "true" ];"#,
    ));
    project.write("input.txt", "two\n");

    // Not fetched and not imported: both listed, no build started.
    let offline = kiln(&project, &["run", "--offline"]);
    assert_eq!(offline.status.code(), Some(1), "{}", text(&offline.stderr));
    let stderr = text(&offline.stderr);
    assert!(stderr.contains("3 thing(s) missing"), "{stderr}");
    assert!(
        stderr.contains("job online: asks for the network (`network = true`)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("source {} (ref main): not fetched", server.url())),
        "{stderr}"
    );
    assert!(stderr.contains("image not-imported"), "{stderr}");
    let builds = kiln(&project, &["builds"]);
    assert_eq!(text(&builds.stdout).trim(), "", "a build was started");

    // Back to the host image: plain `run` says to fetch.
    project.write("build.kiln", &manifest(&server.url(), r#"ref = "main";"#));
    let plain = project.run(&[]);
    assert_eq!(plain.code, 3, "{}", plain.describe());
    assert!(
        plain.describe().contains("kiln fetch"),
        "{}",
        plain.describe()
    );

    let fetched = kiln(&project, &["fetch"]);
    assert!(fetched.status.success(), "{}", text(&fetched.stderr));
    let head = server.head();
    assert!(
        text(&fetched.stdout).contains(&format!("commit {head}")),
        "{}",
        text(&fetched.stdout)
    );
    assert!(text(&fetched.stderr).contains(&format!("fetching {} (main)", server.url())));

    let run = project.run(&["--offline"]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let resolved = run.of_type("source/resolved");
    assert!(
        resolved.iter().any(|e| e["revision"] == head.as_str()),
        "{}",
        run.describe()
    );
    let artifacts = run.artifacts();
    let out = project.dir.path().join("upper.txt");
    restore(&project.store, &artifacts[0].1, &out);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "ONE\nTWO\n");
    project.assert_clean();
}

#[test]
fn offline_run_succeeds_with_no_network_at_all() {
    let server = GitServer::start();
    let project = Project::new(&manifest(&server.url(), ""));
    project.write("input.txt", "x\n");
    assert!(kiln(&project, &["fetch"]).status.success());
    drop(server);
    let output = std::process::Command::new("unshare")
        .arg("--net")
        .arg(env!("CARGO_BIN_EXE_kiln"))
        .arg("--store")
        .arg(&project.store)
        .args(["run", "--offline", "--json"])
        .current_dir(project.root())
        .env("TMPDIR", &project.tmp)
        .output()
        .unwrap();
    let run = support::parse(output);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("package"), "passed", "{}", run.describe());
}

#[test]
fn locked_refuses_when_upstream_moved_and_names_the_drift() {
    let server = GitServer::start();
    let project = Project::new(&manifest(&server.url(), r#"ref = "main";"#));
    project.write("input.txt", "two\n");
    assert!(kiln(&project, &["fetch"]).status.success());
    let locked = kiln(&project, &["lock"]);
    assert!(locked.status.success(), "{}", text(&locked.stderr));
    let lock = std::fs::read_to_string(project.root().join("kiln.lock")).unwrap();
    let old = server.head();
    assert!(lock.contains(&format!("\"commit\": \"{old}\"")), "{lock}");
    assert!(lock.contains("\"version\": 1"), "{lock}");
    assert!(lock.contains("\"build.kiln\": \"blake3:"), "{lock}");
    // Writing it again changes nothing (stable).
    assert!(kiln(&project, &["lock"]).status.success());
    assert_eq!(
        std::fs::read_to_string(project.root().join("kiln.lock")).unwrap(),
        lock
    );
    let first = project.run(&["--locked"]);
    assert_eq!(first.code, 0, "{}", first.describe());

    let builds_before = text(&kiln(&project, &["builds"]).stdout);
    let new = server.commit("lib.txt", "moved\n");
    assert!(kiln(&project, &["fetch"]).status.success());
    let refused = kiln(&project, &["run", "--locked"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains(&format!("commit {old} → {new}")),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was run"), "{stderr}");
    assert_eq!(text(&kiln(&project, &["builds"]).stdout), builds_before);

    // An edited manifest drifts too, and names the file.
    std::fs::write(
        project.root().join("build.kiln"),
        manifest(&server.url(), r#"ref = "main"; dir = "lib";"#),
    )
    .unwrap();
    let edited = kiln(&project, &["run", "--locked"]);
    assert!(text(&edited.stderr).contains("manifest file build.kiln: blake3:"));

    // Accepting the change: lock again, then it runs.
    assert!(kiln(&project, &["lock"]).status.success());
    let after = project.run(&["--locked"]);
    assert_eq!(after.code, 0, "{}", after.describe());
}

#[test]
fn bad_remotes_are_clear_errors_and_record_nothing() {
    let server = GitServer::start();
    let project = Project::new("");
    project.write("input.txt", "x\n");
    let head = server.head();
    let wrong = "0123456789abcdef0123456789abcdef01234567";
    let cases = [
        (
            manifest(&server.url(), &format!(r#"ref = "main"; rev = "{wrong}";"#)),
            format!("resolved to commit {head}, but `rev` pins {wrong}"),
        ),
        (
            manifest(&server.url(), r#"ref = "no-such-branch";"#),
            "the remote has no ref \"no-such-branch\"".to_owned(),
        ),
        (
            manifest(&format!("git://127.0.0.1:{}/lib.git", free_port()), ""),
            "cannot reach the remote".to_owned(),
        ),
        (
            manifest(&server.url().replace("lib.git", "nothing.git"), ""),
            "cannot reach the remote".to_owned(),
        ),
    ];
    for (text_of_manifest, expected) in cases {
        project.write("build.kiln", &text_of_manifest);
        let fetched = kiln(&project, &["fetch"]);
        assert_eq!(fetched.status.code(), Some(1));
        let stderr = text(&fetched.stderr);
        assert!(
            stderr.contains(&expected),
            "expected {expected:?} in {stderr}"
        );
        assert!(stderr.contains("nothing was recorded"), "{stderr}");
        assert_eq!(source_roots(&project), "", "something was recorded");
    }

    // A correct pin fetches; a tag works as a ref.
    server.tag("v1");
    project.write(
        "build.kiln",
        &manifest(&server.url(), &format!(r#"ref = "v1"; rev = "{head}";"#)),
    );
    let fetched = kiln(&project, &["fetch"]);
    assert!(fetched.status.success(), "{}", text(&fetched.stderr));
    assert!(source_roots(&project).contains(&format!("remote:{}#v1", server.url())));
    let run = project.run(&["--offline"]);
    assert_eq!(run.code, 0, "{}", run.describe());
}
