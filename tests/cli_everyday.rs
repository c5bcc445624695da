//! Everyday use of the real binary (issue 15): what a user sees on the
//! console and in the commands around a build. Real namespaces (run as root).

#[path = "run_support/mod.rs"]
mod support;

use std::process::Command;

use support::Project;

/// A job that prints 30 numbered lines, a compiler-like error, and fails.
const FAILING: &str = r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "build" ];
  jobs = {
    bad = { stage = "build"; commands = [
      "for i in $(seq 1 30); do echo line $i; done"
      "echo main.c:3: error: expected semicolon >&2"
      "exit 1"
    ]; };
  };
}"#;

/// Runs `kiln ARGS` (in the project, with its store) inside a pseudo-terminal
/// made by `script`, and returns everything the terminal received.
fn in_terminal(project: &Project, args: &str, env: &[(&str, &str)]) -> (i32, String) {
    let command = format!(
        "{} --store {} {args}",
        env!("CARGO_BIN_EXE_kiln"),
        project.store.display()
    );
    let mut script = Command::new("script");
    script
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .current_dir(project.root())
        .env("TMPDIR", &project.tmp)
        .env("TERM", "xterm")
        .env("COLUMNS", "120")
        .env_remove("NO_COLOR");
    for (name, value) in env {
        script.env(name, value);
    }
    let output = script.output().expect("running `script` (util-linux)");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn a_failed_job_shows_the_tail_of_its_output_and_how_to_see_all_of_it() {
    let project = Project::new(FAILING);
    // Plain lines (stderr is a pipe).
    let output = project.kiln().arg("run").output().unwrap();
    assert_eq!(output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail = &stderr[stderr
        .find("last 20 of 64 lines of bad's output:")
        .unwrap_or_else(|| panic!("no tail in:\n{stderr}"))..];
    let tail_lines: Vec<&str> = tail.lines().collect();
    assert_eq!(tail_lines[1], "  | line 22", "{stderr}");
    assert_eq!(
        tail_lines[19], "  | main.c:3: error: expected semicolon",
        "{stderr}"
    );
    assert_eq!(tail_lines[20], "  | + exit 1", "{stderr}");
    assert_eq!(
        tail_lines[21], "  see all of it: kiln log 1 bad",
        "{stderr}"
    );
    // The command it names prints all of it.
    let log = project.kiln().args(["log", "1", "bad"]).output().unwrap();
    assert!(String::from_utf8_lossy(&log.stdout).contains("line 1\n"));

    // The live view on a terminal shows the same block above its summary.
    let (code, screen) = in_terminal(&project, "run", &[]);
    assert_eq!(code, 3, "{screen}");
    assert!(
        screen.contains("job bad: failed")
            && screen.contains("last 20 of 64 lines of bad's output:"),
        "{screen}"
    );
    assert!(
        screen.contains("| main.c:3: error: expected semicolon"),
        "{screen}"
    );
    assert!(screen.contains("see all of it: kiln log 2 bad"), "{screen}");
}
