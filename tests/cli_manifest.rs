//! End-to-end tests of `kiln check` and `kiln eval`: the real binary on real
//! files, checking exit codes, stdout and stderr.

use std::path::{Path, PathBuf};

use assert_cmd::cargo::cargo_bin_cmd;
use predicates::prelude::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("grammar/tests/corpus/djinn"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    files
}

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn check_accepts_the_djinn_corpus() {
    let files = corpus();
    assert_eq!(files.len(), 6);
    let output = cargo_bin_cmd!("kiln")
        .arg("check")
        .args(&files)
        .assert()
        .success()
        .stderr("");
    let stdout = String::from_utf8(output.get_output().stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), files.len(), "{stdout}");
    assert!(
        stdout.lines().all(|line| line.contains(": ok (")),
        "{stdout}"
    );
}

#[test]
fn check_accepts_the_djinn_example() {
    cargo_bin_cmd!("kiln")
        .current_dir(repo())
        .args(["check", "examples/djinn/.djinn.yml"])
        .assert()
        .success()
        .stdout("examples/djinn/.djinn.yml: ok (3 stages, 3 jobs)\n");
}

#[test]
fn invalid_manifest_exits_2_with_location() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.yml",
        b"driver: {type: os}\nstages: [build]\njobs:\n- stage: biuld\n  commands: [make]\n",
    );
    cargo_bin_cmd!("kiln")
        .current_dir(dir.path())
        .args(["check", "bad.yml"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::starts_with(
            "bad.yml:4:10: error: the job names stage \"biuld\", which is not in `stages`\n",
        ))
        .stderr(predicate::str::contains("4 | - stage: biuld\n"))
        .stderr(predicate::str::contains("did you mean \"build\"?"));
}

#[test]
fn non_utf8_manifest_is_a_manifest_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "latin1.yml", b"stages: [caf\xe9]\n");
    cargo_bin_cmd!("kiln")
        .current_dir(dir.path())
        .args(["check", "latin1.yml"])
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with(
            "latin1.yml:1:13: error: the manifest is not valid UTF-8",
        ));
}

#[test]
fn unreadable_file_exits_1() {
    cargo_bin_cmd!("kiln")
        .args(["check", "/nonexistent/kiln/build.yml"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "cannot read /nonexistent/kiln/build.yml",
        ));
}

#[test]
fn check_reports_every_file_and_the_worst_code() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "good.yml", b"driver: {type: os}\nstages: [a]\n");
    let bad = write(dir.path(), "bad.yml", b"driver: {type: os}\n");
    let missing = dir.path().join("missing.yml");
    cargo_bin_cmd!("kiln")
        .arg("check")
        .args([&missing, &bad, &good])
        .assert()
        .code(2)
        .stdout(predicate::str::contains("good.yml: ok (1 stage, 0 jobs)"))
        .stderr(predicate::str::contains(
            "missing the required attribute `stages`",
        ))
        .stderr(predicate::str::contains("cannot read"));
}

#[test]
fn warnings_do_not_fail_a_djinn_manifest() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "w.yml",
        b"driver: {type: os}\nstages: [a]\njobs:\n- stage: a\n  comands: [x]\n  commands: [y]\n",
    );
    cargo_bin_cmd!("kiln")
        .current_dir(dir.path())
        .args(["check", "w.yml"])
        .assert()
        .success()
        .stdout("w.yml: ok (1 stage, 1 job, 1 warning)\n")
        .stderr(predicate::str::starts_with(
            "w.yml:5:3: warning: unknown attribute `comands` in a job (ignored)\n",
        ))
        .stderr(predicate::str::contains("did you mean `commands`?"));
}

#[test]
fn eval_prints_canonical_json_independent_of_the_checkout() {
    let file = repo().join("grammar/tests/corpus/djinn/djinn-ci_djinn_.thrall.yml");
    let expected = std::fs::read_to_string(
        repo().join("grammar/tests/corpus/djinn/djinn-ci_djinn_.thrall.json"),
    )
    .unwrap();
    // Absolute path from one directory, relative path from another, and a
    // copy somewhere else entirely: the same bytes.
    cargo_bin_cmd!("kiln")
        .current_dir("/")
        .arg("eval")
        .arg(&file)
        .assert()
        .success()
        .stdout(expected.clone());
    cargo_bin_cmd!("kiln")
        .current_dir(repo().join("grammar/tests/corpus"))
        .args(["eval", "djinn/djinn-ci_djinn_.thrall.yml"])
        .assert()
        .success()
        .stdout(expected.clone());
    let dir = tempfile::tempdir().unwrap();
    let copy = write(dir.path(), "copy.yml", &std::fs::read(&file).unwrap());
    let output = cargo_bin_cmd!("kiln")
        .arg("eval")
        .arg(&copy)
        .assert()
        .success();
    assert_eq!(
        String::from_utf8_lossy(&output.get_output().stdout),
        expected
    );
    let json: serde_json::Value = serde_json::from_str(&expected).unwrap();
    assert_eq!(json["jobs"][1]["needs"][0], "test.1");
}

