//! kiln's own memory and files stay bounded whatever a job or a manifest
//! does (issue 9): job output streams through bounded memory into a capped
//! log, evaluation has a memory budget, and a manifest reads only under its
//! project root (or an `--allow-path`) and never gets a secret quoted.
//!
//! Peak memory is the kiln process's `ru_maxrss` from `wait4`; a control
//! run shows the same measurement sees a kiln that does use a lot.

mod run_support;

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

use run_support::Project;

/// kiln's peak RSS must stay under this while a job floods its output.
const PEAK_LIMIT_KIB: i64 = 200 * 1024;

struct Measured {
    code: i32,
    max_rss_kib: i64,
    stdout: String,
    stderr: String,
}

/// Runs `command` with stdout and stderr in files (so the test itself holds
/// no output in memory) and returns its exit code and peak RSS.
fn measure(mut command: Command, dir: &Path) -> Measured {
    let out = dir.join("measure.out");
    let err = dir.join("measure.err");
    command
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap());
    let child = command.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unwaited child; both pointers are valid for
    // the call.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child);
    let read = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        // Keep what the test prints on failure short.
        let tail = &bytes[bytes.len().saturating_sub(4000)..];
        String::from_utf8_lossy(tail).into_owned()
    };
    Measured {
        code: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        max_rss_kib: usage.ru_maxrss,
        stdout: read(&out),
        stderr: read(&err),
    }
}

fn log_of(project: &Project, job: &str) -> Vec<u8> {
    let output = project.kiln().args(["log", "last", job]).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    output.stdout
}

/// A host job printing `script`'s output; run without `--json`, with the
/// plain console on stderr (a file), as a CI run would.
fn flood(script: &str) -> (Project, Measured) {
    flood_in(r#"{ type = "host"; }"#, script)
}

fn flood_in(driver: &str, script: &str) -> (Project, Measured) {
    let project = Project::new(&format!(
        r#"{{
  driver = {driver};
  stages = [ "s" ];
  jobs.flood = {{ stage = "s"; commands = [ "{script}" ]; }};
}}"#
    ));
    let mut command = project.kiln();
    command.arg("run");
    let measured = measure(command, project.dir.path());
    (project, measured)
}

const MARKER: &str =
    "kiln: log truncated after 67108864 bytes; the job's further output was discarded\n";

#[test]
fn a_3_gb_line_is_streamed_in_bounded_memory_and_the_log_is_capped() {
    let (project, run) = flood("head -c 3000000000 /dev/zero | tr -c x x; echo; echo after");
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.max_rss_kib < PEAK_LIMIT_KIB,
        "kiln peaked at {} MiB",
        run.max_rss_kib / 1024
    );
    let log = log_of(&project, "flood");
    assert_eq!(log.len(), (64 << 20) + 1 + MARKER.len());
    // The script's own lines (commands are echoed, in an order the two
    // sides of the pipe race for), then the long line.
    let run_of_x = [b'x'; 4096];
    let start = log
        .windows(run_of_x.len())
        .position(|w| w == run_of_x)
        .unwrap_or_else(|| panic!("no long line: {:?}", String::from_utf8_lossy(&log[..300])));
    assert!(start < 200, "{:?}", String::from_utf8_lossy(&log[..300]));
    // Only the few echoed command lines are not the line itself.
    let other = log[..64 << 20].iter().filter(|&&b| b != b'x').count();
    assert!(other < 200, "{:?}", String::from_utf8_lossy(&log[..300]));
    assert!(log.ends_with(format!("\n{MARKER}").as_bytes()));
    eprintln!("3 GB line: kiln peak RSS {} MiB", run.max_rss_kib / 1024);
}

#[test]
fn a_container_job_flooding_its_output_is_capped_the_same_way() {
    let (project, run) = flood_in(
        r#"{ type = "container"; image = "host"; }"#,
        "head -c 1000000000 /dev/zero; echo after",
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.max_rss_kib < PEAK_LIMIT_KIB,
        "kiln peaked at {} MiB",
        run.max_rss_kib / 1024
    );
    let log = log_of(&project, "flood");
    assert!(log.ends_with(format!("\n{MARKER}").as_bytes()));
    assert_eq!(log.len(), (64 << 20) + 1 + MARKER.len());
    eprintln!(
        "1 GB in a container: kiln peak RSS {} MiB",
        run.max_rss_kib / 1024
    );
}

#[test]
fn a_300_mb_flood_of_short_lines_is_streamed_in_bounded_memory() {
    // 3 million lines of 100 bytes.
    let (project, run) = flood(
        "yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | head -n 3000000; echo done",
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.max_rss_kib < PEAK_LIMIT_KIB,
        "kiln peaked at {} MiB",
        run.max_rss_kib / 1024
    );
    let log = log_of(&project, "flood");
    assert!(
        log.ends_with(MARKER.as_bytes()),
        "{:?}",
        &log[log.len() - 200..]
    );
    assert_eq!(log.len(), (64 << 20) + MARKER.len() + 1);
    // The console showed the job's lines (some may have been dropped
    // while it fell behind, said so).
    assert!(run.stderr.contains("flood | "), "{}", run.stderr);
    assert!(run.stderr.contains("job flood: passed"), "{}", run.stderr);
    eprintln!(
        "300 MB of lines: kiln peak RSS {} MiB",
        run.max_rss_kib / 1024
    );
}

