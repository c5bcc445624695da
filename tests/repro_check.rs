//! `kiln run --check` end to end: a job that writes the current time is
//! caught (exit code, the file with its sizes and first differing offset),
//! the recorded result is kept, never-cached jobs are reported unchecked,
//! and the reproducible example passes. Real namespaces (run as root).

#[path = "run_support/mod.rs"]
mod support;

use std::path::Path;

use serde_json::Value;
use support::{Project, Run, copy_dir};

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello");
const EXIT_NOT_REPRODUCIBLE: i32 = 6;

const STAMP: &str = r#"{
  driver = { type = "container"; image = "host"; };
  sources = [ ./. ];
  stages = [ "build" "use" ];
  jobs = {
    stamp = { stage = "build"; commands = [ "date +%s%N > stamp" "echo fixed > fixed.txt" ]; artifacts = [ "stamp" ]; };
    steady = { stage = "build"; commands = [ "echo steady > steady.txt" ]; artifacts = [ "steady.txt" ]; };
    count = { stage = "use"; needs = [ "stamp" ]; commands = [ "wc -c < stamp > count" ]; artifacts = [ "count" ]; };
  };
}"#;

fn check_of<'a>(run: &'a Run, job: &str) -> &'a Value {
    run.of_type("job/check")
        .into_iter()
        .find(|e| e["job"] == job)
        .unwrap_or_else(|| panic!("no job/check for {job}: {}", run.describe()))
}

#[test]
fn check_catches_a_job_that_writes_the_time_and_keeps_the_recorded_result() {
    let project = Project::new(STAMP);
    let first = project.run(&[]);
    assert_eq!(first.code, 0, "{}", first.describe());
    let mut recorded = first.artifacts();
    recorded.sort();

    let check = project.run(&["--check"]);
    assert_eq!(check.code, EXIT_NOT_REPRODUCIBLE, "{}", check.describe());
    for job in ["stamp", "steady", "count"] {
        assert_eq!(check.status(job), "passed", "--check reruns {job}");
    }

    let stamp = check_of(&check, "stamp");
    assert_eq!(stamp["outcome"], "differs", "{stamp:#}");
    assert_ne!(stamp["recorded_output_layer"], stamp["new_output_layer"]);
    let differences = stamp["output"]["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 1, "only stamp differs: {stamp:#}");
    let file = &differences[0];
    assert_eq!(file["path"], "stamp");
    assert_eq!(file["change"], "content");
    // `date +%s%N` is 19 digits and a newline, twice; the seconds may
    // agree, the nanoseconds never do.
    assert_eq!(file["recorded_size"], 20);
    assert_eq!(file["new_size"], 20);
    let offset = file["first_differing_offset"].as_u64().unwrap();
    assert!(offset < 19, "first differing offset {offset}");
    let artifact = &stamp["artifacts"]["differences"][0];
    assert_eq!(artifact["path"], "stamp");
    assert_eq!(artifact["first_differing_offset"], offset);

    assert_eq!(check_of(&check, "steady")["outcome"], "reproducible");
    // `count` reran on the *recorded* stamp (its recorded inputs), so it
    // is compared under the same key and matches.
    let count = check_of(&check, "count");
    assert_eq!(count["outcome"], "reproducible", "{count:#}");

    assert!(
        check
            .stderr
            .contains("job stamp: NOT reproducible")
            && check.stderr.contains(&format!(
                "stamp: content differs (20 bytes recorded, 20 bytes now, first difference at byte {offset})"
            )),
        "{}",
        check.stderr
    );
    assert!(
        check
            .stderr
            .contains("check: 2 job(s) reproducible, 1 NOT reproducible (stamp), 0 unchecked"),
        "{}",
        check.stderr
    );

    // The first result is kept: a normal run is served from it.
    let after = project.run(&[]);
    assert_eq!(after.code, 0, "{}", after.describe());
    for job in ["stamp", "steady", "count"] {
        assert_eq!(after.status(job), "cached", "{}", after.describe());
    }
    let mut served = after.artifacts();
    served.sort();
    assert_eq!(served, recorded, "the recorded result was replaced");

    // The check is recorded with its build: `kiln show --events` has it.
    let shown = project
        .kiln()
        .args(["show", "2", "--events"])
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&shown.stdout);
    assert!(
        events.contains(r#""type":"job/check""#) && events.contains(r#""outcome":"differs""#),
        "{events}"
    );
    let shown = project.kiln().args(["show", "2"]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("check (kiln run --check): 2 reproducible, 1 NOT reproducible, 0 unchecked")
            && shown.contains("  stamp: NOT reproducible (2 difference(s))"),
        "{shown}"
    );
    project.assert_clean();
}

#[test]
fn check_runs_a_job_without_a_recorded_result_once_and_reports_never_cached_jobs_unchecked() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "build" ];
  jobs = {
    plain = { stage = "build"; commands = [ "echo plain > plain.txt" ]; };
    online = { stage = "build"; network = true; commands = [ "echo online > online.txt" ]; };
  };
}"#,
    );
    let check = project.run(&["--check"]);
    assert_eq!(check.code, 0, "nothing differs: {}", check.describe());
    let plain = check_of(&check, "plain");
    assert_eq!(plain["outcome"], "unchecked");
    assert!(
        plain["reason"]
            .as_str()
            .unwrap()
            .contains("no recorded result"),
        "{plain:#}"
    );
    let online = check_of(&check, "online");
    assert_eq!(online["outcome"], "unchecked");
    assert!(
        online["reason"].as_str().unwrap().contains("never cached"),
        "{online:#}"
    );

    // The first --check recorded `plain`; the second compares with it.
    let again = project.run(&["--check"]);
    assert_eq!(again.code, 0, "{}", again.describe());
    assert_eq!(check_of(&again, "plain")["outcome"], "reproducible");
    assert_eq!(check_of(&again, "online")["outcome"], "unchecked");
    assert!(
        again
            .stderr
            .contains("check: 1 job(s) reproducible, 0 NOT reproducible, 1 unchecked"),
        "{}",
        again.stderr
    );
}

