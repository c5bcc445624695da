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
    // `exec`: the shell `script` starts must not stay between the terminal
    // and kiln (dash, the default `sh`, does not exec a lone command and
    // would die of the Ctrl-C itself).
    let command = format!(
        "exec {} --store {} {args}",
        env!("CARGO_BIN_EXE_kiln"),
        project.store.display()
    );
    let mut script = Command::new("script");
    script
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("SHELL", "/bin/sh")
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
    let (code, screen) = in_terminal(&project, "run", &[("NO_COLOR", "1")]);
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

/// Two jobs that sleep until they are stopped.
const SLEEPERS: &str = r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "build" ];
  jobs = {
    a = { stage = "build"; commands = [ "echo starting a" "sleep 60" ]; };
    b = { stage = "build"; commands = [ "echo starting b" "sleep 60" ]; };
  };
}"#;

#[test]
fn ctrl_c_on_a_terminal_counts_jobs_as_killed_and_leaves_no_stale_line() {
    let project = Project::new(SLEEPERS);
    // `script` forwards its stdin to the terminal: a Ctrl-C byte after the
    // jobs started is the user pressing Ctrl-C (SIGINT to the whole group).
    // `exec`: dash (the `sh` that `script` may start) does not exec a lone
    // command, and a shell left in the foreground group dies of the Ctrl-C
    // itself and `script -e` reports 130 whatever kiln does.
    let command = format!(
        "exec {} --store {} --color never run",
        env!("CARGO_BIN_EXE_kiln"),
        project.store.display()
    );
    let output = Command::new("sh")
        .arg("-c")
        .arg(r#"(sleep 3; printf '\003'; sleep 5) | script -q -e -c "$0" /dev/null"#)
        .arg(&command)
        .current_dir(project.root())
        .env("SHELL", "/bin/sh")
        .env("TMPDIR", &project.tmp)
        .env("TERM", "xterm")
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(4), "{screen}");
    let last = screen.lines().last().unwrap_or_default();
    assert!(
        last.contains("killed in ")
            && last.ends_with(": 0 passed, 0 cached, 0 failed, 0 skipped, 2 killed"),
        "{last:?}\n{screen}"
    );
    // The terminal echoed no `^C` into the live view (its two columns
    // wrapped a full-width line and left a stale progress line behind).
    assert!(!screen.contains("^C"), "{screen}");
    project.assert_clean();
}

#[test]
fn piped_output_ends_with_the_summary_and_total_time() {
    let project = Project::new(FAILING);
    let output = project.kiln().arg("run").output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let n = lines.len();
    assert_eq!(
        lines[n - 3],
        "JOB  STAGE  STATUS  DURATION  CACHED",
        "{stderr}"
    );
    assert!(lines[n - 2].starts_with("bad  build  failed"), "{stderr}");
    assert!(
        lines[n - 1].starts_with("build 1 failed in ")
            && lines[n - 1].ends_with(": 0 passed, 0 cached, 1 failed, 0 skipped"),
        "{stderr}"
    );
    // No colour into a pipe unless asked for.
    assert!(!stderr.contains('\x1b'), "{stderr}");
}

#[test]
fn colour_on_a_terminal_unless_no_color_or_never() {
    let project = Project::new(FAILING);
    let red = "\x1b[1;31mfailed";
    let (_, coloured) = in_terminal(&project, "run", &[]);
    assert!(coloured.contains(red), "{coloured}");
    let (_, no_color) = in_terminal(&project, "run", &[("NO_COLOR", "1")]);
    assert!(!no_color.contains(red), "{no_color}");
    let (_, never) = in_terminal(&project, "--color never run", &[]);
    assert!(!never.contains(red), "{never}");
    let always = project
        .kiln()
        .args(["--color", "always", "run"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&always.stderr).contains(red));
}

