//! `kiln run` end to end: the example, cache hits, `inputs`, early cutoff,
//! statuses, artifacts, sources and objects. Real namespaces (run as root).

#[path = "run_support/mod.rs"]
mod support;

use std::path::Path;

use support::{Project, copy_dir, restore};

const HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello");

#[test]
fn the_example_passes_then_every_job_is_cached_with_identical_artifacts() {
    let project = Project::new("");
    copy_dir(Path::new(HELLO), &project.root());
    let first = project.run(&["--arg", "version=1.2"]);
    assert_eq!(first.code, 0, "{}", first.describe());
    assert_eq!(first.build_status(), "passed");
    for job in ["compile", "smoke", "tarball"] {
        assert_eq!(first.status(job), "passed", "{}", first.describe());
    }
    // The job's output arrives line by line as `job/output` events.
    assert!(
        first
            .of_type("job/output")
            .iter()
            .any(|e| e["job"] == "compile" && e["line"] == "+ cc -O2 -o hello src/hello.c"),
        "{}",
        first.describe()
    );
    let artifacts = first.artifacts();
    let names: Vec<&str> = artifacts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["hello", "release/hello.tgz"]);

    let second = project.run(&["--arg", "version=1.2"]);
    assert_eq!(second.code, 0, "{}", second.describe());
    for job in ["compile", "smoke", "tarball"] {
        assert_eq!(second.status(job), "cached", "{}", second.describe());
    }
    assert_eq!(
        second.artifacts(),
        artifacts,
        "a cache hit attaches the same artifacts"
    );

    // The binary really is the program, and it runs.
    let out = project.dir.path().join("hello-bin");
    restore(&project.store, &artifacts[0].1, &out);
    let printed = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("chmod +x {0} && {0}", out.display()))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&printed.stdout).contains("hello"));
    project.assert_clean();

    // A different argument changes the env of every job: all run again.
    let third = project.run(&["--arg", "version=1.3"]);
    assert_eq!(third.status("compile"), "passed", "{}", third.describe());
}

#[test]
fn inputs_narrow_what_reruns_and_early_cutoff_stops_a_rerun() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  sources = [ ./. ];
  stages = [ "build" "use" ];
  jobs = {
    a = { stage = "build"; inputs = [ "a.txt" ]; commands = [ "cat a.txt > a.out" "test ! -e b.txt" ]; };
    b = { stage = "build"; inputs = [ "b.txt" ]; commands = [ "cut -c1 b.txt > b.out" ]; };
    after-a = { stage = "use"; needs = [ "a" ]; inputs = [ ]; commands = [ "cat a.out > a.copy" ]; };
    after-b = { stage = "use"; needs = [ "b" ]; inputs = [ ]; commands = [ "cat b.out > b.copy" ]; };
  };
}"#,
    );
    project.write("a.txt", "alpha\n");
    project.write("b.txt", "bravo\n");
    let first = project.run(&[]);
    assert_eq!(first.code, 0, "{}", first.describe());

    // Editing a file no job lists reruns nothing.
    project.write("unrelated.txt", "x");
    let untouched = project.run(&[]);
    for job in ["a", "b", "after-a", "after-b"] {
        assert_eq!(
            untouched.status(job),
            "cached",
            "job {job}: {}",
            untouched.describe()
        );
    }

    // Editing b.txt reruns b only; its output (first letter) is unchanged,
    // so after-b stays cached: early cutoff.
    project.write("b.txt", "bzzzz\n");
    let second = project.run(&[]);
    assert_eq!(second.code, 0, "{}", second.describe());
    assert_eq!(second.status("a"), "cached");
    assert_eq!(second.status("after-a"), "cached");
    assert_eq!(second.status("b"), "passed");
    assert_eq!(second.status("after-b"), "cached", "{}", second.describe());

    // A change that does change b's output reruns after-b.
    project.write("b.txt", "charlie\n");
    let third = project.run(&[]);
    assert_eq!(third.status("b"), "passed");
    assert_eq!(third.status("after-b"), "passed");
    assert_eq!(third.status("after-a"), "cached");

    // --no-cache runs everything.
    let forced = project.run(&["--no-cache"]);
    assert_eq!(forced.status("a"), "passed");
    project.assert_clean();
}

#[test]
fn a_failed_stage_fails_the_build_and_skips_later_stages() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "one" "two" ];
  jobs = {
    bad = { stage = "one"; commands = [ "echo about to fail" "false" ]; };
    later = { stage = "two"; commands = [ "true" ]; };
  };
}"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code, 3, "{}", run.describe());
    assert_eq!(run.build_status(), "failed");
    assert_eq!(run.status("bad"), "failed");
    assert_eq!(run.status("later"), "skipped");
    project.assert_clean();
}

