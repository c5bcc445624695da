//! The event flow under a real `kiln run`: the records it leaves are read
//! back with `kiln builds/show/log/artifacts`, the console prints plain
//! lines when stderr is not a terminal.

mod run_support;

use run_support::Project;

const MANIFEST: &str = r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "build" "test" ];
  allow_failures = [ "test" ];
  jobs = {
    compile = {
      stage = "build";
      commands = [ "echo compiling" "mkdir -p out/doc" "printf 'app' > app.bin" "echo page > out/doc/index.html" ];
      artifacts = [ "app.bin" "out => site" ];
    };
    flaky = { stage = "test"; commands = [ "echo checking" "exit 3" ]; };
  };
}"#;

fn stdout_of(project: &Project, args: &[&str]) -> String {
    let output = project.kiln().args(args).output().unwrap();
    assert!(
        output.status.success(),
        "kiln {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn a_real_run_is_recorded_shown_and_its_artifacts_come_back() {
    let project = Project::new(MANIFEST);
    let output = project.kiln().arg("run").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    // Not a terminal: plain prefixed lines.
    assert!(
        stderr.contains("[build 1] job compile: passed ("),
        "{stderr}"
    );
    assert!(stderr.contains("[build 1] job flaky: failed ("), "{stderr}");
    assert!(
        stderr.contains("[build 1] build passed with failures"),
        "{stderr}"
    );

    let builds = stdout_of(&project, &["builds"]);
    assert!(builds.contains("1      passed with failures  "), "{builds}");

    let show = stdout_of(&project, &["show", "last"]);
    let rows: Vec<Vec<&str>> = show
        .lines()
        .skip_while(|line| !line.starts_with("JOB"))
        .skip(1)
        .take_while(|line| !line.is_empty())
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{show}");
    assert_eq!(
        (rows[0][0], rows[0][1], rows[0][2]),
        ("compile", "build", "passed")
    );
    assert_eq!(rows[0].last(), Some(&"no"));
    assert_eq!((rows[1][0], rows[1][2]), ("flaky", "failed"));

    let log = stdout_of(&project, &["log", "1", "flaky"]);
    assert!(log.contains("checking"), "{log}");

    let out = project.dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    stdout_of(
        &project,
        &[
            "artifacts",
            "get",
            "1",
            "app.bin",
            "-o",
            out.join("app").to_str().unwrap(),
        ],
    );
    assert_eq!(std::fs::read(out.join("app")).unwrap(), b"app");
    stdout_of(
        &project,
        &[
            "artifacts",
            "get",
            "1",
            "site",
            "-o",
            out.join("site").to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(out.join("site/doc/index.html")).unwrap(),
        "page\n"
    );

    // The second run serves compile from the cache; its record says so and
    // still has the log and the artifacts.
    let output = project.kiln().arg("run").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("[build 2] job compile: cached"), "{stderr}");
    let show = stdout_of(&project, &["show", "2", "--json"]);
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    let compile = show["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["job"] == "compile")
        .unwrap();
    assert_eq!(compile["status"], "cached");
    assert_eq!(compile["cached"], true);
    assert!(stdout_of(&project, &["log", "2", "compile"]).contains("compiling"));
    let artifacts = stdout_of(&project, &["artifacts", "2"]);
    assert!(
        artifacts.contains("app.bin") && artifacts.contains("site"),
        "{artifacts}"
    );
    // Logs and artifacts recorded by the build are intact and counted.
    stdout_of(&project, &["store", "fsck"]);
    project.assert_clean();
}