#[test]
fn usage_mistakes_exit_2_with_a_clear_message() {
    let project = Project::new(FAILING);
    let usage = |args: &[&str], wanted: &str| {
        let output = project.kiln().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(wanted), "{args:?}: {stderr}");
    };
    usage(&["build"], "'run'");
    usage(&["status"], "'show'");
    usage(&["run", "-j", "0"], "must be at least 1");
    for command in ["check", "run", "plan", "lock"] {
        let mut args = vec![command];
        if command == "check" {
            args.push("build.kiln");
        }
        args.extend(["--arg", "version"]);
        usage(&args, "malformed --arg \"version\": expected NAME=VALUE");
    }
    usage(
        &["check", "build.kiln", "--arg", "a=1", "--arg", "a=2"],
        "--arg a is given twice",
    );
}

#[test]
fn an_os_error_is_printed_once() {
    let project = Project::new(FAILING);
    let output = project
        .kiln()
        .args(["store", "add", "/nonexistent/kiln-test"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let project = Project::new(FAILING);
    project.kiln().arg("run").output().unwrap();
    for args in [&["builds"][..], &["log", "1", "bad"], &["show", "1"]] {
        let mut child = project
            .kiln()
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before kiln writes, as `| head` does.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
    // `kiln run --json | head`: the build goes on, and no pipe error is shown.
    let mut child = project
        .kiln()
        .args(["run", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(!stderr.contains("Broken pipe"), "{stderr}");
    assert!(stderr.contains("build 2 failed in "), "{stderr}");
}

#[test]
fn a_missing_djinn_source_fails_as_its_own_job() {
    let project = Project::new("");
    project.write(
        ".djinn.yml",
        "driver:\n  type: docker\n  image: host\nsources:\n- ../no-such-repo\nstages:\n- build\njobs:\n- stage: build\n  name: compile\n  commands:\n  - 'true'\n",
    );
    std::fs::remove_file(project.root().join("build.kiln")).unwrap();
    let run = project.run(&[]);
    assert_eq!(run.code, 3, "{}", run.describe());
    assert_eq!(
        run.status("source:../no-such-repo"),
        "failed",
        "{}",
        run.describe()
    );
    assert_eq!(run.status("compile"), "skipped");
    assert!(
        !run.events.iter().any(|e| e["job"] == "source"),
        "{}",
        run.describe()
    );
}

#[test]
fn plan_plans_every_job_when_an_image_is_missing() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  stages = [ "build" "test" ];
  jobs = {
    a = { stage = "build"; driver = { type = "container"; image = "debian/none"; }; commands = [ "true" ]; };
    b = { stage = "build"; commands = [ "true" ]; };
    c = { stage = "test"; needs = [ "a" ]; commands = [ "true" ]; };
  };
}"#,
    );
    let output = project.kiln().args(["plan"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    let status = |job: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(&format!("{job} ")))
            .and_then(|line| line.split_whitespace().nth(2))
            .unwrap_or_else(|| panic!("no job {job} in\n{stdout}"))
            .to_owned()
    };
    assert_eq!(status("a"), "missing");
    assert_eq!(status("b"), "run");
    assert_eq!(status("c"), "missing");
    assert!(
        stdout
            .contains("image debian/none: import it with `kiln image import debian/none ARCHIVE`"),
        "{stdout}"
    );
    let json = project.kiln().args(["plan", "--json"]).output().unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(plan[2]["missing"][0], "job a cannot run");
    let explain = project.kiln().args(["explain", "a"]).output().unwrap();
    let text = String::from_utf8_lossy(&explain.stdout);
    assert!(
        text.starts_with("a: cannot run until this is provided:")
            && text.contains("kiln image import debian/none"),
        "{text}"
    );
}

#[test]
fn explain_names_the_files_that_changed_and_answers_for_a_past_build() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  sources = [ ./src ];
  stages = [ "build" "test" ];
  jobs = {
    compile = { stage = "build"; commands = [ "cat src/main.c > app" ]; };
    smoke = { stage = "test"; needs = [ "compile" ]; inputs = [ ]; commands = [ "test -s app" ]; };
  };
}"#,
    );
    project.write("src/main.c", "int main(void) { return 0; }\n");
    project.write("src/util.c", "int util;\n");
    let stdout = |args: &[&str]| {
        let output = project.kiln().args(args).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        text
    };
    assert_eq!(project.run(&[]).code, 0);
    assert_eq!(
        stdout(&["explain", "compile"]),
        "compile will be taken from the cache: nothing changed since its last run (build 1)\n"
    );

    // A source edit: which paths, in plain words.
    project.write("src/main.c", "int main(void) { return 1; }\n");
    std::fs::remove_file(project.root().join("src/util.c")).unwrap();
    project.write("src/new.h", "#define NEW 1\n");
    let text = stdout(&["explain", "compile"]);
    assert!(
        text.starts_with("compile will run. Changed since its last run (build 1):\n")
            && text.contains("  - the files it sees (its sources and objects) changed:\n")
            && text.contains("      src/main.c: content differs")
            && text.contains("      src/new.h: added")
            && text.contains("      src/util.c: removed"),
        "{text}"
    );

    // A past build: why each job ran there, against its previous run.
    assert_eq!(project.run(&[]).code, 0);
    let text = stdout(&["explain", "smoke", "--build", "2"]);
    assert!(
        text.starts_with(
            "smoke ran in build 2 (passed). Changed since its previous run (build 1):\n"
        ) && text.contains(
            "  - the output of upstream job compile changed:\n      app: content differs"
        ),
        "{text}"
    );
    assert!(!text.contains("src/"), "smoke sees no sources: {text}");
    assert_eq!(project.run(&[]).code, 0);
    assert_eq!(
        stdout(&["explain", "compile", "--build", "last"]),
        "compile was taken from the cache in build 3: nothing changed since its previous run (build 2)\n"
    );
    assert_eq!(
        stdout(&["explain", "compile", "--build", "1"]),
        "compile ran in build 1 (passed): no earlier build of this manifest ran it\n"
    );
    let unknown = project
        .kiln()
        .args(["explain", "nope", "--build", "1"])
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("its jobs: compile, smoke"),
        "{}",
        String::from_utf8_lossy(&unknown.stderr)
    );
}