#[test]
fn malformed_arg_is_a_usage_error() {
    let file = repo().join("examples/djinn/.djinn.yml");
    for bad in ["version", "=1.2", "1x=2"] {
        cargo_bin_cmd!("kiln")
            .arg("eval")
            .arg(&file)
            .args(["--arg", bad])
            .assert()
            .code(2)
            .stdout("")
            .stderr(predicate::str::contains(format!(
                "malformed --arg \"{bad}\""
            )));
    }
    cargo_bin_cmd!("kiln")
        .arg("eval")
        .arg(&file)
        .args(["--arg", "a=1", "--arg", "a=2"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--arg a is given twice"));
}

#[test]
fn eval_of_invalid_manifest_prints_nothing_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.yml", b"stages: [a]\njobs: 3\n");
    cargo_bin_cmd!("kiln")
        .arg("eval")
        .arg(&bad)
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::contains(
            "error: expected a list of jobs or an attribute set of jobs (jobs), found an integer",
        ));
}

#[test]
fn spec_example_checks_and_evaluates() {
    cargo_bin_cmd!("kiln")
        .current_dir(repo())
        .args(["check", "examples/hello/build.kiln"])
        .assert()
        .success()
        .stderr("")
        .stdout("examples/hello/build.kiln: ok (3 stages, 3 jobs)\n");
    let output = cargo_bin_cmd!("kiln")
        .current_dir(repo())
        .args(["eval", "examples/hello/build.kiln", "--arg", "version=1.2"])
        .assert()
        .success()
        .stderr("");
    let json: serde_json::Value = serde_json::from_slice(&output.get_output().stdout).unwrap();
    assert_eq!(json["format"], "kiln");
    assert_eq!(json["env"]["VERSION"], "1.2");
    assert_eq!(json["sources"][0]["path"], "./.");
    let tarball = &json["jobs"][2];
    assert_eq!(tarball["name"], "tarball");
    assert_eq!(tarball["needs"], serde_json::json!(["compile", "smoke"]));
    assert_eq!(
        tarball["commands"][0],
        "tar --sort=name --mtime=@0 -czf hello-1.2.tgz hello"
    );
    assert_eq!(tarball["artifacts"][0]["src"], "hello-1.2.tgz");
    assert_eq!(tarball["artifacts"][0]["name"], "release/hello.tgz");
    // The same bytes as the checked-in expectation.
    let expected =
        std::fs::read(repo().join("grammar/tests/ok/manifest/spec-example.json")).unwrap();
    assert_eq!(output.get_output().stdout, expected);
}

#[test]
fn kiln_errors_exit_2_with_location() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "typo.kiln",
        b"{\n  driver = { type = \"host\"; };\n  stages = [ \"build\" ];\n  jobs.a = { stage = \"build\"; comands = [ \"make\" ]; };\n}\n",
    );
    write(dir.path(), "syntax.kiln", b"{ stages = [ \"a\" ; }\n");
    write(
        dir.path(),
        "needs-arg.kiln",
        b"{ version }: { stages = [ version ]; }\n",
    );
    cargo_bin_cmd!("kiln")
        .current_dir(dir.path())
        .args(["check", "typo.kiln"])
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with(
            "typo.kiln:4:31: error: unknown attribute `comands` in a job\n",
        ))
        .stderr(predicate::str::contains("did you mean `commands`?"));
    cargo_bin_cmd!("kiln")
        .current_dir(dir.path())
        .args(["eval", "syntax.kiln"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicate::str::starts_with("syntax.kiln:1:"));
    cargo_bin_cmd!("kiln")
        .current_dir(dir.path())
        .args(["eval", "needs-arg.kiln"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing argument `version`"));
    cargo_bin_cmd!("kiln")
        .current_dir(dir.path())
        .args(["eval", "needs-arg.kiln", "--arg", "version=v1"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"v1\""));
}

#[test]
fn exit_codes_for_non_utf8_kiln_directories_and_ignored_args() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "latin1.kiln",
        b"{ stages = [ \"caf\xe9\" ]; }\n",
    );
    cargo_bin_cmd!("kiln")
        .current_dir(dir.path())
        .args(["check", "latin1.kiln"])
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with("latin1.kiln:1:18: error:"));
    cargo_bin_cmd!("kiln")
        .arg("check")
        .arg(dir.path())
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot read"));
    cargo_bin_cmd!("kiln")
        .current_dir(repo())
        .args(["eval", "examples/djinn/.djinn.yml", "--arg", "version=1.2"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "warning: examples/djinn/.djinn.yml: --arg is ignored",
        ));
}