#[test]
fn the_measurement_sees_a_kiln_that_uses_a_lot_of_memory() {
    // Control for the two tests above: 20 copies of a 32 MiB string are
    // within the evaluation budget and make kiln hold about 640 MiB while
    // it forces them (the manifest is then rejected: `x` is no field).
    let project = Project::new(
        "let d = s: s + s; s = d (d (d (d (d (d (d (d (d (d (d (d (d (d (d (d (d (d (d (d (d (d (d (d (d \"x\")))))))))))))))))))))))); in { x = builtins.genList (i: s) 20; }",
    );
    let mut command = project.kiln();
    command.args(["eval", "build.kiln"]);
    let run = measure(command, project.dir.path());
    assert!(
        run.max_rss_kib > PEAK_LIMIT_KIB,
        "the control peaked at only {} MiB",
        run.max_rss_kib / 1024
    );
}

#[test]
fn an_amplified_string_manifest_fails_fast_with_the_located_budget_error() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("grammar/tests/err/lang/memory_budget.kiln"),
    )
    .unwrap();
    let project = Project::new(&text);
    let mut command = project.kiln();
    command.args(["check", "build.kiln"]);
    let started = std::time::Instant::now();
    let run = measure(command, project.dir.path());
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("build.kiln:2:12: error: evaluation exceeded its memory budget of 1024 MiB"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // Bounded by the budget (1 GiB) plus what the evaluator keeps aside.
    assert!(
        run.max_rss_kib < 1400 * 1024,
        "{} MiB",
        run.max_rss_kib / 1024
    );
}

#[test]
fn importing_etc_shadow_is_refused_and_nothing_of_it_is_printed() {
    // Control: the file exists and has lines to leak.
    let shadow = std::fs::read_to_string("/etc/shadow").expect("read /etc/shadow (as root)");
    let lines: Vec<&str> = shadow.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    let project = Project::new("import ../../../../../../../../etc/shadow\n");
    for command in ["check", "eval"] {
        let output = project
            .kiln()
            .args([command, "build.kiln"])
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!output.status.success());
        assert!(all.contains("/etc/shadow"), "{all}");
        assert!(all.contains("outside the project root"), "{all}");
        assert!(all.contains("--allow-path"), "{all}");
        for line in &lines {
            assert!(
                !all.contains(line),
                "{command} printed a line of /etc/shadow"
            );
        }
        // Even a name from it: the first field of its first line.
        let user = lines[0].split(':').next().unwrap();
        assert!(!all.contains(&format!("{user}:")), "{all}");
    }
    // With /etc allowed the file is read, but it is not a manifest: named,
    // never quoted.
    let output = project
        .kiln()
        .args(["check", "--allow-path", "/etc", "build.kiln"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("it is not a kiln manifest"), "{stderr}");
    for line in &lines {
        assert!(
            !stderr.contains(line),
            "check printed a line of /etc/shadow"
        );
    }
}

#[test]
fn a_source_outside_the_project_is_refused_and_allow_path_widens_it() {
    let project = Project::new(
        r#"{
  driver = { type = "host"; };
  sources = [ ../../../../../../root ];
  stages = [ "s" ];
  jobs.a = { stage = "s"; commands = [ "true" ]; };
}"#,
    );
    let run = project.run(&[]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("outside the project root"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("build.kiln:3:15"), "{}", run.stderr);

    // A path built at evaluation time passes evaluation; the build itself
    // refuses it where it would read it.
    let project = Project::new(
        r#"{
  driver = { type = "host"; };
  sources = [ (./. + "/../../../../../../root") ];
  stages = [ "s" ];
  jobs.a = { stage = "s"; commands = [ "true" ]; };
}"#,
    );
    let run = project.run(&[]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("source"), "{}", run.stderr);
    assert!(
        run.stderr.contains("`/root` is outside the project root"),
        "{}",
        run.stderr
    );

    // Control: a directory next to the project, refused, then allowed.
    let outside = project.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("data.txt"), "from outside\n").unwrap();
    project.write(
        "build.kiln",
        r#"{
  driver = { type = "host"; };
  sources = [ { path = ../outside; dir = "ext"; } ];
  stages = [ "s" ];
  jobs.a = { stage = "s"; commands = [ "grep -q 'from outside' ext/data.txt" ]; };
}"#,
    );
    let refused = project.run(&[]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("outside the project root"),
        "{}",
        refused.stderr
    );
    let allowed = project.run(&["--allow-path", outside.to_str().unwrap()]);
    assert_eq!(allowed.code, 0, "{}", allowed.describe());
    assert_eq!(allowed.status("a"), "passed");
}