#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    let project = Project::new(FAILING);
    let text = |args: &[&str]| {
        let output = project.kiln().args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let bash = text(&["completions", "bash"]);
    assert!(
        bash.contains("_kiln()") && bash.contains("explain"),
        "{bash}"
    );
    assert!(text(&["completions", "zsh"]).starts_with("#compdef kiln"));
    assert!(text(&["completions", "fish"]).contains("complete -c kiln"));
    let page = text(&["man"]);
    assert!(
        page.contains(".TH kiln 1") && page.contains("\\-\\-color"),
        "{page}"
    );
    let dir = project.dir.path().join("man");
    text(&["man", "--out", dir.to_str().unwrap()]);
    for name in ["kiln.1", "kiln-run.1", "kiln-store-gc.1", "kiln-explain.1"] {
        assert!(dir.join(name).is_file(), "{name}");
    }
    let run_page = std::fs::read_to_string(dir.join("kiln-run.1")).unwrap();
    assert!(run_page.contains("\\-\\-log\\-limit"), "{run_page}");
}

#[test]
fn init_writes_a_starter_manifest_that_runs_and_never_overwrites() {
    let project = Project::new("");
    std::fs::remove_file(project.root().join("build.kiln")).unwrap();
    project.write("main.c", "int main(void) { return 0; }\n");
    let init = project.kiln().arg("init").output().unwrap();
    assert_eq!(
        init.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let written = std::fs::read_to_string(project.root().join("build.kiln")).unwrap();
    assert!(written.contains("cc -O2 -o app *.c"), "{written}");
    let check = project
        .kiln()
        .args(["check", "build.kiln"])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0));
    let run = project.run(&[]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("build"), "passed");
    assert_eq!(run.status("test"), "passed");

    // A second init refuses, and leaves the manifest as it was.
    project.write("build.kiln", "# mine\n");
    let again = project.kiln().arg("init").output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwrites"));
    assert_eq!(
        std::fs::read_to_string(project.root().join("build.kiln")).unwrap(),
        "# mine\n"
    );
    // Nor does it add a build.kiln beside a Djinn manifest it would shadow.
    std::fs::remove_file(project.root().join("build.kiln")).unwrap();
    project.write(".djinn.yml", "stages: [build]\n");
    let beside = project.kiln().arg("init").output().unwrap();
    assert_eq!(beside.status.code(), Some(1));
    assert!(!project.root().join("build.kiln").exists());
}