#[test]
fn allow_failures_makes_the_build_pass_with_failures() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "test" "package" ];
  allow_failures = [ "test" ];
  jobs = {
    flaky = { stage = "test"; commands = [ "exit 1" ]; };
    pack = { stage = "package"; commands = [ "true" ]; };
  };
}"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.build_status(), "passed_with_failures");
    assert_eq!(run.status("flaky"), "failed");
    assert_eq!(run.status("pack"), "passed");
}

#[test]
fn a_job_timeout_is_timed_out() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "s" ];
  jobs = { slow = { stage = "s"; timeout = "1s"; commands = [ "sleep 30" ]; }; };
}"#,
    );
    let started = std::time::Instant::now();
    let run = project.run(&[]);
    assert!(started.elapsed().as_secs() < 15);
    assert_eq!(run.code, 5, "{}", run.describe());
    assert_eq!(run.status("slow"), "timed_out");
    assert_eq!(run.build_status(), "timed_out");
    project.assert_clean();
}

#[test]
fn artifacts_files_directories_globs_and_renames_are_byte_identical() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "s" ];
  jobs = {
    make = {
      stage = "s";
      commands = [
        "mkdir -p out/sub logs"
        "printf 'one\n' > out/one.txt"
        "printf 'two\n' > out/sub/two.txt"
        "head -c 100000 /dev/urandom > blob.bin"
        "echo a > logs/a.log" "echo b > logs/b.log"
      ];
      artifacts = [ "blob.bin" "out" "logs/*.log => logs" "out/one.txt => renamed/first.txt" ];
    };
  };
}"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let artifacts: std::collections::BTreeMap<String, String> =
        run.artifacts().into_iter().collect();
    let names: Vec<&str> = artifacts.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "blob.bin",
            "logs/logs/a.log",
            "logs/logs/b.log",
            "out",
            "renamed/first.txt"
        ]
    );
    let out = project.dir.path().join("restored");
    std::fs::create_dir_all(&out).unwrap();
    restore(&project.store, &artifacts["out"], &out.join("out"));
    assert_eq!(std::fs::read(out.join("out/one.txt")).unwrap(), b"one\n");
    assert_eq!(
        std::fs::read(out.join("out/sub/two.txt")).unwrap(),
        b"two\n"
    );
    restore(
        &project.store,
        &artifacts["renamed/first.txt"],
        &out.join("first"),
    );
    assert_eq!(std::fs::read(out.join("first")).unwrap(), b"one\n");
    restore(
        &project.store,
        &artifacts["logs/logs/b.log"],
        &out.join("b.log"),
    );
    assert_eq!(std::fs::read(out.join("b.log")).unwrap(), b"b\n");
    restore(
        &project.store,
        &artifacts["blob.bin"],
        &out.join("blob.bin"),
    );
    assert_eq!(
        std::fs::metadata(out.join("blob.bin")).unwrap().len(),
        100_000
    );
    // The artifact's digest is the blake3 of the file's bytes.
    let bytes = std::fs::read(out.join("blob.bin")).unwrap();
    assert_eq!(
        artifacts["blob.bin"],
        format!("blake3:{}", blake3::hash(&bytes).to_hex())
    );
}

#[test]
fn a_missing_object_is_a_warning_and_a_missing_source_fails() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  objects = [ "missing.tar => fixtures.tar" "present.txt => data/present.txt" "tool.sh => bin/tool" ];
  stages = [ "s" ];
  jobs = { j = { stage = "s"; commands = [ "test -f data/present.txt" "test ! -e fixtures.tar" "./bin/tool" ]; }; };
}"#,
    );
    project.write("present.txt", "here\n");
    project.write("tool.sh", "#!/bin/sh\necho tool ran\n");
    std::fs::set_permissions(
        project.root().join("tool.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let run = project.run(&[]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("j"), "passed");
    let warnings = run.of_type("warning");
    assert!(
        warnings
            .iter()
            .any(|w| w["message"].as_str().unwrap().contains("missing.tar")),
        "{}",
        run.describe()
    );

    let broken = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  sources = [ ./nonexistent-source ];
  stages = [ "s" ];
  jobs = { j = { stage = "s"; commands = [ "true" ]; }; };
}"#,
    );
    let run = broken.run(&[]);
    assert_eq!(run.code, 3, "{}", run.describe());
    assert_eq!(run.build_status(), "failed");
    assert_eq!(run.status("j"), "skipped");
    // The failure is reported as the source's own job, named after it.
    assert_eq!(
        run.status("source:./nonexistent-source"),
        "failed",
        "{}",
        run.describe()
    );
}

