//! `kiln diff BUILD_A BUILD_B` end to end on real builds: two builds of a
//! job that writes the time differ in that artifact (sizes, first differing
//! offset); identical builds exit 0. Real namespaces (run as root).

#[path = "run_support/mod.rs"]
mod support;

use serde_json::Value;
use support::Project;

const EXIT_NOT_REPRODUCIBLE: i32 = 6;

const MANIFEST: &str = r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "build" ];
  jobs = {
    stamp = { stage = "build"; commands = [ "mkdir -p out" "date +%s%N > out/stamp" "echo fixed > out/fixed" ]; artifacts = [ "out => dist" ]; };
    steady = { stage = "build"; commands = [ "echo steady > steady.txt" ]; artifacts = [ "steady.txt" ]; };
  };
}"#;

fn diff(project: &Project, args: &[&str]) -> (i32, String, String) {
    let output = project.kiln().arg("diff").args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn two_builds_of_a_non_reproducible_manifest_differ_in_that_artifact() {
    let project = Project::new(MANIFEST);
    for _ in 0..2 {
        let run = project.run(&["--no-cache"]);
        assert_eq!(run.code, 0, "{}", run.describe());
    }

    let (code, stdout, stderr) = diff(&project, &["1", "2"]);
    assert_eq!(code, EXIT_NOT_REPRODUCIBLE, "{stdout}{stderr}");
    assert!(
        stdout.starts_with("builds 1 and 2: 1 difference(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dist/stamp: content differs (20 bytes in build 1, 20 bytes in build 2, first difference at byte"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("steady") && !stdout.contains("fixed"),
        "{stdout}"
    );

    let (code, stdout, _) = diff(&project, &["1", "last", "--json"]);
    assert_eq!(code, EXIT_NOT_REPRODUCIBLE);
    let value: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(value["build_a"], 1);
    assert_eq!(value["build_b"], 2);
    assert_eq!(value["identical"], false);
    let differences = value["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 1, "{value:#}");
    assert_eq!(differences[0]["path"], "dist/stamp");
    assert_eq!(differences[0]["change"], "content");
    assert_eq!(differences[0]["recorded_size"], 20);
    assert_eq!(differences[0]["new_size"], 20);
    assert!(differences[0]["first_differing_offset"].as_u64().unwrap() < 19);

    // A build compared with itself.
    let (code, stdout, _) = diff(&project, &["2", "2"]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("identical artifacts (2 compared)"),
        "{stdout}"
    );
}

#[test]
fn identical_builds_exit_zero_and_unknown_builds_are_errors() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "build" ];
  jobs = {
    tree = { stage = "build"; commands = [ "mkdir -p out/sub" "echo a > out/a" "echo b > out/sub/b" "ln -s a out/link" ]; artifacts = [ "out" ]; };
  };
}"#,
    );
    let first = project.run(&[]);
    assert_eq!(first.code, 0, "{}", first.describe());
    // Rebuilt from scratch, not served from the cache: still identical.
    let second = project.run(&["--no-cache"]);
    assert_eq!(second.code, 0, "{}", second.describe());
    assert_eq!(second.status("tree"), "passed");

    let (code, stdout, stderr) = diff(&project, &["1", "2"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout, "builds 1 and 2: identical artifacts (1 compared)\n");
    let (code, stdout, _) = diff(&project, &["1", "2", "--json"]);
    assert_eq!(code, 0);
    let value: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(value["identical"], true);
    assert_eq!(value["differences"], serde_json::json!([]));

    let (code, _, stderr) = diff(&project, &["1", "9"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no build 9"), "{stderr}");
    let (code, _, stderr) = diff(&project, &["1", "nine"]);
    assert_eq!(code, 2, "a malformed build is a usage error: {stderr}");
}