#[test]
fn json_on_check_log_and_listings() {
    let project = Project::new(FAILING);
    project.write("broken.kiln", "{ stages = [ \"a\" ]; jobs = 3; }");
    let json = |args: &[&str], code: i32| -> serde_json::Value {
        let output = project.kiln().args(args).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&output.stdout))
        })
    };
    let checked = json(&["check", "build.kiln", "broken.kiln", "--json"], 2);
    assert_eq!(checked[0]["valid"], true);
    assert_eq!(checked[0]["jobs"], 1);
    assert_eq!(checked[1]["valid"], false);
    let error = &checked[1]["errors"][0];
    assert!(
        error["location"]
            .as_str()
            .unwrap()
            .starts_with("broken.kiln:1:"),
        "{error}"
    );

    project.kiln().arg("run").output().unwrap();
    let log = json(&["log", "1", "bad", "--json"], 0);
    assert_eq!(log["job"], "bad");
    assert_eq!(log["status"], "failed");
    assert!(log["log"].as_str().unwrap().contains("line 30\n"));
    assert_eq!(json(&["log", "last", "--json"], 0)[0]["job"], "bad");
    assert!(
        json(&["cache", "ls", "--json"], 0)
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        json(&["trust", "ls", "--json"], 0)
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(json(&["builds", "--json"], 0).as_array().unwrap().len(), 1);
}

#[test]
fn a_file_source_lands_as_dir_or_inside_a_dir_ending_in_a_slash() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "host"; };
  sources = [
    { path = ./main.c; dir = "app/"; }
    { path = ./VERSION; dir = "etc/version"; }
    { path = ./lib; dir = "vendor/"; }
  ];
  stages = [ "s" ];
  jobs = { look = { stage = "s"; commands = [
    "test -f app/main.c"
    "test \"$(cat etc/version)\" = 1.2"
    "test -f vendor/lib/util.c"
  ]; }; };
}"#,
    );
    project.write("main.c", "int main(void) { return 0; }\n");
    project.write("VERSION", "1.2\n");
    project.write("lib/util.c", "int util;\n");
    let eval = project
        .kiln()
        .args(["eval", "build.kiln"])
        .output()
        .unwrap();
    let description: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let dirs: Vec<&str> = description["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|source| source["dir"].as_str().unwrap())
        .collect();
    assert_eq!(dirs, ["app/main.c", "etc/version", "vendor/lib"]);
    let run = project.run(&[]);
    assert_eq!(run.code, 0, "{}", run.describe());
    assert_eq!(run.status("look"), "passed");
}

/// A directory holding a busybox root (busybox-static, scripts/test.sh).
fn busybox_root(at: &std::path::Path) -> std::path::PathBuf {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|path| path.is_file())
        .expect("busybox-static is installed (scripts/test.sh)");
    let root = at.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "true", "echo"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    root
}