#[test]
fn the_reproducible_example_passes_check() {
    let project = Project::new("");
    copy_dir(Path::new(HELLO), &project.root());
    let first = project.run(&["--arg", "version=1.2"]);
    assert_eq!(first.code, 0, "{}", first.describe());

    let check = project.run(&["--arg", "version=1.2", "--check"]);
    assert_eq!(check.code, 0, "{}", check.describe());
    for job in ["compile", "smoke", "tarball"] {
        assert_eq!(check.status(job), "passed", "{}", check.describe());
        let found = check_of(&check, job);
        assert_eq!(found["outcome"], "reproducible", "{job}: {found:#}");
        assert_eq!(found["recorded_output_layer"], found["new_output_layer"]);
    }
    assert!(
        check
            .stderr
            .contains("check: 3 job(s) reproducible, 0 NOT reproducible, 0 unchecked"),
        "{}",
        check.stderr
    );
    assert_eq!(check.artifacts(), first.artifacts());
    project.assert_clean();
}

#[test]
fn a_rerun_that_fails_where_the_recorded_result_passed_is_not_reproducible() {
    // The build cache is not part of the key: the second run sees what the
    // first left there, which is exactly the kind of hidden input --check
    // is for.
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "build" ];
  jobs = {
    once = {
      stage = "build";
      caches = [ { key = "seen-v1"; paths = [ "/root/.cache/seen" ]; } ];
      commands = [ "test ! -e /root/.cache/seen/mark" "touch /root/.cache/seen/mark" "echo ok > ok.txt" ];
    };
  };
}"#,
    );
    let first = project.run(&[]);
    assert_eq!(first.code, 0, "{}", first.describe());
    let check = project.run(&["--check"]);
    assert_eq!(check.status("once"), "failed", "{}", check.describe());
    assert_eq!(check.code, EXIT_NOT_REPRODUCIBLE, "{}", check.describe());
    let once = check_of(&check, "once");
    assert_eq!(once["outcome"], "differs", "{once:#}");
    assert!(
        once["reason"]
            .as_str()
            .unwrap()
            .starts_with("the recorded result passed, the rerun failed"),
        "{once:#}"
    );
    // The passing result is still the recorded one.
    let after = project.run(&[]);
    assert_eq!(after.status("once"), "cached", "{}", after.describe());
}