#[test]
fn a_local_git_source_is_resolved_to_its_commit() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  sources = [ { url = "../repo"; ref = "main"; dir = "lib"; } ];
  stages = [ "s" ];
  jobs = { j = { stage = "s"; commands = [ "grep -q committed lib/file.txt" "test ! -e lib/uncommitted.txt" ]; }; };
}"#,
    );
    let repo = project.dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("file.txt"), "committed\n").unwrap();
    let git = |args: &[&str]| {
        let status = std::process::Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success());
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "file.txt"]);
    git(&["commit", "-q", "-m", "one"]);
    std::fs::write(repo.join("uncommitted.txt"), "no\n").unwrap();
    // A sibling of the project: outside its root unless allowed.
    let refused = project.run(&[]);
    assert_eq!(refused.code, 3, "{}", refused.describe());
    assert!(
        refused.stderr.contains("outside the project root"),
        "{}",
        refused.stderr
    );
    let run = project.run(&["--allow-path", repo.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let resolved = run.of_type("source/resolved");
    assert_eq!(resolved[0]["revision"].as_str().unwrap().len(), 40);
}

#[test]
fn build_caches_are_restored_before_and_saved_after_a_job() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "s" ];
  jobs = {
    j = {
      stage = "s";
      caches = [ { key = "counter-v1"; paths = [ "/root/.cache/counter" "rel-cache" ]; } ];
      commands = [
        "n=$(cat /root/.cache/counter/n 2>/dev/null || echo 0)"
        "echo $((n+1)) > /root/.cache/counter/n"
        "echo run >> rel-cache/log"
        "echo $((n+1)) > seen"
      ];
      artifacts = [ "seen" ];
    };
  };
}"#,
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        let run = project.run(&["--no-cache"]);
        assert_eq!(run.code, 0, "{}", run.describe());
        assert_eq!(run.of_type("cache/saved").len(), 1, "{}", run.describe());
        let digest = run.artifacts()[0].1.clone();
        let out = project.dir.path().join(format!("seen-{}", seen.len()));
        restore(&project.store, &digest, &out);
        seen.push(std::fs::read_to_string(out).unwrap());
    }
    assert_eq!(seen, ["1\n", "2\n", "3\n"]);
    let listed = project.kiln().args(["cache", "ls"]).output().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).starts_with("counter-v1\t"));
    // A cache is not part of the key: without --no-cache the job is cached.
    let cached = project.run(&[]);
    assert_eq!(cached.status("j"), "cached");
    let removed = project
        .kiln()
        .args(["cache", "rm", "counter-v1"])
        .status()
        .unwrap();
    assert!(removed.success());
    let listed = project.kiln().args(["cache", "ls"]).output().unwrap();
    assert!(listed.stdout.is_empty());
    project.assert_clean();
}

#[test]
fn a_build_timeout_stops_every_job_as_timed_out() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  timeout = "2s";
  stages = [ "s" "t" ];
  jobs = {
    a = { stage = "s"; timeout = "1h"; commands = [ "sleep 60" ]; };
    b = { stage = "s"; timeout = "1h"; commands = [ "sleep 60" ]; };
    later = { stage = "t"; commands = [ "true" ]; };
  };
}"#,
    );
    let started = std::time::Instant::now();
    let run = project.run(&["--jobs", "2"]);
    assert!(started.elapsed().as_secs() < 20);
    assert_eq!(run.code, 5, "{}", run.describe());
    assert_eq!(run.build_status(), "timed_out");
    assert_eq!(run.status("a"), "timed_out");
    assert_eq!(run.status("b"), "timed_out");
    assert_eq!(run.status("later"), "skipped");
    project.assert_clean();
}

#[test]
fn a_host_job_runs_in_a_scratch_copy_is_never_cached_and_its_output_flows_on() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  sources = [ ./. ];
  stages = [ "glue" "use" ];
  jobs = {
    glue = {
      stage = "glue";
      driver = { type = "host"; };
      commands = [ "test -f input.txt" "echo made-on-host > made.txt" "rm input.txt" ];
    };
    use = { stage = "use"; commands = [ "grep -q made-on-host made.txt" "test ! -e input.txt" ]; };
  };
}"#,
    );
    project.write("input.txt", "in\n");
    let first = project.run(&[]);
    assert_eq!(first.code, 0, "{}", first.describe());
    assert_eq!(first.status("glue"), "passed");
    assert_eq!(first.status("use"), "passed");
    // The scratch copy was a copy: the project is untouched.
    assert!(project.root().join("input.txt").exists());
    assert!(!project.root().join("made.txt").exists());
    // The host job always runs; its output is the same, so `use` is cached.
    let second = project.run(&[]);
    assert_eq!(second.status("glue"), "passed");
    assert_eq!(second.status("use"), "cached", "{}", second.describe());
    project.assert_clean();
}

#[test]
fn a_relative_store_path_works() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "build" ];
  jobs.make = { stage = "build"; commands = [ "echo made > out" ]; };
}"#,
    );
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(project.root())
            .env("TMPDIR", &project.tmp)
            .args(["--store", "../relative/store", "run"])
            .args(args)
            .output()
            .unwrap()
    };
    let first = run(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(project.dir.path().join("relative/store").is_dir());
    let second = run(&["--json"]);
    assert!(second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stdout).contains(r#""type":"job/cached""#),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
}