#[test]
fn the_store_accounts_for_every_byte_and_gc_drops_materialised_images() {
    let project = Project::new(
        r#"{
  driver = { type = "container"; image = "tiny"; };
  stages = [ "s" ];
  jobs = { hi = { stage = "s"; commands = [ "echo hi" ]; }; };
}"#,
    );
    let root = busybox_root(project.dir.path());
    let ok = |args: &[&str]| -> String {
        let output = project.kiln().args(args).output().unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    ok(&["image", "import", "tiny", root.to_str().unwrap()]);
    let run = project.run(&[]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let cache = project.store.join("image-cache");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);

    // `store stats` counts the materialised image with everything else.
    let stats: serde_json::Value =
        serde_json::from_str(&ok(&["store", "stats", "--json"])).unwrap();
    let parts = stats["disk"]["parts"].as_array().unwrap();
    let part = |name: &str| {
        parts
            .iter()
            .find(|p| p[0] == name)
            .and_then(|p| p[1].as_u64())
            .unwrap_or_else(|| panic!("no {name} in {parts:?}"))
    };
    assert!(part("image-cache") > 1_000_000, "busybox is restored there");
    assert!(part("chunks") > 0 && part("index.sqlite") > 0);
    let total = stats["disk"]["total"].as_u64().unwrap();
    let du = Command::new("du")
        .args(["-s", "-B1"])
        .arg(&project.store)
        .output()
        .unwrap();
    let du: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // As du counts it, but for what the index's write-ahead log changed
    // between the two commands.
    assert!(
        total.abs_diff(du) < 256 * 1024,
        "every byte under the store: {total} counted, du says {du}"
    );
    assert!(ok(&["store", "stats"]).contains("image-cache"));

    // Used recently and still imported: kept.
    let kept = ok(&["store", "gc"]);
    assert!(kept.contains("materialised images: removed 0"), "{kept}");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
    // Its image removed: gc drops the materialised copy too.
    ok(&["image", "rm", "tiny"]);
    let dropped = ok(&["store", "gc"]);
    assert!(dropped.contains("(its image is gone,"), "{dropped}");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);

    // Unused past the threshold: dropped as well (it is rebuilt on demand).
    ok(&["image", "import", "tiny", root.to_str().unwrap()]);
    assert_eq!(project.run(&["--no-cache"]).code, 0);
    let unused = ok(&["store", "gc", "--unused-for", "0s"]);
    assert!(unused.contains("(unused,"), "{unused}");
    assert_eq!(project.run(&["--no-cache"]).code, 0, "materialised again");
}

#[test]
fn builds_rm_and_prune_delete_records_but_never_pinned_or_running_builds() {
    let project = Project::new(FAILING);
    for _ in 0..3 {
        project.kiln().arg("run").output().unwrap();
    }
    let kiln = |args: &[&str]| project.kiln().args(args).output().unwrap();
    assert_eq!(kiln(&["pin", "2"]).status.code(), Some(0));
    let pinned = kiln(&["builds", "rm", "2"]);
    assert_eq!(pinned.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&pinned.stderr).contains("build 2 is pinned"));
    let removed = kiln(&["builds", "rm", "1"]);
    assert_eq!(removed.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&removed.stdout),
        "deleted build 1\n"
    );
    assert_eq!(kiln(&["show", "1"]).status.code(), Some(1));
    let log = kiln(&["log", "3", "bad"]);
    assert!(String::from_utf8_lossy(&log.stdout).contains("line 30"));

    // Prune: nothing is that old; then everything finished and unpinned.
    let none = kiln(&["builds", "prune", "--older-than", "1day"]);
    assert_eq!(String::from_utf8_lossy(&none.stdout), "");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let dry = kiln(&["builds", "prune", "--older-than", "1ms", "--dry-run"]);
    assert_eq!(
        String::from_utf8_lossy(&dry.stdout),
        "would delete build 3\n"
    );
    let pruned = kiln(&["builds", "prune", "--older-than", "1ms"]);
    assert_eq!(String::from_utf8_lossy(&pruned.stdout), "deleted build 3\n");
    let left: serde_json::Value =
        serde_json::from_slice(&kiln(&["builds", "--json"]).stdout).unwrap();
    assert_eq!(left.as_array().unwrap().len(), 1, "the pinned build stays");
    // What they alone kept goes at the next gc, and fsck finds the store sound.
    assert_eq!(kiln(&["store", "gc"]).status.code(), Some(0));
    assert_eq!(kiln(&["store", "fsck"]).status.code(), Some(0));

    // A running build is refused.
    let sleeper = Project::new(SLEEPERS);
    let mut running = sleeper.kiln().arg("run").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let refused = sleeper.kiln().args(["builds", "rm", "1"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("build 1 is running"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    sleeper.kiln().args(["kill", "1"]).output().unwrap();
    running.wait().unwrap();
    assert_eq!(
        sleeper
            .kiln()
            .args(["builds", "rm", "1"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(0)
    );
}
